"""`python -m hw.build`: the board registry, bad input, the Arty plan + utilization and a real ECP5
bitstream for a small config."""

import dataclasses
import json
import subprocess
import sys

import pytest

import boards
from hw.build import build, fit_report
from hw.build.__main__ import main, make_parser, resolve_config
from hw.build.toolchain import nextpnr_report, xilinx_utilization
from hw.config import AccelConfig, ConfigError

SMALL = ["--rows", "2", "--cols", "2", "--word-bits", "8", "--max-wbases", "2", "--max-abases", "2",
         "--max-k", "64", "--scale-depth", "16", "--thr-depth", "16", "--out-depth", "4"]


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
    assert {"arty_a7", "arty_a7_100", "ulx3s"} <= set(boards.BOARDS)
    assert boards.DEFAULT_BOARD == "arty_a7"
    for board in boards.BOARDS.values():
        assert board.config.macs_per_cycle > 0
        assert board.flow in boards.FLOWS
    assert boards.get_board("ulx3s").flow == "ecp5"
    with pytest.raises(KeyError, match="supported boards: arty_a7, arty_a7_100, ulx3s"):
        boards.get_board("zedboard")
    with pytest.raises(ValueError, match="Board flow must be one of vivado-plan, ecp5, not 'quartus'"):
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
                    "arty_a7, arty_a7_100, ulx3s")


@pytest.mark.parametrize("args, message", [
    (["--rows", "0"], "rows (array rows (output channels per tile)) must be an integer from 1 to 64, not 0"),
    (["--word-bits", "abc"], "word_bits must be an integer, not 'abc'"),
    (["--acc-bits", "99"], "acc_bits"),
    (["--baud", "0"], "baud must be a positive integer"),
])
def test_invalid_config_value(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


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


def test_does_not_fit(tmp_path, monkeypatch, capsys):
    """A config too big for the device writes its report and says by how much, in one line."""
    arty = boards.get_board("arty_a7")
    tiny = dataclasses.replace(arty, name="tiny_arty", device="xc7a-tiny",
                               capacity={"LUT": 100, "FF": 41_600, "BRAM": 50, "DSP": 90})
    monkeypatch.setitem(boards.BOARDS, "tiny_arty", tiny)
    out = tmp_path / "tiny"
    assert main(["--board", "tiny_arty", *SMALL, "--out", str(out), "--no-vivado"]) == 1
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
    assert 200 < util["LUT"] < 5000
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
    assert timing["fmax_mhz"] > 25.0 and timing["meets_board_clock"]
    assert timing["constraint_mhz"] == cfg.clock_hz / 1e6
    util = json.loads((tmp_path / "ulx3s" / "utilization.json").read_text())["utilization"]
    assert 100 < util["LUT"] < 20_000 and util["FF"] > 100
    assert result.fits and result.timing["fmax_mhz"] == timing["fmax_mhz"]
