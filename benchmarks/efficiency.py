"""Array efficiency measured on the RTL: per-layer cycles and utilization of CNV and VGG-Small under
Verilator, against the analytic model. Writes its section of docs/performance.md and docs/efficiency.png.

    python -m benchmarks.efficiency                  # Verilator (a first run builds the simulator)
    python -m benchmarks.efficiency --backend pysim  # Amaranth's simulator (hours for these networks)

Networks (random weights at 1x1 bases: cycle counts do not depend on the weight values), 32x32x3 input:
CNV (FINN's topology: unpadded 3x3 convolutions 64-64-128-128-256-256, two 2x2 max pools, FC 512-512-10)
and VGG-Small (padded 3x3 convolutions 128-128-P-256-256-P-512-512-P, FC 10, as `sw.models`). Array:
8 x 8 elements of W = 32 (the arty_a7 geometry) with memories that hold either network and
max_k = 8192 (VGG-Small's classifier has K = 8192). One image per network runs on the RTL; its
logits must equal the ISS's.
"""

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

import boards
from sw.compile import compile_model
from sw.compile.testing import conv, linear, maxpool, random_model
from sw.report import analyse, measure

from ._sections import update_section
from .cycles import CONFIG as CNV_CONFIG
from .cycles import SPECS as CNV_SPECS
from .report import PERFORMANCE

CONFIG = CNV_CONFIG.replace(max_k=8192)
VGG_SMALL_SPECS = [conv(128, 3, padding=1), conv(128, 3, padding=1), maxpool(2),
                   conv(256, 3, padding=1), conv(256, 3, padding=1), maxpool(2),
                   conv(512, 3, padding=1), conv(512, 3, padding=1), maxpool(2), linear(10)]
NETWORKS = {"CNV": CNV_SPECS, "VGG-Small": VGG_SMALL_SPECS}
TARGET = 0.9
HEADING = "Array efficiency on the RTL (CNV and VGG-Small)"
COMMAND = "python -m benchmarks.efficiency"


def run(name, specs, backend):
    board = dataclasses.replace(boards.get_board("arty_a7"), config=CONFIG)
    model = random_model(specs, (3, 32, 32), CONFIG, seed=0)
    bundle = compile_model(model, CONFIG, verify_images=1)
    image = np.random.default_rng(1).integers(0, 256, (1, 3, 32, 32), dtype=np.uint8)
    start = time.perf_counter()
    measured = None
    if backend != "none":
        sys.stderr.write(f"{name}: one image on {backend} ...\n")
        measured = measure(bundle, backend, image)
    seconds = time.perf_counter() - start
    return analyse(bundle, board, measured=measured, measured_backend=None if backend == "none" else backend), \
        seconds


def table(report):
    rows = ["| layer | binary MACs | ideal cycles | analytic cycles | measured RTL cycles | utilization |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["layers"]:
        measured = "-" if r["measured_cycles"] is None else f"{r['measured_cycles']:,}"
        if r["macs"]:
            rows.append(f"| {r['name']} | {r['macs']:,} | {r['ideal_cycles']:,} | {r['cycles']:,} | {measured} | "
                        f"{100 * r['ideal_cycles'] / (r['measured_cycles'] or r['cycles']):.1f}% |")
        else:
            rows.append(f"| {r['name']} | - | - | {r['cycles']:,} | {measured} | - |")
    return rows


def summary(name, report, seconds):
    net = report["network"]
    cycles = net["measured_cycles"] or net["cycles"]
    convs = [r for r in report["layers"] if r["kind"] == "conv"]
    util = {r["name"]: r["ideal_cycles"] / (r["measured_cycles"] or r["cycles"]) for r in convs}
    met = [n for n, u in util.items() if u >= TARGET]
    same = net["measured_cycles"] is not None and all(r["measured_cycles"] == r["cycles"] for r in report["layers"])
    lines = [
        f"{name}: {cycles:,} cycles per image ({'measured on ' + net['measured_backend'] if net['measured_backend'] else 'analytic'}"
        f"{', equal to the analytic model on every layer' if same else ''}), ideal {net['ideal_cycles']:,}: "
        f"array utilization {100 * net['ideal_cycles'] / cycles:.1f}% over the network, "
        f"{100 * sum(r['macs'] for r in convs) / report['peak_macs_per_cycle'] / sum(r['measured_cycles'] or r['cycles'] for r in convs):.1f}% "
        f"over its convolutions; {report['clock_mhz'] * 1e6 / cycles:,.0f} images/s at {report['clock_mhz']:g} MHz. "
        f"Convolutions at >= {100 * TARGET:.0f}%: {len(met)} of {len(convs)}"
        + (f" ({', '.join(n.split(' (')[0] for n in met)})" if met else "")
        + f"; lowest {min(util.values()) * 100:.1f}% ({min(util, key=util.get).split(' (')[0]}).",
    ]
    if net["measured_backend"]:
        lines.append(f"The {net['measured_backend']} run of one image (and of the ISS, for its logits) took "
                     f"{seconds:.1f} s, including loading the memories through the host port and, on a "
                     f"first run, building the simulator.")
    return lines, len(met) == len(convs)


def plot(reports, path):
    from sw.report.plots import pyplot
    plt = pyplot()
    fig, axes = plt.subplots(1, len(reports), figsize=(6 * len(reports), 4), sharey=True)
    for ax, (name, report) in zip(np.atleast_1d(axes), reports.items()):
        layers = [r for r in report["layers"] if r["macs"]]
        util = [100 * r["ideal_cycles"] / (r["measured_cycles"] or r["cycles"]) for r in layers]
        ax.bar(range(len(layers)), util, color=["tab:green" if u >= 100 * TARGET else "tab:orange" for u in util])
        ax.axhline(100 * TARGET, color="gray", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(layers)), [r["name"].split(" (")[0].replace("layer ", "L") + " " + r["kind"]
                                          for r in layers], rotation=45, ha="right")
        ax.set_title(f"{name}: {report['geometry']}")
        ax.set_ylim(0, 100)
    np.atleast_1d(axes)[0].set_ylabel("array utilization % (measured RTL cycles)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="verilator", choices=["verilator", "pysim", "none"],
                        help="RTL backend to measure on (none: analytic only)")
    parser.add_argument("--no-write", action="store_true", help="print, do not update the docs")
    args = parser.parse_args(argv)
    reports, body, all_met = {}, [], True
    for name, specs in NETWORKS.items():
        report, seconds = run(name, specs, args.backend)
        reports[name] = report
        lines, met = summary(name, report, seconds)
        all_met &= met
        body += [f"**{name}**", "", *table(report), "", *lines, ""]
    intro = [
        (f"Per-layer cycles of one image on the RTL (`{args.backend}`) against the analytic model " if
         args.backend != "none" else "Per-layer analytic cycles (not measured on the RTL in this run) of the model ")
        +
        f"(`hw/cycles.py` through the ISS), on an {CONFIG.rows} x {CONFIG.cols} array of W = {CONFIG.word_bits} "
        f"({CONFIG.macs_per_cycle:,} binary MACs per cycle) with memories that hold each network; random "
        f"weights at 1x1 bases. Utilization = ideal cycles (binary MACs / peak) / measured cycles. "
        f"Target: at least {100 * TARGET:.0f}% on CNV's convolutions: "
        f"{'met' if all_met else 'not met'}.",
        "",
    ]
    outro = [f"Command: `{COMMAND}` (a few minutes once the simulator is built). Plot: docs/efficiency.png.",
             "Why the first layer, the 1-pixel layers and the classifiers fall short, and what would fix "
             "them: docs/accelerator-design.md, \"Known gaps\"."]
    text = "\n".join(intro + body + outro)
    print(text)
    if not args.no_write:
        update_section(PERFORMANCE, HEADING, text)
        plot(reports, Path(PERFORMANCE).parent / "efficiency.png")
        print(f"updated {PERFORMANCE} ({HEADING}) and docs/efficiency.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
