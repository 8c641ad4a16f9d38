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
* With `AccelConfig.element_scales`, every element also applies the scale: the pass's K and its
  first/last-pass flags travel down with the activations, each row's scale travels right with the
  weights (entering one cycle after the pass's last beat, from the scale memory), and the element turns
  each pass's count into `scale * (2 * count - K)` and sums those over the tile's passes. Only a tile's
  last pass latches a result, so passes may end on consecutive cycles and only tiles end `rows` cycles
  apart; the readout then carries the tile's exact sums instead of counts.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .config import AccelConfig
from .popcount import xnor_popcount
from .pipeline import delay

__all__ = ["ProcessingElement", "SystolicArray", "control_layout"]

control_layout = data.StructLayout({"valid": 1, "first": 1, "last": 1})


def _scaled_control(count_bits):
    """The control an element that applies scales needs: the pass's K and its place in the tile."""
    return data.StructLayout({"valid": 1, "first": 1, "last": 1,
                              "k": unsigned(count_bits), "first_pass": 1, "last_pass": 1})


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
    SCALED_LATENCY = 5

    def __init__(self, word_bits, count_bits, *, scale_bits=None, acc_bits=None):
        if not isinstance(word_bits, int) or word_bits < 1:
            raise ValueError(f"Word width must be a positive integer, not {word_bits!r}")
        if not isinstance(count_bits, int) or count_bits < (word_bits).bit_length():
            raise ValueError(f"Count width must hold a whole word's count, not {count_bits!r}")
        if (scale_bits is None) != (acc_bits is None):
            raise ValueError("An element that applies scales needs both scale_bits and acc_bits")
        self._word_bits = word_bits
        self._count_bits = count_bits
        self._scale_bits = scale_bits
        self._acc_bits = acc_bits
        ports = {"w_in": In(word_bits), "a_in": In(word_bits), "w_out": Out(word_bits),
                 "a_out": Out(word_bits), "result_valid": Out(1)}
        if scale_bits is None:
            ports.update({"ctl_in": In(control_layout), "ctl_out": Out(control_layout),
                          "result": Out(count_bits)})
        else:
            ctl = _scaled_control(count_bits)
            ports.update({"ctl_in": In(ctl), "ctl_out": Out(ctl),
                          "scale_in": In(signed(scale_bits)), "scale_out": Out(signed(scale_bits)),
                          "result": Out(signed(acc_bits))})
        super().__init__(ports)

    @property
    def scaled(self):
        return self._scale_bits is not None

    @property
    def latency(self):
        """Cycles from the last word of a pass on the inputs to `result_valid`."""
        return self.SCALED_LATENCY if self.scaled else self.LATENCY

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
        ctl = Signal(self.ctl_in.shape())
        m.d.sync += [
            count.eq(xnor_popcount(m, self.w_in, self.a_in)),
            ctl.eq(self.ctl_in),
        ]
        # Stage 2: accumulate over the pass; latch the total on its last word.
        acc = Signal(unsigned(self._count_bits))
        total = Signal(unsigned(self._count_bits))
        m.d.comb += total.eq(Mux(ctl.first, 0, acc) + count)
        with m.If(ctl.valid):
            m.d.sync += acc.eq(total)
        if not self.scaled:
            m.d.sync += self.result_valid.eq(ctl.valid & ctl.last)
            with m.If(ctl.valid & ctl.last):
                m.d.sync += self.result.eq(total)
            return m

        # Scaling (`AccelConfig.element_scales`): the row's scale moves right beside the weights.
        scale1 = Signal(signed(self._scale_bits))
        m.d.sync += [self.scale_out.eq(self.scale_in), scale1.eq(self.scale_in)]
        # Stage 2 latches the pass's count with its K, scale and flags; stage 3 the signed dot product;
        # stage 4 the product (a registered multiplier, one DSP block); stage 5 the tile's running sum.
        count2 = Signal(unsigned(self._count_bits))
        k2 = Signal(unsigned(self._count_bits))
        scale2 = Signal(signed(self._scale_bits))
        valid2, first2, last2 = Signal(), Signal(), Signal()
        m.d.sync += valid2.eq(ctl.valid & ctl.last)
        with m.If(ctl.valid & ctl.last):
            m.d.sync += [count2.eq(total), k2.eq(ctl.k), scale2.eq(scale1),
                         first2.eq(ctl.first_pass), last2.eq(ctl.last_pass)]
        dot3 = Signal(signed(self._count_bits + 1))
        scale3 = Signal(signed(self._scale_bits))
        valid3, first3, last3 = Signal(), Signal(), Signal()
        m.d.sync += [dot3.eq((count2 << 1) - k2), scale3.eq(scale2),
                     valid3.eq(valid2), first3.eq(first2), last3.eq(last2)]
        product4 = Signal(signed(self._count_bits + 1 + self._scale_bits))
        valid4, first4, last4 = Signal(), Signal(), Signal()
        m.d.sync += [product4.eq(dot3 * scale3), valid4.eq(valid3), first4.eq(first3), last4.eq(last3)]
        sum_acc = Signal(signed(self._acc_bits))
        new = Signal(signed(self._acc_bits))
        m.d.comb += new.eq(Mux(first4, 0, sum_acc) + product4)
        with m.If(valid4):
            m.d.sync += sum_acc.eq(new)
        m.d.sync += self.result_valid.eq(valid4 & last4)
        with m.If(valid4 & last4):
            m.d.sync += self.result.eq(new)
        return m


class SystolicArray(wiring.Component):
    """rows x cols XNOR-popcount elements with edge masking, skew, column readout and deskew.

    Ports
    -----
    edge   : In(edge layout)  one beat per cycle, no back-pressure: `w[r]` for row r, `a[c]` for
             column c, `nbits` valid low bits of every word, `valid`, `first`, `last`; with
             `element_scales` also the pass's `k`, `first_pass` and `last_pass` (on its last beat).
    scales : In(ArrayLayout(signed(scale_bits), rows))  only with `element_scales`: the pass's scale of
             each row, one cycle after its last beat was on `edge` (a scale-memory read port's data).
    counts : Out(ArrayLayout(count_bits, cols))  row results, column c's count in `counts[c]`; with
             `element_scales`, ArrayLayout(signed(acc_bits), cols): a finished tile's sums.
    counts_valid : Out(1)  `counts` holds row `r` of a finished pass (of a finished tile, with
             `element_scales`); its rows 0 .. rows-1 leave on consecutive cycles, row 0 `latency`
             cycles after the last beat was on `edge`.
    """

    def __init__(self, config):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Config must be an AccelConfig, not {config!r}")
        self._config = config
        c = config
        fields = {
            "w": data.ArrayLayout(c.word_bits, c.rows),
            "a": data.ArrayLayout(c.word_bits, c.cols),
            "nbits": range(c.word_bits + 1),
            "valid": 1, "first": 1, "last": 1,
        }
        ports = {"counts_valid": Out(1)}
        if c.element_scales:
            fields.update({"k": unsigned(c.count_bits), "first_pass": 1, "last_pass": 1})
            ports["scales"] = In(data.ArrayLayout(signed(c.scale_bits), c.rows))
            ports["counts"] = Out(data.ArrayLayout(signed(c.acc_bits), c.cols))
        else:
            ports["counts"] = Out(data.ArrayLayout(c.count_bits, c.cols))
        self.edge_layout = data.StructLayout(fields)
        ports["edge"] = In(self.edge_layout)
        super().__init__(ports)

    @property
    def latency(self):
        """Cycles from a pass's last beat on `edge` to its row 0 on `counts`."""
        # edge register (1) + skew to element (0, c) and through it to the deskewed output (cols - 1)
        # + the element + column readout register (1).
        element = (ProcessingElement.SCALED_LATENCY if self._config.element_scales
                   else ProcessingElement.LATENCY)
        return 1 + (self._config.cols - 1) + element + 1

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        rows, cols, width = cfg.rows, cfg.cols, cfg.word_bits
        scaled = cfg.element_scales

        # Edge: mask invalid bits (weights to 0, activations to 1) and register.
        mask = Signal(width)
        m.d.comb += mask.eq(Cat(self.edge.nbits > i for i in range(width)))
        w_edge = [Signal(width, name=f"w_edge{r}") for r in range(rows)]
        a_edge = [Signal(width, name=f"a_edge{c}") for c in range(cols)]
        ctl_edge = Signal(_scaled_control(cfg.count_bits) if scaled else control_layout)
        for r in range(rows):
            m.d.sync += w_edge[r].eq(self.edge.w[r] & mask)
        for c in range(cols):
            m.d.sync += a_edge[c].eq(self.edge.a[c] | ~mask)
        m.d.sync += [
            ctl_edge.valid.eq(self.edge.valid),
            ctl_edge.first.eq(self.edge.first),
            ctl_edge.last.eq(self.edge.last),
        ]
        if scaled:
            m.d.sync += [
                ctl_edge.k.eq(self.edge.k),
                ctl_edge.first_pass.eq(self.edge.first_pass),
                ctl_edge.last_pass.eq(self.edge.last_pass),
            ]

        w_left = [delay(m, w_edge[r], r, f"w_skew{r}") for r in range(rows)]
        a_top = [delay(m, a_edge[c], c, f"a_skew{c}") for c in range(cols)]
        ctl_top = [delay(m, ctl_edge, c, f"ctl_skew{c}") for c in range(cols)]
        if scaled:
            # The scale memory's data is on `scales` in the cycle the edge register holds the last
            # beat, so the scales take the weights' skew from here.
            s_left = [delay(m, self.scales[r], r, f"s_skew{r}") for r in range(rows)]
            pes = [[ProcessingElement(width, cfg.count_bits, scale_bits=cfg.scale_bits,
                                      acc_bits=cfg.acc_bits) for _ in range(cols)] for _ in range(rows)]
        else:
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
                if scaled:
                    m.d.comb += pe.scale_in.eq(s_left[r] if c == 0 else pes[r][c - 1].scale_out)

        # Column readout: one-hot AND-OR over the rows, registered; then deskew.
        result_bits = cfg.acc_bits if scaled else cfg.count_bits
        for c in range(cols):
            selected = 0
            any_valid = 0
            for r in range(rows):
                pe = pes[r][c]
                selected = selected | Mux(pe.result_valid, pe.result.as_unsigned(), 0)
                any_valid = any_valid | pe.result_valid
            col_count = Signal(result_bits, name=f"col_count{c}")
            col_valid = Signal(name=f"col_valid{c}")
            m.d.sync += [col_count.eq(selected), col_valid.eq(any_valid)]
            m.d.comb += self.counts[c].eq(delay(m, col_count, cols - 1 - c, f"deskew{c}"))
            if c == cols - 1:
                m.d.comb += self.counts_valid.eq(col_valid)
        return m
