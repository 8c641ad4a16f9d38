"""`Link`: the framed host protocol between a UART byte stream and the `Accelerator` host port.

docs/host-protocol.md specifies the protocol; this module holds its constants (the host side,
`sw/runtime/link.py`, imports them) and the gateware. In short:

    request  A5 cmd seq len_lo len_hi payload[len] crc_lo crc_hi      CRC over cmd .. payload
    reply    5A cmd seq status len_lo len_hi payload[len] crc_lo crc_hi  CRC over cmd .. payload

CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF, MSB first, no reflection, no final XOR;
Python's `binascii.crc_hqx(data, 0xFFFF)`). A request's payload is buffered in a frame memory and
checked (CRC, length, command, arguments) before anything reaches the accelerator, so a corrupted or
truncated frame never touches its state. A request that repeats the sequence number of the last one
executed is answered without being applied again (a retried START never starts twice). WRITE_NARROW is
WRITE with fewer bytes an entry (an image's pixels: `nbytes` bytes each, zero-extended to the ACT word).
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import enum, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .accel import HostLayouts
from .config import AccelConfig
from .isa import INSTRUCTION_BITS, ErrorCode, MemoryTarget
from .layouts import CoreLayouts

__all__ = ["Link", "LinkError", "Command", "Reply", "REQUEST_SYNC", "REPLY_SYNC", "PROTOCOL_VERSION", "CRC_INIT",
           "CRC_POLY", "ARGS_BYTES", "NARROW_ARGS_BYTES", "STATUS_BYTES", "INFO_BYTES", "INFO_V1_BYTES", "READABLE",
           "entry_bytes", "memory_depths", "crc16_next", "check_frame_bytes"]

REQUEST_SYNC = 0xA5
REPLY_SYNC = 0x5A
PROTOCOL_VERSION = 3    # 3: WRITE_NARROW; 2: INFO ends with the run clock; a version 1 board's INFO has no clock
CRC_INIT = 0xFFFF
CRC_POLY = 0x1021
ARGS_BYTES = 5          # WRITE / READ / STREAM: target (1), address (2), count (2)
NARROW_ARGS_BYTES = 6   # WRITE_NARROW: target (1), address (2), count (2), bytes an entry (1)
STATUS_BYTES = 8        # flags (1), error (1), pc (2), cycles (4)
INFO_BYTES = 16         # version (1), flags (1), max payload (2), config fingerprint (8), run clock in Hz (4)
INFO_V1_BYTES = 12      # a version 1 board's INFO: the same fields without the run clock
READABLE = (MemoryTarget.ACT, MemoryTarget.RESULT)


class LinkError(ValueError):
    """The link cannot be built with these parameters."""


class Command(enum.Enum, shape=8):
    """A request's command byte."""
    INFO = 0x01     # protocol version, frame size, config fingerprint; starts a session
    WRITE = 0x02    # write `count` entries of one memory from `addr`
    READ = 0x03     # read `count` ACT or RESULT entries from `addr`
    START = 0x04    # run the program from address 0
    STATUS = 0x05   # busy, done, error code, pc, cycles
    STREAM = 0x06   # push `count` entries into the accelerator's load stream (a running program)
    WRITE_NARROW = 0x07     # WRITE of `count` ACT entries sent as `nbytes` bytes each, zero-extended


class Reply(enum.Enum, shape=8):
    """A reply's status byte: OK, or why the request was not executed."""
    OK = 0x00
    BAD_CRC = 0x01          # the frame's CRC does not match: nothing applied
    BAD_LENGTH = 0x02       # length over the frame size, or not what the command and count need
    BAD_COMMAND = 0x03      # unknown command byte
    BAD_TARGET = 0x04       # a memory target the command cannot use
    OUT_OF_RANGE = 0x05     # addr + count past the memory's depth
    BUSY = 0x06             # WRITE, WRITE_NARROW, READ or START while a program runs
    NOT_RUNNING = 0x07      # STREAM while no program runs
    NO_STREAM = 0x08        # STREAM on an accelerator without a load stream
    STREAM_ABORTED = 0x09   # the program ended before it took every streamed entry


def _bytes(bits):
    return -(-bits // 8)


def entry_bytes(config):
    """Bytes one entry of each memory takes on the link (its host-port data, little-endian)."""
    lay = CoreLayouts(config)
    return {
        MemoryTarget.PROGRAM: _bytes(INSTRUCTION_BITS),
        MemoryTarget.ACT: _bytes(config.word_bits),
        MemoryTarget.WEIGHT: _bytes(config.rows * config.word_bits),
        MemoryTarget.SCALE: _bytes(lay.scale_entry.size),
        MemoryTarget.THRESHOLD: _bytes(lay.thr_entry.size),
        MemoryTarget.RESULT: _bytes(config.acc_bits),
    }


def memory_depths(config):
    """Entries of each memory the host port addresses."""
    return {
        MemoryTarget.PROGRAM: config.instr_depth,
        MemoryTarget.ACT: config.act_depth,
        MemoryTarget.WEIGHT: config.weight_depth,
        MemoryTarget.SCALE: config.scale_depth,
        MemoryTarget.THRESHOLD: config.thr_depth,
        MemoryTarget.RESULT: config.result_depth,
    }


def crc16_next(crc, byte):
    """CRC-16/CCITT-FALSE after one more byte (MSB first), as an Amaranth expression."""
    for i in reversed(range(8)):
        feedback = crc[15] ^ byte[i]
        crc = Cat(Const(0, 1), crc[:15]) ^ Mux(feedback, CRC_POLY, 0)
    return crc


def check_frame_bytes(config, frame_bytes):
    """Refuse a frame size that cannot hold one entry of every memory, or more than 16 bits count."""
    sizes = entry_bytes(config)
    smallest = max(ARGS_BYTES + max(sizes.values()), NARROW_ARGS_BYTES + sizes[MemoryTarget.ACT], INFO_BYTES)
    if not isinstance(frame_bytes, int) or isinstance(frame_bytes, bool) or not smallest <= frame_bytes <= 0xFFFF:
        raise LinkError(f"Frame size must be an integer from {smallest} to 65535 bytes, not {frame_bytes!r}")


class Link(wiring.Component):
    """Protocol engine: request frames in, replies out, the accelerator's host port driven between.

    Ports
    -----
    rx         : In(stream of 8 bits)   bytes from the host (a UART receiver).
    tx         : Out(stream of 8 bits)  bytes to the host (a UART transmitter).
    host_write : Out(stream of HostLayouts.write)  to `Accelerator.host_write`.
    read_req   : Out(stream of HostLayouts.read)   to `Accelerator.read_req`.
    read_resp  : In(stream of HostLayouts.resp)    from `Accelerator.read_resp`.
    start      : Out(1)          one-cycle pulse: run the program.
    busy, done : In(1)           the accelerator's status.
    error      : In(ErrorCode)
    cycles     : In(32)
    pc         : In(16)
    rejected   : Out(1)          the last complete frame was answered with a negative reply.
    load       : Out(stream {data: data_bits})  STREAM entries (only with `load_stream=True`), to the
                 accelerator's `load_in`.

    Parameters: `frame_bytes` is the largest payload of a request or reply (the frame memory's depth);
    `timeout_cycles` the longest gap between two bytes of one request before the receiver drops the
    frame and looks for the next sync byte; `clock_hz` the clock the link runs at, which INFO reports
    (default: the config's `clock_hz`; `BoardTop` gives the run clock its PLL makes).
    """

    def __init__(self, config, *, frame_bytes=1024, timeout_cycles=1_000_000, load_stream=False, clock_hz=None):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Config must be an AccelConfig, not {config!r}")
        check_frame_bytes(config, frame_bytes)
        if not isinstance(timeout_cycles, int) or isinstance(timeout_cycles, bool) or timeout_cycles < 1:
            raise LinkError(f"Timeout must be a positive number of cycles, not {timeout_cycles!r}")
        clock_hz = config.clock_hz if clock_hz is None else clock_hz
        if not isinstance(clock_hz, int) or isinstance(clock_hz, bool) or not 0 < clock_hz < 1 << 32:
            raise LinkError(f"Clock must be a positive integer number of Hz below 2**32, not {clock_hz!r}")
        self._clock_hz = clock_hz
        self._config = config
        self._frame_bytes = frame_bytes
        self._timeout = timeout_cycles
        self._stream = bool(load_stream)
        host = HostLayouts(config)
        self.host_layouts = host
        ports = {
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "host_write": Out(stream.Signature(host.write)),
            "read_req": Out(stream.Signature(host.read)),
            "read_resp": In(stream.Signature(host.resp)),
            "start": Out(1),
            "busy": In(1),
            "done": In(1),
            "error": In(ErrorCode),
            "cycles": In(32),
            "pc": In(16),
            "rejected": Out(1),
        }
        if self._stream:
            ports["load"] = Out(stream.Signature(host.load))
        super().__init__(ports)

    @property
    def config(self):
        return self._config

    @property
    def frame_bytes(self):
        return self._frame_bytes

    @property
    def clock_hz(self):
        return self._clock_hz

    def info_payload(self):
        """The INFO reply's payload bytes (constant for this link)."""
        return (bytes([PROTOCOL_VERSION, int(self._stream)]) + self._frame_bytes.to_bytes(2, "little")
                + bytes.fromhex(self._config.fingerprint()) + self._clock_hz.to_bytes(4, "little"))

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        sizes = entry_bytes(cfg)
        depths = memory_depths(cfg)
        max_entry = max(sizes.values())
        frame_bytes = self._frame_bytes

        m.submodules.frame = frame = memory.Memory(shape=8, depth=frame_bytes, init=[])
        frame_w = frame.write_port()
        frame_r = frame.read_port()

        # ---------------------------------------------------------------- request state
        cmd = Signal(8)
        seq = Signal(8)
        length = Signal(16)
        hidx = Signal(2)
        pidx = Signal(16)
        args = Signal(8 * NARROW_ARGS_BYTES)
        crc_lo = Signal(8)
        rx_crc = Signal(16, init=CRC_INIT)
        timer = Signal(range(self._timeout + 1))
        last_seq = Signal(8)
        last_valid = Signal()

        target = args[0:8]
        addr = args[8:24]
        count = args[24:40]
        nbytes = args[40:48]            # WRITE_NARROW only
        narrow = cmd == Command.WRITE_NARROW.value

        # Per-target entry size (WRITE_NARROW: its `nbytes`), payload span and depth (constants
        # selected by the target byte), and the checks on them, registered in two steps so that
        # DISPATCH reads flip-flops, not a multiplier and comparators from `args`. The argument bytes
        # are complete at least three cycles before DISPATCH (the two CRC bytes come after them), so
        # both steps have settled. An `nbytes` over max_entry is refused, so its truncation in `size`
        # does not matter.
        known_target = Signal()
        size = Signal(range(max_entry + 1))
        eb = Signal.like(size)
        span = Signal(32)
        depth = Signal(17)
        m.d.sync += [known_target.eq(0), depth.eq(0)]
        with m.Switch(target):
            for t, t_size in sizes.items():
                with m.Case(t.value):
                    m.d.comb += size.eq(t_size)
                    m.d.sync += [known_target.eq(1), depth.eq(depths[t])]
        with m.If(narrow):
            m.d.comb += size.eq(nbytes)
        m.d.sync += [eb.eq(size), span.eq(count * size)]
        bad_nbytes = (nbytes == 0) | (nbytes > sizes[MemoryTarget.ACT])
        readable = Signal()
        m.d.comb += readable.eq((target == MemoryTarget.ACT.value) | (target == MemoryTarget.RESULT.value))
        in_range = Signal()
        m.d.sync += in_range.eq(addr + count <= depth)

        span_mismatch = Signal()        # the payload is not the arguments and `count` entries
        m.d.sync += span_mismatch.eq(length != ARGS_BYTES + narrow + span)

        # ---------------------------------------------------------------- reply state
        reply_status = Signal(8)
        reply_len = Signal(16)
        reply_read = Signal()           # the payload is READ entries
        tx_idx = Signal(3)
        tx_crc = Signal(16, init=CRC_INIT)
        out_buf = Signal(8 * max(max_entry, STATUS_BYTES, INFO_BYTES))
        buf_left = Signal(range(len(out_buf) // 8 + 1))

        # ---------------------------------------------------------------- apply state
        cur_addr = Signal(16)
        left = Signal(16)
        ebyte = Signal(range(max_entry + 1))
        ebuf = Signal(8 * max_entry)
        ridx = Signal(16)
        m.d.comb += [frame_r.addr.eq(ridx), frame_r.en.eq(1)]

        m.d.comb += [
            self.host_write.payload.mem.eq(target),
            self.host_write.payload.addr.eq(cur_addr),
            self.host_write.payload.data.eq(ebuf),
            self.read_req.payload.mem.eq(target),
            self.read_req.payload.addr.eq(cur_addr),
        ]
        if self._stream:
            m.d.comb += self.load.payload.data.eq(ebuf)

        rx_byte = self.rx.payload
        info = int.from_bytes(self.info_payload(), "little")
        state_changing = (cmd == Command.WRITE.value) | narrow | (cmd == Command.START.value) | \
            (cmd == Command.STREAM.value)
        duplicate = last_valid & (seq == last_seq) & state_changing

        def reply(status, nbytes=0, read=False):
            """Answer the current request (header next)."""
            m.d.sync += [reply_status.eq(status), reply_len.eq(nbytes), reply_read.eq(read), tx_idx.eq(0),
                         tx_crc.eq(CRC_INIT), self.rejected.eq(status != Reply.OK)]
            m.next = "TX_HEADER"

        def executed():
            """The request ran: a retry with the same sequence number is only answered again."""
            m.d.sync += [last_seq.eq(seq), last_valid.eq(1)]

        def receive_timeout():
            m.d.sync += timer.eq(timer + 1)
            with m.If(timer == self._timeout):
                m.next = "SYNC"

        with m.FSM():
            with m.State("SYNC"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(self.rx.valid & (rx_byte == REQUEST_SYNC)):
                    m.d.sync += [rx_crc.eq(CRC_INIT), hidx.eq(0), timer.eq(0), args.eq(0)]
                    m.next = "HEADER"
            with m.State("HEADER"):
                m.d.comb += self.rx.ready.eq(1)
                receive_timeout()
                with m.If(self.rx.valid):
                    m.d.sync += [rx_crc.eq(crc16_next(rx_crc, rx_byte)), hidx.eq(hidx + 1), timer.eq(0)]
                    with m.Switch(hidx):
                        with m.Case(0):
                            m.d.sync += cmd.eq(rx_byte)
                        with m.Case(1):
                            m.d.sync += seq.eq(rx_byte)
                        with m.Case(2):
                            m.d.sync += length[:8].eq(rx_byte)
                        with m.Case(3):
                            new_length = Cat(length[:8], rx_byte)
                            m.d.sync += [length[8:].eq(rx_byte), pidx.eq(0)]
                            with m.If(new_length > frame_bytes):
                                reply(Reply.BAD_LENGTH)
                            with m.Elif(new_length == 0):
                                m.next = "CRC"
                            with m.Else():
                                m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                m.d.comb += [self.rx.ready.eq(1), frame_w.addr.eq(pidx), frame_w.data.eq(rx_byte),
                             frame_w.en.eq(self.rx.valid)]
                receive_timeout()
                with m.If(self.rx.valid):
                    m.d.sync += [rx_crc.eq(crc16_next(rx_crc, rx_byte)), pidx.eq(pidx + 1), timer.eq(0)]
                    for i in range(NARROW_ARGS_BYTES):
                        with m.If(pidx == i):
                            m.d.sync += args[8 * i:8 * i + 8].eq(rx_byte)
                    with m.If(pidx == length - 1):
                        m.next = "CRC"
            with m.State("CRC"):
                m.d.comb += self.rx.ready.eq(1)
                receive_timeout()
                with m.If(self.rx.valid):
                    m.d.sync += [crc_lo.eq(rx_byte), hidx.eq(hidx + 1), timer.eq(0)]
                    with m.If(hidx[0]):         # hidx wrapped to 0 after the header: 0 = low, 1 = high
                        with m.If(Cat(crc_lo, rx_byte) == rx_crc):
                            m.next = "DISPATCH"
                        with m.Else():
                            reply(Reply.BAD_CRC)
            with m.State("DISPATCH"):
                # Checks in order: command, length, target, range; then duplicates, then busy.
                m.d.sync += [cur_addr.eq(addr), left.eq(count), ebyte.eq(0), ebuf.eq(0),
                             ridx.eq(ARGS_BYTES + narrow)]

                def checked(checks, action):
                    """Answer with the first true check's reply; run `action` when none is true."""
                    for i, (condition, code) in enumerate(checks):
                        with (m.If if i == 0 else m.Elif)(condition):
                            reply(code)
                    with m.Else():
                        action()

                def apply():
                    m.next = "APPLY_READ"

                def answer(code, nbytes=0, read=False, snapshot=None):
                    def action():
                        if snapshot is not None:
                            m.d.sync += out_buf.eq(snapshot)
                        executed()
                        reply(code, nbytes, read)
                    return action

                bad_entries = [((length < ARGS_BYTES) | (count == 0), Reply.BAD_LENGTH),
                               (~known_target, Reply.BAD_TARGET),
                               (span_mismatch, Reply.BAD_LENGTH)]
                status = Cat(self.busy, self.done, Const(0, 6), self.error.as_value(),
                             Const(0, 8 - len(self.error.as_value())), self.pc, self.cycles)
                with m.Switch(cmd):
                    with m.Case(Command.INFO):
                        def session():
                            m.d.sync += [out_buf.eq(info), last_valid.eq(0)]
                            reply(Reply.OK, INFO_BYTES)
                        checked([(length != 0, Reply.BAD_LENGTH)], session)
                    with m.Case(Command.STATUS):
                        checked([(length != 0, Reply.BAD_LENGTH)], answer(Reply.OK, STATUS_BYTES, snapshot=status))
                    with m.Case(Command.START):
                        def run():
                            m.d.comb += self.start.eq(1)
                            answer(Reply.OK)()
                        checked([(length != 0, Reply.BAD_LENGTH), (duplicate, Reply.OK), (self.busy, Reply.BUSY)],
                                run)
                    with m.Case(Command.WRITE):
                        checked(bad_entries + [(~in_range, Reply.OUT_OF_RANGE), (duplicate, Reply.OK),
                                               (self.busy, Reply.BUSY)], apply)
                    with m.Case(Command.WRITE_NARROW):
                        checked([((length < NARROW_ARGS_BYTES) | (count == 0), Reply.BAD_LENGTH),
                                 (target != MemoryTarget.ACT.value, Reply.BAD_TARGET),
                                 (bad_nbytes | span_mismatch, Reply.BAD_LENGTH), (~in_range, Reply.OUT_OF_RANGE),
                                 (duplicate, Reply.OK), (self.busy, Reply.BUSY)], apply)
                    with m.Case(Command.READ):
                        checked([((length != ARGS_BYTES) | (count == 0), Reply.BAD_LENGTH),
                                 (~readable, Reply.BAD_TARGET), (span > frame_bytes, Reply.BAD_LENGTH),
                                 (~in_range, Reply.OUT_OF_RANGE), (self.busy, Reply.BUSY)],
                                answer(Reply.OK, span, read=True))
                    with m.Case(Command.STREAM):
                        if not self._stream:
                            reply(Reply.NO_STREAM)
                        else:
                            checked(bad_entries + [(duplicate, Reply.OK), (~self.busy, Reply.NOT_RUNNING)], apply)
                    with m.Default():
                        reply(Reply.BAD_COMMAND)

            # WRITE / WRITE_NARROW / STREAM: entries from the frame memory, one byte per two cycles, LSB
            # first, `eb` bytes an entry (ebuf starts at zero: a narrow entry is zero-extended).
            with m.State("APPLY_READ"):
                m.next = "APPLY_TAKE"          # the read port's data follows `ridx` one cycle later
            with m.State("APPLY_TAKE"):
                for i in range(max_entry):
                    with m.If(ebyte == i):
                        m.d.sync += ebuf[8 * i:8 * i + 8].eq(frame_r.data)
                m.d.sync += [ridx.eq(ridx + 1), ebyte.eq(ebyte + 1)]
                with m.If(ebyte == eb - 1):
                    m.next = "APPLY_PUSH"
                with m.Else():
                    m.next = "APPLY_READ"
            with m.State("APPLY_PUSH"):
                def pushed(ready):
                    with m.If(ready):
                        m.d.sync += [cur_addr.eq(cur_addr + 1), left.eq(left - 1), ebyte.eq(0), ebuf.eq(0)]
                        with m.If(left == 1):
                            executed()
                            reply(Reply.OK)
                        with m.Else():
                            m.next = "APPLY_READ"
                if self._stream:
                    with m.If(cmd == Command.STREAM.value):
                        m.d.comb += self.load.valid.eq(1)
                        pushed(self.load.ready)
                        with m.If(~self.load.ready & ~self.busy):
                            executed()
                            reply(Reply.STREAM_ABORTED)
                    with m.Else():
                        m.d.comb += self.host_write.valid.eq(1)
                        pushed(self.host_write.ready)
                else:
                    m.d.comb += self.host_write.valid.eq(1)
                    pushed(self.host_write.ready)

            # Replies: header, payload (out_buf, or READ entries one at a time), CRC.
            with m.State("TX_HEADER"):
                header = Signal(8)
                with m.Switch(tx_idx):
                    for i, value in enumerate([REPLY_SYNC, cmd, seq, reply_status, reply_len[:8],
                                               reply_len[8:]]):
                        with m.Case(i):
                            m.d.comb += header.eq(value)
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(header)]
                with m.If(self.tx.ready):
                    m.d.sync += tx_idx.eq(tx_idx + 1)
                    with m.If(tx_idx != 0):
                        m.d.sync += tx_crc.eq(crc16_next(tx_crc, header))
                    with m.If(tx_idx == 5):
                        m.d.sync += [tx_idx.eq(0), buf_left.eq(reply_len)]
                        with m.If(reply_len == 0):
                            m.next = "TX_CRC"
                        with m.Elif(reply_read):
                            m.next = "READ_REQ"
                        with m.Else():
                            m.next = "TX_BUF"
            with m.State("READ_REQ"):
                m.d.comb += self.read_req.valid.eq(1)
                with m.If(self.read_req.ready):
                    m.next = "READ_WAIT"
            with m.State("READ_WAIT"):
                m.d.comb += self.read_resp.ready.eq(1)
                with m.If(self.read_resp.valid):
                    m.d.sync += [out_buf.eq(self.read_resp.payload.data), buf_left.eq(eb),
                                 cur_addr.eq(cur_addr + 1), left.eq(left - 1)]
                    m.next = "TX_BUF"
            with m.State("TX_BUF"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(out_buf[:8])]
                with m.If(self.tx.ready):
                    m.d.sync += [out_buf.eq(out_buf >> 8), buf_left.eq(buf_left - 1),
                                 tx_crc.eq(crc16_next(tx_crc, out_buf[:8]))]
                    with m.If(buf_left == 1):
                        with m.If(reply_read & (left != 0)):
                            m.next = "READ_REQ"
                        with m.Else():
                            m.next = "TX_CRC"
            with m.State("TX_CRC"):
                m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(Mux(tx_idx[0], tx_crc[8:], tx_crc[:8]))]
                with m.If(self.tx.ready):
                    m.d.sync += tx_idx.eq(tx_idx + 1)
                    with m.If(tx_idx[0]):
                        m.next = "SYNC"
        return m
