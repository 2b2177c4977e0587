"""``TrainConfig``: the one dataclass behind ``config.json``, the command-line flags and the notebooks' parameters.

Every field carries its help text and its group in the dataclass metadata, so that ``python -m erlib train --help``
and the documentation are generated from the same place. :meth:`TrainConfig.validate` checks every field before any
work starts; :meth:`TrainConfig.check_data` checks the fields that depend on the dataset's size, once it is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from erlib import distributed as D
from erlib.augment import ShardedGenerator, ViewRecipe, make_views, recipe_views
from erlib.data import DATASETS, Dataset, load_dataset
from erlib.methods import METHODS, Method, build, config_for
from erlib.nn import BACKBONES

__all__ = [
    "TrainConfig",
    "OPTIMIZERS",
    "PRECISIONS",
    "AUGMENTATIONS",
    "GROUPS",
    "MULTI_CROP_METHODS",
    "RUN_NAME_PATTERN",
    "MONITOR_SEED",
    "MONITOR_VIEW_SEED",
]

OPTIMIZERS = ("sgd", "lars", "adamw")
PRECISIONS = ("auto", "bf16", "fp32")
AUGMENTATIONS = ("", "simclr", "byol")
#: The methods whose loss uses small crops (multi-crop); the others only read the two global views.
MULTI_CROP_METHODS = ("deepcluster", "swav", "dino")
#: A run name is one path component: letters, digits and ``._@+=,-``, not starting with a dot.
RUN_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+=,-]*")
#: Argument groups of ``train --help``, in order.
GROUPS = ("data", "model and method", "optimisation", "schedules", "evaluation", "run")


def _f(default: Any, group: str, help: str, choices: tuple | None = None, factory: Any = None) -> Any:
    metadata = {"group": group, "help": help, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


#: Seeds of the fixed monitor batch: which training images (:meth:`TrainConfig.monitor_views`) and their augmentation.
MONITOR_SEED, MONITOR_VIEW_SEED = 12345, 2024


@dataclass
class TrainConfig:
    """Everything a run needs; :meth:`validate` names the first bad field and its allowed values."""

    # data
    dataset: str = _f(
        "cifar10-jpeg75",
        "data",
        "cifar10-jpeg75: the offline CIFAR-10 pack (JPEG q75 copy, see "
        "data/README.md); cifar10 / cifar100 / stl10 through torchvision (--download where a network is "
        "available); imagefolder: --data-dir with train/ and test/ class folders; synthetic: tests",
        DATASETS,
    )
    data_dir: str = _f(
        "",
        "data",
        "folder that holds the dataset (the pack, a torchvision copy or the ImageFolder "
        "root); searched first, and only there when given",
    )
    download: bool = _f(False, "data", "let torchvision download cifar10 / cifar100 / stl10 (needs a network)")
    train_subset: int = _f(
        0,
        "data",
        "train on a random subset of this many images (0 = all); the CPU presets use 2,000 (tiny) and 10,000 (small)",
    )
    augmentation: str = _f(
        "",
        "data",
        "view recipe: simclr (symmetric: strong colour jitter) or byol (asymmetric: "
        "blur 1.0 / 0.1, solarisation 0 / 0.2); empty = the method's own (byol for BYOL and DINO)",
        AUGMENTATIONS,
    )
    local_crops: int = _f(
        0,
        "data",
        "multi-crop: number of extra small crops (SwAV, DINO, DeepCluster-v2 only; SwAV and DINO use 6-10 on ImageNet)",
    )
    # model and method
    method: str = _f(
        "simclr",
        "model and method",
        "the self-supervised method (python -m erlib methods lists them with their options)",
        tuple(METHODS),
    )
    er: bool = _f(False, "model and method", "train the method's ER variant (the entropy + reconstruction objective)")
    method_options: dict = _f(
        None,
        "model and method",
        "method options, e.g. --opt tau_base=0.9 (repeatable); "
        "python -m erlib methods NAME lists every option with its default",
        factory=dict,
    )
    backbone: str = _f(
        "resnet18_cifar",
        "model and method",
        "the encoder; *_cifar variants use a 3x3 stride-1 stem "
        "without max-pool (the usual choice for 32 px images); convnet_tiny for CPU teaching runs",
        tuple(BACKBONES),
    )
    # optimisation
    epochs: int = _f(100, "optimisation", "training epochs (lightly's CIFAR-10 benchmark: 200; solo-learn: 1000)")
    batch_size: int = _f(
        256,
        "optimisation",
        "global batch size (split over the processes under torchrun); the "
        "batch-level estimators and losses see all of it",
    )
    optimizer: str = _f(
        "lars",
        "optimisation",
        "lars (SimCLR, BYOL, SwAV recipes; adaptive per-layer rate, no "
        "decay or adaptation on biases and norms), sgd (DINO with ResNets), adamw "
        "(DINO with ViTs; the CPU presets, where it learns fastest)",
        OPTIMIZERS,
    )
    lr: float = _f(
        0.3,
        "optimisation",
        "peak learning rate after warm-up; scale it with the batch: lr = base x batch "
        "/ 256 (solo-learn CIFAR bases with LARS: SimCLR 0.4, BYOL 1.0, SwAV 0.6, DINO 0.3; "
        "--preset full sets them)",
    )
    min_lr: float = _f(0.0, "optimisation", "learning rate at the end of the cosine decay (SwAV: lr x 1e-3)")
    weight_decay: float = _f(
        1e-5,
        "optimisation",
        "weight decay on weights (not biases or norms); CIFAR recipes "
        "use 1e-6 (SwAV, DeepCluster, DINO) to 1e-5 (SimCLR, BYOL); DINO ViT 0.04",
    )
    final_weight_decay: float | None = _f(
        None,
        "optimisation",
        "if set, the weight decay follows a cosine from "
        "--weight-decay to this value (DINO ViT: 0.04 -> 0.4); unset = constant",
    )
    momentum: float = _f(0.9, "optimisation", "momentum of SGD and LARS (beta1 is not affected for adamw)")
    grad_clip: float = _f(0.0, "optimisation", "clip the global gradient norm to this value; 0 = off (DINO: 3.0)")
    # schedules
    warmup_epochs: float = _f(
        10.0,
        "schedules",
        "linear learning-rate warm-up, in epochs (10 in the SimCLR, BYOL, "
        "SwAV recipes; shorten it for short runs); then cosine decay to --min-lr",
    )
    # evaluation
    log_every: int = _f(50, "evaluation", "optimiser steps between training-batch metric records")
    monitor_size: int = _f(
        512,
        "evaluation",
        "size of the fixed monitor batch whose ER metrics are logged once per "
        "epoch: entropy estimates are capped at log k, so curves are comparable only at a fixed k",
    )
    knn_k: int = _f(
        200,
        "evaluation",
        "neighbours of the weighted kNN accuracy logged per epoch (200 as in "
        "InstDisc / MoCo / lightly; k = 20 is logged too)",
    )
    knn_temperature: float = _f(0.1, "evaluation", "temperature t of the kNN vote weights exp(cos / t)")
    knn_every: int = _f(
        1, "evaluation", "epochs between kNN evaluations, at epoch 0 and the last epoch too (0 = never)"
    )
    knn_train_size: int = _f(0, "evaluation", "training images in the kNN bank (0 = all)")
    knn_test_size: int = _f(0, "evaluation", "test images evaluated by kNN (0 = all)")
    # run
    seed: int = _f(0, "run", "seed of the weights, the batches and the views")
    precision: str = _f(
        "auto",
        "run",
        "auto: bf16 autocast on CUDA, and on the CPU whichever is fastest on this "
        "machine; losses and estimators always run in float32",
        PRECISIONS,
    )
    channels_last: bool = _f(True, "run", "channels-last memory layout for the backbone where it is faster")
    compile: bool = _f(False, "run", "torch.compile the training step (pays on GPUs over long runs)")
    device: str = _f("auto", "run", "auto (CUDA when available), cpu, cuda or cuda:N")
    checkpoint_every: int = _f(1, "run", "epochs between checkpoints (0 = only at the end)")
    out_dir: str = _f("runs", "run", "folder that holds the run folders")
    name: str = _f("", "run", "run folder name (letters, digits, ._@+=,-); empty = <method>[-er]-<timestamp>-<id>")
    progress: bool = _f(True, "run", "show a progress bar")

    # ---------------------------------------------------------------------------------------------------------------
    @classmethod
    def field_info(cls) -> list[dataclasses.Field]:
        """The dataclass fields, with ``metadata["group"]``, ``["help"]`` and ``["choices"]``."""
        return list(dataclasses.fields(cls))

    def _bad(self, name: str, allowed: str) -> ValueError:
        return ValueError(f"TrainConfig.{name} = {getattr(self, name)!r} is invalid: {allowed}")

    def validate(self) -> TrainConfig:
        """Check every field (types, ranges, choices, method options); return ``self``."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices is not None and getattr(self, f.name) not in choices:
                raise self._bad(f.name, f"must be one of {choices}")
        ints = {
            "epochs": 1,
            "batch_size": 2,
            "log_every": 1,
            "monitor_size": 2,
            "knn_k": 1,
            "train_subset": 0,
            "local_crops": 0,
            "knn_every": 0,
            "knn_train_size": 0,
            "knn_test_size": 0,
            "checkpoint_every": 0,
            "seed": 0,
        }
        for name, low in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise self._bad(name, f"must be an integer >= {low}")
        for name in ("batch_size", "monitor_size"):
            if getattr(self, name) % D.world_size():
                raise self._bad(name, f"must be divisible by the number of processes ({D.world_size()})")
        positives = ("lr", "knn_temperature")
        non_negatives = ("min_lr", "weight_decay", "warmup_epochs", "grad_clip")
        for name in positives + non_negatives + ("momentum",):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or (value <= 0 if name in positives else value < 0)
            ):
                raise self._bad(name, "must be a finite number " + ("> 0" if name in positives else ">= 0"))
        fwd = self.final_weight_decay
        if fwd is not None and (
            isinstance(fwd, bool) or not isinstance(fwd, (int, float)) or not math.isfinite(fwd) or fwd < 0
        ):
            raise self._bad("final_weight_decay", "must be unset (None) or a finite number >= 0")
        if not self.momentum < 1:
            raise self._bad("momentum", "must lie in [0, 1)")
        if self.warmup_epochs > self.epochs:
            raise self._bad("warmup_epochs", f"must not exceed epochs ({self.epochs})")
        if self.min_lr > self.lr:
            raise self._bad("min_lr", f"must not exceed lr ({self.lr})")
        if self.train_subset and self.train_subset < self.batch_size:
            raise self._bad("train_subset", f"must be 0 or at least batch_size ({self.batch_size})")
        if self.local_crops and self.method not in MULTI_CROP_METHODS:
            raise self._bad(
                "local_crops",
                f"must be 0 for {self.method}: only {MULTI_CROP_METHODS} use small crops "
                "(the others would compute them and throw them away)",
            )
        for name in ("data_dir", "out_dir", "name"):
            if not isinstance(getattr(self, name), str):
                raise self._bad(name, "must be a string")
        if self.name and (not RUN_NAME_PATTERN.fullmatch(self.name) or self.name in (".", "..")):
            raise self._bad(
                "name",
                "must be a single folder name (letters, digits and ._@+=,- ; no '/', no leading "
                "dot): the run folder is always created inside out_dir",
            )
        if not isinstance(self.method_options, dict):
            raise self._bad("method_options", "must be a dict of method config fields")
        reserved = {"er", "backbone"} & set(self.method_options)
        if reserved:
            raise self._bad(
                "method_options", f"set {sorted(reserved)} with the top-level fields, not in method_options"
            )
        if self.device not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", self.device):
            raise self._bad("device", "must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        config_for(self.method, er=self.er, backbone=self.backbone, **self.method_extras(100_000))
        return self

    def check_data(self, n_train: int, n_test: int) -> None:
        """The fields that depend on the data: ``n_train`` images before ``train_subset``, ``n_test`` test images."""
        if self.train_subset > n_train:
            raise self._bad("train_subset", f"exceeds the {n_train} training images of {self.dataset}")
        n = self.train_subset or n_train
        for name, limit, what in (
            ("batch_size", n, "training images"),
            ("monitor_size", n, "training images"),
            ("knn_train_size", n, "training images"),
            ("knn_test_size", n_test, "test images"),
        ):
            if getattr(self, name) > limit:
                raise self._bad(name, f"exceeds the {limit} {what} of this run; lower it")
        bank = self.knn_train_size or n
        if self.knn_every and self.knn_k > bank:
            raise self._bad("knn_k", f"exceeds the {bank} images of the kNN bank; lower it")

    def load_datasets(self) -> tuple[Dataset, Dataset]:
        """The training set (its ``train_subset``, drawn with the run's seed) and the test set, on the CPU, after
        :meth:`check_data`."""
        data_dir = self.data_dir or None
        train_set = load_dataset(self.dataset, "train", data_dir, self.download)
        test_set = load_dataset(self.dataset, "test", data_dir, self.download)
        self.check_data(len(train_set), len(test_set))
        if self.train_subset:
            train_set = train_set.subset(self.train_subset, seed=self.seed)
        return train_set, test_set

    def view_recipes(self, image_size: int) -> list[ViewRecipe]:
        """The views every step makes: the ``augmentation`` recipe (default: BYOL's asymmetric one for BYOL and DINO,
        SimCLR's otherwise) at the images' size, with ``local_crops`` small crops."""
        name = self.augmentation or ("byol" if self.method in ("byol", "dino") else "simclr")
        return recipe_views(name, size=image_size, local_crops=self.local_crops)

    def monitor_views(self, train_set: Dataset, rank: int = 0, world: int = 1) -> tuple[Tensor, list[Tensor]]:
        """The fixed monitor batch: ``monitor_size`` training images drawn with seed :data:`MONITOR_SEED`, and their
        two global views drawn with seed :data:`MONITOR_VIEW_SEED` — the same images and augmentations after every
        epoch, so entropy curves are comparable across epochs and runs. Under DDP (``world`` > 1) each rank gets its
        shard of the indices and of the views. Returns (indices on the images' device, views)."""
        device = train_set.images.device
        idx = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(MONITOR_SEED))
        idx = idx[: self.monitor_size].to(device).view(world, -1)[rank]
        gen = ShardedGenerator(torch.Generator(device=device).manual_seed(MONITOR_VIEW_SEED), rank, world)
        recipes = self.view_recipes(train_set.images.shape[-1])[:2]
        return idx, make_views(train_set.images[idx], recipes, gen)

    def build_method(self, num_samples: int) -> Method:
        """The method this config describes (fresh weights); ``num_samples`` is the training-set size."""
        return build(self.method, er=self.er, backbone=self.backbone, **self.method_extras(num_samples))

    def method_extras(self, num_samples: int) -> dict:
        """The method options, plus DeepCluster-v2's memory-bank size (one row per training image)."""
        extras = dict(self.method_options)
        if self.method == "deepcluster":
            extras.setdefault("num_samples", num_samples)
        return extras

    def run_label(self) -> str:
        return f"{self.method}{'-er' if self.er else ''}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """A config from a dict (e.g. config.json); unknown fields raise a ValueError listing the allowed ones."""
        if not isinstance(data, dict):
            raise ValueError(f"a TrainConfig is a JSON object of fields, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; allowed: {names}")
        return cls(**data)

    def differences(self, other: TrainConfig | dict) -> list[str]:
        """Names of the fields whose values differ from ``other`` (compared as JSON values: tuples equal lists)."""
        mine = json.loads(self.to_json())
        theirs = json.loads(json.dumps(other.to_dict() if isinstance(other, TrainConfig) else other))
        return sorted(k for k in set(mine) | set(theirs) if mine.get(k, _MISSING) != theirs.get(k, _MISSING))


_MISSING = object()
