"""`Accelerator`: the controller, buffers and host port around `BinaryCore`.

It executes the instruction set of docs/isa.md, one instruction at a time, to completion. The
controller is a set of engines (hw/controller), each a `wiring.Component` with its own test:

* `Sequencer` fetches and decodes, derives the instruction's sizes through one shared multiplier,
  checks every field (docs/isa.md "Errors": a failing check halts with the error code, so an illegal
  program never hangs and never writes), then starts the engines and waits for them.
* CONV: `GatherEngine` copies each column's receptive field (all activation bases) from the
  activation buffer into one of two patch banks, padding outside the map; `IssueEngine` streams a
  filled bank into the core (stream `tiles` between them, `beats` into the core) for every (output
  tile, weight basis, activation basis, K-word) while the gather fills the other bank;
  `WriterEngine` takes the core's `results` and writes sums to the result memory (`raw`) or
  bit-planes to the activation buffer. `hw/cycles.py` models the three exactly.
* POOL: `PoolEngine`, an OR over each window, one activation-buffer read per cycle.
* LOAD / SYNC: `LoadEngine` queues checked LOADs (up to `LOAD_QUEUE_DEPTH`) and writes each one's
  entries from the `load_in` stream through the weight / scale / threshold write ports while CONV and
  POOL run. SYNC waits until the queue is empty and the engine idle; so does END. An error flushes
  the queue.
* `ActBufferArbiter` shares the activation buffer's read and write ports between the host, the
  gather, the writer and the pool engine, and flags a cycle in which two of them collide.
"""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import AccelConfig
from .controller import (ActBufferArbiter, GatherEngine, IssueEngine, LoadEngine, PoolEngine, Sequencer,
                         WriterEngine)
from .core import BinaryCore
from .isa import INSTRUCTION_BITS, ErrorCode, MemoryTarget
from .layouts import CoreLayouts

__all__ = ["Accelerator", "AccelError", "HostLayouts"]



class AccelError(ValueError):
    """The accelerator cannot be built for this config."""


class HostLayouts:
    """The host port's payload layouts for one config (drivers encode with these)."""

    def __init__(self, config):
        r, w = config.rows, config.word_bits
        core = CoreLayouts(config)
        self.data_bits = max(INSTRUCTION_BITS, r * w, core.scale_entry.size, core.thr_entry.size,
                             config.acc_bits)
        self.write = data.StructLayout({"mem": MemoryTarget, "addr": 16, "data": self.data_bits})
        self.read = data.StructLayout({"mem": MemoryTarget, "addr": 16})
        self.resp = data.StructLayout({"data": self.data_bits})
        self.load = data.StructLayout({"data": self.data_bits})


class Accelerator(wiring.Component):
    """The accelerator top.

    Ports
    -----
    host_write : In(stream {mem: MemoryTarget, addr: 16, data: data_bits})  writes one entry of a
                 memory (data holds the entry in its low bits, in the memory's layout: a weight entry
                 is `rows` words, lane r in bits r*W ..; scale and threshold entries use
                 `CoreLayouts.scale_entry` / `thr_entry`). Ready only while idle.
    read_req   : In(stream {mem: MemoryTarget, addr: 16})  reads one ACT or RESULT entry while idle.
    read_resp  : Out(stream {data: data_bits})  the entry, zero-extended (sums sign-extended).
    load_in    : In(stream {data: data_bits})  the entries LOAD instructions consume, in program order,
                 each in host_write's data format for the LOAD's memory. Ready while a load is active.
    start      : In(1)   pulse: run the program from address 0.
    busy       : Out(1)  a program is running.
    done       : Out(1)  the last program ended (END or an error) and nothing started since.
    error      : Out(ErrorCode)  why the last program stopped, NONE after END.
    cycles     : Out(32) cycles the last (or current) program has run.
    pc         : Out(16) program counter of the instruction running or the one that failed.
    act_collision : Out(1)  two engines asked for one activation-buffer port in this cycle (never,
                 in a correct controller: the tests watch it; hardware leaves it unconnected).
    """

    @staticmethod
    def check_config(config):
        """Raise AccelError (one line) when the accelerator cannot be built for `config`."""
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Config must be an AccelConfig, not {config!r}")
        w, r = config.word_bits, config.rows
        if w & (w - 1):
            raise AccelError(f"The accelerator needs word_bits to be a power of two, not {w}")
        if w % r:
            raise AccelError(f"The accelerator needs rows to divide word_bits (the writer stores a tile's "
                             f"channels as one field of a word), not rows={r} with word_bits={w}")

    def __init__(self, config):
        self.check_config(config)
        self._config = config
        self.core_layouts = CoreLayouts(config)
        host = HostLayouts(config)
        self.data_bits = host.data_bits
        self.write_layout, self.read_layout = host.write, host.read
        super().__init__({
            "host_write": In(stream.Signature(host.write)),
            "read_req": In(stream.Signature(host.read)),
            "read_resp": Out(stream.Signature(host.resp)),
            "load_in": In(stream.Signature(host.load)),
            "start": In(1),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(ErrorCode),
            "cycles": Out(32),
            "pc": Out(16),
            "act_collision": Out(1),
        })

    @property
    def config(self):
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        R, W = cfg.rows, cfg.word_bits

        m.submodules.core = core = BinaryCore(cfg)
        m.submodules.sequencer = seq = Sequencer(cfg)
        m.submodules.gather = gather = GatherEngine(cfg)
        m.submodules.issue = issue = IssueEngine(cfg)
        m.submodules.writer = writer = WriterEngine(cfg)
        m.submodules.pool = pool = PoolEngine(cfg)
        m.submodules.loads = loads = LoadEngine(cfg, self.data_bits)
        m.submodules.act_port = act_port = ActBufferArbiter(
            cfg, readers=("host", "gather", "pool"), writers=("host", "writer", "pool"))
        m.submodules.prog = prog = memory.Memory(shape=INSTRUCTION_BITS, depth=cfg.instr_depth, init=[])
        m.submodules.act = act = memory.Memory(shape=W, depth=cfg.act_depth, init=[])
        m.submodules.weight = weight = memory.Memory(
            shape=data.ArrayLayout(W, R), depth=cfg.weight_depth, init=[])
        m.submodules.result = result = memory.Memory(
            shape=signed(cfg.acc_bits), depth=cfg.result_depth, init=[])
        prog_w, prog_r = prog.write_port(), prog.read_port()
        act_w, act_r = act.write_port(granularity=R), act.read_port()
        weight_w, weight_r = weight.write_port(), weight.read_port()
        result_w, result_r = result.write_port(), result.read_port()
        busy = seq.busy

        # ------------------------------------------------------------ sequencer and engines
        m.d.comb += [
            seq.start.eq(self.start), self.busy.eq(busy), self.done.eq(seq.done), self.error.eq(seq.error),
            self.cycles.eq(seq.cycles), self.pc.eq(seq.pc),
            prog_r.addr.eq(seq.prog_addr), prog_r.en.eq(seq.prog_en), seq.prog_data.eq(prog_r.data),
        ]
        for engine in (gather, issue, writer):
            m.d.comb += [engine.conv.eq(seq.instr.args.conv), engine.plan.eq(seq.plan),
                         engine.active.eq(seq.conv_active)]
        m.d.comb += [gather.shortcut.eq(seq.shortcut), issue.shortcut.eq(seq.shortcut)]
        m.d.comb += [
            gather.start.eq(seq.conv_start), writer.start.eq(seq.conv_start), seq.conv_done.eq(writer.done),
            pool.pool.eq(seq.instr.args.pool), pool.plan.eq(seq.plan), pool.start.eq(seq.pool_start),
            seq.pool_done.eq(pool.done),
            gather.patch_addr.eq(issue.patch_addr), gather.patch_en.eq(issue.patch_en),
            issue.patch_data.eq(gather.patch_data),
            weight_r.addr.eq(issue.weight_addr), weight_r.en.eq(issue.weight_en),
            issue.weight_data.eq(weight_r.data),
            loads.flush.eq(seq.flush), seq.loads_idle.eq(loads.idle),
        ]
        wiring.connect(m, gather.tiles, issue.tiles)
        wiring.connect(m, issue.beats, core.beats)
        wiring.connect(m, core.results, writer.results)
        wiring.connect(m, seq.loads, loads.queue)
        wiring.connect(m, wiring.flipped(self.load_in), loads.entries)

        # ------------------------------------------------------------ parameter writes
        # The weight, scale and threshold write ports belong to the host while idle and to the load
        # engine while a program runs (a load is only ever active while busy).
        hw_p = self.host_write.payload
        m.d.comb += self.host_write.ready.eq(~busy)
        host_wr = self.host_write.valid & ~busy
        w_addr = Mux(loads.write_en, loads.write.addr, hw_p.addr)
        w_data = Mux(loads.write_en, loads.write.data, hw_p.data)

        def written(target):
            return (host_wr & (hw_p.mem == target)) | (loads.write_en & (loads.write.mem == target))

        lay = self.core_layouts
        m.d.comb += [
            prog_w.addr.eq(hw_p.addr), prog_w.data.eq(hw_p.data[:INSTRUCTION_BITS]),
            prog_w.en.eq(host_wr & (hw_p.mem == MemoryTarget.PROGRAM)),
            weight_w.addr.eq(w_addr), weight_w.data.eq(w_data[:R * W]),
            weight_w.en.eq(written(MemoryTarget.WEIGHT)),
            core.scale_write.valid.eq(written(MemoryTarget.SCALE)),
            core.scale_write.payload.addr.eq(w_addr),
            core.scale_write.payload.scales.eq(w_data[:lay.scale_entry.size]),
            core.thr_write.valid.eq(written(MemoryTarget.THRESHOLD)),
            core.thr_write.payload.addr.eq(w_addr),
            core.thr_write.payload.entry.eq(w_data[:lay.thr_entry.size]),
        ]

        # ------------------------------------------------------------ host reads (idle only)
        resp_pending = Signal()
        resp_mem = Signal(MemoryTarget)
        host_read = self.read_req.valid & self.read_req.ready
        m.d.comb += self.read_req.ready.eq(~busy & ~resp_pending)
        with m.If(host_read):
            m.d.sync += [resp_pending.eq(1), resp_mem.eq(self.read_req.payload.mem)]
        with m.If(self.read_resp.valid & self.read_resp.ready):
            m.d.sync += resp_pending.eq(0)
        m.d.comb += [
            self.read_resp.valid.eq(resp_pending),
            self.read_resp.payload.data.eq(Mux(resp_mem == MemoryTarget.RESULT,
                                               result_r.data.as_signed(), act_r.data)),
            result_r.addr.eq(self.read_req.payload.addr),
            result_r.en.eq(host_read),
        ]

        # ------------------------------------------------------------ activation buffer
        m.d.comb += [
            act_port.r_host.addr.eq(self.read_req.payload.addr), act_port.r_host.en.eq(host_read),
            act_port.r_gather.addr.eq(gather.act_addr), act_port.r_gather.en.eq(gather.act_en),
            act_port.r_pool.addr.eq(pool.act_r_addr), act_port.r_pool.en.eq(pool.act_r_en),
            act_port.w_host.addr.eq(hw_p.addr), act_port.w_host.data.eq(hw_p.data[:W]),
            act_port.w_host.en.eq(Mux(host_wr & (hw_p.mem == MemoryTarget.ACT), (1 << (W // R)) - 1, 0)),
            act_port.w_writer.addr.eq(writer.act_addr), act_port.w_writer.data.eq(writer.act_data),
            act_port.w_writer.en.eq(writer.act_en),
            act_port.w_pool.addr.eq(pool.act_w_addr), act_port.w_pool.data.eq(pool.act_w_data),
            act_port.w_pool.en.eq(pool.act_w_en),
            act_r.addr.eq(act_port.read.addr), act_r.en.eq(act_port.read.en),
            act_w.addr.eq(act_port.write.addr), act_w.data.eq(act_port.write.data), act_w.en.eq(act_port.write.en),
            gather.act_data.eq(act_r.data), pool.act_r_data.eq(act_r.data),
            self.act_collision.eq(act_port.collision),
        ]

        # ------------------------------------------------------------ result memory
        m.d.comb += [
            result_w.addr.eq(Mux(busy, writer.res_addr, hw_p.addr)),
            result_w.data.eq(Mux(busy, writer.res_data, hw_p.data[:cfg.acc_bits])),
            result_w.en.eq(Mux(busy, writer.res_en, host_wr & (hw_p.mem == MemoryTarget.RESULT))),
        ]
        return m
