"""Train -> export -> compile -> run on the accelerator's Verilog under Verilator: for every tested image
the Verilator logits equal the ISS logits and the trained model's deploy logits, exactly, and the
measured cycles equal the analytic model. One Verilator build serves every network here."""

import numpy as np
import pytest

from hw.config import AccelConfig
from hw.isa import Opcode, decode
from sw.bundle import BundleError, load_bundle, to_bytes
from sw.compile import compile_file, compile_model
from sw.compile.testing import conv, linear, maxpool, random_model
from sw.data import load_dataset
from sw.iss import analytic_cycles
from sw.model_format import deploy_forward, load_model
from sw.runtime import RuntimeApiError, open_backend

pytestmark = pytest.mark.verilator

E2E = AccelConfig(rows=4, cols=4, word_bits=32, max_wbases=3, max_abases=3, max_k=2048, scale_depth=2048,
                  thr_depth=1024, weight_depth=4096, act_depth=8192, patch_depth=512, result_depth=64,
                  instr_depth=64, out_depth=32)

NETWORKS = {
    "lfc-xnor-mnist5k": ["--model", "lfc", "--scheme", "xnor", "--dataset", "mnist5k", "--width", "64"],
    "lfc-abc3x3-mnist5k": ["--model", "lfc", "--scheme", "abc", "--wbases", "3", "--abases", "3",
                           "--dataset", "mnist5k", "--width", "64"],
    "cnv-xnor-digits": ["--model", "cnv", "--scheme", "xnor", "--dataset", "digits", "--width", "16"],
    "cnv-pa3x3-digits": ["--model", "cnv", "--scheme", "pa", "--wbases", "3", "--abases", "3",
                         "--dataset", "digits", "--width", "16"],
    # Residual networks: layers that sum a shortcut (identity or downsampling) before the threshold.
    "resnet-xnor-digits": ["--model", "resnet", "--scheme", "xnor", "--dataset", "digits", "--width", "8"],
    "resnet-abc2x2-digits": ["--model", "resnet", "--scheme", "abc", "--wbases", "2", "--abases", "2",
                             "--dataset", "digits", "--width", "8"],
}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("e2e") / "accel.json"
    path.write_text(E2E.to_json())
    return path


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_trained_network_on_verilator(name, tmp_path, config_file):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from sw.train.__main__ import main as train_main
    out = tmp_path / f"{name}.bnn"
    assert train_main(NETWORKS[name] + ["--epochs", "1", "--seed", "7", "--out", str(out),
                                        "--config", str(config_file), "--no-progress"]) == 0
    model = load_model(out)
    bundle = compile_file(out, E2E)
    dataset = load_dataset(model.training["dataset"])
    images = dataset.test_x[:6]
    expected = deploy_forward(model, images)
    iss = open_backend("iss", bundle).run(images)
    rtl = open_backend("verilator", bundle).run(images)
    assert np.array_equal(iss.logits, expected)
    assert np.array_equal(rtl.logits, expected)
    assert np.array_equal(rtl.cycles, iss.cycles)
    assert np.array_equal(rtl.layer_cycles, iss.layer_cycles)
    assert rtl.cycles[0] == sum(analytic_cycles(E2E, bundle.instructions))
    if name.startswith("resnet"):
        assert any(decode(word)[0] == Opcode.SHORTCUT for word in bundle.instructions)
    if name.startswith("lfc"):
        # The same network taking four images a run (the columns over images), on the same build.
        batched = compile_file(out, E2E, batch=4)
        rtl = open_backend("verilator", batched).run(images)
        assert np.array_equal(rtl.logits, expected)
        assert np.array_equal(rtl.layer_cycles, open_backend("iss", batched).run(images).layer_cycles)
        assert rtl.cycles[0] == sum(analytic_cycles(E2E, batched.instructions)) < 4 * iss.cycles[0]
    if "3x3" in name:
        # The same network with every layer's parameters streamed through LOAD / SYNC.
        streamed = compile_file(out, E2E, weights="stream")
        assert streamed.stream and not streamed.segments
        rtl = open_backend("verilator", streamed).run(images[:2])
        iss = open_backend("iss", streamed).run(images[:2])
        assert np.array_equal(rtl.logits, expected[:2])
        assert np.array_equal(rtl.layer_cycles, iss.layer_cycles)
        assert rtl.cycles[0] == sum(analytic_cycles(E2E, streamed.instructions))


def test_channels_and_k_off_the_array_on_verilator():
    """Channels not multiples of R or W, K not a multiple of W, stride, both pad values, pooling,
    several bases, on a random model."""
    specs = [conv(7, 3, stride=2, padding=1), conv(13, 3, padding=1, pad_value=1, wbases=3, planes=3),
             maxpool(2), conv(9, 2, planes=2, wbases=2), linear(5)]
    model = random_model(specs, (3, 12, 12), E2E, seed=4)
    bundle = compile_model(model, E2E)
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 12, 12), dtype=np.uint8)
    rtl = open_backend("verilator", bundle).run(images)
    assert np.array_equal(rtl.logits, deploy_forward(model, images))
    assert np.array_equal(rtl.cycles, open_backend("iss", bundle).run(images).cycles)


def test_illegal_instruction_and_truncated_bundle(tmp_path):
    specs = [linear(6), linear(3)]
    model = random_model(specs, (1, 4, 4), E2E, seed=2)
    bundle = compile_model(model, E2E)
    bundle.instructions = [9] + bundle.instructions[1:]          # opcode 9 does not exist
    images = np.zeros((1, 1, 4, 4), dtype=np.uint8)
    with pytest.raises(RuntimeApiError, match="error code 1") as info:
        open_backend("verilator", bundle, watchdog=100_000).run(images)
    assert info.value.code == 1
    good = compile_model(model, E2E)
    path = tmp_path / "prog.bundle"
    path.write_bytes(to_bytes(good)[:-40])
    with pytest.raises(BundleError):
        load_bundle(path)
