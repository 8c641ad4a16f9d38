"""Small pipeline helpers shared by the gateware blocks."""

from amaranth.hdl import Signal

__all__ = ["delay"]


def delay(m, value, cycles, name):
    """`value` delayed by `cycles` registers in module `m`'s sync domain (0 returns it unchanged)."""
    for i in range(cycles):
        stage = Signal.like(value, name=f"{name}_d{i}")
        m.d.sync += stage.eq(value)
        value = stage
    return value
