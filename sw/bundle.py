"""The program bundle: what `sw.compile` writes and every runtime backend executes. numpy only.

A bundle is the instruction stream, the memory images the host writes before `start`, the load
stream its LOAD instructions consume while it runs, the config it was compiled for, and how the host
prepares an input image and reads the logits (docs/compiler.md):

    bundle = load_bundle("prog.bundle")        # Bundle, or BundleError
    bundle.config                              # AccelConfig (its fingerprint matched the header's)
    bundle.instructions                        # list of 256-bit ints (hw.isa.encode)
    bundle.segments                            # list of Segment(memory, base, values)
    bundle.stream                              # Segments the LOADs consume in order (base: where each lands)
    bundle.input, bundle.output, bundle.layers # dicts: the host unfold, the logits, per-layer metadata

File layout (little-endian): magic b"BNNBUNDL", u32 format version, u32 header length, the JSON
header (padded to 8 bytes), the segments' and then the stream's arrays one after another (each padded
to 8 bytes), and the sha256 of every byte before it. Version 2 added the load stream.
"""

from dataclasses import dataclass, field

import numpy as np

from hw.config import AccelConfig, ConfigError
from sw.container import pack_container, pad, unpack_container

__all__ = ["MAGIC", "FORMAT_VERSION", "KIND", "MEMORIES", "DEPTH_FIELDS", "STREAM_MEMORIES", "BundleError", "Segment", "Bundle",
           "save_bundle", "load_bundle", "to_bytes", "from_bytes", "word_limbs", "pack_words", "unpack_words",
           "word_mask"]

MAGIC = b"BNNBUNDL"
FORMAT_VERSION = 2
KIND = "bnn-program-bundle"

# memory name -> (dtype, shape of one entry given the config), for segment values.
#   act       : one W-bit word as ceil(W/64) uint64 limbs (limb i holds bits 64i .. 64i+63)
#   weight    : R lane words (lane r = output channel r of a tile), each as limbs
#   scale     : R signed scales
#   threshold : max_abases signed thresholds, then the flip bit (0/1) in the last column
#   result    : one signed sum
MEMORIES = ("act", "weight", "scale", "threshold", "result")
STREAM_MEMORIES = ("weight", "scale", "threshold")       # what LOAD writes (hw.isa.LOAD_TARGETS)
DEPTH_FIELDS = {"act": "act_depth", "weight": "weight_depth", "scale": "scale_depth",
          "threshold": "thr_depth", "result": "result_depth"}


def word_limbs(word_bits):
    """uint64 limbs per W-bit word."""
    return -(-word_bits // 64)


def _entry_shape(memory, config):
    limbs = word_limbs(config.word_bits)
    return {"act": (limbs,), "weight": (config.rows, limbs), "scale": (config.rows,),
            "threshold": (config.max_abases + 1,), "result": ()}[memory]


def _entry_dtype(memory):
    return np.dtype("<u8") if memory in ("act", "weight") else np.dtype("<i8")


class BundleError(ValueError):
    """A bundle file is unreadable, truncated, corrupt, of another version or kind, or inconsistent."""


def _fail(message):
    raise BundleError(message)


@dataclass
class Segment:
    """`values` (entries, *entry shape) to write into memory `memory` from entry `base` on."""

    memory: str
    base: int
    values: np.ndarray


@dataclass
class Bundle:
    """A compiled program. See the module docstring and docs/compiler.md for every field."""

    config: AccelConfig
    instructions: list
    segments: list
    input: dict
    output: dict
    layers: list
    model: dict
    stream: list = field(default_factory=list)

    @property
    def fingerprint(self):
        return self.config.fingerprint()

    def validate(self):
        """Check shapes and ranges against the config; raises BundleError."""
        c = self.config
        if not self.instructions:
            _fail("The bundle has no instructions")
        if len(self.instructions) > c.instr_depth:
            _fail(f"The program has {len(self.instructions)} instructions; instr_depth is {c.instr_depth}")
        for i, word in enumerate(self.instructions):
            if not isinstance(word, int) or not 0 <= word < (1 << 256):
                _fail(f"Instruction {i} is not a 256-bit integer")
        for seg in self.segments + self.stream:
            if seg.memory not in MEMORIES:
                _fail(f"Unknown memory {seg.memory!r} in a segment; the memories are: {', '.join(MEMORIES)}")
            shape = _entry_shape(seg.memory, c)
            values = np.asarray(seg.values)
            if values.shape[1:] != shape or values.dtype != _entry_dtype(seg.memory):
                _fail(f"A {seg.memory} segment must hold {_entry_dtype(seg.memory)} entries of shape "
                      f"{shape}, not {values.dtype} {values.shape[1:]}")
            depth = getattr(c, DEPTH_FIELDS[seg.memory])
            if not isinstance(seg.base, int) or seg.base < 0 or seg.base + len(values) > depth:
                _fail(f"A {seg.memory} segment at {seg.base} with {len(values)} entries lies outside "
                      f"{DEPTH_FIELDS[seg.memory]} {depth}")
        self._check_stream()
        for key in ("shape", "kernel", "stride", "padding", "pad_value", "act_base", "words_per_pixel",
                    "out_h", "out_w", "planes", "k"):
            if key not in self.input:
                _fail(f"The bundle's input spec lacks {key!r}")
        for key in ("result_base", "classes"):
            if key not in self.output:
                _fail(f"The bundle's output spec lacks {key!r}")
        return self


    def _check_stream(self):
        """The stream holds exactly what the LOADs take, in their order, memory and address."""
        from hw.isa import IsaError, Opcode, decode
        from sw.runtime.host_port import MEMORY_NAMES
        loads = []
        for word in self.instructions:
            try:
                opcode, fields = decode(word)
            except IsaError:
                continue
            if opcode == Opcode.LOAD:
                name = MEMORY_NAMES.get(fields["mem"], "?")
                loads.append((name, fields["addr"], fields["count"]))
            if opcode == Opcode.END:
                break
        chunks = [(seg.memory, seg.base, len(seg.values)) for seg in self.stream]
        for seg in self.stream:
            if seg.memory not in STREAM_MEMORIES:
                _fail(f"The load stream carries {', '.join(STREAM_MEMORIES)} entries, not {seg.memory}")
        if chunks != loads:
            _fail(f"The load stream's segments {chunks[:3]}{'...' if len(chunks) > 3 else ''} do not match "
                  f"the program's LOADs {loads[:3]}{'...' if len(loads) > 3 else ''} (memory, address, count)")


def _array_bytes(values):
    return pad(np.ascontiguousarray(values).tobytes())


def to_bytes(bundle):
    bundle.validate()
    blobs, offset = [], 0
    tables = {"segments": [], "stream": []}
    for key, segs in (("segments", bundle.segments), ("stream", bundle.stream)):
        for seg in segs:
            values = np.ascontiguousarray(seg.values, dtype=_entry_dtype(seg.memory))
            data = _array_bytes(values)
            tables[key].append({"memory": seg.memory, "base": int(seg.base), "entries": int(len(values)),
                                "offset": offset, "nbytes": int(values.nbytes)})
            blobs.append(data)
            offset += len(data)
    header = {
        "kind": KIND, "format_version": FORMAT_VERSION,
        "config": bundle.config.to_dict(), "fingerprint": bundle.config.fingerprint(),
        "instructions": [f"{word:064x}" for word in bundle.instructions],
        "segments": tables["segments"], "stream": tables["stream"], "input": bundle.input, "output": bundle.output,
        "layers": bundle.layers, "model": bundle.model,
    }
    return pack_container(MAGIC, FORMAT_VERSION, header, blobs)


def from_bytes(data, origin="bundle"):
    """Parse bytes written by `to_bytes`; any defect raises BundleError."""
    header, blob = unpack_container(data, magic=MAGIC, version=FORMAT_VERSION, kind=KIND, origin=origin,
                                    what="a program bundle", version_name="bundle format", fail=_fail)
    try:
        try:
            config = AccelConfig.from_dict(header["config"])
        except ConfigError as error:
            _fail(f"{origin} records an invalid config: {error}")
        if config.fingerprint() != header["fingerprint"]:
            _fail(f"{origin}: its config does not match its recorded fingerprint {header['fingerprint']}")
        tables = {}
        for key in ("segments", "stream"):
            tables[key] = []
            for s in header[key]:
                memory = s["memory"]
                if memory not in MEMORIES:
                    _fail(f"{origin}: unknown memory {memory!r} in a segment")
                shape = (int(s["entries"]),) + _entry_shape(memory, config)
                dtype = _entry_dtype(memory)
                count = int(np.prod(shape, dtype=np.int64))
                if (s["offset"] < 0 or s["nbytes"] != count * dtype.itemsize
                        or s["offset"] + s["nbytes"] > len(blob)):
                    _fail(f"{origin}: a {memory} segment lies outside the file")
                values = np.frombuffer(blob, dtype, count, s["offset"]).reshape(shape).copy()
                tables[key].append(Segment(memory, int(s["base"]), values))
        bundle = Bundle(config, [int(word, 16) for word in header["instructions"]], tables["segments"],
                        dict(header["input"]), dict(header["output"]), list(header["layers"]),
                        dict(header.get("model", {})), tables["stream"])
    except BundleError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        _fail(f"{origin} has a malformed header ({type(error).__name__}: {error})")
    try:
        return bundle.validate()
    except BundleError as error:
        _fail(f"{origin}: {error}")


def save_bundle(path, bundle):
    data = to_bytes(bundle)
    with open(path, "wb") as file:
        file.write(data)


def load_bundle(path):
    """Read a bundle file; raises BundleError (also for an unreadable file)."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise BundleError(f"Cannot read bundle file {path}: {error.strerror or error}") from None
    return from_bytes(data, origin=str(path))


def pack_words(bits, word_bits):
    """0/1 bits (..., nbits) -> W-bit words (..., ceil(nbits / W), limbs) uint64, element k being bit
    k % W of word k // W (limb i of a word holds its bits 64i .. 64i+63); padding bits are 0."""
    bits = np.asarray(bits)
    nbits = bits.shape[-1]
    words = max(1, -(-nbits // word_bits))
    limbs = word_limbs(word_bits)
    padded = np.zeros(bits.shape[:-1] + (words * word_bits,), dtype=np.uint8)
    padded[..., :nbits] = bits != 0
    padded = padded.reshape(bits.shape[:-1] + (words, word_bits))
    if limbs * 64 != word_bits:
        wide = np.zeros(bits.shape[:-1] + (words, limbs * 64), dtype=np.uint8)
        wide[..., :word_bits] = padded
        padded = wide
    packed = np.packbits(padded, axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u8").reshape(bits.shape[:-1] + (words, limbs))


def unpack_words(words, word_bits, nbits=None):
    """Inverse of `pack_words`: (..., n_words, limbs) uint64 -> (..., nbits) uint8 bits."""
    words = np.ascontiguousarray(np.asarray(words, dtype="<u8"))
    shape = words.shape[:-2]
    as_bytes = words.view(np.uint8).reshape(shape + (words.shape[-2], words.shape[-1] * 8))
    bits = np.unpackbits(as_bytes, axis=-1, bitorder="little")[..., :word_bits]
    bits = bits.reshape(shape + (words.shape[-2] * word_bits,))
    return bits if nbits is None else bits[..., :nbits]


def word_mask(nbits, word_bits):
    """The low `nbits` bits of a W-bit word as limbs (uint64 (limbs,))."""
    return pack_words(np.ones(nbits, dtype=np.uint8), word_bits)[0] if nbits else \
        np.zeros(word_limbs(word_bits), dtype=np.uint64)
