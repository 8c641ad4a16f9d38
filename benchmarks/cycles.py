"""Per-layer cycles and array utilization of a CNV-sized network, analytic (ISS) against measured RTL,
and the speed of the simulators.

    python -m benchmarks.cycles                 # analytic + ISS speed (seconds)
    python -m benchmarks.cycles --verilator     # also the measured RTL cycles and Verilator speed

Network: FINN's CNV topology (32x32x3 input, unpadded 3x3 convolutions 64-64-128-128-256-256 with two
2x2 max pools, FC 512-512-10), random weights at 1x1 bases (the cycle counts do not depend on the weight
values). Array: 8 x 8 elements of W = 32 (the arty_a7 default geometry) with memories large enough to
hold CNV. Writes its section of docs/performance.md and docs/cycles.png.
"""

import argparse
import time
from pathlib import Path

import numpy as np

from hw.config import AccelConfig
from sw.compile import compile_model
from sw.compile.testing import conv, linear, maxpool, random_model
from sw.runtime import open_backend

from ._sections import update_section
from .report import PERFORMANCE

CONFIG = AccelConfig(rows=8, cols=8, word_bits=32, weight_depth=65536, scale_depth=8192, thr_depth=8192,
                     act_depth=32768, patch_depth=1024, result_depth=64, instr_depth=64)
SPECS = [conv(64, 3), conv(64, 3), maxpool(2), conv(128, 3), conv(128, 3), maxpool(2), conv(256, 3),
         conv(256, 3), linear(512), linear(512), linear(10)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--verilator", action="store_true", help="measure the RTL under Verilator too")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--element-scales", action="store_true",
                        help="instead: the same network with the scales applied in every element "
                             "(AccelConfig.element_scales), against the column accumulators")
    args = parser.parse_args(argv)
    if args.element_scales:
        return element_scales_section(args.no_write)

    model = random_model(SPECS, (3, 32, 32), CONFIG, seed=0)
    bundle = compile_model(model, CONFIG, verify_images=1)
    plain = compile_model(model, CONFIG, verify_images=0, plane_groups=False)
    images = np.random.default_rng(0).integers(0, 256, (32, 3, 32, 32), dtype=np.uint8)

    start = time.perf_counter()
    iss = open_backend("iss", bundle).run(images)
    iss_seconds = time.perf_counter() - start
    analytic = iss.layer_cycles[0]
    measured = None
    if args.verilator:
        backend = open_backend("verilator", bundle)
        backend.run(images[:1])                            # build (cached) outside the timing
        start = time.perf_counter()
        rtl = backend.run(images[:2])
        rtl_seconds = time.perf_counter() - start
        if not np.array_equal(rtl.logits, iss.logits[:2]):
            raise SystemExit("Verilator and ISS logits differ: not reporting cycles of a wrong run")
        measured = rtl.layer_cycles[0]

    rows = ["| layer | binary MACs | ideal cycles | analytic cycles | measured RTL cycles | utilization |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    names, utils = [], []
    total_macs = total_ideal = 0
    conv_macs = conv_cycles = 0
    for i, layer in enumerate(bundle.layers):
        macs, ideal = layer["macs"], layer["ideal_cycles"]
        cycles = int(analytic[i])
        util = ideal / cycles if cycles and macs else 0.0
        total_macs += macs
        total_ideal += ideal
        if layer["kind"] == "conv":
            conv_macs += macs
            conv_cycles += cycles
        names.append(layer["name"].split(" (")[0].replace("layer ", "L") + f" {layer['kind']}")
        utils.append(util)
        m = "" if measured is None else f"{int(measured[i]):,}"
        rows.append(f"| {layer['name']} | {macs:,} | {ideal:,} | {cycles:,} | {m} | "
                    f"{100 * util:.1f}% |" if macs else
                    f"| {layer['name']} | - | - | {cycles:,} | {m} | - |")
    total = int(iss.cycles[0])
    plain_cycles = open_backend("iss", plain).run(images[:1])
    plain_total, plain_first = int(plain_cycles.cycles[0]), int(plain_cycles.layer_cycles[0][0])
    peak = CONFIG.macs_per_cycle
    fps = CONFIG.clock_hz / total
    lines = [
        f"FINN's CNV topology at 1x1 bases on an {CONFIG.rows} x {CONFIG.cols} array of W = "
        f"{CONFIG.word_bits} ({peak:,} binary MACs per cycle), analytic cycles from `hw/cycles.py` (the "
        f"ISS), which equal the RTL's cycle counter exactly wherever both are measured.",
        "",
        *rows,
        "",
        f"Whole network: {total:,} cycles per image (ideal {total_ideal:,}), array utilization "
        f"{100 * total_ideal / total:.1f}%; convolutions alone {100 * (conv_macs / peak) / conv_cycles:.1f}%. "
        f"At {CONFIG.clock_hz / 1e6:.0f} MHz: {fps:,.0f} images/s.",
        f"The first layer folds its 8 pixel planes into {len(bundle.input['groups'])} activation bases "
        f"(docs/compiler.md \"First layer: plane groups\"; the generator's pixel scales are exact powers of "
        f"two, as `--pixel-scales pow2` exports them); with the planes apart (the default `precise` export), "
        f"reading the packed image (docs/isa.md \"Packed image input\"), "
        f"the first layer takes {plain_first:,} cycles and the network {plain_total:,} "
        f"({100 * total_ideal / plain_total:.1f}% utilization).",
        f"Targets: at least 90% utilization on every convolution at least as large as the array, "
        f"80% over a CNV-sized network.",
        "",
        f"ISS: {len(images) / iss_seconds:.1f} images/s on this network ({len(images)} images in "
        f"{iss_seconds:.2f} s).",
    ]
    if measured is not None:
        same = np.array_equal(measured, analytic)
        lines.append(f"Verilator: 2 images ({2 * total:,} cycles) in {rtl_seconds:.1f} s including host-port "
                     f"loading, {2 * total / rtl_seconds:,.0f} simulated cycles per wall second; per-layer "
                     f"measured cycles {'equal' if same else 'DIFFER FROM'} the analytic model.")
    lines.append("")
    lines.append(f"Command: `python -m benchmarks.cycles{' --verilator' if args.verilator else ''}`. "
                 f"Plot: docs/cycles.png.")
    body = "\n".join(lines)
    print(body)
    if args.no_write:
        return
    update_section(PERFORMANCE, "Cycles and array utilization (CNV-sized network)", body)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    x = np.arange(len(names))
    ax1.bar(x - 0.2, [layer["ideal_cycles"] for layer in bundle.layers], 0.4, label="ideal")
    ax1.bar(x + 0.2, analytic, 0.4, label="analytic = RTL")
    ax1.set_ylabel("cycles per image")
    ax1.set_yscale("log")
    ax1.legend()
    ax2.bar(x, [100 * u for u in utils], color="tab:green")
    ax2.axhline(90, color="gray", linestyle="--", linewidth=1)
    ax2.set_ylabel("array utilization %")
    ax2.set_xticks(x, names, rotation=45, ha="right")
    fig.suptitle(f"CNV on {CONFIG.rows}x{CONFIG.cols}x{CONFIG.word_bits}: {total:,} cycles/image")
    fig.tight_layout()
    fig.savefig(Path(__file__).resolve().parent.parent / "docs" / "cycles.png", dpi=110)


def element_scales_section(no_write=False):
    """Per-layer cycles with the scale accumulators per column (the default) and in every element,
    with the first layer's pixel planes apart (the default `precise` export) and folded (`pow2`)."""
    model = random_model(SPECS, (3, 32, 32), CONFIG, seed=0)
    images = np.random.default_rng(0).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    runs = {}
    for mode, config in (("column", CONFIG), ("element", CONFIG.replace(element_scales=True))):
        for scales, groups in (("precise", False), ("pow2", True)):
            bundle = compile_model(model, config, verify_images=1, plane_groups=groups)
            result = open_backend("iss", bundle).run(images)
            runs[mode, scales] = (bundle, result)
    if not all(np.array_equal(r.logits, runs["column", "precise"][1].logits) for _, r in runs.values()):
        raise SystemExit("the four builds' logits differ: not reporting cycles of a wrong run")
    layers = runs["column", "precise"][0].layers
    peak = CONFIG.macs_per_cycle
    keys = [("column", "precise"), ("element", "precise"), ("column", "pow2"), ("element", "pow2")]
    rows = ["| layer | ideal cycles | " + " | ".join(f"{m}, {s}" for m, s in keys) + " |",
            "| --- | ---: | " + " | ".join("---:" for _ in keys) + " |"]
    for i, layer in enumerate(layers):
        ideal = layer["ideal_cycles"]
        cells = []
        for key in keys:
            cycles = int(runs[key][1].layer_cycles[0][i])
            cells.append(f"{cycles:,} ({100 * ideal / cycles:.1f}%)" if layer["macs"] else f"{cycles:,}")
        rows.append(f"| {layer['name']} | {ideal:,} | " + " | ".join(cells) + " |" if layer["macs"] else
                    f"| {layer['name']} | - | " + " | ".join(cells) + " |")
    ideal_total = sum(layer["ideal_cycles"] for layer in layers)
    totals = {key: int(runs[key][1].cycles[0]) for key in keys}
    rows.append("| whole network | " + f"{ideal_total:,} | " + " | ".join(
        f"{totals[key]:,} ({100 * ideal_total / totals[key]:.1f}%)" for key in keys) + " |")
    body = "\n".join([
        f"FINN's CNV topology at 1x1 bases (as above) on {CONFIG.rows} x {CONFIG.cols}, W = {CONFIG.word_bits} "
        f"({peak:,} binary MACs per cycle): cycles per image (array utilization) with the scales applied "
        f"by one accumulator per column after a row-by-row readout (`element_scales` off, the default: a "
        f"pass costs at least R cycles) and in every element (`element_scales` on: a pass costs its "
        f"K-words, a tile at least R), each with the first layer's 8 pixel planes as separate passes "
        f"(`precise`, the default export) and folded into plane groups (`pow2`). ISS cycles, which equal "
        f"the RTL's in every test (tests/hw/test_accel.py, tests/sim/test_pysim_backend.py); logits of "
        f"the four builds are identical.",
        "",
        *rows,
        "",
        f"Targets (batch 1 here): the CNV first layer at 80 % or more and the whole CNV "
        f"at 85 % or more with the `precise` export. First layer with element scales: "
        f"{100 * layers[0]['ideal_cycles'] / int(runs['element', 'precise'][1].layer_cycles[0][0]):.1f}%; "
        f"whole network {100 * ideal_total / totals['element', 'precise']:.1f}% (the fully connected "
        f"layers and 1-pixel maps use one column of C until images are batched across the columns).",
        "",
        "Command: `python -m benchmarks.cycles --element-scales`.",
    ])
    print(body)
    if not no_write:
        update_section(PERFORMANCE, "Element scales (CNV-sized network)", body)


if __name__ == "__main__":
    main()
