"""Networks: backbones (ResNets with an optional CIFAR stem, a tiny ConvNet for CPU teaching runs) and heads.

Heads: :class:`MLP` (projector / predictor), :class:`Prototypes` (a bias-free linear layer whose rows are unit
vectors), :class:`DINOHead` (MLP → bottleneck → L2-normalise → weight-normalised linear layer). Normalisation:
:class:`GlobalBatchNorm` (batch statistics of the global batch under DDP) and :func:`batch_statistics` (measure a
network with the statistics of the batch it sees, leaving its running statistics alone).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from erlib import distributed as D

__all__ = [
    "BACKBONES",
    "build_backbone",
    "feature_dim",
    "TinyConvNet",
    "MLP",
    "Prototypes",
    "DINOHead",
    "GlobalBatchNorm",
    "convert_to_global_batchnorm",
    "batch_statistics",
]


class TinyConvNet(nn.Module):
    """A small ConvNet (4 conv–BN–ReLU blocks, global average pool) for CPU teaching runs on 32 px images."""

    def __init__(self, width: int = 32, in_channels: int = 3):
        super().__init__()
        chans = [in_channels, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(chans[:-1], chans[1:])):
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = chans[-1]

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.features(x)


def _resnet(depth: int, cifar_stem: bool) -> nn.Module:
    import torchvision  # type: ignore[import-untyped]  # here, not at the top: importing it costs ~3 s per process

    net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    if cifar_stem:  # 3x3 stride-1 first convolution and no max-pool: the usual stem for 32 px images
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    net.out_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net


BACKBONES = {
    "convnet_tiny": lambda: TinyConvNet(32),
    "resnet18_cifar": lambda: _resnet(18, True),
    "resnet34_cifar": lambda: _resnet(34, True),
    "resnet50_cifar": lambda: _resnet(50, True),
    "resnet18": lambda: _resnet(18, False),
    "resnet34": lambda: _resnet(34, False),
    "resnet50": lambda: _resnet(50, False),
}


def build_backbone(name: str) -> nn.Module:
    """A backbone by name (see :data:`BACKBONES`); its feature dimension is ``.out_dim``."""
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {name!r}")
    return BACKBONES[name]()


def feature_dim(backbone: nn.Module) -> int:
    """The feature dimension (``.out_dim``) of a backbone made by :func:`build_backbone`."""
    dim = getattr(backbone, "out_dim", None)
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise ValueError(f"backbone must carry an integer .out_dim (use build_backbone), got {dim!r}")
    return dim


class MLP(nn.Sequential):
    """Linear–BN–ReLU blocks then a final linear layer (SimCLR / BYOL projector, BYOL predictor).

    ``layers`` counts linear layers; ``last_bn`` adds a (non-affine) BN after the last one, as SimCLR v2 does.
    """

    def __init__(
        self, in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, bn: bool = True, last_bn: bool = False
    ):
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        mods: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (layers - 1)
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            mods += [nn.Linear(d_in, d_out, bias=not bn), *([nn.BatchNorm1d(d_out)] if bn else []), nn.ReLU(True)]
        mods.append(nn.Linear(dims[-1], out_dim))
        if last_bn:
            mods.append(nn.BatchNorm1d(out_dim, affine=False))
        super().__init__(*mods)


class Prototypes(nn.Module):
    r"""K prototype vectors :math:`c_k` (rows of a bias-free linear layer); scores :math:`s = \bar z^\top c_k`."""

    def __init__(self, dim: int, num_prototypes: int):
        super().__init__()
        self.weight = nn.Parameter(F.normalize(torch.randn(num_prototypes, dim), dim=1))

    def forward(self, z: Tensor, detach: bool = False) -> Tensor:
        """Scores [B, K]; ``detach=True`` keeps gradients away from the prototypes (frozen iterations)."""
        w = self.weight.detach() if detach else self.weight
        return z @ w.T

    @torch.no_grad()
    def normalize_(self) -> None:
        """Project every prototype back onto the unit sphere (SwAV does this every iteration)."""
        self.weight.copy_(F.normalize(self.weight, dim=1))


class DINOHead(nn.Module):
    r"""DINO's head: MLP (GELU) → bottleneck → :math:`\ell_2`-normalise → weight-normalised linear layer to K logits.

    ``norm_last_layer=True`` fixes the weight norm's scale g to 1, so the last layer's rows stay unit vectors
    (prototypes) and the logits are cosines. :meth:`embed` returns the normalised bottleneck (for the ER metrics).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 4096,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        layers: int = 3,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (layers - 1)
        mods: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            mods += [nn.Linear(d_in, d_out), *([nn.BatchNorm1d(d_out)] if use_bn else []), nn.GELU()]
        mods.append(nn.Linear(dims[-1], bottleneck_dim))
        self.mlp = nn.Sequential(*mods)
        last = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.last_layer = nn.utils.parametrizations.weight_norm(last)
        self.last_layer.parametrizations.weight.original0.data.fill_(1.0)
        if norm_last_layer:
            self.last_layer.parametrizations.weight.original0.requires_grad_(False)

    def embed(self, x: Tensor) -> Tensor:
        """The normalised bottleneck features [B, bottleneck_dim]."""
        return F.normalize(self.mlp(x), dim=1)

    def logits(self, e: Tensor, detach_last_layer: bool = False) -> Tensor:
        """Logits from normalised bottleneck features; ``detach_last_layer`` freezes the last layer (first epoch)."""
        if detach_last_layer:
            weight = self.last_layer.weight.detach()
            return e @ weight.T
        return self.last_layer(e)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.logits(self.embed(x))


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    r"""Batch normalisation whose training statistics are those of the **global** batch under DDP (any backend,
    CPU included, unlike ``nn.SyncBatchNorm``); identical to ``nn.BatchNorm`` in one process.

    .. math:: \mu = \frac1N\sum_{r,i} x_{ri},\quad \sigma^2 = \frac1N\sum_{r,i} x_{ri}^2 - \mu^2,\quad
              y = \gamma\,\frac{x-\mu}{\sqrt{\sigma^2+\epsilon}} + \beta

    (sums over every rank's rows, gathered with :func:`erlib.distributed.gather`, so gradients flow across ranks).
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() not in (2, 3, 4, 5):
            raise ValueError(f"GlobalBatchNorm expects 2-5-D input, got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if not (self.training and D.is_distributed()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # statistics in float32 or wider
        local = torch.stack([xf.sum(dims), (xf * xf).sum(dims)])
        total = D.gather(local[None]).sum(dim=0)
        n = x.numel() // x.shape[1] * D.world_size()
        mean, var = total[0] / n, (total[1] / n - (total[0] / n) ** 2).clamp_min(0)
        count, running_mean, running_var = self.num_batches_tracked, self.running_mean, self.running_var
        if self.track_running_stats and count is not None and running_mean is not None and running_var is not None:
            with torch.no_grad():
                count += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(count)
                running_mean.lerp_(mean.detach(), m)
                running_var.lerp_(var.detach() * n / max(n - 1, 1), m)
        shape = [1, -1] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_to_global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm1d/2d/3d`` inside ``module`` (in place) by a :class:`GlobalBatchNorm` with the same
    parameters and running statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            new = GlobalBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            ).to(next(child.buffers(), torch.empty(0)).device)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            if child.affine:
                new.weight.requires_grad_(child.weight.requires_grad)
                new.bias.requires_grad_(child.bias.requires_grad)
            setattr(module, name, new)
        else:
            convert_to_global_batchnorm(child)
    return module


@contextmanager
def batch_statistics(module: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, every BatchNorm layer of ``module`` normalises with the statistics of the current batch, as in
    training, while its running statistics (``running_mean``, ``running_var``, ``num_batches_tracked``) stay exactly
    as they were; on exit every layer's train/eval flag and tracking setting is restored.

    Why: a network measured once per epoch (the monitor batch) should be measured as it trains. In eval mode
    BatchNorm uses running statistics, an exponential average over past batches that lags the weights (and at
    initialisation is still the identity): the tiny ConvNet's η is about 0.01 in eval mode against about 0.7 in train
    mode at initialisation, so an eval-mode curve shows BatchNorm warming up, not learning. Train mode would give the
    right normalisation but update the running statistics, a side effect on the model being measured. This context
    makes the third choice: *normalise with batch statistics without updating the running ones* (for
    :class:`GlobalBatchNorm` under DDP, the statistics of the global batch). Only BatchNorm layers change; dropout and
    the method's own ``training`` flag keep their mode.

    Implementation: each layer is put in training mode with ``track_running_stats=False``, in which PyTorch's
    BatchNorm computes batch statistics and neither reads nor writes the running buffers.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in norms]
    try:
        for m in norms:
            m.training, m.track_running_stats = True, False
        yield module
    finally:
        for m, (training, tracking) in zip(norms, saved):
            m.training, m.track_running_stats = training, tracking
