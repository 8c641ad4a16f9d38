"""The controller's cycle model: cycles per instruction from its decoded fields (docs/isa.md,
"Cycle model"). The instruction-set simulator and the reports use it; tests/hw/test_accel.py holds it
to the RTL's cycle counter."""

from .config import AccelConfig

__all__ = ["SETUP_CYCLES", "ARRIVAL_CYCLES", "ISSUE_START", "BANK_REUSE", "TILE_OVERHEAD", "END_CYCLES",
           "POOL_OVERHEAD", "conv_cycles", "pool_cycles",
           "instruction_cycles", "conv_ideal_cycles", "conv_macs"]

END_CYCLES = 3          # fetch, latch, decode
SETUP_CYCLES = 26       # fetch, latch, decode, 22 set-up products, check
ARRIVAL_CYCLES = 3      # + cols: a tile's last beat accepted -> its row 0 at the writer
ISSUE_START = 2         # a bank filled (or the previous tile issued) -> the next tile's first beat
BANK_REUSE = 1          # a bank's last beat read -> the gather may refill it
TILE_OVERHEAD = 9       # the last write -> the next instruction's fetch
POOL_OVERHEAD = 15      # fetch, latch, decode, 10 set-up products, check, drain


def _ceil(a, b):
    return -(-a // b)


def conv_cycles(config: AccelConfig, f):
    """Cycles of one CONV with decoded fields `f` (a dict as `hw.isa.decode` returns).

    Three engines overlap (docs/isa.md, "Cycle model"): the gather fills one of two patch banks per
    pixel tile (C * (N * KW + 1) + 1 cycles); the issue unit streams a filled bank's passes, a pass
    ending max(KW, R) cycles after the previous one (the core's pass spacing); the writer takes a
    tile's rows from `cols + ARRIVAL_CYCLES` after its last beat, one per cycle, then writes C x T
    fields (bit-planes), or takes C cycles per row (sums). The instruction ends with the last write.
    """
    R, C = config.rows, config.cols
    kwords = f["kh"] * f["kw"] * f["in_cw"]
    passes = f["wbases"] * f["in_planes"]
    out_tiles = _ceil(f["out_ch"], R)
    gather = C * (f["in_planes"] * kwords + 1) + 1
    gather_end, issue_end = 0, []
    last_beat = -R
    writer = 0
    for tile in range(_ceil(f["out_h"] * f["out_w"], C)):
        start = gather_end if tile < 2 else max(gather_end, issue_end[tile - 2] + BANK_REUSE)
        gather_end = start + gather
        beat = max(gather_end, issue_end[-1] if issue_end else 0) + ISSUE_START
        for _ in range(out_tiles):
            for _ in range(passes):
                last_beat = max(last_beat + R, beat + kwords - 1)
                beat = last_beat + 1
            row = last_beat + C + ARRIVAL_CYCLES
            t = writer
            for r in range(R):
                t = max(t, row + r) + (C if f["raw"] else 1)
            writer = t if f["raw"] else t + C * f["out_planes"]
        issue_end.append(last_beat)
    return SETUP_CYCLES + writer + TILE_OVERHEAD


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
