"""erlib.data: the offline CIFAR-10 pack against its README, failure messages, datasets, and the batch sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from erlib import data as D

pytestmark = pytest.mark.usefixtures("one_thread")

try:
    PACK: Path | None = D.find_file(D.CIFAR10_PACK)
except FileNotFoundError:
    PACK = None
needs_pack = pytest.mark.skipif(PACK is None, reason=f"offline CIFAR-10 pack not found in {D.data_search_paths()}")

# the pack's README: per-channel means (/255) of the decoded uint8 arrays
README_MEAN = {"train": (0.4913, 0.4821, 0.4465), "test": (0.4941, 0.4851, 0.4504)}
README_STD = {"train": (0.2452, 0.2428, 0.2606), "test": (0.2448, 0.2422, 0.2606)}
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def cifar():
    return {split: D.load_cifar10_pack(split) for split in ("train", "test")}


# ------------------------------------------------------------------------------------------------------------------
# the offline pack
# ------------------------------------------------------------------------------------------------------------------


@needs_pack
@pytest.mark.parametrize("split, n", [("train", 50_000), ("test", 10_000)])
def test_pack_shapes_labels_and_statistics(cifar, split, n):
    ds = cifar[split]
    assert ds.images.shape == (n, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.shape == (n,) and ds.labels.dtype == torch.int64
    assert ds.classes == CLASSES
    assert torch.bincount(ds.labels, minlength=10).tolist() == [n // 10] * 10
    # exact per-channel moments from a histogram of the uint8 values (fast, no float copy of 150M values)
    v = torch.arange(256, dtype=torch.float64)
    hist = torch.stack([torch.bincount(ds.images[:, c].reshape(-1), minlength=256) for c in range(3)]).double()
    assert (hist.sum(dim=1) == n * 32 * 32).all()
    mean = (hist * v).sum(dim=1) / hist.sum(dim=1)
    var = (hist * (v - mean[:, None]) ** 2).sum(dim=1) / (hist.sum(dim=1) - 1)
    mean, std = mean / 255, var.sqrt() / 255
    assert torch.allclose(mean, torch.tensor(README_MEAN[split], dtype=torch.float64), atol=1e-3), mean
    assert torch.allclose(std, torch.tensor(README_STD[split], dtype=torch.float64), atol=1e-3), std


@needs_pack
def test_load_dataset_by_name_is_the_pack(cifar):
    ds = D.load_dataset("cifar10-jpeg75", "test")
    assert torch.equal(ds.images, cifar["test"].images) and torch.equal(ds.labels, cifar["test"].labels)


@needs_pack
def test_pack_split_must_be_train_or_test():
    with pytest.raises(ValueError, match="split"):
        D.load_cifar10_pack("validation")


@needs_pack
def test_subset_draws_from_every_class(cifar):
    # the pack is sorted by class: a subset that took the first n images would hold one class only
    assert cifar["train"].labels[:1000].unique().numel() == 1
    sub = cifar["train"].subset(1000, seed=3)
    assert len(sub) == 1000 and sub.images.shape == (1000, 3, 32, 32)
    counts = torch.bincount(sub.labels, minlength=10)
    assert (counts > 0).all()
    # multinomial(1000, 1/10): sd of a count is 9.5; every count within 5 sd of 100
    assert counts.min() >= 50 and counts.max() <= 150, counts
    # the subset's rows are rows of the dataset with their own labels (images and labels stay paired)
    idx = torch.randperm(50_000, generator=torch.Generator().manual_seed(3))[:1000]
    assert torch.equal(sub.images, cifar["train"].images[idx]) and torch.equal(sub.labels, cifar["train"].labels[idx])
    assert not torch.equal(cifar["train"].subset(1000, seed=4).labels, sub.labels)


def _corrupt_copy(tmp_path: Path, how: str) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    target = folder / D.CIFAR10_PACK
    raw = bytearray(PACK.read_bytes())
    if how == "flipped":
        raw[7_000_000] ^= 0xFF  # a byte inside train_scans.npy: the zip structure stays readable
    else:
        raw = raw[: len(raw) // 2]
    target.write_bytes(bytes(raw))
    return target


@needs_pack
@pytest.mark.parametrize("how", ["flipped", "truncated"])
def test_corrupt_pack_raises_value_error_naming_the_file(tmp_path, how):
    target = _corrupt_copy(tmp_path, how)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError) as info:
        D.load_cifar10_pack("test", data_dir=target.parent, cache_dir=cache)
    assert str(target) in str(info.value)
    # nothing was cached from the corrupt file
    assert not (cache / "test_x.npy").exists() and not (cache / "test_y.npy").exists()


def test_missing_pack_lists_every_path_tried(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setattr(D, "data_search_paths", lambda data_dir=None: [a, b])
    with pytest.raises(FileNotFoundError) as info:
        D.load_cifar10_pack("train", cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert str(a / D.CIFAR10_PACK) in message and str(b / D.CIFAR10_PACK) in message
    assert "ERLIB_DATA_DIR" in message and "\n" not in message  # says how to get the data, on one line


def test_data_dir_is_honoured_even_when_a_decoded_cache_exists(tmp_path):
    # the default cache may hold CIFAR-10 already: a data_dir without the data must still be an error
    with pytest.raises(FileNotFoundError, match=rf"data_dir {tmp_path} holds neither cifar10-jpeg75.npz nor a decoded"):
        D.load_cifar10_pack("test", data_dir=tmp_path)


@needs_pack
def test_data_dir_with_a_decoded_cache_is_used(tmp_path):
    ref = D.load_cifar10_pack("test")
    cache = tmp_path / "cifar10-jpeg75"
    cache.mkdir()
    np.save(cache / "test_x.npy", ref.images.permute(0, 2, 3, 1).numpy())
    np.save(cache / "test_y.npy", ref.labels.numpy())
    (cache / "classes.txt").write_text("\n".join(ref.classes) + "\n")
    assert torch.equal(D.load_cifar10_pack("test", data_dir=tmp_path).labels, ref.labels)
    labels = ref.labels.numpy().copy()
    labels[[0, -1]] = labels[[-1, 0]]  # two labels swapped: the pixels still match, the labels do not
    assert labels[0] != labels[-1]
    np.save(cache / "test_y.npy", labels)
    with pytest.raises(ValueError, match=r"decoded labels .*test_y.npy do not match the reference checksum"):
        D.load_cifar10_pack("test", data_dir=tmp_path)


def test_labels_outside_the_classes_are_refused():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\) for its 2 classes, got \[0, 255\]"):
        D.Dataset(torch.zeros(3, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 255]), ["a", "b"], "bad")


def test_cache_files_get_ordinary_permissions(tmp_path):
    import os
    import stat

    D._atomic_save_npy(tmp_path / "x.npy", np.zeros(3))
    (tmp_path / "plain.txt").write_text("x")
    assert stat.S_IMODE((tmp_path / "x.npy").stat().st_mode) == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_search_paths_order(tmp_path, monkeypatch):
    monkeypatch.setenv("ERLIB_DATA_DIR", str(tmp_path / "env"))
    paths = D.data_search_paths(tmp_path / "given")
    assert paths == [tmp_path / "given", tmp_path / "env", D.ROOT / "data" / "cache", D.ROOT.parent / "shared" / "data"]
    monkeypatch.delenv("ERLIB_DATA_DIR")
    assert D.data_search_paths() == [D.ROOT / "data" / "cache", D.ROOT.parent / "shared" / "data"]
    # the first existing file wins
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "x.bin").write_bytes(b"1")
    monkeypatch.setenv("ERLIB_DATA_DIR", str(tmp_path / "env"))
    assert D.find_file("x.bin", tmp_path / "given") == tmp_path / "env" / "x.bin"
    (tmp_path / "given").mkdir()
    (tmp_path / "given" / "x.bin").write_bytes(b"2")
    assert D.find_file("x.bin", tmp_path / "given") == tmp_path / "given" / "x.bin"


# ------------------------------------------------------------------------------------------------------------------
# datasets by name
# ------------------------------------------------------------------------------------------------------------------


def test_unknown_dataset_lists_the_allowed_names():
    with pytest.raises(ValueError) as info:
        D.load_dataset("imagenet-21k")
    for name in D.DATASETS:
        assert name in str(info.value)
    assert "imagenet-21k" in str(info.value)


def test_synthetic_dataset_is_uint8_balanced_and_seeded():
    ds = D.synthetic_dataset(n=120, num_classes=4, size=16, seed=5)
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (120, 3, 16, 16)
    assert ds.labels.dtype == torch.int64
    assert torch.bincount(ds.labels).tolist() == [30, 30, 30, 30]
    assert len(ds.classes) == 4
    assert ds.images.float().std() > 10  # not a constant image
    again = D.synthetic_dataset(n=120, num_classes=4, size=16, seed=5)
    assert torch.equal(again.images, ds.images)
    assert not torch.equal(D.synthetic_dataset(n=120, num_classes=4, size=16, seed=6).images, ds.images)
    # class means differ (the class sets the mean colour): the per-class mean images are not all equal
    means = torch.stack([ds.images[ds.labels == c].float().mean(dim=(0, 2, 3)) for c in range(4)])
    assert torch.cdist(means, means).triu(1)[torch.ones(4, 4).triu(1).bool()].min() > 1.0
    train, test = D.load_dataset("synthetic", "train"), D.load_dataset("synthetic", "test")
    assert len(train) == 512 and len(test) == 256 and not torch.equal(train.images[:256], test.images)


def test_dataset_validates_its_tensors():
    with pytest.raises(ValueError, match="uint8"):
        D.Dataset(torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.int64), ["a"], "x")
    with pytest.raises(ValueError, match="labels"):
        D.Dataset(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), ["a"], "x")


def _png(path: Path, size: tuple[int, int], colour: tuple[int, int, int], centre: tuple[int, int, int] | None = None):
    from PIL import Image

    w, h = size
    a = np.empty((h, w, 3), dtype=np.uint8)
    a[:] = colour
    if centre is not None:  # a border outside the centred square, `centre` inside it
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        a[top : top + side, left : left + side] = centre
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def test_image_folder_loads_sorted_classes_resized(tmp_path):
    # classes written in non-sorted order, images of different sizes
    _png(tmp_path / "train" / "zebra" / "a.png", (40, 20), (255, 0, 0), centre=(10, 200, 30))
    _png(tmp_path / "train" / "zebra" / "b.png", (16, 16), (0, 0, 255))
    _png(tmp_path / "train" / "zebra" / "c.png", (20, 50), (0, 255, 0), centre=(100, 100, 100))
    _png(tmp_path / "train" / "apple" / "a.png", (33, 33), (1, 2, 3))
    _png(tmp_path / "train" / "apple" / "b.png", (64, 48), (200, 150, 100))
    _png(tmp_path / "train" / "apple" / "c.png", (7, 9), (50, 60, 70))
    ds = D.load_dataset("imagefolder", "train", data_dir=tmp_path, image_size=16)
    assert ds.images.shape == (6, 3, 16, 16) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1] and ds.labels.dtype == torch.int64
    assert ds.classes == ["apple", "zebra"]
    # constant images stay constant after resizing; the centre square of the non-square ones is kept
    expected = [(1, 2, 3), (200, 150, 100), (50, 60, 70), (10, 200, 30), (0, 0, 255), (100, 100, 100)]
    for img, colour in zip(ds.images, expected):
        assert (img.int() - torch.tensor(colour)[:, None, None]).abs().max() <= 1, (img[:, 0, 0], colour)


def test_image_folder_classes_are_sorted_and_label_their_images(tmp_path):
    names = ["zebra", "kiwi", "apple", "mango", "cherry", "banana", "fig", "date"]
    for i, name in enumerate(names):  # class i's single image has the constant colour (10 i, 0, 0)
        _png(tmp_path / "train" / name / "img.png", (9 + i, 12), (10 * i, 0, 0))
    ds = D.load_dataset("imagefolder", "train", data_dir=tmp_path, image_size=8)
    assert ds.classes == sorted(names)
    assert ds.labels.tolist() == list(range(8))
    for img, label in zip(ds.images, ds.labels):
        assert int(img[0].float().mean().round()) == 10 * names.index(ds.classes[label])


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="needs data_dir"):
        D.load_dataset("imagefolder", "train")
    with pytest.raises(FileNotFoundError, match="ImageFolder split not found"):
        D.load_dataset("imagefolder", "val", data_dir=tmp_path)


def test_image_folder_labels_come_from_train_for_both_splits(tmp_path):
    for split, classes in (("train", ["cat", "dog", "eel"]), ("test", ["dog", "eel"])):
        for c in classes:
            _png(tmp_path / split / c / "0.png", (8, 8), (10 * ["cat", "dog", "eel"].index(c), 0, 0))
    (tmp_path / "train" / "aardvark").mkdir()  # an empty class folder must not shift the labels
    train_set = D.load_dataset("imagefolder", "train", data_dir=tmp_path, image_size=8)
    test_set = D.load_dataset("imagefolder", "test", data_dir=tmp_path, image_size=8)
    assert train_set.classes == test_set.classes == ["cat", "dog", "eel"]
    assert test_set.labels.tolist() == [1, 2]
    _png(tmp_path / "test" / "fox" / "0.png", (8, 8), (0, 0, 0))
    with pytest.raises(ValueError, match=r"test/ has classes that train/ lacks: \['fox'\]"):
        D.load_dataset("imagefolder", "test", data_dir=tmp_path, image_size=8)


def test_a_corrupt_image_is_named(tmp_path):
    _png(tmp_path / "train" / "a" / "ok.png", (8, 8), (0, 0, 0))
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"cannot decode image .*train/a/broken.png"):
        D.load_dataset("imagefolder", "train", data_dir=tmp_path, image_size=8)


# ------------------------------------------------------------------------------------------------------------------
# BatchSampler
# ------------------------------------------------------------------------------------------------------------------


def test_batch_sampler_epoch_is_a_permutation():
    n, bs = 103, 10
    s = D.BatchSampler(n, bs, seed=7)
    assert len(s) == 10
    batches = s.epoch(0)
    assert batches.shape == (10, 10) and batches.dtype == torch.int64
    flat = batches.flatten()
    assert flat.unique().numel() == len(s) * bs  # no repeats
    assert flat.min() >= 0 and flat.max() < n
    assert not torch.equal(flat, flat.sort().values)  # shuffled
    e1 = s.epoch(1)
    assert not torch.equal(e1, batches)
    assert torch.equal(D.BatchSampler(n, bs, seed=7).epoch(0), batches)
    assert torch.equal(s.epoch(1), e1)
    assert not torch.equal(D.BatchSampler(n, bs, seed=8).epoch(0), batches)
    # drop-last: over many epochs every index is used (the dropped 3 change from epoch to epoch)
    seen = torch.cat([s.epoch(e).flatten() for e in range(20)]).unique()
    assert seen.numel() == n


def test_batch_sampler_shards_recompose_the_global_batch():
    n, bs = 64, 16
    whole = D.BatchSampler(n, bs, seed=2).epoch(3)
    r0 = D.BatchSampler(n, bs, seed=2, rank=0, world_size=2).epoch(3)
    r1 = D.BatchSampler(n, bs, seed=2, rank=1, world_size=2).epoch(3)
    assert r0.shape == r1.shape == (4, 8)
    assert torch.equal(torch.cat([r0, r1], dim=1), whole)
    assert torch.cat([r0.flatten(), r1.flatten()]).unique().numel() == n  # disjoint shards


@pytest.mark.parametrize("n, bs, world", [(10, 1, 1), (10, 11, 1), (10, 5, 2), (10, 0, 1)])
def test_batch_sampler_rejects_bad_batch_sizes(n, bs, world):
    with pytest.raises(ValueError, match="batch_size"):
        D.BatchSampler(n, bs, world_size=world)


def test_batch_sampler_accepts_the_extremes():
    assert D.BatchSampler(10, 10).epoch(0).shape == (1, 10)
    assert D.BatchSampler(10, 2).epoch(0).shape == (5, 2)
