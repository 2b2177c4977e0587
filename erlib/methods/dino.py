r"""DINO (Caron et al., 2021) and DINO-ER.

Student and EMA teacher share an architecture: backbone + :class:`~erlib.nn.DINOHead` (MLP → bottleneck
:math:`\bar e` → K logits). Teacher probabilities are centred and sharpened, student probabilities use a higher
temperature; every teacher global view supervises every *other* student view:

.. math:: \mathcal L = \frac1{|P|}\sum_{(t,s)\in P}\frac1B\sum_i \mathrm{CE}\big(p_{t,i}, p_{s,i}\big),\quad
          p_t = \operatorname{softmax}\big((g_t - c)/\tau_t\big),\ p_s = \operatorname{softmax}(g_s/\tau_s),

with the center :math:`c \leftarrow m\,c + (1-m)\,\overline{g_t}` (mean over the global batch and both global views),
the teacher temperature warmed up linearly, :math:`\tau_t = \tau_0 + (\tau_{t,\text{final}} - \tau_0)\,p/p_w` for
training progress :math:`p < p_w`, and the teacher an EMA of the student. ER reading (Rodríguez-Gálvez et al., 2023):
reconstruction of the teacher's :math:`W_2` from the student; centering raises the marginal :math:`H(W_2)`,
sharpening lowers :math:`H(W_2\mid X)`.

**DINO-ER** (erlib's design, docs/design.md): keep student, teacher, temperatures and EMA, and add an entropy term
(``centering`` and ``sharpening`` can be switched off):

* ``entropy_on="marginal"`` (default): minus the marginal entropy of the student's predictions over all V views of the
  global batch, :math:`\mathcal L_{ER} = \mathcal L - H(\bar p_s)`, :math:`\bar p_s = \frac1{VB}\sum_{v,i} p_{s,v,i}`;
* ``entropy_on="embedding"``: minus the continuous KDE entropy (Joe, self-term, the method's κ) of the student's
  L2-normalised bottleneck embeddings, averaged over the views,
  :math:`\mathcal L_{ER} = \mathcal L - \frac1V\sum_v \tilde H(\bar e_{s,v})`,
  :math:`\tilde H(\bar e) = -\frac1B\sum_i \log\sum_j e^{\kappa\,\bar e_i^\top\bar e_j} + \log B` — as BYOL-ER does for
  its projections. A high :math:`H(\bar p_s)` can coexist with collapsed embeddings (the last layer can spread one
  point over many prototypes); this term acts on the embeddings themselves.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from erlib import bounds
from erlib import distributed as D
from erlib.methods.common import (
    Method,
    MethodConfig,
    MethodOutput,
    continuous_metrics,
    discrete_metrics,
    encode_views,
    exact,
    feature_metrics,
    full_precision,
    global_marginal_entropy,
    option,
    unit_rows,
)
from erlib.nn import DINOHead
from erlib.schedules import ema_momentum, ema_update_


def dino_loss(
    student_logits: list[Tensor], teacher_logits: list[Tensor], center: Tensor, student_temp: float, teacher_temp: float
) -> Tensor:
    """Mean over (teacher global view t, student view s ≠ t) of CE(softmax((g_t − c)/τ_t), softmax(g_s/τ_s))."""
    targets = [torch.softmax((full_precision(g.detach()) - center) / teacher_temp, dim=1) for g in teacher_logits]
    log_ps = [torch.log_softmax(full_precision(g) / student_temp, dim=1) for g in student_logits]
    terms = [
        -(p_t * log_ps[s]).sum(dim=1).mean() for t, p_t in enumerate(targets) for s in range(len(log_ps)) if s != t
    ]
    return torch.stack(terms).mean()


def center_update(center: Tensor, teacher_logits: list[Tensor], momentum: float) -> Tensor:
    r"""DINO's center EMA over the global batch: :math:`c \leftarrow m\,c + (1-m)\,\frac1{VB}\sum_{v,i} g_{t,v,i}`."""
    batch_center = D.all_reduce_mean(full_precision(torch.cat(teacher_logits).detach()).mean(dim=0))
    return momentum * center + (1 - momentum) * batch_center


def embedding_entropy(embeddings: list[Tensor], kappa: float) -> Tensor:
    r"""DINO-ER's ``"embedding"`` term: :math:`\frac1V\sum_v \tilde H(\bar e_v)`, the constant-free KDE entropy (Joe,
    self-term) of each view's unit embeddings over the global batch, averaged over the views; differentiable."""
    with exact(embeddings[0]):
        return torch.stack(
            [bounds.relative_kde_entropy(D.gather(unit_rows(e)), kappa, check=False) for e in embeddings]
        ).mean()


@dataclass
class DINOConfig(MethodConfig):
    out_dim: int = option(
        4096,
        "Prototypes K, the last layer's outputs: 65536 in DINO (facebookresearch/dino), 4096 in solo-learn's CIFAR "
        "recipe (the default).",
    )
    hidden_dim: int = option(2048, "Hidden width of the head's 3-layer GELU MLP (2048 in DINO).")
    bottleneck_dim: int = option(
        256,
        "Bottleneck dimension before the L2-normalisation and the last layer (256 in DINO); the continuous ER "
        "metrics and DINO-ER's 'embedding' entropy live here.",
    )
    use_bn_in_head: bool = option(
        False,
        "BatchNorm after each hidden layer of the head's MLP (DINO's use_bn_in_head: off by default, for ViTs). "
        "With a small backbone it keeps the embeddings of different images apart at initialisation.",
    )
    norm_last_layer: bool = option(
        True,
        "Keep the last layer's rows at unit norm, so the logits are cosines (DINO's norm_last_layer: True by default; "
        "'False improves performance but can make training unstable').",
    )
    student_temp: float = option(0.1, "Student temperature τ_s (0.1 in DINO).")
    teacher_temp: float = option(
        0.04,
        "Teacher temperature τ_t after the warm-up (0.04 in DINO; its main_dino.py: above 0.07 is unstable, start "
        "from 0.04 and raise it slightly if needed). Ignored with sharpening=False.",
    )
    teacher_temp_start: float = option(
        0.04,
        "Teacher temperature the warm-up starts from (DINO's warmup_teacher_temp, 0.04: 'works well in most cases; "
        "try decreasing it if the training loss does not decrease').",
    )
    teacher_temp_warmup_fraction: float = option(
        0.0,
        "Fraction of training over which τ_t rises linearly from teacher_temp_start to teacher_temp (DINO counts "
        "epochs, warmup_teacher_temp_epochs: 0 by default, 30 in its ViT runs). 0: no warm-up.",
    )
    center_momentum: float = option(
        0.9, "Momentum m of the center, c ← m·c + (1 − m)·mean of the teacher logits (0.9 in DINO)."
    )
    tau_base: float = option(
        0.996,
        "Base EMA momentum of the teacher, cosine to 1 (0.996 in DINO; its main_dino.py recommends 0.9995 at batch "
        "256, as solo-learn's CIFAR recipe uses). 0: the teacher is the student.",
    )
    freeze_last_layer_steps: int = option(
        0,
        "Optimiser steps during which the last layer (the prototypes) gets no gradient. DINO freezes it for the first "
        "epoch (freeze_last_layer=1): 'typically helps training; increase it if the loss does not decrease'.",
    )
    centering: bool = option(
        True,
        "Subtract the center c from the teacher logits (DINO). False: no centering (the center stays 0), an ablation "
        "for the ER reading: centering raises the marginal entropy of the teacher's W.",
    )
    sharpening: bool = option(
        True,
        "Teacher temperature below the student's (DINO). False: the teacher uses the student's temperature τ_s, an "
        "ablation for the ER reading: sharpening lowers the teacher's conditional entropy.",
    )
    entropy_on: str = option(
        "marginal",
        "DINO-ER's entropy term: 'marginal', H(p̄_s) of the student's batch-mean softmax; 'embedding', the KDE entropy "
        "(κ) of the student's L2-normalised bottleneck embeddings, which stops them collapsing.",
        choices=("marginal", "embedding"),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.positive("student_temp", "teacher_temp", "teacher_temp_start")
        self.integer("out_dim", "hidden_dim", "bottleneck_dim")
        self.in_range("teacher_temp_warmup_fraction", 0.0, 1.0)
        self.in_range("center_momentum", 0.0, 1.0)
        self.in_range("tau_base", 0.0, 1.0)
        self.integer("freeze_last_layer_steps", low=0)


class DINO(Method):
    """DINO (Caron et al., 2021): self-distillation without labels. A student network matches, by cross-entropy, the
    centred and sharpened softmax over K prototypes of a teacher, an exponential moving average of the student, on
    the other views of the same image. DINO-ER adds an explicit entropy term (of the student's marginal prediction or
    of its bottleneck embeddings)."""

    name = "dino"
    Config = DINOConfig
    cfg: DINOConfig
    center: Tensor

    def __init__(self, cfg: DINOConfig):
        super().__init__(cfg)
        self.head = DINOHead(
            self.feature_dim,
            cfg.out_dim,
            cfg.hidden_dim,
            cfg.bottleneck_dim,
            use_bn=cfg.use_bn_in_head,
            norm_last_layer=cfg.norm_last_layer,
        )
        # state-dict keys teacher.backbone.*, teacher.head.*
        self.teacher = nn.ModuleDict({"backbone": copy.deepcopy(self.backbone), "head": copy.deepcopy(self.head)})
        self.teacher.requires_grad_(False)
        self.register_buffer("center", torch.zeros(cfg.out_dim))
        self.step, self.momentum, self.progress = 0, cfg.tau_base, 0.0  # host-side (no device sync)

    def teacher_temperature(self) -> float:
        r""":math:`\tau_t` at the current progress :math:`p`: :math:`\tau_0 + (\tau_t - \tau_0)\,p/p_w` during the
        warm-up (:math:`p < p_w`), then ``teacher_temp``; the student's temperature without sharpening."""
        cfg = self.cfg
        if not cfg.sharpening:
            return cfg.student_temp
        if self.progress < cfg.teacher_temp_warmup_fraction:
            fraction = self.progress / cfg.teacher_temp_warmup_fraction
            return cfg.teacher_temp_start + (cfg.teacher_temp - cfg.teacher_temp_start) * fraction
        return cfg.teacher_temp

    def _center(self) -> Tensor:
        """The center the loss uses now (a copy: the buffer moves after the loss), or 0 without centering."""
        return self.center.clone() if self.cfg.centering else torch.zeros_like(self.center)

    def _student(self, views: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Backbone features, unit bottleneck embeddings and logits of every view."""
        h, e = encode_views(views, self.backbone, self.head.embed)
        frozen = self.step < self.cfg.freeze_last_layer_steps
        return h, e, [self.head.logits(ev, detach_last_layer=frozen) for ev in e]

    @torch.no_grad()
    def _teacher(self, views: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Unit bottleneck embeddings and logits of the two global views (no gradient)."""
        head = cast(DINOHead, self.teacher["head"])
        _, e = encode_views(views[:2], self.teacher["backbone"], head.embed)
        return e, [head.logits(ev) for ev in e]

    def forward(self, views: list[Tensor], index: Tensor | None = None) -> MethodOutput:
        _, e_s, g_s = self._student(views)
        e_t, g_t = self._teacher(views)
        center, tau_t = self._center(), self.teacher_temperature()
        loss = dino_loss(g_s, g_t, center, self.cfg.student_temp, tau_t)
        if self.er:
            loss = loss - self._entropy(e_s, g_s)
        if self.training and self.cfg.centering:
            self.center.copy_(center_update(self.center, g_t, self.cfg.center_momentum))
        return MethodOutput(loss, self._metrics(e_s, g_s, e_t, g_t, center, tau_t))

    def _entropy(self, e_s: list[Tensor], g_s: list[Tensor]) -> Tensor:
        """DINO-ER's entropy term (to maximise), see the module docstring."""
        if self.cfg.entropy_on == "embedding":
            return embedding_entropy(e_s, self.cfg.kappa)
        return global_marginal_entropy([torch.softmax(full_precision(g) / self.cfg.student_temp, dim=1) for g in g_s])

    @torch.no_grad()
    def _metrics(
        self, e_s: list[Tensor], g_s: list[Tensor], e_t: list[Tensor], g_t: list[Tensor], center: Tensor, tau_t: float
    ) -> dict[str, Tensor]:
        target = torch.softmax((full_precision(g_t[0]) - center) / tau_t, dim=1)  # the loss's target for view 0
        metrics = continuous_metrics(e_s[1], e_t[0], e_s[0], self.cfg.kappa)
        metrics.update(discrete_metrics(target, full_precision(g_s[1]) / self.cfg.student_temp))
        metrics["teacher_temp"] = center.new_tensor(tau_t)
        metrics["ema_momentum"] = center.new_tensor(self.momentum)
        return metrics

    @torch.no_grad()
    def monitor(self, views: list[Tensor], index: Tensor | None = None) -> dict[str, Tensor]:
        h, e_s, g_s = self._student(views)
        e_t, g_t = self._teacher(views)
        metrics = self._metrics(e_s, g_s, e_t, g_t, self._center(), self.teacher_temperature())
        return {**metrics, **feature_metrics(h[0], self.cfg.kappa)}

    def update(self, progress: float) -> None:
        self.step, self.progress = self.step + 1, progress
        self.momentum = ema_momentum(self.cfg.tau_base, progress)
        ema_update_(self.teacher, (self.backbone, self.head), self.momentum)

    def get_extra_state(self) -> dict:
        return {"step": self.step, "progress": self.progress, "momentum": self.momentum}

    def set_extra_state(self, state: dict) -> None:
        self.step, self.progress, self.momentum = state["step"], state["progress"], state["momentum"]
