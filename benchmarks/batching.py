"""Batching across the array's columns: utilization of the README's LFC, FINN's LFC and CNV at batch 1
and batch C (the array's columns), from the cycle model (equal to the RTL's, tests/sim/test_pysim_backend.py).

    python -m benchmarks.batching [--no-write]

Networks (random weights; the cycles do not depend on them), each compiled for a board's default config:

* the README's LFC: `sw.train --model lfc --width 128 --wbases 3 --abases 3` (three 128-wide fully connected
  layers of 3 x 3 bases and a 10-way head, 28x28 input) on `arty_a7`;
* FINN's LFC (bnn_pynq lfcW1A1: three 1024-wide binary layers and a 10-way head) on `arty_a7_100`;
  both boards' default configs (element scales) and the same with column scale accumulators;
* CNV (FINN's topology at 1x1 bases, as `benchmarks.cycles`) on the `benchmarks.cycles` config, with the
  scale accumulators per column and per element (`AccelConfig.element_scales`).

Writes the section "Batching across the columns" of docs/performance.md and docs/batching.png.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

import boards
from sw.compile import compile_model
from sw.compile.testing import linear, random_model
from sw.iss import analytic_cycles

from ._sections import update_section
from .cycles import CONFIG as CNV_CONFIG
from .cycles import SPECS as CNV_SPECS
from .report import PERFORMANCE

HEADING = "Batching across the columns"
COMMAND = "python -m benchmarks.batching"
TARGET = 0.80
TARGET_CNV = 0.85

README_LFC = [linear(128, wbases=3, planes=3), linear(128, wbases=3, planes=3), linear(128, wbases=3, planes=3),
              linear(10, wbases=3)]
FINN_LFC = [linear(1024), linear(1024), linear(1024), linear(10)]


def run(specs, shape, config, batch):
    """Per-layer (name, kind, MACs, ideal, cycles) of one run and the run's total cycles. The first
    layer's pixel planes stay apart (the default `precise` export)."""
    model = random_model(specs, shape, config, seed=0)
    bundle = compile_model(model, config, batch=batch, verify_images=batch, plane_groups=False)
    per_pc = analytic_cycles(config, bundle.instructions)
    layers = [(layer["name"], layer["kind"], layer["macs"], layer["ideal_cycles"],
               sum(per_pc[pc] for pc in layer["instructions"])) for layer in bundle.layers]
    return {"layers": layers, "cycles": sum(per_pc), "batch": batch, "peak": config.macs_per_cycle,
            "clock": config.clock_hz, "weights": bundle.model["weights"]}


def utilization(result, kinds=None):
    rows = [r for r in result["layers"] if kinds is None or r[1] in kinds]
    ideal = sum(r[3] for r in rows)
    cycles = result["cycles"] if kinds is None else sum(r[4] for r in rows)
    return ideal / cycles


def main(argv=None):
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="print, do not update the docs")
    args = parser.parse_args(argv)
    # The Arty defaults (element scales, 128 result entries for C images of 10 logits), and the same
    # with the column scale accumulators.
    arty = boards.get_board("arty_a7").config
    arty100 = boards.get_board("arty_a7_100").config
    cases = []
    for label, specs, shape, where, config in (
            ("README LFC (w128, 3x3 bases)", README_LFC, (1, 28, 28), "arty_a7", arty),
            ("FINN LFC (lfcW1A1)", FINN_LFC, (1, 28, 28), "arty_a7_100", arty100),
            ("CNV 1x1", CNV_SPECS, (3, 32, 32), "benchmarks.cycles config, 128 result entries",
             CNV_CONFIG.replace(result_depth=128))):
        cases.append((f"{label}, column scales", specs, shape, where, config.replace(element_scales=False)))
        cases.append((f"{label}, element scales", specs, shape, where, config.replace(element_scales=True)))
    from tqdm import tqdm
    from sw.compile import CompileError
    results, refusals = {}, []
    for label, specs, shape, where, config in tqdm(cases, desc="compiling", file=sys.stderr):
        batch = config.cols
        while True:
            try:
                results[label] = (where, config, run(specs, shape, config, 1), run(specs, shape, config, batch))
                break
            except CompileError as error:
                # The largest batch that fits (a power of two below C), with the refusal recorded.
                refusals.append(f"* {label}, batch {batch}: {error}")
                batch //= 2
                if batch < 2:
                    raise

    rows = ["| network | config | batch | cycles a run | images/s | utilization | fully connected layers | "
            "target |", "|---|---|---:|---:|---:|---:|---:|---|"]
    layer_rows = []
    for label, (where, config, one, many) in results.items():
        for r in (one, many):
            fc = utilization(r, {"linear"})
            whole = utilization(r)
            fps = r["batch"] * r["clock"] / r["cycles"]
            if label.startswith("CNV"):
                target = f">= {100 * TARGET_CNV:.0f} % whole network: {'met' if whole >= TARGET_CNV else 'not met'}"
            else:
                target = f">= {100 * TARGET:.0f} %: {'met' if whole >= TARGET else 'not met'}"
            rows.append(f"| {label} | `{where}` {config.rows}x{config.cols} W={config.word_bits} | {r['batch']} | "
                        f"{r['cycles']:,} | {fps:,.0f} | {100 * whole:.1f}% | {100 * fc:.1f}% | "
                        f"{target if r['batch'] > 1 else '-'} |")
        layer_rows.append(f"| {label} | " + ", ".join(
            f"{name.split(' (')[0]} {100 * ideal / cycles:.0f}%" for name, _, macs, ideal, cycles in many["layers"]
            if macs) + " |")
    text = f"""
Images share a run (`python -m sw.compile --batch N`): every map holds the batch's images stacked, so a layer with fewer output pixels
than the array has columns (a fully connected layer has one) fills them with images (docs/compiler.md
"Batching"). Batch C = the array's columns. The Arty configs are the boards' defaults (element scales,
128 result entries), and the same with the column scale accumulators. Cycles are the cycle model's for one run of the batch
(equal to the RTL's: tests/sim/test_pysim_backend.py runs batched bundles on the RTL); utilization is
the batch's binary MACs over the run's cycles at the array's peak. Targets: the README's LFC, FINN's
LFC and every fully connected layer at {100 * TARGET:.0f} % or more at batch C; CNV at {100 * TARGET_CNV:.0f} %
or more over the whole network at batch C with the default `precise` export (1x1 bases here, so the
first layer's 8 pixel planes run as separate passes).

Command: `{COMMAND}` (about a minute; writes docs/batching.png).

{chr(10).join(rows)}

Where batch C does not fit, the largest power of two below it that does, and the compiler's refusal:

{chr(10).join(refusals) or "* none"}

Per layer at the largest batch:

| network | utilization per layer |
|---|---|
{chr(10).join(layer_rows)}

At batch 1 a fully connected layer uses one column of C. At batch C the columns are full; with the
column scale accumulators what remains is the R-cycle floor per pass where a layer's K is short (LFC-128:
4 K-words a pass against R = 8; FINN's LFC on R = 16: 13 and 16 K-words), which the element scales
remove (`AccelConfig.element_scales`, "Element scales"). CNV runs at batch 8 because its first layer
reads the packed image (1,024 activation words an image; the host unfold's 7,200 did not fit 8 images),
and each convolution runs once over the whole batch (`all_images`: layer 6's 3x3 output maps fill 9
tiles of 8 columns instead of 2 tiles an image). What remains: the first layer is gather-bound (C x 9
+ 1 = 73 cycles a tile of reads against 64 of compute), and the last classifier has 10 outputs on 8
rows.
"""
    print(text)
    if args.no_write:
        return 0
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 4))
    labels = list(results)
    x = np.arange(len(labels))
    ax.bar(x - 0.2, [100 * utilization(results[k][2]) for k in labels], 0.4, label="batch 1")
    ax.bar(x + 0.2, [100 * utilization(results[k][3]) for k in labels], 0.4, label="batch C (or the largest that fits)")
    ax.axhline(100 * TARGET, color="gray", linestyle="--", linewidth=1)
    ax.set_xticks(x, [label.replace(", ", "\n") for label in labels], fontsize=7)
    ax.set_ylabel("array utilization (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    fig.savefig(Path(PERFORMANCE).parent / "batching.png", dpi=110)
    update_section(PERFORMANCE, HEADING, text + "\n![utilization at batch 1 and C](batching.png)\n")
    print(f"updated {PERFORMANCE} (## {HEADING})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
