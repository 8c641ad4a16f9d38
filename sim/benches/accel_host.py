"""cocotb bench: the runtime's host code (sw.runtime.MemoryBackend.run) driving hw.accel.Accelerator
under Verilator, through the same memory primitives a board link implements.

The host code runs in a cocotb bridge thread; each primitive resumes the simulator only to move data
through the host port (one entry per cycle). While a program runs, Python wakes only when the program
counter changes (once per instruction, to record per-instruction cycles) and when `done` rises: the
simulator is never stepped from Python cycle by cycle.

Parameters (sim.runner.bench_params()): bundle (path), images (.npy path), out (JSON path),
watchdog (cycles a program may run before the bench fails it).
"""

import json

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.task import bridge, resume
from cocotb.triggers import First, ReadOnly, RisingEdge, Timer, ValueChange

from hw.accel import HostLayouts
from hw.layouts import pack_payload
from sim.accel_sim import cycles_per_pc
from sim.runner import bench_config, bench_params
from sw.bundle import load_bundle
from sw.runtime import MemoryBackend, RuntimeApiError
from sw.runtime.host_port import TARGETS, entry_ints, result_value, stream_ints

CLOCK_NS = 10


class SimulatedAccelerator(MemoryBackend):
    """A MemoryBackend whose primitives drive the Verilog accelerator's host port."""

    name = "verilator"

    def __init__(self, dut, bundle, config, watchdog):
        super().__init__(bundle, config)
        self.dut = dut
        self.watchdog = watchdog
        self.layouts = HostLayouts(config)
        self._per_pc = None

    # Primitives (called from the bridge thread) ----------------------------------------------------
    def write_memory(self, memory, base, values):
        resume(self._write)(memory, base, entry_ints(self.config, memory, values))

    def start_and_wait(self, stream=()):
        return resume(self._start_and_wait)(stream_ints(self.config, stream))

    def read_result(self, base, count):
        return np.array([result_value(self.config, v) for v in resume(self._read)("result", base, count)],
                        dtype=np.int64)

    def instruction_cycles(self):
        return self._per_pc

    # Coroutines (run in the simulator) ---------------------------------------------------------------
    async def _write(self, memory, base, data):
        dut = self.dut
        target = int(TARGETS[memory].value)
        for i, value in enumerate(data):
            dut.host_write__payload.value = pack_payload(
                self.layouts.write, {"mem": target, "addr": base + i, "data": value})
            dut.host_write__valid.value = 1
            await RisingEdge(dut.clk)
            await ReadOnly()
            if not dut.host_write__ready.value:
                raise AssertionError("host_write not ready while the accelerator is idle")
            await Timer(1, "ns")
        dut.host_write__valid.value = 0

    async def _read(self, memory, base, count):
        dut = self.dut
        target = int(TARGETS[memory].value)
        out = []
        for i in range(count):
            dut.read_req__payload.value = pack_payload(self.layouts.read, {"mem": target, "addr": base + i})
            dut.read_req__valid.value = 1
            dut.read_resp__ready.value = 1
            await RisingEdge(dut.clk)
            dut.read_req__valid.value = 0
            while True:
                await ReadOnly()
                if dut.read_resp__valid.value:
                    out.append(int(dut.read_resp__payload.value))
                    await RisingEdge(dut.clk)
                    break
                await RisingEdge(dut.clk)
        dut.read_resp__ready.value = 0
        return out

    async def _feed(self, entries):
        """Offer `entries` on load_in back to back; Python wakes per entry, and while the engine is
        not taking, only when `ready` rises."""
        dut = self.dut
        for value in entries:
            dut.load_in__payload.value = value
            dut.load_in__valid.value = 1
            await ReadOnly()
            while not dut.load_in__ready.value:
                await RisingEdge(dut.load_in__ready)
                await ReadOnly()
            await RisingEdge(dut.clk)
        dut.load_in__valid.value = 0

    async def _start_and_wait(self, stream):
        dut = self.dut
        dut.start.value = 1
        await RisingEdge(dut.clk)
        dut.start.value = 0
        feeder = cocotb.start_soon(self._feed(stream)) if stream else None
        marks = {0: 0}                 # pc -> cycle count when the controller entered it
        spent = 0
        while True:
            timeout = Timer((self.watchdog - spent + 1) * CLOCK_NS, "ns")
            trigger = await First(RisingEdge(dut.done), ValueChange(dut.pc), timeout)
            await ReadOnly()
            spent = int(dut.cycles.value)
            if dut.done.value:
                break
            if trigger is timeout or spent >= self.watchdog:
                raise AssertionError(f"watchdog: the program ran {spent} cycles without finishing "
                                     f"(pc {int(dut.pc.value)})")
            marks[int(dut.pc.value)] = spent
            await RisingEdge(dut.clk)
        cycles = int(dut.cycles.value)
        error = int(dut.error.value)
        if feeder is not None and not feeder.done():
            feeder.cancel()
            await RisingEdge(dut.clk)
            dut.load_in__valid.value = 0
        # Cycles per instruction: from entering pc to entering the next (the last runs to done).
        self._per_pc = cycles_per_pc(marks, cycles, len(self.bundle.instructions))
        await RisingEdge(dut.clk)
        return cycles, error


@cocotb.test()
async def run_images(dut):
    params = bench_params()
    config = bench_config()
    cocotb.start_soon(Clock(dut.clk, CLOCK_NS, unit="ns").start())
    dut.rst.value = 1
    for port in ("host_write__valid", "read_req__valid", "read_resp__ready", "load_in__valid", "start"):
        getattr(dut, port).value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)

    bundle = load_bundle(params["bundle"])
    images = np.load(params["images"])
    host = SimulatedAccelerator(dut, bundle, config, params["watchdog"])
    await bridge(host.load)()
    try:
        result = await bridge(host.run)(images)
    except RuntimeApiError as error:
        # The program stopped with an error status: the caller raises it again with its code.
        with open(params["out"], "w") as file:
            json.dump({"error": str(error), "code": error.code}, file)
        return
    with open(params["out"], "w") as file:
        json.dump({
            "logits": result.logits.tolist(),
            "cycles": result.cycles.tolist(),
            "layer_cycles": None if result.layer_cycles is None else result.layer_cycles.tolist(),
            "instruction_cycles": host.instruction_cycles(),
        }, file)
