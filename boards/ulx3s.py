"""Radiona ULX3S with ECP5-85F (LFE5U-85F-6BG381C), 25 MHz oscillator, USB-UART on the FTDI chip."""

from amaranth_boards.ulx3s import ULX3S_85F_Platform

from hw.config import AccelConfig

from . import Board, openfpgaloader

BOARD = Board(
    name="ulx3s",
    description="Radiona ULX3S ECP5-85F: real bitstream with yosys + nextpnr-ecp5 + ecppack",
    platform=ULX3S_85F_Platform,
    # 4 x 8 elements x 32 bits = 1024 binary MACs per cycle. The bitstream runs from the 25 MHz
    # oscillator (no PLL yet); place and route is timed against `clock_hz` so the reported Fmax says
    # whether a PLL could take it there.
    config=AccelConfig(rows=4, cols=8, word_bits=32, max_wbases=4, max_abases=4, acc_bits=32,
                       max_k=4096, scale_depth=256, thr_depth=512, out_depth=32,
                       clock_hz=100_000_000),
    capacity={"LUT": 83_640, "FF": 83_640, "BRAM": 208, "DSP": 156},
    flow="ecp5",
    # As amaranth-boards' ULX3S platform: openFPGALoader into SRAM.
    programmers=(openfpgaloader("ulx3s", "-m"),),
    device="LFE5U-85F",
)
