""".bnn models of every scheme written as QONNX: qonnx's execute_onnx returns deploy_forward's logits
times logit_unit, exactly."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("qonnx")

from hw.config import AccelConfig                                          # noqa: E402
from sw.compile.testing import conv, linear, maxpool, random_model         # noqa: E402
from sw.model_format import deploy_forward, load_model, save_model        # noqa: E402
from sw.onnx import OnnxError, export_onnx, pixels_to_input               # noqa: E402
from sw.onnx.__main__ import main                                         # noqa: E402
from sw.onnx.testing import qonnx_execute                                 # noqa: E402


def check_export(tmp_path, model, images, input_range=(0.0, 1.0)):
    path = export_onnx(model, tmp_path / "model.onnx", input_range, batch=len(images))
    logits = qonnx_execute(path, pixels_to_input(images, input_range))
    expected = deploy_forward(model, images)
    assert logits.dtype == np.float64
    assert np.array_equal(logits, expected * model.logit_unit)
    assert np.array_equal(logits.argmax(1), expected.argmax(1))
    return path


def test_random_model_with_strides_pads_bases_planes_and_pooling(tmp_path):
    specs = [conv(7, 3, stride=2, padding=1), conv(12, 3, padding=1, pad_value=1, wbases=3, planes=3),
             maxpool(2), conv(8, 2, planes=2, wbases=2, groups=4), linear(9, planes=2), linear(5)]
    model = random_model(specs, (3, 12, 12), AccelConfig(), seed=4)
    images = np.random.default_rng(0).integers(0, 256, (24, 3, 12, 12), dtype=np.uint8)
    path = check_export(tmp_path, model, images, input_range=(-1.0, 1.0))
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("MultiThreshold") == 1 + 3 + 2 + 2        # one per output plane of every hidden layer
    # One binary convolution per (weight basis, input plane) pair: 8 pixel planes, then 3 x 1, 2 x 3.
    assert ops.count("Conv") == 8 + 3 + 6 and ops.count("MatMul") == 2 + 2
    assert {n.op_type for n in graph.graph.node if n.domain} == {"BipolarQuant", "MultiThreshold"}


# Every scheme of the trainer, with batch-norm statistics as after training (tests/sw/test_model_export.py).
SCHEMES = [("lfc", "xnor", 1, 1), ("lfc", "trained", 1, 1), ("lfc", "abc", 3, 2), ("lfc", "pa", 2, 3),
           ("lfc", "groupnet", 3, 1), ("cnv", "ftbnn", 1, 1), ("cnv", "abc", 2, 2), ("resnet", "pa", 2, 2)]


@pytest.mark.parametrize("model_name,scheme,m,n", SCHEMES)
def test_every_scheme_exports_with_deploy_forward_logits(tmp_path, model_name, scheme, m, n):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from sw.models import build_model
    from sw.quant import make_scheme
    from sw.quant.export import export_model
    from tests.sw.test_model_export import randomise_norms
    torch.manual_seed(3)
    net = build_model(model_name, make_scheme(scheme, m, n), (1, 8, 8), 10, 24 if model_name == "lfc" else 4)
    randomise_norms(net, 4)
    model = export_model(net)
    images = np.random.default_rng(7).integers(0, 256, (32, 1, 8, 8), dtype=np.uint8)
    check_export(tmp_path, model, images)
    if model_name == "resnet":   # shortcuts are second branches, summed before the threshold
        assert any(len(layer.get("branches", [])) == 2 for layer in model.layers)


def test_trained_model_exports_from_the_command_line(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from sw.data import load_dataset
    from sw.train.__main__ import main as train
    bnn = tmp_path / "m.bnn"
    assert train(["--model", "lfc", "--scheme", "abc", "--wbases", "2", "--abases", "2", "--width", "32",
                  "--dataset", "digits", "--epochs", "1", "--seed", "1", "--out", str(bnn), "--no-progress"]) == 0
    capsys.readouterr()
    out = tmp_path / "m.onnx"
    assert main(["export", str(bnn), "--out", str(out)]) == 0
    assert capsys.readouterr().out.endswith(f"written to {out}\n")
    model = load_model(bnn)
    images = load_dataset("digits").test_x[:6]
    logits = np.concatenate([qonnx_execute(out, pixels_to_input(images[i:i + 1])) for i in range(6)])
    assert np.array_equal(logits, deploy_forward(model, images) * model.logit_unit)


def test_export_errors_are_one_line(tmp_path, capsys):
    model = random_model([linear(4)], (1, 2, 2), AccelConfig(), seed=0)
    save_model(tmp_path / "m.bnn", model)
    assert main(["export", str(tmp_path / "m.bnn"), "--out", str(tmp_path / "missing" / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"python -m sw.onnx export: error: Cannot write {tmp_path / 'missing' / 'm.onnx'}: ")
    assert err.count("\n") == 1
    (tmp_path / "bad.bnn").write_bytes(b"BNNMODEL" + bytes(40))
    assert main(["export", str(tmp_path / "bad.bnn"), "--out", str(tmp_path / "m.onnx")]) == 1
    assert "python -m sw.onnx export: error: " in capsys.readouterr().err
    assert main(["export", str(tmp_path / "m.bnn"), "--out", str(tmp_path / "m.onnx"), "--batch", "0"]) == 1
    assert capsys.readouterr().err == "python -m sw.onnx export: error: Batch must be a positive integer, not 0\n"
    assert main(["export", str(tmp_path / "m.bnn"), "--out", str(tmp_path / "m.onnx"), "--batch", "5"]) == 0
    images = np.random.default_rng(0).integers(0, 256, (5, 1, 2, 2), dtype=np.uint8)
    assert np.array_equal(qonnx_execute(tmp_path / "m.onnx", pixels_to_input(images)),
                          deploy_forward(model, images) * model.logit_unit)
    with pytest.raises(OnnxError, match="Batch must be a positive integer, not 0"):
        export_onnx(model, tmp_path / "m.onnx", batch=0)


def test_imported_model_exports_with_its_logit_offset(tmp_path):
    """A model imported from a graph whose last layer adds a constant exports with that constant: the
    exported graph's logits equal the original graph's."""
    from tests.sw.test_onnx_import import node, qonnx_graph
    from sw.onnx import import_onnx
    rng = np.random.default_rng(0)
    inits = {"s": 1.0, "half": 0.5, "w1": rng.choice([-1.0, 1.0], (8, 8)), "w2": rng.choice([-1.0, 1.0], (8, 3)),
             "gain": 0.25, "shift": 1.5}
    nodes = [node("Sub", ["x", "half"], "x0", "centre"), node("BipolarQuant", ["x0", "s"], "a0", "in_quant"),
             node("MatMul", ["a0", "w1"], "m1", "fc1"), node("BipolarQuant", ["m1", "s"], "a1", "act1"),
             node("MatMul", ["a1", "w2"], "m2", "fc2"), node("Mul", ["m2", "gain"], "m3", "out_gain"),
             node("Add", ["m3", "shift"], "y", "out_shift")]
    images = np.random.default_rng(1).integers(0, 256, (64, 1, 1, 8), dtype=np.uint8)
    original = qonnx_graph(tmp_path / "original.onnx", nodes, inits, [64, 8], [64, 3])
    model = import_onnx(original)
    assert model.training["logit_offset"] == 1.5 and model.logit_unit == 0.25
    exported = export_onnx(model, tmp_path / "exported.onnx", batch=64)
    x = pixels_to_input(images)
    assert np.array_equal(qonnx_execute(exported, x), qonnx_execute(original, x.reshape(64, 8)))


def test_sw_onnx_imports_neither_onnx_nor_torch_until_used():
    import subprocess
    import sys
    code = ("import sys, sw.onnx, sw.onnx.__main__; "
            "assert not {'onnx', 'qonnx', 'torch'} & set(sys.modules), 'imported too early'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
