"""`WriterEngine`: the core's results, to the result memory (sums) or the activation buffer (bit-planes)."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..isa import ConvArgs
from ..layouts import CoreLayouts
from .plan import PIXEL_RANGE, Plan

__all__ = ["WriterEngine"]


class WriterEngine(wiring.Component):
    """Writes every finished tile of a CONV.

    `raw`: one sum a cycle, column by column, to the result memory at `out_base + pixel * out_ch +
    channel`; a result row is taken after its last column. Otherwise a tile's R rows are taken one a
    cycle into one of two buffers, then written as C x T fields while the next tile's rows are taken
    into the other (so a tile costs the writer max(R, C x T) cycles, not their sum): a tile's R channels of one pixel and plane are
    one R-bit field of an activation word (write granularity R), at `out_base + plane * out_plane_words
    + pixel * out_stride + channel word`. Pixels past the map and channels past `out_ch` are not written.

    Ports
    -----
    conv, plan  : In   the running CONV's fields and set-up.
    start       : In(1)  pulse: initialise for a new CONV.
    active      : In(1)  the CONV runs.
    results     : In(stream of `CoreLayouts.result`)  from the core.
    act_addr, act_data, act_en : Out  activation-buffer writes (`act_en` one bit per R-bit field).
    res_addr, res_data, res_en : Out  result-memory writes.
    done        : Out(1)  every pixel tile of the CONV has been written.
    """

    def __init__(self, config):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Config must be an AccelConfig, not {config!r}")
        self._config = config
        self.layouts = lay = CoreLayouts(config)
        super().__init__({
            "conv": In(ConvArgs),
            "plan": In(Plan),
            "start": In(1),
            "active": In(1),
            "results": In(stream.Signature(lay.result)),
            "act_addr": Out(range(config.act_depth)),
            "act_data": Out(config.word_bits),
            "act_en": Out(config.word_bits // config.rows),
            "res_addr": Out(range(config.result_depth)),
            "res_data": Out(signed(config.acc_bits)),
            "res_en": Out(1),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        R, C, W = cfg.rows, cfg.cols, cfg.word_bits
        cv, plan = self.conv, self.plan
        res = self.results.payload

        tiles = Signal(ConvArgs["out_ch"].width)              # output tiles of this pixel tile written
        col = Signal(range(C + 1))
        plane = Signal(ConvArgs["out_planes"].width)
        o0 = Signal(ConvArgs["out_ch"].width + 1)            # first channel of the tile being written
        # The first pixel of the tile (of every image, for a CONV over all images).
        p0 = Signal(range(PIXEL_RANGE + C))
        res_tile = Signal.like(self.res_addr)                # out_base + p0 * out_ch
        res_addr = Signal.like(self.res_addr)
        out_tile = Signal.like(self.act_addr)                # out_base + p0 * out_stride
        out_pix = Signal.like(self.act_addr)
        out_addr = Signal.like(self.act_addr)
        word = Signal(ConvArgs["out_stride"].width)          # (o0 + out_ch_base) // W
        field = Signal(range(W // R + 1))                    # ((o0 + out_ch_base) % W) // R
        # Two tile buffers: rows are taken into `bits_buf[take]` while `bits_buf[write]` is written.
        bits_buf = [[Signal(data.ArrayLayout(cfg.max_abases, C), name=f"bits_buf{b}_{r}") for r in range(R)]
                    for b in range(2)]
        full = Signal(2)                                     # buffer b holds a whole tile
        take = Signal()
        write = Signal()
        writing = Signal()
        col_index = col[:max(1, (C - 1).bit_length())]

        # Columns of the pixel tile that hold a pixel of the map: min(npix - p0, C), registered with
        # every change of p0 (its first write, column 0, always holds one), so a write's enable
        # compares the column with this small register, not p0 + col with the 32-bit npix.
        pix_left = Signal(range(C + 1))
        m.d.comb += self.done.eq(p0 >= plan.npix)

        def set_pix_left(first):
            left = plan.npix - first
            m.d.sync += pix_left.eq(Mux(left[-1], 0, Mux(left >= C, C, left)))

        def first_field():
            m.d.sync += [word.eq(cv.out_ch_base // W), field.eq((cv.out_ch_base % W) // R)]

        with m.If(self.start):
            m.d.sync += [p0.eq(0), res_tile.eq(cv.out_base), out_tile.eq(cv.out_base),
                         res_addr.eq(cv.out_base), tiles.eq(0), o0.eq(0), col.eq(0), writing.eq(0),
                         full.eq(0), take.eq(0), write.eq(0)]
            set_pix_left(0)
            first_field()

        def next_pixel_tile():
            """The pixel tile's last output tile is written: move to the next pixel tile."""
            m.d.sync += [
                tiles.eq(0), o0.eq(0), col.eq(0),
                p0.eq(p0 + C), res_tile.eq(res_tile + plan.tile_res_step),
                res_addr.eq(res_tile + plan.tile_res_step),
                out_tile.eq(out_tile + plan.tile_out_step),
            ]
            set_pix_left(p0 + C)
            first_field()

        with m.If(self.active & cv.raw):
            o = o0 + res.row
            m.d.comb += [
                self.res_addr.eq(res_addr),
                self.res_data.eq(res.acc[col_index] if C > 1 else res.acc[0]),
                self.res_en.eq(self.results.valid & (o < cv.out_ch) & (col < pix_left)),
            ]
            with m.If(self.results.valid):
                with m.If(col == C - 1):
                    m.d.comb += self.results.ready.eq(1)
                    m.d.sync += col.eq(0)
                    with m.If(res.last):
                        m.d.sync += [o0.eq(o0 + R), tiles.eq(tiles + 1), res_addr.eq(res_tile + o0 + R)]
                        with m.If(tiles == plan.ot_m1):
                            next_pixel_tile()
                    with m.Else():
                        m.d.sync += res_addr.eq(res_tile + o + 1)
                with m.Else():
                    m.d.sync += [col.eq(col + 1), res_addr.eq(res_addr + cv.out_ch)]
        with m.Elif(self.active):
            taken = Signal(2)                                # a buffer filled this cycle
            freed = Signal(2)                                # a buffer written out this cycle
            m.d.sync += full.eq((full | taken) & ~freed)
            with m.If(~full.bit_select(take, 1)):
                m.d.comb += self.results.ready.eq(1)
                with m.If(self.results.valid):
                    for b in range(2):
                        for r in range(R):
                            with m.If((take == b) & (res.row == r)):
                                m.d.sync += bits_buf[b][r].eq(res.bits)
                    with m.If(res.last):
                        m.d.comb += taken.eq(Mux(take, 0b10, 0b01))
                        m.d.sync += take.eq(~take)
            ready_to_write = full | taken                    # a whole tile is (or is now) in a buffer
            with m.If(~writing):
                with m.If(ready_to_write.bit_select(write, 1)):
                    m.d.sync += [writing.eq(1), col.eq(0), plane.eq(0),
                                 out_pix.eq(out_tile), out_addr.eq(out_tile + word)]
            with m.Else():
                bits = Signal(R)
                for r in range(R):
                    planes = [bits_buf[b][r][col_index] if C > 1 else bits_buf[b][r][0] for b in range(2)]
                    m.d.comb += bits[r].eq(Mux(o0 + r < cv.out_ch, (Mux(write, planes[1], planes[0]) >> plane)[0], 0))
                m.d.comb += [
                    self.act_addr.eq(out_addr),
                    self.act_data.eq(Cat(*([bits] * (W // R)))),
                    self.act_en.eq(Mux(col < pix_left, Const(1, W // R) << field, 0)),
                ]
                with m.If(plane != plan.op_m1):
                    m.d.sync += [plane.eq(plane + 1), out_addr.eq(out_addr + plan.out_plane_words)]
                with m.Else():
                    m.d.sync += [plane.eq(0), col.eq(col + 1), out_pix.eq(out_pix + cv.out_stride),
                                 out_addr.eq(out_pix + cv.out_stride + word)]
                    with m.If(col == C - 1):
                        m.d.comb += freed.eq(Mux(write, 0b10, 0b01))
                        m.d.sync += [write.eq(~write), o0.eq(o0 + R), tiles.eq(tiles + 1)]
                        with m.If(field == W // R - 1):
                            m.d.sync += [field.eq(0), word.eq(word + 1)]
                        with m.Else():
                            m.d.sync += field.eq(field + 1)
                        # The next tile's first address, for going on without an idle cycle when its
                        # rows are already in the other buffer.
                        new_pixel_tile = tiles == plan.ot_m1
                        next_word = Mux(new_pixel_tile, cv.out_ch_base // W, word + (field == W // R - 1))
                        next_tile = Mux(new_pixel_tile, out_tile + plan.tile_out_step, out_tile)
                        with m.If(ready_to_write.bit_select(~write, 1)):
                            m.d.sync += [col.eq(0), out_pix.eq(next_tile), out_addr.eq(next_tile + next_word)]
                        with m.Else():
                            m.d.sync += writing.eq(0)
                        with m.If(new_pixel_tile):
                            next_pixel_tile()
        return m
