import numpy as np
from amaranth.sim import Simulator

from hw.config import AccelConfig
from hw.core import BinaryCore
from sim.amaranth_stream import stream_get, stream_put
from sim.tiles import random_tile, tile_beats, tile_expected, tile_scale_writes, tile_thr_writes


def test_smoke():
    cfg = AccelConfig(rows=2, cols=3, word_bits=8, max_wbases=2, max_abases=2, max_k=64,
                      scale_depth=16, thr_depth=16, out_depth=4)
    dut = BinaryCore(cfg)
    lay = dut.layouts
    rng = np.random.default_rng(1)
    tiles = [random_tile(cfg, rng, scale_base=4 * i, thr_base=2 * i) for i in range(3)]
    got = []

    async def driver(ctx):
        for t in tiles:
            for w in tile_scale_writes(cfg, t):
                await stream_put(ctx, dut.scale_write, lay.scale_write, w)
            for w in tile_thr_writes(cfg, t):
                await stream_put(ctx, dut.thr_write, lay.thr_write, w)
        for t in tiles:
            for b in tile_beats(cfg, t):
                await stream_put(ctx, dut.beats, lay.beat, b)

    async def sink(ctx):
        for _ in range(len(tiles) * cfg.rows):
            got.append(await stream_get(ctx, dut.results, lay.result))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(driver)
    sim.add_testbench(sink)
    sim.run_until(1e-8 * 5000)
    exp = [r for t in tiles for r in tile_expected(cfg, t)]
    assert got == exp
