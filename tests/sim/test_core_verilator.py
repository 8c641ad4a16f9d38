"""BinaryCore's Verilog under Verilator, driven by cocotb, against sw.ref bit for bit (issue 2, item 5).

Each geometry is built once into `sim_build/core-<fingerprint>/` and reused while its Verilog is
unchanged. The benches live in `sim/benches/core_bench.py`; the tile specs (K, bases, operand, scale and
threshold modes) come from `sim/benches/scenarios.py`. See docs/verification.md.
"""

import json

import pytest

from hw.config import AccelConfig
from sim.benches.scenarios import edge_specs, full_rate_specs, ideal_input_cycles, random_specs
from sim.runner import BenchFailure, build_core, run_bench

pytestmark = pytest.mark.verilator

BENCH = "sim.benches.core_bench"

# Small memories and max_k keep each Verilator build short; the array geometry is what matters.
GEOMETRIES = {
    # acc_bits = scale_bits + dot_bits exactly: extreme scales reach the accumulator's limits.
    "2x2_w8": AccelConfig(rows=2, cols=2, word_bits=8, max_wbases=4, max_abases=3, scale_bits=16,
                          scale_frac=8, acc_bits=24, max_k=64, scale_depth=48, thr_depth=32,
                          out_depth=16),
    "4x8_w32": AccelConfig(rows=4, cols=8, word_bits=32, max_wbases=3, max_abases=2, scale_bits=12,
                           scale_frac=6, acc_bits=32, max_k=200, scale_depth=64, thr_depth=64,
                           out_depth=16),
    # acc_bits above 32: results wider than a machine word on the Verilog side.
    "8x8_w64": AccelConfig(rows=8, cols=8, word_bits=64, max_wbases=2, max_abases=2, scale_bits=16,
                           scale_frac=8, acc_bits=40, max_k=256, scale_depth=64, thr_depth=128,
                           out_depth=32),
}
# The scales applied in every element: passes need not wait for the row readout, so tiles can end
# every `rows` cycles and the output FIFO must cover rows + the latency to run at full rate.
GEOMETRIES["4x8_w32_element"] = GEOMETRIES["4x8_w32"].replace(element_scales=True, out_depth=32)


# The C++ of the model is compiled without optimisation: an 8x8, W=64 build then takes about a minute
# instead of three or four on a loaded 2-core machine, and the runs here are seconds either way.
OPT = "-O0"


def built(name):
    return build_core(GEOMETRIES[name], opt=OPT)


def metrics_of(result):
    return json.loads((result["results"].parent / "metrics.json").read_text())


@pytest.mark.parametrize("name", GEOMETRIES)
def test_edge_cases_with_backpressure(name, record_property):
    """Every edge case plus random tiles, idle cycles on the input and back-pressure on the output."""
    cfg = GEOMETRIES[name]
    specs = edge_specs(cfg) + random_specs(cfg, 100, seed=11)
    result = run_bench(built(name), BENCH, testcase="tiles", seed=3,
                       params={"specs": specs, "seed": 3, "src_pause": 0.3, "sink_pause": 0.5})
    metrics = metrics_of(result)
    record_property("metrics", metrics)
    assert result["tests"] == 1 and result["failed"] == 0
    assert metrics["results"] == len(specs) * cfg.rows


@pytest.mark.parametrize("name", GEOMETRIES)
def test_random_tiles_back_to_back(name):
    """Random tiles with no idle cycles and an always-ready sink (every pass admitted at once)."""
    cfg = GEOMETRIES[name]
    specs = random_specs(cfg, 100, seed=23)
    result = run_bench(built(name), BENCH, testcase="tiles", seed=4,
                       params={"specs": specs, "seed": 4, "src_pause": 0.0, "sink_pause": 0.0})
    assert metrics_of(result)["results"] == len(specs) * cfg.rows


@pytest.mark.parametrize("name", GEOMETRIES)
def test_full_rate(name, record_property):
    """A long back-to-back run: all results exact, and the input took at most
    sum over passes of max(ceil(K/W), rows) cycles."""
    cfg = GEOMETRIES[name]
    specs = full_rate_specs(cfg, 200, seed=5)
    ideal = ideal_input_cycles(cfg, specs)
    result = run_bench(built(name), BENCH, testcase="full_rate", seed=5,
                       params={"specs": specs, "seed": 5, "ideal_cycles": ideal, "margin": 2})
    metrics = metrics_of(result)
    record_property("metrics", metrics)
    print(f"{name}: {metrics['passes']} passes, {metrics['beats']} beats: input "
          f"{metrics['input_cycles']} cycles (ideal {ideal}), first beat to last result "
          f"{metrics['total_cycles']} cycles")
    assert metrics["ideal_input_cycles"] == ideal
    assert metrics["input_cycles"] <= ideal + 2
    # Latency bound: array skew (rows + cols), accumulator, thresholds and FIFO, and the last
    # tile's rows draining one per cycle.
    assert metrics["latency_cycles"] <= 2 * (cfg.rows + cfg.cols) + 16


def test_bench_detects_a_mismatch():
    """The bench is not vacuous: one expected value changed by one fails the pytest test with the
    tile, row and both values in the message."""
    cfg = GEOMETRIES["2x2_w8"]
    with pytest.raises(BenchFailure) as failure:
        run_bench(built("2x2_w8"), BENCH, testcase="tiles",
                  params={"specs": edge_specs(cfg)[:4], "seed": 1, "corrupt": 5})
    message = str(failure.value)
    assert "1 of 1 cocotb tests failed" in message
    assert "1 mismatching results against sw.ref" in message
    assert "row 1: acc: expected" in message


def test_build_is_reused():
    first = built("2x2_w8")
    again = built("2x2_w8")
    assert not again.built and again.build_dir == first.build_dir
    assert (again.build_dir / again.toplevel).exists()


# A wider sweep: degenerate and odd geometries, minimal output FIFOs (out_depth = rows, so the credit
# logic stalls the input under back-pressure), more seeds and heavier pauses.
SWEEP = {
    "1x1_w1": AccelConfig(rows=1, cols=1, word_bits=1, max_wbases=2, max_abases=2, scale_bits=8,
                          scale_frac=4, acc_bits=14, max_k=16, scale_depth=16, thr_depth=16,
                          out_depth=1),
    "3x5_w13": AccelConfig(rows=3, cols=5, word_bits=13, max_wbases=3, max_abases=3, scale_bits=10,
                           scale_frac=3, acc_bits=20, max_k=100, scale_depth=64, thr_depth=32,
                           out_depth=3),
    "16x4_w16": AccelConfig(rows=16, cols=4, word_bits=16, max_wbases=2, max_abases=2,
                            scale_bits=16, scale_frac=8, acc_bits=32, max_k=128, scale_depth=32,
                            thr_depth=64, out_depth=16),
}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("name", SWEEP)
def test_sweep(name, seed):
    cfg = SWEEP[name]
    build = build_core(cfg, opt=OPT)
    for src_pause, sink_pause in ((0.0, 0.8), (0.5, 0.5), (0.0, 0.0)):
        specs = edge_specs(cfg) + random_specs(cfg, 80, seed=100 + seed)
        result = run_bench(build, BENCH, testcase="tiles", seed=seed,
                           name=f"sweep_{name}_{seed}_{src_pause}_{sink_pause}",
                           params={"specs": specs, "seed": seed, "src_pause": src_pause,
                                   "sink_pause": sink_pause})
        assert metrics_of(result)["results"] == len(specs) * cfg.rows
    # Full rate is only promised with room in the output FIFO beyond one tile; here the run checks
    # the results and reports the cycles.
    specs = full_rate_specs(cfg, 150, seed=seed)
    result = run_bench(build, BENCH, testcase="full_rate", seed=seed, name=f"sweep_rate_{name}_{seed}",
                       params={"specs": specs, "seed": seed, "margin": 10 ** 9})
    metrics = metrics_of(result)
    print(f"{name}: input {metrics['input_cycles']} cycles, ideal {metrics['ideal_input_cycles']}")
    assert metrics["results"] == len(specs) * cfg.rows
