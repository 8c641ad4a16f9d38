"""BnnModel -> QONNX: the integer network as ONNX nodes that compute exactly what deploy_forward does.

    pixels   x (float32, B x C x H x W) -> p = Round((x - LO) * 255 / (HI - LO)) -> 8 planes
             plane_b = 2 * (Floor(p / 2^b) - 2 Floor(p / 2^(b+1))) - 1
    layer    acc = Sum over branches, m, n of Cast<double>(Conv(plane_n, BipolarQuant(W_m))) * s[m, n, :]
             (Pad with the layer's pad value first; MatMul after Flatten for linear layers)
    hidden   plane_t = MultiThreshold(sigma * acc, sigma * T[:, t]), out_scale 2, out_bias -1, where
             sigma = -1 on flipped channels (acc <= T) and +1 elsewhere
    pooling  MaxPool of each plane (the OR of its bits)
    output   logit_unit * acc of the last layer (float64), plus an imported model's logit_offset

A binary convolution of +-1 values is exact in float32 (|dot| <= K < 2^24); the scaled sums are formed
in float64, exact for every sum the accumulator holds, so the thresholds decide exactly as the hardware.
"""

import numpy as np

from sw.onnx import OnnxError

__all__ = ["export_model"]

_QONNX = "qonnx.custom_op.general"


class _Graph:
    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, stem):
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, stem, value, dtype=np.float32):
        from onnx import numpy_helper
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def node(self, op, inputs, stem, domain="", **attrs):
        from onnx import helper
        out = self.name(stem)
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, domain=domain, **attrs))
        return out


def _pixel_planes(g, x, input_range):
    lo, hi = input_range
    shifted = g.node("Sub", [x, g.const("input_low", lo)], "shift")
    p = g.node("Round", [g.node("Mul", [shifted, g.const("to_pixel", 255.0 / (hi - lo))], "scale")], "pixel")
    floors = [p] + [g.node("Floor", [g.node("Mul", [p, g.const(f"inv_2pow{b}", 2.0 ** -b)], f"shift{b}")],
                           f"floor{b}") for b in range(1, 9)]
    two, one = g.const("two", 2.0), g.const("one", 1.0)
    planes = []
    for b in range(8):
        bit = g.node("Sub", [floors[b], g.node("Mul", [floors[b + 1], two], f"twice{b + 1}")], f"bit{b}")
        planes.append(g.node("Sub", [g.node("Mul", [bit, two], f"double{b}"), one], f"plane{b}"))
    return planes


def _layer_sum(g, index, layer, outputs, padded):
    terms = []
    for j, branch in enumerate(layer["branches"]):
        sources = outputs[branch["source"]]
        weights, scales = branch["weights"], branch["scales"]
        for m in range(weights.shape[0]):
            w = weights[m].astype(np.float32)
            if layer["kind"] == "linear":
                w = w.reshape(w.shape[0], -1).T                    # (K, O) for MatMul
            wq = g.node("BipolarQuant", [g.const(f"layer{index}_b{j}_w{m}", w), g.const("unit_scale", 1.0)],
                        f"layer{index}_b{j}_wq{m}", domain=_QONNX)
            for n, plane in enumerate(sources):
                if layer["kind"] == "conv":
                    pad = branch["padding"]
                    if pad:
                        key = (plane, pad, branch["pad_value"])
                        if key not in padded:
                            pads = g.const("pads", [0, 0, pad, pad, 0, 0, pad, pad], np.int64)
                            padded[key] = g.node("Pad", [plane, pads, g.const("pad_value", float(branch["pad_value"]))],
                                                 "padded", mode="constant")
                        plane = padded[key]
                    kh, kw = branch["kernel"]
                    dot = g.node("Conv", [plane, wq], f"layer{index}_conv", group=int(branch["groups"]),
                                 kernel_shape=[int(kh), int(kw)], strides=[branch["stride"]] * 2, pads=[0, 0, 0, 0])
                    shape = (1, -1, 1, 1)
                else:
                    flat = g.node("Flatten", [plane], "flat", axis=1)
                    dot = g.node("MatMul", [flat, wq], f"layer{index}_matmul")
                    shape = (1, -1)
                wide = g.node("Cast", [dot], "exact", to=11)         # DOUBLE
                scale = g.const(f"layer{index}_b{j}_s{m}{n}", scales[m, n].reshape(shape), np.float64)
                terms.append(g.node("Mul", [wide, scale], f"layer{index}_term"))
    return terms[0] if len(terms) == 1 else g.node("Sum", terms, f"layer{index}_sum")


def _threshold_planes(g, index, layer, acc, conv):
    shape = (1, -1, 1, 1) if conv else (1, -1)
    sigma = np.where(layer["flip"], -1.0, 1.0)
    signed = g.node("Mul", [acc, g.const(f"layer{index}_direction", sigma.reshape(shape), np.float64)],
                    f"layer{index}_signed")
    planes = []
    for t in range(layer["thresholds"].shape[1]):
        thresholds = (sigma * layer["thresholds"][:, t]).reshape(-1, 1)
        bipolar = g.node("MultiThreshold", [signed, g.const(f"layer{index}_thresholds{t}", thresholds, np.float64)],
                         f"layer{index}_plane{t}", domain=_QONNX, out_dtype="BIPOLAR", out_scale=2.0,
                         out_bias=-1.0, data_layout="NCHW" if conv else "NC")
        planes.append(g.node("Cast", [bipolar], "plane", to=1))      # FLOAT
    return planes


def build_graph(model, input_range=(0.0, 1.0), batch=1):
    """The QONNX ModelWrapper of a BnnModel (shapes inferred)."""
    from onnx import TensorProto, helper
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes
    g = _Graph()
    outputs = {-1: _pixel_planes(g, "pixels", input_range)}
    padded = {}
    for index, layer in enumerate(model.layers):
        if layer["kind"] == "maxpool":
            k, s = layer["kernel"], layer["stride"]
            outputs[index] = [g.node("MaxPool", [plane], f"layer{index}_pool", kernel_shape=[k, k], strides=[s, s])
                              for plane in outputs[layer["source"]]]
            continue
        acc = _layer_sum(g, index, layer, outputs, padded)
        if "thresholds" in layer:
            outputs[index] = _threshold_planes(g, index, layer, acc, layer["kind"] == "conv")
        else:
            flat = g.node("Flatten", [acc], "logits_flat", axis=1)
            real = g.node("Mul", [flat, g.const("logit_unit", model.logit_unit, np.float64)], "logits")
            offset = float(model.training.get("logit_offset", 0.0))
            if offset:   # an imported model's constant, equal for every class
                g.node("Add", [real, g.const("logit_offset", offset, np.float64)], "logits")
            g.nodes[-1].output[0] = "logits"
    c, h, w = model.input_shape
    graph = helper.make_graph(
        g.nodes, "bnn", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [batch, c, h, w])],
        [helper.make_tensor_value_info("logits", TensorProto.DOUBLE, [batch, model.classes])], g.inits)
    proto = helper.make_model(graph, producer_name="bnn-fpga sw.onnx",
                              opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(_QONNX, 1)])
    helper.set_model_props(proto, {"input_range": f"{input_range[0]!r},{input_range[1]!r}",
                                   "logit_unit": repr(model.logit_unit)})
    return ModelWrapper(proto).transform(InferShapes())


def export_model(model, path, input_range=(0.0, 1.0), batch=1):
    """Write `model` (a BnnModel) as a QONNX file; OnnxError for an unwritable path."""
    import onnx
    if not isinstance(batch, int) or batch < 1:
        raise OnnxError(f"Batch must be a positive integer, not {batch!r}")
    wrapper = build_graph(model, input_range, batch)
    try:
        onnx.save(wrapper.model, str(path))
    except OSError as error:
        raise OnnxError(f"Cannot write {path}: {error.strerror or error}") from None
    return path
