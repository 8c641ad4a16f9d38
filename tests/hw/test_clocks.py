"""`hw.clocks`: the PLL divider search against the datasheet limits and an independent enumeration,
and the PLL instance in the board tops' RTLIL (ECP5 `EHXPLLL`, iCE40 `SB_PLL40_PAD`), which simulation
never instantiates."""

import bisect
import random
import re
from fractions import Fraction

import pytest
from amaranth.back import rtlil
from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from hw.board_top import BoardTop
from hw.clocks import ECP5PLL, ICE40PLL, PLLError, RunClock, ecp5_pll, ice40_pll, pll_for
from hw.config import AccelConfig
from hw.shell import UARTShell

# The limits as the datasheets give them, in MHz, written out here rather than imported.
ECP5 = {"in": (8, 400), "pfd": (3.125, 400), "vco": (400, 800), "out": (3.125, 400)}
ICE40 = {"in": (10, 133), "pfd": (10, 133), "vco": (533, 1066), "out": (16, 275)}

SMALL = AccelConfig(rows=2, cols=2, word_bits=8, max_wbases=2, max_abases=2, max_k=64, scale_depth=16,
                    thr_depth=16, out_depth=4, act_depth=256, weight_depth=64, patch_depth=32, result_depth=16,
                    instr_depth=16)


def inside(mhz, limits):
    return limits[0] <= mhz <= limits[1]


def check_ecp5(pll):
    mhz = lambda hz: Fraction(hz) / 1_000_000
    assert 1 <= pll.clki_div <= 128 and 1 <= pll.clkfb_div <= 80 and 1 <= pll.clkop_div <= 128
    pfd = mhz(pll.in_hz) / pll.clki_div
    out = pfd * pll.clkfb_div
    assert inside(pfd, ECP5["pfd"]) and inside(out, ECP5["out"]) and inside(out * pll.clkop_div, ECP5["vco"])
    assert pll.out_exact == out * 1_000_000
    return out


def check_ice40(pll):
    assert 0 <= pll.divr <= 15 and 0 <= pll.divf <= 127 and 1 <= pll.divq <= 6
    pfd = Fraction(pll.in_hz, 1_000_000) / (pll.divr + 1)
    vco = pfd * (pll.divf + 1)
    out = vco / 2 ** pll.divq
    assert inside(pfd, ICE40["pfd"]) and inside(vco, ICE40["vco"]) and inside(out, ICE40["out"])
    assert pll.out_exact == out * 1_000_000
    return out


def ecp5_outputs(in_mhz):
    """Every output (MHz) some ECP5 divider setting makes from `in_mhz`, sorted."""
    outs = set()
    for clki in range(1, 129):
        pfd = Fraction(in_mhz) / clki
        if not inside(pfd, ECP5["pfd"]):
            continue
        for fb in range(1, 81):
            out = pfd * fb
            if inside(out, ECP5["out"]) and any(inside(out * op, ECP5["vco"]) for op in range(1, 129)):
                outs.add(out)
    return sorted(outs)


def ice40_outputs(in_mhz):
    outs = set()
    for divr in range(16):
        pfd = Fraction(in_mhz) / (divr + 1)
        for divf in range(128):
            for divq in range(1, 7):
                out = pfd * (divf + 1) / 2 ** divq
                if inside(pfd, ICE40["pfd"]) and inside(pfd * (divf + 1), ICE40["vco"]) and inside(out, ICE40["out"]):
                    outs.add(out)
    return sorted(outs)


@pytest.mark.parametrize("family, in_mhz, search, check, outputs", [
    ("ecp5", 25, ecp5_pll, check_ecp5, ecp5_outputs),
    ("ice40", 12, ice40_pll, check_ice40, ice40_outputs),
])
def test_pll_search_is_the_best_setting_within_the_limits(family, in_mhz, search, check, outputs):
    """For 300 random requests: a setting within every limit, at or below the request, and no setting
    of any divider comes closer (an enumeration written from the datasheet, not from hw.clocks)."""
    achievable = outputs(in_mhz)
    rng = random.Random(7)
    requests = [rng.uniform(float(achievable[0]), 300) for _ in range(300)] + [float(x) for x in achievable[::97]]
    for request in requests:
        pll = search(in_mhz * 1_000_000, request * 1_000_000)
        out = check(pll)
        assert out <= Fraction(request)
        best = achievable[bisect.bisect_right(achievable, Fraction(request)) - 1]
        assert out == best, (request, pll)
        assert pll is not None and pll_for(family, in_mhz * 1e6, request * 1e6) == pll


def test_pll_known_settings():
    # The boards' run clocks: exact, with the VCO near the middle of its range.
    assert ecp5_pll(25e6, 40e6) == ECP5PLL(25_000_000, clki_div=5, clkfb_div=8, clkop_div=15)
    assert ecp5_pll(25e6, 40e6).vco_hz == 600_000_000
    assert ice40_pll(12e6, 27e6) == ICE40PLL(12_000_000, divr=0, divf=71, divq=5)
    # icepll -i 12 -o 48: DIVR 0, DIVF 63, DIVQ 4, FILTER_RANGE 1.
    assert ice40_pll(12e6, 48e6).parameters() == {"FEEDBACK_PATH": "SIMPLE", "DIVR": 0, "DIVF": 63, "DIVQ": 4,
                                                  "FILTER_RANGE": 1}
    # 44.3 MHz / 1.1 from 25 MHz: 40 MHz is the closest at or below (25 x 8 / 5).
    assert ecp5_pll(25e6, 44.3e6 / 1.1).out_hz == 40_000_000
    # Not exact: 37.1 MHz from 25 MHz gives 25 x 10 / 7 = 35.71 MHz.
    pll = ecp5_pll(25e6, 37.1e6)
    assert (pll.clki_div, pll.clkfb_div, pll.out_hz) == (7, 10, 35_714_286)
    assert pll.parameters()["CLKOP_CPHASE"] == (pll.clkop_div - 1) // 2
    assert ice40_pll(12e6, 100e6).filter_range == 1 and ice40_pll(36e6, 72e6).filter_range == 3


def test_pll_errors():
    with pytest.raises(PLLError, match=r"^The iCE40 PLL cannot make 15 MHz or less from 12 MHz \(its output range "
                                       r"is 16 to 275 MHz\)$"):
        ice40_pll(12e6, 15e6)
    with pytest.raises(PLLError, match=r"^The ECP5 PLL takes an input clock from 8 to 400 MHz, not 5 MHz$"):
        ecp5_pll(5e6, 40e6)
    with pytest.raises(PLLError, match=r"^Output frequency must be a positive number of Hz, not -1$"):
        ecp5_pll(25e6, -1)
    with pytest.raises(PLLError, match=r"^There is no PLL support for the xilinx family; supported: ecp5, ice40$"):
        pll_for("xilinx", 100e6, 50e6)
    with pytest.raises(TypeError, match=r"^PLL must be an ECP5PLL or an ICE40PLL, not 40000000$"):
        RunClock(40_000_000)
    with pytest.raises(ValueError, match=r"^RunClock instantiates a PLL and needs a platform"):
        RunClock(ecp5_pll(25e6, 40e6)).elaborate(None)
    with pytest.raises(ValueError, match=r"^The PLL was computed for a 12 MHz input, the platform's clock is 25 MHz$"):
        RunClock(ice40_pll(12e6, 27e6)).elaborate(ULX3S_85F_Platform())


def cell(il, primitive):
    """The parameters of the one `primitive` cell in RTLIL text, as {name: text}."""
    cells = re.findall(rf"cell \\{primitive} \S+\n(.*?)\n\s*end", il, re.S)
    assert len(cells) == 1, f"{len(cells)} {primitive} cells"
    return dict(re.findall(r"parameter \\(\w+) (\S+)", cells[0]))


def test_board_top_instantiates_the_ecp5_pll():
    pll = ecp5_pll(25e6, 40e6)
    top = BoardTop(SMALL, pll=pll)
    assert top.clock_hz == 40_000_000
    il = ULX3S_85F_Platform().prepare(top, name="top").files["top.il"]
    params = cell(il, "EHXPLLL")
    assert {k: params[k] for k in ("CLKI_DIV", "CLKFB_DIV", "CLKOP_DIV", "CLKOP_CPHASE", "FEEDBK_PATH")} == {
        "CLKI_DIV": "5", "CLKFB_DIV": "8", "CLKOP_DIV": "15", "CLKOP_CPHASE": "7", "FEEDBK_PATH": '"CLKOP"'}
    # In simulation (no platform) there is no PLL: the simulator drives `sync`.
    assert "EHXPLLL" not in rtlil.convert(top, ports=[top.rx, top.tx, top.leds])
    # Without a PLL the platform's own `sync` domain runs from the oscillator.
    assert "EHXPLLL" not in ULX3S_85F_Platform().prepare(UARTShell(SMALL), name="top").files["top.il"]


def test_core_top_instantiates_the_ice40_pll():
    pll = ice40_pll(12e6, 27e6)
    il = ICEBreakerPlatform().prepare(UARTShell(SMALL, pll=pll), name="top").files["top.il"]
    params = cell(il, "SB_PLL40_PAD")
    assert {k: params[k] for k in ("DIVR", "DIVF", "DIVQ", "FILTER_RANGE", "FEEDBACK_PATH")} == {
        "DIVR": "0", "DIVF": "71", "DIVQ": "5", "FILTER_RANGE": "1", "FEEDBACK_PATH": '"SIMPLE"'}
    # The PLL takes the oscillator's pad itself (the UP5K's PLL input is that pad).
    assert re.search(r"connect \\PACKAGEPIN \\clk12_0__io", il)


def test_board_top_clock_arguments():
    pll = ecp5_pll(25e6, 40e6)
    with pytest.raises(ValueError, match=r"^Clock frequency 50000000 is not the PLL's output, 40000000 Hz$"):
        BoardTop(SMALL, clk_freq=50_000_000, pll=pll)
    with pytest.raises(TypeError, match=r"^PLL must be an ECP5PLL or an ICE40PLL, not 'pll'$"):
        BoardTop(SMALL, pll="pll")
    assert BoardTop(SMALL, clk_freq=40_000_000, pll=pll).clock_hz == 40_000_000
    assert BoardTop(SMALL).clock_hz is None            # the platform's clock, known at elaboration
