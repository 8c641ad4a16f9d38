"""`PoolEngine`: max pooling of bit-planes, an OR over each window."""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..isa import PoolArgs
from .plan import Plan

__all__ = ["PoolEngine"]


class PoolEngine(wiring.Component):
    """Reads each window's words one a cycle (kx innermost, then ky) and writes their OR two cycles
    after its last word is read, for every channel word, output pixel (x, then y) and plane:
    planes * out_h * out_w * cw * kernel^2 cycles, then `POOL_DRAIN_CYCLES` to write the last OR.

    Ports
    -----
    pool, plan  : In   the running POOL's fields and set-up (steady from `start` on).
    start       : In(1)  pulse: run the POOL.
    done        : Out(1)  the last window's OR is written in this cycle.
    act_r_addr, act_r_en : Out  activation-buffer reads; act_r_data : In  the word (one cycle later).
    act_w_addr, act_w_data, act_w_en : Out  activation-buffer writes (`act_w_en` per R-bit field).
    """

    def __init__(self, config):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Config must be an AccelConfig, not {config!r}")
        self._config = config
        super().__init__({
            "pool": In(PoolArgs),
            "plan": In(Plan),
            "start": In(1),
            "done": Out(1),
            "act_r_addr": Out(range(config.act_depth)),
            "act_r_en": Out(1),
            "act_r_data": In(config.word_bits),
            "act_w_addr": Out(range(config.act_depth)),
            "act_w_data": Out(config.word_bits),
            "act_w_en": Out(config.word_bits // config.rows),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        W = cfg.word_bits
        pl, plan = self.pool, self.plan
        addr = len(self.act_r_addr)

        t = Signal(PoolArgs["planes"].width)
        py = Signal(PoolArgs["out_h"].width)
        px = Signal(PoolArgs["out_w"].width)
        cw = Signal(PoolArgs["cw"].width)
        ky = Signal(PoolArgs["kernel"].width)
        kx = Signal(PoolArgs["kernel"].width)
        at = Signal(addr)                 # in_base + t * plane
        apy = Signal(addr)                # + py * step_y
        apx = Signal(addr)                # + px * step_x
        aky = Signal(addr)                # + cw + ky * row
        akx = Signal(addr)                # + kx * cw
        out = Signal(addr)
        aout = Signal(addr)               # the output plane's first word: + t * p_out_plane
        # Stage 1: the word read in the previous cycle arrives.
        s1_valid = Signal()
        s1_first = Signal()
        s1_last = Signal()
        s1_out = Signal(addr)
        acc = Signal(W)
        # Stage 2: a window's OR, registered before it is written (the buffer's read data does not
        # run through the OR into its own write port in one cycle).
        s2_write = Signal()
        s2_out = Signal(addr)
        s2_data = Signal(W)
        running = Signal()                # from start to the cycle of the last write
        m.d.sync += [s1_valid.eq(0), s2_write.eq(0)]
        with m.If(running):
            ored = Signal(W)
            m.d.comb += ored.eq(Mux(s1_first, self.act_r_data, acc | self.act_r_data))
            with m.If(s1_valid):
                m.d.sync += [acc.eq(ored), s2_write.eq(s1_last), s2_out.eq(s1_out), s2_data.eq(ored)]
            with m.If(s2_write):
                m.d.comb += [self.act_w_addr.eq(s2_out), self.act_w_data.eq(s2_data),
                             self.act_w_en.eq((1 << len(self.act_w_en)) - 1)]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [t.eq(0), py.eq(0), px.eq(0), cw.eq(0), ky.eq(0), kx.eq(0),
                                 at.eq(pl.in_base), apy.eq(pl.in_base), apx.eq(pl.in_base),
                                 aky.eq(pl.in_base), akx.eq(pl.in_base), out.eq(pl.out_base),
                                 aout.eq(pl.out_base), running.eq(1)]
                    m.next = "RUN"
            with m.State("RUN"):
                first = (ky == 0) & (kx == 0)
                last_k = (ky == plan.kh_m1) & (kx == plan.kw_m1)
                m.d.comb += [self.act_r_addr.eq(akx), self.act_r_en.eq(1)]
                m.d.sync += [s1_valid.eq(1), s1_first.eq(first), s1_last.eq(last_k), s1_out.eq(out)]
                with m.If(~last_k):
                    with m.If(kx != plan.kw_m1):
                        m.d.sync += [kx.eq(kx + 1), akx.eq(akx + pl.cw)]
                    with m.Else():
                        m.d.sync += [kx.eq(0), ky.eq(ky + 1), aky.eq(aky + plan.p_row), akx.eq(aky + plan.p_row)]
                with m.Else():
                    m.d.sync += [kx.eq(0), ky.eq(0), out.eq(out + 1)]
                    with m.If(cw != plan.cw_m1):
                        m.d.sync += [cw.eq(cw + 1), aky.eq(apx + cw + 1), akx.eq(apx + cw + 1)]
                    with m.Else():
                        m.d.sync += cw.eq(0)
                        with m.If(px != plan.ow_m1):
                            nxt = apx + plan.p_step_x
                            m.d.sync += [px.eq(px + 1), apx.eq(nxt), aky.eq(nxt), akx.eq(nxt)]
                        with m.Else():
                            m.d.sync += px.eq(0)
                            with m.If(py != plan.oh_m1):
                                nxt = apy + plan.p_step_y
                                m.d.sync += [py.eq(py + 1), apy.eq(nxt), apx.eq(nxt), aky.eq(nxt), akx.eq(nxt)]
                            with m.Else():
                                m.d.sync += py.eq(0)
                                with m.If(t != plan.np_m1):
                                    nxt = at + plan.p_plane
                                    nxt_out = aout + plan.p_out_plane
                                    m.d.sync += [t.eq(t + 1), at.eq(nxt), apy.eq(nxt), apx.eq(nxt),
                                                 aky.eq(nxt), akx.eq(nxt), aout.eq(nxt_out), out.eq(nxt_out)]
                                with m.Else():
                                    m.next = "DRAIN"
            with m.State("DRAIN"):            # the last window's OR
                m.next = "WRITE"
            with m.State("WRITE"):            # ... is written
                m.d.comb += self.done.eq(1)
                m.d.sync += running.eq(0)
                m.next = "IDLE"
        return m
