"""The controller's cycle model: cycles per instruction from its decoded fields (docs/isa.md,
"Cycle model"). The instruction-set simulator and the reports use it; tests/hw/test_accel.py holds it
to the RTL's cycle counter."""

from .config import AccelConfig

__all__ = ["SETUP_CYCLES", "ARRIVAL_CYCLES", "TILE_OVERHEAD", "END_CYCLES", "POOL_OVERHEAD",
           "conv_cycles", "conv_tile_cycles", "pool_cycles",
           "instruction_cycles", "conv_ideal_cycles", "conv_macs"]

END_CYCLES = 3          # fetch, latch, decode
SETUP_CYCLES = 26       # fetch, latch, decode, 22 set-up products, check
ARRIVAL_CYCLES = 2      # + cols: a tile's last beat accepted -> its row 0 at the writer
TILE_OVERHEAD = 9       # per pixel tile: gather turn-around, issue start, completion
POOL_OVERHEAD = 15      # fetch, latch, decode, 10 set-up products, check, drain


def _ceil(a, b):
    return -(-a // b)


def conv_tile_cycles(config: AccelConfig, f):
    """Cycles from the first beat of a pixel tile to its last write (issue and writer overlapped).

    Passes issue back to back, each ending max(KW, R) cycles after the previous (the core's pass
    spacing); a tile's rows reach the writer `cols + ARRIVAL_CYCLES` cycles after its last beat, one
    per cycle; the writer takes a row per cycle and then writes C x T fields (bit-planes), or takes
    C cycles per row (sums), and waits for rows it has not received yet.
    """
    R, C = config.rows, config.cols
    kwords = f["kh"] * f["kw"] * f["in_cw"]
    step = max(kwords, R)
    passes = f["wbases"] * f["in_planes"]
    writer_free = 0
    for ot in range(_ceil(f["out_ch"], R)):
        last_beat = kwords + ((ot + 1) * passes - 1) * step
        first_row = last_beat + C + ARRIVAL_CYCLES
        t = writer_free
        for r in range(R):
            t = max(t, first_row + r) + (C if f["raw"] else 1)
        writer_free = t if f["raw"] else t + C * f["out_planes"]
    return writer_free


def conv_cycles(config: AccelConfig, f):
    """Cycles of one CONV with decoded fields `f` (a dict as `hw.isa.decode` returns)."""
    C = config.cols
    kwords = f["kh"] * f["kw"] * f["in_cw"]
    tiles = _ceil(f["out_h"] * f["out_w"], C)
    gather = C * (f["in_planes"] * kwords + 1) + 1
    return SETUP_CYCLES + tiles * (gather + conv_tile_cycles(config, f) + TILE_OVERHEAD)


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
