"""UART transmitter and receiver: loopback, bit timing, framing errors, overrun, argument checks."""

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from hw.uart import UARTRx, UARTTx, uart_divisor

DIV = 6


def test_divisor():
    assert uart_divisor(100e6, 115200) == 868
    assert uart_divisor(25_000_000, 115200) == 217
    with pytest.raises(ValueError, match="Baud rate 3000000 is too fast for a 10 MHz clock"):
        uart_divisor(10e6, 3_000_000)
    with pytest.raises(ValueError, match="cannot be made from a 1 MHz clock within 2%"):
        uart_divisor(1e6, 140000)
    with pytest.raises(ValueError, match="Baud rate must be a positive integer, not 0"):
        uart_divisor(1e6, 0)
    with pytest.raises(ValueError, match="Clock frequency must be a positive number"):
        uart_divisor(-1, 9600)
    with pytest.raises(ValueError, match="Divisor must be an integer of at least 4, not 3"):
        UARTTx(3)
    with pytest.raises(ValueError, match="Divisor must be an integer of at least 4, not 2.5"):
        UARTRx(2.5)


def test_tx_bit_timing():
    """The line carries start, 8 data bits LSB first and stop, `divisor` cycles each."""
    dut = UARTTx(DIV)
    line = []

    async def bench(ctx):
        assert ctx.get(dut.tx) == 1
        ctx.set(dut.i.payload, 0xA5)
        ctx.set(dut.i.valid, 1)
        await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)
        for _ in range(10 * DIV + 4):
            line.append(ctx.get(dut.tx))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    bits = [0] + [(0xA5 >> i) & 1 for i in range(8)] + [1]
    assert line[:10 * DIV] == [b for b in bits for _ in range(DIV)]
    assert line[10 * DIV:] == [1] * 4


def test_loopback():
    m = Module()
    m.submodules.tx = tx = UARTTx(DIV)
    m.submodules.rx = rx = UARTRx(DIV)
    m.d.comb += rx.rx.eq(tx.tx)
    sent = [0x00, 0xFF, 0x55, 0xAA, 0x01, 0x80, 0x3C]
    got = []

    async def sender(ctx):
        for byte in sent:
            ctx.set(tx.i.payload, byte)
            ctx.set(tx.i.valid, 1)
            await ctx.tick().until(tx.i.ready)
            ctx.set(tx.i.valid, 0)

    async def receiver(ctx):
        ctx.set(rx.o.ready, 1)
        for _ in sent:
            byte, = await ctx.tick().sample(rx.o.payload).until(rx.o.valid)
            got.append(byte)

    async def monitor(ctx):
        async for _, _, error, overrun in ctx.tick().sample(rx.error, rx.overrun):
            assert not error and not overrun

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(sender)
    sim.add_testbench(receiver)
    sim.add_testbench(monitor, background=True)
    sim.run_until(1e-6 * DIV * 10 * (len(sent) + 2))
    assert got == sent


async def drive_frame(ctx, line, byte, divisor, stop=1):
    for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [stop]:
        ctx.set(line, bit)
        for _ in range(divisor):
            await ctx.tick()
    ctx.set(line, 1)


def test_rx_framing_error_and_overrun():
    dut = UARTRx(DIV)
    events = {"error": 0, "overrun": 0}
    got = []

    async def monitor(ctx):
        async for _, _, error, overrun in ctx.tick().sample(dut.error, dut.overrun):
            events["error"] += error
            events["overrun"] += overrun

    async def bench(ctx):
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(5)
        await drive_frame(ctx, dut.rx, 0x5A, DIV, stop=0)   # bad stop bit: dropped
        await ctx.tick().repeat(3 * DIV)
        assert events["error"] == 1 and not ctx.get(dut.o.valid)
        await drive_frame(ctx, dut.rx, 0x96, DIV)           # held, not taken
        await ctx.tick().repeat(DIV)
        await drive_frame(ctx, dut.rx, 0x11, DIV)           # arrives while 0x96 waits: dropped
        await ctx.tick().repeat(DIV)
        assert events["overrun"] == 1
        ctx.set(dut.o.ready, 1)
        byte, = await ctx.tick().sample(dut.o.payload).until(dut.o.valid)
        got.append(byte)
        ctx.set(dut.o.ready, 0)
        await ctx.tick()
        assert not ctx.get(dut.o.valid)
        await drive_frame(ctx, dut.rx, 0xC3, DIV)           # the receiver works again
        ctx.set(dut.o.ready, 1)
        byte, = await ctx.tick().sample(dut.o.payload).until(dut.o.valid)
        got.append(byte)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.add_testbench(monitor, background=True)
    sim.run()
    assert got == [0x96, 0xC3]
