r"""Schedules and the exponential moving average (EMA), written once for every method and the trainer."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["cosine_schedule", "warmup_cosine", "ema_momentum", "ema_update_"]


def cosine_schedule(start: float, end: float, progress: float) -> float:
    r"""Cosine interpolation from ``start`` (progress 0) to ``end`` (progress 1):
    :math:`v = \text{end} - (\text{end}-\text{start})\,\tfrac12(1+\cos\pi p)`, with :math:`p` clipped to [0, 1].

    Used for the learning rate's decay, the weight decay's ramp (DINO: 0.04 → 0.4) and the EMA momentum."""
    p = min(max(progress, 0.0), 1.0)
    return end - (end - start) * 0.5 * (1 + math.cos(math.pi * p))


def warmup_cosine(
    base: float, final: float, step: int, total_steps: int, warmup_steps: int = 0, warmup_start: float = 0.0
) -> float:
    r"""Linear warm-up from ``warmup_start`` to ``base`` over ``warmup_steps``, then cosine decay to ``final``:

    .. math:: v_s = \begin{cases} v_0 + (b - v_0)\,s/W & s < W\\
              \text{cosine\_schedule}\big(b, f, (s-W)/(T-W)\big) & s \ge W\end{cases}

    so ``base`` is reached at the end of the warm-up (step W) and ``final`` (e.g. a minimum learning rate) at step T.
    """
    if step < warmup_steps:
        return warmup_start + (base - warmup_start) * step / max(warmup_steps, 1)
    return cosine_schedule(base, final, (step - warmup_steps) / max(total_steps - warmup_steps, 1))


def ema_momentum(base: float, progress: float) -> float:
    r"""BYOL's / DINO's target momentum :math:`\tau_t = 1-(1-\tau_{\text{base}})\,\tfrac12(1+\cos\pi p)`: τ_base at
    progress 0, → 1 at the end."""
    return cosine_schedule(base, 1.0, progress)


def _tensors(modules: nn.Module | Sequence[nn.Module], kind: str) -> list[Tensor]:
    modules = [modules] if isinstance(modules, nn.Module) else list(modules)
    return [t for m in modules for t in (m.parameters() if kind == "parameters" else m.buffers())]


@torch.no_grad()
def ema_update_(
    target: nn.Module | Sequence[nn.Module], online: nn.Module | Sequence[nn.Module], momentum: float
) -> None:
    r"""In place: :math:`\xi \leftarrow \tau\xi + (1-\tau)\theta` for every parameter; buffers (BN statistics) are
    copied from the online network. ``momentum`` = 0 makes the target equal to the online network.

    ``target`` and ``online`` are modules or sequences of modules (e.g. ``(backbone, projector)``), paired parameter by
    parameter in registration order, as the DINO code pairs ``zip(student.parameters(), teacher.parameters())``; the
    pairing is checked (count and shapes)."""
    t_params, o_params = _tensors(target, "parameters"), _tensors(online, "parameters")
    t_bufs, o_bufs = _tensors(target, "buffers"), _tensors(online, "buffers")
    if (
        len(t_params) != len(o_params)
        or len(t_bufs) != len(o_bufs)
        or any(t.shape != o.shape for t, o in zip(t_params + t_bufs, o_params + o_bufs))
    ):
        raise ValueError("ema_update_: target and online networks must have the same architecture")
    if t_params:
        torch._foreach_lerp_([t.data for t in t_params], [o.data for o in o_params], 1.0 - momentum)
    for t_buf, o_buf in zip(t_bufs, o_bufs):
        t_buf.copy_(o_buf)
