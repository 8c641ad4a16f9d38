"""What the sequencer derives from an instruction before the engines run it: the set-up products, the
loop bounds, and the cycle counts of the sequencer's own states.

The step lists below are data, walked by `Sequencer` (one product every `PRODUCT_CYCLES` cycles through
one shared multiplier) and counted by `hw.cycles`, so a new set-up step changes the RTL and the cycle
model together.
"""

from amaranth.hdl import Mux, unsigned
from amaranth.lib import data

from ..isa import ConvArgs, PoolArgs, ShortcutArgs

__all__ = ["PIXEL_RANGE", "PRODUCT_BITS", "OPERAND_B_BITS", "PRODUCT_CYCLES", "DECODE_CYCLES", "CHECK_CYCLES",
           "POOL_DRAIN_CYCLES", "CONV_SETUP_STEPS", "SHORTCUT_SETUP_STEPS", "POOL_SETUP_STEPS", "Plan",
           "CHECK_LEAD", "READ_LATENCY", "field_shape", "schedule", "setup_cycles", "check_ready"]

#: Output pixels a CONV may have (every image's, over all images of a batch): the engines' pixel
#: counters run to it plus one tile of C.
PIXEL_RANGE = 1 << (ConvArgs["out_h"].width + ConvArgs["out_w"].width + ConvArgs["images_m1"].width)

#: Width of a set-up product. A product saturates here (all ones), so no field combination can wrap a
#: size back into range before the checks compare it with a memory's depth.
PRODUCT_BITS = 32
#: Width of every product's second operand: a field or a small derived value.
OPERAND_B_BITS = 16
#: Cycles from a product's operands to its result: operands registered, product registered, result
#: written. The multiplier is pipelined: a step starts every cycle (`schedule`).
PRODUCT_CYCLES = 3
#: FETCH, LATCH, DECODE.
DECODE_CYCLES = 3
#: CHECK (the check bits registered), DECIDE (act on them, start the engines).
CHECK_CYCLES = 2
#: Cycles between the check operands' sums and the CHECK state: the sums (and the differences the
#: checks compare) are registered every cycle, and CHECK compares those registers, so the operands'
#: adders and the comparators are two register stages. A product a check reads must therefore be
#: written CHECK_LEAD cycles before the set-up ends (`check_ready`).
CHECK_LEAD = 1
#: Cycles from an engine's activation-buffer read to the word entering its logic: the block RAM's
#: read, then a register straight off its output (a block RAM's clock-to-output takes most of a cycle).
READ_LATENCY = 2
#: The cycles after POOL's last window read: its OR is computed and registered, then written.
POOL_DRAIN_CYCLES = 2


def _cols(args, plan, cols, shortcut):
    return cols


def _images(args, plan, cols, shortcut):
    return args.images_m1 + 1


def _output_images(args, plan, cols, shortcut):
    """Image maps between output planes: I for a view of a batch; 1 for a CONV over all its images,
    whose output image map (npix pixels) is already the whole stack."""
    return Mux(args.all_images, 1, args.images_m1 + 1)


# (destination, operand a, operand b). An operand is an instruction field or an earlier destination
# by name (`sc.` names a field of the SHORTCUT before the CONV), or a function
# (args, plan, cols, shortcut args) -> value.
CONV_SETUP_STEPS = (
    ("khw", "kh", "kw"),
    # A packed CONV's in_cw is its patch words a plane (docs/isa.md "Packed image input").
    ("kwords", lambda a, p, c, s: Mux(a.packed, 1, p.khw), "in_cw"),
    # Output pixels: of every image for a CONV over all images (out_rows, registered at decode).
    ("npix", "out_rows", "out_w"),
    ("row_words", "in_w", "in_stride"),
    ("image_words", "row_words", "in_h"),
    ("plane_words", "image_words", _images),    # planes are `images` image maps apart
    # + image_words in the range check. A packed CONV's image map has no planes: its in_need is the
    # fields its in_cw patch words hold (in_cw * fpw), for the check that in_cw fits kh * kw.
    ("in_need", lambda a, p, c, s: Mux(a.packed, a.in_cw, p.plane_words),
     lambda a, p, c, s: Mux(a.packed, p.fpw, a.in_planes - 1)),
    ("patch_need", "kwords", "in_planes"),
    ("kvalid", "khw", "in_tail"),              # + (kwords - khw) * W in the K check
    ("otm", "out_tiles", "wbases"),
    ("w_need", "kwords", lambda a, p, c, s: p.otm[:OPERAND_B_BITS]),   # otm = ceil(out_ch / R) * wbases < 2^16
    ("s_need", "otm", "in_planes"),
    ("res_need", "npix", "out_ch"),
    ("out_image_words", "npix", "out_stride"),
    ("out_plane_words", "out_image_words", _output_images),
    ("out_need", "out_plane_words", lambda a, p, c, s: a.out_planes - 1),    # + out_image_words
    ("step_x", "stride", "in_stride"),
    ("step_y", "row_words", "stride"),
    ("span_h", lambda a, p, c, s: a.out_h - 1, "stride"),
    ("span_w", lambda a, p, c, s: a.out_w - 1, "stride"),
    ("pad_rows", "row_words", "pad"),
    ("pad_cols", "pad", "in_stride"),
    ("tile_res_step", _cols, "out_ch"),
    ("tile_out_step", _cols, "out_stride"),
)

#: A CONV with a SHORTCUT before it: the second source's sizes, after CONV_SETUP_STEPS.
SHORTCUT_SETUP_STEPS = (
    ("khw2", "sc.kh", "sc.kw"),
    ("kwords2", "khw2", "sc.in_cw"),
    ("row_words2", "sc.in_w", "sc.in_stride"),
    ("image_words2", "row_words2", "sc.in_h"),
    ("plane_words2", "image_words2", _images),
    ("in_need2", "plane_words2", lambda a, p, c, s: s.in_planes - 1),       # + image_words2
    ("patch_need2", "kwords2", "sc.in_planes"),
    ("kvalid2", "khw2", "sc.in_tail"),
    ("otm2", "out_tiles", "sc.wbases"),
    ("w_need2", "kwords2", lambda a, p, c, s: p.otm2[:OPERAND_B_BITS]),
    ("s_need2", "otm2", "sc.in_planes"),
    ("step_x2", "sc.stride", "sc.in_stride"),
    ("step_y2", "row_words2", "sc.stride"),
    ("span_h2", lambda a, p, c, s: a.out_h - 1, "sc.stride"),
    ("span_w2", lambda a, p, c, s: a.out_w - 1, "sc.stride"),
    ("pad_rows2", "row_words2", "sc.pad"),
    ("pad_cols2", "sc.pad", "sc.in_stride"),
)

POOL_SETUP_STEPS = (
    ("p_row", "in_w", "cw"),
    ("p_image", "p_row", "in_h"),
    ("p_plane", "p_image", _images),
    ("p_in_need", "p_plane", lambda a, p, c, s: a.planes - 1),               # + p_image
    ("p_out_image", "out_h", "out_w"),
    ("p_out_image", "p_out_image", "cw"),
    ("p_out_plane", "p_out_image", _images),
    ("p_out_need", "p_out_plane", lambda a, p, c, s: a.planes - 1),          # + p_out_image
    ("span_h", lambda a, p, c, s: a.out_h - 1, "stride"),
    ("span_w", lambda a, p, c, s: a.out_w - 1, "stride"),
    # Last: no check reads them (a check's operands are written before the set-up's last cycle).
    ("p_step_y", "p_row", "stride"),
    ("p_step_x", "stride", "cw"),
)


def _needs(spec, dests):
    """The destinations of other steps that an operand reads (a name, or a function's plan fields)."""
    if callable(spec):
        return set(spec.__code__.co_names) & dests
    return {spec} & dests


def schedule(steps):
    """The steps in the order the pipelined multiplier starts them, one a cycle, None for an idle
    cycle: a step starts at least PRODUCT_CYCLES cycles after every step whose result it reads (list
    scheduling, earliest ready step first, otherwise in the given order)."""
    dests = {dest for dest, _, _ in steps}
    waiting = list(steps)
    started = {}                                  # dest -> slot
    slots = []
    while waiting:
        slot = len(slots)
        for step in waiting:
            dest, a, b = step
            needs = (_needs(a, dests) | _needs(b, dests)) - {dest}
            if all(n in started and slot >= started[n] + PRODUCT_CYCLES for n in needs):
                # A step that rewrites its own destination (p_out_plane) waits for the earlier write.
                if dest in started and slot < started[dest] + PRODUCT_CYCLES:
                    continue
                # Nor before an earlier step that writes its destination or an operand.
                if any(d == dest or d in needs for d, _, _ in waiting[:waiting.index(step)]):
                    continue
                slots.append(step)
                started[dest] = slot
                waiting.remove(step)
                break
        else:
            slots.append(None)
    return slots


def setup_cycles(steps):
    """Cycles the sequencer spends on a step list: one a scheduled slot, then the last result's write."""
    return len(schedule(steps)) + PRODUCT_CYCLES - 1


def check_ready(steps, names):
    """Assert that the products `names` are written at least CHECK_LEAD cycles before the set-up of
    `steps` ends, so a register that samples their sums every cycle holds the final sums in CHECK.

    Slot s is written in cycle s + PRODUCT_CYCLES - 1 of the set-up and readable from the next; the
    set-up lasts `setup_cycles(steps)` cycles and CHECK is the cycle after it."""
    slots = schedule(steps)
    last = {step[0]: i for i, step in enumerate(slots) if step is not None}
    for name in names:
        if name not in last:
            raise ValueError(f"{name!r} is not a product of these set-up steps")
        readable = last[name] + PRODUCT_CYCLES
        if readable + CHECK_LEAD > setup_cycles(steps):
            raise ValueError(f"The check operand {name!r} is written in the set-up's last "
                             f"{CHECK_LEAD} cycle(s): its sum would not be registered before CHECK")


def field_shape(*fields):
    """The unsigned shape that holds every one of the given ISA fields (`(layout, name)` pairs)."""
    return unsigned(max(layout[name].width for layout, name in fields))


_products = {}
for _dest, _, _ in CONV_SETUP_STEPS + SHORTCUT_SETUP_STEPS + POOL_SETUP_STEPS:
    _products[_dest] = PRODUCT_BITS

#: Everything the sequencer hands the engines besides the instruction: the set-up products, ceil(out_ch / R)
#: and the loop bounds minus one (registered, so the engines' "last iteration" tests compare two
#: registers). One layout for CONV and POOL; each engine reads its own fields.
Plan = data.StructLayout({
    **_products,
    "out_tiles": ConvArgs["out_ch"].shape,
    # A packed CONV's fields a patch word: W // in_tail (set at decode).
    "fpw": ConvArgs["in_tail"].shape,
    # Output rows of a CONV: out_h, or (images_m1 + 1) * out_h over all images (set at decode).
    "out_rows": ConvArgs["out_h"].width + ConvArgs["images_m1"].width,
    "kwords_m1": PRODUCT_BITS,
    "cw_m1": field_shape((ConvArgs, "in_cw"), (PoolArgs, "cw")),
    "kw_m1": field_shape((ConvArgs, "kw"), (PoolArgs, "kernel")),
    "kh_m1": field_shape((ConvArgs, "kh"), (PoolArgs, "kernel")),
    "np_m1": field_shape((ConvArgs, "in_planes"), (PoolArgs, "planes")),
    "ow_m1": field_shape((ConvArgs, "out_w"), (PoolArgs, "out_w")),
    "oh_m1": field_shape((ConvArgs, "out_h"), (PoolArgs, "out_h")),
    "wb_m1": field_shape((ConvArgs, "wbases"),),
    "op_m1": field_shape((ConvArgs, "out_planes"),),
    "ot_m1": ConvArgs["out_ch"].shape,
    # The second source (a SHORTCUT before the CONV).
    "shortcut": 1,
    "kwords2_m1": PRODUCT_BITS,
    "cw2_m1": ShortcutArgs["in_cw"].shape,
    "kw2_m1": ShortcutArgs["kw"].shape,
    "kh2_m1": ShortcutArgs["kh"].shape,
    "np2_m1": ShortcutArgs["in_planes"].shape,
    "wb2_m1": ShortcutArgs["wbases"].shape,
})
