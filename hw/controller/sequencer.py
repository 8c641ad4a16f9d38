"""`Sequencer`: fetch, decode, set-up and checks; it starts the engines and waits for them."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..isa import INSTRUCTION_BITS, ErrorCode, Instruction, LoadArgs, MemoryTarget, Opcode, ShortcutArgs
from .plan import (CONV_SETUP_STEPS, OPERAND_B_BITS, POOL_SETUP_STEPS, PRODUCT_BITS, PRODUCT_CYCLES,
                   SHORTCUT_SETUP_STEPS, Plan, check_ready, schedule)

__all__ = ["Sequencer"]


class _Reads:
    """The plan, recording the names of the fields read through it."""

    def __init__(self, plan):
        self._plan, self.names = plan, set()

    def __getattr__(self, name):
        self.names.add(name)
        return getattr(self._plan, name)


class Sequencer(wiring.Component):
    """Runs a program one instruction at a time, to completion (docs/isa.md).

    Derived sizes (products of fields) are computed at the start of each CONV and POOL by the steps of
    `hw.controller.plan` through one shared multiplier rather than by a dozen multipliers: three
    cycles a product, a 32 x 16-bit multiplier (two registered 16 x 16 partial products) whose 48-bit
    product saturates to 32 bits. Every check (docs/isa.md "Errors") is its own bit, registered in a
    CHECK state and ORed in the DECIDE state that follows, so a failing check halts with its code
    before anything is written.

    Ports
    -----
    start       : In(1)    pulse: run the program from address 0.
    busy        : Out(1)   a program is running.
    done        : Out(1)   the last program ended (END or an error) and nothing started since.
    error       : Out(ErrorCode)  why the last program stopped, NONE after END.
    cycles      : Out(32)  cycles the last (or current) program has run.
    pc          : Out      the instruction running or the one that failed.
    prog_addr, prog_en : Out  the program memory's read port; prog_data : In  its data.
    instr       : Out(Instruction)  the instruction register, steady while the engines run it.
    shortcut    : Out(ShortcutArgs)  the second source a SHORTCUT latched for the CONV after it
                  (`plan.shortcut` says whether the running CONV has one).
    plan        : Out(Plan)  the set-up products and loop bounds of the instruction.
    conv_start  : Out(1)   pulse: a checked CONV starts (gather, issue and writer initialise).
    conv_active : Out(1)   from the cycle after conv_start until the writer is done.
    conv_done   : In(1)    the writer has written the CONV's last pixel tile.
    pool_start  : Out(1)   pulse: a checked POOL starts.
    pool_done   : In(1)    the pool engine's last write happens in this cycle.
    loads       : Out(stream of LoadArgs)  checked LOADs, to the load engine's queue.
    loads_idle  : In(1)    no load active or queued (SYNC and END wait for it).
    flush       : Out(1)   an error: drop every queued load.
    """

    def __init__(self, config):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Config must be an AccelConfig, not {config!r}")
        self._config = config
        super().__init__({
            "start": In(1),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(ErrorCode),
            "cycles": Out(32),
            "pc": Out(range(config.instr_depth + 1)),
            "prog_addr": Out(range(config.instr_depth)),
            "prog_en": Out(1),
            "prog_data": In(INSTRUCTION_BITS),
            "instr": Out(Instruction),
            "shortcut": Out(ShortcutArgs),
            "plan": Out(Plan),
            "conv_start": Out(1),
            "conv_active": Out(1),
            "conv_done": In(1),
            "pool_start": Out(1),
            "pool_done": In(1),
            "loads": Out(stream.Signature(LoadArgs)),
            "loads_idle": In(1),
            "flush": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        R, C, W = cfg.rows, cfg.cols, cfg.word_bits
        log_r = R.bit_length() - 1
        ins, plan, busy, pc = self.instr, self.plan, self.busy, self.pc
        cv, pl, ld, sc = ins.args.conv, ins.args.pool, ins.args.load, self.shortcut
        pending = Signal()          # a SHORTCUT was decoded; the next instruction must be its CONV

        with m.If(busy):
            m.d.sync += self.cycles.eq(self.cycles + 1)

        # R divides W, a power of two, so R is one too. Registered: valid from the first set-up cycle.
        m.d.sync += plan.out_tiles.eq((cv.out_ch + (R - 1)) >> log_r)

        # ------------------------------------------------------------ set-up products
        def resolve(spec, args):
            if callable(spec):
                return spec(args, plan, Const(C, 8), sc)
            if spec in Plan.members:
                return getattr(plan, spec)
            if spec.startswith("sc."):
                return getattr(sc, spec[3:])
            return getattr(args, spec)

        def steps_of(step_list, args):
            """The scheduled slots: (destination, operand a, operand b), or None for an idle cycle."""
            return [None if step is None else (getattr(plan, step[0]), resolve(step[1], args), resolve(step[2], args))
                    for step in schedule(step_list)]

        conv_steps = steps_of(CONV_SETUP_STEPS, cv)
        shortcut_steps = steps_of(SHORTCUT_SETUP_STEPS, cv)
        pool_steps = steps_of(POOL_SETUP_STEPS, pl)
        for slot in conv_steps + shortcut_steps + pool_steps:
            assert slot is None or len(slot[2]) <= OPERAND_B_BITS, slot

        longest = max(len(conv_steps), len(shortcut_steps), len(pool_steps))
        step = Signal(range(longest + PRODUCT_CYCLES))
        mul_a = Signal(PRODUCT_BITS)
        mul_b = Signal(OPERAND_B_BITS)
        # Two partial products (16 x 16 bits each, one DSP block or a small array each) are registered;
        # their sum and the saturation are the write cycle's logic. One 32 x 16 product in one cycle
        # was the controller's critical path.
        half = PRODUCT_BITS // 2
        part_lo = Signal(half + OPERAND_B_BITS)
        part_hi = Signal(half + OPERAND_B_BITS)
        m.d.sync += [part_lo.eq(mul_a[:half] * mul_b), part_hi.eq(mul_a[half:] * mul_b)]
        product = Signal(PRODUCT_BITS + OPERAND_B_BITS)
        saturated = Signal(PRODUCT_BITS)
        m.d.comb += product.eq(part_lo + (part_hi << half))
        m.d.comb += saturated.eq(Mux(product[PRODUCT_BITS:].any(), (1 << PRODUCT_BITS) - 1,
                                     product[:PRODUCT_BITS]))
        # The slot whose product is being written this cycle: started PRODUCT_CYCLES - 1 cycles ago.
        write_slot = Signal(range(longest + 1))
        write_valid = Signal()
        started_slot = Signal.like(write_slot)
        started_valid = Signal()
        m.d.sync += [write_slot.eq(started_slot), write_valid.eq(started_valid), started_valid.eq(0)]
        assert PRODUCT_CYCLES == 3          # operands, product, write: the two registers above

        def run_steps(steps, next_state):
            """One slot a cycle: its operands are registered, multiplied the next cycle and written the
            cycle after; `next_state` (a state name, or a function that sets `m.next`) follows the last
            write (schedule() keeps a step PRODUCT_CYCLES after the steps whose results it reads)."""
            with m.Switch(step):
                for i, slot in enumerate(steps):
                    if slot is None:
                        continue
                    with m.Case(i):
                        m.d.sync += [mul_a.eq(slot[1]), mul_b.eq(slot[2]), started_slot.eq(i),
                                     started_valid.eq(1)]
            with m.If(write_valid):
                with m.Switch(write_slot):
                    for i, slot in enumerate(steps):
                        if slot is not None:
                            with m.Case(i):
                                m.d.sync += slot[0].eq(saturated)
            m.d.sync += step.eq(step + 1)
            with m.If(step == len(steps) + PRODUCT_CYCLES - 2):
                m.d.sync += step.eq(0)
                if callable(next_state):
                    next_state()
                else:
                    m.next = next_state

        # ------------------------------------------------------------ checks
        # Two register stages (plan.CHECK_LEAD): the sums and differences the checks compare are
        # registered every cycle, and CHECK registers their comparisons. `p` records the plan fields
        # the checks read, and check_ready() (below) asserts that every one of them that a set-up step
        # writes is final a cycle before CHECK.
        p = _Reads(plan)

        def pre(name, value):
            reg = Signal(Value.cast(value).shape(), name=f"pre_{name}")
            m.d.sync += reg.eq(value)
            return reg

        k_words = pre("k_words", Mux(cv.packed, p.kvalid, ((p.kwords - p.khw) << (W.bit_length() - 1)) + p.kvalid))
        k_words2 = pre("k_words2", ((p.kwords2 - p.khw2) << (W.bit_length() - 1)) + p.kvalid2)
        padded_h = pre("padded_h", cv.in_h + 2 * cv.pad)
        padded_w = pre("padded_w", cv.in_w + 2 * cv.pad)
        conv_bad = Cat(
            (cv.in_h == 0) | (cv.in_w == 0) | (cv.in_cw == 0) | (cv.in_planes == 0) | (cv.kh == 0),
            (cv.kw == 0) | (cv.stride == 0) | (cv.out_h == 0) | (cv.out_w == 0) | (cv.out_ch == 0),
            (cv.wbases == 0) | (cv.in_stride == 0) | (cv.in_tail == 0) | (cv.in_tail > W),
            ~cv.packed & (cv.in_stride < cv.in_cw),
            cv.k > cfg.max_k,
            cv.k != k_words,
            # A packed CONV (docs/isa.md "Packed image input"): its in_need is in_cw * fpw.
            cv.packed & ((cv.in_tail > W // 8) | (cv.in_planes > 8) | (p.khw < cv.in_planes) | pending),
            cv.packed & ((p.in_need < p.khw) | (pre("in_need_less", p.in_need - p.fpw) >= p.khw)),
            cv.packed & (cv.in_cw > 1) & (pre("last_fields", p.khw + p.fpw - p.in_need) < cv.in_planes),
            cv.wbases > cfg.max_wbases,
            pre("reach_h", p.span_h + cv.kh) > padded_h, pre("reach_w", p.span_w + cv.kw) > padded_w,
            ~cv.raw & ((cv.out_planes == 0) | (cv.out_planes > cfg.max_abases) | ((cv.out_ch_base % R) != 0)),
            ~cv.raw & (pre("out_ch_end", cv.out_ch_base + cv.out_ch) > cv.out_stride * W),
            # The SHORTCUT's fields (only when one precedes this CONV).
            pending & ((sc.in_h == 0) | (sc.in_w == 0) | (sc.in_cw == 0) | (sc.in_planes == 0) | (sc.kh == 0)),
            pending & ((sc.kw == 0) | (sc.stride == 0) | (sc.wbases == 0) | (sc.in_stride < sc.in_cw)),
            pending & ((sc.in_tail == 0) | (sc.in_tail > W) | (sc.k > cfg.max_k) | (sc.wbases > cfg.max_wbases)),
            pending & (sc.k != k_words2),
            pending & (pre("reach_h2", p.span_h2 + sc.kh) > pre("padded_h2", sc.in_h + 2 * sc.pad)),
            pending & (pre("reach_w2", p.span_w2 + sc.kw) > pre("padded_w2", sc.in_w + 2 * sc.pad)))
        conv_range = Cat(
            # (all_images: the last plane's I image maps.)
            pre("in_end", cv.in_base + Mux(cv.packed, 0, p.in_need)
                + Mux(cv.all_images, p.plane_words, p.image_words)) > cfg.act_depth,
            pre("patch_words", p.patch_need + Mux(pending, p.patch_need2, 0)) > cfg.patch_depth,
            pre("w_end", cv.w_base + p.w_need) > cfg.weight_depth,
            pre("s_end", cv.s_base + p.s_need) > cfg.scale_depth,
            pre("t_end", cv.t_base + p.out_tiles * R) > cfg.thr_depth,
            cv.raw & (pre("res_end", cv.out_base + p.res_need) > cfg.result_depth),
            ~cv.raw & (pre("out_end", cv.out_base + p.out_need + p.out_image_words) > cfg.act_depth),
            pending & (pre("in_end2", sc.in_base + p.in_need2
                           + Mux(cv.all_images, p.plane_words2, p.image_words2)) > cfg.act_depth),
            pending & (pre("w_end2", sc.w_base + p.w_need2) > cfg.weight_depth),
            pending & (pre("s_end2", sc.s_base + p.s_need2) > cfg.scale_depth))
        pool_bad = Cat(
            (pl.in_h == 0) | (pl.in_w == 0) | (pl.cw == 0) | (pl.planes == 0) | (pl.kernel == 0),
            (pl.stride == 0) | (pl.out_h == 0) | (pl.out_w == 0),
            pre("p_reach_h", p.span_h + pl.kernel) > pl.in_h, pre("p_reach_w", p.span_w + pl.kernel) > pl.in_w)
        pool_range = Cat(pre("p_in_end", pl.in_base + p.p_in_need + p.p_image) > cfg.act_depth,
                         pre("p_out_end", pl.out_base + p.p_out_need + p.p_out_image) > cfg.act_depth)
        for steps in (CONV_SETUP_STEPS, SHORTCUT_SETUP_STEPS, POOL_SETUP_STEPS):
            check_ready(steps, sorted(p.names & {dest for dest, _, _ in steps}))
        p = plan
        load_depth = Mux(ld.mem == MemoryTarget.WEIGHT, cfg.weight_depth,
                         Mux(ld.mem == MemoryTarget.SCALE, cfg.scale_depth, cfg.thr_depth))
        load_bad = (ld.count == 0) | ~((ld.mem == MemoryTarget.WEIGHT) | (ld.mem == MemoryTarget.SCALE) |
                                       (ld.mem == MemoryTarget.THRESHOLD))
        load_range = ld.addr + ld.count > load_depth
        bad_r = Signal(max(len(conv_bad), len(pool_bad)))
        range_r = Signal(max(len(conv_range), len(pool_range)))
        m.d.comb += self.loads.payload.eq(ld)

        # ------------------------------------------------------------ the instruction FSM
        def fail(code):
            m.d.sync += [self.error.eq(code), self.done.eq(1), busy.eq(0)]
            m.d.comb += self.flush.eq(1)
            m.next = "IDLE"

        def finish():
            m.d.sync += [self.done.eq(1), busy.eq(0)]
            m.next = "IDLE"

        def fail_on_checks():
            """A DECIDE state's first branches: halt on a registered check bit (BAD_FIELD before
            OUT_OF_RANGE); the caller's `m.Elif` / `m.Else` follows."""
            with m.If(bad_r.any()):
                fail(ErrorCode.BAD_FIELD)
            with m.Elif(range_r.any()):
                fail(ErrorCode.OUT_OF_RANGE)

        def next_instruction():
            m.d.sync += pc.eq(pc + 1)
            m.next = "FETCH"

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [busy.eq(1), self.done.eq(0), self.error.eq(ErrorCode.NONE), pc.eq(0),
                                 self.cycles.eq(0), pending.eq(0)]
                    m.next = "FETCH"
            with m.State("FETCH"):
                with m.If(pc == cfg.instr_depth):
                    fail(ErrorCode.PROGRAM_END)
                with m.Else():
                    m.d.comb += [self.prog_addr.eq(pc), self.prog_en.eq(1)]
                    m.next = "LATCH"
            with m.State("LATCH"):
                m.d.sync += ins.eq(self.prog_data)
                m.next = "DECODE"
            with m.State("DECODE"):
                with m.Switch(ins.opcode):
                    with m.Case(Opcode.CONV):
                        m.d.sync += p.out_rows.eq(Mux(cv.all_images, cv.out_h * (cv.images_m1 + 1), cv.out_h))
                        # A packed CONV's fields a patch word, W // in_tail (in_tail <= W // 8, checked).
                        with m.Switch(cv.in_tail):
                            for c in range(1, max(W // 8, 1) + 1):
                                with m.Case(c):
                                    m.d.sync += p.fpw.eq(W // c)
                            with m.Default():
                                m.d.sync += p.fpw.eq(1)
                        m.next = "CONV_SETUP"
                    with m.Case(Opcode.END, Opcode.LOAD, Opcode.SYNC, Opcode.POOL, Opcode.SHORTCUT):
                        with m.If(pending):
                            fail(ErrorCode.BAD_FIELD)       # a SHORTCUT not followed by its CONV
                        with m.Else():
                            with m.Switch(ins.opcode):
                                with m.Case(Opcode.END):
                                    with m.If(self.loads_idle):
                                        finish()
                                    with m.Else():
                                        m.next = "END_WAIT"
                                with m.Case(Opcode.LOAD):
                                    m.next = "LOAD_CHECK"
                                with m.Case(Opcode.SYNC):
                                    m.next = "SYNC"
                                with m.Case(Opcode.POOL):
                                    m.next = "POOL_SETUP"
                                with m.Case(Opcode.SHORTCUT):
                                    m.d.sync += [sc.eq(ins.args.shortcut), pending.eq(1)]
                                    next_instruction()
                    with m.Default():
                        fail(ErrorCode.ILLEGAL_OPCODE)
            with m.State("END_WAIT"):
                with m.If(self.loads_idle):
                    finish()
            with m.State("LOAD_CHECK"):
                m.d.sync += [bad_r.eq(load_bad), range_r.eq(load_range)]
                m.next = "LOAD_DECIDE"
            with m.State("LOAD_DECIDE"):
                fail_on_checks()
                with m.Else():
                    m.d.comb += self.loads.valid.eq(1)
                    with m.If(self.loads.ready):
                        next_instruction()
            with m.State("SYNC"):
                with m.If(self.loads_idle):
                    next_instruction()
            with m.State("CONV_SETUP"):
                def after_conv_steps():
                    with m.If(pending):
                        m.next = "SHORTCUT_SETUP"
                    with m.Else():
                        m.next = "CONV_CHECK"
                run_steps(conv_steps, after_conv_steps)
            with m.State("SHORTCUT_SETUP"):
                run_steps(shortcut_steps, "CONV_CHECK")
            with m.State("CONV_CHECK"):
                # The checks' adders and comparators end in registers; the next state acts on them.
                m.d.sync += [bad_r.eq(conv_bad), range_r.eq(conv_range), p.kwords_m1.eq(p.kwords - 1),
                             p.cw_m1.eq(cv.in_cw - 1), p.kw_m1.eq(cv.kw - 1), p.kh_m1.eq(cv.kh - 1),
                             p.np_m1.eq(cv.in_planes - 1), p.ow_m1.eq(cv.out_w - 1), p.oh_m1.eq(cv.out_h - 1),
                             p.wb_m1.eq(cv.wbases - 1),
                             p.op_m1.eq(cv.out_planes - 1), p.ot_m1.eq(p.out_tiles - 1),
                             p.shortcut.eq(pending), p.kwords2_m1.eq(p.kwords2 - 1), p.cw2_m1.eq(sc.in_cw - 1),
                             p.kw2_m1.eq(sc.kw - 1), p.kh2_m1.eq(sc.kh - 1), p.np2_m1.eq(sc.in_planes - 1),
                             p.wb2_m1.eq(sc.wbases - 1)]
                m.next = "CONV_DECIDE"
            with m.State("CONV_DECIDE"):
                fail_on_checks()
                with m.Else():
                    m.d.comb += self.conv_start.eq(1)
                    m.d.sync += [self.conv_active.eq(1), pending.eq(0)]
                    m.next = "CONV_RUN"
            with m.State("CONV_RUN"):
                # Gather, issue and writer run on their own; the instruction ends with the last write.
                with m.If(self.conv_done):
                    m.d.sync += self.conv_active.eq(0)
                    next_instruction()
            with m.State("POOL_SETUP"):
                run_steps(pool_steps, "POOL_CHECK")
            with m.State("POOL_CHECK"):
                m.d.sync += [bad_r.eq(pool_bad), range_r.eq(pool_range),
                             p.cw_m1.eq(pl.cw - 1), p.kw_m1.eq(pl.kernel - 1), p.kh_m1.eq(pl.kernel - 1),
                             p.np_m1.eq(pl.planes - 1), p.ow_m1.eq(pl.out_w - 1), p.oh_m1.eq(pl.out_h - 1)]
                m.next = "POOL_DECIDE"
            with m.State("POOL_DECIDE"):
                fail_on_checks()
                with m.Else():
                    m.d.comb += self.pool_start.eq(1)
                    m.next = "POOL_RUN"
            with m.State("POOL_RUN"):
                with m.If(self.pool_done):
                    next_instruction()
        return m
