"""Bundle segment entries -> the accelerator host port's `data` integers (hw.accel.Accelerator).

The Verilator bench and the board link write memories through the same host port, so both encode with
these functions, which take their bit positions from hw.layouts / hw.isa."""

import numpy as np

from hw.config import AccelConfig
from hw.isa import MemoryTarget
from hw.layouts import CoreLayouts, pack_payload

__all__ = ["TARGETS", "MEMORY_NAMES", "entry_ints", "stream_ints", "result_value"]

TARGETS = {
    "program": MemoryTarget.PROGRAM, "act": MemoryTarget.ACT, "weight": MemoryTarget.WEIGHT,
    "scale": MemoryTarget.SCALE, "threshold": MemoryTarget.THRESHOLD, "result": MemoryTarget.RESULT,
}
#: MemoryTarget value -> memory name (a LOAD's `mem` field names its memory through this).
MEMORY_NAMES = {target.value: name for name, target in TARGETS.items()}


def _limbs_to_int(limbs):
    return sum(int(v) << (64 * i) for i, v in enumerate(np.asarray(limbs).reshape(-1)))


def entry_ints(config: AccelConfig, memory, values):
    """The host-port data of every entry of a segment (`sw.bundle` segment format) as Python ints."""
    if memory not in TARGETS:
        raise ValueError(f"Unknown memory {memory!r}; the memories are: {', '.join(TARGETS)}")
    layouts = CoreLayouts(config)
    w = config.word_bits
    mask = (1 << w) - 1
    if memory == "program":
        return [int(v) for v in values]
    values = np.asarray(values)
    if memory == "act":
        return [_limbs_to_int(v) & mask for v in values]
    if memory == "weight":
        return [sum((_limbs_to_int(lane) & mask) << (r * w) for r, lane in enumerate(entry))
                for entry in values]
    if memory == "scale":
        return [pack_payload(layouts.scale_entry, [int(s) for s in entry]) for entry in values]
    if memory == "threshold":
        return [pack_payload(layouts.thr_entry, {"t": [int(t) for t in entry[:-1]], "flip": int(entry[-1] != 0)})
                for entry in values]
    return [int(v) & ((1 << config.acc_bits) - 1) for v in values.reshape(-1)]


def stream_ints(config: AccelConfig, stream):
    """The `load_in` data of a bundle's load stream (Segments in LOAD order) as one list of ints."""
    return [value for segment in stream for value in entry_ints(config, segment.memory, segment.values)]


def result_value(config: AccelConfig, data):
    """A RESULT read's data (sign-extended by the port) as a Python int of acc_bits."""
    bits = config.acc_bits
    value = int(data) & ((1 << bits) - 1)
    return value - ((value >> (bits - 1)) << bits)
