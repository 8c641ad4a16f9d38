"""Amaranth-simulator unit tests of each gateware block against plain Python / sw.ref."""

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hw.array import ProcessingElement, SystolicArray
from hw.config import AccelConfig
from hw.layouts import CoreLayouts, pack_payload, unpack_payload
from hw.popcount import xnor_popcount
from hw.scale import ScaleAccumulator
from hw.threshold import ThresholdUnit
from sw import ref


def run(dut, *benches, clock=True):
    """Run test benches to completion; monitors bound their own loops, so nothing can hang."""
    sim = Simulator(dut)
    if clock:
        sim.add_clock(1e-8)
    for bench in benches:
        sim.add_testbench(bench)
    sim.run()


def bounded(limit):
    """Cycle counter for monitor loops: fails the test instead of hanging."""
    for t in range(limit):
        yield t
    raise AssertionError(f"no result within {limit} cycles")


class _Popcount(wiring.Component):
    def __init__(self, width):
        self._width = width
        super().__init__({"w": In(width), "a": In(width), "count": Out(range(width + 1))})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.count.eq(xnor_popcount(m, self.w, self.a))
        return m


@pytest.mark.parametrize("width", [1, 2, 3, 5, 8, 13, 32, 64])
def test_xnor_popcount(width):
    dut = _Popcount(width)
    rng = np.random.default_rng(width)
    top = (1 << width) - 1
    cases = [(0, 0), (top, top), (top, 0), (0, top)]
    if width <= 5:
        cases += [(w, a) for w in range(1 << width) for a in range(1 << width)]
    else:
        cases += [(int.from_bytes(rng.bytes(8), "little") & top,
                   int.from_bytes(rng.bytes(8), "little") & top) for _ in range(300)]
    seen = []

    async def bench(ctx):
        for w, a in cases:
            ctx.set(dut.w, w)
            ctx.set(dut.a, a)
            seen.append(ctx.get(dut.count))

    run(dut, bench, clock=False)
    assert seen == [width - bin(w ^ a).count("1") for w, a in cases]


def test_processing_element_accumulates_passes_and_ignores_bubbles():
    width, count_bits = 8, 10
    dut = ProcessingElement(width, count_bits)
    rng = np.random.default_rng(5)
    # Passes of random length with random bubbles (valid = 0) in between words.
    passes = [[(int(rng.integers(256)), int(rng.integers(256))) for _ in range(int(rng.integers(1, 6)))]
              for _ in range(12)]
    expected = [sum(width - bin(w ^ a).count("1") for w, a in p) for p in passes]
    got = []

    async def driver(ctx):
        for words in passes:
            for j, (w, a) in enumerate(words):
                while rng.random() < 0.3:
                    ctx.set(dut.ctl_in, {"valid": 0, "first": 1, "last": 1})
                    ctx.set(dut.w_in, int(rng.integers(256)))
                    await ctx.tick()
                ctx.set(dut.w_in, w)
                ctx.set(dut.a_in, a)
                ctx.set(dut.ctl_in, {"valid": 1, "first": int(j == 0), "last": int(j == len(words) - 1)})
                await ctx.tick()
            for _ in range(2):  # passes end at least two cycles apart here
                ctx.set(dut.ctl_in, {"valid": 0, "first": 0, "last": 0})
                await ctx.tick()

    async def monitor(ctx):
        for _ in bounded(2000):
            if len(got) == len(passes):
                break
            _, _, result, valid = await ctx.tick().sample(dut.result, dut.result_valid)
            if valid:
                got.append(result)

    run(dut, driver, monitor)
    assert got == expected


def test_processing_element_rejects_bad_widths():
    with pytest.raises(ValueError, match="Word width must be a positive integer, not 0"):
        ProcessingElement(0, 4)
    with pytest.raises(ValueError, match="Count width must hold a whole word's count, not 3"):
        ProcessingElement(8, 3)


def _array_passes(cfg, rng, count):
    passes = []
    for _ in range(count):
        k = int(rng.integers(1, cfg.max_k + 1))
        w = rng.integers(0, 2, (cfg.rows, k), dtype=np.uint8)
        a = rng.integers(0, 2, (cfg.cols, k), dtype=np.uint8)
        passes.append((k, w, a))
    return passes


@pytest.mark.parametrize("rows, cols, width", [(1, 1, 4), (2, 3, 8), (3, 2, 5)])
def test_systolic_array_counts_rows_in_order_with_masked_padding(rows, cols, width):
    cfg = AccelConfig(rows=rows, cols=cols, word_bits=width, max_k=40, acc_bits=32, out_depth=8)
    dut = SystolicArray(cfg)
    rng = np.random.default_rng(rows * 100 + cols * 10 + width)
    passes = _array_passes(cfg, rng, 10)
    got, last_cycles, first_rows = [], [], []
    cycle = [0]

    async def driver(ctx):
        previous_end = -rows
        for k, w, a in passes:
            n_words = -(-k // width)
            for j in range(n_words):
                lo, hi = j * width, min(k, (j + 1) * width)
                junk = int(rng.integers(1 << width))   # garbage in the invalid bits
                wv = [int(sum(int(b) << i for i, b in enumerate(w[r, lo:hi]))) | (junk << (hi - lo))
                      for r in range(rows)]
                av = [int(sum(int(b) << i for i, b in enumerate(a[c, lo:hi]))) | (junk << (hi - lo))
                      for c in range(cols)]
                last = j == n_words - 1
                # Pass ends must be at least `rows` cycles apart: wait with bubbles.
                while last and cycle[0] - previous_end < rows:
                    ctx.set(dut.edge.valid, 0)
                    await ctx.tick()
                    cycle[0] += 1
                ctx.set(dut.edge, {"w": [x & ((1 << width) - 1) for x in wv],
                                   "a": [x & ((1 << width) - 1) for x in av],
                                   "nbits": hi - lo, "valid": 1, "first": int(j == 0), "last": int(last)})
                if last:
                    previous_end = cycle[0]
                    last_cycles.append(cycle[0])
                await ctx.tick()
                cycle[0] += 1
        ctx.set(dut.edge.valid, 0)

    async def monitor(ctx):
        for t in bounded(4000):
            if len(got) == len(passes) * rows:
                break
            _, _, counts, valid = await ctx.tick().sample(dut.counts, dut.counts_valid)
            if valid:
                if len(got) % rows == 0:
                    first_rows.append(t)
                got.append([int(x) for x in counts])

    run(dut, driver, monitor)
    expected = []
    for k, w, a in passes:
        dots = ref.binary_linear(ref.from_bits(a), ref.from_bits(w))     # (cols, rows)
        for r in range(rows):
            expected.append([(int(dots[c, r]) + k) // 2 for c in range(cols)])  # popcount of XNOR
    assert got == expected
    assert [f - l for f, l in zip(first_rows, last_cycles)] == [dut.latency] * len(passes)


def test_scale_accumulator_sums_passes_exactly():
    cfg = AccelConfig(rows=3, cols=2, word_bits=8, max_k=100, scale_bits=16, acc_bits=40)
    dut = ScaleAccumulator(cfg)
    rng = np.random.default_rng(9)
    tiles = []
    for _ in range(6):
        passes = int(rng.integers(1, 5))
        k = int(rng.integers(1, cfg.max_k + 1))
        counts = rng.integers(0, k + 1, size=(passes, cfg.rows, cfg.cols))
        scales = rng.choice([cfg.scale_min, cfg.scale_max, -1, 0, 1, 12345], size=(passes, cfg.rows))
        tiles.append((k, counts, scales))
    got = []

    async def driver(ctx):
        for k, counts, scales in tiles:
            for p in range(len(counts)):
                for r in range(cfg.rows):
                    ctx.set(dut.in_valid, 1)
                    ctx.set(dut.counts, [int(x) for x in counts[p, r]])
                    ctx.set(dut.k, k)
                    ctx.set(dut.scale, int(scales[p, r]))
                    ctx.set(dut.first_pass, int(p == 0))
                    ctx.set(dut.last_pass, int(p == len(counts) - 1))
                    await ctx.tick()
                ctx.set(dut.in_valid, 0)
                await ctx.tick()      # a bubble between passes must not disturb the ring

    async def monitor(ctx):
        for _ in bounded(2000):
            if len(got) == len(tiles) * cfg.rows:
                break
            _, _, acc, valid = await ctx.tick().sample(dut.acc, dut.out_valid)
            if valid:
                got.append([int(x) for x in acc])

    run(dut, driver, monitor)
    expected = []
    for k, counts, scales in tiles:
        sums = (scales[:, :, None].astype(np.int64) * (2 * counts - k)).sum(axis=0)   # (rows, cols)
        expected += sums.tolist()
    assert got == expected


def test_threshold_unit_matches_ref():
    cfg = AccelConfig(rows=2, cols=3, word_bits=8, max_abases=3, max_k=64, acc_bits=24)
    dut = ThresholdUnit(cfg)
    layouts = CoreLayouts(cfg)
    rng = np.random.default_rng(2)
    t_min, t_max = -(1 << 23), (1 << 23) - 1
    cases = []
    for _ in range(300):
        acc = rng.integers(-50, 50, size=cfg.cols)
        acc[rng.random(cfg.cols) < 0.1] = t_min
        acc[rng.random(cfg.cols) < 0.1] = t_max
        t = rng.integers(-50, 50, size=cfg.max_abases)
        t[rng.random(cfg.max_abases) < 0.2] = t_min
        t[rng.random(cfg.max_abases) < 0.2] = t_max
        t[rng.random(cfg.max_abases) < 0.2] = acc[0]          # exactly at a sum: inclusive
        cases.append((acc, t, bool(rng.integers(2))))
    got = []

    async def bench(ctx):
        for acc, t, flip in cases:
            ctx.set(dut.in_valid, 1)
            ctx.set(dut.acc, [int(x) for x in acc])
            # The memory's stored form: t + flip, one bit wider (ThresholdUnit.store).
            ctx.set(dut.entry.as_value(), pack_payload(ThresholdUnit.stored_layout(cfg),
                                                       {"t1": [int(x) + flip for x in t], "flip": int(flip)}))
            await ctx.tick()
            got.append(unpack_payload(layouts.result["bits"].shape, ctx.get(dut.bits.as_value())))

    run(dut, bench)
    for (acc, t, flip), bits in zip(cases, got):
        planes = ref.threshold(acc[:, None], t[None, :], np.array([flip]))   # (T, cols, 1)
        assert bits == [sum(int(planes[n, c, 0] > 0) << n for n in range(cfg.max_abases))
                        for c in range(cfg.cols)]
