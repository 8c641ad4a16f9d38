"""Accuracy of every binarization scheme on digits and MNIST-5k: writes docs/accuracy.md and a plot.

    python -m benchmarks.accuracy            # the full table (about 20 minutes on 2 cores)
    python -m benchmarks.accuracy --quick    # 2 epochs, smaller models: a smoke run
    python -m benchmarks.accuracy --family resnet --jobs 1   # resnet18 / birealnet18: docs/accuracy-resnet.md

The `chain` family (the default) trains LFC on MNIST-5k and CNV on digits; the `resnet` family trains
`resnet18` and `birealnet18` on both and compares every single-basis row with the same scheme's
LFC/CNV row (read from docs/accuracy.json and kept in the resnet JSON).

For each dataset: the full-precision baseline; each scheme at 1 basis; ABC-Net and PA at 2x2 and 3x3;
Group-Net at K=3; FTBNN. Each row gives the float and deploy (integer, `sw.ref` arithmetic for the
default AccelConfig) test accuracy, how often the two predictions differ, the parameter bits and the
binary operations per image.
"""

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (label, scheme, wbases, abases)
RUNS = [
    ("full precision", "fp", 1, 1),
    ("XNOR-Net", "xnor", 1, 1),
    ("trained (Xu & Cheung)", "trained", 1, 1),
    ("ABC-Net 1x1", "abc", 1, 1),
    ("PA 1x1", "pa", 1, 1),
    ("Group-Net K=1", "groupnet", 1, 1),
    ("FTBNN", "ftbnn", 1, 1),
    ("ABC-Net 2x2", "abc", 2, 2),
    ("ABC-Net 3x3", "abc", 3, 3),
    ("PA 2x2", "pa", 2, 2),
    ("PA 3x3", "pa", 3, 3),
    ("Group-Net K=3", "groupnet", 3, 1),
]

# dataset -> (model, width, epochs, batch size); --quick -> smaller. digits has only 1,438 training
# images, so it uses batches of 16 to get about as many optimiser steps as MNIST-5k (binary networks
# need the steps: with batches of 64 and 15 epochs, 1-basis CNVs stopped at 50-86%).
SETUPS = {"digits": ("cnv", 16, 12, 16), "mnist5k": ("lfc", 512, 20, 64)}
QUICK = {"digits": ("cnv", 8, 2, 16), "mnist5k": ("lfc", 64, 2, 64)}
SEED = 1
LR = 2e-3

# The residual family: every scheme at one basis, ABC-Net and PA at 2x2, each model beside its
# full-precision twin. Widths and epochs are chosen so that each run trains in one to three minutes on
# one CPU thread (the whole table in under an hour). Residual networks train at Adam 5e-3 (sw.train's
# default for them, docs/schemes.md "Residual networks").
RESNET_RUNS = RUNS[:7] + [RUNS[7], RUNS[9]]
RESNET_MODELS = ("resnet18", "birealnet18")
RESNET_LR = 5e-3
# dataset -> (width, epochs, batch size), for each of RESNET_MODELS
RESNET_SETUPS = {"digits": (8, 20, 16), "mnist5k": (8, 15, 32)}
RESNET_QUICK = {"digits": (4, 1, 16), "mnist5k": (4, 1, 64)}
# The LFC/CNV row a single-basis residual row is held against (target: at most 2 points below).
REFERENCE_MODEL = {"digits": "cnv", "mnist5k": "lfc"}


def sections(family, quick=False, datasets=None):
    """{(dataset, model): (width, epochs, batch size, learning rate)} in run order."""
    if family == "chain":
        table = QUICK if quick else SETUPS
        out = {(d, m): (w, e, b, LR) for d, (m, w, e, b) in table.items()}
    else:
        table = RESNET_QUICK if quick else RESNET_SETUPS
        out = {(d, m): (*table[d], RESNET_LR) for d in table for m in RESNET_MODELS}
    if datasets is not None:  # in the order given
        out = {key: out[key] for d in datasets for key in out if key[0] == d}
    return out


def _lr_text(lr):
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def model_costs(exported):
    """(weight bits, total bits with scales and thresholds, binary ops per image) of a BnnModel."""
    shapes = {-1: tuple(exported.input_shape)}
    weight_bits = other_bits = ops = 0
    scale_bits, acc_bits = exported.config["scale_bits"], exported.config["acc_bits"]
    for index, layer in enumerate(exported.layers):
        if layer["kind"] == "maxpool":
            c, h, w = shapes[layer["source"]]
            k, s = layer["kernel"], layer["stride"]
            shapes[index] = (c, (h - k) // s + 1, (w - k) // s + 1)
            continue
        for branch in layer["branches"]:
            m, o = branch["weights"].shape[:2]
            n = branch["abases"]
            weight_bits += m * o * branch["k"]
            other_bits += m * n * o * scale_bits
            if layer["kind"] == "conv":
                c, h, w = shapes[branch["source"]]
                kh, kw = branch["kernel"]
                ho = (h + 2 * branch["padding"] - kh) // branch["stride"] + 1
                wo = (w + 2 * branch["padding"] - kw) // branch["stride"] + 1
                shapes[index] = (o, ho, wo)
                positions = ho * wo
            else:
                shapes[index] = (o,)
                positions = 1
            ops += m * n * o * branch["k"] * positions
        if "thresholds" in layer:
            other_bits += layer["thresholds"].size * acc_bits + layer["flip"].size
    return weight_bits, weight_bits + other_bits, ops


def float_costs(net, input_shape):
    """(parameter bits at 32 bits each, multiply-accumulates per image) of a float network."""
    import torch

    from sw.models import Branch
    params = sum(p.numel() for p in net.parameters())
    macs = 0
    hooks = []

    def count(module, inputs, output):
        nonlocal macs
        macs += output[0].numel() * module.k  # output of one image: O x H' x W' sums of K products

    for module in net.modules():
        if isinstance(module, Branch):
            hooks.append(module.register_forward_hook(count))
    with torch.no_grad():
        net.eval()
        net(torch.zeros((1,) + tuple(input_shape), dtype=torch.uint8))
    for hook in hooks:
        hook.remove()
    return params * 32, macs


def run_one(job):
    """Train, evaluate and export one configuration (in a worker process)."""
    dataset, model, width, epochs, batch_size, lr, label, scheme, wbases, abases = job
    import torch
    torch.set_num_threads(1)
    from sw.data import load_dataset
    from sw.quant.export import export_model
    from sw.train import TrainSettings, build_network, evaluate_deploy, fit, float_predictions

    data = load_dataset(dataset)
    settings = TrainSettings(model, scheme, wbases, abases, dataset, epochs, SEED, width, batch_size, lr)
    net = build_network(settings, data)
    start = time.time()
    fit(net, data, settings, progress=False)
    seconds = time.time() - start
    float_pred = float_predictions(net, data.test_x)
    result = {"dataset": dataset, "model": model, "width": width, "epochs": epochs, "batch_size": batch_size,
              "lr": lr, "label": label,
              "scheme": scheme, "wbases": wbases, "abases": abases, "train_seconds": round(seconds, 1),
              "float_accuracy": float(np.mean(float_pred == data.test_y)), "test_images": int(len(data.test_y))}
    if scheme == "fp":
        bits, macs = float_costs(net, data.input_shape)
        result.update({"deploy_accuracy": None, "disagreement": None, "weight_bits": bits, "total_bits": bits,
                       "binary_ops": None, "float_macs": macs})
    else:
        exported = export_model(net)
        deploy_pred = evaluate_deploy(exported, data.test_x).argmax(1)
        weight_bits, total_bits, ops = model_costs(exported)
        result.update({"deploy_accuracy": float(np.mean(deploy_pred == data.test_y)),
                       "disagreement": float(np.mean(deploy_pred != float_pred)), "weight_bits": weight_bits,
                       "total_bits": total_bits, "binary_ops": ops, "float_macs": None})
    return result


def _pct(value):
    return "n/a" if value is None else f"{100 * value:.2f}"


def _num(value):
    if value is None:
        return "n/a"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return str(value)


CHAIN_INTRO = [
    "# Accuracy of the binarization schemes",
    "",
    "Generated by `{command}` ({minutes:.1f} minutes on {machine}, torch CPU, one",
    "thread per run). Seed 1 for every run; numbers are one run each, so differences of a few tenths",
    "of a point between schemes are within run-to-run noise.",
    "",
]
COMMON_NOTES = [
    "* **float**: the trained torch model on the test split. **deploy**: the exported integer model",
    "  (`sw.model_format.deploy_forward`, `sw.ref` arithmetic, default `AccelConfig`: 16-bit scales with",
    "  8 fractional bits, 32-bit accumulator), i.e. the accuracy the FPGA will have. **differ**: test",
    "  images whose deploy and float predictions differ.",
    "* **weight bits**: binary weight bits (M x O x K per layer); **total bits** adds the 16-bit scales",
    "  and 32-bit thresholds. Full precision: 32 bits per parameter.",
    "* **binary ops / image**: XNOR-popcount bit operations, sum over layers of M x N x O x K x output",
    "  positions (the first layer counts its 8 pixel planes as N = 8). Full precision: multiply-",
    "  accumulates instead.",
    "* Splits (fixed, independent of the seed; `sw/data`): per class, shuffled with",
    "  `numpy.random.default_rng(0)`, 20% test. digits: 1,438 train / 359 test; MNIST-5k: 4,000 / 1,000.",
]
CHAIN_NOTES = [
    "* One test image is 0.28 points on digits and 0.1 points on MNIST-5k. Every run uses seed 1; no",
    "  hyper-parameter was tuned per scheme (all use Adam 2e-3, cosine schedule), so the ranking of",
    "  schemes at equal bases is not a verdict on the papers, only on this setup.",
    "* Residual networks (`resnet18`, `birealnet18`, every scheme): [accuracy-resnet.md](accuracy-resnet.md)",
    "  (`python -m benchmarks.accuracy --family resnet`).",
    "",
]
RESNET_INTRO = [
    "# Accuracy of the residual networks",
    "",
    "Generated by `{command}` ({minutes:.1f} minutes on {machine}, torch CPU, one",
    "thread, one training at a time). `resnet18` and `birealnet18` (docs/schemes.md \"Residual networks\")",
    "with every scheme, each beside its full-precision twin; the LFC/CNV rows they are held against are",
    "those of [accuracy.md](accuracy.md) (digits: `cnv`, MNIST-5k: `lfc`). Seed 1 for every run; numbers",
    "are one run each, so differences of a few tenths of a point are within run-to-run noise.",
    "",
]
RESNET_NOTES = [
    "* **LFC/CNV deploy %**: the same scheme and bases in [accuracy.md](accuracy.md); **vs LFC/CNV**: this",
    "  row's deploy accuracy minus that one, in points.",
    "* One test image is 0.28 points on digits and 0.1 points on MNIST-5k. All runs use Adam 5e-3 (the",
    "  trainer's default for residual networks) with a cosine schedule; no hyper-parameter was tuned per",
    "  scheme. The widths are small so that each run trains in minutes on one CPU thread: they are far",
    "  below the seeds' ResNet-18 (width 64), so these rows measure this setup, not the papers.",
    "* **train s** is wall time on a machine shared with other work, not a speed measurement.",
    "",
]


def _reference_row(references, dataset, r):
    for ref in references:
        if (ref["dataset"] == dataset and ref["scheme"] == r["scheme"] and ref["wbases"] == r["wbases"]
                and ref["abases"] == r["abases"]):
            return ref
    return None


def _accuracy(r):
    return r["deploy_accuracy"] if r["deploy_accuracy"] is not None else r["float_accuracy"]


def target_lines(results, references, dataset="mnist5k", reference_model=None):
    """The residual family's two targets, each stated as met or NOT met with its numbers.

    1. The best multi-basis ResNet on `dataset` within 1.0 point of its full-precision twin.
    2. No single-basis ResNet more than 2 points below the same scheme's LFC/CNV row.
    """
    reference_model = reference_model or REFERENCE_MODEL
    lines = []
    multi = [r for r in results if r["dataset"] == dataset and r["scheme"] != "fp" and r["wbases"] * r["abases"] > 1]
    if multi:
        best = max(multi, key=lambda r: r["deploy_accuracy"])
        fp = next((r for r in results if r["dataset"] == dataset and r["model"] == best["model"]
                   and r["scheme"] == "fp"), None)
        if fp is None:
            lines.append(f"* Target 1 (best multi-basis ResNet within 1.0 point of full precision on {dataset}): "
                         f"not measured (no full-precision {best['model']} run).")
        else:
            gap = 100 * (fp["float_accuracy"] - best["deploy_accuracy"])
            lines.append(f"* Target 1 (best multi-basis ResNet within 1.0 point of full precision on {dataset}): "
                         f"**{'met' if gap <= 1.0 else 'NOT met'}**. Best: {best['model']} {best['label']}, "
                         f"deploy {_pct(best['deploy_accuracy'])}% vs full-precision {best['model']} "
                         f"{_pct(fp['float_accuracy'])}%, gap {gap:.2f} points.")
    else:
        lines.append(f"* Target 1 (best multi-basis ResNet within 1.0 point of full precision on {dataset}): "
                     "not measured (no multi-basis run finished).")
    single = [r for r in results if r["scheme"] != "fp" and r["wbases"] * r["abases"] == 1]
    compared, failing = [], []
    for r in single:
        ref = _reference_row(references, r["dataset"], r)
        if ref is None:
            continue
        delta = 100 * (r["deploy_accuracy"] - ref["deploy_accuracy"])
        compared.append((r, ref, delta))
        if delta < -2.0:
            failing.append((r, ref, delta))
    if not compared:
        lines.append("* Target 2 (no single-basis ResNet more than 2 points below the same scheme's LFC/CNV "
                     "row): not measured (no single-basis run with a reference row).")
    else:
        worst = min(compared, key=lambda item: item[2])
        lines.append(f"* Target 2 (no single-basis ResNet more than 2 points below the same scheme's LFC/CNV "
                     f"row): **{'met' if not failing else 'NOT met'}**; {len(failing)} of {len(compared)} "
                     f"single-basis rows are more than 2 points below. Worst: {worst[0]['dataset']} "
                     f"{worst[0]['model']} {worst[0]['label']} {_pct(worst[0]['deploy_accuracy'])}% vs "
                     f"{worst[1]['model']} {_pct(worst[1]['deploy_accuracy'])}% ({worst[2]:+.2f} points).")
        for dataset_name in dict.fromkeys(r["dataset"] for r, _, _ in compared):
            for model in dict.fromkeys(r["model"] for r, _, _ in compared if r["dataset"] == dataset_name):
                items = [(r, d) for r, _, d in compared if r["dataset"] == dataset_name and r["model"] == model]
                ok = sum(1 for _, d in items if d >= -2.0)
                steps = ", ".join(f"{r['label']} {d:+.1f}" for r, d in items)
                lines.append(f"  * {dataset_name} {model} vs {reference_model.get(dataset_name, 'LFC/CNV')}: "
                             f"{ok} of {len(items)} within 2 points ({steps}).")
    return lines


def write_report(results, setups, path_md, path_png, command, elapsed, family="chain", references=(),
                 expected=None, notes=()):
    """setups: {(dataset, model): (width, epochs, batch size, lr)}; results: finished runs (partial allowed,
    `expected` is then the number of runs planned)."""
    fmt = {"command": command, "minutes": elapsed / 60, "machine": platform.machine()}
    resnet = family == "resnet"
    lines = [line.format(**fmt) for line in (RESNET_INTRO if resnet else CHAIN_INTRO)]
    if expected is not None and len(results) < expected:
        lines += [f"**Partial:** {len(results)} of {expected} planned runs finished; the sections below hold "
                  "only those.", ""]
    lines += COMMON_NOTES + (RESNET_NOTES[:-1] if resnet else CHAIN_NOTES[:-1]) + list(notes) + [""]
    if resnet:
        lines += ["## Targets", ""] + target_lines(results, references) + [""]
    for (dataset, model), (width, epochs, batch_size, lr) in setups.items():
        rows = [r for r in results if r["dataset"] == dataset and r["model"] == model]
        if not rows:
            continue
        fp = next((r for r in rows if r["scheme"] == "fp"), None)
        lines += [f"## {dataset}: {model} (width {width}), {epochs} epochs, Adam {_lr_text(lr)} cosine, "
                  f"batch {batch_size}", ""]
        header = ("| scheme | bases M x N | float % | deploy % | differ % | weight bits | total bits "
                  "| binary ops / image | train s |")
        rule = "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        if resnet:
            header += " LFC/CNV deploy % | vs LFC/CNV |"
            rule += " ---: | ---: |"
        lines += [header, rule]
        for r in rows:
            ops = _num(r["binary_ops"]) if r["binary_ops"] is not None else f"({_num(r['float_macs'])} MACs)"
            line = (f"| {r['label']} | {r['wbases']} x {r['abases']} | {_pct(r['float_accuracy'])} | "
                    f"{_pct(r['deploy_accuracy'])} | {_pct(r['disagreement'])} | {_num(r['weight_bits'])} | "
                    f"{_num(r['total_bits'])} | {ops} | {r['train_seconds']:.0f} |")
            if resnet:
                ref = _reference_row(references, dataset, r)  # full precision: float accuracies
                if ref is None:
                    line += " n/a | n/a |"
                else:
                    line += f" {_pct(_accuracy(ref))} | {100 * (_accuracy(r) - _accuracy(ref)):+.2f} |"
            lines.append(line)
        binary = [r for r in rows if r["scheme"] != "fp"]
        multi = [r for r in binary if r["wbases"] * r["abases"] > 1]
        lines.append("")
        if fp and multi:
            best = max(multi, key=lambda r: r["deploy_accuracy"])
            gap = 100 * (fp["float_accuracy"] - best["deploy_accuracy"])
            lines.append(f"Best multi-basis scheme: {best['label']}, deploy {_pct(best['deploy_accuracy'])}% vs "
                         f"full precision {_pct(fp['float_accuracy'])}%: gap {gap:.2f} points "
                         f"({'within' if gap <= 1.0 else 'NOT within'} the 1.0-point target).")
        for scheme in ("abc", "pa"):
            series = sorted((r for r in binary if r["scheme"] == scheme and r["wbases"] == r["abases"]),
                            key=lambda r: r["wbases"])
            if len(series) > 1:
                values = [r["deploy_accuracy"] for r in series]
                rising = all(b >= a for a, b in zip(values, values[1:]))
                steps = " -> ".join("%dx%d: %s" % (r["wbases"], r["abases"], _pct(r["deploy_accuracy"]))
                                    for r in series)
                name = series[0]["label"].split()[0]
                lines.append(f"{name} deploy accuracy by bases {steps} "
                             f"({'rising' if rising else 'NOT monotone'}).")
        worst = max((r["disagreement"] for r in binary), default=0.0)
        lines += [f"Deploy and float predictions differ on at most {_pct(worst)}% of test images.", ""]
    lines += [f"![accuracy per scheme]({os.path.basename(path_png)})", ""]
    with open(path_md, "w") as file:
        file.write("\n".join(lines))
    _plot(results, setups, path_png)


def _plot(results, setups, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = [k for k in setups if any((r["dataset"], r["model"]) == k for r in results)]
    if not keys:
        return
    columns = min(2, len(keys))
    rows_count = -(-len(keys) // columns)
    fig, axes = plt.subplots(rows_count, columns, figsize=(7 * columns, 4.5 * rows_count), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax, (dataset, model) in zip(axes.flat, keys):
        rows = [r for r in results if r["dataset"] == dataset and r["model"] == model]
        labels = [r["label"] for r in rows]
        x = np.arange(len(rows))
        floats = [100 * r["float_accuracy"] for r in rows]
        deploys = [100 * r["deploy_accuracy"] if r["deploy_accuracy"] is not None else np.nan for r in rows]
        ax.bar(x - 0.2, floats, 0.4, label="float")
        ax.bar(x + 0.2, deploys, 0.4, label="deploy (integer)")
        low = min(v for v in floats + deploys if not np.isnan(v))
        ax.set_ylim(max(0, low - 5), 100)
        ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("test accuracy %")
        width, epochs = setups[(dataset, model)][:2]
        ax.set_title(f"{dataset}: {model} width {width}, {epochs} epochs")
        fp = next((r for r in rows if r["scheme"] == "fp"), None)
        if fp:
            ax.axhline(100 * fp["float_accuracy"] - 1.0, color="grey", linestyle="--", linewidth=0.8,
                       label="full precision - 1 point")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _load_references(path, datasets):
    """The LFC/CNV rows (docs/accuracy.json) the residual rows are compared with; [] if absent."""
    if not os.path.exists(path):
        return []
    with open(path) as file:
        saved = json.load(file)
    return [r for r in saved["results"] if r["dataset"] in datasets
            and r["model"] == REFERENCE_MODEL.get(r["dataset"])]


def _job_key(job):
    """The fields that identify a run: dataset, model, width, epochs, batch, lr, scheme, bases."""
    dataset, model, width, epochs, batch_size, lr, _label, scheme, wbases, abases = job
    return (dataset, model, width, epochs, batch_size, lr, scheme, wbases, abases)


def _setups_from(results):
    setups = {}
    for r in results:
        setups.setdefault((r["dataset"], r["model"]),
                          (r["width"], r["epochs"], r.get("batch_size", 64), r.get("lr", LR)))
    return setups


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=("chain", "resnet"), default="chain",
                        help="chain: LFC / CNV (docs/accuracy.md, the default); resnet: resnet18 and "
                             "birealnet18 (docs/accuracy-resnet.md)")
    parser.add_argument("--quick", action="store_true", help="1-2 epochs and small models (a smoke run)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel training processes (default 2)")
    parser.add_argument("--datasets", default="digits,mnist5k", help="comma-separated subset")
    parser.add_argument("--models", help="resnet family: comma-separated subset of " + ", ".join(RESNET_MODELS))
    parser.add_argument("--schemes", help="comma-separated subset of the rows' labels' schemes "
                                          "(fp, xnor, trained, abc, pa, groupnet, ftbnn)")
    parser.add_argument("--out", help="report path (default docs/accuracy.md, or docs/accuracy-resnet.md "
                                      "for --family resnet)")
    parser.add_argument("--reference", default=os.path.join(ROOT, "docs", "accuracy.json"),
                        help="resnet family: the LFC/CNV results to compare with (default docs/accuracy.json)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the finished runs of OUT.json that match the plan and train only the rest "
                             "(an interrupted sweep continues; runs are saved after each one)")
    parser.add_argument("--from-json", help="re-render the report and plot from a saved results file "
                                            "(OUT.json of an earlier run) without training")
    args = parser.parse_args(argv)
    saved = None
    if args.from_json:
        with open(args.from_json) as file:
            saved = json.load(file)
        args.family = saved.get("family", "chain")  # the saved sweep's family picks the default report
    out = args.out or os.path.join(ROOT, "docs", "accuracy-resnet.md" if args.family == "resnet" else "accuracy.md")
    base = os.path.splitext(out)[0]
    if saved is not None:
        family = args.family
        write_report(saved["results"], _setups_from(saved["results"]), out, base + ".png", saved["command"],
                     saved["seconds"], family, saved.get("references", []), saved.get("planned"),
                     saved.get("notes", []))
        print(f"wrote {out} and {base}.png from {args.from_json}")
        return 0
    datasets = [d for d in args.datasets.split(",") if d]
    known = RESNET_SETUPS if args.family == "resnet" else SETUPS
    unknown = [d for d in datasets if d not in known]
    if unknown:
        parser.error(f"unknown dataset {unknown[0]!r}; choose from: {', '.join(known)}")
    setups = sections(args.family, args.quick, datasets)
    if args.models:
        models = [m for m in args.models.split(",") if m]
        bad = [m for m in models if m not in RESNET_MODELS] if args.family == "resnet" else models
        if bad:
            parser.error(f"--models {bad[0]!r}: only the resnet family takes --models ({', '.join(RESNET_MODELS)})")
        setups = {k: v for k, v in setups.items() if k[1] in models}
    runs = RESNET_RUNS if args.family == "resnet" else RUNS
    if args.schemes:
        schemes = [x for x in args.schemes.split(",") if x]
        runs = [run for run in runs if run[1] in schemes]
        if not runs:
            parser.error(f"--schemes {args.schemes!r} selects no run")
    jobs = [(d, m, *setups[(d, m)], *run) for (d, m) in setups for run in runs]
    if args.jobs > 1:
        # Longest runs first (cost grows with the basis pairs and the model), so the workers finish together.
        order = sorted(range(len(jobs)), key=lambda i: -(1 + jobs[i][8] * jobs[i][9]))
    else:
        order = list(range(len(jobs)))  # one at a time: section by section, so a partial run is useful
    references = _load_references(args.reference, datasets) if args.family == "resnet" else []
    command = "python -m benchmarks.accuracy" + (" --family resnet" if args.family == "resnet" else "") + \
        (" --quick" if args.quick else "")
    results = [None] * len(jobs)
    earlier = 0
    notes = []  # lines a person adds to OUT.json (how a sweep was run), rendered among the notes
    if args.resume and os.path.exists(base + ".json"):
        with open(base + ".json") as file:
            saved = json.load(file)
        earlier = saved.get("seconds", 0)
        notes = saved.get("notes", [])
        keys = [_job_key(job) for job in jobs]
        for r in saved["results"]:
            key = (r["dataset"], r["model"], r["width"], r["epochs"], r["batch_size"], r.get("lr", LR),
                   r["scheme"], r["wbases"], r["abases"])
            if key in keys:
                results[keys.index(key)] = r
        order = [i for i in order if results[i] is None]
        print(f"--resume: {len(jobs) - len(order)} of {len(jobs)} runs kept from {base}.json")
    start = time.time() - earlier

    def save(results):
        done = [r for r in results if r is not None]
        elapsed = time.time() - start
        with open(base + ".json", "w") as file:
            json.dump({"command": command, "family": args.family, "seconds": round(elapsed),
                       "planned": len(jobs), "notes": notes, "references": references, "results": done},
                      file, indent=1)
        write_report(done, setups, out, base + ".png", command, elapsed, args.family, references, len(jobs),
                     notes)
        return elapsed

    from tqdm import tqdm
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=context) as pool:
        futures = {pool.submit(run_one, jobs[i]): i for i in order}
        with tqdm(total=len(order), desc="runs", dynamic_ncols=True) as bar:
            for future in concurrent.futures.as_completed(futures):
                result = future.result()
                results[futures[future]] = result
                bar.set_postfix_str(f"{result['dataset']} {result['model']} {result['label']}: "
                                    f"{_pct(_accuracy(result))}%")
                bar.update()
                save(results)  # a report after every run: an interrupted sweep keeps what it measured
    elapsed = save(results)
    print(f"wrote {out}, {base}.png and {base}.json in {elapsed / 60:.1f} minutes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
