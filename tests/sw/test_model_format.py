import hashlib
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

import sw.ref as ref
from hw.config import AccelConfig
from sw.model_format import (FORMAT_VERSION, MAGIC, BnnModel, ModelFormatError, deploy_forward, deploy_trace,
                             from_bytes, load_model, maxpool_planes, save_model, to_bytes)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pm1(rng, shape):
    return (rng.integers(0, 2, shape) * 2 - 1).astype(np.int8)


def random_model(seed=0):
    """A small hand-made graph: pixel conv -> maxpool -> two summed conv branches -> linear logits."""
    rng = np.random.default_rng(seed)
    acc_bits = AccelConfig().acc_bits
    layers = [
        {"kind": "conv", "out_features": 4, "branches": [
            {"source": -1, "kind": "conv", "kernel": [3, 3], "stride": 1, "padding": 1, "pad_value": -1,
             "groups": 1, "wbases": 2, "abases": 8, "k": 18, "weights": pm1(rng, (2, 4, 2, 3, 3)),
             "scales": rng.integers(-300, 300, (2, 8, 4)).astype(np.int64)}],
         "thresholds": rng.integers(-3000, 3000, (4, 2)).astype(np.int64),
         "flip": np.array([False, True, False, True])},
        {"kind": "maxpool", "source": 0, "kernel": 2, "stride": 2},
        {"kind": "conv", "out_features": 4, "branches": [
            {"source": 1, "kind": "conv", "kernel": [3, 3], "stride": 1, "padding": 1, "pad_value": -1,
             "groups": 2, "wbases": 1, "abases": 2, "k": 18, "weights": pm1(rng, (1, 4, 2, 3, 3)),
             "scales": rng.integers(-50, 50, (1, 2, 4)).astype(np.int64)},
            {"source": 0, "kind": "conv", "kernel": [1, 1], "stride": 2, "padding": 0, "pad_value": -1,
             "groups": 1, "wbases": 2, "abases": 2, "k": 4, "weights": pm1(rng, (2, 4, 4, 1, 1)),
             "scales": rng.integers(-50, 50, (2, 2, 4)).astype(np.int64)}],
         "thresholds": np.array([[-10], [0], [5], [-(1 << (acc_bits - 1))]], dtype=np.int64),
         "flip": np.array([False, False, True, True])},
        {"kind": "linear", "out_features": 5, "branches": [
            {"source": 2, "kind": "linear", "wbases": 1, "abases": 1, "k": 36, "weights": pm1(rng, (1, 5, 36)),
             "scales": rng.integers(-100, 100, (1, 1, 5)).astype(np.int64)}]},
    ]
    return BnnModel(layers, (2, 6, 6), 5, AccelConfig().to_dict(), {"scheme": "test", "seed": seed}, 0.5)


# --- An independent integer implementation (plain numpy on +-1 values, no sw.ref). ---------------------

def naive_conv(x, w, stride, padding, pad_value, groups):
    b, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.full((b, c, h + 2 * padding, wd + 2 * padding), pad_value, dtype=np.int64)
    xp[:, :, padding:padding + h, padding:padding + wd] = x
    ho, wo = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    out = np.zeros((b, o, ho, wo), dtype=np.int64)
    og = o // groups
    for oc in range(o):
        g = oc // og
        for i in range(ho):
            for j in range(wo):
                patch = xp[:, g * cg:(g + 1) * cg, i * stride:i * stride + kh, j * stride:j * stride + kw]
                out[:, oc, i, j] = (patch * w[oc].astype(np.int64)).sum(axis=(1, 2, 3))
    return out


def naive_forward(model, images):
    bits = np.stack([(images >> b) & 1 for b in range(8)]).astype(np.int64) * 2 - 1
    outs = {-1: bits}
    for index, layer in enumerate(model.layers):
        if layer["kind"] == "maxpool":
            x = outs[layer["source"]]
            k, s = layer["kernel"], layer["stride"]
            h, w = x.shape[-2:]
            ho, wo = (h - k) // s + 1, (w - k) // s + 1
            out = np.full(x.shape[:-2] + (ho, wo), -1, dtype=np.int64)
            for i in range(ho):
                for j in range(wo):
                    out[..., i, j] = x[..., i * s:i * s + k, j * s:j * s + k].max(axis=(-1, -2))
            outs[index] = out
            continue
        acc = 0
        for br in layer["branches"]:
            x = outs[br["source"]]
            for m in range(br["wbases"]):
                for n in range(br["abases"]):
                    if layer["kind"] == "linear":
                        dots = x[n].reshape(x.shape[1], -1) @ br["weights"][m].astype(np.int64).T
                        acc = acc + br["scales"][m, n][None, :] * dots
                    else:
                        dots = naive_conv(x[n], br["weights"][m], br["stride"], br["padding"], br["pad_value"],
                                          br["groups"])
                        acc = acc + br["scales"][m, n][None, :, None, None] * dots
        if "thresholds" not in layer:
            return acc
        t = layer["thresholds"]
        planes = []
        for p in range(t.shape[1]):
            shape = (1, -1) + (1,) * (acc.ndim - 2)
            tp = t[:, p].reshape(shape)
            hit = np.where(layer["flip"].reshape(shape), acc <= tp, acc >= tp)
            planes.append(np.where(hit, 1, -1))
        outs[index] = np.stack(planes)


def test_deploy_forward_matches_independent_integer_model():
    model = random_model()
    images = np.random.default_rng(5).integers(0, 256, (3, 2, 6, 6), dtype=np.uint8)
    logits, trace = deploy_forward(model, images, intermediates=True)
    assert logits.dtype == np.int64 and logits.shape == (3, 5)
    assert np.array_equal(logits, naive_forward(model, images))
    # The constant channel (flip 1, T = Tmin) of layer 2 is always -1.
    assert np.all(trace[2][:, :, 3] == -1)
    # Every plane of every hidden layer is +-1 and not constant overall (the test exercises thresholds).
    assert set(np.unique(trace[0])) == {-1, 1}


def test_maxpool_is_or_of_bits():
    planes = np.array([[[[-1, -1, 1, -1], [-1, -1, -1, -1]]]], dtype=np.int8)
    assert maxpool_planes(planes, 2, 2).tolist() == [[[[-1, 1]]]]


def test_round_trip(tmp_path):
    model = random_model()
    path = tmp_path / "m.bnn"
    save_model(path, model)
    loaded = load_model(path)
    assert loaded.input_shape == (2, 6, 6) and loaded.classes == 5 and loaded.logit_unit == 0.5
    assert loaded.training == {"scheme": "test", "seed": 0}
    assert loaded.config == AccelConfig().to_dict()
    for a, b in zip(model.layers, loaded.layers):
        assert a["kind"] == b["kind"]
        for ba, bb in zip(a.get("branches", []), b.get("branches", [])):
            assert np.array_equal(ba["weights"], bb["weights"]) and bb["weights"].dtype == np.int8
            assert np.array_equal(ba["scales"], bb["scales"])
        if "thresholds" in a:
            assert np.array_equal(a["thresholds"], b["thresholds"]) and np.array_equal(a["flip"], b["flip"])
    images = np.random.default_rng(6).integers(0, 256, (2, 2, 6, 6), dtype=np.uint8)
    assert np.array_equal(deploy_forward(model, images), deploy_forward(loaded, images))
    assert to_bytes(loaded) == path.read_bytes()


def _resign(body):
    return body + hashlib.sha256(body).digest()


def test_bad_files(tmp_path):
    data = to_bytes(random_model())
    assert data[:8] == MAGIC and struct.unpack_from("<I", data, 8)[0] == FORMAT_VERSION
    with pytest.raises(ModelFormatError, match="truncated"):
        from_bytes(data[:-10])
    with pytest.raises(ModelFormatError, match="truncated"):
        from_bytes(data[:5])
    with pytest.raises(ModelFormatError, match="truncated"):
        from_bytes(data[:40])
    corrupt = bytearray(data)
    corrupt[len(data) // 2] ^= 0x10
    with pytest.raises(ModelFormatError, match="corrupt"):
        from_bytes(bytes(corrupt))
    wrong_version = data[:8] + struct.pack("<I", FORMAT_VERSION + 1) + data[12:]
    with pytest.raises(ModelFormatError, match=f"format version {FORMAT_VERSION + 1}"):
        from_bytes(wrong_version)
    with pytest.raises(ModelFormatError, match="not a .bnn model file"):
        from_bytes(b"BNNBUNDL" + data[8:])
    # A well-formed file whose header declares another kind.
    body = data[:-32]
    # (the same length, so the container's header length still holds)
    wrong_kind = _resign(body.replace(b'"kind": "bnn-model"', b'"kind":"bnn-bundle"'))
    with pytest.raises(ModelFormatError, match="holds a 'bnn-bundle'"):
        from_bytes(wrong_kind)
    # A well-formed file whose graph is inconsistent.
    bad_graph = _resign(body.replace(b'"abases": 2, "groups": 2', b'"abases": 3, "groups": 2', 1))
    with pytest.raises(ModelFormatError, match="layer 2 \\(conv\\) branch 0: 3 activation bases"):
        from_bytes(bad_graph)
    with pytest.raises(ModelFormatError, match="Cannot read model file"):
        load_model(tmp_path / "missing.bnn")


def test_validation_names_the_layer():
    model = random_model()
    del model.layers[0]["thresholds"]
    with pytest.raises(ModelFormatError, match="layer 0 \\(conv\\): thresholds must be"):
        to_bytes(model)
    model = random_model()
    model.layers[3]["thresholds"] = np.zeros((5, 1), np.int64)
    with pytest.raises(ModelFormatError, match="the last layer returns sums"):
        to_bytes(model)


def test_reader_and_deploy_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np, sw.model_format as f\n"
            "sys.path.insert(0, 'tests/sw'); from test_model_format import random_model\n"
            "m = f.from_bytes(f.to_bytes(random_model()))\n"
            "print(f.deploy_forward(m, np.zeros((1, 2, 6, 6), np.uint8)).shape)\n"
            "assert 'torch' not in [k for k, v in sys.modules.items() if v is not None]\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 5)"


def test_deploy_checks_images():
    model = random_model()
    with pytest.raises(ModelFormatError, match="uint8"):
        deploy_forward(model, np.zeros((1, 2, 6, 6), np.float32))
    with pytest.raises(ModelFormatError, match="shape"):
        deploy_forward(model, np.zeros((1, 2, 5, 6), np.uint8))


def test_deploy_trace_gives_sums_and_planes():
    model = random_model(1)
    images = np.random.default_rng(9).integers(0, 256, (2, 2, 6, 6), dtype=np.uint8)
    trace = deploy_trace(model, images)
    assert [t["sums"] is None for t in trace] == [False, True, False, False]
    assert trace[0]["sums"].shape == (2, 4, 6, 6) and trace[0]["planes"].shape == (2, 2, 4, 6, 6)
    layer = model.layers[0]
    expected = ref.threshold(np.moveaxis(trace[0]["sums"], 1, -1), layer["thresholds"], layer["flip"])
    assert np.array_equal(np.moveaxis(expected, -1, 2), trace[0]["planes"])
    assert trace[3]["planes"] is None
    assert np.array_equal(trace[3]["sums"], deploy_forward(model, images))
