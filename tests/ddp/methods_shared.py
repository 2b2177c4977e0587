"""The methods, the global batch and the per-case run that the method DDP test compares between 1 and 2 processes.

BatchNorm layers are replaced by a per-sample normalisation (``GroupNorm`` with one group) so that every sample is
encoded independently of the others: with BN in training mode each shard would normalise with its own batch
statistics, and 2 processes could not equal 1 process on the concatenated batch for reasons that have nothing to do
with the methods' global-batch logic. (``nn.Identity`` would do as well for that purpose, but without any
normalisation the tiny ConvNet maps every input to nearly the same embedding at initialisation, which leaves the
entropy terms and their gradients degenerate; the per-sample normalisation keeps the embeddings spread.)
"""

from __future__ import annotations

import torch
from torch import nn

from erlib import methods

SMALL = {
    "simclr": dict(proj_hidden_dim=64, proj_dim=16),
    "swav": dict(proj_hidden_dim=64, proj_dim=16, num_prototypes=32),
    "byol": dict(proj_hidden_dim=64, proj_dim=16, pred_hidden_dim=64),
    "dino": dict(out_dim=64, hidden_dim=64, bottleneck_dim=16),
}

#: case name -> (method, er, number of views: 2 = two global 32 px views, 4 = + two local 16 px views)
CASES = {
    "simclr": ("simclr", False, 2),
    "simclr_er": ("simclr", True, 2),
    "swav": ("swav", False, 4),
    "swav_er": ("swav", True, 4),
    "byol": ("byol", False, 2),
    "byol_er": ("byol", True, 2),
    "dino": ("dino", False, 4),
    "dino_er": ("dino", True, 4),
}

GLOBAL_BATCH = 8


def strip_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer (online, target and teacher networks alike) by a per-sample GroupNorm, in place."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                norm = nn.GroupNorm(1, child.num_features, affine=child.affine)
                if child.affine:  # a frozen (EMA teacher) BN stays frozen
                    norm.requires_grad_(child.weight.requires_grad)
                setattr(parent, name, norm)
    return module


def make_method(case: str) -> methods.Method:
    """The method of ``case``, seeded identically on every rank and in the single process, without BatchNorm."""
    name, er, _ = CASES[case]
    torch.manual_seed(0)
    return strip_batchnorm(methods.build(name, er=er, backbone="convnet_tiny", **SMALL[name])).train()


def global_views(case: str) -> list[torch.Tensor]:
    """The global batch of views of ``case`` (the same tensors in every process)."""
    g = torch.Generator().manual_seed(4321)

    def crops(size: int) -> torch.Tensor:  # noise plus a per-image colour offset: clearly different embeddings
        return torch.randn(GLOBAL_BATCH, 3, size, size, generator=g) + 3 * torch.randn(
            GLOBAL_BATCH, 3, 1, 1, generator=g
        )

    views = [crops(32) for _ in range(2)] + [crops(16) for _ in range(2)]
    return views[: CASES[case][2]]


def run_case(case: str, views: list[torch.Tensor]) -> dict:
    """One training forward and backward: the loss, the metrics, the gradients of the online parameters and the
    state the forward updates (DINO's center). Gradients are local (not yet averaged over ranks)."""
    method = make_method(case)
    out = method(views)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.grad is not None}
    teacher_grads = [
        n
        for n, p in method.named_parameters()
        if n.startswith(("target.", "teacher.")) and (p.requires_grad or p.grad is not None)
    ]
    return {
        "loss": out.loss.detach().clone(),
        "metrics": {k: v.detach().clone() for k, v in out.metrics.items()},
        "grads": grads,
        "teacher_grads": teacher_grads,
        "center": method.center.detach().clone() if hasattr(method, "center") else None,
    }
