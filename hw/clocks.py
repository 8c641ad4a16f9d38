"""The run clock: PLL settings computed in Python, and the `sync` domain a board's PLL drives.

A board bitstream runs at its config's `clock_hz` (docs/build.md, "Clocks"). When that is not the
board's oscillator, a PLL makes it: `pll_for(family, in_hz, out_hz)` searches the PLL's dividers for
the closest output frequency at or below `out_hz` that keeps every internal frequency within the
device's datasheet limits, and `RunClock` instantiates that PLL on a real platform. In simulation
(no platform) nothing here is instantiated: the simulator drives `sync` directly.

ECP5 `EHXPLLL`, CLKOP fed back to CLKFB (as Project Trellis' `ecppll` writes it):

    f_pfd = f_in / CLKI_DIV        3.125 .. 400 MHz   CLKI_DIV  1 .. 128
    f_out = f_pfd * CLKFB_DIV      3.125 .. 400 MHz   CLKFB_DIV 1 .. 80
    f_vco = f_out * CLKOP_DIV        400 .. 800 MHz   CLKOP_DIV 1 .. 128
    f_in                               8 .. 400 MHz

iCE40 `SB_PLL40_PAD` (the iCEBreaker's clock pin is the PLL's pad), SIMPLE feedback (as Project
IceStorm's `icepll` computes it):

    f_pfd = f_in / (DIVR + 1)         10 .. 133 MHz   DIVR 0 .. 15
    f_vco = f_pfd * (DIVF + 1)       533 .. 1066 MHz  DIVF 0 .. 127
    f_out = f_vco / 2 ** DIVQ         16 .. 275 MHz   DIVQ 1 .. 6
    f_in                              10 .. 133 MHz
"""

from dataclasses import dataclass
from fractions import Fraction

from amaranth.hdl import ClockDomain, ClockSignal, Elaboratable, Instance, Module, ResetSignal, Signal
from amaranth.lib import io

__all__ = ["PLLError", "ECP5PLL", "ICE40PLL", "ecp5_pll", "ice40_pll", "pll_for", "PLL_FAMILIES", "RunClock",
           "ECP5_LIMITS", "ICE40_LIMITS", "POWER_ON_RESET_S"]

#: Datasheet limits in Hz: (low, high) for each internal frequency.
ECP5_LIMITS = {"in": (8_000_000, 400_000_000), "pfd": (3_125_000, 400_000_000), "vco": (400_000_000, 800_000_000),
               "out": (3_125_000, 400_000_000)}
ICE40_LIMITS = {"in": (10_000_000, 133_000_000), "pfd": (10_000_000, 133_000_000),
                "vco": (533_000_000, 1_066_000_000), "out": (16_000_000, 275_000_000)}

#: How long `sync` stays in reset after the PLL locks: iCE40 block RAMs read as zero for about 3 us
#: after configuration (Amaranth's own iCE40 reset waits 15 us for the same reason).
POWER_ON_RESET_S = 15e-6


class PLLError(ValueError):
    """No divider setting reaches the requested frequency within the device's limits."""


def _within(value, limits):
    low, high = limits
    return low <= value <= high


def _check_request(family, in_hz, out_hz, limits):
    for name, value in (("Input", in_hz), ("Output", out_hz)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise PLLError(f"{name} frequency must be a positive number of Hz, not {value!r}")
    if not _within(in_hz, limits["in"]):
        low, high = limits["in"]
        raise PLLError(f"The {family} PLL takes an input clock from {low / 1e6:g} to {high / 1e6:g} MHz, "
                       f"not {in_hz / 1e6:g} MHz")


def _integral(hz):
    """A platform's float frequency (25e6) as an int when it is one, so the settings print cleanly."""
    return int(hz) if float(hz).is_integer() else hz


def _mhz(hz):
    return f"{hz / 1e6:g}"


@dataclass(frozen=True)
class ECP5PLL:
    """One `EHXPLLL` setting: CLKOP = f_in * CLKFB_DIV / CLKI_DIV, fed back to CLKFB."""
    in_hz: int
    clki_div: int
    clkfb_div: int
    clkop_div: int

    family = "ecp5"
    primitive = "EHXPLLL"

    @property
    def pfd_hz(self):
        return Fraction(self.in_hz) / self.clki_div

    @property
    def out_exact(self):
        return self.pfd_hz * self.clkfb_div

    @property
    def vco_hz(self):
        return self.out_exact * self.clkop_div

    @property
    def out_hz(self):
        """The output frequency in Hz, rounded to an integer (the exact value is `out_exact`)."""
        return round(self.out_exact)

    def parameters(self):
        """The instance's parameters, as `ecppll` writes them (the phase is 0 degrees)."""
        return {"PLLRST_ENA": "DISABLED", "INTFB_WAKE": "DISABLED", "STDBY_ENABLE": "DISABLED",
                "DPHASE_SOURCE": "DISABLED", "OUTDIVIDER_MUXA": "DIVA", "OUTDIVIDER_MUXB": "DIVB",
                "OUTDIVIDER_MUXC": "DIVC", "OUTDIVIDER_MUXD": "DIVD", "CLKI_DIV": self.clki_div,
                "CLKOP_ENABLE": "ENABLED", "CLKOP_DIV": self.clkop_div, "CLKOP_CPHASE": (self.clkop_div - 1) // 2,
                "CLKOP_FPHASE": 0, "FEEDBK_PATH": "CLKOP", "CLKFB_DIV": self.clkfb_div}

    def attributes(self):
        """Attributes `ecppll` puts on the instance (the loop filter Diamond would pick)."""
        return {"FREQUENCY_PIN_CLKI": _mhz(self.in_hz), "FREQUENCY_PIN_CLKOP": _mhz(float(self.out_exact)),
                "ICP_CURRENT": "12", "LPF_RESISTOR": "8", "MFG_ENABLE_FILTEROPAMP": "1", "MFG_GMCREF_SEL": "2"}

    def describe(self):
        return (f"EHXPLLL {_mhz(self.in_hz)} MHz / {self.clki_div} x {self.clkfb_div} = "
                f"{float(self.out_exact) / 1e6:.4g} MHz (VCO {float(self.vco_hz) / 1e6:.4g} MHz)")

    def to_dict(self):
        return {"primitive": self.primitive, "in_hz": self.in_hz, "out_hz": float(self.out_exact),
                "pfd_hz": float(self.pfd_hz), "vco_hz": float(self.vco_hz)} | {
                    k: v for k, v in self.parameters().items() if k.endswith("_DIV")}


@dataclass(frozen=True)
class ICE40PLL:
    """One `SB_PLL40_*` setting in SIMPLE feedback: f_out = f_in * (DIVF + 1) / ((DIVR + 1) * 2 ** DIVQ)."""
    in_hz: int
    divr: int
    divf: int
    divq: int

    family = "ice40"
    primitive = "SB_PLL40_PAD"

    @property
    def pfd_hz(self):
        return Fraction(self.in_hz) / (self.divr + 1)

    @property
    def vco_hz(self):
        return self.pfd_hz * (self.divf + 1)

    @property
    def out_exact(self):
        return self.vco_hz / 2 ** self.divq

    @property
    def out_hz(self):
        return round(self.out_exact)

    @property
    def filter_range(self):
        """The loop filter setting for this PFD frequency (the thresholds `icepll` uses)."""
        pfd_mhz = self.pfd_hz / 1_000_000
        for limit, value in ((17, 1), (26, 2), (44, 3), (66, 4), (101, 5)):
            if pfd_mhz < limit:
                return value
        return 6

    def parameters(self):
        return {"FEEDBACK_PATH": "SIMPLE", "DIVR": self.divr, "DIVF": self.divf, "DIVQ": self.divq,
                "FILTER_RANGE": self.filter_range}

    def attributes(self):
        return {}

    def describe(self):
        return (f"SB_PLL40 {_mhz(self.in_hz)} MHz / {self.divr + 1} x {self.divf + 1} / {2 ** self.divq} = "
                f"{float(self.out_exact) / 1e6:.4g} MHz (VCO {float(self.vco_hz) / 1e6:.4g} MHz)")

    def to_dict(self):
        return {"primitive": self.primitive, "in_hz": self.in_hz, "out_hz": float(self.out_exact),
                "pfd_hz": float(self.pfd_hz), "vco_hz": float(self.vco_hz)} | self.parameters()


def _best(candidates, family, in_hz, out_hz, limits):
    """The candidate with the highest output at or below `out_hz`; ties keep the first found."""
    best = None
    for pll in candidates:
        out = pll.out_exact
        if out > out_hz or not _within(out, limits["out"]):
            continue
        if best is None or out > best.out_exact:
            best = pll
    if best is None:
        low, high = limits["out"]
        raise PLLError(f"The {family} PLL cannot make {_mhz(out_hz)} MHz or less from {_mhz(in_hz)} MHz "
                       f"(its output range is {_mhz(low)} to {_mhz(high)} MHz)")
    return best


def ecp5_pll(in_hz, out_hz):
    """The `ECP5PLL` whose output is closest to `out_hz` without exceeding it (PLLError if none)."""
    limits = ECP5_LIMITS
    _check_request("ECP5", in_hz, out_hz, limits)
    in_hz = _integral(in_hz)

    def candidates():
        for clki_div in range(1, 129):
            pfd = Fraction(in_hz) / clki_div
            if not _within(pfd, limits["pfd"]):
                continue
            for clkfb_div in range(1, 81):
                out = pfd * clkfb_div
                if out > out_hz:
                    break
                # The output divider that puts the VCO nearest the middle of its range.
                low, high = limits["vco"]
                clkop_div = min(128, max(1, round((low + high) / 2 / out)))
                if _within(out * clkop_div, limits["vco"]):
                    yield ECP5PLL(in_hz, clki_div, clkfb_div, clkop_div)

    return _best(candidates(), "ECP5", in_hz, out_hz, limits)


def ice40_pll(in_hz, out_hz):
    """The `ICE40PLL` whose output is closest to `out_hz` without exceeding it (PLLError if none)."""
    limits = ICE40_LIMITS
    _check_request("iCE40", in_hz, out_hz, limits)
    in_hz = _integral(in_hz)

    def candidates():
        for divr in range(16):
            pfd = Fraction(in_hz) / (divr + 1)
            if not _within(pfd, limits["pfd"]):
                continue
            for divf in range(128):
                vco = pfd * (divf + 1)
                if not _within(vco, limits["vco"]):
                    continue
                for divq in range(1, 7):
                    yield ICE40PLL(in_hz, divr, divf, divq)

    return _best(candidates(), "iCE40", in_hz, out_hz, limits)


PLL_FAMILIES = {"ecp5": ecp5_pll, "ice40": ice40_pll}


def pll_for(family, in_hz, out_hz):
    """The PLL setting of `family` ("ecp5" or "ice40") for `out_hz` from `in_hz`."""
    try:
        search = PLL_FAMILIES[family]
    except KeyError:
        raise PLLError(f"There is no PLL support for the {family} family; supported: "
                       f"{', '.join(PLL_FAMILIES)}") from None
    return search(in_hz, out_hz)


class RunClock(Elaboratable):
    """Drives the `sync` domain at `pll.out_hz` from the platform's default clock through the PLL.

    The top defines `sync` (`m.domains.sync = ClockDomain()`, as Amaranth wants a domain defined
    where its users can see it); this drives its clock and reset.

    `sync` is held in reset until the PLL locks and for `POWER_ON_RESET_S` after. nextpnr derives the
    PLL output's clock constraint from the oscillator's (the platform constrains that port) and the
    dividers, so it times the design at the run clock. (An explicit constraint on the output net
    would need the net's name after synthesis, which Amaranth does not fix.) Only for a real
    platform: `elaborate(None)` refuses.
    """

    def __init__(self, pll):
        if not isinstance(pll, (ECP5PLL, ICE40PLL)):
            raise TypeError(f"PLL must be an ECP5PLL or an ICE40PLL, not {pll!r}")
        self._pll = pll

    @property
    def pll(self):
        return self._pll

    def elaborate(self, platform):
        if platform is None:
            raise ValueError("RunClock instantiates a PLL and needs a platform; in simulation drive "
                             "`sync` directly")
        pll = self._pll
        if abs(platform.default_clk_frequency - pll.in_hz) > 1:
            raise ValueError(f"The PLL was computed for a {_mhz(pll.in_hz)} MHz input, the platform's clock "
                             f"is {_mhz(platform.default_clk_frequency)} MHz")
        m = Module()
        clk = ClockSignal("sync")
        locked = Signal()
        pad = platform.request(platform.default_clk, dir="-")
        params = {f"p_{name}": value for name, value in pll.parameters().items()}
        attrs = {f"a_{name}": value for name, value in pll.attributes().items()}
        if pll.family == "ecp5":
            m.submodules.clk_buf = clk_buf = io.Buffer("i", pad)
            m.submodules.pll = Instance(
                "EHXPLLL", **params, **attrs,
                i_CLKI=clk_buf.i, i_CLKFB=clk, o_CLKOP=clk, o_LOCK=locked,
                i_RST=0, i_STDBY=0, i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1,
                i_PHASELOADREG=1, i_PLLWAKESYNC=0, i_ENCLKOP=0)
        else:
            # The iCEBreaker's oscillator pin is the PLL's own pad, which then cannot also be an
            # input buffer: SB_PLL40_PAD takes the pad itself.
            m.submodules.pll = Instance(
                "SB_PLL40_PAD", **params, **attrs,
                io_PACKAGEPIN=pad.io, o_PLLOUTGLOBAL=clk, o_LOCK=locked, i_RESETB=1, i_BYPASS=0)

        # Reset: asserted while the PLL is unlocked, released POWER_ON_RESET_S after it locks.
        m.domains.run_clock_por = por = ClockDomain("run_clock_por", async_reset=True, local=True)
        delay = max(1, round(POWER_ON_RESET_S * pll.out_hz))
        timer = Signal(range(delay + 1))
        ready = Signal()
        m.d.comb += [por.clk.eq(clk), por.rst.eq(~locked), ResetSignal("sync").eq(~ready)]
        with m.If(timer == delay):
            m.d.run_clock_por += ready.eq(1)
        with m.Else():
            m.d.run_clock_por += timer.eq(timer + 1)
        return m

