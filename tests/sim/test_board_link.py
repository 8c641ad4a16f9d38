"""The board under Verilator: hw.board_top.BoardTop (UART + framed host link + Accelerator) driven by the
real `board` runtime backend through a simulated serial port (sim/benches/board_host.py). Logits equal
the ISS, with a clean line and with corrupted, dropped and truncated bytes in both directions."""

import json

import numpy as np
import pytest

from hw.config import AccelConfig
from sim.runner import build_design, run_bench
from sw.bundle import save_bundle
from sw.compile import compile_model
from sw.compile.testing import conv, linear, maxpool, random_model
from sw.runtime import open_backend

pytestmark = pytest.mark.verilator

BOARD = AccelConfig(rows=2, cols=2, word_bits=8, max_wbases=2, max_abases=2, max_k=256, scale_depth=64,
                    thr_depth=64, out_depth=8, act_depth=1024, weight_depth=256, patch_depth=128,
                    result_depth=16, instr_depth=16, acc_bits=32)
# Simulated seconds (100 MHz, 4 clocks per bit): a reply may be 25 us late; the line must be quiet for
# 15 us (longer than the board's 10 us inter-byte timeout) before a retry.
LINK = {"timeout": 25e-6, "quiet": 15e-6, "retries": 4, "run_timeout": 0.01}


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    model = random_model([conv(4, 2, planes=2, wbases=2), maxpool(2), linear(5)], (1, 5, 5), BOARD, seed=3)
    bundle = compile_model(model, BOARD)
    path = tmp_path_factory.mktemp("board") / "prog.bundle"
    save_bundle(path, bundle)
    images = np.random.default_rng(5).integers(0, 256, (2, 1, 5, 5), dtype=np.uint8)
    np.save(path.with_name("images.npy"), images)
    return bundle, path, images


def run_board(network, tmp_path, faults=None):
    bundle, path, images = network
    build = build_design(BOARD, "board", opt="-O0")
    out = tmp_path / "out.json"
    params = dict(LINK, bundle=str(path), images=str(path.with_name("images.npy")), out=str(out),
                  faults=faults or {})
    run_bench(build, "sim.benches.board_host", params=params)
    result = json.loads(out.read_text())
    assert "error" not in result, result["error"]
    return result


def test_board_logits_equal_iss(network, tmp_path):
    bundle, _, images = network
    iss = open_backend("iss", bundle).run(images)
    result = run_board(network, tmp_path)
    assert np.array_equal(np.array(result["logits"]), iss.logits)
    assert result["cycles"] == iss.cycles.tolist()
    assert result["failures"] == {} and result["attempts"] == result["frames"]
    assert result["faults"] == {}


def test_board_recovers_from_corruption(network, tmp_path):
    bundle, _, images = network
    iss = open_backend("iss", bundle).run(images)
    # Request frames and reply bytes by index (the first frame is INFO, the program write follows).
    requests = {2: "flip", 6: "drop", 10: "truncate", 14: "lose", 18: "flip", 22: "drop"}
    replies = {3: "flip", 50: "drop", 90: "truncate", 140: "flip", 190: "drop"}
    result = run_board(network, tmp_path, faults={"seed": 11, "requests": requests, "replies": replies})
    assert np.array_equal(np.array(result["logits"]), iss.logits)
    assert result["cycles"] == iss.cycles.tolist()
    faults = result["faults"]
    # Every kind of fault happened, and each cost a retry, not a wrong result.
    assert sorted(faults) == ["reply drop", "reply flip", "reply truncate", "request drop", "request flip",
                              "request lose", "request truncate"], faults
    assert result["attempts"] > result["frames"]
    assert sum(result["failures"].values()) == result["attempts"] - result["frames"]
