"""sw.ref throughput on a 3x3 binary convolution against torch.nn.functional.conv2d (float32, CPU).

    python -m benchmarks.ref_vs_torch [--batch 8] [--repeats 5]

Both compute the same convolution of +-1 data (64 -> 64 channels, 32x32, padding 1 with -1, as the
arithmetic spec pads); the script checks that they agree exactly before timing, and writes its
section of docs/performance.md.
"""

import argparse
import platform
import time

import numpy as np

from sw import ref

from ._sections import update_section
from .report import PERFORMANCE


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/performance.md")
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    c, o, hw = 64, 64, 32
    x = rng.choice(np.array([-1, 1], np.int8), size=(args.batch, c, hw, hw))
    w = rng.choice(np.array([-1, 1], np.int8), size=(o, c, 3, 3))
    xt = torch.from_numpy(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-1).astype(np.float32))
    wt = torch.from_numpy(w.astype(np.float32))

    got = ref.binary_conv2d(x, w, padding=1, pad_value=-1)
    expected = F.conv2d(xt, wt).numpy()
    if not np.array_equal(got, expected.astype(np.int32)):
        raise SystemExit("sw.ref and torch disagree: not timing a wrong answer")

    t_ref = best_time(lambda: ref.binary_conv2d(x, w, padding=1, pad_value=-1), args.repeats)
    with torch.no_grad():
        t_torch = best_time(lambda: F.conv2d(xt, wt), args.repeats)
    macs = args.batch * o * hw * hw * c * 9
    rows = [
        ("sw.ref.binary_conv2d (numpy, bit-packed)", t_ref),
        (f"torch.nn.functional.conv2d (float32, {torch.get_num_threads()} threads)", t_torch),
    ]
    table = ["| implementation | time per batch | binary MACs/s | images/s |", "| --- | --- | --- | --- |"]
    for name, t in rows:
        table.append(f"| {name} | {t * 1e3:.1f} ms | {macs / t / 1e9:.2f} G | {args.batch / t:.0f} |")
    body = "\n".join([
        f"3x3 convolution, 64 -> 64 channels, 32x32, padding 1, batch {args.batch} "
        f"({macs / 1e6:.0f} M binary MACs), identical outputs checked before timing; best of "
        f"{args.repeats}. Machine: {platform.machine()}, {platform.python_version()}, numpy {np.__version__}, "
        f"torch {torch.__version__}.",
        "",
        *table,
        "",
        f"sw.ref is {t_torch / t_ref:.2f}x the speed of torch float32 here. Command: "
        f"`python -m benchmarks.ref_vs_torch --batch {args.batch} --repeats {args.repeats}`.",
    ])
    print(body)
    if not args.no_write:
        update_section(PERFORMANCE, "Golden model (sw.ref) against torch", body)


if __name__ == "__main__":
    main()
