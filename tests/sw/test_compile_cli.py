"""python -m sw.compile: output, --config / --board, one-line errors."""

import os
import subprocess
import sys

import pytest

from hw.config import AccelConfig
from sw.bundle import load_bundle
from sw.compile.__main__ import main
from sw.compile.testing import conv, linear, maxpool, random_model
from sw.model_format import save_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "m.bnn"
    save_model(path, random_model([conv(8, 3, padding=1), maxpool(2), linear(10)], (1, 8, 8), AccelConfig()))
    return path


def test_compile_with_a_config_file(tmp_path, model_file, capsys):
    config = AccelConfig(rows=8, cols=2)
    (tmp_path / "c.json").write_text(config.to_json())
    out = tmp_path / "p.bundle"
    assert main([str(model_file), "--config", str(tmp_path / "c.json"), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "passes: check-config, merge-branches, lower, batch, check-fit, allocate, emit, verify"
    assert lines[1] == "checked: lower: re-laid weights unpack to the model's weights"
    assert lines[2] == "checked: verify: ISS == deploy_forward at every layer on 2 random images"
    assert lines[3] == f"config {config.fingerprint()}: 8x2 array, W = 32, 4 instructions"
    # the generator's pixel scales are powers of two apart: plane groups, so auto keeps the host unfold
    assert lines[4] == "input unfolded by the host: 640 words for the 1x8x8 image (2 activation bases)"
    assert lines[5] == "parameters resident: written once before the first start"
    assert lines[6].split() == ["layer", "binary", "MACs", "ideal", "cycles", "util"]
    assert [line.split()[:2] for line in lines[7:11]] == [["layer", "0"], ["layer", "1"], ["layer", "2"], ["total", "38144"]]
    assert lines[-1] == f"bundle written to {out}"
    assert load_bundle(out).config == config
    assert main([str(model_file), "--config", str(tmp_path / "c.json"), "--out", str(out), "--weights", "stream"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[3] == f"config {config.fingerprint()}: 8x2 array, W = 32, 11 instructions"
    assert lines[5] == "parameters streamed: 5 LOADs, 49 entries per inference"
    assert len(load_bundle(out).stream) == 5


def test_input_option(tmp_path, model_file, capsys):
    """--input packed: the first CONV reads the image map; unfold: the host unfolds it; a first layer
    that cannot read the packed image is one error line."""
    out = tmp_path / "p.bundle"
    assert main([str(model_file), "--out", str(out), "--input", "packed"]) == 0
    assert "input packed: the 1x8x8 image map, one word a pixel (64 words), read by the first CONV" in \
        capsys.readouterr().out.splitlines()
    assert (load_bundle(out).input["mode"], load_bundle(out).input["input_words"]) == ("packed", 64)
    assert main([str(model_file), "--out", str(out), "--input", "unfold", "--quiet"]) == 0
    assert load_bundle(out).input["mode"] == "unfold"
    mlp = tmp_path / "mlp.bnn"
    save_model(mlp, random_model([linear(12), linear(10)], (1, 8, 8), AccelConfig()))
    capsys.readouterr()
    assert main([str(mlp), "--out", str(out), "--input", "packed"]) == 1
    assert capsys.readouterr().err == ("python -m sw.compile: error: layer 0 (linear): the first layer cannot read "
                                       "the packed image: a fully connected first layer reads the whole image at "
                                       "once; the host unfold (input \"unfold\") can\n")
    with pytest.raises(SystemExit) as info:
        main([str(model_file), "--out", str(out), "--input", "raw"])
    assert info.value.code == 2
    assert "argument --input: invalid choice: 'raw'" in capsys.readouterr().err


def test_compile_for_a_board(tmp_path, model_file, capsys):
    import boards
    out = tmp_path / "p.bundle"
    assert main([str(model_file), "--board", "arty_a7", "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out == f"bundle written to {out}\n"
    assert load_bundle(out).config == boards.get_board("arty_a7").config
    assert main([str(model_file), "--board", "huge", "--out", str(out)]) == 1
    assert capsys.readouterr().err == (f"python -m sw.compile: error: Unknown board 'huge'; supported boards: "
                                       f"{', '.join(boards.BOARDS)}\n")


@pytest.mark.parametrize("args, message", [
    (["none.bnn", "--out", "p.bundle"], "Cannot read model file none.bnn: No such file or directory"),
    (["MODEL", "--config", "none.json", "--out", "p.bundle"],
     "Cannot read config file none.json: No such file or directory"),
    (["MODEL", "--config", "BADCONFIG", "--out", "p.bundle"],
     "Unknown config field 'lanes'; the fields are: acc_bits, act_depth, clock_hz, cols, element_scales, instr_depth, max_abases, "
     "max_k, max_wbases, out_depth, patch_depth, result_depth, rows, scale_bits, scale_depth, scale_frac, "
     "thr_depth, weight_depth, word_bits"),
    (["MODEL", "--config", "SMALL", "--out", "p.bundle"],
     "layer 0 (conv): activation words of its output map and the maps still live (64 + 64) = 128 exceeds "
     "act_depth = 100 by 28"),
    (["MODEL", "--out", "nodir/p.bundle"], "Cannot write nodir/p.bundle: No such file or directory"),
    (["MODEL", "--batch", "0", "--out", "p.bundle"], "program: the batch must be a positive integer, not 0"),
])
def test_errors_are_one_line(tmp_path, model_file, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.json").write_text('{"lanes": 3}')
    (tmp_path / "small.json").write_text(AccelConfig(act_depth=100).to_json())
    args = [{"MODEL": str(model_file), "BADCONFIG": "bad.json", "SMALL": "small.json"}.get(a, a) for a in args]
    assert main(args) == 1
    assert capsys.readouterr().err == f"python -m sw.compile: error: {message}\n"


def test_command_line_exit_status_and_usage_errors(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sw.compile", str(tmp_path / "x.bnn"), "--out",
                             str(tmp_path / "p.bundle")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr == f"python -m sw.compile: error: Cannot read model file {tmp_path / 'x.bnn'}: " \
                            f"No such file or directory\n"
    result = subprocess.run([sys.executable, "-m", "sw.compile", "m.bnn"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr == "python -m sw.compile: error: the following arguments are required: --out\n"


def test_compile_for_a_registered_board(tmp_path, model_file, capsys):
    boards = pytest.importorskip("boards")
    out = tmp_path / "p.bundle"
    assert main([str(model_file), "--board", "arty_a7", "--out", str(out), "--quiet"]) == 0
    assert load_bundle(out).config == boards.get_board("arty_a7").config
    capsys.readouterr()
    assert main([str(model_file), "--board", "nope", "--out", str(out)]) == 1
    assert capsys.readouterr().err == f"python -m sw.compile: error: Unknown board 'nope'; supported boards: " \
                                      f"{', '.join(boards.BOARDS)}\n"
