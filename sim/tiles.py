"""Tiles for the core: the host-side encoding of one output tile into beats and parameter writes, and
its expected results from `sw.ref`.

A tile is `rows` output channels x `cols` output pixels of one layer over M weight bases and N
activation bases. Every simulator drives the core from these functions, so the Amaranth, cocotb and
(later) compiler paths all encode a tile the same way.
"""

from dataclasses import dataclass, field

import numpy as np

from hw.config import AccelConfig
from sw import ref

__all__ = ["Tile", "random_tile", "tile_beats", "tile_scale_writes", "tile_thr_writes",
           "tile_expected", "words_of"]


@dataclass
class Tile:
    """One output tile.

    w_bits     : uint8 (M, rows, K) weight bits, 1 = +1.
    a_bits     : uint8 (N, cols, K) activation bits.
    scales     : int (M, N, rows) fixed-point scales.
    thresholds : int (rows, max_abases); flip: bool (rows,).
    raw        : return sums (True) or bit-planes (False); both are produced, the flag travels along.
    scale_base : first scale-memory entry (the tile uses M * N entries, pass (m, n) at base + m*N + n).
    thr_base   : first threshold-memory entry (row r at thr_base + r).
    junk_padding : fill the invalid bits of each last word with random bits (the edge must mask them).
    """
    w_bits: np.ndarray
    a_bits: np.ndarray
    scales: np.ndarray
    thresholds: np.ndarray
    flip: np.ndarray
    raw: bool = False
    scale_base: int = 0
    thr_base: int = 0
    junk_padding: bool = True
    seed: int = field(default=0, repr=False)

    @property
    def k(self):
        return self.w_bits.shape[2]

    @property
    def passes(self):
        return self.w_bits.shape[0] * self.a_bits.shape[0]


def random_tile(config: AccelConfig, rng, *, k=None, wbases=None, abases=None, scale_mode="random",
                bits_mode="random", raw=None, scale_base=0, thr_base=0):
    """A random tile that respects the config's limits (scales chosen so the sum cannot overflow).

    scale_mode: "random", "extreme" (the most negative and positive scales), "negative", "one".
    bits_mode: "random", "ones", "zeros", "match" (weights equal activations), "mixed".
    """
    c = config
    m = wbases or int(rng.integers(1, c.max_wbases + 1))
    n = abases or int(rng.integers(1, c.max_abases + 1))
    k = k or int(rng.integers(1, c.max_k + 1))
    if bits_mode == "ones":
        w = np.ones((m, c.rows, k), np.uint8)
        a = np.ones((n, c.cols, k), np.uint8)
    elif bits_mode == "zeros":
        w = np.zeros((m, c.rows, k), np.uint8)
        a = np.zeros((n, c.cols, k), np.uint8)
    elif bits_mode == "mixed":  # all-ones weights against all-zeros activations: dot = -K
        w = np.ones((m, c.rows, k), np.uint8)
        a = np.zeros((n, c.cols, k), np.uint8)
    else:
        w = rng.integers(0, 2, (m, c.rows, k), dtype=np.uint8)
        a = rng.integers(0, 2, (n, c.cols, k), dtype=np.uint8)
        if bits_mode == "match":
            a[:, :min(c.rows, c.cols)] = w[0, :min(c.rows, c.cols)][None]
    # Largest |scale| for which sum |s| * K over M x N pairs still fits the accumulator.
    limit = min(c.scale_max, c.acc_max // (k * m * n))
    if limit < 1:
        raise ValueError(f"K={k} with {m}x{n} bases cannot fit a {c.acc_bits}-bit accumulator")
    low = max(c.scale_min, -limit)
    if scale_mode == "extreme":
        scales = rng.choice([low, limit], size=(m, n, c.rows))
    elif scale_mode == "negative":
        scales = rng.integers(low, 0, size=(m, n, c.rows)) if low < 0 else -np.ones((m, n, c.rows), int)
    elif scale_mode == "one":
        scales = np.ones((m, n, c.rows), int)
    else:
        scales = rng.integers(low, limit + 1, size=(m, n, c.rows))
    bound = int(ref.acc_bound(scales, k).max())
    t_min = -(1 << (c.acc_bits - 1))
    thresholds = rng.integers(-bound - 2, bound + 3, size=(c.rows, c.max_abases))
    # Constant channels and thresholds exactly at reachable sums are edge cases worth hitting.
    thresholds[rng.random((c.rows, c.max_abases)) < 0.1] = t_min
    flip = rng.random(c.rows) < 0.5
    if raw is None:
        raw = bool(rng.integers(0, 2))
    return Tile(w, a, scales.astype(np.int64), thresholds.astype(np.int64), flip, raw=raw,
                scale_base=scale_base, thr_base=thr_base, seed=int(rng.integers(1 << 31)))


def words_of(bits, word_bits):
    """0/1 bits (K,) -> list of ints, LSB first, ceil(K / word_bits) words."""
    k = len(bits)
    words = []
    for start in range(0, k, word_bits):
        chunk = bits[start:start + word_bits]
        words.append(int(sum(int(b) << i for i, b in enumerate(chunk))))
    return words


def _random_word(rng, width):
    return int.from_bytes(rng.bytes(-(-width // 8)), "little") & ((1 << width) - 1)


def tile_beats(config: AccelConfig, tile: Tile):
    """The beats of every pass of the tile, as dicts for `CoreLayouts.beat`, passes m-major."""
    c = config
    k = tile.k
    n_words = -(-k // c.word_bits)
    tail = k - (n_words - 1) * c.word_bits
    rng = np.random.default_rng(tile.seed)
    m_count, n_count = tile.w_bits.shape[0], tile.a_bits.shape[0]
    w_words = [[words_of(tile.w_bits[m, r], c.word_bits) for r in range(c.rows)] for m in range(m_count)]
    a_words = [[words_of(tile.a_bits[n, col], c.word_bits) for col in range(c.cols)]
               for n in range(n_count)]
    beats = []
    for m in range(m_count):
        for n in range(n_count):
            for j in range(n_words):
                last = j == n_words - 1
                w = [w_words[m][r][j] for r in range(c.rows)]
                a = [a_words[n][col][j] for col in range(c.cols)]
                if last and tile.junk_padding and tail < c.word_bits:
                    junk_mask = ((1 << c.word_bits) - 1) ^ ((1 << tail) - 1)
                    w = [x | (_random_word(rng, c.word_bits) & junk_mask) for x in w]
                    a = [x | (_random_word(rng, c.word_bits) & junk_mask) for x in a]
                beat = {
                    "w": w, "a": a, "nbits": tail if last else c.word_bits,
                    "first": int(j == 0), "last": int(last),
                }
                if last:
                    beat["info"] = {
                        "k": k,
                        "first_pass": int(m == 0 and n == 0),
                        "last_pass": int(m == m_count - 1 and n == n_count - 1),
                        "raw": int(tile.raw),
                        "scale_addr": tile.scale_base + m * n_count + n,
                        "thr_addr": tile.thr_base,
                    }
                beats.append(beat)
    return beats


def tile_scale_writes(config: AccelConfig, tile: Tile):
    m_count, n_count = tile.scales.shape[:2]
    return [{"addr": tile.scale_base + m * n_count + n,
             "scales": [int(s) for s in tile.scales[m, n]]}
            for m in range(m_count) for n in range(n_count)]


def tile_thr_writes(config: AccelConfig, tile: Tile):
    return [{"addr": tile.thr_base + r,
             "entry": {"t": [int(t) for t in tile.thresholds[r]], "flip": int(tile.flip[r])}}
            for r in range(config.rows)]


def tile_expected(config: AccelConfig, tile: Tile):
    """The `result` payloads the core must produce for this tile, from `sw.ref`."""
    acc = ref.multibasis_linear(ref.from_bits(tile.a_bits), ref.from_bits(tile.w_bits), tile.scales)
    ref.check_acc_range(acc, config.acc_bits)
    planes = ref.threshold(acc, tile.thresholds, tile.flip)            # (T, cols, rows)
    bits = ((planes > 0).astype(np.int64) << np.arange(planes.shape[0])[:, None, None]).sum(axis=0)
    return [{"acc": [int(v) for v in acc[:, r]], "bits": [int(b) for b in bits[:, r]],
             "row": r, "last": int(r == config.rows - 1), "raw": int(tile.raw)}
            for r in range(config.rows)]
