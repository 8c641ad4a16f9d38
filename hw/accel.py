"""`Accelerator`: the controller, buffers and host port around `BinaryCore`.

It executes the instruction set of docs/isa.md (version 1: one instruction at a time, to completion):

* CONV: three engines overlap. Per tile of `cols` output pixels, the gather engine copies each
  column's receptive field (all activation bases) from the activation buffer into one of two patch
  banks, substituting the padding word outside the map; the issue unit streams a filled bank as one
  beat per cycle (weight entry + the C patch words) for every (output tile, weight basis, activation
  basis, K-word) into the core while the gather fills the other bank; the writer takes the core's
  results and writes either sums to the result memory (`raw`) or bit-planes to the activation buffer,
  a tile's `rows` channels of one pixel and plane as one R-bit field. `hw/cycles.py` models the three
  exactly.
* POOL: OR over each window, one activation-buffer read per cycle.
* LOAD / SYNC: a LOAD checks its region and queues it (up to `LOAD_QUEUE_DEPTH`); the load engine
  takes each queued load's entries from the `load_in` stream, one per cycle, and writes them through
  the weight / scale / threshold write ports, while CONV and POOL run. SYNC waits until the queue is
  empty and the engine idle; so does END. An error flushes the queue.
* Every instruction is checked before it runs (docs/isa.md "Errors"); a failing check halts with the
  error code, so an illegal program never hangs and never writes.

Derived sizes (products of fields) are computed at the start of each instruction by a short sequence
through one shared multiplier rather than by a dozen multipliers: three cycles a product (operands
registered, product registered, result written), a 32 x 16-bit multiplier whose 48-bit product
saturates to 32 bits, so no field combination can wrap a size into range and every path stays short
(the controller is not the critical path).
"""

from amaranth.hdl import Cat, Const, Module, Mux, ResetInserter, Signal, signed, unsigned
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import AccelConfig
from .core import BinaryCore
from .isa import INSTRUCTION_BITS, LOAD_QUEUE_DEPTH, ErrorCode, Instruction, LoadArgs, MemoryTarget, Opcode
from .layouts import CoreLayouts

__all__ = ["Accelerator", "AccelError", "HostLayouts"]

_ADDR = 24          # width of address arithmetic (signed where padding makes it negative)
_PRODUCT = 32
_OPERAND_B = 16     # the second operand of every set-up product is a field or a small derived value


class AccelError(ValueError):
    """The accelerator cannot be built for this config."""


class HostLayouts:
    """The host port's payload layouts for one config (drivers encode with these)."""

    def __init__(self, config):
        r, w = config.rows, config.word_bits
        core = CoreLayouts(config)
        self.data_bits = max(INSTRUCTION_BITS, r * w, core.scale_entry.size, core.thr_entry.size,
                             config.acc_bits)
        self.write = data.StructLayout({"mem": MemoryTarget, "addr": 16, "data": self.data_bits})
        self.read = data.StructLayout({"mem": MemoryTarget, "addr": 16})
        self.resp = data.StructLayout({"data": self.data_bits})
        self.load = data.StructLayout({"data": self.data_bits})


class Accelerator(wiring.Component):
    """The accelerator top.

    Ports
    -----
    host_write : In(stream {mem: MemoryTarget, addr: 16, data: data_bits})  writes one entry of a
                 memory (data holds the entry in its low bits, in the memory's layout: a weight entry
                 is `rows` words, lane r in bits r*W ..; scale and threshold entries use
                 `CoreLayouts.scale_entry` / `thr_entry`). Ready only while idle.
    read_req   : In(stream {mem: MemoryTarget, addr: 16})  reads one ACT or RESULT entry while idle.
    read_resp  : Out(stream {data: data_bits})  the entry, zero-extended (sums sign-extended).
    load_in    : In(stream {data: data_bits})  the entries LOAD instructions consume, in program order,
                 each in host_write's data format for the LOAD's memory. Ready while a load is active.
    start      : In(1)   pulse: run the program from address 0.
    busy       : Out(1)  a program is running.
    done       : Out(1)  the last program ended (END or an error) and nothing started since.
    error      : Out(ErrorCode)  why the last program stopped, NONE after END.
    cycles     : Out(32) cycles the last (or current) program has run.
    pc         : Out(16) program counter of the instruction running or the one that failed.
    """

    @staticmethod
    def check_config(config):
        """Raise AccelError (one line) when the accelerator cannot be built for `config`."""
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Config must be an AccelConfig, not {config!r}")
        w, r = config.word_bits, config.rows
        if w & (w - 1):
            raise AccelError(f"The accelerator needs word_bits to be a power of two, not {w}")
        if w % r:
            raise AccelError(f"The accelerator needs rows to divide word_bits (the writer stores a tile's "
                             f"channels as one field of a word), not rows={r} with word_bits={w}")

    def __init__(self, config):
        self.check_config(config)
        self._config = config
        self.core_layouts = CoreLayouts(config)
        host = HostLayouts(config)
        self.data_bits = host.data_bits
        self.write_layout, self.read_layout = host.write, host.read
        super().__init__({
            "host_write": In(stream.Signature(host.write)),
            "read_req": In(stream.Signature(host.read)),
            "read_resp": Out(stream.Signature(host.resp)),
            "load_in": In(stream.Signature(host.load)),
            "start": In(1),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(ErrorCode),
            "cycles": Out(32),
            "pc": Out(16),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        R, C, W = cfg.rows, cfg.cols, cfg.word_bits
        log_r = R.bit_length() - 1 if R & (R - 1) == 0 else None
        lay = self.core_layouts

        m.submodules.core = core = BinaryCore(cfg)
        m.submodules.prog = prog = memory.Memory(shape=INSTRUCTION_BITS, depth=cfg.instr_depth, init=[])
        m.submodules.act = act = memory.Memory(shape=W, depth=cfg.act_depth, init=[])
        m.submodules.weight = weight = memory.Memory(
            shape=data.ArrayLayout(W, R), depth=cfg.weight_depth, init=[])
        m.submodules.result = result = memory.Memory(
            shape=signed(cfg.acc_bits), depth=cfg.result_depth, init=[])
        patches = []
        for c in range(C):
            # Two banks: the gather fills one while the issue unit reads the other.
            patch = memory.Memory(shape=W, depth=2 * cfg.patch_depth, init=[])
            m.submodules[f"patch{c}"] = patch
            patches.append(patch)

        prog_w, prog_r = prog.write_port(), prog.read_port()
        act_w, act_r = act.write_port(granularity=R), act.read_port()
        weight_w, weight_r = weight.write_port(), weight.read_port()
        result_w, result_r = result.write_port(), result.read_port()
        patch_w = [p.write_port() for p in patches]
        patch_r = [p.read_port() for p in patches]
        all_granules = (1 << (W // R)) - 1

        # ---------------------------------------------------------------- status
        busy = Signal()
        m.d.comb += [self.busy.eq(busy)]
        with m.If(busy):
            m.d.sync += self.cycles.eq(self.cycles + 1)

        # ---------------------------------------------------------------- host port (idle only)
        hw_p = self.host_write.payload
        m.d.comb += self.host_write.ready.eq(~busy)
        host_wr = self.host_write.valid & ~busy

        # ---------------------------------------------------------------- load queue and engine
        # The weight, scale and threshold write ports belong to the host while idle and to the load
        # engine while a program runs (a load is only ever active while busy).
        load_flush = Signal()
        m.submodules.load_queue = load_queue = ResetInserter(load_flush)(
            fifo.SyncFIFO(width=LoadArgs.size, depth=LOAD_QUEUE_DEPTH))
        queued = Signal(LoadArgs)
        l_active = Signal()
        l_mem = Signal(MemoryTarget)
        l_addr = Signal(16)
        l_left = Signal(LoadArgs["count"].shape)
        loads_idle = Signal()
        m.d.comb += [queued.eq(load_queue.r_data), loads_idle.eq(~l_active & ~load_queue.r_rdy)]
        with m.If(load_flush):
            m.d.sync += l_active.eq(0)
        with m.Elif(~l_active & load_queue.r_rdy):
            m.d.comb += load_queue.r_en.eq(1)
            m.d.sync += [l_active.eq(1), l_mem.eq(queued.mem), l_addr.eq(queued.addr),
                         l_left.eq(queued.count)]
        # `ready` is a register, not a function of the FSM (the host link's stream logic hangs off
        # it): in the cycle an error flushes the queue the active load may still take an entry, which
        # lands inside that load's checked region.
        m.d.comb += self.load_in.ready.eq(l_active)
        l_take = Signal()
        m.d.comb += l_take.eq(self.load_in.valid & self.load_in.ready)
        with m.If(l_take):
            m.d.sync += [l_addr.eq(l_addr + 1), l_left.eq(l_left - 1)]
            with m.If(l_left == 1):
                m.d.sync += l_active.eq(0)
        ld_data = self.load_in.payload.data
        w_addr = Mux(l_active, l_addr, hw_p.addr)
        w_data = Mux(l_active, ld_data, hw_p.data)

        def written(target):
            return (host_wr & (hw_p.mem == target)) | (l_take & (l_mem == target))

        m.d.comb += [
            prog_w.addr.eq(hw_p.addr), prog_w.data.eq(hw_p.data[:INSTRUCTION_BITS]),
            prog_w.en.eq(host_wr & (hw_p.mem == MemoryTarget.PROGRAM)),
            weight_w.addr.eq(w_addr), weight_w.data.eq(w_data[:R * W]),
            weight_w.en.eq(written(MemoryTarget.WEIGHT)),
            core.scale_write.valid.eq(written(MemoryTarget.SCALE)),
            core.scale_write.payload.addr.eq(w_addr),
            core.scale_write.payload.scales.eq(w_data[:lay.scale_entry.size]),
            core.thr_write.valid.eq(written(MemoryTarget.THRESHOLD)),
            core.thr_write.payload.addr.eq(w_addr),
            core.thr_write.payload.entry.eq(w_data[:lay.thr_entry.size]),
        ]

        resp_pending = Signal()
        resp_mem = Signal(MemoryTarget)
        m.d.comb += self.read_req.ready.eq(~busy & ~resp_pending)
        with m.If(self.read_req.valid & self.read_req.ready):
            m.d.sync += [resp_pending.eq(1), resp_mem.eq(self.read_req.payload.mem)]
        with m.If(self.read_resp.valid & self.read_resp.ready):
            m.d.sync += resp_pending.eq(0)
        m.d.comb += [
            self.read_resp.valid.eq(resp_pending),
            self.read_resp.payload.data.eq(Mux(resp_mem == MemoryTarget.RESULT,
                                               result_r.data.as_signed(), act_r.data)),
            result_r.addr.eq(self.read_req.payload.addr),
            result_r.en.eq(self.read_req.valid & self.read_req.ready),
        ]

        # Shared activation-buffer ports: host when idle, else the running instruction.
        host_act_read = self.read_req.valid & self.read_req.ready
        act_r_addr = Signal(range(cfg.act_depth))
        act_r_en = Signal()
        act_w_addr = Signal(range(cfg.act_depth))
        act_w_data = Signal(W)
        act_w_en = Signal(W // R)
        m.d.comb += [
            act_r.addr.eq(Mux(busy, act_r_addr, self.read_req.payload.addr)),
            act_r.en.eq(Mux(busy, act_r_en, host_act_read)),
            act_w.addr.eq(Mux(busy, act_w_addr, hw_p.addr)),
            act_w.data.eq(Mux(busy, act_w_data, hw_p.data[:W])),
            act_w.en.eq(Mux(busy, act_w_en,
                            Mux(host_wr & (hw_p.mem == MemoryTarget.ACT), all_granules, 0))),
        ]
        res_w_addr = Signal(range(cfg.result_depth))
        res_w_data = Signal(signed(cfg.acc_bits))
        res_w_en = Signal()
        m.d.comb += [
            result_w.addr.eq(Mux(busy, res_w_addr, hw_p.addr)),
            result_w.data.eq(Mux(busy, res_w_data, hw_p.data[:cfg.acc_bits])),
            result_w.en.eq(Mux(busy, res_w_en, host_wr & (hw_p.mem == MemoryTarget.RESULT))),
        ]

        # ---------------------------------------------------------------- instruction register
        pc = Signal(range(cfg.instr_depth + 1))
        m.d.comb += self.pc.eq(pc)
        ins = Signal(Instruction)
        cv = ins.args.conv
        pl = ins.args.pool
        ld = ins.args.load

        # Derived values, filled by the set-up sequence.
        def reg(name, shape=unsigned(_PRODUCT)):
            return Signal(shape, name=name)

        khw, kwords, npix, row_words, plane_words = (reg(n) for n in
                                                     ("khw", "kwords", "npix", "row_words", "plane_words"))
        in_need, patch_need, kvalid, otm, w_need, s_need = (reg(n) for n in
                                                            ("in_need", "patch_need", "kvalid", "otm",
                                                             "w_need", "s_need"))
        res_need, out_plane_words, out_need, step_x, step_y = (reg(n) for n in
                                                               ("res_need", "out_plane_words", "out_need",
                                                                "step_x", "step_y"))
        span_h, span_w, pad_rows, pad_cols = (reg(n) for n in ("span_h", "span_w", "pad_rows", "pad_cols"))
        tile_res_step, tile_out_step = reg("tile_res_step"), reg("tile_out_step")
        # POOL.
        p_row, p_plane, p_in_need, p_out_plane, p_out_need, p_step_y, p_step_x = (
            reg(n) for n in ("p_row", "p_plane", "p_in_need", "p_out_plane", "p_out_need",
                             "p_step_y", "p_step_x"))

        # R divides W, a power of two, so R is one too. Registered: valid from the first set-up cycle.
        out_tiles = Signal(range((1 << 12) // R + 2))
        m.d.sync += out_tiles.eq((cv.out_ch + (R - 1)) >> log_r)

        conv_steps = [
            (khw, cv.kh, cv.kw),
            (kwords, khw, cv.in_cw),
            (npix, cv.out_h, cv.out_w),
            (row_words, cv.in_w, cv.in_stride),
            (plane_words, row_words, cv.in_h),
            (in_need, plane_words, cv.in_planes),
            (patch_need, kwords, cv.in_planes),
            (kvalid, khw, cv.in_tail),             # + (kwords - khw) * W in the check
            (otm, out_tiles, cv.wbases),
            (w_need, kwords, otm[:_OPERAND_B]),   # otm = ceil(out_ch / R) * wbases < 2^16
            (s_need, otm, cv.in_planes),
            (res_need, npix, cv.out_ch),
            (out_plane_words, npix, cv.out_stride),
            (out_need, out_plane_words, cv.out_planes),
            (step_x, cv.stride, cv.in_stride),
            (step_y, row_words, cv.stride),
            (span_h, cv.out_h - 1, cv.stride),
            (span_w, cv.out_w - 1, cv.stride),
            (pad_rows, row_words, cv.pad),
            (pad_cols, cv.pad, cv.in_stride),
            (tile_res_step, Const(C, 8), cv.out_ch),
            (tile_out_step, Const(C, 8), cv.out_stride),
        ]
        pool_steps = [
            (p_row, pl.in_w, pl.cw),
            (p_plane, p_row, pl.in_h),
            (p_in_need, p_plane, pl.planes),
            (p_out_plane, pl.out_h, pl.out_w),
            (p_out_plane, p_out_plane, pl.cw),
            (p_out_need, p_out_plane, pl.planes),
            (p_step_y, p_row, pl.stride),
            (p_step_x, pl.stride, pl.cw),
            (span_h, pl.out_h - 1, pl.stride),
            (span_w, pl.out_w - 1, pl.stride),
        ]
        step = Signal(range(max(len(conv_steps), len(pool_steps)) + 1))
        phase = Signal(range(3))
        mul_a = Signal(_PRODUCT)
        mul_b = Signal(_OPERAND_B)
        product = Signal(_PRODUCT + _OPERAND_B)
        saturated = Signal(_PRODUCT)
        m.d.sync += product.eq(mul_a * mul_b)
        m.d.comb += saturated.eq(Mux(product[_PRODUCT:].any(), (1 << _PRODUCT) - 1, product[:_PRODUCT]))
        for _, _, b in conv_steps + pool_steps:
            assert len(b) <= _OPERAND_B, b

        def run_steps(steps, next_state):
            """Phase 0 registers the step's operands, phase 1 multiplies, phase 2 writes the result."""
            m.d.sync += phase.eq(Mux(phase == 2, 0, phase + 1))
            with m.Switch(step):
                for i, (dest, a, b) in enumerate(steps):
                    with m.Case(i):
                        with m.If(phase == 0):
                            m.d.sync += [mul_a.eq(a), mul_b.eq(b)]
                        with m.If(phase == 2):
                            m.d.sync += dest.eq(saturated)
            with m.If(phase == 2):
                m.d.sync += step.eq(step + 1)
                with m.If(step == len(steps) - 1):
                    m.d.sync += step.eq(0)
                    m.next = next_state

        # Checks (docs/isa.md "Errors"), evaluated in the CHECK states from registered values into
        # `bad_r` / `range_r`, which the DECIDE states act on.
        kwords_m1 = reg("kwords_m1")          # kwords - 1, registered for the issue unit's loop test
        # Loop bounds minus one, registered by the CHECK states so that the engines' "last
        # iteration" tests compare two registers (no subtractor from the instruction register).
        cw_m1 = Signal(8)                     # CONV in_cw, POOL cw
        kw_m1 = Signal(10)                    # CONV kw, POOL kernel
        kh_m1 = Signal(10)                    # CONV kh, POOL kernel
        np_m1 = Signal(4)                     # CONV in_planes, POOL planes
        ow_m1 = Signal(10)                    # out_w
        oh_m1 = Signal(10)                    # POOL out_h
        wb_m1 = Signal(4)                     # CONV wbases
        op_m1 = Signal(4)                     # CONV out_planes
        ot_m1 = Signal.like(out_tiles)        # CONV output tiles
        # Each check is its own bit: the CHECK states register the bits, the DECIDE states OR them,
        # so no adder-comparator feeds an OR tree in the same cycle.
        conv_bad = Cat(
            (cv.in_h == 0) | (cv.in_w == 0) | (cv.in_cw == 0) | (cv.in_planes == 0) | (cv.kh == 0),
            (cv.kw == 0) | (cv.stride == 0) | (cv.out_h == 0) | (cv.out_w == 0) | (cv.out_ch == 0),
            (cv.wbases == 0) | (cv.in_stride < cv.in_cw) | (cv.in_tail == 0) | (cv.in_tail > W),
            cv.k > cfg.max_k, cv.k != ((kwords - khw) << (W.bit_length() - 1)) + kvalid,
            cv.wbases > cfg.max_wbases,
            span_h + cv.kh > cv.in_h + 2 * cv.pad, span_w + cv.kw > cv.in_w + 2 * cv.pad,
            ~cv.raw & ((cv.out_planes == 0) | (cv.out_planes > cfg.max_abases) | ((cv.out_ch_base % R) != 0)),
            ~cv.raw & (cv.out_ch_base + cv.out_ch > cv.out_stride * W))
        conv_range = Cat(
            cv.in_base + in_need > cfg.act_depth, patch_need > cfg.patch_depth,
            cv.w_base + w_need > cfg.weight_depth, cv.s_base + s_need > cfg.scale_depth,
            cv.t_base + out_tiles * R > cfg.thr_depth,
            cv.raw & (cv.out_base + res_need > cfg.result_depth),
            ~cv.raw & (cv.out_base + out_need > cfg.act_depth))
        pool_bad = Cat(
            (pl.in_h == 0) | (pl.in_w == 0) | (pl.cw == 0) | (pl.planes == 0) | (pl.kernel == 0),
            (pl.stride == 0) | (pl.out_h == 0) | (pl.out_w == 0),
            span_h + pl.kernel > pl.in_h, span_w + pl.kernel > pl.in_w)
        pool_range = Cat(pl.in_base + p_in_need > cfg.act_depth, pl.out_base + p_out_need > cfg.act_depth)
        bad_r = Signal(max(len(conv_bad), len(pool_bad)))
        range_r = Signal(max(len(conv_range), len(pool_range)))

        # ---------------------------------------------------------------- CONV: gather state
        # The current pixel (advances one per column, across tiles).
        g_oy = Signal(range(1 << 10))
        g_ox = Signal(range(1 << 10))
        g_iy = Signal(signed(_ADDR))          # oy * stride - pad
        g_ix = Signal(signed(_ADDR))
        g_pix = Signal(signed(_ADDR))         # in_base + iy * row_words + ix * in_stride
        g_row = Signal(signed(_ADDR))         # the same for ox = 0
        g_col = Signal(range(C))
        g_n = Signal(4)
        g_ky = Signal(10)
        g_kx = Signal(10)
        g_cw = Signal(8)
        g_an = Signal(signed(_ADDR))          # g_pix + n * plane_words
        g_aky = Signal(signed(_ADDR))         # + ky * row_words
        g_akx = Signal(signed(_ADDR))         # + kx * in_stride
        g_iyk = Signal(signed(_ADDR))         # g_iy + ky
        g_ixk = Signal(signed(_ADDR))         # g_ix + kx
        g_pw = Signal(range(cfg.patch_depth + 1))
        g_p0 = Signal(_PRODUCT)               # first pixel of the tile being gathered
        g_more = Signal()                     # g_p0 < npix, registered with every change of g_p0
        g_bank = Signal()                     # patch bank the gather fills
        c_bank = Signal()                     # patch bank the issue unit reads
        bank_full = Signal(2)                 # bank b holds a gathered tile not yet issued
        # Gather pipeline stage 1 (act data arrives).
        g1_valid = Signal()
        g1_pad = Signal()
        g1_col = Signal(range(C))
        g1_pw = Signal(range(2 * cfg.patch_depth + 1))
        pad_word = Signal(W)
        m.d.comb += pad_word.eq(Mux(cv.pad_value, (1 << W) - 1, 0))
        for c in range(C):
            m.d.comb += [
                patch_w[c].addr.eq(g1_pw),
                patch_w[c].data.eq(Mux(g1_pad, pad_word, act_r.data)),
                patch_w[c].en.eq(g1_valid & (g1_col == c)),
            ]
        m.d.sync += g1_valid.eq(0)

        def advance_pixel():
            """Move the current pixel one to the right, wrapping to the next output row."""
            with m.If(g_ox == ow_m1):
                m.d.sync += [
                    g_ox.eq(0), g_oy.eq(g_oy + 1),
                    g_ix.eq(-cv.pad), g_iy.eq(g_iy + cv.stride),
                    g_pix.eq(g_row + step_y), g_row.eq(g_row + step_y),
                ]
            with m.Else():
                m.d.sync += [
                    g_ox.eq(g_ox + 1), g_ix.eq(g_ix + cv.stride), g_pix.eq(g_pix + step_x),
                ]

        # ---------------------------------------------------------------- CONV: issue state
        i_ot = Signal(range(1 << 12))         # output tile index
        i_m = Signal(4)
        i_n = Signal(4)
        i_j = Signal(_PRODUCT)
        i_cwj = Signal(8)
        i_wstart = Signal(_PRODUCT)           # weight entry of (ot, m, j = 0)
        i_waddr = Signal(_PRODUCT)
        i_pstart = Signal(_PRODUCT)           # patch word of (n, j = 0)
        i_paddr = Signal(_PRODUCT)
        i_saddr = Signal(_PRODUCT)
        i_taddr = Signal(_PRODUCT)
        i_active = Signal()
        conv_running = Signal()
        i_pbase = Signal(range(cfg.patch_depth + 1))   # first word of the bank being read
        # Stage 1: the weight and patch memories' read data; stage 2: that data registered, offered
        # to the core. The register keeps the block RAMs' output delay and their depth multiplexers
        # out of the array edge's path. Both stages move together when the core takes a beat.
        b_ctl_layout = data.StructLayout({"nbits": range(W + 1), "first": 1, "last": 1, "info": lay.pass_info})
        b_valid = Signal()
        b_ctl = Signal(b_ctl_layout)
        c_valid = Signal()
        c_ctl = Signal(b_ctl_layout)
        c_w = Signal(data.ArrayLayout(W, R))
        c_a = Signal(data.ArrayLayout(W, C))
        advance = Signal()
        m.d.comb += advance.eq(~c_valid | core.beats.ready)
        m.d.comb += [
            weight_r.addr.eq(i_waddr),
            weight_r.en.eq(advance),
        ]
        for c in range(C):
            m.d.comb += [patch_r[c].addr.eq(i_paddr), patch_r[c].en.eq(advance)]
        m.d.comb += [
            core.beats.valid.eq(c_valid),
            core.beats.payload.w.eq(c_w),
            core.beats.payload.a.eq(c_a),
            core.beats.payload.nbits.eq(c_ctl.nbits),
            core.beats.payload.first.eq(c_ctl.first),
            core.beats.payload.last.eq(c_ctl.last),
            core.beats.payload.info.eq(c_ctl.info),
        ]
        with m.If(advance):
            m.d.sync += [c_valid.eq(b_valid), c_ctl.eq(b_ctl), c_w.eq(weight_r.data)]
            m.d.sync += [c_a[c].eq(patch_r[c].data) for c in range(C)]
            m.d.sync += b_valid.eq(i_active)
            j_last = i_j == kwords_m1
            m.d.sync += [
                b_ctl.nbits.eq(Mux(i_cwj == cw_m1, cv.in_tail, W)),
                b_ctl.first.eq(i_j == 0),
                b_ctl.last.eq(j_last),
                b_ctl.info.k.eq(cv.k),
                b_ctl.info.first_pass.eq((i_m == 0) & (i_n == 0)),
                b_ctl.info.last_pass.eq((i_m == wb_m1) & (i_n == np_m1)),
                b_ctl.info.raw.eq(cv.raw),
                b_ctl.info.scale_addr.eq(i_saddr),
                b_ctl.info.thr_addr.eq(i_taddr),
            ]
            with m.If(i_active):
                # Step the loops: j innermost, then n, m, ot.
                with m.If(~j_last):
                    m.d.sync += [i_j.eq(i_j + 1), i_waddr.eq(i_waddr + 1), i_paddr.eq(i_paddr + 1),
                                 i_cwj.eq(Mux(i_cwj == cw_m1, 0, i_cwj + 1))]
                with m.Else():
                    m.d.sync += [i_j.eq(0), i_cwj.eq(0), i_saddr.eq(i_saddr + 1)]
                    with m.If(i_n != np_m1):
                        m.d.sync += [i_n.eq(i_n + 1), i_waddr.eq(i_wstart),
                                     i_pstart.eq(i_pstart + kwords), i_paddr.eq(i_pstart + kwords)]
                    with m.Else():
                        m.d.sync += [i_n.eq(0), i_pstart.eq(i_pbase), i_paddr.eq(i_pbase),
                                     i_wstart.eq(i_wstart + kwords), i_waddr.eq(i_wstart + kwords)]
                        with m.If(i_m != wb_m1):
                            m.d.sync += i_m.eq(i_m + 1)
                        with m.Else():
                            m.d.sync += [i_m.eq(0), i_ot.eq(i_ot + 1), i_taddr.eq(i_taddr + R)]
                            with m.If(i_ot == ot_m1):
                                # Every patch word of this tile has been read: the bank is free.
                                m.d.sync += [i_active.eq(0), c_bank.eq(~c_bank)]
                                for b in range(2):
                                    with m.If(c_bank == b):
                                        m.d.sync += bank_full[b].eq(0)

        # Start issuing a tile as soon as its bank is full.
        with m.If(conv_running & ~i_active & bank_full.bit_select(c_bank, 1)):
            bank_base = Mux(c_bank, cfg.patch_depth, 0)
            m.d.sync += [
                i_active.eq(1), i_ot.eq(0), i_m.eq(0), i_n.eq(0), i_j.eq(0), i_cwj.eq(0),
                i_wstart.eq(cv.w_base), i_waddr.eq(cv.w_base), i_pbase.eq(bank_base),
                i_pstart.eq(bank_base), i_paddr.eq(bank_base),
                i_saddr.eq(cv.s_base), i_taddr.eq(cv.t_base),
            ]

        # ---------------------------------------------------------------- CONV: writer
        res = core.results.payload
        wr_tiles = Signal(range(1 << 12))     # output tiles of this pixel tile written
        wr_row = Signal(range(R + 1))
        wr_col = Signal(range(C + 1))
        wr_plane = Signal(4)
        wr_o0 = Signal(range(1 << 13))        # first channel of the tile being written
        wr_p0 = Signal(_PRODUCT)              # first pixel of the pixel tile
        wr_res_tile = Signal(_PRODUCT)        # out_base + p0 * out_ch
        wr_res_addr = Signal(_PRODUCT)
        wr_out_tile = Signal(_PRODUCT)        # out_base + p0 * out_stride
        wr_out_pix = Signal(_PRODUCT)
        wr_out_addr = Signal(_PRODUCT)
        wr_word = Signal(8)                   # (o0 + out_ch_base) // W
        wr_field = Signal(range(W // R + 1))  # ((o0 + out_ch_base) % W) // R
        bits_buf = [Signal(data.ArrayLayout(cfg.max_abases, C), name=f"bits_buf{r}") for r in range(R)]
        wr_writing = Signal()

        def next_pixel_tile():
            """The writer finished a pixel tile's last output tile: move to the next pixel tile."""
            m.d.sync += [
                wr_tiles.eq(0), wr_o0.eq(0), wr_col.eq(0),
                wr_word.eq(cv.out_ch_base // W), wr_field.eq((cv.out_ch_base % W) // R),
                wr_p0.eq(wr_p0 + C), wr_res_tile.eq(wr_res_tile + tile_res_step),
                wr_res_addr.eq(wr_res_tile + tile_res_step),
                wr_out_tile.eq(wr_out_tile + tile_out_step),
            ]

        m.d.comb += [res_w_en.eq(0), act_w_en.eq(0), act_r_en.eq(0)]
        with m.If(conv_running & cv.raw):
            # One sum per cycle; the row is taken after its last column.
            o = wr_o0 + res.row
            p = wr_p0 + wr_col
            m.d.comb += [
                res_w_addr.eq(wr_res_addr),
                res_w_data.eq(res.acc[wr_col[:max(1, (C - 1).bit_length())]] if C > 1 else res.acc[0]),
                res_w_en.eq(core.results.valid & (o < cv.out_ch) & (p < npix)),
            ]
            with m.If(core.results.valid):
                with m.If(wr_col == C - 1):
                    m.d.comb += core.results.ready.eq(1)
                    m.d.sync += wr_col.eq(0)
                    with m.If(res.last):
                        m.d.sync += [wr_o0.eq(wr_o0 + R), wr_tiles.eq(wr_tiles + 1),
                                     wr_res_addr.eq(wr_res_tile + wr_o0 + R)]
                        with m.If(wr_tiles == ot_m1):
                            next_pixel_tile()
                    with m.Else():
                        m.d.sync += wr_res_addr.eq(wr_res_tile + o + 1)
                with m.Else():
                    m.d.sync += [wr_col.eq(wr_col + 1), wr_res_addr.eq(wr_res_addr + cv.out_ch)]
        with m.Elif(conv_running):
            with m.If(~wr_writing):
                m.d.comb += core.results.ready.eq(1)
                with m.If(core.results.valid):
                    for r in range(R):
                        with m.If(res.row == r):
                            m.d.sync += bits_buf[r].eq(res.bits)
                    with m.If(res.last):
                        m.d.sync += [wr_writing.eq(1), wr_col.eq(0), wr_plane.eq(0),
                                     wr_out_pix.eq(wr_out_tile), wr_out_addr.eq(wr_out_tile + wr_word)]
            with m.Else():
                col = wr_col[:max(1, (C - 1).bit_length())]
                field = Signal(R)
                for r in range(R):
                    bit = Signal(name=f"field_bit{r}")
                    m.d.comb += bit.eq(
                        Mux(wr_o0 + r < cv.out_ch,
                            (bits_buf[r][col] >> wr_plane)[0] if C > 1 else (bits_buf[r][0] >> wr_plane)[0],
                            0))
                    m.d.comb += field[r].eq(bit)
                p = wr_p0 + wr_col
                m.d.comb += [
                    act_w_addr.eq(wr_out_addr),
                    act_w_data.eq(Cat(*([field] * (W // R)))),
                    act_w_en.eq(Mux(p < npix, Const(1, W // R) << wr_field, 0)),
                ]
                with m.If(wr_plane != op_m1):
                    m.d.sync += [wr_plane.eq(wr_plane + 1), wr_out_addr.eq(wr_out_addr + out_plane_words)]
                with m.Else():
                    m.d.sync += [wr_plane.eq(0), wr_col.eq(wr_col + 1),
                                 wr_out_pix.eq(wr_out_pix + cv.out_stride),
                                 wr_out_addr.eq(wr_out_pix + cv.out_stride + wr_word)]
                    with m.If(wr_col == C - 1):
                        m.d.sync += [wr_writing.eq(0), wr_o0.eq(wr_o0 + R), wr_tiles.eq(wr_tiles + 1)]
                        with m.If(wr_field == W // R - 1):
                            m.d.sync += [wr_field.eq(0), wr_word.eq(wr_word + 1)]
                        with m.Else():
                            m.d.sync += wr_field.eq(wr_field + 1)
                        with m.If(wr_tiles == ot_m1):
                            next_pixel_tile()

        # ---------------------------------------------------------------- POOL state
        q_t = Signal(4)
        q_py = Signal(10)
        q_px = Signal(10)
        q_cw = Signal(8)
        q_ky = Signal(4)
        q_kx = Signal(4)
        q_at = Signal(_PRODUCT)               # in_base + t * plane
        q_apy = Signal(_PRODUCT)              # + py * step_y
        q_apx = Signal(_PRODUCT)              # + px * step_x
        q_aky = Signal(_PRODUCT)              # + cw + ky * row
        q_akx = Signal(_PRODUCT)              # + kx * cw
        q_out = Signal(_PRODUCT)
        q_issue = Signal()
        q1_valid = Signal()
        q1_first = Signal()
        q1_last = Signal()
        q1_out = Signal(_PRODUCT)
        q_acc = Signal(W)
        pool_running = Signal()
        m.d.sync += q1_valid.eq(0)
        with m.If(pool_running):
            ored = Signal(W)
            m.d.comb += ored.eq(Mux(q1_first, act_r.data, q_acc | act_r.data))
            with m.If(q1_valid):
                m.d.sync += q_acc.eq(ored)
                with m.If(q1_last):
                    m.d.comb += [act_w_addr.eq(q1_out), act_w_data.eq(ored), act_w_en.eq(all_granules)]

        def start_pixel():
            """Point the gather's running addresses at the current pixel's first (n, ky, kx)."""
            m.d.sync += [g_an.eq(g_pix), g_aky.eq(g_pix), g_akx.eq(g_pix), g_iyk.eq(g_iy), g_ixk.eq(g_ix)]

        # ---------------------------------------------------------------- CONV: gather engine
        # Fills the free patch bank with the next pixel tile while the issue unit reads the other.
        with m.FSM(name="gather"):
            with m.State("IDLE"):
                with m.If(conv_running & g_more & ~bank_full.bit_select(g_bank, 1)):
                    m.d.sync += [
                        g_col.eq(0), g_n.eq(0), g_ky.eq(0), g_kx.eq(0), g_cw.eq(0),
                        g_pw.eq(Mux(g_bank, cfg.patch_depth, 0)),
                    ]
                    start_pixel()
                    m.next = "RUN"
            with m.State("RUN"):
                addr = g_akx + g_cw
                inside = (g_iyk >= 0) & (g_iyk < cv.in_h) & (g_ixk >= 0) & (g_ixk < cv.in_w)
                m.d.comb += [act_r_addr.eq(addr[:len(act_r_addr)]), act_r_en.eq(inside)]
                m.d.sync += [g1_valid.eq(1), g1_pad.eq(~inside), g1_col.eq(g_col), g1_pw.eq(g_pw),
                             g_pw.eq(g_pw + 1)]
                # Loops: cw innermost, then kx, ky, n, then the column.
                with m.If(g_cw != cw_m1):
                    m.d.sync += g_cw.eq(g_cw + 1)
                with m.Else():
                    m.d.sync += g_cw.eq(0)
                    with m.If(g_kx != kw_m1):
                        m.d.sync += [g_kx.eq(g_kx + 1), g_akx.eq(g_akx + cv.in_stride),
                                     g_ixk.eq(g_ixk + 1)]
                    with m.Else():
                        m.d.sync += [g_kx.eq(0), g_ixk.eq(g_ix)]
                        with m.If(g_ky != kh_m1):
                            m.d.sync += [g_ky.eq(g_ky + 1), g_aky.eq(g_aky + row_words),
                                         g_akx.eq(g_aky + row_words), g_iyk.eq(g_iyk + 1)]
                        with m.Else():
                            m.d.sync += [g_ky.eq(0), g_iyk.eq(g_iy)]
                            with m.If(g_n != np_m1):
                                m.d.sync += [g_n.eq(g_n + 1), g_an.eq(g_an + plane_words),
                                             g_aky.eq(g_an + plane_words), g_akx.eq(g_an + plane_words)]
                            with m.Else():
                                # Next column: the next pixel.
                                m.d.sync += [g_n.eq(0), g_pw.eq(Mux(g_bank, cfg.patch_depth, 0)),
                                             g_col.eq(Mux(g_col == C - 1, 0, g_col + 1))]
                                advance_pixel()
                                m.next = "NEXT_COLUMN"
            with m.State("NEXT_COLUMN"):
                start_pixel()
                with m.If(g_col == 0):      # wrapped: all C columns gathered (the last word lands now)
                    m.d.sync += [g_p0.eq(g_p0 + C), g_more.eq(g_p0 + C < npix), g_bank.eq(~g_bank)]
                    for b in range(2):
                        with m.If(g_bank == b):
                            m.d.sync += bank_full[b].eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.next = "RUN"

        # ---------------------------------------------------------------- main FSM
        done_r = Signal()
        error_r = Signal(ErrorCode)
        m.d.comb += [self.done.eq(done_r), self.error.eq(error_r)]

        def fail(code):
            m.d.sync += [error_r.eq(code), done_r.eq(1), busy.eq(0)]
            m.d.comb += load_flush.eq(1)
            m.next = "IDLE"

        def finish():
            m.d.sync += [done_r.eq(1), busy.eq(0)]
            m.next = "IDLE"

        def fail_on_checks():
            """A DECIDE state's first branches: halt on a registered check bit (BAD_FIELD before
            OUT_OF_RANGE); the caller's `m.Elif` / `m.Else` follows."""
            with m.If(bad_r.any()):
                fail(ErrorCode.BAD_FIELD)
            with m.Elif(range_r.any()):
                fail(ErrorCode.OUT_OF_RANGE)

        load_bad = Signal()
        load_range = Signal()
        load_depth = Mux(ld.mem == MemoryTarget.WEIGHT, cfg.weight_depth,
                         Mux(ld.mem == MemoryTarget.SCALE, cfg.scale_depth, cfg.thr_depth))
        m.d.comb += [
            load_bad.eq((ld.count == 0) | ~((ld.mem == MemoryTarget.WEIGHT) | (ld.mem == MemoryTarget.SCALE) |
                                            (ld.mem == MemoryTarget.THRESHOLD))),
            load_range.eq(ld.addr + ld.count > load_depth),
            load_queue.w_data.eq(ld.as_value()),
        ]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [busy.eq(1), done_r.eq(0), error_r.eq(ErrorCode.NONE), pc.eq(0),
                                 self.cycles.eq(0)]
                    m.next = "FETCH"
            with m.State("FETCH"):
                with m.If(pc == cfg.instr_depth):
                    fail(ErrorCode.PROGRAM_END)
                with m.Else():
                    m.d.comb += [prog_r.addr.eq(pc), prog_r.en.eq(1)]
                    m.next = "LATCH"
            with m.State("LATCH"):
                m.d.sync += ins.eq(prog_r.data)
                m.next = "DECODE"
            with m.State("DECODE"):
                with m.Switch(ins.opcode):
                    with m.Case(Opcode.END):
                        with m.If(loads_idle):
                            finish()
                        with m.Else():
                            m.next = "END_WAIT"
                    with m.Case(Opcode.LOAD):
                        m.next = "LOAD_CHECK"
                    with m.Case(Opcode.SYNC):
                        m.next = "SYNC"
                    with m.Case(Opcode.CONV):
                        m.next = "CONV_SETUP"
                    with m.Case(Opcode.POOL):
                        m.next = "POOL_SETUP"
                    with m.Default():
                        fail(ErrorCode.ILLEGAL_OPCODE)
            with m.State("END_WAIT"):
                with m.If(loads_idle):
                    finish()
            with m.State("LOAD_CHECK"):
                m.d.sync += [bad_r.eq(load_bad), range_r.eq(load_range)]
                m.next = "LOAD_DECIDE"
            with m.State("LOAD_DECIDE"):
                fail_on_checks()
                with m.Elif(load_queue.w_rdy):
                    m.d.comb += load_queue.w_en.eq(1)
                    m.d.sync += pc.eq(pc + 1)
                    m.next = "FETCH"
            with m.State("SYNC"):
                with m.If(loads_idle):
                    m.d.sync += pc.eq(pc + 1)
                    m.next = "FETCH"
            with m.State("CONV_SETUP"):
                run_steps(conv_steps, "CONV_CHECK")
            with m.State("CONV_CHECK"):
                # The checks' adders and comparators end in registers; the next state acts on them.
                m.d.sync += [bad_r.eq(conv_bad), range_r.eq(conv_range), kwords_m1.eq(kwords - 1),
                             cw_m1.eq(cv.in_cw - 1), kw_m1.eq(cv.kw - 1), kh_m1.eq(cv.kh - 1),
                             np_m1.eq(cv.in_planes - 1), ow_m1.eq(cv.out_w - 1), wb_m1.eq(cv.wbases - 1),
                             op_m1.eq(cv.out_planes - 1), ot_m1.eq(out_tiles - 1)]
                m.next = "CONV_DECIDE"
            with m.State("CONV_DECIDE"):
                fail_on_checks()
                with m.Else():
                    start_row = cv.in_base - pad_rows - pad_cols
                    m.d.sync += [
                        g_oy.eq(0), g_ox.eq(0), g_iy.eq(-cv.pad), g_ix.eq(-cv.pad),
                        g_pix.eq(start_row), g_row.eq(start_row), g_p0.eq(0), g_more.eq(npix != 0),
                        g_bank.eq(0), c_bank.eq(0), bank_full.eq(0),
                        wr_p0.eq(0), wr_res_tile.eq(cv.out_base), wr_out_tile.eq(cv.out_base),
                        wr_res_addr.eq(cv.out_base), wr_tiles.eq(0), wr_o0.eq(0), wr_col.eq(0),
                        wr_writing.eq(0),
                        wr_word.eq(cv.out_ch_base // W), wr_field.eq((cv.out_ch_base % W) // R),
                        conv_running.eq(1),
                    ]
                    m.next = "CONV_RUN"
            with m.State("CONV_RUN"):
                # Gather, issue and writer run on their own; the instruction ends with the last write.
                with m.If(wr_p0 >= npix):
                    m.d.sync += [conv_running.eq(0), pc.eq(pc + 1)]
                    m.next = "FETCH"
            with m.State("POOL_SETUP"):
                run_steps(pool_steps, "POOL_CHECK")
            with m.State("POOL_CHECK"):
                m.d.sync += [bad_r.eq(pool_bad), range_r.eq(pool_range),
                             cw_m1.eq(pl.cw - 1), kw_m1.eq(pl.kernel - 1), kh_m1.eq(pl.kernel - 1),
                             np_m1.eq(pl.planes - 1), ow_m1.eq(pl.out_w - 1), oh_m1.eq(pl.out_h - 1)]
                m.next = "POOL_DECIDE"
            with m.State("POOL_DECIDE"):
                fail_on_checks()
                with m.Else():
                    m.d.sync += [
                        q_t.eq(0), q_py.eq(0), q_px.eq(0), q_cw.eq(0), q_ky.eq(0), q_kx.eq(0),
                        q_at.eq(pl.in_base), q_apy.eq(pl.in_base), q_apx.eq(pl.in_base),
                        q_aky.eq(pl.in_base), q_akx.eq(pl.in_base), q_out.eq(pl.out_base),
                        pool_running.eq(1),
                    ]
                    m.next = "POOL"
            with m.State("POOL"):
                first = (q_ky == 0) & (q_kx == 0)
                last_k = (q_ky == kh_m1) & (q_kx == kw_m1)
                m.d.comb += [act_r_addr.eq(q_akx[:len(act_r_addr)]), act_r_en.eq(1)]
                m.d.sync += [q1_valid.eq(1), q1_first.eq(first), q1_last.eq(last_k), q1_out.eq(q_out)]
                with m.If(~last_k):
                    with m.If(q_kx != kw_m1):
                        m.d.sync += [q_kx.eq(q_kx + 1), q_akx.eq(q_akx + pl.cw)]
                    with m.Else():
                        m.d.sync += [q_kx.eq(0), q_ky.eq(q_ky + 1), q_aky.eq(q_aky + p_row),
                                     q_akx.eq(q_aky + p_row)]
                with m.Else():
                    m.d.sync += [q_kx.eq(0), q_ky.eq(0), q_out.eq(q_out + 1)]
                    with m.If(q_cw != cw_m1):
                        m.d.sync += [q_cw.eq(q_cw + 1), q_aky.eq(q_apx + q_cw + 1), q_akx.eq(q_apx + q_cw + 1)]
                    with m.Else():
                        m.d.sync += q_cw.eq(0)
                        with m.If(q_px != ow_m1):
                            nxt = q_apx + p_step_x
                            m.d.sync += [q_px.eq(q_px + 1), q_apx.eq(nxt), q_aky.eq(nxt), q_akx.eq(nxt)]
                        with m.Else():
                            m.d.sync += q_px.eq(0)
                            with m.If(q_py != oh_m1):
                                nxt = q_apy + p_step_y
                                m.d.sync += [q_py.eq(q_py + 1), q_apy.eq(nxt), q_apx.eq(nxt),
                                             q_aky.eq(nxt), q_akx.eq(nxt)]
                            with m.Else():
                                m.d.sync += q_py.eq(0)
                                with m.If(q_t != np_m1):
                                    nxt = q_at + p_plane
                                    m.d.sync += [q_t.eq(q_t + 1), q_at.eq(nxt), q_apy.eq(nxt),
                                                 q_apx.eq(nxt), q_aky.eq(nxt), q_akx.eq(nxt)]
                                with m.Else():
                                    m.next = "POOL_DRAIN"
            with m.State("POOL_DRAIN"):
                m.d.sync += [pool_running.eq(0), pc.eq(pc + 1)]
                m.next = "FETCH"
        return m
