"""benchmarks.accuracy's residual family: its plan, its targets and its report, from a tiny results file
(no training: the numbers below are made up for the test, not measurements)."""

import json

import pytest

from benchmarks import accuracy


def _row(dataset, model, label, scheme, wbases, abases, float_acc, deploy_acc):
    return {"dataset": dataset, "model": model, "width": 8, "epochs": 3, "batch_size": 32, "lr": 5e-3,
            "label": label, "scheme": scheme, "wbases": wbases, "abases": abases, "train_seconds": 1.0,
            "float_accuracy": float_acc, "test_images": 1000,
            "deploy_accuracy": None if scheme == "fp" else deploy_acc,
            "disagreement": None if scheme == "fp" else 0.001, "weight_bits": 1000, "total_bits": 2000,
            "binary_ops": None if scheme == "fp" else 5000, "float_macs": 100 if scheme == "fp" else None}


REFERENCES = [_row("mnist5k", "lfc", "full precision", "fp", 1, 1, 0.957, None),
              _row("mnist5k", "lfc", "XNOR-Net", "xnor", 1, 1, 0.947, 0.947),
              _row("mnist5k", "lfc", "PA 1x1", "pa", 1, 1, 0.927, 0.927)]


def test_resnet_plan_covers_both_models_all_schemes_and_a_multi_basis_row():
    plan = accuracy.sections("resnet", datasets=["mnist5k", "digits"])
    assert list(plan) == [("mnist5k", "resnet18"), ("mnist5k", "birealnet18"),
                          ("digits", "resnet18"), ("digits", "birealnet18")]
    assert all(lr == accuracy.RESNET_LR for *_, lr in plan.values())
    schemes = {run[1] for run in accuracy.RESNET_RUNS}
    assert schemes == {"fp", "xnor", "trained", "abc", "pa", "groupnet", "ftbnn"}
    assert any(run[2] * run[3] > 1 for run in accuracy.RESNET_RUNS)
    # the chain family's plan is unchanged
    assert accuracy.sections("chain") == {("digits", "cnv"): (16, 12, 16, 2e-3),
                                          ("mnist5k", "lfc"): (512, 20, 64, 2e-3)}


def test_targets_are_stated_met_or_not_with_their_numbers():
    results = [_row("mnist5k", "resnet18", "full precision", "fp", 1, 1, 0.950, None),
               _row("mnist5k", "resnet18", "XNOR-Net", "xnor", 1, 1, 0.940, 0.935),
               _row("mnist5k", "resnet18", "PA 2x2", "pa", 2, 2, 0.946, 0.945)]
    lines = accuracy.target_lines(results, REFERENCES)
    assert "**met**. Best: resnet18 PA 2x2, deploy 94.50% vs full-precision resnet18 95.00%, gap 0.50" in lines[0]
    assert "**met**; 0 of 1 single-basis rows" in lines[1] and "(-1.20 points)" in lines[1]
    results[1]["deploy_accuracy"] = 0.920  # 2.7 points below LFC XNOR-Net
    results[2]["deploy_accuracy"] = 0.930  # 2 points below full precision
    lines = accuracy.target_lines(results, REFERENCES)
    assert "**NOT met**. Best: resnet18 PA 2x2" in lines[0] and "gap 2.00 points" in lines[0]
    assert "**NOT met**; 1 of 1 single-basis rows" in lines[1]
    assert "mnist5k resnet18 vs lfc: 0 of 1 within 2 points (XNOR-Net -2.7)" in lines[2]


def test_report_renders_from_a_partial_results_file(tmp_path):
    rows = [_row("mnist5k", "birealnet18", "full precision", "fp", 1, 1, 0.950, None),
            _row("mnist5k", "birealnet18", "PA 1x1", "pa", 1, 1, 0.930, 0.920)]
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps({"command": "python -m benchmarks.accuracy --family resnet", "family": "resnet",
                                 "seconds": 60, "planned": 36, "references": REFERENCES, "results": rows}))
    out = tmp_path / "report.md"
    assert accuracy.main(["--from-json", str(saved), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Accuracy of the residual networks")
    assert "**Partial:** 2 of 36 planned runs finished" in text
    assert "## mnist5k: birealnet18 (width 8), 3 epochs, Adam 5e-3 cosine, batch 32" in text
    assert "| PA 1x1 | 1 x 1 | 93.00 | 92.00 | 0.10 |" in text
    assert text.count("| 92.70 | -0.70 |") == 1  # PA 1x1 vs LFC PA 1x1
    assert "| 95.70 | -0.70 |" in text  # full precision vs LFC full precision, float accuracies
    assert "Target 1 (best multi-basis ResNet within 1.0 point of full precision on mnist5k): not measured" in text
    assert (tmp_path / "report.png").stat().st_size > 0


def test_models_option_belongs_to_the_resnet_family():
    with pytest.raises(SystemExit):
        accuracy.main(["--models", "resnet18"])


def test_resume_keeps_finished_runs_and_trains_none_when_all_are_done(tmp_path):
    width, epochs, batch_size, lr = accuracy.sections("resnet", quick=True)[("digits", "resnet18")]
    row = _row("digits", "resnet18", "full precision", "fp", 1, 1, 0.9, None)
    row.update(width=width, epochs=epochs, batch_size=batch_size, lr=lr)
    stale = dict(row, epochs=epochs + 1, label="stale")  # another plan's run: dropped
    out = tmp_path / "r.md"
    (tmp_path / "r.json").write_text(json.dumps({"command": "c", "family": "resnet", "seconds": 100, "planned": 1,
                                                 "references": [], "results": [row, stale]}))
    argv = ["--family", "resnet", "--quick", "--datasets", "digits", "--models", "resnet18", "--schemes", "fp",
            "--jobs", "1", "--resume", "--out", str(out)]
    assert accuracy.main(argv) == 0
    saved = json.loads((tmp_path / "r.json").read_text())
    assert [r["label"] for r in saved["results"]] == ["full precision"] and saved["seconds"] >= 100
    assert "| full precision | 1 x 1 | 90.00 | n/a |" in out.read_text()
