"""One host API over every backend that executes a program bundle. numpy only.

    from sw.runtime import open_backend
    with open_backend("iss", bundle) as backend:            # bundle: a Bundle or a path
        logits, cycles, layer_cycles = backend.run(images)  # uint8 (B, C, H, W) or (B, H, W)

`run` returns a `RunResult` (a named tuple): `logits` int64 (B, classes), `cycles` int64 (B,) the
cycles of each image's run, `layer_cycles` int64 (B, layers) per model layer (analytic for the ISS,
measured where a backend can; None where it cannot).

A backend is a `Backend` subclass registered under a name (`register_backend`). The interface is small:

* `__init__(self, bundle, config=None, **options)`: `config` is the backend's own AccelConfig (the
  hardware it drives); `Backend.__init__` refuses a bundle whose fingerprint differs (`RuntimeApiError`).
  The ISS takes the bundle's config when none is given.
* `run(self, images) -> RunResult`.
* `close(self)` (also through `with`).

Hardware-like backends (Verilator, board) can subclass `MemoryBackend`, which implements `run` with
four primitives: `write_memory(memory, base, values)` (the bundle's segment format),
`start_and_wait(stream) -> (cycles, error_code)` (start, and feed the accelerator's `load_in` port with
the entries of `stream`, the bundle's load-stream Segments, while the program runs: host_port.stream_ints
encodes them), `read_result(base, count) -> int64 array`, and optionally `instruction_cycles()`. The input
preparation (the image map of a packed first layer, or the host unfold) is `prepare_input(bundle, images)`.
"""

from typing import NamedTuple

import numpy as np

import sw.ref as ref
from sw.bundle import Bundle, BundleError, load_bundle, pack_words, word_limbs

__all__ = ["RuntimeApiError", "RunResult", "Backend", "MemoryBackend", "IssBackend", "BACKENDS", "PROVIDERS",
           "register_backend", "open_backend", "prepare_input", "packed_input", "check_images", "pack_batch", "read_logits",
           "bundle_batch", "whole_batches", "run_inputs"]


class RuntimeApiError(ValueError):
    """A user's mistake: unknown backend, a bundle for another config, images of the wrong shape, or a
    program that stopped with an error status (`code` set then)."""

    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code


class RunResult(NamedTuple):
    logits: np.ndarray
    cycles: np.ndarray
    layer_cycles: object


def check_images(bundle, images):
    """uint8 (B, C, H, W) images of the bundle's input shape (B, H, W accepted for one channel)."""
    images = np.asarray(images)
    shape = tuple(bundle.input["shape"])
    if images.dtype != np.uint8:
        raise RuntimeApiError(f"Images must be uint8 pixels, not {images.dtype}")
    if images.ndim == 3 and shape[0] == 1 and images.shape[1:] == shape[1:]:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1:] != shape:
        raise RuntimeApiError(f"Images must have shape (B,) + {shape}, not {images.shape}")
    return images


def prepare_input(bundle, images):
    """The first layer's input words of each image (docs/isa.md "First layer"): uint8 images ->
    activation words (B, words, limbs) uint64 to write at `bundle.input["act_base"]`.

    A packed input (`input["mode"]` "packed") is the image map: word y * w + x holds pixel (y, x),
    channel ch's byte at bits 8 * ch .. 8 * ch + 7 (`input["word_bytes"]` bytes a word).

    The host unfold: pixel plane b (bit b of the pixel) of output pixel (y, x) is the receptive field in
    sw.ref.im2col's (channel, ky, kx) order, K0 bits. Activation basis g of the first CONV carries the
    planes of `input["groups"][g]` = [first, count]: plane first + i repeated 2^i times, then (for a
    short last group) blocks of ones and zeros in turn up to `group_k` bits, which add nothing to the dot
    product (docs/compiler.md "First layer: plane groups"). Packed W bits a word, `words_per_pixel` words
    per pixel: word ((g * out_h + y) * out_w + x) * words_per_pixel + j.
    """
    images = check_images(bundle, images)
    if packed_input(bundle):
        return _image_words(images, bundle.config.word_bits)
    spec = bundle.input
    kh, kw = spec["kernel"]
    pad_bit = 1 if spec["pad_value"] > 0 else 0
    batch = images.shape[0]
    planes = (images[None] >> np.arange(8, dtype=np.uint8).reshape(8, 1, 1, 1, 1)) & 1
    cols = ref.im2col(planes.reshape((8 * batch,) + images.shape[1:]), kh, kw, spec["stride"],
                      spec["padding"], pad_bit)                        # (8B, oh, ow, K0)
    cols = cols.reshape((8, batch) + cols.shape[1:])
    groups = spec.get("groups", [[b, 1] for b in range(8)])
    k_group = spec.get("group_k", spec["k"])
    vectors = []
    for first, count in groups:
        blocks = [cols[first + i] for i in range(count) for _ in range(1 << i)]
        filler = (k_group - len(blocks) * spec["k"]) // spec["k"]
        for j in range(filler):
            blocks.append(np.full_like(cols[0], 1 - j % 2))
        vectors.append(np.concatenate(blocks, axis=-1))
    words = pack_words(np.stack(vectors), bundle.config.word_bits)      # (N, B, oh, ow, cw, L)
    words = words.swapaxes(0, 1)
    per_image = len(groups) * spec["out_h"] * spec["out_w"] * spec["words_per_pixel"]
    return np.ascontiguousarray(words.reshape(batch, per_image, words.shape[-1]))


def packed_input(bundle):
    """Does the bundle's first layer read the packed image (else the host unfolds it)?"""
    return bundle.input.get("mode", "unfold") == "packed"


def _image_words(images, word_bits):
    """uint8 images (B, C, H, W) -> their image maps (B, H * W, limbs) uint64: one word a pixel, channel
    ch's byte at bits 8 * ch .. (limb ch // 8)."""
    batch, channels, h, w = images.shape
    limbs = word_limbs(word_bits)
    pixels = images.transpose(0, 2, 3, 1).reshape(batch, h * w, channels).astype(np.uint64)
    words = np.zeros((batch, h * w, limbs), dtype=np.uint64)
    for ch in range(channels):
        words[..., ch // 8] |= pixels[..., ch] << np.uint64(8 * (ch % 8))
    return words


def bundle_batch(bundle):
    """Images one run of the bundle's program takes (`compile_model(..., batch=B)`)."""
    return int(bundle.input.get("batch", 1))


def pack_batch(bundle, words):
    """Per-image input words (images, words, limbs) -> per-run words (runs, batch x words, limbs): the
    batch's maps stacked plane by plane (docs/compiler.md "Batching"): activation basis g of an unfolded
    input holds image 0's rows, then image 1's, ...; a packed input's image map (no planes) holds the
    images' rows in turn. The image count must be a multiple of the batch."""
    batch = bundle_batch(bundle)
    if batch == 1:
        return words
    count, per_image, limbs = words.shape
    if count % batch:
        raise RuntimeApiError(f"{count} images are not whole batches of {batch}")
    groups = 1 if packed_input(bundle) else len(bundle.input.get("groups", [[b, 1] for b in range(8)]))
    words = words.reshape(count // batch, batch, groups, per_image // groups, limbs).swapaxes(1, 2)
    return np.ascontiguousarray(words.reshape(count // batch, batch * per_image, limbs))


def read_logits(bundle, result):
    """Every image's logits from result memories (runs, depth) -> (runs x batch, classes)."""
    out = bundle.output
    batch = bundle_batch(bundle)
    sums = np.asarray(result)[:, out["result_base"]:out["result_base"] + batch * out["classes"]]
    return sums.reshape(-1, out["classes"])


def whole_batches(bundle, images):
    """`images` padded with blank images to whole batches: (padded images, how many are real)."""
    batch = bundle_batch(bundle)
    spare = -len(images) % batch
    if spare:
        images = np.concatenate([images, np.zeros((spare,) + images.shape[1:], dtype=images.dtype)])
    return images, len(images) - spare


def run_inputs(bundle, images):
    """(activation words of each run (runs, words, limbs), how many images are real): the images checked,
    padded to whole batches, prepared (packed or unfolded) and stacked."""
    images, real = whole_batches(bundle, check_images(bundle, images))
    return pack_batch(bundle, prepare_input(bundle, images)), real


class Backend:
    """Base of every backend; see the module docstring."""

    name = "?"

    def __init__(self, bundle, config=None, **options):
        if isinstance(bundle, (str, bytes)) or hasattr(bundle, "__fspath__"):
            bundle = load_bundle(bundle)
        if not isinstance(bundle, Bundle):
            raise TypeError(f"A backend needs a Bundle or a bundle path, not {bundle!r}")
        self.bundle = bundle
        self.config = bundle.config if config is None else config
        if self.config.fingerprint() != bundle.fingerprint:
            raise RuntimeApiError(
                f"The bundle was compiled for config {bundle.fingerprint}; the {self.name} backend has "
                f"config {self.config.fingerprint()}: recompile for this config")
        if options:
            raise RuntimeApiError(f"The {self.name} backend has no option {sorted(options)[0]!r}")

    def run(self, images):
        raise NotImplementedError

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def layer_cycles_from(self, instruction_cycles):
        """Per model layer sums of per-instruction cycles (a list indexed by pc)."""
        return np.array([sum(instruction_cycles[pc] for pc in layer["instructions"])
                         for layer in self.bundle.layers], dtype=np.int64)


class MemoryBackend(Backend):
    """`run` for backends that execute one image at a time on a memory-mapped accelerator."""

    def write_memory(self, memory, base, values):
        raise NotImplementedError

    def start_and_wait(self, stream):
        """Start the program and feed `stream` (Segments, the bundle's load stream, in order) to its
        LOADs; return (cycles, error_code) once done (error_code 0 when none)."""
        raise NotImplementedError

    def read_result(self, base, count):
        raise NotImplementedError

    def instruction_cycles(self):
        """Cycles per pc of the last run, or None when the backend cannot measure them."""
        return None

    def load(self):
        """Write the program (256-bit ints) and the bundle's memory images."""
        self.write_memory("program", 0, np.array(self.bundle.instructions, dtype=object))
        for segment in self.bundle.segments:
            self.write_memory(segment.memory, segment.base, segment.values)

    def run(self, images):
        """Each run of the program takes a batch of images (the bundle's batch; the last one padded with
        blank images): every image gets its logits, and the cycles of the run it was in."""
        words, real = run_inputs(self.bundle, images)
        batch = bundle_batch(self.bundle)
        out = self.bundle.output
        logits, cycles, layers = [], [], []
        for run_words in words:
            self.write_memory("act", self.bundle.input["act_base"], run_words)
            spent, error = self.start_and_wait(self.bundle.stream)
            if error:
                raise RuntimeApiError(f"The {self.name} backend stopped with error code {error}", code=error)
            sums = np.asarray(self.read_result(out["result_base"], batch * out["classes"]), dtype=np.int64)
            logits.extend(sums.reshape(batch, out["classes"]))
            cycles.extend([spent] * batch)
            per_pc = self.instruction_cycles()
            layers.extend([None if per_pc is None else self.layer_cycles_from(per_pc)] * batch)
        logits, cycles, layers = logits[:real], cycles[:real], layers[:real]
        layer_cycles = None if any(x is None for x in layers) else (
            np.stack(layers) if layers else np.zeros((0, len(self.bundle.layers)), np.int64))
        return RunResult(np.array(logits, dtype=np.int64).reshape(-1, out["classes"]),
                         np.array(cycles, dtype=np.int64), layer_cycles)


class IssBackend(Backend):
    """The instruction-set simulator (sw.iss), all images of a call in one vectorised run.
    Options: `batch` (images per ISS run, default 256)."""

    name = "iss"

    def __init__(self, bundle, config=None, batch=256, **options):
        super().__init__(bundle, config, **options)
        if not isinstance(batch, int) or batch < 1:
            raise RuntimeApiError(f"batch must be a positive integer, not {batch!r}")
        self.batch = batch
        self.status = None

    def run(self, images):
        from sw.iss import Iss, IssError
        words, real = run_inputs(self.bundle, images)
        out = self.bundle.output
        per_run = bundle_batch(self.bundle)
        logits, cycles, layers = [], [], []
        for start in range(0, len(words), self.batch):
            chunk = words[start:start + self.batch]
            iss = Iss(self.config, batch=len(chunk))
            iss.load(self.bundle)
            iss.write("act", self.bundle.input["act_base"], chunk)
            try:
                self.status = iss.run()
            except IssError as error:
                raise RuntimeApiError(f"The program stopped: {error}", code=error.code) from None
            per_pc = {pc: spent for pc, _, spent in self.status.trace}
            logits.append(read_logits(self.bundle, iss.result))
            cycles.append(np.full(len(chunk) * per_run, self.status.cycles, dtype=np.int64))
            layers.append(np.tile(self.layer_cycles_from(per_pc), (len(chunk) * per_run, 1)))
        if not logits:
            n = len(self.bundle.layers)
            return RunResult(np.zeros((0, out["classes"]), np.int64), np.zeros(0, np.int64), np.zeros((0, n), np.int64))
        return RunResult(np.concatenate(logits)[:real], np.concatenate(cycles)[:real],
                         np.concatenate(layers)[:real])


BACKENDS = {"iss": IssBackend}

# Backends registered by modules that are imported on first use (so importing sw.runtime stays light
# and numpy-only): name -> module that calls register_backend(name, ...) when imported.
PROVIDERS = {"verilator": "sim.verilator_backend", "pysim": "sim.amaranth_backend", "board": "boards.runtime"}


def register_backend(name, factory):
    """Make `open_backend(name, ...)` call `factory(bundle, **options)` (a Backend subclass)."""
    BACKENDS[name] = factory


def open_backend(name, bundle, **options):
    """A backend by name, for a Bundle or a bundle path (BundleError for a bad file)."""
    if name not in BACKENDS and name in PROVIDERS:
        import importlib
        try:
            importlib.import_module(PROVIDERS[name])
        except ImportError as error:
            raise RuntimeApiError(f"The {name} backend is not available: its module {PROVIDERS[name]} cannot "
                                  f"be imported ({error})") from None
    if name not in BACKENDS:
        raise RuntimeApiError(f"Unknown backend {name!r}; the backends are: "
                              f"{', '.join(sorted(set(BACKENDS) | set(PROVIDERS)))}")
    return BACKENDS[name](bundle, **options)


__all__ += ["BundleError"]
