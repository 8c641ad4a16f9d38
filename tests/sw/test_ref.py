"""sw.ref against plain integer implementations written independently (no bit packing)."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from sw import ref


def pm1(shape):
    return hnp.arrays(np.int8, shape, elements=st.sampled_from([-1, 1]))


def plain_conv(x, w, stride, padding, pad_value, groups):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.full((n, c, h + 2 * padding, wd + 2 * padding), pad_value, dtype=np.int64)
    xp[:, :, padding:padding + h, padding:padding + wd] = x
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (wd + 2 * padding - kw) // stride + 1
    out = np.zeros((n, o, ho, wo), dtype=np.int64)
    og = o // groups
    for b in range(n):
        for oc in range(o):
            g = oc // og
            for i in range(ho):
                for j in range(wo):
                    patch = xp[b, g * cg:(g + 1) * cg, i * stride:i * stride + kh, j * stride:j * stride + kw]
                    out[b, oc, i, j] = int((patch * w[oc].astype(np.int64)).sum())
    return out


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_binary_linear_matches_integer_matmul(data):
    n = data.draw(st.integers(1, 5))
    o = data.draw(st.integers(1, 5))
    k = data.draw(st.integers(1, 200))
    x = data.draw(pm1((n, k)))
    w = data.draw(pm1((o, k)))
    got = ref.binary_linear(x, w)
    assert got.dtype == np.int32
    assert np.array_equal(got, x.astype(np.int64) @ w.T.astype(np.int64))


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_binary_conv2d_matches_plain_loops(data):
    groups = data.draw(st.sampled_from([1, 2]))
    c = groups * data.draw(st.integers(1, 3))
    o = groups * data.draw(st.integers(1, 3))
    kh, kw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    stride = data.draw(st.integers(1, 2))
    padding = data.draw(st.integers(0, 2))
    h = data.draw(st.integers(max(1, kh - 2 * padding), 7))
    wd = data.draw(st.integers(max(1, kw - 2 * padding), 7))
    pad_value = data.draw(st.sampled_from([-1, 1]))
    x = data.draw(pm1((2, c, h, wd)))
    w = data.draw(pm1((o, c // groups, kh, kw)))
    got = ref.binary_conv2d(x, w, stride=stride, padding=padding, pad_value=pad_value, groups=groups)
    assert np.array_equal(got, plain_conv(x, w, stride, padding, pad_value, groups))


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_multibasis_linear_is_the_scaled_sum(data):
    m, n = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    p, o, k = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 150))
    a = data.draw(pm1((n, p, k)))
    w = data.draw(pm1((m, o, k)))
    s = data.draw(hnp.arrays(np.int64, (m, n, o), elements=st.integers(-(2 ** 15), 2 ** 15 - 1)))
    expected = np.zeros((p, o), dtype=np.int64)
    for mi in range(m):
        for ni in range(n):
            for pi in range(p):
                for oi in range(o):
                    expected[pi, oi] += int(s[mi, ni, oi]) * int(np.dot(a[ni, pi].astype(int), w[mi, oi].astype(int)))
    assert np.array_equal(ref.multibasis_linear(a, w, s), expected)
    assert np.all(np.abs(expected) <= ref.acc_bound(s, k)[None, :])


def test_multibasis_conv2d_equals_sum_of_single_convs():
    rng = np.random.default_rng(3)
    x = rng.choice(np.array([-1, 1], np.int8), size=(2, 2, 4, 5, 5))
    w = rng.choice(np.array([-1, 1], np.int8), size=(3, 6, 2, 3, 3))
    s = rng.integers(-100, 100, size=(3, 2, 6))
    got = ref.multibasis_conv2d(x, w, s, stride=2, padding=1, groups=2)
    expected = sum(s[m, n][None, :, None, None] * plain_conv(x[n], w[m], 2, 1, -1, 2)
                   for m in range(3) for n in range(2))
    assert np.array_equal(got, expected)


def test_pack_unpack_round_trip_and_padding_is_zero():
    rng = np.random.default_rng(0)
    for k in (1, 63, 64, 65, 130):
        bits = rng.integers(0, 2, size=(3, k), dtype=np.uint8)
        words = ref.pack_bits(bits)
        assert words.shape == (3, -(-k // 64))
        assert np.array_equal(ref.unpack_bits(words, k), bits)
        tail = words[:, -1] >> np.uint64(k % 64) if k % 64 else np.zeros(3, np.uint64)
        assert np.all(tail == 0)
    assert ref.pack_bits(np.array([1, 0, 1], np.uint8))[0] == 5   # LSB first


def test_threshold_directions_and_constant_channels():
    acc = np.array([[-5, 0, 5], [3, 3, 3]])                      # (P=2, O=3)
    t_min = -(2 ** 31)
    thresholds = np.array([[0, t_min], [0, t_min], [3, 5]])
    flip = np.array([False, True, False])
    planes = ref.threshold(acc, thresholds, flip)                # (T=2, P, O)
    assert planes.shape == (2, 2, 3)
    assert planes[0].tolist() == [[-1, 1, 1], [1, -1, 1]]       # >= 0 ; <= 0 ; >= 3
    assert planes[1].tolist() == [[1, -1, 1], [1, -1, -1]]      # Tmin: +1 ; flipped Tmin: -1 ; >= 5


def test_to_fixed_rounds_half_even_and_refuses_overflow():
    assert ref.to_fixed([0.5, 0.75, -0.25, 1.25], 1, 8).tolist() == [1, 2, 0, 2]
    with pytest.raises(ref.RefError, match="does not fit 8-bit fixed point"):
        ref.to_fixed([64.0], 1, 8)
    with pytest.raises(ref.RefError, match="finite"):
        ref.to_fixed([np.nan], 1, 8)


def test_pixel_planes_reconstruct_pixels():
    pixels = np.arange(256, dtype=np.uint8)
    planes = ref.pixel_planes(pixels).astype(np.float64)
    rebuilt = sum(2.0 ** (b - 1) * planes[b] for b in range(8)) + 127.5
    assert np.array_equal(rebuilt, pixels.astype(np.float64))


@pytest.mark.parametrize("call, message", [
    (lambda: ref.binary_linear(np.array([[0, 1]]), np.array([[1, 1]])), "only +1 and -1, found 0"),
    (lambda: ref.binary_linear(np.ones((2, 3), np.int8), np.ones((2, 4), np.int8)), "x (N, K) and w (O, K)"),
    (lambda: ref.binary_conv2d(np.ones((1, 2, 3, 3), np.int8), np.ones((1, 2, 5, 5), np.int8)), "does not fit"),
    (lambda: ref.binary_conv2d(np.ones((1, 2, 3, 3), np.int8), np.ones((1, 2, 1, 1), np.int8), pad_value=0),
     "pad_value must be -1 or +1"),
    (lambda: ref.binary_linear(np.ones((1, 2), np.float32), np.ones((1, 2), np.int8)), "must hold integers"),
    (lambda: ref.check_acc_range(np.array([2 ** 31]), 32), "overflows the 32-bit accumulator"),
])
def test_bad_input_is_refused(call, message):
    with pytest.raises(ref.RefError) as info:
        call()
    assert message in str(info.value)
