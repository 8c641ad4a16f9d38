"""Streamed parameters (LOAD / SYNC): what streaming a CNV-sized network's weights costs in cycles.

    python -m benchmarks.streaming               # analytic (ISS)
    python -m benchmarks.streaming --verilator   # also the measured RTL cycles of the streamed program

The network and array are benchmarks.cycles' (FINN's CNV topology, 8 x 8 elements of W = 32). The
resident program needs memories for every layer's parameters; the streamed one only for the largest
layer twice (two halves), and loads layer k+1 while layer k computes, one entry per cycle from the
load stream. Writes its section of docs/performance.md.
"""

import argparse
import time

import numpy as np

from sw.compile import compile_model
from sw.compile.testing import random_model
from sw.runtime import open_backend

from ._sections import update_section
from .cycles import CONFIG, SPECS
from .report import PERFORMANCE

MEMORIES = (("weight", "weight_depth"), ("scale", "scale_depth"), ("threshold", "thr_depth"))


def _used(bundle, streamed):
    """Entries of each parameter memory a program occupies."""
    used = {}
    for memory, _ in MEMORIES:
        segments = [s for s in (bundle.stream if streamed else bundle.segments) if s.memory == memory]
        used[memory] = max((s.base + len(s.values) for s in segments), default=0)
    return used


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--verilator", action="store_true", help="measure the streamed program's RTL cycles")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    model = random_model(SPECS, (3, 32, 32), CONFIG, seed=0)
    resident = compile_model(model, CONFIG, verify_images=1, weights="resident")
    # The smallest memories the streamed program needs: twice its largest layer, per memory.
    need = {memory: 0 for memory, _ in MEMORIES}
    for segment in compile_model(model, CONFIG, verify_images=0, weights="stream").stream:
        need[segment.memory] = max(need[segment.memory], len(segment.values))
    small = CONFIG.replace(**{depth: max(1, 2 * need[memory]) for memory, depth in MEMORIES})
    streamed = compile_model(model, small, verify_images=1, weights="stream")
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    a = open_backend("iss", resident).run(images)
    b = open_backend("iss", streamed).run(images)
    if not np.array_equal(a.logits, b.logits):
        raise SystemExit("resident and streamed logits differ: not reporting")
    measured = None
    if args.verilator:
        backend = open_backend("verilator", streamed)
        start = time.perf_counter()
        rtl = backend.run(images[:1])
        seconds = time.perf_counter() - start
        if not np.array_equal(rtl.logits, b.logits[:1]):
            raise SystemExit("Verilator and ISS logits differ: not reporting cycles of a wrong run")
        measured = rtl.layer_cycles[0]

    used_r, used_s = _used(resident, False), _used(streamed, True)
    entries = sum(len(s.values) for s in streamed.stream)
    rows = ["| layer | resident cycles | streamed cycles | extra | measured RTL (streamed) |",
            "| --- | ---: | ---: | ---: | ---: |"]
    for i, layer in enumerate(resident.layers):
        r, s = int(a.layer_cycles[0][i]), int(b.layer_cycles[0][i])
        m = "" if measured is None else f"{int(measured[i]):,}"
        rows.append(f"| {layer['name']} | {r:,} | {s:,} | {s - r:+,} | {m} |")
    total_r, total_s = int(a.cycles[0]), int(b.cycles[0])
    lines = [
        f"CNV topology (benchmarks.cycles) on {CONFIG.rows} x {CONFIG.cols}, W = {CONFIG.word_bits}: the "
        f"resident program against the same network streamed through LOAD / SYNC with memories of twice "
        f"the largest layer (analytic cycles, `hw.cycles.Timeline`, equal to the RTL in "
        f"tests/hw/test_accel.py and tests/sim; the source offers one entry per cycle).",
        "",
        "| memory | resident program uses | streamed program uses |",
        "| --- | ---: | ---: |",
        *[f"| {memory} entries | {used_r[memory]:,} | {used_s[memory]:,} |" for memory, _ in MEMORIES],
        "",
        *rows,
        "",
        f"Whole network: {total_r:,} cycles resident, {total_s:,} streamed ({100 * (total_s / total_r - 1):+.1f}%); "
        f"{entries:,} stream entries per image ({len(streamed.stream)} LOADs). A layer's extra cycles are its "
        f"SYNC's wait: the first layer's loads (nothing computes before them), and loads that take longer "
        f"than the previous layer computes (an FC layer's weights behind a short FC layer); every other "
        f"layer's loads hide behind compute (16 cycles: its LOADs and SYNC).",
    ]
    if measured is not None:
        same = np.array_equal(measured, b.layer_cycles[0])
        lines.append(f"Verilator: one streamed image in {seconds:.1f} s; measured per-layer cycles "
                     f"{'equal' if same else 'DIFFER FROM'} the analytic model.")
    lines += ["", f"Command: `python -m benchmarks.streaming{' --verilator' if args.verilator else ''}`."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        update_section(PERFORMANCE, "Streamed parameters (LOAD / SYNC, CNV-sized network)", body)


if __name__ == "__main__":
    main()
