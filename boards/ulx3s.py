"""Radiona ULX3S with ECP5-85F (LFE5U-85F-6BG381C), 25 MHz oscillator, USB-UART on the FTDI chip."""

from amaranth_boards.ulx3s import ULX3S_85F_Platform

from hw.config import AccelConfig

from . import Board, openfpgaloader

BOARD = Board(
    name="ulx3s",
    description="Radiona ULX3S ECP5-85F: real bitstream with yosys + nextpnr-ecp5 + ecppack",
    platform=ULX3S_85F_Platform,
    # 4 x 4 elements x 32 bits = 512 binary MACs per cycle. nextpnr's router1 routes this board top
    # in about 8 minutes at 68 MHz; router2 stalled on it (docs/build.md, "ULX3S routing").
    # The depths hold FINN's CNV (1 basis, parameters streamed layer by layer: 2 x 4,608 weight
    # entries for its widest layer, 9,000 activation words for its first) and the README's LFC-128 at
    # 3 x 3 bases (1,056 scale entries). The output FIFO is deep enough (512) to sit in block RAM
    # rather than LUT RAM. Run clock 40 MHz, which the ECP5 PLL makes exactly from the 25 MHz
    # oscillator (25 / 5 x 8; docs/build.md, "Clocks"), well inside the measured Fmax (the margin
    # FMAX_MARGIN asks is 1.1).
    config=AccelConfig(rows=4, cols=4, word_bits=32, max_wbases=4, max_abases=4, acc_bits=32,
                       max_k=4096, scale_depth=2048, thr_depth=1024, out_depth=512,
                       act_depth=12288, weight_depth=10240, patch_depth=256, result_depth=64,
                       instr_depth=64, clock_hz=40_000_000),
    capacity={"LUT": 83_640, "FF": 83_640, "BRAM": 208, "DSP": 156},
    flow="ecp5",
    # As amaranth-boards' ULX3S platform: openFPGALoader into SRAM.
    programmers=(openfpgaloader("ulx3s", "-m"),),
    device="LFE5U-85F",
)
