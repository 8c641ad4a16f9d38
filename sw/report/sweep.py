"""python -m sw.report.sweep model.bnn --board arty_a7 --out DIR

Design-space sweep: compiles one network for array geometries (rows x cols x word_bits) and basis
limits (max_wbases x max_abases) on one board, and reports which configs fit (the compiler's refusal,
the accelerator's own constraints, resources over the device's capacity), their analytic cycles,
frames/s at the config's clock and their resources (docs/report.md). Every other config field is the
board's default.

Resources: `--resources model` (default) predicts them with `LutModel`, a line per resource through
measured synthesis points (the shipped calibration for the board plus every cached estimate of the
same memory sizes); `--resources synth` synthesises `hw.accel.Accelerator` for every config that
compiles (about a minute each, cached by config fingerprint); `--resources none` skips them.
"""

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from hw.cli import OneLineParser

from ._cli import UsageError, add_common, fail, finish, open_board

PROG = "python -m sw.report.sweep"
DEFAULT_GEOMETRIES = ("4x4x32", "4x8x32", "8x8x32", "8x16x32", "16x8x32", "16x16x32",
                      "4x8x64", "8x8x64", "8x16x64", "16x16x64")
CALIBRATION = Path(__file__).with_name("calibration.json")
# Config fields the sweep varies; the others (memory depths, widths, clock) are the board's.
VARIED = ("rows", "cols", "word_bits", "max_wbases", "max_abases")


def parse_geometry(text):
    try:
        rows, cols, width = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"geometry must look like 8x8x32 (rows x cols x word_bits), "
                                         f"not {text!r}") from None
    return rows, cols, width


def parse_bases(text):
    try:
        m, n = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bases must look like 2x2 (max_wbases x max_abases), "
                                         f"not {text!r}") from None
    return m, n


def model_bases(model):
    """(weight bases, activation bases) the model needs: the most of any layer (its input planes
    beyond the first layer's 8 pixel planes, and the bit-planes a layer writes)."""
    m = n = 1
    for index, layer in enumerate(model.layers):
        for branch in layer.get("branches", []):
            m = max(m, int(branch.get("wbases", 1)))
            if index > 0:
                n = max(n, int(branch.get("abases", 1)))
        if "thresholds" in layer:
            n = max(n, int(layer["thresholds"].shape[1]))
    return m, n


def _same_memories(a, b):
    """The same config but for the geometry the sweep varies (and the run clock, which the synthesised
    resources do not depend on)."""
    skip = set(VARIED) | {"clock_hz"}
    return all(v == b.get(k) for k, v in a.items() if k not in skip)


def calibration_points(board, flow, cache, same_memories=True):
    """Measured (config, utilization) points of `flow`: the shipped calibration (every board of the
    flow) and the cache; with `same_memories`, only those with the board's memory sizes."""
    import boards as registry

    from hw.config import AccelConfig
    shipped = json.loads(CALIBRATION.read_text()) if CALIBRATION.exists() else {}
    points = []
    for name, records in shipped.items():
        if name in registry.BOARDS and registry.BOARDS[name].flow == flow:
            points += [(AccelConfig.from_dict(r["config"]), r["utilization"]) for r in records]
    points += cache.points(flow)
    base = board.config.to_dict()
    unique = {}
    for cfg, util in points:
        if not same_memories or _same_memories(cfg.to_dict(), base):
            unique[cfg.fingerprint()] = (cfg, util)
    return list(unique.values())


def evaluate(model, board, config, resources="model", cache=None, lut_model=None):
    """One sweep point as a dict: config, fits, why not, cycles, frames/s, resources."""
    from hw.accel import AccelError, Accelerator
    from sw.compile import CompileError, compile_model

    from . import analytic_cycles
    from .resources import ResourceError, accelerator_estimate
    row = {"geometry": f"{config.rows}x{config.cols}x{config.word_bits}",
           "bases": f"{config.max_wbases}x{config.max_abases}", "config": config.to_dict(),
           "fingerprint": config.fingerprint(), "peak_macs_per_cycle": config.macs_per_cycle,
           "clock_mhz": config.clock_hz / 1e6, "compiles": False, "fits": False, "reason": None,
           "cycles": None, "frames_per_s": None, "utilization": None, "resources": None,
           "resource_source": None}
    try:
        Accelerator(config)
    except AccelError as error:
        row["reason"] = f"accelerator: {error}"
        return row
    try:
        bundle = compile_model(model, config, verify_images=0)
    except CompileError as error:
        row["reason"] = f"compiler: {error}"
        return row
    row["compiles"] = True
    _, cycles = analytic_cycles(bundle)
    row["cycles"] = cycles
    row["frames_per_s"] = config.clock_hz / cycles
    row["utilization"] = sum(layer["ideal_cycles"] for layer in bundle.layers) / cycles
    if resources == "synth":
        try:
            used = accelerator_estimate(config, board.flow, cache).used
        except ResourceError as error:
            row["reason"] = f"synthesis: {error}"
            return row
        row["resource_source"] = "synth"
    elif resources == "model":
        used = lut_model.predict(config)
        row["resource_source"] = "model"
    else:
        row["fits"] = True
        return row
    row["resources"] = used
    over = [f"{name} {used[name]:,g} of {available:,}" for name, available in board.capacity.items()
            if used[name] > available]
    row["fits"] = not over
    if over:
        row["reason"] = f"resources over capacity ({row['resource_source']}): {'; '.join(over)}"
    return row


def sweep(model, board, geometries, bases, resources="model", cache=None, progress=True):
    """Evaluate every geometry x bases on `board`; a list of rows (see `evaluate`)."""
    from hw.config import ConfigError
    from tqdm import tqdm

    from .resources import LutModel
    lut_model = None
    if resources == "model":
        points = calibration_points(board, board.flow, cache)
        if len({c.macs_per_cycle for c, _ in points}) < 2:
            # Too few points at this board's memory sizes: calibrate on every measured point of the
            # flow (memory sizes move BRAM most; the LUT line barely).
            points = calibration_points(board, board.flow, cache, same_memories=False)
            if points:
                sys.stderr.write(f"{PROG}: note: no calibration at {board.name}'s memory sizes; the "
                                 f"resource model uses {len(points)} points of other memory sizes\n")
        lut_model = LutModel(points)
    rows = []
    points = [(g, b) for g in geometries for b in bases]
    for (r, c, w), (m, n) in tqdm(points, desc="sweep", unit="config", disable=not progress,
                                  file=sys.stderr):
        try:
            config = board.config.at_geometry(r, c, w, max_wbases=m, max_abases=n)
        except ConfigError as error:
            rows.append({"geometry": f"{r}x{c}x{w}", "bases": f"{m}x{n}", "compiles": False, "fits": False,
                         "reason": f"config: {error}", "cycles": None, "frames_per_s": None,
                         "utilization": None, "resources": None, "resource_source": None,
                         "peak_macs_per_cycle": r * c * w, "clock_mhz": board.config.clock_hz / 1e6})
            continue
        rows.append(evaluate(model, board, config, resources, cache, lut_model))
    return rows, lut_model


def markdown(rows, board, model_name, lut_model=None):
    lines = [f"## Sweep of {model_name} on {board.name} ({board.device})", "",
             "| geometry | bases | MACs/cycle | fits | cycles | frames/s | utilization | LUT | FF | BRAM | DSP "
             "| why not |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        res = r["resources"] or {}
        mark = "~" if r["resource_source"] == "model" else ""
        cells = [f"{mark}{res[k]:,g}" if k in res else "-" for k in ("LUT", "FF", "BRAM", "DSP")]
        lines.append(
            f"| {r['geometry']} | {r['bases']} | {r['peak_macs_per_cycle']:,} | "
            f"{'yes' if r['fits'] else 'no'} | {'-' if r['cycles'] is None else format(r['cycles'], ',')} | "
            f"{'-' if r['frames_per_s'] is None else format(r['frames_per_s'], ',.1f')} | "
            f"{'-' if r['utilization'] is None else format(100 * r['utilization'], '.1f') + '%'} | "
            f"{' | '.join(cells)} | {r['reason'] or ''} |")
    fitting = [r for r in rows if r["fits"]]
    lines.append("")
    lines.append(f"{len(fitting)} of {len(rows)} configs fit; capacity: "
                 + ", ".join(f"{k} {v:,}" for k, v in board.capacity.items()) + ".")
    if fitting:
        best = max(fitting, key=lambda r: r["frames_per_s"])
        lines.append(f"Fastest that fits: {best['geometry']} with bases {best['bases']}, "
                     f"{best['frames_per_s']:,.1f} frames/s at {best['clock_mhz']:g} MHz.")
    if lut_model is not None:
        lines.append(f"Resources marked ~ are predicted: {lut_model.describe()}.")
    return "\n".join(lines)


def plot(rows, board, path):
    from .plots import pyplot
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    shown = [r for r in rows if r["cycles"] is not None]
    labels = {}
    for fits, color, label in ((True, "tab:green", "fits"), (False, "tab:red", "does not fit")):
        pts = [r for r in shown if r["fits"] == fits]
        xs = [(r["resources"] or {}).get("LUT", r["peak_macs_per_cycle"]) for r in pts]
        ax.scatter(xs, [r["frames_per_s"] for r in pts], color=color, label=label, s=30)
        for r, x in zip(pts, xs):
            # one label per point: configs that differ only in their bases often coincide
            labels.setdefault((x, r["frames_per_s"], r["geometry"]), []).append(r["bases"])
    for (x, y, geometry), bases in labels.items():
        ax.annotate(f"{geometry} ({', '.join(bases)})", (x, y), fontsize=7, xytext=(3, 2),
                    textcoords="offset points")
    with_luts = any(r["resources"] for r in shown)
    if with_luts:
        ax.axvline(board.capacity["LUT"], color="black", linestyle="--", linewidth=1,
                   label=f"{board.device} LUTs")
    ax.set_xlabel("LUTs" if with_luts else "peak binary MACs per cycle")
    ax.set_ylabel(f"frames/s at the config's clock")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(f"design space on {board.name}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(rows, board, text, out):
    from .plots import _markdown_html
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot(rows, board, out / "sweep.png")
    (out / "sweep.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "sweep.md").write_text(text + "\n")
    (out / "index.html").write_text(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>design-space sweep</title>"
        "<style>body{font-family:sans-serif;max-width:80em;margin:1em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:2px 6px}img{max-width:100%}</style></head><body>"
        "<h1>Design-space sweep</h1>\n" + _markdown_html(text)
        + '\n<figure><img src="sweep.png" alt="sweep.png"></figure>\n'
        '<p>Data: <a href="sweep.json">sweep.json</a></p></body></html>\n')
    return out / "index.html"


def _with_file(config, path):
    """`config` with the fields a JSON file names replaced (ConfigError for a bad file)."""
    from hw.config import AccelConfig, ConfigError
    try:
        named = json.loads(Path(path).read_text())
    except OSError as error:
        raise ConfigError(f"Cannot read config file {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"Config file {path} is not valid JSON: {error}") from None
    if not isinstance(named, dict):
        raise ConfigError(f"Config file {path} must hold a JSON object, not {type(named).__name__}")
    return AccelConfig.from_dict(config.to_dict() | named)


def parser():
    p = OneLineParser(prog=PROG, description="Design-space sweep of array geometries and basis limits "
                                             "for one network on one board.")
    p.add_argument("model", help="the .bnn model file")
    p.add_argument("--config", metavar="FILE", default=None,
                   help="AccelConfig JSON whose fields replace the board's default (memory depths, clock, ...)")
    add_common(p, "folder for index.html, sweep.png, sweep.json (default: print only)")
    p.add_argument("--geometry", action="append", type=parse_geometry, metavar="RxCxW",
                   help=f"array geometry (repeatable; default {' '.join(DEFAULT_GEOMETRIES)})")
    p.add_argument("--bases", action="append", type=parse_bases, metavar="MxN",
                   help="max_wbases x max_abases (repeatable; default: the model's own and the board's)")
    p.add_argument("--resources", choices=["model", "synth", "none"], default="model",
                   help="resource figures: calibrated model (default), synthesis per config (slow, cached), none")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    from hw.config import ConfigError
    from sw.model_format import ModelFormatError, load_model

    from .resources import ResourceError

    try:
        board, cache = open_board(args)
    except UsageError as error:
        return fail(PROG, str(error), 2)
    try:
        if args.config:
            board = dataclasses.replace(board, config=_with_file(board.config, args.config))
        model = load_model(args.model)
        geometries = args.geometry or [parse_geometry(g) for g in DEFAULT_GEOMETRIES]
        needed = model_bases(model)
        bases = args.bases or sorted({needed, (board.config.max_wbases, board.config.max_abases)})
        rows, lut_model = sweep(model, board, geometries, bases, args.resources, cache)
    except (ConfigError, ModelFormatError, ResourceError) as error:
        return fail(PROG, str(error))
    text = markdown(rows, board, Path(args.model).name, lut_model)
    return finish(PROG, text, args.out, lambda out: write(rows, board, text, out))

if __name__ == "__main__":
    raise SystemExit(main())
