"""The threshold unit: sums to activation bit-planes (batch norm and the quantizer folded in)."""

from amaranth.hdl import Cat, Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .config import AccelConfig
from .layouts import CoreLayouts

__all__ = ["ThresholdUnit"]


class ThresholdUnit(wiring.Component):
    """Compares each column's sum with one output channel's thresholds.

    bit n of column c is 1 (+1) when acc[c] >= t[n], or acc[c] <= t[n] when `flip` is set (a negative
    batch-norm gain); both inclusive, as `sw.ref.threshold`.

    The threshold memory holds each entry as `stored_layout`: t'[n] = t[n] + flip, one bit wider, so
    each (column, plane) needs one comparator, acc >= t'[n], XORed with flip (acc <= t is
    not acc >= t + 1). `store` builds it once per write, not once per column and cycle.

    Ports
    -----
    in_valid  : In(1)
    acc       : In(ArrayLayout(signed(acc_bits), cols))  the sums of one row (output channel).
    entry     : In(`stored_layout`)  that channel's entry as `store` made it from `t[n]` and `flip`.
    out_valid : Out(1)  one cycle after `in_valid`.
    bits      : Out(ArrayLayout(max_abases, cols))  bit n of `bits[c]` is plane n of column c.
    acc_out   : Out(same as acc)  `acc`, delayed to stay beside its bits.
    """

    LATENCY = 1

    @staticmethod
    def stored_layout(config):
        """A threshold-memory entry: t'[n] = t[n] + flip (acc_bits + 1 wide, so t = max + 1 fits)."""
        return data.StructLayout({
            "t1":   data.ArrayLayout(signed(config.acc_bits + 1), config.max_abases),
            "flip": 1,
        })

    @staticmethod
    def store(config, entry):
        """The `stored_layout` value of a host-format entry (`CoreLayouts.thr_entry`)."""
        return Cat(*(entry.t[n] + entry.flip for n in range(config.max_abases)), entry.flip)

    def __init__(self, config):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Config must be an AccelConfig, not {config!r}")
        self._config = config
        layouts = CoreLayouts(config)
        acc_layout = layouts.result["acc"].shape
        super().__init__({
            "in_valid": In(1),
            "acc": In(acc_layout),
            "entry": In(self.stored_layout(config)),
            "out_valid": Out(1),
            "bits": Out(layouts.result["bits"].shape),
            "acc_out": Out(acc_layout),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        for c in range(cfg.cols):
            value = self.acc[c]
            planes = [(value >= self.entry.t1[n]) ^ self.entry.flip for n in range(cfg.max_abases)]
            m.d.sync += self.bits[c].eq(Cat(*planes))
        m.d.sync += [self.out_valid.eq(self.in_valid), self.acc_out.eq(self.acc)]
        return m
