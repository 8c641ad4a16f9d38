"""Digilent Arty A7-100T (xc7a100ti-csg324-1L), 100 MHz oscillator, USB-UART on the FTDI chip."""

from amaranth_boards.arty_a7 import ArtyA7_100Platform

from hw.config import AccelConfig

from . import Board, openfpgaloader, vivado_hardware_manager

BOARD = Board(
    name="arty_a7_100",
    description="Digilent Arty A7-100T (xc7a100t): Vivado build plan + yosys resource estimate",
    platform=ArtyA7_100Platform,
    # 16 x 8 elements x 32 bits = 4096 binary MACs per cycle, about half of the 100T's LUTs.
    config=AccelConfig(rows=16, cols=8, word_bits=32, max_wbases=4, max_abases=4, acc_bits=32,
                       max_k=4096, scale_depth=256, thr_depth=512, out_depth=32,
                       clock_hz=100_000_000),
    capacity={"LUT": 63_400, "FF": 126_800, "BRAM": 135, "DSP": 240},
    flow="vivado-plan",
    programmers=(openfpgaloader("arty_a7_100t"), vivado_hardware_manager()),
    device="xc7a100t",
)
