"""A small 8N1 UART: `UARTRx` and `UARTTx`, byte streams on the fabric side.

Both sides count `divisor` clock cycles per bit, so the baud rate is `clk_hz / divisor`
(`uart_divisor(clk_hz, baud)` picks the divisor and refuses rates that would be off by more than 2%).
The receiver synchronises the line with two flip-flops, waits half a bit after a falling edge, checks
that the start bit is still low, samples the 8 data bits (LSB first) in the middle of each bit and
checks the stop bit. A byte whose stop bit is low (a framing error) is dropped and pulses `error`;
a byte that arrives while the previous one is still waiting in `o` is dropped and pulses `overrun`.
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["UARTRx", "UARTTx", "uart_divisor"]


def uart_divisor(clk_hz, baud):
    """Clock cycles per bit for `baud` at `clk_hz`; the rate error must stay within 2%."""
    if not isinstance(clk_hz, (int, float)) or clk_hz <= 0:
        raise ValueError(f"Clock frequency must be a positive number, not {clk_hz!r}")
    if not isinstance(baud, int) or isinstance(baud, bool) or baud <= 0:
        raise ValueError(f"Baud rate must be a positive integer, not {baud!r}")
    divisor = round(clk_hz / baud)
    if divisor < 4:
        raise ValueError(
            f"Baud rate {baud} is too fast for a {clk_hz / 1e6:g} MHz clock (needs at least 4 "
            f"cycles per bit)")
    error = abs(clk_hz / divisor - baud) / baud
    if error > 0.02:
        raise ValueError(
            f"Baud rate {baud} cannot be made from a {clk_hz / 1e6:g} MHz clock within 2% "
            f"(closest is {clk_hz / divisor:.0f})")
    return divisor


def _check_divisor(divisor):
    if not isinstance(divisor, int) or isinstance(divisor, bool) or divisor < 4:
        raise ValueError(f"Divisor must be an integer of at least 4, not {divisor!r}")


class UARTTx(wiring.Component):
    """UART transmitter, 8 data bits, no parity, 1 stop bit.

    Ports
    -----
    i  : In(stream of 8 bits)  bytes to send; taken when the transmitter is idle.
    tx : Out(1)                the serial line, high when idle.
    """

    def __init__(self, divisor):
        _check_divisor(divisor)
        self._divisor = divisor
        super().__init__({
            "i": In(stream.Signature(8)),
            "tx": Out(1, init=1),
        })

    @property
    def divisor(self):
        return self._divisor

    def elaborate(self, platform):
        m = Module()
        # 10 bits per frame: start (0), 8 data bits LSB first, stop (1); shifted out LSB first.
        frame = Signal(10, init=0x3FF)
        bits_left = Signal(range(11))
        timer = Signal(range(self._divisor))

        m.d.comb += [
            self.i.ready.eq(bits_left == 0),
            self.tx.eq(frame[0]),
        ]
        with m.If(bits_left == 0):
            with m.If(self.i.valid):
                m.d.sync += [
                    frame.eq(Cat(0, self.i.payload, 1)),
                    bits_left.eq(10),
                    timer.eq(self._divisor - 1),
                ]
        with m.Else():
            with m.If(timer == 0):
                m.d.sync += [
                    frame.eq(Cat(frame[1:], 1)),
                    bits_left.eq(bits_left - 1),
                    timer.eq(self._divisor - 1),
                ]
            with m.Else():
                m.d.sync += timer.eq(timer - 1)
        return m


class UARTRx(wiring.Component):
    """UART receiver, 8 data bits, no parity, 1 stop bit.

    Ports
    -----
    rx      : In(1, init=1)       the serial line (asynchronous; synchronised inside).
    o       : Out(stream of 8 bits) received bytes; `valid` holds until `ready`.
    error   : Out(1)              pulses when a frame's stop bit was low (the byte is dropped).
    overrun : Out(1)              pulses when a byte arrived while `o` was still full (it is dropped).
    """

    def __init__(self, divisor):
        _check_divisor(divisor)
        self._divisor = divisor
        super().__init__({
            "rx": In(1, init=1),
            "o": Out(stream.Signature(8)),
            "error": Out(1),
            "overrun": Out(1),
        })

    @property
    def divisor(self):
        return self._divisor

    def elaborate(self, platform):
        m = Module()
        div = self._divisor
        sync0 = Signal(init=1)
        line = Signal(init=1)
        m.d.sync += [sync0.eq(self.rx), line.eq(sync0)]

        timer = Signal(range(div))
        shift = Signal(8)
        bit = Signal(range(9))

        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        m.d.sync += [self.error.eq(0), self.overrun.eq(0)]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(div // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer == 0):
                    with m.If(line):
                        m.next = "IDLE"        # a glitch, not a start bit
                    with m.Else():
                        m.d.sync += [timer.eq(div - 1), bit.eq(0)]
                        m.next = "DATA"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [
                        shift.eq(Cat(shift[1:], line)),
                        bit.eq(bit + 1),
                        timer.eq(div - 1),
                    ]
                    with m.If(bit == 7):
                        m.next = "STOP"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("STOP"):
                with m.If(timer == 0):
                    with m.If(~line):
                        m.d.sync += self.error.eq(1)
                        m.next = "BREAK"
                    with m.Else():
                        with m.If(self.o.valid & ~self.o.ready):
                            m.d.sync += self.overrun.eq(1)
                        with m.Else():
                            m.d.sync += [self.o.payload.eq(shift), self.o.valid.eq(1)]
                        m.next = "IDLE"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("BREAK"):
                # After a framing error wait for the line to go idle before looking for a start bit.
                with m.If(line):
                    m.next = "IDLE"
        return m
