import pickle

import numpy as np
import pytest

from sw.data import DatasetError, fixed_split, load_dataset, read_idx, write_idx


def test_digits_split_is_fixed_and_stratified():
    d = load_dataset("digits")
    assert d.train_x.shape == (1438, 1, 8, 8) and d.test_x.shape == (359, 1, 8, 8)
    assert d.train_x.dtype == np.uint8 and d.train_x.max() == 255 and d.train_x.min() == 0
    # 17 grey levels (0..16) scaled to 0..255.
    assert set(np.unique(d.train_x)) <= {int(round(v * 255 / 16)) for v in range(17)}
    again = load_dataset("digits")
    assert np.array_equal(d.test_x, again.test_x) and np.array_equal(d.test_y, again.test_y)
    counts = np.bincount(d.test_y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


def test_mnist5k_split():
    d = load_dataset("mnist5k")
    assert d.train_x.shape == (4000, 1, 28, 28) and d.test_x.shape == (1000, 1, 28, 28)
    assert np.array_equal(np.bincount(d.test_y), [100] * 10)
    assert d.classes == 10 and d.input_shape == (1, 28, 28)
    # The images are real digits: mean intensity of MNIST is about 33/255.
    assert 20 < d.train_x.mean() < 45


def test_fixed_split_disjoint_and_complete():
    labels = np.repeat(np.arange(3), [10, 7, 5])
    train, test = fixed_split(labels)
    assert len(np.intersect1d(train, test)) == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(22))
    assert np.array_equal(np.bincount(labels[test]), [2, 1, 1])


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_folder(tmp_path, gz):
    rng = np.random.default_rng(1)
    suffix = ".gz" if gz else ""
    files = {}
    for prefix, n in (("train", 6), ("t10k", 4)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(str(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}"), images)
        write_idx(str(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}"), labels)
        files[prefix] = images, labels
    d = load_dataset("mnist", str(tmp_path))
    assert np.array_equal(d.train_x[:, 0], files["train"][0])
    assert np.array_equal(d.test_y, files["t10k"][1].astype(np.int64))


def test_idx_errors(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    write_idx(str(path), np.zeros((2, 3, 3), np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    with pytest.raises(DatasetError, match="header says 18"):
        read_idx(str(path))
    path.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DatasetError, match="not an unsigned-byte IDX file"):
        read_idx(str(path))
    with pytest.raises(DatasetError, match="Missing dataset file"):
        load_dataset("mnist", str(tmp_path))


def _cifar_batch(path, n, rng):
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = list(rng.integers(0, 10, n))
    with open(path, "wb") as file:
        pickle.dump({b"data": data, b"labels": [int(v) for v in labels]}, file)
    return data, labels


def test_cifar10_folder(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = [_cifar_batch(folder / f"data_batch_{i}", 3, rng) for i in range(1, 6)]
    test = _cifar_batch(folder / "test_batch", 2, rng)
    d = load_dataset("cifar10", str(tmp_path))
    assert d.train_x.shape == (15, 3, 32, 32) and d.test_x.shape == (2, 3, 32, 32)
    # Row layout: 1024 red, then green, then blue values, each row-major 32x32.
    assert np.array_equal(d.train_x[4, 1].reshape(-1), batches[1][0][1][1024:2048])
    assert list(d.test_y) == test[1]
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="Cannot read CIFAR-10 batch"):
        load_dataset("cifar10", str(tmp_path))


def test_svhn_folder(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(3)
    expected = {}
    for name, n in (("train_32x32.mat", 4), ("test_32x32.mat", 3)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        scipy_io.savemat(str(tmp_path / name), {"X": x, "y": y})
        expected[name] = x, y
    d = load_dataset("svhn", str(tmp_path))
    x, y = expected["train_32x32.mat"]
    assert d.train_x.shape == (4, 3, 32, 32)
    assert np.array_equal(d.train_x[2, 1], x[:, :, 1, 2])
    assert np.array_equal(d.train_y, y[:, 0].astype(np.int64) % 10)


def test_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="Unknown dataset 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(DatasetError, match="pass --data-root"):
        load_dataset("cifar10")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("svhn", str(tmp_path / "nowhere"))


def test_sample_order_covers_the_classes_in_turn():
    """A split stored in class order (MNIST-5k's test split is) still gives every class in a small
    sample: COUNT images of `sample_order` hold each class COUNT // classes or one more times."""
    from sw.data import sample_order
    labels = np.repeat(np.arange(10), [30, 5, 20, 20, 20, 20, 20, 20, 20, 1])   # sorted, uneven classes
    order = sample_order(labels)
    assert sorted(order.tolist()) == list(range(len(labels)))          # a permutation
    assert np.array_equal(order, sample_order(labels))                 # fixed
    assert sorted(labels[order[:10]].tolist()) == list(range(10))
    counts = np.bincount(labels[order[:16]], minlength=10)
    assert counts.min() >= 1 and counts.max() <= 2
    # Once a class runs out the others continue in turn: class 9 has one image, class 1 five.
    assert np.bincount(labels[order[:50]], minlength=10)[[1, 9]].tolist() == [5, 1]
    data = load_dataset("mnist5k")
    assert len(set(data.test_y[sample_order(data.test_y)[:16]].tolist())) == 10
