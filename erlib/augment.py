r"""Batched, per-sample random augmentation on any device: every image of a batch draws its own parameters.

(torchvision's transforms applied to a batch tensor draw *one* parameter set for the whole batch — pytorch/vision
#2929 — which is useless for self-supervised views.) Each op takes float images in [0, 1], [B, C, H, W], and a
``torch.Generator`` on the images' device (or a :class:`ShardedGenerator` under DDP), so the same seed gives the
same views.

Ops: :func:`random_resized_crop` (with horizontal flip; one bilinear ``grid_sample``), :func:`color_jitter`
(brightness, contrast, saturation, hue, in that fixed order), :func:`grayscale`, :func:`gaussian_blur`,
:func:`solarize`. Recipes (ER-SPEC.md §3.3): ``simclr`` (symmetric), ``byol`` (asymmetric: blur 1.0 / 0.1,
solarisation 0 / 0.2), multi-crop (2 global + N local).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ShardedGenerator", "ViewRecipe", "RECIPES", "recipe_views", "random_resized_crop", "color_jitter", "grayscale",
           "gaussian_blur", "solarize", "augment", "make_views", "CIFAR_MEAN", "CIFAR_STD", "to_float"]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL and torchvision


@dataclass(frozen=True)
class ShardedGenerator:
    """A generator shared by all ranks: every op draws its random numbers for the *global* batch (``world`` shards of
    the local size) and keeps this rank's rows, so that under DDP the views equal a single process's views of the
    concatenated batch, while each rank only transforms its own images."""

    generator: torch.Generator
    rank: int = 0
    world: int = 1


def _rand(n: int, g: torch.Generator | ShardedGenerator | None, device) -> Tensor:
    if isinstance(g, ShardedGenerator):
        return torch.rand(n * g.world, generator=g.generator, device=device)[g.rank * n:(g.rank + 1) * n]
    return torch.rand(n, generator=g, device=device)


def _uniform(n: int, low: float, high: float, g, device) -> Tensor:
    return low + (high - low) * _rand(n, g, device)


def _bernoulli(n: int, p: float, g, device) -> Tensor:
    return _rand(n, g, device) < p


def to_float(images: Tensor) -> Tensor:
    """uint8 [B, C, H, W] → float32 in [0, 1]."""
    return images.float().div_(255.0)


def random_resized_crop(x: Tensor, size: int, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.5,
                        generator: torch.Generator | None = None) -> Tensor:
    r"""Per-sample random resized crop (+ horizontal flip) to ``size``×``size``.

    Area fraction :math:`s\sim U(\text{scale})`, aspect :math:`\log r\sim U(\log\text{ratio})`; width and height
    fractions :math:`w=\sqrt{sr}`, :math:`h=\sqrt{s/r}` (clipped to 1), a uniformly placed box inside the image,
    resampled bilinearly. (torchvision re-draws up to 10 times when the box does not fit; clipping instead changes the
    distribution only at the extreme aspect ratios of near-full crops.)
    """
    b, dev = x.shape[0], x.device
    area = _uniform(b, *scale, generator, dev)
    log_r = _uniform(b, math.log(ratio[0]), math.log(ratio[1]), generator, dev)
    w = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)
    h = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    cx = (1 - w) * _uniform(b, -1.0, 1.0, generator, dev)  # box centre in [-1+w, 1-w]
    cy = (1 - h) * _uniform(b, -1.0, 1.0, generator, dev)
    sign = torch.where(_bernoulli(b, flip_p, generator, dev), -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * sign, cx, h, cy
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _gray(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _rgb_to_hsv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r, g, b = x.unbind(1)
    maxc, minc = x.max(dim=1).values, x.min(dim=1).values
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = torch.where(delta > 0, (h / 6) % 1.0, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return h, s, maxc


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    i = torch.floor(h * 6)
    f = h * 6 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    choices = torch.stack([torch.stack(c, dim=1) for c in
                           [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]])  # [6, B, 3, H, W]
    return choices.gather(0, i[None, :, None].expand(1, -1, 3, -1, -1)).squeeze(0)


def color_jitter(x: Tensor, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.2,
                 hue: float = 0.1, p: float = 0.8, generator: torch.Generator | None = None) -> Tensor:
    r"""Per-sample colour jitter with probability ``p``: factors :math:`b, c, s \sim U(1-\cdot, 1+\cdot)`, hue shift
    :math:`\delta\sim U(-\text{hue}, \text{hue})` (fraction of the colour wheel). Brightness scales the pixels, contrast
    blends with the image's mean grey level, saturation with the pixel's grey, hue rotates H in HSV."""
    b, dev = x.shape[0], x.device
    on = _bernoulli(b, p, generator, dev)

    def factor(amount: float) -> Tensor:
        f = _uniform(b, 1 - amount, 1 + amount, generator, dev).clamp_min(0)
        return torch.where(on, f, torch.ones_like(f))[:, None, None, None]

    bf, cf, sf = factor(brightness), factor(contrast), factor(saturation)
    shift = torch.where(on, _uniform(b, -hue, hue, generator, dev), torch.zeros(b, device=dev))
    x = (x * bf).clamp(0, 1)
    x = (cf * x + (1 - cf) * _gray(x).mean(dim=(1, 2, 3), keepdim=True)).clamp(0, 1)
    x = (sf * x + (1 - sf) * _gray(x)).clamp(0, 1)
    if hue > 0:
        h, s, v = _rgb_to_hsv(x)
        x = _hsv_to_rgb((h + shift[:, None, None]) % 1.0, s, v)
    return x


def grayscale(x: Tensor, p: float = 0.2, generator: torch.Generator | None = None) -> Tensor:
    """Per-sample conversion to grey (kept as 3 channels) with probability ``p``."""
    on = _bernoulli(x.shape[0], p, generator, x.device)[:, None, None, None]
    return torch.where(on, _gray(x).expand_as(x), x)


def gaussian_blur(x: Tensor, p: float = 0.5, sigma: tuple[float, float] = (0.1, 2.0),
                  generator: torch.Generator | None = None, kernel_size: int | None = None) -> Tensor:
    """Per-sample Gaussian blur with probability ``p``, σ ~ U(sigma) in pixels; kernel ≈ 10% of the side (odd)."""
    b, c, hgt, wid = x.shape
    k = kernel_size or max(3, int(0.1 * hgt) // 2 * 2 + 1)
    on = _bernoulli(b, p, generator, x.device)
    sig = _uniform(b, *sigma, generator, x.device)
    offsets = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    kernel = torch.exp(-offsets[None] ** 2 / (2 * sig[:, None] ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    identity = (offsets == 0).to(x.dtype).expand(b, k)
    kernel = torch.where(on[:, None], kernel, identity).repeat_interleave(c, dim=0)  # [B*C, k]
    y = F.pad(x.reshape(1, b * c, hgt, wid), (k // 2,) * 4, mode="reflect")
    y = F.conv2d(y, kernel[:, None, :, None], groups=b * c)
    y = F.conv2d(y, kernel[:, None, None, :], groups=b * c)
    return y.reshape(b, c, hgt, wid)


def solarize(x: Tensor, p: float = 0.2, threshold: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Per-sample solarisation with probability ``p``: pixels ≥ threshold become 1 − x."""
    on = _bernoulli(x.shape[0], p, generator, x.device)[:, None, None, None]
    return torch.where(on & (x >= threshold), 1 - x, x)


@dataclass(frozen=True)
class ViewRecipe:
    """One view's augmentation pipeline: crop+flip → colour jitter → grayscale → blur → solarise → normalise."""

    size: int = 32
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    gray_p: float = 0.2
    blur_p: float = 0.0
    solarize_p: float = 0.0
    mean: tuple[float, float, float] = CIFAR_MEAN
    std: tuple[float, float, float] = CIFAR_STD

    def __post_init__(self) -> None:
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < low <= high, got {self.ratio}")
        if self.size < 4:
            raise ValueError(f"size must be >= 4 pixels, got {self.size}")


def augment(images: Tensor, recipe: ViewRecipe, generator: torch.Generator | None = None) -> Tensor:
    """One normalised float view of a uint8 (or [0, 1] float) batch, every sample with its own random parameters."""
    x = to_float(images) if images.dtype == torch.uint8 else images
    x = random_resized_crop(x, recipe.size, recipe.scale, recipe.ratio, recipe.flip_p, generator)
    if recipe.jitter_p > 0:
        x = color_jitter(x, recipe.brightness, recipe.contrast, recipe.saturation, recipe.hue, recipe.jitter_p,
                         generator)
    if recipe.gray_p > 0:
        x = grayscale(x, recipe.gray_p, generator)
    if recipe.blur_p > 0:
        x = gaussian_blur(x, recipe.blur_p, generator=generator)
    if recipe.solarize_p > 0:
        x = solarize(x, recipe.solarize_p, generator=generator)
    mean = torch.tensor(recipe.mean, device=x.device)[None, :, None, None]
    std = torch.tensor(recipe.std, device=x.device)[None, :, None, None]
    return (x - mean) / std


def make_views(images: Tensor, recipes: list[ViewRecipe], generator: torch.Generator | None = None) -> list[Tensor]:
    """One view per recipe."""
    x = to_float(images) if images.dtype == torch.uint8 else images
    return [augment(x, r, generator) for r in recipes]


def recipe_views(name: str, size: int = 32, local_crops: int = 0, local_size: int | None = None,
                 blur: bool | None = None) -> list[ViewRecipe]:
    """The view recipes of a named pipeline: ``simclr`` (symmetric), ``byol`` (asymmetric), each optionally with
    ``local_crops`` small crops (multi-crop: global scale 0.14–1, local 0.05–0.14). ``blur`` defaults to off below
    64 px (the CIFAR convention)."""
    if name not in RECIPES:
        raise ValueError(f"augmentation recipe must be one of {sorted(RECIPES)}, got {name!r}")
    if local_crops < 0:
        raise ValueError(f"local_crops must be >= 0, got {local_crops}")
    blur = size >= 64 if blur is None else blur
    views = [replace(r, size=size, blur_p=r.blur_p if blur else 0.0) for r in RECIPES[name]]
    if local_crops:
        views = [replace(v, scale=(0.14, 1.0)) for v in views]
        local = replace(views[0], size=local_size or max(8, size // 2), scale=(0.05, 0.14))
        views += [local] * local_crops
    return views


#: Named two-view recipes (ER-SPEC.md §3.3); blur is dropped on small images by :func:`recipe_views`.
RECIPES: dict[str, tuple[ViewRecipe, ViewRecipe]] = {
    "simclr": (ViewRecipe(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, blur_p=0.5),) * 2,
    "byol": (ViewRecipe(blur_p=1.0, solarize_p=0.0), ViewRecipe(blur_p=0.1, solarize_p=0.2)),
}
