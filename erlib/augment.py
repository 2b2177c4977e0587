r"""Batched, per-sample random augmentation on any device: every image of a batch draws its own parameters.

(torchvision's transforms applied to a batch tensor draw *one* parameter set for the whole batch — pytorch/vision
#2929 — which is useless for self-supervised views.) Each op takes float images in [0, 1], [B, C, H, W], and a
``torch.Generator`` on the images' device (or a :class:`ShardedGenerator` under DDP), so the same seed gives the
same views.

Ops: :func:`random_resized_crop` (with horizontal flip; one bilinear ``grid_sample``), :func:`color_jitter`
(brightness, contrast, saturation, hue, in that fixed order), :func:`grayscale`, :func:`gaussian_blur`,
:func:`solarize`. Recipes: ``simclr`` (symmetric; Chen et al., 2020, appendix A), ``byol`` (asymmetric: blur 1.0 / 0.1,
solarisation 0 / 0.2; Grill et al., 2020, table 6), multi-crop (2 global + N local; Caron et al., 2020).

Speed on the CPU: every step is a handful of whole-tensor passes, in place where the pipeline owns the buffer;
per-image on/off choices are ``torch.lerp`` with 0 / 1 weights (exact, and cheaper than ``torch.where``); the hue
rotation is the HSV round trip in closed form (:func:`_shift_hue`), with no six-way stack and gather.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ShardedGenerator",
    "ViewRecipe",
    "RECIPES",
    "recipe_views",
    "random_resized_crop",
    "color_jitter",
    "grayscale",
    "gaussian_blur",
    "solarize",
    "augment",
    "make_views",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "to_float",
]

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


#: Where an op draws its random numbers: a torch generator, a generator shared by DDP ranks, or the global RNG (None).
RandomSource = torch.Generator | ShardedGenerator | None


def _rand(n: int, g: RandomSource, device) -> Tensor:
    if isinstance(g, ShardedGenerator):
        return torch.rand(n * g.world, generator=g.generator, device=device)[g.rank * n : (g.rank + 1) * n]
    return torch.rand(n, generator=g, device=device)


def _uniform(n: int, low: float, high: float, g: RandomSource, device) -> Tensor:
    return low + (high - low) * _rand(n, g, device)


def _bernoulli(n: int, p: float, g: RandomSource, device) -> Tensor:
    return _rand(n, g, device) < p


def to_float(images: Tensor) -> Tensor:
    """uint8 [B, C, H, W] → float32 in [0, 1]."""
    return images.float().div_(255.0)


def random_resized_crop(
    x: Tensor,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
    generator: RandomSource = None,
) -> Tensor:
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
    # the sampling grid of the affine map [[w sign, 0, cx], [0, h, cy]] (what F.affine_grid builds, with a batched
    # matmul over every output pixel), formed directly: x depends on the column only, y on the row only
    base = (2 * torch.arange(size, device=dev, dtype=x.dtype) + 1) / size - 1  # output pixel centres in [-1, 1]
    gx = torch.addcmul(cx[:, None], (w * sign)[:, None], base[None])
    gy = torch.addcmul(cy[:, None], h[:, None], base[None])
    grid = torch.stack((gx[:, None, :].expand(b, size, size), gy[:, :, None].expand(b, size, size)), dim=-1)
    # grid_sample wants the grid in the images' dtype (the float32 draws would refuse bf16 images)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="reflection", align_corners=False)


def _luma(x: Tensor) -> Tensor:
    r"""Per-pixel luma :math:`Y = 0.299 R + 0.587 G + 0.114 B` (ITU-R 601-2, as PIL and torchvision), [B, 1, H, W]."""
    r, g, b = x.unbind(1)
    return torch.mul(r, _LUMA[0]).add_(g, alpha=_LUMA[1]).add_(b, alpha=_LUMA[2]).unsqueeze(1)


def _per_image(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A [B] boolean mask as [B, 1, 1, 1] weights 0 / 1 for ``torch.lerp``, which returns its start for weight 0 and
    its end for weight 1 exactly (unlike ``x + w (y - x)``), and is several times cheaper than ``torch.where``."""
    return mask.to(dtype)[:, None, None, None]


#: Where on the colour wheel (in sextants, H·6) each channel R, G, B reaches its minimum.
_HUE_TROUGH = (3.0, 5.0, 1.0)


def _shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    r"""Rotate every pixel's HSV hue by ``shift[i]`` (a fraction of the colour wheel) keeping its value and saturation:
    exactly torchvision's RGB → HSV → (H + δ) mod 1 → RGB round trip, computed in one pass without forming S.

    With :math:`M = \max(R,G,B)`, :math:`m = \min(R,G,B)`, :math:`\Delta = M - m`, the hue in sextants is
    :math:`h = 6H = (G-B)/\Delta` if :math:`R = M`, :math:`2 + (B-R)/\Delta` if :math:`G = M`, else
    :math:`4 + (R-G)/\Delta` (0 for grey pixels). HSV → RGB is the closed form
    :math:`c = M - \Delta\,\mathrm{clip}(2 - d_c, 0, 1)`, :math:`h' = (h + 6\delta) \bmod 6`, where
    :math:`d_c = 3 - \lvert 3 - \lvert h' - t_c\rvert\rvert` is the distance on the circle of circumference 6 from
    :math:`h'` to the hue :math:`t_c` at which channel c is smallest (3 for R, 5 for G, 1 for B) — the same function
    as the usual six-case table (Smith, 1978), since :math:`V S = \Delta`.
    """
    r, g, b = x.unbind(1)
    top = torch.maximum(torch.maximum(r, g), b)
    spread = top - torch.minimum(torch.minimum(r, g), b)
    h = (r - g).add_(spread, alpha=4)  # blue is the maximum
    h.lerp_((b - r).add_(spread, alpha=2), (g == top).to(x.dtype))  # green is the maximum (wins over blue)
    h.lerp_(g - b, (r == top).to(x.dtype))  # red is the maximum (wins over both)
    h.div_(spread.clamp_min(torch.finfo(x.dtype).tiny)).add_(6 * shift[:, None, None]).remainder_(6)
    trough = torch.tensor(_HUE_TROUGH, device=x.device, dtype=x.dtype)[None, :, None, None]
    # 2 - (distance on the circle) = ||h - trough| - 3| - 1 for h, trough in [0, 6)
    depth = (h[:, None] - trough).abs_().sub_(3).abs_().sub_(1).clamp_(0, 1)
    return depth.mul_(spread.neg_()[:, None]).add_(top[:, None])


def _jitter_factors(
    b: int, brightness: float, contrast: float, saturation: float, hue: float, p: float, generator, device
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-image factors in the documented order of draws: the on/off mask, then b, c, s, then the hue shift."""
    on = _bernoulli(b, p, generator, device)

    def factor(amount: float) -> Tensor:
        f = _uniform(b, 1 - amount, 1 + amount, generator, device).clamp_min(0)
        return torch.where(on, f, torch.ones_like(f))

    bf, cf, sf = factor(brightness), factor(contrast), factor(saturation)
    shift = torch.where(on, _uniform(b, -hue, hue, generator, device), torch.zeros(b, device=device))
    return bf, cf, sf, shift


def color_jitter(
    x: Tensor,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.2,
    hue: float = 0.1,
    p: float = 0.8,
    generator: RandomSource = None,
) -> Tensor:
    r"""Per-sample colour jitter with probability ``p`` (torchvision's ``ColorJitter`` in a fixed order).

    Each image draws (in this order) whether it is jittered, factors :math:`b, c, s \sim U(1-\cdot, 1+\cdot)`
    (clipped at 0) and a hue shift :math:`\delta \sim U(-\text{hue}, \text{hue})`; images not jittered get
    :math:`b = c = s = 1`, :math:`\delta = 0`. Then, clipping to [0, 1] after each step:
    brightness :math:`x \leftarrow b x`; contrast :math:`x \leftarrow c x + (1 - c) \bar Y` with :math:`\bar Y`
    the image's mean luma; saturation :math:`x \leftarrow s x + (1 - s) Y` with :math:`Y` the pixel's luma; hue: H
    of HSV rotated by :math:`\delta` (:func:`_shift_hue`, the exact HSV round trip). Returns a new tensor.
    """
    n, dev = x.shape[0], x.device
    factors = _jitter_factors(n, brightness, contrast, saturation, hue, p, generator, dev)
    bf, cf, sf, shift = (f.to(x.dtype) for f in factors)  # in the images' dtype: float32 factors would promote bf16
    y = torch.mul(x, bf[:, None, None, None]).clamp_(0, 1)
    mean_luma = _luma(y).mean(dim=(1, 2, 3))
    y.mul_(cf[:, None, None, None]).add_(((1 - cf) * mean_luma)[:, None, None, None]).clamp_(0, 1)
    luma = _luma(y)  # before y is scaled in place
    y.mul_(sf[:, None, None, None]).addcmul_(luma, (1 - sf)[:, None, None, None]).clamp_(0, 1)
    return _shift_hue(y, shift) if hue > 0 else y


def grayscale(x: Tensor, p: float = 0.2, generator: RandomSource = None, inplace: bool = False) -> Tensor:
    """Per-sample conversion to luma :math:`Y` (kept as 3 channels) with probability ``p``; ``inplace=True``
    overwrites ``x`` (the pipeline's own buffer) instead of returning a new tensor."""
    on = _per_image(_bernoulli(x.shape[0], p, generator, x.device), x.dtype)
    grey = _luma(x).expand_as(x)
    return x.lerp_(grey, on) if inplace else torch.lerp(x, grey, on)


#: Largest blur kernel computed by shifted multiply-adds rather than grouped convolutions.
_SHIFT_BLUR_MAX_K = 5


def gaussian_blur(
    x: Tensor,
    p: float = 0.5,
    sigma: tuple[float, float] = (0.1, 2.0),
    generator: RandomSource = None,
    kernel_size: int | None = None,
) -> Tensor:
    r"""Per-sample Gaussian blur with probability ``p``: each image draws whether it is blurred, then
    :math:`\sigma \sim U(\text{sigma})` in pixels, and is convolved (reflect padding) with the separable kernel
    :math:`K(o) \propto e^{-o^2 / 2\sigma^2}`, :math:`|o| \le k // 2`, normalised to sum 1; images not blurred get
    the identity kernel. ``kernel_size`` k defaults to about 10% of the side (odd, at least 3). Kernels up to
    :data:`_SHIFT_BLUR_MAX_K` taps run as shifted multiply-adds (3x faster than a grouped convolution on the CPU at
    k = 3), larger ones as two grouped convolutions; both compute the same sums."""
    b, c, hgt, wid = x.shape
    k = kernel_size or max(3, int(0.1 * hgt) // 2 * 2 + 1)
    if k < 1 or k % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number of pixels, got {kernel_size}")
    if k // 2 >= min(hgt, wid):
        raise ValueError(
            f"kernel_size {k} needs images larger than {k // 2} pixels, got {hgt}x{wid}; pass a smaller kernel_size"
        )
    on = _bernoulli(b, p, generator, x.device)
    sig = _uniform(b, *sigma, generator, x.device)
    offsets = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sig[:, None] ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    identity = (offsets == 0).to(x.dtype).expand(b, k)
    kernel = torch.where(on[:, None], kernel, identity).to(x.dtype)  # [B, k], summed in float32, applied in x's dtype
    if k <= _SHIFT_BLUR_MAX_K:  # a few shifted multiply-adds beat a grouped convolution for small kernels
        r = k // 2
        padded = F.pad(x, (r, r, r, r), mode="reflect")
        weights = kernel.T[:, :, None, None, None]  # [k, B, 1, 1, 1]
        rows = padded[..., 0:wid] * weights[0]
        for j in range(1, k):
            rows.addcmul_(padded[..., j : j + wid], weights[j])
        y = rows[:, :, 0:hgt] * weights[0]
        for j in range(1, k):
            y.addcmul_(rows[:, :, j : j + hgt], weights[j])
        return y
    kernel = kernel.repeat_interleave(c, dim=0)  # [B*C, k]
    y = F.pad(x.reshape(1, b * c, hgt, wid), (k // 2,) * 4, mode="reflect")
    y = F.conv2d(y, kernel[:, None, :, None], groups=b * c)
    y = F.conv2d(y, kernel[:, None, None, :], groups=b * c)
    return y.reshape(b, c, hgt, wid)


def solarize(
    x: Tensor, p: float = 0.2, threshold: float = 0.5, generator: RandomSource = None, inplace: bool = False
) -> Tensor:
    """Per-sample solarisation with probability ``p``: pixels ≥ threshold become 1 − x (at the default threshold 0.5
    that is exactly ``min(x, 1 - x)``); ``inplace=True`` overwrites ``x``."""
    on = _per_image(_bernoulli(x.shape[0], p, generator, x.device), x.dtype)
    flipped = torch.minimum(x, 1 - x) if threshold == 0.5 else torch.where(x >= threshold, 1 - x, x)
    return x.lerp_(flipped, on) if inplace else torch.lerp(x, flipped, on)


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


def augment(images: Tensor, recipe: ViewRecipe, generator: RandomSource = None) -> Tensor:
    """One normalised float view of a uint8 (or [0, 1] float) batch, every sample with its own random parameters.

    The order of the random draws (crop, jitter, grayscale, blur, solarisation, each only when its probability is
    positive) is part of the contract: the same generator state gives the same views."""
    x = to_float(images) if images.dtype == torch.uint8 else images
    x = random_resized_crop(x, recipe.size, recipe.scale, recipe.ratio, recipe.flip_p, generator)  # a new tensor
    if recipe.jitter_p > 0:
        x = color_jitter(
            x, recipe.brightness, recipe.contrast, recipe.saturation, recipe.hue, recipe.jitter_p, generator
        )
    if recipe.gray_p > 0:
        x = grayscale(x, recipe.gray_p, generator, inplace=True)
    if recipe.blur_p > 0:
        x = gaussian_blur(x, recipe.blur_p, generator=generator)
    if recipe.solarize_p > 0:
        x = solarize(x, recipe.solarize_p, generator=generator, inplace=True)
    mean = torch.tensor(recipe.mean, device=x.device, dtype=x.dtype)[None, :, None, None]
    std = torch.tensor(recipe.std, device=x.device, dtype=x.dtype)[None, :, None, None]
    return x.sub_(mean).div_(std)


def make_views(images: Tensor, recipes: list[ViewRecipe], generator: RandomSource = None) -> list[Tensor]:
    """One view per recipe."""
    x = to_float(images) if images.dtype == torch.uint8 else images
    return [augment(x, r, generator) for r in recipes]


def recipe_views(
    name: str, size: int = 32, local_crops: int = 0, local_size: int | None = None, blur: bool | None = None
) -> list[ViewRecipe]:
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


#: Named two-view recipes (SimCLR: Chen et al., 2020; BYOL: Grill et al., 2020); blur is dropped on small images by
#: :func:`recipe_views`.
RECIPES: dict[str, tuple[ViewRecipe, ViewRecipe]] = {
    "simclr": (ViewRecipe(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, blur_p=0.5),) * 2,
    "byol": (ViewRecipe(blur_p=1.0, solarize_p=0.0), ViewRecipe(blur_p=0.1, solarize_p=0.2)),
}
