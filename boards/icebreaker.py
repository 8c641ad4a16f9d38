"""1BitSquared iCEBreaker (iCE40UP5K-SG48), 12 MHz oscillator, USB-UART on the FTDI chip."""

from amaranth_boards.icebreaker import ICEBreakerPlatform

from hw.config import AccelConfig

from . import Board, Programmer, openfpgaloader

BOARD = Board(
    name="icebreaker",
    description="1BitSquared iCEBreaker (iCE40UP5K): real bitstream with yosys + nextpnr-ice40 + icepack",
    platform=ICEBreakerPlatform,
    # The UP5K cannot hold the controller and the host link: the full board top needs about 5,900
    # LUT4s and 31 block RAMs at its smallest (2x2, W=8, every depth 16..256), 112 % and 103 % of the
    # device; the controller alone is about 4,000 LUT4s and its 256-bit program memory 16 of the 30
    # EBRs. So the board carries the compute core behind the byte protocol (docs/build.md).
    # 2 x 2 elements x 32 bits = 128 binary MACs per cycle: 3,378 logic cells (64 %), measured by
    # place and route; 2x4 W=8 took 83 %, 2x2 W=16 54 %, 4x2 W=8 61 %. Run clock: the core routed at
    # 30.4 MHz (nextpnr, seed 1), and 30.4 / FMAX_MARGIN (1.1) = 27.6, so 27 MHz, which the iCE40 PLL
    # makes exactly from the 12 MHz oscillator (12 x 72 / 32; docs/build.md, "Clocks"); timed at
    # 27 MHz it routed at 30.2 MHz. The depths
    # of the controller's memories (act, weight, patch, result, instr) are unused by the core top.
    config=AccelConfig(rows=2, cols=2, word_bits=32, max_wbases=2, max_abases=2, scale_bits=16,
                       scale_frac=8, acc_bits=32, max_k=1024, scale_depth=64, thr_depth=64,
                       out_depth=4, act_depth=1024, weight_depth=512, patch_depth=128,
                       result_depth=16, instr_depth=16, clock_hz=27_000_000),
    # LUT = logic cells (a LUT4 and a FF each); BRAM = SB_RAM40_4K; DSP = SB_MAC16. The four 256 Kbit
    # SPRAMs are not counted (the design's memories have separate read and write ports).
    capacity={"LUT": 5_280, "FF": 5_280, "BRAM": 30, "DSP": 8},
    flow="ice40",
    device="iCE40UP5K",
    top="core",
    # openFPGALoader, or iceprog as amaranth-boards' iCEBreaker platform uses; both load the .bin.
    programmers=(openfpgaloader("ice40_generic", bitstream="top.bin"),
                 Programmer("iceprog", "ICEPROG", (), "top.bin")),
)
