"""The board under Verilator: hw.board_top.BoardTop (UART + framed host link + Accelerator) driven by the
real `board` runtime backend through a simulated serial port (sim/benches/board_host.py). Logits equal
the ISS, with a clean line and with corrupted, dropped and truncated bytes in both directions."""

import json

import numpy as np
import pytest

from sim.benches.board_model import LINK_CONFIG
from sim.runner import build_design, run_bench
from sw.bundle import save_bundle
from sw.compile import compile_model
from sw.compile.testing import conv, linear, maxpool, random_model
from sw.runtime import open_backend

pytestmark = pytest.mark.verilator

BOARD = LINK_CONFIG
# Simulated seconds (100 MHz, 4 clocks per bit, 0.4 us a byte): a reply may start 10 us late (the
# board needs about 3 us to move a 128-byte WRITE to the host port); the line must be quiet for 8 us
# (longer than the board's 5 us inter-byte timeout) before a retry.
LINK = {"timeout": 10e-6, "quiet": 8e-6, "retries": 4, "run_timeout": 0.01}


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
    run_bench(build, "sim.benches.board_host", testcase="run_images", params=params)
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
    requests = {2: "flip", 6: "drop", 10: "truncate", 14: "lose"}
    replies = {3: "flip", 50: "drop", 90: "truncate"}
    result = run_board(network, tmp_path, faults={"seed": 11, "requests": requests, "replies": replies})
    assert np.array_equal(np.array(result["logits"]), iss.logits)
    assert result["cycles"] == iss.cycles.tolist()
    faults = result["faults"]
    # Every kind of fault happened, and each cost a retry, not a wrong result.
    assert sorted(faults) == ["reply drop", "reply flip", "reply truncate", "request drop", "request flip",
                              "request lose", "request truncate"], faults
    assert result["attempts"] > result["frames"]
    assert sum(result["failures"].values()) == result["attempts"] - result["frames"]


def test_board_streams_the_load_stream(tmp_path):
    """A program compiled to stream its parameters (LOAD / SYNC): the host STREAMs them while it runs."""
    model = random_model([linear(4, planes=2), linear(6, wbases=2, planes=2), linear(4)], (1, 4, 4), BOARD, seed=8)
    bundle = compile_model(model, BOARD, weights="stream")
    assert bundle.stream
    path = tmp_path / "prog.bundle"
    save_bundle(path, bundle)
    images = np.random.default_rng(2).integers(0, 256, (2, 1, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    iss = open_backend("iss", bundle).run(images)
    result = run_board((bundle, path, images), tmp_path)
    assert np.array_equal(np.array(result["logits"]), iss.logits)
    # The program waits at its SYNCs for entries that come through the UART (40 cycles a byte here),
    # so it takes longer than the ISS's one-entry-per-cycle source.
    assert all(board > analytic for board, analytic in zip(result["cycles"], iss.cycles.tolist()))
