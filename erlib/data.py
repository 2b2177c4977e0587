"""Datasets as uint8 tensors that can live on the device, and a device-side random batch sampler.

Sources: the offline CIFAR-10 pack (``cifar10-jpeg75.npz``, real CIFAR-10 as JPEG q75; decoded once and cached as
``.npy`` under ``data/cache/``), torchvision's CIFAR-10 / CIFAR-100 / STL-10 (downloaded only with ``download=True``),
any ImageFolder (resized once), and a synthetic set for tests. Offline files are verified by checksum; a missing
dataset raises an error listing the paths tried and how to get the data.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from erlib.fileio import atomic_write, sha256_file

__all__ = [
    "Dataset",
    "DATASETS",
    "load_dataset",
    "data_search_paths",
    "find_file",
    "load_cifar10_pack",
    "synthetic_dataset",
    "BatchSampler",
    "CIFAR10_PACK",
]

ROOT = Path(__file__).resolve().parent.parent
CIFAR10_PACK = "cifar10-jpeg75.npz"
CIFAR10_PACK_SHA256 = "8e74744329acdbe697d13b183526fb8118762db295a5b115c82b0f051b71e6ca"
# first 16 hex digits of sha256(X.tobytes()) of the decoded uint8 arrays [N, 32, 32, 3] (the pack's README)
CIFAR10_DECODED_SHA256 = {"train": "bf3aabd52be912da", "test": "5a6aa8185204d80b"}
# first 16 hex digits of sha256 of the labels as uint8 [N] (computed from the pack, whose sha256 is checked)
CIFAR10_LABELS_SHA256 = {"train": "a29f2a5ffc141bb1", "test": "a054c239a40ee7f2"}
HOW_TO_GET_PACK = (
    "Copy the offline pack there (see data/README.md), set ERLIB_DATA_DIR, or use dataset='cifar10' "
    "with download=True where a network is available."
)


def _labels_digest(labels: np.ndarray) -> str:
    return hashlib.sha256(labels.astype(np.uint8).tobytes()).hexdigest()[:16]


@dataclass
class Dataset:
    """Images as uint8 [N, C, H, W], labels as int64 [N], on any device."""

    images: Tensor
    labels: Tensor
    classes: list[str]
    name: str

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be [N] with N = {self.images.shape[0]}, got {tuple(self.labels.shape)}")
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise ValueError(
                f"{self.name}: labels must lie in [0, {len(self.classes)}) for its {len(self.classes)} "
                f"classes, got [{int(self.labels.min())}, {int(self.labels.max())}]"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(self.images.to(device), self.labels.to(device), self.classes, self.name)

    def subset(self, n: int, seed: int = 0) -> Dataset:
        """A class-stratified-by-chance random subset of n images (the pack is sorted by class: never take [:n])."""
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].to(self.images.device)
        return Dataset(self.images[idx], self.labels[idx], self.classes, f"{self.name}[{n}]")


def data_search_paths(data_dir: str | Path | None = None) -> list[Path]:
    """Folders searched for offline files, in order: ``data_dir``, $ERLIB_DATA_DIR, data/cache/, ../shared/data/."""
    paths = [Path(data_dir)] if data_dir else []
    if os.environ.get("ERLIB_DATA_DIR"):
        paths.append(Path(os.environ["ERLIB_DATA_DIR"]))
    paths += [ROOT / "data" / "cache", ROOT.parent / "shared" / "data"]
    return paths


def find_file(filename: str, data_dir: str | Path | None = None, how_to_get: str = "") -> Path:
    """The first existing ``filename`` in :func:`data_search_paths`; FileNotFoundError listing every path tried."""
    tried = [p / filename for p in data_search_paths(data_dir)]
    for path in tried:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{filename} not found (tried {', '.join(str(p) for p in tried)}). {how_to_get}".rstrip())


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array))


def _decode_split(pack, split: str) -> np.ndarray:
    from PIL import Image

    header, scans, offsets = bytes(pack["jpeg_header"]), pack[f"{split}_scans"], pack[f"{split}_offsets"]
    out = np.empty((len(offsets) - 1, 32, 32, 3), dtype=np.uint8)
    for i in range(len(offsets) - 1):
        blob = header + scans[offsets[i] : offsets[i + 1]].tobytes()
        try:
            out[i] = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"image {i} of the {split} split of the pack cannot be decoded ({exc}); the pack is "
                "damaged: copy it again"
            ) from None
    return out


def _verified_pack(data_dir: str | Path | None) -> Path:
    """The pack's path (``data_dir`` only, when given), its sha256 checked before anything reads it."""
    if data_dir:
        path = Path(data_dir) / CIFAR10_PACK
        if not path.is_file():
            raise FileNotFoundError(
                f"data_dir {data_dir} holds neither {CIFAR10_PACK} nor a decoded cache "
                f"{Path(data_dir) / 'cifar10-jpeg75'}/; {HOW_TO_GET_PACK}"
            )
    else:
        path = find_file(CIFAR10_PACK, None, HOW_TO_GET_PACK)
    digest = sha256_file(path)
    if digest != CIFAR10_PACK_SHA256:
        raise ValueError(
            f"{path} is corrupt or not the CIFAR-10 pack: sha256 {digest[:16]}…, expected "
            f"{CIFAR10_PACK_SHA256[:16]}…; copy it again from the shared data folder"
        )
    return path


def _decode_pack_to_cache(split: str, path: Path, x_path: Path, y_path: Path, classes_path: Path) -> None:
    """Decode one split of the (verified) pack and cache it, atomically."""
    with np.load(path) as pack:
        images = _decode_split(pack, split)
        labels = pack[f"{split}_labels"].astype(np.int64)
        classes = [str(c) for c in pack["classes"]]
    if hashlib.sha256(images.tobytes()).hexdigest()[:16] != CIFAR10_DECODED_SHA256[split]:
        raise ValueError(
            f"decoding {path} ({split}) gave different pixels than the reference; check the Pillow/libjpeg installation"
        )
    _atomic_save_npy(x_path, images)
    _atomic_save_npy(y_path, labels)
    atomic_write(classes_path, lambda f: f.write(("\n".join(classes) + "\n").encode()))


def load_cifar10_pack(
    split: str = "train", data_dir: str | Path | None = None, cache_dir: str | Path | None = None
) -> Dataset:
    """CIFAR-10 (JPEG q75 copy) from the offline pack: checked by sha256, decoded once, cached as uint8 .npy.

    Once decoded, the cache alone suffices (a GPU node may carry only ``data/cache/cifar10-jpeg75/``). With
    ``data_dir``, only that folder is used: its decoded cache ``<data_dir>/cifar10-jpeg75/`` if present, else its pack
    (verified, then decoded into the default cache; the pixels are checked against the reference either way)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    cache = Path(cache_dir) if cache_dir else ROOT / "data" / "cache" / "cifar10-jpeg75"
    if data_dir and not cache_dir and (Path(data_dir) / "cifar10-jpeg75" / f"{split}_x.npy").is_file():
        cache = Path(data_dir) / "cifar10-jpeg75"
    elif data_dir and not cache_dir:
        _verified_pack(data_dir)  # the given folder must hold the data
    x_path, y_path, classes_path = cache / f"{split}_x.npy", cache / f"{split}_y.npy", cache / "classes.txt"
    if not (x_path.is_file() and y_path.is_file() and classes_path.is_file()):
        _decode_pack_to_cache(split, _verified_pack(data_dir), x_path, y_path, classes_path)
    try:
        images, labels = np.load(x_path), np.load(y_path)
        classes = classes_path.read_text().split()
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"the decoded cache {cache} is damaged ({exc}); delete that folder to decode the pack again"
        ) from exc
    if (
        images.shape != (len(labels), 32, 32, 3)
        or len(classes) != 10
        or hashlib.sha256(images.tobytes()).hexdigest()[:16] != CIFAR10_DECODED_SHA256[split]
    ):
        raise ValueError(
            f"the decoded cache {x_path} does not match the reference checksum; delete {cache} to decode the pack again"
        )
    if (
        labels.shape != (len(images),)
        or labels.min() < 0
        or labels.max() > 9
        or (_labels_digest(labels) != CIFAR10_LABELS_SHA256[split])
    ):
        raise ValueError(
            f"the decoded labels {y_path} do not match the reference checksum; delete {cache} to decode the pack again"
        )
    return Dataset(
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        torch.from_numpy(labels),
        classes,
        f"cifar10-jpeg75/{split}",
    )


def synthetic_dataset(n: int = 512, num_classes: int = 4, size: int = 32, seed: int = 0) -> Dataset:
    """Coloured noise images whose class sets the mean colour and a stripe orientation (learnable, for tests)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    palette = torch.rand(num_classes, 3, 1, 1, generator=g)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    stripes = torch.stack(
        [
            torch.sin((xx * np.cos(a) + yy * np.sin(a)) * 0.8)
            for a in torch.linspace(0, np.pi, num_classes + 1)[:-1].tolist()
        ]
    )
    img = 0.5 * palette[labels] + 0.3 * stripes[labels, None] + 0.25 * torch.rand(n, 3, size, size, generator=g)
    images = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return Dataset(images, labels, [f"class{c}" for c in range(num_classes)], f"synthetic{n}")


def _torchvision_dataset(name: str, split: str, data_dir: str | Path | None, download: bool) -> Dataset:
    import torchvision

    root = Path(data_dir) if data_dir else ROOT / "data" / "cache" / "torchvision"
    try:
        if name in ("cifar10", "cifar100"):
            cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
            ds = cls(str(root), train=split == "train", download=download)
            images, labels, classes = ds.data, np.asarray(ds.targets), list(ds.classes)
        else:  # stl10
            ds = torchvision.datasets.STL10(str(root), split=split, download=download)
            images, labels, classes = ds.data.transpose(0, 2, 3, 1), np.asarray(ds.labels), list(ds.classes)
    except RuntimeError as exc:
        raise FileNotFoundError(
            f"{name} ({split}) not found under {root}: {exc}. Pass download=True (--download) "
            f"where a network is available, or point data_dir at a torchvision copy"
            + ("; offline, use dataset='cifar10-jpeg75'" if name == "cifar10" else "")
        ) from exc
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    return Dataset(x, torch.from_numpy(labels.astype(np.int64)), classes, f"{name}/{split}")


IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


def _class_images(folder: Path) -> dict[str, list[Path]]:
    """Image files per class folder of ``folder`` (class folders without images are left out)."""
    out = {}
    for cls in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(f for f in cls.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        if files:
            out[cls.name] = files
    return out


def _image_folder(root: str | Path | None, split: str, size: int) -> Dataset:
    """An ImageFolder split, centre-cropped and resized once. The class map comes from ``train/`` for both splits
    (sorted names of the class folders that hold images), so labels mean the same in both; a test class that
    ``train/`` lacks is an error."""
    from PIL import Image

    if root is None:
        raise ValueError(
            "dataset='imagefolder' needs data_dir pointing at a folder with train/<class>/<image> and "
            "test/<class>/<image> files"
        )
    for part in ("train", split):
        if not (Path(root) / part).is_dir():
            raise FileNotFoundError(
                f"ImageFolder split not found: {Path(root) / part} (expected "
                f"{root}/train/<class>/<images> and {root}/test/<class>/<images>)"
            )
    train_classes = list(_class_images(Path(root) / "train"))
    if not train_classes:
        raise FileNotFoundError(f"no images under {Path(root) / 'train'}/<class>/")
    per_class = _class_images(Path(root) / split)
    unknown = sorted(set(per_class) - set(train_classes))
    if unknown:
        raise ValueError(
            f"ImageFolder {root}: {split}/ has classes that train/ lacks: {unknown}; every {split} class "
            "needs training images (the labels come from train/)"
        )
    if not per_class:
        raise FileNotFoundError(f"no images under {Path(root) / split}/<class>/")
    files = [(f, train_classes.index(cls)) for cls, fs in per_class.items() for f in fs]
    images = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, (f, _) in enumerate(files):
        try:
            img = Image.open(f).convert("RGB")
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot decode image {f} ({exc}); remove or replace it") from None
        side = min(img.size)  # centre square, then resize once: training crops come from this copy
        left, top = (img.width - side) // 2, (img.height - side) // 2
        images[i] = np.asarray(
            img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
        )
    return Dataset(
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        torch.tensor([c for _, c in files]),
        train_classes,
        f"imagefolder:{Path(root).name}/{split}",
    )


DATASETS = ("cifar10-jpeg75", "cifar10", "cifar100", "stl10", "imagefolder", "synthetic")


def load_dataset(
    name: str, split: str = "train", data_dir: str | Path | None = None, download: bool = False, image_size: int = 96
) -> Dataset:
    """A dataset by name (see :data:`DATASETS`); ``image_size`` only for ImageFolder."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    if name == "cifar10-jpeg75":
        return load_cifar10_pack(split, data_dir)
    if name == "synthetic":
        return synthetic_dataset(512 if split == "train" else 256, seed=0 if split == "train" else 1)
    if name == "imagefolder":
        return _image_folder(data_dir, split, image_size)
    return _torchvision_dataset(name, split, data_dir, download)


class BatchSampler:
    """Random batches of indices drawn on the device, a fresh permutation each epoch (drop-last).

    Under DDP each of the ``world_size`` ranks takes its contiguous shard of every *global* batch, so that the ranks
    together see exactly the global batch a single process would.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        device: torch.device | str = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 2 or batch_size > n:
            raise ValueError(f"batch_size must lie in [2, {n}] (dataset size), got {batch_size}")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} must be divisible by the number of processes {world_size}")
        self.n, self.batch_size, self.device, self.seed = n, batch_size, torch.device(device), seed
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return self.n // self.batch_size

    def epoch(self, epoch: int) -> Tensor:
        """All of this rank's index batches of ``epoch`` as one [steps, batch_size / world_size] tensor."""
        g = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.n, generator=g)[: len(self) * self.batch_size].to(self.device)
        local = self.batch_size // self.world_size
        return perm.view(len(self), self.world_size, local)[:, self.rank]
