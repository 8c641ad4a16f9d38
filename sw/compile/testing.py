"""Random deployable models for tests and benchmarks (numpy only, no trainer needed).

    model = random_model([conv(8, 3, padding=1), maxpool(2), linear(10)], input_shape=(1, 8, 8),
                         config=AccelConfig(), seed=0)

Layer specs: `conv(out, kernel, stride=1, padding=0, pad_value=-1, groups=1, wbases=1, planes=1,
branches=1, source=None)`, `linear(out, wbases=1, planes=1, branches=1, source=None)`,
`maxpool(kernel, stride=None, source=None)`; `planes` is the number of output bit-planes (thresholds per
channel), ignored on the last layer; `source` is the layer whose output the layer reads (-1 the image),
the previous one by default, so a list of specs can describe a graph; `shortcut=shortcut(source, kernel,
stride, padding, pad_value, wbases)` adds a second branch from another layer (a residual shortcut). Scales are small
random fixed-point integers and thresholds sit near the middle of each channel's sums, so bit-planes are
not constant.
"""

import numpy as np

from hw.config import AccelConfig
from sw.model_format import BnnModel, validate_model

__all__ = ["conv", "shortcut", "linear", "maxpool", "random_model"]


def conv(out, kernel, stride=1, padding=0, pad_value=-1, groups=1, wbases=1, planes=1, branches=1, source=None,
         shortcut=None):
    return {"kind": "conv", "out": out, "kernel": kernel, "stride": stride, "padding": padding,
            "pad_value": pad_value, "groups": groups, "wbases": wbases, "planes": planes, "branches": branches,
            "source": source, "shortcut": shortcut}


def shortcut(source, kernel=1, stride=1, padding=0, pad_value=-1, wbases=1):
    """A residual shortcut for `conv(..., shortcut=...)`: a binary convolution of layer `source`'s output
    summed into the layer before its threshold; its output shape must be the layer's."""
    return {"source": source, "kernel": kernel, "stride": stride, "padding": padding, "pad_value": pad_value,
            "wbases": wbases}


def linear(out, wbases=1, planes=1, branches=1, source=None):
    return {"kind": "linear", "out": out, "wbases": wbases, "planes": planes, "branches": branches,
            "source": source}


def maxpool(kernel, stride=None, source=None):
    return {"kind": "maxpool", "kernel": kernel, "stride": stride or kernel, "source": source}


def _shortcut_branch(rng, spec, outputs, out_shape):
    (c, h, w), planes = outputs[spec["source"]]
    k, s, p, m = spec["kernel"], spec["stride"], spec["padding"], spec["wbases"]
    got = (out_shape[0], (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
    if got != tuple(out_shape):
        raise ValueError(f"A shortcut from layer {spec['source']} gives {got}, not the layer's {tuple(out_shape)}")
    return {"source": spec["source"], "kind": "conv", "kernel": [k, k], "stride": s, "padding": p,
            "pad_value": spec["pad_value"], "groups": 1, "wbases": m, "abases": planes, "k": c * k * k,
            "weights": rng.choice(np.array([-1, 1], dtype=np.int8), (m, out_shape[0], c, k, k)),
            "scales": rng.integers(-40, 41, (m, planes, out_shape[0])).astype(np.int64)}


def random_model(specs, input_shape, config=None, seed=0):
    config = AccelConfig() if config is None else config
    layers = []
    rng = np.random.default_rng(seed)
    outputs = {-1: (tuple(input_shape), 8)}         # layer -> (output shape, bit-planes)
    for index, spec in enumerate(specs):
        last = index == len(specs) - 1
        source = index - 1 if spec.get("source") is None else spec["source"]
        shape, planes = outputs[source]
        if spec["kind"] == "maxpool":
            c, h, w = shape
            k, s = spec["kernel"], spec["stride"]
            layers.append({"kind": "maxpool", "source": source, "kernel": k, "stride": s})
            outputs[index] = ((c, (h - k) // s + 1, (w - k) // s + 1), planes)
            continue
        out = spec["out"]
        branches = []
        for _ in range(spec["branches"]):
            m = spec["wbases"]
            if spec["kind"] == "conv":
                c, h, w = shape
                kh = kw = spec["kernel"]
                g = spec["groups"]
                weights = rng.choice(np.array([-1, 1], dtype=np.int8), (m, out, c // g, kh, kw))
                k = c // g * kh * kw
                branch = {"source": source, "kind": "conv", "kernel": [kh, kw], "stride": spec["stride"],
                          "padding": spec["padding"], "pad_value": spec["pad_value"], "groups": g}
                ho = (h + 2 * spec["padding"] - kh) // spec["stride"] + 1
                wo = (w + 2 * spec["padding"] - kw) // spec["stride"] + 1
                out_shape = (out, ho, wo)
            else:
                k = int(np.prod(shape))
                weights = rng.choice(np.array([-1, 1], dtype=np.int8), (m, out, k))
                branch = {"source": source, "kind": "linear"}
                out_shape = (out,)
            if planes == 8:   # pixel planes: scales alpha * 2**(b-1) in fixed point
                alpha = rng.integers(1, 8, (m, 1, out))
                scales = alpha * (1 << np.arange(8)).reshape(1, 8, 1)
            else:
                scales = rng.integers(-40, 41, (m, planes, out))
            branch.update(wbases=m, abases=planes, k=k, weights=weights, scales=scales.astype(np.int64))
            branches.append(branch)
        if spec.get("shortcut"):
            branches.append(_shortcut_branch(rng, spec["shortcut"], outputs, out_shape))
        layer = {"kind": spec["kind"], "out_features": out, "branches": branches}
        if not last:
            t = spec["planes"]
            spread = sum(np.abs(b["scales"]).sum(axis=(0, 1)) for b in branches) * np.sqrt(branches[0]["k"])
            base = rng.normal(0, 0.3, (out, 1)) * spread[:, None]
            steps = np.sort(rng.normal(0, 0.3, (out, t)), axis=1) * spread[:, None]
            thresholds = np.round(base + steps).astype(np.int64)
            thresholds[rng.random((out, t)) < 0.03] = -(1 << (config.acc_bits - 1))
            layer["thresholds"] = thresholds
            layer["flip"] = rng.random(out) < 0.3
        layers.append(layer)
        outputs[index] = (out_shape, None if last else spec["planes"])
    cfg = {k: getattr(config, k) for k in ("scale_bits", "scale_frac", "acc_bits")}
    classes = outputs[len(specs) - 1][0][0]
    return validate_model(BnnModel(layers, input_shape, classes, cfg, {"generator": "random", "seed": seed}))
