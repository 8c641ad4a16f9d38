"""sw.compile: random models run on the ISS bit-exactly like deploy_forward; refusals name the layer,
the limit and the excess."""

import itertools

import numpy as np
import pytest

from hw.config import AccelConfig
from sw.compile import CompileError, compile_model
from sw.compile.testing import conv, linear, maxpool, random_model, shortcut
from sw.iss import END_CYCLES, layer_report
from sw.model_format import deploy_forward
from hw.isa import Opcode, decode
from sw.runtime import open_backend, run_inputs

BIG = dict(scale_depth=2048, thr_depth=2048, weight_depth=8192, act_depth=16384, patch_depth=1024)

CASES = {
    # stride 2 with -1 padding, +1 padding, channels and K off the array and word sizes, M = N = 3, pool.
    "cnn": ((1, 12, 12), AccelConfig(**BIG), [
        conv(8, 3, stride=2, padding=1), conv(13, 3, padding=1, pad_value=1, wbases=3, planes=3),
        maxpool(2), conv(6, 2, stride=1, planes=2, wbases=2), linear(10)]),
    # grouped convolution (groups of 32 input channels), pooling with stride < kernel, FC head.
    "grouped": ((3, 9, 9), AccelConfig(**BIG), [
        conv(64, 3, padding=1, planes=2), conv(72, 3, stride=2, padding=1, groups=2, wbases=2, planes=2),
        maxpool(3, 2), linear(17, wbases=3), linear(10)]),
    # Group-Net: branches with one source merge into weight bases.
    "branches": ((1, 8, 8), AccelConfig(**BIG), [
        conv(12, 3, padding=1, branches=3), conv(9, 3, branches=2, wbases=2, planes=2), linear(7, branches=2)]),
    # LFC-like MLP with multi-basis layers; the first linear layer is a whole-image unfold.
    "mlp": ((1, 8, 8), AccelConfig(**BIG), [
        linear(70, wbases=2, planes=3), linear(33, wbases=3, planes=2), linear(40, planes=1), linear(10)]),
    # A last convolution that yields a 1x1 map; another array shape and word width.
    "conv-head": ((2, 7, 7), AccelConfig(rows=8, cols=3, word_bits=16, **BIG), [
        conv(20, 3, stride=2, padding=1, pad_value=1, planes=2), conv(24, 4, wbases=2)]),
    # W = 100: words of two uint64 limbs.
    "wide-words": ((3, 6, 6), AccelConfig(rows=4, cols=5, word_bits=100, max_k=8192, acc_bits=40, **BIG), [
        conv(200, 3, padding=1, planes=2), conv(136, 3, stride=2, groups=2, wbases=2), maxpool(2),
        linear(10)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_iss_logits_equal_deploy_forward(case):
    shape, config, specs = CASES[case]
    model = random_model(specs, shape, config, seed=len(case))
    bundle = compile_model(model, config)
    assert "verify: ISS == deploy_forward at every layer on 2 random images" in bundle.model["checked"]
    images = np.random.default_rng(1).integers(0, 256, (9,) + shape, dtype=np.uint8)
    _, trace = deploy_forward(model, images, intermediates=True)
    for planes in trace[:-1]:   # the generator's thresholds make every hidden map non-constant
        assert 0.05 < (planes > 0).mean() < 0.95
    result = open_backend("iss", bundle, batch=4).run(images)
    assert result.logits.dtype == np.int64
    assert np.array_equal(result.logits, deploy_forward(model, images))
    assert result.cycles.shape == (9,) and result.layer_cycles.shape == (9, len(model.layers))
    assert np.all(result.layer_cycles.sum(axis=1) + END_CYCLES == result.cycles)


def test_layer_metadata_counts_macs_and_ideal_cycles():
    config = AccelConfig()
    model = random_model([conv(8, 3, padding=1), maxpool(2), linear(10)], (1, 8, 8), config)
    bundle = compile_model(model, config)
    names = [layer["name"] for layer in bundle.layers]
    assert names == ["layer 0 (conv)", "layer 1 (maxpool)", "layer 2 (linear)"]
    conv0, pool, fc = bundle.layers
    assert conv0["macs"] == 1 * 8 * 8 * 64 * 9          # M N O P K (8 pixel planes, K = 1*3*3)
    assert fc["macs"] == 1 * 1 * 10 * 1 * (8 * 4 * 4)
    assert pool["macs"] == 0
    assert conv0["ideal_cycles"] == -(-conv0["macs"] // (4 * 4 * 32))
    # The first layer's K (9) is far below W and R: three plane groups (1+2+4 repeats of K0, the
    # last group of two planes filled with cancelling blocks) make 3 passes of 2 words, not 8 of 1.
    assert bundle.input == {"mode": "unfold", "shape": [1, 8, 8], "kernel": [3, 3], "stride": 1, "padding": 1,
                            "pad_value": -1, "out_h": 8, "out_w": 8, "planes": 8, "k": 9, "groups": [[0, 3], [3, 3], [6, 2]],
                            "group_k": 63, "words_per_pixel": 2, "input_words": 3 * 64 * 2, "act_base": 0}
    assert bundle.output == {"result_base": 0, "classes": 10}


# Refusals ------------------------------------------------------------------------------------------

def _refusal(specs, shape=(1, 8, 8), config=None, model_config=None, options=None, **changes):
    config = config or AccelConfig()
    model = random_model(specs, shape, model_config or config)
    with pytest.raises(CompileError) as info:
        compile_model(model, config.replace(**changes) if changes else config, **(options or {}))
    return str(info.value)


@pytest.mark.parametrize("specs, changes, message", [
    ([linear(300), linear(10)], {"weight_depth": 100},
     "layer 0 (linear): weight-buffer entries used up to this layer = 150 exceeds weight_depth = 100 by 50; "
     "streamed layer by layer, layer 0 (linear) would need 150 weight-buffer entries, over half of "
     "weight_depth = 50"),
    ([linear(20), linear(300), linear(10)], {"scale_depth": 85},
     "layer 1 (linear): scale-memory entries used up to this layer = 115 exceeds scale_depth = 85 by 30; "
     "streamed layer by layer, layer 1 (linear) would need 75 scale-memory entries, over half of scale_depth = 42"),
    ([linear(20), linear(300), linear(10)], {"thr_depth": 300},
     "layer 1 (linear): threshold-memory entries used up to this layer = 320 exceeds thr_depth = 300 by 20; "
     "streamed layer by layer, layer 1 (linear) would need 300 threshold-memory entries, over half of "
     "thr_depth = 150"),
    ([linear(20), linear(100)], {"result_depth": 64},
     "layer 1 (linear): result-memory entries of the logits = 100 exceeds result_depth = 64 by 36"),
    ([conv(8, 3, padding=1), linear(10)], {"patch_depth": 40},
     "layer 1 (linear): patch words (1 planes x 64 K-words) = 64 exceeds patch_depth = 40 by 24"),
    ([linear(8)] * 5 + [linear(10)], {"instr_depth": 4},
     "program: instructions (with END) = 7 exceeds instr_depth = 4 by 3"),
    ([conv(80, 3, padding=1), linear(10)], {"act_depth": 16384, "weight_depth": 8192},
     "layer 1 (linear): K (bits of one dot product) = 5120 exceeds max_k = 4096 by 1024"),
])
def test_refuses_a_network_that_does_not_fit(specs, changes, message):
    assert _refusal(specs, **changes) == message


def test_refuses_activation_words_of_either_input():
    specs = [conv(64, 3, padding=1), conv(64, 3, padding=1), linear(10)]
    assert _refusal(specs, act_depth=380, options={"input": "unfold"}) == \
        "layer 0 (conv): activation words of the input map = 512 exceeds act_depth = 380 by 132"
    assert _refusal(specs, act_depth=150, options={"input": "packed"}) == \
        "layer 0 (conv): activation words of its output map and the maps still live (128 + 64) = 192 exceeds " \
        "act_depth = 150 by 42"
    # auto: the refusal is the packed program's (the fewest activation words), not the unfold's tried after it
    assert _refusal(specs, act_depth=150) == \
        "layer 0 (conv): activation words of its output map and the maps still live (128 + 64) = 192 exceeds " \
        "act_depth = 150 by 42"
    # where the grouped planes' unfolded input does not fit, the 64-word image map does
    model = random_model(specs, (1, 8, 8), AccelConfig())
    assert compile_model(model, AccelConfig(act_depth=380)).input["mode"] == "packed"


def test_refuses_bases_past_the_config():
    assert _refusal([conv(8, 3, branches=3), linear(10)], config=AccelConfig(max_wbases=2),
                    model_config=AccelConfig()) == \
        "layer 0 (conv): weight bases of 3 merged branches = 3 exceeds max_wbases = 2 by 1"
    assert _refusal([linear(16, wbases=3), linear(10)], config=AccelConfig(max_wbases=2),
                    model_config=AccelConfig()) == \
        "layer 0 (linear): weight bases = 3 exceeds max_wbases = 2 by 1"
    assert _refusal([linear(16, planes=3), linear(10)], config=AccelConfig(max_abases=2),
                    model_config=AccelConfig()) == \
        "layer 0 (linear): output bit-planes = 3 exceeds max_abases = 2 by 1"


def test_refuses_instruction_fields_that_overflow():
    config = AccelConfig(max_k=8192, weight_depth=8192, thr_depth=8192, scale_depth=16384)
    model = random_model([linear(4100), linear(10)], (1, 8, 8), config)
    with pytest.raises(CompileError) as info:
        compile_model(model, config, verify_images=0)
    assert str(info.value) == "layer 0 (linear): instruction field out_ch = 4100 exceeds its largest value = 4095 by 5"


def test_refuses_accumulator_overflow_and_other_fixed_point_formats():
    config = AccelConfig(acc_bits=30, scale_depth=8192, thr_depth=4096)
    model = random_model([linear(2048, planes=4), linear(10, wbases=4)], (1, 8, 8), config)
    model.layers[1]["branches"][0]["scales"][:] = 32767
    with pytest.raises(CompileError) as info:
        compile_model(model, config)
    # 4 x 4 basis pairs x 32767 x K = 2048
    assert str(info.value) == "layer 1 (linear): accumulator bound = 1073709056 exceeds the 30-bit " \
                              "accumulator's limit = 536870911 by 536838145"
    with pytest.raises(CompileError) as info:
        compile_model(random_model([linear(10)], (1, 8, 8), AccelConfig()), AccelConfig(acc_bits=40))
    assert str(info.value) == "model: it was exported for acc_bits = 32, the config has acc_bits = 40; " \
                              "re-export it for this config"


def test_refuses_unsupported_layers():
    config = AccelConfig()
    assert _refusal([conv(48, 3, padding=1), conv(48, 3, padding=1, groups=3),
                     conv(48, 3, padding=1, groups=2, source=0), linear(10)], shape=(1, 6, 6)) == \
        "layer 2 (conv): it reads layer 0's map in 2 groups of 24 channels, another reader in 3 groups"
    assert _refusal([conv(64, 3, padding=1), conv(18, 3, groups=2), linear(10)], shape=(1, 6, 6),
                    act_depth=8192) == \
        "layer 1 (conv): a group's 9 output channels are not a multiple of rows 4 (each group must start " \
        "on a writer field)"
    model = random_model([conv(8, 3, padding=1, groups=2), linear(10)], (2, 6, 6), config)
    with pytest.raises(CompileError) as info:
        compile_model(model, config)
    assert str(info.value) == "layer 0 (conv): a grouped first layer is not supported (the host unfolds the " \
                              "image into one dense vector per pixel)"
    # a later branch reading the image
    model = random_model([conv(8, 3, padding=1), conv(8, 3, padding=1, branches=2), linear(10)], (1, 6, 6), config)
    model.layers[1]["branches"][1].update(source=-1, abases=8)
    with pytest.raises(CompileError) as info:
        compile_model(model, config)
    assert str(info.value) == "layer 1 (conv): branch 1 reads the image; only layer 0 reads it (its first " \
                              "CONV reads the image map or the host's unfold of it)"
    # three sources summed into one layer
    model = random_model([conv(8, 3, padding=1), conv(8, 3, padding=1), conv(8, 3, padding=1),
                          conv(8, 3, padding=1, branches=3), linear(10)], (1, 6, 6), config)
    model.layers[3]["branches"][1]["source"] = 0
    model.layers[3]["branches"][2]["source"] = 1
    with pytest.raises(CompileError) as info:
        compile_model(model, config)
    assert str(info.value) == "layer 3 (conv): its branches form 3 groups of one source and geometry (branch 0 " \
                              "(layer 2), branch 1 (layer 0), branch 2 (layer 1)); a layer sums at most two: its " \
                              "main branch and one shortcut"
    # a shortcut whose map differs from the main branch's
    model = random_model([conv(8, 3, padding=1), conv(8, 3, stride=2, padding=1), conv(8, 3, padding=1),
                          linear(10)], (1, 6, 6), config)
    model.layers[2]["branches"].append(dict(model.layers[2]["branches"][0], source=0))
    with pytest.raises(CompileError) as info:
        compile_model(model, config)
    assert str(info.value) == "layer 2 (conv): its shortcut branch gives a 6x6 map, the main branch 3x3"
    model = random_model([conv(8, 3, padding=1), conv(8, 3, padding=1), conv(8, 3, padding=1, branches=3),
                          linear(10)], (1, 6, 6), config)
    model.layers[2]["branches"][1]["source"] = 0
    model.layers[2]["branches"][2]["source"] = 0
    model.layers[2]["branches"][2]["kernel"] = [1, 1]
    with pytest.raises(CompileError) as info:
        compile_model(model, config)
    assert str(info.value) == "layer 2 (conv): its branches form 3 groups of one source and geometry (branch 0 " \
                              "(layer 1), branch 1 (layer 0), branch 2 (layer 0)); a layer sums at most two: its " \
                              "main branch and one shortcut"
    # a later layer reading the image
    model = random_model([conv(8, 3, padding=1), conv(8, 3, padding=1, source=-1), linear(10)], (1, 6, 6), config)
    with pytest.raises(CompileError) as info:
        compile_model(model, config)
    assert str(info.value) == "layer 1 (conv): branch 0 reads the image; only layer 0 reads it (its first " \
                              "CONV reads the image map or the host's unfold of it)"
    # branches of different geometry
    model = random_model([conv(8, 3, padding=1, branches=2), linear(10)], (1, 6, 6), config)
    model.layers[0]["branches"][1]["stride"] = 2
    with pytest.raises(CompileError) as info:
        compile_model(model, config)
    assert str(info.value) == "layer 0 (conv): branch 1 differs from branch 0 in stride (2 vs 1); only " \
                              "branches of one geometry merge into weight bases, and the first layer has no shortcut"
    # pooling the image
    model = random_model([conv(8, 3, padding=1), maxpool(2, source=-1), linear(10)], (1, 6, 6), config)
    with pytest.raises(CompileError) as info:
        compile_model(model, config)
    assert str(info.value) == "layer 1 (maxpool): pooling the image is not supported (pool after a layer)"
    with pytest.raises(CompileError) as info:
        compile_model(random_model([linear(10)], (1, 8, 8), config), AccelConfig(rows=3))
    assert str(info.value) == "config: word_bits 32 is not a multiple of rows 3; the writer stores a " \
                              "tile's 3 channels as one field of a word (docs/isa.md)"


def test_verify_pass_catches_a_wrong_program():
    from sw.compile import PASSES, ProgramState, Verify
    config = AccelConfig()
    model = random_model([conv(8, 3, padding=1), linear(10)], (1, 8, 8), config, seed=5)

    def emitted():
        state = ProgramState(model, config)
        for p in PASSES[:-1]:
            state = p.apply(state)
        return state

    state = emitted()
    weights = next(s for s in state.segments if s.memory == "weight")
    weights.values ^= np.uint64(0xFFFFFFFF)          # every weight bit of layer 0 inverted
    with pytest.raises(CompileError, match=r"^layer 0 \(conv\): internal error: the ISS's output planes differ "
                                           r"from deploy_forward's$"):
        Verify().apply(state)
    state = emitted()
    scales = [s for s in state.segments if s.memory == "scale"][-1]
    scales.values[0, 0] += 1                          # one logit's scale off by one unit
    with pytest.raises(CompileError, match=r"^program: internal error: the ISS's logits differ from deploy_forward's$"):
        Verify().apply(state)
    assert Verify().apply(emitted()).checked[-1] == "verify: ISS == deploy_forward at every layer on 2 random images"


def test_cnv_sized_network_on_the_iss():
    """FINN's CNV on 32x32x3 (unpadded 3x3 convolutions, 64-128-256 channels, FC 512-512-10)."""
    config = AccelConfig(rows=8, cols=8, weight_depth=65536, scale_depth=8192, thr_depth=8192, act_depth=32768,
                         patch_depth=1024)
    model = random_model([conv(64, 3), conv(64, 3), maxpool(2), conv(128, 3), conv(128, 3), maxpool(2),
                          conv(256, 3), conv(256, 3), linear(512), linear(512), linear(10)], (3, 32, 32), config)
    bundle = compile_model(model, config)
    images = np.random.default_rng(0).integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    assert np.array_equal(open_backend("iss", bundle).run(images).logits, deploy_forward(model, images))
    assert sum(layer["macs"] for layer in bundle.layers) == 70347776


def test_parameters_stream_when_they_do_not_fit_resident(tmp_path):
    """auto streams a network whose parameters overflow the memories but whose every layer fits half;
    the bundle carries the stream and a stream that does not match the LOADs is refused."""
    import dataclasses
    from sw.bundle import BundleError, from_bytes, to_bytes
    from hw.isa import Opcode, decode
    config = AccelConfig(rows=2, cols=2, word_bits=8, weight_depth=150, scale_depth=64, thr_depth=64,
                         act_depth=2048, instr_depth=32)
    model = random_model([conv(8, 3, padding=1), conv(8, 3, padding=1, wbases=2, planes=2),
                          conv(8, 3, padding=1), maxpool(2), linear(10)], (1, 6, 6), config, seed=3)
    with pytest.raises(CompileError, match="layer 4 \\(linear\\): weight-buffer entries used up to this layer = "
                                           "161 exceeds weight_depth = 150 by 11 \\(--weights stream"):
        compile_model(model, config, weights="resident")
    bundle = compile_model(model, config)
    assert bundle.model["weights"] == "stream" and not bundle.segments
    ops = [decode(word)[0].name for word in bundle.instructions]
    assert ops == ["LOAD"] * 3 + ["SYNC"] + ["LOAD"] * 3 + ["CONV", "SYNC"] + ["LOAD"] * 3 + \
        ["CONV", "SYNC"] + ["LOAD"] * 2 + ["CONV", "POOL", "SYNC", "CONV", "END"]
    # Consecutive CONVs read opposite halves.
    bases = [decode(word)[1]["w_base"] for word in bundle.instructions if decode(word)[0] == Opcode.CONV]
    assert bases == [0, 75, 0, 75]
    images = np.random.default_rng(0).integers(0, 256, (3, 1, 6, 6), dtype=np.uint8)
    assert np.array_equal(open_backend("iss", bundle).run(images).logits, deploy_forward(model, images))
    again = from_bytes(to_bytes(bundle))
    assert [(s.memory, s.base, len(s.values)) for s in again.stream] == \
        [(s.memory, s.base, len(s.values)) for s in bundle.stream]
    assert all(np.array_equal(a.values, b.values) for a, b in zip(again.stream, bundle.stream))
    with pytest.raises(BundleError, match="load stream's segments .* do not match the program's LOADs"):
        to_bytes(dataclasses.replace(bundle, stream=bundle.stream[1:]))


def random_graph(rng):
    """Specs of a small random graph: every layer reads a random earlier output (never the image after
    layer 0), some maps are read twice, some never; convolutions with random kernels, strides, padding,
    groups and bases, some with a shortcut branch from another map (a residual sum), pools, and a
    linear head on a random map."""
    specs = [conv(int(rng.choice([8, 16])), 3, padding=1, planes=int(rng.integers(1, 3)))]
    shapes = {0: (specs[0]["out"], 8, 8)}
    for index in range(1, int(rng.integers(3, 7))):
        source = int(rng.choice(sorted(shapes)))
        c, h, w = shapes[source]
        if h >= 4 and rng.random() < 0.25:
            specs.append(maxpool(2, source=source))
            shapes[index] = (c, h // 2, w // 2)
            continue
        k = int(rng.choice([1, 3]))
        stride = int(rng.choice([1, 2])) if h >= 4 else 1
        out = int(rng.choice([8, 16, 24]))
        groups = 2 if c == 16 and out in (8, 16) and rng.random() < 0.4 else 1
        out_shape = (out, (h + 2 * (k // 2) - k) // stride + 1, (w + 2 * (k // 2) - k) // stride + 1)
        # A shortcut from another map whose 1x1 or 3x3 convolution gives this layer's shape.
        extra = None
        others = [(i, shp) for i, shp in shapes.items() if i != source]
        if groups == 1 and others and rng.random() < 0.6:
            i, (c2, h2, w2) = others[int(rng.integers(len(others)))]
            for k2, s2 in ((1, 1), (1, 2), (3, 1), (3, 2)):
                if ((h2 + 2 * (k2 // 2) - k2) // s2 + 1, (w2 + 2 * (k2 // 2) - k2) // s2 + 1) == out_shape[1:]:
                    extra = shortcut(i, k2, s2, k2 // 2, int(rng.choice([-1, 1])), int(rng.integers(1, 3)))
                    break
        specs.append(conv(out, k, stride=stride, padding=k // 2, pad_value=int(rng.choice([-1, 1])),
                          groups=groups, wbases=int(rng.integers(1, 3)), planes=int(rng.integers(1, 3)),
                          source=source, shortcut=extra))
        shapes[index] = out_shape
    specs.append(linear(10, wbases=int(rng.integers(1, 3)), source=int(rng.choice(sorted(shapes)))))
    return specs


@pytest.mark.parametrize("seed", range(12))
def test_graphs_run_on_the_iss_like_deploy_forward(seed):
    """Layers that read any earlier output compile; live maps never share words; the ISS's logits equal
    deploy_forward's (and the Verify pass compared every layer's planes)."""
    from hw.isa import Opcode, decode
    from sw.compile import (Allocate, CheckConfig, CheckFit, Lower, MergeBranches, ProgramState, _map_words,
                            map_lifetimes)
    config = AccelConfig(rows=2, cols=3, word_bits=8, max_wbases=2, max_abases=2, act_depth=4096,
                         weight_depth=4096, scale_depth=1024, thr_depth=1024, patch_depth=512, max_k=2048)
    rng = np.random.default_rng(seed)
    specs = random_graph(rng)
    model = random_model(specs, (1, 8, 8), config, seed=seed)
    bundle = compile_model(model, config, verify_images=3, seed=seed)
    assert "verify: ISS == deploy_forward at every layer on 3 random images" in bundle.model["checked"]
    images = rng.integers(0, 256, (5, 1, 8, 8), dtype=np.uint8)
    assert np.array_equal(open_backend("iss", bundle).run(images).logits, deploy_forward(model, images))
    # The allocation: maps live at one op never overlap, and every CONV / POOL reads and writes them there.
    state = ProgramState(model, config)
    for p in (CheckConfig(), MergeBranches(), Lower(), CheckFit(), Allocate()):
        state = p.apply(state)
    spans = {id(spec): (state.ops[max(first, 0)]["in_base" if first < 0 else "out_base"], _map_words(spec), first, last)
             for spec, first, last in map_lifetimes(state.ops)}
    for t in range(len(state.ops)):
        live = sorted((base, base + size) for base, size, first, last in spans.values() if first <= t <= last)
        assert all(hi <= lo for (_, hi), (lo, _) in zip(live, live[1:])), (t, live)
        assert live[-1][1] <= config.act_depth
    reads = [decode(word) for word in bundle.instructions]
    assert sum(op == Opcode.CONV for op, _ in reads) == sum(op["op"] == "conv" for op in state.ops)
    assert sum(op == Opcode.SHORTCUT for op, _ in reads) == sum(bool(op.get("shortcut")) for op in state.ops) \
        == sum(bool(spec.get("shortcut")) for spec in specs)


def test_random_graphs_skip_layers_and_sum_shortcuts():
    """The generator above makes graphs, not chains: most read an output other than the previous one,
    and most have a layer that sums a shortcut from another map."""
    graphs = [random_graph(np.random.default_rng(seed)) for seed in range(12)]
    assert sum(any(spec["source"] not in (None, i - 1) for i, spec in enumerate(g)) for g in graphs) >= 8
    assert sum(any(spec.get("shortcut") for spec in g) for g in graphs) >= 6


def test_a_map_read_later_stays_live():
    """Layers 1 and 2 both read layer 0's map and the head reads layer 1's: at layer 2 three maps are
    live (16 + 128 + 128 words), more than any layer of a chain of the same sizes needs (144); with less
    room the refusal names the layer and the live words."""
    from hw.isa import Opcode, decode
    specs = [conv(32, 3, padding=1), conv(256, 3, padding=1, source=0), conv(256, 3, padding=1, source=0),
             linear(10, source=1)]
    config = AccelConfig()
    model = random_model(specs, (1, 4, 4), config)
    convs = [fields for opcode, fields in map(decode, compile_model(model, config).instructions)
             if opcode == Opcode.CONV]
    maps = [(f["out_base"], f["out_base"] + f["out_planes"] * 16 * f["out_stride"]) for f in convs[:3]]
    assert convs[1]["in_base"] == convs[2]["in_base"] == maps[0][0]
    assert convs[3]["in_base"] == maps[1][0]
    for (lo, hi), (lo2, hi2) in itertools.combinations(maps, 2):
        assert hi <= lo2 or hi2 <= lo              # all three live at layer 2: disjoint
    assert compile_model(model, config.replace(act_depth=272), verify_images=1)
    assert _refusal(specs, shape=(1, 4, 4), act_depth=250) == \
        "layer 2 (conv): activation words of its output map and the maps still live (128 + 144) = 272 " \
        "exceeds act_depth = 250 by 22"


def test_grouped_layer_with_a_shortcut():
    """A grouped convolution (two groups of one word each) that sums a shortcut: one SHORTCUT + CONV per
    group, each with its group's output channels of the shortcut; the ISS equals deploy_forward."""
    from hw.isa import Opcode, decode
    config = AccelConfig(rows=2, cols=3, word_bits=8, max_wbases=2, max_abases=2, act_depth=4096,
                         weight_depth=4096, scale_depth=1024, thr_depth=1024, patch_depth=512, max_k=2048)
    model = random_model([conv(16, 3, padding=1), conv(16, 3, padding=1, groups=2, shortcut=shortcut(0, wbases=2)),
                          linear(10)], (1, 6, 6), config, seed=4)
    bundle = compile_model(model, config, verify_images=3)
    opcodes = [decode(word)[0] for word in bundle.instructions]
    assert opcodes.count(Opcode.SHORTCUT) == 2 and opcodes.count(Opcode.CONV) == 4
    images = np.random.default_rng(4).integers(0, 256, (4, 1, 6, 6), dtype=np.uint8)
    assert np.array_equal(open_backend("iss", bundle).run(images).logits, deploy_forward(model, images))


@pytest.mark.parametrize("specs, convs, shortcuts", [
    # groups of 16 channels on 32-bit words: the producer writes each group from a word (two CONVs)
    ([conv(32, 3, padding=1), conv(32, 3, padding=1, groups=2), maxpool(2), conv(64, 3, padding=1, groups=2),
      linear(10)], 7, 0),
    # a dense layer reads the grouped layout as two sources (SHORTCUT over the second group)
    ([conv(24, 3, padding=1), conv(24, 3, padding=1, groups=2), conv(16, 3, padding=1, source=0), linear(10)], 6, 1),
    # three groups read by a dense head, a shortcut from the grouped map: the producer writes both layouts
    ([conv(48, 3, padding=1), conv(48, 3, padding=1, groups=3),
      conv(48, 3, padding=1, shortcut=shortcut(0)), linear(10, source=0)], 1 + 3 + 3 + 1 + 1, 1),
], ids=["two-groups", "as-two-sources", "both-layouts"])
def test_groups_off_the_word(specs, convs, shortcuts):
    """Grouped convolutions whose groups are not whole channel words: every layer on the ISS equals
    deploy_forward (the Verify pass reads the word-aligned group layout back)."""
    config = AccelConfig(act_depth=16384, weight_depth=8192, scale_depth=2048, thr_depth=2048, patch_depth=1024,
                         max_k=8192)
    model = random_model(specs, (3, 8, 8), config, seed=2)
    bundle = compile_model(model, config, verify_images=3)
    assert "verify: ISS == deploy_forward at every layer on 3 random images" in bundle.model["checked"]
    from hw.isa import Opcode, decode
    opcodes = [decode(word)[0] for word in bundle.instructions]
    assert (opcodes.count(Opcode.CONV), opcodes.count(Opcode.SHORTCUT)) == (convs, shortcuts)
    images = np.random.default_rng(2).integers(0, 256, (4, 3, 8, 8), dtype=np.uint8)
    assert np.array_equal(open_backend("iss", bundle).run(images).logits, deploy_forward(model, images))


BATCH_CONFIG = AccelConfig(rows=4, cols=4, word_bits=16, max_wbases=2, max_abases=3, max_k=1024, scale_depth=256,
                           thr_depth=256, weight_depth=2048, act_depth=8192, patch_depth=256, result_depth=256,
                           instr_depth=128)
BATCH_NETWORKS = {
    # every layer over 1x1 maps: one instruction each, stacked over the batch
    "mlp": ((1, 6, 6), [linear(20, wbases=2, planes=3), linear(9, planes=2), linear(5)]),
    # per-image 3x3 convolutions and an untiled pool (one plane), a tiling pool, a whole-map head
    "cnn": ((3, 10, 10), [conv(8, 3, padding=1, pad_value=1), maxpool(3, 2), conv(8, 3), maxpool(2),
                          linear(6, planes=2), linear(4)]),
    # a shortcut per image (stride 2) and a pointwise layer with a pointwise shortcut, stacked
    "residual": ((1, 8, 8), [conv(6, 3, padding=1), conv(6, 3, stride=2, padding=1, shortcut=shortcut(0, 1, 2, 0)),
                             conv(6, 1, shortcut=shortcut(1)), linear(4)]),
    # several activation planes through per-image layers (each image's view of a stacked map has its
    # planes B maps apart: the images_m1 field), an untiled pool over 3 planes, a residual over 2
    "planes": ((2, 9, 9), [conv(6, 3, padding=1, planes=3, wbases=2), maxpool(3, 2), conv(8, 3, padding=1, planes=2),
                           conv(8, 3, padding=1, planes=2, shortcut=shortcut(1)), linear(5)]),
}


@pytest.mark.parametrize("name", sorted(BATCH_NETWORKS))
@pytest.mark.parametrize("batch", [2, 3, 4])
def test_batched_programs_equal_deploy_forward(name, batch):
    """A batch of B images per run: every image's logits equal deploy_forward (the compiler's own
    layer-by-layer check ran too), and a layer over 1x1 maps costs a batched run what it costs one image."""
    shape, specs = BATCH_NETWORKS[name]
    model = random_model(specs, shape, BATCH_CONFIG, seed=batch)
    bundle = compile_model(model, BATCH_CONFIG, batch=batch, verify_images=batch + 1)
    single = compile_model(model, BATCH_CONFIG, verify_images=0)
    assert any(line.startswith(f"batch: {batch} images") for line in bundle.model["checked"])
    images = np.random.default_rng(7).integers(0, 256, (2 * batch + 1,) + shape, dtype=np.uint8)
    result = open_backend("iss", bundle, batch=2).run(images)
    assert np.array_equal(result.logits, deploy_forward(model, images))
    batched_layers, single_layers = result.layer_cycles[0], open_backend("iss", single).run(images[:1]).layer_cycles[0]
    for layer, b_cycles, s_cycles in zip(bundle.layers, batched_layers, single_layers):
        assert layer["macs"] == batch * single.layers[layer["index"]]["macs"]
        if layer["output"] is None or (layer["output"]["image_h"], layer["output"]["w"]) == (1, 1):
            if layer["index"] > 0 and layer["kind"] == "linear":
                assert b_cycles == s_cycles, layer["name"]      # the columns took the batch for free


ALL_IMAGES_NETWORKS = {
    "cnn": BATCH_NETWORKS["cnn"],
    "residual": BATCH_NETWORKS["residual"],
    "planes": BATCH_NETWORKS["planes"],
    # two groups of one word each, then two groups of 12 channels (the map laid out in word-aligned
    # groups, a CONV per group it writes) that a dense layer also reads as two sources (SHORTCUT + CONV),
    # 3x3 maps of 9 pixels over 4 columns
    "grouped": ((3, 6, 6), [conv(32, 3, padding=1), maxpool(2), conv(32, 3, padding=1, groups=2),
                            conv(24, 3, padding=1, planes=2), conv(24, 3, padding=1, groups=2),
                            conv(16, 3, padding=1, source=3), linear(5)]),
    # the first layer reads the packed image (one channel: 16 fields a word of W = 16)
    "packed": ((1, 7, 7), [conv(8, 3, padding=1, wbases=2, planes=2), maxpool(2), conv(8, 3, padding=1),
                           linear(5)]),
}


@pytest.mark.parametrize("name", sorted(ALL_IMAGES_NETWORKS))
@pytest.mark.parametrize("batch", [2, 3])
def test_batched_convolutions_run_over_all_images(name, batch):
    """A convolution whose windows would cross images is one CONV over all the batch's images
    (all_images, images_m1 = B - 1; its SHORTCUT's input at image 0 too), so a batched program has as
    many CONV and SHORTCUT instructions as the one-image program and only the pools that do not tile
    each image add one instruction an image; each such layer costs a run fewer cycles than its images one
    after another; the logits equal deploy_forward."""
    shape, specs = ALL_IMAGES_NETWORKS[name]
    model = random_model(specs, shape, BATCH_CONFIG, seed=batch)
    if name == "packed":
        model = precise_pixel_scales(model)
    bundle = compile_model(model, BATCH_CONFIG, batch=batch, verify_images=batch)
    single = compile_model(model, BATCH_CONFIG, verify_images=0)
    assert bundle.input["mode"] == single.input["mode"]
    decoded = [decode(word) for word in bundle.instructions]
    convs = [f for opcode, f in decoded if opcode == Opcode.CONV]
    assert all(f["images_m1"] == (batch - 1) * f["all_images"] for f in convs)
    assert any(f["all_images"] for f in convs)
    if name == "packed":
        assert bundle.input["mode"] == "packed"
        assert (convs[0]["packed"], convs[0]["all_images"], convs[0]["in_h"]) == (1, 1, shape[1])

    def count(b, opcode):
        return sum(decode(word)[0] == opcode for word in b.instructions)

    for opcode in (Opcode.CONV, Opcode.SHORTCUT):
        assert count(bundle, opcode) == count(single, opcode), opcode.name
    pool_views = sum(1 for opcode, f in decoded if opcode == Opcode.POOL and f["images_m1"])
    assert len(bundle.instructions) == len(single.instructions) + (batch - 1) * pool_views // batch
    # per image, as before: every all_images CONV (and its SHORTCUT) once an image
    per_image = len(bundle.instructions) + (batch - 1) * sum(
        f["all_images"] * (2 if decoded[pc - 1][0] == Opcode.SHORTCUT else 1)
        for pc, (opcode, f) in enumerate(decoded) if opcode == Opcode.CONV)
    assert len(bundle.instructions) < per_image
    batched_layers, single_layers = layer_report(bundle), layer_report(single)
    for layer, b_row, s_row in zip(bundle.layers, batched_layers, single_layers):
        if any(decoded[pc][0] == Opcode.CONV and decoded[pc][1]["all_images"] for pc in layer["instructions"]):
            assert b_row["cycles"] < batch * s_row["cycles"], layer["name"]
    images = np.random.default_rng(5).integers(0, 256, (2 * batch + 1,) + shape, dtype=np.uint8)
    assert np.array_equal(open_backend("iss", bundle, batch=2).run(images).logits, deploy_forward(model, images))


def test_batched_logits_of_a_padded_convolution_count_every_image():
    """A last layer that is a padded 3x3 convolution over 1x1 maps runs over all images: its logits
    take B x classes result entries, which check-fit counts."""
    model = random_model([conv(8, 3, padding=1), maxpool(4), conv(10, 3, padding=1)], (1, 4, 4), BATCH_CONFIG,
                         seed=1)
    bundle = compile_model(model, BATCH_CONFIG.replace(result_depth=30), batch=3, verify_images=3)
    assert decode(bundle.instructions[-2])[1]["all_images"] == 1
    with pytest.raises(CompileError, match="^layer 2 \\(conv\\): result-memory entries of the logits = 30 exceeds "
                                           "result_depth = 29 by 1$"):
        compile_model(model, BATCH_CONFIG.replace(result_depth=29), batch=3)


def test_batch_must_be_a_positive_integer():
    model = random_model([conv(6, 3, padding=1, planes=2), linear(4)], (1, 8, 8), BATCH_CONFIG, seed=1)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(CompileError, match=f"the batch must be a positive integer, not {bad!r}"):
            compile_model(model, BATCH_CONFIG, batch=bad)


# First layer: packed image input --------------------------------------------------------------------

PACKED_CONFIG = AccelConfig(**BIG)
PACKED_NETWORKS = {
    # 3 channels, a 3x3 kernel: 9 fields of 3 bits in one patch word; a per-image 3x3 layer and a pool after
    "rgb": ((3, 10, 10), [conv(8, 3, padding=1), conv(12, 3, stride=2, padding=1, planes=2, wbases=2), maxpool(2),
                          linear(10)]),
    # 1 channel, 5x5, stride 2, +1 padding, two weight bases and two output planes
    "gray": ((1, 9, 9), [conv(6, 5, stride=2, padding=2, pad_value=1, wbases=2, planes=2), linear(7)]),
    # 7x7 over 3 channels: 49 fields in 5 patch words (10 a word), the last layer over 1x1 maps
    "wide-kernel": ((3, 9, 9), [conv(6, 7, padding=3), conv(5, 9), linear(4)]),
    # a kernel over the whole image: one output pixel an image, stacked over a batch
    "whole-image": ((4, 4, 4), [conv(9, 4, planes=2), linear(5)]),
}


def precise_pixel_scales(model):
    """The first layer's pixel-plane scales made no longer powers of two apart (as the default
    `precise` export gives them), so that no plane groups apply."""
    for branch in model.layers[0]["branches"]:
        branch["scales"][:, 0] += 1
    return model


@pytest.mark.parametrize("name", sorted(PACKED_NETWORKS))
@pytest.mark.parametrize("batch", [1, 2, 3])
def test_packed_first_layer_equals_deploy_forward(name, batch):
    """The first CONV reads the image map itself (docs/isa.md "Packed image input"): every layer on the
    ISS equals deploy_forward, one image a run and a batch of them."""
    shape, specs = PACKED_NETWORKS[name]
    model = precise_pixel_scales(random_model(specs, shape, PACKED_CONFIG, seed=batch))
    bundle = compile_model(model, PACKED_CONFIG, batch=batch, verify_images=batch + 1)
    verified = -(-(batch + 1) // batch) * batch                                   # whole batches
    assert f"verify: ISS == deploy_forward at every layer on {verified} random images" in bundle.model["checked"]
    c, h, w = shape
    spec = bundle.input
    assert (spec["mode"], spec["word_bytes"], spec["input_words"], spec["shape"]) == ("packed", c, h * w, list(shape))
    opcode, first = decode(bundle.instructions[0])
    assert opcode == Opcode.CONV and first["packed"] == 1
    kernel = specs[0]["kernel"]
    assert (first["kh"], first["kw"], first["in_tail"], first["in_planes"], first["k"], first["in_stride"]) == \
        (kernel, kernel, c, 8, kernel * kernel * c, 1)
    assert first["in_cw"] == -(-kernel * kernel // (PACKED_CONFIG.word_bits // c))
    images = np.random.default_rng(7).integers(0, 256, (2 * batch + 1,) + shape, dtype=np.uint8)
    words, real = run_inputs(bundle, images)
    assert words.shape == (-(-len(images) // batch), batch * h * w, 1) and real == len(images)
    result = open_backend("iss", bundle, batch=2).run(images)
    assert np.array_equal(result.logits, deploy_forward(model, images))
    edges = np.array([np.zeros(shape), np.full(shape, 255)], dtype=np.uint8)      # every plane -1, every plane +1
    assert np.array_equal(open_backend("iss", bundle).run(edges).logits, deploy_forward(model, edges))


def test_packed_weights_set_the_bits_above_the_fields():
    """Each packed weight word holds t fields of c bits from the top field down and 1 above t * c
    (docs/isa.md "Packed image input"); the verify pass refuses a program whose fill bits are 0."""
    model = precise_pixel_scales(random_model([conv(4, 7, padding=3), linear(3)], (3, 6, 6), PACKED_CONFIG))
    bundle = compile_model(model, PACKED_CONFIG)
    assert bundle.input["mode"] == "packed"
    weights = next(seg.values for seg in bundle.segments if seg.memory == "weight")
    w = (model.layers[0]["branches"][0]["weights"][0] > 0).astype(int)            # (O, c, 7, 7)
    for o in range(4):
        for j, t in enumerate((10, 10, 10, 10, 9)):                                # 49 positions, 10 a word
            want = sum(int(w[o, ch, (j * 10 + q) // 7, (j * 10 + q) % 7]) << ((t - 1 - q) * 3 + ch)
                       for q in range(t) for ch in range(3)) | (((1 << 32) - 1) & ~((1 << (3 * t)) - 1))
            assert int(weights[j, o, 0]) == want, (o, j)
    import sw.compile as compiler
    original = compiler.pack_fields
    try:
        compiler.pack_fields = lambda fields, word_bits, fill=0: original(fields, word_bits, 0)
        with pytest.raises(CompileError, match="internal error"):
            compile_model(model, PACKED_CONFIG)
    finally:
        compiler.pack_fields = original


@pytest.mark.parametrize("specs, shape, config, options, mode", [
    ([conv(8, 3, padding=1), linear(10)], (3, 8, 8), AccelConfig(), {}, "packed"),          # precise scales
    ([conv(8, 3, padding=1), linear(10)], (1, 8, 8), AccelConfig(), {}, "packed"),
    ([conv(8, 3, padding=1), linear(10)], (3, 8, 8), AccelConfig(), {"input": "unfold"}, "unfold"),
    ([linear(12), linear(10)], (1, 8, 8), AccelConfig(), {}, "unfold"),                    # fully connected
    ([conv(8, 3, padding=1), linear(10)], (5, 6, 6), AccelConfig(), {}, "unfold"),          # 8 * 5 > W = 32
    ([conv(8, 3, padding=1), linear(10)], (3, 6, 6), AccelConfig(word_bits=16), {}, "unfold"),  # 8 * 3 > 16
    ([conv(8, 2), linear(10)], (1, 6, 6), AccelConfig(), {}, "unfold"),                     # 4 positions < 8
    # W = 16, 2 channels: 8 fields a word, a 3x3 kernel leaves one field in the second word (< 8 planes)
    ([conv(8, 3, padding=1), linear(10)], (2, 6, 6), AccelConfig(word_bits=16), {}, "unfold"),
    ([conv(8, 4, padding=1), linear(10)], (2, 6, 6), AccelConfig(word_bits=16), {}, "packed"),
])
def test_auto_input_chooses_packed_where_it_applies(specs, shape, config, options, mode):
    model = precise_pixel_scales(random_model(specs, shape, config))
    bundle = compile_model(model, config, **options)
    assert bundle.input["mode"] == mode
    images = np.random.default_rng(3).integers(0, 256, (3,) + shape, dtype=np.uint8)
    assert np.array_equal(open_backend("iss", bundle).run(images).logits, deploy_forward(model, images))


def test_auto_input_keeps_the_unfold_where_plane_groups_apply():
    """The generator's pixel scales are powers of two apart: auto groups the planes of the host unfold
    (fewer passes); without plane groups it reads the packed image."""
    model = random_model([conv(8, 3, padding=1), linear(10)], (3, 8, 8), AccelConfig())
    grouped = compile_model(model, AccelConfig())
    assert grouped.input["mode"] == "unfold" and len(grouped.input["groups"]) < 8
    assert compile_model(model, AccelConfig(), plane_groups=False).input["mode"] == "packed"
    assert compile_model(model, AccelConfig(), input="packed").input["mode"] == "packed"


def test_auto_input_falls_back_to_the_unfold_that_fits():
    """A 5x5 first layer of stride 5: the packed image map (h * w words an image) takes more activation
    words than the unfold's 8 planes of its 4x4 output pixels; where the image map does not fit, auto
    compiles the host unfold (one pointwise CONV over the stack)."""
    model = precise_pixel_scales(random_model([conv(8, 5, stride=5), linear(4)], (1, 20, 20), AccelConfig()))
    config = AccelConfig(act_depth=1000)
    with pytest.raises(CompileError, match="layer 0 \\(conv\\): activation words of the input map = 1200 exceeds "
                                           "act_depth = 1000 by 200"):
        compile_model(model, config, batch=3, input="packed")
    bundle = compile_model(model, config, batch=3)
    assert bundle.input["mode"] == "unfold" and len(bundle.instructions) == 3
    images = np.random.default_rng(3).integers(0, 256, (4, 1, 20, 20), dtype=np.uint8)
    assert np.array_equal(open_backend("iss", bundle).run(images).logits, deploy_forward(model, images))


@pytest.mark.parametrize("specs, shape, config, why", [
    ([linear(12), linear(10)], (1, 8, 8), AccelConfig(),
     "layer 0 (linear): the first layer cannot read the packed image: a fully connected first layer reads "
     "the whole image at once"),
    ([conv(8, 3), linear(10)], (5, 6, 6), AccelConfig(),
     "layer 0 (conv): the first layer cannot read the packed image: a pixel of 5 channels is 40 bits, more "
     "than a word of 32"),
    ([conv(8, 2), linear(10)], (1, 6, 6), AccelConfig(),
     "layer 0 (conv): the first layer cannot read the packed image: its 2x2 kernel has fewer than 8 "
     "positions (one a pixel plane)"),
    ([conv(8, 3), linear(10)], (2, 6, 6), AccelConfig(word_bits=16),
     "layer 0 (conv): the first layer cannot read the packed image: its CONV would be illegal (packed CONV's "
     "last patch word holds 1 of kh*kw = 9 fields, fewer than in_planes 8)"),
    ([conv(8, 8), linear(10)], (1, 10, 10), AccelConfig(word_bits=8, patch_depth=40),
     "layer 0 (conv): the first layer cannot read the packed image: its patch words (8 planes x 8) exceed "
     "patch_depth = 40"),
])
def test_packed_input_refusals_name_why(specs, shape, config, why):
    assert _refusal(specs, shape, config, options={"input": "packed"}) == f'{why}; the host unfold (input "unfold") can'


def test_input_must_be_a_mode():
    model = random_model([conv(8, 3), linear(10)], (1, 6, 6), AccelConfig())
    with pytest.raises(CompileError, match="program: input must be one of auto, packed, unfold, not 'raw'"):
        compile_model(model, AccelConfig(), input="raw")
