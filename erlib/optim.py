"""Optimisers: SGD, AdamW and LARS over two parameter groups (weights; biases and norm scales).

Pure: no I/O. :func:`build_optimizer` is what the trainer and the benchmark use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from erlib.config import TrainConfig

__all__ = ["LARS", "build_optimizer"]


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
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm, torch.ones_like(w_norm)
                    )
                    g.mul_(trust)
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(g)
                p.add_(buf, alpha=-group["lr"])


def build_optimizer(method: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Two parameter groups: weights (weight decay, LARS adaptation) and biases / norm scales (neither)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in method.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "lars": True},
        {"params": no_decay, "weight_decay": 0.0, "lars": False},
    ]
    if cfg.optimizer == "lars":
        return LARS(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            [{k: v for k, v in g.items() if k != "lars"} for g in groups], lr=cfg.lr, momentum=cfg.momentum
        )
    return torch.optim.AdamW([{k: v for k, v in g.items() if k != "lars"} for g in groups], lr=cfg.lr)
