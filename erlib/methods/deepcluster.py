r"""DeepCluster-v2 (Caron et al., 2020, in the SwAV paper) and DeepCluster-v2-ER.

A memory bank keeps the previous epoch's normalised projections of the two large crops of every image. At the start
of each epoch, spherical k-means on the bank (one run per head, crop ``h mod 2`` for head h) sets each head's K
prototypes to the centroids and gives every image a hard label :math:`y_h`; the prototypes are never learned. Every
crop predicts its image's labels:

.. math:: \mathcal L = \frac1{H V}\sum_{h=1}^{H}\sum_{v=1}^{V}\frac1B\sum_i
          -\log\operatorname{softmax}\big(\bar z_{v,i}^\top C_h/\tau\big)_{y_{h,i}} .

ER reading (Rodríguez-Gálvez et al., 2023): reconstruction of the k-means label :math:`W_2`; the partition keeps
:math:`H(W_2)` (the entropy of the cluster sizes) high. Before the first step the trainer fills the bank in one pass
over the training set without gradient (:meth:`DeepClusterV2.fill_memory`, as the original's ``init_memory``), so the
first clustering happens before the first epoch; the training forwards then keep the bank current. Images the bank
has not seen at a clustering carry no label (−1) until the next (without that pass, the whole first epoch has no
labels and a zero loss).

**DeepCluster-v2-ER** (erlib's design, docs/design.md; whether the paper trained one is not known): the same
reconstruction plus minus the marginal entropy of the predictions of every head,
:math:`\mathcal L_{ER} = \mathcal L - \frac1H\sum_h H(\bar p_h)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from erlib import distributed as D
from erlib.methods.common import (
    Method,
    MethodConfig,
    MethodOutput,
    continuous_metrics,
    discrete_metrics,
    encode_views,
    feature_metrics,
    full_precision,
    global_marginal_entropy,
    global_rows,
    option,
    unit_rows,
)
from erlib.nn import MLP


@torch.no_grad()
def spherical_kmeans(
    x: Tensor, k: int, iterations: int = 10, init: Tensor | None = None, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    r"""Spherical k-means on unit rows: returns (centroids [k, d] unit rows, assignments [n]).

    Initialised with k distinct random points (or ``init``); each iteration assigns :math:`\arg\max_c x_i^\top c` and
    sets each centroid to the normalised sum of its points; an empty cluster keeps its previous centroid.
    """
    if x.shape[0] < k:
        raise ValueError(f"k-means needs at least k={k} points, got {x.shape[0]}")
    if init is None:
        perm = torch.randperm(x.shape[0], generator=generator, device="cpu")[:k].to(x.device)
        init = x[perm]
    centroids = init.clone()
    for _ in range(iterations + 1):
        assign = (x @ centroids.T).argmax(dim=1)
        if _ == iterations:
            break
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        centroids = torch.where((counts > 0)[:, None], F.normalize(sums, dim=1), centroids)
    return centroids, assign


def deepcluster_loss(scores: Tensor, assignments: Tensor, temperature: float) -> Tensor:
    """Cross-entropy of softmax(scores/τ) [B, K] to the hard labels ``assignments`` [B]; label −1 (an image without a
    cluster yet) is skipped, and a batch without any label gives 0."""
    per_sample = F.cross_entropy(full_precision(scores) / temperature, assignments.clamp_min(0), reduction="none")
    labelled = (assignments >= 0).to(per_sample.dtype)
    return (per_sample * labelled).sum() / labelled.sum().clamp_min(1)


@dataclass
class DeepClusterConfig(MethodConfig):
    num_samples: int = option(
        50_000, "Dataset size: the memory bank holds one row per image and large crop (the trainer sets it)."
    )
    proj_hidden_dim: int = option(
        2048, "Hidden width of the projector MLP (2048 in DeepCluster-v2, facebookresearch/swav)."
    )
    proj_dim: int = option(
        128, "Projection dimension, the space of the bank and the centroids (128 in DeepCluster-v2)."
    )
    num_prototypes: tuple[int, ...] = option(
        (3000, 3000, 3000),
        "Cluster counts, one k-means head each: 3 × 3000 in DeepCluster-v2 (main_deepclusterv2.py) and in "
        "solo-learn's CIFAR recipe. Head h clusters large crop h mod 2 of the bank.",
    )
    temperature: float = option(0.1, "Softmax temperature τ of the cluster prediction (0.1 in DeepCluster-v2).")
    kmeans_iterations: int = option(10, "Spherical k-means iterations per epoch and head (10 in DeepCluster-v2).")
    seed: int = option(
        0, "Seed of the k-means initialisation (k random bank rows); epoch e uses seed + e, the same on every rank."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.positive("temperature")
        self.integer("num_samples", "proj_hidden_dim", "proj_dim", "kmeans_iterations")
        self.integer("seed", low=0)
        self.num_prototypes = tuple(self.num_prototypes)
        if not self.num_prototypes or any(
            isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= self.num_samples for k in self.num_prototypes
        ):
            raise ValueError(
                f"num_prototypes must be a non-empty list of cluster counts in [2, num_samples={self.num_samples}], "
                f"got {self.num_prototypes}"
            )


class DeepClusterV2(Method):
    """DeepCluster-v2 (Caron et al., 2020, with SwAV): offline clustering. Each epoch, spherical k-means on a memory
    bank of the previous epoch's projections gives every image a hard pseudo-label per head, and the centroids become
    fixed prototypes that every crop's projection must predict. DeepCluster-v2-ER adds the marginal entropy of the
    predictions."""

    name = "deepcluster"
    Config = DeepClusterConfig
    memory_bank = True
    cfg: DeepClusterConfig
    memory: Tensor
    seen: Tensor
    assignments: Tensor

    def __init__(self, cfg: DeepClusterConfig):
        super().__init__(cfg)
        self.projector = MLP(self.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        for h, k in enumerate(cfg.num_prototypes):
            self.register_buffer(f"prototypes{h}", F.normalize(torch.randn(k, cfg.proj_dim), dim=1))
        self.register_buffer("memory", torch.zeros(2, cfg.num_samples, cfg.proj_dim))
        self.register_buffer("seen", torch.zeros(cfg.num_samples, dtype=torch.bool))
        self.register_buffer("assignments", torch.full((len(cfg.num_prototypes), cfg.num_samples), -1))
        self.has_labels = False

    def prototypes(self, h: int) -> Tensor:
        """The centroids of head ``h`` [K_h, proj_dim] (a buffer: never learned)."""
        return getattr(self, f"prototypes{h}")

    @property
    def heads(self) -> range:
        return range(len(self.cfg.num_prototypes))

    def _project(self, views: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[list[Tensor]]]:
        """Backbone features, unit projections and, per head, the centroid scores of every crop."""
        h, z = encode_views(views, self.backbone, self.projector)
        z = [unit_rows(t) for t in z]
        return h, z, [[zv @ self.prototypes(head).T for zv in z] for head in self.heads]

    def _labels(self, index: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The batch's dataset indices and k-means labels [H, B] (−1: an image the bank had not seen at the last
        clustering; None before the first clustering)."""
        if index is None:
            raise ValueError("DeepCluster-v2 needs the dataset indices of the batch: call method(views, index=idx)")
        return index, (self.assignments[:, index] if self.has_labels else None)

    def forward(self, views: list[Tensor], index: Tensor | None = None) -> MethodOutput:
        index, labels = self._labels(index)
        _, z, scores = self._project(views)
        if labels is not None:
            loss = torch.stack(
                [deepcluster_loss(s, labels[h], self.cfg.temperature) for h in self.heads for s in scores[h]]
            ).mean()
        else:  # bank still filling: nothing to predict yet
            loss = torch.stack([s.sum() for s in scores[0]]).sum() * 0.0
        if self.er:
            loss = (
                loss
                - torch.stack(
                    [
                        global_marginal_entropy([torch.softmax(s / self.cfg.temperature, dim=1) for s in scores[h]])
                        for h in self.heads
                    ]
                ).mean()
            )
        if self.training:
            self._remember(D.gather(index), [D.gather(zv.detach()) for zv in z[:2]])
        return MethodOutput(torch.as_tensor(loss), self._metrics(z, scores, labels))

    @torch.no_grad()
    def _metrics(self, z: list[Tensor], scores: list[list[Tensor]], labels: Tensor | None) -> dict[str, Tensor]:
        soft = torch.softmax(global_rows(scores[0][0]) / self.cfg.temperature, dim=1)
        if labels is None:
            target = soft
        else:  # the k-means label of head 0; an image without a label yet falls back to the prediction
            y = D.gather(labels[0])
            target = torch.where((y >= 0)[:, None], F.one_hot(y.clamp_min(0), soft.shape[1]).to(soft.dtype), soft)
        metrics = continuous_metrics(z[0], z[1], z[0], self.cfg.kappa)
        metrics.update(discrete_metrics(target, full_precision(scores[0][1]) / self.cfg.temperature))
        return metrics

    @torch.no_grad()
    def monitor(self, views: list[Tensor], index: Tensor | None = None) -> dict[str, Tensor]:
        _, labels = self._labels(index)
        h, z, scores = self._project(views)
        return {**self._metrics(z, scores, labels), **feature_metrics(h[0], self.cfg.kappa)}

    @torch.no_grad()
    def fill_memory(self, views: list[Tensor], index: Tensor) -> None:
        """Store the unit projections of the two large crops for the images ``index`` (this rank's own call: no
        gather, so every rank that passes over every image holds the same bank)."""
        _, z = encode_views(views[:2], self.backbone, self.projector)
        self._remember(index, [unit_rows(t) for t in z])

    @torch.no_grad()
    def _remember(self, index: Tensor, z: list[Tensor]) -> None:
        for crop, zc in enumerate(z):
            self.memory[crop, index] = zc.to(self.memory.dtype)
        self.seen[index] = True

    @torch.no_grad()
    def cluster(self, epoch: int = 0) -> None:
        """k-means per head on the memory bank; prototypes ← centroids, labels ← assignments (same on every rank)."""
        generator = torch.Generator().manual_seed(self.cfg.seed + epoch)
        seen = self.seen.nonzero().squeeze(1)
        for h, k in enumerate(self.cfg.num_prototypes):
            centroids, assign = spherical_kmeans(
                self.memory[h % 2, seen], k, self.cfg.kmeans_iterations, generator=generator
            )
            self.prototypes(h).copy_(centroids)
            self.assignments[h].fill_(-1)
            self.assignments[h, seen] = assign
        self.has_labels = True

    def on_epoch_start(self, epoch: int) -> None:
        # as soon as the bank holds enough images (the trainer fills it before epoch 0); images it has not seen get -1
        if int(self.seen.sum()) >= max(self.cfg.num_prototypes):  # one sync per epoch
            self.cluster(epoch)

    def get_extra_state(self) -> dict:
        return {"has_labels": self.has_labels}

    def set_extra_state(self, state: dict) -> None:
        self.has_labels = state["has_labels"]
