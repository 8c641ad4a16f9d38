"""The golden model: the arithmetic every other part of the project must reproduce bit for bit.

`docs/arithmetic.md` is its specification. Conventions, fixed here once:

* A binary value is +1 or -1. As a bit, 1 means +1 and 0 means -1.
* Bit vectors are packed LSB first into little uint64 words: element k of a vector is bit k % 64 of
  word k // 64. Bits past the end of the vector (padding to a whole word) are 0.
* A binary dot product over K valid bits is 2*popcount(XNOR(w, a)) - K, which equals
  K - 2*popcount(XOR(w, a)) when the padding bits of both operands are 0.
* A layer with M weight bases and N activation bases computes sum over m, n of s[m, n, o] * dot(w_m, a_n)
  with integer (fixed-point) scales s; the sum is exact in int64 and must fit the accumulator.
* A threshold turns a sum into a bit-plane: +1 where sum >= T (or sum <= T for a channel whose
  comparison is flipped), else -1.

Everything is vectorised over pixels and output channels; the only Python loops run over words of K,
bases, and kernel offsets.
"""

import numpy as np

__all__ = [
    "RefError", "WORD",
    "to_bits", "from_bits", "pack_bits", "unpack_bits",
    "binary_dot_packed", "binary_linear", "binary_conv2d", "im2col",
    "multibasis_linear", "multibasis_conv2d",
    "threshold", "to_fixed", "acc_bound", "check_acc_range", "pixel_planes",
    "conv_output_size",
]

WORD = 64

# Largest number of (P x O x words) uint64 elements one vectorised step materialises (~128 MB).
_CHUNK_ELEMENTS = 1 << 24


class RefError(ValueError):
    """An input breaks the arithmetic's rules (values not +-1, shapes, an overflow)."""


def _check_pm1(x, name):
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        raise RefError(f"{name} must hold integers +1/-1, not dtype {x.dtype}")
    if x.size and not np.all((x == 1) | (x == -1)):
        bad = x[(x != 1) & (x != -1)].flat[0]
        raise RefError(f"{name} must hold only +1 and -1, found {int(bad)}")
    return x


def to_bits(x):
    """+1/-1 integers to 0/1 bits (uint8): +1 -> 1, -1 -> 0."""
    x = _check_pm1(x, "x")
    return (x > 0).astype(np.uint8)


def from_bits(bits):
    """0/1 bits to +1/-1 int8."""
    bits = np.asarray(bits)
    return (bits.astype(np.int8) * 2 - 1).astype(np.int8)


def pack_bits(bits):
    """Pack 0/1 bits along the last axis into uint64 words, LSB first, padding bits 0.

    bits: (..., K) of 0/1. Returns (..., ceil(K / 64)) uint64.
    """
    bits = np.asarray(bits)
    k = bits.shape[-1]
    words = max(1, -(-k // WORD))
    padded = np.zeros(bits.shape[:-1] + (words * WORD,), dtype=np.uint8)
    padded[..., :k] = bits != 0
    as_bytes = np.packbits(padded.reshape(padded.shape[:-1] + (words, WORD)), axis=-1, bitorder="little")
    return as_bytes.view("<u8").reshape(bits.shape[:-1] + (words,))


def unpack_bits(words, k):
    """Inverse of `pack_bits`: (..., n_words) uint64 -> (..., k) uint8 bits."""
    words = np.ascontiguousarray(np.asarray(words, dtype="<u8"))
    as_bytes = words.view(np.uint8).reshape(words.shape[:-1] + (words.shape[-1] * 8,))
    bits = np.unpackbits(as_bytes, axis=-1, bitorder="little")
    return bits[..., :k]


def binary_dot_packed(a_words, w_words, k):
    """Binary dot products of every row of `a_words` with every row of `w_words`.

    a_words: (P, n_words) uint64, w_words: (O, n_words) uint64, both with zero padding past bit k.
    Returns int32 (P, O) with values 2*popcount(XNOR) - k = k - 2*popcount(XOR).
    """
    a_words = np.asarray(a_words, dtype=np.uint64)
    w_words = np.asarray(w_words, dtype=np.uint64)
    if a_words.ndim != 2 or w_words.ndim != 2 or a_words.shape[1] != w_words.shape[1]:
        raise RefError(
            f"Packed operands must be (P, words) and (O, words) with equal words, "
            f"not {a_words.shape} and {w_words.shape}")
    p, n_words = a_words.shape
    o = w_words.shape[0]
    out = np.empty((p, o), dtype=np.int32)
    step = max(1, _CHUNK_ELEMENTS // max(1, o * n_words))
    for start in range(0, p, step):
        a = a_words[start:start + step]
        mismatches = np.zeros((a.shape[0], o), dtype=np.int32)
        for j in range(n_words):
            mismatches += np.bitwise_count(a[:, None, j] ^ w_words[None, :, j])
        out[start:start + step] = k - 2 * mismatches
    return out


def binary_linear(x, w):
    """x: int8 (N, K) of +-1, w: int8 (O, K) of +-1 -> int32 (N, O), the integer product x @ w.T."""
    x = _check_pm1(x, "x")
    w = _check_pm1(w, "w")
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise RefError(f"binary_linear needs x (N, K) and w (O, K), not {x.shape} and {w.shape}")
    k = x.shape[1]
    return binary_dot_packed(pack_bits(x > 0), pack_bits(w > 0), k)


def conv_output_size(size, kernel, stride, padding):
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise RefError(
            f"A {kernel}-wide kernel with stride {stride} and padding {padding} does not fit an input "
            f"of size {size}")
    return out


def im2col(bits, kh, kw, stride, padding, pad_bit):
    """Patches of a 0/1 bit tensor (B, C, H, W) -> (B, H', W', C*kh*kw) in (c, i, j) order.

    The (c, i, j) order matches `w.reshape(O, C*kh*kw)` for a weight tensor (O, C, kh, kw).
    """
    b, c, h, w = bits.shape
    ho = conv_output_size(h, kh, stride, padding)
    wo = conv_output_size(w, kw, stride, padding)
    padded = np.full((b, c, h + 2 * padding, w + 2 * padding), pad_bit, dtype=np.uint8)
    padded[:, :, padding:padding + h, padding:padding + w] = bits
    cols = np.empty((b, ho, wo, c, kh, kw), dtype=np.uint8)
    for i in range(kh):
        for j in range(kw):
            window = padded[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
            cols[:, :, :, :, i, j] = window.transpose(0, 2, 3, 1)
    return cols.reshape(b, ho, wo, c * kh * kw)


def _check_conv_args(x, w, stride, padding, pad_value, groups):
    if x.ndim != 4 or w.ndim != 4:
        raise RefError(f"binary_conv2d needs x (N, C, H, W) and w (O, C/groups, kh, kw), "
                               f"not {x.shape} and {w.shape}")
    if pad_value not in (-1, 1):
        raise RefError(f"pad_value must be -1 or +1, not {pad_value!r}")
    if not isinstance(stride, int) or stride < 1:
        raise RefError(f"stride must be a positive integer, not {stride!r}")
    if not isinstance(padding, int) or padding < 0:
        raise RefError(f"padding must be a non-negative integer, not {padding!r}")
    if not isinstance(groups, int) or groups < 1 or x.shape[1] % groups or w.shape[0] % groups:
        raise RefError(
            f"groups must divide input channels {x.shape[1]} and output channels {w.shape[0]}, "
            f"not {groups!r}")
    if w.shape[1] * groups != x.shape[1]:
        raise RefError(
            f"Weights expect {w.shape[1] * groups} input channels, the input has {x.shape[1]}")


def _conv_packed_bits(x_bits, w_bits, stride, padding, pad_bit, groups):
    """Shared core: 0/1 bits x (B, C, H, W), w (O, C/g, kh, kw) -> int32 (B, O, H', W')."""
    b = x_bits.shape[0]
    o, cg, kh, kw = w_bits.shape
    og = o // groups
    outs = []
    for g in range(groups):
        xg = x_bits[:, g * cg:(g + 1) * cg]
        wg = w_bits[g * og:(g + 1) * og]
        cols = im2col(xg, kh, kw, stride, padding, pad_bit)
        _, ho, wo, k = cols.shape
        dots = binary_dot_packed(pack_bits(cols.reshape(-1, k)), pack_bits(wg.reshape(og, k)), k)
        outs.append(dots.reshape(b, ho, wo, og))
    return np.concatenate(outs, axis=-1).transpose(0, 3, 1, 2).astype(np.int32)


def binary_conv2d(x, w, stride=1, padding=0, pad_value=-1, groups=1):
    """Integer convolution of +-1 tensors.

    x: int8 (N, C, H, W) of +-1; w: int8 (O, C/groups, kh, kw) of +-1. Padded positions take
    `pad_value` (-1 or +1). Returns int32 (N, O, H', W'), equal to a cross-correlation (as in
    torch.nn.functional.conv2d) of the +-1 values.
    """
    x = _check_pm1(x, "x")
    w = _check_pm1(w, "w")
    _check_conv_args(x, w, stride, padding, pad_value, groups)
    return _conv_packed_bits((x > 0).astype(np.uint8), (w > 0).astype(np.uint8),
                             stride, padding, 1 if pad_value > 0 else 0, groups)


def _check_scales(scales, m, n, o):
    scales = np.asarray(scales)
    if scales.dtype.kind not in "iu":
        raise RefError(f"scales must be integers (fixed-point), not dtype {scales.dtype}")
    if scales.shape != (m, n, o):
        raise RefError(f"scales must have shape (M, N, O) = {(m, n, o)}, not {scales.shape}")
    return scales.astype(np.int64)


def multibasis_linear(a_bases, w_bases, scales):
    """Exact sum over m, n of scales[m, n, o] * dot(w_bases[m, o], a_bases[n, p]).

    a_bases: int8 (N, P, K) of +-1 (N activation bases), w_bases: int8 (M, O, K) of +-1 (M weight
    bases), scales: integer (M, N, O) fixed-point scales. Returns int64 (P, O).
    """
    a_bases = _check_pm1(a_bases, "a_bases")
    w_bases = _check_pm1(w_bases, "w_bases")
    if a_bases.ndim != 3 or w_bases.ndim != 3 or a_bases.shape[2] != w_bases.shape[2]:
        raise RefError(f"multibasis_linear needs a_bases (N, P, K) and w_bases (M, O, K), "
                               f"not {a_bases.shape} and {w_bases.shape}")
    n, p, k = a_bases.shape
    m, o, _ = w_bases.shape
    scales = _check_scales(scales, m, n, o)
    a_words = pack_bits(a_bases > 0)
    w_words = pack_bits(w_bases > 0)
    acc = np.zeros((p, o), dtype=np.int64)
    for mi in range(m):
        for ni in range(n):
            acc += scales[mi, ni][None, :] * binary_dot_packed(a_words[ni], w_words[mi], k)
    return acc


def multibasis_conv2d(x_bases, w_bases, scales, stride=1, padding=0, pad_value=-1, groups=1):
    """Multi-basis binary convolution.

    x_bases: int8 (N, B, C, H, W) of +-1, w_bases: int8 (M, O, C/groups, kh, kw) of +-1,
    scales: integer (M, N, O). Every activation basis is padded with `pad_value`.
    Returns int64 (B, O, H', W') = sum over m, n of scales[m, n, o] * conv(x_n, w_m).
    """
    x_bases = _check_pm1(x_bases, "x_bases")
    w_bases = _check_pm1(w_bases, "w_bases")
    if x_bases.ndim != 5 or w_bases.ndim != 5:
        raise RefError(f"multibasis_conv2d needs x_bases (N, B, C, H, W) and w_bases "
                               f"(M, O, C/groups, kh, kw), not {x_bases.shape} and {w_bases.shape}")
    n = x_bases.shape[0]
    m, o = w_bases.shape[:2]
    scales = _check_scales(scales, m, n, o)
    _check_conv_args(x_bases[0], w_bases[0], stride, padding, pad_value, groups)
    pad_bit = 1 if pad_value > 0 else 0
    x_bits = (x_bases > 0).astype(np.uint8)
    w_bits = (w_bases > 0).astype(np.uint8)
    acc = None
    for mi in range(m):
        for ni in range(n):
            dots = _conv_packed_bits(x_bits[ni], w_bits[mi], stride, padding, pad_bit, groups)
            term = scales[mi, ni][None, :, None, None] * dots.astype(np.int64)
            acc = term if acc is None else acc + term
    return acc


def threshold(acc, thresholds, flip):
    """Turn sums into activation bit-planes.

    acc: integer (..., O) sums with channels last; thresholds: integer (O, T); flip: bool (O,).
    Returns int8 (T, ..., O) of +-1: +1 where acc >= thresholds[o, t] (acc <= thresholds[o, t] where
    flip[o]), else -1.
    """
    acc = np.asarray(acc, dtype=np.int64)
    thresholds = np.asarray(thresholds, dtype=np.int64)
    flip = np.asarray(flip, dtype=bool)
    o = acc.shape[-1]
    if thresholds.ndim != 2 or thresholds.shape[0] != o or flip.shape != (o,):
        raise RefError(f"thresholds must be (O, T) and flip (O,) with O = {o}, "
                               f"not {thresholds.shape} and {flip.shape}")
    t = np.moveaxis(thresholds, 1, 0).reshape((thresholds.shape[1],) + (1,) * (acc.ndim - 1) + (o,))
    up = acc[None] >= t
    down = acc[None] <= t
    bits = np.where(flip, down, up)
    return np.where(bits, 1, -1).astype(np.int8)


def to_fixed(values, frac_bits, bits):
    """Real scales to signed fixed-point integers: round(v * 2**frac_bits), half to even.

    Raises if a value does not fit `bits` signed bits (the compiler reports which layer).
    """
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise RefError("Scales must be finite numbers")
    ints = np.round(values * (1 << frac_bits)).astype(np.int64)
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if ints.size and (ints.min() < low or ints.max() > high):
        worst = ints.min() if ints.min() < low else ints.max()
        raise RefError(
            f"Scale {worst / (1 << frac_bits)!r} does not fit {bits}-bit fixed point with "
            f"{frac_bits} fractional bits (range {low / (1 << frac_bits)} to {high / (1 << frac_bits)})")
    return ints


def acc_bound(scales, k):
    """Largest |sum| a layer can produce: per output channel, sum over m, n of |s[m, n, o]| * K.

    scales: integer (M, N, O); returns int64 (O,).
    """
    scales = np.asarray(scales, dtype=np.int64)
    return np.abs(scales).sum(axis=(0, 1)) * int(k)


def check_acc_range(acc, acc_bits):
    """Raise unless every sum lies in the symmetric range +-(2**(acc_bits-1) - 1)."""
    acc = np.asarray(acc, dtype=np.int64)
    limit = (1 << (acc_bits - 1)) - 1
    if acc.size and np.abs(acc).max() > limit:
        raise RefError(
            f"A sum of magnitude {int(np.abs(acc).max())} overflows the {acc_bits}-bit accumulator "
            f"(limit {limit})")
    return acc


def pixel_planes(pixels):
    """8-bit pixels (uint8, any shape) -> int8 (8, ...) +-1 bit-planes, plane b = bit b of the pixel.

    pixel = sum over b of 2**(b-1) * plane_b + 127.5, so a first layer uses scales 2**(b-1) (times the
    weight scale) and folds 127.5 * sum(w) into its thresholds.
    """
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise RefError(f"Pixels must be uint8, not {pixels.dtype}")
    planes = (pixels[None] >> np.arange(8, dtype=np.uint8).reshape((8,) + (1,) * pixels.ndim)) & 1
    return from_bits(planes)
