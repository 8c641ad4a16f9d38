"""sw.iss against a literal, loop-by-loop reading of docs/isa.md; error codes; the cycle model."""

import numpy as np
import pytest

from hw.config import AccelConfig
from hw.isa import Opcode, encode
import hw.cycles
import sw.ref as ref
from sw.iss import (BAD_FIELD, END_CYCLES, ILLEGAL_OPCODE, OUT_OF_RANGE, PROGRAM_END, Iss, IssError,
                    analytic_cycles, conv_cycles, pack_fields, pool_cycles)

CONFIG = AccelConfig(rows=4, cols=3, word_bits=16, max_abases=3, act_depth=1024, result_depth=256,
                     instr_depth=8)


def conv_fields(**changes):
    fields = dict(in_base=0, in_h=5, in_w=4, in_cw=2, in_stride=3, in_tail=5, in_planes=2, kh=3, kw=2,
                  stride=2, pad=1, pad_value=1, out_h=3, out_w=3, out_ch=6, out_ch_base=4, out_stride=2,
                  out_planes=2, out_base=300, wbases=2, w_base=3, s_base=5, t_base=7, raw=0, k=0, images_m1=0, packed=0, all_images=0)
    fields.update(changes)
    if "k" not in changes:
        fields["k"] = fields["kh"] * fields["kw"] * ((fields["in_cw"] - 1) * CONFIG.word_bits + fields["in_tail"])
    return fields


def pool_fields(**changes):
    fields = dict(in_base=10, in_h=5, in_w=5, cw=2, planes=2, kernel=2, stride=2, out_h=2, out_w=2, out_base=200,
                  images_m1=0)
    fields.update(changes)
    return fields


def random_iss(seed, batch=2):
    """An ISS whose every memory holds random values, including junk bits the masks must ignore."""
    rng = np.random.default_rng(seed)
    c = CONFIG
    iss = Iss(c, batch=batch)
    iss.write("act", 0, rng.integers(0, 1 << 16, (batch, c.act_depth, 1)).astype(np.uint64))
    iss.write("weight", 0, rng.integers(0, 1 << 16, (c.weight_depth, c.rows, 1)).astype(np.uint64))
    iss.write("scale", 0, rng.integers(-300, 300, (c.scale_depth, c.rows)))
    thr = np.concatenate([rng.integers(-3000, 3000, (c.thr_depth, c.max_abases)),
                          rng.integers(0, 2, (c.thr_depth, 1))], axis=1)
    iss.write("threshold", 0, thr)
    iss.write("result", 0, rng.integers(-5, 5, (batch, c.result_depth)))
    return iss


def literal_conv(iss, b, f):
    """docs/isa.md CONV, one pixel, one beat and one bit at a time with Python ints."""
    c = CONFIG
    w_bits, rows, cols = c.word_bits, c.rows, c.cols
    act = [int(v) for v in iss.act[b, :, 0]]
    result = [int(v) for v in iss.result[b]]
    p_count = f["out_h"] * f["out_w"]
    kw_words = f["kh"] * f["kw"] * f["in_cw"]
    m_count, n_count = f["wbases"], f["in_planes"]
    ot_count = -(-f["out_ch"] // rows)
    ones = (1 << w_bits) - 1
    images = f["images_m1"] + 1          # one image's view of a batch: planes `images` maps apart
    for pt in range(-(-p_count // cols)):
        patch = {}
        for col in range(cols):
            p = pt * cols + col
            oy, ox = p // f["out_w"], p % f["out_w"]
            for n in range(n_count):
                for ky in range(f["kh"]):
                    for kx in range(f["kw"]):
                        for cw in range(f["in_cw"]):
                            iy, ix = oy * f["stride"] + ky - f["pad"], ox * f["stride"] + kx - f["pad"]
                            if 0 <= iy < f["in_h"] and 0 <= ix < f["in_w"]:
                                word = act[f["in_base"] + ((n * images * f["in_h"] + iy) * f["in_w"] + ix)
                                           * f["in_stride"] + cw]
                            else:
                                word = ones if f["pad_value"] else 0
                            patch[col, n * kw_words + (ky * f["kw"] + kx) * f["in_cw"] + cw] = word
        for ot in range(ot_count):
            acc = [[0] * cols for _ in range(rows)]
            for m in range(m_count):
                for n in range(n_count):
                    for r in range(rows):
                        for col in range(cols):
                            pop = 0
                            for j in range(kw_words):
                                w = int(iss.weight[f["w_base"] + (ot * m_count + m) * kw_words + j, r, 0])
                                a = patch[col, n * kw_words + j]
                                nbits = f["in_tail"] if j % f["in_cw"] == f["in_cw"] - 1 else w_bits
                                valid = (1 << nbits) - 1
                                w, a = w & valid, a | (ones & ~valid)     # the array edge's masks
                                pop += bin(~(w ^ a) & ones).count("1")
                            scale = int(iss.scale[f["s_base"] + (ot * m_count + m) * n_count + n, r])
                            acc[r][col] += scale * (2 * pop - f["k"])
            for r in range(rows):
                o = ot * rows + r
                for col in range(cols):
                    p = pt * cols + col
                    if p >= p_count:
                        continue
                    if f["raw"]:
                        if o < f["out_ch"]:
                            result[f["out_base"] + p * f["out_ch"] + o] = acc[r][col]
                        continue
                    oy, ox = p // f["out_w"], p % f["out_w"]
                    for t in range(f["out_planes"]):
                        thr = int(iss.threshold[f["t_base"] + ot * rows + r, t])
                        flip = bool(iss.flip[f["t_base"] + ot * rows + r])
                        bit = int(acc[r][col] <= thr if flip else acc[r][col] >= thr) if o < f["out_ch"] else 0
                        ch = o + f["out_ch_base"]
                        addr = f["out_base"] + ((t * images * f["out_h"] + oy) * f["out_w"] + ox) * f["out_stride"] \
                            + ch // w_bits
                        act[addr] = (act[addr] & ~(1 << ch % w_bits)) | (bit << ch % w_bits)
    return act, result


def run(iss, *instructions):
    iss.load_program(list(instructions) + [encode(Opcode.END)])
    return iss.run()


@pytest.mark.parametrize("changes", [
    {},                                                        # stride 2, +1 padding, two words per tap
    {"pad_value": 0, "stride": 1, "pad": 1, "out_h": 5, "out_w": 4, "out_ch_base": 0},
    {"in_cw": 1, "in_stride": 1, "in_tail": 16, "wbases": 3, "in_planes": 1, "out_planes": 3, "pad": 0,
     "stride": 1, "out_h": 3, "out_w": 3, "out_ch": 9, "out_ch_base": 8},
    {"raw": 1, "out_base": 17, "out_planes": 0},               # sums into the result memory
    {"kh": 5, "kw": 4, "pad": 0, "stride": 1, "out_h": 1, "out_w": 1, "in_cw": 3, "in_stride": 3,
     "in_tail": 1, "raw": 1, "out_base": 0, "out_ch": 5},       # a fully connected layer
    {"images_m1": 2, "out_base": 400},                          # one image's view of a batch of 3
])
def test_conv_matches_the_literal_semantics(changes):
    f = conv_fields(**changes)
    iss = random_iss(len(changes))
    expected = [literal_conv(iss, b, f) for b in range(iss.batch)]
    run(iss, encode(Opcode.CONV, **f))
    for b, (act, result) in enumerate(expected):
        assert [int(v) for v in iss.act[b, :, 0]] == act      # other bits of the written words survive
        assert [int(v) for v in iss.result[b]] == result


# A CONV over all images of a batch ---------------------------------------------------------------------

SHORTCUT_NAMES = ("in_base", "in_h", "in_w", "in_cw", "in_stride", "in_tail", "in_planes", "kh", "kw", "stride",
                  "pad", "pad_value", "wbases", "w_base", "s_base", "k")
# A second source over a 3x3 map of 2 planes, one word of 7 channels a pixel, under conv_fields' 3x3 output.
SECOND = dict(in_base=700, in_h=3, in_w=3, in_cw=1, in_stride=1, in_tail=7, in_planes=2, kh=1, kw=1, stride=1,
              pad=0, pad_value=0, wbases=1, w_base=200, s_base=100, k=7)


def image_views(f, shortcut=None):
    """docs/isa.md: the I = images_m1 + 1 views an all_images CONV equals, run in turn, as (SHORTCUT,)
    CONV words: view b's in_base (and the SHORTCUT's) moved on by b input image maps, its out_base by b
    output image maps (b * out_h * out_w * out_ch result entries when raw)."""
    p1 = f["out_h"] * f["out_w"]
    words = []
    for b in range(f["images_m1"] + 1):
        if shortcut is not None:
            words.append(encode(Opcode.SHORTCUT, **dict(
                shortcut, in_base=shortcut["in_base"] + b * shortcut["in_h"] * shortcut["in_w"] * shortcut["in_stride"])))
        out_step = p1 * f["out_ch"] if f["raw"] else p1 * f["out_stride"]
        words.append(encode(Opcode.CONV, **dict(f, all_images=0,
                                                in_base=f["in_base"] + b * f["in_h"] * f["in_w"] * f["in_stride"],
                                                out_base=f["out_base"] + b * out_step)))
    return words


def all_images_program(f, shortcut=None):
    return ([encode(Opcode.SHORTCUT, **shortcut)] if shortcut is not None else []) + \
        [encode(Opcode.CONV, **dict(f, all_images=1))]


@pytest.mark.parametrize("images", [1, 2, 3])
@pytest.mark.parametrize("changes, second", [
    ({"out_base": 400}, None),                                  # bit-planes, 9 pixels an image
    ({"out_base": 400, "out_h": 2, "out_w": 2}, None),          # 4 pixels an image: tiles span images
    ({"raw": 1, "out_base": 17, "out_planes": 0}, None),
    ({"raw": 1, "out_base": 3, "out_planes": 0, "out_h": 2, "out_w": 1}, None),
    ({"kh": 5, "kw": 4, "pad": 0, "stride": 1, "out_h": 1, "out_w": 1, "in_cw": 3, "in_stride": 3,
      "in_tail": 1, "raw": 1, "out_base": 0, "out_ch": 5}, None),     # a fully connected layer
    ({"out_base": 400}, SECOND),                                 # a SHORTCUT before it
    ({"raw": 1, "out_base": 17, "out_planes": 0}, SECOND),
    ("packed", None),                                            # a packed first layer, 8 pixels an image
    ("packed raw", None),
], ids=["planes", "planes-4-pixels", "raw", "raw-2-pixels", "linear", "shortcut", "shortcut-raw", "packed",
        "packed-raw"])
def test_all_images_conv_equals_the_views_run_in_turn(changes, second, images):
    """docs/isa.md: an all_images CONV is exactly its I views run one after another (in_base, the
    SHORTCUT's in_base and out_base moved per image); only the tiling differs (pixels of several images
    share a tile when out_h * out_w is not a multiple of C = 3). Every memory word is compared, the
    random bits of the written words that must survive included."""
    if isinstance(changes, str):
        f = packed_fields_of(out_w=2, images_m1=images - 1)      # 4x2 pixels an image
        if changes == "packed raw":
            f.update(raw=1, out_base=0, out_planes=0)
    else:
        f = conv_fields(images_m1=images - 1, **changes)
    shortcut = second
    together, apart = random_iss(images), random_iss(images)
    before = together.act.copy(), together.result.copy()
    status = run(together, *all_images_program(f, shortcut))
    run(apart, *image_views(f, shortcut))
    assert np.array_equal(together.act, apart.act) and np.array_equal(together.result, apart.result)
    changed = not np.array_equal(together.act, before[0]) or not np.array_equal(together.result, before[1])
    assert changed
    conv = dict(f, all_images=1, **({"shortcut": shortcut} if shortcut else {}))
    assert status.trace[-2][2] == hw.cycles.conv_cycles(CONFIG, conv)


def test_all_images_conv_writes_every_images_pixels():
    """Against the literal reading of one image's CONV: image b's output of an all_images CONV over 3
    stacked images is the literal CONV of image b's view (planes 3 output maps apart)."""
    f = conv_fields(images_m1=2, out_base=400, out_h=2, out_w=2)
    iss = random_iss(11)
    expected = []
    for b in range(3):
        view = dict(f, in_base=b * 5 * 4 * 3, out_base=400 + b * 4 * 2)
        expected.append([literal_conv(iss, r, view)[0] for r in range(iss.batch)])
        for r in range(iss.batch):
            iss.act[r, :, 0] = expected[-1][r]                   # the views run in turn
    iss = random_iss(11)
    run(iss, encode(Opcode.CONV, **dict(f, all_images=1)))
    for r in range(iss.batch):
        assert [int(v) for v in iss.act[r, :, 0]] == expected[-1][r]


@pytest.mark.parametrize("program, detail", [
    # the input: in_planes * I image maps (2 * 3 * 60 words)
    (lambda end: all_images_program(conv_fields(images_m1=2, in_base=end - 360, out_base=300)),
     "CONV input region ends at {}, past act_depth 1024"),
    # the output: out_planes * I * P1 * out_stride words (2 * 3 * 9 * 2)
    (lambda end: all_images_program(conv_fields(images_m1=2, out_base=end - 108)),
     "CONV output region ends at {}, past act_depth 1024"),
    # the SHORTCUT's input: its in_planes * I image maps (2 * 3 * 9 words)
    (lambda end: all_images_program(conv_fields(images_m1=2, out_base=400), dict(SECOND, in_base=end - 54)),
     "CONV shortcut input region ends at {}, past act_depth 1024"),
    # a packed CONV's image map: I image maps (3 * 20 words)
    (lambda end: all_images_program(packed_fields_of(images_m1=2, in_base=end - 60, out_base=100)),
     "CONV input region ends at {}, past act_depth 1024"),
])
def test_all_images_conv_checks_the_whole_stack(program, detail):
    """OUT_OF_RANGE at the exact end of the stack's regions: a region ending at the memory's last word
    runs, one word further is refused."""
    run(random_iss(7), *program(1024))
    error = error_of(*program(1025))
    assert (error.code, error.pc, error.detail) == (OUT_OF_RANGE, len(program(1025)) - 1, detail.format(1025))


def test_all_images_raw_conv_checks_the_whole_results():
    """The result region of a raw all_images CONV: I * out_h * out_w * out_ch entries (3 * 9 * 6)."""
    fields = conv_fields(images_m1=2, raw=1, out_planes=0)
    run(random_iss(8), encode(Opcode.CONV, **dict(fields, out_base=256 - 162, all_images=1)))
    error = error_of(encode(Opcode.CONV, **dict(fields, out_base=256 - 161, all_images=1)))
    assert (error.code, error.detail) == (OUT_OF_RANGE, "CONV result region ends at 257, past result_depth 256")


@pytest.mark.parametrize("images", [1, 3])
def test_pool_is_an_or_over_windows(images):
    # images 3: one image's view of 3 stacked maps, its planes 3 maps apart in and out
    f = pool_fields(images_m1=images - 1)
    iss = random_iss(9)
    before = iss.act.copy()
    run(iss, encode(Opcode.POOL, **f))
    untouched = np.ones(CONFIG.act_depth, bool)
    for b in range(iss.batch):
        for t in range(2):
            for py in range(2):
                for px in range(2):
                    for cw in range(2):
                        want = 0
                        for ky in range(2):
                            for kx in range(2):
                                want |= int(before[b, 10 + ((t * 5 * images + py * 2 + ky) * 5 + px * 2 + kx) * 2
                                                   + cw, 0])
                        out = 200 + ((t * 2 * images + py) * 2 + px) * 2 + cw
                        assert int(iss.act[b, out, 0]) == want
                        untouched[out] = False
    assert (~untouched).sum() == 16
    assert np.array_equal(iss.act[:, untouched], before[:, untouched])


# Errors ---------------------------------------------------------------------------------------------

def error_of(*instructions, config=CONFIG, end=True):
    iss = Iss(config)
    iss.load_program(list(instructions) + ([encode(Opcode.END)] if end else []))
    with pytest.raises(IssError) as info:
        iss.run()
    return info.value


def test_illegal_opcode():
    error = error_of(encode(Opcode.POOL, **pool_fields()), 7)
    assert (error.code, error.name, error.pc) == (ILLEGAL_OPCODE, "ILLEGAL_OPCODE", 1)
    assert str(error) == "Error 1 (ILLEGAL_OPCODE) at instruction 1: Illegal opcode 7"


@pytest.mark.parametrize("changes, detail", [
    ({"in_base": 1025 - 2 * 5 * 4 * 3}, "CONV input region ends at 1025, past act_depth 1024"),
    ({"w_base": CONFIG.weight_depth - 2 * 2 * 12 + 1}, "CONV weight region ends at 2049, past weight_depth 2048"),
    ({"s_base": CONFIG.scale_depth - 7}, "CONV scale region ends at 257, past scale_depth 256"),
    ({"t_base": CONFIG.thr_depth - 7}, "CONV threshold region ends at 513, past thr_depth 512"),
    ({"out_base": 1025 - 2 * 9 * 2}, "CONV output region ends at 1025, past act_depth 1024"),
    ({"raw": 1, "out_base": 0, "t_base": CONFIG.thr_depth - 7}, "CONV threshold region ends at 513, past thr_depth 512"),
    ({"raw": 1, "out_base": 256 - 9 * 6 + 1}, "CONV result region ends at 257, past result_depth 256"),
    # a view of 3 stacked images: the last plane starts 3 maps on and ends one map later
    ({"images_m1": 2, "in_base": 1025 - 4 * 5 * 4 * 3}, "CONV input region ends at 1025, past act_depth 1024"),
    ({"images_m1": 2, "out_base": 1025 - 4 * 9 * 2}, "CONV output region ends at 1025, past act_depth 1024"),
    ({"kh": 5, "kw": 4, "pad": 2, "in_cw": 7, "in_stride": 7, "in_base": 0},
     "CONV patch region ends at 280, past patch_depth 256"),
])
def test_conv_out_of_range(changes, detail):
    error = error_of(encode(Opcode.CONV, **conv_fields(**changes)))
    assert (error.code, error.pc, error.detail) == (OUT_OF_RANGE, 0, detail)


def test_pool_out_of_range():
    error = error_of(encode(Opcode.POOL, **pool_fields(out_base=1024 - 15)))
    assert (error.code, error.detail) == (OUT_OF_RANGE, "POOL output region ends at 1025, past act_depth 1024")
    error = error_of(encode(Opcode.POOL, **pool_fields(in_base=1024 - 99)))
    assert (error.code, error.detail) == (OUT_OF_RANGE, "POOL input region ends at 1025, past act_depth 1024")
    error = error_of(encode(Opcode.POOL, **pool_fields(in_base=1025 - 5 * 5 * 2 * 4, images_m1=2)))
    assert (error.code, error.detail) == (OUT_OF_RANGE, "POOL input region ends at 1025, past act_depth 1024")


@pytest.mark.parametrize("changes, detail", [
    ({"out_ch": 0}, "CONV field out_ch is 0"),
    ({"in_stride": 1}, "CONV in_stride 1 is less than in_cw 2"),
    ({"out_planes": 0}, "CONV out_planes 0 is not in 1..max_abases 3"),
    ({"out_stride": 0}, "CONV out_ch_base + out_ch = 10 exceeds out_stride * W = 0"),
    ({"in_planes": 0}, "CONV field in_planes is 0"),
    ({"stride": 0}, "CONV field stride is 0"),
    ({"in_tail": 0, "k": 0}, "CONV in_tail 0 is not in 1..16"),
    ({"in_tail": 17}, "CONV in_tail 17 is not in 1..16"),
    ({"k": 125}, "CONV k 125 is not kh*kw*((in_cw-1)*W + in_tail) = 126"),
    ({"kh": 16, "kw": 16, "in_h": 16, "in_w": 16, "in_cw": 2, "in_tail": 16, "pad": 0},
     "CONV k 8192 exceeds max_k 4096"),
    ({"out_planes": 4}, "CONV out_planes 4 is not in 1..max_abases 3"),
    ({"wbases": 5}, "CONV wbases 5 exceeds max_wbases 4"),
    ({"out_h": 4}, "CONV's last window leaves the padded input (out_h 4, stride 2, kh 3, in_h 5, pad 1)"),
    ({"out_w": 4}, "CONV's last window leaves the padded input (out_w 4, stride 2, kw 2, in_w 4, pad 1)"),
    ({"out_ch_base": 2}, "CONV out_ch_base 2 is not a multiple of rows 4"),
])
def test_conv_bad_field(changes, detail):
    error = error_of(encode(Opcode.CONV, **conv_fields(**changes)))
    assert (error.code, error.name, error.detail) == (BAD_FIELD, "BAD_FIELD", detail)


def test_raw_conv_ignores_the_output_map_fields():
    iss = random_iss(3)
    run(iss, encode(Opcode.CONV, **conv_fields(raw=1, out_base=0, out_planes=0, out_stride=0, out_ch_base=2)))


@pytest.mark.parametrize("changes, detail", [
    ({"kernel": 0}, "POOL field kernel is 0"),
    ({"stride": 0}, "POOL field stride is 0"),
    ({"out_h": 3}, "POOL's last window leaves the input (out_h 3, stride 2, kernel 2, in_h 5)"),
])
def test_pool_bad_field(changes, detail):
    error = error_of(encode(Opcode.POOL, **pool_fields(**changes)))
    assert (error.code, error.detail) == (BAD_FIELD, detail)


def test_program_end_and_unwritten_words():
    pool = encode(Opcode.POOL, **pool_fields())
    error = error_of(*[pool] * CONFIG.instr_depth, end=False)
    assert (error.code, error.name, error.pc) == (PROGRAM_END, "PROGRAM_END", CONFIG.instr_depth)
    # an unwritten program word is 0, which is END
    iss = Iss(CONFIG)
    iss.load_program([pool, pool])
    status = iss.run()
    assert [op for _, op, _ in status.trace] == ["POOL", "POOL", "END"]


def test_errors_are_checked_before_any_memory_changes():
    iss = random_iss(4)
    before = iss.act.copy()
    iss.load_program([encode(Opcode.CONV, **conv_fields(out_base=1000))])
    with pytest.raises(IssError):
        iss.run()
    assert np.array_equal(iss.act, before)


# Packed image input ---------------------------------------------------------------------------------

def packed_config(word_bits):
    return AccelConfig(rows=4, cols=3, word_bits=word_bits, act_depth=2048, result_depth=2048, instr_depth=8)


def literal_packed_words(fields, word_bits, fill):
    """docs/isa.md "Packed image input" one bit at a time: fields (positions, c) -> W-bit Python ints,
    position j*F+q of word j (holding t fields) at bits (t-1-q)*c .., channel ch at + ch; the bits from
    t*c up are `fill`."""
    positions, c = fields.shape
    per = word_bits // c
    words = []
    for j in range(-(-positions // per)):
        t = min(per, positions - j * per)
        word = 0
        for q in range(t):
            for ch in range(c):
                word |= int(fields[j * per + q, ch]) << ((t - 1 - q) * c + ch)
        if fill:
            word |= ((1 << word_bits) - 1) & ~((1 << (t * c)) - 1)
        words.append(word)
    return words


def write_ints(iss, memory, base, ints):
    """Python-int words (..., entries) into a memory of W-bit words (limbs of 64 bits)."""
    ints = np.asarray(ints, dtype=object)
    limbs = np.zeros(ints.shape + (iss.limbs,), dtype=np.uint64)
    for index in np.ndindex(ints.shape):
        for limb in range(iss.limbs):
            limbs[index + (limb,)] = (int(ints[index]) >> (64 * limb)) & ((1 << 64) - 1)
    iss.write(memory, base, limbs)


def packed_layer(config, images, kernel, stride, pad, pad_value, planes=8, out_ch=5, wbases=2, seed=0):
    """A packed CONV over the first `planes` pixel planes of `images` (B, c, h, w) uint8, stored as one
    image map per ISS image at 0: (iss, fields of a raw CONV, the sums sw.ref gives (B, out_ch, oh, ow))."""
    rng = np.random.default_rng(seed)
    w_bits, rows = config.word_bits, config.rows
    batch, c, h, w = images.shape
    weights = rng.choice(np.array([-1, 1], dtype=np.int8), (wbases, out_ch, c, kernel, kernel))
    scales = rng.integers(-60, 61, (wbases, planes, out_ch))
    want = ref.multibasis_conv2d(ref.pixel_planes(images)[:planes], weights, scales, stride, pad,
                                 1 if pad_value else -1)
    iss = Iss(config, batch=batch)
    write_ints(iss, "act", 0, [[sum(int(images[b, ch, y, x]) << (8 * ch) for ch in range(c))
                                for y in range(h) for x in range(w)] for b in range(batch)])
    ot = -(-out_ch // rows)
    entries = []
    for t in range(ot):
        for m in range(wbases):
            lanes = []
            for r in range(rows):
                o = t * rows + r
                bits = np.zeros((kernel * kernel, c), np.uint8) if o >= out_ch else \
                    (weights[m, o] > 0).transpose(1, 2, 0).reshape(-1, c)
                lanes.append(literal_packed_words(bits, w_bits, fill=1) if o < out_ch else
                             [0] * -(-kernel * kernel // (w_bits // c)))
            entries.extend(list(word) for word in zip(*lanes))          # (KW, R) per (t, m)
    write_ints(iss, "weight", 0, entries)
    scale_img = np.zeros((ot, wbases, planes, rows), np.int64)
    for o in range(out_ch):
        scale_img[o // rows, :, :, o % rows] = scales[:, :, o]
    iss.write("scale", 0, scale_img.reshape(-1, rows))
    oh, ow = (h + 2 * pad - kernel) // stride + 1, (w + 2 * pad - kernel) // stride + 1
    f = conv_fields(in_base=0, in_h=h, in_w=w, in_cw=len(entries) // (ot * wbases), in_stride=1, in_tail=c,
                    in_planes=planes, kh=kernel, kw=kernel, stride=stride, pad=pad, pad_value=pad_value, out_h=oh,
                    out_w=ow, out_ch=out_ch, out_ch_base=0, out_stride=0, out_planes=0, out_base=0,
                    wbases=wbases, w_base=0, s_base=0, t_base=0, raw=1, k=kernel * kernel * c, packed=1)
    return iss, f, want


def raw_sums(iss, f):
    p = f["out_h"] * f["out_w"]
    sums = iss.result[:, f["out_base"]:f["out_base"] + p * f["out_ch"]]
    return sums.reshape(-1, f["out_h"], f["out_w"], f["out_ch"]).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("word_bits, channels, kernel, stride, pad, pad_value, planes, pixels", [
    (32, 3, 3, 1, 1, 0, 8, "random"),           # 9 fields of 3 bits: one word of 27 bits
    (32, 1, 3, 1, 1, 1, 8, "random"),
    (32, 1, 5, 2, 2, 0, 8, "random"),           # 25 fields of 1 bit
    (32, 4, 4, 2, 1, 0, 8, "random"),           # F = 8: two words of 8 fields
    (32, 4, 3, 1, 1, 1, 1, "random"),           # two words (8 fields, then 1): one plane only
    (8, 1, 4, 1, 1, 0, 8, "random"),            # F = 8 at W = 8: two words
    (8, 1, 3, 1, 0, 1, 1, "random"),
    (32, 3, 5, 2, 2, 1, 5, "random"),           # 75 bits over 3 words (10, 10, 5 fields): 5 planes
    (32, 3, 5, 1, 2, 0, 3, "random"),
    (32, 3, 7, 1, 3, 0, 8, "random"),           # 147 bits over 5 words (10, 10, 10, 10, 9 fields)
    (32, 3, 3, 1, 1, 1, 8, "ones"),
    (32, 3, 3, 1, 1, 0, 8, "zeros"),
    (64, 8, 4, 1, 1, 1, 8, "random"),           # a pixel of 8 bytes fills a 64-bit word
    (100, 12, 4, 2, 1, 0, 8, "random"),         # channels past the first limb
])
def test_packed_conv_is_the_pixel_planes_convolution(word_bits, channels, kernel, stride, pad, pad_value, planes,
                                                     pixels):
    rng = np.random.default_rng(word_bits + channels + kernel)
    images = {"random": rng.integers(0, 256, (2, channels, 7, 6)), "ones": np.full((2, channels, 7, 6), 255),
              "zeros": np.zeros((2, channels, 7, 6))}[pixels].astype(np.uint8)
    config = packed_config(word_bits)
    iss, f, want = packed_layer(config, images, kernel, stride, pad, pad_value, planes, seed=kernel)
    status = run(iss, encode(Opcode.CONV, **f))
    assert np.array_equal(raw_sums(iss, f), want)
    assert status.trace[0][2] == hw.cycles.instruction_cycles(config, Opcode.CONV, f)


def test_packed_conv_runs_on_views_of_a_batch():
    """Three images stacked as rows of one image map, one CONV per image's view: the input view has
    no planes (images_m1 moves only the output planes, 3 x out_h rows apart)."""
    config = packed_config(32)
    images = np.random.default_rng(5).integers(0, 256, (3, 3, 5, 4)).astype(np.uint8)
    single, f, want = packed_layer(config, images, 3, 1, 1, 0, out_ch=6)
    iss = Iss(config)
    iss.act[0, :60] = single.act[:, :20].reshape(60, -1)                  # image b at rows 5b ..
    iss.weight[:], iss.scale[:] = single.weight, single.scale
    rng = np.random.default_rng(6)
    thresholds = rng.integers(-400, 400, (6, 2))
    flip = rng.random(6) < 0.4
    iss.write("threshold", 0, np.concatenate([np.pad(thresholds, ((0, 2), (0, config.max_abases - 2))),
                                               np.pad(flip, (0, 2))[:, None]], axis=1))
    views = [encode(Opcode.CONV, **dict(f, in_base=b * 20, images_m1=2, raw=0, out_planes=2, out_stride=1,
                                        out_base=100 + b * 20)) for b in range(3)]
    run(iss, *views)
    planes = ref.threshold(want.transpose(0, 2, 3, 1), thresholds, flip)        # (T, B, oh, ow, O)
    bits = (planes > 0).astype(np.uint64) << np.arange(6, dtype=np.uint64)
    expected = bits.sum(axis=-1).reshape(2, 3 * 20)                              # plane t: 3 images' rows
    assert np.array_equal(iss.act[0, 100:220, 0], expected.reshape(-1))


def test_pack_fields_is_the_documented_layout():
    fields = np.array([[1], [0], [0], [0], [0], [0], [0], [1], [1]], np.uint8)       # 9 positions, c = 1
    assert pack_fields(fields, 8)[..., 0].tolist() == [0b10000001, 0b00000001]
    assert pack_fields(fields, 8, fill=1)[..., 0].tolist() == [0b10000001, 0b11111111]
    rng = np.random.default_rng(0)
    fields = rng.integers(0, 2, (25, 3)).astype(np.uint8)
    assert pack_fields(fields, 32, fill=1)[..., 0].tolist() == literal_packed_words(fields, 32, fill=1)


def packed_fields_of(**changes):
    """A valid packed CONV on CONFIG (W = 16): 2 channels, 4x4 kernel: F = 8 fields, 2 words a plane."""
    f = conv_fields(in_base=0, in_h=5, in_w=4, in_cw=2, in_stride=1, in_tail=2, in_planes=8, kh=4, kw=4,
                    stride=1, pad=1, out_h=4, out_w=3, out_ch=6, out_ch_base=0, out_stride=1, out_planes=2,
                    out_base=600, w_base=0, s_base=0, t_base=0, k=32, packed=1)
    f.update(changes)
    return f


@pytest.mark.parametrize("changes", [
    {},                                                 # in_stride below in_cw is no error for an image map
    {"kh": 3, "k": 24, "in_planes": 4},                 # a last word of 4 fields for 4 planes
    {"kh": 2, "kw": 4, "k": 16, "in_cw": 1},            # 8 fields in one word
])
def test_packed_conv_fields_are_legal(changes):
    run(random_iss(2), encode(Opcode.CONV, **packed_fields_of(**changes)))


@pytest.mark.parametrize("changes, detail", [
    ({"in_tail": 3, "k": 48}, "packed CONV in_tail 3: a pixel of 3 bytes exceeds W = 16 bits"),
    ({"in_planes": 9}, "packed CONV in_planes 9 exceeds the 8 bits of a pixel"),
    ({"kh": 2, "kw": 3, "k": 12, "in_cw": 1}, "packed CONV kh*kw = 6 is less than in_planes 8"),
    ({"in_cw": 1}, "packed CONV in_cw 1 (8 fields a word) holds fewer than kh*kw = 16 fields"),
    ({"in_cw": 3}, "packed CONV in_cw 3 (8 fields a word) is more words than kh*kw = 16 fields fill"),
    ({"kh": 3, "k": 24}, "packed CONV's last patch word holds 4 of kh*kw = 12 fields, fewer than in_planes 8"),
    ({"k": 30}, "packed CONV k 30 is not kh*kw*in_tail = 32"),
    ({"in_stride": 0}, "CONV field in_stride is 0"),
])
def test_packed_conv_bad_field(changes, detail):
    error = error_of(encode(Opcode.CONV, **packed_fields_of(**changes)))
    assert (error.code, error.name, error.detail) == (BAD_FIELD, "BAD_FIELD", detail)


def test_packed_conv_after_a_shortcut_is_a_bad_field():
    shortcut = {name: conv_fields()[name] for name in ("in_base", "in_h", "in_w", "in_cw", "in_stride", "in_tail",
                                                       "in_planes", "kh", "kw", "stride", "pad", "pad_value",
                                                       "wbases", "w_base", "s_base", "k")}
    error = error_of(encode(Opcode.SHORTCUT, **shortcut), encode(Opcode.CONV, **packed_fields_of()))
    assert (error.code, error.pc, error.detail) == (BAD_FIELD, 1, "a packed CONV has no SHORTCUT before it")


@pytest.mark.parametrize("changes, detail", [
    # the image map: in_h * in_w * in_stride words, whatever in_planes and images_m1 say
    ({"in_base": 1024 - 20 + 1}, "CONV input region ends at 1025, past act_depth 1024"),
    ({"in_base": 1024 - 40 + 1, "in_stride": 2}, "CONV input region ends at 1025, past act_depth 1024"),
    ({"w_base": CONFIG.weight_depth - 2 * 2 * 2 + 1}, "CONV weight region ends at 2049, past weight_depth 2048"),
    ({"s_base": CONFIG.scale_depth - 2 * 2 * 8 + 1}, "CONV scale region ends at 257, past scale_depth 256"),
])
def test_packed_conv_out_of_range(changes, detail):
    error = error_of(encode(Opcode.CONV, **packed_fields_of(**changes)))
    assert (error.code, error.pc, error.detail) == (OUT_OF_RANGE, 0, detail)


def test_packed_conv_patch_out_of_range():
    config = CONFIG.replace(patch_depth=15)                   # 8 planes x 2 words = 16
    error = error_of(encode(Opcode.CONV, **packed_fields_of()), config=config)
    assert (error.code, error.detail) == (OUT_OF_RANGE, "CONV patch region ends at 16, past patch_depth 15")
    in_range = packed_fields_of(in_base=1024 - 20, images_m1=4, out_base=0)   # planes do not count
    run(random_iss(3), encode(Opcode.CONV, **in_range))


# Cycle model ----------------------------------------------------------------------------------------

def test_cycle_model_is_the_controllers():
    """The ISS counts with hw/cycles.py (held to the RTL by the hardware tests), per instruction."""
    f = conv_fields()
    assert conv_cycles(CONFIG, f) == hw.cycles.instruction_cycles(CONFIG, Opcode.CONV, f)
    assert pool_cycles(CONFIG, pool_fields()) == hw.cycles.POOL_OVERHEAD + 2 * 2 * 2 * 2 * 4
    iss = random_iss(5)
    program = [encode(Opcode.CONV, **f), encode(Opcode.POOL, **pool_fields()),
               encode(Opcode.CONV, **conv_fields(raw=1, out_base=0)), encode(Opcode.END)]
    iss.load_program(program)
    status = iss.run()
    assert [(pc, op) for pc, op, _ in status.trace] == [(0, "CONV"), (1, "POOL"), (2, "CONV"), (3, "END")]
    per_instruction = [spent for _, _, spent in status.trace]
    assert per_instruction == analytic_cycles(CONFIG, program)
    assert per_instruction == [hw.cycles.instruction_cycles(CONFIG, Opcode.CONV, f),
                               hw.cycles.instruction_cycles(CONFIG, Opcode.POOL, pool_fields()),
                               hw.cycles.instruction_cycles(CONFIG, Opcode.CONV, conv_fields(raw=1, out_base=0)),
                               END_CYCLES]
    assert status.cycles == sum(per_instruction) and END_CYCLES == hw.cycles.END_CYCLES == 3


# LOAD / SYNC ----------------------------------------------------------------------------------------

def test_load_writes_the_stream_and_sync_orders_it():
    """A LOAD writes the next entries of the stream where it says; a CONV that reads a region loaded
    since the last SYNC is a HAZARD; a LOAD that finds the stream short or of another memory STALLs."""
    from hw.isa import MemoryTarget
    from sw.iss import HAZARD, STALL
    rng = np.random.default_rng(3)
    weights = rng.integers(0, 1 << 16, (20, CONFIG.rows, 1)).astype(np.uint64)
    f = conv_fields(raw=1, out_base=0)                  # reads weight entries 3 .. 3 + 2 * 2 * 12
    load = encode(Opcode.LOAD, mem=MemoryTarget.WEIGHT.value, addr=10, count=20)
    reference = random_iss(6)
    reference.write("weight", 10, weights)
    reference.load_program([encode(Opcode.CONV, **f), encode(Opcode.END)])
    reference.run()

    iss = random_iss(6)
    iss.feed("weight", weights[:7])
    iss.feed("weight", weights[7:])
    iss.load_program([load, encode(Opcode.SYNC), encode(Opcode.CONV, **f), encode(Opcode.END)])
    status = iss.run()
    assert np.array_equal(iss.weight[10:30], weights) and np.array_equal(iss.result, reference.result)
    assert [op for _, op, _ in status.trace] == ["LOAD", "SYNC", "CONV", "END"]
    # The LOAD queues at cycle 4; the engine takes it at 5 and is idle from 5 + 20 + 1; SYNC (fetched
    # at 5) ends the cycle after.
    assert [spent for _, _, spent in status.trace][:2] == [5, 26 + 1 - 5]

    iss = random_iss(6)
    iss.feed("weight", weights)
    iss.load_program([load, encode(Opcode.CONV, **f), encode(Opcode.END)])
    with pytest.raises(IssError, match="CONV reads weight entries 3..50 while a LOAD queued since the last "
                                       "SYNC writes 10..29") as info:
        iss.run()
    assert (info.value.code, info.value.name, info.value.pc) == (HAZARD, "HAZARD", 1)

    for stream, detail in (([("weight", weights[:5])], "LOAD waits for 15 more weight entries"),
                           ([("scale", np.zeros((20, CONFIG.rows), np.int64))], "finds scale entries")):
        iss = random_iss(6)
        for memory, values in stream:
            iss.feed(memory, values)
        iss.load_program([load, encode(Opcode.END)])
        with pytest.raises(IssError, match=detail) as info:
            iss.run()
        assert info.value.code == STALL


@pytest.mark.parametrize("fields, code", [
    ({"mem": 1, "addr": 0, "count": 1}, BAD_FIELD),                      # ACT is not a LOAD target
    ({"mem": 2, "addr": 0, "count": 0}, BAD_FIELD),
    ({"mem": 3, "addr": CONFIG.scale_depth - 1, "count": 2}, OUT_OF_RANGE),
])
def test_load_errors(fields, code):
    iss = random_iss(1)
    iss.feed("weight", np.zeros((4, CONFIG.rows, 1), np.uint64))
    iss.load_program([encode(Opcode.LOAD, **fields), encode(Opcode.END)])
    with pytest.raises(IssError) as info:
        iss.run()
    assert info.value.code == code


def test_timeline_queue_sync_and_end():
    """hw.cycles.Timeline by hand: the queue holds four loads, the engine takes one per cycle after
    the previous, SYNC and END wait for the last entry (the RTL agrees: tests/hw/test_accel.py)."""
    from hw.isa import MemoryTarget
    t = hw.cycles.Timeline(CONFIG)
    load = lambda count: t.step(Opcode.LOAD, {"mem": MemoryTarget.WEIGHT.value, "addr": 0, "count": count})
    assert [load(100) for _ in range(5)] == [5, 5, 5, 5, 5]
    # Queued at 4, 9, 14, 19, 24; taken at 5, 106, 207, 308, 409. The sixth (fetched at 25) queues
    # when the second's take frees a slot, at 107, and fetches the next instruction at 108; it is
    # taken at 510, idle from 611.
    assert load(100) == 108 - 25
    assert t.step(Opcode.SYNC, {}) == 612 - 108
    assert t.step(Opcode.END, {}) == 3
    t2 = hw.cycles.Timeline(CONFIG)
    t2.step(Opcode.LOAD, {"mem": MemoryTarget.SCALE.value, "addr": 0, "count": 10})
    assert t2.step(Opcode.END, {}) == 17 - 5          # idle from 5 + 10 + 1; done the cycle after
