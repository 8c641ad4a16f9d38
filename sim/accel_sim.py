"""Host operations on `hw.accel.Accelerator` inside the Amaranth simulator: write memories, start,
wait for done with a cycle watchdog, read memories. The Verilator and board backends perform the same
operations through their own transports."""

from hw.isa import MemoryTarget

from .amaranth_stream import stream_get, stream_put

__all__ = ["write_entries", "read_entries", "run_program", "cycles_per_pc"]


async def write_entries(ctx, dut, mem, base, values):
    """Write integer entries (already packed to the memory's layout) from address `base` on."""
    for i, value in enumerate(values):
        await stream_put(ctx, dut.host_write, dut.write_layout,
                         {"mem": int(MemoryTarget(mem).value), "addr": base + i, "data": int(value)})


async def read_entries(ctx, dut, mem, base, count, raw=False):
    """Entries as ints; RESULT entries as signed sums unless `raw` (the port's data as it is)."""
    out = []
    for i in range(count):
        await stream_put(ctx, dut.read_req, dut.read_layout,
                         {"mem": int(MemoryTarget(mem).value), "addr": base + i})
        resp = await stream_get(ctx, dut.read_resp, dut.read_resp.payload.shape())
        value = resp["data"]
        if MemoryTarget(mem) == MemoryTarget.RESULT and not raw:     # sums are signed acc_bits
            bits = dut.config.acc_bits
            value &= (1 << bits) - 1
            value -= (value >> (bits - 1)) << bits
        out.append(value)
    return out


async def run_program(ctx, dut, limit=1_000_000, stream=(), marks=None):
    """Pulse start and wait for done, offering the integer entries of `stream` on `load_in` one per
    cycle (the source the cycle model assumes); returns (error code, cycles). `marks`, a dict, gets
    pc -> the cycles register when the controller entered that pc. Fails after `limit` cycles."""
    stream = list(stream)
    taken, pc = 0, 0
    if marks is not None:
        marks[0] = 0
    ctx.set(dut.start, 1)
    await ctx.tick()
    ctx.set(dut.start, 0)
    for _ in range(limit):
        if ctx.get(dut.done):
            ctx.set(dut.load_in.valid, 0)
            error = ctx.get(dut.error)
            return int(getattr(error, "value", error)), ctx.get(dut.cycles)
        offered = taken < len(stream)
        if offered:
            ctx.set(dut.load_in.payload.data, stream[taken])
        ctx.set(dut.load_in.valid, offered)
        took = offered and ctx.get(dut.load_in.ready)
        await ctx.tick()
        taken += bool(took)
        if marks is not None and ctx.get(dut.pc) != pc:
            pc = ctx.get(dut.pc)
            marks[pc] = ctx.get(dut.cycles)
    raise AssertionError(f"the accelerator did not finish within {limit} cycles (pc={ctx.get(dut.pc)})")


def cycles_per_pc(marks, cycles, count):
    """Cycles of instructions 0 .. count-1 from `marks` (pc -> the cycles register when the controller
    entered it): from entering a pc to entering the next; the last runs to `cycles` (done); 0 for a pc
    never entered."""
    starts = sorted(marks.items())
    spent = {pc: nxt - at for (pc, at), (_, nxt) in zip(starts, starts[1:] + [(None, cycles)])}
    return [spent.get(pc, 0) for pc in range(count)]
