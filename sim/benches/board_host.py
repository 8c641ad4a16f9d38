"""cocotb bench: the `board` runtime backend (boards.runtime.BoardBackend, the real host code) driving
hw.board_top.BoardTop under Verilator through a UART model, as it drives a board through pyserial.

`SimulatedSerial` is the sw.runtime.link.Transport that stands in for the serial port: the host code
runs in a cocotb bridge thread, and `write` / `read` resume the simulator to put bits on the board's
`rx` line and to collect the bytes a monitor decoded from its `tx` line. Timeouts are simulated
seconds (the config's clock_hz), so the protocol's timing is the board's.

Faults (params["faults"], optional): {"seed", "requests", "replies"}. `requests` maps the index of a
request frame the host writes (retries count) to "flip" (one bit of a random byte), "drop" (one random
byte), "truncate" (cut at a random byte) or "lose" (not sent); `replies` maps the index of a byte the
board sends to "flip", "drop" or "truncate" (that byte and up to 23 more lost).

Parameters (sim.runner.bench_params()): bundle, images (.npy), out (JSON path), faults, timeout,
quiet, run_timeout, retries. The testcase `throughput` (params: out) times a full WRITE frame, a full
READ frame and a STATUS round trip in clock cycles (benchmarks/link.py).
"""

import json
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.task import bridge, resume
from cocotb.triggers import Event, FallingEdge, First, RisingEdge, Timer

from boards.runtime import BoardBackend
from hw.board_top import SIM_CLOCKS_PER_BIT
from hw.isa import MemoryTarget
from hw.link import ARGS_BYTES, entry_bytes
from sim.runner import bench_config, bench_params
from sw.bundle import load_bundle
from sw.runtime import RuntimeApiError
from sw.runtime.link import Link, Transport

CLOCK_NS = 10
BIT_NS = CLOCK_NS * SIM_CLOCKS_PER_BIT


class Faults:
    """Scripted fault injection for both directions (seeded for the random positions); counts what it did."""

    def __init__(self, seed=0, requests=None, replies=None):
        self.rng = random.Random(seed)
        self.requests = {int(k): v for k, v in (requests or {}).items()}
        self.replies = {int(k): v for k, v in (replies or {}).items()}
        self.counts = {}
        self._request = self._reply = self._dropping = 0

    def _count(self, kind):
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def request(self, data):
        data = bytearray(data)
        kind = self.requests.get(self._request)
        self._request += 1
        if kind is None:
            return bytes(data)
        self._count(f"request {kind}")
        i = self.rng.randrange(len(data))
        if kind == "flip":
            data[i] ^= 1 << self.rng.randrange(8)
        elif kind == "drop":
            del data[i]
        elif kind == "truncate":
            del data[max(1, i):]
        elif kind == "lose":
            data = bytearray()
        else:
            raise ValueError(f"Unknown request fault {kind!r}")
        return bytes(data)

    def reply_byte(self, byte):
        """The byte the host sees, or None when it is lost."""
        kind = self.replies.get(self._reply)
        self._reply += 1
        if self._dropping:
            self._dropping -= 1
            return None
        if kind is None:
            return byte
        self._count(f"reply {kind}")
        if kind == "flip":
            return byte ^ (1 << self.rng.randrange(8))
        if kind == "truncate":
            self._dropping = self.rng.randrange(1, 24)
        elif kind != "drop":
            raise ValueError(f"Unknown reply fault {kind!r}")
        return None


class SimulatedSerial(Transport):
    """The board's serial port, simulated: a UART driver on `rx` and a UART monitor on `tx`."""

    on_line_after_write = True          # `write` returns when the last stop bit was sent

    def __init__(self, dut, faults):
        self.dut = dut
        self.faults = faults
        self.received = bytearray()
        self.arrived = Event()
        self.line_bytes = 0             # bytes the host put on the line (after faults)

    # Transport (called from the bridge thread) ------------------------------------------------------------
    def write(self, data):
        resume(self._send)(self.faults.request(data))

    def read(self, n, timeout):
        return resume(self._read)(n, timeout)

    def monotonic(self):
        return resume(self._now)()

    # Coroutines -------------------------------------------------------------------------------------------
    async def _now(self):
        return get_sim_time("sec")

    async def _send(self, data):
        rx = self.dut.rx
        for byte in data:
            for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
                rx.value = bit
                await Timer(BIT_NS, "ns")
        self.line_bytes += len(data)

    async def _read(self, n, timeout):
        deadline = get_sim_time("ns") + timeout * 1e9
        while len(self.received) < n:
            left = deadline - get_sim_time("ns")
            if left <= 0:
                break
            self.arrived.clear()
            await First(self.arrived.wait(), Timer(max(1, round(left)), "ns"))
        data, self.received[:] = bytes(self.received[:n]), self.received[n:]
        return data

    async def monitor(self):
        """Decode the board's tx line, 8N1, sampling mid-bit; faults apply before the host sees a byte."""
        tx = self.dut.tx
        while True:
            await FallingEdge(tx)
            await Timer(BIT_NS // 2, "ns")
            if tx.value:
                continue                    # a glitch, not a start bit
            byte = 0
            for i in range(8):
                await Timer(BIT_NS, "ns")
                byte |= int(tx.value) << i
            await Timer(BIT_NS, "ns")
            if not tx.value:
                raise AssertionError("the board sent a byte with a low stop bit")
            seen = self.faults.reply_byte(byte)
            if seen is not None:
                self.received.append(seen)
                self.arrived.set()


async def board(dut, faults):
    """Clock, reset, and the simulated serial port with its monitor running."""
    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
    dut.rx.value = 1
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    serial = SimulatedSerial(dut, faults)
    cocotb.start_soon(serial.monitor())
    return serial


@cocotb.test()
async def run_images(dut):
    params = bench_params()
    config = bench_config()
    faults = Faults(**params.get("faults", {}))
    serial = await board(dut, faults)
    bundle = load_bundle(params["bundle"])
    images = np.load(params["images"])
    baud = config.clock_hz / SIM_CLOCKS_PER_BIT
    start_ns = get_sim_time("ns")
    out = {}

    def host():
        with BoardBackend(bundle, config, transport=serial, baud=baud, timeout=params["timeout"],
                          quiet=params["quiet"], retries=params["retries"],
                          run_timeout=params["run_timeout"]) as backend:
            try:
                result = backend.run(images)
                out.update(logits=result.logits.tolist(), cycles=result.cycles.tolist())
            except RuntimeApiError as error:
                out.update(error=str(error), code=error.code)
            link = backend.link
            out.update(frames=link.frames, attempts=link.attempts, failures=link.failures,
                       payload_out=link.payload_out, payload_in=link.payload_in, bytes_out=link.bytes_out,
                       bytes_in=link.bytes_in)

    await bridge(host)()
    out.update(faults=faults.counts, sim_ns=get_sim_time("ns") - start_ns, line_bytes=serial.line_bytes,
               bit_ns=BIT_NS, clock_ns=CLOCK_NS)
    with open(params["out"], "w") as file:
        json.dump(out, file)


@cocotb.test()
async def throughput(dut):
    params = bench_params()
    config = bench_config()
    serial = await board(dut, Faults())
    out = {}

    def host():
        link = Link(serial, config, baud=config.clock_hz / SIM_CLOCKS_PER_BIT, timeout=100e-6, quiet=20e-6,
                    retries=0)
        link.connect()
        size = entry_bytes(config)[MemoryTarget.ACT]
        values = [(7 * i + 3) & ((1 << config.word_bits) - 1) for i in range((link.frame_bytes - ARGS_BYTES) // size)]
        read_count = min(link.frame_bytes // size, config.act_depth)
        steps = {"write": (lambda: link.write(MemoryTarget.ACT, 0, values), len(values) * size),
                 "read": (lambda: link.read(MemoryTarget.ACT, 0, read_count), read_count * size),
                 "status": (link.status, 8)}
        for name, (action, payload) in steps.items():
            start, line = serial.monotonic(), link.bytes_out + link.bytes_in
            result = action()
            out[name] = {"cycles": round((serial.monotonic() - start) * config.clock_hz), "payload": payload,
                         "line_bytes": link.bytes_out + link.bytes_in - line}
            if name == "read":
                assert result[:len(values)] == values, "READ did not return what WRITE wrote"

    await bridge(host)()
    with open(params["out"], "w") as file:
        json.dump(out, file)
