r"""BYOL (Grill et al., 2020) and BYOL-ER.

Online network :math:`f_\theta, g_\theta` + predictor :math:`h_\theta`; target :math:`f_\xi, g_\xi`, an EMA of the
online one with :math:`\tau_t = 1-(1-\tau_{\text{base}})\tfrac12(1+\cos\pi t/T)`. With :math:`p_v = h(g(f(v)))` and
:math:`z'_v = g_\xi(f_\xi(v))`, symmetrised over the two view orders:

.. math:: \mathcal L_{\text{BYOL}} = \tfrac12\big[\ell(p_1, z'_2) + \ell(p_2, z'_1)\big],\qquad
          \ell(p, z) = \frac1B\sum_i \big\|\bar p_i - \mathrm{sg}(\bar z_i)\big\|^2 = 2 - 2\cos(p_i, z_i)

— an affine function of the vMF reconstruction log-likelihood. ER reading (Rodríguez-Gálvez et al., 2023): explicit
reconstruction, an entropy kept stable only implicitly by the slow target.

**BYOL-ER** (erlib's design, docs/design.md): keep predictor, EMA target and stop-gradient; maximise the ER estimate
with the entropy on the online projections (``entropy_on="projection"``; or the predictor outputs,
``"prediction"``):

.. math:: \mathcal L_{ER} = -\tfrac12\sum_{(a,b)\in\{(1,2),(2,1)\}}\Big[\kappa\,\tfrac1B\textstyle\sum_i
          \bar p_{ai}^\top\mathrm{sg}(\bar z'_{bi}) + \tilde H(\bar e_a)\Big],
          \qquad \bar e_a = \bar z_a \text{ or } \bar p_a .
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
    feature_metrics,
    full_precision,
    option,
    unit_rows,
)
from erlib.nn import MLP
from erlib.schedules import ema_momentum, ema_update_


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    r"""Mean over the batch of :math:`\|\bar p - \bar z\|^2 = 2 - 2\cos(p, z)`; detach ``z`` in the caller."""
    return (2 - 2 * F.cosine_similarity(full_precision(p), full_precision(z), dim=1)).mean()


@dataclass
class BYOLConfig(MethodConfig):
    proj_hidden_dim: int = option(
        4096,
        "Hidden width of the projector MLP (4096 in BYOL, deepmind-research/byol, and in solo-learn's CIFAR recipe).",
    )
    proj_dim: int = option(256, "Projection dimension, the space of the loss and of the ER metrics (256 in BYOL).")
    pred_hidden_dim: int = option(4096, "Hidden width of the predictor MLP (4096 in BYOL).")
    tau_base: float = option(
        0.99,
        "Base EMA momentum of the target, raised to 1 by a cosine: τ_t = 1 − (1 − τ_base)(1 + cos πt/T)/2. BYOL's "
        "presets (deepmind-research/byol): 0.99 for 100-300 epochs, 0.996 for 1000, 0.97 for 40. 0: the target is "
        "the online network. The ER paper reports ER variants stay stable at smaller values.",
    )
    entropy_on: str = option(
        "projection",
        "BYOL-ER: the embeddings whose KDE entropy is maximised: the online projections z̄ ('projection') or the "
        "predictor outputs p̄ ('prediction').",
        choices=("projection", "prediction"),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.integer("proj_hidden_dim", "proj_dim", "pred_hidden_dim")
        self.in_range("tau_base", 0.0, 1.0)


class BYOL(Method):
    """BYOL (Grill et al., 2020): an online network with a predictor regresses the projection of the other view made
    by a target network, an exponential moving average of the online one; no negatives. BYOL-ER adds the KDE entropy
    of the online projections to the (vMF) reconstruction."""

    name = "byol"
    Config = BYOLConfig
    cfg: BYOLConfig

    def __init__(self, cfg: BYOLConfig):
        super().__init__(cfg)
        self.projector = MLP(self.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim)
        self.predictor = MLP(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim)
        # state-dict keys target.0.* (backbone) and target.1.* (projector)
        self.target = nn.Sequential(copy.deepcopy(self.backbone), copy.deepcopy(self.projector)).requires_grad_(False)
        self.momentum = cfg.tau_base

    def _online(self, views: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Backbone features, unit projections z̄ and unit predictions p̄ of the two views."""
        h, z = encode_views(views[:2], self.backbone, self.projector)
        p = [unit_rows(self.predictor(zv)) for zv in z]
        return h, [unit_rows(zv) for zv in z], p

    @torch.no_grad()
    def _target(self, views: list[Tensor]) -> list[Tensor]:
        """Unit target projections z̄' of the two views (no gradient)."""
        _, zt = encode_views(views[:2], self.target[0], self.target[1])
        return [unit_rows(t) for t in zt]

    def forward(self, views: list[Tensor], index: Tensor | None = None) -> MethodOutput:
        _, z, p = self._online(views)
        zt = self._target(views)
        pairs = [(0, 1), (1, 0)]
        if self.er:  # the KDE entropy needs the global batch
            ent = z if self.cfg.entropy_on == "projection" else p
            p_g, zt_g, ent_g = ([D.gather(t) for t in ts] for ts in (p, zt, ent))
            loss = -sum(er_objective(p_g[a], zt_g[b], ent_g[a], self.cfg.kappa) for a, b in pairs) / 2
        else:  # per-sample loss: no batch statistic, no gather needed
            loss = sum(byol_loss(p[a], zt[b]) for a, b in pairs) / 2
        return MethodOutput(torch.as_tensor(loss), self._metrics(z, p, zt))

    @torch.no_grad()
    def _metrics(self, z: list[Tensor], p: list[Tensor], zt: list[Tensor]) -> dict[str, Tensor]:
        metrics = continuous_metrics(p[0], zt[1], z[0], self.cfg.kappa)
        metrics["byol_loss"] = byol_loss(D.gather(p[0].detach()), D.gather(zt[1]))
        metrics["ema_momentum"] = p[0].new_tensor(self.momentum)
        return metrics

    @torch.no_grad()
    def monitor(self, views: list[Tensor], index: Tensor | None = None) -> dict[str, Tensor]:
        h, z, p = self._online(views)
        return {**self._metrics(z, p, self._target(views)), **feature_metrics(h[0], self.cfg.kappa)}

    def update(self, progress: float) -> None:
        self.momentum = ema_momentum(self.cfg.tau_base, progress)
        ema_update_(self.target, (self.backbone, self.projector), self.momentum)
