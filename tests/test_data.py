"""Tests for sacvit.data on tiny synthetic files written into tmp_path (no downloads)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_idx
from sacvit.data.splits import POOL_SPLITS, pool_positions, pool_split_sizes
from sacvit.data import (
    DATASET_NAMES,
    ClutteredFashionMNIST,
    DatasetNotFoundError,
    FashionMNIST,
    TensorImageDataset,
    build_dataset,
    build_imagefolder,
    load_fashion_mnist,
    materialize,
    read_idx,
)

def make_images(n: int, offset: int) -> np.ndarray:
    """``n`` dark 28x28 images, each with one large bright rectangle of its own size."""
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        k = (i + offset) % 4
        images[i, 3 + k : 25 - k, 5 + k : 23 - k] = 200 + i % 50
    return images


@pytest.fixture(scope="module")
def fmnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fmnist")
    write_idx(root / "train-images-idx3-ubyte.gz", make_images(20, 0))
    write_idx(root / "train-labels-idx1-ubyte.gz", np.arange(20, dtype=np.uint8) % 10)
    write_idx(root / "t10k-images-idx3-ubyte.gz", make_images(10, 1))
    write_idx(root / "t10k-labels-idx1-ubyte.gz", 9 - np.arange(10, dtype=np.uint8))
    return root


# --- idx reader and Fashion-MNIST loader ------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    images = make_images(3, 0)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.idx", images, compress)), images)
    ints = np.array([[1, -2, 70000], [3, 4, 5]], dtype=np.int32)
    out = read_idx(write_idx(tmp_path / "b.idx", ints, compress))
    assert out.dtype == np.int32 and np.array_equal(out, ints)


@pytest.mark.parametrize("damage", ["truncated_gz", "truncated_data", "bad_magic", "bad_type", "short_header"])
def test_read_idx_rejects_corrupt_file(tmp_path: Path, damage: str) -> None:
    data = struct.pack(">BBBBIII", 0, 0, 0x08, 3, 2, 28, 28) + make_images(2, 0).tobytes()
    path = tmp_path / f"{damage}.idx"
    payload = {
        "truncated_gz": gzip.compress(data)[:-30],
        "truncated_data": data[:-5],
        "bad_magic": b"\x08\x03" + data[2:],
        "bad_type": data[:2] + b"\x42" + data[3:],
        "short_header": data[:10],
    }[damage]
    path.write_bytes(payload)
    with pytest.raises(ValueError, match=str(path)):
        read_idx(path)


def test_load_fashion_mnist(fmnist_dir: Path) -> None:
    images, labels = load_fashion_mnist(fmnist_dir, "train")
    assert images.shape == (20, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [i % 10 for i in range(20)]
    assert load_fashion_mnist(fmnist_dir, "train")[0] is images  # cached
    test_images, test_labels = load_fashion_mnist(fmnist_dir, "val")
    assert test_images.shape == (10, 28, 28) and test_labels.tolist() == list(range(9, -1, -1))
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist(fmnist_dir, "dev")


def test_missing_dataset_says_how_to_install(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError, match="dataset-fashion-mnist") as info:
        load_fashion_mnist(missing, "train")
    assert isinstance(info.value, FileNotFoundError)
    assert str(missing) in str(info.value) and "--data-dir" in str(info.value)
    tmp_path.joinpath("partial").mkdir()
    write_idx(tmp_path / "partial" / "train-images-idx3-ubyte.gz", make_images(2, 0))
    with pytest.raises(DatasetNotFoundError, match="train-labels-idx1-ubyte"):
        load_fashion_mnist(tmp_path / "partial", "train")


def test_image_label_count_mismatch(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", make_images(3, 0))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(2, dtype=np.uint8))
    with pytest.raises(ValueError, match="3 images"):
        load_fashion_mnist(tmp_path, "train")


def test_plain_fashion_mnist(fmnist_dir: Path) -> None:
    ds = FashionMNIST(fmnist_dir, "train", img_size=32, length=7)
    image, label = ds[6]
    assert len(ds) == 7 and image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert label == 6 and len(ds.classes) == 10
    assert image.min() == -1.0 and image.max() > 0.5


# --- Cluttered Fashion-MNIST ------------------------------------------------------------


def test_cluttered_sample_format(fmnist_dir: Path) -> None:
    ds = ClutteredFashionMNIST(fmnist_dir, "train", img_size=96, canvas=96, scale=(40, 56))
    assert len(ds) == 20 and len(ds.classes) == 10
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.shape == (3, 96, 96) and image.dtype == torch.float32
        assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
        assert -1.0 <= image.min() and image.max() <= 1.0
        assert isinstance(label, int) and label == i % 10
    raw = ds.raw(0)
    assert raw.dtype == np.uint8 and raw.shape == (96, 96)
    assert torch.allclose(ds[0][0][0], torch.from_numpy(raw).float() / 127.5 - 1)
    assert len(ClutteredFashionMNIST(fmnist_dir, "train", img_size=96, canvas=96, scale=(40, 56), length=5)) == 5
    with pytest.raises(IndexError):
        ds[20]


def test_cluttered_is_deterministic(fmnist_dir: Path) -> None:
    kw = dict(img_size=64, canvas=64, scale=(24, 40))
    a, b = ClutteredFashionMNIST(fmnist_dir, **kw), ClutteredFashionMNIST(fmnist_dir, **kw)
    for i in (0, 7, 19):
        assert torch.equal(a[i][0], a[i][0]) and torch.equal(a[i][0], b[i][0])
        assert a.box(i) == b.box(i)
    other = ClutteredFashionMNIST(fmnist_dir, seed=1, **kw)
    assert any(not np.array_equal(a.raw(i), other.raw(i)) for i in range(5))
    assert not np.array_equal(a.raw(0), a.raw(10))  # same garment shape, different layout


def test_cluttered_box_locates_garment(fmnist_dir: Path) -> None:
    size = 96
    clean = ClutteredFashionMNIST(fmnist_dir, img_size=size, canvas=size, scale=(40, 64), num_clutter=0)
    for i in range(len(clean)):
        x0, y0, x1, y1 = clean.box(i)
        assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
        ys, xs = np.nonzero(clean.raw(i))
        # without clutter every lit pixel is in the box, and the box is tight
        assert x0 <= xs.min() <= x0 + 1 and x1 - 2 <= xs.max() < x1
        assert y0 <= ys.min() <= y0 + 1 and y1 - 2 <= ys.max() < y1
    cluttered = ClutteredFashionMNIST(
        fmnist_dir, img_size=size, canvas=size, scale=(40, 64), num_clutter=6, clutter_size=(4, 8)
    )
    outside = 0
    for i in range(len(cluttered)):
        x0, y0, x1, y1 = cluttered.box(i)
        bright = cluttered.raw(i) >= 128
        inside = bright[y0:y1, x0:x1].sum()
        assert inside > 0.5 * bright.sum()  # the garment holds most bright pixels
        outside += bright.sum() - inside
        assert np.array_equal(cluttered.raw(i)[y0:y1, x0:x1], clean.raw(i)[y0:y1, x0:x1])  # unoccluded
    assert outside > 0  # clutter exists


def test_clutter_comes_from_other_garments(tmp_path: Path) -> None:
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    images[0, 4:24, 4:24], images[1, 4:24, 4:24] = 100, 250
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([0, 1], dtype=np.uint8))
    ds = ClutteredFashionMNIST(tmp_path, img_size=64, canvas=64, scale=(28, 28), num_clutter=20)
    x0, y0, x1, y1 = ds.box(0)
    raw = ds.raw(0)
    raw[y0:y1, x0:x1] = 0
    assert set(np.unique(raw).tolist()) == {0, 250}  # fragments of garment 1 only


@pytest.mark.parametrize("n", [16, 20_000])
def test_pool_splits_partition_the_pool(n: int) -> None:
    """holdout / calibration / test: disjoint, together the whole pool, 20/40/40%, in random order."""
    parts = {s: pool_positions(n, s) for s in POOL_SPLITS}
    together = np.concatenate(list(parts.values()))
    assert sorted(together.tolist()) == list(range(n))
    assert {s: len(p) for s, p in parts.items()} == pool_split_sizes(n)
    if n == 20_000:
        assert pool_split_sizes(n) == {"holdout": 4000, "calibration": 8000, "test": 8000}
        # a random partition: the test split is not one end of the pool (training tail or test images)
        assert 0.4 < float(np.mean(parts["test"] < n // 2)) < 0.6
    assert all(np.array_equal(p, pool_positions(n, s)) for s, p in parts.items())  # fixed
    with pytest.raises(ValueError, match="pool"):
        pool_positions(n, "train")


def test_cluttered_splits_are_disjoint(fmnist_dir: Path) -> None:
    """train is the first training garments; holdout, calibration and test partition the rest
    of the training garments and the test garments."""
    kw = dict(img_size=64, canvas=64, scale=(24, 40), holdout=6)
    train = ClutteredFashionMNIST(fmnist_dir, "train", **kw)
    assert len(train) == 14 and [train[i][1] for i in range(14)] == [i % 10 for i in range(14)]
    pool = {s: ClutteredFashionMNIST(fmnist_dir, s, **kw) for s in POOL_SPLITS}
    sources = [i for ds in pool.values() for i in ds._src]
    assert sorted(sources) == list(range(14, 30))  # 6 training tail images, then the 10 test images
    labels = [i % 10 for i in range(20)] + list(range(9, -1, -1))  # the fixture's labels
    for ds in pool.values():
        assert [ds[i][1] for i in range(len(ds))] == [labels[j] for j in ds._src]
    assert {s: len(ds) for s, ds in pool.items()} == pool_split_sizes(16)
    # the fragments of a pool image come from pool garments, never from the training split
    for ds in pool.values():
        for i in range(len(ds)):
            assert all(j >= 14 for j, *_ in ds._layout(i)[1])
    only_test = ClutteredFashionMNIST(fmnist_dir, "test", **{**kw, "holdout": 0})
    assert all(j >= 20 for j in only_test._src)
    with pytest.raises(ValueError, match="split"):
        ClutteredFashionMNIST(fmnist_dir, "val")
    with pytest.raises(ValueError, match="holdout"):
        ClutteredFashionMNIST(fmnist_dir, "holdout", holdout=20)


def test_materialize_matches_getitem(fmnist_dir: Path) -> None:
    ds = ClutteredFashionMNIST(fmnist_dir, img_size=64, canvas=64, scale=(24, 40))
    images, labels = materialize(ds)
    assert images.shape == (20, 64, 64) and images.dtype == torch.uint8 and labels.dtype == torch.int64
    served = TensorImageDataset(images, labels, classes=ds.classes)
    assert len(served) == 20 and served.classes == ds.classes
    for i in range(20):
        image, label = served[i]
        assert torch.equal(image, ds[i][0]) and label == ds[i][1]
    sub_images, sub_labels = materialize(ds, [3, 5])
    assert torch.equal(sub_images[1], images[5]) and sub_labels.tolist() == [3, 5]
    plain = TensorImageDataset(images, labels, normalize=False)
    assert plain[0][0].max() <= 1.0 and plain[0][0].min() >= 0.0


def test_smaller_size_is_the_canvas_downsampled(fmnist_dir: Path) -> None:
    """img_size < canvas: the same layout, resized as SAC-ViT's EE stage resizes (batched or not)."""
    big = ClutteredFashionMNIST(fmnist_dir, img_size=64, canvas=64, scale=(24, 40))
    small = ClutteredFashionMNIST(fmnist_dir, img_size=32, canvas=64, scale=(24, 40))
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(big.raw(3))[None, None].float(), size=(32, 32), mode="bilinear", antialias=True
    )[0, 0].round().to(torch.uint8)
    assert torch.equal(torch.from_numpy(small.raw(3)), expected)
    images, _ = materialize(small)
    assert images.shape == (20, 32, 32)
    assert all(torch.equal(images[i], torch.from_numpy(small.raw(i))) for i in range(20))
    x0, y0, x1, y1 = big.box(3)
    assert small.box(3) == (x0 // 2, y0 // 2, -(-x1 // 2), -(-y1 // 2))
    with pytest.raises(ValueError, match="canvas"):
        ClutteredFashionMNIST(fmnist_dir, img_size=64, canvas=32, scale=(8, 16), clutter_size=(4, 8))


# --- image folders ----------------------------------------------------------------------


def write_png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((30, 40, 3), value, dtype=np.uint8)).save(path)


def test_imagefolder_loads(tmp_path: Path) -> None:
    for cls, value in (("cat", 50), ("dog", 200)):
        for k in range(2):
            write_png(tmp_path / "train" / cls / f"{k}.png", value)
    ds = build_imagefolder(tmp_path, "train", img_size=32)
    assert len(ds) == 4 and ds.classes == ["cat", "dog"]
    image, label = ds[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 1
    assert build_imagefolder(tmp_path, "train", img_size=24, is_training=True)[0][0].shape == (3, 24, 24)
    sub = build_dataset("imagefolder", tmp_path, "train", img_size=32, length=3)
    assert len(sub) == 3 and sub.classes == ["cat", "dog"]


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="nowhere"):
        build_imagefolder(tmp_path / "nowhere", "train", 32)
    with pytest.raises(DatasetNotFoundError, match="val"):
        build_imagefolder(tmp_path, "val", 32)
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="class sub-folders"):
        build_imagefolder(tmp_path, "train", 32)
    (tmp_path / "train" / "cat").mkdir()
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="no images") as info:
        build_imagefolder(tmp_path, "train", 32)
    assert not isinstance(info.value, FileNotFoundError)


def test_imagefolder_corrupt_image(tmp_path: Path) -> None:
    write_png(tmp_path / "val" / "cat" / "good.png", 90)
    bad = tmp_path / "val" / "cat" / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    ds = build_imagefolder(tmp_path, "val", 32)
    index = [Path(p).name for p, _ in ds.samples].index("bad.png")
    with pytest.raises(ValueError, match=f"cannot read image .*{bad.name}"):
        ds[index]


# --- factory ----------------------------------------------------------------------------


def test_build_dataset(fmnist_dir: Path) -> None:
    with pytest.raises(ValueError, match="cluttered-fmnist") as info:
        build_dataset("mnist-3d", fmnist_dir, "train", 32)
    assert all(name in str(info.value) for name in DATASET_NAMES)
    cluttered = build_dataset("cluttered-fmnist", fmnist_dir, "test", 64, length=4, seed=3)
    assert isinstance(cluttered, ClutteredFashionMNIST) and len(cluttered) == 4
    assert cluttered[0][0].shape == (3, 64, 64) and len(cluttered.classes) == 10
    plain = build_dataset("fmnist", fmnist_dir, "train", 28)
    assert plain[0][0].shape == (3, 28, 28) and len(plain.classes) == 10
    with pytest.raises(ValueError, match="--data-dir"):
        build_dataset("imagefolder", None, "train", 32)
