"""python -m sw.run --port /dev/ttyUSB1 prog.bundle image.png [more images, .npy files, DATASET:SPLIT:COUNT]

Classifies images on a board (hw.board_top.BoardTop, flashed for the bundle's config) over its serial
port with the `board` runtime backend, and prints each image's prediction, logits and cycles. Inputs
are read as `python -m sim.run` reads them. A port that cannot be opened, a board that does not answer
or one built for another config is one line on stderr and exit status 1, after at most
(retries + 1) x (timeout + quiet) seconds.
"""

import sys
import time

from hw.cli import OneLineParser

PROG = "python -m sw.run"


def parser():
    p = OneLineParser(prog=PROG, description="Classify images on a board over its serial port.")
    p.add_argument("--port", required=True, help="the board's serial port, e.g. /dev/ttyUSB1 or COM3")
    p.add_argument("--baud", type=int, default=115200, help="baud rate the board was built for (default 115200)")
    p.add_argument("--timeout", type=float, default=0.5,
                   help="seconds of latency allowed per request before a retry (default 0.5)")
    p.add_argument("--retries", type=int, default=5, help="retries of a failed request (default 5)")
    p.add_argument("--run-timeout", type=float, default=10.0,
                   help="seconds one image's program may run (default 10)")
    p.add_argument("bundle", help="the program bundle (python -m sw.compile writes one)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, .npy files of uint8 images, or DATASET:SPLIT:COUNT")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    import numpy as np

    from sim.run import UserError, gather_inputs, print_predictions
    from sw.bundle import BundleError, load_bundle
    from sw.runtime import RuntimeApiError, open_backend

    if args.baud <= 0 or args.timeout <= 0 or args.run_timeout <= 0 or args.retries < 0:
        parser().error("--baud, --timeout and --run-timeout must be positive and --retries not negative")
    try:
        bundle = load_bundle(args.bundle)
        items = gather_inputs(args.inputs, tuple(bundle.input["shape"]))
        images = np.stack([item[0] for item in items])
        sys.stderr.write(f"connecting to the board on {args.port} at {args.baud} baud ...\n")
        start = time.perf_counter()
        from tqdm import tqdm
        with tqdm(desc="program and memories", unit="B", unit_scale=True, leave=False,
                  disable=not sys.stderr.isatty()) as bar, \
                open_backend("board", bundle, port=args.port, baud=args.baud, timeout=args.timeout,
                             retries=args.retries, run_timeout=args.run_timeout, progress=bar.update) as backend:
            bar.total = backend.load_bytes()
            backend.load()
            backend.link.on_frame = None
            bar.close()
            results = [backend.run(images[i:i + 1])
                       for i in tqdm(range(len(images)), desc="images", unit="image", leave=False,
                                     disable=not sys.stderr.isatty())]
            link = backend.link
            info = backend.info
        wall = time.perf_counter() - start
    except (BundleError, UserError, RuntimeApiError) as error:
        sys.stderr.write(f"{PROG}: error: {error}\n")
        return 1
    cycles = np.concatenate([r.cycles for r in results])
    print_predictions(items, np.concatenate([r.logits for r in results]), cycles)
    retried = sum(link.failures.values())
    # The board's INFO says its run clock (its PLL's output), which turns cycles into time.
    compute = ("clock not reported (a version 1 board)" if info.clock_hz is None else
               f"{info.clock_hz / 1e6:g} MHz clock, {1e3 * info.seconds(float(cycles.mean())):.3f} ms of "
               f"compute per image")
    print(f"board on {args.port}: {len(images)} images in {wall:.2f} s ({compute}); {link.frames} requests, "
          f"{link.bytes_out} bytes out, {link.bytes_in} bytes in, {retried} retried")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
