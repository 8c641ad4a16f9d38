"""`IssueEngine`: a gathered pixel tile, streamed into the core as passes of beats."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..isa import ConvArgs, ShortcutArgs
from ..layouts import CoreLayouts
from .plan import Plan

__all__ = ["IssueEngine"]


class IssueEngine(wiring.Component):
    """Streams one beat a cycle (weight entry + the C patch words) for every (output tile, weight
    basis m, activation basis n, K-word j) of a gathered tile, j innermost; with a shortcut
    (`plan.shortcut`), each output tile's passes of the second source follow the main source's
    (its weights from `shortcut.w_base`, its scales from `shortcut.s_base`, its patch words after the
    main source's), the tile's last pass being the second source's last.

    Two register stages sit between the memories and the core: the weight and patch read data, then
    that data registered and offered on `beats`; both move together when the core takes a beat, so the
    block RAMs' output delay stays out of the array edge's path.

    Ports
    -----
    conv, plan  : In   the running CONV's fields and set-up.
    shortcut    : In   the second source's fields (used when `plan.shortcut`).
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
            "shortcut": In(ShortcutArgs),
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

        sc = self.shortcut
        ot = Signal(ConvArgs["out_ch"].width)          # output tile
        src = Signal()                                 # the source of this pass: 0 the CONV's, 1 the shortcut's
        mb = Signal(ConvArgs["wbases"].width)          # weight basis
        nb = Signal(ConvArgs["in_planes"].width)       # activation basis
        j = Signal(range(cfg.patch_depth))             # K-word (kwords <= patch_depth, checked)
        cwj = Signal(ConvArgs["in_cw"].width)          # channel word of K-word j
        wstart = [Signal.like(self.weight_addr, name=f"wstart{k}") for k in range(2)]   # entry of (ot, m, j = 0)
        waddr = Signal.like(self.weight_addr)
        pbase = Signal.like(self.patch_addr)           # first word of the bank being read
        pstart = Signal.like(self.patch_addr)          # patch word of (n, j = 0)
        paddr = Signal.like(self.patch_addr)
        saddr = [Signal(lay.pass_info["scale_addr"].shape, name=f"saddr{k}") for k in range(2)]
        taddr = Signal(lay.pass_info["thr_addr"].shape)
        busy = Signal()
        # The source of this pass: its sizes. A CONV runs only when its patch words fit the bank
        # (checked), so kwords <= patch_depth: the products are compared and added at j's width, not
        # at the set-up's 32 bits (these compares gate every loop register's enable).
        kwords = Mux(src, plan.kwords2, plan.kwords)[:len(paddr)]
        kwords_m1 = Mux(src, plan.kwords2_m1[:len(j)], plan.kwords_m1[:len(j)])
        cw_m1 = Mux(src, plan.cw2_m1, plan.cw_m1)
        wb_m1, np_m1 = Mux(src, plan.wb2_m1, plan.wb_m1), Mux(src, plan.np2_m1, plan.np_m1)
        second = pbase + plan.patch_need[:len(paddr)]  # the second source's first patch word

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
            j_last = j == kwords_m1
            last_source = src | ~plan.shortcut
            m.d.sync += [
                # A packed CONV's words are whole: bits above their fields are 0 against weight bits 1.
                b_ctl.nbits.eq(Mux((cwj == cw_m1) & ~cv.packed, Mux(src, sc.in_tail, cv.in_tail), W)),
                b_ctl.first.eq(j == 0),
                b_ctl.last.eq(j_last),
                b_ctl.info.k.eq(Mux(src, sc.k, cv.k)),
                b_ctl.info.first_pass.eq(~src & (mb == 0) & (nb == 0)),
                b_ctl.info.last_pass.eq(last_source & (mb == wb_m1) & (nb == np_m1)),
                b_ctl.info.raw.eq(cv.raw),
                b_ctl.info.scale_addr.eq(Mux(src, saddr[1], saddr[0])),
                b_ctl.info.thr_addr.eq(taddr),
            ]
            with m.If(busy):
                # Step the loops: j innermost, then n, m, the source, ot.
                with m.If(~j_last):
                    m.d.sync += [j.eq(j + 1), waddr.eq(waddr + 1), paddr.eq(paddr + 1),
                                 cwj.eq(Mux(cwj == cw_m1, 0, cwj + 1))]
                with m.Else():
                    m.d.sync += [j.eq(0), cwj.eq(0)]
                    for k in range(2):
                        with m.If(src == k):
                            m.d.sync += saddr[k].eq(saddr[k] + 1)
                    with m.If(nb != np_m1):
                        m.d.sync += [nb.eq(nb + 1), waddr.eq(Mux(src, wstart[1], wstart[0])),
                                     pstart.eq(pstart + kwords), paddr.eq(pstart + kwords)]
                    with m.Else():
                        m.d.sync += nb.eq(0)
                        for k in range(2):
                            with m.If(src == k):
                                m.d.sync += [wstart[k].eq(wstart[k] + kwords), waddr.eq(wstart[k] + kwords)]
                        m.d.sync += [pstart.eq(Mux(src, second, pbase)), paddr.eq(Mux(src, second, pbase))]
                        with m.If(mb != wb_m1):
                            m.d.sync += mb.eq(mb + 1)
                        with m.Elif(~src & plan.shortcut):
                            # The main source's passes of this output tile are done: the shortcut's.
                            m.d.sync += [mb.eq(0), src.eq(1), waddr.eq(wstart[1]), pstart.eq(second),
                                         paddr.eq(second)]
                        with m.Else():
                            m.d.sync += [mb.eq(0), src.eq(0), ot.eq(ot + 1), taddr.eq(taddr + R),
                                         pstart.eq(pbase), paddr.eq(pbase)]
                            with m.If(src):
                                m.d.sync += waddr.eq(wstart[0])
                            with m.If(ot == plan.ot_m1):
                                # Every patch word of this tile has been read: the bank is free.
                                m.d.comb += self.tiles.ready.eq(1)
                                m.d.sync += busy.eq(0)

        # Start issuing a tile as soon as its bank is full.
        with m.If(self.active & ~busy & self.tiles.valid):
            bank_base = Mux(self.tiles.payload, cfg.patch_depth, 0)
            m.d.sync += [
                busy.eq(1), ot.eq(0), src.eq(0), mb.eq(0), nb.eq(0), j.eq(0), cwj.eq(0),
                wstart[0].eq(cv.w_base), wstart[1].eq(sc.w_base), waddr.eq(cv.w_base), pbase.eq(bank_base),
                pstart.eq(bank_base), paddr.eq(bank_base),
                saddr[0].eq(cv.s_base), saddr[1].eq(sc.s_base), taddr.eq(cv.t_base),
            ]
        return m
