"""Tile scenarios for the core benches, as plain JSON-able specs (no cocotb import, so pytest can build
them, pass them to the bench through the environment and compute the same expectations).

A spec is a dict: `k` (bits of the dot product), `wbases` (M), `abases` (N), `bits` and `scales`
(the `bits_mode` / `scale_mode` of `sim.tiles.random_tile`, plus scales "most_negative":
extreme scales with about half set to -2**(scale_bits-1)), `thr` (threshold mode, see
`core_bench.make_tile`: "random", "exact" = thresholds equal to sums the tile produces, "extreme" =
the accumulator's limits) and `raw`.
"""

import numpy as np

from hw.config import AccelConfig

__all__ = ["spec", "edge_specs", "random_specs", "full_rate_specs", "ideal_input_cycles",
           "pass_cycles"]


def spec(k, wbases=1, abases=1, bits="random", scales="random", thr="random", raw=False):
    return {"k": int(k), "wbases": int(wbases), "abases": int(abases), "bits": bits,
            "scales": scales, "thr": thr, "raw": bool(raw)}


def _ks(cfg: AccelConfig):
    """Interesting K values for a config, all within 1 ..= max_k."""
    w, top = cfg.word_bits, cfg.max_k
    ks = [1, w - 1, w, w + 1, 2 * w - 1, 3 * w + w // 2, top - 1, top]
    return sorted({k for k in ks if 1 <= k <= top})


def edge_specs(cfg: AccelConfig):
    """The edge cases of issue 2 item 5 for one config."""
    m, n, top, w = cfg.max_wbases, cfg.max_abases, cfg.max_k, cfg.word_bits
    odd = next((k for k in (w + 1, 2 * w - 1, top - 1) if k % w and 1 <= k <= top), top)
    specs = [
        # K = 1 with every basis pair and every operand pattern.
        spec(1, m, n),
        spec(1, 1, 1, bits="ones"),
        spec(1, m, 1, bits="zeros"),
        spec(1, 1, n, bits="mixed", scales="negative"),
        # K = max_k: the longest count, the largest sums.
        spec(top, m, n, bits="ones", scales="extreme", raw=True),
        spec(top, m, n, bits="mixed", scales="extreme"),
        spec(top, m, n, bits="zeros", scales="negative", thr="extreme"),
        spec(top, 1, 1, bits="random", scales="extreme", thr="exact"),
        # K not a multiple of W (the last word's padding bits are random junk the array must mask).
        spec(odd, m, n, bits="random", scales="random", thr="exact"),
        spec(odd, 1, n, bits="match", scales="one", thr="exact"),
        spec(odd, m, 1, bits="random", scales="negative", thr="extreme", raw=True),
        # Several bases, one at a time and all together.
        spec(w, m, 1), spec(w, 1, n), spec(w, m, n, scales="extreme", thr="exact"),
    ]
    # The scale format's most negative value, where the accumulator has room for it.
    for k, mm, nn in ((1, 1, 1), (w, m, n), (top, m, n)):
        if -cfg.scale_min * k * mm * nn <= cfg.acc_max:
            specs.append(spec(k, mm, nn, bits="random", scales="most_negative", thr="exact"))
    for k in _ks(cfg):
        specs.append(spec(k, m, n, bits="random", scales="random", thr="exact", raw=k % 2 == 0))
    return specs


def random_specs(cfg: AccelConfig, count, seed):
    """`count` fully random specs (K, bases, modes)."""
    rng = np.random.default_rng(seed)
    bits = ["random", "random", "random", "ones", "zeros", "mixed", "match"]
    scales = ["random", "random", "extreme", "negative", "one"]
    thrs = ["random", "exact", "extreme"]
    out = []
    for _ in range(count):
        k = int(rng.choice(_ks(cfg))) if rng.random() < 0.3 else int(rng.integers(1, cfg.max_k + 1))
        out.append(spec(k, int(rng.integers(1, cfg.max_wbases + 1)),
                        int(rng.integers(1, cfg.max_abases + 1)),
                        bits=str(rng.choice(bits)), scales=str(rng.choice(scales)),
                        thr=str(rng.choice(thrs)), raw=bool(rng.integers(0, 2))))
    return out


def full_rate_specs(cfg: AccelConfig, count, seed):
    """A long back-to-back run of `count` tiles whose parameters fit the memories at once.

    The first tiles get parameter-memory regions of their own until the memories are full; later
    tiles name an earlier one in `share` and reuse its scales and thresholds (with fresh operand
    bits), so the run can be longer than the memories. K varies from 1 bit (a pass then lasts `rows`
    cycles, the array's drain) to several words (limited by the beats), so both terms of
    `pass_cycles` are exercised.
    """
    rng = np.random.default_rng(seed)
    out, scale_used, thr_used = [], 0, 0
    ks = sorted({min(cfg.max_k, k) for k in (1, cfg.word_bits, cfg.word_bits * cfg.rows + 1,
                                              cfg.max_k)})
    while len(out) < count:
        k = int(rng.choice(ks))
        m = int(rng.integers(1, cfg.max_wbases + 1))
        n = int(rng.integers(1, cfg.max_abases + 1))
        if scale_used + m * n <= cfg.scale_depth and thr_used + cfg.rows <= cfg.thr_depth:
            scale_used += m * n
            thr_used += cfg.rows
            out.append(spec(k, m, n, scales=str(rng.choice(["random", "extreme"])), thr="exact"))
        else:
            owners = [i for i, s in enumerate(out) if "share" not in s]
            if not owners:
                raise ValueError(f"One tile's parameters do not fit the memories of {cfg}")
            owner = int(rng.choice(owners))
            shared = dict(out[owner], k=k, share=owner)
            # The owner's scales were sized for its K; a longer K could overflow the accumulator.
            shared["k"] = min(k, out[owner]["k"])
            out.append(shared)
    return out


def pass_cycles(cfg: AccelConfig, k):
    """Cycles one pass occupies the input at full rate: its words, but at least `rows` (the array
    drains one row per cycle, so pass ends are at least `rows` cycles apart)."""
    return max(-(-k // cfg.word_bits), cfg.rows)


def ideal_input_cycles(cfg: AccelConfig, specs):
    """Sum over passes of max(ceil(K/W), rows): the input-side cycles of a back-to-back run. With
    `element_scales` only tiles are spaced: sum over tiles of max(their passes' words, rows)."""
    if cfg.element_scales:
        return sum(max(s["wbases"] * s["abases"] * -(-s["k"] // cfg.word_bits), cfg.rows) for s in specs)
    return sum(s["wbases"] * s["abases"] * pass_cycles(cfg, s["k"]) for s in specs)
