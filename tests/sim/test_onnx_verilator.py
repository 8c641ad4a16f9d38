"""A Brevitas TFC 1W1A network imported from QONNX runs on the accelerator's Verilog under Verilator with
the logits of the ISS and of deploy_forward. It uses the end-to-end tests' config, so their Verilator
build serves it."""

import numpy as np
import pytest

from sw.compile import compile_model
from sw.data import load_dataset
from sw.model_format import deploy_forward
from sw.runtime import open_backend
from tests.sim.test_end_to_end import E2E

pytestmark = pytest.mark.verilator


def test_imported_brevitas_tfc_on_verilator(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("brevitas")
    pytest.importorskip("qonnx")
    from sw.onnx import import_onnx
    from sw.onnx.testing import brevitas_fc, calibrate_batch_norms, export_brevitas
    torch.set_num_threads(1)
    torch.manual_seed(5)
    dataset = load_dataset("mnist5k")
    net = brevitas_fc("tfc_1w1a")
    calibrate_batch_norms(net, dataset.train_x[:500], seed=5)
    model = import_onnx(export_brevitas(net, tmp_path / "tfc.onnx"), E2E)
    bundle = compile_model(model, E2E)
    images = dataset.test_x[:4]
    expected = deploy_forward(model, images)
    iss = open_backend("iss", bundle).run(images)
    rtl = open_backend("verilator", bundle).run(images)
    assert np.array_equal(iss.logits, expected)
    assert np.array_equal(rtl.logits, expected)
    assert np.array_equal(rtl.layer_cycles, iss.layer_cycles)
