r"""DINO (Caron et al., 2021) and DINO-ER.

Student and EMA teacher share an architecture: backbone + :class:`~erlib.nn.DINOHead` (K outputs). Teacher
probabilities are centred and sharpened, student probabilities use a higher temperature; every teacher global view
supervises every *other* student view:

.. math:: \mathcal L = \frac1{|P|}\sum_{(t,s)\in P}\frac1B\sum_i \mathrm{CE}\big(p_{t,i}, p_{s,i}\big),\quad
          p_t = \operatorname{softmax}\big((g_t - c)/\tau_t\big),\ p_s = \operatorname{softmax}(g_s/\tau_s),

with the center :math:`c \leftarrow m\,c + (1-m)\,\overline{g_t}` (mean over the global batch) and the teacher an
EMA of the student. ER reading: reconstruction of the teacher's :math:`W_2` from the student; centering raises the
marginal :math:`H(W_2)`, sharpening lowers :math:`H(W_2\mid X)` (ER-SPEC.md §2.5).

**DINO-ER** ([DESIGN]): keep student, teacher, temperatures and EMA; add minus the marginal entropy of the student's
predictions, :math:`\mathcal L_{ER} = \mathcal L - H(\bar p_s)`; ``centering`` and ``sharpening`` can be switched off.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

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
    full_precision,
)
from erlib.nn import DINOHead
from erlib.schedules import ema_momentum, ema_update_


def dino_loss(student_logits: list[Tensor], teacher_logits: list[Tensor], center: Tensor, student_temp: float,
              teacher_temp: float) -> Tensor:
    """Mean over (teacher global view t, student view s ≠ t) of CE(softmax((g_t − c)/τ_t), softmax(g_s/τ_s))."""
    targets = [torch.softmax((full_precision(g.detach()) - center) / teacher_temp, dim=1)
               for g in teacher_logits]
    log_ps = [torch.log_softmax(full_precision(g) / student_temp, dim=1) for g in student_logits]
    terms = [-(p_t * log_ps[s]).sum(dim=1).mean()
             for t, p_t in enumerate(targets) for s in range(len(log_ps)) if s != t]
    return torch.stack(terms).mean()


def center_update(center: Tensor, teacher_logits: list[Tensor], momentum: float) -> Tensor:
    r"""DINO's center EMA over the global batch: :math:`c \leftarrow m\,c + (1-m)\,\frac1{VB}\sum_{v,i} g_{t,v,i}`."""
    batch_center = D.all_reduce_mean(full_precision(torch.cat(teacher_logits).detach()).mean(dim=0))
    return momentum * center + (1 - momentum) * batch_center


@dataclass
class DINOConfig(MethodConfig):
    out_dim: int = 4096  # solo-learn's CIFAR value (65536 on ImageNet)
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    teacher_temp_warmup: float = 0.0  # fraction of training over which τ_t rises linearly from warmup_teacher_temp
    center_momentum: float = 0.9
    tau_base: float = 0.996  # teacher EMA, cosine to 1 (0.9995 recommended at batch 256)
    freeze_last_layer_steps: int = 0
    centering: bool = True
    sharpening: bool = True  # False: the teacher uses the student's temperature

    def __post_init__(self) -> None:
        super().__post_init__()
        self.positive("student_temp", "teacher_temp", "warmup_teacher_temp")
        self.integer("out_dim", "hidden_dim", "bottleneck_dim")
        self.in_range("teacher_temp_warmup", 0.0, 1.0)
        self.in_range("center_momentum", 0.0, 1.0)
        self.in_range("tau_base", 0.0, 1.0)
        self.integer("freeze_last_layer_steps", low=0)


class DINO(Method):
    name = "dino"
    ema_modules = ("teacher",)
    Config = DINOConfig

    def __init__(self, cfg: DINOConfig):
        super().__init__(cfg)
        self.head = DINOHead(self.backbone.out_dim, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim)
        self.teacher = nn.ModuleDict({"backbone": copy.deepcopy(self.backbone), "head": copy.deepcopy(self.head)})
        self.teacher.requires_grad_(False)
        self.register_buffer("center", torch.zeros(cfg.out_dim))
        self.step, self.momentum, self.progress = 0, cfg.tau_base, 0.0

    def teacher_temperature(self) -> float:
        cfg = self.cfg
        if not cfg.sharpening:
            return cfg.student_temp
        if self.progress < cfg.teacher_temp_warmup:
            return cfg.warmup_teacher_temp + (cfg.teacher_temp - cfg.warmup_teacher_temp) * (
                self.progress / cfg.teacher_temp_warmup)
        return cfg.teacher_temp

    def forward(self, views: list[Tensor], index: Tensor | None = None) -> MethodOutput:
        frozen = self.step < self.cfg.freeze_last_layer_steps
        e_s = encode_views(lambda x: self.head.embed(self.backbone(x)), views)
        g_s = [self.head.logits(e, detach_last_layer=frozen) for e in e_s]
        with torch.no_grad():
            e_t = encode_views(lambda x: self.teacher["head"].embed(self.teacher["backbone"](x)), views[:2])
            g_t = [self.teacher["head"].logits(e) for e in e_t]
        center = self.center.clone() if self.cfg.centering else torch.zeros_like(self.center)  # before this update
        tau_t = self.teacher_temperature()
        loss = dino_loss(g_s, g_t, center, self.cfg.student_temp, tau_t)
        if self.er:
            p_s = torch.cat([torch.softmax(full_precision(g) / self.cfg.student_temp, dim=1) for g in g_s])
            loss = loss - bounds.marginal_entropy(D.gather(p_s), check=False)
        if self.training and self.cfg.centering:
            self.center.copy_(center_update(self.center, g_t, self.cfg.center_momentum))
        target = torch.softmax((full_precision(D.gather(g_t[0])) - center) / tau_t, dim=1)
        metrics = continuous_metrics(D.gather(e_s[1]), D.gather(e_t[0]), D.gather(e_s[0]), self.cfg.kappa)
        metrics.update(discrete_metrics(target, full_precision(D.gather(g_s[1])) / self.cfg.student_temp))
        metrics["teacher_temp"] = loss.new_tensor(tau_t)
        metrics["ema_momentum"] = loss.new_tensor(self.momentum)
        return MethodOutput(loss, metrics)

    def update(self, progress: float) -> None:
        self.step, self.progress = self.step + 1, progress
        self.momentum = ema_momentum(self.cfg.tau_base, progress)
        ema_update_(self.teacher, nn.ModuleDict({"backbone": self.backbone, "head": self.head}), self.momentum)

    def get_extra_state(self) -> dict:
        return {"step": self.step, "progress": self.progress, "momentum": self.momentum}

    def set_extra_state(self, state: dict) -> None:
        self.step, self.progress, self.momentum = state["step"], state["progress"], state["momentum"]
