r"""SwAV (Caron et al., 2020) and SwAV-ER.

Projections :math:`\bar z` are scored against K unit prototypes, :math:`s = \bar z^\top C`. For each of the two large
crops, Sinkhorn–Knopp turns the scores of the (global) batch into codes :math:`q` whose batch marginal is uniform
(equipartition); every *other* crop predicts them (swapped prediction):

.. math:: \mathcal L = -\frac1{|P|}\sum_{(a,v)\in P}\frac1B\sum_i\sum_c q_{a,ic}\log\operatorname{softmax}(s_{v,i}/\tau)_c,
          \qquad P = \{(a, v): a\in\{1,2\}, v\ne a\}.

ER reading: reconstruction of the code :math:`W_2` from :math:`Z_1`, while equipartition pins :math:`H(W_2)=\log K`
(ER-SPEC.md §2.3). Collapse signature: the loss stuck at :math:`\log K`.

**SwAV-ER** ([DESIGN]): the explicit entropy replaces the equipartition. Targets are the detached softmax
predictions of the large crops (or, with ``keep_sinkhorn=True``, the Sinkhorn codes), and the loss adds minus the
marginal entropy of every crop's predictions:

.. math:: \mathcal L_{ER} = \frac1{|P|}\sum_{(a,v)}\mathrm{CE}\big(\mathrm{sg}(p_a), p_v\big) - H(\bar p),\quad
          p_v = \operatorname{softmax}(s_v/\tau).
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
    terms = [-(q * F.log_softmax(full_precision(scores[v]) / temperature, dim=1)).sum(dim=1).mean()
             for a, q in enumerate(codes) for v in range(len(scores)) if v != a]
    return torch.stack(terms).mean()


def swav_loss(scores1: Tensor, scores2: Tensor, temperature: float = 0.1, epsilon: float = 0.05,
              iterations: int = 3) -> Tensor:
    """Two-view SwAV loss: both views assigned by Sinkhorn–Knopp, each predicts the other's codes."""
    codes = [sinkhorn_knopp(s, epsilon, iterations) for s in (scores1, scores2)]
    return swapped_prediction(codes, [scores1, scores2], temperature)


@dataclass
class SwAVConfig(MethodConfig):
    proj_hidden_dim: int = 2048
    proj_dim: int = 128
    num_prototypes: int = 3000
    temperature: float = 0.1
    epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    freeze_prototypes_steps: int = 0  # no gradient to the prototypes for the first steps (313 at bs 4096)
    queue_length: int = 0  # past embeddings prepended to the Sinkhorn input; 0 = no queue
    queue_start_epoch: int = 15
    keep_sinkhorn: bool = False  # SwAV-ER: keep the Sinkhorn codes as targets (and add the entropy)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.positive("temperature", "epsilon")
        self.integer("proj_hidden_dim", "proj_dim", "num_prototypes", "sinkhorn_iterations")
        self.integer("freeze_prototypes_steps", "queue_length", "queue_start_epoch", low=0)


class SwAV(Method):
    name = "swav"
    Config = SwAVConfig

    def __init__(self, cfg: SwAVConfig):
        super().__init__(cfg)
        self.projector = MLP(self.backbone.out_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.prototypes = Prototypes(cfg.proj_dim, cfg.num_prototypes)
        self.register_buffer("queue", torch.zeros(2, cfg.queue_length, cfg.proj_dim))
        self.step, self.queue_filled, self.use_queue = 0, 0, False  # host-side counters (no device sync)

    def codes(self, a: int, scores: Tensor) -> Tensor:
        """Sinkhorn codes of crop ``a``, with the queue's scores prepended once the queue is on and full."""
        if not (self.use_queue and self.queue_filled >= self.cfg.queue_length):
            return sinkhorn_knopp(scores, self.cfg.epsilon, self.cfg.sinkhorn_iterations)
        queued = self.prototypes(self.queue[a]).detach()
        q = sinkhorn_knopp(torch.cat([queued, scores]), self.cfg.epsilon, self.cfg.sinkhorn_iterations)
        return q[queued.shape[0]:]

    def forward(self, views: list[Tensor], index: Tensor | None = None) -> MethodOutput:
        z = [F.normalize(full_precision(t), dim=1)
             for t in encode_views(lambda x: self.projector(self.backbone(x)), views)]
        frozen = self.step < self.cfg.freeze_prototypes_steps
        scores = [self.prototypes(zv, detach=frozen) for zv in z]
        if self.er and not self.cfg.keep_sinkhorn:
            codes = [torch.softmax(s.detach() / self.cfg.temperature, dim=1) for s in scores[:2]]
        else:
            codes = [self.codes(a, scores[a].detach()) for a in range(2)]
        loss = swapped_prediction(codes, scores, self.cfg.temperature)
        if self.er:  # the explicit entropy: marginal of every crop's predictions over the global batch
            probs = torch.cat([torch.softmax(s / self.cfg.temperature, dim=1) for s in scores])
            loss = loss - bounds.marginal_entropy(D.gather(probs), check=False)
        self._enqueue(z)
        metrics = continuous_metrics(D.gather(z[0]), D.gather(z[1]), D.gather(z[0]), self.cfg.kappa)
        metrics.update(discrete_metrics(D.gather(codes[0]), D.gather(scores[1] / self.cfg.temperature)))
        return MethodOutput(loss, metrics)

    @torch.no_grad()
    def _enqueue(self, z: list[Tensor]) -> None:
        if self.cfg.queue_length == 0 or not self.training:
            return
        for a in range(2):
            new = D.gather(z[a].detach())[: self.cfg.queue_length]
            self.queue[a] = torch.cat([new, self.queue[a, : self.cfg.queue_length - new.shape[0]]])
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
