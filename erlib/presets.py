"""Ready-made training configurations: ``tiny`` (CI and ``make demo``: minutes on a 2-core CPU), ``small`` (the
2-core CPU, long enough for the phenomena to show) and ``full`` (one GPU).

``tiny`` and ``small``: the tiny ConvNet with small heads, AdamW at lr 2e-3 with warm-up and cosine decay, batch 128;
``tiny`` trains 2,000 images of CIFAR-10 for 3 epochs (the mechanics; claims that need 10 epochs come out
INCONCLUSIVE), ``small`` 10,000 images for 10 epochs (780 optimiser steps). Their method options are the originals'
own knobs set for this scale (:func:`_cpu_options`). ``full``: ResNet-18 with the CIFAR stem on all of CIFAR-10,
batch 256, LARS with warm-up and cosine decay, per-method learning rates and heads from solo-learn's CIFAR recipes
(``vturrisi/solo-learn``, ``scripts/pretrain/cifar/*.yaml``), scaled linearly with the batch size; see
docs/design.md#presets.

The data: CIFAR-10 from the offline pack (its JPEG q75 copy) or its decoded cache where either is present; else
torchvision's CIFAR-10 from ``data/cache/torchvision`` (downloaded there when a network is reachable); only when
neither works, a small synthetic set, with a warning — every claim verdict is then INCONCLUSIVE
(:func:`preset_data`).

:func:`ensure_run` trains a configuration unless a finished run of the same name exists, so that later notebooks
(dynamics, evaluation) reuse the runs earlier ones produced.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from erlib import runs
from erlib.data import CIFAR10_PACK, ROOT, find_file, load_dataset
from erlib.runs import Run, load_run
from erlib.train import TrainConfig, train

__all__ = [
    "PRESETS",
    "PRESET_TABLE",
    "Preset",
    "TINY_HEADS",
    "preset_config",
    "spec_config",
    "default_runs_dir",
    "ensure_run",
    "run_action",
    "RUN_ACTIONS",
    "run_name",
    "preset_data",
    "PresetData",
    "SYNTHETIC_WARNING",
]

# solo-learn's CIFAR learning rates (LARS, batch 256) and weight decays; the CPU presets shrink the heads
_FULL_LR = {"simclr": 0.4, "deepcluster": 0.6, "swav": 0.6, "byol": 1.0, "dino": 0.3}
_FULL_WD = {"simclr": 1e-5, "deepcluster": 1e-6, "swav": 1e-6, "byol": 1e-5, "dino": 1e-6}
TINY_HEADS: dict[str, dict[str, Any]] = {
    "simclr": {"proj_hidden_dim": 256, "proj_dim": 64},
    "deepcluster": {"proj_hidden_dim": 256, "proj_dim": 64, "num_prototypes": (100, 100)},
    "swav": {"proj_hidden_dim": 256, "proj_dim": 64, "num_prototypes": 100},
    "byol": {"proj_hidden_dim": 256, "proj_dim": 64, "pred_hidden_dim": 256},
    "dino": {"hidden_dim": 256, "bottleneck_dim": 64, "out_dim": 256},
}
_FULL_HEADS = {"deepcluster": {"num_prototypes": (3000, 3000, 3000)}, "dino": {"tau_base": 0.9995}}


@dataclass(frozen=True)
class Preset:
    """A preset: the TrainConfig fields shared by every method, and per method its learning rate (at ``batch_size``;
    other batch sizes scale it linearly), weight decay and method options (heads, recipe knobs)."""

    name: str
    fields: dict
    lr: dict
    weight_decay: dict
    options: dict
    small_batch: int  # the "small batch" of the batch-size claims (C4, C9)


def _cpu_options(steps_per_epoch: int) -> dict[str, dict]:
    """The CPU presets' method options: the small heads plus the originals' own knobs, set where the tiny ConvNet
    needs them (measured on the development CPU, small preset, seed 0; docs/design.md#presets):

    * DINO: BatchNorm in the head's MLP (DINO's ``use_bn_in_head``) and a sharper teacher, τ_t = 0.025 throughout.
      Without the BatchNorm the embeddings of a tiny ConvNet start almost collapsed (mean cosine 0.94) and DINO ends in
      uniform collapse (monitor η 0.08, H(p_t) ≈ log K); with it but τ_t = 0.04 the teacher stays too flat
      (mean H(p_t) = 0.64 log K).
    * SwAV: Sinkhorn ε = 0.02 and the prototypes frozen for the first epoch — what SwAV's README advises when training
      collapses. At ε = 0.05 the codes stay almost uniform (H(q) ≈ 0.93 log K) and SwAV collapses (loss → log K).
    * SwAV-ER keeps the Sinkhorn codes as its targets (``keep_sinkhorn``): with the detached softmax as the target it
      collapses to uniform predictions at this scale (the marginal entropy is then maximal, the information zero).
    * DeepCluster-v2: three heads of 300 clusters, as the original's three heads (of 3000): two heads of 100 gained
      6.2 kNN points, three of 300 gained 8.2.
    """
    options = {m: dict(heads) for m, heads in TINY_HEADS.items()}
    options["dino"].update(use_bn_in_head=True, teacher_temp=0.025, teacher_temp_start=0.025)
    options["swav"].update(epsilon=0.02, freeze_prototypes_steps=steps_per_epoch, keep_sinkhorn=True)
    options["deepcluster"].update(num_prototypes=(300, 300, 300))
    return options


#: AdamW (Loshchilov & Hutter, 2019) for the CPU presets: with the tiny ConvNet it learns 1.5-2x as many kNN points in
#: 10 epochs as SGD (SimCLR +13.3 against +8.0 points at lr 0.3; development CPU, small preset's data and schedule).
CPU_LR, CPU_WEIGHT_DECAY = 2e-3, 1e-4


def _cpu_preset(
    name: str, train_subset: int, epochs: int, warmup_epochs: float, knn_test_size: int, small_batch: int
) -> Preset:
    """A CPU preset: the tiny ConvNet, batch 128 (and ``small_batch`` for the batch-size claims), AdamW with the CPU
    learning rate, a monitor batch of 256 and the CPU method options (:func:`_cpu_options`, set for
    ``train_subset // 128`` steps per epoch)."""
    batch = 128
    fields = dict(
        backbone="convnet_tiny",
        train_subset=train_subset,
        epochs=epochs,
        batch_size=batch,
        optimizer="adamw",
        warmup_epochs=warmup_epochs,
        knn_test_size=knn_test_size,
        monitor_size=256,
        log_every=5 if epochs < 5 else 10,
        progress=False,
    )
    return Preset(
        name,
        fields,
        lr={m: CPU_LR for m in TINY_HEADS},
        weight_decay={m: CPU_WEIGHT_DECAY for m in TINY_HEADS},
        options=_cpu_options(train_subset // batch),
        small_batch=small_batch,
    )


PRESET_TABLE: dict[str, Preset] = {
    # tiny halves the batch for C4 / C9 (twice the steps), small quarters it (four times): tiny's claims are
    # INCONCLUSIVE anyway (too short), and its small-batch runs are most of notebook 07's time
    "tiny": _cpu_preset("tiny", train_subset=2000, epochs=3, warmup_epochs=0.0, knn_test_size=1000, small_batch=64),
    "small": _cpu_preset("small", train_subset=10000, epochs=10, warmup_epochs=1.0, knn_test_size=2000, small_batch=32),
    "full": Preset(
        "full",
        dict(
            backbone="resnet18_cifar",
            epochs=100,
            batch_size=256,
            optimizer="lars",
            min_lr=0.0,
            warmup_epochs=10.0,
            monitor_size=512,
            log_every=50,
            progress=True,
        ),
        lr=_FULL_LR,
        weight_decay=_FULL_WD,
        options=_FULL_HEADS,
        small_batch=64,
    ),
}
PRESETS = tuple(PRESET_TABLE)


@dataclass(frozen=True)
class PresetData:
    """Where the presets' images come from: ``dataset`` (a :data:`erlib.data.DATASETS` name), whether it is real
    CIFAR-10, and a sentence for the reader."""

    dataset: str
    real: bool
    note: str


SYNTHETIC_WARNING = (
    "No CIFAR-10 was found (no offline pack or decoded cache, no torchvision copy, no network to "
    "download one): these runs use a small SYNTHETIC data set (512 images, 4 classes). They show the "
    "mechanics only; every claim verdict is INCONCLUSIVE. Put cifar10-jpeg75.npz in data/cache/ "
    "(see data/README.md) or run once with a network."
)


def _pack_available() -> bool:
    cache = ROOT / "data" / "cache" / "cifar10-jpeg75"
    if all((cache / f).is_file() for f in ("train_x.npy", "train_y.npy", "test_x.npy", "test_y.npy", "classes.txt")):
        return True
    try:
        find_file(CIFAR10_PACK)
        return True
    except FileNotFoundError:
        return False


def _torchvision_cifar10(download: bool) -> bool:
    import socket

    timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)  # a closed network must fail fast, not hang a notebook
    try:
        load_dataset("cifar10", "test", download=download)
        return True
    except (OSError, RuntimeError, ValueError):
        return False
    finally:
        socket.setdefaulttimeout(timeout)


@functools.lru_cache(maxsize=1)
def preset_data() -> PresetData:
    """The data the presets train on (decided once per process): the offline CIFAR-10 pack or its decoded cache;
    else torchvision's CIFAR-10, downloaded into data/cache/torchvision when a network is reachable; else the
    synthetic set, with a warning."""
    if _pack_available():
        return PresetData("cifar10-jpeg75", True, "CIFAR-10 (JPEG q75 copy, the offline pack)")
    if _torchvision_cifar10(download=False) or _torchvision_cifar10(download=True):
        return PresetData("cifar10", True, "CIFAR-10 (torchvision copy in data/cache/torchvision)")
    warnings.warn(SYNTHETIC_WARNING, stacklevel=2)
    return PresetData("synthetic", False, "SYNTHETIC stand-in data (512 images, 4 classes): mechanics only")


def run_name(method: str, er: bool, tag: str = "") -> str:
    """``byol-er``, ``dino@no-centering``: the run folder name a notebook uses for a configuration."""
    return f"{method}{'-er' if er else ''}" + (f"@{tag}" if tag else "")


def default_runs_dir(preset: str, seed: int = 0, root: str | Path = "runs/notebook-runs") -> str:
    """Where the notebooks and ``python -m erlib claims`` keep a preset's runs: ``<root>/<preset>`` for seed 0,
    ``<root>/<preset>-seed<k>`` otherwise (so that runs of different seeds never replace each other)."""
    return str(Path(root) / (preset if seed == 0 else f"{preset}-seed{seed}"))


def preset_config(
    preset: str,
    method: str,
    er: bool = False,
    tag: str = "",
    runs_dir: str = "runs/notebook-runs",
    method_options: dict | None = None,
    **overrides,
) -> TrainConfig:
    """The :class:`~erlib.config.TrainConfig` of ``method`` (and its ER variant) in a preset; ``overrides`` win
    (a ``batch_size`` override scales the preset's learning rate linearly unless ``lr`` is given too)."""
    if preset not in PRESET_TABLE:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    if method not in TINY_HEADS:
        raise ValueError(f"method must be one of {sorted(TINY_HEADS)}, got {method!r}")
    p, data = PRESET_TABLE[preset], preset_data()
    base = {**p.fields, "dataset": data.dataset, "weight_decay": p.weight_decay[method]}
    batch = overrides.get("batch_size", base["batch_size"])
    base["lr"] = p.lr[method] * batch / base["batch_size"]
    options = {**p.options.get(method, {}), **(method_options or {})}
    if not data.real:  # the synthetic stand-in has 512 training and 256 test images
        base.update(train_subset=0, knn_test_size=0, monitor_size=min(base["monitor_size"], 256))
    fields = {**base, **overrides}
    fields["warmup_epochs"] = min(fields["warmup_epochs"], fields["epochs"])
    return TrainConfig(
        method=method, er=er, method_options=options, out_dir=str(runs_dir), name=run_name(method, er, tag), **fields
    ).validate()


def spec_config(
    preset: str, spec, runs_dir: str | Path = "runs/notebook-runs", seed: int = 0, **overrides
) -> TrainConfig:
    """The config of a claim's run (:class:`erlib.claims.RunSpec`) in a preset, named by its role: its method options
    on top of the preset's, and for ``batch="small"`` the preset's small batch with the learning rate scaled."""
    if spec.batch == "small":
        overrides.setdefault("batch_size", PRESET_TABLE[preset].small_batch)
    cfg = preset_config(
        preset,
        spec.method,
        er=spec.er,
        runs_dir=str(runs_dir),
        method_options=spec.method_options,
        seed=seed,
        **overrides,
    )
    return dataclasses.replace(cfg, name=spec.name).validate()


def ensure_run(cfg: TrainConfig, callback: Callable[[dict], None] | None = None, wait: bool = True) -> Run:
    """The finished run of ``cfg``: reused when its folder holds a finished run of the same configuration and record
    format, resumed when such a run was interrupted, trained afresh otherwise (a folder with another configuration or
    an older format is cleared first).

    While another live process trains the same folder (two notebooks of a series run side by side, or the same
    notebook open twice), ``wait=True`` blocks until it is done and then reuses its run; ``wait=False`` raises
    :class:`erlib.runs.RunInUseError` instead."""
    path = Path(cfg.out_dir) / cfg.name
    while True:
        if wait:
            runs.wait_while_in_use(path)
        try:
            return _reuse_resume_or_train(cfg, path, callback)
        except runs.RunInUseError:  # claimed by another process between our look and our lock
            if not wait:
                raise


#: what :func:`ensure_run` does with a run folder (:func:`run_action`)
RUN_ACTIONS = ("reuse", "resume", "train", "retrain")


def run_action(cfg: TrainConfig) -> tuple[str, int]:
    """What :func:`ensure_run` would do with ``cfg``'s folder, without doing it, and the epochs it would train:
    ``("reuse", 0)`` for a finished run of the same configuration and record format, ``("resume", epochs left)`` for
    an interrupted one, ``("train", cfg.epochs)`` for an empty folder, ``("retrain", cfg.epochs)`` for a folder
    holding another configuration or format (cleared first)."""
    action, _, done = _existing_run(cfg, Path(cfg.out_dir) / cfg.name)
    return action, cfg.epochs - done


def _existing_run(cfg: TrainConfig, path: Path) -> tuple[str, Run | None, int]:
    """(the action of :data:`RUN_ACTIONS`, the run found when it is reused or resumed, its epochs done)."""
    if not runs.holds_run(path):
        return "train", None, 0
    run = load_run(path) if (path / "config.json").is_file() else None
    if (
        run is None
        or run.meta.get("format") != runs.FORMAT
        or [k for k in cfg.differences(run.config) if k in runs.COMPARED_AT_RESUME]
    ):
        return "retrain", None, 0
    done = int(runs.load_checkpoint(run.checkpoint)["epoch"]) if run.checkpoint.is_file() else 0
    return ("reuse" if done == cfg.epochs else "resume"), run, done


def _reuse_resume_or_train(cfg: TrainConfig, path: Path, callback: Callable[[dict], None] | None) -> Run:
    action, run, _ = _existing_run(cfg, path)
    if action == "reuse" and run is not None:
        return run
    if action == "resume":
        return load_run(train(cfg, resume=True, callback=callback))
    if action == "retrain":
        runs.remove_run(path)  # another configuration or format: start afresh
    return load_run(train(dataclasses.replace(cfg), callback=callback))
