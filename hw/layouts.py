"""Payload layouts of the core's streams, derived from one `AccelConfig`.

The gateware and every driver (Amaranth simulation, cocotb, the compiler) encode with these layouts, so
the bit positions have one source of truth. `pack_payload` / `unpack_payload` turn Python values into
the integer a flattened Verilog port carries, using the layout's own offsets.
"""

from amaranth.hdl import Shape, signed, unsigned
from amaranth.lib import data

from .config import AccelConfig

__all__ = ["CoreLayouts", "pack_payload", "unpack_payload"]


class CoreLayouts:
    """The stream payloads of `hw.core.BinaryCore` for one config.

    beat         : one cycle of array input. `w[r]` is row r's weight word, `a[c]` column c's
                   activation word, `nbits` how many low bits of both are valid (1 ..= W), `first` and
                   `last` delimit a pass (one weight basis x one activation basis over all of K).
                   On the last beat of a pass, the pass fields apply: `k` is K (the valid bits of the
                   pass), `first_pass`/`last_pass` delimit the basis pairs of one output tile,
                   `raw` asks for sums rather than bit-planes, `scale_addr` names the scale-memory
                   entry for this pass and `thr_addr` the first threshold-memory entry of the tile
                   (row r uses thr_addr + r).
    scale_write  : write `scales[r]` (one per row) to scale-memory entry `addr`.
    thr_write    : write the thresholds `t[n]` (one per output bit-plane) and comparison direction
                   `flip` of one output channel to threshold-memory entry `addr`.
    result       : one row of a finished tile: `acc[c]` the exact sum for column c, `bits[c]` its
                   bit-planes (bit n = plane n, 1 means +1), `row` the row (output channel within the
                   tile), `last` set on the tile's last row, `raw` copied from the pass.
    """

    def __init__(self, config: AccelConfig):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"Config must be an AccelConfig, not {config!r}")
        c = config
        self.config = c
        self.word = unsigned(c.word_bits)
        self.pass_info = data.StructLayout({
            "k":          unsigned(c.count_bits),
            "first_pass": 1,
            "last_pass":  1,
            "raw":        1,
            "scale_addr": range(c.scale_depth),
            "thr_addr":   range(c.thr_depth),
        })
        self.beat = data.StructLayout({
            "w":     data.ArrayLayout(unsigned(c.word_bits), c.rows),
            "a":     data.ArrayLayout(unsigned(c.word_bits), c.cols),
            "nbits": range(c.word_bits + 1),
            "first": 1,
            "last":  1,
            "info":  self.pass_info,
        })
        self.scale_entry = data.ArrayLayout(signed(c.scale_bits), c.rows)
        self.scale_write = data.StructLayout({
            "addr":   range(c.scale_depth),
            "scales": self.scale_entry,
        })
        self.thr_entry = data.StructLayout({
            "t":    data.ArrayLayout(signed(c.acc_bits), c.max_abases),
            "flip": 1,
        })
        self.thr_write = data.StructLayout({
            "addr":  range(c.thr_depth),
            "entry": self.thr_entry,
        })
        self.result = data.StructLayout({
            "acc":  data.ArrayLayout(signed(c.acc_bits), c.cols),
            "bits": data.ArrayLayout(unsigned(c.max_abases), c.cols),
            "row":  range(c.rows),
            "last": 1,
            "raw":  1,
        })


def pack_payload(layout, value):
    """Python value -> integer with the layout's bit positions.

    `value` is an int (for a plain shape), a list (for an ArrayLayout) or a dict (for a StructLayout,
    missing fields are 0). Signed fields take negative ints; every field is range-checked.
    """
    if isinstance(layout, data.StructLayout):
        if not isinstance(value, dict):
            raise TypeError(f"A struct payload needs a dict, not {value!r}")
        unknown = set(value) - {name for name, _ in layout}
        if unknown:
            raise KeyError(f"Unknown payload field {sorted(unknown)[0]!r}")
        out = 0
        for name, field in layout:
            if name in value:
                out |= pack_payload(field.shape, value[name]) << field.offset
        return out
    if isinstance(layout, data.ArrayLayout):
        value = list(value)
        if len(value) != layout.length:
            raise ValueError(f"An array payload needs {layout.length} elements, not {len(value)}")
        out = 0
        for i, item in enumerate(value):
            out |= pack_payload(layout.elem_shape, item) << (i * _size(layout.elem_shape))
        return out
    shape = _as_shape(layout)
    value = int(value)
    low = -(1 << (shape.width - 1)) if shape.signed else 0
    high = (1 << (shape.width - 1)) - 1 if shape.signed else (1 << shape.width) - 1
    if not low <= value <= high:
        raise ValueError(f"Value {value} does not fit {shape!r}")
    return value & ((1 << shape.width) - 1)


def unpack_payload(layout, raw):
    """Inverse of `pack_payload`: integer -> int / list / dict."""
    raw = int(raw)
    if isinstance(layout, data.StructLayout):
        return {name: unpack_payload(field.shape, raw >> field.offset) for name, field in layout}
    if isinstance(layout, data.ArrayLayout):
        size = _size(layout.elem_shape)
        return [unpack_payload(layout.elem_shape, raw >> (i * size)) for i in range(layout.length)]
    shape = _as_shape(layout)
    value = raw & ((1 << shape.width) - 1)
    if shape.signed and value >> (shape.width - 1):
        value -= 1 << shape.width
    return value


def _as_shape(shape):
    return Shape.cast(shape)


def _size(shape):
    if isinstance(shape, data.Layout):
        return shape.size
    return _as_shape(shape).width
