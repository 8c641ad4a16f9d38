"""The accelerator's one source of parameters.

`AccelConfig` is read by the gateware (array geometry, widths, memory depths) and by the compiler and
simulators (tiling, fixed-point format, overflow bounds). A program bundle records the config it was
compiled for (`AccelConfig.fingerprint`) and every backend refuses a bundle made for another one.
"""

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields

__all__ = ["AccelConfig", "ConfigError"]


class ConfigError(ValueError):
    """An `AccelConfig` field is out of range, or a config file cannot be read."""


# (field, low, high, meaning): integer fields and their allowed ranges, in declaration order.
_RANGES = {
    "rows":        (1, 64,        "array rows (output channels per tile)"),
    "cols":        (1, 64,        "array columns (output pixels per tile)"),
    "word_bits":   (1, 1024,      "bits each processing element consumes per cycle"),
    "max_wbases":  (1, 8,         "weight bases per layer"),
    "max_abases":  (1, 8,         "activation bases (bit-planes) the threshold unit produces"),
    "scale_bits":  (2, 32,        "width of a signed fixed-point scale"),
    "scale_frac":  (0, 31,        "fractional bits of a scale"),
    "acc_bits":    (8, 64,        "width of the signed scale accumulator"),
    "max_k":       (1, 1 << 20,   "longest binary dot product, in bits"),
    "scale_depth": (1, 1 << 16,   "entries of the scale memory (one entry holds `rows` scales)"),
    "thr_depth":   (1, 1 << 16,   "entries of the threshold memory (one entry per output channel)"),
    "out_depth":   (1, 1 << 16,   "entries of the output FIFO"),
    "act_depth":   (16, 1 << 16,  "words of W bits in the activation buffer"),
    "weight_depth": (1, 1 << 16,  "entries of the weight buffer (one entry holds `rows` words)"),
    "patch_depth": (1, 1 << 16,   "words per column in the patch buffers (activation bases x K-words)"),
    "result_depth": (1, 1 << 16,  "sums the result memory holds (the logits)"),
    "instr_depth": (2, 1 << 16,   "instructions the program memory holds"),
    "clock_hz":    (1_000_000, 1_000_000_000, "run clock in Hz (a board runs at the closest it makes at or below)"),
}


@dataclass(frozen=True)
class AccelConfig:
    """Parameters of one accelerator instance.

    rows, cols     : the array is `rows` x `cols` processing elements; a tile computes `rows` output
                     channels for `cols` output pixels.
    word_bits      : W, the bits of one weight word and one activation word that every processing
                     element XNORs and popcounts per cycle.
    max_wbases     : M, the most weight bases a layer may have (scale memory is sized for M x N pairs).
    max_abases     : N, the most activation bases; the threshold unit produces up to N bit-planes.
    scale_bits     : width of a signed fixed-point scale s[m,n] (two's complement).
    scale_frac     : how many of those bits are fractional: the real scale is s_int / 2**scale_frac.
    acc_bits       : width of the signed accumulator of sum over m,n of s_int * dot; the compiler
                     refuses layers whose bound does not fit.
    max_k          : the longest dot product (K, in bits) the processing element counter holds.
    scale_depth    : entries in the scale memory; one entry holds `rows` scales (one pass of a tile).
    thr_depth      : entries in the threshold memory; one entry holds the `max_abases` thresholds and
                     the comparison direction of one output channel.
    out_depth      : entries of the output FIFO; at least `rows` (one tile's results are reserved at
                     once so the systolic pipeline never has to stall).
    act_depth      : words (W bits) of the activation buffer, which holds every layer's input and
                     output bit-planes (docs/isa.md gives the layout).
    weight_depth   : entries of the weight buffer; an entry holds the `rows` weight words of one beat.
    patch_depth    : words per column of the patch buffers that hold one pixel's receptive field for
                     all activation bases (bases x K-words).
    result_depth   : sums the result memory holds (the last layer's logits).
    instr_depth    : instructions the program memory holds.
    clock_hz       : the run clock in Hz: a board build runs at the highest frequency at or below it that
                     the board makes, its oscillator or its PLL's output (docs/build.md, "Clocks");
                     simulation and the reports' times use it as it is.
    element_scales : where the scales are applied. False: one scale accumulator per column after the
                     array reads each pass out a row per cycle, so consecutive passes end at least
                     `rows` cycles apart (a pass costs max(K-words, rows) cycles). True: every
                     processing element multiplies its pass's dot product by its row's scale and keeps
                     the tile's sum itself (rows x cols multipliers, DSP blocks where the FPGA has
                     them), so a pass costs its K-words and only a tile's last passes end `rows`
                     cycles apart. The sums are the same, bit for bit.
    """

    rows: int = 4
    cols: int = 4
    word_bits: int = 32
    max_wbases: int = 4
    max_abases: int = 4
    scale_bits: int = 16
    scale_frac: int = 8
    acc_bits: int = 32
    max_k: int = 4096
    scale_depth: int = 256
    thr_depth: int = 512
    out_depth: int = 32
    act_depth: int = 4096
    weight_depth: int = 2048
    patch_depth: int = 256
    result_depth: int = 64
    instr_depth: int = 64
    clock_hz: int = 100_000_000
    element_scales: bool = False

    def __post_init__(self):
        if not isinstance(self.element_scales, bool):
            raise ConfigError(f"element_scales must be true or false, not {self.element_scales!r}")
        for name, (low, high, meaning) in _RANGES.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ConfigError(
                    f"{name} ({meaning}) must be an integer from {low} to {high}, not {value!r}")
        if self.scale_frac >= self.scale_bits:
            raise ConfigError(
                f"scale_frac must be less than scale_bits ({self.scale_bits}), not {self.scale_frac!r}")
        if self.acc_bits < self.product_bits:
            raise ConfigError(
                f"acc_bits must be at least scale_bits + dot_bits = {self.product_bits} so one scaled "
                f"dot product fits, not {self.acc_bits!r}")
        if self.out_depth < self.rows:
            raise ConfigError(
                f"out_depth must be at least rows ({self.rows}) so one tile's results fit, "
                f"not {self.out_depth!r}")

    # Derived widths. Kept as properties so there is one place that computes each.
    @property
    def count_bits(self):
        """Width of a processing element's popcount accumulator (0 ..= max_k)."""
        return self.max_k.bit_length()

    @property
    def dot_bits(self):
        """Width of a signed dot product 2*popcount - K (-max_k ..= max_k)."""
        return self.max_k.bit_length() + 1

    @property
    def product_bits(self):
        """Width of s_int * dot."""
        return self.scale_bits + self.dot_bits

    @property
    def macs_per_cycle(self):
        """Peak binary multiply-accumulates per cycle: rows * cols * word_bits."""
        return self.rows * self.cols * self.word_bits

    @property
    def acc_max(self):
        """Largest magnitude a valid accumulator sum may take (the range is symmetric)."""
        return (1 << (self.acc_bits - 1)) - 1

    @property
    def scale_min(self):
        return -(1 << (self.scale_bits - 1))

    @property
    def scale_max(self):
        return (1 << (self.scale_bits - 1)) - 1

    # Serialisation.
    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict):
            raise ConfigError(f"A config must be a JSON object, not {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"Unknown config field {unknown[0]!r}; the fields are: {', '.join(sorted(known))}")
        return cls(**data)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"Config is not valid JSON: {error}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path):
        try:
            with open(path) as file:
                text = file.read()
        except OSError as error:
            raise ConfigError(f"Cannot read config file {path}: {error.strerror}") from None
        return cls.from_json(text)

    def replace(self, **changes):
        """A copy with some fields changed (validated like a new config)."""
        return dataclasses.replace(self, **changes)

    def at_geometry(self, rows, cols, word_bits, **changes):
        """This config on another array (and other `changes`), the output FIFO deepened to hold one
        tile's results where the new geometry needs it."""
        return self.replace(rows=rows, cols=cols, word_bits=word_bits, out_depth=max(self.out_depth, rows),
                            **changes)

    def fingerprint(self):
        """A short digest of every field: bundles record it and backends compare it."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]
