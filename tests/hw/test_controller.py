"""Each controller engine on its own, in the Amaranth simulator, against a small Python model of its job.

The memories around an engine are Python models (a synchronous read: data the cycle after an enabled
address); streams are driven with random gaps and back-pressure. The engines together are tested in
tests/hw/test_accel.py against sw.ref, the ISS and the cycle model.
"""

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.config import AccelConfig
from hw.controller import (ActBufferArbiter, GatherEngine, IssueEngine, LoadEngine, PoolEngine, Sequencer,
                           WriterEngine)
from hw.controller.plan import POOL_DRAIN_CYCLES, Plan
from hw.cycles import LOAD_CYCLES, POOL_OVERHEAD, SETUP_CYCLES
from hw.isa import ConvArgs, ErrorCode, Instruction, LoadArgs, MemoryTarget, Opcode, PoolArgs, ShortcutArgs, encode
from hw.layouts import CoreLayouts, pack_payload, unpack_payload

CFG = AccelConfig(rows=2, cols=3, word_bits=8, max_wbases=2, max_abases=2, max_k=400, scale_depth=32,
                  thr_depth=32, out_depth=16, act_depth=1024, weight_depth=256, patch_depth=128,
                  result_depth=256, instr_depth=8)
LIMIT = 20_000


def _ceil(a, b):
    return -(-a // b)


def conv_fields(cfg, *, ch, h, w, planes, k, stride, pad, o, wbases=1, raw=False, out_planes=1, pad_value=0,
                in_base=5, out_base=600, out_ch_base=0, w_base=3, s_base=2, t_base=4, images=1, all_images=0):
    W = cfg.word_bits
    in_cw = _ceil(ch, W)
    out_h, out_w = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    return dict(in_base=in_base, in_h=h, in_w=w, in_cw=in_cw, in_stride=in_cw, in_tail=ch - (in_cw - 1) * W,
                in_planes=planes, kh=k, kw=k, stride=stride, pad=pad, pad_value=pad_value, out_h=out_h,
                out_w=out_w, out_ch=o, out_ch_base=out_ch_base, out_stride=_ceil(out_ch_base + o, W),
                out_planes=0 if raw else out_planes, out_base=out_base, wbases=wbases, w_base=w_base,
                s_base=s_base, t_base=t_base, raw=int(raw), k=k * k * ch, images_m1=images - 1, packed=0,
                all_images=all_images)


def conv_plan(cfg, f):
    """What the sequencer derives for a CONV, written from docs/isa.md's definitions."""
    R, C = cfg.rows, cfg.cols
    out_tiles = _ceil(f["out_ch"], R)
    khw = f["kh"] * f["kw"]
    kwords = khw * f["in_cw"]
    images = f["images_m1"] + 1                   # planes are `images` image maps apart
    npix = f["out_h"] * f["out_w"] * (images if f["all_images"] else 1)      # every image's pixels
    row_words = f["in_w"] * f["in_stride"]
    image_words = row_words * f["in_h"]
    plane_words = image_words * images
    otm = out_tiles * f["wbases"]
    out_image_words = npix * f["out_stride"]
    out_plane_words = out_image_words * (1 if f["all_images"] else images)
    return dict(
        khw=khw, kwords=kwords, npix=npix, row_words=row_words, image_words=image_words, plane_words=plane_words,
        in_need=plane_words * (f["in_planes"] - 1), patch_need=kwords * f["in_planes"], kvalid=khw * f["in_tail"],
        otm=otm, w_need=kwords * otm, s_need=otm * f["in_planes"], res_need=npix * f["out_ch"],
        out_image_words=out_image_words, out_plane_words=out_plane_words,
        out_need=out_plane_words * max(f["out_planes"] - 1, 0),      # not read when raw
        step_x=f["stride"] * f["in_stride"], step_y=row_words * f["stride"],
        span_h=(f["out_h"] - 1) * f["stride"], span_w=(f["out_w"] - 1) * f["stride"],
        pad_rows=row_words * f["pad"], pad_cols=f["pad"] * f["in_stride"],
        tile_res_step=C * f["out_ch"], tile_out_step=C * f["out_stride"], out_tiles=out_tiles,
        kwords_m1=kwords - 1, cw_m1=f["in_cw"] - 1, kw_m1=f["kw"] - 1, kh_m1=f["kh"] - 1,
        np_m1=f["in_planes"] - 1, ow_m1=f["out_w"] - 1, oh_m1=f["out_h"] - 1, wb_m1=f["wbases"] - 1,
        op_m1=(f["out_planes"] - 1) % 16, ot_m1=out_tiles - 1)


def pool_fields(*, h, w, cw, planes, kernel, stride, in_base=7, out_base=700, images=1):
    return dict(in_base=in_base, in_h=h, in_w=w, cw=cw, planes=planes, kernel=kernel, stride=stride,
                out_h=(h - kernel) // stride + 1, out_w=(w - kernel) // stride + 1, out_base=out_base,
                images_m1=images - 1)


def pool_plan(f):
    images = f["images_m1"] + 1
    p_row = f["in_w"] * f["cw"]
    p_out_image = f["out_h"] * f["out_w"] * f["cw"]
    return dict(p_row=p_row, p_image=p_row * f["in_h"], p_plane=p_row * f["in_h"] * images,
                p_in_need=p_row * f["in_h"] * images * (f["planes"] - 1), p_out_image=p_out_image,
                p_out_plane=p_out_image * images, p_out_need=p_out_image * images * (f["planes"] - 1),
                p_step_y=p_row * f["stride"],
                p_step_x=f["stride"] * f["cw"], span_h=(f["out_h"] - 1) * f["stride"],
                span_w=(f["out_w"] - 1) * f["stride"], cw_m1=f["cw"] - 1, kw_m1=f["kernel"] - 1,
                kh_m1=f["kernel"] - 1, np_m1=f["planes"] - 1, ow_m1=f["out_w"] - 1, oh_m1=f["out_h"] - 1)


def set_struct(ctx, view, layout, values):
    full = {name: 0 for name, _ in layout}
    full.update(values)
    ctx.set(view.as_value(), pack_payload(layout, full))


async def start_engine(ctx, dut, args_port, args_layout, args, plan, *, active=True):
    """Present the instruction and its plan, pulse `start`, then hold `active` (CONV engines)."""
    set_struct(ctx, args_port, args_layout, args)
    set_struct(ctx, dut.plan, Plan, plan)
    ctx.set(dut.start, 1)
    await ctx.tick()
    ctx.set(dut.start, 0)
    if active:
        ctx.set(dut.active, 1)


def sync_read(addr, en, data, lookup):
    """A memory read port model: `data` takes lookup(addr) the cycle after `en`."""
    async def process(ctx):
        async for _, _, e, a in ctx.tick().sample(en, addr):
            if e:
                ctx.set(data, lookup(a))
    return process


def simulate(dut, bench, *processes):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for process in processes:
        sim.add_process(process)
    sim.add_testbench(bench)
    sim.run()


# ---------------------------------------------------------------- Sequencer

def run_sequencer(cfg, program, *, loads_ready=lambda cycle: True, engine_cycles=5):
    """Runs `program` on a lone Sequencer whose engines finish `engine_cycles` after they start.
    Returns (events, error, plan at the engines' start)."""
    dut = Sequencer(cfg)
    words = list(program)
    events, plans = [], []

    async def bench(ctx):
        ctx.set(dut.loads_idle, 1)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        finish_at = None
        for cycle in range(LIMIT):
            ctx.set(dut.conv_done, finish_at == cycle)
            ctx.set(dut.pool_done, finish_at == cycle)
            ctx.set(dut.loads.ready, loads_ready(cycle))
            if ctx.get(dut.done):
                return events, ErrorCode(ctx.get(dut.error)), plans
            for name in ("conv_start", "pool_start", "flush"):
                if ctx.get(getattr(dut, name)):
                    events.append((cycle, name))
                    if name != "flush":
                        plans.append(unpack_payload(Plan, ctx.get(dut.plan.as_value())))
                        finish_at = cycle + engine_cycles
            if ctx.get(dut.loads.valid) and ctx.get(dut.loads.ready):
                events.append((cycle, "load", unpack_payload(LoadArgs, ctx.get(dut.loads.payload.as_value()))))
            await ctx.tick()
        raise AssertionError("the sequencer did not finish")

    result = {}

    async def top(ctx):
        result["out"] = await bench(ctx)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(sync_read(dut.prog_addr, dut.prog_en, dut.prog_data,
                              lambda a: words[a] if a < len(words) else 0))
    sim.add_testbench(top)
    sim.run()
    return result["out"]


@pytest.mark.parametrize("images, all_images", [(1, 0), (3, 0), (3, 1)])
def test_sequencer_derives_the_plan_and_starts_the_engines_on_time(images, all_images):
    # images 3: one image's view of a batch of 3 stacked maps (planes 3 image maps apart), or (all_images)
    # the CONV over the whole batch
    conv = conv_fields(CFG, ch=11, h=5, w=4, planes=2, k=3, stride=2, pad=1, o=5, wbases=2, out_planes=2,
                       images=images, all_images=all_images)
    conv["in_stride"] += 1                      # a group's slice of a wider map
    pool = pool_fields(h=6, w=6, cw=2, planes=2, kernel=2, stride=2, images=images)
    program = [encode(Opcode.CONV, **conv), encode(Opcode.POOL, **pool), encode(Opcode.END)]
    events, error, plans = run_sequencer(CFG, program, engine_cycles=7)
    assert error == ErrorCode.NONE
    # CONV: fetch .. decide; the engines start in the decide cycle, the last of the set-up.
    assert events[0] == (SETUP_CYCLES - 1, "conv_start")
    # POOL: fetched the cycle after the writer is done; its overhead less the drain runs to the
    # start (the decide cycle), and the engine's run with its drain is the rest.
    conv_end = SETUP_CYCLES - 1 + 7 + 1
    assert events[1] == (conv_end + POOL_OVERHEAD - POOL_DRAIN_CYCLES - 1, "pool_start")
    expected = conv_plan(CFG, conv)
    assert {name: plans[0][name] for name in expected} == expected
    expected = pool_plan(pool)
    assert {name: plans[1][name] for name in expected} == expected


def test_sequencer_queues_loads_under_back_pressure_and_flushes_on_error():
    load = encode(Opcode.LOAD, mem=MemoryTarget.SCALE, addr=3, count=9)
    # The queue refuses for the first 10 cycles: the LOAD holds its request until taken.
    events, error, _ = run_sequencer(CFG, [load, 9], loads_ready=lambda cycle: cycle >= 10)
    assert error == ErrorCode.ILLEGAL_OPCODE
    assert events[0] == (10, "load", {"mem": MemoryTarget.SCALE.value, "addr": 3, "count": 9})
    assert events[1][1] == "flush"
    events, error, _ = run_sequencer(CFG, [load, encode(Opcode.END)])
    assert events == [(LOAD_CYCLES - 1, "load", {"mem": MemoryTarget.SCALE.value, "addr": 3, "count": 9})]
    assert error == ErrorCode.NONE


def test_sequencer_saturates_its_products():
    """kh = kw = 1023 and in_cw = 255 over 4095 channels and 15 bases: the weight need passes 2^32 and
    saturates instead of wrapping back into range."""
    conv = conv_fields(CFG, ch=8, h=4, w=4, planes=1, k=3, stride=1, pad=0, o=2)
    conv.update(kh=1023, kw=1023, in_cw=255, in_stride=255, out_ch=4095, wbases=15)
    events, error, _ = run_sequencer(CFG, [encode(Opcode.CONV, **conv)])
    assert error in (ErrorCode.BAD_FIELD, ErrorCode.OUT_OF_RANGE)
    assert not any(name == "conv_start" for _, name, *_ in events)


PACKED_CFG = CFG.replace(word_bits=32)


def test_sequencer_plans_a_packed_conv():
    conv = packed_fields(PACKED_CFG, ch=3, h=6, w=5, k=3, stride=1, pad=1, pad_value=0)
    events, error, plans = run_sequencer(PACKED_CFG, [encode(Opcode.CONV, **conv), encode(Opcode.END)])
    assert error == ErrorCode.NONE
    assert events[0] == (SETUP_CYCLES - 1, "conv_start")
    expected = packed_plan(PACKED_CFG, conv)
    assert {name: plans[0][name] for name in expected} == expected


@pytest.mark.parametrize("changes, error", [
    ({"in_tail": 5}, ErrorCode.BAD_FIELD),                          # 8 * 5 bits do not fit a word
    ({"in_planes": 9}, ErrorCode.BAD_FIELD),
    ({"kh": 2, "kw": 3, "k": 18}, ErrorCode.BAD_FIELD),             # 6 positions < 8 planes
    ({"in_cw": 2}, ErrorCode.BAD_FIELD),                            # 9 fields need one word of 10, not 2
    ({"kh": 4, "kw": 3, "k": 36}, ErrorCode.BAD_FIELD),             # 12 fields need 2 words, in_cw 1
    ({"kh": 4, "kw": 3, "k": 36, "in_cw": 2}, ErrorCode.BAD_FIELD),  # the last word's 2 fields < 8 planes
    ({"k": 28}, ErrorCode.BAD_FIELD),
    ({"in_stride": 0}, ErrorCode.BAD_FIELD),
    ({"in_base": PACKED_CFG.act_depth - 29}, ErrorCode.OUT_OF_RANGE),   # the image map is 30 words
    ({"in_base": PACKED_CFG.act_depth - 30}, ErrorCode.NONE),
])
def test_sequencer_checks_a_packed_conv(changes, error):
    conv = dict(packed_fields(PACKED_CFG, ch=3, h=6, w=5, k=3, stride=1, pad=1, pad_value=0), **changes)
    _, got, _ = run_sequencer(PACKED_CFG, [encode(Opcode.CONV, **conv), encode(Opcode.END)])
    assert got == error


@pytest.mark.parametrize("region", ["input", "output", "result", "packed"])
def test_sequencer_checks_the_whole_batch_of_an_all_images_conv(region):
    """A CONV over all images checks the stack's regions: ending at the memory's depth passes, one word
    (entry) further fails."""
    images = 3
    if region == "packed":
        conv = packed_fields(PACKED_CFG, ch=3, h=4, w=5, k=3, stride=1, pad=1, pad_value=0, images=images)
        conv["all_images"] = 1
        cfg, plan = PACKED_CFG, packed_plan(PACKED_CFG, conv)
    else:
        conv = conv_fields(CFG, ch=11, h=4, w=3, planes=2, k=3, stride=1, pad=1, o=5, out_planes=2,
                           raw=region == "result", images=images, all_images=1)
        cfg, plan = CFG, conv_plan(CFG, conv)
    if region in ("input", "packed"):
        field, depth, end = "in_base", cfg.act_depth, plan["plane_words"] * (1 if region == "packed" else 2)
    elif region == "output":
        field, depth, end = "out_base", cfg.act_depth, plan["out_plane_words"] * 2
    else:
        field, depth, end = "out_base", cfg.result_depth, plan["res_need"]
    for base, error in ((depth - end, ErrorCode.NONE), (depth - end + 1, ErrorCode.OUT_OF_RANGE)):
        program = [encode(Opcode.CONV, **dict(conv, **{field: base})), encode(Opcode.END)]
        assert run_sequencer(cfg, program)[1] == error, (region, base)


def test_sequencer_refuses_a_shortcut_before_a_packed_conv():
    conv = packed_fields(PACKED_CFG, ch=3, h=6, w=5, k=3, stride=1, pad=1, pad_value=0)
    shortcut = {name: conv[name] for name, _ in ShortcutArgs}
    shortcut.update(in_cw=1, in_tail=8, k=72)          # a valid second source over an 8-channel map
    _, error, _ = run_sequencer(PACKED_CFG, [encode(Opcode.SHORTCUT, **shortcut), encode(Opcode.CONV, **conv),
                                             encode(Opcode.END)])
    assert error == ErrorCode.BAD_FIELD


# ---------------------------------------------------------------- Gather

def gather_model(cfg, f, act):
    """The words of each output pixel's receptive field, in (n, ky, kx, cw) order."""
    W = cfg.word_bits
    plan = conv_plan(cfg, f)
    pad_word = (1 << W) - 1 if f["pad_value"] else 0
    fields = []
    for p in range(plan["npix"]):
        image, p = divmod(p, f["out_h"] * f["out_w"])          # all_images: the image's own pixel
        oy, ox = divmod(p, f["out_w"])
        base = f["in_base"] + image * plan["image_words"]
        words = []
        for n in range(f["in_planes"]):
            for ky in range(f["kh"]):
                for kx in range(f["kw"]):
                    y, x = oy * f["stride"] - f["pad"] + ky, ox * f["stride"] - f["pad"] + kx
                    for cw in range(f["in_cw"]):
                        if 0 <= y < f["in_h"] and 0 <= x < f["in_w"]:
                            words.append(act[base + n * plan["plane_words"] + y * plan["row_words"]
                                             + x * f["in_stride"] + cw])
                        else:
                            words.append(pad_word)
        fields.append(words)
    return fields


@pytest.mark.parametrize("shape", [
    # ch, h, w, planes, k, stride, pad, pad_value, images, all_images: npix not a multiple of C, K not a
    # multiple of W; images > 1: one image's view of a batch (planes `images` maps apart), or the CONV
    # over every image (a tile holding two images' pixels)
    (11, 5, 4, 2, 3, 2, 1, 1, 1, 0),
    (8, 4, 4, 1, 3, 1, 1, 0, 1, 0),
    (20, 3, 5, 3, 1, 1, 0, 0, 1, 0),
    (3, 7, 7, 1, 3, 2, 2, 1, 1, 0),
    (11, 5, 4, 3, 3, 1, 1, 0, 3, 0),
    (11, 3, 2, 2, 3, 1, 1, 1, 3, 1),
    (8, 4, 5, 1, 3, 2, 1, 0, 2, 1),
])
def test_gather_fills_the_banks_with_receptive_fields(shape):
    ch, h, w, planes, k, stride, pad, pad_value, images, all_images = shape
    cfg = CFG
    f = conv_fields(cfg, ch=ch, h=h, w=w, planes=planes, k=k, stride=stride, pad=pad, o=3, pad_value=pad_value,
                    images=images, all_images=all_images)
    plan = conv_plan(cfg, f)
    rng = np.random.default_rng(sum(shape))
    act = [int(v) for v in rng.integers(0, 1 << cfg.word_bits, cfg.act_depth)]
    expected = gather_model(cfg, f, act)
    words_per_pixel = len(expected[0])
    dut = GatherEngine(cfg)
    got = []

    async def bench(ctx):
        await start_engine(ctx, dut, dut.conv, ConvArgs, f, plan)
        got.extend(await read_tiles(ctx, dut, cfg, _ceil(plan["npix"], cfg.cols), words_per_pixel, rng))

    simulate(dut, bench, sync_read(dut.act_addr, dut.act_en, dut.act_data, lambda a: act[a]))
    assert got[:plan["npix"]] == expected


def packed_fields(cfg, *, ch, h, w, k, stride, pad, pad_value, planes=8, images=1):
    """A packed CONV's fields (docs/isa.md "Packed image input"): one pixel word, in_cw = the patch words
    of one plane's field, F = W // ch fields a word."""
    fpw = cfg.word_bits // ch
    f = conv_fields(cfg, ch=ch, h=h, w=w, planes=planes, k=k, stride=stride, pad=pad, o=3, pad_value=pad_value,
                    images=images)
    return dict(f, in_cw=_ceil(k * k, fpw), in_stride=1, in_tail=ch, packed=1)


def packed_plan(cfg, f):
    """conv_plan for a packed CONV: its K-words are in_cw, its in_need in_cw * F."""
    kwords = f["in_cw"]
    plan = conv_plan(cfg, dict(f, in_cw=1))
    otm = plan["otm"]
    return dict(plan, kwords=kwords, kwords_m1=kwords - 1, cw_m1=kwords - 1, patch_need=kwords * f["in_planes"],
                w_need=kwords * otm, in_need=f["in_cw"] * (cfg.word_bits // f["in_tail"]),
                fpw=cfg.word_bits // f["in_tail"])


def packed_model(cfg, f, act):
    """Each output pixel's patch words: plane n's fields (bit 8ch + n of each position's pixel word),
    F to a word, the word's first field at its top."""
    W, c = cfg.word_bits, f["in_tail"]
    fpw = W // c
    pad_word = (1 << W) - 1 if f["pad_value"] else 0
    patches = []
    for p in range(f["out_h"] * f["out_w"]):
        oy, ox = divmod(p, f["out_w"])
        pixels = []
        for ky in range(f["kh"]):
            for kx in range(f["kw"]):
                y, x = oy * f["stride"] - f["pad"] + ky, ox * f["stride"] - f["pad"] + kx
                inside = 0 <= y < f["in_h"] and 0 <= x < f["in_w"]
                pixels.append(act[f["in_base"] + (y * f["in_w"] + x) * f["in_stride"]] if inside else pad_word)
        words = []
        for n in range(f["in_planes"]):
            fields = [sum(((px >> (8 * ch + n)) & 1) << ch for ch in range(c)) for px in pixels]
            for j in range(f["in_cw"]):
                chunk = fields[j * fpw:(j + 1) * fpw]
                t = len(chunk)
                words.append(sum(v << ((t - 1 - q) * c) for q, v in enumerate(chunk)))
        patches.append(words)
    return patches


async def read_tiles(ctx, dut, cfg, tiles, words_per_pixel, rng):
    """The issue engine's side of the gather: each tile's words of every column once its bank shows
    full (after a random wait, none when `rng` is None), then the bank freed; nothing more is gathered
    afterwards."""
    got = []
    for _ in range(tiles):
        await ctx.tick().until(dut.tiles.valid)
        for _ in range(0 if rng is None else int(rng.integers(0, 30))):    # the issue engine is busy elsewhere
            await ctx.tick()
        bank = ctx.get(dut.tiles.payload)
        tile = [[] for _ in range(cfg.cols)]
        for i in range(words_per_pixel):
            ctx.set(dut.patch_addr, bank * cfg.patch_depth + i)
            ctx.set(dut.patch_en, 1)
            await ctx.tick()
            ctx.set(dut.patch_en, 0)
            for c in range(cfg.cols):
                tile[c].append(ctx.get(dut.patch_data[c]))
        got.extend(tile)
        ctx.set(dut.tiles.ready, 1)
        await ctx.tick()
        ctx.set(dut.tiles.ready, 0)
    for _ in range(50):
        assert not ctx.get(dut.tiles.valid)
        await ctx.tick()
    return got


@pytest.mark.parametrize("shape", [
    # W, ch, h, w, k, stride, pad, pad_value, images, wait: F = W // ch fields a word; 7 x 7 x 3 in 5
    # words (the last of 9 fields); a batch view; wait 0: the issue engine reads the bank the cycle it
    # shows full
    (32, 3, 6, 5, 3, 1, 1, 0, 1, True),
    (32, 3, 9, 8, 7, 2, 3, 1, 1, False),
    (32, 2, 5, 5, 3, 2, 1, 1, 2, False),
    (32, 1, 6, 6, 3, 1, 0, 0, 1, False),
    (16, 1, 5, 4, 3, 1, 1, 1, 1, False),
    (16, 2, 4, 6, 4, 1, 2, 0, 1, True),          # 16 fields: two words of 8
])
def test_gather_packs_an_image_map(shape):
    W, ch, h, w, k, stride, pad, pad_value, images, wait = shape
    cfg = CFG.replace(word_bits=W, rows=2, cols=3)
    f = packed_fields(cfg, ch=ch, h=h, w=w, k=k, stride=stride, pad=pad, pad_value=pad_value, images=images)
    plan = packed_plan(cfg, f)
    rng = np.random.default_rng(sum(shape))
    act = [int(v) for v in rng.integers(0, 1 << W, cfg.act_depth)]
    expected = packed_model(cfg, f, act)
    dut = GatherEngine(cfg)
    got = []

    async def bench(ctx):
        await start_engine(ctx, dut, dut.conv, ConvArgs, f, plan)
        got.extend(await read_tiles(ctx, dut, cfg, _ceil(plan["npix"], cfg.cols), len(expected[0]),
                                    rng if wait else None))

    simulate(dut, bench, sync_read(dut.act_addr, dut.act_en, dut.act_data, lambda a: act[a]))
    assert got[:plan["npix"]] == expected


# ---------------------------------------------------------------- Issue

def weight_word(addr, r):
    return (addr * 7 + r * 3) & 0xFF


def patch_word(addr, c):
    return (addr * 5 + c * 11 + 1) & 0xFF


def test_issue_streams_every_pass_of_every_tile():
    cfg = CFG
    R, C, W = cfg.rows, cfg.cols, cfg.word_bits
    f = conv_fields(cfg, ch=11, h=5, w=4, planes=2, k=2, stride=1, pad=0, o=5, wbases=2, w_base=9,
                    s_base=4, t_base=6)
    plan = conv_plan(cfg, f)
    kwords = plan["kwords"]
    banks = [0, 1, 0]
    expected = []
    for bank in banks:
        base = bank * cfg.patch_depth
        s = f["s_base"]
        for ot in range(plan["out_tiles"]):
            for mb in range(f["wbases"]):
                for nb in range(f["in_planes"]):
                    for j in range(kwords):
                        waddr = f["w_base"] + (ot * f["wbases"] + mb) * kwords + j
                        paddr = base + nb * kwords + j
                        expected.append({
                            "w": [weight_word(waddr, r) for r in range(R)],
                            "a": [patch_word(paddr, c) for c in range(C)],
                            "nbits": f["in_tail"] if j % f["in_cw"] == f["in_cw"] - 1 else W,
                            "first": int(j == 0), "last": int(j == kwords - 1),
                            "info": {"k": f["k"], "first_pass": int(mb == 0 and nb == 0),
                                     "last_pass": int(mb == f["wbases"] - 1 and nb == f["in_planes"] - 1),
                                     "raw": 0, "scale_addr": s, "thr_addr": f["t_base"] + ot * R},
                        })
                    s += 1
    dut = IssueEngine(cfg)
    lay = dut.layouts
    rng = np.random.default_rng(3)
    got, taken = [], []

    async def tiles(ctx):
        set_struct(ctx, dut.conv, ConvArgs, f)
        set_struct(ctx, dut.plan, Plan, plan)
        ctx.set(dut.active, 1)
        for bank in banks:
            ctx.set(dut.tiles.payload, bank)
            ctx.set(dut.tiles.valid, 1)
            await ctx.tick().until(dut.tiles.ready)
            taken.append(len(got))
            ctx.set(dut.tiles.valid, 0)
            for _ in range(int(rng.integers(0, 5))):
                await ctx.tick()

    async def core(ctx):
        while len(got) < len(expected):
            ready = rng.random() < 0.7
            ctx.set(dut.beats.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.beats.valid, dut.beats.payload.as_value())
            if valid and ready:
                got.append(unpack_payload(lay.beat, payload))
        ctx.set(dut.beats.ready, 1)
        for _ in range(20):                                 # no beat without a tile
            _, _, valid = await ctx.tick().sample(dut.beats.valid)
            assert not valid

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(sync_read(dut.weight_addr, dut.weight_en, dut.weight_data.as_value(),
                              lambda a: sum(weight_word(a, r) << (r * W) for r in range(R))))
    sim.add_process(sync_read(dut.patch_addr, dut.patch_en, dut.patch_data.as_value(),
                              lambda a: sum(patch_word(a, c) << (c * W) for c in range(C))))
    sim.add_testbench(tiles)
    sim.add_testbench(core)
    sim.run()
    assert got == expected
    # A tile is released once its last word is read, before its last beats reach the core.
    per_tile = len(expected) // len(banks)
    assert all(per_tile * (i + 1) - 3 <= t <= per_tile * (i + 1) for i, t in enumerate(taken))


# ---------------------------------------------------------------- Writer

@pytest.mark.parametrize("raw, images", [(True, 1), (False, 1), (False, 3)])
def test_writer_places_every_result(raw, images):
    cfg = CFG
    R, C, W = cfg.rows, cfg.cols, cfg.word_bits
    # 7 pixels (not a multiple of C), 5 channels (not a multiple of R) from channel 2 of the map;
    # images 3: the output planes of one image's view of 3 stacked maps.
    f = conv_fields(cfg, ch=8, h=7, w=1, planes=1, k=1, stride=1, pad=0, o=5, raw=raw, out_planes=2,
                    out_ch_base=0 if raw else 2, out_base=40, images=images)
    plan = conv_plan(cfg, f)
    rng = np.random.default_rng(5 + raw)
    n_tiles = _ceil(plan["npix"], C)
    acc = rng.integers(-1000, 1000, (n_tiles, plan["out_tiles"], R, C))
    bits = rng.integers(0, 1 << cfg.max_abases, (n_tiles, plan["out_tiles"], R, C))
    dut = WriterEngine(cfg)
    lay = dut.layouts
    result_mem, act_mem = {}, {}

    async def core(ctx):
        await start_engine(ctx, dut, dut.conv, ConvArgs, f, plan)
        for tile in range(n_tiles):
            for ot in range(plan["out_tiles"]):
                for r in range(R):
                    for _ in range(int(rng.integers(0, 3))):
                        await ctx.tick()
                    ctx.set(dut.results.payload.as_value(), pack_payload(lay.result, {
                        "acc": [int(v) for v in acc[tile, ot, r]], "bits": [int(v) for v in bits[tile, ot, r]],
                        "row": r, "last": int(r == R - 1), "raw": int(raw)}))
                    ctx.set(dut.results.valid, 1)
                    await ctx.tick().until(dut.results.ready)
                    ctx.set(dut.results.valid, 0)
        for _ in range(LIMIT):
            if ctx.get(dut.done):
                return
            await ctx.tick()
        raise AssertionError("the writer did not finish")

    async def memories(ctx):
        async for _, _, en, addr, data, aen, aaddr, adata in ctx.tick().sample(
                dut.res_en, dut.res_addr, dut.res_data, dut.act_en, dut.act_addr, dut.act_data):
            if en:
                assert addr not in result_mem, addr
                result_mem[addr] = data
            for g in range(W // R):
                if (aen >> g) & 1:
                    key = (aaddr, g)
                    assert key not in act_mem, key
                    act_mem[key] = (adata >> (g * R)) & ((1 << R) - 1)

    simulate(dut, core, memories)
    expected_res, expected_act = {}, {}
    for p in range(plan["npix"]):
        tile, c = divmod(p, C)
        for o in range(f["out_ch"]):
            ot, r = divmod(o, R)
            if raw:
                expected_res[f["out_base"] + p * f["out_ch"] + o] = int(acc[tile, ot, r, c])
            else:
                ch = f["out_ch_base"] + o
                for t in range(f["out_planes"]):
                    key = (f["out_base"] + t * plan["out_plane_words"] + p * f["out_stride"] + ch // W,
                           (ch % W) // R)
                    field = expected_act.setdefault(key, 0)
                    expected_act[key] = field | (((int(bits[tile, ot, r, c]) >> t) & 1) << (ch % R))
    if raw:
        assert result_mem == expected_res and not act_mem
    else:
        # A field's channels past out_ch are written as 0 (the tile's padding rows).
        assert act_mem == expected_act and not result_mem


# ---------------------------------------------------------------- Pool

@pytest.mark.parametrize("images", [1, 2])
def test_pool_ors_every_window(images):
    cfg = CFG
    f = pool_fields(h=7, w=5, cw=2, planes=2, kernel=3, stride=2, in_base=9, out_base=600, images=images)
    plan = pool_plan(f)
    rng = np.random.default_rng(9)
    act = [int(v) for v in rng.integers(0, 1 << cfg.word_bits, cfg.act_depth)]
    dut = PoolEngine(cfg)
    writes, done = {}, []

    async def bench(ctx):
        await start_engine(ctx, dut, dut.pool, PoolArgs, f, plan, active=False)
        for cycle in range(LIMIT):
            _, _, d, en, addr, data = await ctx.tick().sample(dut.done, dut.act_w_en, dut.act_w_addr,
                                                              dut.act_w_data)
            if en:
                assert en == (1 << (cfg.word_bits // cfg.rows)) - 1 and addr not in writes
                writes[addr] = data
            if d:
                done.append(cycle)
                break
        for _ in range(10):
            _, _, d, en = await ctx.tick().sample(dut.done, dut.act_w_en)
            assert not d and not en

    simulate(dut, bench, sync_read(dut.act_r_addr, dut.act_r_en, dut.act_r_data, lambda a: act[a]))
    expected = {}
    for t in range(f["planes"]):
        for py in range(f["out_h"]):
            for px in range(f["out_w"]):
                for cw in range(f["cw"]):
                    v = 0
                    for ky in range(f["kernel"]):
                        for kx in range(f["kernel"]):
                            v |= act[f["in_base"] + t * plan["p_plane"] + (py * f["stride"] + ky) * plan["p_row"]
                                     + (px * f["stride"] + kx) * f["cw"] + cw]
                    # plane t of one image's view of `images` stacked maps starts t * images maps on
                    expected[f["out_base"] + ((t * images * f["out_h"] + py) * f["out_w"] + px) * f["cw"]
                             + cw] = v
    assert writes == expected
    windows = f["planes"] * f["out_h"] * f["out_w"] * f["cw"] * f["kernel"] ** 2
    assert done == [windows + 1]      # one read a window word, then the OR registered, then written


# ---------------------------------------------------------------- Load

def test_load_engine_writes_queued_loads_in_order():
    dut = LoadEngine(CFG, data_bits=40)
    rng = np.random.default_rng(2)
    loads = [(MemoryTarget.WEIGHT, 10, 3), (MemoryTarget.SCALE, 0, 1), (MemoryTarget.THRESHOLD, 5, 4),
             (MemoryTarget.WEIGHT, 100, 6), (MemoryTarget.SCALE, 7, 2), (MemoryTarget.WEIGHT, 0, 2)]
    entries = [int(v) for v in rng.integers(0, 1 << 40, sum(c for _, _, c in loads), dtype=np.int64)]
    expected = [(mem.value, addr + i) for mem, addr, count in loads for i in range(count)]
    writes = []

    async def queue(ctx):
        for mem, addr, count in loads:
            for _ in range(int(rng.integers(0, 4))):
                await ctx.tick()
            ctx.set(dut.queue.payload.as_value(), pack_payload(LoadArgs, {"mem": mem.value, "addr": addr,
                                                                          "count": count}))
            ctx.set(dut.queue.valid, 1)
            await ctx.tick().until(dut.queue.ready)
            ctx.set(dut.queue.valid, 0)

    async def stream(ctx):
        for value in entries:
            for _ in range(int(rng.integers(0, 3))):
                await ctx.tick()
            ctx.set(dut.entries.payload.data, value)
            ctx.set(dut.entries.valid, 1)
            await ctx.tick().until(dut.entries.ready)
            ctx.set(dut.entries.valid, 0)
        for _ in range(3):
            await ctx.tick()
        assert ctx.get(dut.idle)

    async def memory(ctx):
        async for _, _, en, write in ctx.tick().sample(dut.write_en, dut.write.as_value()):
            if en:
                writes.append(unpack_payload(dut.write_layout, write))

    simulate(dut, stream, memory, queue)
    assert [(w["mem"], w["addr"]) for w in writes] == expected
    assert [w["data"] for w in writes] == entries


def test_load_engine_flush_drops_the_queue():
    dut = LoadEngine(CFG, data_bits=16)
    writes = []

    async def bench(ctx):
        for addr in (0, 8, 16):
            ctx.set(dut.queue.payload.as_value(), pack_payload(LoadArgs, {"mem": MemoryTarget.WEIGHT.value,
                                                                          "addr": addr, "count": 8}))
            ctx.set(dut.queue.valid, 1)
            await ctx.tick().until(dut.queue.ready)
        ctx.set(dut.queue.valid, 0)
        assert not ctx.get(dut.idle)
        ctx.set(dut.flush, 1)
        await ctx.tick()
        ctx.set(dut.flush, 0)
        ctx.set(dut.entries.valid, 1)       # entries on offer: none is taken after the flush
        for _ in range(20):
            assert ctx.get(dut.idle) and not ctx.get(dut.entries.ready)
            await ctx.tick()

    async def memory(ctx):
        async for _, _, en in ctx.tick().sample(dut.write_en):
            if en:
                writes.append(1)

    simulate(dut, bench, memory)
    assert writes == []


# ---------------------------------------------------------------- Arbiter

def test_arbiter_grants_by_name_order_and_flags_collisions():
    """Reads are granted in the cycle of their request, writes reach the port registered (the cycle
    after), both by the order of the names; two requests on one port raise `collision`."""
    readers, writers = ("host", "gather", "pool"), ("host", "writer", "pool")
    dut = ActBufferArbiter(CFG, readers=readers, writers=writers)
    rng = np.random.default_rng(4)
    granule_mask = (1 << (CFG.word_bits // CFG.rows)) - 1

    async def bench(ctx):
        granted = None                       # the write granted last cycle: it reaches the port now
        for _ in range(300):
            reads = {n: (int(rng.integers(CFG.act_depth)), int(rng.random() < 0.4)) for n in readers}
            writes = {n: (int(rng.integers(CFG.act_depth)), int(rng.integers(256)),
                          int(rng.integers(0, granule_mask + 1)) if rng.random() < 0.4 else 0) for n in writers}
            for n, (addr, en) in reads.items():
                ctx.set(getattr(dut, f"r_{n}").addr, addr)
                ctx.set(getattr(dut, f"r_{n}").en, en)
            for n, (addr, data, en) in writes.items():
                port = getattr(dut, f"w_{n}")
                ctx.set(port.addr, addr)
                ctx.set(port.data, data)
                ctx.set(port.en, en)
            await ctx.delay(1e-9)
            read_en = [n for n in readers if reads[n][1]]
            write_en = [n for n in writers if writes[n][2]]
            assert ctx.get(dut.read.en) == bool(read_en)
            if read_en:
                assert ctx.get(dut.read.addr) == reads[read_en[0]][0]
            assert ctx.get(dut.write.en) == (granted[2] if granted else 0)
            if granted:
                assert (ctx.get(dut.write.addr), ctx.get(dut.write.data)) == granted[:2]
            assert ctx.get(dut.collision) == (len(read_en) > 1 or len(write_en) > 1)
            await ctx.tick()
            granted = writes[write_en[0]] if write_en else None

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_arbiter_needs_distinct_names():
    with pytest.raises(ValueError, match=r"Each reader must have a distinct name, not \('a', 'a'\)"):
        ActBufferArbiter(CFG, readers=("a", "a"), writers=("b",))
    with pytest.raises(ValueError, match=r"Each writer must have a distinct name, not \(\)"):
        ActBufferArbiter(CFG, readers=("a",), writers=())


def test_setup_schedule_respects_every_product_it_reads():
    """The pipelined set-up starts a step a cycle: each starts PRODUCT_CYCLES after every step whose
    result it reads (names and the plan fields a function operand reads), rewrites of one destination
    keep their order, every step runs once, and idle cycles appear only when nothing is ready."""
    from hw.controller.plan import (CONV_SETUP_STEPS, POOL_SETUP_STEPS, PRODUCT_CYCLES, SHORTCUT_SETUP_STEPS,
                                    schedule)
    chained = (("a", "x", "y"), ("b", "a", "y"), ("c", "b", "a"), ("d", "x", lambda a, p, c: p.a))
    for steps in (CONV_SETUP_STEPS, SHORTCUT_SETUP_STEPS, POOL_SETUP_STEPS, chained):
        slots = schedule(steps)
        assert sorted(map(id, (s for s in slots if s is not None))) == sorted(map(id, steps))
        dests = {d for d, _, _ in steps}
        written = {}                                  # dest -> slot of its latest write so far
        for slot, step in enumerate(slots):
            if step is None:
                continue
            dest, a, b = step
            reads = {x for x in (a, b) if isinstance(x, str)} | \
                {n for x in (a, b) if callable(x) for n in x.__code__.co_names}
            for name in reads & dests:
                assert name in written and slot >= written[name] + PRODUCT_CYCLES, (dest, name)
            written[dest] = slot
        assert [s for s in steps if s[0] == "p_out_plane"] == \
            [s for s in slots if s is not None and s[0] == "p_out_plane"]
    # b and d (through a function of the plan) wait for a, c for b: d fills one of b's idle slots
    assert [s and s[0] for s in schedule(chained)] == ["a", None, None, "b", "d", None, "c"]


def test_check_ready_refuses_a_product_written_in_the_setups_last_cycle():
    """The checks compare registered sums (CHECK_LEAD cycles of lead): a product written in the
    set-up's last cycle would reach CHECK through a stale sum, so check_ready refuses it; the
    sequencer's own step lists pass (it elaborates) and their last slots are no check's operands."""
    from hw.controller.plan import CHECK_LEAD, POOL_SETUP_STEPS, check_ready, schedule, setup_cycles
    assert CHECK_LEAD == 1
    steps = (("a", "x", "y"), ("b", "a", "y"), ("c", "x", "y"))
    assert [s and s[0] for s in schedule(steps)] == ["a", "c", None, "b"]
    assert setup_cycles(steps) == 6
    check_ready(steps, ("a", "c"))               # readable from cycles 3 and 4: sums registered by 5
    with pytest.raises(ValueError, match="'b' is written in the set-up's last 1 cycle"):
        check_ready(steps, ("a", "b"))
    with pytest.raises(ValueError, match="'z' is not a product"):
        check_ready(steps, ("z",))
    last = [s for s in schedule(POOL_SETUP_STEPS) if s is not None][-1][0]
    with pytest.raises(ValueError, match=f"'{last}' is written in the set-up's last"):
        check_ready(POOL_SETUP_STEPS, (last,))
    Sequencer(CFG).elaborate(None)
