"""`IssueEngine`: a gathered pixel tile, streamed into the core as passes of beats."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..isa import ConvArgs
from ..layouts import CoreLayouts
from .plan import Plan

__all__ = ["IssueEngine"]


class IssueEngine(wiring.Component):
    """Streams one beat a cycle (weight entry + the C patch words) for every (output tile, weight
    basis m, activation basis n, K-word j) of a gathered tile, j innermost.

    Two register stages sit between the memories and the core: the weight and patch read data, then
    that data registered and offered on `beats`; both move together when the core takes a beat, so the
    block RAMs' output delay stays out of the array edge's path.

    Ports
    -----
    conv, plan  : In   the running CONV's fields and set-up.
    active      : In(1)  the CONV runs.
    tiles       : In(stream of the bank index)  a gathered tile; taken when its last word has been
                  read (that frees the bank for the gather).
    patch_addr, patch_en : Out  the patch banks' read port; patch_data : In  every column's word.
    weight_addr, weight_en : Out  the weight buffer's read port; weight_data : In  the entry (R words).
    beats       : Out(stream of `CoreLayouts.beat`)  to the core.
    """

    def __init__(self, config):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Config must be an AccelConfig, not {config!r}")
        self._config = config
        self.layouts = lay = CoreLayouts(config)
        super().__init__({
            "conv": In(ConvArgs),
            "plan": In(Plan),
            "active": In(1),
            "tiles": In(stream.Signature(1)),
            "patch_addr": Out(range(2 * config.patch_depth)),
            "patch_en": Out(1),
            "patch_data": In(data.ArrayLayout(config.word_bits, config.cols)),
            "weight_addr": Out(range(config.weight_depth)),
            "weight_en": Out(1),
            "weight_data": In(data.ArrayLayout(config.word_bits, config.rows)),
            "beats": Out(stream.Signature(lay.beat)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        R, W = cfg.rows, cfg.word_bits
        cv, plan, lay = self.conv, self.plan, self.layouts

        ot = Signal(ConvArgs["out_ch"].width)          # output tile
        mb = Signal(ConvArgs["wbases"].width)          # weight basis
        nb = Signal(ConvArgs["in_planes"].width)       # activation basis
        j = Signal(range(cfg.patch_depth))             # K-word (kwords <= patch_depth, checked)
        cwj = Signal(ConvArgs["in_cw"].width)          # channel word of K-word j
        wstart = Signal.like(self.weight_addr)         # weight entry of (ot, m, j = 0)
        waddr = Signal.like(self.weight_addr)
        pbase = Signal.like(self.patch_addr)           # first word of the bank being read
        pstart = Signal.like(self.patch_addr)          # patch word of (n, j = 0)
        paddr = Signal.like(self.patch_addr)
        saddr = Signal(lay.pass_info["scale_addr"].shape)
        taddr = Signal(lay.pass_info["thr_addr"].shape)
        busy = Signal()

        # Stage 1: the memories' read data; stage 2 (c_*): that data registered, offered to the core.
        ctl_layout = data.StructLayout({"nbits": range(W + 1), "first": 1, "last": 1, "info": lay.pass_info})
        b_valid = Signal()
        b_ctl = Signal(ctl_layout)
        c_valid = Signal()
        c_ctl = Signal(ctl_layout)
        c_w = Signal.like(self.weight_data)
        c_a = Signal.like(self.patch_data)
        advance = Signal()
        m.d.comb += [
            advance.eq(~c_valid | self.beats.ready),
            self.weight_addr.eq(waddr), self.weight_en.eq(advance),
            self.patch_addr.eq(paddr), self.patch_en.eq(advance),
            self.beats.valid.eq(c_valid),
            self.beats.payload.w.eq(c_w),
            self.beats.payload.a.eq(c_a),
            self.beats.payload.nbits.eq(c_ctl.nbits),
            self.beats.payload.first.eq(c_ctl.first),
            self.beats.payload.last.eq(c_ctl.last),
            self.beats.payload.info.eq(c_ctl.info),
        ]
        with m.If(advance):
            m.d.sync += [c_valid.eq(b_valid), c_ctl.eq(b_ctl), c_w.eq(self.weight_data), c_a.eq(self.patch_data),
                         b_valid.eq(busy)]
            j_last = j == plan.kwords_m1
            m.d.sync += [
                b_ctl.nbits.eq(Mux(cwj == plan.cw_m1, cv.in_tail, W)),
                b_ctl.first.eq(j == 0),
                b_ctl.last.eq(j_last),
                b_ctl.info.k.eq(cv.k),
                b_ctl.info.first_pass.eq((mb == 0) & (nb == 0)),
                b_ctl.info.last_pass.eq((mb == plan.wb_m1) & (nb == plan.np_m1)),
                b_ctl.info.raw.eq(cv.raw),
                b_ctl.info.scale_addr.eq(saddr),
                b_ctl.info.thr_addr.eq(taddr),
            ]
            with m.If(busy):
                # Step the loops: j innermost, then n, m, ot.
                with m.If(~j_last):
                    m.d.sync += [j.eq(j + 1), waddr.eq(waddr + 1), paddr.eq(paddr + 1),
                                 cwj.eq(Mux(cwj == plan.cw_m1, 0, cwj + 1))]
                with m.Else():
                    m.d.sync += [j.eq(0), cwj.eq(0), saddr.eq(saddr + 1)]
                    with m.If(nb != plan.np_m1):
                        m.d.sync += [nb.eq(nb + 1), waddr.eq(wstart),
                                     pstart.eq(pstart + plan.kwords), paddr.eq(pstart + plan.kwords)]
                    with m.Else():
                        m.d.sync += [nb.eq(0), pstart.eq(pbase), paddr.eq(pbase),
                                     wstart.eq(wstart + plan.kwords), waddr.eq(wstart + plan.kwords)]
                        with m.If(mb != plan.wb_m1):
                            m.d.sync += mb.eq(mb + 1)
                        with m.Else():
                            m.d.sync += [mb.eq(0), ot.eq(ot + 1), taddr.eq(taddr + R)]
                            with m.If(ot == plan.ot_m1):
                                # Every patch word of this tile has been read: the bank is free.
                                m.d.comb += self.tiles.ready.eq(1)
                                m.d.sync += busy.eq(0)

        # Start issuing a tile as soon as its bank is full.
        with m.If(self.active & ~busy & self.tiles.valid):
            bank_base = Mux(self.tiles.payload, cfg.patch_depth, 0)
            m.d.sync += [
                busy.eq(1), ot.eq(0), mb.eq(0), nb.eq(0), j.eq(0), cwj.eq(0),
                wstart.eq(cv.w_base), waddr.eq(cv.w_base), pbase.eq(bank_base),
                pstart.eq(bank_base), paddr.eq(bank_base),
                saddr.eq(cv.s_base), taddr.eq(cv.t_base),
            ]
        return m
