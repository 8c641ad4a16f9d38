"""Residual networks on the boards: cycles, utilization and frames/s of ResNet-18 and Bi-Real-18, and
what the shortcuts cost against their ideal cycles.

    python -m benchmarks.residual [--no-write]

Networks: the seeds' ResNet-18 and its Bi-Real layout (sw.models `resnet18`, `birealnet18`) on a
32x32x3 input (CIFAR-10), widths 16 and 32, at 1 x 1 and 2 x 2 bases, random weights (cycles do not
depend on the weight values), built torch-free with `sw.compile.testing`: identity shortcuts as the
exported two-basis 1x1 convolution, downsampling shortcuts as a binary 1x1 convolution at stride 2.
Each is compiled for the board's default config (resident or streamed, as the compiler chooses);
cycles are the cycle model's, which equals the RTL (tests/hw/test_accel.py, tests/sim). A shortcut's
cost is the layer's cycles minus the same layer's without its shortcut; its ideal is its binary MACs
over the array's MACs per cycle. Writes the section "Residual networks" of docs/performance.md and
docs/residual.png.
"""

import argparse
import sys
from pathlib import Path

import boards
from sw.compile import CompileError, compile_model
from sw.compile.testing import conv, linear, maxpool, random_model, shortcut
from sw.iss import analytic_cycles

from ._sections import update_section
from .report import PERFORMANCE

HEADING = "Residual networks"
COMMAND = "python -m benchmarks.residual"
BOARDS = ("arty_a7", "arty_a7_100", "ulx3s")
INPUT = (3, 32, 32)
TARGET_OVERHEAD = 0.05


def resnet18_specs(width, wbases, abases, bireal=False, shortcuts=True):
    """Layer specs of sw.models' resnet18 / birealnet18 at this width and bases (see _resnet18)."""
    specs, shapes = [], [INPUT]

    def add(spec, shape):
        specs.append(spec)
        shapes.append(shape)
        return len(specs) - 1

    def sc(source, channels, stride):
        if not shortcuts:
            return None
        c = shapes[source + 1][0]
        if stride == 1 and c == channels:
            return shortcut(source, 1, 1, 0, wbases=2)          # the identity, exported with two bases
        return shortcut(source, 1, stride, 0, wbases=wbases)

    def conv3(channels, stride, extra, source=None):
        c, h, w = shapes[-1]
        return add(conv(channels, 3, stride=stride, padding=1, wbases=wbases, planes=abases, source=source,
                        shortcut=extra), (channels, (h - 1) // stride + 1, (w - 1) // stride + 1))

    conv3(width, 1, None)
    for stage, channels in enumerate((width, 2 * width, 4 * width, 8 * width)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            block_input = len(specs) - 1
            if bireal:
                conv3(channels, stride, sc(block_input, channels, stride))
                conv3(channels, 1, sc(len(specs) - 1, channels, 1))
            else:
                conv3(channels, stride, None)
                conv3(channels, 1, sc(block_input, channels, stride))
    while shapes[-1][1] > 2:
        c, h, w = shapes[-1]
        add(maxpool(2), (c, h // 2, w // 2))
    add(linear(10, wbases=wbases), (10,))
    return specs


def layer_cycles(bundle):
    per_pc = analytic_cycles(bundle.config, bundle.instructions)
    return [sum(per_pc[pc] for pc in layer["instructions"]) for layer in bundle.layers]


def measure(name, width, wbases, abases, board, element_scales=None):
    """One network on one board's default config (`element_scales` True / False overrides the
    config's)."""
    cfg = boards.get_board(board).config
    if element_scales is not None:
        cfg = cfg.replace(element_scales=element_scales)
    bireal = name == "birealnet18"
    specs = resnet18_specs(width, wbases, abases, bireal)
    try:
        bundle = compile_model(random_model(specs, INPUT, cfg, seed=0), cfg, verify_images=1)
    except CompileError as error:
        return {"refused": str(error)}
    plain = compile_model(random_model(resnet18_specs(width, wbases, abases, bireal, shortcuts=False), INPUT,
                                       cfg, seed=0), cfg, verify_images=0, weights="stream" if
                          bundle.model["weights"] == "stream" else "resident")
    cycles, without = layer_cycles(bundle), layer_cycles(plain)
    macs = [layer["macs"] for layer in bundle.layers]
    plain_macs = [layer["macs"] for layer in plain.layers]
    extra = sum(a - b for a, b, spec in zip(cycles, without, specs) if spec.get("shortcut"))
    ideal = sum(-(-(a - b) // cfg.macs_per_cycle) for a, b, spec in zip(macs, plain_macs, specs)
                if spec.get("shortcut"))
    total = sum(cycles) + 3
    return {"cycles": total, "layers": list(zip([layer["name"] for layer in bundle.layers], macs, cycles)),
            "utilization": sum(macs) / (total * cfg.macs_per_cycle), "fps": cfg.clock_hz / total,
            "weights": bundle.model["weights"], "shortcut_cycles": extra, "shortcut_ideal": ideal,
            "peak": cfg.macs_per_cycle, "clock": cfg.clock_hz}


def plot(result, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [n.replace("layer ", "") for n, _, _ in result["layers"]]
    util = [100 * m / (c * result["peak"]) if c else 0 for _, m, c in result["layers"]]
    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.bar(range(len(util)), util, color="tab:blue")
    ax.set_xticks(range(len(util)), names, rotation=70, fontsize=7)
    ax.set_ylabel("array utilization (%)")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(0, 100)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="print, do not update the docs")
    args = parser.parse_args(argv)
    runs = [(name, width, m, n, board) for name in ("resnet18", "birealnet18") for width in (16, 32)
            for m, n in ((1, 1), (2, 2)) for board in BOARDS]
    results, element = {}, {}
    from tqdm import tqdm
    for run in tqdm(runs, desc="compiling", file=sys.stderr):
        results[run] = measure(*run)
        element[run] = measure(*run, element_scales=True)

    rows = ["| network | board | weights | cycles | utilization | frames/s at the board clock | "
            "shortcut cycles (ideal) | shortcut overhead | with element scales: cycles, utilization, "
            "shortcut overhead |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    refusals = []
    for (name, width, m, n, board), r in results.items():
        label = f"{name} w{width} {m}x{n}"
        if "refused" in r:
            rows.append(f"| {label} | `{board}` | - | does not fit | - | - | - | - | - |")
            refusals.append(f"* {label} on `{board}`: {r['refused']}")
            continue
        over = r["shortcut_cycles"] / r["shortcut_ideal"] - 1
        e = element[(name, width, m, n, board)]
        e_over = e["shortcut_cycles"] / e["shortcut_ideal"] - 1
        rows.append(f"| {label} | `{board}` | {r['weights']} | {r['cycles']:,} | {100 * r['utilization']:.1f}% | "
                    f"{r['fps']:,.0f} | {r['shortcut_cycles']:,} ({r['shortcut_ideal']:,}) | "
                    f"{100 * over:+.0f}% ({'met' if over <= TARGET_OVERHEAD else 'not met'}) | "
                    f"{e['cycles']:,}, {100 * e['utilization']:.1f}%, {100 * e_over:+.0f}% "
                    f"({'met' if e_over <= TARGET_OVERHEAD else 'not met'}) |")
    sample = results[("resnet18", 16, 1, 1, "arty_a7_100")]
    layer_rows = ["| layer | binary MACs | cycles | utilization |", "|---|---:|---:|---:|"]
    if "layers" in sample:
        for lname, macs, cycles in sample["layers"]:
            util = f"{100 * macs / (cycles * sample['peak']):.1f}%" if macs else "-"
            layer_rows.append(f"| {lname} | {macs:,} | {cycles:,} | {util} |")
    text = f"""
ResNet-18 and its Bi-Real layout (`sw.models` `resnet18`, `birealnet18`) on a 32x32x3 input, random
weights, compiled for each board's default config (resident or streamed as the compiler chooses).
Cycles are the cycle model's (equal to the RTL's). A shortcut's cost is its layer's cycles minus the
same layer's without the shortcut; its ideal is its binary MACs over the array's peak. Target: the
shortcuts cost at most their ideal cycles + {100 * TARGET_OVERHEAD:.0f}%.

Command: `{COMMAND}` (about a minute; writes docs/residual.png).

{chr(10).join(rows)}

Where a network does not fit, the compiler's refusal:

{chr(10).join(refusals) or "* none"}

Per layer, ResNet-18 width 16, 1 x 1 bases on `arty_a7_100` (docs/residual.png):

{chr(10).join(layer_rows)}

![per-layer utilization](residual.png)

A shortcut is a 1x1 convolution: its passes have K = the block input's channels, one or a few K-words,
and each pass costs at least R cycles (the core's pass spacing), so on narrow layers the shortcut
costs several times its ideal cycles; the identity's two weight bases double it again. With element
scales (`AccelConfig.element_scales`, the last column: the same board config with the scales applied
in every element) a pass costs its K-words, so the shortcut adds its words to each tile and to the
gather; what remains above the ideal is the words' unused bits where the block's channels are fewer
than W (16 channels in a 64-bit word on `arty_a7_100`) and the gather's per-pixel turn.
"""
    print(text)
    if not args.no_write:
        if "layers" in sample:
            plot(sample, Path(PERFORMANCE).parent / "residual.png", "ResNet-18 w16 1x1 on arty_a7_100: utilization per layer")
        update_section(PERFORMANCE, HEADING, text)
        print(f"updated {PERFORMANCE} (## {HEADING})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
