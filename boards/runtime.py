"""The `board` runtime backend: a bundle runs on a board (hw.board_top.BoardTop) over its USB UART.

    with open_backend("board", "prog.bundle", port="/dev/ttyUSB1") as backend:
        logits, cycles, layer_cycles = backend.run(images)      # layer_cycles is None: not measured

It is a `MemoryBackend`: the runtime's own `run` drives it through write_memory / start_and_wait /
read_result, which this module implements with the framed host protocol (sw.runtime.link,
docs/host-protocol.md). Opening the backend sends INFO, which checks that the board was built for the
bundle's config; `backend.info` keeps the reply (`sw.runtime.link.BoardInfo`: frame size, fingerprint
and the board's run clock, `info.seconds(cycles)` for times). The program and memory images are written
before the first image runs. A bundle whose first layer reads the packed image (`input["mode"]` "packed",
docs/isa.md) has its input words written with WRITE_NARROW, `input["word_bytes"]` bytes a pixel word;
other inputs are written as whole words.

Options: `port` (serial device), `baud` (default 115200), `timeout` (seconds of latency allowed per
request, default 0.5), `retries` (further attempts after a failed one, default 5), `quiet` (seconds of
silence before a retry, default 0.05), `run_timeout` (seconds one image's program may run, default 10),
`transport` (a sw.runtime.link.Transport to use instead of a serial port: simulation and tests),
`progress` (called with the payload bytes of every request the board answered).
"""

import numpy as np

from hw.isa import MemoryTarget
from hw.link import Reply
from sw.runtime import MemoryBackend, RuntimeApiError, packed_input, register_backend
from sw.runtime.host_port import TARGETS, entry_ints, result_value
from sw.runtime.link import Link, LinkError, SerialTransport, Transport

__all__ = ["BoardBackend"]


class BoardBackend(MemoryBackend):
    name = "board"

    def __init__(self, bundle, config=None, *, port=None, baud=115200, timeout=0.5, retries=5, quiet=0.05,
                 run_timeout=10.0, transport=None, progress=None, **options):
        super().__init__(bundle, config, **options)
        if (port is None) == (transport is None):
            raise RuntimeApiError("The board backend needs a serial port (option port) or a transport, "
                                  "not both or neither")
        if transport is not None and not isinstance(transport, Transport):
            raise RuntimeApiError(f"transport must be a sw.runtime.link.Transport, not {transport!r}")
        if not isinstance(run_timeout, (int, float)) or run_timeout <= 0:
            raise RuntimeApiError(f"run_timeout must be a positive number of seconds, not {run_timeout!r}")
        self.run_timeout = run_timeout
        self.transport = SerialTransport(port, baud) if transport is None else transport
        try:
            self.link = Link(self.transport, self.config, baud=baud, timeout=timeout, retries=retries,
                             quiet=quiet)
            self.link.on_frame = progress
            self.info = self.link.connect()
        except BaseException:
            self.transport.close()
            raise
        self._loaded = False
        self.input_bytes = self.bundle.input["word_bytes"] if packed_input(self.bundle) else None

    def load_bytes(self):
        """Payload bytes `load` writes (the program and the bundle's memory images)."""
        sizes = self.link.sizes
        return (len(self.bundle.instructions) * sizes[TARGETS["program"]]
                + sum(len(s.values) * sizes[TARGETS[s.memory]] for s in self.bundle.segments))

    def load(self):
        """Write the program and the bundle's memory images (`run` does it before its first image)."""
        super().load()
        self._loaded = True

    def run(self, images):
        if not self._loaded:
            self.load()
        return super().run(images)

    # MemoryBackend primitives ----------------------------------------------------------------------------
    def write_memory(self, memory, base, values):
        entries = entry_ints(self.config, memory, values)
        if memory == "act" and self.input_bytes is not None and base == self.bundle.input.get("act_base"):
            self.link.write_narrow(TARGETS[memory], base, entries, self.input_bytes)   # the packed image
        else:
            self.link.write(TARGETS[memory], base, entries)

    def start_and_wait(self, stream=()):
        """START, push the load stream's segments (if the program has one), poll STATUS until done."""
        self.link.start()
        for segment in stream:
            try:
                self.link.stream(TARGETS[segment.memory], entry_ints(self.config, segment.memory, segment.values),
                                 timeout=self.run_timeout)
            except LinkError as error:
                if error.reply in (Reply.NOT_RUNNING, Reply.STREAM_ABORTED):
                    break               # the program stopped early: its status says why
                raise
        status = self.link.wait(self.run_timeout)
        return status.cycles, status.error

    def read_result(self, base, count):
        return np.array([result_value(self.config, v) for v in self.link.read(MemoryTarget.RESULT, base, count)],
                        dtype=np.int64)

    def close(self):
        self.transport.close()


register_backend("board", BoardBackend)
