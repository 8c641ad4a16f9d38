"""The trainer: `python -m sw.train` (see `sw/train/__main__.py`) and its library in `sw.train.loop`.

The names of `sw.train.loop` are importable from `sw.train` (`from sw.train import fit`); they load on
first use, so `python -m sw.train` parses its arguments and reports a mistake before importing torch.
"""

__all__ = ["TrainSettings", "TrainError", "build_network", "fit", "float_predictions", "evaluate_deploy",
           "save_checkpoint", "load_checkpoint"]


def __getattr__(name):
    if name in __all__:
        from sw.train import loop
        return getattr(loop, name)
    raise AttributeError(f"module 'sw.train' has no attribute {name!r}")
