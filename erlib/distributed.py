r"""Thin helpers over ``torch.distributed``; every one is a no-op in a single process.

Batch-level quantities (InfoNCE negatives, the KDE entropy, Sinkhorn, DINO's center, k-means) must see the **global**
batch under DDP. The rule used throughout erlib: every rank gathers the global batch with :func:`gather`, computes the
*same* global loss, and backpropagates into its own rows. :func:`gather`'s backward sums the gradient of every rank's
copy of the loss (all-reduce) and keeps this rank's slice, so that after DDP averages the parameter gradients over
the :math:`W` ranks the result equals the gradient of the single-process loss on the concatenated batch:

.. math:: \frac1W\sum_r W\,\frac{\partial L}{\partial Z_r}\frac{\partial Z_r}{\partial\theta}
          = \frac{\partial L}{\partial\theta}.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "is_distributed",
    "rank",
    "world_size",
    "is_main_process",
    "gather",
    "all_reduce_mean",
    "all_reduce_sum",
    "all_reduce_max",
]

_GROUP = None


def _group():
    """A process group of our own for the estimators' collectives, created on first use (the same step on every rank).

    DDP all-reduces gradient buckets asynchronously on the default group while backward runs; the gathers inside the
    loss's backward must not interleave with those messages, so they travel on a separate group.
    """
    global _GROUP
    if _GROUP is None:
        _GROUP = dist.new_group(ranks=list(range(dist.get_world_size())))
    return _GROUP


def is_distributed() -> bool:
    """True inside an initialised process group with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 in a single process)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 in a single process)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0: the process that logs and writes checkpoints."""
    return rank() == 0


class _GatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's tensor along dim 0; backward: all-reduce (sum) the gradient, keep this rank's rows."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous(), group=_group())
        ctx.rows = x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=_group())
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def gather(x: Tensor) -> Tensor:
    r"""Global batch :math:`[Z_0; Z_1; \dots; Z_{W-1}]` (rank order), differentiable; ``x`` itself in one process.

    Every rank must pass a tensor of the same shape. Gradients: see the module docstring.
    """
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` over ranks (a new tensor; not differentiable). ``x`` in one process."""
    if not is_distributed():
        return x
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=_group())
    return out


def all_reduce_max(x: Tensor) -> Tensor:
    """Element-wise maximum of ``x`` over ranks (a new tensor; not differentiable). ``x`` in one process."""
    if not is_distributed():
        return x
    out = x.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX, group=_group())
    return out


def all_reduce_mean(x: Tensor) -> Tensor:
    """Mean of ``x`` over ranks (a new tensor; not differentiable), e.g. DINO's center or logged metrics."""
    if not is_distributed():
        return x
    return all_reduce_sum(x) / world_size()
