"""`BinaryCore`: systolic array + scale accumulator + threshold unit behind streams.

The core takes passes of beats (one weight basis x one activation basis over K) and returns, per output
tile, `rows` results of `cols` exact sums and their bit-planes. It never stalls internally: the
systolic pipeline has no back-pressure, so the input admits a tile's final beat only when the output
FIFO has room reserved for all of that tile's rows (credits), and a pass's last beat only when the
previous pass ended at least `rows` cycles earlier (the array drains one row per cycle).
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .array import SystolicArray
from .config import AccelConfig
from .layouts import CoreLayouts
from .pipeline import delay
from .scale import ScaleAccumulator
from .threshold import ThresholdUnit

__all__ = ["BinaryCore"]


class BinaryCore(wiring.Component):
    """The compute core of the accelerator.

    Ports
    -----
    beats       : In(stream of `CoreLayouts.beat`)  array input; see `CoreLayouts` for the fields.
    scale_write : In(stream of `CoreLayouts.scale_write`)  always ready; one write per cycle.
    thr_write   : In(stream of `CoreLayouts.thr_write`)  always ready; one write per cycle.
    results     : Out(stream of `CoreLayouts.result`)  one payload per row of each finished tile.

    Writes to the scale and threshold memories take effect for passes whose last beat is accepted
    after the write (the memories are read once a pass reaches the accumulator, so a program must not
    overwrite an entry that a pass in flight still needs; the compiler orders this).
    """

    def __init__(self, config):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Config must be an AccelConfig, not {config!r}")
        self._config = config
        self.layouts = layouts = CoreLayouts(config)
        super().__init__({
            "beats": In(stream.Signature(layouts.beat)),
            "scale_write": In(stream.Signature(layouts.scale_write)),
            "thr_write": In(stream.Signature(layouts.thr_write)),
            "results": Out(stream.Signature(layouts.result)),
        })

    @property
    def config(self):
        return self._config

    @property
    def meta_depth(self):
        """Passes (tiles, with `element_scales`) that can be between the input and the readout."""
        cfg = self._config
        return (cfg.cols + 3 + (3 if cfg.element_scales else 0)) // cfg.rows + 3

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        lay = self.layouts
        rows = cfg.rows

        m.submodules.array = array = SystolicArray(cfg)
        m.submodules.thresholds = thr_unit = ThresholdUnit(cfg)
        m.submodules.meta_fifo = meta_fifo = fifo.SyncFIFOBuffered(
            width=lay.pass_info.size, depth=self.meta_depth)
        # A buffered FIFO of depth d refuses a write while its output register refills with d - 1
        # entries inside, so it guarantees d - 1 places; credits count `out_depth` of them.
        m.submodules.out_fifo = out_fifo = fifo.SyncFIFOBuffered(
            width=lay.result.size, depth=cfg.out_depth + 1)
        m.submodules.scale_mem = scale_mem = memory.Memory(
            shape=lay.scale_entry, depth=cfg.scale_depth, init=[])
        m.submodules.thr_mem = thr_mem = memory.Memory(
            shape=ThresholdUnit.stored_layout(cfg), depth=cfg.thr_depth, init=[])

        # Parameter memory writes.
        scale_wp = scale_mem.write_port()
        m.d.comb += [
            self.scale_write.ready.eq(1),
            scale_wp.addr.eq(self.scale_write.payload.addr),
            scale_wp.data.eq(self.scale_write.payload.scales),
            scale_wp.en.eq(self.scale_write.valid),
        ]
        thr_wp = thr_mem.write_port()
        m.d.comb += [
            self.thr_write.ready.eq(1),
            thr_wp.addr.eq(self.thr_write.payload.addr),
            thr_wp.data.eq(ThresholdUnit.store(cfg, self.thr_write.payload.entry)),
            thr_wp.en.eq(self.thr_write.valid),
        ]

        # Input admission: pass spacing, pass-info room, output credits.
        beat = self.beats.payload
        # The two admission tests are registered, computed from the counters' next values, so that
        # `ready` (which the accelerator's whole issue pipeline waits on) comes from flip-flops.
        since_last = Signal(range(rows + 1), init=rows)   # cycles since the last pass ended
        reserved = Signal(range(cfg.out_depth + 1))        # output FIFO entries promised
        spacing_ok = Signal(init=1)                        # since_last >= rows
        credit_ok = Signal(init=1)                         # reserved <= out_depth - rows
        ends_tile = beat.last & beat.info.last_pass
        # A pass's rows leave the array one per cycle, so passes end `rows` cycles apart; when the
        # elements apply the scales, only tiles leave, and only tiles need the spacing.
        spaced = ends_tile if cfg.element_scales else beat.last
        admit = ~spaced | (spacing_ok & meta_fifo.w_rdy & (~ends_tile | credit_ok))
        accepted = Signal()
        m.d.comb += [
            self.beats.ready.eq(admit),
            accepted.eq(self.beats.valid & admit),
        ]
        since_next = Signal.like(since_last)
        reserved_next = Signal.like(reserved)
        # A FIFO entry moved to the output register, counted a cycle later: the pop depends on the
        # consumer's `ready`, which must not run through the credit arithmetic in the same cycle.
        # Returning a credit late only ever under-counts the room.
        popped = Signal()
        m.d.sync += popped.eq(out_fifo.r_rdy & out_fifo.r_en)
        m.d.comb += [
            since_next.eq(Mux(accepted & spaced, 1, Mux(spacing_ok, since_last, since_last + 1))),
            reserved_next.eq(reserved + Mux(accepted & ends_tile, rows, 0) - popped),
        ]
        m.d.sync += [
            since_last.eq(since_next), spacing_ok.eq(since_next >= rows),
            reserved.eq(reserved_next), credit_ok.eq(reserved_next <= cfg.out_depth - rows),
        ]

        m.d.comb += [
            array.edge.w.eq(beat.w),
            array.edge.a.eq(beat.a),
            array.edge.nbits.eq(beat.nbits),
            array.edge.valid.eq(accepted),
            array.edge.first.eq(beat.first),
            array.edge.last.eq(beat.last),
            meta_fifo.w_data.eq(beat.info),
            meta_fifo.w_en.eq(accepted & spaced),
        ]
        if cfg.element_scales:
            self._elaborate_element_scales(m, array, meta_fifo, scale_mem, thr_mem, thr_unit, out_fifo)
        else:
            self._elaborate_scale_accumulator(m, array, meta_fifo, scale_mem, thr_mem, thr_unit,
                                              out_fifo)
        self._elaborate_output(m, out_fifo)
        return m

    def _elaborate_scale_accumulator(self, m, array, meta_fifo, scale_mem, thr_mem, thr_unit,
                                     out_fifo):
        """Passes leave the array as counts; one scale accumulator per column applies the scales."""
        cfg = self._config
        lay = self.layouts
        m.submodules.scale_acc = scale_acc = ScaleAccumulator(cfg)

        # Stage A: rows leave the array; row 0 of a pass takes its pass info from the FIFO.
        row_a, info_a = self._rows_leaving(m, array, meta_fifo)
        scale_rp = scale_mem.read_port()
        m.d.comb += [
            scale_rp.addr.eq(info_a.scale_addr),
            scale_rp.en.eq(array.counts_valid & (row_a == 0)),
        ]

        # Stage B, two cycles after A: the pass's scale entry, read at row 0 and registered once
        # (the memory's output delay and the row select in one cycle were the ULX3S build's critical
        # path), feeds the accumulator; the entry stays for all of the pass's rows.
        valid_b = delay(m, array.counts_valid, 2, "valid_b")
        counts_b = delay(m, array.counts, 2, "counts_b")
        row_b = delay(m, row_a, 2, "row_b")
        info_b = delay(m, info_a, 2, "info_b")
        scale_entry = Signal(lay.scale_entry)
        m.d.sync += scale_entry.eq(scale_rp.data)
        m.d.comb += [
            scale_acc.in_valid.eq(valid_b),
            scale_acc.counts.eq(counts_b),
            scale_acc.k.eq(info_b.k),
            scale_acc.scale.eq(scale_entry[row_b]),
            scale_acc.first_pass.eq(info_b.first_pass),
            scale_acc.last_pass.eq(info_b.last_pass),
        ]

        # The threshold entry is read two cycles before the accumulator's sums are ready and
        # registered once more before the comparators: the memory's output delay and a
        # full-width comparison in one cycle were the ULX3S build's critical path.
        lead = ScaleAccumulator.LATENCY - 2
        thr_addr_c = delay(m, info_b.thr_addr, lead, "thr_addr")
        row_c = delay(m, row_b, lead, "row_thr")
        valid_c = delay(m, valid_b, lead, "valid_thr")
        thr_rp = thr_mem.read_port()
        thr_entry = Signal(ThresholdUnit.stored_layout(cfg))
        m.d.sync += thr_entry.eq(thr_rp.data)
        m.d.comb += [
            thr_rp.addr.eq(thr_addr_c + row_c),
            thr_rp.en.eq(valid_c),
            thr_unit.in_valid.eq(scale_acc.out_valid),
            thr_unit.acc.eq(scale_acc.acc),
            thr_unit.entry.eq(thr_entry),
        ]

        # Stage D: results into the output FIFO.
        total = ScaleAccumulator.LATENCY + ThresholdUnit.LATENCY
        self._write_results(m, thr_unit, out_fifo, delay(m, row_b, total, "row_out"),
                            delay(m, info_b.raw, total, "raw_out"))

    def _rows_leaving(self, m, array, meta_fifo):
        """(row, info) of the array's output: the row counter over a readout's rows, and its pass info
        (its tile's, with element scales), taken from the FIFO at row 0 and held for the other rows."""
        lay = self.layouts
        rows = self._config.rows
        row = Signal(range(rows))
        held = Signal(lay.pass_info)
        info = Signal(lay.pass_info)
        m.d.comb += [
            info.eq(Mux(row == 0, lay.pass_info(meta_fifo.r_data), held)),
            meta_fifo.r_en.eq(array.counts_valid & (row == 0)),
        ]
        with m.If(array.counts_valid):
            m.d.sync += [held.eq(info), row.eq(Mux(row == rows - 1, 0, row + 1))]
        return row, info

    def _write_results(self, m, thr_unit, out_fifo, row, raw):
        """The threshold unit's rows into the output FIFO, with their row number and raw flag."""
        result = Signal(self.layouts.result)
        m.d.comb += [
            result.acc.eq(thr_unit.acc_out),
            result.bits.eq(thr_unit.bits),
            result.row.eq(row),
            result.last.eq(row == self._config.rows - 1),
            result.raw.eq(raw),
            out_fifo.w_data.eq(result),
            out_fifo.w_en.eq(thr_unit.out_valid),
        ]

    def _elaborate_element_scales(self, m, array, meta_fifo, scale_mem, thr_mem, thr_unit, out_fifo):
        """The elements apply the scales: the scale memory is read on each pass's last beat and
        tiles leave the array as sums, straight to the threshold unit."""
        cfg = self._config
        beat = self.beats.payload
        scale_rp = scale_mem.read_port()
        m.d.comb += [
            scale_rp.addr.eq(beat.info.scale_addr),
            scale_rp.en.eq(self.beats.valid & self.beats.ready & beat.last),
            array.scales.eq(scale_rp.data),
            array.edge.k.eq(beat.info.k),
            array.edge.first_pass.eq(beat.info.first_pass),
            array.edge.last_pass.eq(beat.info.last_pass),
        ]

        # Rows leave the array; row 0 of a tile takes the tile's info from the FIFO and the
        # threshold entry is read for every row, registered once before the comparators.
        row_a, info_a = self._rows_leaving(m, array, meta_fifo)
        thr_rp = thr_mem.read_port()
        thr_entry = Signal(ThresholdUnit.stored_layout(cfg))
        m.d.sync += thr_entry.eq(thr_rp.data)
        m.d.comb += [
            thr_rp.addr.eq(info_a.thr_addr + row_a),
            thr_rp.en.eq(array.counts_valid),
            thr_unit.in_valid.eq(delay(m, array.counts_valid, 2, "valid_thr")),
            thr_unit.acc.eq(delay(m, array.counts, 2, "sums_thr")),
            thr_unit.entry.eq(thr_entry),
        ]
        self._write_results(m, thr_unit, out_fifo, delay(m, row_a, 2 + ThresholdUnit.LATENCY, "row_out"),
                            delay(m, info_a.raw, 2 + ThresholdUnit.LATENCY, "raw_out"))

    def _elaborate_output(self, m, out_fifo):
        lay = self.layouts

        # The FIFO's read data goes through one register before `results`: the FIFO's memory (block
        # RAM when out_depth is large) then feeds a flip-flop, not the consumer's logic.
        res_valid = Signal()
        res_data = Signal(lay.result)
        take = Signal()
        m.d.comb += [
            take.eq(out_fifo.r_rdy & (~res_valid | self.results.ready)),
            out_fifo.r_en.eq(take),
            self.results.valid.eq(res_valid),
            self.results.payload.eq(res_data),
        ]
        with m.If(take):
            m.d.sync += [res_valid.eq(1), res_data.eq(out_fifo.r_data)]
        with m.Elif(self.results.ready):
            m.d.sync += res_valid.eq(0)
