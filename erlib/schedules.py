r"""Schedules and the exponential moving average (EMA), written once for every method and the trainer."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["cosine_schedule", "warmup_cosine", "ema_momentum", "ema_update_"]


def cosine_schedule(start: float, end: float, progress: float) -> float:
    r"""Cosine interpolation from ``start`` (progress 0) to ``end`` (progress 1):
    :math:`v = \text{end} - (\text{end}-\text{start})\,\tfrac12(1+\cos\pi p)`, with :math:`p` clipped to [0, 1]."""
    p = min(max(progress, 0.0), 1.0)
    return end - (end - start) * 0.5 * (1 + math.cos(math.pi * p))


def warmup_cosine(base: float, final: float, step: int, total_steps: int, warmup_steps: int = 0,
                  warmup_start: float = 0.0) -> float:
    """Linear warm-up from ``warmup_start`` to ``base`` over ``warmup_steps``, then cosine decay to ``final``."""
    if step < warmup_steps:
        return warmup_start + (base - warmup_start) * step / max(warmup_steps, 1)
    return cosine_schedule(base, final, (step - warmup_steps) / max(total_steps - warmup_steps, 1))


def ema_momentum(base: float, progress: float) -> float:
    r"""BYOL's / DINO's target momentum :math:`\tau_t = 1-(1-\tau_{\text{base}})\,\tfrac12(1+\cos\pi p)`, → 1 at the end."""
    return cosine_schedule(base, 1.0, progress)


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    r"""In place: :math:`\xi \leftarrow \tau\xi + (1-\tau)\theta` for every parameter; buffers (BN statistics) are
    copied from the online network. ``momentum`` = 0 makes the target equal to the online network."""
    t_params, o_params = list(target.parameters()), list(online.parameters())
    if len(t_params) != len(o_params):
        raise ValueError("ema_update_: target and online networks must have the same architecture")
    if t_params:
        torch._foreach_lerp_([t.data for t in t_params], [o.data for o in o_params], 1.0 - momentum)
    for t_buf, o_buf in zip(target.buffers(), online.buffers()):
        t_buf.copy_(o_buf)
