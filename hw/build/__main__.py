"""python -m hw.build: build the accelerator for a board (see docs/build.md)."""

import argparse
import dataclasses
import json
import sys

import boards
from .. import config as _config_module
from ..cli import OneLineParser
from ..config import AccelConfig, ConfigError
from . import FMAX_MARGIN, BuildError, build, check_design
from .program import PROGRAM_TIMEOUT, program
from .toolchain import describe_critical_path



_BOOL_HELP = {"element_scales": "apply the scales in every processing element (rows x cols multipliers): "
                                 "a pass need not wait rows cycles for the readout (default off)"}


def _fields():
    return [f for f in dataclasses.fields(AccelConfig)]


def make_parser():
    board_lines = "\n".join(f"  {name:<12} {b.description}" + (" (default)" if name == boards.DEFAULT_BOARD else "")
                            for name, b in boards.BOARDS.items())
    parser = OneLineParser(
        prog="python -m hw.build",
        description="Build the BNN accelerator for a board: Verilog and a build plan or a bitstream, "
                    "plus resource and timing reports.",
        epilog=f"boards:\n{board_lines}\n\nConfig precedence: flags > --config FILE > the board's "
               f"default.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--board", default=boards.DEFAULT_BOARD,
                        help=f"board to build for: {', '.join(boards.BOARDS)} "
                             f"(default {boards.DEFAULT_BOARD})")
    parser.add_argument("--out", default=None, help="output folder (default build/<board>/)")
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="AccelConfig JSON file (fields not given keep the board's default)")
    parser.add_argument("--baud", default="115200", help="UART baud rate (default 115200)")
    parser.add_argument("--clock-mhz", metavar="MHZ", default=None,
                        help="run clock in MHz, or 'osc' for the board's oscillator: sets clock_hz; the "
                             "ECP5 and iCE40 flows make it with a PLL, the closest frequency at or below "
                             "it (default: the board's clock_hz, docs/build.md 'Clocks')")
    parser.add_argument("--force", action="store_true",
                        help="rebuild even if the plan and toolchain are unchanged")
    parser.add_argument("--no-vivado", action="store_true",
                        help="only write the Vivado plan even if vivado is on PATH")
    parser.add_argument("--top", choices=boards.TOPS, default=None,
                        help="board: UART + framed host link + the whole accelerator; core: the "
                             "compute core alone behind the byte protocol (default: the board's)")
    parser.add_argument("--program", action="store_true",
                        help="after the build, load the bitstream into the connected board "
                             "(openFPGALoader, iceprog or Vivado; see docs/build.md)")
    parser.add_argument("--program-timeout", metavar="SECONDS", default=str(PROGRAM_TIMEOUT),
                        help=f"stop the programmer after this long (default {PROGRAM_TIMEOUT:g})")
    group = parser.add_argument_group("config overrides")
    for f in _fields():
        low, high, meaning = _config_module._RANGES.get(f.name, (None, None, f"AccelConfig.{f.name}"))
        limits = f", {low}..{high}" if low is not None else ""
        if f.type in (bool, "bool"):
            group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None,
                               metavar="on|off", help=_BOOL_HELP[f.name])
            continue
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None,
                           metavar="N", help=f"{meaning}{limits}")
    return parser


def _bool_arg(name, text):
    value = text.strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise ConfigError(f"{name} must be on or off, not {text!r}")


def _int_arg(name, text):
    try:
        return int(text, 0)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, not {text!r}") from None
        if value != int(value):
            raise ConfigError(f"{name} must be an integer, not {text!r}") from None
        return int(value)


def resolve_config(board, args):
    """The board's default config, updated by --config FILE, then by the flags."""
    values = board.config.to_dict()
    if args.config is not None:
        # A file gives the fields it names; the others keep the board's default.
        try:
            with open(args.config) as file:
                text = file.read()
        except OSError as error:
            raise ConfigError(f"Cannot read config file {args.config}: {error.strerror}") from None
        try:
            named = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"Config file {args.config} is not valid JSON: {error}") from None
        if not isinstance(named, dict):
            raise ConfigError(f"Config file {args.config} must hold a JSON object, "
                              f"not {type(named).__name__}")
        values.update(named)
    for f in _fields():
        text = getattr(args, f.name)
        if text is not None:
            values[f.name] = (_bool_arg if f.type in (bool, "bool") else _int_arg)(f.name, text)
    if getattr(args, "clock_mhz", None) is not None:
        if args.clock_hz is not None:
            raise ConfigError("Give the run clock once: --clock-mhz or --clock-hz, not both")
        values["clock_hz"] = clock_mhz_arg(board, args.clock_mhz)
    return AccelConfig.from_dict(values)


def clock_mhz_arg(board, text):
    """`--clock-mhz`: a number of MHz, or "osc" for the board's oscillator; clock_hz in Hz."""
    if text.strip().lower() in ("osc", "oscillator"):
        return int(board.platform().default_clk_frequency)
    try:
        mhz = float(text)
    except ValueError:
        mhz = 0
    if not 0 < mhz < float("inf"):
        raise ConfigError(f"clock-mhz must be a positive number of MHz or 'osc', not {text!r}")
    return round(mhz * 1e6)


def _fmt(n):
    return f"{n:,.1f}" if isinstance(n, float) and n != int(n) else f"{int(n):,}"


_TOP_TEXT = {"board": "BoardTop: UART + framed host link + Accelerator",
             "core": "UARTShell: BinaryCore behind the byte protocol (no controller, no host link)"}


def summary(result):
    cfg = result.config
    board = result.board
    lines = [
        f"board      {board.name} ({board.device}), flow {board.flow}, output {result.out}",
        f"top        {_TOP_TEXT[result.top]}",
        "config     " + " ".join(f"{k}={v}" for k, v in cfg.to_dict().items()),
        f"peak       {cfg.macs_per_cycle:,} binary MACs per cycle "
        f"({cfg.rows}x{cfg.cols} elements x {cfg.word_bits} bits)",
    ]
    util = result.utilization
    for resource, available in board.capacity.items():
        used = util.get(resource, 0)
        lines.append(f"{resource:<10} {_fmt(used):>8} of {available:>8,} ({100 * used / available:5.1f}%)")
    source = ("yosys synth_xilinx estimate" if board.flow == "vivado-plan" else "nextpnr placed"
              if result.timing else f"yosys synth_{board.flow} estimate; not placed")
    lines.append(f"fits       {'yes' if result.fits else 'NO'} ({source})")
    oscillator = board.platform().default_clk_frequency
    lines.append(f"clock      {result.run_clock_hz / 1e6:g} MHz: "
                 + (f"PLL {result.pll.describe()}" if result.pll is not None
                    else f"the board's {oscillator / 1e6:g} MHz oscillator")
                 + (f" (asked for {cfg.clock_hz / 1e6:g})" if result.run_clock_hz != cfg.clock_hz else ""))
    if result.timing:
        t = result.timing
        lines.append(
            f"Fmax       {t['fmax_mhz']:.1f} MHz (nextpnr, clock {t['clock']}); the {t['run_clock_mhz']:g} MHz "
            f"run clock is {'met' if t['meets_run_clock'] else 'NOT met'}")
        if t.get("critical_path"):
            lines.append(f"critical   {describe_critical_path(t['critical_path'])}")
    for name, path in result.files.items():
        lines.append(f"{name:<11} {path}")
    if result.from_cache:
        lines.append(f"cache      copied from {result.from_cache}")
    if board.flow == "vivado-plan" and not result.vivado_run:
        lines.append(
            f"next       Vivado is not on PATH: finish on a machine with Vivado with "
            f"`cd {result.out} && sh build_top.sh` (writes top.bit)")
    return "\n".join(lines)


def main(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    prog = parser.prog
    try:
        board = boards.get_board(args.board)
    except KeyError as error:
        print(f"{prog}: error: {error.args[0]}", file=sys.stderr)
        return 2
    try:
        config = resolve_config(board, args)
        baud = _int_arg("baud", args.baud)
        if baud <= 0:
            raise ConfigError(f"baud must be a positive integer, not {args.baud!r}")
        try:
            timeout = float(args.program_timeout)
        except ValueError:
            timeout = 0
        if not timeout > 0:
            raise ConfigError(f"program-timeout must be a positive number of seconds, "
                              f"not {args.program_timeout!r}")
        check_design(board, config, baud, args.top)
    except ConfigError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    try:
        result = build(board, config, args.out, baud=baud, force=args.force,
                       run_vivado=False if args.no_vivado else None, top=args.top)
    except (BuildError, ValueError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    print(summary(result))
    if not result.fits:
        parts = [f"{r} {_fmt(u)} of {a:,} ({_fmt(u - a)} over, {100 * u / a:.0f}%)"
                 for r, (u, a) in result.over.items()]
        print(f"{prog}: error: config does not fit the {board.device}: {'; '.join(parts)}",
              file=sys.stderr)
        return 1
    if result.timing and not result.timing["meets_run_clock"]:
        t = result.timing
        print(f"{prog}: error: the routed design's Fmax {t['fmax_mhz']:.1f} MHz is below its "
              f"{t['run_clock_mhz']:g} MHz run clock; build with --clock-mhz {int(t['fmax_mhz'] / FMAX_MARGIN)} "
              f"(or --clock-mhz osc) before programming it", file=sys.stderr)
        return 1
    if args.program:
        try:
            log = program(result, timeout=timeout)
        except BuildError as error:
            print(f"{prog}: error: {error}", file=sys.stderr)
            return 1
        print(f"programmed the {board.name} with {result.out} (log: {log})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
