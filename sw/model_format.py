"""The .bnn model file (docs/model-format.md) and the integer forward pass it defines. numpy only.

The compiler and the simulators import this module without torch:

    model = load_model("model.bnn")             # BnnModel, or ModelFormatError
    logits = deploy_forward(model, images)      # uint8 (B, C, H, W) -> int64 (B, classes)

`deploy_forward` computes with `sw.ref` alone (multibasis_conv2d / multibasis_linear, threshold,
pixel_planes, check_acc_range), so its logits are what the hardware must return.
"""


import numpy as np

import sw.ref as ref
from sw.container import pack_container, pad, unpack_container

__all__ = ["MAGIC", "FORMAT_VERSION", "KIND", "ModelFormatError", "BnnModel", "save_model", "load_model",
           "to_bytes", "from_bytes", "validate_model", "deploy_forward", "deploy_trace", "maxpool_planes"]

MAGIC = b"BNNMODEL"
FORMAT_VERSION = 1
KIND = "bnn-model"
_DTYPES = {"uint64": "<u8", "int64": "<i8", "uint8": "u1"}


class ModelFormatError(ValueError):
    """A .bnn file (or an in-memory model) is not a valid model of this format version."""


class BnnModel:
    """A deployable model.

    layers: list of dicts in execution order (see docs/model-format.md). Conv / linear layers hold
      "branches", each with "weights" int8 (M, O, C/groups, kh, kw) or (M, O, K) of +-1 and "scales"
      int64 (M, N, O); hidden layers hold "thresholds" int64 (O, T) and "flip" bool (O,).
    input_shape: (C, H, W) of the uint8 images; classes: number of logits.
    config: the AccelConfig fields (dict) the model was exported for.
    training: metadata (scheme, dataset, seed, epochs, accuracies, ...).
    logit_unit: real value of one unit of the integer logits (informational).
    """

    def __init__(self, layers, input_shape, classes, config, training=None, logit_unit=1.0):
        self.layers = layers
        self.input_shape = tuple(int(v) for v in input_shape)
        self.classes = int(classes)
        self.config = dict(config)
        self.training = dict(training or {})
        self.logit_unit = float(logit_unit)

    @property
    def acc_bits(self):
        return int(self.config["acc_bits"])

    def __repr__(self):
        kinds = ", ".join(layer["kind"] for layer in self.layers)
        return f"BnnModel(input {self.input_shape}, {self.classes} classes, layers: {kinds})"


def _fail(message):
    raise ModelFormatError(message)


def validate_model(model):
    """Check the graph's internal consistency; raises ModelFormatError naming the layer."""
    for key in ("scale_bits", "scale_frac", "acc_bits"):
        if not isinstance(model.config.get(key), int):
            _fail(f"The model's config lacks the integer field {key!r}")
    if len(model.input_shape) != 3 or min(model.input_shape) < 1:
        _fail(f"The input shape must be (C, H, W), not {model.input_shape}")
    if not model.layers:
        _fail("The model has no layers")
    # shapes[i] / planes[i]: output of layer i; index -1 is the image (8 pixel planes).
    shapes = {-1: model.input_shape}
    planes = {-1: 8}
    acc_limit = (1 << (model.acc_bits - 1)) - 1
    for index, layer in enumerate(model.layers):
        name = f"layer {index} ({layer.get('kind')})"
        kind = layer.get("kind")
        last = index == len(model.layers) - 1
        if kind == "maxpool":
            source = layer.get("source")
            if source not in shapes or source >= index:
                _fail(f"{name}: source {source!r} is not an earlier layer")
            if len(shapes[source]) != 3:
                _fail(f"{name}: max pooling needs a (C, H, W) input, not {shapes[source]}")
            c, h, w = shapes[source]
            k, s = layer.get("kernel"), layer.get("stride")
            if not isinstance(k, int) or not isinstance(s, int) or k < 1 or s < 1 or k > min(h, w):
                _fail(f"{name}: bad kernel {k!r} or stride {s!r} for input {shapes[source]}")
            shapes[index] = (c, (h - k) // s + 1, (w - k) // s + 1)
            planes[index] = planes[source]
            if last:
                _fail(f"{name}: the last layer must be conv or linear (it returns the logits)")
            continue
        if kind not in ("conv", "linear"):
            _fail(f"{name}: unknown layer kind {kind!r}")
        out_shape = None
        branches = layer.get("branches") or _fail(f"{name}: no branches")
        out = layer.get("out_features")
        for j, branch in enumerate(branches):
            where = f"{name} branch {j}"
            source = branch.get("source")
            if source not in shapes or source >= index:
                _fail(f"{where}: source {source!r} is not an earlier layer")
            weights, scales = branch.get("weights"), branch.get("scales")
            if not isinstance(weights, np.ndarray) or weights.dtype != np.int8 or \
                    (weights.size and not np.all((weights == 1) | (weights == -1))):
                _fail(f"{where}: weights must be an int8 array of +-1")
            if not isinstance(scales, np.ndarray) or scales.dtype != np.int64:
                _fail(f"{where}: scales must be an int64 array")
            m, n = branch.get("wbases"), branch.get("abases")
            if n != planes[source]:
                _fail(f"{where}: {n} activation bases but its input has {planes[source]} planes")
            in_shape = shapes[source]
            if kind == "conv":
                if len(in_shape) != 3:
                    _fail(f"{where}: a convolution needs a (C, H, W) input, not {in_shape}")
                c, h, w = in_shape
                kh, kw = branch.get("kernel")
                groups, stride, padding = branch.get("groups"), branch.get("stride"), branch.get("padding")
                if branch.get("pad_value") not in (-1, 1):
                    _fail(f"{where}: pad_value must be -1 or +1")
                if not isinstance(groups, int) or groups < 1 or c % groups or out % groups:
                    _fail(f"{where}: groups {groups!r} must divide {c} input and {out} output channels")
                if weights.shape != (m, out, c // groups, kh, kw):
                    _fail(f"{where}: weights have shape {weights.shape}, expected {(m, out, c // groups, kh, kw)}")
                ho = (h + 2 * padding - kh) // stride + 1
                wo = (w + 2 * padding - kw) // stride + 1
                if ho < 1 or wo < 1:
                    _fail(f"{where}: the kernel does not fit its input {in_shape}")
                branch_shape = (out, ho, wo)
                k = c // groups * kh * kw
            else:
                k = int(np.prod(in_shape))
                if weights.shape != (m, out, k):
                    _fail(f"{where}: weights have shape {weights.shape}, expected {(m, out, k)}")
                branch_shape = (out,)
            if branch.get("k") != k:
                _fail(f"{where}: k is {branch.get('k')!r}, the shapes give {k}")
            if scales.shape != (m, n, out):
                _fail(f"{where}: scales have shape {scales.shape}, expected {(m, n, out)}")
            if out_shape is not None and branch_shape != out_shape:
                _fail(f"{where}: output shape {branch_shape} differs from branch 0's {out_shape}")
            out_shape = branch_shape
        shapes[index] = out_shape
        if last:
            if "thresholds" in layer:
                _fail(f"{name}: the last layer returns sums and has no thresholds")
            if len(out_shape) != 1 and out_shape[1:] != (1, 1):
                _fail(f"{name}: the last layer must produce one sum per class, not {out_shape}")
            if out_shape[0] != model.classes:
                _fail(f"{name}: {out_shape[0]} outputs for {model.classes} classes")
            continue
        thresholds, flip = layer.get("thresholds"), layer.get("flip")
        if not isinstance(thresholds, np.ndarray) or thresholds.dtype != np.int64 or \
                thresholds.ndim != 2 or thresholds.shape[0] != out or thresholds.shape[1] < 1:
            _fail(f"{name}: thresholds must be an int64 (O, T) array with O = {out}")
        if thresholds.size and (thresholds.min() < -acc_limit - 1 or thresholds.max() > acc_limit):
            _fail(f"{name}: a threshold does not fit the {model.acc_bits}-bit accumulator")
        if not isinstance(flip, np.ndarray) or flip.dtype != np.bool_ or flip.shape != (out,):
            _fail(f"{name}: flip must be a bool (O,) array with O = {out}")
        planes[index] = thresholds.shape[1]
    return model


# ---------------------------------------------------------------------------------------------------
# Serialisation.

def _tensor(tensors, blobs, name, array, dtype):
    data = np.ascontiguousarray(array).astype(_DTYPES[dtype]).tobytes()
    offset = sum(len(b) for b in blobs)
    blobs.append(pad(data))
    tensors.append({"name": name, "dtype": dtype, "shape": list(np.shape(array)), "offset": offset,
                    "nbytes": len(data)})
    return name


def to_bytes(model):
    """Serialise a BnnModel (validated first)."""
    validate_model(model)
    tensors, blobs, layers = [], [], []
    for index, layer in enumerate(model.layers):
        entry = {k: v for k, v in layer.items() if k not in ("branches", "thresholds", "flip")}
        if layer["kind"] != "maxpool":
            entry["branches"] = []
            for j, branch in enumerate(layer["branches"]):
                b = {k: v for k, v in branch.items() if k not in ("weights", "scales")}
                w = branch["weights"]
                m, o = w.shape[:2]
                b["weights_shape"] = list(w.shape)
                packed = ref.pack_bits((w > 0).reshape(m, o, -1))
                b["weights"] = _tensor(tensors, blobs, f"layer{index}.branch{j}.weights", packed, "uint64")
                b["scales"] = _tensor(tensors, blobs, f"layer{index}.branch{j}.scales", branch["scales"], "int64")
                entry["branches"].append(b)
            if "thresholds" in layer:
                entry["thresholds"] = _tensor(tensors, blobs, f"layer{index}.thresholds",
                                              layer["thresholds"], "int64")
                entry["flip"] = _tensor(tensors, blobs, f"layer{index}.flip", layer["flip"], "uint8")
        layers.append(entry)
    header = {
        "kind": KIND, "format_version": FORMAT_VERSION,
        "input": {"shape": list(model.input_shape), "dtype": "uint8", "planes": 8},
        "classes": model.classes, "config": model.config, "training": model.training,
        "logit_unit": model.logit_unit, "layers": layers, "tensors": tensors,
    }
    return pack_container(MAGIC, FORMAT_VERSION, header, blobs)


def from_bytes(data, origin="model"):
    """Parse bytes written by `to_bytes`; any defect raises ModelFormatError."""
    header, blob = unpack_container(data, magic=MAGIC, version=FORMAT_VERSION, kind=KIND, origin=origin,
                                    what="a .bnn model file", version_name="model format", fail=_fail)
    try:
        arrays = {}
        for t in header["tensors"]:
            dtype = np.dtype(_DTYPES[t["dtype"]])
            count = int(np.prod(t["shape"], dtype=np.int64))
            if t["offset"] < 0 or t["nbytes"] != count * dtype.itemsize or t["offset"] + t["nbytes"] > len(blob):
                _fail(f"{origin}: tensor {t['name']} lies outside the file")
            arrays[t["name"]] = np.frombuffer(blob, dtype, count, t["offset"]).reshape(t["shape"]).copy()
        layers = []
        for entry in header["layers"]:
            layer = dict(entry)
            if layer["kind"] != "maxpool":
                layer["branches"] = []
                for b in entry["branches"]:
                    branch = dict(b)
                    shape = tuple(branch.pop("weights_shape"))
                    k = int(np.prod(shape[2:]))
                    bits = ref.unpack_bits(arrays[b["weights"]], k)
                    branch["weights"] = ref.from_bits(bits).reshape(shape)
                    branch["scales"] = arrays[b["scales"]].astype(np.int64)
                    branch["kernel"] = tuple(branch["kernel"]) if "kernel" in branch else None
                    if branch["kernel"] is None:
                        del branch["kernel"]
                    layer["branches"].append(branch)
                if "thresholds" in entry:
                    layer["thresholds"] = arrays[entry["thresholds"]].astype(np.int64)
                    layer["flip"] = arrays[entry["flip"]].astype(bool)
            layers.append(layer)
        model = BnnModel(layers, header["input"]["shape"], header["classes"], header["config"],
                         header.get("training"), header.get("logit_unit", 1.0))
    except ModelFormatError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        _fail(f"{origin} has a malformed header ({type(error).__name__}: {error})")
    try:
        return validate_model(model)
    except ModelFormatError as error:
        _fail(f"{origin}: {error}")


def save_model(path, model):
    data = to_bytes(model)
    with open(path, "wb") as file:
        file.write(data)


def load_model(path):
    """Read a .bnn file; raises ModelFormatError (also for an unreadable file)."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise ModelFormatError(f"Cannot read model file {path}: {error.strerror or error}") from None
    return from_bytes(data, origin=str(path))


# ---------------------------------------------------------------------------------------------------
# The integer forward pass.

def maxpool_planes(planes, kernel, stride):
    """Max pooling of +-1 planes (..., C, H, W) as a bitwise OR of their bits over each window."""
    bits = planes > 0
    h, w = planes.shape[-2:]
    ho, wo = (h - kernel) // stride + 1, (w - kernel) // stride + 1
    out = np.zeros(planes.shape[:-2] + (ho, wo), dtype=bool)
    for i in range(kernel):
        for j in range(kernel):
            out |= bits[..., i:i + stride * ho:stride, j:j + stride * wo:stride][..., :ho, :wo]
    return ref.from_bits(out)


def deploy_trace(model, images):
    """Every layer's result for uint8 images (B, C, H, W), for comparing simulators layer by layer.

    Returns a list with one dict per layer: "sums" is the int64 accumulator (B, O, H, W) or (B, O) of
    a conv / linear layer (None for max pooling) and "planes" its int8 +-1 output planes
    (T, B, C, H, W) or (T, B, O) (None for the last layer, whose sums are the logits).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ModelFormatError(f"Images must be uint8 pixels, not {images.dtype}")
    if images.ndim == 3 and model.input_shape[0] == 1 and images.shape[1:] == model.input_shape[1:]:
        images = images[:, None]
    if images.shape[1:] != model.input_shape:
        raise ModelFormatError(f"Images must have shape (B,) + {model.input_shape}, not {images.shape}")
    outputs = {-1: ref.pixel_planes(images)}
    trace = []
    for index, layer in enumerate(model.layers):
        if layer["kind"] == "maxpool":
            planes = maxpool_planes(outputs[layer["source"]], layer["kernel"], layer["stride"])
            trace.append({"sums": None, "planes": planes})
            outputs[index] = planes
            continue
        acc = None
        for branch in layer["branches"]:
            x = outputs[branch["source"]]
            if layer["kind"] == "linear":
                term = ref.multibasis_linear(x.reshape(x.shape[0], x.shape[1], -1), branch["weights"],
                                             branch["scales"])
            else:
                term = ref.multibasis_conv2d(x, branch["weights"], branch["scales"], branch["stride"],
                                             branch["padding"], branch["pad_value"], branch["groups"])
            acc = term if acc is None else acc + term
        ref.check_acc_range(acc, model.acc_bits)
        planes = None
        if "thresholds" in layer:
            planes = np.moveaxis(ref.threshold(np.moveaxis(acc, 1, -1), layer["thresholds"], layer["flip"]), -1, 2)
            outputs[index] = planes
        trace.append({"sums": acc, "planes": planes})
    return trace


def deploy_forward(model, images, intermediates=False):
    """The hardware's computation: uint8 images (B, C, H, W) -> int64 logits (B, classes).

    With intermediates=True, also returns the list of every layer's output: int8 +-1 planes
    (T, B, C, H, W) or (T, B, O) for hidden and pooling layers, the int64 logits for the last layer.
    """
    trace = deploy_trace(model, images)
    sums = trace[-1]["sums"]
    logits = sums.reshape(sums.shape[0], -1)
    if not intermediates:
        return logits
    return logits, [t["planes"] for t in trace[:-1]] + [logits]
