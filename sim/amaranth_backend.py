"""The `pysim` runtime backend: the bundle runs on hw.accel.Accelerator in Amaranth's simulator.

The runtime's own host code (sw.runtime.MemoryBackend.run) runs unchanged in a worker thread; each of
its memory primitives becomes a request that the simulator's test bench performs through the host port
and answers. The two threads strictly alternate, so the simulation stays deterministic. Slow (pure
Python); meant for small configs and for tests. Options: `watchdog` (cycles per image).
"""

import queue
import threading

import numpy as np
from amaranth.sim import Simulator

from hw.accel import Accelerator
from hw.isa import MemoryTarget
from sw.runtime import Backend, MemoryBackend, RuntimeApiError, register_backend
from sw.runtime.host_port import TARGETS, entry_ints, result_value, stream_ints

from .accel_sim import cycles_per_pc, read_entries, run_program, write_entries

__all__ = ["PysimBackend"]

_STOP = object()


class _ThreadHost(MemoryBackend):
    """MemoryBackend whose primitives are requests to the simulator thread."""

    name = "pysim"

    def __init__(self, bundle, config, requests, replies):
        super().__init__(bundle, config)
        self._requests, self._replies = requests, replies
        self._per_pc = None

    def _call(self, *request):
        self._requests.put(request)
        kind, value = self._replies.get()
        if kind == "error":
            raise value
        return value

    def write_memory(self, memory, base, values):
        self._call("write", memory, base, entry_ints(self.config, memory, values))

    def start_and_wait(self, stream=()):
        cycles, error, per_pc = self._call("run", stream_ints(self.config, stream))
        self._per_pc = per_pc
        return cycles, error

    def read_result(self, base, count):
        return np.array([result_value(self.config, v) for v in self._call("read", base, count)],
                        dtype=np.int64)

    def instruction_cycles(self):
        return self._per_pc


class PysimBackend(Backend):
    name = "pysim"

    def __init__(self, bundle, config=None, watchdog=2_000_000, **options):
        super().__init__(bundle, config, **options)
        self.watchdog = watchdog

    def run(self, images):
        dut = Accelerator(self.config)
        requests, replies = queue.Queue(), queue.Queue()
        host = _ThreadHost(self.bundle, self.config, requests, replies)
        outcome = {}

        def host_main():
            try:
                host.load()
                outcome["result"] = host.run(images)
            except BaseException as error:      # handed back to the caller's thread
                outcome["error"] = error
            finally:
                requests.put((_STOP,))

        async def bench(ctx):
            n_instr = len(self.bundle.instructions)
            while True:
                request = requests.get()
                if request[0] is _STOP:
                    return
                try:
                    if request[0] == "write":
                        _, memory, base, data = request
                        await write_entries(ctx, dut, TARGETS[memory], base, data)
                        replies.put(("ok", None))
                    elif request[0] == "read":
                        _, base, count = request
                        replies.put(("ok", await read_entries(ctx, dut, MemoryTarget.RESULT, base, count,
                                                              raw=True)))
                    else:
                        _, entries = request
                        marks = {}
                        try:
                            error, cycles = await run_program(ctx, dut, self.watchdog, entries, marks)
                        except AssertionError:
                            raise RuntimeApiError(f"watchdog: no done after {self.watchdog} cycles "
                                                  f"(pc {ctx.get(dut.pc)})") from None
                        replies.put(("ok", (cycles, error, cycles_per_pc(marks, cycles, n_instr))))
                except BaseException as error:
                    replies.put(("error", error))
                    raise

        thread = threading.Thread(target=host_main, daemon=True)
        sim = Simulator(dut)
        sim.add_clock(1e-8)
        sim.add_testbench(bench)
        thread.start()
        try:
            sim.run()
        finally:
            thread.join(timeout=10)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]


register_backend("pysim", PysimBackend)
