r"""BYOL (Grill et al., 2020) and BYOL-ER.

Online network :math:`f_\theta, g_\theta` + predictor :math:`h_\theta`; target :math:`f_\xi, g_\xi`, an EMA of the
online one with :math:`\tau_t = 1-(1-\tau_{\text{base}})\tfrac12(1+\cos\pi t/T)`. With :math:`p_v = h(g(f(v)))` and
:math:`z'_v = g_\xi(f_\xi(v))`, symmetrised over the two view orders:

.. math:: \mathcal L_{\text{BYOL}} = \tfrac12\big[\ell(p_1, z'_2) + \ell(p_2, z'_1)\big],\qquad
          \ell(p, z) = \frac1B\sum_i \big\|\bar p_i - \mathrm{sg}(\bar z_i)\big\|^2 = 2 - 2\cos(p_i, z_i)

— an affine function of the vMF reconstruction log-likelihood. ER reading: explicit reconstruction, an entropy kept
stable only implicitly by the slow target (ER-SPEC.md §2.4).

**BYOL-ER** ([DESIGN]): keep predictor, EMA target and stop-gradient; maximise the ER estimate with the entropy on the
online projections (``entropy_on="projection"``; or the predictor outputs, ``"prediction"``):

.. math:: \mathcal L_{ER} = -\tfrac12\sum_{(a,b)\in\{(1,2),(2,1)\}}\Big[\kappa\,\tfrac1B\textstyle\sum_i \bar p_{ai}^\top
          \mathrm{sg}(\bar z'_{bi}) + \tilde H(\bar z_a)\Big].
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
from erlib.schedules import ema_momentum, ema_update_


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    r"""Mean over the batch of :math:`\|\bar p - \bar z\|^2 = 2 - 2\cos(p, z)`; detach ``z`` in the caller."""
    return (2 - 2 * F.cosine_similarity(full_precision(p), full_precision(z), dim=1)).mean()


@dataclass
class BYOLConfig(MethodConfig):
    proj_hidden_dim: int = 4096
    proj_dim: int = 256
    pred_hidden_dim: int = 4096
    tau_base: float = 0.99  # 0.99 for 100-300 epochs, 0.996 for 1000 (BYOL presets); 0 = target is the online net
    entropy_on: str = "projection"  # BYOL-ER: "projection" (online z) or "prediction" (predictor output p)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.integer("proj_hidden_dim", "proj_dim", "pred_hidden_dim")
        self.in_range("tau_base", 0.0, 1.0)
        if self.entropy_on not in ("projection", "prediction"):
            raise ValueError(f"entropy_on must be 'projection' or 'prediction', got {self.entropy_on!r}")


class BYOL(Method):
    name = "byol"
    ema_modules = ("target",)
    Config = BYOLConfig

    def __init__(self, cfg: BYOLConfig):
        super().__init__(cfg)
        self.projector = MLP(self.backbone.out_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.predictor = MLP(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim)
        self.target = nn.Sequential(copy.deepcopy(self.backbone), copy.deepcopy(self.projector)).requires_grad_(False)
        self.momentum = cfg.tau_base

    def forward(self, views: list[Tensor], index: Tensor | None = None) -> MethodOutput:
        z = encode_views(lambda x: self.projector(self.backbone(x)), views[:2])
        p = [F.normalize(full_precision(self.predictor(zv)), dim=1) for zv in z]
        with torch.no_grad():
            zt = [F.normalize(full_precision(t), dim=1) for t in encode_views(self.target, views[:2])]
        z = [F.normalize(full_precision(zv), dim=1) for zv in z]
        pairs = [(0, 1), (1, 0)]
        if self.er:
            ent = z if self.cfg.entropy_on == "projection" else p
            p_g, zt_g, ent_g = ([D.gather(t) for t in ts] for ts in (p, zt, ent))
            loss = -sum(er_objective(p_g[a], zt_g[b], ent_g[a], self.cfg.kappa) for a, b in pairs) / 2
        else:  # per-sample loss: no batch statistic, no gather needed
            loss = sum(byol_loss(p[a], zt[b]) for a, b in pairs) / 2
        metrics = continuous_metrics(D.gather(p[0]), D.gather(zt[1]), D.gather(z[0]), self.cfg.kappa)
        metrics["byol_loss"] = byol_loss(D.gather(p[0]).detach(), D.gather(zt[1]))
        metrics["ema_momentum"] = p[0].new_tensor(self.momentum)
        return MethodOutput(loss, metrics)

    def update(self, progress: float) -> None:
        self.momentum = ema_momentum(self.cfg.tau_base, progress)
        ema_update_(self.target, nn.Sequential(self.backbone, self.projector), self.momentum)
