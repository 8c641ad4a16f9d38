"""Instruction-set simulator: executes a program exactly as docs/isa.md defines it. numpy only.

    iss = Iss(config, batch=B)                    # B images run side by side (weights are shared)
    iss.load(bundle)                              # program + the bundle's memory images and load stream
    iss.write("act", base, words)                 # (entries, limbs) for all images or (B, entries, limbs)
    status = iss.run()                            # IssStatus; raises IssError(code) like the controller
    iss.result[:, base:base + n]                  # int64 sums

Memories (numpy, names as in docs/isa.md): `act` (B, act_depth, limbs) uint64 words masked to W bits,
`weight` (weight_depth, R, limbs) uint64, `scale` (scale_depth, R) int64, `threshold`
(thr_depth, max_abases) int64 with `flip` (thr_depth,) bool, `result` (B, result_depth) int64,
`program` (instr_depth,) Python ints. All start at zero, so an unwritten program word reads as END.

The arithmetic is `sw.ref`'s: `binary_dot_packed` on the masked words of every pass, fixed-point
scales summed exactly (then wrapped to acc_bits like the hardware's accumulator), `threshold`. The
work is vectorised over images, pixels and output channels; Python loops run over words of K.

LOAD takes its entries from the load stream (`feed`, or the bundle's `stream` segments) and writes
them at once; the ordering the hardware needs is checked instead: a CONV that reads a region a LOAD
has queued since the last SYNC is a HAZARD (the engine may still be writing it), and a LOAD that finds
the stream empty is a STALL (the hardware would wait forever). Both are ISS-only diagnostics of a
program or host error; the controller's 3-bit error field never reports them.

A CONV with `packed` reads an image map (one word a pixel, its channels' bytes) and gathers each
pixel plane's receptive field as fields of `in_tail` bits packed into patch words (`pack_fields`, the
layout of docs/isa.md "Packed image input"); every beat counts all W bits.

A CONV with `all_images` computes the `images_m1 + 1` images of a stacked map as one run of pixels
(image b's output pixel p1 is pixel b * out_h * out_w + p1, reading image b's input map), which is
exactly the images' views run in turn (docs/isa.md "Feature maps in the activation buffer"); its
regions are the whole stack's.

Cycles follow the controller's cycle model (docs/isa.md "Cycle model", implemented once in
`hw/cycles.py` with its named constants and held to the RTL by tests/hw/test_accel.py).
"""

from dataclasses import dataclass, field

import numpy as np

import sw.ref as ref
import hw.cycles as hw_cycles
from hw.config import AccelConfig
from hw.isa import LOAD_TARGETS, IsaError, MemoryTarget, Opcode, decode
from sw.bundle import DEPTH_FIELDS, STREAM_MEMORIES, pack_words, word_limbs, word_mask
from sw.runtime.host_port import MEMORY_NAMES

__all__ = ["IssError", "ERROR_CODES", "ILLEGAL_OPCODE", "OUT_OF_RANGE", "BAD_FIELD", "PROGRAM_END", "STALL", "HAZARD",
           "END_CYCLES", "conv_cycles", "pool_cycles", "IssStatus", "Iss", "analytic_cycles",
           "layer_report", "format_report", "packed_layout", "pack_fields", "packed_conv_error"]

ILLEGAL_OPCODE = 1
OUT_OF_RANGE = 2
BAD_FIELD = 3
PROGRAM_END = 4
STALL = 8           # ISS only: a LOAD found the load stream empty
HAZARD = 9          # ISS only: a CONV read a region with a LOAD queued since the last SYNC
END_CYCLES = hw_cycles.END_CYCLES
ERROR_CODES = {ILLEGAL_OPCODE: "ILLEGAL_OPCODE", OUT_OF_RANGE: "OUT_OF_RANGE", BAD_FIELD: "BAD_FIELD",
               PROGRAM_END: "PROGRAM_END", STALL: "STALL", HAZARD: "HAZARD"}


def _view_words(planes, f, map_words):
    """Words from a map view's first to past its last plane, the planes `images_m1 + 1` image maps of
    `map_words` apart (docs/isa.md "Feature maps"); a CONV with `all_images` covers the whole stack,
    its last image's view ending `planes * (images_m1 + 1)` image maps on."""
    images = f["images_m1"] + 1
    if f.get("all_images"):
        return planes * images * map_words
    return ((planes - 1) * images + 1) * map_words


def packed_layout(positions, channels, word_bits):
    """The patch words of one plane of a packed CONV (docs/isa.md "Packed image input"): for each of
    their `ceil(positions / F) * W` bits (F = W // channels fields a word), the index of the field bit
    it holds in the (positions, channels) fields flattened position-major, or -1 for a bit above a
    word's fields. Word j holds the t fields of positions j*F .. j*F+t-1, position j*F+q at bits
    (t-1-q)*channels .., its channel ch at bit (t-1-q)*channels + ch."""
    per = word_bits // channels
    words = -(-positions // per)
    index = np.full((words, word_bits), -1, dtype=np.int64)
    for j in range(words):
        t = min(per, positions - j * per)
        for q in range(t):
            first = (t - 1 - q) * channels
            index[j, first:first + channels] = (j * per + q) * channels + np.arange(channels)
    return index.reshape(-1)


def pack_fields(fields, word_bits, fill=0):
    """0/1 field bits (..., positions, channels) -> packed patch words (..., ceil(positions / F), limbs)
    uint64 in `packed_layout`'s order, the bits above each word's fields set to `fill` (0 in the patch,
    1 in the weights, so that their XNOR adds nothing)."""
    fields = np.asarray(fields, dtype=np.uint8)
    positions, channels = fields.shape[-2:]
    index = packed_layout(positions, channels, word_bits)
    flat = fields.reshape(fields.shape[:-2] + (positions * channels,))
    bits = np.where(index >= 0, flat[..., np.maximum(index, 0)], np.uint8(fill))
    return pack_words(bits, word_bits)


def packed_conv_error(f, word_bits):
    """The first BAD_FIELD condition of a packed CONV's fields (docs/isa.md "Packed image input") as a
    message, or None; `in_tail` is 1..W already. The compiler asks it before it emits one."""
    w = word_bits
    khw, channels = f["kh"] * f["kw"], f["in_tail"]
    per = w // channels
    if f.get("shortcut"):
        return "a packed CONV has no SHORTCUT before it"
    if 8 * channels > w:
        return f"packed CONV in_tail {channels}: a pixel of {channels} bytes exceeds W = {w} bits"
    if f["in_planes"] > 8:
        return f"packed CONV in_planes {f['in_planes']} exceeds the 8 bits of a pixel"
    if khw < f["in_planes"]:
        return f"packed CONV kh*kw = {khw} is less than in_planes {f['in_planes']}"
    if f["in_cw"] * per < khw:
        return f"packed CONV in_cw {f['in_cw']} ({per} fields a word) holds fewer than kh*kw = {khw} fields"
    if (f["in_cw"] - 1) * per >= khw:
        return f"packed CONV in_cw {f['in_cw']} ({per} fields a word) is more words than kh*kw = {khw} fields fill"
    last = khw - (f["in_cw"] - 1) * per
    if f["in_cw"] > 1 and last < f["in_planes"]:
        # The gather writes a word's N planes in N cycles: its words come at least N reads apart.
        return (f"packed CONV's last patch word holds {last} of kh*kw = {khw} fields, fewer than in_planes "
                f"{f['in_planes']}")
    if f["k"] != khw * channels:
        return f"packed CONV k {f['k']} is not kh*kw*in_tail = {khw * channels}"
    return None


class IssError(RuntimeError):
    """The program stopped with an error status (docs/isa.md "Errors"): `code`, `name`, `pc`."""

    def __init__(self, code, pc, detail):
        self.code, self.pc, self.detail = code, pc, detail
        self.name = ERROR_CODES[code]
        super().__init__(f"Error {code} ({self.name}) at instruction {pc}: {detail}")


def _dense(words, w_bits):
    """Masked W-bit words (..., n) -> as few uint64 words as hold them when W divides 64 (so each
    binary_dot_packed step popcounts 64 bits; the XOR popcount of the sum is unchanged)."""
    per = 64 // w_bits
    if w_bits >= 64 or 64 % w_bits:
        return words
    n = words.shape[-1]
    padded = np.zeros(words.shape[:-1] + (-(-n // per) * per,), dtype=np.uint64)
    padded[..., :n] = words
    padded = padded.reshape(words.shape[:-1] + (-1, per))
    shifts = (np.arange(per, dtype=np.uint64) * np.uint64(w_bits))
    return np.bitwise_or.reduce(padded << shifts, axis=-1)


def conv_cycles(config, f):
    """Cycles of one CONV with decoded fields `f`: the controller's model (hw/cycles.py)."""
    return hw_cycles.conv_cycles(config, f)


def pool_cycles(config, f):
    return hw_cycles.pool_cycles(config, f)


@dataclass
class IssStatus:
    """A finished run: total `cycles` and per executed instruction (pc, opcode name, cycles)."""

    cycles: int
    trace: list = field(default_factory=list)


class Iss:
    def __init__(self, config, batch=1):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Config must be an AccelConfig, not {config!r}")
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"Batch must be a positive integer, not {batch!r}")
        self.config = config
        self.batch = batch
        c = config
        self.limbs = word_limbs(c.word_bits)
        self.full_mask = word_mask(c.word_bits, c.word_bits)
        self.act = np.zeros((batch, c.act_depth, self.limbs), dtype=np.uint64)
        self.weight = np.zeros((c.weight_depth, c.rows, self.limbs), dtype=np.uint64)
        self.scale = np.zeros((c.scale_depth, c.rows), dtype=np.int64)
        self.threshold = np.zeros((c.thr_depth, c.max_abases), dtype=np.int64)
        self.flip = np.zeros(c.thr_depth, dtype=bool)
        self.result = np.zeros((batch, c.result_depth), dtype=np.int64)
        self.program = [0] * c.instr_depth
        self.stream = []            # [memory, entries] chunks the LOADs consume, in order

    # Host access ----------------------------------------------------------------------------------
    def load_program(self, instructions):
        if len(instructions) > self.config.instr_depth:
            raise ValueError(f"{len(instructions)} instructions exceed instr_depth {self.config.instr_depth}")
        for i, word in enumerate(instructions):
            self.program[i] = int(word)

    def write(self, memory, base, values):
        """Write entries from `base` on, as the host would (values in the bundle's segment format)."""
        values = np.asarray(values)
        n = values.shape[1] if memory in ("act", "result") and values.ndim == (3 if memory == "act" else 2) \
            else values.shape[0]
        if memory == "act":
            self.act[:, base:base + n] = values.astype(np.uint64) & self.full_mask
        elif memory == "result":
            self.result[:, base:base + n] = values
        elif memory == "weight":
            self.weight[base:base + n] = values.astype(np.uint64) & self.full_mask
        elif memory == "scale":
            self.scale[base:base + n] = values
        elif memory == "threshold":
            self.threshold[base:base + n] = values[:, :-1]
            self.flip[base:base + n] = values[:, -1] != 0
        else:
            raise ValueError(f"Unknown memory {memory!r}")

    def feed(self, memory, values):
        """Append entries (the bundle's segment format for `memory`) to the load stream."""
        if memory not in STREAM_MEMORIES:
            raise ValueError(f"The load stream carries weight, scale or threshold entries, not {memory!r}")
        self.stream.append([memory, np.asarray(values)])

    def load(self, bundle):
        """The bundle's program, memory images and load stream (not the input, which is per image)."""
        self.load_program(bundle.instructions)
        for segment in bundle.segments:
            self.write(segment.memory, segment.base, segment.values)
        for segment in bundle.stream:
            self.feed(segment.memory, segment.values)

    # Execution ------------------------------------------------------------------------------------
    def run(self, on_step=None):
        """Execute from instruction 0 to END. `on_step(pc, opcode, fields)` is called after each one."""
        cycles = 0
        trace = []
        pc = 0
        timeline = hw_cycles.Timeline(self.config)
        self._pending = []          # (memory, first, end) of the LOADs queued since the last SYNC
        shortcut = None             # the fields of a SHORTCUT, for the CONV after it
        while True:
            if pc >= self.config.instr_depth:
                raise IssError(PROGRAM_END, pc, f"the program counter ran past instr_depth "
                                                f"{self.config.instr_depth} without END")
            try:
                opcode, fields = decode(self.program[pc])
            except IsaError as error:
                raise IssError(ILLEGAL_OPCODE, pc, str(error)) from None
            if shortcut is not None and opcode != Opcode.CONV:
                raise IssError(BAD_FIELD, pc, f"a SHORTCUT must be followed by a CONV, not {opcode.name}")
            if opcode == Opcode.END:
                spent = timeline.step(opcode, fields)
                cycles += spent
                trace.append((pc, "END", spent))
                return IssStatus(cycles, trace)
            if opcode == Opcode.CONV:
                f = fields if shortcut is None else dict(fields, shortcut=shortcut)
                self._check_conv(pc, f)
                self._check_hazard(pc, f)
                self._conv(f)
            elif opcode == Opcode.POOL:
                self._check_pool(pc, fields)
                self._pool(fields)
            elif opcode == Opcode.LOAD:
                self._load(pc, fields)
            elif opcode == Opcode.SYNC:
                self._pending = []
            shortcut = fields if opcode == Opcode.SHORTCUT else None
            spent = timeline.step(opcode, fields)
            cycles += spent
            trace.append((pc, opcode.name, spent))
            if on_step is not None:
                on_step(pc, opcode, fields)
            pc += 1

    # Checks (docs/isa.md "Errors"; order: BAD_FIELD, then OUT_OF_RANGE) -----------------------------
    def _check_conv(self, pc, f):
        c = self.config
        w = c.word_bits

        def bad(detail):
            raise IssError(BAD_FIELD, pc, detail)

        sources = [("CONV", f)] + ([("SHORTCUT", f["shortcut"])] if "shortcut" in f else [])
        for what, s in sources:
            for name in ("in_h", "in_w", "in_cw", "in_stride", "in_planes", "kh", "kw", "stride", "wbases") + \
                    (("out_h", "out_w", "out_ch") if what == "CONV" else ()):
                if s[name] == 0:
                    bad(f"{what} field {name} is 0")
            if not 1 <= s["in_tail"] <= w:
                bad(f"{what} in_tail {s['in_tail']} is not in 1..{w}")
            if s.get("packed"):
                error = packed_conv_error(f, w)
                if error:
                    bad(error)
            else:
                if s["in_stride"] < s["in_cw"]:
                    bad(f"{what} in_stride {s['in_stride']} is less than in_cw {s['in_cw']}")
                valid = s["kh"] * s["kw"] * ((s["in_cw"] - 1) * w + s["in_tail"])
                if s["k"] != valid:
                    bad(f"{what} k {s['k']} is not kh*kw*((in_cw-1)*W + in_tail) = {valid}")
            if s["k"] > c.max_k:
                bad(f"{what} k {s['k']} exceeds max_k {c.max_k}")
            if s["wbases"] > c.max_wbases:
                bad(f"{what} wbases {s['wbases']} exceeds max_wbases {c.max_wbases}")
            for out, k, size in (("out_h", "kh", "in_h"), ("out_w", "kw", "in_w")):
                if (f[out] - 1) * s["stride"] + s[k] > s[size] + 2 * s["pad"]:
                    bad(f"{what}'s last window leaves the padded input ({out} {f[out]}, stride {s['stride']}, "
                        f"{k} {s[k]}, {size} {s[size]}, pad {s['pad']})")
        if not f["raw"]:
            if not 1 <= f["out_planes"] <= c.max_abases:
                bad(f"CONV out_planes {f['out_planes']} is not in 1..max_abases {c.max_abases}")
            if f["out_ch_base"] % c.rows:
                bad(f"CONV out_ch_base {f['out_ch_base']} is not a multiple of rows {c.rows}")
            if f["out_ch_base"] + f["out_ch"] > f["out_stride"] * w:
                bad(f"CONV out_ch_base + out_ch = {f['out_ch_base'] + f['out_ch']} exceeds out_stride * W = "
                    f"{f['out_stride'] * w}")
        for name, (_, end) in self._conv_regions(f).items():
            limit_name = {"input": "act_depth", "output": "act_depth", "patch": "patch_depth",
                          "shortcut input": "act_depth"}.get(name) or DEPTH_FIELDS[name.split()[-1]]
            limit = getattr(c, limit_name)
            if end > limit:
                raise IssError(OUT_OF_RANGE, pc, f"CONV {name} region ends at {end}, past {limit_name} {limit}")

    def _conv_regions(self, f):
        """name -> (first, end) of every region a CONV reads or writes (docs/isa.md "Errors"); the
        patch region counts from 0 (both sources' words), the threshold region is reserved even for raw
        sums; a SHORTCUT's regions are named `shortcut input`, `shortcut weight`, `shortcut scale`."""
        c = self.config
        ot = -(-f["out_ch"] // c.rows)
        p = f["out_h"] * f["out_w"]

        def region(first, size):
            return first, first + size

        def source_regions(s, prefix):
            kw_words = hw_cycles.pass_words(s)
            m, n = s["wbases"], s["in_planes"]
            map_words = s["in_h"] * s["in_w"] * s["in_stride"]
            # A packed CONV's image map has no planes: images_m1 and in_planes do not move its words
            # (with all_images the region is every image's map).
            input_words = hw_cycles.conv_images(f) * map_words if s.get("packed") else _view_words(n, f, map_words)
            return {f"{prefix}input": region(s["in_base"], input_words),
                    f"{prefix}weight": region(s["w_base"], ot * m * kw_words),
                    f"{prefix}scale": region(s["s_base"], ot * m * n)}, n * kw_words

        regions, patch = source_regions(f, "")
        if "shortcut" in f:
            second, patch2 = source_regions(f["shortcut"], "shortcut ")
            regions.update(second)
            patch += patch2
        regions["patch"] = region(0, patch)
        regions["threshold"] = region(f["t_base"], ot * c.rows)
        if f["raw"]:
            regions["result"] = region(f["out_base"], hw_cycles.conv_images(f) * p * f["out_ch"])
        else:
            regions["output"] = region(f["out_base"], _view_words(f["out_planes"], f, p * f["out_stride"]))
        return regions

    def _check_hazard(self, pc, f):
        regions = self._conv_regions(f)
        names = ("weight", "scale", "shortcut weight", "shortcut scale") + (() if f["raw"] else ("threshold",))
        reads = [(name.split()[-1], regions[name]) for name in names if name in regions]
        for memory, first, end in self._pending:
            for read, (lo, hi) in reads:
                if read == memory and first < hi and lo < end:
                    raise IssError(HAZARD, pc, f"CONV reads {memory} entries {lo}..{hi - 1} while a LOAD "
                                               f"queued since the last SYNC writes {first}..{end - 1}")

    def _load(self, pc, f):
        if f["mem"] not in {t.value for t in LOAD_TARGETS} or f["count"] == 0:
            raise IssError(BAD_FIELD, pc, f"LOAD writes WEIGHT, SCALE or THRESHOLD, at least one entry "
                                          f"(mem {f['mem']}, count {f['count']})")
        memory = MEMORY_NAMES[f["mem"]]
        depth = getattr(self.config, DEPTH_FIELDS[memory])
        if f["addr"] + f["count"] > depth:
            raise IssError(OUT_OF_RANGE, pc, f"LOAD region ends at {f['addr'] + f['count']}, past "
                                             f"{DEPTH_FIELDS[memory]} {depth}")
        base, left = f["addr"], f["count"]
        while left:
            if not self.stream:
                raise IssError(STALL, pc, f"LOAD waits for {left} more {memory} entries; the load stream "
                                          f"is empty")
            chunk = self.stream[0]
            if chunk[0] != memory:
                raise IssError(STALL, pc, f"LOAD of {memory} entries finds {chunk[0]} entries next in the "
                                          f"load stream")
            take = chunk[1][:left]
            self.write(memory, base, take)
            base, left = base + len(take), left - len(take)
            chunk[1] = chunk[1][len(take):]
            if not len(chunk[1]):
                self.stream.pop(0)
        self._pending.append((memory, f["addr"], f["addr"] + f["count"]))

    def _check_pool(self, pc, f):
        c = self.config
        for name in ("in_h", "in_w", "cw", "planes", "kernel", "stride", "out_h", "out_w"):
            if f[name] == 0:
                raise IssError(BAD_FIELD, pc, f"POOL field {name} is 0")
        for out, size in (("out_h", "in_h"), ("out_w", "in_w")):
            if (f[out] - 1) * f["stride"] + f["kernel"] > f[size]:
                raise IssError(BAD_FIELD, pc, f"POOL's last window leaves the input ({out} {f[out]}, "
                                              f"stride {f['stride']}, kernel {f['kernel']}, {size} {f[size]})")
        for name, base, h, w in (("input", f["in_base"], f["in_h"], f["in_w"]),
                                 ("output", f["out_base"], f["out_h"], f["out_w"])):
            end = base + _view_words(f["planes"], f, h * w * f["cw"])
            if end > c.act_depth:
                raise IssError(OUT_OF_RANGE, pc, f"POOL {name} region ends at {end}, past act_depth {c.act_depth}")

    # Semantics ------------------------------------------------------------------------------------
    def _conv(self, f):
        c = self.config
        rows = c.rows
        batch = self.batch
        p_count = hw_cycles.conv_images(f) * f["out_h"] * f["out_w"]
        ot_count = -(-f["out_ch"] // rows)
        o_pad = ot_count * rows
        acc = np.zeros((batch * p_count, o_pad), dtype=np.int64)
        self._add_passes(acc, f, f)
        if "shortcut" in f:
            self._add_passes(acc, f["shortcut"], f)
        # The accumulator is acc_bits wide and wraps (never happens for a program the compiler made).
        half = 1 << (c.acc_bits - 1)
        if c.acc_bits < 64:
            acc = ((acc + half) & ((1 << c.acc_bits) - 1)) - half
        acc = acc.reshape(batch, p_count, o_pad)
        if f["raw"]:
            # Pixel p of an all_images CONV is image p // P1's pixel p % P1: image b's sums start b * P1
            # * out_ch entries on, so every pixel's entries follow from p alone.
            out_ch = f["out_ch"]
            index = f["out_base"] + np.arange(p_count)[:, None] * out_ch + np.arange(out_ch)[None]
            self.result[:, index] = acc[:, :, :out_ch]
            return
        t_count = f["out_planes"]
        thr = self.threshold[f["t_base"]:f["t_base"] + o_pad, :t_count]
        flip = self.flip[f["t_base"]:f["t_base"] + o_pad]
        bits = (ref.threshold(acc, thr, flip) > 0).astype(np.uint8)     # (T, B, P, O_pad)
        bits[..., f["out_ch"]:] = 0
        self._write_fields(bits, f)

    def _add_passes(self, acc, s, f):
        """Add the passes of source `s` (the CONV's own fields, or its SHORTCUT's) over the CONV `f`'s
        output pixels and channels to `acc` (B*P, O_pad)."""
        c = self.config
        w_bits, rows = c.word_bits, c.rows
        limbs = self.limbs
        batch = self.batch
        p_count = hw_cycles.conv_images(f) * f["out_h"] * f["out_w"]
        kw_words = hw_cycles.pass_words(s)
        m_count, n_count = s["wbases"], s["in_planes"]
        ot_count = -(-f["out_ch"] // rows)
        o_pad = ot_count * rows
        if s.get("packed"):
            a_words = self._gather_packed(s, f)
            masks = np.broadcast_to(self.full_mask, (kw_words, limbs))
            # Every beat counts all W bits (nbits = W): dot = 2 * popcount(XNOR over KW*W bits) - k.
            beat_bits = kw_words * w_bits
        else:
            a_words, masks = self._gather(s, f)
            beat_bits = s["k"]            # the beats' nbits add up to k (a BAD_FIELD check)
        wt = self.weight[s["w_base"]:s["w_base"] + ot_count * m_count * kw_words]
        wt = wt.reshape(ot_count, m_count, kw_words, rows, limbs) & masks[None, None, :, None, :]
        wt = wt.transpose(1, 0, 3, 2, 4).reshape(m_count, o_pad, kw_words * limbs)
        a_words, wt = _dense(a_words, w_bits), _dense(wt, w_bits)
        sc = self.scale[s["s_base"]:s["s_base"] + ot_count * m_count * n_count]
        sc = sc.reshape(ot_count, m_count, n_count, rows).transpose(1, 2, 0, 3).reshape(m_count, n_count, o_pad)
        for n in range(n_count):
            a_n = a_words[:, n].reshape(batch * p_count, -1)
            for m in range(m_count):
                # binary_dot_packed gives k' - 2 * popcount(XOR) over the words
                dots = ref.binary_dot_packed(a_n, wt[m], 2 * beat_bits - s["k"])
                acc += sc[m, n][None, :] * dots

    def _windows(self, s, f):
        """Output pixels' input positions: (pixel, inside), each (P, kh*kw) in (ky, kx) order; pixel is
        the position's index in the source's map (in_h * in_w pixels an image), 0 of the image's map
        outside it. An all_images CONV's pixel p reads image p // (out_h * out_w)'s map."""
        p_one = f["out_h"] * f["out_w"]
        image, p = np.divmod(np.arange(hw_cycles.conv_images(f) * p_one), p_one)
        oy, ox = np.divmod(p, f["out_w"])
        ky, kx = (a.reshape(-1) for a in np.meshgrid(np.arange(s["kh"]), np.arange(s["kw"]), indexing="ij"))
        iy = oy[:, None] * s["stride"] + ky[None] - s["pad"]
        ix = ox[:, None] * s["stride"] + kx[None] - s["pad"]
        inside = (iy >= 0) & (iy < s["in_h"]) & (ix >= 0) & (ix < s["in_w"])
        pixel = image[:, None] * (s["in_h"] * s["in_w"]) + np.where(inside, iy * s["in_w"] + ix, 0)
        return pixel, inside

    def _gather(self, s, f):
        """Every pixel's patch words of source `s`: (B, N, P, KW * limbs) in K-word order (ky, kx, cw),
        and the beats' nbits masks (KW, limbs): in_tail on a tap's last channel word, W otherwise."""
        limbs, w_bits = self.limbs, self.config.word_bits
        in_cw = s["in_cw"]
        pixel, inside = self._windows(s, f)
        p_count, khw = pixel.shape
        pixel, inside = (np.repeat(a, in_cw, axis=1) for a in (pixel, inside))
        cw = np.tile(np.arange(in_cw), khw)
        plane = np.arange(s["in_planes"])[:, None, None] * (s["in_h"] * s["in_w"] * (f["images_m1"] + 1))
        addr = s["in_base"] + (plane + pixel[None]) * s["in_stride"] + cw[None, None]
        patch = self.act[:, addr]                                       # (B, N, P, KW, L)
        patch[:, :, ~inside] = self.full_mask if s["pad_value"] else np.zeros(limbs, dtype=np.uint64)
        masks = np.where((np.arange(khw * in_cw) % in_cw == in_cw - 1)[:, None],
                         word_mask(s["in_tail"], w_bits)[None], self.full_mask[None])
        patch &= masks
        return patch.reshape(self.batch, s["in_planes"], p_count, -1), masks

    def _gather_packed(self, s, f):
        """A packed CONV's patch words (docs/isa.md "Packed image input"): (B, N, P, in_cw * limbs).
        Pixel (iy, ix) is one word of the image map; plane n of channel ch is its bit 8 * ch + n."""
        pixel, inside = self._windows(s, f)
        p_count = pixel.shape[0]
        addr = s["in_base"] + pixel * s["in_stride"]
        words = self.act[:, addr]                                       # (B, P, kh*kw, L)
        ch = np.arange(s["in_tail"])
        pixels = (words[..., ch // 8] >> (8 * (ch % 8)).astype(np.uint64)) & np.uint64(0xFF)   # (B, P, kh*kw, c)
        planes = []
        for n in range(s["in_planes"]):
            fields = ((pixels >> np.uint64(n)) & np.uint64(1)).astype(np.uint8)
            fields[:, ~inside] = s["pad_value"]
            planes.append(pack_fields(fields, self.config.word_bits).reshape(self.batch, p_count, -1))
        return np.stack(planes, axis=1)

    def _write_fields(self, bits, f):
        """Write bit `o + out_ch_base` of each pixel's output words for every plane (R-bit fields)."""
        w_bits, limbs = self.config.word_bits, self.limbs
        t_count, batch, p_count, o_pad = bits.shape
        pos = f["out_ch_base"] + np.arange(o_pad)
        first, last = pos[0] // w_bits, pos[-1] // w_bits
        n_words = last - first + 1
        flat = (pos // w_bits - first) * (limbs * 64) + pos % w_bits
        width = n_words * limbs * 64
        full = np.zeros((batch, t_count, p_count, width), dtype=np.uint8)
        full[..., flat] = bits.transpose(1, 0, 2, 3)
        values = np.packbits(full, axis=-1, bitorder="little").view("<u8").reshape(
            batch, t_count, p_count, n_words, limbs)
        ones = np.zeros(width, dtype=np.uint8)
        ones[flat] = 1
        mask = np.packbits(ones, bitorder="little").view("<u8").reshape(n_words, limbs)
        # Planes are images_m1 + 1 output image maps apart; an all_images CONV's pixel p (image b's pixel
        # p1, p = b * out_h * out_w + p1) is then pixel p of plane t's stack.
        plane_pixels = f["out_h"] * f["out_w"] * (f["images_m1"] + 1)
        at = np.arange(t_count)[:, None, None] * plane_pixels + np.arange(p_count)[None, :, None]
        addr = (f["out_base"] + at * f["out_stride"]
                + first + np.arange(n_words)[None, None])
        self.act[:, addr] = (self.act[:, addr] & ~mask) | values

    def _pool(self, f):
        cw_count, k = f["cw"], f["kernel"]
        t = np.arange(f["planes"]).reshape(-1, 1, 1, 1, 1, 1)
        py = np.arange(f["out_h"]).reshape(1, -1, 1, 1, 1, 1)
        px = np.arange(f["out_w"]).reshape(1, 1, -1, 1, 1, 1)
        ky = np.arange(k).reshape(1, 1, 1, -1, 1, 1)
        kx = np.arange(k).reshape(1, 1, 1, 1, -1, 1)
        cw = np.arange(cw_count).reshape(1, 1, 1, 1, 1, -1)
        images = f["images_m1"] + 1     # planes are `images` image maps apart
        src = f["in_base"] + ((t * f["in_h"] * images + py * f["stride"] + ky) * f["in_w"] + px * f["stride"]
                              + kx) * cw_count + cw
        pooled = np.bitwise_or.reduce(self.act[:, src].reshape(
            (self.batch, f["planes"], f["out_h"], f["out_w"], k * k, cw_count, self.limbs)), axis=4)
        dst = f["out_base"] + ((t[..., 0, 0, :] * f["out_h"] * images + py[..., 0, 0, :]) * f["out_w"]
                               + px[..., 0, 0, :]) * cw_count + cw[..., 0, 0, :]
        self.act[:, dst] = pooled


def analytic_cycles(config, instructions):
    """Cycles of every instruction of a program (a list; the analytic model does not depend on data).
    Stops after the first END; an undecodable word counts 0."""
    out = []
    timeline = hw_cycles.Timeline(config)
    for word in instructions:
        try:
            opcode, fields = decode(word)
        except IsaError:
            out.append(0)
            continue
        out.append(timeline.step(opcode, fields))
        if opcode == Opcode.END:
            break
    return out


def layer_report(bundle):
    """Per model layer of a bundle: name, kind, binary MACs, ideal and analytic cycles, utilization."""
    per_pc = analytic_cycles(bundle.config, bundle.instructions)
    rows = []
    for layer in bundle.layers:
        cycles = sum(per_pc[pc] for pc in layer["instructions"])
        rows.append({"name": layer["name"], "kind": layer["kind"], "macs": layer["macs"],
                     "ideal_cycles": layer["ideal_cycles"], "cycles": cycles,
                     "utilization": layer["ideal_cycles"] / cycles if cycles else 0.0})
    return rows


def format_report(rows):
    """The per-layer table as text lines (with a total)."""
    lines = [f"{'layer':<18} {'binary MACs':>12} {'ideal':>10} {'cycles':>10} {'util':>6}"]
    for r in rows:
        lines.append(f"{r['name']:<18} {r['macs']:>12} {r['ideal_cycles']:>10} {r['cycles']:>10} "
                     f"{100 * r['utilization']:>5.1f}%")
    macs = sum(r["macs"] for r in rows)
    ideal = sum(r["ideal_cycles"] for r in rows)
    cycles = sum(r["cycles"] for r in rows)
    lines.append(f"{'total':<18} {macs:>12} {ideal:>10} {cycles:>10} {100 * ideal / max(1, cycles):>5.1f}%")
    return lines
