r"""What every method shares: its configuration base, its output, view encoding, the ER objectives and metrics.

The method contract (DESIGN.md §2)::

    method = erlib.methods.build("byol", er=True, backbone="resnet18_cifar")
    out = method(views, index=None)   # views: list of [B, C, H, W] tensors; index: dataset indices [B] (DeepCluster)
    out.loss, out.metrics             # scalar to minimise; dict of detached scalars (same ER keys for every method)
    method.update(progress)           # after optimiser.step(): EMA, centers, prototype normalisation
    method.on_epoch_start(epoch)      # k-means (DeepCluster-v2), queue start (SwAV)

Every metric is computed on the **global** batch (gathered under DDP) in float32, without gradients and without a
host synchronisation: the trainer reads them once per logging interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from erlib import bounds
from erlib.nn import BACKBONES, build_backbone

__all__ = ["MethodConfig", "MethodOutput", "Method", "encode_views", "full_precision", "er_objective", "discrete_er_objective",
           "continuous_metrics", "discrete_metrics", "CONTINUOUS_METRICS", "DISCRETE_METRICS"]

#: Keys every method reports (continuous view of its projections).
CONTINUOUS_METRICS = ("entropy_online", "entropy_target", "eta_online", "eta_target", "reconstruction",
                      "er_bound", "infonce")
#: Keys the clustering and DINO families add (their categorical variable W).
DISCRETE_METRICS = ("marginal_entropy_target", "conditional_entropy_target", "marginal_entropy_pred",
                    "conditional_entropy_pred", "cross_entropy")


@dataclass
class MethodConfig:
    """Fields every method has. ``kappa`` is the vMF concentration of the ER terms and of the logged estimates."""

    backbone: str = "resnet18_cifar"
    er: bool = False
    kappa: float = 10.0

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {self.backbone!r}")
        self.positive("kappa")

    def positive(self, *names: str) -> None:
        """Raise a ValueError naming each field that is not a finite number > 0."""
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}")

    def integer(self, *names: str, low: int = 1) -> None:
        """Raise a ValueError naming each field that is not an integer >= low."""
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

    def in_range(self, name: str, low: float, high: float) -> None:
        """Raise a ValueError naming the field unless low <= value <= high."""
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ValueError(f"{name} must lie in [{low}, {high}], got {value!r}")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass
class MethodOutput:
    """``loss``: the scalar to minimise; ``metrics``: detached scalar tensors (stay on the device)."""

    loss: Tensor
    metrics: dict[str, Tensor]


class Method(nn.Module):
    """Base class: holds the config and the online backbone; subclasses add heads, ``forward`` and ``update``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, cfg: MethodConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone)

    #: EMA target / teacher modules: they always normalise with batch statistics, as in the training forward (their
    #: BN buffers are copies of the online network's, which would not match their lagging weights in eval mode).
    ema_modules: ClassVar[tuple[str, ...]] = ()

    @property
    def er(self) -> bool:
        return self.cfg.er

    def train(self, mode: bool = True) -> Method:
        super().train(mode)
        for name in self.ema_modules:
            getattr(self, name).train(True)
        return self

    def features(self, x: Tensor) -> Tensor:
        """Backbone features, the representation that kNN and linear probes evaluate."""
        return self.backbone(x)

    def update(self, progress: float) -> None:
        """Called after every optimiser step with the training progress in [0, 1]."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called at the start of every epoch."""


def full_precision(t: Tensor) -> Tensor:
    """Half-precision tensors (bf16/fp16 under autocast) promoted to float32; float32/float64 left as they are.
    Losses and estimators never run in half precision."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def encode_views(fn, views: list[Tensor]) -> list[Tensor]:
    """Apply ``fn`` to every view, batching views of the same resolution together (multi-crop), in view order."""
    if not views:
        raise ValueError("views must hold at least one [B, C, H, W] tensor")
    out: list[Tensor | None] = [None] * len(views)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, v in enumerate(views):
        by_size.setdefault(tuple(v.shape[1:]), []).append(i)
    for idx in by_size.values():
        batch = fn(torch.cat([views[i] for i in idx]))
        for i, part in zip(idx, batch.chunk(len(idx))):
            out[i] = part
    return out  # type: ignore[return-value]


def er_objective(pred: Tensor, target: Tensor, entropy_of: Tensor, kappa: float) -> Tensor:
    r"""The continuous ER estimate to *maximise*: :math:`\frac\kappa k\sum_i \mu_i^\top t_i + \tilde H(e)`.

    vMF reconstruction of ``target`` from ``pred`` plus the KDE entropy (Joe, self-term) of ``entropy_of``; the vMF
    constants cancel (see :func:`erlib.bounds.er_bound`, which is the case ``entropy_of = target``).
    """
    rec = kappa * (pred * target).sum(dim=1).mean()
    return rec + bounds.relative_kde_entropy(full_precision(entropy_of), kappa, check=False)


def discrete_er_objective(target_probs: Tensor, pred_logits: Tensor, entropy_probs: Tensor) -> Tensor:
    r"""The discrete ER estimate to *maximise*: :math:`-\mathrm{CE}(p^{t}, q) + H(\bar p)` (marginal of ``entropy_probs``)."""
    rec = bounds.categorical_reconstruction(full_precision(target_probs), full_precision(pred_logits), check=False)
    return rec + bounds.marginal_entropy(full_precision(entropy_probs), check=False)


@torch.no_grad()
def continuous_metrics(pred: Tensor, target: Tensor, online: Tensor, kappa: float) -> dict[str, Tensor]:
    r"""The continuous ER metric set, on unit rows: KDE entropies (and η) of the online and target projections, the mean
    cosine between prediction and target, and the ER and InfoNCE estimates of :math:`I(Z_1;Z_2)` with the same κ."""
    pred, target, online = (F.normalize(full_precision(t.detach()), dim=1) for t in (pred, target, online))
    return {
        "entropy_online": bounds.kde_entropy(online, kappa, check=False),
        "entropy_target": bounds.kde_entropy(target, kappa, check=False),
        "eta_online": bounds.normalized_entropy(online, kappa, check=False),
        "eta_target": bounds.normalized_entropy(target, kappa, check=False),
        "reconstruction": (pred * target).sum(dim=1).mean(),
        "er_bound": bounds.er_bound(pred, target, kappa, check=False),
        "infonce": bounds.infonce_bound(pred, target, kappa, check=False),
    }


@torch.no_grad()
def discrete_metrics(target_probs: Tensor, pred_logits: Tensor) -> dict[str, Tensor]:
    r"""The discrete metric set: marginal :math:`H(\bar p)` and conditional :math:`\frac1k\sum_i H(p_i)` entropies of the
    target and of the prediction, and the cross-entropy between them."""
    target_probs, pred_logits = full_precision(target_probs.detach()), full_precision(pred_logits.detach())
    pred_probs = torch.softmax(pred_logits, dim=1)
    return {
        "marginal_entropy_target": bounds.marginal_entropy(target_probs, check=False),
        "conditional_entropy_target": bounds.conditional_entropy(target_probs, check=False),
        "marginal_entropy_pred": bounds.marginal_entropy(pred_probs, check=False),
        "conditional_entropy_pred": bounds.conditional_entropy(pred_probs, check=False),
        "cross_entropy": -bounds.categorical_reconstruction(target_probs, pred_logits, check=False),
    }
