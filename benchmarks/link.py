"""Host link throughput and what share of an inference it takes (LFC and CNV).

    python -m benchmarks.link                # frame-overhead figures and per-inference shares
    python -m benchmarks.link --verilator    # also the cycles of full frames measured on BoardTop

Throughput follows from the frame format (docs/host-protocol.md): a full WRITE frame carries
frame_bytes - 5 bytes of entries in 7 + frame_bytes request bytes and an 8-byte reply, 10 bit times a
byte. `--verilator` measures full WRITE and READ frames and a STATUS round trip on BoardTop under
Verilator (sim/benches/board_host.py, testcase `throughput`) in clock cycles; the cycles that are not
line time are the board's own (CRC check, moving entries to the host port), which stay at the clock
rate when the baud rate changes.

The per-inference figures run the board backend's own host code (the same frames as on a board)
against a counting stand-in for the board, for FINN's LFC (784-1024-1024-1024-10) and CNV topologies
(benchmarks.cycles) on its 8 x 8, W = 32 array at 100 MHz: what is written once (program and memory
images), what each inference sends and receives (input, START, STATUS, logits, and the streamed
parameters of a program compiled with `--weights stream`), the input's request bytes as the backend
sends them (WRITE_NARROW frames of the packed image where the first layer reads it, WRITE frames of the
unfolded input otherwise) beside the raw image, and the share of the link in an inference's time, with
the compute time from the analytic cycles (equal to the RTL). Writes its section of
docs/performance.md.
"""

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from hw.link import ARGS_BYTES, STATUS_BYTES, Command
from sw.compile import compile_model
from sw.compile.testing import linear, random_model
from sw.runtime import open_backend
from sw.runtime.link import REPLY_OVERHEAD, REQUEST_OVERHEAD

from ._sections import update_section
from .cycles import CONFIG, SPECS as CNV_SPECS
from .report import PERFORMANCE

BAUDS = (115_200, 3_000_000)
FRAME_BYTES = 1024
LFC_SPECS = [linear(1024), linear(1024), linear(1024), linear(10)]
INPUT_COMMANDS = (Command.WRITE, Command.WRITE_NARROW)     # an inference writes only its input


def inference_traffic(bundle, cycles):
    """Line bytes (out, in) and requests of loading the bundle, and of one inference after it; and the
    request bytes of that inference's input (its WRITE / WRITE_NARROW frames)."""
    from boards.runtime import BoardBackend
    from sim.benches.board_model import CountingBoard
    board = CountingBoard(bundle.config, cycles, FRAME_BYTES)
    image = np.zeros((1,) + tuple(bundle.input["shape"]), dtype=np.uint8)

    def written():
        return sum(board.sent.get(command, 0) for command in INPUT_COMMANDS)

    with BoardBackend(bundle, transport=board, baud=BAUDS[0]) as backend:
        backend.run(image)                                   # connect, load, one inference
        first = (board.bytes_out, board.bytes_in, board.requests)
        before = written()
        backend.run(image)                                   # one more inference
    run = (board.bytes_out - first[0], board.bytes_in - first[1], board.requests - first[2])
    return tuple(a - b for a, b in zip(first, run)), run, written() - before


def frame_figures(baud, board_cycles, clock_hz=100e6):
    """Payload bytes/s of full WRITE and READ frames at `baud`, with the board's own cycles per frame."""
    write_line = REQUEST_OVERHEAD + FRAME_BYTES + REPLY_OVERHEAD
    read_line = REQUEST_OVERHEAD + ARGS_BYTES + REPLY_OVERHEAD + FRAME_BYTES
    return ((FRAME_BYTES - ARGS_BYTES) / (write_line * 10 / baud + board_cycles["write"] / clock_hz),
            FRAME_BYTES / (read_line * 10 / baud + board_cycles["read"] / clock_hz))


def measure_frames():
    """Cycles of a full WRITE, a full READ and a STATUS round trip on BoardTop under Verilator."""
    from hw.board_top import SIM_CLOCKS_PER_BIT
    from sim.runner import build_design, run_bench
    from sim.benches.board_model import LINK_CONFIG
    build = build_design(LINK_CONFIG, "board", opt="-O0")
    with tempfile.TemporaryDirectory(prefix="bnn-link-") as tmp:
        out = Path(tmp) / "out.json"
        run_bench(build, "sim.benches.board_host", testcase="throughput", params={"out": str(out)},
                  name="throughput")
        measured = json.loads(out.read_text())
    # Board cycles: what is left after the bytes' line time (10 bits of SIM_CLOCKS_PER_BIT cycles).
    for name in ("write", "read", "status"):
        entry = measured[name]
        entry["board_cycles"] = entry["cycles"] - entry["line_bytes"] * 10 * SIM_CLOCKS_PER_BIT
    return measured


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--verilator", action="store_true", help="measure full frames on BoardTop under Verilator")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    lines = []
    measured = measure_frames() if args.verilator else None
    board_cycles = {k: measured[k]["board_cycles"] if measured else 0 for k in ("write", "read")}
    lines += [f"Frames of up to {FRAME_BYTES} payload bytes (`BoardTop(frame_bytes=1024)`): a request costs "
              f"{REQUEST_OVERHEAD} bytes and a reply {REPLY_OVERHEAD} bytes of overhead, 10 bit times a byte "
              f"(8N1). Payload throughput of full frames, stop and wait, host turnaround not counted:", "",
              "| baud | line rate (bytes/s) | WRITE payload (bytes/s) | READ payload (bytes/s) | efficiency |",
              "| ---: | ---: | ---: | ---: | ---: |"]
    for baud in BAUDS:
        write, read = frame_figures(baud, board_cycles)
        lines.append(f"| {baud:,} | {baud / 10:,.0f} | {write:,.0f} | {read:,.0f} | "
                     f"{write / (baud / 10) * 100:.1f}% |")
    if measured:
        w, r, s = measured["write"], measured["read"], measured["status"]
        lines += ["", f"Measured on BoardTop under Verilator (UART at clock / 4, sim/benches/board_host.py "
                      f"`throughput`): a full WRITE ({w['payload']} entry bytes) took {w['cycles']:,} cycles of "
                      f"which {w['board_cycles']:,} are the board's own (CRC check, {w['payload']} entries to "
                      f"the host port at 2 cycles a byte, the reply's start); a full READ ({r['payload']} bytes) "
                      f"{r['cycles']:,} cycles, {r['board_cycles']:,} the board's; a STATUS round trip "
                      f"{s['cycles']:,} cycles ({s['line_bytes']} bytes). The table above includes these "
                      f"cycles at 100 MHz: they cost "
                      f"{w['board_cycles'] / 100e6 * 1e6:.0f} us a frame, under 1% even at 3 Mbaud."]

    lines += ["", "One inference on the board (board backend's own frames, counted), FINN topologies on the "
                  "8 x 8, W = 32 array at 100 MHz (compute from the analytic cycles, equal to the RTL):", "",
              "| network | written once: bytes (at " + " / ".join(f"{b:,}" for b in BAUDS) + " baud) | "
              "input per inference: request bytes (raw image) | per inference: out / in (bytes), requests | compute | "
              + " | ".join(f"link at {b:,} baud (share of the inference)" for b in BAUDS) + " |",
              "| --- | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in BAUDS) + " |"]
    # CNV with its pixel planes apart, as the default `precise` export keeps them: the first layer reads
    # the packed image; with `pow2` pixel scales the planes group and the host unfolds the image.
    packed = {"plane_groups": False}
    networks = [("LFC", LFC_SPECS, (1, 28, 28), "resident", {}),
                ("CNV", CNV_SPECS, (3, 32, 32), "resident", packed),
                ("CNV, parameters streamed", CNV_SPECS, (3, 32, 32), "stream", packed),
                ("CNV, pow2 pixel scales (plane groups, host unfold)", CNV_SPECS, (3, 32, 32), "resident", {})]
    inputs = {}
    for name, specs, shape, weights, options in networks:
        model = random_model(specs, shape, CONFIG, seed=0)
        bundle = compile_model(model, CONFIG, verify_images=0, weights=weights, **options)
        image = np.zeros((1,) + shape, dtype=np.uint8)
        cycles = int(open_backend("iss", bundle).run(image).cycles[0])
        load, run, sent = inference_traffic(bundle, cycles)
        inputs[name] = (sent, image.size, bundle.input.get("mode") == "packed")
        compute = cycles / CONFIG.clock_hz
        cells = []
        for baud in BAUDS:
            link = (run[0] + run[1]) * 10 / baud
            # A streamed program's SYNCs wait for the link: the run takes the longer of the two.
            cells.append(f"{link * 1e3:,.2f} ms ({link / (link + compute) * 100:.1f}%)" if weights != "stream" else
                         f"{link * 1e3:,.1f} ms (link-bound: {link / compute:,.0f}x compute)")
        once = " / ".join(f"{(load[0] + load[1]) * 10 / b:,.1f} s" for b in BAUDS)
        lines.append(f"| {name} | {load[0]:,} ({once}) | {sent:,} ({image.size:,}, {sent / image.size:.2f}x) | "
                     f"{run[0]:,} / {run[1]:,}, {run[2]} | {compute * 1e3:.3f} ms | " + " | ".join(cells) + " |")

    def input_size(name):
        sent, raw, _ = inputs[name]
        return f"{sent:,} request bytes, {sent / raw:.2f}x its {raw:,}-byte image"

    def input_note(name):
        how = "the packed image" if inputs[name][2] else "unfolded"
        return f"{name}'s input ({how}) is {input_size(name)}"

    lines += ["", f"Per inference the host writes the input (docs/isa.md \"First layer\": the packed image, "
                  f"`word_bytes` bytes a pixel in WRITE_NARROW frames, where the first layer reads it; otherwise "
                  f"the unfolded input, the first layer's receptive fields as bit-planes, in WRITE frames), "
                  f"sends START, polls STATUS (once here; on a board as often as the run lasts, "
                  f"{REQUEST_OVERHEAD + REPLY_OVERHEAD + STATUS_BYTES} bytes a poll), and reads the logits. The "
                  f"written-once bytes are the program and the parameter memories; a streamed program sends its "
                  f"parameters with every inference. **The link dominates every inference**, even at 3 Mbaud: "
                  f"{input_note('CNV')} (with `pow2` pixel scales, whose plane groups need the host unfold: "
                  f"{input_size('CNV, pow2 pixel scales (plane groups, host unfold)')}); "
                  f"{input_note('LFC')}. Streaming the parameters through the "
                  f"UART makes the program wait at its SYNCs for the link (tests/sim/test_board_link.py sees "
                  f"the streamed run take longer than the ISS for that reason): streaming pays only from a "
                  f"faster source (external memory). A USB serial adapter adds its turnaround (1-16 ms) to each "
                  f"request, which at 3 Mbaud is more than the line time of a small request.", "",
              "Command: `python -m benchmarks.link --verilator`."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        update_section(PERFORMANCE, "Host link", body)


if __name__ == "__main__":
    main()
