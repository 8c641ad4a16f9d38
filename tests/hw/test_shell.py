"""Byte-level tests of the board shell's protocol engine (`ByteLink`) in front of `BinaryCore`."""

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from hw.config import AccelConfig
from hw.core import BinaryCore
from hw.layouts import CoreLayouts
from hw.shell import ByteLink, Opcode, UARTShell, decode_results, encode_message, payload_bytes
from sim.tiles import random_tile, tile_beats, tile_expected, tile_scale_writes, tile_thr_writes

CFG = AccelConfig(rows=2, cols=3, word_bits=8, max_wbases=2, max_abases=2, max_k=40,
                  scale_depth=8, thr_depth=8, out_depth=4)


async def byte_put(ctx, stream, byte):
    # sim.amaranth_stream's helpers take layout payloads (Views); byte streams carry plain Signals.
    ctx.set(stream.payload, byte)
    ctx.set(stream.valid, 1)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def byte_get(ctx, stream):
    ctx.set(stream.ready, 1)
    byte, = await ctx.tick().sample(stream.payload).until(stream.valid)
    ctx.set(stream.ready, 0)
    return byte


def tile_messages(cfg, layouts, tile):
    data = b""
    for w in tile_scale_writes(cfg, tile):
        data += encode_message(layouts, Opcode.SCALE_WRITE, w)
    for w in tile_thr_writes(cfg, tile):
        data += encode_message(layouts, Opcode.THR_WRITE, w)
    for b in tile_beats(cfg, tile):
        data += encode_message(layouts, Opcode.BEAT, b)
    return data


def test_encode_message():
    lay = CoreLayouts(CFG)
    msg = encode_message(lay, Opcode.SCALE_WRITE, {"addr": 5, "scales": [-1, 2]})
    assert msg[0] == 0x02
    assert len(msg) == 1 + payload_bytes(lay.scale_write)
    assert int.from_bytes(msg[1:], "little") & 0x7 == 5
    with pytest.raises(ValueError, match="multiple of"):
        decode_results(lay, b"\x00" * (payload_bytes(lay.result) + 1))


def test_link_rejects_non_layouts():
    with pytest.raises(TypeError, match="Layouts must be a CoreLayouts, not 3"):
        ByteLink(3)
    with pytest.raises(TypeError, match="Config must be an AccelConfig"):
        UARTShell({"rows": 2})
    with pytest.raises(ValueError, match="Baud rate must be a positive integer, not 0"):
        UARTShell(CFG, baud=0)


def test_link_drives_core_bit_exact():
    """Tiles sent as bytes (with junk opcodes between messages) come back as the reference results."""
    m = Module()
    m.submodules.core = core = BinaryCore(CFG)
    m.submodules.link = link = ByteLink(core.layouts)
    wiring.connect(m, link.beats, core.beats)
    wiring.connect(m, link.scale_write, core.scale_write)
    wiring.connect(m, link.thr_write, core.thr_write)
    wiring.connect(m, core.results, link.results)
    lay = core.layouts

    rng = np.random.default_rng(7)
    tiles = [random_tile(CFG, rng, scale_base=4 * i, thr_base=2 * i) for i in range(2)]
    tiles.append(random_tile(CFG, rng, k=1, bits_mode="ones", scale_mode="extreme",
                             scale_base=0, thr_base=4))
    data = b"\x00\xff".join(tile_messages(CFG, lay, t) for t in tiles)
    expected = [r for t in tiles for r in tile_expected(CFG, t)]
    n_bytes = len(expected) * payload_bytes(lay.result)
    got = bytearray()

    async def host_tx(ctx):
        for byte in data:
            await byte_put(ctx, link.rx, byte)

    async def host_rx(ctx):
        for i in range(n_bytes):
            if i % 5 == 0:   # back-pressure on the result bytes
                for _ in range(3):
                    await ctx.tick()
            got.append(await byte_get(ctx, link.tx))

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(host_tx)
    sim.add_testbench(host_rx)
    sim.run_until(1e-8 * (len(data) * 3 + n_bytes * 6 + 500))
    assert decode_results(lay, bytes(got)) == expected
