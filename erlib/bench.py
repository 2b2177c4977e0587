"""Training throughput benchmark with a conventional baseline measured in the same run.

For each method (and ER variant) three measurements of the same training step (same model, same loss, same batch):

* **erlib end to end**: a random batch indexed from the uint8 dataset on the device, both views made by the batched
  per-sample augmentation on the device, the step of :func:`erlib.train.train_step` (bf16 autocast and channels_last
  on CUDA), metrics accumulated on the device;
* **model only**: the same step on views made once beforehand (the ceiling for the end-to-end figure);
* **baseline**: torchvision ``transforms.v2`` applied per image in a ``DataLoader`` with worker processes, fp32, no
  channels_last — how SSL training is usually fed.

Figures: images/s (source images; each brings two views), median over ``repeats`` timed windows of ``steps`` steps
after ``warmup`` steps, with device synchronisation around each window; achieved TFLOP/s = FLOPs of one step
(counted once with ``torch.utils.flop_counter``) × steps / time; peak device memory (CUDA). ``python -m erlib bench``
prints a table and writes JSON.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from erlib.augment import CIFAR_MEAN, CIFAR_STD, make_views, recipe_views
from erlib.data import BatchSampler, Dataset, load_dataset
from erlib.methods import METHODS, build
from erlib.presets import TINY_HEADS
from erlib.train import MetricAccumulator, TrainConfig, build_optimizer, train_step

__all__ = ["BenchConfig", "run_benchmark", "format_table", "RESULT_FIELDS"]

#: Fields of every result row in the JSON.
RESULT_FIELDS = ("method", "er", "e2e_images_per_s", "model_only_images_per_s", "baseline_images_per_s",
                 "e2e_over_model_only", "e2e_over_baseline", "step_tflop", "e2e_tflops", "model_only_tflops",
                 "baseline_tflops", "peak_memory_gb", "baseline_peak_memory_gb")


@dataclass
class BenchConfig:
    """What to measure. Defaults: the GPU benchmark of DESIGN.md §4 (ResNet-18 CIFAR stem, batch 512, two 32 px views)."""

    methods: list[str] = field(default_factory=lambda: list(METHODS))
    er_variants: bool = True
    backbone: str = "resnet18_cifar"
    dataset: str = "cifar10-jpeg75"
    batch_size: int = 512
    warmup: int = 10
    steps: int = 20
    repeats: int = 5
    baseline_workers: int = 8
    baseline: bool = True
    compile: bool = False
    small_heads: bool = False  # the tiny preset's heads (CPU smoke runs)
    device: str = "auto"

    def validate(self) -> BenchConfig:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"BenchConfig.methods: unknown {unknown}; allowed: {list(METHODS)}")
        for name in ("batch_size", "warmup", "steps", "repeats", "baseline_workers"):
            if getattr(self, name) < (2 if name == "batch_size" else 0 if name in ("warmup", "baseline_workers")
                                      else 1):
                raise ValueError(f"BenchConfig.{name} = {getattr(self, name)} is too small")
        TrainConfig(backbone=self.backbone, dataset=self.dataset).validate()
        return self


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(run_steps, steps: int, repeats: int, warmup: int, device: torch.device) -> float:
    """Median seconds per window of ``steps`` steps, after ``warmup`` steps."""
    run_steps(warmup)
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_steps(steps)
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _step_flops(method, optimizer, views: list[Tensor], index: Tensor, amp) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        train_step(method, method, optimizer, views, index, amp, 0.0, 0.0)
    return counter.get_total_flops()


def _build(name: str, er: bool, cfg: BenchConfig, n: int, device: torch.device):
    options = dict(TINY_HEADS[name]) if cfg.small_heads else {}
    if name == "deepcluster":
        options["num_samples"] = n
    torch.manual_seed(0)
    method = build(name, er=er, backbone=cfg.backbone, **options).to(device)
    if name == "deepcluster":  # a filled memory bank and labels, as after the first epoch
        method.seen.fill_(True)
        method.memory.copy_(torch.nn.functional.normalize(torch.randn_like(method.memory), dim=-1))
        method.cluster(0)
    optimizer = build_optimizer(method, TrainConfig(method=name, optimizer="lars", lr=0.1))
    return method, optimizer


def _baseline_loader(data: Dataset, batch: int, workers: int, pin: bool):
    from torchvision.transforms import v2

    transform = v2.Compose([
        v2.RandomResizedCrop(data.images.shape[-1], scale=(0.08, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])
    images, labels = data.images.cpu(), torch.arange(len(data))

    class TwoViews(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return transform(images[i]), transform(images[i]), labels[i]

    return torch.utils.data.DataLoader(TwoViews(), batch_size=batch, shuffle=True, drop_last=True,
                                       num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)


def run_benchmark(cfg: BenchConfig, progress: bool = True) -> dict:
    """Measure every method in ``cfg``; returns ``{"environment": ..., "config": ..., "results": [...]}``."""
    cfg.validate()
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    cuda = device.type == "cuda"
    amp = torch.bfloat16 if cuda else None
    data = load_dataset(cfg.dataset, "train")
    gpu_data = data.to(device)
    recipes = recipe_views("simclr", size=data.images.shape[-1])
    sampler = BatchSampler(len(data), cfg.batch_size, device)
    gen = torch.Generator(device=device).manual_seed(0)
    loader = _baseline_loader(data, cfg.batch_size, cfg.baseline_workers, cuda) if cfg.baseline else None
    results = []
    variants = [(m, er) for m in cfg.methods for er in ((False, True) if cfg.er_variants else (False,))]
    from tqdm.auto import tqdm

    for name, er in tqdm(variants, disable=not progress, desc="bench"):
        row: dict = {"method": name, "er": er}
        method, optimizer = _build(name, er, cfg, len(data), device)
        if cuda:
            method = method.to(memory_format=torch.channels_last)
        model = torch.compile(method) if cfg.compile else method
        batches, epoch = iter(()), 0

        def next_index() -> Tensor:
            nonlocal batches, epoch
            try:
                return next(batches)
            except StopIteration:
                batches, epoch = iter(sampler.epoch(epoch)), epoch + 1
                return next(batches)

        def e2e(steps: int) -> None:  # what the trainer does per step, metrics included (read once at the end)
            acc = MetricAccumulator()
            for _ in range(steps):
                idx = next_index()
                views = make_views(gpu_data.images[idx], recipes, gen)
                out = train_step(model, method, optimizer, views, idx, amp, 0.0, 0.5, channels_last=cuda)
                acc.add({"loss": out.loss, **out.metrics})
            acc.mean()

        fixed_idx = next_index()
        fixed_views = make_views(gpu_data.images[fixed_idx], recipes, gen)

        def model_only(steps: int) -> None:
            for _ in range(steps):
                train_step(model, method, optimizer, fixed_views, fixed_idx, amp, 0.0, 0.5, channels_last=cuda)

        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        t_e2e = _timed(e2e, cfg.steps, cfg.repeats, cfg.warmup, device)
        row["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
        t_model = _timed(model_only, cfg.steps, cfg.repeats, cfg.warmup, device)
        flops = _step_flops(method, optimizer, fixed_views, fixed_idx, amp)
        row["step_tflop"] = flops / 1e12
        row["e2e_images_per_s"] = cfg.batch_size * cfg.steps / t_e2e
        row["model_only_images_per_s"] = cfg.batch_size * cfg.steps / t_model
        row["e2e_tflops"] = flops * cfg.steps / t_e2e / 1e12
        row["model_only_tflops"] = flops * cfg.steps / t_model / 1e12
        row["e2e_over_model_only"] = row["e2e_images_per_s"] / row["model_only_images_per_s"]
        row.update(baseline_images_per_s=None, baseline_tflops=None, e2e_over_baseline=None,
                   baseline_peak_memory_gb=None)
        if loader is not None:
            base_method, base_opt = _build(name, er, cfg, len(data), device)  # fp32, contiguous, eager
            it = iter(loader)

            def baseline(steps: int) -> None:
                nonlocal it
                for _ in range(steps):
                    try:
                        v1, v2, idx = next(it)
                    except StopIteration:
                        it = iter(loader)
                        v1, v2, idx = next(it)
                    views = [v1.to(device, non_blocking=True), v2.to(device, non_blocking=True)]
                    train_step(base_method, base_method, base_opt, views, idx.to(device), None, 0.0, 0.5)

            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            t_base = _timed(baseline, cfg.steps, cfg.repeats, cfg.warmup, device)
            row["baseline_peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
            row["baseline_images_per_s"] = cfg.batch_size * cfg.steps / t_base
            row["baseline_tflops"] = flops * cfg.steps / t_base / 1e12
            row["e2e_over_baseline"] = row["e2e_images_per_s"] / row["baseline_images_per_s"]
            del base_method, base_opt
        results.append(row)
        del method, optimizer, model
    env = {"device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
           "torch": torch.__version__, "python": platform.python_version(),
           "cpu_threads": torch.get_num_threads()}
    return {"environment": env, "config": asdict(cfg), "results": results}


def format_table(report: dict) -> str:
    """A plain-text table of a :func:`run_benchmark` report."""
    head = ("method", "img/s e2e", "img/s model", "img/s baseline", "e2e/model", "e2e/base", "TFLOP/s e2e",
            "peak GB")
    rows = [head]
    for r in report["results"]:
        def f(v, fmt):
            return "-" if v is None else format(v, fmt)
        rows.append((r["method"] + ("-er" if r["er"] else ""), f(r["e2e_images_per_s"], ",.0f"),
                     f(r["model_only_images_per_s"], ",.0f"), f(r["baseline_images_per_s"], ",.0f"),
                     f(r["e2e_over_model_only"], ".2f"), f(r["e2e_over_baseline"], ".1f"),
                     f(r["e2e_tflops"], ".2f"), f(r["peak_memory_gb"], ".2f")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    env = report["environment"]
    return "\n".join(lines) + f"\n{env['device']}, torch {env['torch']}, batch {report['config']['batch_size']}"


def write_report(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    return path
