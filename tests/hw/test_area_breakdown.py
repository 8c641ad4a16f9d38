"""benchmarks.area_breakdown's bookkeeping on a hand-made hierarchical `stat -json`: every cell is counted
once, in the part it sits under, with instance counts multiplied through."""

import json

from benchmarks.area_breakdown import breakdown, read_modules


def test_parts_hold_their_submodules_cells():
    stat = {"modules": {
        "\\top": {"num_cells_by_type": {"\\top.core": 1, "\\top.sequencer": 1, "\\top.pool$157": 1,
                                        "RAMB36E1": 2, "LUT4": 3}},
        "\\top.core": {"num_cells_by_type": {"\\top.core.array": 1, "\\top.core.pe": 4, "LUT2": 5,
                                             "DSP48E1": 1}},
        "\\top.core.array": {"num_cells_by_type": {"\\top.core.pe": 2, "LUT6": 10}},
        "\\top.core.pe": {"num_cells_by_type": {"LUT6": 7, "FDRE": 3}},
        "\\top.sequencer": {"num_cells_by_type": {"LUT5": 20, "FDRE": 8, "SRL16E": 2}},
        "\\top.pool$157": {"num_cells_by_type": {"LUT3": 4}},
    }}
    cells = read_modules("log line before the JSON\n" + json.dumps(stat))
    parts, total = breakdown(cells)
    assert parts["core.array"] == {"LUT6": 10 + 2 * 7, "FDRE": 2 * 3}
    assert parts["core.pe"] == {"LUT6": 4 * 7, "FDRE": 4 * 3}
    assert parts["core.(own logic)"] == {"LUT2": 5, "DSP48E1": 1}
    assert parts["sequencer"] == {"LUT5": 20, "FDRE": 8, "SRL16E": 2}
    assert parts["pool"] == {"LUT3": 4}
    assert parts["top (own logic, memories)"] == {"RAMB36E1": 2, "LUT4": 3}
    # LUTs: 3 + 5 + 10 + 6 * 7 + 20 + 2 (the SRLs) + 4 = 86; FFs 6 * 3 + 8 = 26
    assert (total["LUT"], total["FF"], total["BRAM"], total["DSP"]) == (86, 26, 2, 1)


def test_section_states_the_arrays_share(tmp_path, capsys):
    from benchmarks.area_breakdown import main
    stat = {"modules": {
        "\\top": {"num_cells_by_type": {"\\top.core": 1, "\\top.sequencer": 1, "LUT4": 10}},
        "\\top.core": {"num_cells_by_type": {"\\top.core.array": 1}},
        "\\top.core.array": {"num_cells_by_type": {"LUT6": 60}},
        "\\top.sequencer": {"num_cells_by_type": {"LUT5": 30}},
    }}
    path = tmp_path / "stat.json"
    path.write_text(json.dumps(stat))
    main(["--no-write", "--stat", str(path)])
    out = capsys.readouterr().out
    assert "The array is 60 % of the LUTs (each processing element also scales" in out   # arty_a7: element scales
    assert "| core.array | 60 |" in out and "| **total** | 100 |" in out
