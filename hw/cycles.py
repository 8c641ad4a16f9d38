"""The controller's cycle model: cycles per instruction from its decoded fields (docs/isa.md,
"Cycle model"). The instruction-set simulator and the reports use it; tests/hw/test_accel.py holds it
to the RTL's cycle counter."""

from .config import AccelConfig
from .controller.plan import (CHECK_CYCLES, CONV_SETUP_STEPS, DECODE_CYCLES, POOL_DRAIN_CYCLES,
                              POOL_SETUP_STEPS, READ_LATENCY, SHORTCUT_SETUP_STEPS, setup_cycles)

__all__ = ["pass_words", "patch_words", "gather_tile_cycles", "gather_drain_cycles", "conv_images", "pixel_tiles", "SETUP_CYCLES", "SHORTCUT_SETUP_CYCLES", "SHORTCUT_CYCLES", "ARRIVAL_CYCLES", "ISSUE_START", "BANK_REUSE", "TILE_OVERHEAD", "END_CYCLES",
           "POOL_OVERHEAD", "LOAD_CYCLES", "SYNC_CYCLES", "conv_cycles", "pool_cycles",
           "instruction_cycles", "conv_ideal_cycles", "conv_macs", "Timeline", "program_cycles"]

END_CYCLES = DECODE_CYCLES
# Fetch, latch, decode, the set-up products the sequencer walks, check, decide.
SETUP_CYCLES = DECODE_CYCLES + setup_cycles(CONV_SETUP_STEPS) + CHECK_CYCLES
# A CONV after a SHORTCUT: the second source's set-up products too.
SHORTCUT_SETUP_CYCLES = setup_cycles(SHORTCUT_SETUP_STEPS)
SHORTCUT_CYCLES = DECODE_CYCLES                 # fetch, latch, decode (the second source is latched)
ARRIVAL_CYCLES = 5      # + cols: a tile's last beat issued -> its row 0 at the writer
ISSUE_START = 2         # a bank filled (or the previous tile issued) -> the next tile's first beat
BANK_REUSE = 2          # a bank's last word read -> the gather refills it
TILE_OVERHEAD = 9       # the last write -> the next instruction's fetch
POOL_OVERHEAD = DECODE_CYCLES + setup_cycles(POOL_SETUP_STEPS) + CHECK_CYCLES + POOL_DRAIN_CYCLES
LOAD_CYCLES = DECODE_CYCLES + CHECK_CYCLES      # fetch, latch, decode, check, queue (when the queue has room)
SYNC_CYCLES = DECODE_CYCLES + 1                 # fetch, latch, decode, wait (when the loads are done)


def _ceil(a, b):
    return -(-a // b)


def pass_words(s):
    """K-words of one pass of a source: kh * kw * in_cw, or a packed CONV's in_cw (docs/isa.md
    "Packed image input")."""
    return s["in_cw"] if s.get("packed") else s["kh"] * s["kw"] * s["in_cw"]


def patch_words(f):
    """Patch words of one pixel: every activation basis' K-words, of both sources of a two-source CONV."""
    sources = [f] + ([f["shortcut"]] if f.get("shortcut") else [])
    return sum(s["in_planes"] * pass_words(s) for s in sources)


def gather_tile_cycles(config: AccelConfig, f):
    """Cycles the gather engine takes per pixel tile: one activation-buffer word a cycle for every
    column's patch words (a packed CONV's: one pixel word a kernel position), and one idle cycle."""
    reads = f["kh"] * f["kw"] if f.get("packed") else patch_words(f)
    return config.cols * reads + 1


def conv_images(f):
    """Images one CONV computes: I for a CONV over all images of a batch (`all_images`), else 1."""
    return f.get("images_m1", 0) + 1 if f.get("all_images") else 1


def pixel_tiles(config: AccelConfig, f):
    """Pixel tiles of a CONV: its output pixels (of every image it covers) over the C columns."""
    return _ceil(conv_images(f) * f["out_h"] * f["out_w"], config.cols)


def gather_drain_cycles(f):
    """Cycles from a packed CONV's tile's last read to its last patch write after the unpacked one's:
    the packer writes the last column's `in_planes` words one a cycle."""
    return f["in_planes"] if f.get("packed") else 0


def conv_cycles(config: AccelConfig, f):
    """Cycles of one CONV with decoded fields `f` (a dict as `hw.isa.decode` returns; `f["shortcut"]`,
    when present, the decoded SHORTCUT before it).

    Three engines overlap (docs/isa.md, "Cycle model"): the gather fills one of two patch banks per
    pixel tile (C * (N * KW + N2 * KW2) + 1 cycles, N2 * KW2 the second source's words); the issue
    unit streams a filled bank's passes, the main source's then the second's for every output tile, a
    pass ending max(its K-words, R) cycles after the previous one (the core's pass spacing; with
    `element_scales`, a pass ends its K-words after the previous one and only a tile's last pass waits
    until R cycles after the previous tile's); the writer
    takes a tile's rows from `cols + ARRIVAL_CYCLES` after its last beat, one per cycle, into one of
    two tile buffers and writes C x T fields from the other (bit-planes), or takes C cycles per row
    (sums). The instruction ends with the last write.
    """
    R, C = config.rows, config.cols
    sources = [f] + ([f["shortcut"]] if f.get("shortcut") else [])
    passes = []                                   # K-words of every pass of one output tile, in order
    for s in sources:
        passes += [pass_words(s)] * (s["wbases"] * s["in_planes"])
    out_tiles = _ceil(f["out_ch"], R)
    gather = gather_tile_cycles(config, f)
    gather_end, issue_end = 0, []
    reuse = []                                    # per pixel tile: when the gather may refill its bank
    last_beat = -R
    tile_end = -R                                 # the previous output tile's last beat
    writer = 0                                    # the writer's first free cycle
    take = 0                                      # the first cycle the writer may take a row
    written = [-1, -1]                            # the last write cycle of each tile, in order
    tail = []                                     # the core's take times of a tile's last three beats
    for tile in range(pixel_tiles(config, f)):
        start = gather_end if tile < 2 else max(gather_end, reuse[tile - 2])
        gather_end = start + gather
        # The issue engine reads two beats ahead of the core: when the tile's second-to-last beat
        # waited for the pass spacing, the next tile's first beat was read during that wait and
        # follows the last beat at once.
        follow = 1 if len(tail) == 3 and tail[1] >= tail[0] + 2 else ISSUE_START
        # The bank shows full READ_LATENCY cycles after the next tile's gather may start (its last
        # word is read, arrives registered, and lands).
        beat = max(gather_end + READ_LATENCY + gather_drain_cycles(f) + ISSUE_START,
                   issue_end[-1] + follow if issue_end else ISSUE_START)
        tail = []
        for _ in range(out_tiles):
            for p, kwords in enumerate(passes):
                if not config.element_scales:
                    last_beat = max(last_beat + R, beat + kwords - 1)
                elif p == len(passes) - 1:
                    last_beat = tile_end = max(tile_end + R, beat + kwords - 1)
                else:
                    last_beat = beat + kwords - 1
                tail = (tail + list(range(max(beat, beat + kwords - 3), beat + kwords - 1)) + [last_beat])[-3:]
                beat = last_beat + 1
            row = last_beat + C + ARRIVAL_CYCLES
            if f["raw"]:
                for r in range(R):
                    writer = max(writer, row + r) + C
                continue
            # Bit-planes: rows go into one of two tile buffers (free once the tile two before is
            # written); a tile's writes start the cycle after both its last row was taken and the
            # previous tile's last write, and take C x T cycles.
            t = max(take, written[-2] + 1)
            for r in range(R):
                t = max(t, row + r) + 1
            take = t
            start = max(t - 1, written[-1]) + 1
            written.append(start + C * f["out_planes"] - 1)
            writer = written[-1] + 1
        issue_end.append(last_beat)
        # The issue engine reads two beats ahead of the core: it reads the bank's last word as the core
        # takes the tile's third-to-last beat (at once, for a tile of fewer beats).
        reuse.append((tail[0] if len(tail) == 3 else tail[-1] - 2) + BANK_REUSE)
    setup = SETUP_CYCLES + (SHORTCUT_SETUP_CYCLES if len(sources) > 1 else 0)
    return setup + writer + TILE_OVERHEAD


def pool_cycles(config: AccelConfig, f):
    return POOL_OVERHEAD + f["planes"] * f["out_h"] * f["out_w"] * f["cw"] * f["kernel"] ** 2


def conv_macs(f):
    """Binary multiply-accumulates of a CONV: pixels x channels x K x basis pairs, of both sources."""
    sources = [f] + ([f["shortcut"]] if f.get("shortcut") else [])
    return (conv_images(f) * f["out_h"] * f["out_w"] * f["out_ch"]
            * sum(s["k"] * s["wbases"] * s["in_planes"] for s in sources))


def conv_ideal_cycles(config: AccelConfig, f):
    """ceil(binary MACs / peak MACs per cycle)."""
    return _ceil(conv_macs(f), config.macs_per_cycle)


def instruction_cycles(config: AccelConfig, opcode, fields):
    """Cycles of one CONV, POOL or END on its own (no loads outstanding). LOAD and SYNC depend on the
    loads before them: use `Timeline`."""
    from .isa import Opcode
    opcode = Opcode(opcode)
    if opcode == Opcode.CONV:
        return conv_cycles(config, fields)
    if opcode == Opcode.POOL:
        return pool_cycles(config, fields)
    if opcode == Opcode.END:
        return END_CYCLES
    raise ValueError(f"{opcode.name}'s cycles depend on the program before it: use Timeline")


class Timeline:
    """The controller and the load engine over one run of a program (docs/isa.md "Cycle model").

    `step(opcode, fields)` returns the cycles from the instruction's fetch to the next fetch (to `done`
    for END), given every instruction stepped before it. The load stream is assumed to offer an entry
    every cycle (as the simulation benches feed it); a slower source lengthens SYNC and END waits.

    * LOAD queues at its fifth cycle, later when `LOAD_QUEUE_DEPTH` loads wait in the queue (a slot
      frees the cycle after the engine takes a load); the engine takes a queued load the cycle after
      it was queued, or the cycle after its previous load's last entry, and writes one entry a cycle.
    * SYNC's fourth cycle repeats until the engine is idle and the queue empty; END's third likewise.
    """

    def __init__(self, config: AccelConfig):
        self.config = config
        self.now = 0            # cycle of the next instruction's fetch, from the first fetch
        self.taken = []         # cycle the engine took each load
        self.idle_at = 0        # first cycle with no load active or queued
        self.shortcut = None    # the fields of a SHORTCUT waiting for its CONV

    def step(self, opcode, fields):
        from .isa import LOAD_QUEUE_DEPTH, Opcode
        opcode = Opcode(opcode)
        t = self.now
        if opcode == Opcode.LOAD:
            queue_at = t + LOAD_CYCLES - 1
            if len(self.taken) >= LOAD_QUEUE_DEPTH:
                queue_at = max(queue_at, self.taken[-LOAD_QUEUE_DEPTH] + 1)
            take = max(queue_at + 1, self.idle_at)
            self.taken.append(take)
            self.idle_at = take + fields["count"] + 1
            end = queue_at + 1
        elif opcode == Opcode.SYNC:
            end = max(t + SYNC_CYCLES - 1, self.idle_at) + 1
        elif opcode == Opcode.END:
            end = max(t + END_CYCLES, self.idle_at + 1)
        elif opcode == Opcode.SHORTCUT:
            end = t + SHORTCUT_CYCLES
        elif opcode == Opcode.CONV and self.shortcut is not None:
            end = t + conv_cycles(self.config, dict(fields, shortcut=self.shortcut))
        else:
            end = t + instruction_cycles(self.config, opcode, fields)
        self.shortcut = fields if opcode == Opcode.SHORTCUT else None
        self.now = end
        return end - t


def program_cycles(config: AccelConfig, decoded):
    """Cycles of each instruction of a straight-line run: `decoded` is (opcode, fields) pairs up to END."""
    timeline = Timeline(config)
    return [timeline.step(opcode, fields) for opcode, fields in decoded]
