"""The scaling-factor accumulator: exact sum over basis pairs of scale * dot product.

For one output row (channel) at a time it receives the `cols` popcounts of a pass, turns each into a
signed dot product `2 * count - K`, multiplies by the pass's fixed-point scale for that row and adds the
product to that row's running sum. A tile's passes (one per weight basis x activation basis) deliver
their rows 0 .. rows-1 in order, so the running sums live in a ring of `rows` registers that rotates by
one entry per row: the entry at the head is the sum of the row now arriving. The first pass of a tile
starts the sums from zero; on the last pass the finished sums leave on `acc`.
"""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .config import AccelConfig

__all__ = ["ScaleAccumulator"]


class ScaleAccumulator(wiring.Component):
    """Applies the fixed-point scale of each basis pair and accumulates across all pairs.

    Ports
    -----
    in_valid   : In(1)   a row of popcounts is on `counts`.
    counts     : In(ArrayLayout(count_bits, cols))  popcounts of one row, one per column.
    k          : In(count_bits)  K of the pass (valid bits), for dot = 2 * count - K.
    scale      : In(signed(scale_bits))  the scale s[m, n, row] of this pass and row.
    first_pass : In(1)   this pass starts the tile's sums.
    last_pass  : In(1)   this pass ends the tile: its sums leave on `acc`.
    out_valid  : Out(1)  `acc` holds a finished row, `LATENCY` cycles after its last pass's row came in.
    acc        : Out(ArrayLayout(signed(acc_bits), cols))  the exact sums, wrapping at acc_bits (the
                 compiler proves they never need to).
    """

    LATENCY = 3

    def __init__(self, config):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Config must be an AccelConfig, not {config!r}")
        self._config = config
        c = config
        super().__init__({
            "in_valid": In(1),
            "counts": In(data.ArrayLayout(c.count_bits, c.cols)),
            "k": In(c.count_bits),
            "scale": In(signed(c.scale_bits)),
            "first_pass": In(1),
            "last_pass": In(1),
            "out_valid": Out(1),
            "acc": Out(data.ArrayLayout(signed(c.acc_bits), c.cols)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        cols = cfg.cols

        # Stage 1: dot products and the row's scale.
        dots = [Signal(signed(cfg.dot_bits), name=f"dot{c}") for c in range(cols)]
        scale1 = Signal(signed(cfg.scale_bits))
        valid1, first1, last1 = Signal(), Signal(), Signal()
        for c in range(cols):
            m.d.sync += dots[c].eq((self.counts[c] << 1) - self.k)
        m.d.sync += [scale1.eq(self.scale), valid1.eq(self.in_valid),
                     first1.eq(self.first_pass), last1.eq(self.last_pass)]

        # Stage 2: products (a registered multiplier maps onto one DSP block per column).
        products = [Signal(signed(cfg.product_bits), name=f"product{c}") for c in range(cols)]
        valid2, first2, last2 = Signal(), Signal(), Signal()
        for c in range(cols):
            m.d.sync += products[c].eq(dots[c] * scale1)
        m.d.sync += [valid2.eq(valid1), first2.eq(first1), last2.eq(last1)]

        # Stage 3: the ring of per-row running sums.
        ring = [Signal(data.ArrayLayout(signed(cfg.acc_bits), cols), name=f"ring{r}")
                for r in range(cfg.rows)]
        head = ring[0]
        new = Signal(data.ArrayLayout(signed(cfg.acc_bits), cols))
        for c in range(cols):
            m.d.comb += new[c].eq(Mux(first2, 0, head[c]) + products[c])
        with m.If(valid2):
            for r in range(cfg.rows - 1):
                m.d.sync += ring[r].eq(ring[r + 1])
            m.d.sync += ring[-1].eq(new)
        m.d.sync += [self.out_valid.eq(valid2 & last2), self.acc.eq(new)]
        return m
