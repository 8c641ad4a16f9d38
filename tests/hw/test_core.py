"""BinaryCore in the Amaranth simulator: randomized tiles and edge cases against sw.ref, bit for bit,
with idle cycles on the input and back-pressure on the output."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.config import AccelConfig
from hw.core import BinaryCore
from sim.amaranth_stream import idle, stream_get, stream_put
from sim.tiles import random_tile, tile_beats, tile_expected, tile_scale_writes, tile_thr_writes

GEOMETRIES = {
    "1x1w4": AccelConfig(rows=1, cols=1, word_bits=4, max_wbases=2, max_abases=2, max_k=32,
                         scale_depth=8, thr_depth=8, out_depth=2),
    "2x3w8": AccelConfig(rows=2, cols=3, word_bits=8, max_wbases=3, max_abases=3, max_k=80,
                         scale_depth=32, thr_depth=16, out_depth=4),
    "3x2w5": AccelConfig(rows=3, cols=2, word_bits=5, max_wbases=2, max_abases=4, max_k=47,
                         scale_bits=12, scale_frac=4, acc_bits=28, scale_depth=16, thr_depth=16,
                         out_depth=3),
}
# The same geometries with the scales applied in every element (`AccelConfig.element_scales`).
GEOMETRIES.update({f"{name}e": cfg.replace(element_scales=True) for name, cfg in list(GEOMETRIES.items())})


def batches_of(tiles):
    """Split tiles into batches whose scale and threshold entries do not overlap: a batch's parameters
    are loaded together, and the next batch waits until the previous one's results are out (the
    synchronisation a program needs before it overwrites parameters that a pass in flight reads)."""
    batches, used = [], None
    for t in tiles:
        scale = set(range(t.scale_base, t.scale_base + t.passes))
        thr = set(range(t.thr_base, t.thr_base + len(t.flip)))
        if used is None or used[0] & scale or used[1] & thr:
            batches.append([])
            used = (set(), set())
        batches[-1].append(t)
        used[0].update(scale)
        used[1].update(thr)
    return batches


def simulate(cfg, tiles, *, source_idle=0.0, sink_stall=0.0, seed=0, limit=200_000, batches=None):
    """Load each batch's parameters, stream its beats, collect every result. Returns (results, cycles)
    where cycles counts from the first beat offered to the last result taken (for one batch)."""
    dut = BinaryCore(cfg)
    lay = dut.layouts
    rng = np.random.default_rng(seed)
    expected_count = len(tiles) * cfg.rows
    got = []
    clock = {"start": None, "end": None, "now": 0}

    async def driver(ctx):
        done = 0
        for batch in batches or batches_of(tiles):
            while len(got) < done:           # previous batch drained
                await ctx.tick()
            for t in batch:
                for w in tile_scale_writes(cfg, t):
                    await stream_put(ctx, dut.scale_write, lay.scale_write, w)
                for w in tile_thr_writes(cfg, t):
                    await stream_put(ctx, dut.thr_write, lay.thr_write, w)
            clock["start"] = clock["now"]
            for t in batch:
                for beat in tile_beats(cfg, t):
                    if source_idle and rng.random() < source_idle:
                        await idle(ctx, int(rng.integers(1, 4)))
                    await stream_put(ctx, dut.beats, lay.beat, beat)
            done += len(batch) * cfg.rows

    async def sink(ctx):
        while len(got) < expected_count:
            if sink_stall and rng.random() < sink_stall:
                await idle(ctx, int(rng.integers(1, 6)))
            got.append(await stream_get(ctx, dut.results, lay.result))
        clock["end"] = clock["now"]

    async def timer(ctx):
        while clock["end"] is None:
            await ctx.tick()
            clock["now"] += 1
            if clock["now"] > limit:
                raise AssertionError(f"core produced {len(got)} of {expected_count} results in {limit} cycles")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(driver)
    sim.add_testbench(sink)
    sim.add_testbench(timer)
    sim.run()
    return got, clock["end"] - clock["start"]


def expected_of(cfg, tiles):
    return [r for t in tiles for r in tile_expected(cfg, t)]


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_random_tiles_with_idle_input_and_back_pressure(name):
    cfg = GEOMETRIES[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    tiles = []
    for i in range(6):
        m = cfg.max_wbases
        n = cfg.max_abases
        tiles.append(random_tile(cfg, rng, scale_base=(i * m * n) % (cfg.scale_depth - m * n + 1),
                                 thr_base=(i * cfg.rows) % (cfg.thr_depth - cfg.rows + 1)))
    got, _ = simulate(cfg, tiles, source_idle=0.3, sink_stall=0.4, seed=1)
    assert got == expected_of(cfg, tiles)


EDGE_CASES = [
    dict(k=1),
    dict(k="max"),
    dict(k="word"),                    # exactly one whole word
    dict(k="word+1"),                  # one bit into the second word
    dict(bits_mode="ones", k="max"),
    dict(bits_mode="zeros"),
    dict(bits_mode="mixed", k="max"),  # every dot product is -K
    dict(bits_mode="match"),
    dict(scale_mode="extreme", k="max"),
    dict(scale_mode="negative"),
    dict(scale_mode="one", wbases=1, abases=1),
]


@pytest.mark.parametrize("name", ["2x3w8", "3x2w5", "2x3w8e", "3x2w5e"])
@pytest.mark.parametrize("case", range(len(EDGE_CASES)))
def test_edge_cases(name, case):
    cfg = GEOMETRIES[name]
    args = dict(EDGE_CASES[case])
    k = {"max": cfg.max_k, "word": cfg.word_bits, "word+1": cfg.word_bits + 1}.get(args.get("k"), args.get("k"))
    args["k"] = k
    args.setdefault("wbases", cfg.max_wbases)
    args.setdefault("abases", cfg.max_abases)
    rng = np.random.default_rng(case)
    # Last entries of both memories: addresses at the top of their ranges.
    tiles = [random_tile(cfg, rng, scale_base=cfg.scale_depth - args["wbases"] * args["abases"],
                         thr_base=cfg.thr_depth - cfg.rows, **args) for _ in range(2)]
    got, _ = simulate(cfg, tiles, sink_stall=0.2, seed=case)
    assert got == expected_of(cfg, tiles)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_back_to_back_tiles_run_at_full_rate(name):
    """With an always-ready sink and no idle input, a pass costs max(ceil(K / W), rows) cycles (with
    element scales a pass costs ceil(K / W) and a tile at least `rows`), once the output FIFO covers
    the results in flight (the tiny test geometries' FIFOs are too small)."""
    cfg = GEOMETRIES[name]
    cfg = cfg.replace(out_depth=cfg.rows + cfg.cols + 16)
    rng = np.random.default_rng(11)
    tiles = [random_tile(cfg, rng, k=k, wbases=2, abases=2, scale_base=0, thr_base=0)
             for k in (cfg.max_k, 1, cfg.word_bits, 3 * cfg.word_bits - 1, 1, 1, 1)]
    for t in tiles[1:]:      # the tiles share parameters (sized for the largest K), as a layer's do
        t.scales, t.thresholds, t.flip = tiles[0].scales, tiles[0].thresholds, tiles[0].flip
    got, cycles = simulate(cfg, tiles, batches=[tiles])
    assert got == expected_of(cfg, tiles)
    words = [-(-t.k // cfg.word_bits) for t in tiles]
    if cfg.element_scales:
        ideal = sum(max(t.passes * n, cfg.rows) for t, n in zip(tiles, words))
    else:
        ideal = sum(t.passes * max(n, cfg.rows) for t, n in zip(tiles, words))
    # The pipeline adds its fill latency once: array, accumulator, thresholds, FIFOs.
    fill = cfg.cols + 12 + cfg.rows
    assert ideal <= cycles <= ideal + fill, (cycles, ideal)


def test_core_rejects_non_config():
    with pytest.raises(TypeError, match="Config must be an AccelConfig, not 3"):
        BinaryCore(3)


@pytest.mark.parametrize("name", ["2x3w8", "2x3w8e"])
@pytest.mark.parametrize("cut", [2, 0])
def test_reset_mid_tile_then_a_new_tile_is_exact(name, cut):
    """A reset before a tile's last beats (cut 2) or while its results are in the pipeline (cut 0)
    drops the tile, and the next tile, started after the reset, is exact."""
    from amaranth.hdl import ClockDomain, Module
    from amaranth.sim._async import DomainReset
    cfg = GEOMETRIES[name]
    rng = np.random.default_rng(5)
    dropped, kept = (random_tile(cfg, rng, k=cfg.max_k, wbases=2, abases=2, scale_base=0, thr_base=0)
                     for _ in range(2))
    dut = BinaryCore(cfg)
    lay = dut.layouts
    got = []

    async def driver(ctx):
        for t in (dropped, kept):
            for w in tile_scale_writes(cfg, t):
                await stream_put(ctx, dut.scale_write, lay.scale_write, w)
            for w in tile_thr_writes(cfg, t):
                await stream_put(ctx, dut.thr_write, lay.thr_write, w)
            beats = list(tile_beats(cfg, t))
            if t is dropped:
                beats = beats[:len(beats) - cut]
            for beat in beats:
                await stream_put(ctx, dut.beats, lay.beat, beat)
            if t is dropped:
                ctx.set(sync.rst, 1)
                await ctx.delay(2e-8)                   # two clock periods in reset
                ctx.set(sync.rst, 0)

    async def sink(ctx):
        for _ in range(200 * cfg.rows):
            try:
                if ctx.get(dut.results.valid):
                    got.append(await stream_get(ctx, dut.results, lay.result))
                else:
                    ctx.set(dut.results.ready, 0)
                    await ctx.tick()
            except DomainReset:                         # a tick in reset: the core drops its tile
                pass

    top = Module()
    top.domains.sync = sync = ClockDomain()
    top.submodules.dut = dut
    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(driver)
    sim.add_testbench(sink)
    sim.run()
    assert got == expected_of(cfg, [kept])
