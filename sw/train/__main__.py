"""python -m sw.train: train a binary network, export it for the accelerator, write a .bnn file.

    python -m sw.train --model lfc --scheme abc --wbases 3 --abases 3 --dataset mnist5k \\
        --epochs 20 --seed 7 --out model.bnn

Prints the float accuracy, the deploy (integer, hardware) accuracy and where the file went. A user's
mistake gives one line on stderr and exit status 2 (bad arguments) or 1 (bad files, export refused).
"""

import argparse
import os
import sys
from hw.cli import OneLineParser

__all__ = ["main"]

MODEL_NAMES = ("lfc", "cnv", "vgg_small", "resnet", "resnet18", "birealnet18")
#: Residual networks train better at a higher learning rate (docs/schemes.md "Residual networks").
RESIDUAL_MODELS = ("resnet", "resnet18", "birealnet18")
SCHEME_NAMES = ("xnor", "trained", "abc", "pa", "groupnet", "ftbnn")
DATASET_NAMES = ("digits", "mnist5k", "mnist", "cifar10", "svhn")



def _positive(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return value


def _nonneg(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, not {text!r}")
    return value


def _choice(names, what):
    def parse(text):
        if text not in names:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; choose from: {', '.join(names)}")
        return text
    return parse


def parser():
    p = OneLineParser(prog="python -m sw.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=_choice(MODEL_NAMES, "model"), required=True,
                   help="topology: " + ", ".join(MODEL_NAMES))
    p.add_argument("--scheme", type=_choice(SCHEME_NAMES, "scheme"), required=True,
                   help="binarization scheme: " + ", ".join(SCHEME_NAMES))
    p.add_argument("--wbases", type=_positive, default=1, help="weight bases M (Group-Net: branches K)")
    p.add_argument("--abases", type=_positive, default=1, help="activation bases N")
    p.add_argument("--dataset", type=_choice(DATASET_NAMES, "dataset"), required=True,
                   help="digits, mnist5k (built in) or mnist, cifar10, svhn (with --data-root)")
    p.add_argument("--data-root", help="folder holding a folder-based dataset's files")
    p.add_argument("--epochs", type=_positive, default=10)
    p.add_argument("--seed", type=_nonneg, default=0)
    p.add_argument("--out", required=True, help="the .bnn model file to write")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--width", type=_positive, help="hidden width / base channels (model default if absent)")
    p.add_argument("--batch-size", type=_positive, default=64)
    p.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate (cosine schedule); default 5e-3 for the residual networks "
                        f"({', '.join(RESIDUAL_MODELS)}), 2e-3 for the others")
    p.add_argument("--config", help="AccelConfig JSON file to export for (default: AccelConfig())")
    p.add_argument("--pixel-scales", choices=("precise", "pow2"), default="precise",
                   help="first-layer pixel-plane scales: precise (each rounded on its own) or pow2 (exact "
                        "powers of two apart, so the compiler folds planes into fewer first-layer passes)")
    p.add_argument("--checkpoint", help="checkpoint file, written after every epoch (default: OUT.ckpt)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    p.add_argument("--threads", type=_positive, default=1,
                   help="CPU threads for torch (default 1: small models train fastest on one thread)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    # Heavy imports after argument parsing so --help and argument errors are quick.
    import numpy as np
    import torch

    from hw.config import AccelConfig, ConfigError
    from sw.data import DatasetError, load_dataset
    from sw.model_format import ModelFormatError, save_model
    from sw.models import ModelError
    from sw.quant import SchemeError
    from sw.quant.export import ExportError, export_model
    from sw.train import TrainError, TrainSettings, build_network, evaluate_deploy, fit, float_predictions

    prog = "python -m sw.train"
    torch.set_num_threads(args.threads)

    def fail(message, status=1):
        sys.stderr.write(f"{prog}: error: {message}\n")
        return status

    if args.device == "cuda" and not torch.cuda.is_available():
        return fail("--device cuda: no CUDA device is available (this torch build: "
                    f"{torch.__version__})", 2)
    if os.path.isdir(args.out):
        return fail(f"--out: {args.out} is a folder, not a file name", 2)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        return fail(f"--out: folder {out_dir} does not exist", 2)
    try:
        config = AccelConfig.load(args.config) if args.config else AccelConfig()
        data = load_dataset(args.dataset, args.data_root)
        lr = args.lr if args.lr is not None else (5e-3 if args.model in RESIDUAL_MODELS else 2e-3)
        settings = TrainSettings(args.model, args.scheme, args.wbases, args.abases, args.dataset, args.epochs,
                                 args.seed, args.width, args.batch_size, lr, args.device)
        net = build_network(settings, data)
        checkpoint = args.checkpoint or args.out + ".ckpt"
        fit(net, data, settings, checkpoint=checkpoint, resume=args.resume, progress=not args.no_progress)
        float_pred = float_predictions(net.cpu(), data.test_x)
        float_acc = float(np.mean(float_pred == data.test_y))
        model = export_model(net, config, {"dataset": args.dataset, "seed": args.seed, "epochs": args.epochs,
                                           "pixel_scales": args.pixel_scales}, pixel_scales=args.pixel_scales)
        deploy_pred = evaluate_deploy(model, data.test_x, progress=not args.no_progress).argmax(1)
        deploy_acc = float(np.mean(deploy_pred == data.test_y))
        differ = float(np.mean(deploy_pred != float_pred))
        model.training.update({"float_accuracy": float_acc, "deploy_accuracy": deploy_acc,
                               "deploy_float_disagreement": differ, "test_images": int(len(data.test_y))})
        save_model(args.out, model)
    except (ConfigError, DatasetError, SchemeError, ModelError, TrainError, ExportError, ModelFormatError) as error:
        return fail(str(error))
    except OSError as error:
        return fail(f"{error.filename or ''}: {error.strerror or error}".lstrip(": "))
    print(f"float accuracy:  {100 * float_acc:.2f}%")
    print(f"deploy accuracy: {100 * deploy_acc:.2f}% (integer forward pass; predictions differ from the "
          f"float model on {100 * differ:.2f}% of {len(data.test_y)} test images)")
    print(f"model written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
