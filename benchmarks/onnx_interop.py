"""ONNX interop measured: imported Brevitas networks against qonnx's execute_onnx, exported .bnn models
against deploy_forward. Writes the "Measured" section of docs/onnx.md.

    python -m benchmarks.onnx_interop            # ten epochs of MNIST-5k per FC network (a few minutes)
    python -m benchmarks.onnx_interop --quick    # two epochs
"""

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from ._sections import update_section

ROOT = Path(__file__).resolve().parent.parent
STEPS_PER_EPOCH = 40          # 4,000 MNIST-5k training images in batches of 100


def _fc_rows(epochs, work):
    from sw.data import load_dataset
    from sw.model_format import deploy_forward
    from sw.onnx import import_onnx, pixels_to_input
    from sw.onnx.testing import brevitas_fc, export_brevitas, qonnx_execute, train_briefly
    import torch
    data = load_dataset("mnist5k")
    rows = []
    for name in ("tfc_1w1a", "sfc_1w1a", "lfc_1w1a"):
        torch.manual_seed(1)
        net = brevitas_fc(name)
        start = time.time()
        train_briefly(net, data.train_x, data.train_y, steps=STEPS_PER_EPOCH * epochs, lr=0.01)
        trained = time.time() - start
        model = import_onnx(export_brevitas(net, work / f"{name}.onnx"))
        theirs = qonnx_execute(export_brevitas(net, work / f"{name}_batch.onnx", batch=len(data.test_x)),
                               pixels_to_input(data.test_x))
        ours = deploy_forward(model, data.test_x)
        real = ours * model.logit_unit + model.training["logit_offset"]
        rows.append((name.split("_")[0].upper() + " 1W1A", len(data.test_x),
                     int(np.sum(ours.argmax(1) == theirs.argmax(1))),
                     float(np.abs(real - theirs).max() / np.abs(theirs).max()),
                     float(np.mean(theirs.argmax(1) == data.test_y)), trained))
    return rows


def _cnv_row(work, count=1000):
    from sw.model_format import deploy_forward
    from sw.onnx import import_onnx, pixels_to_input
    from sw.onnx.testing import calibrate_batch_norms, export_brevitas, qonnx_execute
    from brevitas_examples.bnn_pynq.models import model_with_cfg
    import torch
    torch.manual_seed(3)
    net, _ = model_with_cfg("cnv_1w1a", pretrained=False)     # as shipped: 64 to 256 channels
    rng = np.random.default_rng(3)
    images = np.repeat(np.repeat(rng.integers(0, 256, (count + 200, 3, 8, 8)).astype(np.uint8), 4, 2), 4, 3)
    calibrate_batch_norms(net, images[:200], seed=3)
    images = images[200:]
    input_range = (0.0, 255 / 256)
    model = import_onnx(export_brevitas(net, work / "cnv.onnx"), input_range=input_range)
    theirs = qonnx_execute(export_brevitas(net, work / "cnv_batch.onnx", batch=count),
                           pixels_to_input(images, input_range))
    ours = deploy_forward(model, images)
    real = ours * model.logit_unit + model.training["logit_offset"]
    return ("CNV 1W1A (random weights, calibrated batch norm)", count, int(np.sum(ours.argmax(1) == theirs.argmax(1))),
            float(np.abs(real - theirs).max() / np.abs(theirs).max()), None, None)


SCHEMES = [("lfc", "xnor", 1, 1), ("lfc", "trained", 1, 1), ("lfc", "abc", 3, 3), ("lfc", "pa", 3, 3),
           ("lfc", "groupnet", 3, 1), ("cnv", "ftbnn", 1, 1), ("cnv", "abc", 2, 2), ("resnet", "pa", 2, 2)]


def _export_rows(work, count=200):
    import torch
    from sw.model_format import deploy_forward
    from sw.models import build_model
    from sw.onnx import export_onnx, pixels_to_input
    from sw.onnx.testing import qonnx_execute
    from sw.quant import make_scheme
    from sw.quant.export import export_model
    rows = []
    for model_name, scheme, m, n in SCHEMES:
        torch.manual_seed(3)
        net = build_model(model_name, make_scheme(scheme, m, n), (1, 28, 28), 10, 64 if model_name == "lfc" else 8)
        # Batch-norm statistics measured on random images, as after training.
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                module.momentum = None
        images = np.random.default_rng(7).integers(0, 256, (count, 1, 28, 28), dtype=np.uint8)
        net.train()
        with torch.no_grad():
            net(torch.from_numpy(images).float() / 127.5 - 1)
        net.eval()
        model = export_model(net)
        path = export_onnx(model, work / f"{model_name}-{scheme}.onnx", batch=count)
        logits = qonnx_execute(path, pixels_to_input(images))
        expected = deploy_forward(model, images) * model.logit_unit
        rows.append((f"{model_name} {scheme} {m}x{n}", count, int(np.sum(np.all(logits == expected, axis=1))),
                     int(np.sum(logits.argmax(1) == expected.argmax(1)))))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.onnx_interop", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two epochs per FC network")
    parser.add_argument("--out", default=str(ROOT / "docs" / "onnx.md"))
    args = parser.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    epochs = 2 if args.quick else 10
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        imported = _fc_rows(epochs, work) + [_cnv_row(work)]
        exported = _export_rows(work)
    lines = [f"`python -m benchmarks.onnx_interop` ({platform.machine()}, {os.cpu_count()} cores, torch threads 1).",
             "",
             f"Import: bnn_pynq networks trained {epochs} epochs of MNIST-5k here ({STEPS_PER_EPOCH * epochs} steps "
             "of 100 images, Adam, lr 0.01), exported by Brevitas `export_qonnx`, imported with the default "
             "config, on every MNIST-5k test image (CNV: smooth random 32 x 32 images, `--input-range "
             "0,0.99609375`):",
             "",
             "| network | images | predictions equal to execute_onnx | max logit difference (relative) | "
             "execute_onnx accuracy | training (s) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, count, equal, diff, accuracy, seconds in imported:
        acc = "-" if accuracy is None else f"{accuracy:.3f}"
        sec = "-" if seconds is None else f"{seconds:.0f}"
        lines.append(f"| {name} | {count} | {equal} / {count} | {diff:.1e} | {acc} | {sec} |")
    lines += ["", "Export: sw.models networks of each scheme (28 x 28, batch-norm statistics measured on the "
              "images), exported for the default config, `execute_onnx` on 200 random images:", "",
              "| model, scheme | images | logits equal to logit_unit x deploy_forward | predictions equal |",
              "| --- | --- | --- | --- |"]
    for name, count, equal, predictions in exported:
        lines.append(f"| {name} | {count} | {equal} / {count} | {predictions} / {count} |")
    update_section(args.out, "Measured", "\n".join(lines), title="# ONNX interop")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
