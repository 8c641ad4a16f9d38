"""`GatherEngine`: a CONV's receptive fields, from the activation buffer into the patch banks."""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..isa import ConvArgs
from .plan import Plan

__all__ = ["GatherEngine"]


class GatherEngine(wiring.Component):
    """Fills two patch banks (ping-pong) with pixel tiles while the issue engine reads the other bank.

    Per tile of C output pixels, column c's bank gets that pixel's receptive field in (activation
    basis n, ky, kx, channel word) order, one activation-buffer read a cycle; a position outside the
    map is the padding word (all ones for `pad_value` 1, else all zeros) and reads nothing. A tile takes
    C * (N * kh * kw * in_cw + 1) + 1 cycles.

    Address registers are as wide as the activation buffer's address: they wrap modulo a power of two
    at least the depth, and only addresses inside the map (checked before the CONV runs) are read.

    Ports
    -----
    conv, plan  : In   the running CONV's fields and set-up (steady from `start` on).
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

        # The current pixel (advances one per column, across tiles).
        oy = Signal(ConvArgs["out_h"].width)
        ox = Signal(ConvArgs["out_w"].width)
        iy = Signal(coord)                    # oy * stride - pad
        ix = Signal(coord)
        pix = Signal(addr_bits)               # in_base + iy * row_words + ix * in_stride
        row = Signal(addr_bits)               # the same for ox = 0
        col = Signal(range(C))
        n = Signal(ConvArgs["in_planes"].width)
        ky = Signal(ConvArgs["kh"].width)
        kx = Signal(ConvArgs["kw"].width)
        cw = Signal(ConvArgs["in_cw"].width)
        an = Signal(addr_bits)                # pix + n * plane_words
        aky = Signal(addr_bits)               # + ky * row_words
        akx = Signal(addr_bits)               # + kx * in_stride
        iyk = Signal(coord)                   # iy + ky
        ixk = Signal(coord)                   # ix + kx
        pw = Signal(range(2 * cfg.patch_depth + 1))
        p0 = Signal(range((1 << (ConvArgs["out_h"].width + ConvArgs["out_w"].width)) + C))
        more = Signal()                       # p0 < npix, registered with every change of p0
        bank = Signal()                       # bank the gather fills
        rd_bank = Signal()                    # bank the issue engine reads
        bank_full = Signal(2)                 # bank b holds a gathered tile not yet issued
        # Pipeline stage 1 (the activation word arrives).
        s1_valid = Signal()
        s1_pad = Signal()
        s1_col = Signal(range(C))
        s1_pw = Signal(range(2 * cfg.patch_depth + 1))
        pad_word = Signal(W)
        m.d.comb += pad_word.eq(Mux(cv.pad_value, (1 << W) - 1, 0))
        for c in range(C):
            m.d.comb += [
                patch_w[c].addr.eq(s1_pw),
                patch_w[c].data.eq(Mux(s1_pad, pad_word, self.act_data)),
                patch_w[c].en.eq(s1_valid & (s1_col == c)),
            ]
        m.d.sync += s1_valid.eq(0)

        m.d.comb += [self.tiles.valid.eq(bank_full.bit_select(rd_bank, 1)), self.tiles.payload.eq(rd_bank)]
        with m.If(self.tiles.valid & self.tiles.ready):
            m.d.sync += rd_bank.eq(~rd_bank)
            for b in range(2):
                with m.If(rd_bank == b):
                    m.d.sync += bank_full[b].eq(0)

        with m.If(self.start):
            start_row = cv.in_base - plan.pad_rows - plan.pad_cols
            m.d.sync += [oy.eq(0), ox.eq(0), iy.eq(-cv.pad), ix.eq(-cv.pad), pix.eq(start_row),
                         row.eq(start_row), p0.eq(0), more.eq(plan.npix != 0), bank.eq(0), rd_bank.eq(0),
                         bank_full.eq(0)]

        def advance_pixel():
            """Move the current pixel one to the right, wrapping to the next output row."""
            with m.If(ox == plan.ow_m1):
                m.d.sync += [ox.eq(0), oy.eq(oy + 1), ix.eq(-cv.pad), iy.eq(iy + cv.stride),
                             pix.eq(row + plan.step_y), row.eq(row + plan.step_y)]
            with m.Else():
                m.d.sync += [ox.eq(ox + 1), ix.eq(ix + cv.stride), pix.eq(pix + plan.step_x)]

        def start_pixel():
            """Point the running addresses at the current pixel's first (n, ky, kx)."""
            m.d.sync += [an.eq(pix), aky.eq(pix), akx.eq(pix), iyk.eq(iy), ixk.eq(ix)]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.active & more & ~bank_full.bit_select(bank, 1)):
                    m.d.sync += [col.eq(0), n.eq(0), ky.eq(0), kx.eq(0), cw.eq(0),
                                 pw.eq(Mux(bank, cfg.patch_depth, 0))]
                    start_pixel()
                    m.next = "RUN"
            with m.State("RUN"):
                inside = (iyk >= 0) & (iyk < cv.in_h) & (ixk >= 0) & (ixk < cv.in_w)
                m.d.comb += [self.act_addr.eq((akx + cw)[:addr_bits]), self.act_en.eq(inside)]
                m.d.sync += [s1_valid.eq(1), s1_pad.eq(~inside), s1_col.eq(col), s1_pw.eq(pw), pw.eq(pw + 1)]
                # Loops: cw innermost, then kx, ky, n, then the column.
                with m.If(cw != plan.cw_m1):
                    m.d.sync += cw.eq(cw + 1)
                with m.Else():
                    m.d.sync += cw.eq(0)
                    with m.If(kx != plan.kw_m1):
                        m.d.sync += [kx.eq(kx + 1), akx.eq(akx + cv.in_stride), ixk.eq(ixk + 1)]
                    with m.Else():
                        m.d.sync += [kx.eq(0), ixk.eq(ix)]
                        with m.If(ky != plan.kh_m1):
                            m.d.sync += [ky.eq(ky + 1), aky.eq(aky + plan.row_words),
                                         akx.eq(aky + plan.row_words), iyk.eq(iyk + 1)]
                        with m.Else():
                            m.d.sync += [ky.eq(0), iyk.eq(iy)]
                            with m.If(n != plan.np_m1):
                                m.d.sync += [n.eq(n + 1), an.eq(an + plan.plane_words),
                                             aky.eq(an + plan.plane_words), akx.eq(an + plan.plane_words)]
                            with m.Else():
                                # Next column: the next pixel.
                                m.d.sync += [n.eq(0), pw.eq(Mux(bank, cfg.patch_depth, 0)),
                                             col.eq(Mux(col == C - 1, 0, col + 1))]
                                advance_pixel()
                                m.next = "NEXT_COLUMN"
            with m.State("NEXT_COLUMN"):
                start_pixel()
                with m.If(col == 0):      # wrapped: all C columns gathered (the last word lands now)
                    m.d.sync += [p0.eq(p0 + C), more.eq(p0 + C < plan.npix), bank.eq(~bank)]
                    for b in range(2):
                        with m.If(bank == b):
                            m.d.sync += bank_full[b].eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.next = "RUN"
        return m
