"""`GatherEngine`: a CONV's receptive fields, from the activation buffer into the patch banks."""

from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..isa import ConvArgs, ShortcutArgs
from .plan import PIXEL_RANGE, READ_LATENCY, Plan

__all__ = ["GatherEngine"]


class GatherEngine(wiring.Component):
    """Fills two patch banks (ping-pong) with pixel tiles while the issue engine reads the other bank.

    Per tile of C output pixels, column c's bank gets that pixel's receptive field in (activation
    basis n, ky, kx, channel word) order, one activation-buffer read a cycle; a position outside the
    map is the padding word (all ones for `pad_value` 1, else all zeros; the read there is discarded). With a
    shortcut (`plan.shortcut`), the second source's field follows, read the same way from its own map
    with its own kernel, stride and padding. A tile takes C * (N * KW + N2 * KW2) + 1 cycles
    (KW = kh * kw * in_cw, N2 and KW2 the same for the second source): a column's first read follows
    the previous column's last, and one idle cycle between tiles.

    A packed CONV (docs/isa.md "Packed image input") reads each kernel position's pixel word once
    (C * kh * kw + 1 cycles a tile) and packs the planes' fields into words (`_packer`); its tile is
    full `in_planes` cycles after the unpacked one would be.

    Address registers are as wide as the activation buffer's address: they wrap modulo a power of two
    at least the depth, and only addresses inside the map (checked before the CONV runs) are read.

    Ports
    -----
    conv, plan  : In   the running CONV's fields and set-up (steady from `start` on).
    shortcut    : In   the second source's fields (used when `plan.shortcut`).
    start       : In(1)  pulse: initialise for a new CONV.
    active      : In(1)  the CONV runs (from the cycle after `start`).
    act_addr, act_en : Out  activation-buffer read requests; act_data : In  the word read (one cycle later).
    tiles       : Out(stream of the bank index)  valid while a gathered tile waits in the bank; the
                  issue engine reads the bank while valid and takes the transfer when it has read the
                  tile's last word, which frees the bank.
    patch_addr, patch_en : In  the issue engine's read of every column's bank memory (word address
                  within both banks); patch_data : Out  each column's word, one cycle later.
    """

    def __init__(self, config):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Config must be an AccelConfig, not {config!r}")
        self._config = config
        super().__init__({
            "conv": In(ConvArgs),
            "shortcut": In(ShortcutArgs),
            "plan": In(Plan),
            "start": In(1),
            "active": In(1),
            "act_addr": Out(range(config.act_depth)),
            "act_en": Out(1),
            "act_data": In(config.word_bits),
            "tiles": Out(stream.Signature(1)),
            "patch_addr": In(range(2 * config.patch_depth)),
            "patch_en": In(1),
            "patch_data": Out(data.ArrayLayout(config.word_bits, config.cols)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        C, W = cfg.cols, cfg.word_bits
        cv, plan = self.conv, self.plan
        addr_bits = len(self.act_addr)
        # Map coordinates: from -pad to in_h + pad + stride, signed.
        coord = signed(max(ConvArgs["in_h"].width, ConvArgs["in_w"].width) + 2)

        patch_w, patch_r = [], []
        for c in range(C):
            patch = memory.Memory(shape=W, depth=2 * cfg.patch_depth, init=[])
            m.submodules[f"patch{c}"] = patch
            patch_w.append(patch.write_port())
            patch_r.append(patch.read_port())
            m.d.comb += [patch_r[c].addr.eq(self.patch_addr), patch_r[c].en.eq(self.patch_en),
                         self.patch_data[c].eq(patch_r[c].data)]

        # The current pixel (advances one per column, across tiles), and per source where it reads.
        oy = Signal(ConvArgs["out_h"].width)
        ox = Signal(ConvArgs["out_w"].width)
        iy = [Signal(coord, name=f"iy{k}") for k in range(2)]     # oy * stride - pad
        ix = [Signal(coord, name=f"ix{k}") for k in range(2)]
        pix = [Signal(addr_bits, name=f"pix{k}") for k in range(2)]   # in_base + iy * row_words + ix * in_stride
        row = [Signal(addr_bits, name=f"row{k}") for k in range(2)]   # the same for ox = 0
        col = Signal(range(C))
        src = Signal()                        # the source being read: 0 the CONV's, 1 the shortcut's
        n = Signal(ConvArgs["in_planes"].width)
        ky = Signal(ConvArgs["kh"].width)
        kx = Signal(ConvArgs["kw"].width)
        cw = Signal(ConvArgs["in_cw"].width)
        an = Signal(addr_bits)                # pix + n * plane_words
        aky = Signal(addr_bits)               # + ky * row_words
        akx = Signal(addr_bits)               # + kx * in_stride
        rd_addr = Signal(addr_bits)           # akx + cw: the read's address, kept in step (no adder
                                              # between the loop registers and the block RAM)
        iyk = Signal(coord)                   # iy + ky
        ixk = Signal(coord)                   # ix + kx
        pw = Signal(range(2 * cfg.patch_depth + 1))
        p0 = Signal(range(PIXEL_RANGE + C))
        img = [Signal(addr_bits, name=f"img{k}") for k in range(2)]   # the image's row -pad, column -pad
        more = Signal()                       # p0 < npix, registered with every change of p0
        bank = Signal()                       # bank the gather fills
        rd_bank = Signal()                    # bank the issue engine reads
        bank_full = Signal(2)                 # bank b holds a gathered tile not yet issued
        # The source being read: its map, kernel and sizes.
        sc = self.shortcut
        in_h, in_w = Mux(src, sc.in_h, cv.in_h), Mux(src, sc.in_w, cv.in_w)
        in_stride = Mux(src, sc.in_stride, cv.in_stride)
        pad_value = Mux(src, sc.pad_value, cv.pad_value)
        cw_m1, kw_m1 = Mux(src, plan.cw2_m1, plan.cw_m1), Mux(src, plan.kw2_m1, plan.kw_m1)
        kh_m1, np_m1 = Mux(src, plan.kh2_m1, plan.kh_m1), Mux(src, plan.np2_m1, plan.np_m1)
        row_words = Mux(src, plan.row_words2, plan.row_words)
        plane_words = Mux(src, plan.plane_words2, plan.plane_words)
        # The read's stage: RUN sets `rd` with each read; READ_LATENCY cycles after the read its word
        # and `s1` (rd, delayed) reach the patch banks and the packer together. The word is registered
        # straight off the block RAM (its clock-to-output is most of a cycle) before any logic.
        stage = data.StructLayout({"valid": 1, "pad": 1, "pad_value": 1, "col": range(C),
                                   "pw": range(2 * cfg.patch_depth + 1), "bank": 1, "last": 1, "tile_last": 1,
                                   "filled": 1})
        rd = Signal(stage)
        m.d.sync += rd.valid.eq(0)
        s1, word = rd, self.act_data
        for i in range(READ_LATENCY - 1):
            s1_next, word_next = Signal(stage, name=f"s{i + 2}"), Signal(W, name=f"act_q{i + 1}")
            m.d.sync += [s1_next.eq(s1), word_next.eq(word)]
            s1, word = s1_next, word_next
        s1_valid, s1_col, s1_pw = s1.valid, s1.col, s1.pw
        s1_word = Signal(W)
        m.d.comb += s1_word.eq(Mux(s1.pad, Mux(s1.pad_value, (1 << W) - 1, 0), word))
        drain = self._packer(m, s1, s1_word, bank_full)
        for c in range(C):
            m.d.comb += [
                patch_w[c].addr.eq(Mux(cv.packed, drain.addr, s1_pw)),
                patch_w[c].data.eq(Mux(cv.packed, drain.word, s1_word)),
                patch_w[c].en.eq(Mux(cv.packed, drain.busy & (drain.col == c), s1_valid & (s1_col == c))),
            ]

        m.d.comb += [self.tiles.valid.eq(bank_full.bit_select(rd_bank, 1)), self.tiles.payload.eq(rd_bank)]
        with m.If(self.tiles.valid & self.tiles.ready):
            m.d.sync += rd_bank.eq(~rd_bank)
            for b in range(2):
                with m.If(rd_bank == b):
                    m.d.sync += bank_full[b].eq(0)

        with m.If(self.start):
            m.d.sync += [drain.fields.eq(0), drain.j.eq(0), drain.busy.eq(0)]
            starts = [cv.in_base - plan.pad_rows - plan.pad_cols, sc.in_base - plan.pad_rows2 - plan.pad_cols2]
            for k, (args, start_row) in enumerate(zip((cv, sc), starts)):
                m.d.sync += [iy[k].eq(-args.pad), ix[k].eq(-args.pad), pix[k].eq(start_row), row[k].eq(start_row),
                             img[k].eq(start_row)]
            m.d.sync += [oy.eq(0), ox.eq(0), p0.eq(0), more.eq(plan.npix != 0), bank.eq(0), rd_bank.eq(0),
                         bank_full.eq(0), src.eq(0)]

        # The next pixel (one to the right, the next output row's first, or, over all images, the next
        # image's first) in each source.
        steps = [(cv, plan.step_x, plan.step_y, plan.image_words), (sc, plan.step_x2, plan.step_y2, plan.image_words2)]
        row_end = ox == plan.ow_m1
        image_end = cv.all_images & row_end & (oy == plan.oh_m1)
        next_pix = [Signal(addr_bits, name=f"next_pix{k}") for k in range(2)]
        next_row = [Signal(addr_bits, name=f"next_row{k}") for k in range(2)]
        next_img = [Signal(addr_bits, name=f"next_img{k}") for k in range(2)]
        next_ix = [Signal(coord, name=f"next_ix{k}") for k in range(2)]
        next_iy = [Signal(coord, name=f"next_iy{k}") for k in range(2)]
        for k, (args, step_x, step_y, image_words) in enumerate(steps):
            m.d.comb += [
                next_img[k].eq(Mux(image_end, img[k] + image_words, img[k])),
                next_row[k].eq(Mux(image_end, img[k] + image_words, Mux(row_end, row[k] + step_y, row[k]))),
                next_pix[k].eq(Mux(image_end, img[k] + image_words,
                                   Mux(row_end, row[k] + step_y, pix[k] + step_x))),
                next_ix[k].eq(Mux(row_end, -args.pad, ix[k] + args.stride)),
                next_iy[k].eq(Mux(image_end, -args.pad, Mux(row_end, iy[k] + args.stride, iy[k]))),
            ]

        def advance_pixel():
            """Move the current pixel one to the right, wrapping to the next output row (and image)."""
            with m.If(image_end):
                m.d.sync += [ox.eq(0), oy.eq(0)]
            with m.Elif(row_end):
                m.d.sync += [ox.eq(0), oy.eq(oy + 1)]
            with m.Else():
                m.d.sync += ox.eq(ox + 1)
            for k in range(2):
                m.d.sync += [ix[k].eq(next_ix[k]), iy[k].eq(next_iy[k]), pix[k].eq(next_pix[k]),
                             row[k].eq(next_row[k]), img[k].eq(next_img[k])]

        def start_pixel(k, pixel=None):
            """Point the running addresses at a pixel's first (n, ky, kx) in source k: the current
            pixel's, or `pixel` = (address, iy, ix)."""
            address, y, x = pixel if pixel is not None else (pix[k], iy[k], ix[k])
            m.d.sync += [an.eq(address), aky.eq(address), iyk.eq(y), ixk.eq(x)]
            set_akx(address)

        def set_akx(address):
            """A new kernel position: its first channel word (cw = 0), read from the next cycle."""
            m.d.sync += [akx.eq(address), rd_addr.eq(address)]

        # An unpacked tile's last word is written to its bank in stage s1: the bank is marked full the
        # cycle after (so a one-word patch is never read before it is written).
        with m.If(s1.valid & s1.filled):
            for b in range(2):
                with m.If(s1.bank == b):
                    m.d.sync += bank_full[b].eq(1)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.active & more & ~bank_full.bit_select(bank, 1)):
                    m.d.sync += [col.eq(0), n.eq(0), ky.eq(0), kx.eq(0), cw.eq(0),
                                 pw.eq(Mux(bank, cfg.patch_depth, 0))]
                    start_pixel(0)
                    m.next = "RUN"
            with m.State("RUN"):
                # Every position is read, inside the map or not: a padded position's word is replaced
                # by the padding word a cycle later, so the enable needs no comparison of the map's
                # bounds (that path ran from the instruction's fields into the block RAM's enable).
                inside = (iyk >= 0) & (iyk < in_h) & (ixk >= 0) & (ixk < in_w)
                m.d.comb += [self.act_addr.eq(rd_addr), self.act_en.eq(1)]
                m.d.sync += [rd.valid.eq(1), rd.pad.eq(~inside), rd.pad_value.eq(pad_value), rd.col.eq(col),
                             rd.pw.eq(pw), pw.eq(pw + 1), rd.bank.eq(bank),
                             rd.last.eq((kx == kw_m1) & (ky == kh_m1)), rd.tile_last.eq(col == C - 1),
                             rd.filled.eq(0)]
                # Loops: cw innermost, then kx, ky, n, then the source, then the column. A packed CONV
                # reads each kernel position once (its planes are fields of one word).
                with m.If(~cv.packed & (cw != cw_m1)):
                    m.d.sync += [cw.eq(cw + 1), rd_addr.eq(rd_addr + 1)]
                with m.Else():
                    m.d.sync += cw.eq(0)
                    with m.If(kx != kw_m1):
                        m.d.sync += [kx.eq(kx + 1), ixk.eq(ixk + 1)]
                        set_akx(akx + in_stride)
                    with m.Else():
                        m.d.sync += [kx.eq(0), ixk.eq(Mux(src, ix[1], ix[0]))]
                        with m.If(ky != kh_m1):
                            m.d.sync += [ky.eq(ky + 1), aky.eq(aky + row_words), iyk.eq(iyk + 1)]
                            set_akx(aky + row_words)
                        with m.Else():
                            m.d.sync += [ky.eq(0), iyk.eq(Mux(src, iy[1], iy[0]))]
                            with m.If(~cv.packed & (n != np_m1)):
                                m.d.sync += [n.eq(n + 1), an.eq(an + plane_words), aky.eq(an + plane_words)]
                                set_akx(an + plane_words)
                            with m.Elif(~src & plan.shortcut):
                                # The pixel's second field follows its first in the same bank.
                                m.d.sync += [n.eq(0), src.eq(1)]
                                start_pixel(1)
                            with m.Else():
                                # Next column: the next pixel, read from the next cycle on.
                                m.d.sync += [n.eq(0), src.eq(0), pw.eq(Mux(bank, cfg.patch_depth, 0)),
                                             col.eq(Mux(col == C - 1, 0, col + 1))]
                                advance_pixel()
                                with m.If(col == C - 1):      # all C columns gathered
                                    # (A packed tile is full when its packer's last words are written.)
                                    m.d.sync += [p0.eq(p0 + C), more.eq(p0 + C < plan.npix),
                                                 bank.eq(~bank), rd.filled.eq(~cv.packed)]
                                    m.next = "IDLE"
                                with m.Else():
                                    start_pixel(0, (next_pix[0], next_iy[0], next_ix[0]))
        return m

    def _packer(self, m, s1, s1_word, bank_full):
        """A packed CONV's fields (docs/isa.md "Packed image input"): every pixel word read gives each
        of the 8 planes its `c = in_tail` bits; each plane shifts them into its word register (left,
        so the first field ends at the top; a word register is empty, 0, after its word left); after `fpw` fields, or the column's last position, the
        8 words go to a drain that writes plane n's word to patch word n * KW + j, one a cycle, the
        next `in_planes` cycles. The fields of a word come at least fpw >= 8 reads apart, and a
        column's first word at least kh * kw >= in_planes reads after the previous column's last
        (both checked), so one drain suffices.

        `s1` is the read's stage as the word `s1_word` arrives. Returns the drain's outputs (`busy`,
        `col`, `addr`, `word`), and `fields` and `j` (cleared at `start`)."""
        cfg, cv, plan = self._config, self.conv, self.plan
        W = cfg.word_bits
        cmax = W // 8                                   # channels a pixel word holds
        planes = 8
        addr_shape = range(2 * cfg.patch_depth + 1)

        d = SimpleNamespace(
            fields=Signal(range(W + 1), name="pk_fields"),        # fields in the words being filled
            j=Signal(range(cfg.patch_depth), name="pk_j"),        # the column's words emitted so far
            busy=Signal(name="pk_drain_busy"), col=Signal(range(cfg.cols), name="pk_drain_col"),
            addr=Signal(addr_shape, name="pk_drain_addr"), word=Signal(W, name="pk_drain_word"))
        if cmax == 0:                                   # no packed CONV passes the checks
            return d
        words = [Signal(W, name=f"pk_word{n}") for n in range(planes)]
        queue = Array(Signal(W, name=f"pk_queue{n}") for n in range(planes))
        index = Signal(range(planes), name="pk_index")      # the plane the drain writes
        tile_last = Signal(name="pk_tile_last")
        drain_bank = Signal(name="pk_drain_bank")
        j = d.j
        # Shifting by c = in_tail is one of cmax cases: each bit is a 4:1 multiplexer (c <= W // 8).
        shift_case = Signal(range(cmax), name="pk_shift_case")
        m.d.comb += shift_case.eq(cv.in_tail - 1)
        s1_valid, s1_col = s1.valid, s1.col
        emit = Signal(name="pk_emit")
        m.d.comb += emit.eq(s1_valid & cv.packed & ((d.fields + 1 == plan.fpw) | s1.last))
        filled = []
        for n in range(planes):
            field = Cat(s1_word[8 * ch + n] for ch in range(cmax))      # plane n of each channel
            shifted = Array(Cat(field[:k], words[n][:W - k]) for k in range(1, cmax + 1))
            new = Signal(W, name=f"pk_new{n}")
            m.d.comb += new.eq(shifted[shift_case])
            filled.append(new)

        # The drain: one word a cycle, plane 0 first.
        m.d.comb += d.word.eq(queue[index])
        with m.If(d.busy):
            m.d.sync += [d.addr.eq(d.addr + plan.kwords), index.eq(index + 1)]
            with m.If(index == plan.np_m1):
                m.d.sync += d.busy.eq(0)
                with m.If(tile_last):
                    for b in range(2):
                        with m.If(drain_bank == b):
                            m.d.sync += bank_full[b].eq(1)
        # A word's registers start empty (0) after it is emitted (a reset that needs no enable, so
        # it maps onto the flip-flops' own synchronous reset).
        with m.If(emit | self.start):
            m.d.sync += [words[n].eq(0) for n in range(planes)]
        with m.Elif(s1_valid & cv.packed):
            m.d.sync += [words[n].eq(filled[n]) for n in range(planes)]
        with m.If(s1_valid & cv.packed):
            m.d.sync += d.fields.eq(Mux(emit, 0, d.fields + 1))
        with m.If(emit):
            m.d.sync += [queue[n].eq(filled[n]) for n in range(planes)]
            m.d.sync += [d.busy.eq(1), index.eq(0), d.col.eq(s1_col),
                         d.addr.eq(Mux(s1.bank, cfg.patch_depth, 0) + j), tile_last.eq(s1.last & s1.tile_last),
                         drain_bank.eq(s1.bank), j.eq(Mux(s1.last, 0, j + 1))]
        return d
