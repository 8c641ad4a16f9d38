"""The framed host protocol, host side (docs/host-protocol.md): framing, CRC, retries over a `Transport`.

    link = Link(SerialTransport("/dev/ttyUSB1", 115200), config, baud=115200)
    link.connect()                                  # INFO: checks the board's config, starts a session
    link.write(MemoryTarget.ACT, 0, [0x1234, ...])  # host-port data integers (sw.runtime.host_port)
    link.write_narrow(MemoryTarget.ACT, 0, pixels, 3)  # 3 bytes an entry, zero-extended by the board
    link.start(); status = link.wait(run_timeout=10)
    sums = link.read(MemoryTarget.RESULT, 0, 10)

Every request is sent and its reply awaited (stop and wait). A reply that does not come in time,
fails its CRC, or is a negative reply a corrupted request can cause (BAD_CRC, BAD_LENGTH) makes the
link wait until the line is quiet and send the same request again with the same sequence number, up to
`retries` times; the board answers a repeated request without applying it twice. Other negative replies
(a wrong target, a range, BUSY) are the caller's mistake and raise `LinkError` at once.

The protocol constants come from the gateware (hw/link.py), so both sides share one definition.
"""

import binascii
import time
from typing import NamedTuple

from hw.isa import MemoryTarget
from hw.link import (ARGS_BYTES, CRC_INIT, INFO_BYTES, INFO_V1_BYTES, NARROW_ARGS_BYTES, PROTOCOL_VERSION, READABLE,
                     REPLY_SYNC, REQUEST_SYNC, STATUS_BYTES, Command, Reply, check_frame_bytes, entry_bytes,
                     memory_depths)
from sw.runtime import RuntimeApiError

__all__ = ["LinkError", "Transport", "SerialTransport", "Link", "BoardInfo", "BoardStatus", "crc16", "parse_info",
           "encode_request", "encode_reply", "REQUEST_OVERHEAD", "REPLY_OVERHEAD", "NARROW_VERSION", "Command",
           "Reply"]

REQUEST_OVERHEAD = 7    # sync, command, seq, length (2), CRC (2)
REPLY_OVERHEAD = 8      # sync, command, seq, status, length (2), CRC (2)
_HEADER = 5             # reply bytes after the sync byte and before the payload
_RETRYABLE = {Reply.BAD_CRC, Reply.BAD_LENGTH}
NARROW_VERSION = 3      # the first protocol version with WRITE_NARROW


class LinkError(RuntimeApiError):
    """The board did not answer, kept answering with errors, or refused a request (`reply` is then the
    hw.link.Reply it answered with)."""

    def __init__(self, message, reply=None):
        super().__init__(message)
        self.reply = reply


def crc16(data, crc=CRC_INIT):
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, MSB first, no final XOR)."""
    return binascii.crc_hqx(bytes(data), crc)


def _frame(sync, head, payload):
    body = bytes(head) + len(payload).to_bytes(2, "little") + bytes(payload)
    return bytes([sync]) + body + crc16(body).to_bytes(2, "little")


def encode_request(command, seq, payload=b""):
    """A request frame: A5 cmd seq len(2) payload CRC(2)."""
    return _frame(REQUEST_SYNC, [int(Command(command).value), seq & 0xFF], payload)


def encode_reply(command, seq, status, payload=b""):
    """A reply frame: 5A cmd seq status len(2) payload CRC(2)."""
    return _frame(REPLY_SYNC, [int(getattr(command, "value", command)) & 0xFF, seq & 0xFF, int(Reply(status).value)],
                  payload)


class BoardInfo(NamedTuple):
    version: int
    streaming: bool          # the accelerator has a load stream (STREAM works)
    frame_bytes: int         # largest payload of one frame
    fingerprint: str         # the board's AccelConfig.fingerprint()
    clock_hz: int = None     # the clock the board runs at (its PLL's output); None from a version 1 board

    def seconds(self, cycles):
        """`cycles` of the board's clock in seconds (None when the board did not say its clock)."""
        return None if self.clock_hz is None else cycles / self.clock_hz


# INFO's length by protocol version: version 1 boards have no run clock; this host reads every version
# (version 2 boards have no WRITE_NARROW: `Link.write_narrow` sends them whole entries).
_INFO_LENGTHS = {1: INFO_V1_BYTES, 2: INFO_BYTES, PROTOCOL_VERSION: INFO_BYTES}


def parse_info(payload):
    """A `BoardInfo` from INFO's payload; LinkError for a version this host does not read or a wrong
    length."""
    if not payload:
        raise LinkError("The board's INFO reply is empty")
    version = payload[0]
    if version not in _INFO_LENGTHS:
        raise LinkError(f"The board speaks host protocol version {version}; this host speaks versions "
                        f"{', '.join(str(v) for v in sorted(_INFO_LENGTHS))}")
    if len(payload) != _INFO_LENGTHS[version]:
        raise LinkError(f"The board's version {version} INFO reply has {len(payload)} bytes, not "
                        f"{_INFO_LENGTHS[version]}")
    clock_hz = int.from_bytes(payload[12:16], "little") if version >= 2 else None
    return BoardInfo(version, bool(payload[1] & 1), int.from_bytes(payload[2:4], "little"), payload[4:12].hex(),
                     clock_hz)


class BoardStatus(NamedTuple):
    busy: bool
    done: bool
    error: int               # hw.isa.ErrorCode value of the last program
    pc: int
    cycles: int


class Transport:
    """A byte pipe to the board. `read(n, timeout)` returns up to n bytes, fewer (maybe none) when
    `timeout` seconds pass first; `write(data)` sends all of `data`. `monotonic()` is the transport's
    clock (a simulated transport runs on simulated time). `on_line_after_write` is True when `write`
    returns only once the bytes are on the line; otherwise the host allows their transfer time too (a
    USB serial adapter's FIFO may still hold them)."""

    on_line_after_write = False

    def write(self, data):
        raise NotImplementedError

    def read(self, n, timeout):
        raise NotImplementedError

    def monotonic(self):
        return time.monotonic()

    def close(self):
        pass


class SerialTransport(Transport):
    """A serial port through pyserial."""

    def __init__(self, port, baud):
        try:
            import serial
        except ImportError:
            raise LinkError("The board backend needs pyserial (pip install pyserial)") from None
        try:
            self.serial = serial.Serial(port, baud, timeout=0, write_timeout=10)
        except (serial.SerialException, OSError, ValueError) as error:
            raise LinkError(f"Cannot open serial port {port}: {error}") from None
        self.port = port

    def write(self, data):
        import serial
        try:
            self.serial.write(data)
            self.serial.flush()
        except (serial.SerialException, OSError) as error:
            raise LinkError(f"Writing to {self.port} failed: {error}") from None

    def read(self, n, timeout):
        import serial
        try:
            self.serial.timeout = max(timeout, 0)
            return self.serial.read(n)
        except (serial.SerialException, OSError) as error:
            raise LinkError(f"Reading from {self.port} failed: {error}") from None

    def close(self):
        self.serial.close()


class _Failed(Exception):
    """One attempt failed in a way a retry may fix."""


class Link:
    """The protocol over a transport, for a board built with `config`.

    baud    : the line's baud rate (a reply's expected transfer time is added to every timeout).
    timeout : seconds of latency allowed on top of the transfer time before an attempt fails.
    retries : further attempts after a failed one (each waits for `quiet` seconds of silence first).
    quiet   : silence that ends the drain before a retry; longer than the board's inter-byte timeout,
              so the board has dropped a truncated request by then.
    """

    def __init__(self, transport, config, *, baud, timeout=0.5, retries=5, quiet=0.05):
        if not isinstance(transport, Transport):
            raise TypeError(f"Transport must be a Transport, not {transport!r}")
        if not isinstance(baud, (int, float)) or baud <= 0:
            raise LinkError(f"Baud rate must be a positive number, not {baud!r}")
        if not isinstance(retries, int) or retries < 0:
            raise LinkError(f"Retries must be a non-negative integer, not {retries!r}")
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise LinkError(f"Timeout must be a positive number of seconds, not {timeout!r}")
        self.transport = transport
        self.config = config
        self.byte_time = 10 / baud
        self.timeout = timeout
        self.retries = retries
        self.quiet = quiet
        self.sizes = entry_bytes(config)
        self.depths = memory_depths(config)
        self.frame_bytes = None
        self.info = None
        self.seq = 0
        # Counters for measurements and tests.
        self.frames = self.attempts = 0
        self.failures = {}          # reason -> count of failed attempts
        self.payload_out = self.payload_in = self.bytes_out = self.bytes_in = 0
        self.on_frame = None        # called with a request's payload bytes once it was answered OK

    # ------------------------------------------------------------------------------------------- commands
    def connect(self):
        """INFO: start a session (the board forgets the last sequence number) and check its config."""
        try:
            payload = self.transact(Command.INFO, b"", frame_limit=INFO_BYTES)
        except LinkError as error:
            if error.reply is not None:
                raise
            raise LinkError(f"{error}: is the board flashed with the accelerator top (python -m hw.build "
                            f"--board ... --program) and running at this baud rate?") from None
        info = parse_info(payload)
        if info.fingerprint != self.config.fingerprint():
            raise LinkError(f"The board was built for config {info.fingerprint}; the host expects "
                            f"{self.config.fingerprint()}: build and flash the board for this config")
        check_frame_bytes(self.config, info.frame_bytes)
        self.info = info
        self.frame_bytes = info.frame_bytes
        return info

    def write(self, target, addr, values):
        """Write host-port data integers `values` to memory `target` from entry `addr`."""
        self._entries(Command.WRITE, target, addr, values)

    def write_narrow(self, target, addr, values, nbytes):
        """Write `values` like `write`, each sent as its low `nbytes` bytes (WRITE_NARROW: the board
        zero-extends them to the entry). Only ACT; every value must fit `nbytes` bytes. A board older
        than protocol version 3 gets whole entries (WRITE) instead."""
        target = MemoryTarget(target)
        if target != MemoryTarget.ACT:
            raise LinkError(f"Only ACT can be written narrow, not {target.name}")
        size = self.sizes[target]
        if not isinstance(nbytes, int) or isinstance(nbytes, bool) or not 1 <= nbytes <= size:
            raise LinkError(f"A narrow write sends 1 to {size} bytes an entry, not {nbytes!r}")
        values = [int(v) for v in values]
        for i, value in enumerate(values):
            if not 0 <= value < 1 << 8 * nbytes:
                raise LinkError(f"Entry {i} ({value:#x}) does not fit {nbytes} bytes")
        self._frame_limit()                             # refuses a link that is not connected
        if self.info.version < NARROW_VERSION:
            self._entries(Command.WRITE, target, addr, values)
        else:
            self._entries(Command.WRITE_NARROW, target, addr, values, nbytes=nbytes)

    def stream(self, target, values, timeout):
        """Push entries (in `target`'s entry format) into the running program's load stream. The board
        answers each frame once the program has taken all of its entries: `timeout` seconds at most."""
        self._entries(Command.STREAM, target, 0, values, timeout)

    def read(self, target, addr, count):
        """`count` entries of ACT or RESULT from `addr`, as unsigned integers of the entry's bytes."""
        target = MemoryTarget(target)
        if target not in READABLE:
            raise LinkError(f"Only {' and '.join(t.name for t in READABLE)} can be read, not {target.name}")
        self._check_range(target, addr, count)
        size = self.sizes[target]
        per_frame = self._frame_limit() // size
        out = []
        for first in range(0, count, per_frame):
            n = min(per_frame, count - first)
            payload = self.transact(Command.READ, self._args(target, addr + first, n), frame_limit=n * size)
            if len(payload) != n * size:
                raise LinkError(f"The board answered READ with {len(payload)} bytes, not {n * size}")
            out += [int.from_bytes(payload[i:i + size], "little") for i in range(0, n * size, size)]
        return out

    def start(self):
        self.transact(Command.START)

    def status(self):
        payload = self.transact(Command.STATUS, frame_limit=STATUS_BYTES)
        if len(payload) != STATUS_BYTES:
            raise LinkError(f"The board's STATUS reply has {len(payload)} bytes, not {STATUS_BYTES}")
        return BoardStatus(bool(payload[0] & 1), bool(payload[0] & 2), payload[1],
                           int.from_bytes(payload[2:4], "little"), int.from_bytes(payload[4:8], "little"))

    def wait(self, run_timeout):
        """Poll STATUS until the program is done; LinkError after `run_timeout` seconds."""
        deadline = self.transport.monotonic() + run_timeout
        while True:
            status = self.status()
            if status.done and not status.busy:
                return status
            if self.transport.monotonic() > deadline:
                raise LinkError(f"The board's program did not finish within {run_timeout:g} s "
                                f"(pc {status.pc}, {status.cycles} cycles)")

    # ------------------------------------------------------------------------------------------- framing
    def _frame_limit(self, args=ARGS_BYTES):
        """Entry bytes one frame holds after `args` argument bytes."""
        if self.frame_bytes is None:
            raise LinkError("The link is not connected: call connect() first")
        return self.frame_bytes - args

    def _args(self, target, addr, count):
        return bytes([int(target.value)]) + addr.to_bytes(2, "little") + count.to_bytes(2, "little")

    def _check_range(self, target, addr, count):
        if not (isinstance(addr, int) and isinstance(count, int) and addr >= 0 and count >= 0
                and addr + count <= self.depths[target]):
            raise LinkError(f"Entries {addr} .. {addr + count - 1} are outside the {target.name} memory "
                            f"({self.depths[target]} entries)")

    def _entries(self, command, target, addr, values, timeout=None, nbytes=None):
        """WRITE, STREAM, or WRITE_NARROW (`nbytes` bytes an entry) of `values`, split into frames."""
        target = MemoryTarget(target)
        values = [int(v) for v in values]
        writes = command != Command.STREAM
        if writes:
            self._check_range(target, addr, len(values))
        args, size, extra = ((ARGS_BYTES, self.sizes[target], b"") if nbytes is None else
                             (NARROW_ARGS_BYTES, nbytes, bytes([nbytes])))
        per_frame = self._frame_limit(args) // size
        for first in range(0, len(values), per_frame):
            chunk = values[first:first + per_frame]
            body = b"".join(v.to_bytes(size, "little") for v in chunk)
            self.transact(command, self._args(target, addr + first if writes else 0, len(chunk)) + extra + body,
                          timeout=timeout)

    def transact(self, command, payload=b"", *, frame_limit=0, timeout=None):
        """Send one request and return its reply's payload, retrying as the module docstring says.
        `frame_limit` is the largest reply payload expected, `timeout` replaces the link's latency
        allowance for this request (both set how long an attempt waits)."""
        command = Command(command)
        self.seq = (self.seq + 1) & 0xFF
        frame = encode_request(command, self.seq, payload)
        self.frames += 1
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                self._drain()
            self.attempts += 1
            self.transport.write(frame)
            self.bytes_out += len(frame)
            try:
                status, reply = self._reply(command, len(frame), frame_limit, self.timeout if timeout is None else timeout)
            except _Failed as failure:
                last = str(failure)
                self.failures[last] = self.failures.get(last, 0) + 1
                continue
            if status == Reply.OK:
                self.payload_out += len(payload)
                self.payload_in += len(reply)
                if self.on_frame is not None:
                    self.on_frame(len(payload))
                return reply
            if status in _RETRYABLE:
                last = f"negative reply {status.name}"
                self.failures[last] = self.failures.get(last, 0) + 1
                continue
            raise LinkError(f"The board refused {command.name}: {status.name}", reply=status)
        raise LinkError(f"The board did not answer {command.name} after {self.retries + 1} attempts "
                        f"(last: {last})")

    def _reply(self, command, sent, frame_limit, latency):
        """(status, payload) of the reply to the request just sent (sequence number self.seq)."""
        if self.transport.on_line_after_write:
            sent = 0
        wait = latency + (sent + REPLY_OVERHEAD + frame_limit) * self.byte_time * 1.5
        skipped = 0
        while True:
            byte = self.transport.read(1, wait)
            self.bytes_in += len(byte)
            if not byte:
                raise _Failed("no reply" if not skipped else "no reply after stray bytes")
            if byte[0] != REPLY_SYNC:
                skipped += 1
                if skipped > 2 * REPLY_OVERHEAD + (self.frame_bytes or INFO_BYTES):
                    raise _Failed("no sync byte")
                continue
            head = self._read_exact(_HEADER, wait)
            length = int.from_bytes(head[3:5], "little")
            if length > (self.frame_bytes or INFO_BYTES):
                raise _Failed("reply too long")
            rest = self._read_exact(length + 2, self.timeout + (length + 2) * self.byte_time * 1.5)
            body, crc = head + rest[:-2], int.from_bytes(rest[-2:], "little")
            if crc16(body) != crc:
                raise _Failed("reply CRC")
            if body[0] != command.value or body[1] != self.seq:
                continue                            # a stale reply to an earlier attempt or frame
            try:
                status = Reply(body[2])
            except ValueError:
                raise _Failed(f"unknown status {body[2]}") from None
            return status, bytes(body[_HEADER:])

    def _read_exact(self, n, timeout):
        data = self.transport.read(n, timeout)
        self.bytes_in += len(data)
        if len(data) != n:
            raise _Failed("truncated reply")
        return data

    def _drain(self):
        """Wait until the board has been silent for `quiet` seconds, dropping what it sent."""
        while True:
            data = self.transport.read(4096, self.quiet)
            self.bytes_in += len(data)
            if not data:
                return

