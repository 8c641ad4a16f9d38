"""`LINK_CONFIG`, the small board the link's tests and measurements simulate, and `CountingBoard`, a
stand-in for a board at the protocol level, for measuring and testing host code where the computation
does not matter (benchmarks/link.py counts an inference's frames with it; tests/hw/test_link.py runs
`python -m sw.run` against it over a pseudo-terminal). No cocotb here: pytest imports it at collection.

It answers every request as a board with an idle accelerator would: OK, replies of the right size
(READ returns zero entries), a program that is done at the first STATUS after `cycles` cycles, INFO
with the config's clock as its run clock (or `clock_hz`). It
checks each request's sync byte and CRC, and counts bytes and requests both ways, and the request bytes
of each command (`sent`: Command -> bytes). The real board's behaviour (negative replies, duplicates,
truncation) is hw/link.py's and is tested there.
"""

from hw.config import AccelConfig
from hw.isa import MemoryTarget
from hw.link import PROTOCOL_VERSION, REQUEST_SYNC, Command, Reply, entry_bytes
from sw.runtime.link import Transport, crc16, encode_reply

__all__ = ["LINK_CONFIG", "CountingBoard"]

# BoardTop as tests/sim/test_board_link.py and benchmarks/link.py build it under Verilator: one byte per
# activation word, and an activation buffer longer than one frame.
LINK_CONFIG = AccelConfig(rows=2, cols=2, word_bits=8, max_wbases=2, max_abases=2, max_k=256, scale_depth=64,
                          thr_depth=64, out_depth=8, act_depth=1024, weight_depth=256, patch_depth=128,
                          result_depth=16, instr_depth=16, acc_bits=32)


class CountingBoard(Transport):
    def __init__(self, config, cycles, frame_bytes=1024, clock_hz=None):
        self.config = config
        self.clock_hz = config.clock_hz if clock_hz is None else clock_hz
        self.cycles = cycles
        self.frame_bytes = frame_bytes
        self.pending = b""
        self.bytes_out = self.bytes_in = self.requests = 0
        self.sent = {}

    def write(self, data):
        if data[0] != REQUEST_SYNC or crc16(data[1:-2]) != int.from_bytes(data[-2:], "little"):
            raise AssertionError(f"The host sent a malformed frame: {bytes(data[:16]).hex()}...")
        command, seq, payload = Command(data[1]), data[2], data[5:-2]
        if command == Command.INFO:
            reply = (bytes([PROTOCOL_VERSION, 1]) + self.frame_bytes.to_bytes(2, "little")
                     + bytes.fromhex(self.config.fingerprint()) + self.clock_hz.to_bytes(4, "little"))
        elif command == Command.STATUS:
            reply = bytes([0b10, 0, 0, 0]) + self.cycles.to_bytes(4, "little")
        elif command == Command.READ:
            count = int.from_bytes(payload[3:5], "little")
            reply = bytes(count * entry_bytes(self.config)[MemoryTarget(payload[0])])
        else:
            reply = b""
        self.pending += encode_reply(command, seq, Reply.OK, reply)
        self.bytes_out += len(data)
        self.requests += 1
        self.sent[command] = self.sent.get(command, 0) + len(data)

    def read(self, n, timeout):
        data, self.pending = self.pending[:n], self.pending[n:]
        self.bytes_in += len(data)
        return data
