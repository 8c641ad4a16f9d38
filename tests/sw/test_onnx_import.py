"""Brevitas 1W1A networks exported as QONNX import into .bnn models that decide exactly as qonnx's own
executor does, compile, and run on the ISS; a bad file or an unsupported node is one line."""

import re

import numpy as np
import pytest

pytest.importorskip("qonnx")
pytest.importorskip("brevitas")
torch = pytest.importorskip("torch")

from hw.config import AccelConfig                                          # noqa: E402
from sw.compile import compile_model                                      # noqa: E402
from sw.data import load_dataset                                          # noqa: E402
from sw.model_format import deploy_forward, load_model                    # noqa: E402
from sw.onnx import OnnxError, import_onnx, pixels_to_input               # noqa: E402
from sw.onnx.__main__ import main                                         # noqa: E402
from sw.onnx.testing import (brevitas_cnv, brevitas_fc, calibrate_batch_norms, export_brevitas,  # noqa: E402
                             qonnx_execute, qonnx_graph, train_briefly)
from sw.onnx.testing import qonnx_node as node                            # noqa: E402
from sw.runtime import open_backend                                       # noqa: E402

torch.set_num_threads(1)

# CNV's input quantizer is Q1.7 of 2x - 1: its levels are pixel - 128 exactly when pixel p is p / 256.
CNV_RANGE = (0.0, 255 / 256)


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist5k")


def check_against_qonnx(tmp_path, net, images, input_range=(0.0, 1.0), cli_args=()):
    """Import the batch-1 export (what users write) through the command line; compare deploy_forward
    with execute_onnx on a batch export of the same network (and on the batch-1 file for a few images)."""
    single = export_brevitas(net, tmp_path / "net.onnx", batch=1)
    batched = export_brevitas(net, tmp_path / "batch.onnx", batch=len(images))
    out = tmp_path / "net.bnn"
    range_text = f"{input_range[0]!r},{input_range[1]!r}"
    assert main(["import", str(single), "--out", str(out), f"--input-range={range_text}", *cli_args]) == 0
    model = load_model(out)
    ours = deploy_forward(model, images)
    x = pixels_to_input(images, input_range)
    theirs = qonnx_execute(batched, x)
    for i in range(3):
        assert np.array_equal(qonnx_execute(single, x[i:i + 1]), theirs[i:i + 1])
    assert np.array_equal(ours.argmax(1), theirs.argmax(1))
    real = ours * model.logit_unit + model.training["logit_offset"]
    assert np.allclose(real, theirs, rtol=1e-5, atol=1e-4 * np.abs(theirs).max())
    return model, ours


@pytest.mark.parametrize("name", ["tfc_1w1a", "sfc_1w1a", "lfc_1w1a"])
def test_brevitas_fc_trained_three_epochs_imports_with_qonnx_predictions(tmp_path, mnist, name):
    """bnn_pynq's TFC / SFC / LFC 1W1A, 120 steps of 100 images (three epochs of MNIST-5k's 4,000):
    on all 1,000 test images the .bnn model's predictions equal execute_onnx's."""
    torch.manual_seed(1)
    net = brevitas_fc(name)
    train_briefly(net, mnist.train_x, mnist.train_y, steps=120, lr=0.01)
    model, logits = check_against_qonnx(tmp_path, net, mnist.test_x)
    assert [layer["kind"] for layer in model.layers] == ["linear"] * 4
    # The input quantizer sign(2x - 1) reads bit 7 of the pixel: one plane scale, the others 0.
    first = model.layers[0]["branches"][0]["scales"]
    assert np.count_nonzero(first[0, :7]) == 0 and np.all(first[0, 7] != 0)
    assert np.mean(logits.argmax(1) == mnist.test_y) > 0.7


@pytest.mark.parametrize("name", ["tfc_1w1a", "sfc_1w1a"])
def test_imported_fc_compiles_for_arty_a7_and_runs_on_the_iss(tmp_path, mnist, name):
    import boards
    torch.manual_seed(2)
    net = brevitas_fc(name)
    calibrate_batch_norms(net, mnist.train_x[:500], seed=2)
    config = boards.get_board("arty_a7").config
    model = import_onnx(export_brevitas(net, tmp_path / "net.onnx"), config)
    images = mnist.test_x[:8]
    with open_backend("iss", compile_model(model, config)) as backend:
        assert np.array_equal(backend.run(images).logits, deploy_forward(model, images))
    # Brevitas' export for a batch of 8 (its Reshape names the batch) imports as the same model.
    again = import_onnx(export_brevitas(net, tmp_path / "batch.onnx", batch=8), config)
    assert np.array_equal(deploy_forward(again, images), deploy_forward(model, images))


def test_brevitas_cnv_imports_with_qonnx_predictions_and_runs_on_the_iss(tmp_path):
    torch.manual_seed(3)
    net = brevitas_cnv(channels=(8, 8, 16, 16, 24, 24), features=24)
    rng = np.random.default_rng(3)
    # Smooth random images (a low-resolution pattern scaled up), so that the layers see structure.
    coarse = rng.integers(0, 256, (600, 3, 8, 8)).astype(np.uint8)
    images = np.repeat(np.repeat(coarse, 4, axis=2), 4, axis=3)
    calibrate_batch_norms(net, images[:100], seed=3)
    model, logits = check_against_qonnx(tmp_path, net, images[100:], CNV_RANGE, ["--board", "arty_a7"])
    assert [layer["kind"] for layer in model.layers] == ["conv", "conv", "maxpool", "conv", "conv", "maxpool",
                                                         "conv", "conv", "linear", "linear", "linear"]
    assert len(set(logits.argmax(1))) > 3
    # Arty A7-35T's activation memory is too small for a 32 x 32 x 3 image of 8 pixel planes.
    import boards
    config = boards.get_board("arty_a7").config.replace(act_depth=16384)
    bundle = compile_model(model, config)
    with open_backend("iss", bundle) as backend:
        assert np.array_equal(backend.run(images[:4]).logits, deploy_forward(model, images[:4]))


def test_cnv_under_totensor_pixels_is_refused_with_the_exact_range(tmp_path, capsys):
    net = brevitas_cnv(channels=(4, 4, 4, 4, 4, 4), features=4)
    net.eval()
    path = export_brevitas(net, tmp_path / "cnv.onnx")
    assert main(["import", str(path), "--out", str(tmp_path / "cnv.bnn")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert re.search(r"error: node '\w+' \(Quant\): its levels are not a linear function of the pixel's bits "
                     r"under --input-range 0,1 \(pixel 255 gives 0.992188\)", err)
    assert err.endswith("--input-range 0,0.99609375 maps the pixels onto its levels exactly\n")


# ---------------------------------------------------------------------------------------------------
# Hand-made graphs: what the importer accepts beyond Brevitas' own export, and what it refuses.

def small_graph(path, hidden_quant=None, extra_inits=None, batch=1):
    """x (1, 16) -> Quant 8 bits -> MatMul(+-0.5) -> Mul -> Add -> activation -> Gemm(+-1) -> y."""
    rng = np.random.default_rng(0)
    inits = {"s8": 1 / 255, "z0": 0.0, "b8": 8.0, "one": 1.0, "w1": rng.choice([-0.5, 0.5], (16, 6)),
             "g": rng.uniform(0.5, 2, 6) * rng.choice([-1, 1], 6), "h": rng.normal(0, 3, 6),
             "w2": rng.choice([-1.0, 1.0], (4, 6)), "thr": rng.normal(0, 1, (6, 1))}
    inits.update(extra_inits or {})
    nodes = [node("Quant", ["x", "s8", "z0", "b8"], "q", "in_quant", signed=0, narrow=0, rounding_mode="ROUND"),
             node("MatMul", ["q", "w1"], "m", "fc0"), node("Mul", ["m", "g"], "m2", "gain"),
             node("Add", ["m2", "h"], "a", "shift"),
             hidden_quant or node("MultiThreshold", ["a", "thr"], "act", "act", out_scale=2.0, out_bias=-1.0,
                                  out_dtype="BIPOLAR"),
             node("Gemm", ["act", "w2"], "y", "fc1", transB=1)]
    return qonnx_graph(path, nodes, inits, [batch, 16], [batch, 4])


def test_quant_matmul_multithreshold_graph_equals_execute_onnx(tmp_path):
    """An unsigned 8-bit input quantizer, MatMul, per-channel Mul and Add of either sign, a
    MultiThreshold, Gemm: the integer model equals execute_onnx on every one of 500 inputs."""
    path = small_graph(tmp_path / "g.onnx", batch=500)
    model = import_onnx(path)
    images = np.random.default_rng(1).integers(0, 256, (500, 1, 1, 16), dtype=np.uint8)
    ours = deploy_forward(model, images)
    theirs = qonnx_execute(path, pixels_to_input(images).reshape(500, 16))
    assert np.array_equal(ours * model.logit_unit, theirs)
    assert model.layers[0]["flip"].any() and not model.layers[0]["flip"].all()   # negative gains flip
    # The 8-bit quantizer's levels are the pixels: plane scales 1, 2, 4, ... 128 (exact ratios).
    scales = model.layers[0]["branches"][0]["scales"][0]
    assert np.array_equal(scales, scales[:1] * (1 << np.arange(8))[:, None])
    assert model.training["approximate_scales"] == []


@pytest.mark.parametrize("hidden,expected", [
    (("Quant", ["a", "sc", "z0", "b2"], {"signed": 1, "narrow": 0, "rounding_mode": "ROUND"}),
     "node 'act' (Quant): 2-bit activations; only the input may have more than 1 bit"),
    (("MultiThreshold", ["a", "thr3"], {"out_dtype": "INT2"}),
     "node 'act' (MultiThreshold): 3 thresholds per channel make 2-bit activations; only the input may have"),
    (("BipolarQuant", ["a", "m"], {}),
     "node 'act' (BipolarQuant): its input 'm' is computed at run time; the scale, zero point, bit width and "
     "thresholds must be constants"),
    (("Sigmoid", ["a"], {}),
     "node 'act' (Sigmoid): this op type is not supported (supported: Conv, Gemm, MatMul"),
])
def test_unsupported_nodes_are_refused_in_one_line(tmp_path, capsys, hidden, expected):
    op, inputs, attrs = hidden
    path = small_graph(tmp_path / "g.onnx", node(op, inputs, "act", "act", **attrs),
                       extra_inits={"sc": 1.0, "b2": 2.0, "thr3": np.sort(np.random.default_rng(0).normal(0, 1, (6, 3)))})
    assert main(["import", str(path), "--out", str(tmp_path / "g.bnn")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("python -m sw.onnx import: error: " + expected)
    assert err.count("\n") == 1
    assert not (tmp_path / "g.bnn").exists()


def test_bad_files_are_one_line(tmp_path, capsys):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage that is not a protobuf" * 10)
    cases = [(str(corrupt), "python -m sw.onnx import: error: Cannot read ONNX model " + str(corrupt) + ": "),
             (str(tmp_path / "missing.onnx"), "python -m sw.onnx import: error: Cannot read ONNX model "
              + str(tmp_path / "missing.onnx") + ": no such file\n")]
    # Weights in a .data file beside the .onnx (as Brevitas writes them), the .data file lost.
    from onnx import load, save_model
    separate = tmp_path / "separate.onnx"
    save_model(load(str(small_graph(tmp_path / "g.onnx"))), str(separate), save_as_external_data=True,
               location="separate.data", size_threshold=0)
    assert import_onnx(separate).classes == 4
    (tmp_path / "separate.data").unlink()
    cases.append((str(separate), "python -m sw.onnx import: error: Cannot read ONNX model " + str(separate) + ": "))
    for path, expected in cases:
        assert main(["import", path, "--out", str(tmp_path / "x.bnn")]) == 1
        err = capsys.readouterr().err
        assert err.startswith(expected) and err.count("\n") == 1 and "Traceback" not in err
    assert main(["import", str(corrupt), "--out", "x.bnn", "--input-range", "0"]) == 1
    assert capsys.readouterr().err == "python -m sw.onnx import: error: Input range must be two numbers LO,HI, not '0'\n"


def test_last_layer_per_class_bias_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    inits = {"s": 1.0, "half": 0.5, "w1": rng.choice([-1.0, 1.0], (8, 8)), "w2": rng.choice([-1.0, 1.0], (8, 3)),
             "bias": [0.0, 1.0, 2.0]}
    nodes = [node("Sub", ["x", "half"], "x0", "centre"), node("BipolarQuant", ["x0", "s"], "a0", "in_quant"), node("MatMul", ["a0", "w1"], "m1", "fc1"),
             node("BipolarQuant", ["m1", "s"], "a1", "act1"), node("MatMul", ["a1", "w2"], "m2", "fc2"),
             node("Add", ["m2", "bias"], "y", "class_bias")]
    path = qonnx_graph(tmp_path / "bias.onnx", nodes, inits, [1, 8], [1, 3])
    with pytest.raises(OnnxError, match=r"layer 1 \(linear, node 'fc2' \(MatMul\)\): adds a different constant "
                                        r"to each class \(class 2: 2, class 0: 0\)"):
        import_onnx(path)
    config = AccelConfig(max_k=4)
    with pytest.raises(OnnxError, match=r"layer 0 \(linear, node 'fc1' \(MatMul\)\): a dot product of K = 8 bits "
                                        r"exceeds max_k 4"):
        import_onnx(path, config)


def test_grouped_padded_convolutions_pooling_before_the_quantizer_equal_execute_onnx(tmp_path):
    """Conv with zero padding (the pixel 0 and the level 0 of {0, 1} activations are bit -1), BatchNorm,
    MaxPool between the sum and its quantizer, an unsigned 1-bit Quant (round half to even: strict),
    a grouped Conv, per-channel Mul / Add, a signed 1-bit Quant, Flatten, Gemm, a final scalar Mul."""
    rng = np.random.default_rng(5)
    inits = {"s8": 1 / 255, "z0": 0.0, "b8": 8.0, "b1": 1.0, "one": 1.0, "half": 0.5,
             "w1": rng.normal(0, 1, (6, 2, 3, 3)), "w2": rng.normal(0, 1, (8, 3, 3, 3)),
             "w3": rng.normal(0, 1, (4, 128)),
             "bn_gain": rng.normal(0, 1, 6), "bn_shift": rng.normal(0, 0.3, 6), "bn_mean": rng.normal(0, 1, 6),
             "bn_var": rng.uniform(2, 8, 6), "g": rng.normal(0, 1, (1, 8, 1, 1)),
             "h": rng.normal(0, 2, (1, 8, 1, 1))}
    nodes = [node("Quant", ["x", "s8", "z0", "b8"], "q", "in_quant", signed=0, narrow=0, rounding_mode="ROUND"),
             node("BipolarQuant", ["w1", "one"], "w1q", "w1_quant"),
             node("Conv", ["q", "w1q"], "c1", "conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             node("BatchNormalization", ["c1", "bn_gain", "bn_shift", "bn_mean", "bn_var"], "n1", "bn1"),
             node("MaxPool", ["n1"], "p1", "pool1", kernel_shape=[2, 2], strides=[2, 2]),
             node("Quant", ["p1", "one", "z0", "b1"], "a1", "act1", signed=0, narrow=0, rounding_mode="ROUND"),
             node("BipolarQuant", ["w2", "half"], "w2q", "w2_quant"),
             node("Conv", ["a1", "w2q"], "c2", "conv2", pads=[1, 1, 1, 1], kernel_shape=[3, 3], group=2),
             node("Mul", ["c2", "g"], "m2", "gain2"), node("Add", ["m2", "h"], "d2", "shift2"),
             node("Quant", ["d2", "one", "z0", "b1"], "a2", "act2", signed=1, narrow=0, rounding_mode="ROUND"),
             node("Flatten", ["a2"], "f2", "flatten", axis=1),
             node("BipolarQuant", ["w3", "one"], "w3q", "w3_quant"),
             node("Gemm", ["f2", "w3q"], "z", "fc", transB=1), node("Mul", ["z", "half"], "y", "out_scale")]
    # conv2's weights read 6 channels in 2 groups of 3.
    inits["w2"] = rng.normal(0, 1, (8, 3, 3, 3))
    path = qonnx_graph(tmp_path / "conv.onnx", nodes, inits, [200, 2, 8, 8], [200, 4])   # any batch imports
    model = import_onnx(path)
    assert [layer["kind"] for layer in model.layers] == ["conv", "maxpool", "conv", "linear"]
    first, second = model.layers[0]["branches"][0], model.layers[2]["branches"][0]
    assert (first["padding"], first["pad_value"], second["groups"], second["pad_value"]) == (1, -1, 2, -1)
    images = np.random.default_rng(6).integers(0, 256, (200, 2, 8, 8), dtype=np.uint8)
    images[:20, :, :4] = 0                                  # black borders: padding next to level 0
    ours = deploy_forward(model, images)
    x = pixels_to_input(images)
    assert np.array_equal(ours * model.logit_unit, qonnx_execute(path, x))
    planes = deploy_forward(model, images, intermediates=True)[1]
    assert 0.1 < np.mean(planes[0] > 0) < 0.9 and 0.1 < np.mean(planes[2] > 0) < 0.9


def test_input_threshold_off_a_bit_boundary_becomes_a_first_layer(tmp_path, mnist):
    """Under --input-range -1,1 TFC's sign(2x - 1) is pixel >= 192, not a bit of the pixel: a first
    layer of 1x1 convolutions thresholds 2p - 255 at 129; predictions still equal execute_onnx's, and the
    model runs on the ISS (for a config with deeper memories than the Arty A7-35T's: the compiler stores
    the one-channel 28 x 28 map a word per pixel, and the next layer's weights to match)."""
    import boards
    torch.manual_seed(4)
    net = brevitas_fc("tfc_1w1a")
    calibrate_batch_norms(net, mnist.train_x[:500], seed=4)
    model, logits = check_against_qonnx(tmp_path, net, mnist.test_x[:500], (-1.0, 1.0))
    assert [layer["kind"] for layer in model.layers] == ["conv"] + ["linear"] * 4
    assert model.layers[0]["thresholds"].tolist() == [[2 * 192 - 255]]
    config = boards.get_board("arty_a7").config.replace(act_depth=8192, patch_depth=1024, weight_depth=8192)
    with open_backend("iss", compile_model(import_onnx(tmp_path / "net.onnx", config, (-1.0, 1.0)), config)) as backend:
        assert np.array_equal(backend.run(mnist.test_x[:4]).logits, logits[:4])


def test_command_line_help_board_and_config_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["import", "--help"])
    assert exit_.value.code == 0 and "--input-range LO,HI" in capsys.readouterr().out
    path = small_graph(tmp_path / "g.onnx")
    out = str(tmp_path / "g.bnn")
    assert main(["import", str(path), "--out", out, "--board", "nope"]) == 1
    assert capsys.readouterr().err.startswith("python -m sw.onnx import: error: Unknown board 'nope'; supported boards: ")
    assert main(["import", str(path), "--out", out, "--config", str(tmp_path / "none.json")]) == 1
    assert capsys.readouterr().err.startswith("python -m sw.onnx import: error: Cannot read config file ")
    assert main(["import", str(path), "--out", out, "--board", "arty_a7"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "2 layers (linear, linear), input (1, 1, 16), 4 classes"
    # A flat (N, 16) input folded into 4 x 4 images: the same model on the same pixels.
    assert main(["import", str(path), "--out", str(tmp_path / "folded.bnn"), "--input-shape", "1,4,4"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "2 layers (linear, linear), input (1, 4, 4), 4 classes"
    images = np.random.default_rng(0).integers(0, 256, (8, 1, 4, 4), dtype=np.uint8)
    assert np.array_equal(deploy_forward(load_model(tmp_path / "folded.bnn"), images),
                          deploy_forward(load_model(out), images.reshape(8, 1, 1, 16)))
    for shape, message in (("2,3,3", "input shape 2,3,3 does not fit the model input 'x' of shape [1, 16]"),
                           ("4,4", "Input shape must be three positive integers C,H,W, not '4,4'")):
        assert main(["import", str(path), "--out", out, "--input-shape", shape]) == 1
        assert message in capsys.readouterr().err


def test_per_class_weight_scales_round_the_last_layer_and_say_so(tmp_path, capsys):
    """Per-output-channel weight scales: hidden layers stay exact (one scale per channel), the last
    layer's scales share one unit and are rounded to the config's scale width; the import says which."""
    rng = np.random.default_rng(2)
    inits = {"s": 1.0, "half": 0.5, "w1": rng.normal(0, 1, (32, 16)), "w2": rng.normal(0, 1, (16, 5)),
             "a1": rng.uniform(0.1, 1, (1, 16)), "a2": rng.uniform(0.1, 1, (1, 5)), "shift": rng.normal(0, 2, 16)}
    nodes = [node("Sub", ["x", "half"], "x0", "centre"), node("BipolarQuant", ["x0", "s"], "a0", "in_quant"),
             node("BipolarQuant", ["w1", "a1"], "w1q", "w1_quant"), node("MatMul", ["a0", "w1q"], "m1", "fc1"),
             node("Add", ["m1", "shift"], "h1", "shift1"), node("BipolarQuant", ["h1", "s"], "b1", "act1"),
             node("BipolarQuant", ["w2", "a2"], "w2q", "w2_quant"), node("MatMul", ["b1", "w2q"], "y", "fc2")]
    path = qonnx_graph(tmp_path / "scaled.onnx", nodes, inits, [400, 32], [400, 5])
    assert main(["import", str(path), "--out", str(tmp_path / "scaled.bnn")]) == 0
    assert "scales rounded (not exact ratios) in: layer 1 (linear, node 'fc2' (MatMul))" in capsys.readouterr().out
    model = load_model(tmp_path / "scaled.bnn")
    assert model.training["approximate_scales"] == ["layer 1 (linear, node 'fc2' (MatMul))"]
    images = np.random.default_rng(3).integers(0, 256, (400, 1, 1, 32), dtype=np.uint8)
    ours = deploy_forward(model, images)
    theirs = qonnx_execute(path, pixels_to_input(images).reshape(400, 32))
    assert np.allclose(ours * model.logit_unit, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
    # Where predictions differ, classes tie exactly in real arithmetic (dot products of 0, which float32
    # sums of +-alpha miss by 1e-7): execute_onnx's choice is one of the integer model's tied maxima.
    differ = np.flatnonzero(ours.argmax(1) != theirs.argmax(1))
    assert len(differ) <= 0.02 * len(images)
    for i in differ:
        assert ours[i, theirs[i].argmax()] == ours[i].max()


def random_chain(rng, batch):
    """A random two-convolution, one-Gemm binary chain over (batch, C, 8, 8) inputs: input affine maps
    and quantizer, padding where it is exact, batch norm or per-channel Mul / Add of either sign,
    MaxPool before or after the activation, each kind of 1-bit activation (offset ones before the Gemm
    need the constant plane), groups. Weight scales are powers of two and every threshold has a random
    shift, so float32 meets no exact tie."""
    c_in = int(rng.integers(1, 4))
    inits, nodes, shape = {"zero": 0.0, "one": 1.0, "b1": 1.0, "b8": 8.0, "s8": 1 / 255}, [], [c_in, 8, 8]
    count = iter(range(1000))

    def add(op, inputs, **attrs):
        out = f"t{next(count)}"
        nodes.append(node(op, inputs, out, f"{op.lower()}_{len(nodes)}", **attrs))
        return out

    def const(value):
        name = f"c{next(count)}"
        inits[name] = value
        return name

    x, zero_level = "x", True                       # pixel 0 is 0.0 under ToTensor
    kind = rng.choice(["float", "quant8", "bipolar"])
    if kind != "quant8" and rng.random() < 0.5:      # (a scaled 8-bit Quant would round off its steps)
        x = add("Mul", [x, const(float(rng.choice([0.5, 2.0, 3.0])))])
    if kind == "quant8":
        x = add("Quant", [x, "s8", "zero", "b8"], signed=0, narrow=0, rounding_mode="ROUND")
    elif kind == "bipolar":
        x = add("BipolarQuant", [add("Sub", [x, const(0.5)]), "one"])
        zero_level = False
    for layer in range(2):
        c = shape[0]
        groups = int(rng.choice([g for g in (1, 2, 3) if c % g == 0]))
        out = groups * int(rng.integers(2, 5))
        k = int(rng.choice([1, 3])) if shape[1] >= 3 else 1
        pad = int(k == 3 and zero_level and rng.random() < 0.7)
        stride = int(rng.choice([1, 2])) if layer == 0 else 1
        scale = rng.choice([0.5, 1.0, 2.0], (out, 1, 1, 1)) if rng.random() < 0.5 else 1.0
        w = add("BipolarQuant", [const(rng.normal(0, 1, (out, c // groups, k, k))), const(scale)])
        x = add("Conv", [x, w], kernel_shape=[k, k], pads=[pad] * 4, strides=[stride] * 2, group=groups)
        h = (shape[1] + 2 * pad - k) // stride + 1
        shape = [out, h, h]
        pool_first = h >= 4 and rng.random() < 0.3
        if rng.random() < 0.5:
            x = add("BatchNormalization", [x, const(rng.normal(0, 1, out)), const(rng.normal(0, 0.5, out)),
                                           const(rng.normal(0, 1, out)), const(rng.uniform(1, 9, out))])
        else:
            x = add("Mul", [x, const(rng.normal(0, 1, (1, out, 1, 1)))])
            x = add("Add", [x, const(rng.normal(0, 2, (1, out, 1, 1)))])
        if pool_first:
            x = add("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
            shape = [out, h // 2, h // 2]
        act = rng.choice(["bipolar", "signed", "unsigned", "threshold"])
        if act == "bipolar":
            x, zero_level = add("BipolarQuant", [x, const(float(rng.choice([0.5, 1.0])))]), False
        elif act == "signed":
            zero = float(rng.choice([0.0, 0.5]))
            x, zero_level = add("Quant", [x, "one", const(zero), "b1"], signed=1, narrow=0, rounding_mode="ROUND"), False
        elif act == "unsigned":
            x, zero_level = add("Quant", [x, "one", "zero", "b1"], signed=0, narrow=0, rounding_mode="ROUND"), True
        else:
            x, zero_level = add("MultiThreshold", [x, const(rng.normal(0, 0.5, (out, 1)))], out_dtype="BINARY"), True
        if not pool_first and shape[1] >= 4 and rng.random() < 0.3:
            x = add("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
            shape = [out, shape[1] // 2, shape[2] // 2]
    x = add("Flatten", [x], axis=1)
    x = add("Gemm", [x, add("BipolarQuant", [const(rng.normal(0, 1, (4, int(np.prod(shape))))), "one"])], transB=1)
    nodes.append(node("Mul", [x, const(float(rng.uniform(0.5, 2)))], "y", "out_scale"))
    return nodes, inits, [batch, c_in, 8, 8]


@pytest.mark.parametrize("seed", range(12))
def test_random_chains_decide_as_execute_onnx(tmp_path, seed):
    rng = np.random.default_rng(100 + seed)
    nodes, inits, in_shape = random_chain(rng, 100)
    path = qonnx_graph(tmp_path / "chain.onnx", nodes, inits, in_shape, [100, 4])
    model = import_onnx(path)
    images = rng.integers(0, 256, tuple(in_shape), dtype=np.uint8)
    images[:10] = 0                                  # black images: padding next to pixel 0
    ours = deploy_forward(model, images)
    theirs = qonnx_execute(path, pixels_to_input(images))
    real = ours * model.logit_unit + model.training["logit_offset"]
    assert np.allclose(real, theirs, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(theirs).max()))
    differ = np.flatnonzero(ours.argmax(1) != theirs.argmax(1))
    for i in differ:                                 # only classes tied in the integer model
        assert ours[i, theirs[i].argmax()] == ours[i].max()
    # The compiler takes groups only of whole channel words (and none in the first layer).
    if all(b.get("groups", 1) == 1 for layer in model.layers for b in layer.get("branches", [])):
        with open_backend("iss", compile_model(model, AccelConfig())) as backend:
            assert np.array_equal(backend.run(images[8:12]).logits, ours[8:12])
