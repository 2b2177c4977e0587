"""The training engine: ``TrainConfig`` (one dataclass behind JSON, CLI flags and papermill parameters) and ``train``.

One step: index a random batch of the device-resident uint8 dataset → batched per-sample views on the device →
method forward under bf16 autocast (CUDA) → loss backward → optimiser step with warm-up + cosine lr and weight-decay
schedules → ``method.update(progress)`` (EMA, prototypes). Metrics stay on the device and are read once per logging
interval (no host synchronisation inside the step). Every epoch: the ER metrics on a fixed monitor batch, kNN accuracy
on the test set, an atomic checkpoint. ``train(cfg, resume=True)`` continues a killed run from its last checkpoint.
Under ``torchrun`` each rank draws its shard of every global batch and rank 0 logs and checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from erlib import distributed as D
from erlib.augment import ShardedGenerator, ViewRecipe, make_views, recipe_views
from erlib.data import DATASETS, BatchSampler, Dataset, load_dataset
from erlib.evaluate import extract_features, knn_accuracy
from erlib.methods import METHODS, Method, build, config_for
from erlib.nn import BACKBONES, convert_to_global_batchnorm
from erlib.runs import append_jsonl, atomic_torch_save, load_checkpoint
from erlib.schedules import cosine_schedule, warmup_cosine

__all__ = ["TrainConfig", "train", "train_step", "MetricAccumulator", "LARS", "build_optimizer", "OPTIMIZERS"]

OPTIMIZERS = ("sgd", "lars", "adamw")


@dataclass
class TrainConfig:
    """Everything a run needs; :meth:`validate` names the first bad field and its allowed values."""

    method: str = "simclr"
    er: bool = False
    method_options: dict = field(default_factory=dict)  # any field of the method's config, e.g. {"tau_base": 0.9}
    backbone: str = "resnet18_cifar"
    dataset: str = "cifar10-jpeg75"
    data_dir: str = ""
    download: bool = False
    train_subset: int = 0  # train on a random subset of this many images (0 = all)
    augmentation: str = ""  # "simclr" | "byol"; "" = the method's own (byol for BYOL and DINO)
    local_crops: int = 0  # multi-crop: number of small crops (SwAV, DINO, DeepCluster)
    epochs: int = 100
    batch_size: int = 256
    optimizer: str = "lars"
    lr: float = 0.3  # peak learning rate (scale it with the batch size yourself: lr = base * batch / 256)
    min_lr: float = 0.0
    weight_decay: float = 1e-5
    final_weight_decay: float | None = None  # cosine schedule of the weight decay (DINO); None = constant
    momentum: float = 0.9
    warmup_epochs: float = 10.0
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    precision: str = "auto"  # "auto" (bf16 on CUDA, fp32 on CPU) | "bf16" | "fp32"
    channels_last: bool = True  # on CUDA
    compile: bool = False
    device: str = "auto"
    seed: int = 0
    log_every: int = 50  # steps between metric lines
    monitor_size: int = 512  # fixed monitor batch for comparable entropy curves
    knn_k: int = 200
    knn_temperature: float = 0.1
    knn_every: int = 1  # epochs between kNN evaluations (0 = never)
    knn_train_size: int = 0  # train images in the kNN bank (0 = all)
    knn_test_size: int = 0  # test images evaluated (0 = all)
    checkpoint_every: int = 1  # epochs between checkpoints (0 = only at the end)
    out_dir: str = "runs"
    name: str = ""  # run folder name; "" = <method>[-er]-<timestamp>
    progress: bool = True

    def validate(self) -> TrainConfig:
        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"TrainConfig.{name} = {getattr(self, name)!r} is invalid: {allowed}")

        choices = {"method": tuple(METHODS), "backbone": tuple(BACKBONES), "dataset": DATASETS,
                   "optimizer": OPTIMIZERS, "precision": ("auto", "bf16", "fp32"),
                   "augmentation": ("", "simclr", "byol")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise bad(name, f"must be one of {allowed}")
        for name in ("batch_size", "monitor_size"):
            if isinstance(getattr(self, name), int) and getattr(self, name) % D.world_size():
                raise bad(name, f"must be divisible by the number of processes ({D.world_size()})")
        ints = {"epochs": 1, "batch_size": 2, "log_every": 1, "monitor_size": 2, "knn_k": 1, "train_subset": 0,
                "local_crops": 0, "knn_every": 0, "knn_train_size": 0, "knn_test_size": 0, "checkpoint_every": 0,
                "seed": 0}
        for name, low in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise bad(name, f"must be an integer >= {low}")
        positives = ("lr", "knn_temperature")
        non_negatives = ("min_lr", "weight_decay", "warmup_epochs", "grad_clip")
        for name in positives + non_negatives:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
                    value <= 0 if name in positives else value < 0):
                raise bad(name, "must be a finite number " + ("> 0" if name in positives else ">= 0"))
        if self.final_weight_decay is not None and not (isinstance(self.final_weight_decay, (int, float))
                                                        and self.final_weight_decay >= 0):
            raise bad("final_weight_decay", "must be None or a number >= 0")
        if not 0 <= self.momentum < 1:
            raise bad("momentum", "must lie in [0, 1)")
        if self.warmup_epochs > self.epochs:
            raise bad("warmup_epochs", f"must not exceed epochs ({self.epochs})")
        if self.min_lr > self.lr:
            raise bad("min_lr", f"must not exceed lr ({self.lr})")
        if self.train_subset and self.train_subset < self.batch_size:
            raise bad("train_subset", f"must be 0 or at least batch_size ({self.batch_size})")
        if not isinstance(self.method_options, dict):
            raise bad("method_options", "must be a dict of method config fields")
        reserved = {"er", "backbone"} & set(self.method_options)
        if reserved:
            raise bad("method_options", f"set {sorted(reserved)} with the top-level fields, not in method_options")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise bad("device", "must be 'auto', 'cpu' or 'cuda[:N]'")
        config_for(self.method, er=self.er, backbone=self.backbone, **self._method_extras(100_000))
        return self

    def _method_extras(self, num_samples: int) -> dict:
        extras = dict(self.method_options)
        if self.method == "deepcluster":
            extras.setdefault("num_samples", num_samples)
        return extras

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; allowed: {[f.name for f in dataclasses.fields(cls)]}")
        return cls(**data)


class LARS(torch.optim.Optimizer):
    r"""SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017): for every parameter with
    ``lars=True`` the update :math:`g + \lambda w` is scaled by :math:`\eta\,\|w\|/\|g+\lambda w\|`."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad.clone()
                if group["lars"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    g.mul_(trust)
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(g)
                p.add_(buf, alpha=-group["lr"])


def build_optimizer(method: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Two parameter groups: weights (weight decay, LARS adaptation) and biases / norm scales (neither)."""
    decay, no_decay = [], []
    for p in method.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay, "lars": True},
              {"params": no_decay, "weight_decay": 0.0, "lars": False}]
    if cfg.optimizer == "lars":
        return LARS(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD([{k: v for k, v in g.items() if k != "lars"} for g in groups], lr=cfg.lr,
                               momentum=cfg.momentum)
    return torch.optim.AdamW([{k: v for k, v in g.items() if k != "lars"} for g in groups], lr=cfg.lr)


def _setup_distributed(device: str) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")


def _resolve_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("TrainConfig.device = 'cuda' but no CUDA device is available; use device='auto' or 'cpu'")
    return torch.device(cfg.device)


class MetricAccumulator:
    """Sums detached metric tensors on the device; ``mean()`` reads them back once (one sync per interval)."""

    def __init__(self):
        self.sums: dict[str, Tensor] = {}
        self.count = 0

    def add(self, metrics: dict[str, Tensor]) -> None:
        for k, v in metrics.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.count += 1

    def mean(self) -> dict[str, float]:
        if not self.count:
            return {}
        keys = list(self.sums)
        values = (torch.stack([self.sums[k] for k in keys]) / self.count).tolist()
        self.sums, self.count = {}, 0
        return dict(zip(keys, values))


def _default_augmentation(cfg: TrainConfig) -> str:
    return cfg.augmentation or ("byol" if cfg.method in ("byol", "dino") else "simclr")


@dataclass
class _State:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps completed


def train(cfg: TrainConfig, resume: bool = False, callback: Callable[[dict], None] | None = None) -> Path:
    """Train (or, with ``resume=True``, continue) the run ``cfg`` describes; returns its run folder.

    ``callback(record)`` receives every metrics record as it is written (rank 0), e.g. a live notebook dashboard.
    """
    cfg.validate()
    device = _resolve_device(cfg)
    _setup_distributed(str(device))
    cfg.validate()  # again, now that the number of processes is known
    rank, world = D.rank(), D.world_size()
    main = rank == 0
    run_dir = Path(cfg.out_dir) / (cfg.name or f"{cfg.method}{'-er' if cfg.er else ''}-"
                                   f"{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    ckpt_path = run_dir / "checkpoint.pt"
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(cfg.to_json())

    torch.manual_seed(cfg.seed)
    data_dir = cfg.data_dir or None
    train_set = load_dataset(cfg.dataset, "train", data_dir, cfg.download)
    if cfg.train_subset:
        train_set = train_set.subset(cfg.train_subset, seed=cfg.seed)
    test_set = load_dataset(cfg.dataset, "test", data_dir, cfg.download)
    train_set, test_set = train_set.to(device), test_set.to(device)

    method: Method = build(cfg.method, er=cfg.er, backbone=cfg.backbone,
                           **cfg._method_extras(len(train_set))).to(device)
    if D.is_distributed():
        convert_to_global_batchnorm(method)  # BN statistics over the global batch, as in one process
    if device.type == "cuda" and cfg.channels_last:
        method = method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(method, cfg)
    recipes = recipe_views(_default_augmentation(cfg), size=train_set.images.shape[-1], local_crops=cfg.local_crops)
    sampler = BatchSampler(len(train_set), cfg.batch_size, device, cfg.seed, rank, world)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed * 7919)  # the same stream on every rank
    views_rng = ShardedGenerator(aug_gen, rank, world)
    state = _State()

    if resume:
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        method.load_state_dict(ckpt["method"])
        optimizer.load_state_dict(ckpt["optimizer"])
        aug_gen.set_state(ckpt["aug_generator"].cpu())
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        state = _State(ckpt["epoch"], ckpt["step"])
        if main:
            _truncate_metrics(run_dir / "metrics.jsonl", state.step)
    elif main and (run_dir / "metrics.jsonl").exists():
        raise FileExistsError(f"{run_dir} already holds a run; resume it (--resume {run_dir}) or pick another name")

    model: nn.Module = method
    if D.is_distributed():
        model = nn.parallel.DistributedDataParallel(method, broadcast_buffers=False,
                                                    device_ids=[device.index] if device.type == "cuda" else None)
    step_fn = torch.compile(model) if cfg.compile else model
    amp = torch.bfloat16 if (cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")) else None
    steps_per_epoch, total_steps = len(sampler), len(sampler) * cfg.epochs
    warmup_steps = int(cfg.warmup_epochs * steps_per_epoch)
    monitor_idx = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(12345))[:cfg.monitor_size]
    monitor_idx = monitor_idx.to(device).view(world, -1)[rank]  # each rank its shard of the monitor batch

    from tqdm.auto import tqdm

    metrics_path = run_dir / "metrics.jsonl"
    bar = tqdm(total=total_steps, initial=state.step, disable=not (main and cfg.progress), desc=run_dir.name)
    acc = MetricAccumulator()
    bad_step = torch.full((), -1, dtype=torch.long, device=device)
    t_last, imgs_since = time.perf_counter(), 0
    for epoch in range(state.epoch, cfg.epochs):
        method.train()
        method.on_epoch_start(epoch)
        for idx in sampler.epoch(epoch):
            step = state.step
            lr = warmup_cosine(cfg.lr, cfg.min_lr, step, total_steps, warmup_steps)
            wd = cfg.weight_decay if cfg.final_weight_decay is None else cosine_schedule(
                cfg.weight_decay, cfg.final_weight_decay, step / total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.param_groups[0]["weight_decay"] = wd  # group 0: the weights (group 1, biases/norms: none)
            views = make_views(train_set.images[idx], recipes, views_rng)
            state.step += 1
            out = train_step(step_fn, method, optimizer, views, idx, amp, cfg.grad_clip, state.step / total_steps,
                             channels_last=device.type == "cuda" and cfg.channels_last)
            bad_step = torch.where((bad_step < 0) & ~torch.isfinite(out.loss.detach()), step, bad_step)
            acc.add({"loss": out.loss, **out.metrics})
            imgs_since += cfg.batch_size
            bar.update(1)
            if state.step % cfg.log_every == 0 or state.step == total_steps:
                record = acc.mean()
                _check_finite(int(bad_step), epoch, ckpt_path)
                now = time.perf_counter()
                record.update(kind="train", epoch=epoch, step=state.step, lr=lr, weight_decay=wd,
                              images_per_s=imgs_since / (now - t_last))
                t_last, imgs_since = now, 0
                if main:
                    append_jsonl(metrics_path, record)
                    if callback:
                        callback(record)
                    bar.set_postfix(loss=f"{record['loss']:.3f}", eta=f"{record.get('eta_online', 0):.2f}")
        state.epoch = epoch + 1
        _check_finite(int(bad_step), epoch, ckpt_path)
        record = _epoch_record(method, cfg, train_set, test_set, recipes, monitor_idx, state, amp)
        save = state.epoch == cfg.epochs or (cfg.checkpoint_every and state.epoch % cfg.checkpoint_every == 0)
        if main:
            append_jsonl(metrics_path, record)
            if callback:
                callback(record)
            if record.get("monitor_eta_online", 1.0) < 0.05:
                warnings.warn(f"{run_dir.name}: entropy at its floor after epoch {state.epoch} "
                              f"(monitor η = {record['monitor_eta_online']:.3f}): the representation has collapsed",
                              stacklevel=2)
            if save:
                atomic_torch_save({"method": method.state_dict(), "optimizer": optimizer.state_dict(),
                                   "aug_generator": aug_gen.get_state(), "torch_rng": torch.get_rng_state(),
                                   "epoch": state.epoch, "step": state.step, "config": dataclasses.asdict(cfg)},
                                  ckpt_path)
    bar.close()
    return run_dir


def train_step(model: nn.Module, method: Method, optimizer: torch.optim.Optimizer, views: list[Tensor],
               index: Tensor | None, amp: torch.dtype | None, grad_clip: float, progress: float,
               channels_last: bool = False):
    """One optimisation step: forward under autocast, backward, (clip,) optimiser step, then ``method.update``.

    ``model`` is the method itself or its DDP / compiled wrapper. Returns the method's output (loss and metrics on the
    device; nothing is read back to the host)."""
    if channels_last:
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    device_type = views[0].device.type
    with torch.autocast(device_type, dtype=amp, enabled=amp is not None):
        out = model(views, index=index)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(method.parameters(), grad_clip)
    optimizer.step()
    method.update(progress)
    return out


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop the records a killed run wrote after its last checkpoint (they will be written again), atomically."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError):
            break  # a line cut by the kill
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{line}\n" for line in keep))
    os.replace(tmp, path)


def _check_finite(bad_step: int, epoch: int, ckpt_path: Path) -> None:
    if bad_step >= 0:
        last = str(ckpt_path) if ckpt_path.is_file() else "none (no epoch completed yet)"
        raise FloatingPointError(f"non-finite loss at step {bad_step} (epoch {epoch}); training stopped. "
                                 f"Last good checkpoint: {last}. Lower the lr, use precision='fp32' or clip gradients.")


@torch.no_grad()
def _epoch_record(method: Method, cfg: TrainConfig, train_set: Dataset, test_set: Dataset,
                  recipes: list[ViewRecipe], monitor_idx: Tensor, state: _State, amp) -> dict:
    """The ER metrics on the fixed monitor batch (fixed augmentation seed) and the kNN accuracies."""
    method.eval()
    device = train_set.images.device
    record: dict = {"kind": "epoch", "epoch": state.epoch, "step": state.step}
    gen = ShardedGenerator(torch.Generator(device=device).manual_seed(2024), D.rank(), D.world_size())
    views = make_views(train_set.images[monitor_idx], recipes[:2], gen)
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        out = method(views, index=monitor_idx)
    record.update({f"monitor_{k}": v for k, v in zip(out.metrics, torch.stack(
        [v.float() for v in out.metrics.values()]).tolist())})
    if cfg.knn_every and state.epoch % cfg.knn_every == 0 and D.is_main_process():
        bank = train_set if not cfg.knn_train_size else train_set.subset(cfg.knn_train_size, seed=1)
        queries = test_set if not cfg.knn_test_size else test_set.subset(cfg.knn_test_size, seed=2)
        mean, std = recipes[0].mean, recipes[0].std
        f_train = extract_features(method.features, bank.images, mean, std, amp_dtype=amp)
        f_test = extract_features(method.features, queries.images, mean, std, amp_dtype=amp)
        n_cls = len(train_set.classes)
        record[f"knn{cfg.knn_k}"] = knn_accuracy(f_train, bank.labels, f_test, queries.labels, n_cls, cfg.knn_k,
                                                 cfg.knn_temperature)
        record["knn20"] = knn_accuracy(f_train, bank.labels, f_test, queries.labels, n_cls, 20, cfg.knn_temperature)
    method.train()
    return record
