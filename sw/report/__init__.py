"""Cycle, memory and resource reports of a compiled program on a board (docs/report.md). No torch; the
plots (`sw.report.plots`) need matplotlib, resource estimates (`sw.report.resources`) YoWASP Yosys.

    report = analyse(bundle, board, measured=None, resources=None)   # a JSON-able dict
    print(markdown(report))

`analyse` takes the per-layer analytic cycles from the ISS (`sw.runtime` backend "iss", whose cycle
model is `hw/cycles.py`), optionally measured RTL cycles (`measure`, through `sw.runtime`), the bundle's
memory images against the config's depths, and the build's resources against the board's capacity.
"""

import math

import hw.cycles
from hw.isa import INSTRUCTION_BITS, IsaError, Opcode, decode

__all__ = ["ReportError", "analyse", "analytic_cycles", "measure", "memory_use", "markdown", "gather_cycles",
           "BLOCK_BITS"]

#: Bits of one block RAM in a board's capacity unit: a Xilinx 7-series RAMB36, an ECP5 DP16KD (EBR), an
#: iCE40 SB_RAM40_4K.
BLOCK_BITS = {"vivado-plan": 36 * 1024, "ecp5": 18 * 1024, "ice40": 4 * 1024}


class ReportError(ValueError):
    """A report cannot be made (measured run failed, resources for another config, ...); one line."""


def gather_cycles(config, f):
    """Cycles the gather engine spends reading the activation buffer for one CONV (docs/isa.md: one
    word a cycle, `C * (N * KW + N2 * KW2) + 1` per pixel tile): the 'memory' side of the roofline."""
    return hw.cycles.pixel_tiles(config, f) * hw.cycles.gather_tile_cycles(config, f)


def _conv_fields(bundle, pcs):
    """Decoded CONVs of the instructions `pcs`, each with `shortcut` (the SHORTCUT before it) if any."""
    out = []
    shortcut = None
    for pc in pcs:
        try:
            opcode, fields = decode(bundle.instructions[pc])
        except IsaError:
            continue
        if opcode == Opcode.CONV:
            out.append(fields if shortcut is None else dict(fields, shortcut=shortcut))
        shortcut = fields if opcode == Opcode.SHORTCUT else None
    return out


def memory_use(bundle):
    """Each on-chip memory: entries the program uses against the config's depth, and bits.

    weight / scale / threshold / result: the end of the highest segment, of the images the host writes
    before `start` and of the load stream (`streamed` counts the entries LOADs bring in); act: the
    largest input + output map pair of any layer (both live while a layer runs); patch: the
    longest receptive field (activation bases x K-words) of a CONV, in each of the 2 x C patch banks;
    program: instructions. Bits count every copy.
    """
    c = bundle.config
    end, streamed = {}, {}
    stream = getattr(bundle, "stream", [])          # segments LOAD instructions bring in while it runs
    for seg in list(bundle.segments) + list(stream):
        end[seg.memory] = max(end.get(seg.memory, 0), seg.base + len(seg.values))
    for seg in stream:
        streamed[seg.memory] = streamed.get(seg.memory, 0) + len(seg.values)
    spec = bundle.input
    in_words = spec.get("input_words", spec["planes"] * spec["out_h"] * spec["out_w"] * spec["words_per_pixel"])
    act_peak = 0
    patch = 0
    for layer in bundle.layers:
        o = layer["output"]
        out_words = 0 if o is None else o["planes"] * o["h"] * o["w"] * o["cw"]   # None: the logits
        act_peak = max(act_peak, in_words + out_words)
        in_words = out_words
        for f in _conv_fields(bundle, layer["instructions"]):
            patch = max(patch, hw.cycles.patch_words(f))
    # (name, entries used, depth, bits an entry, copies of the memory)
    rows = [
        ("weight", end.get("weight", 0), c.weight_depth, c.rows * c.word_bits, 1),
        ("scale", end.get("scale", 0), c.scale_depth, c.rows * c.scale_bits, 1),
        ("threshold", end.get("threshold", 0), c.thr_depth, c.max_abases * c.acc_bits + 1, 1),
        ("activation", act_peak, c.act_depth, c.word_bits, 1),
        ("patch", patch, c.patch_depth, c.word_bits, 2 * c.cols),
        ("result", max(end.get("result", 0), bundle.output["result_base"] + bundle.output["classes"]),
         c.result_depth, c.acc_bits, 1),
        ("program", len(bundle.instructions), c.instr_depth, INSTRUCTION_BITS, 1),
    ]
    return [{"memory": name, "used": int(used), "depth": int(depth), "entry_bits": int(bits),
             "copies": copies, "streamed": int(streamed.get(name, 0)), "used_bits": int(used) * int(bits) * copies,
             "depth_bits": int(depth) * int(bits) * copies, "fraction": used / depth}
            for name, used, depth, bits, copies in rows]


def analytic_cycles(bundle):
    """(cycles per model layer, cycles of the whole program) of one image on the ISS, whose cycle
    model is `hw/cycles.py`; the program's total also counts instructions outside the layers (END)."""
    import numpy as np

    from sw.runtime import RuntimeApiError, open_backend
    image = np.zeros((1,) + tuple(bundle.input["shape"]), dtype=np.uint8)
    try:
        with open_backend("iss", bundle, batch=1) as iss:
            result = iss.run(image)
    except RuntimeApiError as error:
        raise ReportError(f"the program does not run on the ISS: {error}") from None
    return [int(x) for x in result.layer_cycles[0]], int(result.cycles[0])


def measure(bundle, backend, images):
    """Per-layer cycles of `images` on a runtime backend ("verilator", "pysim", ...), checked against
    the ISS's logits: (cycles per layer of image 0, total cycles of image 0)."""
    import numpy as np

    from sw.runtime import RuntimeApiError, open_backend
    try:
        with open_backend("iss", bundle) as iss:
            expected = iss.run(images)
        with open_backend(backend, bundle) as rtl:
            got = rtl.run(images)
    except RuntimeApiError as error:
        raise ReportError(f"measuring on {backend}: {error}") from None
    if not np.array_equal(got.logits, expected.logits):
        raise ReportError(f"the {backend} backend's logits differ from the ISS's: not reporting cycles of "
                          f"a wrong run")
    if got.layer_cycles is None:
        raise ReportError(f"the {backend} backend does not measure per-layer cycles")
    return [int(x) for x in got.layer_cycles[0]], int(got.cycles[0])


def _resources_section(board, config, resources):
    if resources is None:
        return None
    rows = []
    for name, available in board.capacity.items():
        used = resources.used.get(name, 0)
        rows.append({"resource": name, "used": used, "available": available, "fraction": used / available})
    note = None
    if resources.config is not None and resources.config.fingerprint() != config.fingerprint():
        diff = sorted(k for k, v in config.to_dict().items() if resources.config.to_dict().get(k) != v)
        note = (f"the build's config differs from the bundle's in {', '.join(diff)}: its resources are "
                f"not those of the accelerator this program was compiled for")
    return {"design": resources.design, "source": resources.source, "rows": rows,
            "fits": all(r["used"] <= r["available"] for r in rows), "fmax_mhz": resources.fmax_mhz,
            "note": note}


def analyse(bundle, board, *, measured=None, measured_backend=None, resources=None):
    """The report of `bundle` on `board` as a dict (see docs/report.md for every field).

    `measured`: (per-layer cycles, program cycles) of one image on an RTL backend, as `measure` gives.
    """
    c = bundle.config
    peak = c.macs_per_cycle
    clock = c.clock_hz
    batch = int(bundle.input.get("batch", 1))        # images a run (cycles and MACs are a run's)
    per_layer, program = analytic_cycles(bundle)
    measured, measured_total = measured if measured is not None else (None, None)
    if measured is not None and len(measured) != len(per_layer):
        raise ReportError(f"measured cycles give {len(measured)} layers, the bundle has {len(per_layer)}")
    layers = []
    for i, (cycles, meta) in enumerate(zip(per_layer, bundle.layers)):
        fields = _conv_fields(bundle, meta["instructions"])
        gathered = sum(gather_cycles(c, f) for f in fields)
        macs, ideal = meta["macs"], meta["ideal_cycles"]
        layers.append({
            "name": meta["name"], "kind": meta["kind"], "macs": macs, "ideal_cycles": ideal,
            "cycles": cycles, "measured_cycles": None if measured is None else int(measured[i]),
            "utilization": ideal / cycles if macs and cycles else None,
            "macs_per_cycle": macs / cycles if cycles else 0.0,
            "gather_cycles": gathered,
            "intensity": macs / gathered if gathered else None,
            "time_us": cycles / clock * 1e6,
        })
    total = program
    total_macs = sum(r["macs"] for r in layers)
    ideal = sum(r["ideal_cycles"] for r in layers)
    conv = [r for r in layers if r["kind"] == "conv"]
    conv_cycles = sum(r["cycles"] for r in conv)
    network = {
        "cycles": total, "macs": total_macs, "ideal_cycles": ideal,
        "utilization": ideal / total if total else 0.0,
        "conv_utilization": (sum(r["macs"] for r in conv) / peak / conv_cycles) if conv_cycles else None,
        "latency_us": total / clock * 1e6,
        "batch": batch,
        "frames_per_s": batch * clock / total if total else 0.0,
        "layer_cycles": sum(r["cycles"] for r in layers),
        "measured_cycles": None if measured is None else int(measured_total),
        "measured_backend": measured_backend,
        "gops_binary": 2 * total_macs * clock / total / 1e9 if total else 0.0,
    }
    res = _resources_section(board, c, resources)
    if res is not None and res["fmax_mhz"]:
        network["frames_per_s_at_fmax"] = batch * res["fmax_mhz"] * 1e6 / total if total else 0.0
    return {
        "board": {"name": board.name, "device": board.device, "flow": board.flow,
                  "capacity": dict(board.capacity)},
        "config": c.to_dict(), "fingerprint": c.fingerprint(),
        "geometry": f"{c.rows}x{c.cols}x{c.word_bits}", "peak_macs_per_cycle": peak,
        "clock_mhz": clock / 1e6,
        "layers": layers, "network": network, "memories": memory_use(bundle),
        "memory_block_bits": BLOCK_BITS.get(board.flow),
        "resources": res,
    }


def _n(value, digits=0):
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _pct(value):
    return "-" if value is None else f"{100 * value:.1f}%"


def markdown(report):
    """The report as Markdown: network summary, per-layer table, memories, resources."""
    net = report["network"]
    cfg = report["config"]
    measured = net["measured_cycles"] is not None
    lines = [
        f"## {report['board']['name']} ({report['board']['device']}): {report['geometry']} array "
        f"({report['peak_macs_per_cycle']:,} binary MACs/cycle), {report['clock_mhz']:g} MHz, "
        f"bases up to {cfg['max_wbases']}x{cfg['max_abases']}, config {report['fingerprint']}",
        "",
        "| layer | kind | binary MACs | ideal cycles | analytic cycles |"
        + (f" measured cycles ({net['measured_backend']}) |" if measured else "")
        + " utilization | MACs/cycle | time (us) |",
        "| --- | --- | ---: | ---: | ---: |" + (" ---: |" if measured else "") + " ---: | ---: | ---: |",
    ]
    for r in report["layers"]:
        lines.append(
            f"| {r['name']} | {r['kind']} | {_n(r['macs']) if r['macs'] else '-'} | "
            f"{_n(r['ideal_cycles']) if r['macs'] else '-'} | {_n(r['cycles'])} |"
            + (f" {_n(r['measured_cycles'])} |" if measured else "")
            + f" {_pct(r['utilization'])} | {_n(r['macs_per_cycle'], 1)} | {_n(r['time_us'], 1)} |")
    lines.append(
        f"| **network** | | {_n(net['macs'])} | {_n(net['ideal_cycles'])} | {_n(net['cycles'])} |"
        + (f" {_n(net['measured_cycles'])} |" if measured else "")
        + f" {_pct(net['utilization'])} | {_n(net['macs'] / net['cycles'] if net['cycles'] else 0, 1)} | "
          f"{_n(net['latency_us'], 1)} |")
    lines += [
        "",
        (f"Network: {net['cycles']:,} cycles per image, latency {net['latency_us']:,.1f} us, " if net["batch"] == 1
         else f"Network: {net['cycles']:,} cycles per run of {net['batch']} images (the bundle's batch), "
              f"latency {net['latency_us']:,.1f} us, ")
        +
        f"{net['frames_per_s']:,.1f} frames/s at {report['clock_mhz']:g} MHz "
        f"({net['gops_binary']:,.1f} binary GOPS); array utilization {_pct(net['utilization'])}, "
        f"convolutions {_pct(net['conv_utilization'])}."
        + ("" if not measured else
           f" Measured on {net['measured_backend']}: {net['measured_cycles']:,} cycles "
           f"({'equal to' if net['measured_cycles'] == net['cycles'] else 'DIFFERENT FROM'} the analytic model)."),
    ]
    if net.get("frames_per_s_at_fmax"):
        lines.append(f"At the build's Fmax ({report['resources']['fmax_mhz']:.1f} MHz): "
                     f"{net['frames_per_s_at_fmax']:,.1f} frames/s.")
    streaming = any(m["streamed"] for m in report["memories"])
    lines += ["", "| memory | used | depth | used % | bits used | bits available |"
              + (" entries streamed by LOAD |" if streaming else ""),
              "| --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if streaming else "")]
    for m in report["memories"]:
        name = m["memory"] + (f" ({m['copies']} banks)" if m["copies"] > 1 else "")
        lines.append(f"| {name} | {m['used']:,} | {m['depth']:,} | {_pct(m['fraction'])} | "
                     f"{m['used_bits']:,} | {m['depth_bits']:,} |" + (f" {m['streamed']:,} |" if streaming else ""))
    block = report["memory_block_bits"]
    if block:
        blocks = sum(m["copies"] * math.ceil(m["depth_bits"] / m["copies"] / block) for m in report["memories"])
        lines.append("")
        lines.append(f"The config's memories hold {sum(m['depth_bits'] for m in report['memories']):,} bits, "
                     f"{blocks} block RAMs of {block // 1024} Kb if every memory took whole blocks (small ones may "
                     f"become distributed RAM); the board has {report['board']['capacity']['BRAM']}.")
    res = report["resources"]
    if res is not None:
        lines += ["", f"Resources: {res['design']}, {res['source']}.", "",
                  "| resource | used | available | used % |", "| --- | ---: | ---: | ---: |"]
        for r in res["rows"]:
            lines.append(f"| {r['resource']} | {r['used']:,g} | {r['available']:,} | {_pct(r['fraction'])} |")
        lines.append("")
        lines.append(f"Fits: {'yes' if res['fits'] else 'NO'}. Fmax: "
                     + (f"{res['fmax_mhz']:.1f} MHz (nextpnr)." if res["fmax_mhz"] else
                        "not known (no timing report for this flow)."))
        if res["note"]:
            lines.append(f"Note: {res['note']}.")
    return "\n".join(lines)
