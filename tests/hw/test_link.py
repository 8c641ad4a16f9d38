"""The framed host link (hw.link.Link) in Amaranth's simulator, byte streams straight into the link in
front of a real Accelerator: CRC, negative replies, duplicates, truncation; and the host side
(sw.runtime.link) against scripted transports: retries, refusals, clear errors."""

import binascii
import itertools
import os
import random
import select
import subprocess
import sys

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.sim import Simulator

from hw.accel import Accelerator
from hw.config import AccelConfig
from hw.isa import MemoryTarget, Opcode, encode
from hw.link import PROTOCOL_VERSION, Command, Link, LinkError as GatewareLinkError, Reply, entry_bytes
from hw.board_top import BoardTop
from sw.runtime.link import (REPLY_OVERHEAD, Link as HostLink, LinkError, Transport, crc16, encode_reply,
                             encode_request)

CFG = AccelConfig(rows=2, cols=2, word_bits=8, max_wbases=2, max_abases=2, max_k=64, scale_depth=16,
                  thr_depth=16, out_depth=8, act_depth=64, weight_depth=32, patch_depth=32, result_depth=16,
                  instr_depth=8, acc_bits=24)
CFG32 = CFG.replace(word_bits=32, max_k=128, acc_bits=32)    # 4-byte ACT entries: WRITE_NARROW of 1 .. 4 bytes
TIMEOUT = 60


class LinkedAccelerator(wiring.Component):
    """Link + Accelerator without the UART: the link's byte streams are the ports."""

    def __init__(self, config):
        self.link = Link(config, frame_bytes=64, timeout_cycles=TIMEOUT)
        super().__init__({"rx": wiring.In(stream.Signature(8)), "tx": wiring.Out(stream.Signature(8))})
        self.accel = Accelerator(config)

    def elaborate(self, platform):
        m = Module()
        m.submodules.link = link = self.link
        m.submodules.accel = accel = self.accel
        wiring.connect(m, wiring.flipped(self.rx), link.rx)
        wiring.connect(m, link.tx, wiring.flipped(self.tx))
        wiring.connect(m, link.host_write, accel.host_write)
        wiring.connect(m, link.read_req, accel.read_req)
        wiring.connect(m, accel.read_resp, link.read_resp)
        m.d.comb += [accel.start.eq(link.start), link.busy.eq(accel.busy), link.done.eq(accel.done),
                     link.error.eq(accel.error), link.cycles.eq(accel.cycles), link.pc.eq(accel.pc)]
        return m


async def send(ctx, dut, data, max_wait=200):
    for i, byte in enumerate(data):
        ctx.set(dut.rx.payload, byte)
        ctx.set(dut.rx.valid, 1)
        for _ in range(max_wait):
            _, _, ready = await ctx.tick().sample(dut.rx.ready)
            if ready:
                break
        else:
            raise AssertionError(f"the link did not take byte {i} of {bytes(data).hex()}")
    ctx.set(dut.rx.valid, 0)


async def receive(ctx, dut, max_cycles=2000):
    """One reply frame as (cmd, seq, status, payload), or None if nothing starts within max_cycles."""
    ctx.set(dut.tx.ready, 1)
    data = bytearray()
    for _ in range(max_cycles):
        _, _, valid, byte = await ctx.tick().sample(dut.tx.valid, dut.tx.payload)
        if valid:
            data.append(byte)
            if len(data) >= 6 and len(data) == REPLY_OVERHEAD + int.from_bytes(data[4:6], "little"):
                break
    ctx.set(dut.tx.ready, 0)
    if not data:
        return None
    assert data[0] == 0x5A and len(data) >= REPLY_OVERHEAD, data.hex()
    assert binascii.crc_hqx(bytes(data[1:-2]), 0xFFFF) == int.from_bytes(data[-2:], "little")
    return data[1], data[2], Reply(data[3]), bytes(data[6:-2])


def args(target, addr, count):
    return bytes([target.value]) + addr.to_bytes(2, "little") + count.to_bytes(2, "little")


def narrow_request(seq, addr, values, nbytes, target=MemoryTarget.ACT):
    """A WRITE_NARROW frame: target, addr, count, nbytes, then each value's low `nbytes` bytes."""
    return encode_request(Command.WRITE_NARROW, seq, args(target, addr, len(values)) + bytes([nbytes])
                          + b"".join(v.to_bytes(nbytes, "little") for v in values))


def simulate(bench, config=CFG):
    dut = LinkedAccelerator(config)
    starts = []

    async def count_starts(ctx):
        async for _, _, start in ctx.tick().sample(dut.link.start):
            if start:
                starts.append(1)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    async def testbench(ctx):
        await bench(ctx, dut, starts)

    sim.add_testbench(testbench)
    sim.add_process(count_starts)
    sim.run()


def test_crc_is_ccitt_false():
    assert crc16(b"123456789") == 0x29B1
    frame = encode_request(Command.STATUS, 7)
    assert frame == bytes([0xA5, 0x05, 0x07, 0, 0]) + crc16(bytes([5, 7, 0, 0])).to_bytes(2, "little")
    # The examples of docs/host-protocol.md.
    assert encode_request(Command.INFO, 1) == bytes.fromhex("a5 01 01 00 00 44 c5")
    assert encode_request(Command.WRITE, 2, args(MemoryTarget.ACT, 16, 2) + bytes([0x34, 0x12, 0x78, 0x56])) == \
        bytes.fromhex("a5 02 02 09 00 01 10 00 02 00 34 12 78 56 e8 f3")
    assert encode_reply(Command.WRITE, 2, Reply.OK) == bytes.fromhex("5a 02 02 00 00 00 e7 b8")
    assert encode_reply(Command.WRITE, 2, Reply.BAD_CRC) == bytes.fromhex("5a 02 02 01 00 00 d7 8f")
    assert narrow_request(3, 16, [0x332211, 0x665544], 3) == \
        bytes.fromhex("a5 07 03 0c 00 01 10 00 02 00 03 11 22 33 44 55 66 b2 27")
    assert encode_reply(Command.WRITE_NARROW, 3, Reply.OK) == bytes.fromhex("5a 07 03 00 00 00 04 ed")


def test_write_read_start_status_and_negative_replies():
    async def bench(ctx, dut, starts):
        # INFO: version 3, no stream port, frame size, the config's fingerprint, the run clock.
        await send(ctx, dut, encode_request(Command.INFO, 1))
        cmd, seq, status, payload = await receive(ctx, dut)
        assert (cmd, seq, status) == (Command.INFO.value, 1, Reply.OK)
        assert payload == (bytes([3, 0]) + (64).to_bytes(2, "little") + bytes.fromhex(CFG.fingerprint())
                           + CFG.clock_hz.to_bytes(4, "little"))

        # WRITE three ACT words, READ them back.
        await send(ctx, dut, encode_request(Command.WRITE, 2, args(MemoryTarget.ACT, 5, 3) + bytes([0x11, 0x22, 0x33])))
        assert (await receive(ctx, dut))[2] == Reply.OK
        await send(ctx, dut, encode_request(Command.READ, 3, args(MemoryTarget.ACT, 4, 5)))
        _, _, status, payload = await receive(ctx, dut)
        assert status == Reply.OK and payload == bytes([0, 0x11, 0x22, 0x33, 0])

        # A corrupted WRITE (one payload bit flipped after the CRC was computed): NAK, nothing written.
        frame = bytearray(encode_request(Command.WRITE, 4, args(MemoryTarget.ACT, 5, 1) + bytes([0x99])))
        frame[-3] ^= 0x10
        await send(ctx, dut, frame)
        assert (await receive(ctx, dut))[1:3] == (4, Reply.BAD_CRC)
        # The same seq again, now intact, with other data: applied (a NAK'd frame was not executed).
        await send(ctx, dut, encode_request(Command.WRITE, 4, args(MemoryTarget.ACT, 6, 1) + bytes([0x44])))
        assert (await receive(ctx, dut))[2] == Reply.OK
        # Repeated (same seq as the last executed) with different data: answered OK, not applied.
        await send(ctx, dut, encode_request(Command.WRITE, 4, args(MemoryTarget.ACT, 7, 1) + bytes([0x55])))
        assert (await receive(ctx, dut))[1:3] == (4, Reply.OK)
        await send(ctx, dut, encode_request(Command.READ, 5, args(MemoryTarget.ACT, 5, 3)))
        assert (await receive(ctx, dut))[3] == bytes([0x11, 0x44, 0x33])

        # A truncated frame gets no reply; after the inter-byte timeout the next frame is understood.
        await send(ctx, dut, encode_request(Command.WRITE, 6, args(MemoryTarget.ACT, 5, 2) + bytes([1, 2]))[:-3])
        assert await receive(ctx, dut, max_cycles=TIMEOUT + 10) is None
        await send(ctx, dut, encode_request(Command.READ, 7, args(MemoryTarget.ACT, 5, 2)))
        assert (await receive(ctx, dut))[2:] == (Reply.OK, bytes([0x11, 0x44]))

        # Program: END at 0. START runs once even when repeated; STATUS reports done.
        word = encode(Opcode.END).to_bytes(entry_bytes(CFG)[MemoryTarget.PROGRAM], "little")
        await send(ctx, dut, encode_request(Command.WRITE, 8, args(MemoryTarget.PROGRAM, 0, 1) + word))
        assert (await receive(ctx, dut))[2] == Reply.OK
        for _ in range(2):
            await send(ctx, dut, encode_request(Command.START, 9))
            assert (await receive(ctx, dut))[1:3] == (9, Reply.OK)
        assert len(starts) == 1
        await send(ctx, dut, encode_request(Command.STATUS, 10))
        _, _, status, payload = await receive(ctx, dut)
        assert status == Reply.OK and payload[0] == 0b10 and payload[1] == 0       # done, not busy, no error
        assert int.from_bytes(payload[4:8], "little") == 3                          # END: 3 cycles

        # Negative replies: each names its reason and changes nothing.
        cases = [
            (bytes([0xA5, 0x4C, 11, 0, 0]) + crc16(bytes([0x4C, 11, 0, 0])).to_bytes(2, "little"), Reply.BAD_COMMAND),
            (encode_request(Command.STATUS, 12, b"\x00"), Reply.BAD_LENGTH),
            (encode_request(Command.WRITE, 13, args(MemoryTarget.ACT, 5, 2) + b"\x01"), Reply.BAD_LENGTH),
            (encode_request(Command.WRITE, 14, bytes([7, 0, 0, 1, 0, 1])), Reply.BAD_TARGET),
            (encode_request(Command.READ, 15, args(MemoryTarget.WEIGHT, 0, 1)), Reply.BAD_TARGET),
            (encode_request(Command.WRITE, 16, args(MemoryTarget.ACT, 63, 2) + b"\x01\x02"), Reply.OUT_OF_RANGE),
            (encode_request(Command.READ, 17, args(MemoryTarget.RESULT, 15, 2)), Reply.OUT_OF_RANGE),
            (encode_request(Command.READ, 18, args(MemoryTarget.ACT, 0, 65)), Reply.BAD_LENGTH),  # reply > frame
            (encode_request(Command.STREAM, 19, args(MemoryTarget.ACT, 0, 1) + b"\x01"), Reply.NO_STREAM),
            (bytes([0xA5, Command.WRITE.value, 20, 65, 0]), Reply.BAD_LENGTH),    # longer than the frame
        ]
        for frame, reason in cases:
            await send(ctx, dut, frame)
            reply = await receive(ctx, dut)
            assert reply is not None and reply[2] == reason, (frame.hex(), reply)
        await send(ctx, dut, encode_request(Command.READ, 21, args(MemoryTarget.ACT, 5, 3)))
        assert (await receive(ctx, dut))[3] == bytes([0x11, 0x44, 0x33])
        assert len(starts) == 1

    simulate(bench)


def test_stream_feeds_the_load_port_once():
    """STREAM with the link alone: the testbench plays a running program that takes entries slowly."""
    link = Link(CFG, frame_bytes=64, timeout_cycles=TIMEOUT, load_stream=True)
    taken = []
    size = entry_bytes(CFG)[MemoryTarget.WEIGHT]                  # 2 bytes: rows x W = 16 bits

    async def bench(ctx):
        async def exchange(frame):
            await send(ctx, link, frame)
            return await receive(ctx, link, max_cycles=4000)

        entries = [0x1234, 0xBEEF, 0x0F0F]
        frame = encode_request(Command.STREAM, 1, args(MemoryTarget.WEIGHT, 0, 3)
                               + b"".join(e.to_bytes(size, "little") for e in entries))
        assert (await exchange(frame))[1:3] == (1, Reply.NOT_RUNNING)
        ctx.set(link.busy, 1)
        assert (await exchange(frame))[1:3] == (1, Reply.OK)
        assert taken == entries
        assert (await exchange(frame))[1:3] == (1, Reply.OK)     # a retry: answered, not pushed again
        assert taken == entries
        ctx.set(link.busy, 0)                                      # the program ends with entries left
        _, _, status, _ = await exchange(encode_request(Command.STREAM, 2, args(MemoryTarget.WEIGHT, 0, 1) + b"\1\2"))
        assert status == Reply.NOT_RUNNING and taken == entries

    async def program(ctx):
        """Takes an entry every 7th cycle while busy."""
        cycle = 0
        async for _, _, valid, ready, payload, busy in ctx.tick().sample(
                link.load.valid, link.load.ready, link.load.payload.data, link.busy):
            cycle += 1
            if valid and ready:
                taken.append(payload)
            ctx.set(link.load.ready, busy and cycle % 7 == 0)

    sim = Simulator(link)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.add_process(program)
    sim.run()


def test_stream_aborted_when_the_program_ends():
    link = Link(CFG, frame_bytes=64, timeout_cycles=TIMEOUT, load_stream=True)

    async def bench(ctx):
        ctx.set(link.busy, 1)
        await send(ctx, link, encode_request(Command.STREAM, 5, args(MemoryTarget.ACT, 0, 2) + b"\1\2"))
        for _ in range(40):
            await ctx.tick()
        ctx.set(link.busy, 0)                                      # never took an entry
        assert (await receive(ctx, link))[1:3] == (5, Reply.STREAM_ABORTED)

    sim = Simulator(link)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_write_narrow_zero_extends_and_refuses_bad_frames():
    """WRITE_NARROW in front of a real Accelerator (W = 32): random entries of 1 .. 4 bytes land
    zero-extended over words of ones, the host's own split frames too; every bad frame changes nothing."""
    rng = random.Random(7)
    size = entry_bytes(CFG32)[MemoryTarget.ACT]
    depth = CFG32.act_depth
    expected = [(1 << 32) - 1] * depth

    async def bench(ctx, dut, starts):
        seqs = itertools.count(1)

        async def exchange(frame):
            await send(ctx, dut, frame)
            return await receive(ctx, dut)

        async def act_memory():
            words = []
            for first in range(0, depth, 16):                         # 16 entries fill a 64-byte reply
                _, _, status, payload = await exchange(encode_request(Command.READ, next(seqs),
                                                                      args(MemoryTarget.ACT, first, 16)))
                assert status == Reply.OK
                words += [int.from_bytes(payload[i:i + size], "little") for i in range(0, len(payload), size)]
            return words

        assert (await exchange(encode_request(Command.INFO, next(seqs))))[3][0] == PROTOCOL_VERSION == 3
        for first in range(0, depth, 8):
            body = b"".join(v.to_bytes(size, "little") for v in expected[first:first + 8])
            reply = await exchange(encode_request(Command.WRITE, next(seqs), args(MemoryTarget.ACT, first, 8) + body))
            assert reply[2] == Reply.OK
        for nbytes in range(1, size + 1):
            count = rng.randint(1, (64 - 6) // nbytes)
            addr = rng.randrange(depth - count + 1)
            values = [rng.getrandbits(8 * nbytes) | 1 << (8 * nbytes - 1) for _ in range(count)]
            assert (await exchange(narrow_request(next(seqs), addr, values, nbytes)))[2] == Reply.OK
            expected[addr:addr + count] = values
        assert await act_memory() == expected

        # The host's frames for 40 three-byte entries (split at 19 a frame), sent after INFO (a session).
        values = [rng.getrandbits(24) for _ in range(40)]
        transport = ScriptedTransport([lambda r: encode_reply(Command.INFO, r[2], Reply.OK, info_payload(config=CFG32))]
                                      + [ok] * 3)
        host = HostLink(transport, CFG32, baud=1e6, timeout=0.01)
        host.connect()
        host.write_narrow(MemoryTarget.ACT, 20, values, 3)
        assert len(transport.sent) == 4
        for frame in transport.sent:
            assert (await exchange(frame))[2] == Reply.OK
        expected[20:60] = values
        # A repeat of the last executed request with other data: answered, not applied.
        last = transport.sent[-1][2]
        assert (await exchange(narrow_request(last, 20, [0x12345], 3)))[1:3] == (last, Reply.OK)
        assert await act_memory() == expected

        # Bad frames: each answered with its reason, none writes anything.
        seq = 100
        corrupt = bytearray(narrow_request(seq, 0, [0xABCDEF], 3))
        corrupt[-4] ^= 0x08
        too_many = narrow_request(seq, 0, [1, 2], 3)
        cases = [
            (corrupt, Reply.BAD_CRC),
            (narrow_request(seq, 0, [0], 0), Reply.BAD_LENGTH),                       # nbytes 0
            (narrow_request(seq, 0, [0x0102030405], 5), Reply.BAD_LENGTH),            # over the ACT entry
            (narrow_request(seq, 0, [], 3), Reply.BAD_LENGTH),                        # count 0
            (encode_request(Command.WRITE_NARROW, seq, too_many[5:-3]), Reply.BAD_LENGTH),   # a byte short
            (encode_request(Command.WRITE_NARROW, seq, too_many[5:-2] + b"\x07"), Reply.BAD_LENGTH),  # one over
            (encode_request(Command.WRITE_NARROW, seq, args(MemoryTarget.ACT, 0, 1)), Reply.BAD_LENGTH),  # no nbytes
            (narrow_request(seq, 0, [0x0102], 2, target=MemoryTarget.WEIGHT), Reply.BAD_TARGET),
            (narrow_request(seq, 0, [0x0102], 2, target=MemoryTarget.RESULT), Reply.BAD_TARGET),
            (narrow_request(seq, depth - 1, [1, 2], 2), Reply.OUT_OF_RANGE),
            (bytes([0xA5, Command.WRITE_NARROW.value, seq, 65, 0]), Reply.BAD_LENGTH),    # longer than the frame
        ]
        for frame, reason in cases:
            reply = await exchange(frame)
            assert reply is not None and reply[2] == reason, (bytes(frame).hex(), reply)
        # A truncated frame gets no reply and does not disturb the next one.
        await send(ctx, dut, narrow_request(seq, 0, [0xABCDEF], 3)[:-3])
        assert await receive(ctx, dut, max_cycles=TIMEOUT + 10) is None
        assert await act_memory() == expected
        assert not starts

    simulate(bench, CFG32)


def test_write_narrow_is_busy_while_a_program_runs():
    """The link alone: WRITE_NARROW while busy is refused and pushes nothing; once idle, its entries
    reach the host port zero-extended, at consecutive addresses."""
    link = Link(CFG32, frame_bytes=64, timeout_cycles=TIMEOUT)
    pushed = []

    async def bench(ctx):
        frame = narrow_request(1, 9, [0xA1B2, 0x00C3, 0xFFFF], 2)
        ctx.set(link.busy, 1)
        await send(ctx, link, frame)
        assert (await receive(ctx, link))[1:3] == (1, Reply.BUSY)
        assert pushed == []
        ctx.set(link.busy, 0)
        await send(ctx, link, frame)                                # a refused request is not a repeat
        assert (await receive(ctx, link))[1:3] == (1, Reply.OK)
        assert pushed == [(MemoryTarget.ACT, 9, 0xA1B2), (MemoryTarget.ACT, 10, 0x00C3), (MemoryTarget.ACT, 11, 0xFFFF)]

    async def host_port(ctx):
        ctx.set(link.host_write.ready, 1)
        async for _, _, valid, mem, addr, data in ctx.tick().sample(
                link.host_write.valid, link.host_write.payload.mem, link.host_write.payload.addr,
                link.host_write.payload.data):
            if valid:
                pushed.append((mem, addr, data))

    sim = Simulator(link)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.add_process(host_port)
    sim.run()


def test_board_top_through_its_uart():
    """BoardSim in Amaranth's simulator: bits on `rx`, bits back on `tx` (4 clocks a bit); the
    `rejected` LED follows a corrupted request and clears after a good one."""
    from hw.board_top import LEDS, SIM_CLOCKS_PER_BIT, BoardSim
    dut = BoardSim(CFG)
    rejected = 1 << LEDS.index("rejected")

    async def bench(ctx):
        async def send_line(data):
            for byte in data:
                for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
                    ctx.set(dut.rx, bit)
                    await ctx.tick().repeat(SIM_CLOCKS_PER_BIT)

        async def receive_line(count):
            data = bytearray()
            while len(data) < count:
                await ctx.tick().until(dut.tx == 0)                          # start bit
                await ctx.tick().repeat(SIM_CLOCKS_PER_BIT // 2)
                byte = 0
                for i in range(8):
                    await ctx.tick().repeat(SIM_CLOCKS_PER_BIT)
                    byte |= ctx.get(dut.tx) << i
                await ctx.tick().repeat(SIM_CLOCKS_PER_BIT)
                assert ctx.get(dut.tx) == 1, "stop bit"
                data.append(byte)
            return bytes(data)

        await send_line(encode_request(Command.INFO, 1))
        # STREAM: yes; the run clock is BoardSim's clock.
        info = (bytes([3, 1]) + (1024).to_bytes(2, "little") + bytes.fromhex(CFG.fingerprint())
                + CFG.clock_hz.to_bytes(4, "little"))
        assert await receive_line(8 + 16) == encode_reply(Command.INFO, 1, Reply.OK, info)
        frame = bytearray(encode_request(Command.STATUS, 2))
        frame[2] ^= 0x40
        await send_line(frame)
        assert await receive_line(8) == encode_reply(Command.STATUS, 0x42, Reply.BAD_CRC)
        assert ctx.get(dut.leds) & rejected
        await send_line(encode_request(Command.STATUS, 3))
        reply = await receive_line(8 + 8)
        assert reply[:6] == bytes([0x5A, Command.STATUS.value, 3, 0, 8, 0]) and not ctx.get(dut.leds) & rejected

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def test_parameters_are_checked():
    with pytest.raises(GatewareLinkError, match=r"Frame size must be an integer from 37 to 65535 bytes, not 8"):
        Link(CFG, frame_bytes=8)
    with pytest.raises(GatewareLinkError, match="Timeout must be a positive number of cycles, not 0"):
        Link(CFG, timeout_cycles=0)
    with pytest.raises(ValueError, match="Baud rate 3000000 is too fast for a 10 MHz clock"):
        BoardTop(CFG, clk_freq=10_000_000, baud=3_000_000)
    with pytest.raises(TypeError, match="Config must be an AccelConfig, not 3"):
        BoardTop(3)


# ---------------------------------------------------------------------------------------------- host side
class ScriptedTransport(Transport):
    """Answers each request with the next scripted reply (bytes, or a function of the request)."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.sent = []
        self.pending = b""
        self.clock = 0.0

    def write(self, data):
        self.sent.append(bytes(data))
        reply = self.replies.pop(0) if self.replies else b""
        self.pending += reply(data) if callable(reply) else reply

    def read(self, n, timeout):
        data, self.pending = self.pending[:n], self.pending[n:]
        if len(data) < n:
            self.clock += timeout
        return data

    def monotonic(self):
        return self.clock


def info_payload(version=PROTOCOL_VERSION, clock_hz=40_000_000, config=CFG):
    payload = bytes([version, 0]) + (64).to_bytes(2, "little") + bytes.fromhex(config.fingerprint())
    return payload + clock_hz.to_bytes(4, "little") if version >= 2 else payload


def info_reply(request):
    return encode_reply(Command.INFO, request[2], Reply.OK, info_payload())


def connected(config, version=PROTOCOL_VERSION, replies=8):
    """A host link to a scripted board of this config and protocol version that answers OK."""
    info = lambda r: encode_reply(Command.INFO, r[2], Reply.OK, info_payload(version, config=config))
    transport = ScriptedTransport([info] + [ok] * replies)
    link = HostLink(transport, config, baud=1e6, timeout=0.01)
    link.connect()
    return link, transport


def ok(request, payload=b""):
    return encode_reply(request[1], request[2], Reply.OK, payload)


def test_host_retries_then_succeeds_and_repeats_the_sequence_number():
    corrupt = lambda request: bytearray(ok(request))[:-1] + b"\x00"                  # bad CRC
    stale = lambda request: encode_reply(request[1], request[2] - 1, Reply.OK)       # an older reply
    transport = ScriptedTransport([info_reply, b"", corrupt,
                                   lambda r: encode_reply(r[1], r[2], Reply.BAD_CRC),
                                   lambda r: b"\x00\x13" + stale(r) + ok(r, b"\x05\x00\x00")])
    link = HostLink(transport, CFG, baud=1e6, timeout=0.01, retries=4, quiet=0.001)
    link.connect()
    assert link.read(MemoryTarget.RESULT, 2, 1) == [5]
    reads = transport.sent[1:]
    assert len(reads) == 4 and len(set(reads)) == 1             # the same frame, the same seq, 4 times
    assert link.failures == {"no reply": 1, "reply CRC": 1, "negative reply BAD_CRC": 1}


def test_host_errors_are_one_clear_line():
    link = HostLink(ScriptedTransport([]), CFG, baud=1e6, timeout=0.01, retries=2, quiet=0.001)
    with pytest.raises(LinkError, match=r"^The board did not answer INFO after 3 attempts \(last: no reply\): is the "
                                        r"board flashed with the accelerator top \(python -m hw.build --board \.\.\. "
                                        r"--program\) and running at this baud rate\?$"):
        link.connect()
    other = CFG.replace(rows=1)
    link = HostLink(ScriptedTransport([info_reply]), other, baud=1e6, timeout=0.01)
    with pytest.raises(LinkError, match=f"The board was built for config {CFG.fingerprint()}; the host expects "
                                        f"{other.fingerprint()}"):
        link.connect()
    transport = ScriptedTransport([info_reply, lambda r: encode_reply(r[1], r[2], Reply.BUSY)])
    link = HostLink(transport, CFG, baud=1e6, timeout=0.01)
    link.connect()
    with pytest.raises(LinkError, match="The board refused WRITE: BUSY"):
        link.write(MemoryTarget.ACT, 0, [1])
    assert len(transport.sent) == 2                              # refused: not retried
    with pytest.raises(LinkError, match=r"Entries 60 .. 64 are outside the ACT memory \(64 entries\)"):
        link.write(MemoryTarget.ACT, 60, [1] * 5)
    with pytest.raises(LinkError, match="Only ACT and RESULT can be read, not WEIGHT"):
        link.read(MemoryTarget.WEIGHT, 0, 1)


def test_host_reads_the_run_clock_from_info():
    """INFO from version 2 on ends with the board's run clock; version 2 and version 1 boards (no clock)
    are still read."""
    link = HostLink(ScriptedTransport([info_reply]), CFG, baud=1e6, timeout=0.01)
    info = link.connect()
    assert (info.version, info.clock_hz, info.frame_bytes, info.fingerprint) == (3, 40_000_000, 64, CFG.fingerprint())
    assert info.seconds(4_000) == 1e-4
    info = connected(CFG, version=2)[0].info
    assert (info.version, info.clock_hz) == (2, 40_000_000)
    old = lambda r: encode_reply(Command.INFO, r[2], Reply.OK, info_payload(version=1))
    info = HostLink(ScriptedTransport([old]), CFG, baud=1e6, timeout=0.01).connect()
    assert (info.version, info.clock_hz, info.seconds(4_000)) == (1, None, None)
    for payload, message in [
            (bytes([4]) + info_payload()[1:],
             r"^The board speaks host protocol version 4; this host speaks versions 1, 2, 3$"),
            (info_payload()[:-1], r"^The board's version 3 INFO reply has 15 bytes, not 16$"),
            (info_payload(version=2)[:-1], r"^The board's version 2 INFO reply has 15 bytes, not 16$"),
            (info_payload(version=1) + b"\x00", r"^The board's version 1 INFO reply has 13 bytes, not 12$")]:
        reply = lambda r, payload=payload: encode_reply(Command.INFO, r[2], Reply.OK, payload)
        with pytest.raises(LinkError, match=message):
            HostLink(ScriptedTransport([reply]), CFG, baud=1e6, timeout=0.01).connect()


def test_info_reports_the_link_clock():
    assert Link(CFG).info_payload()[12:] == CFG.clock_hz.to_bytes(4, "little")
    assert Link(CFG, clock_hz=27_000_000).info_payload()[12:] == (27_000_000).to_bytes(4, "little")
    with pytest.raises(GatewareLinkError, match=r"Clock must be a positive integer number of Hz below 2\*\*32, "
                                                r"not 40000000.5"):
        Link(CFG, clock_hz=40_000_000.5)


def test_host_splits_writes_into_frames():
    transport = ScriptedTransport([info_reply] + [ok] * 3)
    link = HostLink(transport, CFG, baud=1e6, timeout=0.01)
    link.connect()
    link.write(MemoryTarget.ACT, 0, list(range(60)))              # 59 entries fit a 64-byte frame
    frames = transport.sent[1:]
    assert [len(f) for f in frames] == [7 + 5 + 59, 7 + 5 + 1]
    assert frames[1][5:10] == bytes([MemoryTarget.ACT.value, 59, 0, 1, 0]) and frames[1][10] == 59


def test_host_write_narrow_frames():
    """write_narrow: WRITE_NARROW frames of `nbytes` bytes an entry, (64 - 6) // 3 = 19 entries a frame."""
    link, transport = connected(CFG32)
    values = [(0x10101 * i) & 0xFFFFFF for i in range(40)]
    link.write_narrow(MemoryTarget.ACT, 5, values, 3)
    assert transport.sent[1:] == [narrow_request(2, 5, values[:19], 3), narrow_request(3, 24, values[19:38], 3),
                                  narrow_request(4, 43, values[38:], 3)]
    assert link.payload_out == 3 * 6 + 40 * 3
    link.write_narrow(MemoryTarget.ACT, 0, [0xAB], 4)           # the whole entry is allowed too
    assert transport.sent[-1] == narrow_request(5, 0, [0xAB], 4)


def test_host_write_narrow_falls_back_to_write_on_a_version_2_board():
    link, transport = connected(CFG32, version=2)
    values = list(range(1, 21))
    link.write_narrow(MemoryTarget.ACT, 5, values, 1)
    whole = lambda seq, addr, chunk: encode_request(Command.WRITE, seq, args(MemoryTarget.ACT, addr, len(chunk))
                                                    + b"".join(v.to_bytes(4, "little") for v in chunk))
    assert transport.sent[1:] == [whole(2, 5, values[:14]), whole(3, 19, values[14:])]     # (64 - 5) // 4 = 14


def test_host_write_narrow_refuses_bad_arguments_before_sending():
    link, transport = connected(CFG32)
    act = MemoryTarget.ACT
    for (target, addr, values, nbytes), message in [
            ((MemoryTarget.WEIGHT, 0, [1], 1), r"^Only ACT can be written narrow, not WEIGHT$"),
            ((act, 0, [1], 0), r"^A narrow write sends 1 to 4 bytes an entry, not 0$"),
            ((act, 0, [1], 5), r"^A narrow write sends 1 to 4 bytes an entry, not 5$"),
            ((act, 0, [1], True), r"^A narrow write sends 1 to 4 bytes an entry, not True$"),
            ((act, 0, [1, 0x1000000], 3), r"^Entry 1 \(0x1000000\) does not fit 3 bytes$"),
            ((act, 0, [-1], 3), r"^Entry 0 \(-0x1\) does not fit 3 bytes$"),
            ((act, 62, [1, 2, 3], 3), r"^Entries 62 \.\. 64 are outside the ACT memory \(64 entries\)$")]:
        with pytest.raises(LinkError, match=message):
            link.write_narrow(target, addr, values, nbytes)
    assert len(transport.sent) == 1                              # INFO only
    with pytest.raises(LinkError, match="The link is not connected: call connect\\(\\) first"):
        HostLink(ScriptedTransport([]), CFG32, baud=1e6).write_narrow(MemoryTarget.ACT, 0, [1], 1)


def test_board_backend_writes_a_packed_input_narrow(monkeypatch):
    """The board backend writes a packed image input (input mode "packed") with WRITE_NARROW of
    `word_bytes` bytes an entry, at the input's base; any other input, and other writes, whole."""
    import dataclasses
    import sw.runtime
    from boards.runtime import BoardBackend
    from sim.benches.board_model import CountingBoard
    from sw.compile import compile_model
    from sw.compile.testing import linear, random_model
    config = CFG32.replace(max_k=256, act_depth=256, weight_depth=64, scale_depth=64, thr_depth=64)
    unfolded = compile_model(random_model([linear(6), linear(3)], (1, 4, 4), config, seed=1), config)
    packed = dataclasses.replace(unfolded, input=dict(unfolded.input, mode="packed", word_bytes=3))
    pixels = [0x332211, 0x665544, 0x0000FF]
    words = np.array([[p] for p in pixels], dtype=np.uint64)
    monkeypatch.setattr(sw.runtime, "run_inputs", lambda bundle, images: (words[None], 1))

    class Recording(CountingBoard):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.frames = []

        def write(self, data):
            self.frames.append(bytes(data))
            super().write(data)

    base = unfolded.input["act_base"]
    whole = lambda seq: encode_request(Command.WRITE, seq, args(MemoryTarget.ACT, base, 3)
                                       + b"".join(p.to_bytes(4, "little") for p in pixels))
    for bundle, expected in [(packed, lambda seq: narrow_request(seq, base, pixels, 3)), (unfolded, whole)]:
        board = Recording(config, cycles=10)
        with BoardBackend(bundle, transport=board, baud=1e6) as backend:
            backend.load()
            loaded = len(board.frames)
            backend.run(np.zeros((1, 1, 4, 4), dtype=np.uint8))
            backend.write_memory("act", base + 8, words)        # not the input: whole words
        inputs = [f for f in board.frames[loaded:] if f[1] in (Command.WRITE.value, Command.WRITE_NARROW.value)]
        assert len(inputs) == 2
        assert inputs[0] == expected(inputs[0][2])
        assert inputs[1][1] == Command.WRITE.value


# ---------------------------------------------------------------------------------------------- sw.run
@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    from sw.bundle import save_bundle
    from sw.compile import compile_model
    from sw.compile.testing import linear, random_model
    config = CFG.replace(max_k=256, act_depth=256, weight_depth=64, scale_depth=64, thr_depth=64, acc_bits=32)
    path = tmp_path_factory.mktemp("run") / "prog.bundle"
    save_bundle(path, compile_model(random_model([linear(6), linear(3)], (1, 4, 4), config, seed=1), config))
    np.save(path.with_name("images.npy"), np.zeros((1, 1, 4, 4), dtype=np.uint8))
    return path


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "sw.run", *map(str, args)], capture_output=True, text=True,
                          timeout=60)


def test_run_with_a_missing_port_is_one_line(small_bundle, tmp_path):
    result = run_cli("--port", tmp_path / "ttyUSB9", small_bundle, small_bundle.with_name("images.npy"))
    assert result.returncode == 1 and result.stdout == ""
    error = result.stderr.splitlines()[-1]
    assert error.startswith(f"python -m sw.run: error: Cannot open serial port {tmp_path / 'ttyUSB9'}: ")
    assert "Traceback" not in result.stderr


def test_run_with_a_silent_board_times_out(small_bundle):
    master, slave = os.openpty()                  # a serial device where nothing answers
    try:
        result = run_cli("--port", os.ttyname(slave), "--timeout", "0.05", "--retries", "1", small_bundle,
                         small_bundle.with_name("images.npy"))
    finally:
        os.close(master)
        os.close(slave)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(
        "python -m sw.run: error: The board did not answer INFO after 2 attempts (last: no reply): is the board")


def test_run_classifies_over_a_serial_port(small_bundle, capsys):
    """The whole host path of `python -m sw.run` through pyserial, against a protocol-level stand-in for
    the board on a pseudo-terminal (zero logits: the board's arithmetic is tested under Verilator)."""
    import threading
    from sim.benches.board_model import CountingBoard
    from sw.bundle import load_bundle
    from sw.run import main
    bundle = load_bundle(small_bundle)
    board = CountingBoard(bundle.config, cycles=1234)
    master, slave = os.openpty()
    port = os.ttyname(slave)
    stop = threading.Event()

    def serve():
        data = b""
        while not stop.is_set():
            ready, _, _ = select.select([master], [], [], 0.05)
            if not ready:
                continue
            data += os.read(master, 4096)
            while len(data) >= 5 and len(data) >= 7 + int.from_bytes(data[3:5], "little"):
                size = 7 + int.from_bytes(data[3:5], "little")
                board.write(data[:size])
                data = data[size:]
                os.write(master, board.read(1 << 20, 0))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        status = main(["--port", port, "--timeout", "0.5", str(small_bundle),
                       str(small_bundle.with_name("images.npy"))])
    finally:
        stop.set()
        server.join()
        os.close(master)
        os.close(slave)
    out = capsys.readouterr().out.splitlines()
    assert status == 0
    assert out[0] == "image 0 (images.npy[0]): prediction 0  cycles 1234  logits 0 0 0"
    assert out[1].startswith(f"board on {port}: 1 images in ")
    # The board's INFO gives its run clock (the config's here): 1234 cycles at 100 MHz.
    assert f"(100 MHz clock, 0.012 ms of compute per image); " in out[1]
    assert out[1].endswith(f"{board.requests} requests, {board.bytes_out} bytes out, {board.bytes_in} bytes in, "
                           "0 retried")


def test_run_usage_errors():
    result = run_cli("prog.bundle", "x.png")
    assert result.returncode == 2 and "the following arguments are required: --port" in result.stderr
    result = run_cli("--port", "/dev/null", "--retries", "-1", "prog.bundle", "x.png")
    assert result.returncode == 2
