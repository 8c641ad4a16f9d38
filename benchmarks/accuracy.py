"""Accuracy of every binarization scheme on digits and MNIST-5k: writes docs/accuracy.md and a plot.

    python -m benchmarks.accuracy            # the full table (about 20 minutes on 2 cores)
    python -m benchmarks.accuracy --quick    # 2 epochs, smaller models: a smoke run

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
    dataset, model, width, epochs, batch_size, label, scheme, wbases, abases = job
    import torch
    torch.set_num_threads(1)
    from sw.data import load_dataset
    from sw.quant.export import export_model
    from sw.train import TrainSettings, build_network, evaluate_deploy, fit, float_predictions

    data = load_dataset(dataset)
    settings = TrainSettings(model, scheme, wbases, abases, dataset, epochs, SEED, width, batch_size)
    net = build_network(settings, data)
    start = time.time()
    fit(net, data, settings, progress=False)
    seconds = time.time() - start
    float_pred = float_predictions(net, data.test_x)
    result = {"dataset": dataset, "model": model, "width": width, "epochs": epochs, "batch_size": batch_size,
              "label": label,
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


def write_report(results, setups, path_md, path_png, command, elapsed):
    lines = [
        "# Accuracy of the binarization schemes",
        "",
        f"Generated by `{command}` ({elapsed / 60:.1f} minutes on {platform.machine()}, torch CPU, one",
        "thread per run). Seed 1 for every run; numbers are one run each, so differences of a few tenths",
        "of a point between schemes are within run-to-run noise.",
        "",
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
        "* One test image is 0.28 points on digits and 0.1 points on MNIST-5k. Every run uses seed 1; no",
        "  hyper-parameter was tuned per scheme (all use Adam 2e-3, cosine schedule), so the ranking of",
        "  schemes at equal bases is not a verdict on the papers, only on this setup.",
        "",
    ]
    for dataset, (model, width, epochs, batch_size) in setups.items():
        rows = [r for r in results if r["dataset"] == dataset]
        if not rows:
            continue
        fp = next((r for r in rows if r["scheme"] == "fp"), None)
        lines += [f"## {dataset}: {model} (width {width}), {epochs} epochs, Adam 2e-3 cosine, batch {batch_size}", "",
                  "| scheme | bases M x N | float % | deploy % | differ % | weight bits | total bits "
                  "| binary ops / image | train s |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in rows:
            ops = _num(r["binary_ops"]) if r["binary_ops"] is not None else f"({_num(r['float_macs'])} MACs)"
            lines.append(f"| {r['label']} | {r['wbases']} x {r['abases']} | {_pct(r['float_accuracy'])} | "
                         f"{_pct(r['deploy_accuracy'])} | {_pct(r['disagreement'])} | {_num(r['weight_bits'])} | "
                         f"{_num(r['total_bits'])} | {ops} | {r['train_seconds']:.0f} |")
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
    datasets = [d for d in setups if any(r["dataset"] == d for r in results)]
    fig, axes = plt.subplots(1, len(datasets), figsize=(7 * len(datasets), 4.5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        rows = [r for r in results if r["dataset"] == dataset]
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
        model, width, epochs, _ = setups[dataset]
        ax.set_title(f"{dataset}: {model} width {width}, {epochs} epochs")
        fp = next((r for r in rows if r["scheme"] == "fp"), None)
        if fp:
            ax.axhline(100 * fp["float_accuracy"] - 1.0, color="grey", linestyle="--", linewidth=0.8,
                       label="full precision - 1 point")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs and small models (a smoke run)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel training processes (default 2)")
    parser.add_argument("--datasets", default="digits,mnist5k", help="comma-separated subset")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "accuracy.md"), help="report path")
    parser.add_argument("--from-json", help="re-render the report and plot from a saved results file "
                                            "(OUT.json of an earlier run) without training")
    args = parser.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as file:
            saved = json.load(file)
        setups = {}
        for r in saved["results"]:
            setups.setdefault(r["dataset"], (r["model"], r["width"], r["epochs"], r.get("batch_size", 64)))
        base = os.path.splitext(args.out)[0]
        write_report(saved["results"], setups, args.out, base + ".png", saved["command"], saved["seconds"])
        print(f"wrote {args.out} and {base}.png from {args.from_json}")
        return 0
    setups = QUICK if args.quick else SETUPS
    datasets = [d for d in args.datasets.split(",") if d]
    unknown = [d for d in datasets if d not in setups]
    if unknown:
        parser.error(f"unknown dataset {unknown[0]!r}; choose from: {', '.join(setups)}")
    setups = {d: setups[d] for d in datasets}
    jobs = [(d, *setups[d], *run) for d in datasets for run in RUNS]
    # Longest runs first (cost grows with the basis pairs and the model), so the workers finish together.
    order = sorted(range(len(jobs)), key=lambda i: -(1 + jobs[i][7] * jobs[i][8]))
    start = time.time()
    from tqdm import tqdm
    results = [None] * len(jobs)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=context) as pool:
        futures = {pool.submit(run_one, jobs[i]): i for i in order}
        with tqdm(total=len(jobs), desc="runs", dynamic_ncols=True) as bar:
            for future in concurrent.futures.as_completed(futures):
                result = future.result()
                results[futures[future]] = result
                bar.set_postfix_str(f"{result['dataset']} {result['label']}: "
                                    f"{_pct(result['deploy_accuracy'] or result['float_accuracy'])}%")
                bar.update()
    elapsed = time.time() - start
    base = os.path.splitext(args.out)[0]
    command = "python -m benchmarks.accuracy" + (" --quick" if args.quick else "")
    with open(base + ".json", "w") as file:
        json.dump({"command": command, "seconds": round(elapsed), "results": results}, file, indent=1)
    write_report(results, setups, args.out, base + ".png", command, elapsed)
    print(f"wrote {args.out}, {base}.png and {base}.json in {elapsed / 60:.1f} minutes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
