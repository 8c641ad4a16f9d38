"""The accelerator's instruction set: one source of truth for the controller and the compiler.

Every instruction is `INSTRUCTION_BITS` wide: a 4-bit opcode and the opcode's argument struct (a
union member). The controller decodes with these layouts; the compiler encodes with `encode` (which
uses the same layouts' bit offsets through `hw.layouts.pack_payload`). docs/isa.md gives the semantics
and the memory layouts the fields refer to.
"""

import numpy as np
from amaranth.lib import data, enum

from .layouts import pack_payload, unpack_payload

__all__ = ["Opcode", "ErrorCode", "MemoryTarget", "ConvArgs", "ShortcutArgs", "PoolArgs", "LoadArgs", "Instruction",
           "INSTRUCTION_BITS", "LOAD_TARGETS", "LOAD_QUEUE_DEPTH", "IsaError", "encode", "decode", "FIELD_LIMITS"]

INSTRUCTION_BITS = 256


class IsaError(ValueError):
    """An instruction cannot be encoded (a field out of range) or decoded (an unknown opcode)."""


class Opcode(enum.Enum, shape=4):
    END = 0    # stop; raise done
    CONV = 1   # a binary convolution / fully connected layer over M x N bases
    POOL = 2   # max pooling of bit-planes (bitwise OR over each window)
    LOAD = 3   # queue a load: `count` entries of the load stream into a weight/scale/threshold region
    SYNC = 4   # wait until every queued load has written its last entry
    SHORTCUT = 5  # a second source whose passes the next CONV sums into its tiles (a residual shortcut)


class ErrorCode(enum.Enum, shape=3):
    """The status register's error field (docs/isa.md, "Errors")."""
    NONE = 0
    ILLEGAL_OPCODE = 1
    OUT_OF_RANGE = 2
    BAD_FIELD = 3
    PROGRAM_END = 4


class MemoryTarget(enum.Enum, shape=3):
    """Memories the host port reads and writes (docs/isa.md, "Memories the host writes and reads")."""
    PROGRAM = 0
    ACT = 1
    WEIGHT = 2
    SCALE = 3
    THRESHOLD = 4
    RESULT = 5


ConvArgs = data.StructLayout({
    "in_base":    16,  # activation-buffer word address of the input map
    "in_h":       10,  # input map height (rows of pixels)
    "in_w":       10,  # input map width
    "in_cw":       8,  # channel words read per pixel: ceil(in_channels / W)
    "in_stride":   8,  # channel words per pixel in the input map (>= in_cw; more for a group's slice)
    "in_tail":    11,  # valid bits of the last channel word (1 ..= W)
    "in_planes":   4,  # N: activation bases (bit-planes) of the input
    "kh":         10,  # kernel height
    "kw":         10,  # kernel width
    "stride":      4,
    "pad":         4,  # padding on every side
    "pad_value":   1,  # 1: padded positions are +1; 0: -1
    "out_h":      10,
    "out_w":      10,
    "out_ch":     12,  # O: output channels
    "out_ch_base": 12,  # first channel of the output map this instruction writes (groups)
    "out_stride":  8,  # channel words per pixel in the output map
    "out_planes":  4,  # T: output bit-planes written (thresholds per channel); unused when raw
    "out_base":   16,  # activation-buffer address of the output map, or result-memory address if raw
    "wbases":      4,  # M: weight bases
    "w_base":     16,  # weight-buffer entry of (output tile 0, basis 0, K-word 0)
    "s_base":     16,  # scale-memory entry of (output tile 0, basis pair 0)
    "t_base":     16,  # threshold-memory entry of output channel 0
    "raw":         1,  # write the sums to the result memory instead of bit-planes
    "k":          20,  # valid bits of one pass: kh * kw * in_channels
    # Images stacked in the maps, minus one: the planes of the input, output and shortcut maps are
    # (images_m1 + 1) x in_h (out_h) rows apart, so an instruction may run on one image's view of a
    # batch (`sw.compile --batch`), or a CONV over all of them (all_images); 0 for a map of one image, or a
    # pointwise or whole-map instruction that runs over the stack as one map.
    "images_m1":   5,
    # 1: the input is an image map of 8-bit pixels, one word a pixel, read as N pixel planes whose
    # receptive fields the gather packs F = W // in_tail fields to a patch word (docs/isa.md "Packed
    # image input"); in_tail is the image's channels, in_cw the patch words of one plane's field.
    "packed":      1,
    # 1: the CONV runs over all images_m1 + 1 images of a stacked map at once (in_base and out_base at
    # image 0), each image's windows inside that image: output pixel p = (image * out_h + oy) * out_w
    # + ox fills the columns across images (docs/isa.md "Feature maps in the activation buffer").
    "all_images":  1,
})

#: The second source of a two-source CONV: its input map, kernel and parameters; the output geometry,
#: channels and thresholds are the CONV's. Each field has the width of the CONV field of that name.
ShortcutArgs = data.StructLayout({
    name: ConvArgs[name].shape
    for name in ("in_base", "in_h", "in_w", "in_cw", "in_stride", "in_tail", "in_planes", "kh", "kw", "stride",
                 "pad", "pad_value", "wbases", "w_base", "s_base", "k")
})

PoolArgs = data.StructLayout({
    "in_base":  16,
    "in_h":     10,
    "in_w":     10,
    "cw":        8,  # channel words per pixel (input and output)
    "planes":    4,
    "kernel":    4,
    "stride":    4,
    "out_h":    10,
    "out_w":    10,
    "out_base": 16,
    "images_m1": 5,  # as CONV's: input and output planes (images_m1 + 1) x in_h (out_h) rows apart
})

LoadArgs = data.StructLayout({
    "mem":   MemoryTarget,  # WEIGHT, SCALE or THRESHOLD (LOAD_TARGETS)
    "addr":  16,            # first entry written
    "count": 17,            # entries taken from the load stream (1 ..= the memory's depth - addr)
})

#: Memories a LOAD may write: those the running program only reads.
LOAD_TARGETS = (MemoryTarget.WEIGHT, MemoryTarget.SCALE, MemoryTarget.THRESHOLD)
#: LOADs the controller queues before a further LOAD waits for the load engine.
LOAD_QUEUE_DEPTH = 4

_args_bits = INSTRUCTION_BITS - Opcode.as_shape().width
Instruction = data.StructLayout({
    "opcode": Opcode,
    "args": data.UnionLayout({"conv": ConvArgs, "shortcut": ShortcutArgs, "pool": PoolArgs, "load": LoadArgs,
                              "raw_bits": _args_bits}),
})
assert Instruction.size == INSTRUCTION_BITS

_ARGS = {Opcode.CONV: ("conv", ConvArgs), Opcode.SHORTCUT: ("shortcut", ShortcutArgs), Opcode.POOL: ("pool", PoolArgs),
         Opcode.LOAD: ("load", LoadArgs)}


FIELD_LIMITS = {
    name: (1 << field.width) - 1
    for layout in (ConvArgs, ShortcutArgs, PoolArgs, LoadArgs) for name, field in layout
}


def encode(opcode, **fields):
    """An instruction as an integer of INSTRUCTION_BITS bits.

    Every field of the opcode's argument struct must be given (END takes none); a value that does not
    fit its field raises IsaError naming the field and its limit.
    """
    opcode = Opcode(opcode)
    value = int(opcode.value)
    if opcode not in _ARGS:
        if fields:
            raise IsaError(f"{opcode.name} takes no fields, not {sorted(fields)}")
        return value
    _, layout = _ARGS[opcode]
    names = {name for name, _ in layout}
    missing = sorted(names - set(fields))
    unknown = sorted(set(fields) - names)
    if unknown:
        raise IsaError(f"{opcode.name} has no field {unknown[0]!r}")
    if missing:
        raise IsaError(f"{opcode.name} needs field {missing[0]!r}")
    for name, field in layout:
        limit = (1 << field.width) - 1
        v = fields[name]
        if isinstance(v, MemoryTarget):
            v = fields[name] = v.value
        if not isinstance(v, (int, np.integer)) or not 0 <= int(v) <= limit:
            raise IsaError(f"{opcode.name} field {name} must be an integer from 0 to {limit}, not {v!r}")
    args = pack_payload(layout, {k: int(v) for k, v in fields.items()})
    return value | (args << Instruction["args"].offset)


def decode(word):
    """(Opcode, dict of fields) of an encoded instruction; IsaError for an unknown opcode."""
    word = int(word)
    code = word & ((1 << Opcode.as_shape().width) - 1)
    try:
        opcode = Opcode(code)
    except ValueError:
        raise IsaError(f"Illegal opcode {code}") from None
    if opcode not in _ARGS:
        return opcode, {}
    _, layout = _ARGS[opcode]
    return opcode, unpack_payload(layout, word >> Instruction["args"].offset)
