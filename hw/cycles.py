"""The controller's cycle model: cycles per instruction from its decoded fields (docs/isa.md,
"Cycle model"). The instruction-set simulator and the reports use it; tests/hw/test_accel.py holds it
to the RTL's cycle counter."""

from .config import AccelConfig

__all__ = ["SETUP_CYCLES", "DRAIN_CYCLES", "END_CYCLES", "POOL_OVERHEAD", "conv_cycles", "pool_cycles",
           "instruction_cycles", "conv_ideal_cycles", "conv_macs"]

END_CYCLES = 3          # fetch, latch, decode
SETUP_CYCLES = 26       # fetch, latch, decode, 22 set-up products, check
DRAIN_CYCLES = 14       # last beat of a tile -> its first result at the writer
POOL_OVERHEAD = 15      # fetch, latch, decode, 10 set-up products, check, drain


def _ceil(a, b):
    return -(-a // b)


def conv_cycles(config: AccelConfig, f):
    """Cycles of one CONV with decoded fields `f` (a dict as `hw.isa.decode` returns)."""
    R, C = config.rows, config.cols
    kwords = f["kh"] * f["kw"] * f["in_cw"]
    tiles = _ceil(f["out_h"] * f["out_w"], C)
    out_tiles = _ceil(f["out_ch"], R)
    gather = C * (f["in_planes"] * kwords + 1) + 1
    c_ot = f["wbases"] * f["in_planes"] * max(kwords, R)
    w_ot = R * C if f["raw"] else R + C * f["out_planes"]
    return SETUP_CYCLES + tiles * (gather + DRAIN_CYCLES +
                                   max(out_tiles * c_ot + w_ot, c_ot + out_tiles * w_ot))


def pool_cycles(config: AccelConfig, f):
    return POOL_OVERHEAD + f["planes"] * f["out_h"] * f["out_w"] * f["cw"] * f["kernel"] ** 2


def conv_macs(f):
    """Binary multiply-accumulates of a CONV: pixels x channels x K x basis pairs."""
    return f["out_h"] * f["out_w"] * f["out_ch"] * f["k"] * f["wbases"] * f["in_planes"]


def conv_ideal_cycles(config: AccelConfig, f):
    """ceil(binary MACs / peak MACs per cycle)."""
    return _ceil(conv_macs(f), config.macs_per_cycle)


def instruction_cycles(config: AccelConfig, opcode, fields):
    from .isa import Opcode
    opcode = Opcode(opcode)
    if opcode == Opcode.CONV:
        return conv_cycles(config, fields)
    if opcode == Opcode.POOL:
        return pool_cycles(config, fields)
    return END_CYCLES
