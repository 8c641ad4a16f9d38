"""QONNX interop: import binary networks written by Brevitas (or FINN, hls4ml tools), export .bnn models.

    model = import_onnx("tfc.onnx", config, input_range=(0.0, 1.0))   # BnnModel, or OnnxError
    export_onnx(model, "model.onnx")                                  # QONNX with BipolarQuant weights
    x = pixels_to_input(images, (0.0, 1.0))                           # what the ONNX graph takes

docs/onnx.md describes the supported subset, the streamlining and the pixel convention. `onnx` and
`qonnx` are imported only when a model is read or written, so `import sw.onnx` costs nothing.
"""

import numpy as np

__all__ = ["OnnxError", "DEFAULT_INPUT_RANGE", "parse_input_range", "parse_input_shape", "pixels_to_input",
           "import_onnx", "export_onnx"]

#: Pixel 0 maps to LO, pixel 255 to HI, linearly: torchvision's ToTensor gives [0, 1].
DEFAULT_INPUT_RANGE = (0.0, 1.0)


class OnnxError(ValueError):
    """An ONNX model cannot be imported, or a .bnn model cannot be exported (one line of text)."""


def parse_input_range(text):
    """'LO,HI' -> (LO, HI) floats with LO != HI; OnnxError otherwise."""
    parts = str(text).split(",")
    try:
        lo, hi = (float(part) for part in parts)
    except ValueError:
        raise OnnxError(f"Input range must be two numbers LO,HI, not {text!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo == hi:
        raise OnnxError(f"Input range must be two different finite numbers LO,HI, not {text!r}")
    return lo, hi


def pixels_to_input(images, input_range=DEFAULT_INPUT_RANGE):
    """uint8 pixels -> the float32 model input: pixel p becomes LO + (HI - LO) * p / 255."""
    lo, hi = input_range
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise OnnxError(f"Images must be uint8 pixels, not {images.dtype}")
    return (lo + (hi - lo) * images.astype(np.float64) / 255.0).astype(np.float32)


def import_onnx(path, config=None, input_range=DEFAULT_INPUT_RANGE, input_shape=None):
    """Read a QONNX binary network and streamline it into a BnnModel for `config` (an AccelConfig).

    input_shape (C, H, W) folds a flat (N, K) model input into images (default (1, 1, K))."""
    from sw.onnx.importer import import_model
    return import_model(path, config, input_range, input_shape)


def parse_input_shape(text):
    """'C,H,W' -> (C, H, W) positive integers; OnnxError otherwise."""
    try:
        shape = tuple(int(part) for part in str(text).split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise OnnxError(f"Input shape must be three positive integers C,H,W, not {text!r}")
    return shape


def export_onnx(model, path, input_range=DEFAULT_INPUT_RANGE, batch=1):
    """Write a BnnModel as QONNX for `batch` images at a time (docs/onnx.md, "Export")."""
    from sw.onnx.exporter import export_model
    return export_model(model, path, input_range, batch)
