"""Host operations on `hw.accel.Accelerator` inside the Amaranth simulator: write memories, start,
wait for done with a cycle watchdog, read memories. The Verilator and board backends perform the same
operations through their own transports."""

from hw.isa import MemoryTarget

from .amaranth_stream import stream_get, stream_put

__all__ = ["write_entries", "read_entries", "run_program"]


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


async def run_program(ctx, dut, limit=1_000_000):
    """Pulse start and wait for done; returns (error code, cycles). Fails after `limit` cycles."""
    ctx.set(dut.start, 1)
    await ctx.tick()
    ctx.set(dut.start, 0)
    for _ in range(limit):
        if ctx.get(dut.done):
            error = ctx.get(dut.error)
            return int(getattr(error, "value", error)), ctx.get(dut.cycles)
        await ctx.tick()
    raise AssertionError(f"the accelerator did not finish within {limit} cycles (pc={ctx.get(dut.pc)})")
