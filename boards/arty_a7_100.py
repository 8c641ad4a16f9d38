"""Digilent Arty A7-100T (xc7a100ti-csg324-1L), 100 MHz oscillator, USB-UART on the FTDI chip."""

from amaranth_boards.arty_a7 import ArtyA7_100Platform

from hw.config import AccelConfig

from . import Board, openfpgaloader, vivado_hardware_manager

BOARD = Board(
    name="arty_a7_100",
    description="Digilent Arty A7-100T (xc7a100t): Vivado build plan + yosys resource estimate",
    platform=ArtyA7_100Platform,
    # 16 x 8 elements x 64 bits = 8192 binary MACs per cycle. The depths hold FINN's LFC (1 basis)
    # and CNV (1 basis) with parameters streamed layer by layer, and the README's LFC-128 at 3 x 3.
    # Element scales (128 DSP48) and 128 result entries (8 images x 10 logits at `--batch 8`), as on
    # the A7-35T; 16,384 activation words hold FINN's CNV at batch 8 (its first layer reading the packed
    # image).
    config=AccelConfig(rows=16, cols=8, word_bits=64, max_wbases=4, max_abases=4, acc_bits=32,
                       max_k=4096, scale_depth=1024, thr_depth=2048, out_depth=32,
                       act_depth=16384, weight_depth=2048, patch_depth=256, result_depth=128,
                       instr_depth=256, element_scales=True, clock_hz=100_000_000),
    capacity={"LUT": 63_400, "FF": 126_800, "BRAM": 135, "DSP": 240},
    flow="vivado-plan",
    programmers=(openfpgaloader("arty_a7_100t"), vivado_hardware_manager()),
    device="xc7a100t",
)
