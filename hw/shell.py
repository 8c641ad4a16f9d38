"""The board-level shell of this stage: `BinaryCore` behind a byte protocol on a UART.

Until the controller and the framed host protocol exist (a later issue), a board drives the core
directly from a host over a serial line, so that synthesis keeps all of the core and a board can be
checked against `sw.ref` tile by tile. The protocol (docs/build.md):

host -> board   one opcode byte, then the payload of that stream, little-endian, padded to whole bytes:
                `Opcode.BEAT`        -> `CoreLayouts.beat`        (ceil(beat.size / 8) bytes)
                `Opcode.SCALE_WRITE` -> `CoreLayouts.scale_write` (ceil(scale_write.size / 8) bytes)
                `Opcode.THR_WRITE`   -> `CoreLayouts.thr_write`   (ceil(thr_write.size / 8) bytes)
                Any other opcode byte is ignored (so 0x00 bytes can resynchronise a host).
board -> host   every `CoreLayouts.result` the core produces, ceil(result.size / 8) bytes,
                little-endian, in order, with no header.

`ByteLink` is the protocol engine (byte streams <-> the core's streams) and `UARTShell` the board top
that puts `UARTRx` / `UARTTx`, `ByteLink` and `BinaryCore` together on a platform's `uart` resource.
"""

from amaranth.hdl import Cat, ClockDomain, Elaboratable, Module, Signal
from amaranth.lib import enum, io, stream, wiring
from amaranth.lib.wiring import In, Out

from .clocks import ECP5PLL, ICE40PLL, RunClock
from .config import AccelConfig
from .core import BinaryCore
from .layouts import CoreLayouts, pack_payload, unpack_payload
from .uart import UARTRx, UARTTx, uart_divisor

__all__ = ["Opcode", "ByteLink", "UARTShell", "payload_bytes", "encode_message", "decode_results"]


class Opcode(enum.Enum, shape=8):
    """First byte of a host-to-board message: which core stream the payload goes to."""
    BEAT = 0x01
    SCALE_WRITE = 0x02
    THR_WRITE = 0x03


def payload_bytes(layout):
    """Bytes that carry one payload of `layout` on the link."""
    return -(-layout.size // 8)


def _message_layout(layouts, opcode):
    return {
        Opcode.BEAT: layouts.beat,
        Opcode.SCALE_WRITE: layouts.scale_write,
        Opcode.THR_WRITE: layouts.thr_write,
    }[Opcode(opcode)]


def encode_message(layouts, opcode, value):
    """Host side: the bytes of one message (`value` as for `hw.layouts.pack_payload`)."""
    layout = _message_layout(layouts, opcode)
    raw = pack_payload(layout, value)
    return bytes([Opcode(opcode).value]) + raw.to_bytes(payload_bytes(layout), "little")


def decode_results(layouts, data):
    """Host side: bytes from the board -> list of `CoreLayouts.result` dicts (whole results only)."""
    size = payload_bytes(layouts.result)
    if len(data) % size:
        raise ValueError(f"Result bytes must be a multiple of {size}, not {len(data)}")
    return [unpack_payload(layouts.result, int.from_bytes(data[i:i + size], "little"))
            for i in range(0, len(data), size)]


class ByteLink(wiring.Component):
    """Protocol engine: bytes in -> core input streams; core results -> bytes out.

    Ports
    -----
    rx          : In(stream of 8 bits)   bytes from the host.
    tx          : Out(stream of 8 bits)  bytes to the host.
    beats       : Out(stream of `CoreLayouts.beat`)        to `BinaryCore.beats`.
    scale_write : Out(stream of `CoreLayouts.scale_write`) to `BinaryCore.scale_write`.
    thr_write   : Out(stream of `CoreLayouts.thr_write`)   to `BinaryCore.thr_write`.
    results     : In(stream of `CoreLayouts.result`)       from `BinaryCore.results`.

    A message's payload is assembled in one buffer shared by the three output streams (each takes
    its low bits), so the buffer is as wide as the widest payload. Results are serialised LSB byte
    first by a shift register.
    """

    def __init__(self, layouts):
        if not isinstance(layouts, CoreLayouts):
            raise TypeError(f"Layouts must be a CoreLayouts, not {layouts!r}")
        self._layouts = layouts
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "beats": Out(stream.Signature(layouts.beat)),
            "scale_write": Out(stream.Signature(layouts.scale_write)),
            "thr_write": Out(stream.Signature(layouts.thr_write)),
            "results": In(stream.Signature(layouts.result)),
        })

    @property
    def message_bytes(self):
        """Payload bytes of each opcode."""
        lay = self._layouts
        return {
            Opcode.BEAT: payload_bytes(lay.beat),
            Opcode.SCALE_WRITE: payload_bytes(lay.scale_write),
            Opcode.THR_WRITE: payload_bytes(lay.thr_write),
        }

    def elaborate(self, platform):
        m = Module()
        lay = self._layouts
        sizes = self.message_bytes
        buf_bytes = max(sizes.values())

        # Host -> core.
        buf = Signal(buf_bytes * 8)
        index = Signal(range(buf_bytes))       # next byte position in `buf`
        last_index = Signal(range(buf_bytes))  # position of the message's last byte
        opcode = Signal(Opcode, init=Opcode.BEAT)
        targets = {
            Opcode.BEAT: self.beats,
            Opcode.SCALE_WRITE: self.scale_write,
            Opcode.THR_WRITE: self.thr_write,
        }
        for op, target in targets.items():
            m.d.comb += target.payload.eq(buf[:target.payload.shape().size])

        with m.FSM():
            with m.State("OPCODE"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(self.rx.valid):
                    m.d.sync += [opcode.eq(self.rx.payload), index.eq(0)]
                    with m.Switch(self.rx.payload):
                        for op, count in sizes.items():
                            with m.Case(op.value):
                                m.d.sync += last_index.eq(count - 1)
                                m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(self.rx.valid):
                    # Each byte lands at its own position, so every buffer bit is a flip-flop with an
                    # enable from a small decoder, not a wide shifter.
                    for i in range(buf_bytes):
                        with m.If(index == i):
                            m.d.sync += buf[8 * i:8 * i + 8].eq(self.rx.payload)
                    m.d.sync += index.eq(index + 1)
                    with m.If(index == last_index):
                        m.next = "DELIVER"
            with m.State("DELIVER"):
                with m.Switch(opcode):
                    for op, target in targets.items():
                        with m.Case(op):
                            m.d.comb += target.valid.eq(1)
                            with m.If(target.ready):
                                m.next = "OPCODE"

        # Core -> host.
        result_bytes = payload_bytes(lay.result)
        out = Signal(result_bytes * 8)
        out_left = Signal(range(result_bytes + 1))
        m.d.comb += [
            self.tx.payload.eq(out[:8]),
            self.tx.valid.eq(out_left != 0),
            self.results.ready.eq(out_left == 0),
        ]
        with m.If(out_left == 0):
            with m.If(self.results.valid):
                m.d.sync += [
                    out.eq(self.results.payload.as_value()),
                    out_left.eq(result_bytes),
                ]
        with m.Elif(self.tx.ready):
            m.d.sync += [
                out.eq(out[8:]),
                out_left.eq(out_left - 1),
            ]
        return m


class UARTShell(Elaboratable):
    """Board top: `BinaryCore` driven over the platform's `uart` resource through `ByteLink`.

    Runs from the board's oscillator (the platform's default `sync` domain) or, given `pll` (a
    `hw.clocks` PLL setting), from the PLL's output (`RunClock`); the UART divisor comes from that
    clock and `baud`.
    """

    def __init__(self, config, *, baud=115200, pll=None):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Config must be an AccelConfig, not {config!r}")
        if not isinstance(baud, int) or isinstance(baud, bool) or baud <= 0:
            raise ValueError(f"Baud rate must be a positive integer, not {baud!r}")
        if pll is not None and not isinstance(pll, (ECP5PLL, ICE40PLL)):
            raise TypeError(f"PLL must be an ECP5PLL or an ICE40PLL, not {pll!r}")
        self._config = config
        self._baud = baud
        self._pll = pll

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        if self._pll is None:
            divisor = uart_divisor(platform.default_clk_frequency, self._baud)
        else:
            divisor = uart_divisor(self._pll.out_hz, self._baud)
            m.domains.sync = ClockDomain("sync")
            m.submodules.run_clock = RunClock(self._pll)
        m.submodules.core = core = BinaryCore(self._config)
        m.submodules.link = link = ByteLink(core.layouts)
        m.submodules.uart_rx = rx = UARTRx(divisor)
        m.submodules.uart_tx = tx = UARTTx(divisor)
        wiring.connect(m, rx.o, link.rx)
        wiring.connect(m, link.tx, tx.i)
        wiring.connect(m, link.beats, core.beats)
        wiring.connect(m, link.scale_write, core.scale_write)
        wiring.connect(m, link.thr_write, core.thr_write)
        wiring.connect(m, core.results, link.results)

        uart = platform.request("uart", 0, dir="-")
        m.submodules.rx_buffer = rx_buffer = io.Buffer("i", uart.rx)
        m.submodules.tx_buffer = tx_buffer = io.Buffer("o", uart.tx)
        m.d.comb += [
            rx.rx.eq(rx_buffer.i),
            tx_buffer.o.eq(tx.tx),
        ]
        return m
