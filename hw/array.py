"""The XNOR-popcount processing element and the output-stationary systolic array.

Dataflow (see docs/gateware.md for the timing diagram):

* Output-stationary: processing element (r, c) owns output channel r of the tile and output pixel c;
  it accumulates the popcount of its dot product over the words of one pass.
* Weight words enter at the left edge, one per row per cycle, and move one column right per cycle;
  activation words enter at the top edge and move one row down per cycle, carrying the pass's
  valid/first/last flags with them. Row r's weights are delayed r cycles and column c's activations c
  cycles at the edge (the skew), so element (r, c) sees word j of both operands at the same cycle.
* The edge masks the invalid bits of every word (`nbits`): weight bits are forced to 0 and activation
  bits to 1, so their XNOR is 0 and padding never counts, whatever the stored padding holds.
* Draining without stalling: on the last word of a pass an element latches its count into a result
  register and starts the next pass at once. Result registers are read one cycle later through a
  one-hot AND-OR per column, selected by the element's own `result_valid` pulse; the skew makes row r of
  column c valid at cycle r + c, so each column emits its rows on consecutive cycles. Output columns are
  then deskewed so that row r of all columns leaves together. Two consecutive passes must end at least
  `rows` cycles apart (the core's input enforces it), so a pass costs max(ceil(K / W), rows) cycles.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .config import AccelConfig
from .popcount import xnor_popcount
from .pipeline import delay

__all__ = ["ProcessingElement", "SystolicArray", "control_layout"]

control_layout = data.StructLayout({"valid": 1, "first": 1, "last": 1})


class ProcessingElement(wiring.Component):
    """One XNOR-popcount element.

    Ports
    -----
    w_in, a_in : In(W)       weight and activation words (already masked at the array edge).
    ctl_in     : In(control) valid / first / last of the pass the words belong to.
    w_out      : Out(W)      w_in, one cycle later (to the element on the right).
    a_out      : Out(W)      a_in, one cycle later (to the element below).
    ctl_out    : Out(control) ctl_in, one cycle later.
    result     : Out(count_bits) popcount of XNOR(w, a) over the pass that last ended.
    result_valid : Out(1)    pulses for one cycle when `result` holds a new pass's count.

    Latency: `result_valid` rises `LATENCY` cycles after the last word is on the inputs.
    """

    LATENCY = 2

    def __init__(self, word_bits, count_bits):
        if not isinstance(word_bits, int) or word_bits < 1:
            raise ValueError(f"Word width must be a positive integer, not {word_bits!r}")
        if not isinstance(count_bits, int) or count_bits < (word_bits).bit_length():
            raise ValueError(f"Count width must hold a whole word's count, not {count_bits!r}")
        self._word_bits = word_bits
        self._count_bits = count_bits
        super().__init__({
            "w_in": In(word_bits), "a_in": In(word_bits), "ctl_in": In(control_layout),
            "w_out": Out(word_bits), "a_out": Out(word_bits), "ctl_out": Out(control_layout),
            "result": Out(count_bits), "result_valid": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.sync += [
            self.w_out.eq(self.w_in),
            self.a_out.eq(self.a_in),
            self.ctl_out.eq(self.ctl_in),
        ]
        # Stage 1: the popcount of this word, registered so the tree and the accumulator adder are
        # separate timing paths.
        count = Signal(range(self._word_bits + 1))
        ctl = Signal(control_layout)
        m.d.sync += [
            count.eq(xnor_popcount(m, self.w_in, self.a_in)),
            ctl.eq(self.ctl_in),
        ]
        # Stage 2: accumulate over the pass; latch the total on its last word.
        acc = Signal(unsigned(self._count_bits))
        total = Signal(unsigned(self._count_bits))
        m.d.comb += total.eq(Mux(ctl.first, 0, acc) + count)
        m.d.sync += self.result_valid.eq(ctl.valid & ctl.last)
        with m.If(ctl.valid):
            m.d.sync += acc.eq(total)
            with m.If(ctl.last):
                m.d.sync += self.result.eq(total)
        return m


class SystolicArray(wiring.Component):
    """rows x cols XNOR-popcount elements with edge masking, skew, column readout and deskew.

    Ports
    -----
    edge   : In(edge layout)  one beat per cycle, no back-pressure: `w[r]` for row r, `a[c]` for
             column c, `nbits` valid low bits of every word, `valid`, `first`, `last`.
    counts : Out(ArrayLayout(count_bits, cols))  row results, column c's count in `counts[c]`.
    counts_valid : Out(1)  `counts` holds row `r` of a finished pass; a pass's rows 0 .. rows-1 leave on
             consecutive cycles, row 0 `latency` cycles after the pass's last beat was on `edge`.
    """

    def __init__(self, config):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Config must be an AccelConfig, not {config!r}")
        self._config = config
        c = config
        self.edge_layout = data.StructLayout({
            "w": data.ArrayLayout(c.word_bits, c.rows),
            "a": data.ArrayLayout(c.word_bits, c.cols),
            "nbits": range(c.word_bits + 1),
            "valid": 1, "first": 1, "last": 1,
        })
        super().__init__({
            "edge": In(self.edge_layout),
            "counts": Out(data.ArrayLayout(c.count_bits, c.cols)),
            "counts_valid": Out(1),
        })

    @property
    def latency(self):
        """Cycles from a pass's last beat on `edge` to its row 0 on `counts`."""
        # edge register (1) + skew to element (0, c) and through it to the deskewed output (cols - 1)
        # + the element (LATENCY) + column readout register (1).
        return 1 + (self._config.cols - 1) + ProcessingElement.LATENCY + 1

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        rows, cols, width = cfg.rows, cfg.cols, cfg.word_bits

        # Edge: mask invalid bits (weights to 0, activations to 1) and register.
        mask = Signal(width)
        m.d.comb += mask.eq(Cat(self.edge.nbits > i for i in range(width)))
        w_edge = [Signal(width, name=f"w_edge{r}") for r in range(rows)]
        a_edge = [Signal(width, name=f"a_edge{c}") for c in range(cols)]
        ctl_edge = Signal(control_layout)
        for r in range(rows):
            m.d.sync += w_edge[r].eq(self.edge.w[r] & mask)
        for c in range(cols):
            m.d.sync += a_edge[c].eq(self.edge.a[c] | ~mask)
        m.d.sync += [
            ctl_edge.valid.eq(self.edge.valid),
            ctl_edge.first.eq(self.edge.first),
            ctl_edge.last.eq(self.edge.last),
        ]


        w_left = [delay(m, w_edge[r], r, f"w_skew{r}") for r in range(rows)]
        a_top = [delay(m, a_edge[c], c, f"a_skew{c}") for c in range(cols)]
        ctl_top = [delay(m, ctl_edge, c, f"ctl_skew{c}") for c in range(cols)]

        pes = [[ProcessingElement(width, cfg.count_bits) for _ in range(cols)] for _ in range(rows)]
        for r in range(rows):
            for c in range(cols):
                pe = pes[r][c]
                m.submodules[f"pe_{r}_{c}"] = pe
                m.d.comb += [
                    pe.w_in.eq(w_left[r] if c == 0 else pes[r][c - 1].w_out),
                    pe.a_in.eq(a_top[c] if r == 0 else pes[r - 1][c].a_out),
                    pe.ctl_in.eq(ctl_top[c] if r == 0 else pes[r - 1][c].ctl_out),
                ]

        # Column readout: one-hot AND-OR over the rows, registered; then deskew.
        for c in range(cols):
            selected = 0
            any_valid = 0
            for r in range(rows):
                pe = pes[r][c]
                selected = selected | Mux(pe.result_valid, pe.result, 0)
                any_valid = any_valid | pe.result_valid
            col_count = Signal(cfg.count_bits, name=f"col_count{c}")
            col_valid = Signal(name=f"col_valid{c}")
            m.d.sync += [col_count.eq(selected), col_valid.eq(any_valid)]
            m.d.comb += self.counts[c].eq(delay(m, col_count, cols - 1 - c, f"deskew{c}"))
            if c == cols - 1:
                m.d.comb += self.counts_valid.eq(col_valid)
        return m
