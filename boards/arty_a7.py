"""Digilent Arty A7-35T (xc7a35ti-csg324-1L), 100 MHz oscillator, USB-UART on the FTDI chip."""

from amaranth_boards.arty_a7 import ArtyA7_35Platform

from hw.config import AccelConfig

from . import Board, openfpgaloader, vivado_hardware_manager

BOARD = Board(
    name="arty_a7",
    description="Digilent Arty A7-35T (xc7a35t): Vivado build plan + yosys resource estimate",
    platform=ArtyA7_35Platform,
    # 8 x 8 elements x 32 bits = 2048 binary MACs per cycle: about half the LUTs of the 35T, leaving
    # room for the controller and buffers. 256 instructions: the program memory's 256-bit words take
    # four BRAM36 at any depth up to 512, and residual or grouped networks need more than 64.
    # Element scales (each processing element applies its pass's scale: one-K-word passes, such as a
    # first layer's, keep the array busy; 64 DSP48 and about 3,000 LUTs more) and 128 result entries
    # (8 images x 10 logits at `sw.compile --batch 8`).
    config=AccelConfig(rows=8, cols=8, word_bits=32, max_wbases=4, max_abases=4, acc_bits=32,
                       max_k=4096, scale_depth=1024, thr_depth=512, out_depth=32, result_depth=128,
                       instr_depth=256, element_scales=True, clock_hz=100_000_000),
    capacity={"LUT": 20_800, "FF": 41_600, "BRAM": 50, "DSP": 90},
    flow="vivado-plan",
    programmers=(openfpgaloader("arty_a7_35t"), vivado_hardware_manager()),
    device="xc7a35t",
)
