"""The `verilator` runtime backend: the bundle runs on the accelerator's Verilog under Verilator.

    with open_backend("verilator", "prog.bundle") as backend:
        logits, cycles, layer_cycles = backend.run(images)

The simulator is built once per config (sim.runner caches it) and each `run` starts one simulation in
which the runtime's own host code (sw.runtime.MemoryBackend.run) drives the host port: see
sim/benches/accel_host.py. Options: `watchdog` (cycles one image may take, default 50 million).
"""

import itertools
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from sw.bundle import save_bundle
from sw.runtime import Backend, RunResult, RuntimeApiError, check_images, register_backend

__all__ = ["VerilatorBackend"]

_runs = itertools.count()


class VerilatorBackend(Backend):
    name = "verilator"

    def __init__(self, bundle, config=None, watchdog=50_000_000, **options):
        super().__init__(bundle, config, **options)
        if not isinstance(watchdog, int) or watchdog < 1:
            raise RuntimeApiError(f"watchdog must be a positive number of cycles, not {watchdog!r}")
        self.watchdog = watchdog
        self.instruction_cycles = None

    def run(self, images):
        from sim.runner import BenchFailure, build_design, run_bench
        images = check_images(self.bundle, images)
        build = build_design(self.config, "accel")
        with tempfile.TemporaryDirectory(prefix="bnn-verilator-") as tmp:
            tmp = Path(tmp)
            save_bundle(tmp / "prog.bundle", self.bundle)
            np.save(tmp / "images.npy", images)
            params = {"bundle": str(tmp / "prog.bundle"), "images": str(tmp / "images.npy"),
                      "out": str(tmp / "out.json"), "watchdog": self.watchdog}
            try:
                run_bench(build, "sim.benches.accel_host", params=params,
                          name=f"run-{os.getpid()}-{next(_runs)}")
            except BenchFailure as failure:
                raise RuntimeApiError(f"The Verilator run failed: {str(failure).splitlines()[1].strip()}") \
                    from failure
            out = json.loads((tmp / "out.json").read_text())
        if "error" in out:
            raise RuntimeApiError(out["error"], code=out["code"])
        self.instruction_cycles = out["instruction_cycles"]
        layer_cycles = None if out["layer_cycles"] is None else np.array(out["layer_cycles"], dtype=np.int64)
        return RunResult(np.array(out["logits"], dtype=np.int64).reshape(len(images), -1),
                         np.array(out["cycles"], dtype=np.int64), layer_cycles)


register_backend("verilator", VerilatorBackend)
