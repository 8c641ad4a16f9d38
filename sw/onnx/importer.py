"""QONNX -> BnnModel: walk a binary network's nodes and streamline them into integer thresholds.

The walk keeps every computed tensor in one of three forms (docs/onnx.md):

* **pixels**: before the first Conv / Gemm / MatMul. Every element is a function of its pixel, kept as
  a table of its value for each of the 256 pixel values (computed in float32 as onnxruntime does).
* **planes**: binary activations x = sum_n beta[n] * a_n + gamma with a_n the +-1 planes of the last
  .bnn layer (for the image: the 8 pixel bit-planes, when the table is linear in the pixel's bits).
* **sum**: after a Conv / Gemm / MatMul: y = A[o] * z + B[o], where z[o] = sum_n G[n, o] dot(w[o], a_n)
  + C[o] is the layer's real sum. Batch norm and Mul / Add / Sub / Div by constants update A and B.

The next activation quantizer turns a sum into planes: with the layer's integer scales
s = G / u[o] (exact ratios where the real scales allow it) the sum is z = u[o] * acc + C[o], and
"y >= theta" becomes an integer threshold on acc, as FINN's streamlining absorbs batch norm and scalar
operations into MultiThreshold nodes. The graph's output is the last layer's sum.

A residual Add / Sub of two tensors (sums or activations) is one sum over both addends' branches; its
threshold is exact for any ratio of the two branches' real scales (_pair_threshold).
"""

import math
import os
from fractions import Fraction

import numpy as np

import sw.ref as ref
from sw.model_format import BnnModel, ModelFormatError, validate_model
from sw.onnx import OnnxError

__all__ = ["import_model"]

_PASS_THROUGH = ("Identity", "Dropout")
_ELEMENTWISE = ("Mul", "Div", "Add", "Sub")
_QUANT = ("BipolarQuant", "Quant", "MultiThreshold")
_LAYER = ("Conv", "Gemm", "MatMul")
_RESHAPE = ("Flatten", "Reshape")
_SUPPORTED = _PASS_THROUGH + _ELEMENTWISE + _QUANT + _LAYER + _RESHAPE + ("BatchNormalization", "MaxPool",
                                                                        "AveragePool")
# Relative tolerance for "equal" real numbers derived from float32 constants.
_TOL = 1e-6


def _fail(message):
    raise OnnxError(message)


def _attrs(node):
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _where(node):
    return f"node '{node.name}' ({node.op_type})"


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


# ---------------------------------------------------------------------------------------------------
# Reading the file.

def _load(path):
    """The graph with shapes inferred and constants folded, except quantizers (qonnx's cleanup, without
    renaming nodes)."""
    import onnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.fold_constants import FoldConstants
    from qonnx.transformation.general import GiveUniqueParameterTensors, RemoveStaticGraphInputs, RemoveUnusedTensors
    from qonnx.transformation.infer_shapes import InferShapes
    if not os.path.isfile(path):
        _fail(f"Cannot read ONNX model {path}: no such file")
    try:
        proto = onnx.load(str(path))
    except Exception as error:  # protobuf's DecodeError, a missing external-data file, ...
        _fail(f"Cannot read ONNX model {path}: {_one_line(error) or type(error).__name__}")
    if not proto.graph.node:
        _fail(f"{path} is not an ONNX model with a graph (no nodes)")
    if len(proto.graph.input) - len({i.name for i in proto.graph.initializer} & {i.name for i in proto.graph.input}) != 1 \
            or len(proto.graph.output) != 1:
        _fail(f"{path}: the graph must have one input and one output, not {len(proto.graph.input)} and "
              f"{len(proto.graph.output)}")
    unknown = [n for n in proto.graph.node if n.op_type not in _SUPPORTED and n.domain in ("", "ai.onnx")
               and n.op_type not in ("Constant", "Transpose", "Shape", "Gather", "Unsqueeze", "Concat", "Cast")]
    for index, node in enumerate(proto.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
    try:
        model = ModelWrapper(proto)
        # qonnx's cleanup without its renaming, so that messages name the nodes as the file does.
        for transformation in (InferShapes(), GiveUniqueParameterTensors(),
                               FoldConstants(exclude_op_types=["Quant", "BipolarQuant", "Trunc"]),
                               RemoveUnusedTensors(), RemoveStaticGraphInputs()):
            model = model.transform(transformation)
    except Exception as error:
        first = unknown[0] if unknown else None
        if first is not None:
            _fail(f"{_where(first)}: this op type is not supported ({_SUPPORTED_LINE})")
        _fail(f"{path}: qonnx cannot clean up the graph ({_one_line(error)})")
    return model


def _one_line(error):
    text = str(error).strip().splitlines()
    return text[0][:200] if text else ""


_SUPPORTED_LINE = ("supported: Conv, Gemm, MatMul, BatchNormalization, Mul, Div, Add, Sub by constants, MaxPool, "
                   "AveragePool before a 1x1 Conv, Flatten, Reshape, BipolarQuant, Quant, MultiThreshold")


# ---------------------------------------------------------------------------------------------------
# Elementwise evaluation (float32, as onnxruntime and qonnx compute).

def _quant_args(node, consts):
    attrs = _attrs(node)
    scale, zero, bits = (consts[name] for name in node.input[1:4])
    return (np.asarray(scale, np.float32), np.asarray(zero, np.float32), float(np.asarray(bits).reshape(-1)[0]),
            int(attrs.get("signed", 1)), int(attrs.get("narrow", 0)), _text(attrs.get("rounding_mode", "ROUND")))


def _evaluate(node, x, consts, batch_axes=1):
    """Apply an elementwise node (its one variable input x, any other inputs constants) to x.

    x may carry extra leading axes (a table of 256 pixel values); constants broadcast as in ONNX
    against the (1, ...) tensor, which is why `batch_axes` leading axes are skipped."""
    op = node.op_type
    x = np.asarray(x, np.float32)
    if op in _PASS_THROUGH:
        return x
    if op in _ELEMENTWISE:
        a, b = node.input[:2]
        other = np.asarray(consts[b] if a not in consts else consts[a], np.float32)
        other = other.reshape(other.shape[1:]) if other.ndim > x.ndim - batch_axes and other.shape[0] == 1 else other
        first, second = (x, other) if a not in consts else (other, x)
        return {"Mul": np.multiply, "Div": np.divide, "Add": np.add, "Sub": np.subtract}[op](first, second) \
            .astype(np.float32)
    if op == "BipolarQuant":
        from qonnx.custom_op.general.bipolar_quant import binary_quant
        return np.asarray(binary_quant(x, _squeeze_batch(consts[node.input[1]], x, batch_axes)), np.float32)
    if op == "MultiThreshold":
        from qonnx.custom_op.general.multithreshold import multithreshold
        attrs = _attrs(node)
        lead = x.reshape((-1,) + x.shape[batch_axes:]) if batch_axes else x[None]
        out = multithreshold(lead, np.asarray(consts[node.input[1]], np.float32), float(attrs.get("out_scale", 1.0)),
                             float(attrs.get("out_bias", 0.0)))
        return np.asarray(out, np.float32).reshape(x.shape)
    if op == "Quant":
        from qonnx.custom_op.general.intquant import int_quant
        scale, zero, bits, signed, narrow, mode = _quant_args(node, consts)
        return np.asarray(int_quant(x, _squeeze_batch(scale, x, batch_axes), _squeeze_batch(zero, x, batch_axes),
                                    np.float32(bits), signed, narrow, mode), np.float32)
    _fail(f"{_where(node)}: cannot be evaluated here")


def _squeeze_batch(value, x, batch_axes):
    value = np.asarray(value)
    if value.ndim > x.ndim - batch_axes and value.ndim and value.shape[0] == 1:
        return value.reshape(value.shape[1:])
    return value


def _per_channel(node, value, shape, what):
    """A constant broadcast onto the sample shape, as one value per channel (O,); refuses values that
    vary over positions (the hardware's thresholds and scales are per channel)."""
    value = np.asarray(value, np.float64)
    try:
        full = np.broadcast_to(value, (1,) + tuple(shape))[0] if value.ndim <= len(shape) + 1 else None
    except ValueError:
        full = None
    if full is None:
        _fail(f"{_where(node)}: its {what} of shape {value.shape} does not broadcast onto the tensor {tuple(shape)}")
    flat = full.reshape(shape[0], -1)
    if not np.all(flat == flat[:, :1]):
        _fail(f"{_where(node)}: its {what} varies over positions within a channel; the hardware has one value per "
              f"channel")
    return flat[:, 0].copy()


# ---------------------------------------------------------------------------------------------------
# Activation quantizers: per output plane, (theta per channel, direction, strict), and the levels.

def _activation(node, consts, shape):
    """A quantizer applied to a layer's sum y (shape (O, ...)): returns (planes, beta, gamma) with
    planes a list of (theta (O,), direction (O,) of +-1, strict): plane = +1 where
    direction * (y - theta) >= 0 (> 0 if strict); the quantizer's output is sum_n beta[n] a_n + gamma,
    beta (N, O), gamma (O,)."""
    op = node.op_type
    o = shape[0]
    for name in node.input[1:]:
        if name and name not in consts:
            _fail(f"{_where(node)}: its input '{name}' is computed at run time; the scale, zero point, bit width "
                  f"and thresholds must be constants")
    if op == "BipolarQuant":
        scale = _per_channel(node, consts[node.input[1]], shape, "scale")
        return [(np.zeros(o), np.ones(o), False)], scale[None, :], np.zeros(o)
    if op == "MultiThreshold":
        attrs = _attrs(node)
        if _text(attrs.get("data_layout", "NCHW")) not in ("", "NCHW", "NC"):
            _fail(f"{_where(node)}: data layout {_text(attrs.get('data_layout'))} is not supported (NCHW only)")
        thresholds = np.asarray(consts[node.input[1]], np.float64)
        if thresholds.ndim != 2 or thresholds.shape[0] not in (1, o):
            _fail(f"{_where(node)}: thresholds of shape {thresholds.shape} do not fit {o} channels")
        if thresholds.shape[1] != 1:
            _fail(f"{_where(node)}: {thresholds.shape[1]} thresholds per channel make "
                  f"{math.ceil(math.log2(thresholds.shape[1] + 1))}-bit activations; only the input may have more "
                  f"than 1 bit")
        out_scale, out_bias = float(attrs.get("out_scale", 1.0)), float(attrs.get("out_bias", 0.0))
        theta = np.broadcast_to(thresholds[:, 0], (o,)).astype(np.float64)
        return ([(theta, np.ones(o), False)], np.full((1, o), out_scale / 2),
                np.full(o, out_scale / 2 + out_bias))
    scale, zero, bits, signed, narrow, mode = _quant_args(node, consts)
    if bits != 1:
        _fail(f"{_where(node)}: {bits:g}-bit activations; only the input may have more than 1 bit (hidden "
              f"activations must be binary)")
    scale = _per_channel(node, scale, shape, "scale").astype(np.float64)
    zero = _per_channel(node, zero, shape, "zero point").astype(np.float64)
    if np.any(scale == 0):
        _fail(f"{_where(node)}: a scale is 0")
    direction = np.sign(scale)
    if signed:  # y / s + z >= 0 -> +1
        return [(-zero * scale, direction, False)], scale[None, :], -zero * scale
    if narrow:
        _fail(f"{_where(node)}: an unsigned narrow 1-bit quantizer has a single level")
    if mode.upper() not in ("ROUND", "HALF_EVEN"):
        _fail(f"{_where(node)}: rounding mode {mode} is not supported for 1-bit activations (ROUND only)")
    # q = round(clip(y / s + z, 0, 1)) is 1 exactly where y / s + z > 0.5 (0.5 rounds to even, 0).
    return [((0.5 - zero) * scale, direction, True)], (scale / 2)[None, :], scale / 2 - zero * scale


# ---------------------------------------------------------------------------------------------------
# Integer scales and thresholds.

def _exact_ratios(values, limit):
    """Integers proportional to `values` (exactly, up to float noise) with magnitudes <= limit, or None."""
    peak = np.abs(values).max()
    if peak == 0:
        return np.zeros(values.shape, np.int64), 1.0
    fractions = [Fraction(float(v / peak)).limit_denominator(limit) for v in values.ravel()]
    if any(abs(float(f) - float(v / peak)) > _TOL for f, v in zip(fractions, values.ravel())):
        return None
    common = 1
    for f in fractions:
        common = common * f.denominator // math.gcd(common, f.denominator)
        if common > limit:
            return None
    ints = np.array([int(f * common) for f in fractions], np.int64).reshape(values.shape)
    return ints, peak / common


def _integer_scales(name, G, k, config, per_channel):
    """Integer scales s (N, O) and units u (O,) with G ~= u * s, exact where G's ratios allow it.

    Returns (s, u, exact)."""
    n, o = G.shape
    s = np.zeros((n, o), np.int64)
    u = np.ones(o)
    exact = True
    columns = [[c] for c in range(o)] if per_channel else [list(range(o))]
    budget = (config.acc_max - 1) // max(1, k)  # sum over n of |s| must stay below this
    for cols in columns:
        block = G[:, cols]
        found = _exact_ratios(block, config.scale_max)
        if found is not None and np.abs(found[0]).sum(axis=0).max() <= budget:
            s[:, cols], u[cols] = found[0], found[1]
            continue
        exact = False
        peak = np.abs(block).max()
        target = min(config.scale_max, budget // max(1, n))
        if target < 2 ** 6:
            _fail(f"{name}: its sums could overflow the {config.acc_bits}-bit accumulator even with 6-bit scales")
        s[:, cols] = np.round(block / peak * target).astype(np.int64)
        u[cols] = peak / target
    bound = ref.acc_bound(s[None], k)
    if bound.max() > config.acc_max - 1:
        _fail(f"{name}: accumulator bound {int(bound.max())} exceeds the {config.acc_bits}-bit limit {config.acc_max}")
    return s, u, exact


def _thresholds(planes, lam_base, mu_base, bound, config):
    """(O, T) integer thresholds and flips: plane t is +1 where d * (lam * acc + mu - theta) >= 0."""
    o = lam_base.shape[0]
    tmin = -(1 << (config.acc_bits - 1))
    never = config.acc_max
    thresholds = np.zeros((o, len(planes)), np.int64)
    flip = np.zeros(o, bool)
    for t, (theta, direction, strict) in enumerate(planes):
        lam = direction * lam_base
        mu = direction * (mu_base - theta)
        for c in range(o):
            if lam[c] == 0 or not np.isfinite(lam[c]):
                plus = mu[c] > 0 if strict else mu[c] >= 0
                flip[c] = False if plus else True
                thresholds[c, t] = tmin
                continue
            if t and flip[c] != (lam[c] < 0):
                _fail("internal: planes of one channel compare in different directions")
            flip[c] = lam[c] < 0
            exact = -mu[c] / lam[c]
            # A boundary within float64 noise of an integer is that integer: a tie the float graph
            # reaches exactly (sums of +-1 against a threshold of 0, say).
            nearest = round(exact)
            if abs(exact - nearest) <= 1e-9 * max(1.0, abs(exact)):
                exact = float(nearest)
            if lam[c] > 0:  # acc >= exact (> if strict)
                value = math.floor(exact) + 1 if strict else math.ceil(exact)
                value = tmin if value <= -bound[c] else never if value > bound[c] else value
            else:  # acc <= exact (< if strict)
                value = math.ceil(exact) - 1 if strict else math.floor(exact)
                value = never if value >= bound[c] else tmin if value < -bound[c] else value
            thresholds[c, t] = value
    return thresholds, flip


def _simple(value):
    """A value computed from float32 constants, as the simple fraction it is meant to be (255/256)."""
    fraction = Fraction(value).limit_denominator(1 << 12)
    return float(fraction) if abs(float(fraction) - value) <= 1e-6 * max(1.0, abs(value)) else value


# ---------------------------------------------------------------------------------------------------
# The walk.

class _Walker:
    def __init__(self, model, config, input_range, path, input_shape=None):
        self.graph = model.graph
        self.config = config
        self.input_range = input_range
        self.path = path
        self.layers = []
        self.approximate = []
        self.consts = {t.name: _to_array(t) for t in self.graph.initializer}
        self.opset = next((o.version for o in model.model.opset_import if o.domain in ("", "ai.onnx")), 13)
        graph_input = [i for i in self.graph.input if i.name not in self.consts][0]
        dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
        if len(dims) not in (2, 3, 4) or min(dims[1:]) < 1:
            _fail(f"{path}: the input '{graph_input.name}' has shape {dims}; expected a fixed (N, C, H, W), "
                  f"(N, H, W) or (N, K)")
        # (N, K) and (N, H, W) are images (1, 1, K) and (1, H, W) unless the user says how to fold them;
        # every shape flattens in the same order.
        self.input_shape = tuple([1] * (4 - len(dims)) + dims[1:])
        self.batch = dims[0]
        if input_shape is not None:
            input_shape = tuple(int(v) for v in input_shape)
            if len(input_shape) != 3 or int(np.prod(input_shape)) != int(np.prod(dims[1:])) or \
                    (len(dims) == 4 and input_shape != tuple(dims[1:])):
                _fail(f"{path}: input shape {','.join(map(str, input_shape))} does not fit the model input "
                      f"'{graph_input.name}' of shape {dims}")
            self.input_shape = input_shape
        self.current = graph_input.name
        self.kind = "pixels"
        self.shape = tuple(dims[1:])
        lo, hi = input_range
        pixels = np.arange(256, dtype=np.float64)
        column = (lo + (hi - lo) * pixels / 255.0).astype(np.float32)
        self.table = np.broadcast_to(column.reshape((256,) + (1,) * len(self.shape)), (256,) + self.shape).copy()
        self.input_quant = None   # (node, table before it) of the last quantizer on the pixels
        self.subsample = 1        # planes: every subsample-th position of layer `source`'s map
        self.converted = {}       # id of a pixel table -> (beta, gamma, source) of its planes
        self.average = None       # planes: (kernel, stride, shape before) of an AveragePool a 1x1 Conv reads

    # --- dispatch ---------------------------------------------------------------------------------
    _STATE = ("kind", "shape", "table", "beta", "gamma", "source", "subsample", "average", "pending", "A", "B",
              "pools", "input_quant")

    def _save(self, name):
        self.states[name] = {key: getattr(self, key, None) for key in self._STATE}

    def _restore(self, name):
        for key, value in self.states[name].items():
            setattr(self, key, dict(value) if isinstance(value, dict) else list(value) if isinstance(value, list)
                    else value)
        self.current = name

    def run(self):
        output = self.graph.output[0].name
        self.states = {}
        self._save(self.current)
        for node in self.graph.node:
            dynamic = [name for name in node.input if name and name not in self.consts]
            if not dynamic:
                self._fold(node)
                continue
            if node.op_type not in _SUPPORTED:
                _fail(f"{_where(node)}: this op type is not supported ({_SUPPORTED_LINE})")
            unknown = [d for d in dynamic if d not in self.states]
            if unknown:
                _fail(f"{_where(node)}: reads '{unknown[0]}', which no node before it computes")
            if len(dynamic) > 1:
                if node.op_type in ("Add", "Sub") and len(dynamic) == 2:
                    self._residual(node, dynamic)
                    self._save(node.output[0])
                    continue
                if node.op_type in _QUANT or node.op_type in _LAYER:
                    late = [d for d in dynamic if d != node.input[0]][0]
                    what = ("the scale, zero point, bit width and thresholds" if node.op_type in _QUANT
                            else "the weights and bias")
                    _fail(f"{_where(node)}: its input '{late}' is computed at run time; {what} must be constants")
                _fail(f"{_where(node)}: reads two computed tensors; only a residual Add / Sub of two is imported")
            if dynamic[0] != self.current:
                self._restore(dynamic[0])
            self._step(node)
            self.current = node.output[0]
            self._save(self.current)
        if output not in self.states:
            _fail(f"{self.path}: the graph output '{output}' is not computed by its nodes")
        self._restore(output)
        if self.kind != "sum":
            _fail(f"{self.path}: the graph output is not the sum of a Conv / Gemm / MatMul (the last layer returns "
                  f"integer sums); it ends in {'activations' if self.kind == 'planes' else 'pixel operations'}")
        if "terms" in self.pending:
            self._close_residual_last()
        else:
            self._close_last()
        return self.layers

    def _fold(self, node):
        """A node of constants only (a weight quantizer): evaluate it."""
        from qonnx.core.onnx_exec import execute_node
        if node.op_type in ("BipolarQuant", "Quant"):
            value = _evaluate(node, self.consts[node.input[0]], self.consts, batch_axes=0)
        else:
            context = {name: self.consts[name] for name in node.input if name}
            for name in node.output:
                context[name] = None
            try:
                execute_node(node, context, self.graph, self.opset)
            except Exception as error:
                _fail(f"{_where(node)}: cannot evaluate it on its constant inputs ({_one_line(error)})")
            value = context[node.output[0]]
        self.consts[node.output[0]] = np.asarray(value)

    def _step(self, node):
        op = node.op_type
        if op in _PASS_THROUGH:
            return
        if self.kind == "planes" and self.average is not None and op != "Conv":
            _fail(f"{_where(node)}: reads an average of binary activations, which is not binary; only a 1x1 Conv may "
                  f"read an AveragePool (the two are one binary convolution)")
        if self.kind == "planes" and self.subsample != 1 and op not in _ELEMENTWISE:
            self._materialize_subsample()
        if op in _RESHAPE:
            return self._reshape(node)
        if self.kind == "pixels":
            if op in _ELEMENTWISE or op in _QUANT:
                if op in _QUANT:
                    self.input_quant = (node, self.table)
                    for name in node.input[1:]:
                        if name and name not in self.consts:
                            _fail(f"{_where(node)}: its input '{name}' is computed at run time; it must be a constant")
                self.table = _evaluate(node, self.table, self.consts)
                return
            if op in _LAYER:
                self._pixels_to_planes(node)
                return self._layer(node)
            if op == "MaxPool":
                _fail(f"{_where(node)}: pools the input pixels; the accelerator pools only a layer's output")
            _fail(f"{_where(node)}: {op} on the input pixels is not supported (before the first Conv / Gemm / "
                  f"MatMul only elementwise constants and one quantizer)")
        if self.kind == "planes":
            if op in _LAYER:
                return self._layer(node)
            if op == "MaxPool":
                return self._pool_planes(node)
            if op == "AveragePool":
                return self._average_planes(node)
            if op in _ELEMENTWISE:
                return self._affine_planes(node)
            if op in _QUANT:
                return self._requantize(node)
            _fail(f"{_where(node)}: {op} on binary activations is not supported")
        # sum
        if op in _ELEMENTWISE or op == "BatchNormalization":
            return self._affine_sum(node)
        if op in _QUANT:
            return self._close_residual_hidden(node) if "terms" in self.pending else self._close_hidden(node)
        if op == "MaxPool":
            return self._pool_sum(node)
        if op in _LAYER:
            _fail(f"{_where(node)}: follows another Conv / Gemm / MatMul without a binary activation between them")
        _fail(f"{_where(node)}: {op} is not supported here")

    # --- reshapes -----------------------------------------------------------------------------------
    def _reshape(self, node):
        if node.op_type == "Flatten":
            axis = int(_attrs(node).get("axis", 1))
            if axis != 1:
                _fail(f"{_where(node)}: flattens from axis {axis}; only axis 1 (keep the batch) is supported")
            new = (int(np.prod(self.shape)),)
        else:
            target = [int(v) for v in np.asarray(self.consts.get(node.input[1], [])).reshape(-1)]
            total = int(np.prod(self.shape))
            if not target or target[0] not in (1, 0, -1, self.batch):
                _fail(f"{_where(node)}: reshapes the batch dimension ({target})")
            rest = target[1:]
            if rest.count(-1) > 1:
                _fail(f"{_where(node)}: bad target shape {target}")
            known = int(np.prod([v for v in rest if v != -1])) if rest else 1
            rest = [total // known if v == -1 else v for v in rest]
            if int(np.prod(rest)) != total:
                _fail(f"{_where(node)}: cannot reshape {self.shape} to {target}")
            new = tuple(rest)
        if self.kind == "pixels":
            self.table = self.table.reshape((256,) + new)
        elif self.kind == "planes":
            if len(new) != 1 and new != self.shape:
                _fail(f"{_where(node)}: reshapes activations {self.shape} to {new}; only flattening for a Gemm / "
                      f"MatMul is supported")
            self.beta = self.beta.reshape((self.beta.shape[0],) + new)
            self.gamma = self.gamma.reshape(new)
        else:
            if int(np.prod(self.shape[1:])) != 1 or new[0] != self.shape[0] or int(np.prod(new[1:])) != 1:
                _fail(f"{_where(node)}: reshapes a sum of shape {self.shape} to {new}; reshape only after the "
                      f"activation (or where every channel is a single value)")
        self.shape = new

    # --- pixels -------------------------------------------------------------------------------------
    def _pixels_to_planes(self, node):
        """The table as sum_b beta[b] plane_b + gamma (exactly), or a refusal naming the quantizer. A table
        read by two layers is converted once (one thermometer layer)."""
        if id(self.table) in self.converted:
            self.beta, self.gamma, self.source = self.converted[id(self.table)]
            return
        self._convert_pixels(node)
        self.converted[id(self.table)] = (self.beta, self.gamma, self.source)

    def _convert_pixels(self, node):
        table = self.table.astype(np.float64).reshape(256, -1)
        bits = ((np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1).astype(np.float64)
        # Differences of float32 values are exact in float64, so an exactly linear table gives exact
        # coefficients (a least-squares fit would add rounding noise to ties at a threshold).
        offset, c = table[0], table[1 << np.arange(8)] - table[0]          # (E,), (8, E)
        residual = np.abs(offset + bits @ c - table)
        if residual.max() > _TOL * max(1e-30, float(np.abs(table).max())):
            if not self._thermometer(table):
                self._refuse_table(node, table, residual)
            return
        self.beta = (c / 2).reshape((8,) + self.shape)
        self.gamma = (offset + c.sum(axis=0) / 2).reshape(self.shape)
        self.source = -1

    def _thermometer(self, table):
        """A table with few levels per channel, monotone in the pixel (a 1-bit input quantizer whose
        threshold is not a bit boundary): a first layer of 1x1 convolutions computes acc = 2 p - 255 (or
        twice that) per channel from the pixel planes and thresholds it at each step, so plane j is
        [p >= t_j] and the table is L_0 + sum_j step_j [p >= t_j]. False if the table is not of that form."""
        c, h, w = self.input_shape
        if table.shape[1] != c * h * w:
            return False
        per_channel = table.reshape(256, c, h * w)
        if not np.all(per_channel == per_channel[:, :, :1]):
            return False
        columns = per_channel[:, :, 0]                          # (256, C)
        steps = np.diff(columns, axis=0)                        # (255, C)
        rising, falling = np.all(steps >= 0, axis=0), np.all(steps <= 0, axis=0)
        if not np.all(rising | falling):
            return False
        edges = [np.flatnonzero(steps[:, ch]) + 1 for ch in range(c)]   # pixels where the level changes
        planes = max(len(e) for e in edges)
        if planes == 0 or planes > self.config.max_abases:
            return False
        thresholds = np.full((c, planes), self.config.acc_max, np.int64)   # "never" pads shorter channels
        beta = np.zeros((planes, c))
        for ch, pixels in enumerate(edges):
            thresholds[ch, :len(pixels)] = 2 * pixels - 255     # acc = 2 p - 255 >= 2 t - 255
            beta[:len(pixels), ch] = steps[pixels - 1, ch] / 2
        gamma = columns[0] + beta.sum(axis=0)
        powers = (np.int64(1) << np.arange(8, dtype=np.int64))[None, :, None]
        if c == 1:     # acc = sum_b 2^b plane_b = 2p - 255
            weights = np.ones((1, 1, 1, 1, 1), np.int8)
            scales = powers.copy()
        else:
            # Output channel o must read input channel o alone, and the compiler takes no grouped first
            # layer: two weight bases, all +1 and all +1 but -1 at channel o, with scales 2^b and -2^b,
            # give acc = sum_b 2^b (dot(B_0, plane_b) - dot(B_1, plane_b)) = 2 (2p - 255).
            weights = np.ones((2, c, c, 1, 1), np.int8)
            weights[1, np.arange(c), np.arange(c)] = -1
            scales = np.concatenate([np.broadcast_to(powers, (1, 8, c)), -np.broadcast_to(powers, (1, 8, c))])
            thresholds = np.where(thresholds == self.config.acc_max, thresholds, 2 * thresholds)
        self.layers.append({"kind": "conv", "out_features": c, "thresholds": thresholds,
                            "flip": np.zeros(c, bool), "branches": [
                                {"source": -1, "kind": "conv", "kernel": (1, 1), "stride": 1, "padding": 0,
                                 "pad_value": -1, "groups": 1, "wbases": int(weights.shape[0]), "abases": 8,
                                 "k": c, "weights": weights, "scales": scales.astype(np.int64)}]})
        expand = per_channel.shape[2]
        self.beta = np.repeat(beta[:, :, None], expand, axis=2).reshape((planes,) + self.shape)
        self.gamma = np.repeat(gamma[:, None], expand, axis=1).reshape(self.shape)
        self.source = len(self.layers) - 1
        return True

    def _refuse_table(self, node, table, residual):
        element = int(np.argmax(residual.max(axis=0)))
        pixel = int(np.argmax(residual[:, element]))
        if self.input_quant is None:
            _fail(f"{_where(node)}: its input is not a linear function of the pixel's bits (pixel {pixel} is off); "
                  f"the hardware reads pixels as 8 bit-planes")
        quant, before = self.input_quant
        hint = self._exact_range_hint(quant, before)
        _fail(f"{_where(quant)}: its levels are not a linear function of the pixel's bits under --input-range "
              f"{self.input_range[0]:g},{self.input_range[1]:g} (pixel {pixel} gives {table[pixel, element]:g}); "
              f"the hardware reads pixels as 8 bit-planes" + hint)

    def _exact_range_hint(self, quant, before):
        """An input range under which the quantizer's integer levels are pixel + its minimum."""
        if quant.op_type != "Quant":
            return ""
        scale, zero, bits, signed, narrow, _ = _quant_args(quant, self.consts)
        if scale.size != 1 or zero.size != 1:
            return ""
        pre = before.astype(np.float64).reshape(256, -1)
        if not np.allclose(pre, pre[:, :1]):
            return ""
        slope = (pre[255, 0] - pre[0, 0]) / 255.0
        offset = pre[0, 0]
        lo, hi = self.input_range
        a = slope * 255.0 / (hi - lo)               # pre = a * x + b for the model input x
        b = offset - a * lo
        if a == 0:
            return ""
        from qonnx.custom_op.general.intquant import min_int
        qmin = min_int(bool(signed), bool(narrow), int(bits))
        s, z = float(scale.reshape(-1)[0]), float(zero.reshape(-1)[0])
        new_lo = _simple((s * (qmin - z) - b) / a)
        new_hi = _simple(new_lo + 255.0 * s / a)
        return f"; --input-range {new_lo:.10g},{new_hi:.10g} maps the pixels onto its levels exactly"

    # --- planes -------------------------------------------------------------------------------------
    def _affine_planes(self, node):
        a, b = node.input[:2]
        const = np.asarray(self.consts[b] if a not in self.consts else self.consts[a], np.float64)
        const = np.broadcast_to(const, (1,) + self.shape)[0] if const.ndim <= len(self.shape) + 1 else None
        if const is None:
            _fail(f"{_where(node)}: its constant does not broadcast onto {self.shape}")
        op = node.op_type
        if op == "Mul":
            self.beta, self.gamma = self.beta * const, self.gamma * const
        elif op == "Div":
            if a in self.consts:
                _fail(f"{_where(node)}: divides a constant by the activations")
            self.beta, self.gamma = self.beta / const, self.gamma / const
        elif op == "Add":
            self.gamma = self.gamma + const
        elif a in self.consts:  # const - x
            self.beta, self.gamma = -self.beta, const - self.gamma
        else:
            self.gamma = self.gamma - const

    def _requantize(self, node):
        """A quantizer on binary activations maps each of the two levels somewhere: still binary."""
        if self.beta.shape[0] != 1:
            _fail(f"{_where(node)}: quantizes {self.beta.shape[0]}-plane activations")
        for name in node.input[1:]:
            if name and name not in self.consts:
                _fail(f"{_where(node)}: its input '{name}' is computed at run time; it must be a constant")
        if node.op_type == "MultiThreshold":
            _fail(f"{_where(node)}: thresholds activations that are already binary")
        low = _evaluate(node, (self.gamma - self.beta[0])[None].astype(np.float32), self.consts)[0]
        high = _evaluate(node, (self.gamma + self.beta[0])[None].astype(np.float32), self.consts)[0]
        self.beta = ((high.astype(np.float64) - low) / 2)[None]
        self.gamma = (high.astype(np.float64) + low) / 2

    def _pool_planes(self, node):
        geometry = self._pool_geometry(node)
        if geometry["kernel"] == 1:
            # A 1x1 window keeps every stride-th position: a residual Add reads it as a strided identity
            # (a 1x1 stride-s convolution); any other reader gets a maxpool layer.
            beta, gamma = self._channel_values(node, self.beta), self._channel_values(node, self.gamma[None])[0]
            self.subsample *= geometry["stride"]
            self.shape = (self.shape[0],) + self._pooled_hw(geometry)
            self.beta = np.broadcast_to(beta[:, :, None, None], (beta.shape[0],) + self.shape).copy()
            self.gamma = np.broadcast_to(gamma[:, None, None], self.shape).copy()
            return
        if self.beta.shape[0] != 1 or np.any(self.beta <= 0):
            _fail(f"{_where(node)}: pools activations whose value falls as their bit rises (a negative scale); the "
                  f"hardware's pooling is an OR of the bits")
        self._emit_pool(geometry)
        self.source = len(self.layers) - 1
        c = self.shape[0]
        beta, gamma = self._channel_values(node, self.beta), self._channel_values(node, self.gamma[None])[0]
        self.shape = (c,) + self._pooled_hw(geometry)
        self.beta = np.broadcast_to(beta[:, :, None, None], (beta.shape[0],) + self.shape).copy()
        self.gamma = np.broadcast_to(gamma[:, None, None], self.shape).copy()

    def _average_planes(self, node):
        """AveragePool of activations, for the 1x1 Conv after it (Bi-Real's downsampling shortcut): the
        two are a k x k stride-s convolution whose weights repeat the 1x1 weights over the window, / k^2."""
        geometry = self._pool_geometry(node)
        self.average = (geometry["kernel"], geometry["stride"], self.shape)
        self.shape = (self.shape[0],) + self._pooled_hw(geometry)

    def _materialize_subsample(self):
        self.layers.append({"kind": "maxpool", "source": self.source, "kernel": 1, "stride": self.subsample})
        self.source = len(self.layers) - 1
        self.subsample = 1

    def _pool_geometry(self, node):
        attrs = _attrs(node)
        kernel = list(attrs.get("kernel_shape", []))
        strides = list(attrs.get("strides", kernel))
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if len(self.shape) != 3:
            _fail(f"{_where(node)}: pools a tensor of shape {self.shape}; expected (C, H, W)")
        if len(kernel) != 2 or kernel[0] != kernel[1] or len(set(strides)) != 1:
            _fail(f"{_where(node)}: kernel {kernel} with strides {strides}; only square kernels with one stride")
        if any(pads) or _text(attrs.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID"):
            _fail(f"{_where(node)}: pads its input; the hardware's pooling windows never pad")
        if any(d != 1 for d in attrs.get("dilations", [1, 1])):
            _fail(f"{_where(node)}: dilated pooling is not supported")
        k, s = kernel[0], strides[0]
        h, w = self.shape[1:]
        if int(attrs.get("ceil_mode", 0)) and ((h - k) % s or (w - k) % s):
            _fail(f"{_where(node)}: ceil_mode adds partial windows; the hardware's pooling has none")
        return {"kind": "maxpool", "kernel": int(k), "stride": int(s)}

    def _pooled_hw(self, geometry):
        k, s = geometry["kernel"], geometry["stride"]
        return tuple((v - k) // s + 1 for v in self.shape[1:])

    def _emit_pool(self, geometry):
        self.layers.append(dict(geometry, source=len(self.layers) - 1))

    def _channel_values(self, node, values):
        """(N, C, H, W) -> (N, C), refusing values that vary within a channel."""
        flat = values.reshape(values.shape[0], values.shape[1], -1)
        if not np.allclose(flat, flat[:, :, :1], rtol=_TOL, atol=_TOL * max(1e-30, float(np.abs(flat).max()))):
            _fail(f"{_where(node)}: its input's scale or offset varies over positions within a channel; the "
                  f"hardware has one per channel")
        return flat[:, :, 0]

    # --- layers -------------------------------------------------------------------------------------
    def _layer(self, node):
        op = node.op_type
        attrs = _attrs(node)
        name = f"layer {len(self.layers)} ({'conv' if op == 'Conv' else 'linear'}, {_where(node)})"
        if op == "MatMul":
            if node.input[1] not in self.consts:
                _fail(f"{_where(node)}: multiplies a constant by the activations; expected activations x weights")
            weights, bias = np.asarray(self.consts[node.input[1]], np.float64).T, None
        elif op == "Gemm":
            if int(attrs.get("transA", 0)) or node.input[0] in self.consts:
                _fail(f"{_where(node)}: transposes or multiplies the activations from the right")
            weights = np.asarray(self.consts[node.input[1]], np.float64) * float(attrs.get("alpha", 1.0))
            if not int(attrs.get("transB", 0)):
                weights = weights.T
            bias = None
            if len(node.input) > 2 and node.input[2]:
                bias = np.broadcast_to(np.asarray(self.consts[node.input[2]], np.float64) * float(attrs.get("beta", 1.0)),
                                       (1, weights.shape[0]))[0]
        else:
            weights = np.asarray(self.consts[node.input[1]], np.float64)
            bias = np.asarray(self.consts[node.input[2]], np.float64) if len(node.input) > 2 and node.input[2] else None
        if op == "Conv":
            return self._conv(node, name, weights, bias, attrs)
        if len(self.shape) != 1:
            _fail(f"{_where(node)}: multiplies a tensor of shape {self.shape}; flatten it first")
        if weights.ndim != 2 or weights.shape[1] != self.shape[0]:
            _fail(f"{_where(node)}: weights of shape {weights.shape} for {self.shape[0]} inputs")
        o, k = weights.shape
        w, G, C = self._linear_terms(node, weights, bias, self.beta, self.gamma)
        branch = {"source": self.source, "kind": "linear", "wbases": 1, "abases": int(self.beta.shape[0]),
                  "k": int(k), "weights": w[None]}
        self._open_sum(node, name, "linear", branch, G, C, (o,))
        self.pending["linear"] = (node, weights, bias, self.beta, self.gamma)

    def _linear_terms(self, node, weights, bias, beta, gamma):
        sign_in = self._input_signs(node, beta)                # (K,)
        effective = weights[None] * beta[:, None, :]           # (N, O, K)
        w, G = self._binary(node, weights * sign_in[None], effective)
        return w, G, weights @ gamma + (bias if bias is not None else 0.0)

    def _conv(self, node, name, weights, bias, attrs):
        if self.average is not None:
            k, s, before = self.average
            if weights.shape[2:] != (1, 1) or any(v != 1 for v in attrs.get("strides", [1, 1])) or \
                    any(attrs.get("pads", [0])) or int(attrs.get("group", 1)) != 1:
                _fail(f"{_where(node)}: reads an AveragePool; only an ungrouped 1x1 convolution of stride 1 without "
                      f"padding may (the two are one binary convolution)")
            weights = np.repeat(np.repeat(weights, k, axis=2), k, axis=3) / (k * k)
            attrs = dict(attrs, kernel_shape=[k, k], strides=[s, s], pads=[0, 0, 0, 0])
            self.shape, self.average = before, None
        if len(self.shape) != 3 or weights.ndim != 4:
            _fail(f"{_where(node)}: only 2-D convolutions of (C, H, W) tensors are supported")
        group = int(attrs.get("group", 1))
        kernel = list(attrs.get("kernel_shape", weights.shape[2:]))
        strides = list(attrs.get("strides", [1, 1]))
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if any(d != 1 for d in attrs.get("dilations", [1, 1])):
            _fail(f"{_where(node)}: dilated convolutions are not supported")
        if _text(attrs.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID"):
            _fail(f"{_where(node)}: auto_pad {_text(attrs.get('auto_pad'))} is not supported; give explicit pads")
        if len(set(strides)) != 1 or len(set(pads)) != 1:
            _fail(f"{_where(node)}: strides {strides} and pads {pads} must be equal on every side")
        c, h, wd = self.shape
        o, cg, kh, kw = weights.shape
        if c != cg * group or o % group:
            _fail(f"{_where(node)}: {group} groups do not split {c} input and {o} output channels")
        stride, padding = int(strides[0]), int(pads[0])
        beta = self._channel_values(node, self.beta)           # (N, C)
        gamma = self._channel_values(node, self.gamma[None])[0]
        pad_value = -1
        if padding:
            zero_at = [v for v in (-1, 1) if np.allclose(beta.sum(axis=0) * v + gamma, 0,
                                                         atol=_TOL * max(1e-30, float(np.abs(beta).max())))]
            if not zero_at:
                _fail(f"{_where(node)}: pads with 0, which is not a level of its input (the hardware pads with a "
                      f"bit, -1 or +1)")
            pad_value = zero_at[0]
        # Input channel of weight [o, ci]: (o // (O / group)) * Cg + ci.
        channel = (np.arange(o)[:, None] // (o // group)) * cg + np.arange(cg)[None, :]
        beta_w = beta[:, channel][..., None, None]              # (N, O, Cg, 1, 1)
        sign_in = np.sign(beta.sum(axis=0))[channel][..., None, None]
        w, G = self._binary(node, (weights * sign_in).reshape(o, -1),
                            (weights[None] * beta_w).reshape(beta.shape[0], o, -1))
        C = (weights * gamma[channel][..., None, None]).reshape(o, -1).sum(axis=1)
        if bias is not None:
            C = C + bias.reshape(-1)
        try:
            ho, wo = ref.conv_output_size(h, kh, stride, padding), ref.conv_output_size(wd, kw, stride, padding)
        except ref.RefError as error:
            _fail(f"{_where(node)}: {error}")
        branch = {"source": self.source, "kind": "conv", "kernel": (int(kh), int(kw)), "stride": stride,
                  "padding": padding, "pad_value": pad_value, "groups": group, "wbases": 1,
                  "abases": int(beta.shape[0]), "k": int(cg * kh * kw),
                  "weights": w.reshape(1, o, cg, kh, kw)}
        self._open_sum(node, name, "conv", branch, G, C, (o, ho, wo))

    def _input_signs(self, node, beta):
        signs = np.sign(beta)
        total = np.sign(beta.sum(axis=0))
        if np.any((signs != 0) & (signs != total[None])) or np.any(total == 0):
            _fail(f"{_where(node)}: its input planes have scales of different signs (or all zero) for one element")
        return total

    def _binary(self, node, signed_weights, effective):
        """w = sign of the weights (times the input's sign); G[n, o] = |weight * beta_n|, which must be the
        same for every k of an output channel."""
        if np.any(signed_weights == 0):
            _fail(f"{_where(node)}: a weight is 0; binary weights are +-alpha per output channel")
        w = np.where(signed_weights > 0, 1, -1).astype(np.int8)
        magnitude = np.abs(effective)                             # (N, O, K)
        G = magnitude.max(axis=2)
        if np.any(np.abs(magnitude - G[:, :, None]) > _TOL * np.maximum(G[:, :, None], 1e-300)):
            _fail(f"{_where(node)}: its weights (times the input's scales) are not +-alpha per output channel; "
                  f"weights must be binary (BipolarQuant or a 1-bit Quant)")
        return w, G

    def _open_sum(self, node, name, kind, branch, G, C, shape):
        k = branch["k"]
        if k > self.config.max_k:
            _fail(f"{name}: a dot product of K = {k} bits exceeds max_k {self.config.max_k}")
        if branch["source"] != -1 and branch["abases"] > self.config.max_abases:
            _fail(f"{name}: {branch['abases']} activation planes exceed max_abases {self.config.max_abases}")
        self.kind = "sum"
        self.pending = {"name": name, "kind": kind, "branch": branch, "G": G, "C": C}
        self.A, self.B = np.ones(shape[0]), np.zeros(shape[0])
        self.shape = shape
        self.pools = []          # (geometry, A at the pool) of max pools between the sum and the threshold

    # --- sums ---------------------------------------------------------------------------------------
    def _affine_sum(self, node):
        op = node.op_type
        if op == "BatchNormalization":
            attrs = _attrs(node)
            for name in node.input[1:5]:
                if name not in self.consts:
                    _fail(f"{_where(node)}: its parameter '{name}' is computed at run time; it must be a constant")
            gain, shift, mean, var = (np.broadcast_to(np.asarray(self.consts[n], np.float64).reshape(-1),
                                                      (self.shape[0],)) for n in node.input[1:5])
            eps = float(attrs.get("epsilon", 1e-5))
            factor = gain / np.sqrt(var + eps)
            self._scale_sum(node, factor)
            self.B = self.B - mean * factor + shift
            return
        a, b = node.input[:2]
        const = _per_channel(node, self.consts[b] if a not in self.consts else self.consts[a], self.shape, "constant")
        if op == "Mul":
            self._scale_sum(node, const)
        elif op == "Div":
            if a in self.consts:
                _fail(f"{_where(node)}: divides a constant by a sum")
            self._scale_sum(node, 1.0 / const)
        elif op == "Add":
            self.B = self.B + const
        elif a in self.consts:
            self._scale_sum(node, -np.ones_like(const))
            self.B = self.B + const
        else:
            self.B = self.B - const

    def _scale_sum(self, node, factor):
        if self.pools and np.any(factor <= 0):
            _fail(f"{_where(node)}: multiplies by a non-positive factor after max pooling; the pooled maximum would "
                  f"become a minimum")
        self.A = self.A * factor
        self.B = self.B * factor

    def _pool_sum(self, node):
        geometry = self._pool_geometry(node)
        self.pools.append(geometry)
        self.shape = (self.shape[0],) + self._pooled_hw(geometry)

    def _hidden_activation(self, node):
        """The activation closing a hidden layer: (planes, beta, gamma); refused after a pool when a
        negative scale would make a plane's bit fall as the pooled value rises."""
        planes, beta, gamma = _activation(node, self.consts, self.shape)
        if self.pools and np.any(np.concatenate([d for _, d, _ in planes]) < 0):
            _fail(f"{_where(node)}: a negative scale makes its bit fall as the pooled value rises; the hardware's "
                  f"pooling is an OR of the bits")
        return planes, beta, gamma

    def _close_hidden(self, node):
        planes, beta, gamma = self._hidden_activation(node)
        p = self.pending
        if len(planes) > self.config.max_abases:
            _fail(f"{p['name']}: {len(planes)} output planes exceed max_abases {self.config.max_abases}")
        s, u, exact = _integer_scales(p["name"], p["G"], p["branch"]["k"], self.config, per_channel=True)
        if not exact:
            self.approximate.append(p["name"])
        bound = ref.acc_bound(s[None], p["branch"]["k"])
        thresholds, flip = _thresholds(planes, self.A * u, self.A * p["C"] + self.B, bound, self.config)
        self._emit_hidden(p["kind"], [dict(p["branch"], scales=s[None])], thresholds, flip, beta, gamma)

    def _emit_hidden(self, kind, branches, thresholds, flip, beta, gamma):
        """Append a hidden layer (and the pools after its sum); the tensor becomes its planes."""
        self.layers.append({"kind": kind, "out_features": int(thresholds.shape[0]), "branches": branches,
                            "thresholds": thresholds, "flip": flip})
        for geometry in self.pools:
            self._emit_pool(geometry)
        self.kind = "planes"
        self.source = len(self.layers) - 1
        expand = (1,) * (len(self.shape) - 1)
        self.beta = np.broadcast_to(beta.reshape(beta.shape + expand), beta.shape[:1] + self.shape).copy()
        self.gamma = np.broadcast_to(gamma.reshape(gamma.shape + expand), self.shape).copy()

    def _constant_plane(self):
        """A linear last layer reading activations with an offset (levels {0, 1}: x = beta a + gamma) gets
        a per-class constant sum_k W[o, k] gamma[k]. Carry gamma as a plane instead: the hidden layer
        before it gets one more output plane that is constant, v = +1 or -1 per channel (T = Tmin or
        acc_max, by the channel's comparison), and x = beta a + (gamma v) v. True if that was done."""
        p = self.pending
        if "linear" not in p or p["branch"]["source"] == -1:
            return False
        node, weights, bias, beta, gamma = p["linear"]
        if not np.any(gamma):
            return False
        hidden = p["branch"]["source"]
        chain = {hidden}
        while self.layers[hidden]["kind"] == "maxpool":
            hidden = self.layers[hidden]["source"]
            chain.add(hidden)
        layer = self.layers[hidden]
        # Another layer reading these planes (a shortcut) would see the extra plane too.
        readers = [b for other in self.layers for b in other.get("branches", []) if b["source"] in chain]
        if layer["thresholds"].shape[1] + 1 > self.config.max_abases or readers:
            return False
        # The constant plane is +1 or -1 per channel, whichever gives gamma the sign of beta (the next
        # layer's planes share one weight sign pattern).
        value = np.where(gamma * beta.sum(axis=0) < 0, -1, 1).reshape(layer["out_features"], -1)
        if not np.all(value == value[:, :1]):
            return False
        plus = value[:, 0] > 0
        tmin, never = -(1 << (self.config.acc_bits - 1)), self.config.acc_max
        constant = np.where(plus != layer["flip"], tmin, never)   # flip 0: acc >= Tmin; flip 1: acc <= never
        layer["thresholds"] = np.concatenate([layer["thresholds"], constant[:, None]], axis=1)
        planes = np.concatenate([beta, (gamma * value.reshape(-1))[None]], axis=0)
        w, p["G"], p["C"] = self._linear_terms(node, weights, bias, planes, np.zeros_like(gamma))
        p["branch"] = dict(p["branch"], abases=int(planes.shape[0]), weights=w[None])
        return True

    def _check_last_output(self, p):
        """The last layer returns one sum per class: no pooling after it, a 1x1 map."""
        if self.pools:
            _fail(f"{p['name']}: max pooling after the last layer; the last layer returns its sums")
        if len(self.shape) == 3 and self.shape[1:] != (1, 1):
            _fail(f"{p['name']}: the last layer's output has shape {self.shape}; it must be one sum per class")

    def _close_last(self):
        p = self.pending
        self._check_last_output(p)
        offset = self.A * p["C"] + self.B
        if not _uniform(offset) and self._constant_plane():
            offset = self.A * p["C"] + self.B
        if not _uniform(offset):
            cls = int(np.argmax(np.abs(offset - offset[0])))
            _fail(f"{p['name']}: adds a different constant to each class (class {cls}: {offset[cls]:.6g}, class 0: "
                  f"{offset[0]:.6g}); the hardware returns integer sums without a per-class bias")
        G = p["G"] * self.A[None, :]
        # Signs of the per-class gains go into the scales, which may then be negative.
        s, u, exact = _integer_scales(p["name"], G, p["branch"]["k"], self.config, per_channel=False)
        if not exact:
            self.approximate.append(p["name"])
        self.layers.append({"kind": p["kind"], "out_features": int(s.shape[1]),
                            "branches": [dict(p["branch"], scales=s[None])]})
        self.logit_unit = float(u[0])
        self.logit_offset = float(offset[0])

    # --- residual sums ------------------------------------------------------------------------------
    def _residual(self, node, dynamic):
        """Add / Sub of two computed tensors: each must be a layer's sum (through affine maps) or binary
        activations (the identity); the result is one sum over both addends' branches."""
        terms, const, shapes = [], 0.0, []
        for index, name in enumerate(dynamic):
            sign = -1.0 if node.op_type == "Sub" and index == 1 else 1.0
            got, offset, shape = self._addend(node, name)
            terms += [dict(t, G=t["G"] * sign) for t in got]
            const = const + offset * sign
            shapes.append(shape)
        if shapes[0] != shapes[1]:
            _fail(f"{_where(node)}: adds '{dynamic[0]}' of shape {shapes[0]} and '{dynamic[1]}' of shape {shapes[1]}; "
                  f"a shortcut must give the main branch's map")
        groups = {}
        for term in terms:
            groups.setdefault(_group_key(term["branch"]), term["branch"])
        if len(groups) > 2:
            _fail(f"{_where(node)}: its addends read {len(groups)} different maps or kernels ("
                  + ", ".join(_describe(b) for b in groups.values())
                  + "); a layer sums at most two groups of branches, a main branch and one shortcut")
        # The main branch first: the latest source, then the longest dot product.
        terms.sort(key=lambda t: (-t["branch"]["source"], -t["branch"]["k"]))
        kind = "conv" if len(shapes[0]) == 3 else "linear"
        self.kind = "sum"
        self.shape = shapes[0]
        self.pending = {"name": f"layer {len(self.layers)} ({kind}, {_where(node)})", "kind": kind,
                        "terms": terms, "C": np.broadcast_to(np.asarray(const, np.float64), (self.shape[0],)).copy()}
        self.A, self.B = np.ones(self.shape[0]), np.zeros(self.shape[0])
        self.pools = []
        self.current = node.output[0]

    def _addend(self, node, name):
        """One addend as (terms, constant (O,), shape): terms are branches without scales, with G (M, N, O)
        the real factor of each dot(w_m, a_n), `pattern` (M,) the signs of G along m, and `values` the
        reachable values of sum_m pattern[m] dot(w_m, a) for one activation plane."""
        state = self.states[name]
        if state["kind"] == "planes" and state["average"] is not None:
            _fail(f"{_where(node)}: adds '{name}', an average of binary activations; only a 1x1 Conv may read an "
                  f"AveragePool")
        if state["kind"] == "pixels":
            _fail(f"{_where(node)}: adds '{name}', a function of the input pixels; each addend must be a layer's sum "
                  f"or binary activations")
        shape = state["shape"]
        if state["kind"] == "sum":
            if state["pools"]:
                _fail(f"{_where(node)}: adds '{name}', a max-pooled sum; pool after the add (the hardware pools a "
                      f"layer's thresholded output)")
            p, A, B = state["pending"], state["A"], state["B"]
            if "terms" in p:
                terms = [dict(t, G=t["G"] * A[None, None, :]) for t in p["terms"]]
            else:
                k = p["branch"]["k"]
                terms = [{"branch": p["branch"], "G": p["G"][None] * A[None, None, :], "pattern": np.ones(1),
                          "values": np.arange(-k, k + 1, 2)}]
            return terms, A * p["C"] + B, shape
        # Binary activations x = sum_n beta[n] a_n + gamma: the identity, a 1x1 convolution (a linear layer)
        # with two weight bases, all +1 and all +1 but -1 at the output's own channel, whose difference
        # is 2 a[o]: G = beta / 2 and -beta / 2. A subsampled map (a 1x1 max pool of stride s) is the
        # same convolution with stride s.
        beta, gamma = state["beta"], state["gamma"]
        if len(shape) == 3:
            beta = self._channel_values(node, beta)
            gamma = self._channel_values(node, gamma[None])[0]
            c = shape[0]
            weights = np.ones((2, c, c, 1, 1), np.int8)
            branch = {"source": state["source"], "kind": "conv", "kernel": (1, 1), "stride": state["subsample"],
                      "padding": 0, "pad_value": -1, "groups": 1}
        else:
            c = shape[0]
            weights = np.ones((2, c, c), np.int8)
            branch = {"source": state["source"], "kind": "linear"}
        weights[1, np.arange(c), np.arange(c)] = -1
        if c > self.config.max_k:
            _fail(f"{_where(node)}: its identity shortcut of {c} channels exceeds max_k {self.config.max_k}")
        branch.update(wbases=2, abases=int(beta.shape[0]), k=int(c), weights=weights)
        G = np.stack([beta / 2, -beta / 2]).astype(np.float64)
        return [{"branch": branch, "G": G, "pattern": np.array([1.0, -1.0]), "values": np.array([-2, 2])}], \
            gamma.astype(np.float64), shape

    def _residual_bound(self, branches):
        return sum(ref.acc_bound(b["scales"], b["k"]) for b in branches)

    def _close_residual_hidden(self, node):
        planes, beta, gamma = self._hidden_activation(node)
        p = self.pending
        terms, o = p["terms"], self.shape[0]
        mu = self.A * p["C"] + self.B
        if len(terms) == 2 and all(t["G"].shape[1] == 1 for t in terms) and len(planes) == 1:
            # Two single-plane terms: y = A (g1 v1 + g2 v2) + mu with v1, v2 on finite grids. The smallest
            # integers (s1, s2) and T with s1 v1 + s2 v2 >= T exactly where the quantizer says +1 on
            # every grid point, whatever the ratio of the real scales (batch-norm gains in either branch).
            theta, direction, strict = planes[0]
            s = np.zeros((2, o), np.int64)
            thresholds = np.zeros((o, 1), np.int64)
            tmin, never = -(1 << (self.config.acc_bits - 1)), self.config.acc_max
            for c in range(o):
                h = [direction[c] * self.A[c] * t["G"][0, 0, c] for t in terms]
                found = _pair_threshold(h[0], h[1], direction[c] * (mu[c] - theta[c]), terms[0]["values"],
                                        terms[1]["values"], strict, self.config.scale_max)
                if found is None:
                    _fail(f"{p['name']}: channel {c}'s exact integer scales exceed {self.config.scale_bits}-bit "
                          f"scales")
                s[0, c], s[1, c], T = found
                thresholds[c, 0] = tmin if T is _ALWAYS else never if T is _NEVER else T
            branches = [dict(t["branch"], scales=(t["pattern"][:, None, None] * s[i][None, None, :]).astype(np.int64))
                        for i, t in enumerate(terms)]
            bound = self._residual_bound(branches)
            if bound.max() > self.config.acc_max - 1:
                _fail(f"{p['name']}: accumulator bound {int(bound.max())} exceeds the {self.config.acc_bits}-bit "
                      f"limit {self.config.acc_max}")
            flip = np.zeros(o, bool)
        else:
            branches, u = self._exact_residual_scales(per_channel=True)
            bound = self._residual_bound(branches)
            thresholds, flip = _thresholds(planes, self.A * u, mu, bound, self.config)
        if len(planes) > self.config.max_abases:
            _fail(f"{p['name']}: {len(planes)} output planes exceed max_abases {self.config.max_abases}")
        self._emit_hidden(p["kind"], branches, thresholds, flip, beta, gamma)

    def _exact_residual_scales(self, per_channel, factor=None):
        """Integer scales for every term's G (times factor per channel) with one unit u per channel (or one
        for the layer) and exact ratios; refuses when the ratios are not exact within the scale width."""
        p = self.pending
        factor = np.ones(self.shape[0]) if factor is None else factor
        blocks = [t["G"] * factor[None, None, :] for t in p["terms"]]
        rows = np.concatenate([b.reshape(-1, b.shape[-1]) for b in blocks], axis=0)
        ks = np.concatenate([np.full(b.shape[0] * b.shape[1], t["branch"]["k"]) for b, t in zip(blocks, p["terms"])])
        ints = np.zeros(rows.shape, np.int64)
        u = np.ones(rows.shape[1])
        for cols in ([[c] for c in range(rows.shape[1])] if per_channel else [list(range(rows.shape[1]))]):
            found = _exact_ratios(rows[:, cols], self.config.scale_max)
            if found is None:
                _fail(f"{p['name']}: the real scales of its branches have no exact integer ratios within "
                      f"{self.config.scale_bits}-bit scales (channel {cols[0]})")
            ints[:, cols], u[cols] = found
        if (np.abs(ints) * ks[:, None]).sum(axis=0).max() > self.config.acc_max - 1:
            _fail(f"{p['name']}: accumulator bound {int((np.abs(ints) * ks[:, None]).sum(axis=0).max())} exceeds the "
                  f"{self.config.acc_bits}-bit limit {self.config.acc_max}")
        branches, start = [], 0
        for b, t in zip(blocks, p["terms"]):
            size = b.shape[0] * b.shape[1]
            branches.append(dict(t["branch"], scales=ints[start:start + size].reshape(b.shape)))
            start += size
        return branches, u

    def _close_residual_last(self):
        p = self.pending
        self._check_last_output(p)
        offset = self.A * p["C"] + self.B
        if not _uniform(offset):
            cls = int(np.argmax(np.abs(offset - offset[0])))
            _fail(f"{p['name']}: its residual sum adds a different constant to each class (class {cls}: "
                  f"{offset[cls]:.6g}, class 0: {offset[0]:.6g}); the hardware returns integer sums without a "
                  f"per-class bias")
        branches, u = self._exact_residual_scales(per_channel=False, factor=self.A)
        self.layers.append({"kind": p["kind"], "out_features": int(self.shape[0]), "branches": branches})
        self.logit_unit = float(u[0])
        self.logit_offset = float(offset[0])


_ALWAYS, _NEVER = "always", "never"


def _group_key(branch):
    """Branches of one source and geometry: the compiler merges them into weight bases (one group)."""
    return (branch["source"], branch["kind"]) + tuple(repr(branch.get(k)) for k in
                                                      ("kernel", "stride", "padding", "pad_value", "groups",
                                                       "abases", "k"))


def _describe(branch):
    where = "the input" if branch["source"] == -1 else f"layer {branch['source']}"
    if branch["kind"] != "conv":
        return f"{where} (linear, K = {branch['k']})"
    kh, kw = branch["kernel"]
    return f"{where} ({kh}x{kw} stride {branch['stride']})"


def _simplest_between(lo, hi):
    """The fraction with the smallest denominator strictly between lo and hi (Fractions; None is
    infinite)."""
    if (lo is None or lo < 0) and (hi is None or hi > 0):
        return Fraction(0)
    if hi is not None and hi <= 0:
        found = _simplest_between(-hi, None if lo is None else -lo)
        return -found
    whole = math.floor(lo)
    if hi is None or whole + 1 < hi:
        return Fraction(whole + 1)
    # lo and hi within [whole, whole + 1]: whole + 1 / x with x strictly between 1 / (hi - whole) and
    # 1 / (lo - whole).
    inner = _simplest_between(1 / (hi - whole), None if lo == whole else 1 / (lo - whole))
    return whole + 1 / inner


def _pair_threshold(h1, h2, h0, v1, v2, strict, limit):
    """Integers (s1, s2, T) with s1 x + s2 y >= T exactly where h1 x + h2 y + h0 >= 0 (> 0 if strict) for
    every x in v1, y in v2 (grids symmetric about 0), with the smallest scale on the longer grid (then the
    smallest other scale) that allows it; T is _ALWAYS or
    _NEVER (scales 0) for a constant decision; None if the scales exceed limit."""
    v1, v2 = np.asarray(v1, np.int64), np.asarray(v2, np.int64)
    f = h1 * v1[:, None].astype(np.float64) + h2 * v2[None, :] + h0
    # A boundary within float64 noise of a grid point is on it (as for single-branch thresholds).
    tol = 1e-9 * (abs(h1) * np.abs(v1).max() + abs(h2) * np.abs(v2).max() + abs(h0))
    f = np.where(np.abs(f) <= tol, 0.0, f)
    decision = f > 0 if strict else f >= 0
    if decision.all() or not decision.any():
        return 0, 0, _ALWAYS if decision.all() else _NEVER
    if h1 == 0 or (h2 != 0 and len(v2) > len(v1)):   # y alone decides, or rows along the shorter grid
        found = _pair_threshold(h2, h1, h0, v2, v1, strict, limit)
        return None if found is None else (found[1], found[0], found[2])
    sign = 1 if h1 > 0 else -1
    x = np.sort(v1 * sign)                     # s1 > 0 on x = sign * v1: the decision rises along x
    rows = decision[np.argsort(v1 * sign)]     # (len(x), len(v2))
    positive, negative = [], []
    for j, y in enumerate(v2):
        hits = np.flatnonzero(rows[:, j])
        if hits.size and not np.all(rows[hits[0]:, j]):
            return None                        # not a threshold along x (cannot happen for real h)
        if hits.size:
            positive.append((x[hits[0]], y))
        if not hits.size or hits[0] > 0:
            negative.append((x[hits[0] - 1] if hits.size else x[-1], y))
    P, N = np.array(positive, np.int64), np.array(negative, np.int64)
    dx = P[:, None, 0] - N[None, :, 0]
    dy = P[:, None, 1] - N[None, :, 1]
    # s1 dx + s2 dy > 0 with s1 > 0: r = s2 / s1 > -dx / dy where dy > 0, < where dy < 0.
    if np.any((dy == 0) & (dx <= 0)):
        return None
    lo = hi = None
    up, down = dy > 0, dy < 0
    if up.any():
        i = np.argmax(np.where(up, -dx / np.where(up, dy, 1), -np.inf))
        lo = Fraction(int(-dx.flat[i]), int(dy.flat[i]))
    if down.any():
        i = np.argmin(np.where(down, -dx / np.where(down, dy, 1), np.inf))
        hi = Fraction(int(-dx.flat[i]), int(dy.flat[i]))
    if lo is not None and hi is not None and lo >= hi:
        return None
    ratio = _simplest_between(lo, hi)
    s1, s2 = ratio.denominator, ratio.numerator
    if max(s1, abs(s2)) > limit:
        return None
    T = int((s1 * P[:, 0] + s2 * P[:, 1]).min())
    s1 *= sign
    acc = s1 * v1[:, None] + s2 * v2[None, :]
    if not np.array_equal(acc >= T, decision):
        _fail("internal: integer thresholds of a residual sum disagree with its real decision")
    return s1, s2, T

def _uniform(values):
    return np.abs(values - values[0]).max() <= _TOL * max(1.0, float(np.abs(values).max()))


def _to_array(tensor):
    from onnx import numpy_helper
    return numpy_helper.to_array(tensor)


def import_model(path, config=None, input_range=(0.0, 1.0), input_shape=None):
    """A QONNX file -> a validated BnnModel for `config`; OnnxError (one line) for anything unsupported.

    input_shape: the .bnn image shape (C, H, W) for a model whose ONNX input is (N, K) or (N, H, W)
    (default (1, 1, K) or (1, H, W)); the elements are the same in the same order."""
    from hw.config import AccelConfig
    config = config or AccelConfig()
    model = _load(path)
    walker = _Walker(model, config, input_range, path, input_shape)
    layers = walker.run()
    classes = layers[-1]["out_features"]
    training = {"source": "onnx", "onnx_file": os.path.basename(str(path)),
                "input_range": [float(v) for v in input_range], "logit_offset": walker.logit_offset,
                "approximate_scales": walker.approximate}
    bnn = BnnModel(layers, walker.input_shape, classes, config.to_dict(), training, walker.logit_unit)
    try:
        return validate_model(bnn)
    except ModelFormatError as error:
        _fail(f"{path}: the imported network is not a valid model ({error})")
