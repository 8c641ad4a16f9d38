"""cocotb bus models for Amaranth `lib.stream` ports (valid / ready / payload) as Verilog flattens them.

`amaranth.back.verilog` names a stream port `<name>__valid`, `<name>__ready` and `<name>__payload`
(one flat vector). Payloads are given and returned as Python values (dict / list / int) and encoded with
`hw.layouts.pack_payload` / `unpack_payload`, the encoder every other driver uses; pass `layout=None` to
move raw integers.

Timing discipline (one clock, all models alike): after a rising edge a model writes its outputs
(valid and payload for a source, ready for a sink); then it awaits `ReadOnly()` and samples what it
needs. A transfer happens at the next rising edge exactly when valid and ready are both high in that
ReadOnly sample. Nothing is written in ReadOnly.

Pause generators are plain iterators of bools, one value per cycle: True makes a source idle (valid
low) or a sink back-pressure (ready low) for that cycle, e.g. `random_pauses(rng, 0.3)`. A source
pauses only between transfers: once it has offered a payload, valid stays high and the payload stable
until the sink takes it (the rule of `amaranth.lib.stream`, which `StreamMonitor` checks).
"""

import itertools
from collections import deque

import cocotb
from cocotb.triggers import Event, ReadOnly, RisingEdge
from cocotb.utils import get_sim_time

from hw.layouts import pack_payload, unpack_payload

__all__ = ["StreamSource", "StreamSink", "StreamMonitor", "StreamProtocolError",
           "no_pauses", "random_pauses", "pattern_pauses", "reset_dut"]


class StreamProtocolError(AssertionError):
    """A stream broke the handshake rules (valid dropped or payload changed before the transfer)."""


def no_pauses():
    """Never idle, never back-pressure."""
    return itertools.repeat(False)


def random_pauses(rng, probability):
    """Pause each cycle independently with `probability` (a numpy Generator or random.Random)."""
    random = getattr(rng, "random")
    while True:
        yield bool(random() < probability)


def pattern_pauses(pattern):
    """Repeat a fixed pattern of pauses, e.g. [0, 0, 1] pauses every third cycle."""
    return itertools.cycle(bool(p) for p in pattern)


async def reset_dut(clock, reset, cycles=2):
    """Hold the synchronous reset for `cycles` rising edges."""
    reset.value = 1
    for _ in range(cycles):
        await RisingEdge(clock)
    reset.value = 0


class _StreamPort:
    def __init__(self, dut, name, clock, layout):
        self.name = name
        self.clock = clock
        self.layout = layout
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.payload = getattr(dut, f"{name}__payload")

    def _encode(self, value):
        return int(value) if self.layout is None else pack_payload(self.layout, value)

    def _decode(self, raw):
        return raw if self.layout is None else unpack_payload(self.layout, raw)


class StreamSource(_StreamPort):
    """Drives a stream the DUT consumes (`In(stream.Signature(...))`).

    `send(value)` queues one payload (and returns at once); `await wait()` until everything queued was
    accepted; `idle()` says whether nothing is queued or on the bus. `transfer_times` holds the
    simulation time (in ns) of every accepted payload.
    """

    def __init__(self, dut, name, clock, layout=None, pause=None):
        super().__init__(dut, name, clock, layout)
        self.queue = deque()
        self.count = 0
        self.transfer_times = []
        self._pause = pause or no_pauses()
        self._wake = Event()
        self._idle = Event()
        self._idle.set()
        self._busy = False
        self.valid.value = 0
        self._task = cocotb.start_soon(self._run())

    def set_pause_generator(self, pause):
        self._pause = pause or no_pauses()

    def send(self, value):
        self.queue.append(self._encode(value))
        self._idle.clear()
        self._wake.set()

    def send_many(self, values):
        for value in values:
            self.send(value)

    def idle(self):
        return not self.queue and not self._busy

    async def wait(self):
        if not self.idle():
            await self._idle.wait()

    async def _run(self):
        taken = False       # valid and ready were both high in the last ReadOnly sample
        waiting = False     # valid was high without ready: the payload must stay on the bus
        while True:
            await RisingEdge(self.clock)
            if taken:           # the handshake at this edge took the head of the queue
                self.queue.popleft()
                self.count += 1
                self.transfer_times.append(get_sim_time("ns"))
                taken = False
            if not self.queue:
                self.valid.value = 0
                self._busy = False
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()   # no per-cycle Python work while nothing is queued
                continue
            self._busy = True
            # Pauses only fall between transfers: once offered, a payload stays valid until taken.
            if not waiting and next(self._pause):
                self.valid.value = 0
                continue
            self.payload.value = self.queue[0]
            self.valid.value = 1
            await ReadOnly()
            taken = bool(self.ready.value)
            waiting = not taken


class StreamSink(_StreamPort):
    """Consumes a stream the DUT produces (`Out(stream.Signature(...))`).

    `await recv()` returns the next payload; `recv_nowait()` returns one or raises IndexError;
    `received` is the queue of payloads not taken yet, `transfer_times` the times of all transfers.
    The sink keeps ready high except where the pause generator says otherwise.
    """

    def __init__(self, dut, name, clock, layout=None, pause=None):
        super().__init__(dut, name, clock, layout)
        self.received = deque()
        self.count = 0
        self.transfer_times = []
        self._pause = pause or no_pauses()
        self._event = Event()
        self.ready.value = 0
        self._task = cocotb.start_soon(self._run())

    def set_pause_generator(self, pause):
        self._pause = pause or no_pauses()

    def idle(self):
        return not self.received

    def empty(self):
        return not self.received

    def recv_nowait(self):
        return self._decode(self.received.popleft())

    async def recv(self):
        while not self.received:
            self._event.clear()
            await self._event.wait()
        return self.recv_nowait()

    async def _run(self):
        while True:
            await RisingEdge(self.clock)
            ready = not next(self._pause)
            self.ready.value = int(ready)
            await ReadOnly()
            if ready and self.valid.value == 1:
                self.received.append(self.payload.value.to_unsigned())
                self.count += 1
                self.transfer_times.append(get_sim_time("ns"))
                self._event.set()


class StreamMonitor(_StreamPort):
    """Watches a stream without driving it: records every transfer and checks the handshake rules of
    `amaranth.lib.stream` on the producer (once valid is high it stays high, with the same payload,
    until the transfer). Violations are collected in `errors` (and raised if `strict`).
    """

    def __init__(self, dut, name, clock, layout=None, strict=True):
        super().__init__(dut, name, clock, layout)
        self.transfers = []        # (time in ns, payload)
        self.errors = []
        self.strict = strict
        self.valid_cycles = 0
        self._task = cocotb.start_soon(self._run())

    def values(self):
        return [self._decode(raw) for _, raw in self.transfers]

    def _error(self, message):
        self.errors.append(message)
        if self.strict:
            raise StreamProtocolError(f"{self.name}: {message}")

    async def _run(self):
        pending = None      # payload offered but not yet taken in the previous cycle
        while True:
            await RisingEdge(self.clock)
            await ReadOnly()
            valid = self.valid.value == 1
            if pending is not None:
                if not valid:
                    self._error(f"valid dropped before the transfer at {get_sim_time('ns')} ns")
                elif self.payload.value.to_unsigned() != pending:
                    self._error(f"payload changed while waiting for ready at {get_sim_time('ns')} ns")
            if not valid:
                pending = None
                continue
            self.valid_cycles += 1
            raw = self.payload.value.to_unsigned()
            if self.ready.value == 1:
                self.transfers.append((get_sim_time("ns"), raw))
                pending = None
            else:
                pending = raw
