r"""What every method shares: its configuration base, its output, view encoding, the ER objectives and metrics.

The method contract (docs/design.md)::

    method = erlib.methods.build("byol", er=True, backbone="resnet18_cifar")
    out = method(views, index=None)   # views: list of [B, C, H, W] tensors; index: dataset indices [B] (DeepCluster)
    out.loss, out.metrics             # scalar to minimise; dict of detached scalars (same ER keys for every method)
    method.update(progress)           # after optimiser.step(): EMA, prototype normalisation, step counters
    method.on_epoch_start(epoch)      # k-means (DeepCluster-v2), queue start (SwAV)
    with batch_statistics(method):    # erlib.nn: BatchNorm on batch statistics, running statistics untouched
        metrics = method.monitor(views, index=None)   # the same metrics + backbone-feature η, without side effects

A method's ``forward`` reads encode → targets → loss → metrics; its side effects on its own state (DINO's center,
SwAV's queue, DeepCluster's memory bank) happen in ``forward`` only in training mode, and never in ``monitor``. Every
metric is computed on the **global** batch (gathered under DDP) in float32 or wider (autocast off), without gradients
and without a host synchronisation: the trainer reads them once per logging interval.

Every configuration field is declared with :func:`option`: a default, a help text (what the field is and the tuning
advice of the original papers / repositories) and, for enumerations, the allowed values, which ``__post_init__``
checks. :func:`erlib.methods.describe` lists them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from erlib import bounds
from erlib import distributed as D
from erlib.nn import BACKBONES, build_backbone, feature_dim

__all__ = [
    "MethodConfig",
    "MethodOutput",
    "Method",
    "option",
    "KAPPA_MAX",
    "encode_views",
    "full_precision",
    "exact",
    "unit_rows",
    "global_rows",
    "er_objective",
    "discrete_er_objective",
    "global_marginal_entropy",
    "continuous_metrics",
    "discrete_metrics",
    "feature_metrics",
    "CONTINUOUS_METRICS",
    "DISCRETE_METRICS",
    "FEATURE_METRICS",
]

#: Keys every method reports (continuous view of its projections).
CONTINUOUS_METRICS = (
    "entropy_online",
    "entropy_target",
    "eta_online",
    "eta_target",
    "reconstruction",
    "er_bound",
    "infonce",
)
#: Keys the clustering and DINO families add (their categorical variable W).
DISCRETE_METRICS = (
    "marginal_entropy_target",
    "conditional_entropy_target",
    "marginal_entropy_pred",
    "conditional_entropy_pred",
    "cross_entropy",
)
#: Keys :meth:`Method.monitor` adds: KDE entropy and η of the L2-normalised backbone features of view 0.
FEATURE_METRICS = ("entropy_features", "eta_features")

#: Largest allowed κ (one constant, :data:`erlib.bounds.KAPPA_MAX`): the Bessel series is verified up to it.
KAPPA_MAX = bounds.KAPPA_MAX


def option(default: Any, help: str, choices: Sequence[Any] | None = None) -> Any:
    """A dataclass field with its documentation: ``metadata={"help": help, "choices": choices}``.

    ``choices`` (an enumeration's allowed values) are checked by :meth:`MethodConfig.__post_init__`."""
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return field(default=default, metadata=metadata)


@dataclass
class MethodConfig:
    """Fields every method has."""

    backbone: str = option(
        "resnet18_cifar",
        "Feature extractor. '_cifar' ResNets have a 3x3 stride-1 stem without max-pool (the usual choice for 32 px "
        "images, e.g. solo-learn's CIFAR recipes); 'convnet_tiny' is a 4-block ConvNet for CPU teaching runs.",
        choices=sorted(BACKBONES),
    )
    er: bool = option(
        False,
        "Train the ER variant (Rodriguez-Galvez et al., 2023): the method's objective with an explicit entropy term "
        "(see the method's docstring for the equation).",
    )
    kappa: float = option(
        10.0,
        "vMF concentration κ of the ER terms and of every logged KDE entropy, η, ER and InfoNCE estimate, in "
        "(0, 1000]. κ = 1/τ links the vMF terms to a contrastive temperature τ (κ = 10 ↔ τ = 0.1); 10 is the "
        "default of the ER paper's code (apple/ml-entropy-reconstruction). Larger κ: sharper kernels, η saturates at "
        "1 sooner.",
    )

    def __post_init__(self) -> None:
        self.check_choices()
        self.positive("kappa")
        if self.kappa > KAPPA_MAX:
            raise ValueError(
                f"kappa must lie in (0, {KAPPA_MAX:g}] (the vMF normaliser's Bessel series is verified up to "
                f"{KAPPA_MAX:g} and grows with κ), got {self.kappa!r}; use a value such as 10"
            )

    def check_choices(self) -> None:
        """Raise a ValueError naming each enumeration field whose value is not one of its ``choices``."""
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices is not None and value not in choices:
                raise ValueError(f"{f.name} must be one of {list(choices)}, got {value!r}")

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
    """Base class: holds the config and the online backbone; subclasses add heads, ``forward``, ``monitor`` and
    ``update``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    cfg: MethodConfig

    def __init__(self, cfg: MethodConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone)
        self.feature_dim = feature_dim(self.backbone)

    @property
    def er(self) -> bool:
        return self.cfg.er

    def features(self, x: Tensor) -> Tensor:
        """Backbone features, the representation that kNN and linear probes evaluate."""
        return self.backbone(x)

    def forward(self, views: list[Tensor], index: Tensor | None = None) -> MethodOutput:  # noqa: D102
        raise NotImplementedError

    def monitor(self, views: list[Tensor], index: Tensor | None = None) -> dict[str, Tensor]:
        """The training forward's metrics on ``views`` plus ``entropy_features`` / ``eta_features`` (KDE entropy and
        η of the L2-normalised backbone features of view 0, with the method's κ), computed without gradient and
        without any side effect on the method's state. Run it inside :func:`erlib.nn.batch_statistics` to normalise
        as in training without touching the BatchNorm running statistics."""
        raise NotImplementedError

    def update(self, progress: float) -> None:
        """Called after every optimiser step with the training progress in [0, 1]."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called at the start of every epoch."""

    #: Whether the method keeps a memory bank that the trainer fills before the first step (:meth:`fill_memory`).
    memory_bank: ClassVar[bool] = False

    def fill_memory(self, views: list[Tensor], index: Tensor) -> None:
        """Store the embeddings of ``views`` of the images ``index`` in the memory bank, without gradient and without
        any other effect (methods with ``memory_bank = True``; the trainer calls it over the whole training set before
        the first step, as DeepCluster-v2's ``init_memory`` does)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no memory bank")


def full_precision(t: Tensor) -> Tensor:
    """Half-precision tensors (bf16/fp16 under autocast) promoted to float32; float32/float64 left as they are.
    Losses and estimators never run in half precision."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def encode_views(
    views: Sequence[Tensor], backbone: Callable[[Tensor], Tensor], head: Callable[[Tensor], Tensor]
) -> tuple[list[Tensor], list[Tensor]]:
    """Backbone features and head outputs of every view, in view order: ``(h, head(h))``.

    Views of the same resolution go through the networks together (multi-crop), so BatchNorm layers see them as one
    batch, as in the DINO and SwAV code."""
    if not views:
        raise ValueError("views must hold at least one [B, C, H, W] tensor")
    feats: list[Tensor | None] = [None] * len(views)
    outs: list[Tensor | None] = [None] * len(views)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, v in enumerate(views):
        by_size.setdefault(tuple(v.shape[1:]), []).append(i)
    for idx in by_size.values():
        h = backbone(torch.cat([views[i] for i in idx]))
        for i, h_part, out_part in zip(idx, h.chunk(len(idx)), head(h).chunk(len(idx))):
            feats[i], outs[i] = h_part, out_part
    return [t for t in feats if t is not None], [t for t in outs if t is not None]


def exact(t: Tensor) -> torch.autocast:
    """A region where autocast is off on ``t``'s device: inside, matrix products of float32 tensors stay float32 (under
    bf16 autocast a Gram matrix ``κ zᵀz`` would be rounded to bf16, an error of ~0.01·κ in every kernel logit)."""
    return torch.autocast(t.device.type, enabled=False)


def unit_rows(t: Tensor) -> Tensor:
    """L2-normalised rows in full precision (float32 or wider)."""
    return F.normalize(full_precision(t), dim=1)


def global_rows(t: Tensor) -> Tensor:
    """The global batch of ``t`` (gathered under DDP), detached, in full precision: what the metrics see."""
    return full_precision(D.gather(t.detach()))


def er_objective(pred: Tensor, target: Tensor, entropy_of: Tensor, kappa: float) -> Tensor:
    r"""The continuous ER estimate to *maximise*: :math:`\frac\kappa k\sum_i \mu_i^\top t_i + \tilde H(e)`.

    vMF reconstruction of ``target`` from ``pred`` plus the KDE entropy (Joe, self-term) of ``entropy_of``; the vMF
    constants cancel (see :func:`erlib.bounds.er_bound`, which is the case ``entropy_of = target``). Unit rows, already
    gathered by the caller.
    """
    with exact(pred):
        rec = kappa * (full_precision(pred) * full_precision(target)).sum(dim=1).mean()
        return rec + bounds.relative_kde_entropy(full_precision(entropy_of), kappa, check=False)


def discrete_er_objective(target_probs: Tensor, pred_logits: Tensor, entropy_probs: Tensor) -> Tensor:
    r"""The discrete ER estimate to *maximise*: :math:`-\mathrm{CE}(p^{t}, q) + H(\bar p)`, with :math:`\bar p` the
    marginal of ``entropy_probs``."""
    with exact(pred_logits):
        rec = bounds.categorical_reconstruction(full_precision(target_probs), full_precision(pred_logits), check=False)
        return rec + bounds.marginal_entropy(full_precision(entropy_probs), check=False)


def global_marginal_entropy(probs: Sequence[Tensor]) -> Tensor:
    r"""Marginal entropy :math:`H(\bar p)` of the probability rows of every tensor in ``probs`` together, over the
    global batch, differentiable (the ER term of the discrete families): :math:`\bar p = \frac1N\sum_i p_i`."""
    with exact(probs[0]):
        return bounds.marginal_entropy(D.gather(full_precision(torch.cat(list(probs)))), check=False)


@torch.no_grad()
def continuous_metrics(pred: Tensor, target: Tensor, online: Tensor, kappa: float) -> dict[str, Tensor]:
    r"""The continuous ER metric set of this rank's rows (gathered to the global batch here, normalised to unit rows):
    KDE entropies (Joe, self-term) and η of the online and target projections, the mean cosine between prediction and
    target, and the ER and InfoNCE estimates of :math:`I(Z_1;Z_2)` with the same κ."""
    pred, target, online = (F.normalize(global_rows(t), dim=1) for t in (pred, target, online))
    with exact(pred):
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
    r"""The discrete metric set of this rank's rows (gathered here): marginal :math:`H(\bar p)` and conditional
    :math:`\frac1k\sum_i H(p_i)` entropies of the target and of the prediction, and the cross-entropy between them."""
    target_probs, pred_logits = global_rows(target_probs), global_rows(pred_logits)
    with exact(pred_logits):
        pred_probs = torch.softmax(pred_logits, dim=1)
        return {
            "marginal_entropy_target": bounds.marginal_entropy(target_probs, check=False),
            "conditional_entropy_target": bounds.conditional_entropy(target_probs, check=False),
            "marginal_entropy_pred": bounds.marginal_entropy(pred_probs, check=False),
            "conditional_entropy_pred": bounds.conditional_entropy(pred_probs, check=False),
            "cross_entropy": -bounds.categorical_reconstruction(target_probs, pred_logits, check=False),
        }


@torch.no_grad()
def feature_metrics(features: Tensor, kappa: float) -> dict[str, Tensor]:
    r"""KDE entropy (Joe, self-term) and η of the L2-normalised backbone features of this rank's rows (gathered here):
    the object RankMe and the kNN / linear probes evaluate."""
    h = F.normalize(global_rows(features.flatten(1)), dim=1)
    with exact(h):
        return {
            "entropy_features": bounds.kde_entropy(h, kappa, check=False),
            "eta_features": bounds.normalized_entropy(h, kappa, check=False),
        }
