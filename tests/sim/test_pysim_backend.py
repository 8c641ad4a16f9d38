"""Compiled bundles on the accelerator RTL in Amaranth's simulator, driven by the runtime's own host
code: logits equal the ISS and deploy_forward exactly, and per-layer RTL cycles equal the analytic
model (hw.cycles) exactly, with parameters resident or streamed through LOAD / SYNC, on chains and on
residual networks (layers that sum a shortcut from an earlier map)."""

import numpy as np
import pytest

from hw.config import AccelConfig
from hw.isa import Opcode, decode
from sw.iss import analytic_cycles
from sw.compile import compile_model
from sw.compile.testing import conv, linear, maxpool, random_model, shortcut
from sw.model_format import deploy_forward
from sw.runtime import RuntimeApiError, open_backend

SMALL = AccelConfig(rows=2, cols=2, word_bits=8, max_wbases=2, max_abases=2, max_k=512, scale_depth=256,
                    thr_depth=256, weight_depth=2048, act_depth=4096, patch_depth=256, result_depth=64,
                    instr_depth=32)

CASES = {
    # stride 2 with -1 padding, +1 padding, two bases, pooling, a linear head; channels off the array.
    "cnn": ((1, 8, 8), SMALL, [conv(5, 3, stride=2, padding=1),
                               conv(6, 3, padding=1, pad_value=1, wbases=2, planes=2), maxpool(2), linear(4)]),
    # an MLP (the first layer unfolds the whole image) with multi-basis layers, on a 4x2 array, W = 16.
    "mlp": ((1, 6, 6), SMALL.replace(rows=4, cols=2, word_bits=16), [
        linear(20, wbases=2, planes=2), linear(9, planes=1), linear(5)]),
    # residual blocks: an identity-sized 1x1 shortcut, a downsampling 3x3 stride-2 shortcut with +1
    # padding, a shortcut from two layers back, and a two-basis main branch.
    "residual": ((1, 8, 8), SMALL, [
        conv(6, 3, padding=1, planes=2), conv(6, 3, padding=1, wbases=2, shortcut=shortcut(0, wbases=2)),
        conv(8, 3, stride=2, padding=1, shortcut=shortcut(1, 3, 2, 1, pad_value=1)),
        conv(8, 3, padding=1, shortcut=shortcut(2)), linear(4)]),
}
# The scales applied in every element (passes of one K-word back to back): the multi-basis network and
# the residual one, whose 1x1 shortcut passes are short.
ELEMENT = SMALL.replace(element_scales=True)
CASES["cnn_element"] = (CASES["cnn"][0], ELEMENT, CASES["cnn"][2])
CASES["residual_element"] = (CASES["residual"][0], ELEMENT, CASES["residual"][2])


@pytest.mark.parametrize("case, weights", [("cnn", "resident"), ("mlp", "resident"), ("cnn", "stream"),
                                           ("residual", "resident"), ("residual", "stream"),
                                           ("cnn_element", "stream"), ("residual_element", "resident")])
def test_rtl_equals_iss_and_deploy(case, weights):
    shape, config, specs = CASES[case]
    model = random_model(specs, shape, config, seed=5)
    bundle = compile_model(model, config, weights=weights)
    opcodes = {decode(word)[0] for word in bundle.instructions}
    assert (Opcode.LOAD in opcodes) == (weights == "stream") and bool(bundle.stream) == (weights == "stream")
    assert (Opcode.SHORTCUT in opcodes) == case.startswith("residual")
    images = np.random.default_rng(2).integers(0, 256, (2,) + shape, dtype=np.uint8)
    rtl = open_backend("pysim", bundle).run(images)
    iss = open_backend("iss", bundle).run(images)
    assert np.array_equal(rtl.logits, deploy_forward(model, images))
    assert np.array_equal(rtl.logits, iss.logits)
    model_cycles = analytic_cycles(config, bundle.instructions)
    for layer, measured in zip(bundle.layers, rtl.layer_cycles[0]):
        analytic = sum(model_cycles[pc] for pc in layer["instructions"])
        assert analytic == measured, (layer["name"], analytic, measured)
    assert rtl.cycles[0] == sum(rtl.layer_cycles[0]) + 3       # + END


def test_pysim_refuses_a_bundle_for_another_config():
    shape, config, specs = CASES["cnn"]
    bundle = compile_model(random_model(specs, shape, config, seed=1), config)
    with pytest.raises(RuntimeApiError, match="recompile for this config"):
        open_backend("pysim", bundle, config=config.replace(cols=4))


BATCHED = {
    "mlp": CASES["mlp"],
    # 3x3 convolutions and a pool that run once per image (one activation plane), then a linear head
    # over the stacked images.
    "cnn": ((1, 8, 8), SMALL, [conv(5, 3, stride=2, padding=1), conv(6, 3, padding=1, pad_value=1), maxpool(2),
                               linear(7, planes=2), linear(4)]),
    # two activation planes through per-image layers: each image's view of a stacked map has its planes
    # `batch` maps apart (the images_m1 field), in the gather, the writer and an untiled pool
    "planes": ((1, 7, 7), SMALL, [conv(5, 3, padding=1, planes=2), conv(6, 3, padding=1, planes=2, wbases=2),
                                  maxpool(3, 2), linear(4)]),
    # the first layer reading the packed image (W = 16: 16 one-bit fields a word), over the batch
    "packed": ((1, 6, 6), SMALL.replace(word_bits=16), [conv(5, 3, padding=1, pad_value=1), maxpool(2),
                                                         conv(6, 3, padding=1), linear(4)]),
}
BATCHED_OPTIONS = {"packed": {"input": "packed"}}


@pytest.mark.parametrize("case, batch", [("mlp", 2), ("cnn", 2), ("planes", 3), ("packed", 3)])
def test_batched_bundle_on_the_rtl(case, batch):
    """A bundle that runs `batch` images at once (stacked maps, the columns over image x pixel): the
    RTL's logits equal deploy_forward per image (an odd count: the last run padded), and its per-layer
    cycles equal the analytic model's, which for the fully connected layers are those of one image."""
    shape, config, specs = BATCHED[case]
    model = random_model(specs, shape, config, seed=5)
    bundle = compile_model(model, config, batch=batch, **BATCHED_OPTIONS.get(case, {}))
    assert bundle.input["mode"] == ("packed" if case == "packed" else "unfold")
    single = compile_model(model, config, **BATCHED_OPTIONS.get(case, {}))
    images = np.random.default_rng(3).integers(0, 256, (3,) + shape, dtype=np.uint8)
    rtl = open_backend("pysim", bundle).run(images)
    assert np.array_equal(rtl.logits, deploy_forward(model, images))
    assert np.array_equal(rtl.logits, open_backend("iss", bundle).run(images).logits)
    model_cycles = analytic_cycles(config, bundle.instructions)
    for layer, measured in zip(bundle.layers, rtl.layer_cycles[0]):
        assert sum(model_cycles[pc] for pc in layer["instructions"]) == measured, layer["name"]
    assert len(set(rtl.cycles.tolist())) == 1          # every run, the padded last one too
    # A fully connected layer (every layer of the MLP, the head of the CNN) costs one image's cycles for
    # a batch that fits the columns (3 images on 2 columns take two pixel tiles).
    one = analytic_cycles(config, single.instructions)
    for layer, solo in zip(bundle.layers, single.layers):
        if layer["kind"] == "linear" and layer["index"] > 0 and batch <= config.cols:
            assert sum(model_cycles[pc] for pc in layer["instructions"]) == \
                sum(one[pc] for pc in solo["instructions"]), layer["name"]
