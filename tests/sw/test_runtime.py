"""The program bundle format and the runtime API (sw.bundle, sw.runtime)."""

import json
import struct

import numpy as np
import pytest

import sw.ref as ref
from hw.config import AccelConfig
from sw.bundle import (BundleError, FORMAT_VERSION, from_bytes, load_bundle, pack_words, save_bundle, to_bytes,
                       unpack_words)
from sw.compile import compile_model
from sw.compile.testing import conv, linear, maxpool, random_model
from sw.iss import Iss
from sw.model_format import deploy_forward
from sw.runtime import (BACKENDS, PROVIDERS, Backend, MemoryBackend, RuntimeApiError, open_backend, pack_batch,
                        prepare_input, register_backend, run_inputs)

CONFIG = AccelConfig()


@pytest.fixture(scope="module")
def compiled():
    model = random_model([conv(10, 3, stride=2, padding=1), maxpool(2), linear(12, planes=2), linear(10)],
                         (2, 10, 10), CONFIG, seed=3)
    return model, compile_model(model, CONFIG)


def test_pack_words_round_trip():
    bits = np.random.default_rng(0).integers(0, 2, (3, 5, 150)).astype(np.uint8)
    for w in (1, 7, 32, 64, 100, 128):
        words = pack_words(bits, w)
        assert words.shape == (3, 5, -(-150 // w), -(-w // 64))
        assert np.array_equal(unpack_words(words, w, 150), bits)
    assert np.array_equal(pack_words(bits, 64)[..., 0], ref.pack_bits(bits))


def test_bundle_round_trip(tmp_path, compiled):
    _, bundle = compiled
    path = tmp_path / "p.bundle"
    save_bundle(path, bundle)
    again = load_bundle(path)
    assert again.config == bundle.config and again.fingerprint == CONFIG.fingerprint()
    assert again.instructions == bundle.instructions
    assert again.input == bundle.input and again.output == bundle.output and again.layers == bundle.layers
    assert [(s.memory, s.base) for s in again.segments] == [(s.memory, s.base) for s in bundle.segments]
    for a, b in zip(again.segments, bundle.segments):
        assert a.values.dtype == b.values.dtype and np.array_equal(a.values, b.values)
    assert to_bytes(again) == path.read_bytes()


def _rewrite_header(data, change):
    """A well-formed file (fresh checksum) whose JSON header was edited."""
    import hashlib
    magic, version, length = struct.unpack_from("<8sII", data)
    header = json.loads(data[16:16 + length])
    change(header)
    text = json.dumps(header).encode()
    text += b" " * ((-(16 + len(text))) % 8)
    body = struct.pack("<8sII", magic, version, len(text)) + text + data[16 + length:-32]
    return body + hashlib.sha256(body).digest()


def test_bundle_errors(tmp_path, compiled):
    _, bundle = compiled
    data = to_bytes(bundle)
    cases = {
        "truncated": data[:len(data) // 2],
        "short": data[:5],
        "corrupt": data[:200] + bytes([data[200] ^ 1]) + data[201:],
        "version": data[:8] + struct.pack("<I", FORMAT_VERSION + 1) + data[12:],
        "not": b"BNNMODEL" + data[8:],
    }
    messages = {}
    for name, blob in cases.items():
        with pytest.raises(BundleError) as info:
            from_bytes(blob, origin="p.bundle")
        messages[name] = str(info.value)
    assert messages["truncated"] == f"p.bundle is truncated ({len(data) // 2} bytes, its header alone needs " \
                                    f"{16 + struct.unpack_from('<I', data, 12)[0] + 32})"
    assert messages["short"] == "p.bundle is truncated (5 bytes)"
    assert messages["corrupt"] == "p.bundle is corrupt or truncated (sha256 checksum mismatch)"
    assert messages["version"] == f"p.bundle has bundle format version {FORMAT_VERSION + 1}; this reader reads " \
                                  f"version {FORMAT_VERSION}"
    assert messages["not"] == "p.bundle is not a program bundle (its first bytes are not b'BNNBUNDL')"
    with pytest.raises(BundleError, match=r"^p.bundle holds a 'bnn-model', not a 'bnn-program-bundle'$"):
        from_bytes(_rewrite_header(data, lambda h: h.update(kind="bnn-model")), origin="p.bundle")
    with pytest.raises(BundleError, match=r"^p.bundle: its config does not match its recorded fingerprint"):
        from_bytes(_rewrite_header(data, lambda h: h["config"].update(rows=8)), origin="p.bundle")
    with pytest.raises(BundleError, match=r"^p.bundle has a malformed header \(KeyError: 'segments'\)$"):
        from_bytes(_rewrite_header(data, lambda h: h.pop("segments")), origin="p.bundle")
    with pytest.raises(BundleError, match=r"^Cannot read bundle file .*none.bundle: No such file or directory$"):
        load_bundle(tmp_path / "none.bundle")


def test_backends_refuse_a_bundle_for_another_config(compiled):
    _, bundle = compiled
    other = CONFIG.replace(cols=8)
    with pytest.raises(RuntimeApiError) as info:
        open_backend("iss", bundle, config=other)
    assert str(info.value) == f"The bundle was compiled for config {CONFIG.fingerprint()}; the iss backend has " \
                              f"config {other.fingerprint()}: recompile for this config"


def test_open_backend_errors(compiled, monkeypatch):
    _, bundle = compiled
    with pytest.raises(RuntimeApiError) as info:
        open_backend("fpga", bundle)
    assert str(info.value) == f"Unknown backend 'fpga'; the backends are: {', '.join(sorted(set(BACKENDS) | set(PROVIDERS)))}"
    assert {"iss", "verilator", "board"} <= set(BACKENDS) | set(PROVIDERS)
    monkeypatch.setitem(PROVIDERS, "nowhere", "sim.no_such_module_here")
    with pytest.raises(RuntimeApiError, match=r"^The nowhere backend is not available: its module "
                                              r"sim.no_such_module_here cannot be imported"):
        open_backend("nowhere", bundle)
    with pytest.raises(RuntimeApiError, match=r"^The iss backend has no option 'turbo'$"):
        open_backend("iss", bundle, turbo=True)
    backend = open_backend("iss", bundle)
    with pytest.raises(RuntimeApiError, match=r"^Images must be uint8 pixels, not float64$"):
        backend.run(np.zeros((1, 2, 10, 10)))
    with pytest.raises(RuntimeApiError, match=r"^Images must have shape \(B,\) \+ \(2, 10, 10\), not \(1, 10, 10\)$"):
        backend.run(np.zeros((1, 10, 10), np.uint8))


def test_prepare_input_is_the_first_layer_unfold(compiled):
    """Each activation basis of the first CONV is its plane group's receptive fields, plane first + i
    repeated 2^i times, then cancelling blocks; with the weights repeated alike, the groups' dot
    products weighted 2^first are the 8 planes' weighted 2^b."""
    _, bundle = compiled
    images = np.random.default_rng(2).integers(0, 256, (3, 2, 10, 10), dtype=np.uint8)
    words = prepare_input(bundle, images)
    spec = bundle.input
    groups, kg = spec["groups"], spec["group_k"]
    assert spec["k"] == 18 and (spec["out_h"], spec["out_w"]) == (5, 5)
    assert len(groups) < 8 and sum(count for _, count in groups) == 8 and kg == 18 * ((1 << groups[0][1]) - 1)
    cw = spec["words_per_pixel"]
    assert cw == -(-kg // 32) and words.shape == (3, len(groups) * 25 * cw, 1) and words.dtype == np.uint64
    planes = ref.to_bits(ref.pixel_planes(images))                          # (8, B, C, H, W)
    cols = np.stack([ref.im2col(planes[t], 3, 3, 2, 1, 0) for t in range(8)])   # (8, B, 5, 5, 18)
    w = np.random.default_rng(3).integers(0, 2, 18, dtype=np.uint8)
    def dot(weights, bits):                                                 # over the last axis
        return ref.binary_linear(ref.from_bits(bits.reshape(-1, bits.shape[-1])), ref.from_bits(weights[None]))

    want = sum((1 << t) * dot(w, cols[t]).astype(np.int64) for t in range(8))
    got_sum = 0
    for g, (first, count) in enumerate(groups):
        got = unpack_words(words[:, g * 25 * cw:(g + 1) * 25 * cw].reshape(3, 5, 5, cw, 1), 32, kg)
        blocks = [cols[first + i] for i in range(count) for _ in range(1 << i)]
        while len(blocks) * 18 < kg:
            blocks.append(np.full_like(cols[0], 1 if len(blocks) % 2 == ((1 << count) - 1) % 2 else 0))
        assert np.array_equal(got, np.concatenate(blocks, axis=-1)), (first, count)
        got_sum = got_sum + (1 << first) * dot(np.tile(w, kg // 18), got).astype(np.int64)
    assert np.array_equal(got_sum, want)


WIDE = AccelConfig(rows=4, cols=5, word_bits=100, max_k=8192, acc_bits=40, act_depth=8192)


@pytest.mark.parametrize("config, shape, kernel", [
    (CONFIG, (3, 6, 5), 3),
    (CONFIG, (1, 5, 7), 5),
    (WIDE, (12, 5, 5), 4),               # channels 8 .. 11 in a word's second limb
])
def test_prepare_input_of_a_packed_bundle_is_the_image_map(config, shape, kernel):
    """A first layer reading the packed image: one word a pixel, channel ch's byte at bits 8ch .. 8ch+7."""
    model = random_model([conv(4, kernel, padding=1), linear(3)], shape, config, seed=1)
    bundle = compile_model(model, config, input="packed")
    c, h, w = shape
    assert (bundle.input["mode"], bundle.input["word_bytes"], bundle.input["input_words"]) == ("packed", c, h * w)
    images = np.random.default_rng(5).integers(0, 256, (2,) + shape, dtype=np.uint8)
    words = prepare_input(bundle, images)
    assert words.shape == (2, h * w, -(-config.word_bits // 64)) and words.dtype == np.uint64
    for b in range(2):
        for y in range(h):
            for x in range(w):
                got = sum(int(limb) << (64 * i) for i, limb in enumerate(words[b, y * w + x]))
                assert got == sum(int(images[b, ch, y, x]) << (8 * ch) for ch in range(c)), (b, y, x)
    assert np.array_equal(open_backend("iss", bundle).run(images).logits, deploy_forward(model, images))


def test_packed_batches_stack_the_images_as_rows(monkeypatch):
    """A packed bundle's run takes its batch's image maps one after another (the map has no planes);
    the last run is padded with blank images; a memory-mapped backend runs it like the ISS."""
    model = random_model([conv(6, 3, padding=1), maxpool(2), linear(5)], (3, 6, 6), CONFIG, seed=2)
    bundle = compile_model(model, CONFIG, input="packed", batch=3)
    images = np.random.default_rng(6).integers(0, 256, (7, 3, 6, 6), dtype=np.uint8)
    words, real = run_inputs(bundle, images)
    single = prepare_input(bundle, images)
    assert real == 7 and words.shape == (3, 3 * 36, 1)
    for i in range(7):
        assert np.array_equal(words[i // 3, (i % 3) * 36:(i % 3 + 1) * 36], single[i])
    assert not words[2, 36:].any()
    assert np.array_equal(pack_batch(bundle, single[:6]), words[:2])
    monkeypatch.setitem(BACKENDS, "per-image-iss", PerImageIss)
    with open_backend("per-image-iss", bundle) as backend:
        assert np.array_equal(backend.run(images).logits, deploy_forward(model, images))


class PerImageIss(MemoryBackend):
    """A memory-mapped backend built from the four MemoryBackend primitives, one image at a time."""

    name = "per-image-iss"

    def __init__(self, bundle, config=None):
        super().__init__(bundle, config)
        self.iss = Iss(self.config)
        self.load()
        self.per_pc = None

    def write_memory(self, memory, base, values):
        if memory == "program":
            self.iss.load_program([int(v) for v in values])
        else:
            self.iss.write(memory, base, values)

    def start_and_wait(self, stream):
        for segment in stream:
            self.iss.feed(segment.memory, segment.values)
        status = self.iss.run()
        self.per_pc = {pc: spent for pc, _, spent in status.trace}
        return status.cycles, 0

    def read_result(self, base, count):
        return self.iss.result[0, base:base + count].copy()

    def instruction_cycles(self):
        return self.per_pc


def test_memory_backend_matches_the_iss_backend(compiled, monkeypatch):
    model, bundle = compiled
    monkeypatch.setitem(BACKENDS, "per-image-iss", PerImageIss)
    images = np.random.default_rng(4).integers(0, 256, (5, 2, 10, 10), dtype=np.uint8)
    with open_backend("iss", bundle, batch=2) as iss:
        a = iss.run(images)
    with open_backend("per-image-iss", bundle) as one:
        b = one.run(images)
    assert np.array_equal(a.logits, deploy_forward(model, images))
    assert np.array_equal(a.logits, b.logits)
    assert np.array_equal(a.cycles, b.cycles) and np.array_equal(a.layer_cycles, b.layer_cycles)
    logits, cycles, layer_cycles = a          # a RunResult unpacks like a tuple
    assert layer_cycles.shape == (5, 4) and cycles.shape == (5,)
    empty = open_backend("iss", bundle).run(np.zeros((0, 2, 10, 10), np.uint8))
    assert empty.logits.shape == (0, 10)


def test_register_backend(compiled, monkeypatch):
    _, bundle = compiled
    monkeypatch.setattr("sw.runtime.BACKENDS", dict(BACKENDS))

    class Fixed(Backend):
        name = "fixed"

        def run(self, images):
            return "ran"

    register_backend("fixed", Fixed)
    assert open_backend("fixed", bundle).run(None) == "ran"
