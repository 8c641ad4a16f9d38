"""Boards the accelerator builds for: one small module per board, each defining `BOARD`.

A `Board` names its amaranth-boards platform, its default `AccelConfig` (sized to the device), the
device's capacity and its flow:

* ``vivado-plan``: Amaranth writes the Vivado build plan (Verilog, XDC, TCL, script); it runs when
  Vivado is on PATH. Resource estimates come from YoWASP Yosys ``synth_xilinx``.
* ``ecp5``: a real bitstream from YoWASP Yosys ``synth_ecp5``, nextpnr-ecp5 and ecppack.

Adding a board is one module here with a `BOARD`; `boards.BOARDS` finds it.
"""

import importlib
import pkgutil
from dataclasses import dataclass, field

from hw.config import AccelConfig

__all__ = ["Board", "BOARDS", "DEFAULT_BOARD", "get_board", "FLOWS"]

FLOWS = ("vivado-plan", "ecp5")

#: Resource kinds a device capacity lists; utilization reports use the same keys.
RESOURCES = ("LUT", "FF", "BRAM", "DSP")


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
    """
    name: str
    description: str
    platform: type
    config: AccelConfig
    capacity: dict = field(hash=False)
    flow: str
    device: str

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
