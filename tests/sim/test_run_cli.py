"""python -m sim.run: per-image predictions and logits, per-layer cycles, inputs, one-line errors."""

import os
import subprocess
import sys

import numpy as np
import pytest

from hw.config import AccelConfig
from sim.run import main
from sw.bundle import save_bundle, to_bytes
from sw.compile import compile_model
from sw.compile.testing import conv, linear, maxpool, random_model
from sw.data import load_dataset, sample_order
from sw.iss import layer_report
from sw.model_format import deploy_forward

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    model = random_model([conv(8, 3, padding=1, planes=2), maxpool(2), linear(10)], (1, 8, 8), AccelConfig(), seed=4)
    bundle = compile_model(model, AccelConfig())
    path = tmp_path_factory.mktemp("run") / "p.bundle"
    save_bundle(path, bundle)
    return model, bundle, path


def _image_lines(out):
    return [line for line in out.splitlines() if line.startswith("image ")]


def test_dataset_inputs(program, capsys):
    model, bundle, path = program
    assert main([str(path), "--backend", "iss", "--inputs", "digits:test:6", "--batch", "4"]) == 0
    out = capsys.readouterr().out
    data = load_dataset("digits")
    picked = sample_order(data.test_y)[:6]
    logits = deploy_forward(model, data.test_x[picked])
    lines = _image_lines(out)
    assert len(lines) == 6
    report = layer_report(bundle)
    cycles = sum(r["cycles"] for r in report) + 3
    for i, (line, index) in enumerate(zip(lines, picked)):
        assert line == (f"image {i} (digits:test:{index}, label {data.test_y[index]}): prediction "
                        f"{int(np.argmax(logits[i]))}  cycles {cycles}  logits {' '.join(str(v) for v in logits[i])}")
    correct = int(np.sum(np.argmax(logits, 1) == data.test_y[picked]))
    assert f"accuracy: {correct}/6 ({100 * correct / 6:.2f}%)" in out
    assert "per-layer cycles (image 0, iss):" in out
    table = out.split("per-layer cycles (image 0, iss):\n")[1].splitlines()
    assert table[1].split() == ["layer", "0", "(conv)", str(report[0]["macs"]), str(report[0]["ideal_cycles"]),
                                str(report[0]["cycles"]), f"{100 * report[0]['utilization']:.1f}%"]
    assert table[-1].split()[0] == "total" and table[-1].split()[3] == str(cycles - 3)


def test_npy_and_image_file_inputs(program, tmp_path, capsys):
    model, _, path = program
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "three.npy", images)
    np.save(tmp_path / "one.npy", images[0])
    Image = pytest.importorskip("PIL.Image")
    Image.fromarray(images[2]).save(tmp_path / "x.png")
    assert main([str(path), "--inputs", str(tmp_path / "three.npy"), str(tmp_path / "one.npy"),
                 str(tmp_path / "x.png")]) == 0
    lines = _image_lines(capsys.readouterr().out)
    want = deploy_forward(model, np.concatenate([images, images[:1], images[2:3]])[:, None])
    assert [line.split(" (")[1].split(")")[0] for line in lines] == \
        ["three.npy[0]", "three.npy[1]", "three.npy[2]", "one.npy[0]", "x.png"]
    for line, row in zip(lines, want):
        assert line.endswith("logits " + " ".join(str(v) for v in row))


@pytest.mark.parametrize("inputs, message", [
    (["digits:test"], "Input 'digits:test' is not DATASET:SPLIT:COUNT, a .npy file or an image file"),
    (["digits:val:3"], "Input 'digits:val:3': the split must be train or test, not 'val'"),
    (["digits:test:0"], "Input 'digits:test:0': COUNT must be a positive integer"),
    (["digits:test:100000"], "Input 'digits:test:100000': the test split of digits has only 359 images"),
    (["cifar11:test:3"], "Unknown dataset 'cifar11'; choose from: digits, mnist5k, mnist, cifar10, svhn"),
    (["nothing"], "Input 'nothing' is not DATASET:SPLIT:COUNT, a .npy file or an existing image file"),
    (["WRONG.npy"], "WRONG.npy holds an array of shape (2, 5, 5); the model takes images of shape (1, 8, 8) "
                    "(arrays (B, C, H, W), or (B, H, W) for one channel)"),
    (["FLOAT.npy"], "FLOAT.npy holds float64, not uint8 images"),
    (["missing.npy"], "Cannot read missing.npy: [Errno 2] No such file or directory: 'missing.npy'"),
    (["NOTANIMAGE"], "Cannot read image NOTANIMAGE: cannot identify image file 'NOTANIMAGE'"),
])
def test_input_errors(program, tmp_path, monkeypatch, capsys, inputs, message):
    _, _, path = program
    monkeypatch.chdir(tmp_path)
    np.save("wrong.npy", np.zeros((2, 5, 5), np.uint8))
    np.save("float.npy", np.zeros((2, 8, 8)))
    (tmp_path / "notanimage.png").write_text("hello")
    names = {"WRONG.npy": "wrong.npy", "FLOAT.npy": "float.npy", "NOTANIMAGE": "notanimage.png"}
    assert main([str(path), "--inputs"] + [names.get(i, i) for i in inputs]) == 1
    for key, value in names.items():
        message = message.replace(key, value)
    assert capsys.readouterr().err == f"python -m sim.run: error: {message}\n"


def test_bundle_and_backend_errors(program, tmp_path, capsys):
    _, bundle, path = program
    assert main([str(tmp_path / "none.bundle"), "--inputs", "digits:test:1"]) == 1
    assert capsys.readouterr().err == f"python -m sim.run: error: Cannot read bundle file {tmp_path / 'none.bundle'}: " \
                                      f"No such file or directory\n"
    data = to_bytes(bundle)
    (tmp_path / "bad.bundle").write_bytes(data[:-1] + bytes([data[-1] ^ 255]))
    assert main([str(tmp_path / "bad.bundle"), "--inputs", "digits:test:1"]) == 1
    assert capsys.readouterr().err == f"python -m sim.run: error: {tmp_path / 'bad.bundle'} is corrupt or truncated " \
                                      f"(sha256 checksum mismatch)\n"
    assert main([str(path), "--backend", "abacus", "--inputs", "digits:test:1"]) == 1
    assert capsys.readouterr().err.startswith("python -m sim.run: error: Unknown backend 'abacus'; the backends are: ")
    assert main([str(path), "--batch", "0", "--inputs", "digits:test:1"]) == 2
    assert capsys.readouterr().err == "python -m sim.run: error: --batch must be a positive integer\n"


def test_command_line_exit_status(program, tmp_path):
    _, _, path = program
    result = subprocess.run([sys.executable, "-m", "sim.run", str(path), "--inputs", "digits:nope:1"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr == "python -m sim.run: error: Input 'digits:nope:1': the split must be train or test, not 'nope'\n"
    result = subprocess.run([sys.executable, "-m", "sim.run", str(path)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr == "python -m sim.run: error: the following arguments are required: --inputs\n"
