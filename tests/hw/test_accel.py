"""The Accelerator (controller + buffers + core) in the Amaranth simulator.

The memory images are built here by a small encoder written straight from docs/isa.md, independent of
the compiler, and the results are compared with sw.ref."""

import zlib

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.accel import AccelError, Accelerator
from hw.config import AccelConfig
from hw.isa import ConvArgs, ErrorCode, MemoryTarget, Opcode, encode
from hw.layouts import CoreLayouts, pack_payload
from sim.accel_sim import cycles_per_pc, read_entries, run_program, write_entries
from sw import ref

CFG = AccelConfig(rows=2, cols=3, word_bits=8, max_wbases=2, max_abases=2, max_k=200, scale_depth=32,
                  thr_depth=32, out_depth=16, act_depth=1024, weight_depth=256, patch_depth=128,
                  result_depth=128, instr_depth=8)


def words_of_map(bits, stride_words, width):
    """bits (N, Cch, H, W) 0/1 -> act words in (n, y, x, cw) order, `stride_words` words per pixel."""
    n, ch, h, w = bits.shape
    out = np.zeros((n, h, w, stride_words), dtype=object)
    for cw in range(-(-ch // width)):
        for b in range(width):
            c = cw * width + b
            if c < ch:
                out[:, :, :, cw] += bits[:, c].astype(object) << b
    return [int(v) for v in out.reshape(-1)]


def conv_image(cfg, x_bits, w_bits, scales, thresholds, flip, *, stride, pad, pad_value, raw,
               in_base=0, out_base=512, w_base=0, s_base=0, t_base=0):
    """Memory images and the CONV instruction for one layer, straight from docs/isa.md."""
    R, W = cfg.rows, cfg.word_bits
    n_planes, ch, h, wd = x_bits.shape
    m_bases, o, _, kh, kw = w_bits.shape
    in_cw = -(-ch // W)
    out_h = (h + 2 * pad - kh) // stride + 1
    out_w = (wd + 2 * pad - kw) // stride + 1
    ot_count = -(-o // R)
    kwords = kh * kw * in_cw
    weights = []
    for ot in range(ot_count):
        for m in range(m_bases):
            for ky in range(kh):
                for kx in range(kw):
                    for cw in range(in_cw):
                        lanes = []
                        for r in range(R):
                            oc = ot * R + r
                            word = 0
                            if oc < o:
                                for b in range(W):
                                    c = cw * W + b
                                    if c < ch:
                                        word |= int(w_bits[m, oc, c, ky, kx]) << b
                            lanes.append(word)
                        weights.append(sum(v << (r * W) for r, v in enumerate(lanes)))
    assert len(weights) == ot_count * m_bases * kwords
    lay = CoreLayouts(cfg)
    scale_entries = [pack_payload(lay.scale_entry, [int(scales[m, n, ot * R + r]) if ot * R + r < o else 0
                                                    for r in range(R)])
                     for ot in range(ot_count) for m in range(m_bases) for n in range(n_planes)]
    thr_entries = []
    for oc in range(ot_count * R):
        t = [int(v) for v in thresholds[oc]] if oc < o else [0] * thresholds.shape[1]
        t += [0] * (cfg.max_abases - len(t))
        thr_entries.append(pack_payload(lay.thr_entry, {"t": t, "flip": int(flip[oc]) if oc < o else 0}))
    out_stride = -(-o // W)
    instr = encode(Opcode.CONV, in_base=in_base, in_h=h, in_w=wd, in_cw=in_cw, in_stride=in_cw,
                   in_tail=ch - (in_cw - 1) * W, in_planes=n_planes, kh=kh, kw=kw, stride=stride, pad=pad,
                   pad_value=int(pad_value > 0), out_h=out_h, out_w=out_w, out_ch=o, out_ch_base=0,
                   out_stride=out_stride, out_planes=0 if raw else thresholds.shape[1],
                   out_base=out_base, wbases=m_bases, w_base=w_base, s_base=s_base, t_base=t_base,
                   raw=int(raw), k=kh * kw * ch, images_m1=0, packed=0, all_images=0)
    return {
        "act": words_of_map(x_bits, in_cw, W), "weight": weights, "scale": scale_entries,
        "thr": thr_entries, "instr": instr, "out_h": out_h, "out_w": out_w, "out_stride": out_stride,
    }


def simulate(cfg, program, images, reads, stream=(), runs=1):
    """images: list of (MemoryTarget, base, values); reads: list of (MemoryTarget, base, count);
    stream: the load_in entries. `runs` > 1 starts the program again after each run (program lists
    per run then: `program` is a list of programs)."""
    dut = Accelerator(cfg)
    out = {}
    programs = program if runs > 1 else [program]

    async def bench(ctx):
        for mem, base, values in images:
            await write_entries(ctx, dut, mem, base, values)
        for prog in programs:
            await write_entries(ctx, dut, MemoryTarget.PROGRAM, 0, prog)
            out["marks"] = {}
            out["error"], out["cycles"] = await run_program(ctx, dut, 200_000, stream, out["marks"])
            out.setdefault("errors", []).append(out["error"])
        out["reads"] = [await read_entries(ctx, dut, mem, base, count) for mem, base, count in reads]

    async def no_collisions(ctx):
        """The engines never ask for one activation-buffer port in the same cycle."""
        async for _, _, collision, pc in ctx.tick().sample(dut.act_collision, dut.pc):
            assert not collision, f"activation-buffer collision at pc {pc}"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(no_collisions)
    sim.add_testbench(bench)
    sim.run()
    return out


def random_layer(rng, *, n_planes, ch, h, w, m_bases, o, k, t_planes):
    x = rng.integers(0, 2, (n_planes, ch, h, w), dtype=np.uint8)
    wb = rng.integers(0, 2, (m_bases, o, ch, k, k), dtype=np.uint8)
    scales = rng.integers(-300, 300, (m_bases, n_planes, o))
    thresholds = rng.integers(-200, 200, (o, t_planes))
    flip = rng.random(o) < 0.5
    return x, wb, scales, thresholds, flip


@pytest.mark.parametrize("raw", [True, False])
def test_conv_layer_matches_ref(raw):
    rng = np.random.default_rng(7 + raw)
    # 5 output channels (not a multiple of R=2), 11 input channels (not a multiple of W=8),
    # 3x3 kernel, stride 2, padding 1, 2 weight x 2 activation bases, 5x4 map: 3x2 = 6 pixels (C=3).
    x, wb, scales, thresholds, flip = random_layer(rng, n_planes=2, ch=11, h=5, w=4, m_bases=2, o=5,
                                                   k=3, t_planes=2)
    pad_value = 1 if raw else -1
    img = conv_image(CFG, x, wb, scales, thresholds, flip, stride=2, pad=1, pad_value=pad_value, raw=raw)
    out_h, out_w = img["out_h"], img["out_w"]
    acc = ref.multibasis_conv2d(ref.from_bits(x)[:, None], ref.from_bits(wb), scales, stride=2, padding=1,
                                pad_value=pad_value)[0]                      # (O, H', W')
    images = [(MemoryTarget.ACT, 0, img["act"]), (MemoryTarget.WEIGHT, 0, img["weight"]),
              (MemoryTarget.SCALE, 0, img["scale"]), (MemoryTarget.THRESHOLD, 0, img["thr"])]
    n_pix = out_h * out_w
    if raw:
        img = conv_image(CFG, x, wb, scales, thresholds, flip, stride=2, pad=1, pad_value=pad_value,
                         raw=True, out_base=0)      # sums go to the result memory
        program = [img["instr"], encode(Opcode.END)]
        got = simulate(CFG, program, images, [(MemoryTarget.RESULT, 0, n_pix * 5)])
        assert got["error"] == 0
        sums = np.array(got["reads"][0]).reshape(n_pix, 5)
        assert np.array_equal(sums, acc.reshape(5, n_pix).T)
    else:
        program = [img["instr"], encode(Opcode.END)]
        t_planes = thresholds.shape[1]
        got = simulate(CFG, program, images, [(MemoryTarget.ACT, 512, t_planes * n_pix * img["out_stride"])])
        assert got["error"] == 0
        words = np.array(got["reads"][0], dtype=np.int64).reshape(t_planes, out_h, out_w)
        planes = ref.threshold(np.moveaxis(acc, 0, -1), thresholds, flip)  # (T, H', W', O)
        for t in range(t_planes):
            for o in range(5):
                assert np.array_equal((words[t] >> o) & 1, (planes[t, :, :, o] > 0).astype(np.int64)), (t, o)


def test_pool_is_or_over_windows():
    rng = np.random.default_rng(3)
    planes, h, w, cw = 2, 5, 6, 2
    words = rng.integers(0, 256, (planes, h, w, cw))
    k, s = 2, 2
    out_h, out_w = (h - k) // s + 1, (w - k) // s + 1
    program = [encode(Opcode.POOL, in_base=10, in_h=h, in_w=w, cw=cw, planes=planes, kernel=k, stride=s,
                      out_h=out_h, out_w=out_w, out_base=400, images_m1=0), encode(Opcode.END)]
    got = simulate(CFG, program, [(MemoryTarget.ACT, 10, [int(v) for v in words.reshape(-1)])],
                   [(MemoryTarget.ACT, 400, planes * out_h * out_w * cw)])
    assert got["error"] == 0
    expected = np.zeros((planes, out_h, out_w, cw), dtype=np.int64)
    for ky in range(k):
        for kx in range(k):
            expected |= words[:, ky:ky + s * out_h:s, kx:kx + s * out_w:s][:, :out_h, :out_w]
    assert got["reads"][0] == [int(v) for v in expected.reshape(-1)]


def test_conv_pool_conv_program():
    """A three-instruction network: conv (bit-planes) -> pool -> conv (sums), against sw.ref."""
    rng = np.random.default_rng(21)
    x, w1, s1, t1, f1 = random_layer(rng, n_planes=1, ch=3, h=6, w=6, m_bases=1, o=4, k=3, t_planes=2)
    l1 = conv_image(CFG, x, w1, s1, t1, f1, stride=1, pad=1, pad_value=-1, raw=False, out_base=300)
    # After conv 1: 2 planes, 6x6, 4 channels (1 word). Pool 2x2 -> 3x3 at 500.
    pool = encode(Opcode.POOL, in_base=300, in_h=6, in_w=6, cw=1, planes=2, kernel=2, stride=2, out_h=3,
                  out_w=3, out_base=500, images_m1=0)
    w2 = rng.integers(0, 2, (2, 3, 4, 3, 3), dtype=np.uint8)          # 3 classes over the 3x3 map
    s2 = rng.integers(-50, 50, (2, 2, 3))
    feat = np.zeros((2, 4, 3, 3), dtype=np.uint8)                      # placeholder for shapes
    l2 = conv_image(CFG, feat, w2, s2, np.zeros((3, 1), int), np.zeros(3, bool), stride=1, pad=0,
                    pad_value=-1, raw=True, in_base=500, out_base=0,
                    w_base=len(l1["weight"]), s_base=len(l1["scale"]), t_base=len(l1["thr"]))
    images = [(MemoryTarget.ACT, 0, l1["act"]),
              (MemoryTarget.WEIGHT, 0, l1["weight"] + l2["weight"]),
              (MemoryTarget.SCALE, 0, l1["scale"] + l2["scale"]),
              (MemoryTarget.THRESHOLD, 0, l1["thr"] + l2["thr"])]
    got = simulate(CFG, [l1["instr"], pool, l2["instr"], encode(Opcode.END)], images,
                   [(MemoryTarget.RESULT, 0, 3)])
    assert got["error"] == 0
    a1 = ref.multibasis_conv2d(ref.from_bits(x)[:, None], ref.from_bits(w1), s1, padding=1)
    p1 = ref.threshold(np.moveaxis(a1, 1, -1), t1, f1)                 # (T, 1, 6, 6, O)
    p1 = np.moveaxis(p1, -1, 2)                                        # (T, 1, O, 6, 6)
    pooled = np.zeros((2, 1, 4, 3, 3), bool)
    for ky in range(2):
        for kx in range(2):
            pooled |= p1[:, :, :, ky::2, kx::2] > 0
    logits = ref.multibasis_conv2d(ref.from_bits(pooled.astype(np.uint8)), ref.from_bits(w2), s2)
    assert got["reads"][0] == [int(v) for v in logits.reshape(-1)]


def test_errors_halt_without_hanging():
    rng = np.random.default_rng(5)
    x, wb, sc, th, fl = random_layer(rng, n_planes=1, ch=8, h=3, w=3, m_bases=1, o=2, k=3, t_planes=1)
    good = conv_image(CFG, x, wb, sc, th, fl, stride=1, pad=0, pad_value=-1, raw=True, out_base=0)
    from hw.isa import decode
    _, fields = decode(good["instr"])
    cases = {
        ErrorCode.ILLEGAL_OPCODE: [9],
        ErrorCode.BAD_FIELD: [encode(Opcode.CONV, **{**fields, "k": fields["k"] + 1})],
        ErrorCode.OUT_OF_RANGE: [encode(Opcode.CONV, **{**fields, "w_base": CFG.weight_depth - 1})],
        ErrorCode.PROGRAM_END: [good["instr"]] * CFG.instr_depth,
    }
    for code, program in cases.items():
        got = simulate(CFG, program, [], [])
        assert got["error"] == code.value, code
    assert simulate(CFG, [encode(Opcode.END)], [], [])["error"] == 0


def test_config_the_writer_cannot_serve_is_refused():
    with pytest.raises(AccelError, match="rows to divide word_bits"):
        Accelerator(CFG.replace(rows=3))
    with pytest.raises(AccelError, match="power of two, not 12"):
        Accelerator(CFG.replace(word_bits=12))


@pytest.mark.parametrize("layer", [
    # n_planes, ch, h, w, m_bases, o, k, stride, pad, raw, t_planes
    (1, 8, 4, 4, 1, 2, 3, 1, 1, True, 1),
    (2, 11, 5, 4, 2, 5, 3, 2, 1, False, 2),
    (3, 20, 7, 7, 2, 7, 3, 1, 1, False, 2),
    (1, 16, 3, 3, 2, 6, 3, 1, 0, True, 1),
    (1, 8, 6, 6, 1, 8, 1, 1, 0, False, 2),       # writer-bound: 1x1 kernel, one word
    (2, 8, 6, 6, 2, 6, 1, 1, 0, False, 2),
    # pixel tiles of one, two and three beats: the issue engine's read-ahead at the bank's end
    (1, 8, 5, 5, 1, 2, 1, 1, 0, False, 1),
    (1, 16, 5, 5, 1, 2, 1, 1, 0, False, 1),
    (1, 24, 5, 5, 1, 2, 1, 1, 0, True, 1),
])
def test_cycle_model_matches_rtl(layer):
    from hw.cycles import END_CYCLES, conv_cycles
    from hw.isa import decode
    n, ch, h, w, m, o, k, stride, pad, raw, t = layer
    x, wb, sc, th, fl = random_layer(np.random.default_rng(0), n_planes=n, ch=ch, h=h, w=w, m_bases=m,
                                     o=o, k=k, t_planes=t)
    img = conv_image(CFG, x, wb, sc, th, fl, stride=stride, pad=pad, pad_value=-1, raw=raw,
                     out_base=0 if raw else 512)
    images = [(MemoryTarget.ACT, 0, img["act"]), (MemoryTarget.WEIGHT, 0, img["weight"]),
              (MemoryTarget.SCALE, 0, img["scale"]), (MemoryTarget.THRESHOLD, 0, img["thr"])]
    got = simulate(CFG, [img["instr"], encode(Opcode.END)], images, [])
    assert got["error"] == 0
    model = conv_cycles(CFG, decode(img["instr"])[1]) + END_CYCLES
    assert model == got["cycles"]


def test_loads_feed_a_conv_and_overlap_compute():
    """Parameters arrive only through LOADs: seven queued before a SYNC (the queue fills and LOAD waits),
    one overlapping the CONV and one that END waits for. Results against sw.ref; every instruction's
    cycles against hw.cycles.Timeline."""
    from hw.cycles import program_cycles
    from hw.isa import decode
    rng = np.random.default_rng(11)
    x, wb, sc, th, fl = random_layer(rng, n_planes=2, ch=11, h=5, w=4, m_bases=2, o=5, k=3, t_planes=2)
    img = conv_image(CFG, x, wb, sc, th, fl, stride=1, pad=1, pad_value=1, raw=True, out_base=0,
                     w_base=40, s_base=3, t_base=0)
    nw, ns, nt = len(img["weight"]), len(img["scale"]), len(img["thr"])
    junk = [int(v) for v in rng.integers(0, 1 << 16, 40)]
    load = lambda mem, addr, count: encode(Opcode.LOAD, mem=mem, addr=addr, count=count)
    program = [
        load(MemoryTarget.WEIGHT, 40, 7), load(MemoryTarget.WEIGHT, 47, nw - 7),
        load(MemoryTarget.SCALE, 3, ns), load(MemoryTarget.THRESHOLD, 0, nt),
        load(MemoryTarget.WEIGHT, 0, 30), load(MemoryTarget.SCALE, 20, 5), load(MemoryTarget.THRESHOLD, 20, 4),
        encode(Opcode.SYNC), img["instr"],
        load(MemoryTarget.WEIGHT, 0, 10), encode(Opcode.END)]
    stream = img["weight"] + img["scale"] + img["thr"] + junk[:30] + junk[30:35] + junk[35:39] + junk[:10]
    cfg = CFG.replace(instr_depth=16)
    got = simulate(cfg, program, [(MemoryTarget.ACT, 0, img["act"])],
                   [(MemoryTarget.RESULT, 0, img["out_h"] * img["out_w"] * 5)], stream=stream)
    assert got["error"] == 0
    acc = ref.multibasis_conv2d(ref.from_bits(x)[:, None], ref.from_bits(wb), sc, padding=1, pad_value=1)[0]
    assert got["reads"][0] == [int(v) for v in acc.reshape(5, -1).T.reshape(-1)]
    model = program_cycles(cfg, [decode(word) for word in program])
    assert cycles_per_pc(got["marks"], got["cycles"], len(program)) == model
    assert model[6] > 4 and model[7] > 4 and model[-1] > 3      # the seventh LOAD, SYNC and END waited


def test_load_errors_halt_and_flush_the_queue():
    load = lambda mem, addr, count: encode(Opcode.LOAD, mem=mem, addr=addr, count=count)
    cases = {
        ErrorCode.BAD_FIELD: [load(MemoryTarget.ACT, 0, 1)],
        ErrorCode.OUT_OF_RANGE: [load(MemoryTarget.SCALE, CFG.scale_depth - 2, 3)],
    }
    for code, program in cases.items():
        assert simulate(CFG, program, [], [])["error"] == code.value, code
    assert simulate(CFG, [encode(Opcode.LOAD, mem=MemoryTarget.WEIGHT, addr=0, count=0)], [], [])["error"] \
        == ErrorCode.BAD_FIELD.value
    # Two loads queued, then an illegal opcode: the queue is flushed, so the next run's LOAD takes the
    # stream from its first entry again and SYNC does not wait for the dropped loads.
    failing = [load(MemoryTarget.WEIGHT, 0, 8), load(MemoryTarget.WEIGHT, 8, 8), 9]
    passing = [load(MemoryTarget.WEIGHT, 0, 1), encode(Opcode.SYNC), encode(Opcode.END)]
    got = simulate(CFG, [failing, passing], [], [], stream=[1] * 2, runs=2)
    assert got["errors"] == [ErrorCode.ILLEGAL_OPCODE.value, 0]


def test_checks_agree_with_the_iss_on_random_illegal_fields():
    """Every CONV / POOL / LOAD check is its own registered bit (hw/accel.py): random field changes,
    one or two at a time, halt with the ISS's error code, BAD_FIELD before OUT_OF_RANGE when both
    apply (docs/isa.md "Errors")."""
    from hw.isa import decode
    rng = np.random.default_rng(11)
    x, wb, sc, th, fl = random_layer(rng, n_planes=2, ch=11, h=4, w=4, m_bases=2, o=3, k=3, t_planes=2)
    conv = decode(conv_image(CFG, x, wb, sc, th, fl, stride=1, pad=1, pad_value=0, raw=False,
                             out_base=600)["instr"])[1]
    pool = dict(in_base=0, in_h=4, in_w=4, cw=2, planes=2, kernel=2, stride=2, out_h=2, out_w=2, out_base=900,
                images_m1=0)
    load = dict(mem=MemoryTarget.WEIGHT.value, addr=10, count=20)
    bases = [(Opcode.CONV, conv), (Opcode.POOL, pool), (Opcode.LOAD, load)]
    small = {"in_h": 8, "in_w": 8, "in_cw": 4, "in_stride": 4, "in_tail": 12, "in_planes": 4, "kh": 5,
             "kw": 5, "stride": 3, "pad": 3, "out_h": 8, "out_w": 8, "out_ch": 8, "out_ch_base": 10,
             "out_stride": 3, "out_planes": 4, "wbases": 3, "k": 300, "cw": 3, "planes": 4, "kernel": 5,
             "mem": 7, "count": 300, "images_m1": 3}
    _checks_agree_with_the_iss(CFG, bases, small, rng, 200)


def _checks_agree_with_the_iss(cfg, bases, small, rng, count):
    """`count` random changes of one or two fields of the (opcode, fields) `bases` that the ISS refuses
    with BAD_FIELD or OUT_OF_RANGE halt the RTL with the same code; both codes occur."""
    from hw.isa import FIELD_LIMITS
    from sw.iss import Iss, IssError
    programs, expected = [], []
    while len(programs) < count:
        opcode, fields = bases[int(rng.integers(len(bases)))]
        changed = dict(fields)
        for name in rng.choice(sorted(fields), size=int(rng.integers(1, 3)), replace=False):
            limit = small.get(name, FIELD_LIMITS[name]) if rng.random() < 0.8 else FIELD_LIMITS[name]
            near = min(max(fields[name] + int(rng.integers(-2, 3)), 0), FIELD_LIMITS[name])
            changed[name] = near if rng.random() < 0.4 else int(rng.integers(0, limit + 1))
        instr = encode(opcode, **changed)
        iss = Iss(cfg)
        iss.load_program([instr, encode(Opcode.END)])
        try:
            iss.run()
        except IssError as error:
            if error.code in (ErrorCode.BAD_FIELD.value, ErrorCode.OUT_OF_RANGE.value):
                programs.append([instr])        # (a legal LOAD stops the ISS with its STALL)
                expected.append(error.code)
    got = simulate(cfg, programs, [], [], runs=len(programs))
    assert got["errors"] == expected
    assert {ErrorCode.BAD_FIELD.value, ErrorCode.OUT_OF_RANGE.value} <= set(expected)


def test_packed_and_all_images_checks_agree_with_the_iss():
    """The same for a packed first layer's CONV (its fields-a-word, last-word and image-map checks) and
    a CONV over all images of a batch (the stack's regions), on a W = 32 config."""
    from hw.isa import decode
    rng = np.random.default_rng(12)
    pixels = rng.integers(0, 256, (3, 6, 5), dtype=np.uint8)
    wb = rng.integers(0, 2, (1, 3, 3, 3, 3), dtype=np.uint8)
    packed = decode(packed_conv_image(PACKED_CFG, pixels, wb, rng.integers(-9, 9, (1, 8, 3)),
                                      rng.integers(-9, 9, (3, 2)), np.zeros(3, bool), stride=1, pad=1,
                                      pad_value=-1, raw=True)["instr"])[1]
    x, wb, sc, th, fl = random_layer(rng, n_planes=2, ch=40, h=3, w=3, m_bases=1, o=3, k=3, t_planes=2)
    batch = dict(decode(conv_image(PACKED_CFG, x, wb, sc, th, fl, stride=1, pad=1, pad_value=0, raw=False,
                                   out_base=600)["instr"])[1], images_m1=2, all_images=1)
    small = {"in_h": 8, "in_w": 8, "in_cw": 4, "in_stride": 2, "in_tail": 6, "in_planes": 10, "kh": 5, "kw": 5,
             "stride": 3, "pad": 3, "out_h": 8, "out_w": 8, "out_ch": 8, "out_planes": 3, "k": 120,
             "images_m1": 31, "in_base": 1024, "out_base": 1024}
    _checks_agree_with_the_iss(PACKED_CFG, [(Opcode.CONV, packed), (Opcode.CONV, batch)], small, rng, 120)


@pytest.mark.parametrize("raw", [True, False])
def test_two_source_conv_sums_both_sources(raw):
    """SHORTCUT + CONV: each output tile sums the main source's passes (3x3, stride 1, pad 1, 2 x 2
    bases, channels off the word and the array) and the second source's (another map, 9x7, 3x3 at
    stride 2 with padding on every side and the other padding value, 1 activation x 2 weight bases),
    thresholded once; against sw.ref, and the RTL's cycles against the cycle model."""
    from hw.cycles import program_cycles
    from hw.isa import ShortcutArgs, decode
    rng = np.random.default_rng(31 + raw)
    x1, w1, s1, thresholds, flip = random_layer(rng, n_planes=2, ch=11, h=5, w=4, m_bases=2, o=5, k=3, t_planes=2)
    x2, w2, s2, _, _ = random_layer(rng, n_planes=1, ch=6, h=9, w=7, m_bases=2, o=5, k=3, t_planes=2)
    out_base = 0 if raw else 700
    main = conv_image(CFG, x1, w1, s1, thresholds, flip, stride=1, pad=1, pad_value=-1, raw=raw,
                      out_base=out_base)
    second = conv_image(CFG, x2, w2, s2, thresholds, flip, stride=2, pad=1, pad_value=1, raw=raw, in_base=300,
                        out_base=out_base, w_base=len(main["weight"]), s_base=len(main["scale"]))
    assert (second["out_h"], second["out_w"]) == (main["out_h"], main["out_w"])
    sc_fields = decode(second["instr"])[1]
    shortcut = encode(Opcode.SHORTCUT, **{name: sc_fields[name] for name, _ in ShortcutArgs})
    program = [shortcut, main["instr"], encode(Opcode.END)]
    images = [(MemoryTarget.ACT, 0, main["act"]), (MemoryTarget.ACT, 300, second["act"]),
              (MemoryTarget.WEIGHT, 0, main["weight"] + second["weight"]),
              (MemoryTarget.SCALE, 0, main["scale"] + second["scale"]), (MemoryTarget.THRESHOLD, 0, main["thr"])]
    out_h, out_w = main["out_h"], main["out_w"]
    n_pix = out_h * out_w
    acc = (ref.multibasis_conv2d(ref.from_bits(x1)[:, None], ref.from_bits(w1), s1, padding=1, pad_value=-1)[0] +
           ref.multibasis_conv2d(ref.from_bits(x2)[:, None], ref.from_bits(w2), s2, stride=2, padding=1,
                                 pad_value=1)[0])                       # (O, H', W')
    if raw:
        got = simulate(CFG, program, images, [(MemoryTarget.RESULT, 0, n_pix * 5)])
        assert got["error"] == 0
        assert np.array_equal(np.array(got["reads"][0]).reshape(n_pix, 5), acc.reshape(5, n_pix).T)
    else:
        t_planes = thresholds.shape[1]
        got = simulate(CFG, program, images, [(MemoryTarget.ACT, out_base, t_planes * n_pix * main["out_stride"])])
        assert got["error"] == 0
        words = np.array(got["reads"][0], dtype=np.int64).reshape(t_planes, out_h, out_w)
        planes = ref.threshold(np.moveaxis(acc, 0, -1), thresholds, flip)
        for t in range(t_planes):
            for o in range(5):
                assert np.array_equal((words[t] >> o) & 1, (planes[t, :, :, o] > 0).astype(np.int64)), (t, o)
    model = program_cycles(CFG, [decode(word) for word in program])
    assert cycles_per_pc(got["marks"], got["cycles"], len(program)) == model


def test_shortcut_errors_halt_like_the_iss():
    """A SHORTCUT not followed by a CONV, and a CONV whose shortcut fields are illegal, halt with the
    ISS's error code."""
    from hw.isa import ShortcutArgs, decode
    from sw.iss import Iss, IssError
    rng = np.random.default_rng(8)
    x, wb, sc, th, fl = random_layer(rng, n_planes=1, ch=8, h=4, w=4, m_bases=1, o=2, k=3, t_planes=1)
    conv = conv_image(CFG, x, wb, sc, th, fl, stride=1, pad=1, pad_value=0, raw=True, out_base=0)["instr"]
    fields = decode(conv)[1]
    good = {name: fields[name] for name, _ in ShortcutArgs}
    cases = [
        [encode(Opcode.SHORTCUT, **good), encode(Opcode.END)],                       # not followed by a CONV
        [encode(Opcode.SHORTCUT, **good), encode(Opcode.SHORTCUT, **good), conv],
        [encode(Opcode.SHORTCUT, **{**good, "k": good["k"] + 1}), conv],             # its K check
        [encode(Opcode.SHORTCUT, **{**good, "stride": 0}), conv],
        [encode(Opcode.SHORTCUT, **{**good, "w_base": CFG.weight_depth - 2}), conv],  # its weight region
        [encode(Opcode.SHORTCUT, **{**good, "in_base": CFG.act_depth - 10}), conv],
        [encode(Opcode.SHORTCUT, **{**good, "kh": 3, "kw": 3, "pad": 0, "k": 9 * 8}), conv],   # window leaves the map
        [encode(Opcode.SHORTCUT, **good), conv, encode(Opcode.END)],                 # legal
    ]
    expected = []
    for program in cases:
        iss = Iss(CFG)
        iss.load_program(program)
        try:
            iss.run()
            expected.append(0)
        except IssError as error:
            expected.append(error.code)
    assert expected[:7] == [ErrorCode.BAD_FIELD.value] * 4 + [ErrorCode.OUT_OF_RANGE.value] * 2 + \
        [ErrorCode.BAD_FIELD.value] and expected[7] == 0
    got = simulate(CFG, cases, [], [], runs=len(cases))
    assert got["errors"] == expected


ELEMENT_CFG = CFG.replace(element_scales=True)


@pytest.mark.parametrize("cfg", [CFG, ELEMENT_CFG], ids=["column", "element"])
@pytest.mark.parametrize("seed", range(8))
def test_cycle_model_matches_rtl_on_random_layers(seed, cfg):
    """Random layer shapes, half of them with a shortcut of another kernel and stride (K-words from 1
    to many, so passes of different lengths meet at tile boundaries): the RTL's cycles equal the
    cycle model's and its sums equal sw.ref's."""
    from hw.cycles import program_cycles
    from hw.isa import ShortcutArgs, decode
    rng = np.random.default_rng(100 + seed)
    k = int(rng.choice([1, 3]))
    n, m, o = int(rng.integers(1, 3)), int(rng.integers(1, 3)), int(rng.integers(1, 7))
    ch = int(rng.choice([3, 8, 11, 17]))
    h, w = int(rng.integers(2, 5)), int(rng.integers(2, 6))       # h * w * o sums fit result_depth
    pad = k // 2
    x1, w1, s1, _, _ = random_layer(rng, n_planes=n, ch=ch, h=h, w=w, m_bases=m, o=o, k=k, t_planes=1)
    main = conv_image(cfg, x1, w1, s1, np.zeros((o, 1), int), np.zeros(o, bool), stride=1, pad=pad,
                      pad_value=-1, raw=True, out_base=0)
    program, images = [main["instr"]], [(MemoryTarget.ACT, 0, main["act"])]
    weights, scales = list(main["weight"]), list(main["scale"])
    acc = ref.multibasis_conv2d(ref.from_bits(x1)[:, None], ref.from_bits(w1), s1, padding=pad, pad_value=-1)[0]
    if seed % 2:
        k2, stride2 = int(rng.choice([1, 3])), int(rng.choice([1, 2]))
        n2, m2, ch2 = int(rng.integers(1, 3)), int(rng.integers(1, 3)), int(rng.choice([2, 8, 9]))
        pad2 = k2 // 2
        h2, w2 = (h - 1) * stride2 + k2 - 2 * pad2, (w - 1) * stride2 + k2 - 2 * pad2
        x2, w2b, s2, _, _ = random_layer(rng, n_planes=n2, ch=ch2, h=h2, w=w2, m_bases=m2, o=o, k=k2, t_planes=1)
        second = conv_image(cfg, x2, w2b, s2, np.zeros((o, 1), int), np.zeros(o, bool), stride=stride2, pad=pad2,
                            pad_value=1, raw=True, in_base=400, out_base=0, w_base=len(weights), s_base=len(scales))
        fields = decode(second["instr"])[1]
        program.insert(0, encode(Opcode.SHORTCUT, **{name: fields[name] for name, _ in ShortcutArgs}))
        images.append((MemoryTarget.ACT, 400, second["act"]))
        weights += second["weight"]
        scales += second["scale"]
        acc = acc + ref.multibasis_conv2d(ref.from_bits(x2)[:, None], ref.from_bits(w2b), s2, stride=stride2,
                                          padding=pad2, pad_value=1)[0]
    program.append(encode(Opcode.END))
    images += [(MemoryTarget.WEIGHT, 0, weights), (MemoryTarget.SCALE, 0, scales)]
    got = simulate(cfg, program, images, [(MemoryTarget.RESULT, 0, h * w * o)])
    assert got["error"] == 0
    assert np.array_equal(np.array(got["reads"][0]).reshape(h * w, o), acc.reshape(o, h * w).T)
    assert cycles_per_pc(got["marks"], got["cycles"], len(program)) == \
        program_cycles(cfg, [decode(word) for word in program])


PACKED_CFG = CFG.replace(word_bits=32)


def packed_conv_image(cfg, pixels, w_bits, scales, thresholds, flip, *, stride, pad, pad_value, raw,
                      out_base=0):
    """Memory images and the packed CONV of a first layer over uint8 `pixels` (c, h, w), straight from
    docs/isa.md "Packed image input": one word a pixel, F = W // c fields a patch word."""
    R, W = cfg.rows, cfg.word_bits
    ch, h, wd = pixels.shape
    m_bases, o, _, kh, kw = w_bits.shape
    fpw = W // ch
    khw = kh * kw
    in_cw = -(-khw // fpw)
    out_h, out_w = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    ot_count = -(-o // R)
    weights = []
    for ot in range(ot_count):
        for m in range(m_bases):
            for j in range(in_cw):
                positions = range(j * fpw, min((j + 1) * fpw, khw))
                t = len(positions)
                lanes = []
                for r in range(R):
                    oc = ot * R + r
                    word = ((1 << W) - 1) ^ ((1 << (t * ch)) - 1)        # above the fields: 1
                    for q, i in enumerate(positions):
                        for c in range(ch):
                            if oc < o:
                                word |= int(w_bits[m, oc, c, i // kw, i % kw]) << ((t - 1 - q) * ch + c)
                    lanes.append(word)
                weights.append(sum(v << (r * W) for r, v in enumerate(lanes)))
    lay = CoreLayouts(cfg)
    scale_entries = [pack_payload(lay.scale_entry, [int(scales[m, n, ot * R + r]) if ot * R + r < o else 0
                                                    for r in range(R)])
                     for ot in range(ot_count) for m in range(m_bases) for n in range(8)]
    thr_entries = []
    for oc in range(ot_count * R):
        t = [int(v) for v in thresholds[oc]] if oc < o else [0] * thresholds.shape[1]
        t += [0] * (cfg.max_abases - len(t))
        thr_entries.append(pack_payload(lay.thr_entry, {"t": t, "flip": int(flip[oc]) if oc < o else 0}))
    act = [sum(int(pixels[c, y, x]) << (8 * c) for c in range(ch)) for y in range(h) for x in range(wd)]
    instr = encode(Opcode.CONV, in_base=0, in_h=h, in_w=wd, in_cw=in_cw, in_stride=1, in_tail=ch, in_planes=8,
                   kh=kh, kw=kw, stride=stride, pad=pad, pad_value=int(pad_value > 0), out_h=out_h, out_w=out_w,
                   out_ch=o, out_ch_base=0, out_stride=-(-o // W), out_planes=0 if raw else thresholds.shape[1],
                   out_base=out_base, wbases=m_bases, w_base=0, s_base=0, t_base=0, raw=int(raw),
                   k=khw * ch, images_m1=0, packed=1, all_images=0)
    images = [(MemoryTarget.ACT, 0, act), (MemoryTarget.WEIGHT, 0, weights),
              (MemoryTarget.SCALE, 0, scale_entries), (MemoryTarget.THRESHOLD, 0, thr_entries)]
    return {"images": images, "instr": instr, "out_h": out_h, "out_w": out_w}


@pytest.mark.parametrize("layer", [
    # c, h, w, k, stride, pad, pad_value, M, O, raw: 7 x 7 x 3 in five words of F = 10 fields; c = 1:
    # 32 fields a word; an image of all ones / all zeros (pixels 255 / 0)
    (3, 6, 5, 3, 1, 1, -1, 1, 3, True),
    (3, 9, 8, 7, 2, 3, 1, 2, 3, True),
    (1, 5, 6, 3, 2, 1, 1, 1, 4, False),
    (4, 4, 4, 2, 1, 0, -1, 2, 3, True),       # 2 x 4 kernel: 8 fields of 4 bits, one word
    ("ones", 5, 5, 3, 1, 1, -1, 1, 3, True),
    ("zeros", 5, 5, 3, 1, 1, 1, 1, 3, True),
])
def test_packed_conv_matches_ref_and_the_cycle_model(layer):
    """A first layer reading its image map (docs/isa.md "Packed image input"): sums (or bit-planes)
    equal sw.ref's over the 8 pixel planes, and the RTL's cycles the cycle model's."""
    from hw.cycles import END_CYCLES, conv_cycles
    from hw.isa import decode
    c, h, w, k, stride, pad, pad_value, m, o, raw = layer
    rng = np.random.default_rng(zlib.crc32(repr(layer).encode()))
    fill = {"ones": 255, "zeros": 0}.get(c)
    ch = 3 if fill is not None else c
    pixels = (np.full((ch, h, w), fill, np.uint8) if fill is not None
              else rng.integers(0, 256, (ch, h, w), dtype=np.uint8))
    kh, kw = (2, 4) if c == 4 else (k, k)
    wb = rng.integers(0, 2, (m, o, ch, kh, kw), dtype=np.uint8)
    scales = rng.integers(-300, 300, (m, 8, o))
    thresholds = rng.integers(-2000, 2000, (o, 2))
    flip = rng.random(o) < 0.5
    img = packed_conv_image(PACKED_CFG, pixels, wb, scales, thresholds, flip, stride=stride, pad=pad,
                            pad_value=pad_value, raw=raw, out_base=0 if raw else 600)
    out_h, out_w = img["out_h"], img["out_w"]
    n_pix = out_h * out_w
    planes = (pixels[None] >> np.arange(8, dtype=np.uint8)[:, None, None, None]) & 1     # (8, c, h, w)
    acc = ref.multibasis_conv2d(ref.from_bits(planes)[:, None], ref.from_bits(wb), scales, stride=stride,
                                padding=pad, pad_value=pad_value)[0]                        # (O, H', W')
    read = (MemoryTarget.RESULT, 0, n_pix * o) if raw else (MemoryTarget.ACT, 600, 2 * n_pix)
    got = simulate(PACKED_CFG, [img["instr"], encode(Opcode.END)], img["images"], [read])
    assert got["error"] == 0
    if raw:
        assert np.array_equal(np.array(got["reads"][0]).reshape(n_pix, o), acc.reshape(o, n_pix).T)
    else:
        words = np.array(got["reads"][0], dtype=np.int64).reshape(2, out_h, out_w)
        bits = ref.threshold(np.moveaxis(acc, 0, -1), thresholds, flip)
        for t in range(2):
            for oc in range(o):
                assert np.array_equal((words[t] >> oc) & 1, (bits[t, :, :, oc] > 0).astype(np.int64)), (t, oc)
    assert got["cycles"] == conv_cycles(PACKED_CFG, decode(img["instr"])[1]) + END_CYCLES


def _stacked_words(per_image, in_cw, width):
    """The act words of a map holding `per_image` bit maps (N, ch, h, w) stacked as rows."""
    return words_of_map(np.concatenate(per_image, axis=2), in_cw, width)


@pytest.mark.parametrize("case", [
    # images, h, w, k, pad, raw, shortcut: per-image maps smaller than the C = 3 columns, and not a
    # multiple of them, so tiles hold pixels of two images
    (3, 2, 2, 3, 1, True, False),
    (2, 3, 2, 3, 1, False, False),
    (3, 2, 3, 1, 0, True, True),
    (1, 2, 2, 3, 1, True, False),
])
def test_conv_over_all_images_of_a_batch(case):
    """One CONV with all_images over a stacked map equals each image's layer (sw.ref): raw sums in
    image order, bit-planes at each image's rows; with a SHORTCUT over its own stacked map; cycles
    equal the cycle model's."""
    from hw.cycles import program_cycles
    from hw.isa import ShortcutArgs, decode
    images, h, w, k, pad, raw, shortcut = case
    rng = np.random.default_rng(sum(case))
    n, m, o, ch = 2, 2, 3, 11
    layers = [random_layer(rng, n_planes=n, ch=ch, h=h, w=w, m_bases=m, o=o, k=k, t_planes=2) for _ in range(images)]
    x0, wb, sc, th, fl = layers[0]
    img = conv_image(CFG, x0, wb, sc, th, fl, stride=1, pad=pad, pad_value=-1, raw=raw, out_base=0 if raw else 600)
    fields = dict(decode(img["instr"])[1], images_m1=images - 1, all_images=1)
    acts = [(MemoryTarget.ACT, 0, _stacked_words([x for x, *_ in layers], -(-ch // CFG.word_bits), CFG.word_bits))]
    weights, scales = list(img["weight"]), list(img["scale"])
    accs = [ref.multibasis_conv2d(ref.from_bits(x)[:, None], ref.from_bits(wb), sc, padding=pad, pad_value=-1)[0]
            for x, *_ in layers]
    program = [encode(Opcode.CONV, **fields)]
    if shortcut:
        ch2, k2, stride2 = 8, 3, 2
        h2, w2 = (h - 1) * stride2 + k2 - 2, (w - 1) * stride2 + k2 - 2
        x2s = [rng.integers(0, 2, (1, ch2, h2, w2), dtype=np.uint8) for _ in range(images)]
        w2b = rng.integers(0, 2, (1, o, ch2, k2, k2), dtype=np.uint8)
        s2 = rng.integers(-300, 300, (1, 1, o))
        second = conv_image(CFG, x2s[0], w2b, s2, th, fl, stride=stride2, pad=1, pad_value=1, raw=raw, in_base=500,
                            w_base=len(weights), s_base=len(scales))
        sfields = decode(second["instr"])[1]
        program.insert(0, encode(Opcode.SHORTCUT, **{name: sfields[name] for name, _ in ShortcutArgs}))
        acts.append((MemoryTarget.ACT, 500, _stacked_words(x2s, 1, CFG.word_bits)))
        weights += second["weight"]
        scales += second["scale"]
        accs = [a + ref.multibasis_conv2d(ref.from_bits(x2)[:, None], ref.from_bits(w2b), s2, stride=stride2,
                                          padding=1, pad_value=1)[0] for a, x2 in zip(accs, x2s)]
    program.append(encode(Opcode.END))
    oh, ow = img["out_h"], img["out_w"]
    p1 = oh * ow
    read = (MemoryTarget.RESULT, 0, images * p1 * o) if raw else (MemoryTarget.ACT, 600, 2 * images * p1)
    got = simulate(CFG, program, acts + [(MemoryTarget.WEIGHT, 0, weights), (MemoryTarget.SCALE, 0, scales),
                                         (MemoryTarget.THRESHOLD, 0, img["thr"])], [read])
    assert got["error"] == 0
    if raw:
        want = np.concatenate([a.reshape(o, p1).T for a in accs])                 # (images * P1, O)
        assert np.array_equal(np.array(got["reads"][0]).reshape(images * p1, o), want)
    else:
        words = np.array(got["reads"][0], dtype=np.int64).reshape(2, images, oh, ow)
        for b, a in enumerate(accs):
            bits = ref.threshold(np.moveaxis(a, 0, -1), th, fl)
            for t in range(2):
                for oc in range(o):
                    assert np.array_equal((words[t, b] >> oc) & 1, (bits[t, :, :, oc] > 0).astype(np.int64))
    assert cycles_per_pc(got["marks"], got["cycles"], len(program)) == \
        program_cycles(CFG, [decode(word) for word in program])
