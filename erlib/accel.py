r"""The fastest *correct* execution path for the machine a run is on: autocast precision, memory layout, allocator.

* **CUDA**: ``"auto"`` is bf16 autocast (where the card supports it) and channels_last, as every modern GPU recipe.
* **CPU**: whether bf16 pays depends on the chip. With AVX-512-BF16 or AMX the oneDNN bf16 kernels run about 3x the
  fp32 rate for the tiny ConvNet; without them (AVX2-only x86, e.g. AMD Zen 3) bf16 is *emulated* and can be ten times
  slower than fp32. ``torch.backends.cpu.get_cpu_capability()`` does not tell them apart (it reports "AVX2" on
  AVX-512 machines too), so :func:`cpu_native_bf16` reads the CPU flags (``avx512_bf16``, ``amx_bf16`` on x86,
  ``bf16`` on Arm). ``"auto"`` is decided by those flags, so that the same command on the same machine always takes
  the same path (a timing would depend on whatever else the machine is doing, and two runs meant to be compared could
  differ): native bf16 → bf16 autocast, otherwise fp32, and channels_last in both cases (oneDNN's convolutions prefer
  it: 1.9x for fp32 on the development CPU). Only where the flags cannot be read (macOS, Windows) does
  :func:`probe_cpu` time a small conv net forward + backward in every candidate (fp32 / bf16 autocast × NCHW /
  channels_last), once per process, and keep the fastest; bf16 must beat fp32 by :data:`BF16_MARGIN` to be chosen.
  ``python -m erlib bench`` measures the paths side by side.
* **Allocator** (:func:`tune_cpu_allocator`): glibc returns freed blocks of a few MB to the kernel, so every new
  activation or augmentation temporary page-faults afresh (about 80,000 faults per training step of the tiny ConvNet
  at batch 128); keeping freed memory in the process removes them.

Explicit choices always win: ``choose_precision(device, "bf16")`` is bf16 on any device, ``"fp32"`` is fp32.
Autocast only changes the backbone and heads; losses and estimators promote to float32 themselves
(:func:`erlib.methods.common.full_precision`), so the method metrics stay float32 under bf16.
"""

from __future__ import annotations

import ctypes
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

__all__ = [
    "PRECISIONS",
    "BF16_MARGIN",
    "CHANNELS_LAST_MARGIN",
    "CpuProbe",
    "cpu_flags",
    "cpu_native_bf16",
    "probe_cpu",
    "cpu_auto",
    "choose_precision",
    "choose_channels_last",
    "tune_cpu_allocator",
    "describe",
]

PRECISIONS = ("auto", "bf16", "fp32")
#: bf16 autocast is chosen on the CPU only when the probe finds it at least this many times faster than fp32
#: (bf16 rounds activations to 8 bits of mantissa: it must pay clearly, not within the probe's noise).
BF16_MARGIN = 1.15
#: channels_last is chosen on the CPU only when the probe finds it at least this many times faster than NCHW.
CHANNELS_LAST_MARGIN = 1.05

_CPUINFO = Path("/proc/cpuinfo")
_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX-512-BF16, x86 AMX, Arm FEAT_BF16


def cpu_flags(cpuinfo: str | Path = _CPUINFO) -> frozenset[str] | None:
    """The CPU feature flags (the ``flags`` line on x86, ``Features`` on Arm) of ``/proc/cpuinfo``, or ``None``
    where there is no such file (macOS, Windows)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return None


def cpu_native_bf16(flags: frozenset[str] | None = None) -> bool | None:
    """Whether the CPU executes bf16 natively (AVX-512-BF16, AMX-BF16 or Arm BF16): ``True``/``False`` from the
    flags, ``None`` when they cannot be read (then only the probe decides)."""
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return None
    return any(f in flags for f in _NATIVE_BF16_FLAGS)


@dataclass(frozen=True)
class CpuProbe:
    """What :func:`probe_cpu` measured and chose. ``seconds``: best time of one forward + backward per candidate
    (``"fp32/nchw"``, ``"fp32/channels_last"``, ``"bf16/nchw"``, ``"bf16/channels_last"``; a candidate not run is
    absent); ``precision``: ``"bf16"`` or ``"fp32"``; ``reason``: one line saying why."""

    precision: str
    channels_last: bool
    native_bf16: bool | None
    seconds: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    threads: int = 1

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype (``None`` = fp32, no autocast)."""
        return torch.bfloat16 if self.precision == "bf16" else None


def _probe_net() -> nn.Module:
    """Conv–BN–ReLU blocks shaped like the tiny ConvNet (erlib.nn.TinyConvNet), plus a linear head."""
    chans = [3, 32, 64, 128]
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(chans[:-1], chans[1:])):
        layers += [
            nn.Conv2d(c_in, c_out, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(chans[-1], 64))


def _time_candidates(
    candidates: list[tuple[str, bool]], batch: int, size: int, rounds: int, slow_factor: float
) -> dict[str, float]:
    """Best seconds of one forward + backward per candidate, the candidates interleaved round by round (so that a
    burst of load from other processes hits all of them alike); a candidate whose first run is ``slow_factor`` times
    the fastest first run is dropped after it."""
    net = _probe_net()
    nets = {False: net, True: _probe_net().to(memory_format=torch.channels_last)}
    nets[True].load_state_dict(net.state_dict())
    x = torch.randn(batch, 3, size, size)
    inputs = {False: x, True: x.contiguous(memory_format=torch.channels_last)}

    def run(precision: str, cl: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = nets[cl](inputs[cl])
        out.float().square().mean().backward()
        return time.perf_counter() - start

    def key(precision: str, cl: bool) -> str:
        return f"{precision}/{'channels_last' if cl else 'nchw'}"

    best: dict[str, float] = {}
    first_warmup = None
    for precision, cl in candidates:  # warm-up (oneDNN primitive creation) screens out the very slow ones at once
        warmup = run(precision, cl)
        first_warmup = warmup if first_warmup is None else first_warmup
        if warmup > slow_factor * first_warmup:
            best[key(precision, cl)] = warmup
            continue
        best[key(precision, cl)] = run(precision, cl)
    fastest = min(best.values())
    alive = [(p, cl) for p, cl in candidates if best[key(p, cl)] < slow_factor * fastest]
    for _ in range(rounds - 1):
        for precision, cl in alive:
            best[key(precision, cl)] = min(best[key(precision, cl)], run(precision, cl))
    return best


_PROBE: dict[int, CpuProbe] = {}


def probe_cpu(
    refresh: bool = False,
    batch: int = 16,
    size: int = 32,
    rounds: int = 6,
    native_bf16: bool | None | Literal["detect"] = "detect",
) -> CpuProbe:
    """Time fp32 / bf16 autocast × NCHW / channels_last on a small conv net and return the fastest path.

    Cached per process and torch thread count (so "auto" is deterministic within a process); ``refresh=True``
    measures again. bf16 is a candidate unless the CPU flags say it is emulated (``native_bf16`` overrides the flag
    detection, for tests) and is chosen only at :data:`BF16_MARGIN` × the fp32 speed, channels_last at
    :data:`CHANNELS_LAST_MARGIN` × NCHW. The global RNG state is left untouched."""
    for name, value, low in (("batch", batch, 2), ("size", size, 8), ("rounds", rounds, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"probe_cpu: {name} = {value!r} is invalid; pass an integer >= {low}")
    threads = torch.get_num_threads()
    if not refresh and threads in _PROBE:
        return _PROBE[threads]
    native = cpu_native_bf16() if native_bf16 == "detect" else native_bf16
    precisions = ["fp32"] + ([] if native is False else ["bf16"])
    candidates = [(p, cl) for p in precisions for cl in (False, True)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        seconds = _time_candidates(candidates, batch, size, rounds, slow_factor=4.0)

    def best_of(precision: str) -> tuple[float, bool]:
        nchw, cl = (
            seconds.get(f"{precision}/nchw", float("inf")),
            seconds.get(f"{precision}/channels_last", float("inf")),
        )
        return (cl, True) if cl * CHANNELS_LAST_MARGIN < nchw else (nchw, False)

    t32, cl32 = best_of("fp32")
    t16, cl16 = best_of("bf16")
    if native is False:
        precision, cl, why = "fp32", cl32, "the CPU flags show no native bf16 (no avx512_bf16 / amx_bf16 / bf16)"
    elif t16 * BF16_MARGIN < t32:
        precision, cl, why = "bf16", cl16, f"bf16 autocast measured {t32 / t16:.2f}x fp32"
    else:
        precision, cl, why = "fp32", cl32, f"bf16 autocast measured only {t32 / t16:.2f}x fp32 (< {BF16_MARGIN})"
    nchw = seconds[f"{precision}/nchw"]
    why += f"; channels_last {nchw / seconds.get(f'{precision}/channels_last', float('inf')):.2f}x NCHW"
    probe = CpuProbe(precision, cl, native, seconds, why, threads)
    _PROBE[threads] = probe
    return probe


def _device(device: torch.device | str) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device = {device!r} is not a torch device; pass 'cpu', 'cuda' or 'cuda:N'") from err


def cpu_auto() -> tuple[str, bool, str]:
    """What ``"auto"`` means on this CPU: (precision, channels_last, why). Decided by the CPU flags where they can be
    read (native bf16 → ``"bf16"``, else ``"fp32"``; channels_last either way), by :func:`probe_cpu` elsewhere."""
    native = cpu_native_bf16()
    if native is True:
        return "bf16", True, "the CPU flags show native bf16 (avx512_bf16 / amx_bf16 / bf16)"
    if native is False:
        return "fp32", True, "the CPU flags show no native bf16 (no avx512_bf16 / amx_bf16 / bf16)"
    probe = probe_cpu()
    return probe.precision, probe.channels_last, "CPU flags unreadable, measured: " + probe.reason


def choose_precision(device: torch.device | str, requested: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``device`` (``None`` = fp32, autocast off).

    ``"bf16"`` → ``torch.bfloat16`` and ``"fp32"`` → ``None`` on any device. ``"auto"``: bf16 on CUDA where the card
    supports it (fp32 otherwise), on the CPU what :func:`cpu_auto` decides, fp32 elsewhere."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision = {requested!r} is invalid; pass one of {PRECISIONS}")
    dev = _device(device)
    if requested != "auto":
        return torch.bfloat16 if requested == "bf16" else None
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if dev.type == "cpu":
        return torch.bfloat16 if cpu_auto()[0] == "bf16" else None
    return None


def choose_channels_last(device: torch.device | str, requested: bool | str = "auto") -> bool:
    """Whether to run the model and its inputs in channels_last memory format on ``device``.

    ``True`` / ``False`` (or ``"on"`` / ``"off"``) are honoured as given. ``"auto"``: on CUDA yes, on the CPU what
    :func:`cpu_auto` decides, elsewhere no."""
    choices = {True: True, False: False, "on": True, "off": False}
    if requested != "auto" and (not isinstance(requested, (bool, str)) or requested not in choices):
        raise ValueError(f"channels_last = {requested!r} is invalid; pass 'auto', True/False or 'on'/'off'")
    dev = _device(device)
    if requested != "auto":
        return choices[requested]
    if dev.type == "cuda":
        return True
    if dev.type == "cpu":
        return cpu_auto()[1]
    return False


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)
_ALLOCATOR_TUNED: dict[str, int] = {}


def tune_cpu_allocator(keep_bytes: int = 1 << 30) -> bool:
    """Make glibc keep freed memory (up to ``keep_bytes`` at the top of the heap, blocks below ``keep_bytes`` from
    the heap rather than fresh ``mmap``\\ s) so that repeated tensor allocations reuse pages instead of faulting new
    ones. Process-wide, idempotent; ``False`` (and nothing done) where the C library is not glibc on Linux.

    Cost: the process keeps up to ``keep_bytes`` of freed memory instead of returning it to the system."""
    if isinstance(keep_bytes, bool) or not isinstance(keep_bytes, int) or not 1 << 20 <= keep_bytes < 1 << 31:
        raise ValueError(f"keep_bytes = {keep_bytes!r} is invalid; pass an integer in [2**20, 2**31)")
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if _ALLOCATOR_TUNED.get("keep_bytes") == keep_bytes:
        return True
    libc = ctypes.CDLL(None)
    ok = libc.mallopt(_M_MMAP_THRESHOLD, keep_bytes) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, keep_bytes) == 1
    if ok:
        _ALLOCATOR_TUNED["keep_bytes"] = keep_bytes
    return ok


def describe(device: torch.device | str, precision: str = "auto", channels_last: bool | str = "auto") -> dict:
    """A JSON-ready record of the path chosen for ``device`` (for run configs and benchmark reports)."""
    dev = _device(device)
    dtype = choose_precision(dev, precision)
    record: dict[str, object] = {
        "device": str(dev),
        "requested_precision": precision,
        "precision": "bf16" if dtype else "fp32",
        "requested_channels_last": channels_last,
        "channels_last": choose_channels_last(dev, channels_last),
    }
    if dev.type == "cpu":
        record.update(
            cpu_capability=torch.backends.cpu.get_cpu_capability(),
            native_bf16=cpu_native_bf16(),
            allocator_tuned=bool(_ALLOCATOR_TUNED),
        )
        if "auto" in (precision, channels_last):
            record["auto_reason"] = cpu_auto()[2]
            if cpu_native_bf16() is None:
                record["probe_seconds"] = probe_cpu().seconds
    return record
