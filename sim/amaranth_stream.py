"""Stream helpers for Amaranth simulator test benches (one place, not copied into each test).

Payloads are given and returned as Python values (dicts / lists / ints) and encoded with
`hw.layouts.pack_payload`, the same encoder the cocotb drivers use.
"""

from hw.layouts import pack_payload, unpack_payload

__all__ = ["stream_put", "stream_get", "idle"]


async def idle(ctx, cycles):
    for _ in range(cycles):
        await ctx.tick()


async def stream_put(ctx, stream, layout, value):
    """Offer one payload and wait until the sink takes it."""
    ctx.set(stream.payload.as_value(), pack_payload(layout, value))
    ctx.set(stream.valid, 1)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream, layout):
    """Accept one payload."""
    ctx.set(stream.ready, 1)
    payload, = await ctx.tick().sample(stream.payload.as_value()).until(stream.valid)
    ctx.set(stream.ready, 0)
    return unpack_payload(layout, payload)
