"""Export a trained `Network` to the hardware's integer form (a `BnnModel`).

For every conv / linear node, with branches b, weight bases m, input planes n and output channel o:

    real sum  z[o] = sum_b sum_{m,n} G_b[m, n, o] * dot(B_bm[o], h_bn),   G = alpha_m[o] * beta_n
    integer   acc[o] = sum_b sum_{m,n} s_b[m, n, o] * dot(...),            s = to_fixed(G / (u[o] 2^frac))

so z[o] ~= u[o] * acc[o]. u[o] > 0 is chosen per output channel for hidden layers (so each channel's
largest scale uses the full `scale_bits`, shrunk if the accumulator bound would not fit `acc_bits`) and
globally for the last layer (argmax does not change). Batch norm y = g z + b, a monotone FPReLU f and the
next activation thresholds phi_t (+1 where f(y) >= phi_t) fold into integer thresholds (a node that adds
its shortcut after batch norm, y = g z_main + z_sc + b, first multiplies its main branches' G by g
and then folds with g = 1):

    g > 0:  acc >= ceil((f^-1(phi_t) - b) / (g u))     (flip 0)
    g < 0:  acc <= floor((f^-1(phi_t) - b) / (g u))    (flip 1)
    g = 0:  constant planes (T = Tmin with flip 0 for +1; see docs/arithmetic.md)

The first layer's input is the 8 pixel bit-planes: the float model sees x = pixel / 127.5 - 1
= sum_b 2^(b-1) / 127.5 * plane_b, so its plane scales are beta_b = 2^(b-1) / 127.5 and the 127.5
offset cancels (pixel 0, the padding, is x = -1 as in every other layer).
"""

import math

import numpy as np
import torch

import sw.ref as ref
from hw.config import AccelConfig
from sw.model_format import BnnModel, validate_model
from sw.models import Branch, IdentityShortcut, Network, Pool

__all__ = ["ExportError", "export_model", "MIN_SCALE_BITS", "PIXEL_SCALES", "fixed_scales"]

# A layer whose largest scale would need to shrink below this many bits to keep its accumulator bound
# is refused rather than exported with a coarse rounding.
MIN_SCALE_BITS = 6


class ExportError(ValueError):
    """The trained network contains something the hardware cannot run (the message names the layer)."""


def _pixel_betas():
    return np.array([2.0 ** (b - 1) / 127.5 for b in range(8)])


def fixed_scales(name, reals, ks, config, per_channel):
    """Integer scales for a node's branches.

    reals: list of float (M, N, O) arrays G_b; ks: their K. Returns (list of int64 scales, u (O,))
    with G_b ~= u * s_b. Raises ExportError if the accumulator bound cannot fit with scales of at
    least MIN_SCALE_BITS bits.
    """
    o = reals[0].shape[2]
    peak = np.max([np.abs(g).max(axis=(0, 1)) for g in reals], axis=0)  # (O,)
    # Sum |G| K relative to the peak: bound = target * load (+ rounding slack).
    load = sum(np.abs(g).sum(axis=(0, 1)) * k for g, k in zip(reals, ks))
    slack = sum(g.shape[0] * g.shape[1] * k for g, k in zip(reals, ks)) / 2
    if not per_channel:
        peak = np.full(o, peak.max())
        load = np.full(o, load.max())
    safe_peak = np.where(peak > 0, peak, 1.0)
    ratio = load / safe_peak
    limit = config.acc_max - 1
    target = np.minimum(float(config.scale_max), np.floor((limit - slack) / np.maximum(ratio, 1e-300)))
    if not per_channel:
        target = np.full(o, target.min())
    if np.any(target < 2 ** MIN_SCALE_BITS):
        worst = int(np.argmin(target))
        raise ExportError(
            f"{name}: its sums could reach {int(ratio[worst] * config.scale_max)} at full scale precision "
            f"but the {config.acc_bits}-bit accumulator holds {config.acc_max}; fitting would leave fewer "
            f"than {MIN_SCALE_BITS} bits of scale")
    unit = safe_peak / target
    scales = []
    for g in reals:
        try:
            scales.append(ref.to_fixed(g / (unit * 2.0 ** config.scale_frac), config.scale_frac, config.scale_bits))
        except ref.RefError as error:
            raise ExportError(f"{name}: {error}") from None
    _check_bound(name, scales, ks, config)
    return scales, unit


def _check_bound(name, scales, ks, config):
    bound = sum(ref.acc_bound(s, k) for s, k in zip(scales, ks))
    if bound.max() > config.acc_max - 1:
        raise ExportError(
            f"{name}: accumulator bound {int(bound.max())} exceeds the {config.acc_bits}-bit limit "
            f"{config.acc_max}")
    return bound


def _branch_geometry(branch):
    if branch.kind == "conv":
        return {"kind": "conv", "kernel": [int(branch.kernel), int(branch.kernel)], "stride": int(branch.stride),
                "padding": int(branch.padding), "pad_value": -1, "groups": int(branch.groups)}
    return {"kind": "linear"}


def _check_hardware(name, layer_branches, out_planes, config):
    for j, br in enumerate(layer_branches):
        if br["wbases"] > config.max_wbases:
            raise ExportError(f"{name}: {br['wbases']} weight bases exceed max_wbases {config.max_wbases}")
        if br["source"] != -1 and br["abases"] > config.max_abases:
            raise ExportError(f"{name}: {br['abases']} activation bases exceed max_abases {config.max_abases}")
        if br["k"] > config.max_k:
            raise ExportError(f"{name}: a dot product of K = {br['k']} bits exceeds max_k {config.max_k}")
    if out_planes is not None and out_planes > config.max_abases:
        raise ExportError(f"{name}: {out_planes} output planes exceed max_abases {config.max_abases}")


def _inverse_nonlinearity(name, node, phi):
    """phi (T,) thresholds on f(y) -> (O, T) thresholds on y; refuses a non-monotone f."""
    o = node.out_features
    phi = np.broadcast_to(phi[None, :], (o, phi.shape[0])).astype(np.float64)
    f = node.nonlinearity
    if f is None:
        return phi.copy()
    a_pos = f.a_pos.detach().cpu().double().numpy()
    a_neg = f.a_neg.detach().cpu().double().numpy()
    for label, slopes in (("positive-side", a_pos), ("negative-side", a_neg)):
        if np.any(slopes <= 0):
            c = int(np.argmax(slopes <= 0))
            raise ExportError(
                f"{name}: the FPReLU {label} slope of channel {c} is {slopes[c]:.4g}, so the non-linearity "
                f"is not monotone increasing and its sign cannot fold into a threshold")
    return np.where(phi >= 0, phi / a_pos[:, None], phi / a_neg[:, None])


def _thresholds(y_thresholds, gain, bias, unit, bound, config):
    """Integer (O, T) thresholds and flips for +1 where gain * unit * acc + bias >= y_thresholds."""
    o, t = y_thresholds.shape
    tmin = -(1 << (config.acc_bits - 1))
    never = config.acc_max  # unreachable: every bound is <= acc_max - 1
    thresholds = np.zeros((o, t), dtype=np.int64)
    flip = np.zeros(o, dtype=bool)
    for c in range(o):
        slope = gain[c] * unit[c]
        if slope == 0 or not np.isfinite(slope):
            plus = bias[c] >= y_thresholds[c]
            if not plus.any():
                flip[c] = True
                thresholds[c] = tmin
            else:
                thresholds[c] = np.where(plus, tmin, never)
            continue
        flip[c] = slope < 0
        for p in range(t):
            exact = (y_thresholds[c, p] - bias[c]) / slope
            if slope > 0:  # +1 where acc >= ceil(exact)
                if exact <= -bound[c]:
                    value = tmin
                elif exact > bound[c]:
                    value = never
                else:
                    value = math.ceil(exact)
            else:  # +1 where acc <= floor(exact); T >= bound is always +1, T < -bound always -1
                if exact >= bound[c]:
                    value = never
                elif exact < -bound[c]:
                    value = tmin
                else:
                    value = math.floor(exact)
            thresholds[c, p] = value
    return thresholds, flip


PIXEL_SCALES = ("precise", "pow2")


@torch.no_grad()
def export_model(net, config=None, training=None, pixel_scales="precise"):
    """Export `net` (a trained `Network`) for `config` (an AccelConfig; default AccelConfig()).

    `pixel_scales` rounds the first layer's per-pixel-plane scales: "precise" rounds each plane's
    scale on its own (plane 7 gets the full scale width); "pow2" makes plane b's scale exactly
    q * 2^b, with q at 7 bits less precision than plane 7 would have, so the compiler can fold
    several pixel planes into one pass of the first layer (docs/compiler.md "First layer: plane
    groups"; 2 to 3 times fewer first-layer cycles when its K is small, as in CNV)."""
    if pixel_scales not in PIXEL_SCALES:
        raise ExportError(f"pixel_scales must be one of {', '.join(PIXEL_SCALES)}, not {pixel_scales!r}")
    if not isinstance(net, Network):
        raise ExportError(f"Can only export a sw.models.Network, not {type(net).__name__}")
    config = config or AccelConfig()
    if not net.scheme.binary:
        raise ExportError("layer 0: full-precision weights and activations cannot run on the binary "
                          "hardware (scheme fp is a training baseline only)")
    was_training = net.training
    net.eval()
    try:
        return _export(net, config, training, pixel_scales)
    finally:
        net.train(was_training)


def _export(net, config, training, pixel_scales):
    betas = {-1: _pixel_betas()}
    layers = []
    logit_unit = 1.0
    count = len(net.nodes)
    for index, node in enumerate(net.nodes):
        name = f"layer {index} ({node.kind})"
        if isinstance(node, Pool):
            layers.append({"kind": "maxpool", "source": node.source - 1, "kernel": int(node.kernel),
                           "stride": int(node.stride)})
            betas[index] = betas[node.source - 1]
            continue
        last = index == count - 1
        if last != node.last:
            raise ExportError(f"{name}: only the final node may return sums")
        entries, reals, ks = [], [], []
        for br in node.branches:
            if not isinstance(br, (Branch, IdentityShortcut)):
                raise ExportError(f"{name}: branch {type(br).__name__} has no binary form")
            source = br.source - 1
            bases, alphas = br.export()
            in_betas = betas[source]
            entry = {"source": int(source), **_branch_geometry(br), "wbases": int(bases.shape[0]),
                     "abases": int(in_betas.shape[0]), "k": int(br.k), "weights": bases}
            if br.kind == "linear":
                entry["weights"] = bases.reshape(bases.shape[0], bases.shape[1], -1)
            entries.append(entry)
            reals.append(alphas[:, None, :] * in_betas[None, :, None])
            ks.append(int(br.k))
        out_planes = None if last else node.activation.abases
        if not last and not node.activation.binary:
            raise ExportError(f"{name}: full-precision activations cannot run on the binary hardware")
        _check_hardware(name, entries, out_planes, config)
        if last:
            if node.bias is not None:
                raise ExportError(
                    f"{name}: a per-class bias on the last layer cannot be represented (the hardware "
                    f"returns integer sums)")
            gain = node.gain.detach().cpu().double().numpy()
            reals = [g * gain[None, None, :] for g in reals]
        if any(e["source"] == -1 for e in entries) and len(entries) > 1:
            raise ExportError(f"{name}: the pixel input cannot share a sum with other branches")
        if not last:
            # Batch norm y = g z + b of the sum z (or, with the shortcut added after it, of the main
            # branches' sum: y = g z_main + z_sc + b, whose main scales take g and whose gain is 1).
            bn = node.norm
            std = torch.sqrt(bn.running_var + bn.eps).double().cpu().numpy()
            g = bn.weight.detach().double().cpu().numpy() / std
            b = bn.bias.detach().double().cpu().numpy() - bn.running_mean.double().cpu().numpy() * g
            if node.bias is not None:
                b = b + g * node.bias.detach().double().cpu().numpy()
            if node.shortcut_after_norm:
                reals = [r * g[None, None, :] for r in reals[:-1]] + reals[-1:]
                g = np.ones_like(g)
        # The pixel planes' scales 2^(b-1) / 127.5 are ordinary plane scales: every channel's largest
        # scale (plane 7) gets the full width, so the lower planes' ratios 2^-(7-b) round far more
        # finely than an exact q * 2^b with q limited to scale_bits - 8 bits would.
        scales, unit = fixed_scales(name, reals, ks, config, per_channel=not last)
        if pixel_scales == "pow2" and entries[0]["source"] == -1:
            # q = plane 7's scale / 2^7, rounded; plane b = q * 2^b exactly (|q| * 2^7 stays in range).
            top = np.asarray(scales[0])[:, 7:8, :]
            q = np.clip(np.round(top / 128.0), -(config.scale_max >> 7), config.scale_max >> 7).astype(np.int64)
            scales = [q * (np.int64(1) << np.arange(8, dtype=np.int64)).reshape(1, 8, 1)]
            _check_bound(name, scales, ks, config)
        for entry, s in zip(entries, scales):
            entry["scales"] = np.asarray(s, dtype=np.int64)
        layer = {"kind": node.kind, "out_features": int(node.out_features), "branches": entries}
        if last:
            logit_unit = float(unit.max())
        else:
            bound = sum(ref.acc_bound(e["scales"], e["k"]) for e in entries)
            phi, next_betas = node.activation.export()
            y_thresholds = _inverse_nonlinearity(name, node, phi)
            layer["thresholds"], layer["flip"] = _thresholds(y_thresholds, g, b, unit, bound, config)
            betas[index] = next_betas
        layers.append(layer)
    meta = {"model": net.name, "scheme": net.scheme.name, "wbases": net.scheme.wbases,
            "abases": net.scheme.abases, "width": net.width}
    meta.update(training or {})
    model = BnnModel(layers, net.input_shape, net.classes, config.to_dict(), meta, logit_unit)
    return validate_model(model)
