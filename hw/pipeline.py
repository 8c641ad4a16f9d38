"""Small pipeline helpers shared by the gateware blocks."""

from amaranth.hdl import Signal

__all__ = ["delay"]


def delay(m, value, cycles, name, *, reset_less=False):
    """`value` delayed by `cycles` registers in module `m`'s sync domain (0 returns it unchanged).

    `reset_less`: the registers have no reset (data that a valid bit qualifies: leaving the reset
    net out of them saves its routing to every flip-flop)."""
    for i in range(cycles):
        stage = Signal.like(value, name=f"{name}_d{i}", reset_less=reset_less)
        m.d.sync += stage.eq(value)
        value = stage
    return value
