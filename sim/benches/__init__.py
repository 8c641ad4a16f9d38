"""cocotb test modules; run them through `sim.runner.run_bench`."""
