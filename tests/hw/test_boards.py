"""Each board's default config: the board top accepts it, and the networks docs/performance.md
("Boards") reports as fitting compile for it, while the ones it reports as too big are refused with
the compiler's message (no builds here: the compiler's checks only)."""

import pytest

import boards
from benchmarks.boards import NETWORKS
from hw.build import check_design
from sw.compile import CompileError, compile_model
from sw.compile.testing import random_model

# board -> networks that must compile for its default config (the others must be refused).
FITS = {
    "arty_a7": {"LFC-128 3x3"},
    "arty_a7_100": {"LFC-128 3x3", "LFC 1x1", "CNV 1x1"},
    "ulx3s": {"LFC-128 3x3", "CNV 1x1"},
}


@pytest.mark.parametrize("name", sorted(boards.BOARDS))
def test_default_config_builds(name):
    board = boards.get_board(name)
    check_design(board, board.config, 115200)
    assert board.config.clock_hz >= board.platform().default_clk_frequency


@pytest.mark.parametrize("board_name, network", [(b, n) for b in sorted(FITS) for n in NETWORKS])
def test_networks_on_default_config(board_name, network):
    config = boards.get_board(board_name).config
    specs, shape, _ = NETWORKS[network]
    model = random_model(specs, shape, config, seed=0)
    if network in FITS[board_name]:
        bundle = compile_model(model, config, verify_images=0)
        assert bundle.config == config
    else:
        with pytest.raises(CompileError, match=r"exceeds"):
            compile_model(model, config, verify_images=0)


def test_readme_network_on_the_default_board():
    """The README trains an LFC of width 128 at ABC 3x3 and compiles it for the default board."""
    assert "LFC-128 3x3" in FITS[boards.DEFAULT_BOARD]


def test_batched_network_figures_count_every_image_of_a_run():
    """benchmarks.boards' batch-C figures: C images a run, frames/s = C * clock / cycles of the run,
    and the README's LFC on the default board (fully connected layers over 1x1 maps: the batch fills
    the columns) runs its batch of C in the cycles of one image."""
    from benchmarks.boards import network_figures
    board = boards.get_board(boards.DEFAULT_BOARD)
    clocks = {"run clock": 100e6}
    single = network_figures(board, clocks)["LFC-128 3x3"]
    batch = board.config.cols
    batched = network_figures(board, clocks, batch=batch)["LFC-128 3x3"]
    assert batched["fps"]["run clock"] == pytest.approx(batch * 100e6 / batched["cycles"])
    assert single["fps"]["run clock"] == pytest.approx(100e6 / single["cycles"])
    assert batch > 1 and batched["cycles"] == single["cycles"]
