"""Boards the accelerator builds for: one small module per board, each defining `BOARD`.

A `Board` names its amaranth-boards platform, its default `AccelConfig` (sized to the device), the
device's capacity and its flow:

* ``vivado-plan``: Amaranth writes the Vivado build plan (Verilog, XDC, TCL, script); it runs when
  Vivado is on PATH. Resource estimates come from YoWASP Yosys ``synth_xilinx``.
* ``ecp5``: a real bitstream from YoWASP Yosys ``synth_ecp5``, nextpnr-ecp5 and ecppack.
* ``ice40``: a real bitstream from YoWASP Yosys ``synth_ice40``, nextpnr-ice40 and icepack.

A board also lists its `Programmer` commands (`python -m hw.build --program`), tried in order.
Adding a board is one module here with a `BOARD`; `boards.BOARDS` finds it (docs/build.md, "Adding a
board").
"""

import importlib
import pkgutil
from dataclasses import dataclass, field

from hw.config import AccelConfig

__all__ = ["Board", "Programmer", "BOARDS", "DEFAULT_BOARD", "get_board", "FLOWS", "TOPS", "openfpgaloader",
           "vivado_hardware_manager"]

FLOWS = ("vivado-plan", "ecp5", "ice40")

#: What a build puts on the device: ``board`` is `hw.board_top.BoardTop` (UART, framed host link,
#: the whole `Accelerator`); ``core`` is `hw.shell.UARTShell` (`BinaryCore` alone behind the byte
#: protocol of docs/build.md), for devices too small for the controller.
TOPS = ("board", "core")

#: Resource kinds a device capacity lists; utilization reports use the same keys.
RESOURCES = ("LUT", "FF", "BRAM", "DSP")


@dataclass(frozen=True)
class Programmer:
    """One way to program a board: `<tool> <args...> <bitstream>`.

    tool      : the executable, looked up on PATH ("openFPGALoader", "iceprog", "vivado").
    env       : the environment variable that overrides the tool's path, as Amaranth's platforms
                read it ("OPENFPGALOADER", "ICEPROG", "VIVADO").
    args      : arguments before the bitstream file.
    bitstream : the build output it loads ("top.bit", "top.bin").
    script    : (file name, text) written next to the bitstream before the tool runs, or None.
    """
    tool: str
    env: str
    args: tuple = ()
    bitstream: str = "top.bit"
    script: tuple = None


@dataclass(frozen=True)
class Board:
    """One board: platform, default config, device capacity and build flow.

    name        : the name `python -m hw.build --board` takes.
    description : one line for `--help`.
    platform    : the amaranth-boards platform class (instantiated by the build).
    config      : the default `AccelConfig` for this board.
    capacity    : device resources, keys `RESOURCES`: LUTs (LUT6 on Xilinx, LUT4 on ECP5), FFs,
                  block RAMs (36 Kb on Xilinx, 18 Kb EBR on ECP5) and DSP / multiplier blocks.
    flow        : one of `FLOWS`.
    device      : the FPGA part, for messages.
    programmers : `Programmer`s for `--program`, the first one installed is used.
    top         : one of `TOPS`, the default top (`python -m hw.build --top` overrides it).
    """
    name: str
    description: str
    platform: type
    config: AccelConfig
    capacity: dict = field(hash=False)
    flow: str
    device: str
    programmers: tuple = ()
    top: str = "board"

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"Board name must be an identifier, not {self.name!r}")
        if self.flow not in FLOWS:
            raise ValueError(f"Board flow must be one of {', '.join(FLOWS)}, not {self.flow!r}")
        if not isinstance(self.config, AccelConfig):
            raise TypeError(f"Board config must be an AccelConfig, not {self.config!r}")
        if sorted(self.capacity) != sorted(RESOURCES) or not all(
                isinstance(v, int) and v > 0 for v in self.capacity.values()):
            raise ValueError(
                f"Board capacity must give positive integers for {', '.join(RESOURCES)}, "
                f"not {self.capacity!r}")
        if self.top not in TOPS:
            raise ValueError(f"Board top must be one of {', '.join(TOPS)}, not {self.top!r}")
        if not all(isinstance(p, Programmer) for p in self.programmers):
            raise TypeError(f"Board programmers must be Programmer objects, not {self.programmers!r}")


def openfpgaloader(board, *args, bitstream="top.bit"):
    """openFPGALoader for one of its board names (`openFPGALoader --list-boards`), into SRAM."""
    return Programmer("openFPGALoader", "OPENFPGALOADER", ("-b", board, *args), bitstream)


# Vivado's hardware manager: the first device on the first JTAG target, as `program.tcl <bit>`.
_VIVADO_PROGRAM_TCL = """\
set bitstream [lindex $argv 0]
open_hw_manager
connect_hw_server
open_hw_target
set device [lindex [get_hw_devices] 0]
current_hw_device $device
set_property PROGRAM.FILE $bitstream $device
program_hw_devices $device
close_hw_manager
"""


def vivado_hardware_manager():
    """Vivado in batch mode running `program_vivado.tcl` (written next to the bitstream)."""
    return Programmer("vivado", "VIVADO", ("-mode", "batch", "-nojournal", "-nolog", "-source",
                                           "program_vivado.tcl", "-tclargs"), "top.bit",
                      script=("program_vivado.tcl", _VIVADO_PROGRAM_TCL))


def _discover():
    boards = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        board = getattr(module, "BOARD", None)
        if isinstance(board, Board):
            boards[board.name] = board
    return dict(sorted(boards.items()))


BOARDS = _discover()
DEFAULT_BOARD = "arty_a7"


def get_board(name):
    """The `Board` called `name`; an unknown name raises KeyError listing the supported boards."""
    try:
        return BOARDS[name]
    except KeyError:
        raise KeyError(
            f"Unknown board {name!r}; supported boards: {', '.join(BOARDS)}") from None
