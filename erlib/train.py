"""The training engine: ``train(cfg)`` runs the configuration a :class:`~erlib.config.TrainConfig` describes.

One step: index a random batch of the device-resident uint8 dataset → batched per-sample views on the device →
method forward under autocast → loss backward → optimiser step with warm-up + cosine lr and weight-decay schedules →
``method.update(progress)`` (EMA, centers, prototypes). Metrics stay on the device and are read once per logging
interval (no host synchronisation inside the step). Before the first step and after every epoch: the ER metrics of
the fixed monitor batch and the kNN accuracy on the test set; after every epoch an atomic, digested checkpoint.

Everything that can fail on bad input (config, data, sizes, method options, an existing run) is checked before the
run folder is touched. A run claims its folder exclusively (:class:`~erlib.runs.RunLock`); ``train(cfg,
resume=True)`` continues a killed run from its last checkpoint (from step 0 if it had none), after checking that the
folder's config, the checkpoint's config and ``cfg`` agree (``cfg.epochs`` may be larger: the run is extended).
Under ``torchrun`` each rank draws its shard of every global batch and rank 0 logs and checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from erlib import accel, runs
from erlib import distributed as D
from erlib.augment import ShardedGenerator, ViewRecipe, make_views
from erlib.config import OPTIMIZERS, TrainConfig
from erlib.data import BatchSampler, Dataset
from erlib.evaluate import extract_features, knn_accuracy
from erlib.methods import Method
from erlib.nn import batch_statistics, convert_to_global_batchnorm
from erlib.optim import LARS, build_optimizer
from erlib.schedules import cosine_schedule, warmup_cosine

__all__ = [
    "TrainConfig",
    "train",
    "resume_run",
    "train_step",
    "MetricAccumulator",
    "LARS",
    "build_optimizer",
    "OPTIMIZERS",
]


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


def _autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 or fp32 (None) as requested; "auto": bf16 on CUDA, and on the CPU where it executes bf16 natively
    (:func:`erlib.accel.cpu_auto`)."""
    return accel.choose_precision(device, cfg.precision)


def _channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    """``channels_last=True`` means "where it is faster" (always on CUDA, by erlib.accel's probe on the CPU)."""
    return cfg.channels_last and accel.choose_channels_last(device, "auto")


def _stored_execution(run_dir: Path) -> dict | None:
    """The precision and layout a run started with (meta.json), so that a resume continues with the same numerics
    even where "auto" would choose differently today (the CPU probe is a timing)."""
    try:
        execution = json.loads((run_dir / runs.META).read_text()).get("execution") or {}
    except (OSError, ValueError):
        return None
    if execution.get("precision") in ("bf16", "fp32") and isinstance(execution.get("channels_last"), bool):
        return execution
    return None


def _say(message: str) -> None:
    if D.is_main_process():
        print(message, file=sys.stderr, flush=True)


@dataclass
class _State:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps completed


def _check_resume_config(run_dir: Path, cfg: TrainConfig) -> TrainConfig:
    """The config stored in ``run_dir``; a ValueError naming the fields where ``cfg`` differs (a larger
    ``cfg.epochs`` extends the run and is allowed)."""
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json): nothing to resume")
    stored = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    _refuse_differences(cfg, stored.to_dict(), f"{run_dir}/config.json")
    return stored


def _refuse_differences(cfg: TrainConfig, other: dict, where: str) -> None:
    diff = [k for k in cfg.differences(other) if k in runs.COMPARED_AT_RESUME]
    if "epochs" in diff and isinstance(other.get("epochs"), int) and cfg.epochs > other["epochs"]:
        diff.remove("epochs")
    if diff:
        detail = ", ".join(f"{k}: {other.get(k)!r} there, {getattr(cfg, k)!r} here" for k in diff)
        raise ValueError(
            f"cannot resume: the configuration differs from {where} in {detail}. A resume continues "
            "the run as it was configured (only --epochs may grow); start a new run to change it"
        )


def resume_run(
    run_dir: str | Path, epochs: int | None = None, callback: Callable[[dict], None] | None = None, **display: object
) -> Path:
    """Continue the run in ``run_dir`` as it was configured; ``epochs`` extends it (the cosine schedules stretch to
    the new length). ``display`` may set ``progress`` or ``device`` only."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json): nothing to resume")
    unknown = sorted(set(display) - {"progress", "device"})
    if unknown:
        raise ValueError(f"resume takes only epochs, progress and device; got {unknown}")
    cfg = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    changes: dict = {"out_dir": str(run_dir.parent), "name": run_dir.name, **display}
    if epochs is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < cfg.epochs:
            raise ValueError(
                f"--epochs {epochs!r} with --resume: must be an integer >= the run's {cfg.epochs} "
                "epochs (a run can be extended, not shortened)"
            )
        changes["epochs"] = epochs
    return train(dataclasses.replace(cfg, **changes), resume=True, callback=callback)


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
    out_dir = Path(cfg.out_dir)
    if resume:
        if not cfg.name:
            raise ValueError("resume needs TrainConfig.name: the run folder inside out_dir")
        _check_resume_config(out_dir / cfg.name, cfg)
    elif cfg.name and runs.holds_run(out_dir / cfg.name):
        raise FileExistsError(
            f"{out_dir / cfg.name} already holds a run; continue it with `python -m erlib train "
            f"--resume {out_dir / cfg.name}` or pick another name"
        )

    # everything that can fail on bad input, before the run folder is touched
    torch.manual_seed(cfg.seed)
    train_set, test_set = cfg.load_datasets()
    train_set, test_set = train_set.to(device), test_set.to(device)
    method: Method = cfg.build_method(len(train_set)).to(device)
    if D.is_distributed():
        convert_to_global_batchnorm(method)  # BN statistics over the global batch, as in one process
    execution = _stored_execution(out_dir / cfg.name) if resume else None
    if execution is None:
        execution = {
            "precision": "bf16" if _autocast_dtype(cfg, device) else "fp32",
            "channels_last": _channels_last(cfg, device),
        }
    if D.is_distributed():  # the CPU probe is a timing: every rank takes rank 0's choice
        shared = [execution]
        dist.broadcast_object_list(shared, src=0)
        execution = shared[0]
    channels_last = execution["channels_last"]
    if device.type == "cpu":
        accel.tune_cpu_allocator()  # reuse freed pages instead of faulting fresh ones every step
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(method, cfg)
    recipes = cfg.view_recipes(train_set.images.shape[-1])
    sampler = BatchSampler(len(train_set), cfg.batch_size, device, cfg.seed, rank, world)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed * 7919)  # the same stream on every rank
    views_rng = ShardedGenerator(aug_gen, rank, world)

    lock = None
    if main:
        run_dir, lock = _claim_run_dir(out_dir, cfg, resume, device, execution)
    else:
        run_dir = out_dir / cfg.name
    try:
        if D.is_distributed():  # the name rank 0 chose (a default name is made when the folder is claimed)
            names = [run_dir.name]
            dist.broadcast_object_list(names, src=0)
            run_dir = out_dir / names[0]
        amp = torch.bfloat16 if execution["precision"] == "bf16" else None
        return _train_loop(
            cfg,
            run_dir,
            resume,
            callback,
            device,
            train_set,
            test_set,
            method,
            optimizer,
            recipes,
            sampler,
            aug_gen,
            views_rng,
            channels_last,
            amp,
        )
    finally:
        if lock is not None:
            lock.release()


def _claim_run_dir(
    out_dir: Path, cfg: TrainConfig, resume: bool, device: torch.device, execution: dict
) -> tuple[Path, runs.RunLock]:
    """Create (or, to resume, find) the run folder, lock it, then write config.json (and meta.json when new)."""
    if resume:
        run_dir = out_dir / cfg.name
        lock = runs.RunLock(run_dir).acquire()
        try:
            stored = _check_resume_config(run_dir, cfg)  # again, now that nobody else can change it
            if stored.epochs != cfg.epochs:
                runs.write_config(
                    run_dir,
                    dataclasses.replace(
                        cfg, out_dir=stored.out_dir, name=stored.name, progress=stored.progress, device=stored.device
                    ),
                )
        except BaseException:
            lock.release()
            raise
        return run_dir, lock
    if cfg.name:
        run_dir = out_dir / cfg.name
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        while True:  # a fresh folder for a default name: mkdir is atomic
            run_dir = out_dir / runs.new_run_name(cfg)
            try:
                run_dir.mkdir()
                break
            except FileExistsError:
                continue
    lock = runs.RunLock(run_dir).acquire()
    try:
        if runs.holds_run(run_dir):  # someone created it between our check and our lock
            raise FileExistsError(
                f"{run_dir} already holds a run; continue it with `python -m erlib train "
                f"--resume {run_dir}` or pick another name"
            )
        runs.write_config(run_dir, dataclasses.replace(cfg, name=run_dir.name))
        runs.write_meta(
            run_dir,
            device,
            {**accel.describe(device, cfg.precision, "auto" if cfg.channels_last else False), **execution},
        )
    except BaseException:
        lock.release()
        raise
    return run_dir, lock


def _train_loop(
    cfg: TrainConfig,
    run_dir: Path,
    resume: bool,
    callback,
    device: torch.device,
    train_set: Dataset,
    test_set: Dataset,
    method: Method,
    optimizer: torch.optim.Optimizer,
    recipes: list[ViewRecipe],
    sampler: BatchSampler,
    aug_gen: torch.Generator,
    views_rng: ShardedGenerator,
    channels_last: bool,
    amp: torch.dtype | None,
) -> Path:
    rank, world, main = D.rank(), D.world_size(), D.is_main_process()
    ckpt_path, metrics_path = run_dir / runs.CHECKPOINT, run_dir / "metrics.jsonl"
    state = _State()
    if resume and ckpt_path.is_file():
        ckpt = runs.load_checkpoint(ckpt_path, map_location=device)
        _refuse_differences(cfg, ckpt["config"], f"the checkpoint {ckpt_path}")
        if ckpt["epoch"] > cfg.epochs:
            raise ValueError(f"{run_dir} has trained {ckpt['epoch']} epochs, more than epochs = {cfg.epochs}")
        method.load_state_dict(ckpt["method"])
        optimizer.load_state_dict(ckpt["optimizer"])
        aug_gen.set_state(ckpt["aug_generator"].cpu())
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        state = _State(ckpt["epoch"], ckpt["step"])
        if state.epoch == cfg.epochs:
            _say(f"{run_dir}: already finished its {cfg.epochs} epochs; nothing to do (extend it with --epochs)")
            return run_dir
        _say(f"{run_dir}: resuming from epoch {state.epoch} (step {state.step})")
        if main:
            runs.repair_metrics(metrics_path, state.step)
    elif resume:
        _say(f"{run_dir}: no checkpoint yet (the run stopped during its first epoch): resuming from step 0")
        if main:
            runs.repair_metrics(metrics_path, -1)

    model: nn.Module = method
    if D.is_distributed():
        model = nn.parallel.DistributedDataParallel(
            method, broadcast_buffers=False, device_ids=[device.index] if device.type == "cuda" else None
        )
    step_fn = torch.compile(model) if cfg.compile else model
    steps_per_epoch, total_steps = len(sampler), len(sampler) * cfg.epochs
    warmup_steps = int(cfg.warmup_epochs * steps_per_epoch)
    monitor_idx, monitor_views = cfg.monitor_views(train_set, rank, world)  # each rank its shard

    def emit(record: dict) -> None:
        if main:
            runs.append_record(metrics_path, record)
            if callback:
                callback(record)

    from tqdm.auto import tqdm

    if state.step == 0:  # the untrained network: every curve starts at initialisation
        emit(
            _epoch_record(
                method, cfg, train_set, test_set, recipes, monitor_idx, monitor_views, state, amp, channels_last
            )
        )
        if method.memory_bank:
            _fill_memory(method, train_set, recipes, cfg, amp, channels_last)
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
            wd = (
                cfg.weight_decay
                if cfg.final_weight_decay is None
                else cosine_schedule(cfg.weight_decay, cfg.final_weight_decay, step / total_steps)
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.param_groups[0]["weight_decay"] = wd  # group 0: the weights (group 1, biases/norms: none)
            views = make_views(train_set.images[idx], recipes, views_rng)
            state.step += 1
            out = train_step(
                step_fn,
                method,
                optimizer,
                views,
                idx,
                amp,
                cfg.grad_clip,
                state.step / total_steps,
                channels_last=channels_last,
            )
            bad_step = torch.where((bad_step < 0) & ~torch.isfinite(out.loss.detach()), step, bad_step)
            acc.add({"loss": out.loss, **out.metrics})
            imgs_since += cfg.batch_size
            bar.update(1)
            if state.step % cfg.log_every == 0 or state.step == total_steps:
                record: dict[str, Any] = acc.mean()
                _check_finite(int(bad_step), epoch, ckpt_path)
                now = time.perf_counter()
                record.update(
                    kind="train",
                    epoch=round(state.step / steps_per_epoch, 6),
                    step=state.step,
                    lr=lr,
                    weight_decay=wd,
                    images_per_s=imgs_since / (now - t_last),
                )
                t_last, imgs_since = now, 0
                emit(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", eta=f"{record.get('eta_online', 0):.2f}")
        state.epoch = epoch + 1
        _check_finite(int(bad_step), epoch, ckpt_path)
        record = _epoch_record(
            method, cfg, train_set, test_set, recipes, monitor_idx, monitor_views, state, amp, channels_last
        )
        emit(record)
        if main and record.get("monitor_eta_online", 1.0) < 0.05:
            warnings.warn(
                f"{run_dir.name}: entropy at its floor after epoch {state.epoch} "
                f"(monitor η = {record['monitor_eta_online']:.3f}): the representation has collapsed",
                stacklevel=2,
            )
        if main and (state.epoch == cfg.epochs or (cfg.checkpoint_every and state.epoch % cfg.checkpoint_every == 0)):
            runs.save_checkpoint(
                run_dir,
                {
                    "method": method.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "aug_generator": aug_gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "epoch": state.epoch,
                    "step": state.step,
                    "config": cfg.to_dict(),
                },
            )
    bar.close()
    return run_dir


class MetricAccumulator:
    """Sums detached metric tensors on the device; ``mean()`` reads them back once (one sync per interval)."""

    def __init__(self) -> None:
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


def train_step(
    model: nn.Module | Callable[..., Any],
    method: Method,
    optimizer: torch.optim.Optimizer,
    views: list[Tensor],
    index: Tensor | None,
    amp: torch.dtype | None,
    grad_clip: float,
    progress: float,
    channels_last: bool = False,
):
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


#: Offset of the seed of the memory-filling pass's augmentations from the run's seed (its own stream: the training
#: views are the same with or without the pass).
MEMORY_SEED_OFFSET = 7919


def _fill_memory(
    method: Method, train_set: Dataset, recipes: list[ViewRecipe], cfg: TrainConfig, amp, channels_last: bool
) -> None:
    """Fill a method's memory bank before the first step (DeepCluster-v2's ``init_memory``): one pass over the whole
    training set in batches of about ``batch_size``, the two large crops from their own random stream, no gradient,
    BatchNorm on batch statistics with its running statistics untouched. Every rank passes over every image."""
    device = train_set.images.device
    gen = ShardedGenerator(torch.Generator(device=device).manual_seed(cfg.seed + MEMORY_SEED_OFFSET))
    chunks = torch.arange(len(train_set), device=device).tensor_split(max(1, len(train_set) // cfg.batch_size))
    was_training = method.training
    method.train()
    with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None), batch_statistics(method):
        for idx in chunks:  # nearly equal chunks: none of a single image, which BatchNorm cannot normalise
            views = make_views(train_set.images[idx], recipes[:2], gen)
            if channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            method.fill_memory(views, idx)
    method.train(was_training)


def _check_finite(bad_step: int, epoch: int, ckpt_path: Path) -> None:
    if bad_step >= 0:
        last = str(ckpt_path) if ckpt_path.is_file() else "none (no epoch completed yet)"
        raise FloatingPointError(
            f"non-finite loss at step {bad_step} (epoch {epoch}); training stopped. "
            f"Last good checkpoint: {last}. Lower the lr, use precision='fp32' or clip gradients."
        )


@torch.no_grad()
def _epoch_record(
    method: Method,
    cfg: TrainConfig,
    train_set: Dataset,
    test_set: Dataset,
    recipes: list[ViewRecipe],
    monitor_idx: Tensor,
    monitor_views: list[Tensor],
    state: _State,
    amp,
    channels_last: bool = False,
) -> dict:
    """The ER metrics on the fixed monitor batch (fixed augmentation seed) and the kNN accuracies."""
    device = train_set.images.device
    record: dict = {"kind": "epoch", "epoch": state.epoch, "step": state.step}
    method.eval()
    # the network as it trains: BatchNorm normalises with the monitor batch's own statistics (running statistics lag
    # the weights: at initialisation they would give eta ~ 0.01 where training sees ~ 0.7), running buffers untouched
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None), batch_statistics(method):
        metrics = method.monitor(monitor_views, index=monitor_idx)
    record.update(
        {f"monitor_{k}": v for k, v in zip(metrics, torch.stack([v.float() for v in metrics.values()]).tolist())}
    )
    last = state.epoch == cfg.epochs  # the final epoch is always evaluated: the claims and the tables read it
    if cfg.knn_every and (state.epoch % cfg.knn_every == 0 or last) and D.is_main_process():
        bank = train_set if not cfg.knn_train_size else train_set.subset(cfg.knn_train_size, seed=1)
        queries = test_set if not cfg.knn_test_size else test_set.subset(cfg.knn_test_size, seed=2)
        mean, std = recipes[0].mean, recipes[0].std
        f_train = extract_features(method.features, bank.images, mean, std, amp_dtype=amp, channels_last=channels_last)
        f_test = extract_features(
            method.features, queries.images, mean, std, amp_dtype=amp, channels_last=channels_last
        )
        n_cls = len(train_set.classes)
        for k in dict.fromkeys((cfg.knn_k, 20)):
            if k <= len(bank):
                record[f"knn{k}"] = knn_accuracy(
                    f_train, bank.labels, f_test, queries.labels, n_cls, k, cfg.knn_temperature
                )
    method.train()
    return record
