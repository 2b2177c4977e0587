r"""SimCLR (Chen et al., 2020) and SimCLR-ER.

**SimCLR.** NT-Xent over the 2B projections :math:`u = [\bar z_1; \bar z_2]`, temperature τ:

.. math:: \mathcal L = -\frac1{2B}\sum_{a=1}^{2B}
          \log\frac{e^{u_a^\top u_{a^+}/\tau}}{\sum_{b\ne a}e^{u_a^\top u_b/\tau}} .

ER reading (Rodríguez-Gálvez et al., 2023, Sec. 3): InfoNCE = vMF reconstruction + a cross-view KDE entropy with
κ = 1/τ; the same-view negatives add a same-view entropy term (docs/theory.md).

**SimCLR-ER** (erlib's reading of the paper's ER objective for contrastive methods, see docs/design.md): same
network; the symmetric ER estimate with κ = 1/τ, no stop-gradient,

.. math:: \mathcal L_{ER} = -\Big[\kappa\,\tfrac1B\textstyle\sum_i \bar z_{1i}^\top\bar z_{2i}
          + \tfrac12\big(\tilde H(\bar z_1)+\tilde H(\bar z_2)\big)\Big].
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
    encode_views,
    er_objective,
    exact,
    feature_metrics,
    full_precision,
    option,
    unit_rows,
)
from erlib.nn import MLP


def ntxent_loss(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent (normalised temperature-scaled cross-entropy) of two batches of projections (normalised inside)."""
    u = F.normalize(full_precision(torch.cat([z1, z2])), dim=1)
    n = z1.shape[0]
    with exact(u):  # the 2B x 2B cosine matrix in float32 or wider, also under autocast
        logits = (u @ u.T / temperature).fill_diagonal_(float("-inf"))
        positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(u.device)
        return F.cross_entropy(logits, positives)


@dataclass
class SimCLRConfig(MethodConfig):
    proj_hidden_dim: int = option(
        2048, "Hidden width of the projector MLP (2048 in SimCLR and in solo-learn's CIFAR recipe)."
    )
    proj_dim: int = option(
        256,
        "Projector output dimension, the space of the loss and of the ER metrics: 128 in SimCLR "
        "(google-research/simclr), 256 in solo-learn's CIFAR recipe.",
    )
    proj_layers: int = option(
        2, "Linear layers in the projector: 2 in SimCLR v1, 3 in SimCLR v2 (google-research/simclr's default)."
    )
    temperature: float = option(
        0.2,
        "NT-Xent temperature τ; SimCLR-ER uses κ = 1/τ in its vMF terms. 0.5 in SimCLR's CIFAR-10 recipe "
        "(google-research/simclr README), 0.2 in solo-learn's (the default), 0.1 on ImageNet (SimCLR paper).",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.positive("temperature")
        self.integer("proj_dim", "proj_hidden_dim", "proj_layers")


class SimCLR(Method):
    """SimCLR (Chen et al., 2020): two views of every image, one shared encoder and projector, and the NT-Xent
    (InfoNCE) loss that pulls the two projections of an image together and pushes those of the other images in the
    batch away. SimCLR-ER replaces NT-Xent by the ER estimate (vMF reconstruction + KDE entropy, κ = 1/τ)."""

    name = "simclr"
    Config = SimCLRConfig
    cfg: SimCLRConfig

    def __init__(self, cfg: SimCLRConfig):
        super().__init__(cfg)
        self.projector = MLP(self.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim, cfg.proj_layers)

    def _project(self, views: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Backbone features and unit projections of the two views."""
        h, z = encode_views(views[:2], self.backbone, self.projector)
        return h, [unit_rows(t) for t in z]

    def forward(self, views: list[Tensor], index: Tensor | None = None) -> MethodOutput:
        _, (z1, z2) = self._project(views)
        g1, g2 = D.gather(z1), D.gather(z2)  # negatives and entropies over the global batch
        if self.er:
            kappa = 1.0 / self.cfg.temperature
            loss = -0.5 * (er_objective(g1, g2, g2, kappa) + er_objective(g2, g1, g1, kappa))
        else:
            loss = ntxent_loss(g1, g2, self.cfg.temperature)
        return MethodOutput(loss, self._metrics(z1, z2))

    @torch.no_grad()
    def _metrics(self, z1: Tensor, z2: Tensor) -> dict[str, Tensor]:
        metrics = continuous_metrics(z1, z2, z1, self.cfg.kappa)
        metrics["ntxent"] = ntxent_loss(D.gather(z1.detach()), D.gather(z2.detach()), self.cfg.temperature)
        return metrics

    @torch.no_grad()
    def monitor(self, views: list[Tensor], index: Tensor | None = None) -> dict[str, Tensor]:
        h, (z1, z2) = self._project(views)
        return {**self._metrics(z1, z2), **feature_metrics(h[0], self.cfg.kappa)}
