import numpy as np
import pytest
import torch

import sw.ref as ref
from hw.config import AccelConfig
from sw.model_format import deploy_forward, from_bytes, to_bytes
from sw.models import IdentityShortcut, ModelError, Node, build_model
from sw.quant import Act, make_scheme
from sw.quant.export import ExportError, export_model, fixed_scales

torch.set_num_threads(1)

# Wide scales and accumulator: the integer model then reproduces the float model up to float32 noise.
PRECISE = AccelConfig(scale_bits=32, scale_frac=16, acc_bits=64, max_k=1 << 16, max_wbases=8, max_abases=8)


def randomise_norms(net, seed):
    """Batch-norm statistics as after training, with some negative gains (flip) and a zero gain."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for node in net.nodes:
            if isinstance(node, Node) and node.norm is not None:
                o = node.out_features
                node.norm.running_mean.copy_(torch.randn(o, generator=g) * 0.5)
                node.norm.running_var.copy_(torch.rand(o, generator=g) + 0.5)
                node.norm.weight.copy_(torch.randn(o, generator=g))
                node.norm.bias.copy_(torch.randn(o, generator=g) * 0.3)
                node.norm.weight[0] = 0.0
            if isinstance(node, Node) and node.nonlinearity is not None:
                node.nonlinearity.a_neg.copy_(torch.rand(node.out_features, generator=g) + 0.1)
            for module in node.modules():
                if isinstance(module, IdentityShortcut):
                    module.gain.fill_(0.7)
    net.eval()


@torch.no_grad()
def float_trace(net, images):
    x = torch.from_numpy(images).float() / 127.5 - 1
    outputs = [Act(x[None], torch.ones(1), -1.0)]
    for node in net.nodes:
        outputs.append(node(outputs))
    return outputs[1:]


CASES = [("lfc", "xnor", 1, 1), ("lfc", "trained", 1, 1), ("lfc", "abc", 3, 2), ("lfc", "pa", 2, 3),
         ("lfc", "groupnet", 3, 1), ("lfc", "ftbnn", 1, 1), ("cnv", "abc", 2, 2), ("cnv", "ftbnn", 1, 1),
         ("resnet", "pa", 2, 2), ("resnet", "groupnet", 2, 1), ("vgg_small", "xnor", 1, 1),
         ("resnet18", "xnor", 1, 1), ("birealnet18", "abc", 2, 2), ("birealnet18", "ftbnn", 1, 1)]
WIDTH = {"lfc": 24, "cnv": 4, "resnet": 4, "vgg_small": 4, "resnet18": 4, "birealnet18": 4}


@pytest.mark.parametrize("model,scheme,m,n", CASES)
def test_export_reproduces_float_model(model, scheme, m, n):
    torch.manual_seed(3)
    net = build_model(model, make_scheme(scheme, m, n), (1, 8, 8), 10, WIDTH[model])
    randomise_norms(net, 4)
    images = np.random.default_rng(7).integers(0, 256, (24, 1, 8, 8), dtype=np.uint8)
    exported = from_bytes(to_bytes(export_model(net, PRECISE)))
    logits, trace = deploy_forward(exported, images, intermediates=True)
    floats = float_trace(net, images)
    for index, (f, d) in enumerate(zip(floats, trace)):
        if isinstance(f, Act):
            assert f.planes.shape == d.shape
            agree = np.mean(f.planes.numpy() == d)
            assert agree >= 0.995, f"layer {index}: planes agree on {agree:.4f}"
    # The zero-gain channel 0 of the first layer is constant in both.
    assert np.all(trace[0][:, :, 0] == trace[0][:, :1, 0])
    unit = exported.logit_unit
    real = floats[-1].numpy()
    assert np.mean(np.argmax(real, 1) == np.argmax(logits, 1)) >= 0.95
    assert np.allclose(logits * unit, real, atol=1e-3 * np.abs(real).max() + 1e-6) or \
        np.mean(np.isclose(logits * unit, real, rtol=1e-3, atol=1e-3 * np.abs(real).max())) > 0.9


@pytest.mark.parametrize("model,scheme,m,n", [("resnet", "abc", 2, 2), ("cnv", "ftbnn", 1, 1)])
def test_deploy_layers_equal_independent_ref_recomputation(model, scheme, m, n):
    torch.manual_seed(5)
    net = build_model(model, make_scheme(scheme, m, n), (1, 8, 8), 10, 4)
    randomise_norms(net, 6)
    exported = export_model(net)  # the default AccelConfig
    images = np.random.default_rng(8).integers(0, 256, (5, 1, 8, 8), dtype=np.uint8)
    logits, trace = deploy_forward(exported, images, intermediates=True)
    outputs = {-1: ref.pixel_planes(images)}
    outputs.update(dict(enumerate(trace)))
    checked = 0
    for index, layer in enumerate(exported.layers):
        if layer["kind"] == "maxpool":
            continue
        acc = 0
        for branch in layer["branches"]:
            x = outputs[branch["source"]]
            if layer["kind"] == "conv":
                acc = acc + ref.multibasis_conv2d(x, branch["weights"], branch["scales"], branch["stride"],
                                                  branch["padding"], branch["pad_value"], branch["groups"])
            else:
                acc = acc + ref.multibasis_linear(x.reshape(x.shape[0], x.shape[1], -1), branch["weights"],
                                                  branch["scales"])
            bound = ref.acc_bound(branch["scales"], branch["k"])
            assert bound.max() < AccelConfig().acc_max
        if "thresholds" in layer:
            expected = np.moveaxis(ref.threshold(np.moveaxis(acc, 1, -1), layer["thresholds"], layer["flip"]), -1, 2)
            assert np.array_equal(trace[index], expected)
        else:
            assert np.array_equal(logits, acc)
        checked += 1
    assert checked == sum(layer["kind"] != "maxpool" for layer in exported.layers)
    # The residual model sums two branches in some layers.
    if model == "resnet":
        assert any(len(layer.get("branches", [])) == 2 for layer in exported.layers)


def test_scales_use_the_configured_width():
    torch.manual_seed(0)
    net = build_model("lfc", make_scheme("abc", 2, 2), (1, 8, 8), 10, 16)
    randomise_norms(net, 1)
    config = AccelConfig()
    exported = export_model(net, config)
    first = exported.layers[0]["branches"][0]["scales"]
    # First layer: s[m, b, o] ~ alpha_m[o] * 2^(b-1) / 127.5 / u[o], plane 7 using the full width and
    # the lower planes its halves, rounded.
    assert np.array_equal(np.abs(first[:, 7]).max(axis=0), np.full(first.shape[2], config.scale_max))
    halves = first[:, 7:8, :] / 2.0 ** (7 - np.arange(8))[None, :, None]
    assert np.all(np.abs(first - halves) <= 0.5)
    for layer in exported.layers[1:-1]:
        s = layer["branches"][0]["scales"]
        # Hidden layers: every channel's largest scale is the full-width maximum.
        assert np.array_equal(np.abs(s).max(axis=(0, 1)), np.full(s.shape[2], config.scale_max))
    last = exported.layers[-1]["branches"][0]["scales"]
    assert np.abs(last).max() == config.scale_max  # one global factor for the logits


def test_identity_shortcut_is_exact():
    shortcut = IdentityShortcut(5)
    with torch.no_grad():
        shortcut.gain.fill_(1.5)
    bases, alphas = shortcut.export()
    x = (np.random.default_rng(0).integers(0, 2, (3, 5)) * 2 - 1).astype(np.int64)
    total = sum(alphas[m][None, :] * (x @ bases[m, :, :, 0, 0].T.astype(np.int64)) for m in range(2))
    assert np.allclose(total, 1.5 * x)


def _net(model="lfc", scheme="xnor", m=1, n=1, shape=(1, 8, 8), width=8):
    torch.manual_seed(0)
    net = build_model(model, make_scheme(scheme, m, n), shape, 10, width)
    net.eval()
    return net


def test_refuses_bias_on_last_layer():
    net = _net()
    last = net.nodes[-1]
    last.bias = torch.nn.Parameter(torch.zeros(last.out_features))
    with pytest.raises(ExportError, match="layer 3 \\(linear\\): a per-class bias on the last layer"):
        export_model(net)


def test_refuses_non_monotone_fprelu():
    net = _net("cnv", "ftbnn", width=4)
    with torch.no_grad():
        net.nodes[3].nonlinearity.a_neg[2] = -0.2
    with pytest.raises(ExportError, match="layer 3 \\(conv\\): the FPReLU negative-side slope of channel 2 "
                                          "is -0.2, so the non-linearity is not monotone"):
        export_model(net)


def test_refuses_what_the_config_cannot_run():
    with pytest.raises(ExportError, match="scheme fp is a training baseline"):
        export_model(_net(scheme="fp"))
    with pytest.raises(ExportError, match="layer 0 \\(linear\\): a dot product of K = 784 bits exceeds max_k 512"):
        export_model(_net(shape=(1, 28, 28)), AccelConfig(max_k=512))
    with pytest.raises(ExportError, match="layer 0 \\(linear\\): 3 weight bases exceed max_wbases 2"):
        export_model(_net(scheme="abc", m=3, n=1), AccelConfig(max_wbases=2))
    with pytest.raises(ExportError, match="layer 0 \\(linear\\): 3 output planes exceed max_abases 2"):
        export_model(_net(scheme="pa", m=1, n=3), AccelConfig(max_abases=2))


def test_refuses_accumulator_overflow():
    config = AccelConfig(scale_bits=16, scale_frac=8, acc_bits=30, max_k=4096)
    reals = [np.ones((4, 4, 3))]
    scales, unit = fixed_scales("layer 5 (conv)", reals, [4096], config, per_channel=True)
    assert ref.acc_bound(scales[0], 4096).max() <= config.acc_max  # shrunk to fit
    assert np.abs(scales[0]).max() < config.scale_max
    with pytest.raises(ExportError, match="layer 5 \\(conv\\): its sums could reach .* but the 30-bit "
                                          "accumulator holds 536870911"):
        fixed_scales("layer 5 (conv)", [np.ones((8, 8, 3))] * 100, [4096] * 100, config, per_channel=True)


def test_model_errors():
    with pytest.raises(ModelError, match="Unknown model 'alexnet'"):
        build_model("alexnet", "xnor", (1, 8, 8), 10)
    with pytest.raises(ModelError, match="Width must be a positive integer, not 0"):
        build_model("lfc", "xnor", (1, 8, 8), 10, 0)


def test_benchmark_costs_count_bits_and_binary_ops():
    from benchmarks.accuracy import model_costs
    exported = export_model(_net("lfc", "abc", 2, 2, width=8))  # K: 64 -> 8 -> 8 -> 8 -> 10 classes
    weight_bits, total_bits, ops = model_costs(exported)
    assert weight_bits == 2 * (8 * 64 + 8 * 8 + 8 * 8 + 10 * 8)
    assert ops == 2 * 8 * 8 * 64 + 2 * (2 * 2 * 8 * 8) + 2 * 2 * 10 * 8
    scale_bits = (2 * 8 * 8 + 2 * 2 * 8 * 2 + 2 * 2 * 10) * 16
    threshold_bits = 3 * (8 * 2 * 32 + 8)
    assert total_bits == weight_bits + scale_bits + threshold_bits


def test_pow2_pixel_scales_let_the_compiler_group_planes():
    """pixel_scales="pow2": plane b's scale is exactly q * 2^b; the first layer still agrees with the
    float model; the compiler folds the planes into fewer passes and the ISS equals deploy_forward."""
    from sw.compile import compile_model
    from sw.runtime import open_backend
    torch.manual_seed(3)
    net = build_model("cnv", make_scheme("abc", 2, 2), (3, 8, 8), 10, 4)
    randomise_norms(net, 4)
    config = AccelConfig(max_wbases=2, max_abases=2, act_depth=8192)
    precise, pow2 = export_model(net, config), export_model(net, config, pixel_scales="pow2")
    s = pow2.layers[0]["branches"][0]["scales"]
    assert np.array_equal(s, s[:, :1] << np.arange(8).reshape(1, 8, 1))
    assert not np.array_equal(precise.layers[0]["branches"][0]["scales"], s)
    images = np.random.default_rng(7).integers(0, 256, (16, 3, 8, 8), dtype=np.uint8)
    _, a = deploy_forward(precise, images, intermediates=True)
    _, b = deploy_forward(pow2, images, intermediates=True)
    assert np.mean(a[0] == b[0]) > 0.99                      # the first layer's planes barely move
    grouped, plain = compile_model(pow2, config), compile_model(precise, config)
    assert len(grouped.input["groups"]) < 8 and len(plain.input["groups"]) == 8
    assert grouped.layers[0]["macs"] == plain.layers[0]["macs"]
    run = open_backend("iss", grouped).run(images)
    assert np.array_equal(run.logits, deploy_forward(pow2, images))
    assert run.layer_cycles[0][0] < open_backend("iss", plain).run(images[:1]).layer_cycles[0][0]
    with pytest.raises(ExportError, match="pixel_scales must be one of precise, pow2"):
        export_model(net, config, pixel_scales="exact")
