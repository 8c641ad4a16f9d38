"""XNOR-popcount as a compressor tree built for 6-input LUTs.

A chain of W one-bit adders is W carry-chain stages deep and wastes most of each LUT. Instead:

1. leaves: each group of three operand pairs becomes a 2-bit count `xnor(w0,a0) + xnor(w1,a1) +
   xnor(w2,a2)`; each count bit is a function of exactly six inputs, so one LUT6 each;
2. a balanced tree of adders sums the leaf counts; each level doubles the number of bits per input and
   halves the number of inputs, so the tree is log2(W/3) adders deep and the adders are narrow (the
   first level is 3 bits wide), which synthesis maps to short carry chains.

`xnor_popcount(m, w, a)` adds the logic to module `m` and returns the count as a Value.
"""

from amaranth.hdl import Const, Signal, unsigned

__all__ = ["xnor_popcount", "popcount"]


def _tree_sum(m, terms, name):
    """Balanced adder tree over Values; each level registers nothing (combinational)."""
    level = 0
    while len(terms) > 1:
        paired = []
        for i in range(0, len(terms) - 1, 2):
            a, b = terms[i], terms[i + 1]
            width = max(a.shape().width, b.shape().width) + 1
            s = Signal(unsigned(width), name=f"{name}_l{level}_{i // 2}")
            m.d.comb += s.eq(a + b)
            paired.append(s)
        if len(terms) % 2:
            paired.append(terms[-1])
        terms = paired
        level += 1
    return terms[0]


def xnor_popcount(m, w, a, *, name="pc"):
    """popcount(~(w ^ a)) of two equal-width unsigned Values, as a compressor tree in module `m`."""
    width = len(w)
    if len(a) != width:
        raise ValueError(f"Operands must have equal widths, not {width} and {len(a)}")
    match = ~(w ^ a)
    return popcount(m, match, name=name)


def popcount(m, bits, *, name="pc"):
    """Number of set bits of an unsigned Value, as a compressor tree in module `m`."""
    width = len(bits)
    if width == 0:
        return Const(0, 1)
    leaves = []
    for i in range(0, width, 3):
        group = [bits[j] for j in range(i, min(i + 3, width))]
        leaf = Signal(unsigned(2 if len(group) > 1 else 1), name=f"{name}_leaf{i // 3}")
        total = group[0]
        for bit in group[1:]:
            total = total + bit
        m.d.comb += leaf.eq(total)
        leaves.append(leaf)
    return _tree_sum(m, leaves, name)
