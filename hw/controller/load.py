"""`LoadEngine`: queued LOADs, fed from the load stream into the parameter memories."""

from amaranth.hdl import Module, ResetInserter, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from ..config import AccelConfig
from ..isa import LOAD_QUEUE_DEPTH, LoadArgs, MemoryTarget

__all__ = ["LoadEngine"]


class LoadEngine(wiring.Component):
    """Takes checked LOADs into a queue (`LOAD_QUEUE_DEPTH` deep) and, one load at a time, writes its
    `count` entries from the `entries` stream to consecutive addresses of its memory, one a cycle.

    `entries.ready` is a register (the host link's stream logic hangs off it): in the cycle `flush`
    empties the queue, the active, already-checked load may still take one entry, which lands inside
    that load's region.

    Ports
    -----
    queue    : In(stream of LoadArgs)  checked LOADs.
    flush    : In(1)   drop the queue and the active load.
    entries  : In(stream {data: data_bits})  the load stream.
    idle     : Out(1)  no load active or queued.
    write    : Out({mem, addr, data})  the entry being written; write_en : Out(1)  it is written this cycle.
    """

    def __init__(self, config, data_bits):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Config must be an AccelConfig, not {config!r}")
        self._config = config
        self.write_layout = data.StructLayout({"mem": MemoryTarget, "addr": LoadArgs["addr"].shape,
                                               "data": data_bits})
        super().__init__({
            "queue": In(stream.Signature(LoadArgs)),
            "flush": In(1),
            "entries": In(stream.Signature(data.StructLayout({"data": data_bits}))),
            "idle": Out(1),
            "write": Out(self.write_layout),
            "write_en": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.queue = queue = ResetInserter(self.flush)(
            fifo.SyncFIFO(width=LoadArgs.size, depth=LOAD_QUEUE_DEPTH))
        m.d.comb += [queue.w_data.eq(self.queue.payload), queue.w_en.eq(self.queue.valid),
                     self.queue.ready.eq(queue.w_rdy)]
        queued = LoadArgs(queue.r_data)
        active = Signal()
        mem = Signal(MemoryTarget)
        addr = Signal(LoadArgs["addr"].shape)
        left = Signal(LoadArgs["count"].shape)
        m.d.comb += self.idle.eq(~active & ~queue.r_rdy)
        with m.If(self.flush):
            m.d.sync += active.eq(0)
        with m.Elif(~active & queue.r_rdy):
            m.d.comb += queue.r_en.eq(1)
            m.d.sync += [active.eq(1), mem.eq(queued.mem), addr.eq(queued.addr), left.eq(queued.count)]
        m.d.comb += self.entries.ready.eq(active)
        take = self.entries.valid & self.entries.ready
        with m.If(take):
            m.d.sync += [addr.eq(addr + 1), left.eq(left - 1)]
            with m.If(left == 1):
                m.d.sync += active.eq(0)
        m.d.comb += [self.write.mem.eq(mem), self.write.addr.eq(addr), self.write.data.eq(self.entries.payload.data),
                     self.write_en.eq(take)]
        return m
