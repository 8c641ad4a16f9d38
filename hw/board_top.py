"""`BoardTop`: the accelerator on a board, driven over the board's USB UART by the framed host protocol.

    UART rx ─► UARTRx ─► Link ─► Accelerator (host_write, read_req/read_resp, start, status, load_in)
    UART tx ◄─ UARTTx ◄──┘

`elaborate(platform)` requests the platform's `uart` resource (and up to three `led`s: program
running, program error, last request rejected) and, when given a PLL setting (`hw.clocks`), drives
`sync` from the PLL (`RunClock`); without one the platform's own `sync` domain runs from the
oscillator. Without a platform (simulation) there is no PLL, and the serial lines and LEDs are the
signals `rx`, `tx` and `leds`; `BoardSim` wraps that as a component whose ports they are, so Verilator
and the Amaranth simulator see them as top-level ports.
"""

from amaranth.build import ResourceError
from amaranth.hdl import Cat, ClockDomain, Elaboratable, Module, Signal
from amaranth.lib import io, wiring
from amaranth.lib.wiring import In, Out

from .accel import Accelerator
from .clocks import ECP5PLL, ICE40PLL, RunClock
from .config import AccelConfig
from .link import Link, check_frame_bytes
from .uart import UARTRx, UARTTx, uart_divisor

__all__ = ["BoardTop", "BoardSim", "simulation_top", "SIM_CLOCKS_PER_BIT", "SIM_TIMEOUT_S", "LEDS", "FRAME_BYTES"]

LEDS = ("busy", "error", "rejected")

# Simulation: the fastest UART (clock / 4 baud) and a short inter-byte timeout (12 byte times), so a
# truncated frame costs 500 cycles rather than a real board's milliseconds.
SIM_CLOCKS_PER_BIT = 4
SIM_TIMEOUT_S = 5e-6


#: The link's default frame memory: the largest payload of one frame, in bytes.
FRAME_BYTES = 1024

class BoardTop(Elaboratable):
    """UART + `Link` + `Accelerator`.

    config      : the accelerator's `AccelConfig`.
    clk_freq    : the clock the design runs at in Hz (the UART divisor, the timeout and INFO's run clock
                  come from it); None takes the PLL's output, or else the platform's default clock.
    pll         : a `hw.clocks` PLL setting (`ECP5PLL`, `ICE40PLL`) that makes the run clock from the
                  board's oscillator, instantiated only on a platform; None runs from the oscillator.
    baud        : the UART's baud rate.
    frame_bytes : the largest payload of one frame (the link's frame memory).
    timeout     : seconds a request may pause between two bytes before the receiver drops it.
    """

    def __init__(self, config, *, clk_freq=None, pll=None, baud=115200, frame_bytes=FRAME_BYTES, timeout=0.01):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Config must be an AccelConfig, not {config!r}")
        if clk_freq is not None and (not isinstance(clk_freq, (int, float)) or isinstance(clk_freq, bool)
                                     or clk_freq <= 0):
            raise ValueError(f"Clock frequency must be a positive number of Hz, not {clk_freq!r}")
        if not isinstance(baud, int) or isinstance(baud, bool) or baud <= 0:
            raise ValueError(f"Baud rate must be a positive integer, not {baud!r}")
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise ValueError(f"Timeout must be a positive number of seconds, not {timeout!r}")
        if pll is not None and not isinstance(pll, (ECP5PLL, ICE40PLL)):
            raise TypeError(f"PLL must be an ECP5PLL or an ICE40PLL, not {pll!r}")
        if pll is not None:
            if clk_freq is not None and clk_freq != pll.out_hz:
                raise ValueError(f"Clock frequency {clk_freq!r} is not the PLL's output, {pll.out_hz} Hz")
            clk_freq = pll.out_hz
        if clk_freq is not None:
            uart_divisor(clk_freq, baud)        # refuse an impossible baud rate now, not at elaboration
        self._config = config
        self._clk_freq = clk_freq
        self._pll = pll
        self._baud = baud
        self._frame_bytes = frame_bytes
        self._timeout = timeout
        check_frame_bytes(config, frame_bytes)
        self.rx = Signal(init=1)
        self.tx = Signal(init=1)
        self.leds = Signal(len(LEDS))

    @property
    def config(self):
        return self._config

    @property
    def baud(self):
        return self._baud

    @property
    def pll(self):
        return self._pll

    @property
    def clock_hz(self):
        """The run clock in Hz (INFO reports it), or None for the platform's clock, known at elaboration."""
        return None if self._clk_freq is None else round(self._clk_freq)

    def elaborate(self, platform):
        m = Module()
        clk_freq = self._clk_freq
        if clk_freq is None:
            if platform is None:
                raise ValueError("BoardTop needs clk_freq when there is no platform")
            clk_freq = platform.default_clk_frequency
        divisor = uart_divisor(clk_freq, self._baud)
        if platform is not None and self._pll is not None:
            m.domains.sync = ClockDomain("sync")
            m.submodules.run_clock = RunClock(self._pll)

        m.submodules.accel = accel = Accelerator(self._config)
        m.submodules.link = link = Link(self._config, frame_bytes=self._frame_bytes,
                                        timeout_cycles=max(1, round(self._timeout * clk_freq)),
                                        load_stream=True, clock_hz=round(clk_freq))
        m.submodules.uart_rx = uart_rx = UARTRx(divisor)
        m.submodules.uart_tx = uart_tx = UARTTx(divisor)
        wiring.connect(m, uart_rx.o, link.rx)
        wiring.connect(m, link.tx, uart_tx.i)
        wiring.connect(m, link.host_write, accel.host_write)
        wiring.connect(m, link.read_req, accel.read_req)
        wiring.connect(m, accel.read_resp, link.read_resp)
        wiring.connect(m, link.load, accel.load_in)
        m.d.comb += [
            accel.start.eq(link.start),
            link.busy.eq(accel.busy),
            link.done.eq(accel.done),
            link.error.eq(accel.error),
            link.cycles.eq(accel.cycles),
            link.pc.eq(accel.pc),
            uart_rx.rx.eq(self.rx),
            self.tx.eq(uart_tx.tx),
            self.leds.eq(Cat(accel.busy, accel.done & (accel.error.as_value() != 0), link.rejected)),
        ]

        if platform is not None:
            uart = platform.request("uart", 0, dir="-")
            m.submodules.rx_buffer = rx_buffer = io.Buffer("i", uart.rx)
            m.submodules.tx_buffer = tx_buffer = io.Buffer("o", uart.tx)
            m.d.comb += [self.rx.eq(rx_buffer.i), tx_buffer.o.eq(self.tx)]
            for i, name in enumerate(LEDS):
                try:
                    led = platform.request("led", i, dir="-")
                except ResourceError:
                    break
                m.submodules[f"led_{name}"] = buffer = io.Buffer("o", led)
                m.d.comb += buffer.o.eq(self.leds[i])
        return m


class BoardSim(wiring.Component):
    """`BoardTop` without a platform, its serial lines and LEDs as ports (for Verilator and pysim)."""

    rx: In(1, init=1)
    tx: Out(1, init=1)
    leds: Out(len(LEDS))

    def __init__(self, config, *, clk_freq=None, baud=None, timeout=SIM_TIMEOUT_S, frame_bytes=FRAME_BYTES):
        clk_freq = config.clock_hz if clk_freq is None else clk_freq
        baud = round(clk_freq / SIM_CLOCKS_PER_BIT) if baud is None else baud
        self.top = BoardTop(config, clk_freq=clk_freq, baud=baud, frame_bytes=frame_bytes, timeout=timeout)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.board = top = self.top
        m.d.comb += [top.rx.eq(self.rx), self.tx.eq(top.tx), self.leds.eq(top.leds)]
        return m


def simulation_top(config):
    """The board as sim/runner.py builds it: `BoardSim` at the config's clock, SIM_CLOCKS_PER_BIT."""
    return BoardSim(config)
