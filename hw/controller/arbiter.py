"""`ActBufferArbiter`: the activation buffer's one read port and one write port, shared by name."""

from amaranth.hdl import Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig

__all__ = ["ActBufferArbiter"]


class ActBufferArbiter(wiring.Component):
    """Grants the activation buffer's read port and write port to whichever requester enables them.

    The engines that share the buffer never need it in the same cycle (the host only while no program
    runs; the gather and the writer only in a CONV; the pool engine only in a POOL), so the grant is a
    fixed priority in the order the requesters are named, and `collision` flags a cycle in which two
    requesters enable the same port: that is a controller bug, which the tests watch for.

    Ports
    -----
    r_<name> : In({addr, en})         a read request; the data appears on the buffer's read port next cycle.
    w_<name> : In({addr, data, en})   a write request, `en` one bit per R-bit field.
    read     : Out({addr, en})        to the buffer's read port.
    write    : Out({addr, data, en})  to the buffer's write port, registered: a write reaches the buffer
                                      the cycle after its request (the engines' write logic and the
                                      grant's priority multiplexer end in flip-flops, not in the block
                                      RAM's inputs). Nothing reads a word in the cycle after its write.
    collision: Out(1)                 two requesters enabled one port in this cycle.
    """

    def __init__(self, config, readers, writers):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Config must be an AccelConfig, not {config!r}")
        for names, kind in ((readers, "reader"), (writers, "writer")):
            if not names or len(set(names)) != len(names):
                raise ValueError(f"Each {kind} must have a distinct name, not {names!r}")
        self._readers, self._writers = tuple(readers), tuple(writers)
        self.read_layout = data.StructLayout({"addr": range(config.act_depth), "en": 1})
        self.write_layout = data.StructLayout({"addr": range(config.act_depth), "data": config.word_bits,
                                               "en": config.word_bits // config.rows})
        super().__init__({
            **{f"r_{name}": In(self.read_layout) for name in readers},
            **{f"w_{name}": In(self.write_layout) for name in writers},
            "read": Out(self.read_layout),
            "write": Out(self.write_layout),
            "collision": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        reads = [getattr(self, f"r_{name}") for name in self._readers]
        writes = [getattr(self, f"w_{name}") for name in self._writers]
        granted_write = Signal(self.write_layout)
        for port, requests in ((self.read, reads), (granted_write, writes)):
            with m.If(requests[0].en.any()):
                m.d.comb += port.eq(requests[0])
            for request in requests[1:]:
                with m.Elif(request.en.any()):
                    m.d.comb += port.eq(request)
        m.d.sync += self.write.eq(granted_write)

        def two_or_more(enables):
            seen, again = 0, 0
            for en in enables:
                again |= seen & en
                seen |= en
            return again

        m.d.comb += self.collision.eq(two_or_more([r.en.any() for r in reads]) |
                                      two_or_more([w.en.any() for w in writes]))
        return m
