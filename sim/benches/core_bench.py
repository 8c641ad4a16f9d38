"""cocotb bench: `hw.core.BinaryCore` (Verilog, under Verilator) against `sw.ref`, bit for bit.

Run through `sim.runner.run_bench(build, "sim.benches.core_bench", testcase=..., params=...)`.
Parameters (`sim.runner.bench_params()`):
    specs       : list of tile specs (`sim.benches.scenarios`)
    seed        : seed of the tiles' random bits, scales and thresholds
    src_pause   : probability that the beat source idles in a cycle (0 = back-to-back)
    sink_pause  : probability that the result sink back-pressures in a cycle (0 = always ready)
    ideal_cycles: for `full_rate`: the expected input cycles (sum over passes of max(ceil(K/W), rows))
    margin      : for `full_rate`: allowed extra input cycles
    corrupt     : index of one result whose expected `acc[0]` is changed by one, a self-test showing
                  that the bench fails on a mismatch (the pytest suite expects that failure)

Each test writes `metrics.json` (cycles, wall time, cycles per second) into its run directory.
Mismatches are reported with the tile's spec and seed, the row and the expected and received payloads.
"""

import json
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge, with_timeout

from hw.layouts import CoreLayouts
from sim.benches.scenarios import ideal_input_cycles
from sim.cocotb_bus import StreamMonitor, StreamSink, StreamSource, random_pauses, reset_dut
from sim.runner import bench_config, bench_params
from sim.tiles import random_tile, tile_beats, tile_expected, tile_scale_writes, tile_thr_writes
from sw import ref

CLOCK_NS = 10


def make_tile(cfg, rng, spec, scale_base, thr_base):
    """A `sim.tiles.Tile` for one spec, with the spec's threshold mode applied."""
    most_negative = spec["scales"] == "most_negative"
    tile = random_tile(cfg, rng, k=spec["k"], wbases=spec["wbases"], abases=spec["abases"],
                       scale_mode="extreme" if most_negative else spec["scales"],
                       bits_mode=spec["bits"], raw=spec["raw"],
                       scale_base=scale_base, thr_base=thr_base)
    if most_negative:
        # random_tile keeps scales symmetric (-limit ..= limit); the format's most negative value
        # (-2**(scale_bits-1)) has no positive twin and is worth a case of its own.
        if -cfg.scale_min * spec["k"] * tile.passes > cfg.acc_max:
            raise ValueError(f"Spec {spec}: scale {cfg.scale_min} could overflow the accumulator")
        pick = rng.random(tile.scales.shape) < 0.5
        tile.scales = np.where(pick, cfg.scale_min, tile.scales).astype(np.int64)
    t_min, t_max = -(1 << (cfg.acc_bits - 1)), (1 << (cfg.acc_bits - 1)) - 1
    shape = tile.thresholds.shape      # (rows, max_abases)
    if spec["thr"] == "exact":
        # Thresholds equal to (or one off) sums the tile really produces: the >= / <= edge.
        acc = ref.multibasis_linear(ref.from_bits(tile.a_bits), ref.from_bits(tile.w_bits),
                                    tile.scales)                 # (cols, rows)
        cols = rng.integers(0, cfg.cols, size=shape)
        offsets = rng.choice([-1, 0, 0, 0, 1], size=shape)
        exact = acc[cols, np.arange(cfg.rows)[:, None]] + offsets
        tile.thresholds = np.clip(exact, t_min, t_max).astype(np.int64)
    elif spec["thr"] == "extreme":
        tile.thresholds = rng.choice([t_min, t_max, -cfg.acc_max, cfg.acc_max], size=shape).astype(
            np.int64)
    elif spec["thr"] != "random":
        raise ValueError(f"Threshold mode must be random, exact or extreme, not {spec['thr']!r}")
    return tile


def plan_batches(cfg, rng, specs, offset=True):
    """Tiles in batches whose parameters fit the memories together; with `offset` the first batch starts
    at a random address so high addresses are used too. Returns [[(spec, tile), ...], ...]."""
    batches, batch, scale_at, thr_at = [], [], None, None
    tiles = []
    for spec in specs:
        if "share" in spec:
            # Reuse an earlier tile's parameter regions and values (see scenarios.full_rate_specs).
            owner = tiles[spec["share"]]
            tile = make_tile(cfg, rng, dict(spec, thr="random"), owner.scale_base, owner.thr_base)
            tile.scales, tile.thresholds, tile.flip = owner.scales, owner.thresholds, owner.flip
            tile.shared = True
            if not batch or all(t is not owner for _, t in batch):
                raise ValueError(f"Spec {spec} shares parameters with a tile of another batch")
            batch.append((spec, tile))
            tiles.append(tile)
            continue
        need_s, need_t = spec["wbases"] * spec["abases"], cfg.rows
        if need_s > cfg.scale_depth or need_t > cfg.thr_depth:
            raise ValueError(f"Spec {spec} does not fit the parameter memories of {cfg}")
        if scale_at is None or scale_at + need_s > cfg.scale_depth or thr_at + need_t > cfg.thr_depth:
            if batch:
                batches.append(batch)
            batch = []
            scale_at = int(rng.integers(0, cfg.scale_depth - need_s + 1)) if offset and not batches else 0
            thr_at = int(rng.integers(0, cfg.thr_depth - need_t + 1)) if offset and not batches else 0
        tile = make_tile(cfg, rng, spec, scale_at, thr_at)
        tile.shared = False
        batch.append((spec, tile))
        tiles.append(tile)
        scale_at += need_s
        thr_at += need_t
    if batch:
        batches.append(batch)
    return batches


def describe(spec, tile):
    return (f"k={spec['k']} M={spec['wbases']} N={spec['abases']} bits={spec['bits']} "
            f"scales={spec['scales']} thr={spec['thr']} raw={spec['raw']} "
            f"scale_base={tile.scale_base} thr_base={tile.thr_base}")


class CoreHarness:
    """Clock, reset, the three sources, the result sink and a protocol monitor on the results."""

    def __init__(self, dut, cfg, rng, src_pause=0.0, sink_pause=0.0, corrupt=None):
        self.dut, self.cfg = dut, cfg
        self.corrupt = corrupt
        self.checked = 0
        self.lay = lay = CoreLayouts(cfg)
        Clock(dut.clk, CLOCK_NS, unit="ns").start()
        pause = random_pauses(rng, src_pause) if src_pause else None
        back = random_pauses(rng, sink_pause) if sink_pause else None
        self.beats = StreamSource(dut, "beats", dut.clk, lay.beat, pause=pause)
        self.scale_write = StreamSource(dut, "scale_write", dut.clk, lay.scale_write)
        self.thr_write = StreamSource(dut, "thr_write", dut.clk, lay.thr_write)
        self.results = StreamSink(dut, "results", dut.clk, lay.result, pause=back)
        self.monitor = StreamMonitor(dut, "results", dut.clk, lay.result)
        # Checks the bench's own source too: a pausing source must not withdraw an offered beat.
        self.beat_monitor = StreamMonitor(dut, "beats", dut.clk, lay.beat)

    def check_protocol(self):
        errors = self.monitor.errors + self.beat_monitor.errors
        assert not errors, "a stream broke the handshake rules: " + "; ".join(errors)
        assert len(self.monitor.transfers) == self.results.count
        assert len(self.beat_monitor.transfers) == self.beats.count

    async def reset(self):
        await reset_dut(self.dut.clk, self.dut.rst, cycles=3)
        await RisingEdge(self.dut.clk)

    async def write_parameters(self, batch):
        for _, tile in batch:
            if tile.shared:
                continue
            self.scale_write.send_many(tile_scale_writes(self.cfg, tile))
            self.thr_write.send_many(tile_thr_writes(self.cfg, tile))
        await self.scale_write.wait()
        await self.thr_write.wait()

    async def run_batch(self, batch):
        """Stream a batch's beats back to back and check every result. Returns mismatch messages."""
        cfg = self.cfg
        for _, tile in batch:
            self.beats.send_many(tile_beats(cfg, tile))
        errors = []
        for index, (spec, tile) in enumerate(batch):
            expected = tile_expected(cfg, tile)
            for row in range(cfg.rows):
                if self.checked == self.corrupt:
                    expected[row]["acc"][0] ^= 1
                self.checked += 1
                got = await self.results.recv()
                if got != expected[row]:
                    fields = [f"{name}: expected {expected[row][name]} got {got[name]}"
                              for name in expected[row] if got[name] != expected[row][name]]
                    errors.append(f"tile {index} ({describe(spec, tile)}) row {row}: "
                                  + "; ".join(fields))
        return errors


def _timeout_ns(cfg, specs, src_pause, sink_pause):
    """A generous bound on a run's simulated time (a hang fails quickly instead of running on)."""
    cycles = ideal_input_cycles(cfg, specs) + len(specs) * (cfg.rows + cfg.cols + 40)
    slow = 1.0 / max(0.05, (1 - src_pause) * (1 - sink_pause))
    return int(4 * slow * cycles + 2000) * CLOCK_NS


def _write_metrics(metrics):
    with open("metrics.json", "w") as file:
        json.dump(metrics, file, indent=2)


@cocotb.test()
async def tiles(dut):
    """Random and edge-case tiles, back to back within each batch, with the configured pauses."""
    cfg, params = bench_config(), bench_params()
    rng = np.random.default_rng(params.get("seed", 1))
    src_pause, sink_pause = params.get("src_pause", 0.0), params.get("sink_pause", 0.0)
    specs = params["specs"]
    h = CoreHarness(dut, cfg, rng, src_pause, sink_pause, corrupt=params.get("corrupt"))
    await h.reset()
    batches = plan_batches(cfg, rng, specs)
    start_wall, start_ns = time.perf_counter(), cocotb.utils.get_sim_time("ns")
    errors = []
    for batch in batches:
        await h.write_parameters(batch)
        await RisingEdge(dut.clk)   # the writes are in; the batch's passes may now read them
        errors += await with_timeout(h.run_batch(batch),
                                     _timeout_ns(cfg, [s for s, _ in batch], src_pause, sink_pause),
                                     "ns")
    cycles = (cocotb.utils.get_sim_time("ns") - start_ns) / CLOCK_NS
    wall = time.perf_counter() - start_wall
    passes = sum(s["wbases"] * s["abases"] for s in specs)
    metrics = {"tiles": len(specs), "passes": passes, "batches": len(batches),
               "results": h.results.count, "cycles": cycles, "wall_seconds": wall,
               "cycles_per_second": cycles / wall if wall else None,
               "src_pause": src_pause, "sink_pause": sink_pause,
               "monitor_valid_cycles": h.monitor.valid_cycles}
    _write_metrics(metrics)
    dut._log.info("tiles: %d tiles, %d passes, %d results in %d cycles (%.1f s, %.0f cycles/s)",
                  len(specs), passes, h.results.count, cycles, wall, metrics["cycles_per_second"])
    assert not errors, f"{len(errors)} mismatching results against sw.ref:\n" + "\n".join(errors[:20])
    h.check_protocol()
    assert h.results.count == len(specs) * cfg.rows


@cocotb.test()
async def full_rate(dut):
    """A long back-to-back run, source never idle, sink always ready: the core must accept a pass
    every max(ceil(K/W), rows) cycles and return every result bit for bit."""
    cfg, params = bench_config(), bench_params()
    rng = np.random.default_rng(params.get("seed", 1))
    specs = params["specs"]
    ideal = ideal_input_cycles(cfg, specs)
    assert ideal == params.get("ideal_cycles", ideal), "bench and test disagree on the ideal cycles"
    margin = params.get("margin", 2)
    h = CoreHarness(dut, cfg, rng)
    await h.reset()
    batches = plan_batches(cfg, rng, specs, offset=False)
    assert len(batches) == 1, "a full-rate run must fit the parameter memories at once"
    await h.write_parameters(batches[0])
    await RisingEdge(dut.clk)
    start_wall = time.perf_counter()
    errors = await with_timeout(h.run_batch(batches[0]),
                                _timeout_ns(cfg, specs, 0.0, 0.0), "ns")
    wall = time.perf_counter() - start_wall
    beat_times = h.beats.transfer_times
    result_times = h.results.transfer_times
    first = beat_times[0]
    input_cycles = round((beat_times[-1] - first) / CLOCK_NS)
    total_cycles = round((result_times[-1] - first) / CLOCK_NS)
    beats = len(beat_times)
    metrics = {"tiles": len(specs), "passes": sum(s["wbases"] * s["abases"] for s in specs),
               "beats": beats, "results": h.results.count,
               "ideal_input_cycles": ideal, "input_cycles": input_cycles,
               "total_cycles": total_cycles, "latency_cycles": total_cycles - input_cycles,
               "wall_seconds": wall, "cycles_per_second": total_cycles / wall if wall else None}
    _write_metrics(metrics)
    dut._log.info("full rate: %d beats, input %d cycles (ideal %d), first beat to last result %d "
                  "cycles; %.1f s wall, %.0f cycles/s", beats, input_cycles, ideal, total_cycles,
                  wall, metrics["cycles_per_second"])
    assert not errors, f"{len(errors)} mismatching results against sw.ref:\n" + "\n".join(errors[:20])
    h.check_protocol()
    assert input_cycles <= ideal + margin, (
        f"the core took {input_cycles} cycles to accept {beats} beats back to back; "
        f"sum over passes of max(ceil(K/W), rows) is {ideal} (margin {margin})")
