"""The compiler: a .bnn model -> a program bundle for one AccelConfig. numpy only.

    bundle = compile_model(model, config)          # Bundle, or CompileError naming the layer
    bundle = compile_file("model.bnn", config)

The work is a list of small passes in the FINN manner (`PASSES`), each `apply(state) -> state` on one
`ProgramState`; docs/compiler.md describes them. The passes that change numbers are checked: `Lower`
unpacks its re-laid weights back and compares them with the model's, and `Verify` runs the emitted
program on the ISS for sample images and compares every layer's output with
`sw.model_format.deploy_forward(..., intermediates=True)`.
"""

from dataclasses import dataclass, field

import numpy as np

from hw.config import AccelConfig
from hw.cycles import pass_words
from hw.isa import FIELD_LIMITS, IsaError, Opcode, encode
from sw.bundle import DEPTH_FIELDS, STREAM_MEMORIES, Bundle, Segment, pack_words, unpack_words, word_limbs
from sw.model_format import ModelFormatError, deploy_forward, load_model
from sw.iss import pack_fields, packed_conv_error, packed_layout
from sw.runtime.host_port import TARGETS

__all__ = ["CompileError", "InternalCompileError", "ProgramState", "PASSES", "WEIGHT_MODES", "INPUT_MODES",
           "compile_model", "compile_file", "CheckConfig", "MergeBranches", "Lower", "CheckFit", "Allocate", "Emit",
           "Verify"]


class CompileError(ValueError):
    """The model cannot run on the config: names the layer, the limit and the excess."""


class InternalCompileError(CompileError):
    """A checking pass found the compiler's own output wrong (a bug, never a property of the model)."""


#: Where weights, scales and thresholds live while the program runs:
#:   resident : written by the host before start, every layer's at once;
#:   stream   : LOADed layer by layer from the load stream into two halves of each memory, the next
#:              layer's loads overlapping the current layer's compute;
#:   auto     : resident when everything fits, else stream.
WEIGHT_MODES = ("resident", "stream", "auto")
#: How the first layer reads the image (docs/compiler.md "First layer: packed image input"):
#:   packed : the host writes the image, one word a pixel; the first CONV gathers its receptive fields;
#:   unfold : the host unfolds the image into the first layer's receptive fields (plane groups apply);
#:   auto   : packed where the first layer allows it and plane groups would not be chosen, else unfold.
INPUT_MODES = ("auto", "packed", "unfold")
_PARAMETER_MEMORIES = STREAM_MEMORIES


def _sources(op):
    """A CONV's sources: its own fields and, for a two-source layer, its shortcut's."""
    return [op] + ([op["shortcut"]] if op.get("shortcut") else [])


def _source_need(config, op, s):
    """Weight and scale entries source `s` of CONV `op` reads."""
    ot = -(-op["o"] // config.rows)
    return {"weight": ot * s["m"] * pass_words(s), "scale": ot * s["m"] * s["n"]}


def _parameter_need(config, op):
    """Entries of the weight, scale and threshold memories one CONV reads (both sources)."""
    needs = [_source_need(config, op, s) for s in _sources(op)]
    ot = -(-op["o"] // config.rows)
    return {"weight": sum(n["weight"] for n in needs), "scale": sum(n["scale"] for n in needs),
            "threshold": 0 if op["raw"] else ot * config.rows}


@dataclass
class ProgramState:
    """What the passes share. `ops` are the lowered CONV/POOL operations (dicts) in execution order,
    `maps` the feature maps between them (index -1: the input, the image map or the host-unfolded one)."""

    model: object
    config: AccelConfig
    layers: list = field(default_factory=list)     # per model layer: merged branch + geometry
    ops: list = field(default_factory=list)
    maps: dict = field(default_factory=dict)
    input: dict = field(default_factory=dict)
    output: dict = field(default_factory=dict)
    instructions: list = field(default_factory=list)
    segments: list = field(default_factory=list)
    layer_info: list = field(default_factory=list)
    checked: list = field(default_factory=list)    # what each checking pass verified
    verify_images: int = 2
    seed: int = 0
    weights: str = "auto"                          # resident | stream | auto (docs/compiler.md)
    plane_groups: bool = True                      # may the first layer group pixel planes
    input_mode: str = "auto"                       # auto | packed | unfold (INPUT_MODES)
    streamed: bool = False                         # CheckFit's decision
    stream: list = field(default_factory=list)     # the load stream's segments, in LOAD order
    batch: int = 1                                 # images per run, spread over the array's columns


def _name(index, kind):
    return f"layer {index} ({kind})"


def _exceeds(where, what, need, limit_name, limit):
    raise CompileError(f"{where}: {what} = {need} exceeds {limit_name} = {limit} by {need - limit}")


class CheckConfig:
    """The model was exported for this config's fixed-point format; the config suits the writer."""

    name = "check-config"

    def apply(self, state):
        c, model = state.config, state.model
        for key in ("scale_bits", "scale_frac", "acc_bits"):
            theirs = model.config.get(key)
            if theirs != getattr(c, key):
                raise CompileError(f"model: it was exported for {key} = {theirs}, the config has "
                                   f"{key} = {getattr(c, key)}; re-export it for this config")
        if c.word_bits % c.rows:
            raise CompileError(f"config: word_bits {c.word_bits} is not a multiple of rows {c.rows}; the "
                               f"writer stores a tile's {c.rows} channels as one field of a word "
                               f"(docs/isa.md)")
        return state


class MergeBranches:
    """One CONV per layer: Group-Net branches with the same source and geometry become extra weight
    bases (weights and scales concatenated along M); a second group of branches (another source, or
    the same source through another kernel) becomes the layer's shortcut, a second source the CONV
    sums into its tiles. A layer may read any earlier layer's output (the network is a graph); more
    than two groups and a later layer reading the image are refused."""

    name = "merge-branches"
    _GEOMETRY = ("kind", "kernel", "stride", "padding", "pad_value", "groups", "abases", "k")

    def _merge(self, c, name, numbered, count):
        """Branches of one source and geometry (with their indices) -> one branch whose weight bases
        are theirs."""
        _, first = numbered[0]
        weights = np.concatenate([b["weights"] for _, b in numbered], axis=0)
        scales = np.concatenate([b["scales"] for _, b in numbered], axis=0)
        m = weights.shape[0]
        if m > c.max_wbases:
            what = f"weight bases of {len(numbered)} merged branches" if count > 1 else "weight bases"
            if len(numbered) < count:
                what += f" reading layer {first['source']}"
            _exceeds(name, what, m, "max_wbases", c.max_wbases)
        merged = {k: first[k] for k in first if k not in ("weights", "scales")}
        merged.update(weights=weights, scales=scales, wbases=m)
        return merged

    @staticmethod
    def _check_source(name, index, source, what):
        if not -1 <= source < index:
            raise CompileError(f"{name}: {what} reads layer {source}, which is not an earlier layer")
        if source == -1 and index > 0:
            raise CompileError(f"{name}: {what} reads the image; only layer 0 reads it (its first CONV reads "
                               f"the image map or the host's unfold of it)")

    def apply(self, state):
        c = state.config
        layers = []
        for index, layer in enumerate(state.model.layers):
            name = _name(index, layer["kind"])
            if layer["kind"] == "maxpool":
                if index == 0 or layer["source"] == -1:
                    raise CompileError(f"{name}: pooling the image is not supported (pool after a layer)")
                self._check_source(name, index, layer["source"], "it")
                layers.append(dict(layer, name=name))
                continue
            branches = layer["branches"]
            for j, branch in enumerate(branches):
                self._check_source(name, index, branch["source"], f"branch {j}")
            # Branches of one source and one geometry merge into weight bases; a second group (another
            # map, or the same map through another kernel: a Bi-Real shortcut) is the layer's shortcut.
            groups = {}
            for j, branch in enumerate(branches):
                key = (branch["source"],) + tuple(repr(branch.get(k)) for k in self._GEOMETRY)
                groups.setdefault(key, []).append((j, branch))
            if index == 0 and len(groups) > 1:
                # The first CONV reads the image with one kernel: the first layer has no second geometry.
                j, branch = list(groups.values())[1][0]
                key = next(k for k in self._GEOMETRY if branch.get(k) != branches[0].get(k))
                raise CompileError(f"{name}: branch {j} differs from branch 0 in {key} ({branch.get(key)!r} vs "
                                   f"{branches[0].get(key)!r}); only branches of one geometry merge into weight "
                                   f"bases, and the first layer has no shortcut")
            if len(groups) > 2:
                what = ", ".join(f"branch {g[0][0]} (layer {g[0][1]['source']})" for g in groups.values())
                raise CompileError(f"{name}: its branches form {len(groups)} groups of one source and geometry "
                                   f"({what}); a layer sums at most two: its main branch and one shortcut")
            merged = [self._merge(c, name, group, len(branches)) for group in groups.values()]
            entry = {"kind": layer["kind"], "name": name, "branch": merged[0], "out": int(layer["out_features"]),
                     "branches": len(branches), "source": merged[0]["source"],
                     "shortcut": merged[1] if len(merged) > 1 else None}
            if "thresholds" in layer:
                entry["thresholds"], entry["flip"] = layer["thresholds"], layer["flip"]
            layers.append(entry)
        state.layers = layers
        return state


def pixel_plane_groups(size):
    """[first plane, planes] of each activation basis of the first CONV when `size` pixel planes share
    one (docs/compiler.md "First layer: plane groups")."""
    return [[first, min(size, 8 - first)] for first in range(0, 8, size)]


def _groupable(scales, size):
    """Every group's plane b has scale s[first] * 2^(b - first), exactly, for every basis and channel."""
    for first, count in pixel_plane_groups(size):
        for i in range(1, count):
            if not np.array_equal(scales[:, first + i], scales[:, first] << i):
                return False
    return True


def plane_group_size(config, scales, k0, oh, ow, o, out_planes, raw):
    """How many pixel planes one activation basis of the first CONV carries: the size whose CONV the
    cycle model (hw.cycles) finds fastest among those the scales allow (exact powers of two within a
    group) and the config holds (max_k, patch_depth, act_depth). 1 keeps the 8 planes apart."""
    from hw.cycles import conv_cycles
    m = scales.shape[0]
    best, best_cycles = 1, None
    for size in range(1, 9):
        if size > 1 and not _groupable(scales, size):
            continue
        n = len(pixel_plane_groups(size))
        kg = k0 * ((1 << size) - 1)
        cw = -(-kg // config.word_bits)
        out_words = 0 if raw else out_planes * oh * ow * -(-o // config.word_bits)
        if size > 1 and (kg > config.max_k or n * cw > config.patch_depth
                         or n * oh * ow * cw + out_words > config.act_depth):
            continue
        fields = {"kh": 1, "kw": 1, "in_cw": cw, "wbases": m, "in_planes": n, "out_ch": o, "out_h": oh,
                  "out_w": ow, "raw": int(raw), "out_planes": out_planes}
        cycles = conv_cycles(config, fields)
        if best_cycles is None or cycles < best_cycles:
            best, best_cycles = size, cycles
    return best


def _relay_weights(w, cw, word_bits):
    """(M, O, kh, kw, Cg) bits -> (M, O, kh*kw*cw, limbs) words, each tap's channels padded to cw words."""
    m, o, kh, kw, cg = w.shape
    padded = np.zeros((m, o, kh, kw, cw * word_bits), dtype=np.uint8)
    padded[..., :cg] = w
    return pack_words(padded.reshape(m, o, kh * kw, cw * word_bits), word_bits).reshape(
        m, o, kh * kw * cw, word_limbs(word_bits))


class Lower:
    """Model layers -> CONV / POOL operations over feature maps (docs/compiler.md "Lowering")."""

    name = "lower"

    def apply(self, state):
        c, model = state.config, state.model
        w_bits = c.word_bits
        ch, h, w = model.input_shape
        count = len(state.layers)
        ops = []
        outputs = {}                    # layer index -> its output map (the dict every reader shares)
        layouts, twins = self._group_layouts(state)
        dense_twin = {}                 # layer index -> the dense copy of a map also written grouped
        for index, layer in enumerate(state.layers):
            name, kind = layer["name"], layer["kind"]
            last = index == count - 1
            if kind == "maxpool":
                src = outputs[layer["source"]]
                k, s = layer["kernel"], layer["stride"]
                out = {"planes": src["planes"], "channels": src["channels"], "cw": src["cw"],
                       "h": (src["h"] - k) // s + 1, "w": (src["w"] - k) // s + 1}
                if "layout" in src:
                    out["layout"] = src["layout"]
                ops.append({"op": "pool", "layer": index, "name": name, "kernel": k, "stride": s,
                            "in": src, "out": out})
                outputs[index] = out
                continue
            b = layer["branch"]
            m, n, o = b["wbases"], b["abases"], layer["out"]
            wts = (b["weights"] > 0).astype(np.uint8)
            packed = False
            if index == 0:
                if kind == "conv":
                    kh, kw = b["kernel"]
                    stride, padding, pad_value, groups = b["stride"], b["padding"], b["pad_value"], b["groups"]
                else:
                    kh, kw, stride, padding, pad_value, groups = h, w, 1, 0, -1, 1
                if groups != 1:
                    raise CompileError(f"{name}: a grouped first layer is not supported (the host unfolds "
                                       f"the image into one dense vector per pixel)")
                oh = (h + 2 * padding - kh) // stride + 1
                ow = (w + 2 * padding - kw) // stride + 1
                k0 = ch * kh * kw
                out_planes = 0 if last else int(layer["thresholds"].shape[1])
                why = self._unpackable(c, kind, ch, kh, kw)
                if state.input_mode == "packed" and why:
                    raise CompileError(f"{name}: the first layer cannot read the packed image: {why}; the "
                                       f"host unfold (input \"unfold\") can")
                size = 1 if not state.plane_groups or state.input_mode == "packed" else \
                    plane_group_size(c, b["scales"], k0, oh, ow, o, out_planes, last)
                # auto: packed unless the planes group (fewer passes than 8 planes of either input).
                packed = state.input_mode == "packed" or (state.input_mode == "auto" and not why and size == 1)
                state.input = {"mode": "packed" if packed else "unfold", "shape": [ch, h, w], "kernel": [kh, kw],
                               "stride": stride, "padding": padding, "pad_value": pad_value, "out_h": oh,
                               "out_w": ow, "planes": 8, "k": k0}
                if packed:
                    # The image map: one word a pixel, its channels' bytes (docs/isa.md "Packed image input").
                    src = {"planes": 1, "channels": ch, "cw": 1, "h": h, "w": w}
                    state.input.update(groups=pixel_plane_groups(1), group_k=k0, words_per_pixel=1, word_bytes=ch,
                                       input_words=h * w)
                    w5 = wts.transpose(0, 1, 3, 4, 2)
                    geo = {"kh": kh, "kw": kw, "stride": stride, "pad": padding,
                           "pad_value": 1 if pad_value > 0 else 0, "groups": 1}
                else:
                    # Host unfold: the image becomes a map of the first layer's output pixels, K0 channels.
                    groups_of_planes = pixel_plane_groups(size)
                    kg = k0 * ((1 << size) - 1)
                    cw = -(-kg // w_bits)
                    src = {"planes": len(groups_of_planes), "channels": kg, "cw": cw, "h": oh, "w": ow}
                    state.input.update(groups=groups_of_planes, group_k=kg, words_per_pixel=cw,
                                       input_words=len(groups_of_planes) * oh * ow * cw)
                    # (c, ky, kx) order, as sw.ref.im2col; repeated once per block of a plane group's vector.
                    w5 = np.tile(wts.reshape(m, o, 1, 1, k0), (1, 1, 1, 1, (1 << size) - 1))
                    b = dict(b, scales=b["scales"][:, [first for first, _ in groups_of_planes]])
                    n = len(groups_of_planes)
                    geo = {"kh": 1, "kw": 1, "stride": 1, "pad": 0, "pad_value": 0, "groups": 1}
                state.maps[-1] = src
                out_h, out_w = oh, ow
            else:
                src = outputs[layer["source"]]
                if b.get("groups", 1) == 1 and layer["source"] in dense_twin:
                    src = dense_twin[layer["source"]]
                if kind == "linear":
                    if wts.shape[2] != src["channels"] * src["h"] * src["w"]:
                        raise CompileError(f"{name}: K {wts.shape[2]} does not match its input map")
                    # torch flatten order (c, y, x): the weight is a (C, H, W) kernel over the whole map.
                    w5 = wts.reshape(m, o, src["channels"], src["h"], src["w"]).transpose(0, 1, 3, 4, 2)
                    geo = {"kh": src["h"], "kw": src["w"], "stride": 1, "pad": 0, "pad_value": 0, "groups": 1}
                    out_h = out_w = 1
                else:
                    kh, kw = b["kernel"]
                    w5 = wts.transpose(0, 1, 3, 4, 2)
                    geo = {"kh": kh, "kw": kw, "stride": b["stride"], "pad": b["padding"],
                           "pad_value": 1 if b["pad_value"] > 0 else 0, "groups": b["groups"]}
                    out_h = (src["h"] + 2 * b["padding"] - kh) // b["stride"] + 1
                    out_w = (src["w"] + 2 * b["padding"] - kw) // b["stride"] + 1
            groups = geo["groups"]
            cg = w5.shape[4]
            og = o // groups
            # A map whose channel groups each start on a word (its grouped readers' groups are not
            # whole words): group g's channels at word g * wpg.
            layout = src.get("layout") if index > 0 else None
            split = None                # a dense layer over such a map: its two groups as two sources
            if layout is not None and groups == 1:
                if layout[0] != 2 or layer.get("shortcut") is not None:
                    raise CompileError(f"{name}: it reads layer {layer['source']}'s map, laid out in "
                                       f"{layout[0]} word-aligned channel groups for a grouped reader; a "
                                       f"layer that is not grouped reads such a map only as two sources (two "
                                       f"groups, no shortcut of its own)")
                split = layout
                cg = layout[1]
            elif groups > 1:
                if layout is not None and tuple(layout[:2]) != (groups, cg):
                    raise CompileError(f"{name}: its {groups} groups of {cg} channels do not match its "
                                       f"input map's {layout[0]} groups of {layout[1]}")
                if layout is None and cg % w_bits:
                    raise CompileError(f"{name}: a group's {cg} input channels are not a multiple of "
                                       f"word_bits {w_bits} (each group must start on a channel word)")
                if og % c.rows:
                    raise CompileError(f"{name}: a group's {og} output channels are not a multiple of "
                                       f"rows {c.rows} (each group must start on a writer field)")
            in_cw = -(-cg // w_bits)
            group_words = layout[2] if layout is not None else cg // w_bits
            if groups > 1:
                src["slack"] = max(src.get("slack", 0), (groups - 1) * group_words)
            out_map = None if last else {"planes": int(layer["thresholds"].shape[1]), "channels": o,
                                         "cw": -(-o // w_bits), "h": out_h, "w": out_w}
            if index in layouts and out_map is not None:
                g_out, cg_out = layouts[index]
                wpg = -(-cg_out // w_bits)
                out_map.update(cw=g_out * wpg, layout=(g_out, cg_out, wpg))
            if last and out_h * out_w != 1:
                raise CompileError(f"{name}: the last layer must give one sum per class, not a "
                                   f"{out_h}x{out_w} map")
            shortcut = None
            if layer.get("shortcut") is not None:
                shortcut = self._lower_shortcut(c, name, layer["shortcut"], {**outputs, **dense_twin}, out_h,
                                                out_w, o)
            if split is not None:
                # The second channel group is a second source over the same map, one group further on.
                shortcut = {"in": src, "source": layer["source"], "kh": geo["kh"], "kw": geo["kw"],
                            "stride": geo["stride"], "pad": geo["pad"], "pad_value": geo["pad_value"], "m": m,
                            "n": n, "in_cw": in_cw, "in_tail": cg - (in_cw - 1) * w_bits,
                            "k": geo["kh"] * geo["kw"] * cg, "in_word_offset": split[2],
                            "weights": _relay_weights(w5[..., cg:], in_cw, w_bits),
                            "scales": np.ascontiguousarray(b["scales"])}
                w5 = w5[..., :cg]
            layer_ops = []
            for g in range(groups):
                sl = slice(g * og, (g + 1) * og)
                op = {"op": "conv", "layer": index, "name": name, "group": g, "groups": groups, **geo,
                      "in": src, "out": out_map, "raw": last, "m": m, "n": n, "o": og, "out_ch_base": g * og,
                      "in_cw": in_cw, "in_word_offset": g * group_words if groups > 1 else 0,
                      "in_tail": cg - (in_cw - 1) * w_bits, "k": geo["kh"] * geo["kw"] * cg,
                      "out_h": out_h, "out_w": out_w,
                      "weights": None if packed else _relay_weights(w5[:, sl], in_cw, w_bits),
                      "scales": np.ascontiguousarray(b["scales"][:, :, sl])}
                if packed:
                    op.update(self._packed_source(name, w5[:, sl], w_bits))
                # The model's binary MACs (the first layer's plane groups repeat planes: not more work).
                op["macs"] = m * og * out_h * out_w * (8 * k0 if index == 0 else n * op["k"])
                if shortcut is not None:
                    # A grouped layer's CONV per group sums the shortcut's output channels of that group.
                    op["shortcut"] = dict(shortcut, weights=np.ascontiguousarray(shortcut["weights"][:, sl]),
                                          scales=np.ascontiguousarray(shortcut["scales"][:, :, sl]))
                    op["macs"] += shortcut["m"] * shortcut["n"] * shortcut["k"] * og * out_h * out_w
                if not last:
                    op["thresholds"] = layer["thresholds"][sl]
                    op["flip"] = layer["flip"][sl]
                if not packed:
                    # Check: the re-laid words unpack to the model's weights in the lowered K order.
                    back = unpack_words(op["weights"], w_bits).reshape(m, og, geo["kh"] * geo["kw"],
                                                                       in_cw * w_bits)
                    if not np.array_equal(back[..., :cg], w5[:, sl].reshape(m, og, -1, cg)) or back[..., cg:].any():
                        raise InternalCompileError(f"{name}: internal error: re-laid weights differ from the "
                                                   f"model's")
                layer_ops.append(op)
            if out_map is not None and "layout" in out_map:
                if index in twins:
                    # Also the dense map, for the readers that cannot take the grouped layout.
                    twin = {key: value for key, value in out_map.items() if key != "layout"}
                    twin["cw"] = -(-o // w_bits)
                    dense_twin[index] = twin
                    ops.extend(dict(op, out=twin) for op in layer_ops)
                layer_ops = [part for op in layer_ops for part in self._split_for_layout(c, name, op)]
            ops.extend(layer_ops)
            outputs[index] = out_map
        state.ops = ops
        state.checked.append("lower: re-laid weights unpack to the model's weights")
        return state

    @staticmethod
    def _unpackable(c, kind, channels, kh, kw):
        """Why the first layer cannot read the packed image (docs/isa.md "Packed image input"), or an
        empty string."""
        w_bits = c.word_bits
        if kind != "conv":
            return "a fully connected first layer reads the whole image at once"
        if 8 * channels > w_bits:
            return f"a pixel of {channels} channels is {8 * channels} bits, more than a word of {w_bits}"
        if kh * kw < 8:
            return f"its {kh}x{kw} kernel has fewer than 8 positions (one a pixel plane)"
        per = w_bits // channels
        fields = {"kh": kh, "kw": kw, "in_tail": channels, "in_planes": 8, "in_cw": -(-kh * kw // per),
                  "k": kh * kw * channels}
        error = packed_conv_error(fields, w_bits)
        if error:
            return f"its CONV would be illegal ({error})"
        if 8 * fields["in_cw"] > c.patch_depth:
            return f"its patch words (8 planes x {fields['in_cw']}) exceed patch_depth = {c.patch_depth}"
        return ""

    @staticmethod
    def _packed_source(name, w5, w_bits):
        """A packed first CONV's weights (M, O, kh, kw, C) bits -> its fields: the patch words of each
        (basis, channel) in the image input's packed order, the bits above each word's fields 1 (their
        XNOR with the patch's 0 adds nothing); checked against `packed_layout`."""
        m, o, kh, kw, channels = w5.shape
        fields = w5.reshape(m, o, kh * kw, channels)
        weights = pack_fields(fields, w_bits, fill=1)
        index = packed_layout(kh * kw, channels, w_bits)
        back = unpack_words(weights, w_bits)
        flat = fields.reshape(m, o, -1)
        if not np.array_equal(back[..., index >= 0], flat[..., index[index >= 0]]) or not back[..., index < 0].all():
            raise InternalCompileError(f"{name}: internal error: packed weights differ from the model's")
        return {"in_cw": weights.shape[2], "weights": weights, "packed": 1}

    @staticmethod
    def _group_layouts(state):
        """(layouts, twins): layouts maps a layer index to (groups, channels a group) for every map (and
        the pools between) that a grouped convolution reads whose groups are not whole channel words:
        such a map is written with each group starting on a word. twins holds the producers whose map
        other readers need dense as well (a shortcut, or a layer that cannot read the groups as two
        sources): those write both layouts."""
        w_bits = state.config.word_bits
        channels, sources, layouts, dense = {}, {}, {}, set()
        for index, layer in enumerate(state.layers):
            source = layer["source"]
            sources[index] = source
            if layer["kind"] == "maxpool":
                channels[index] = channels[source]
                continue
            channels[index] = layer["out"]
            if layer.get("shortcut") is not None:
                dense.add(layer["shortcut"]["source"])
            groups = layer["branch"].get("groups", 1)
            if groups == 1 and layer.get("shortcut") is not None:
                dense.add(source)
            if index == 0 or groups == 1 or (channels[source] // groups) % w_bits == 0:
                continue
            want = (groups, channels[source] // groups)
            at = source
            while True:
                if layouts.setdefault(at, want) != want:
                    raise CompileError(f"{layer['name']}: it reads layer {source}'s map in {groups} groups of "
                                       f"{want[1]} channels, another reader in {layouts[at][0]} groups")
                if state.layers[at]["kind"] != "maxpool":
                    break
                at = sources[at]
        for index, layer in enumerate(state.layers):
            if layer["kind"] != "maxpool" and layer["branch"].get("groups", 1) == 1 and \
                    layouts.get(layer["source"], (2,))[0] != 2:
                dense.add(layer["source"])          # more than two groups: not as two sources
        twins = {index for index in layouts if index in dense}
        for index in twins:
            if state.layers[index]["kind"] == "maxpool":
                raise CompileError(f"{state.layers[index]['name']}: its map is read both in word-aligned channel "
                                   f"groups and dense; only a convolution's map is written in both layouts")
        return layouts, twins

    @staticmethod
    def _split_for_layout(c, name, op):
        """A CONV writing a map laid out in word-aligned channel groups, split into one CONV per group
        of the map its channels reach (each writes at its group's first word)."""
        g_out, cg, wpg = op["out"]["layout"]
        first, end = op["out_ch_base"], op["out_ch_base"] + op["o"]
        parts = []
        for g in range(first // cg, -(-end // cg)):
            lo, hi = max(first, g * cg), min(end, (g + 1) * cg)
            if (lo - g * cg) % c.rows:
                raise CompileError(f"{name}: its channels {lo}..{hi - 1} start inside a writer field of "
                                   f"rows {c.rows} in a map of {g_out} word-aligned groups of {cg} channels")
            sl = slice(lo - first, hi - first)
            part = dict(op, o=hi - lo, out_ch_base=g * wpg * c.word_bits + (lo - g * cg),
                        weights=np.ascontiguousarray(op["weights"][:, sl]),
                        scales=np.ascontiguousarray(op["scales"][:, :, sl]),
                        macs=op["macs"] * (hi - lo) // op["o"])
            if "thresholds" in op:
                part["thresholds"], part["flip"] = op["thresholds"][sl], op["flip"][sl]
            if op.get("shortcut"):
                part["shortcut"] = dict(op["shortcut"], weights=np.ascontiguousarray(op["shortcut"]["weights"][:, sl]),
                                        scales=np.ascontiguousarray(op["shortcut"]["scales"][:, :, sl]))
            parts.append(part)
        return parts

    @staticmethod
    def _lower_shortcut(c, name, b, outputs, out_h, out_w, o):
        """The second source of a two-source layer (a residual shortcut): a convolution of an earlier
        map whose output has the main branch's shape, lowered like a conv branch."""
        w_bits = c.word_bits
        if b["source"] < 0:
            raise CompileError(f"{name}: its shortcut reads the image; only layer 0 reads it")
        if b["kind"] != "conv":
            raise CompileError(f"{name}: a {b['kind']} shortcut branch is not supported (a shortcut is a "
                               f"convolution of an earlier map)")
        if b["groups"] != 1:
            raise CompileError(f"{name}: a grouped shortcut branch is not supported")
        src = outputs[b["source"]]
        if "layout" in src:
            raise CompileError(f"{name}: its shortcut reads layer {b['source']}'s map, laid out in word-aligned "
                               f"channel groups for a grouped reader; a shortcut reads dense maps only")
        kh, kw = b["kernel"]
        h2 = (src["h"] + 2 * b["padding"] - kh) // b["stride"] + 1
        w2 = (src["w"] + 2 * b["padding"] - kw) // b["stride"] + 1
        if (h2, w2) != (out_h, out_w):
            raise CompileError(f"{name}: its shortcut branch gives a {h2}x{w2} map, the main branch "
                               f"{out_h}x{out_w}")
        wts = (b["weights"] > 0).astype(np.uint8).transpose(0, 1, 3, 4, 2)      # (M, O, kh, kw, C)
        m, cg = wts.shape[0], wts.shape[4]
        in_cw = -(-cg // w_bits)
        weights = _relay_weights(wts, in_cw, w_bits)
        back = unpack_words(weights, w_bits).reshape(m, o, kh * kw, in_cw * w_bits)
        if not np.array_equal(back[..., :cg], wts.reshape(m, o, -1, cg)) or back[..., cg:].any():
            raise InternalCompileError(f"{name}: internal error: re-laid shortcut weights differ from the "
                                       f"model's")
        return {"in": src, "source": b["source"], "kh": kh, "kw": kw, "stride": b["stride"], "pad": b["padding"],
                "pad_value": 1 if b["pad_value"] > 0 else 0, "m": m, "n": src["planes"], "in_cw": in_cw,
                "in_tail": cg - (in_cw - 1) * w_bits, "k": kh * kw * cg, "weights": weights,
                "scales": np.ascontiguousarray(b["scales"])}


def _conv_images(op):
    """Images one CONV computes: the batch for a CONV over all images (`all_images`), else 1 (a CONV
    over the stack counts its images in its rows)."""
    return op.get("images", 1) if op.get("all_images") else 1


def _runs(op):
    """Instructions (a CONV with its SHORTCUT counting as one) an operation emits: a pool that runs per
    image one an image, anything else one."""
    return 1 if op.get("all_images") else op.get("images", 1)


def _pointwise(s):
    return (s["kh"], s["kw"], s["stride"], s["pad"]) == (1, 1, 1, 0)


def _whole_map(s, image_h, image_w):
    """A kernel over each image's whole map (a fully connected layer): on the stacked map it reads image
    b's rows with a vertical stride of the image's height, one output pixel per image."""
    return (s["kh"], s["kw"], s["pad"]) == (image_h, image_w, 0) and image_h <= FIELD_LIMITS["stride"]


class Batch:
    """Several images a run, so that layers with fewer output pixels than the array has columns still
    fill them (docs/compiler.md "Batching").

    Every map holds the batch's images stacked: B x H rows of W pixels, each plane all images' rows, so
    image b's pixel (y, x) is pixel (b * H + y, x). An operation runs once over the stack when no window
    crosses two images: a pointwise convolution (the host-unfolded first layer, 1x1 layers on 1x1
    maps), a kernel over each image's whole map (vertical stride = its height: one output pixel per
    image), a pool whose windows tile each image. Any other convolution (a packed first layer's among
    them) is one CONV over all images (`all_images`, `images_m1 = B - 1`: its bases and its SHORTCUT's
    at image 0, in_h and out_h an image's rows, each image's windows in its own map, the images' output
    pixels sharing the pixel tiles); any other pool runs once per image on a view of the stack (its base
    moved to the image's first row, its planes B x H rows apart: `images_m1`)."""

    name = "batch"

    def apply(self, state):
        b = state.batch
        if not isinstance(b, int) or isinstance(b, bool) or b < 1:
            raise CompileError(f"program: the batch must be a positive integer, not {b!r}")
        if b == 1:
            return state
        maps = [spec for spec, _, _ in map_lifetimes(state.ops)]      # every map, once
        image_h = {id(spec): spec["h"] for spec in maps}               # one image's rows
        for op in state.ops:
            src = op["in"]
            h_in = image_h[id(src)]
            if op["op"] == "pool":
                k, stride = op["kernel"], op["stride"]
                stacked = k == stride and h_in % k == 0
                op["images"] = 1 if stacked else b
                op["image_in_h"], op["image_out_h"] = h_in, image_h[id(op["out"])]
                continue
            if op["out"] is not None:
                op["image_out_h"] = image_h[id(op["out"])]
            sources = _sources(op)
            heights = [image_h[id(s["in"])] for s in sources]
            out_h = op["out_h"]
            if all(_pointwise(s) for s in sources):
                op["images"] = 1
                op["out_h"] = out_h * b
            elif all(_whole_map(s, h, s["in"]["w"]) for s, h in zip(sources, heights)):
                op["images"] = 1
                for s, h in zip(sources, heights):
                    s["stride"] = h
                op["out_h"] = b
            else:
                op["images"], op["all_images"] = b, 1
                for s, h in zip(sources, heights):
                    s["image_in_h"] = h
            op["macs"] *= b                             # the batch's work
        for spec in maps:
            spec["image_h"] = spec["h"]
            spec["h"] = spec["h"] * b
            spec["batch"] = b
        state.input["batch"] = b
        state.checked.append(f"batch: {b} images a run, stacked in every map")
        return state


class CheckFit:
    """Every limit of the config and the ISA fields, naming the layer, the limit and the excess."""

    name = "check-fit"

    def apply(self, state):
        c = state.config
        if state.weights not in WEIGHT_MODES:
            raise CompileError(f"program: weights must be one of {', '.join(WEIGHT_MODES)}, not {state.weights!r}")
        totals = {"weight": 0, "scale": 0, "threshold": 0}
        limits = DEPTH_FIELDS
        units = {"weight": "weight-buffer entries", "scale": "scale-memory entries",
                 "threshold": "threshold-memory entries"}
        convs = [op for op in state.ops if op["op"] != "pool"]
        resident = all(sum(_parameter_need(c, op)[mem] for op in convs) <= getattr(c, limits[mem])
                       for mem in _PARAMETER_MEMORIES)
        too_big = [(op["name"], mem, _parameter_need(c, op)[mem], getattr(c, limits[mem]) // 2)
                   for op in convs for mem in _PARAMETER_MEMORIES
                   if _parameter_need(c, op)[mem] > getattr(c, limits[mem]) // 2]
        state.streamed = state.weights == "stream" or (state.weights == "auto" and not resident and not too_big)
        hint = ""
        if state.weights == "resident":
            hint = " (--weights stream loads them layer by layer)"
        elif state.weights == "auto" and too_big:
            where, mem, need, half = too_big[0]
            hint = (f"; streamed layer by layer, {where} would need {need} {units[mem]}, over half of "
                    f"{limits[mem]} = {half}")
        allocate_maps(c, state.ops)         # the activation buffer holds the live maps at every layer
        for op in state.ops:
            name = op["name"]
            if op["op"] == "pool":
                continue
            o = op["o"]
            patch = []                              # (planes, K-words) of each source
            for s in _sources(op):
                of = "" if s is op else " of the shortcut"
                if s["m"] > c.max_wbases:
                    _exceeds(name, f"weight bases{of}", s["m"], "max_wbases", c.max_wbases)
                if op["layer"] > 0 and s["n"] > c.max_abases:
                    _exceeds(name, f"input activation bases{of}", s["n"], "max_abases", c.max_abases)
                if s["k"] > c.max_k:
                    _exceeds(name, f"K (bits of one dot product){of}", s["k"], "max_k", c.max_k)
                if s["scales"].size and (s["scales"].min() < c.scale_min or s["scales"].max() > c.scale_max):
                    raise CompileError(f"{name}: a scale{of} does not fit {c.scale_bits}-bit signed fixed point")
                patch.append((s["n"], pass_words(s)))
            if op["out"] is not None and op["out"]["planes"] > c.max_abases:
                _exceeds(name, "output bit-planes", op["out"]["planes"], "max_abases", c.max_abases)
            words = sum(n * kw_words for n, kw_words in patch)
            if words > c.patch_depth:
                what = " + ".join(f"{n} planes x {kw_words} K-words" for n, kw_words in patch)
                _exceeds(name, f"patch words ({what})", words, "patch_depth", c.patch_depth)
            ot = -(-o // c.rows)
            for mem, amount in _parameter_need(c, op).items():
                if state.streamed:
                    # Streamed: each layer's entries fit one half, the next layer's load the other.
                    half = getattr(c, limits[mem]) // 2
                    if amount > half:
                        _exceeds(name, f"{units[mem]} of this layer (streamed into half the memory)", amount,
                                 f"half of {limits[mem]}", half)
                    continue
                totals[mem] += amount
                if totals[mem] > getattr(c, limits[mem]):
                    limit = getattr(c, limits[mem])
                    raise CompileError(f"{name}: {units[mem]} used up to this layer = {totals[mem]} exceeds "
                                       f"{limits[mem]} = {limit} by {totals[mem] - limit}{hint}")
            if op["raw"] and ot * c.rows > c.thr_depth:
                # The controller checks t_base + OT*R even for raw sums (t_base is 0 then).
                _exceeds(name, "threshold-memory entries a raw layer's tiles span", ot * c.rows, "thr_depth",
                         c.thr_depth)
            logits = _conv_images(op) * op["out_h"] * op["out_w"] * o
            if op["raw"] and logits > c.result_depth:
                _exceeds(name, "result-memory entries of the logits", logits, "result_depth", c.result_depth)
            bound = int(sum(np.abs(s["scales"]).sum(axis=(0, 1)) * s["k"] for s in _sources(op)).max()) if o else 0
            if bound > c.acc_max:
                _exceeds(name, "accumulator bound", bound, f"the {c.acc_bits}-bit accumulator's limit", c.acc_max)
        instructions = 1 + sum(_runs(op) * (2 if op.get("shortcut") else 1) for op in state.ops)
        if state.streamed:
            # Per CONV a SYNC and a LOAD per memory it reads (docs/compiler.md "Streamed parameters").
            instructions += sum(1 + sum(1 for amount in _parameter_need(c, op).values() if amount)
                                for op in convs)
        if instructions > c.instr_depth:
            _exceeds("program", "instructions (with END)", instructions, "instr_depth", c.instr_depth)
        return state


def _map_words(spec):
    """Words a map occupies, plus the slack its grouped readers need: the controller checks a group's
    input region as in_base + N*h*w*in_stride with in_base moved to the group's first word."""
    return spec["planes"] * spec["h"] * spec["w"] * spec["cw"] + spec.get("slack", 0)


def map_lifetimes(ops):
    """[(map, first op, last op)] in order of definition: a map lives from the op that writes it (-1 for
    the input map) to the last op that reads it (its writer's last op if nothing reads it)."""
    lives = {}
    for index, op in enumerate(ops):
        for spec in [op["in"]] + ([op["shortcut"]["in"]] if op.get("shortcut") else []):
            if id(spec) not in lives:
                lives[id(spec)] = [spec, -1, index]
            lives[id(spec)][2] = index
        if op["out"] is not None:
            entry = lives.setdefault(id(op["out"]), [op["out"], index, index])
            entry[2] = max(entry[2], index)
    return [tuple(entry) for entry in lives.values()]


def allocate_maps(config, ops):
    """Activation-buffer addresses by lifetime: a map keeps its words from the op that writes it to
    the last op that reads it; an op's output never overlaps a map still live (its own input included).
    Maps are placed first-fit, from the bottom for the input and every other map, from the top for the
    rest, so a chain comes out as a ping-pong between the two ends. Returns {id(map): base}; refuses a
    map that finds no gap, naming its layer, the words live then and act_depth."""
    lives = map_lifetimes(ops)
    placed = {}                                   # id -> (base, size, last op)
    from_top = False
    for spec, first, last in lives:
        size = _map_words(spec)
        live = sorted((b, b + n) for b, n, end in placed.values() if end >= max(first, 0))
        gaps, at = [], 0
        for lo, hi in live:
            if lo > at:
                gaps.append((at, lo))
            at = max(at, hi)
        gaps.append((at, config.act_depth))
        fits = [(lo, hi) for lo, hi in gaps if hi - lo >= size]
        if not fits:
            writer = ops[max(first, 0)]
            live_words = sum(n for _, n, end in placed.values() if end >= max(first, 0))
            what = "the input map" if first < 0 else "its output map"
            if live_words + size > config.act_depth:
                also = f" and the maps still live ({size} + {live_words})" if live_words else ""
                _exceeds(writer["name"], f"activation words of {what}{also}", live_words + size, "act_depth",
                         config.act_depth)
            raise CompileError(f"{writer['name']}: {what} needs {size} contiguous activation words; the "
                               f"{live_words} words of the maps still live leave no such gap in act_depth = "
                               f"{config.act_depth}")
        base = fits[-1][1] - size if from_top else fits[0][0]
        placed[id(spec)] = (base, size, last)
        from_top = not from_top
    return {i: base for i, (base, _, _) in placed.items()}


class Allocate:
    """Addresses: maps by lifetime in the activation buffer (`allocate_maps`); weights, scales and
    thresholds packed one layer after another (streamed: each CONV's at the start of the lower or upper
    half, alternately); logits at result address 0."""

    name = "allocate"

    def apply(self, state):
        c = state.config
        map_bases = allocate_maps(c, state.ops)

        def place(spec):
            return map_bases[id(spec)]

        next_free = {mem: 0 for mem in _PARAMETER_MEMORIES}
        convs = 0
        for op in state.ops:
            op["in_base"] = place(op["in"])
            if op["out"] is not None:
                op["out_base"] = place(op["out"])
            if op["op"] == "pool":
                continue
            need = _parameter_need(c, op)
            bases = {}
            for mem in _PARAMETER_MEMORIES:
                if state.streamed:
                    # Alternate halves: CONV k reads one while the LOADs of CONV k + 1 fill the other.
                    bases[mem] = (convs % 2) * (getattr(c, DEPTH_FIELDS[mem]) // 2)
                else:
                    bases[mem] = next_free[mem]
                    next_free[mem] += need[mem]
            convs += 1
            op["w_base"], op["s_base"], op["t_base"] = bases["weight"], bases["scale"], bases["threshold"]
            if op.get("shortcut"):
                # The shortcut's weights and scales follow the main source's in the layer's regions.
                main = _source_need(c, op, op)
                op["shortcut"]["in_base"] = place(op["shortcut"]["in"])
                op["shortcut"]["w_base"] = op["w_base"] + main["weight"]
                op["shortcut"]["s_base"] = op["s_base"] + main["scale"]
            if op["raw"]:
                op["out_base"], op["t_base"] = 0, 0
        state.input["act_base"] = state.ops[0]["in_base"]
        return state


class Emit:
    """Instructions (hw.isa.encode) and the memory images of weights, scales and thresholds: resident
    segments, or (streamed) the load stream with LOAD / SYNC around each CONV."""

    name = "emit"

    def apply(self, state):
        c = state.config
        # Per op: its compute instruction and the images of the parameters it reads.
        compute, images = [], []
        for op in state.ops:
            if op["op"] == "pool":
                # A pool that runs once per image of the batch: one instruction per image's view.
                compute.append([self._pool(op, b) for b in range(_runs(op))])
                images.append([])
            else:
                compute.append(([self._shortcut(op)] if op.get("shortcut") else []) + [self._conv(op)])
                images.append(self._images(c, op))
        convs = [i for i, op in enumerate(state.ops) if op["op"] != "pool"]
        instructions, segments, stream = [], [], []
        owner = []                      # per instruction: the op it serves

        def emit(word, index):
            instructions.append(word)
            owner.append(index)

        def loads(index):
            for segment in images[index]:
                emit(self._encode(state.ops[index]["name"], Opcode.LOAD,
                                  {"mem": TARGETS[segment.memory].value, "addr": segment.base,
                                   "count": len(segment.values)}),
                     index)
                stream.append(segment)

        if state.streamed:
            loads(convs[0])
        for index, op in enumerate(state.ops):
            if state.streamed and op["op"] != "pool":
                k = convs.index(index)
                emit(encode(Opcode.SYNC), index)       # this CONV's loads have landed
                if k + 1 < len(convs):
                    loads(convs[k + 1])                # overlap the next CONV's loads with this one
            elif op["op"] != "pool":
                segments.extend(images[index])
            for word in compute[index]:
                emit(word, index)
        emit(encode(Opcode.END), len(state.ops) - 1)

        info = []
        for index, op in enumerate(state.ops):
            if not info or info[-1]["index"] != op["layer"]:
                info.append({"index": op["layer"], "name": op["name"], "kind": state.layers[op["layer"]]["kind"],
                             "instructions": [], "macs": 0, "output": None})
            entry = info[-1]
            entry["instructions"].extend(pc for pc, o in enumerate(owner[:-1]) if o == index)
            if op["op"] != "pool":
                entry["macs"] += op["macs"]
            if op["out"] is not None:
                entry["output"] = dict(op["out"], base=op["out_base"])
        last = state.ops[-1]
        state.output = {"result_base": last["out_base"], "classes": int(state.model.classes)}
        if state.batch > 1:
            state.output["batch"] = state.batch
        for entry in info:
            entry["ideal_cycles"] = -(-entry["macs"] // c.macs_per_cycle)
        state.instructions, state.segments, state.stream, state.layer_info = instructions, segments, stream, info
        return state

    @staticmethod
    def _view(op, spec, image, image_h):
        """(word offset, rows) of image `image`'s part of a stacked map, or of the whole map when the
        operation runs once over the stack."""
        if op.get("images", 1) == 1:
            return 0, spec["h"]
        return image * image_h * spec["w"] * spec["cw"], image_h

    def _pool(self, op, image=0):
        src, out = op["in"], op["out"]
        in_off, in_h = self._view(op, src, image, op.get("image_in_h"))
        out_off, out_h = self._view(op, out, image, op.get("image_out_h"))
        fields = {"in_base": op["in_base"] + in_off, "in_h": in_h, "in_w": src["w"], "cw": src["cw"],
                  "planes": src["planes"], "kernel": op["kernel"], "stride": op["stride"],
                  "out_h": out_h, "out_w": out["w"], "out_base": op["out_base"] + out_off,
                  "images_m1": op.get("images", 1) - 1}
        return self._encode(op["name"], Opcode.POOL, fields)

    def _conv(self, op):
        """The CONV of an operation: over the whole stack, or (`all_images`) over every image with the
        bases at image 0 and an image's rows; the logits of image b follow image b - 1's."""
        src, out = op["in"], op["out"]
        _, in_h = self._view(op, src, 0, op.get("image_in_h"))
        fields = {
            "in_base": op["in_base"] + op["in_word_offset"], "in_h": in_h, "in_w": src["w"],
            "in_cw": op["in_cw"], "in_stride": src["cw"], "in_tail": op["in_tail"], "in_planes": op["n"],
            "kh": op["kh"], "kw": op["kw"], "stride": op["stride"], "pad": op["pad"],
            "pad_value": op["pad_value"], "out_h": op["out_h"], "out_w": op["out_w"], "out_ch": op["o"],
            "out_ch_base": op["out_ch_base"], "out_stride": 0 if out is None else out["cw"],
            "out_planes": 0 if out is None else out["planes"], "out_base": op["out_base"],
            "wbases": op["m"], "w_base": op["w_base"], "s_base": op["s_base"], "t_base": op["t_base"],
            "raw": int(op["raw"]), "k": op["k"], "images_m1": op.get("images", 1) - 1,
            "packed": int(op.get("packed", 0)), "all_images": int(op.get("all_images", 0))}
        return self._encode(op["name"], Opcode.CONV, fields)

    def _shortcut(self, op):
        s = op["shortcut"]
        src = s["in"]
        _, in_h = self._view(op, src, 0, s.get("image_in_h"))
        fields = {
            "in_base": s["in_base"] + s.get("in_word_offset", 0), "in_h": in_h, "in_w": src["w"],
            "in_cw": s["in_cw"],
            "in_stride": src["cw"], "in_tail": s["in_tail"], "in_planes": s["n"], "kh": s["kh"], "kw": s["kw"],
            "stride": s["stride"], "pad": s["pad"], "pad_value": s["pad_value"], "wbases": s["m"],
            "w_base": s["w_base"], "s_base": s["s_base"], "k": s["k"]}
        return self._encode(op["name"], Opcode.SHORTCUT, fields)

    @staticmethod
    def _images(c, op):
        """The weight, scale and (unless raw) threshold entries one CONV reads, as Segments (a
        shortcut's weights and scales after the main source's)."""
        rows, limbs = c.rows, word_limbs(c.word_bits)
        o = op["o"]
        ot = -(-o // rows)
        wimgs, simgs = [], []
        for s in _sources(op):
            m, n = s["m"], s["n"]
            kw_words = pass_words(s)
            # Weight entries (ot, m, j) with R lanes; lanes past the group's channels are 0.
            wpad = np.zeros((m, ot * rows, kw_words, limbs), dtype=np.uint64)
            wpad[:, :o] = s["weights"]
            wimgs.append(wpad.reshape(m, ot, rows, kw_words, limbs).transpose(1, 0, 3, 2, 4).reshape(-1, rows, limbs))
            spad = np.zeros((m, n, ot * rows), dtype=np.int64)
            spad[..., :o] = s["scales"]
            simgs.append(spad.reshape(m, n, ot, rows).transpose(2, 0, 1, 3).reshape(-1, rows))
        out = [Segment("weight", op["w_base"], np.ascontiguousarray(np.concatenate(wimgs))),
               Segment("scale", op["s_base"], np.ascontiguousarray(np.concatenate(simgs)))]
        if not op["raw"]:
            t = op["thresholds"]
            timg = np.zeros((ot * rows, c.max_abases + 1), dtype=np.int64)
            timg[:, :c.max_abases] = -(1 << (c.acc_bits - 1))   # unused planes and rows: out_planes says
            timg[:o, :t.shape[1]] = t
            timg[:o, -1] = op["flip"]
            out.append(Segment("threshold", op["t_base"], timg))
        return out

    @staticmethod
    def _encode(name, opcode, fields):
        for key, value in fields.items():
            if value > FIELD_LIMITS[key]:
                _exceeds(name, f"instruction field {key}", value, "its largest value", FIELD_LIMITS[key])
        try:
            return encode(opcode, **{k: int(v) for k, v in fields.items()})
        except IsaError as error:
            raise CompileError(f"{name}: {error}") from None


class Verify:
    """Run the program on the ISS for sample images; compare every layer with deploy_forward."""

    name = "verify"

    def apply(self, state):
        if state.verify_images <= 0:
            return state
        from sw.iss import Iss, IssError
        from sw.runtime import read_logits, run_inputs
        bundle = state_to_bundle(state)
        rng = np.random.default_rng(state.seed)
        count = -(-state.verify_images // state.batch) * state.batch     # whole batches
        images = rng.integers(0, 256, (count,) + tuple(state.model.input_shape), dtype=np.uint8)
        logits, trace = deploy_forward(state.model, images, intermediates=True)
        iss = Iss(state.config, batch=count // state.batch)
        iss.load(bundle)
        iss.write("act", bundle.input["act_base"], run_inputs(bundle, images)[0])
        ends = {entry["instructions"][-1]: entry for entry in bundle.layers}
        c = state.config

        def compare(pc, opcode, fields):
            entry = ends.get(pc)
            if entry is None or entry["output"] is None:
                return
            got = read_map(iss.act, entry["output"], c.word_bits)
            want = trace[entry["index"]]                # (T, B, C, h, w) or (T, B, O)
            if not np.array_equal(got.reshape(want.shape), want):
                raise InternalCompileError(f"{entry['name']}: internal error: the ISS's output planes differ "
                                           f"from deploy_forward's")

        try:
            iss.run(on_step=compare)
        except IssError as error:
            raise InternalCompileError(f"program: internal error: the ISS stopped with {error}") from None
        got = read_logits(bundle, iss.result)
        if not np.array_equal(got, logits):
            raise InternalCompileError("program: internal error: the ISS's logits differ from deploy_forward's")
        state.checked.append(f"verify: ISS == deploy_forward at every layer on {len(images)} random images")
        return state


def read_map(act, spec, word_bits):
    """A map's planes from activation words: (runs, planes, h, w, cw, limbs) -> int8 (planes, images, C,
    h, w); a batched map's stacked images come apart, run-major."""
    planes = _read_stack(act, spec, word_bits)
    batch = spec.get("batch", 1)
    if batch == 1:
        return planes
    t, runs, c, h, w = planes.shape
    return planes.reshape(t, runs, c, batch, h // batch, w).transpose(0, 1, 3, 2, 4, 5).reshape(
        t, runs * batch, c, h // batch, w)


def _read_stack(act, spec, word_bits):
    batch = act.shape[0]
    words = act[:, spec["base"]:spec["base"] + spec["planes"] * spec["h"] * spec["w"] * spec["cw"]]
    words = words.reshape(batch, spec["planes"], spec["h"], spec["w"], spec["cw"], -1)
    if spec.get("layout"):
        # Word-aligned channel groups: channel c at bit (c // cg) * wpg * W + c % cg.
        _, cg, wpg = spec["layout"]
        bits = unpack_words(words, word_bits, spec["cw"] * word_bits)
        c = np.arange(spec["channels"])
        bits = bits[..., (c // cg) * wpg * word_bits + c % cg]
    else:
        bits = unpack_words(words, word_bits, spec["channels"])          # (B, T, h, w, C)
    return (bits.astype(np.int8) * 2 - 1).transpose(1, 0, 4, 2, 3)


PASSES = (CheckConfig(), MergeBranches(), Lower(), Batch(), CheckFit(), Allocate(), Emit(), Verify())


def state_to_bundle(state):
    return Bundle(state.config, list(state.instructions), list(state.segments), dict(state.input),
                  dict(state.output), list(state.layer_info),
                  {"input_shape": list(state.model.input_shape), "classes": int(state.model.classes),
                   "training": state.model.training, "logit_unit": state.model.logit_unit,
                   "weights": "stream" if state.streamed else "resident"},
                  list(state.stream))


def _run_passes(state, progress):
    """`PASSES` in order; each changes `state` in place (so a failing pass leaves what it saw)."""
    for p in PASSES:
        if progress is not None:
            progress(p.name)
        state = p.apply(state)
    return state


def _fallback(state):
    """(plane_groups, input_mode) of the program to try when `state`'s did not compile, or None.

    Grouped pixel planes repeat the first layer's weights; without them the network may fit. A packed
    first layer reads the whole image map (more activation words than the unfold of a strided kernel's
    output pixels) and may take more weight words than the unfold, so with `input="auto"` the host
    unfold may fit where it does not (where neither does, `compile_model` gives the packed refusal)."""
    if not state.input:
        return None
    if state.input["mode"] == "unfold" and len(state.input["groups"]) != 8:
        return False, state.input_mode
    if state.input["mode"] == "packed" and state.input_mode == "auto":
        return False, "unfold"
    return None


def compile_model(model, config=None, verify_images=2, seed=0, progress=None, weights="auto", plane_groups=True,
                  batch=1, input="auto"):
    """Run `PASSES` on a BnnModel; returns the Bundle. `progress(pass_name)` is called before each;
    `weights` is one of WEIGHT_MODES; `plane_groups=False` keeps the first layer's 8 pixel planes apart;
    `batch` images run together, spread over the array's columns (the `Batch` pass); `input` is one of
    INPUT_MODES, how the first layer reads the image (packed: a CompileError says why it cannot)."""
    config = AccelConfig() if config is None else config
    if input not in INPUT_MODES:
        raise CompileError(f"program: input must be one of {', '.join(INPUT_MODES)}, not {input!r}")
    attempt = (plane_groups, input)
    packed_error = None
    while True:
        state = ProgramState(model, config, verify_images=verify_images, seed=seed, weights=weights,
                             plane_groups=attempt[0], input_mode=attempt[1], batch=batch)
        try:
            _run_passes(state, progress)
            break
        except InternalCompileError:
            raise
        except CompileError as error:
            if state.input and state.input.get("mode") == "packed":
                packed_error = error
            attempt = _fallback(state)
            if attempt is None:
                # A packed first layer needs the fewest activation words: what stops it is the limit;
                # otherwise the last (smallest) program's.
                raise packed_error or error from None
            progress = None             # the passes are reported for the first program only
    bundle = state_to_bundle(state).validate()
    bundle.model["checked"] = state.checked
    return bundle


def compile_file(path, config=None, **options):
    try:
        model = load_model(path)
    except ModelFormatError as error:
        raise CompileError(str(error)) from None
    return compile_model(model, config, **options)
