"""The throughput-per-area arithmetic of benchmarks.finn's BNN-PYNQ comparison, on given cycles and LUTs."""

import pytest

from benchmarks.finn import BNN_PYNQ, bnn_pynq_body


def test_bnn_pynq_anchors_and_ratios():
    # BNN-PYNQ's own figures: cnvW1A1 1e6 / 109.3 us / 26.072 kLUT / 100 MHz = 3.51; lfcW1A1 126
    cnv, lfc = BNN_PYNQ["cnvW1A1"], BNN_PYNQ["lfcW1A1"]
    assert 1e6 / cnv["us"] / (cnv["luts"] / 1000) / cnv["mhz"] == pytest.approx(3.51, abs=0.005)
    assert 1e6 / lfc["us"] / (lfc["luts"] / 1000) / lfc["mhz"] == pytest.approx(125.9, abs=0.05)
    # ours: 8 images in 10,000 cycles at 100 MHz on 20,000 LUTs = 80,000 images/s, 40 per kLUT per MHz
    text = bnn_pynq_body([("an LFC", "lfcW1A1", 8, 10_000, 20_000, 100_000_000),
                          ("a CNV", "cnvW1A1", 1, 20_000, 10_000, 100_000_000)])
    lfc_row = next(line for line in text.splitlines() if line.startswith("| ours: an LFC"))
    assert "| 80,000 | 20,000 | 40.00 | 125.93 | 0.32x | >= 1x: not met |" in lfc_row
    cnv_row = next(line for line in text.splitlines() if line.startswith("| ours: a CNV"))
    assert "| 5,000 | 10,000 | 5.00 | 3.51 | 1.42x | >= 2x: not met |" in cnv_row
