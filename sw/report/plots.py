"""PNG plots and the HTML page of a report (`sw.report.analyse`); needs matplotlib (the `report` extra)."""

import html
import json
from pathlib import Path

__all__ = ["plot_layers", "plot_roofline", "plot_resources", "write_html", "pyplot"]


def pyplot():
    """matplotlib.pyplot with the file-only Agg backend, or ImportError with the install hint."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the plots need matplotlib: pip install -e '.[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _short(name, kind):
    return name.split(" (")[0].replace("layer ", "L") + f" {kind}"


def plot_layers(report, path):
    """Per-layer cycles (ideal, analytic, measured) and array utilization."""
    plt = pyplot()
    layers = report["layers"]
    names = [_short(r["name"], r["kind"]) for r in layers]
    x = list(range(len(layers)))
    measured = report["network"]["measured_cycles"] is not None
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6, 0.7 * len(layers) + 2), 6), sharex=True)
    width = 0.27 if measured else 0.4
    ax1.bar([i - width for i in x] if measured else [i - width / 2 for i in x],
            [max(r["ideal_cycles"], 0) for r in layers], width, label="ideal")
    ax1.bar(x if measured else [i + width / 2 for i in x], [r["cycles"] for r in layers], width,
            label="analytic")
    if measured:
        ax1.bar([i + width for i in x], [r["measured_cycles"] for r in layers], width,
                label=f"measured ({report['network']['measured_backend']})")
    ax1.set_yscale("log")
    ax1.set_ylabel("cycles per image")
    ax1.legend(fontsize=8)
    ax2.bar(x, [100 * (r["utilization"] or 0) for r in layers], color="tab:green")
    ax2.axhline(90, color="gray", linestyle="--", linewidth=1)
    ax2.set_ylim(0, 100)
    ax2.set_ylabel("array utilization %")
    ax2.set_xticks(x, names, rotation=45, ha="right")
    fig.suptitle(f"{report['geometry']} on {report['board']['name']}: "
                 f"{report['network']['cycles']:,} cycles/image")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_roofline(report, path):
    """Binary MACs per cycle of each layer against its intensity (binary MACs per cycle of the
    gather's activation-buffer reads) under the roofs: the array's peak and one word read a cycle."""
    plt = pyplot()
    peak = report["peak_macs_per_cycle"]
    points = [r for r in report["layers"] if r["macs"] and r["intensity"]]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    xs = [r["intensity"] for r in points] or [1.0]
    lo, hi = min(xs + [1.0]) / 2, max(xs + [2.0 * peak]) * 2
    grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ax.plot(grid, [min(peak, g) for g in grid], color="black", linewidth=1.5,
            label=f"roof: min(peak {peak:,}, intensity x 1 read/cycle)")
    for r in points:
        ax.scatter(r["intensity"], r["macs_per_cycle"], s=30)
        ax.annotate(_short(r["name"], r["kind"]), (r["intensity"], r["macs_per_cycle"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("binary MACs per gather read cycle")
    ax.set_ylabel("binary MACs per cycle (analytic)")
    ax.set_title(f"roofline, {report['geometry']} array")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_resources(report, path):
    """Resources (and the config's memories) as a percentage of the board's capacity."""
    plt = pyplot()
    labels, values, colors = [], [], []
    if report["resources"] is not None:
        for r in report["resources"]["rows"]:
            labels.append(r["resource"])
            values.append(100 * r["fraction"])
            colors.append("tab:red" if r["fraction"] > 1 else "tab:blue")
    for m in report["memories"]:
        labels.append(f"{m['memory'].split(' ')[0]} mem")
        values.append(100 * m["fraction"])
        colors.append("tab:red" if m["fraction"] > 1 else "tab:orange")
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(labels) + 1.5))
    y = list(range(len(labels)))
    ax.barh(y, values, color=colors)
    ax.axvline(100, color="black", linewidth=1)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel("% of capacity (device resources; memories: % of the config's depth)")
    ax.set_title(f"{report['board']['name']} ({report['board']['device']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


PLOTS = {"layers.png": plot_layers, "roofline.png": plot_roofline, "resources.png": plot_resources}


def _markdown_html(text):
    """The report's Markdown (headings, tables, paragraphs) as HTML."""
    out, table = [], []

    def flush():
        if table:
            rows = [row for row in table if not set(row.replace("|", "").strip()) <= set("-: ")]
            cells = [[html.escape(c.strip().strip("*")) for c in row.strip().strip("|").split("|")]
                     for row in rows]
            out.append("<table>" + "".join(
                "<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{c}</{'th' if i == 0 else 'td'}>" for c in row)
                + "</tr>" for i, row in enumerate(cells)) + "</table>")
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(out)


def write_html(report, markdown_text, out):
    """index.html, the PNGs and report.json in folder `out`; returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, plot in PLOTS.items():
        plot(report, out / name)
        written.append(out / name)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(markdown_text + "\n")
    images = "\n".join(f'<figure><img src="{name}" alt="{name}"></figure>' for name in PLOTS)
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>BNN accelerator report: {html.escape(report['board']['name'])}</title>
<style>body{{font-family:sans-serif;max-width:72em;margin:1em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:2px 6px;text-align:right}}td:first-child{{text-align:left}}
img{{max-width:100%}}</style></head>
<body><h1>BNN accelerator report</h1>
{_markdown_html(markdown_text)}
{images}
<p>Data: <a href="report.json">report.json</a>, <a href="report.md">report.md</a>.</p>
</body></html>
"""
    (out / "index.html").write_text(page)
    return [out / "index.html", out / "report.json", out / "report.md"] + written
