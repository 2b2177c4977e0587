"""Training throughput benchmark: execution paths side by side, and a conventional baseline, in the same run.

For each method (and ER variant), and for each execution **path** (autocast precision × memory layout), three
measurements of the same training step (same model, same loss, same batch size):

* **erlib end to end**: a random batch indexed from the uint8 dataset on the device, all views made by the batched
  per-sample augmentation on the device (the method's own recipe, as the trainer uses it), the step of
  :func:`erlib.train.train_step`, metrics accumulated on the device;
* **model only**: the same step on views made once beforehand (the ceiling for the end-to-end figure);
* **baseline** (once per method): torchvision ``transforms.v2`` applied per image in a ``DataLoader`` with worker
  processes, fp32, NCHW, eager — how SSL training is usually fed.

Paths: ``"fp32"`` (fp32, NCHW: the CPU path before :mod:`erlib.accel`), ``"fp32-cl"``, ``"bf16"``, ``"bf16-cl"``,
and ``"auto"`` (what :func:`erlib.accel.choose_precision` / :func:`~erlib.accel.choose_channels_last` pick for the
device: the trainer's default). The default is ``fp32,auto`` on the CPU (before / after in one command) and ``auto``
on CUDA. The paths of one method are measured **interleaved** — window 1 of every path, then window 2 of every
path, ... — so that load from other processes on a shared machine hits all of them alike.

Figures: images/s (source images; each brings its views), median over ``repeats`` timed windows of ``steps`` steps
after ``warmup`` steps, with device synchronisation around each window; ``e2e_over_reference``: a row's end-to-end
rate over that of the first path of the same method; achieved TFLOP/s = FLOPs of one step (counted once with
``torch.utils.flop_counter``) × steps / time; peak device memory of one end-to-end step (CUDA).
``python -m erlib bench`` prints a table and writes JSON.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from erlib import accel
from erlib.augment import CIFAR_MEAN, CIFAR_STD, make_views, recipe_views
from erlib.data import DATASETS, BatchSampler, Dataset, load_dataset
from erlib.methods import METHODS, DeepClusterV2, Method, build
from erlib.nn import BACKBONES
from erlib.presets import TINY_HEADS
from erlib.train import MetricAccumulator, TrainConfig, build_optimizer, train_step

__all__ = [
    "BenchConfig",
    "PATHS",
    "run_benchmark",
    "format_table",
    "write_report",
    "count_step_flops",
    "resolve_path",
    "RESULT_FIELDS",
]

#: Execution paths: name → (precision, channels_last) as passed to :mod:`erlib.accel` ("auto" = its choice).
PATHS: dict[str, tuple[str, bool | str]] = {
    "fp32": ("fp32", False),
    "fp32-cl": ("fp32", True),
    "bf16": ("bf16", False),
    "bf16-cl": ("bf16", True),
    "auto": ("auto", "auto"),
}

#: Fields of every result row in the JSON.
RESULT_FIELDS = (
    "method",
    "er",
    "path",
    "precision",
    "channels_last",
    "e2e_images_per_s",
    "model_only_images_per_s",
    "baseline_images_per_s",
    "e2e_over_model_only",
    "e2e_over_baseline",
    "e2e_over_reference",
    "step_tflop",
    "e2e_tflops",
    "model_only_tflops",
    "baseline_tflops",
    "peak_memory_gb",
    "baseline_peak_memory_gb",
)

#: The clock of every timed window (a module attribute so that tests can drive it).
_clock: Callable[[], float] = time.perf_counter


@dataclass
class BenchConfig:
    """What to measure. Defaults: the GPU benchmark (ResNet-18 CIFAR stem, batch 512, two 32 px views)."""

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
    small_heads: bool = False  # the tiny preset's heads (CPU runs)
    device: str = "auto"
    paths: list[str] | None = None  # None: ["fp32", "auto"] on the CPU, ["auto"] elsewhere
    tune_allocator: bool = True  # CPU: erlib.accel.tune_cpu_allocator() first, as the trainer does

    def validate(self) -> BenchConfig:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"BenchConfig.methods: unknown {unknown}; allowed: {list(METHODS)}")
        if not self.methods:
            raise ValueError("BenchConfig.methods is empty; name at least one of " + ", ".join(METHODS))
        lows = {"batch_size": 2, "warmup": 0, "steps": 1, "repeats": 1, "baseline_workers": 0}
        for name, low in lows.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"BenchConfig.{name} = {value!r} is too small; pass an integer >= {low}")
        if self.paths is not None:
            bad = [p for p in self.paths if p not in PATHS]
            if bad or not self.paths or len(set(self.paths)) != len(self.paths):
                raise ValueError(
                    f"BenchConfig.paths = {self.paths!r} is invalid; pass distinct names from "
                    f"{list(PATHS)}, e.g. ['fp32', 'auto']"
                )
        for name, allowed in (("backbone", tuple(BACKBONES)), ("dataset", DATASETS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"BenchConfig.{name} = {getattr(self, name)!r} is invalid; pass one of {allowed}")
        return self


def resolve_path(path: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """The autocast dtype and channels_last flag of a named path on ``device``."""
    precision, channels_last = PATHS[path]
    return accel.choose_precision(device, precision), accel.choose_channels_last(device, channels_last)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _window(run_steps: Callable[[int], None], steps: int, device: torch.device) -> float:
    """Seconds of one timed window of ``steps`` steps, synchronised on both sides."""
    _sync(device)
    start = _clock()
    run_steps(steps)
    _sync(device)
    return _clock() - start


def _interleaved(
    runners: list[Callable[[int], None]], steps: int, repeats: int, warmup: int, device: torch.device
) -> list[float]:
    """Median seconds per window of every runner, the runners' windows taken in turn (after ``warmup`` steps each)."""
    for run in runners:
        run(warmup)
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(repeats):
        for run, t in zip(runners, times):
            t.append(_window(run, steps, device))
    return [statistics.median(t) for t in times]


def count_step_flops(
    model: nn.Module,
    method: Method,
    optimizer: torch.optim.Optimizer,
    views: list[Tensor],
    index: Tensor | None,
    amp: torch.dtype | None = None,
    channels_last: bool = False,
) -> int:
    """FLOPs of one training step (forward, backward, as counted by ``torch.utils.flop_counter``: matrix
    multiplications and convolutions; the optimiser's elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        train_step(model, method, optimizer, views, index, amp, 0.0, 0.0, channels_last=channels_last)
    return counter.get_total_flops()


def _build(name: str, er: bool, cfg: BenchConfig, n: int, device: torch.device, channels_last: bool):
    options: dict[str, Any] = dict(TINY_HEADS[name]) if cfg.small_heads else {}
    if name == "deepcluster":
        options["num_samples"] = n
    torch.manual_seed(0)
    method = build(name, er=er, backbone=cfg.backbone, **options).to(device)
    if name == "deepcluster":  # a filled memory bank and labels, as after the first epoch
        dc = cast(DeepClusterV2, method)  # what build("deepcluster") returns
        dc.seen.fill_(True)
        dc.memory.copy_(torch.nn.functional.normalize(torch.randn_like(dc.memory), dim=-1))
        dc.cluster(0)
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(method, TrainConfig(method=name, optimizer="lars", lr=0.1))
    return method, optimizer


def _baseline_loader(data: Dataset, batch: int, workers: int, pin: bool):
    from torchvision.transforms import v2

    transform = v2.Compose(
        [
            v2.RandomResizedCrop(data.images.shape[-1], scale=(0.08, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(CIFAR_MEAN, CIFAR_STD),
        ]
    )
    images, labels = data.images.cpu(), torch.arange(len(data))

    class TwoViews(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return transform(images[i]), transform(images[i]), labels[i]

    return torch.utils.data.DataLoader(
        TwoViews(),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=workers > 0,
    )


class _PathRun:
    """One method on one path: its model, optimiser, index stream and the two step loops the benchmark times."""

    def __init__(self, name: str, er: bool, path: str, cfg: BenchConfig, data: Dataset, device: torch.device):
        self.path = path
        self.amp, self.channels_last = resolve_path(path, device)
        self.method, self.optimizer = _build(name, er, cfg, len(data), device, self.channels_last)
        self.model = torch.compile(self.method) if cfg.compile else self.method
        self.images = data.images
        self.recipes = recipe_views("byol" if name in ("byol", "dino") else "simclr", size=data.images.shape[-1])
        self.sampler = BatchSampler(len(data), cfg.batch_size, device)
        self.generator = torch.Generator(device=device).manual_seed(0)
        self.batches, self.epoch = iter(()), 0
        self.fixed_index = self.next_index()
        self.fixed_views = make_views(self.images[self.fixed_index], self.recipes, self.generator)

    def next_index(self) -> Tensor:
        try:
            return next(self.batches)
        except StopIteration:
            self.batches, self.epoch = iter(self.sampler.epoch(self.epoch)), self.epoch + 1
            return next(self.batches)

    def step(self, views: list[Tensor], index: Tensor):
        return train_step(
            self.model, self.method, self.optimizer, views, index, self.amp, 0.0, 0.5, channels_last=self.channels_last
        )

    def e2e(self, steps: int) -> None:
        """What the trainer does per step, metrics included (read back once at the end)."""
        acc = MetricAccumulator()
        for _ in range(steps):
            index = self.next_index()
            out = self.step(make_views(self.images[index], self.recipes, self.generator), index)
            acc.add({"loss": out.loss, **out.metrics})
        acc.mean()

    def model_only(self, steps: int) -> None:
        for _ in range(steps):
            self.step(self.fixed_views, self.fixed_index)


def _baseline_seconds(
    name: str, er: bool, cfg: BenchConfig, data: Dataset, loader, device: torch.device
) -> tuple[float, float | None]:
    """Median seconds per window of the DataLoader baseline, and its peak device memory in GB (CUDA)."""
    method, optimizer = _build(name, er, cfg, len(data), device, channels_last=False)  # fp32, NCHW, eager
    batches = iter(loader)

    def baseline(steps: int) -> None:
        nonlocal batches
        for _ in range(steps):
            try:
                v1, v2, idx = next(batches)
            except StopIteration:
                batches = iter(loader)
                v1, v2, idx = next(batches)
            views = [v1.to(device, non_blocking=True), v2.to(device, non_blocking=True)]
            train_step(method, method, optimizer, views, idx.to(device), None, 0.0, 0.5)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    (t_base,) = _interleaved([baseline], cfg.steps, cfg.repeats, cfg.warmup, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return t_base, peak


def _peak_memory_gb(run: _PathRun, device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    run.e2e(1)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def _measure_variant(
    name: str, er: bool, paths: list[str], cfg: BenchConfig, data: Dataset, loader, device: torch.device
) -> list[dict]:
    runs = [_PathRun(name, er, path, cfg, data, device) for path in paths]
    t_e2e = _interleaved([r.e2e for r in runs], cfg.steps, cfg.repeats, cfg.warmup, device)
    t_model = _interleaved([r.model_only for r in runs], cfg.steps, cfg.repeats, cfg.warmup, device)
    first = runs[0]
    flops = count_step_flops(first.method, first.method, first.optimizer, first.fixed_views, first.fixed_index)
    base = _baseline_seconds(name, er, cfg, data, loader, device) if loader is not None else None
    images = cfg.batch_size * cfg.steps
    rows = []
    for run, te, tm in zip(runs, t_e2e, t_model):
        row = {
            "method": name,
            "er": er,
            "path": run.path,
            "precision": "bf16" if run.amp else "fp32",
            "channels_last": run.channels_last,
            "e2e_images_per_s": images / te,
            "model_only_images_per_s": images / tm,
            "e2e_over_model_only": tm / te,
            "e2e_over_reference": t_e2e[0] / te,
            "step_tflop": flops / 1e12,
            "e2e_tflops": flops * cfg.steps / te / 1e12,
            "model_only_tflops": flops * cfg.steps / tm / 1e12,
            "peak_memory_gb": _peak_memory_gb(run, device),
            "baseline_images_per_s": None,
            "baseline_tflops": None,
            "e2e_over_baseline": None,
            "baseline_peak_memory_gb": None,
        }
        if base is not None:
            t_base, base_peak = base
            row.update(
                baseline_images_per_s=images / t_base,
                baseline_tflops=flops * cfg.steps / t_base / 1e12,
                e2e_over_baseline=t_base / te,
                baseline_peak_memory_gb=base_peak,
            )
        rows.append(row)
    return rows


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_benchmark(cfg: BenchConfig, progress: bool = True) -> dict:
    """Measure every method × path in ``cfg``; returns ``{"environment": ..., "config": ..., "results": [...]}``."""
    cfg.validate()
    device = _resolve_device(cfg.device)
    cuda = device.type == "cuda"
    allocator_tuned = accel.tune_cpu_allocator() if device.type == "cpu" and cfg.tune_allocator else False
    paths = cfg.paths or (["fp32", "auto"] if device.type == "cpu" else ["auto"])
    data = load_dataset(cfg.dataset, "train").to(device)
    loader = _baseline_loader(data, cfg.batch_size, cfg.baseline_workers, cuda) if cfg.baseline else None
    variants = [(m, er) for m in cfg.methods for er in ((False, True) if cfg.er_variants else (False,))]
    from tqdm.auto import tqdm

    results = []
    for name, er in tqdm(variants, disable=not progress, desc="bench"):
        results += _measure_variant(name, er, paths, cfg, data, loader, device)
    env = {
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "allocator_tuned": allocator_tuned,
        "accel": accel.describe(device),
    }
    return {"environment": env, "config": {**asdict(cfg), "paths": paths}, "results": results}


def format_table(report: dict) -> str:
    """A plain-text table of a :func:`run_benchmark` report."""
    head = (
        "method",
        "path",
        "precision",
        "layout",
        "img/s e2e",
        "x ref",
        "img/s model",
        "img/s baseline",
        "e2e/model",
        "e2e/base",
        "TFLOP/s e2e",
        "peak GB",
    )

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    rows = [head]
    for r in report["results"]:
        rows.append(
            (
                r["method"] + ("-er" if r["er"] else ""),
                r["path"],
                r["precision"],
                "channels_last" if r["channels_last"] else "NCHW",
                f(r["e2e_images_per_s"], ",.0f"),
                f(r["e2e_over_reference"], ".2f"),
                f(r["model_only_images_per_s"], ",.0f"),
                f(r["baseline_images_per_s"], ",.0f"),
                f(r["e2e_over_model_only"], ".2f"),
                f(r["e2e_over_baseline"], ".1f"),
                f(r["e2e_tflops"], ".3f"),
                f(r["peak_memory_gb"], ".2f"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    env, cfg = report["environment"], report["config"]
    return "\n".join(lines) + (
        f"\n{env['device']}, torch {env['torch']}, {env['cpu_threads']} CPU threads, batch "
        f"{cfg['batch_size']}, medians of {cfg['repeats']} windows of {cfg['steps']} steps; "
        f"x ref = e2e over the {cfg['paths'][0]!r} path"
    )


def write_report(report: dict, path: str | Path) -> Path:
    """Write ``report`` as indented JSON (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    return path
