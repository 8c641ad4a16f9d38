"""Trained models (short runs of the real trainer) compile and run on the ISS exactly like deploy_forward."""

import os
import subprocess
import sys

import numpy as np
import pytest

from hw.config import AccelConfig
from sw.compile import compile_file
from sw.data import load_dataset
from sw.model_format import deploy_forward, load_model
from sw.runtime import open_backend

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("args", [
    ["--model", "lfc", "--scheme", "xnor", "--width", "64"],
    ["--model", "cnv", "--scheme", "abc", "--wbases", "2", "--abases", "2", "--width", "8"],
], ids=["lfc-xnor", "cnv-abc-2x2"])
def test_trained_model_runs_bit_exactly_on_the_iss(tmp_path, args):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from sw.train.__main__ import main as train
    out = tmp_path / "m.bnn"
    assert train(args + ["--dataset", "digits", "--epochs", "1", "--seed", "1", "--out", str(out), "--no-progress"]) == 0
    config = AccelConfig(scale_depth=1024)
    bundle = compile_file(out, config)
    model = load_model(out)
    images = load_dataset("digits").test_x
    with open_backend("iss", bundle) as backend:
        result = backend.run(images)
    assert np.array_equal(result.logits, deploy_forward(model, images))
    assert len(bundle.layers) == len(model.layers)


def test_the_compiler_iss_runtime_and_cli_do_not_import_torch():
    code = ("import sys, sw.compile, sw.compile.__main__, sw.iss, sw.runtime, sw.bundle, sim.run; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("scheme, bases", [
    ("xnor", []), ("trained", []), ("abc", ["--wbases", "2", "--abases", "2"]),
    ("pa", ["--wbases", "2", "--abases", "2"]), ("groupnet", ["--wbases", "2"]), ("ftbnn", []),
])
def test_trained_resnet_of_every_scheme_runs_bit_exactly_on_the_iss(tmp_path, scheme, bases):
    """A residual network (identity and downsampling shortcuts summed before the threshold) trained
    with each scheme: on 64 test images spread over all classes the ISS's logits equal deploy_forward's.
    W = 8 so FTBNN's two groups of 8 channels each start on a channel word."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from hw.isa import Opcode, decode
    from sw.train.__main__ import main as train
    out = tmp_path / "m.bnn"
    assert train(["--model", "resnet", "--scheme", scheme, *bases, "--width", "16", "--dataset", "digits",
                  "--epochs", "1", "--seed", "2", "--out", str(out), "--no-progress"]) == 0
    config = AccelConfig(rows=4, cols=4, word_bits=8, scale_depth=2048, thr_depth=1024, weight_depth=8192,
                         act_depth=8192, patch_depth=512)
    bundle = compile_file(out, config)
    assert sum(decode(word)[0] == Opcode.SHORTCUT for word in bundle.instructions) >= 3
    model = load_model(out)
    data = load_dataset("digits")
    picks = np.concatenate([np.flatnonzero(data.test_y == label)[:7] for label in range(10)])[:64]
    assert len(picks) == 64 and len(set(data.test_y[picks])) == 10
    with open_backend("iss", bundle) as backend:
        result = backend.run(data.test_x[picks])
    assert np.array_equal(result.logits, deploy_forward(model, data.test_x[picks]))


@pytest.mark.parametrize("model", ["cnv", "resnet18"])
def test_ftbnn_width_32_compiles_for_arty_a7(tmp_path, model):
    """FTBNN's two groups of 16 channels at width 32 (not whole 32-bit words) compile for the arty_a7
    default config (the compiler's Verify pass runs them on the ISS against deploy_forward)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    import boards
    from sw.train.__main__ import main as train
    out = tmp_path / "m.bnn"
    assert train(["--model", model, "--scheme", "ftbnn", "--width", "32", "--dataset", "digits", "--epochs", "1",
                  "--seed", "1", "--out", str(out), "--no-progress"]) == 0
    bundle = compile_file(out, boards.get_board("arty_a7").config)
    assert "verify: ISS == deploy_forward at every layer on 2 random images" in bundle.model["checked"]
