r"""SimCLR (Chen et al., 2020) and SimCLR-ER.

**SimCLR.** NT-Xent over the 2B projections :math:`u = [\bar z_1; \bar z_2]`, temperature τ:

.. math:: \mathcal L = -\frac1{2B}\sum_{a=1}^{2B}\log\frac{e^{u_a^\top u_{a^+}/\tau}}{\sum_{b\ne a}e^{u_a^\top u_b/\tau}} .

ER reading: InfoNCE = vMF reconstruction + a cross-view KDE entropy (κ = 1/τ); the same-view negatives add a
same-view entropy term (ER-SPEC.md §1.7).

**SimCLR-ER** (ER-SPEC.md §2.1, [DESIGN]): same network; the symmetric ER estimate with κ = 1/τ, no stop-gradient,

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
    full_precision,
)
from erlib.nn import MLP


def ntxent_loss(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent (normalised temperature-scaled cross-entropy) of two batches of projections (normalised inside)."""
    u = F.normalize(full_precision(torch.cat([z1, z2])), dim=1)
    n = z1.shape[0]
    logits = (u @ u.T / temperature).fill_diagonal_(float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(u.device)
    return F.cross_entropy(logits, positives)


@dataclass
class SimCLRConfig(MethodConfig):
    proj_hidden_dim: int = 2048
    proj_dim: int = 256
    proj_layers: int = 2
    temperature: float = 0.2  # solo-learn's CIFAR value; 0.5 in SimCLR's own CIFAR recipe, 0.1 on ImageNet

    def __post_init__(self) -> None:
        super().__post_init__()
        self.positive("temperature")
        self.integer("proj_dim", "proj_hidden_dim", "proj_layers")


class SimCLR(Method):
    name = "simclr"
    Config = SimCLRConfig

    def __init__(self, cfg: SimCLRConfig):
        super().__init__(cfg)
        self.projector = MLP(self.backbone.out_dim, cfg.proj_hidden_dim, cfg.proj_dim, cfg.proj_layers)

    def forward(self, views: list[Tensor], index: Tensor | None = None) -> MethodOutput:
        z1, z2 = (D.gather(F.normalize(full_precision(z), dim=1))
                  for z in encode_views(lambda x: self.projector(self.backbone(x)), views[:2]))
        kappa = 1.0 / self.cfg.temperature
        if self.er:
            loss = -0.5 * (er_objective(z1, z2, z2, kappa) + er_objective(z2, z1, z1, kappa))
        else:
            loss = ntxent_loss(z1, z2, self.cfg.temperature)
        metrics = continuous_metrics(z1, z2, z1, self.cfg.kappa)
        metrics["ntxent"] = ntxent_loss(z1.detach(), z2.detach(), self.cfg.temperature)
        return MethodOutput(loss, metrics)
