r"""SwAV (Caron et al., 2020) and SwAV-ER.

Projections :math:`\bar z` are scored against K unit prototypes, :math:`s = \bar z^\top C`. For each of the two large
crops, Sinkhorn–Knopp turns the scores of the (global) batch into codes :math:`q` whose batch marginal is uniform
(equipartition); every *other* crop predicts them (swapped prediction):

.. math:: \mathcal L = -\frac1{|P|}\sum_{(a,v)\in P}\frac1B\sum_i\sum_c
          q_{a,ic}\log\operatorname{softmax}(s_{v,i}/\tau)_c,\qquad P = \{(a, v): a\in\{1,2\}, v\ne a\}.

ER reading (Rodríguez-Gálvez et al., 2023): reconstruction of the code :math:`W_2` from :math:`Z_1`, while
equipartition pins :math:`H(W_2)=\log K`. Collapse signature: the loss stuck at :math:`\log K`. With a queue, the
Sinkhorn input is :math:`[\bar z_{\text{queue}}^\top C;\ s]` (the newest ``queue_length`` past embeddings of the same
crop first) and only the batch's rows of the codes are kept.

**SwAV-ER** (erlib's design, docs/design.md): the explicit entropy replaces the equipartition. Targets are the
detached softmax predictions of the large crops (or, with ``keep_sinkhorn=True``, the Sinkhorn codes), and the loss
adds minus the marginal entropy of every crop's predictions:

.. math:: \mathcal L_{ER} = \frac1{|P|}\sum_{(a,v)}\mathrm{CE}\big(\mathrm{sg}(p_a), p_v\big) - H(\bar p),\quad
          p_v = \operatorname{softmax}(s_v/\tau).
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
    option,
    unit_rows,
)
from erlib.nn import MLP, Prototypes


@torch.no_grad()
def sinkhorn_knopp(scores: Tensor, epsilon: float = 0.05, iterations: int = 3) -> Tensor:
    r"""Codes :math:`q` [B, K] with rows summing to 1 and (once converged) a uniform batch marginal.

    :math:`Q = \exp(s/\varepsilon)^\top` (K × B), total mass normalised to 1, then ``iterations`` rounds of
    {each prototype's mass → 1/K; each sample's mass → 1/B}; finally each sample's column is scaled to sum to 1. Under
    DDP the sums run over the global batch (each rank passes its own rows and gets its own codes back).
    """
    logits = full_precision(scores) / epsilon
    shift = D.all_reduce_max(logits.max())
    q = torch.exp(logits - shift).T  # K x B; a common shift cancels in the first normalisation
    n_samples = q.shape[1] * D.world_size()
    n_protos = q.shape[0]
    q /= D.all_reduce_sum(q.sum())
    for _ in range(iterations):
        q /= D.all_reduce_sum(q.sum(dim=1, keepdim=True)) * n_protos
        q /= q.sum(dim=0, keepdim=True) * n_samples
    return (q * n_samples).T


def swapped_prediction(codes: list[Tensor], scores: list[Tensor], temperature: float) -> Tensor:
    """Mean cross-entropy of every crop's softmax(scores/τ) to the codes of every *other* assigned crop."""
    terms = [
        -(q * F.log_softmax(full_precision(scores[v]) / temperature, dim=1)).sum(dim=1).mean()
        for a, q in enumerate(codes)
        for v in range(len(scores))
        if v != a
    ]
    return torch.stack(terms).mean()


def swav_loss(
    scores1: Tensor, scores2: Tensor, temperature: float = 0.1, epsilon: float = 0.05, iterations: int = 3
) -> Tensor:
    """Two-view SwAV loss: both views assigned by Sinkhorn–Knopp, each predicts the other's codes."""
    codes = [sinkhorn_knopp(s, epsilon, iterations) for s in (scores1, scores2)]
    return swapped_prediction(codes, [scores1, scores2], temperature)


@dataclass
class SwAVConfig(MethodConfig):
    proj_hidden_dim: int = option(2048, "Hidden width of the projector MLP (2048 in SwAV, facebookresearch/swav).")
    proj_dim: int = option(128, "Projection (and prototype) dimension (128 in SwAV).")
    num_prototypes: int = option(
        3000,
        "Prototypes K (3000 in SwAV and in solo-learn's CIFAR recipe). Collapse signature: the loss stuck at log K.",
    )
    temperature: float = option(0.1, "Softmax temperature τ of the swapped prediction (0.1 in SwAV).")
    epsilon: float = option(
        0.05,
        "Entropic regularisation ε of Sinkhorn-Knopp: codes exp(s/ε) (0.05 in SwAV; its README suggests lowering it, "
        "e.g. to 0.03, if training collapses). Smaller ε: sharper codes.",
    )
    sinkhorn_iterations: int = option(
        3, "Sinkhorn-Knopp iterations (3 in SwAV: enough for an approximate equipartition)."
    )
    freeze_prototypes_steps: int = option(
        0,
        "Optimiser steps during which the prototypes get no gradient: about the first epoch in SwAV "
        "(freeze_prototypes_niters 313 at batch 4096, 5005 at batch 256); 2 epochs in solo-learn's CIFAR recipe.",
    )
    queue_length: int = option(
        0,
        "Past embeddings per assigned crop prepended to the Sinkhorn input, so the equipartition sees enough samples "
        "at small batches: 3840 at batch 256 in SwAV, none at batch 4096 (a multiple of the batch size). 0: no queue.",
    )
    queue_start_epoch: int = option(
        15,
        "Epoch from which the codes use the queue (15 in SwAV at batch 256, 50 in solo-learn's CIFAR recipe); a queue "
        "started too early destabilises training. The queue fills from the first step; it is used once full.",
    )
    keep_sinkhorn: bool = option(
        False,
        "SwAV-ER: keep the Sinkhorn codes as targets and add the entropy (True), or let the entropy term replace the "
        "equipartition, with the detached softmax predictions of the large crops as targets (False).",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.positive("temperature", "epsilon")
        self.integer("proj_hidden_dim", "proj_dim", "num_prototypes", "sinkhorn_iterations")
        self.integer("freeze_prototypes_steps", "queue_length", "queue_start_epoch", low=0)


class SwAV(Method):
    """SwAV (Caron et al., 2020): online clustering. The projections of two large crops are assigned to K learned
    prototypes by Sinkhorn-Knopp under an equipartition constraint, and every other crop predicts those codes
    (swapped prediction). SwAV-ER replaces the equipartition by an explicit marginal-entropy term."""

    name = "swav"
    Config = SwAVConfig
    cfg: SwAVConfig
    queue: Tensor

    def __init__(self, cfg: SwAVConfig):
        super().__init__(cfg)
        self.projector = MLP(self.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.prototypes = Prototypes(cfg.proj_dim, cfg.num_prototypes)
        self.register_buffer("queue", torch.zeros(2, cfg.queue_length, cfg.proj_dim))
        self.step, self.queue_filled, self.use_queue = 0, 0, False  # host-side counters (no device sync)

    def _project(self, views: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Backbone features and unit projections of every crop."""
        h, z = encode_views(views, self.backbone, self.projector)
        return h, [unit_rows(t) for t in z]

    def _scores(self, z: list[Tensor]) -> list[Tensor]:
        """Prototype scores of every crop; no gradient to the prototypes during the first freeze_prototypes_steps."""
        frozen = self.step < self.cfg.freeze_prototypes_steps
        return [self.prototypes(zv, detach=frozen) for zv in z]

    @torch.no_grad()
    def _targets(self, scores: list[Tensor]) -> list[Tensor]:
        """The targets of the two large crops: Sinkhorn codes, or (SwAV-ER without keep_sinkhorn) the softmax."""
        if self.er and not self.cfg.keep_sinkhorn:
            return [torch.softmax(full_precision(s) / self.cfg.temperature, dim=1) for s in scores[:2]]
        return [self.codes(a, scores[a]) for a in range(2)]

    @torch.no_grad()
    def codes(self, a: int, scores: Tensor) -> Tensor:
        """Sinkhorn codes of crop ``a``, with the queue's scores prepended once the queue is on and full."""
        if not (self.use_queue and self.queue_filled >= self.cfg.queue_length):
            return sinkhorn_knopp(scores, self.cfg.epsilon, self.cfg.sinkhorn_iterations)
        queued = self.prototypes(self.queue[a].to(scores.dtype))
        q = sinkhorn_knopp(torch.cat([queued, scores]), self.cfg.epsilon, self.cfg.sinkhorn_iterations)
        return q[queued.shape[0] :]

    def forward(self, views: list[Tensor], index: Tensor | None = None) -> MethodOutput:
        _, z = self._project(views)
        scores = self._scores(z)
        codes = self._targets(scores)
        loss = swapped_prediction(codes, scores, self.cfg.temperature)
        if self.er:  # the explicit entropy: marginal of every crop's predictions over the global batch
            loss = loss - global_marginal_entropy([torch.softmax(s / self.cfg.temperature, dim=1) for s in scores])
        if self.training:
            self._enqueue(z)
        return MethodOutput(loss, self._metrics(z, scores, codes))

    @torch.no_grad()
    def _metrics(self, z: list[Tensor], scores: list[Tensor], codes: list[Tensor]) -> dict[str, Tensor]:
        metrics = continuous_metrics(z[0], z[1], z[0], self.cfg.kappa)
        metrics.update(discrete_metrics(codes[0], full_precision(scores[1]) / self.cfg.temperature))
        return metrics

    @torch.no_grad()
    def monitor(self, views: list[Tensor], index: Tensor | None = None) -> dict[str, Tensor]:
        h, z = self._project(views)
        scores = self._scores(z)
        return {**self._metrics(z, scores, self._targets(scores)), **feature_metrics(h[0], self.cfg.kappa)}

    @torch.no_grad()
    def _enqueue(self, z: list[Tensor]) -> None:
        """Push the global batch's embeddings of the two large crops in front of the queue (newest first)."""
        if self.cfg.queue_length == 0:
            return
        for a in range(2):
            new = D.gather(z[a].detach())[: self.cfg.queue_length]
            self.queue[a] = torch.cat([new.to(self.queue.dtype), self.queue[a, : self.cfg.queue_length - new.shape[0]]])
        self.queue_filled = min(self.queue_filled + new.shape[0], self.cfg.queue_length)

    def update(self, progress: float) -> None:
        self.prototypes.normalize_()
        self.step += 1

    def on_epoch_start(self, epoch: int) -> None:
        self.use_queue = self.cfg.queue_length > 0 and epoch >= self.cfg.queue_start_epoch

    def get_extra_state(self) -> dict:
        return {"step": self.step, "queue_filled": self.queue_filled, "use_queue": self.use_queue}

    def set_extra_state(self, state: dict) -> None:
        self.step, self.queue_filled, self.use_queue = state["step"], state["queue_filled"], state["use_queue"]
