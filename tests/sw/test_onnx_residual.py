"""Residual Adds in QONNX import: two addends, each a layer's sum (through affine maps) or binary
activations (the identity), become one .bnn layer with a main branch and a shortcut whose integer
thresholds decide exactly as the float graph; what cannot be represented exactly is one line."""

import numpy as np
import pytest

pytest.importorskip("qonnx")
pytest.importorskip("brevitas")
torch = pytest.importorskip("torch")

from hw.config import AccelConfig                                          # noqa: E402
from sw.compile import compile_model                                      # noqa: E402
from sw.model_format import deploy_forward, load_model                    # noqa: E402
from sw.onnx import OnnxError, import_onnx, pixels_to_input               # noqa: E402
from sw.onnx.__main__ import main                                         # noqa: E402
from sw.onnx.importer import _ALWAYS, _NEVER, _pair_threshold             # noqa: E402
from sw.onnx.testing import (brevitas_residual, calibrate_batch_norms, export_brevitas,  # noqa: E402
                             qonnx_execute, qonnx_graph)
from sw.onnx.testing import qonnx_node as node                            # noqa: E402
from sw.runtime import open_backend                                       # noqa: E402

torch.set_num_threads(1)


def smooth_images(count, size, seed):
    """Random images with structure: a coarse random pattern scaled up twice."""
    coarse = np.random.default_rng(seed).integers(0, 256, (count, 1, size // 2, size // 2)).astype(np.uint8)
    return np.repeat(np.repeat(coarse, 2, axis=2), 2, axis=3)


def import_and_compare(tmp_path, net, images):
    """Import the batch-1 export through the command line; deploy_forward against execute_onnx on a
    batch export: the same predictions, and logits equal to logit_unit * logits + logit_offset."""
    single = export_brevitas(net, tmp_path / "net.onnx", batch=1)
    batched = export_brevitas(net, tmp_path / "batch.onnx", batch=len(images))
    out = tmp_path / "net.bnn"
    assert main(["import", str(single), "--out", str(out)]) == 0
    model = load_model(out)
    ours = deploy_forward(model, images)
    theirs = qonnx_execute(batched, pixels_to_input(images))
    assert np.array_equal(ours.argmax(1), theirs.argmax(1))
    real = ours * model.logit_unit + model.training["logit_offset"]
    assert np.allclose(real, theirs, rtol=1e-5, atol=1e-4 * np.abs(theirs).max())
    assert len(set(theirs.argmax(1))) > 3
    return model, ours


@pytest.mark.parametrize("blocks", ["identity", "projection", "strided", "bireal"])
def test_brevitas_residual_blocks_import_with_qonnx_predictions_and_run_on_the_iss(tmp_path, blocks):
    """Bi-Real's BN(conv3x3(a)) + a (the same map through the 3x3 and the identity), a downsampling
    basic block BN(conv3x3(b)) + BN(conv1x1 stride 2 (a)), and BN(conv3x3 stride 2 (a)) + a 1x1 stride-2
    max pool of a (a strided identity), and Bi-Real's downsampling BN(conv3x3 stride 2 (a)) +
    BN(conv1x1(AvgPool 2x2 (a))) (a 2x2 stride-2 shortcut), batch norm with random gains of either sign:
    on 256 images predictions and logits equal execute_onnx's; the model compiles and the ISS returns
    deploy_forward's logits."""
    torch.manual_seed(0)
    net = brevitas_residual(blocks)
    images = smooth_images(256 + 200, 8, seed=1)
    calibrate_batch_norms(net, images[:200], seed=2)
    model, logits = import_and_compare(tmp_path, net, images[200:])
    residual = [layer for layer in model.layers if len(layer.get("branches", [])) == 2]
    assert len(residual) == 1
    main_branch, short = residual[0]["branches"]
    if blocks == "bireal":
        assert [layer["kind"] for layer in model.layers] == ["conv", "conv", "linear"]
        assert main_branch["source"] == short["source"] == 0
        assert (tuple(short["kernel"]), short["stride"], short["padding"], short["wbases"]) == ((2, 2), 2, 0, 1)
        # The 1x1 weights repeat over the 2x2 window.
        weights = short["weights"][0]
        assert np.all(weights == weights[:, :, :1, :1])
    elif blocks != "projection":
        assert [layer["kind"] for layer in model.layers] == ["conv", "conv", "linear"]
        # The identity: a 1x1 convolution (stride 2 for the strided one) of the main branch's own
        # input, all +1 and all +1 but the diagonal, scales s and -s.
        stride = 2 if blocks == "strided" else 1
        assert main_branch["source"] == short["source"] == 0
        assert (tuple(main_branch["kernel"]), main_branch["stride"], tuple(short["kernel"]), short["stride"],
                short["wbases"]) == ((3, 3), stride, (1, 1), stride, 2)
        weights = short["weights"].reshape(2, 8, 8)
        assert np.all(weights[0] == 1) and np.array_equal(weights[1], 1 - 2 * np.eye(8, dtype=np.int8))
        assert np.array_equal(short["scales"][1], -short["scales"][0])
    else:
        assert [layer["kind"] for layer in model.layers] == ["conv", "conv", "conv", "linear"]
        assert (main_branch["source"], tuple(main_branch["kernel"]), main_branch["stride"]) == (1, (3, 3), 1)
        assert (short["source"], tuple(short["kernel"]), short["stride"], short["wbases"]) == (0, (1, 1), 2, 1)
    # Both branches count: their scales are not 0 throughout.
    assert np.any(main_branch["scales"]) and np.any(short["scales"])
    with open_backend("iss", compile_model(model, AccelConfig())) as backend:
        assert np.array_equal(backend.run(images[200:208]).logits, logits[:8])


@pytest.mark.slow
def test_brevitas_residual_trained_on_mnist_imports_with_qonnx_predictions(tmp_path):
    """Both blocks on 28 x 28 MNIST-5k, trained for 150 steps: all 1,000 test predictions equal
    execute_onnx's, and the network has learned something."""
    from sw.data import load_dataset
    from sw.onnx.testing import train_briefly
    mnist = load_dataset("mnist5k")
    torch.manual_seed(3)
    net = brevitas_residual("both", channels=8, size=28)
    train_briefly(net, mnist.train_x, mnist.train_y, steps=150, lr=0.01)
    model, logits = import_and_compare(tmp_path, net, mnist.test_x)
    assert np.mean(logits.argmax(1) == mnist.test_y) > 0.5


# ---------------------------------------------------------------------------------------------------
# Hand-made graphs.

def linear_residual(path, add="Add", activation="BipolarQuant", shortcut="a1", batch=1, tail=None):
    """x (B, 8) -> BipolarQuant(x - 0.5) -> fc1 -> BipolarQuant a1 -> fc2 -> Mul g -> add(., shortcut)
    -> Add h -> activation -> fc3 (+ tail nodes) -> y. The shortcut is a1 (the identity) or m1 (fc1's
    sum again: a second layer reading the input planes)."""
    rng = np.random.default_rng(0)
    inits = {"s": 1.0, "half": 0.5, "one": 1.0, "z0": 0.0, "b1": 1.0,
             "w1": rng.choice([-1.0, 1.0], (8, 8)), "w2": rng.choice([-1.0, 1.0], (8, 8)),
             "w3": rng.choice([-1.0, 1.0], (8, 3)), "g": rng.normal(0, 1, 8), "h": rng.normal(0, 2, 8),
             "thr": rng.normal(0, 1, (8, 1)), "bias": [0.0, 1.0, 2.0]}
    act = {"BipolarQuant": node("BipolarQuant", ["r2", "s"], "a2", "act2"),
           "Quant": node("Quant", ["r2", "one", "z0", "b1"], "a2", "act2", signed=0, narrow=0, rounding_mode="ROUND"),
           "MultiThreshold": node("MultiThreshold", ["r2", "thr"], "a2", "act2", out_scale=2.0, out_bias=-1.0,
                                  out_dtype="BIPOLAR")}[activation]
    nodes = [node("Sub", ["x", "half"], "x0", "centre"), node("BipolarQuant", ["x0", "s"], "a0", "in_quant"),
             node("MatMul", ["a0", "w1"], "m1", "fc1"), node("BipolarQuant", ["m1", "s"], "a1", "act1"),
             node("MatMul", ["a1", "w2"], "m2", "fc2"), node("Mul", ["m2", "g"], "m3", "gain"),
             node(add, ["m3", shortcut], "r", "shortcut_add"), node("Add", ["r", "h"], "r2", "shift"), act,
             node("MatMul", ["a2", "w3"], "y" if tail is None else "z", "fc3")] + (tail or [])
    return qonnx_graph(path, nodes, inits, [batch, 8], [batch, 3])


@pytest.mark.parametrize("add,activation,shortcut", [
    ("Add", "BipolarQuant", "a1"), ("Sub", "Quant", "a1"), ("Add", "MultiThreshold", "a1"),
    ("Sub", "BipolarQuant", "m1")])
def test_linear_residuals_equal_execute_onnx(tmp_path, add, activation, shortcut):
    """Per-channel gains of either sign on the main branch, the identity or a second use of an earlier
    layer's sum as the shortcut, Add or Sub, each kind of 1-bit quantizer (unsigned Quant: strict):
    on 400 inputs deploy_forward's logits equal execute_onnx's exactly."""
    path = linear_residual(tmp_path / "res.onnx", add, activation, shortcut, batch=400)
    model = import_onnx(path)
    layer = model.layers[1]
    assert [b["source"] for b in layer["branches"]] == [0, 0 if shortcut == "a1" else -1]
    assert layer["branches"][1]["wbases"] == (2 if shortcut == "a1" else 1)
    images = np.random.default_rng(1).integers(0, 256, (400, 1, 1, 8), dtype=np.uint8)
    ours = deploy_forward(model, images)
    theirs = qonnx_execute(path, pixels_to_input(images).reshape(400, 8))
    assert np.array_equal(ours * model.logit_unit + model.training["logit_offset"], theirs)
    planes = deploy_forward(model, images, intermediates=True)[1][1]
    assert 0.1 < np.mean(planes > 0) < 0.9


def test_residual_last_layer_equals_execute_onnx_or_is_refused_with_a_class_bias(tmp_path):
    """A residual sum as the logits: fc3(a2) + fc4(a1) imports (one unit for both branches); with a
    per-class bias it is refused in one line."""
    rng = np.random.default_rng(3)
    tail = [node("MatMul", ["a1", "w4"], "z4", "fc4"), node("Add", ["z", "z4"], "y", "logits_add")]
    path = linear_residual(tmp_path / "last.onnx", batch=300, tail=tail)
    from onnx import load, numpy_helper, save
    proto = load(str(path))
    proto.graph.initializer.append(numpy_helper.from_array(rng.choice([-2.0, 2.0], (8, 3)).astype(np.float32),
                                                           "w4"))
    save(proto, str(path))
    model = import_onnx(path)
    assert [b["source"] for b in model.layers[2]["branches"]] == [1, 0]
    images = rng.integers(0, 256, (300, 1, 1, 8), dtype=np.uint8)
    theirs = qonnx_execute(path, pixels_to_input(images).reshape(300, 8))
    assert np.array_equal(deploy_forward(model, images) * model.logit_unit, theirs)
    tail = [node("MatMul", ["a1", "w4"], "z4", "fc4"), node("Add", ["z", "z4"], "z5", "logits_add"),
            node("Add", ["z5", "bias"], "y", "class_bias")]
    path = linear_residual(tmp_path / "bias.onnx", tail=tail)
    proto = load(str(path))
    proto.graph.initializer.append(numpy_helper.from_array(np.ones((8, 3), np.float32), "w4"))
    save(proto, str(path))
    with pytest.raises(OnnxError, match=r"^layer 2 \(linear, node 'logits_add' \(Add\)\): its residual sum adds a "
                                        r"different constant to each class \(class 2: 2, class 0: 0\)"):
        import_onnx(path)


@pytest.mark.parametrize("case,expected", [
    ("three", "node 'add3' (Add): its addends read 3 different maps or kernels (layer 1 (linear, K = 8), layer 0 "
              "(linear, K = 8), the input (linear, K = 8)); a layer sums at most two groups of branches, a main "
              "branch and one shortcut"),
    ("pixels", "node 'shortcut_add' (Add): adds 'x0', a function of the input pixels; each addend must be a "
               "layer's sum or binary activations"),
    ("product", "node 'square' (Mul): reads two computed tensors; only a residual Add / Sub of two is imported"),
    ("ratio", "layer 2 (linear, node 'logits_add' (Add)): the real scales of its branches have no exact integer "
              "ratios within 16-bit scales"),
])
def test_residuals_that_cannot_be_exact_are_refused_in_one_line(tmp_path, capsys, case, expected):
    tail = None
    shortcut = "a1"
    if case == "pixels":
        shortcut = "x0"
    path = linear_residual(tmp_path / "res.onnx", shortcut=shortcut, tail=tail)
    from onnx import load, numpy_helper, save
    proto = load(str(path))
    nodes = list(proto.graph.node)
    if case == "three":     # (fc5(a2) + m2) + m1: layers 1, 0 and the input
        nodes[-1:] = [node("MatMul", ["a2", "w2"], "m5", "fc5"), node("Add", ["m5", "m2"], "r5", "add2"),
                      node("Add", ["r5", "m1"], "r6", "add3"), node("BipolarQuant", ["r6", "s"], "a3", "act3"),
                      node("MatMul", ["a3", "w3"], "y", "fc3")]
    elif case == "product":
        index = [n.name for n in nodes].index("shortcut_add")
        nodes[index] = node("Mul", ["m3", "a1"], "r", "square")
    elif case == "ratio":   # logits fc3(a2) + gain[o] * fc4(a1): per-class gains with no common unit
        nodes[-1].output[0] = "z"
        nodes += [node("MatMul", ["a1", "w4"], "z4", "fc4"), node("Mul", ["z4", "gains"], "z5", "class_gains"),
                  node("Add", ["z", "z5"], "y", "logits_add")]
        proto.graph.initializer.extend([numpy_helper.from_array(np.ones((8, 3), np.float32), "w4"),
                                        numpy_helper.from_array(np.float32([np.pi, np.e, np.sqrt(2)]), "gains")])
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    save(proto, str(path))
    assert main(["import", str(path), "--out", str(tmp_path / "res.bnn")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("python -m sw.onnx import: error: " + expected)
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "res.bnn").exists()


def test_pair_thresholds_decide_as_the_real_sum_with_the_smallest_scales():
    """s1 x + s2 y >= T equals h1 x + h2 y + h0 >= 0 (> 0 strict) on the whole grid, with the smallest
    s1 > 0 that can: no smaller s1 and any s2, T reproduces the decision."""
    rng = np.random.default_rng(4)
    for trial in range(300):
        k1 = int(rng.integers(1, 30))
        v1 = np.arange(-k1, k1 + 1, 2)
        v2 = np.array([-2, 2]) if trial % 2 else np.arange(-5, 6, 2)
        h1, h2 = rng.normal(0, 1, 2) * (rng.random(2) > 0.1)
        h0 = rng.normal(0, k1 / 2)
        if trial % 5 == 0:      # a boundary exactly on a grid point: >= counts it, > does not
            h0 = -(h1 * v1[len(v1) // 2] + h2 * v2[0])
        strict = bool(trial % 3 == 0)
        f = h1 * v1[:, None] + h2 * v2[None, :] + h0
        f[np.abs(f) < 1e-12] = 0
        decision = f > 0 if strict else f >= 0
        s1, s2, T = _pair_threshold(h1, h2, h0, v1, v2, strict, 1 << 15)
        if T is _ALWAYS or T is _NEVER:
            assert np.all(decision == (T is _ALWAYS)) and (s1, s2) == (0, 0)
            continue
        assert np.array_equal(s1 * v1[:, None] + s2 * v2[None, :] >= T, decision)
        # Minimal: no smaller scale on the longer grid works with any other scale (beyond |other| =
        # |scale| * grid extent + 1 the order of the sums no longer changes).
        a, table = (s1, decision) if len(v1) >= len(v2) else (s2, decision.T)
        va, vb = (v1, v2) if len(v1) >= len(v2) else (v2, v1)
        if 1 < abs(a) <= 6:
            for small in range(1, abs(a)):
                for b in range(-small * va.max() - 1, small * va.max() + 2):
                    acc = np.sign(a) * small * va[:, None] + b * vb[None, :]
                    assert acc[table].min() <= acc[~table].max()


def test_strided_identity_and_a_pooled_map_in_one_layer_equal_execute_onnx(tmp_path):
    """A 1x1 stride-2 max pool of a1 read by a Conv (a maxpool layer) and by the residual Add (a 1x1
    stride-2 identity of a1 itself): two groups, predictions and logits equal execute_onnx's."""
    rng = np.random.default_rng(7)
    inits = {"s8": 1 / 255, "z0": 0.0, "b8": 8.0, "one": 1.0, "w1": rng.choice([-1.0, 1.0], (4, 1, 3, 3)),
             "mean": rng.normal(0, 3, 4), "var": rng.uniform(1, 4, 4), "gain": rng.normal(0, 1, 4),
             "shift": rng.normal(0, 0.3, 4), "w2": rng.choice([-1.0, 1.0], (4, 4, 1, 1)),
             "g": rng.normal(0, 1, (1, 4, 1, 1)), "w3": rng.choice([-1.0, 1.0], (3, 36))}
    nodes = [node("Quant", ["x", "s8", "z0", "b8"], "q", "in_quant", signed=0, narrow=0, rounding_mode="ROUND"),
             node("Conv", ["q", "w1"], "c1", "conv1", kernel_shape=[3, 3]),
             node("BatchNormalization", ["c1", "gain", "shift", "mean", "var"], "n1", "bn1"),
             node("BipolarQuant", ["n1", "one"], "a1", "act1"),
             node("MaxPool", ["a1"], "p", "every_other", kernel_shape=[1, 1], strides=[2, 2]),
             node("Conv", ["p", "w2"], "c2", "conv2", kernel_shape=[1, 1]), node("Mul", ["c2", "g"], "m2", "gain2"),
             node("Add", ["m2", "p"], "r", "shortcut_add"), node("BipolarQuant", ["r", "one"], "a2", "act2"),
             node("Flatten", ["a2"], "f", "flatten", axis=1), node("Gemm", ["f", "w3"], "y", "fc", transB=1)]
    path = qonnx_graph(tmp_path / "strided.onnx", nodes, inits, [300, 1, 8, 8], [300, 3])
    model = import_onnx(path)
    assert [layer["kind"] for layer in model.layers] == ["conv", "maxpool", "conv", "linear"]
    assert (model.layers[1]["kernel"], model.layers[1]["stride"]) == (1, 2)
    main_branch, short = model.layers[2]["branches"]
    assert (main_branch["source"], main_branch["stride"]) == (1, 1)
    assert (short["source"], short["stride"], short["wbases"]) == (0, 2, 2)
    images = rng.integers(0, 256, (300, 1, 8, 8), dtype=np.uint8)
    ours = deploy_forward(model, images)
    theirs = qonnx_execute(path, pixels_to_input(images))
    assert np.array_equal(ours.argmax(1), theirs.argmax(1))
    assert np.allclose(ours * model.logit_unit, theirs, rtol=1e-6, atol=1e-6 * np.abs(theirs).max())


def test_input_planes_read_by_two_layers_are_converted_once(tmp_path):
    """A thermometer input (pixel >= 100, not a bit boundary) read by fc1 and again by the residual
    shortcut fc3: one first layer serves both; predictions and logits equal execute_onnx's."""
    rng = np.random.default_rng(8)
    inits = {"thr": np.full((1, 1), 100 / 255), "one": 1.0, "w1": rng.choice([-1.0, 1.0], (16, 8)),
             "w2": rng.choice([-1.0, 1.0], (8, 8)), "w3": rng.choice([-1.0, 1.0], (16, 8)),
             "g": rng.normal(0, 1, 8), "w4": rng.choice([-1.0, 1.0], (8, 3))}
    nodes = [node("MultiThreshold", ["x", "thr"], "q", "in_quant", out_scale=2.0, out_bias=-1.0, out_dtype="BIPOLAR"),
             node("MatMul", ["q", "w1"], "m1", "fc1"), node("BipolarQuant", ["m1", "one"], "a1", "act1"),
             node("MatMul", ["a1", "w2"], "m2", "fc2"), node("Mul", ["m2", "g"], "m3", "gain"),
             node("MatMul", ["q", "w3"], "m4", "fc3"), node("Add", ["m3", "m4"], "r", "shortcut_add"),
             node("BipolarQuant", ["r", "one"], "a2", "act2"), node("MatMul", ["a2", "w4"], "y", "fc4")]
    path = qonnx_graph(tmp_path / "twice.onnx", nodes, inits, [300, 16], [300, 3])
    model = import_onnx(path)
    assert [layer["kind"] for layer in model.layers] == ["conv", "linear", "linear", "linear"]
    assert [b["source"] for b in model.layers[2]["branches"]] == [1, 0]
    images = rng.integers(0, 256, (300, 1, 1, 16), dtype=np.uint8)
    ours = deploy_forward(model, images)
    theirs = qonnx_execute(path, pixels_to_input(images).reshape(300, 16))
    assert np.array_equal(ours.argmax(1), theirs.argmax(1))
    assert np.allclose(ours * model.logit_unit, theirs, rtol=1e-6, atol=1e-6 * np.abs(theirs).max())


@pytest.mark.parametrize("reader,expected", [
    ("Conv3", "node 'short' (Conv): reads an AveragePool; only an ungrouped 1x1 convolution of stride 1 without "
              "padding may (the two are one binary convolution)"),
    ("Flatten", "node 'short' (Flatten): reads an average of binary activations, which is not binary; only a 1x1 "
                "Conv may read an AveragePool"),
    ("Add", "node 'shortcut_add' (Add): adds 'p', an average of binary activations; only a 1x1 Conv may read an "
            "AveragePool"),
])
def test_an_average_pool_is_read_only_by_a_1x1_conv(tmp_path, capsys, reader, expected):
    rng = np.random.default_rng(9)
    inits = {"s8": 1 / 255, "z0": 0.0, "b8": 8.0, "one": 1.0, "w1": rng.choice([-1.0, 1.0], (4, 1, 3, 3)),
             "w2": rng.choice([-1.0, 1.0], (4, 4, 3, 3)), "w3": rng.choice([-1.0, 1.0], (4, 4, 3, 3)),
             "w4": rng.choice([-1.0, 1.0], (3, 16))}
    nodes = [node("Quant", ["x", "s8", "z0", "b8"], "q", "in_quant", signed=0, narrow=0, rounding_mode="ROUND"),
             node("Conv", ["q", "w1"], "c1", "conv1", kernel_shape=[3, 3]),
             node("BipolarQuant", ["c1", "one"], "a1", "act1"),
             node("AveragePool", ["a1"], "p", "average", kernel_shape=[3, 3], strides=[3, 3])]      # (4, 2, 2)
    if reader == "Flatten":
        nodes += [node("Flatten", ["p"], "f", "short", axis=1), node("Gemm", ["f", "w4"], "y", "fc", transB=1)]
    else:
        nodes += [node("Conv", ["a1", "w2"], "c2", "conv2", kernel_shape=[3, 3], strides=[3, 3])]
        if reader == "Conv3":
            nodes += [node("Conv", ["p", "w3"], "c3", "short", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                      node("Add", ["c2", "c3"], "r", "shortcut_add")]
        else:
            nodes += [node("Add", ["c2", "p"], "r", "shortcut_add")]
        nodes += [node("BipolarQuant", ["r", "one"], "a2", "act2"), node("Flatten", ["a2"], "f", "flatten", axis=1),
                  node("Gemm", ["f", "w4"], "y", "fc", transB=1)]
    path = qonnx_graph(tmp_path / "avg.onnx", nodes, inits, [1, 1, 8, 8], [1, 3])
    assert main(["import", str(path), "--out", str(tmp_path / "avg.bnn")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("python -m sw.onnx import: error: " + expected)
    assert err.count("\n") == 1 and "Traceback" not in err
