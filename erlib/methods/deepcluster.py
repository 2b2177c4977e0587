r"""DeepCluster-v2 (Caron et al., 2020, in the SwAV paper) and DeepCluster-v2-ER.

A memory bank keeps the previous epoch's normalised projections of the two large crops of every image. At the start
of each epoch, spherical k-means on the bank (one run per head, crop ``h mod 2`` for head h) sets each head's K
prototypes to the centroids and gives every image a hard label :math:`y_h`; the prototypes are never learned. Every
crop predicts its image's labels:

.. math:: \mathcal L = \frac1{H V}\sum_{h=1}^{H}\sum_{v=1}^{V}\frac1B\sum_i
          -\log\operatorname{softmax}\big(\bar z_{v,i}^\top C_h/\tau\big)_{y_{h,i}} .

ER reading: reconstruction of the k-means label :math:`W_2`; the partition keeps :math:`H(W_2)` (the entropy of the
cluster sizes) high (ER-SPEC.md §2.2). During the first epoch the loss is zero: the forward passes fill the bank.
Images the bank has not seen at a clustering (the sampler drops a last partial batch) carry no label until the next.

**DeepCluster-v2-ER** ([DESIGN], lowest-confidence variant): the same reconstruction plus minus the marginal entropy
of the predictions of every head, :math:`\mathcal L_{ER} = \mathcal L - \frac1H\sum_h H(\bar p_h)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from erlib import bounds
from erlib import distributed as D
from erlib.methods.common import (
    Method,
    MethodConfig,
    MethodOutput,
    continuous_metrics,
    discrete_metrics,
    encode_views,
    full_precision,
)
from erlib.nn import MLP


@torch.no_grad()
def spherical_kmeans(x: Tensor, k: int, iterations: int = 10, init: Tensor | None = None,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
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
    num_samples: int = 50_000  # dataset size: the memory bank holds one row per image
    proj_hidden_dim: int = 2048
    proj_dim: int = 128
    num_prototypes: tuple[int, ...] = (3000, 3000, 3000)
    temperature: float = 0.1
    kmeans_iterations: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.positive("temperature")
        self.integer("num_samples", "proj_hidden_dim", "proj_dim", "kmeans_iterations")
        self.num_prototypes = tuple(self.num_prototypes)
        if not self.num_prototypes or any(isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= self.num_samples
                                          for k in self.num_prototypes):
            raise ValueError(f"num_prototypes must be a non-empty list of cluster counts in [2, num_samples], "
                             f"got {self.num_prototypes}")


class DeepClusterV2(Method):
    name = "deepcluster"
    Config = DeepClusterConfig

    def __init__(self, cfg: DeepClusterConfig):
        super().__init__(cfg)
        self.projector = MLP(self.backbone.out_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        for h, k in enumerate(cfg.num_prototypes):
            self.register_buffer(f"prototypes{h}", F.normalize(torch.randn(k, cfg.proj_dim), dim=1))
        self.register_buffer("memory", torch.zeros(2, cfg.num_samples, cfg.proj_dim))
        self.register_buffer("seen", torch.zeros(cfg.num_samples, dtype=torch.bool))
        self.register_buffer("assignments", torch.full((len(cfg.num_prototypes), cfg.num_samples), -1))
        self.has_labels = False

    def prototypes(self, h: int) -> Tensor:
        return getattr(self, f"prototypes{h}")

    def forward(self, views: list[Tensor], index: Tensor | None = None) -> MethodOutput:
        if index is None:
            raise ValueError("DeepCluster-v2 needs the dataset indices of the batch: call method(views, index=idx)")
        z = [F.normalize(full_precision(t), dim=1)
             for t in encode_views(lambda x: self.projector(self.backbone(x)), views)]
        heads = range(len(self.cfg.num_prototypes))
        scores = [[zv @ self.prototypes(h).T for zv in z] for h in heads]
        if self.has_labels:
            labels = self.assignments[:, index]  # -1: an image the bank had not seen at the last clustering
            loss = torch.stack([deepcluster_loss(s, labels[h], self.cfg.temperature)
                                for h in heads for s in scores[h]]).mean()
        else:
            loss = sum(s.sum() for s in scores[0]) * 0.0  # bank still filling: nothing to predict yet
        if self.er:
            probs = [torch.cat([torch.softmax(s / self.cfg.temperature, dim=1) for s in scores[h]]) for h in heads]
            loss = loss - torch.stack([bounds.marginal_entropy(D.gather(p), check=False) for p in probs]).mean()
        if self.training:
            self._remember(D.gather(index), [D.gather(zv.detach()) for zv in z[:2]])
        target = (F.one_hot(D.gather(labels[0]).clamp_min(0), self.cfg.num_prototypes[0]).to(z[0].dtype)
                  if self.has_labels
                  else torch.softmax(D.gather(scores[0][0]).detach() / self.cfg.temperature, dim=1))
        metrics = continuous_metrics(D.gather(z[0]), D.gather(z[1]), D.gather(z[0]), self.cfg.kappa)
        metrics.update(discrete_metrics(target, D.gather(scores[0][1]) / self.cfg.temperature))
        return MethodOutput(loss, metrics)

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
            centroids, assign = spherical_kmeans(self.memory[h % 2, seen], k, self.cfg.kmeans_iterations,
                                                 generator=generator)
            self.prototypes(h).copy_(centroids)
            self.assignments[h].fill_(-1)
            self.assignments[h, seen] = assign
        self.has_labels = True

    def on_epoch_start(self, epoch: int) -> None:
        # after the first epoch; images the bank has not seen (the sampler drops a last partial batch) get label -1
        if epoch >= 1 and int(self.seen.sum()) >= max(self.cfg.num_prototypes):  # one sync per epoch
            self.cluster(epoch)

    def get_extra_state(self) -> dict:
        return {"has_labels": self.has_labels}

    def set_extra_state(self, state: dict) -> None:
        self.has_labels = state["has_labels"]
