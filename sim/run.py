"""python -m sim.run prog.bundle --backend iss --inputs digits:test:16

Runs a program bundle on a runtime backend (sw.runtime) and prints, per image, the prediction and the
logits, then the cycles per layer. `--inputs` takes any number of:

* `DATASET:SPLIT:COUNT` (e.g. `digits:test:16`, `mnist5k:train:100`): COUNT images of a split of a
  sw.data dataset, in a fixed order that takes the classes in turn (`sw.data.sample_order`, seed 0),
  so a small COUNT covers every class; their labels give an accuracy line;
* `.npy` files of uint8 images: (B, C, H, W), (B, H, W) for one channel, or a single (C, H, W) / (H, W);
* image files (PNG, JPEG, ...; needs Pillow): converted to the model's channels and resized to its size.
"""

import os
import sys
import time
from hw.cli import OneLineParser

PROG = "python -m sim.run"


class UserError(ValueError):
    pass



def parser():
    p = OneLineParser(prog=PROG, description="Run a program bundle on a backend and print predictions and cycles.")
    p.add_argument("bundle", help="the program bundle (python -m sw.compile writes one)")
    p.add_argument("--backend", default="iss", help="iss (default), verilator or board")
    p.add_argument("--inputs", nargs="+", required=True, metavar="INPUT",
                   help="DATASET:SPLIT:COUNT, .npy files of uint8 images, or image files")
    p.add_argument("--batch", type=int, default=None,
                   help="images per backend call (default: all); a bundle compiled with `sw.compile --batch B` "
                        "runs B images at a time on the accelerator whatever this is")
    return p


def _dataset_inputs(text):
    parts = text.split(":")
    if len(parts) != 3:
        raise UserError(f"Input {text!r} is not DATASET:SPLIT:COUNT, a .npy file or an image file")
    name, split, count = parts
    if split not in ("train", "test"):
        raise UserError(f"Input {text!r}: the split must be train or test, not {split!r}")
    try:
        count = int(count)
    except ValueError:
        count = -1
    if count < 1:
        raise UserError(f"Input {text!r}: COUNT must be a positive integer")
    from sw.data import DatasetError, load_dataset
    try:
        data = load_dataset(name)
    except DatasetError as error:
        raise UserError(str(error)) from None
    x, y = (data.test_x, data.test_y) if split == "test" else (data.train_x, data.train_y)
    if count > len(x):
        raise UserError(f"Input {text!r}: the {split} split of {name} has only {len(x)} images")
    from sw.data import sample_order
    return [(x[i], int(y[i]), f"{name}:{split}:{i}") for i in sample_order(y)[:count]]


def _npy_inputs(path, shape):
    import numpy as np
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UserError(f"Cannot read {path}: {error}") from None
    if array.dtype != np.uint8:
        raise UserError(f"{path} holds {array.dtype}, not uint8 images")
    original = array.shape
    if array.shape == shape or array.shape == shape[1:] and shape[0] == 1:
        array = array[None]
    if array.ndim == 3 and shape[0] == 1:
        array = array[:, None]
    if array.shape[1:] != shape:
        raise UserError(f"{path} holds an array of shape {original}; the model takes images of shape {shape} "
                        f"(arrays (B, C, H, W), or (B, H, W) for one channel)")
    return [(array[i], None, f"{os.path.basename(path)}[{i}]") for i in range(len(array))]


def _image_inputs(path, shape):
    import numpy as np
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise UserError(f"Reading {path} needs Pillow (pip install pillow); pass a .npy file instead") from None
    channels, h, w = shape
    if channels not in (1, 3):
        raise UserError(f"{path}: an image file gives 1 or 3 channels; the model takes {channels}")
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB").resize((w, h))
            pixels = np.asarray(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as error:
        raise UserError(f"Cannot read image {path}: {error}") from None
    pixels = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return [(pixels, None, os.path.basename(path))]


def gather_inputs(specs, shape):
    items = []
    for spec in specs:
        if spec.endswith(".npy"):
            items += _npy_inputs(spec, shape)
        elif os.path.exists(spec):
            items += _image_inputs(spec, shape)
        elif ":" in spec:
            items += _dataset_inputs(spec)
        else:
            raise UserError(f"Input {spec!r} is not DATASET:SPLIT:COUNT, a .npy file or an existing image file")
    return items


def print_predictions(items, logits, cycles):
    """One line per image (origin, label, prediction, cycles, logits), then the accuracy if labelled."""
    import numpy as np
    correct = labelled = 0
    for i, (item, row) in enumerate(zip(items, logits)):
        _, label, origin = item
        prediction = int(np.argmax(row))
        text = f"image {i} ({origin}"
        if label is not None:
            text += f", label {label}"
            labelled += 1
            correct += prediction == label
        print(f"{text}): prediction {prediction}  cycles {int(cycles[i])}  logits {' '.join(str(int(v)) for v in row)}")
    if labelled:
        print(f"accuracy: {correct}/{labelled} ({100 * correct / labelled:.2f}%)")


def main(argv=None):
    args = parser().parse_args(argv)
    import numpy as np

    from sw.bundle import BundleError, load_bundle
    from sw.iss import format_report, layer_report
    from sw.runtime import RuntimeApiError, open_backend

    def fail(message, status=1):
        sys.stderr.write(f"{PROG}: error: {message}\n")
        return status

    if args.batch is not None and args.batch < 1:
        return fail("--batch must be a positive integer", 2)
    try:
        bundle = load_bundle(args.bundle)
        items = gather_inputs(args.inputs, tuple(bundle.input["shape"]))
        images = np.stack([item[0] for item in items])
        backend = open_backend(args.backend, bundle)
        start = time.perf_counter()
        step = args.batch or len(images)
        results = []
        with backend:
            for first in range(0, len(images), step):
                results.append(backend.run(images[first:first + step]))
                if len(images) > step:
                    sys.stderr.write(f"\r{min(first + step, len(images))}/{len(images)} images")
        if len(images) > step:
            sys.stderr.write("\n")
        wall = time.perf_counter() - start
    except (BundleError, UserError, RuntimeApiError) as error:
        return fail(str(error))
    logits = np.concatenate([r.logits for r in results])
    cycles = np.concatenate([r.cycles for r in results])
    layer_cycles = None if any(r.layer_cycles is None for r in results) else \
        np.concatenate([r.layer_cycles for r in results])
    unit = bundle.model.get("logit_unit")
    print_predictions(items, logits, cycles)
    if unit:
        print(f"logit unit: {unit:.6g}")
    print(f"backend {args.backend}: {len(images)} images in {wall:.3f} s ({len(images) / max(wall, 1e-9):.1f} images/s), "
          f"{int(cycles.mean()) if len(cycles) else 0} cycles per image on average")
    rows = layer_report(bundle)
    if layer_cycles is not None and len(layer_cycles):
        for row, measured in zip(rows, layer_cycles[0]):
            row["cycles"] = int(measured)
            row["utilization"] = row["ideal_cycles"] / measured if measured else 0.0
        print(f"per-layer cycles (image 0, {args.backend}):")
    else:
        print(f"per-layer cycles (analytic model; the {args.backend} backend does not measure layers):")
    for line in format_report(rows):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
