"""erlib.augment against the definitions of its ops: crop boxes measured from coordinate images, jitter factors and
the whole jitter against a float64 per-pixel reference (colorsys for the hue), luma weights, blur widths measured
from blurred impulses, solarisation, per-sample randomness, DDP sharding, and the recipes."""

from __future__ import annotations

import colorsys
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from erlib import augment as A

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_images(b: int, size: int = 8, seed: int = 123) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=gen(seed))


# ------------------------------------------------------------------------------------------------------------------
# random_resized_crop, measured: channel 0 holds each pixel centre's normalised x coordinate, channel 1 its y
# ------------------------------------------------------------------------------------------------------------------

W_IN = 32  # input side; with output side OUT, boxes of width fraction >= OUT / W_IN never sample the clamped border
OUT = 4


def coord_image(b: int, side: int = W_IN) -> torch.Tensor:
    u = (2 * torch.arange(side, dtype=torch.float32) + 1) / side - 1  # pixel centres in [-1, 1]
    img = torch.stack([u[None, :].expand(side, side), u[:, None].expand(side, side)])
    return img[None].expand(b, -1, -1, -1)


def crop_boxes(out: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each output's box in normalised coordinates (width/height fractions of the image, centre, flip) from the
    coordinates it sampled: output pixel centres lie at +-(1 - 1/OUT) of the box's half-width."""
    size = out.shape[-1]
    half = 1 - 1 / size
    x0, x1 = out[:, 0, :, 0].mean(1), out[:, 0, :, -1].mean(1)
    y0, y1 = out[:, 1, 0, :].mean(1), out[:, 1, -1, :].mean(1)
    sw, h = (x1 - x0) / (2 * half), (y1 - y0) / (2 * half)
    w = sw.abs()
    return {"w": w, "h": h, "cx": (x0 + x1) / 2, "cy": (y0 + y1) / 2, "flip": sw < 0, "area": w * h, "ratio": w / h}


def test_crop_of_the_coordinate_image_is_affine():
    out = A.random_resized_crop(coord_image(256), OUT, scale=(0.2, 0.5), generator=gen(1))
    # the x coordinate does not change along a column, y not along a row (no rotation, no shear)
    assert (out[:, 0] - out[:, 0, :1]).abs().max() < 1e-5
    assert (out[:, 1] - out[:, 1, :, :1]).abs().max() < 1e-5
    # and changes linearly across the output
    steps = out[:, 0, 0].diff(dim=1)
    assert (steps - steps[:, :1]).abs().max() < 1e-5


def test_crop_area_and_ratio_follow_their_uniform_laws():
    n, scale, ratio = 4000, (0.2, 0.5), (3 / 4, 4 / 3)  # w = sqrt(s r) <= 0.82: no clipping at 1
    box = crop_boxes(A.random_resized_crop(coord_image(n), OUT, scale, ratio, flip_p=0.0, generator=gen(2)))
    area, log_r = box["area"], box["ratio"].log()
    tol = 1e-4
    assert area.min() >= scale[0] - tol and area.max() <= scale[1] + tol
    assert area.min() < scale[0] + 0.01 and area.max() > scale[1] - 0.01  # the whole range is used
    # U(0.2, 0.5): mean 0.35, sd 0.0866; the mean of 4000 within 5 standard errors, quartiles within 0.015
    assert abs(area.mean() - 0.35) < 5 * 0.0866 / math.sqrt(n)
    q = torch.quantile(area, torch.tensor([0.25, 0.5, 0.75]))
    assert torch.allclose(q, torch.tensor([0.275, 0.35, 0.425]), atol=0.015), q
    # log r ~ U(log 3/4, log 4/3): symmetric about 0, sd = 2 log(4/3) / sqrt(12)
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    assert log_r.min() >= lo - tol and log_r.max() <= hi + tol
    assert abs(log_r.mean()) < 5 * (hi - lo) / math.sqrt(12 * n)
    assert abs(log_r.std() - (hi - lo) / math.sqrt(12)) < 0.01
    # w = sqrt(s r), h = sqrt(s / r)
    assert torch.allclose(box["w"] ** 2, area * box["ratio"], rtol=1e-3)
    # the box lies inside the image and is placed uniformly: cx / (1 - w) ~ U(-1, 1)
    assert (box["cx"].abs() + box["w"]).max() <= 1 + tol and (box["cy"].abs() + box["h"]).max() <= 1 + tol
    for c, side in (("cx", "w"), ("cy", "h")):
        rel = box[c] / (1 - box[side])
        assert rel.min() > -1 - tol and rel.max() < 1 + tol
        assert abs(rel.mean()) < 5 / math.sqrt(3 * n)
        assert abs((rel.abs() > 0.5).float().mean() - 0.5) < 0.04


def test_crop_area_with_clipping_matches_the_documented_rule():
    # default scale (0.08, 1): near-full crops get w or h clipped to 1; compare with a Monte-Carlo of the rule
    n, scale, ratio = 8000, (0.08, 1.0), (3 / 4, 4 / 3)
    box = crop_boxes(A.random_resized_crop(coord_image(n), OUT, scale, ratio, flip_p=0.0, generator=gen(3)))
    area = box["area"]
    tol = 1e-4
    assert area.min() >= scale[0] - tol and area.max() <= 1 + tol
    assert box["w"].max() <= 1 + tol and box["h"].max() <= 1 + tol
    rng = np.random.default_rng(0)
    s = rng.uniform(*scale, 1_000_000)
    r = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), 1_000_000))
    ref = np.minimum(1, np.sqrt(s * r)) * np.minimum(1, np.sqrt(s / r))
    assert abs(area.mean().item() - ref.mean()) < 5 * ref.std() / math.sqrt(n)
    deciles = np.linspace(0.1, 0.9, 9)
    got = torch.quantile(area.double(), torch.tensor(deciles, dtype=torch.float64)).numpy()
    assert np.abs(got - np.quantile(ref, deciles)).max() < 0.03, (got, np.quantile(ref, deciles))


@pytest.mark.parametrize("flip_p, low, high", [(0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.5, 0.47, 0.53), (0.2, 0.17, 0.23)])
def test_flip_rate(flip_p, low, high):
    box = crop_boxes(A.random_resized_crop(coord_image(4000), OUT, (0.2, 0.5), flip_p=flip_p, generator=gen(4)))
    assert low <= box["flip"].float().mean().item() <= high
    assert (box["h"] > 0).all()  # never flipped vertically


def test_full_crop_is_the_identity_and_flip_the_mirror():
    x = rand_images(5, size=12)
    same = A.random_resized_crop(x, 12, scale=(1, 1), ratio=(1, 1), flip_p=0.0, generator=gen())
    assert torch.allclose(same, x, atol=1e-6)
    mirror = A.random_resized_crop(x, 12, scale=(1, 1), ratio=(1, 1), flip_p=1.0, generator=gen())
    assert torch.allclose(mirror, x.flip(-1), atol=1e-6)


# ------------------------------------------------------------------------------------------------------------------
# colour jitter
# ------------------------------------------------------------------------------------------------------------------


def test_brightness_factor_is_uniform():
    n, b = 4000, 0.4
    x = torch.full((n, 3, 2, 2), 0.5)
    out = A.color_jitter(x, brightness=b, contrast=0, saturation=0, hue=0, p=1.0, generator=gen(5))
    ratio = out / x
    f = ratio[:, 0, 0, 0]
    assert (ratio - f[:, None, None, None]).abs().max() < 1e-6  # one factor per image
    assert f.min() >= 1 - b - 1e-6 and f.max() <= 1 + b + 1e-6
    assert f.min() < 1 - b + 0.01 and f.max() > 1 + b - 0.01
    assert abs(f.mean() - 1) < 5 * (2 * b) / math.sqrt(12 * n)
    assert abs(f.std() - 2 * b / math.sqrt(12)) < 0.01
    assert f.unique().numel() > n * 0.99  # every image its own factor


def test_contrast_scales_deviations_around_the_mean_grey():
    n, c = 2000, 0.4
    x = 0.4 + 0.2 * torch.rand(n, 3, 4, 4, generator=gen(6))  # no clipping for factors <= 1.4
    out = A.color_jitter(x, brightness=0, contrast=c, saturation=0, hue=0, p=1.0, generator=gen(7))
    grey = lambda t: (0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2]).mean(dim=(1, 2))  # noqa: E731
    m = grey(x)[:, None, None, None]
    d_in, d_out = (x - m).flatten(1), (out - m).flatten(1)
    f = (d_in * d_out).sum(1) / (d_in * d_in).sum(1)  # least squares: out - m = f (x - m), one f per image
    assert (d_out - f[:, None] * d_in).abs().max() < 1e-5
    assert torch.allclose(grey(out), grey(x), atol=1e-5)
    assert f.min() >= 1 - c - 1e-3 and f.max() <= 1 + c + 1e-3 and abs(f.mean() - 1) < 0.02


def test_saturation_keeps_each_pixels_grey():
    n, s = 2000, 0.5
    x = 0.3 + 0.4 * torch.rand(n, 3, 4, 4, generator=gen(8))
    out = A.color_jitter(x, brightness=0, contrast=0, saturation=s, hue=0, p=1.0, generator=gen(9))
    luma = lambda t: 0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2]  # noqa: E731
    assert torch.allclose(luma(out), luma(x), atol=1e-5)
    g = luma(x)[:, None]
    d_in, d_out = (x - g).flatten(1), (out - g).flatten(1)
    f = (d_in * d_out).sum(1) / (d_in * d_in).sum(1)  # out - grey = f (x - grey), one f per image
    assert (d_out - f[:, None] * d_in).abs().max() < 1e-5
    assert f.min() >= 1 - s - 1e-3 and f.max() <= 1 + s + 1e-3 and abs(f.mean() - 1) < 0.03


def test_jitter_probability():
    x = rand_images(2000, size=4, seed=10)
    assert torch.allclose(A.color_jitter(x, p=0.0, generator=gen(11)), x, atol=1e-6)
    out = A.color_jitter(x, p=0.5, generator=gen(12))
    changed = (out - x).flatten(1).abs().amax(dim=1) > 1e-4
    assert abs(changed.float().mean().item() - 0.5) < 0.04  # sd 0.011


def hsv_reference(x: torch.Tensor) -> np.ndarray:
    """colorsys RGB -> HSV of every pixel, float64, [B, H, W, 3]."""
    px = x.double().permute(0, 2, 3, 1).reshape(-1, 3).tolist()
    return np.array([colorsys.rgb_to_hsv(*p) for p in px]).reshape(x.shape[0], x.shape[2], x.shape[3], 3)


def hue_shift_reference(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Every pixel through colorsys in float64: RGB -> HSV, H <- (H + shift_i) mod 1, HSV -> RGB."""
    out = np.empty((x.shape[0], x.shape[2], x.shape[3], 3))
    for i, img in enumerate(x.double().permute(0, 2, 3, 1).numpy()):
        for u, v in np.ndindex(img.shape[:2]):
            h, s, val = colorsys.rgb_to_hsv(*img[u, v])
            out[i, u, v] = colorsys.hsv_to_rgb((h + float(shift[i])) % 1.0, s, val)
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def test_hue_shift_of_primaries_and_secondaries():
    colours = torch.tensor(
        [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1], [0.5, 0.5, 0.5], [0, 0, 0], [1, 1, 1]],
        dtype=torch.float32,
    )
    x = colours.T[None, :, :, None]  # one image, the colours down its first column
    for shift, roll in [(1 / 3, 1), (2 / 3, 2), (1.0, 0), (-1 / 3, 2)]:
        out = A._shift_hue(x, torch.tensor([shift]))[0, :, :, 0].T
        # a third of the wheel moves red to green, green to blue, blue to red: the channels roll by one
        expected = torch.cat([colours[:6].roll(roll, dims=1), colours[6:]])
        assert torch.allclose(out, expected, atol=1e-6), (shift, out)
    half = A._shift_hue(x, torch.tensor([0.5]))[0, :, :, 0].T  # half a turn: each primary to its complement
    assert torch.allclose(
        half[:6],
        torch.tensor([[0, 1, 1], [1, 0, 1], [1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=torch.float32),
        atol=1e-6,
    )
    assert torch.equal(half[6:], colours[6:])  # greys have no hue


def test_hue_shift_matches_colorsys_per_pixel():
    x = torch.rand(12, 3, 6, 6, generator=gen(13))
    x[0] = 0.4  # a grey image
    x[1, :, :3] = x[1, :1, :3]  # grey pixels inside a colour image
    x[2, 1] = x[2, 0]  # ties for the maximum (or minimum) channel
    shift = torch.linspace(-0.5, 0.5, 12)
    got = A._shift_hue(x, shift)
    assert (got.double() - hue_shift_reference(x, shift)).abs().max() < 2e-6
    assert (A._shift_hue(x, torch.zeros(12)) - x).abs().max() < 1e-6  # a zero shift is the identity


def test_hue_shift_of_red_through_color_jitter():
    # hue only: red turns into a fully saturated colour at hue delta ~ U(-hue, hue), one per image
    n, hue = 4000, 0.1
    red = torch.zeros(n, 3, 2, 2)
    red[:, 0] = 1
    out = A.color_jitter(red, brightness=0, contrast=0, saturation=0, hue=hue, p=1.0, generator=gen(15))
    hsv = torch.tensor([colorsys.rgb_to_hsv(*p) for p in out[:, :, 0, 0].tolist()])
    delta = (hsv[:, 0] + 0.5) % 1.0 - 0.5
    assert torch.allclose(hsv[:, 1:], torch.ones(n, 2), atol=1e-5)
    assert delta.min() >= -hue - 1e-5 and delta.max() <= hue + 1e-5
    assert delta.min() < -hue + 0.005 and delta.max() > hue - 0.005
    assert abs(delta.mean()) < 5 * 2 * hue / math.sqrt(12 * n)
    assert abs(delta.std() - 2 * hue / math.sqrt(12)) < 0.005
    assert delta.unique().numel() > 0.9 * n  # every image its own shift


def test_hue_rotation_keeps_value_and_chroma_and_shifts_every_pixel_alike():
    x = torch.rand(100, 3, 5, 5, generator=gen(16))
    out = A.color_jitter(x, brightness=0, contrast=0, saturation=0, hue=0.5, p=1.0, generator=gen(17))
    assert torch.allclose(out.amax(dim=1), x.amax(dim=1), atol=1e-5)
    assert torch.allclose(out.amax(dim=1) - out.amin(dim=1), x.amax(dim=1) - x.amin(dim=1), atol=1e-5)
    h_in, h_out = hsv_reference(x), hsv_reference(out)
    d = ((h_out[..., 0] - h_in[..., 0]) % 1.0).reshape(100, -1)
    d = np.where(d - d[:, :1] > 0.5, d - 1, np.where(d - d[:, :1] < -0.5, d + 1, d))
    mask = h_in[..., 1].reshape(100, -1) > 0.1
    assert (np.abs(d - d[:, :1]) * mask).max() < 1e-3  # one shift per image
    assert d[:, 0].std() > 0.2  # shifts spread over the wheel (U(-0.5, 0.5) has sd 0.29)


def jitter_reference(x: torch.Tensor, bf, cf, sf, shift) -> torch.Tensor:
    """torchvision's four adjustments, written out per image in float64 (NumPy, colorsys for the hue)."""
    w = np.array([0.299, 0.587, 0.114])
    out = []
    for i, img in enumerate(x.double().numpy()):
        y = np.clip(img * float(bf[i]), 0, 1)
        grey = np.tensordot(w, y, axes=1)
        y = np.clip(float(cf[i]) * y + (1 - float(cf[i])) * grey.mean(), 0, 1)
        grey = np.tensordot(w, y, axes=1)
        y = np.clip(float(sf[i]) * y + (1 - float(sf[i])) * grey[None], 0, 1)
        out.append(y)
    return hue_shift_reference(torch.from_numpy(np.stack(out)), shift)


def test_color_jitter_against_a_float64_reference_with_the_drawn_factors():
    n, (b, c, s, hue, p) = 48, (0.8, 0.8, 0.8, 0.2, 0.75)
    x = torch.rand(n, 3, 5, 5, generator=gen(40))
    out = A.color_jitter(x, b, c, s, hue, p=p, generator=gen(41))
    # the documented order of draws: on/off, brightness, contrast, saturation, hue shift; one of each per image
    g = gen(41)
    on = torch.rand(n, generator=g) < p
    bf, cf, sf = ((1 - a + 2 * a * torch.rand(n, generator=g)).clamp_min(0) for a in (b, c, s))
    shift = -hue + 2 * hue * torch.rand(n, generator=g)
    bf, cf, sf = (torch.where(on, f, torch.ones(n)) for f in (bf, cf, sf))
    shift = torch.where(on, shift, torch.zeros(n))
    assert 0 < on.sum() < n
    ref = jitter_reference(x, bf, cf, sf, shift)
    assert (out.double() - ref).abs().max() < 2e-5
    assert torch.allclose(out[~on], x[~on], atol=1e-6)  # images not drawn stay as they were
    # every factor reaches the pixels: one factor per image replaced by the batch mean moves the result
    for factors in (
        (bf.mean().expand(n), cf, sf, shift),
        (bf, cf.mean().expand(n), sf, shift),
        (bf, cf, sf.mean().expand(n), shift),
        (bf, cf, sf, shift.mean().expand(n)),
    ):
        assert (out.double() - jitter_reference(x, *factors)).abs().max() > 1e-2


# ------------------------------------------------------------------------------------------------------------------
# grayscale, blur, solarise
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.0, 0.2, 1.0])
def test_grayscale_rate_and_luma(p):
    n = 4000
    x = torch.rand(n, 3, 2, 2, generator=gen(18))
    out = A.grayscale(x, p=p, generator=gen(19))
    grey = (out[:, 0] == out[:, 1]).all(dim=(1, 2)) & (out[:, 1] == out[:, 2]).all(dim=(1, 2))
    rate = grey.float().mean().item()
    assert abs(rate - p) < 0.03  # sd 0.0063 at p = 0.2
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    assert torch.allclose(out[grey], luma[grey][:, None].expand(-1, 3, -1, -1), atol=1e-6)
    assert torch.equal(out[~grey], x[~grey])


def test_blur_of_a_constant_image_is_constant():
    x = torch.rand(50, 3, 1, 1, generator=gen(20)).expand(-1, -1, 32, 32).contiguous()
    out = A.gaussian_blur(x, p=1.0, generator=gen(21))
    assert torch.allclose(out, x, atol=1e-6)
    assert torch.allclose(out.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=1e-6)


def test_blur_p0_is_the_identity_and_sigma_small_nearly():
    x = rand_images(20, size=32, seed=22)
    assert torch.allclose(A.gaussian_blur(x, p=0.0, generator=gen(23)), x, atol=1e-6)
    assert torch.allclose(A.gaussian_blur(x, p=1.0, sigma=(0.1, 0.1), generator=gen(23)), x, atol=1e-6)


def test_blur_reduces_noise_variance_as_its_kernel_predicts():
    side, sigma = 64, 1.0
    k = max(3, int(0.1 * side) // 2 * 2 + 1)  # documented: about 10% of the side, odd
    assert k == 7
    o = torch.arange(k, dtype=torch.float64) - k // 2
    kern = torch.exp(-(o**2) / (2 * sigma**2))
    kern /= kern.sum()
    predicted = (kern**2).sum().item() ** 2  # separable 2-D blur of white noise
    x = torch.rand(32, 3, side, side, generator=gen(24))
    out = A.gaussian_blur(x, p=1.0, sigma=(sigma, sigma), generator=gen(25))
    inner = (slice(None), slice(None), slice(k, -k), slice(k, -k))
    ratio = (out[inner].var() / x[inner].var()).item()
    assert abs(ratio / predicted - 1) < 0.05, (ratio, predicted)
    assert torch.allclose(out.mean(), x.mean(), atol=1e-3)
    # and a larger sigma blurs more
    wide = A.gaussian_blur(x, p=1.0, sigma=(2.0, 2.0), generator=gen(25))
    assert wide[inner].var() < out[inner].var()


def test_blur_rate():
    x = rand_images(2000, size=16, seed=26)
    out = A.gaussian_blur(x, p=0.3, sigma=(0.5, 2.0), generator=gen(27))
    changed = (out - x).flatten(1).abs().amax(dim=1) > 1e-3
    assert abs(changed.float().mean().item() - 0.3) < 0.04


def impulses(n: int, side: int, channels: int = 3) -> torch.Tensor:
    """n images, black but for one white pixel at the centre (in every channel)."""
    x = torch.zeros(n, channels, side, side)
    x[:, :, side // 2, side // 2] = 1.0
    return x


def blur_moments(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image and channel: total mass and the second moments along x and y about the centre, float64."""
    side = out.shape[-1]
    o = (torch.arange(side, dtype=torch.float64) - side // 2) ** 2
    out = out.double()
    return out.sum(dim=(2, 3)), (out.sum(dim=2) * o).sum(-1), (out.sum(dim=3) * o).sum(-1)


def kernel_second_moment(sigma: torch.Tensor, k: int) -> torch.Tensor:
    """sum_o o^2 K(o) of the normalised Gaussian kernel truncated at |o| <= k // 2, float64."""
    o = torch.arange(k, dtype=torch.float64) - k // 2
    w = torch.exp(-(o[None] ** 2) / (2 * sigma.double()[:, None] ** 2))
    return (w * o**2).sum(1) / w.sum(1)


@pytest.mark.parametrize("side, kernel_size, k", [(41, 15, 15), (64, None, 7), (41, 5, 5), (33, None, 3)])
def test_blur_sigma_is_drawn_per_image_and_measured_from_the_blurred_impulse(side, kernel_size, k):
    n, p, (lo, hi) = 200, 0.6, (0.5, 2.0)
    out = A.gaussian_blur(impulses(n, side), p=p, sigma=(lo, hi), generator=gen(50), kernel_size=kernel_size)
    g = gen(50)  # the documented order of draws: on/off, then sigma, one per image
    on = torch.rand(n, generator=g) < p
    sigma = lo + (hi - lo) * torch.rand(n, generator=g)
    mass, mx, my = blur_moments(out)
    assert torch.allclose(mass, torch.ones_like(mass), atol=1e-5)  # the kernel sums to 1
    expected = kernel_second_moment(sigma, k)[:, None].expand(-1, 3)
    # each blurred image's spread is the one of its own sigma, in both directions and every channel
    assert torch.allclose(mx[on], expected[on], rtol=1e-4, atol=1e-6)
    assert torch.allclose(my[on], expected[on], rtol=1e-4, atol=1e-6)
    assert torch.equal(out[~on], impulses(n, side)[~on])  # the others are untouched
    assert 0.5 * n < on.sum() < 0.7 * n
    measured = mx[on, 0]
    assert measured.unique().numel() > 0.95 * on.sum()  # different images, different sigma
    assert measured.std() > 0.1 * measured.mean()
    if k == 15:  # barely truncated (7 px >= 3.5 sigma): the second moment is sigma^2 itself
        big = sigma[on] >= 1.0
        assert torch.allclose(measured[big].sqrt(), sigma[on][big].double(), rtol=0.01)


def test_blur_inside_the_pipeline_reaches_the_pixels_per_image():
    recipe = A.recipe_views("simclr", size=32, blur=True)[0]
    assert recipe.blur_p == 0.5
    # everything but the blur made the identity: full crop, no flip, no colour, no normalisation
    r = replace(
        recipe, size=33, scale=(1, 1), ratio=(1, 1), flip_p=0, jitter_p=0, gray_p=0, mean=(0, 0, 0), std=(1, 1, 1)
    )
    n = 400
    out = A.augment(impulses(n, 33), r, gen(51))
    mass, mx, my = blur_moments(out)
    assert torch.allclose(mass, torch.ones_like(mass), atol=1e-4)
    blurred = mx[:, 0] > 1e-3
    assert abs(blurred.float().mean().item() - 0.5) < 0.08
    # k = 3 at 33 px: the moment of sigma ~ U(0.1, 2) lies in (0, 2/3) and differs from image to image
    k3 = kernel_second_moment(torch.tensor([0.1, 2.0]), 3)
    assert (mx[blurred, 0] > k3[0] - 1e-6).all() and (mx[blurred, 0] < k3[1] + 1e-6).all()
    assert mx[blurred, 0].unique().numel() > 0.9 * blurred.sum()
    assert torch.allclose(mx, my, atol=1e-5)


@pytest.mark.parametrize("k", [3, 5, 7])
def test_blur_against_a_float64_reference_with_reflect_padding(k):
    x = torch.rand(6, 2, 9, 11, generator=gen(55))
    out = A.gaussian_blur(x, p=0.7, sigma=(0.3, 2.0), generator=gen(56), kernel_size=k)
    g = gen(56)
    on = torch.rand(6, generator=g) < 0.7
    sigma = 0.3 + 1.7 * torch.rand(6, generator=g)
    o = np.arange(k) - k // 2
    for i in range(6):
        kern = np.exp(-(o**2) / (2 * float(sigma[i]) ** 2)) if on[i] else (o == 0).astype(float)
        kern /= kern.sum()
        img = np.pad(x[i].double().numpy(), ((0, 0), (k // 2, k // 2), (k // 2, k // 2)), mode="reflect")
        rows = sum(kern[j] * img[:, :, j : j + 11] for j in range(k))
        ref = sum(kern[j] * rows[:, j : j + 9] for j in range(k))
        assert np.abs(out[i].double().numpy() - ref).max() < 1e-6, (k, i)


def test_blur_rejects_bad_kernel_sizes():
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="kernel_size must be a positive odd"):
        A.gaussian_blur(x, p=1.0, kernel_size=4)
    with pytest.raises(ValueError, match=r"kernel_size 17 needs images larger than 8 pixels, got 8x8; pass a smaller"):
        A.gaussian_blur(x, p=1.0, kernel_size=17)
    with pytest.raises(ValueError, match=r"kernel_size 5 needs images larger than 2 pixels, got 2x9"):
        A.gaussian_blur(torch.rand(2, 3, 2, 9), p=1.0, kernel_size=5)
    # one tap is the identity kernel, a legal (if useless) size; 3 taps fit an image of 2 pixels
    assert torch.equal(A.gaussian_blur(x, p=1.0, kernel_size=1, generator=gen(5)), x)
    assert A.gaussian_blur(torch.rand(2, 3, 2, 9), p=1.0, kernel_size=3).shape == (2, 3, 2, 9)


@pytest.mark.parametrize("op,p", [("gaussian_blur", 0.5), ("solarize", 0.2)])
def test_default_probabilities_are_the_documented_ones(op, p):
    """The functions' defaults: blur with p = 0.5 (SimCLR's), solarise with p = 0.2 (BYOL's second view); the recipes
    set their own. The fraction of 4,000 images changed is within 4 standard errors of p."""
    n = 4000
    x = 0.6 + 0.4 * rand_images(n, size=8, seed=61)  # every pixel above the solarisation threshold
    extra = {"sigma": (1.0, 2.0)} if op == "gaussian_blur" else {}  # wide enough to change every blurred image
    out = getattr(A, op)(x, generator=gen(62), **extra)
    changed = (out - x).flatten(1).abs().amax(dim=1) > 1e-3
    assert abs(changed.float().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_solarisation_is_drawn_per_image():
    n = 2000
    x = torch.full((n, 3, 4, 4), 0.75)
    out = A.solarize(x, p=0.3, generator=gen(52))
    flipped = (out == 0.25).flatten(1).all(dim=1)
    kept = (out == 0.75).flatten(1).all(dim=1)
    assert torch.equal(flipped | kept, torch.ones(n, dtype=torch.bool))  # a whole image or none of it
    assert abs(flipped.float().mean().item() - 0.3) < 0.04
    g = gen(52)
    assert torch.equal(flipped, torch.rand(n, generator=g) < 0.3)  # the image's own draw


@pytest.mark.parametrize("op", ["grayscale", "solarize"])
def test_inplace_overwrites_the_input_and_gives_the_same_values(op):
    fn = getattr(A, op)
    x = torch.rand(64, 3, 4, 4, generator=gen(53))
    fresh = fn(x, p=0.5, generator=gen(54))
    assert not torch.equal(fresh, x)  # some images changed, and x did not
    assert torch.equal(x, torch.rand(64, 3, 4, 4, generator=gen(53)))
    y = x.clone()
    same = fn(y, p=0.5, generator=gen(54), inplace=True)
    assert same.data_ptr() == y.data_ptr() and torch.equal(same, fresh)


def test_solarize():
    x = torch.linspace(0, 1, 101).reshape(1, 1, 1, 101).expand(4, 3, 2, -1)
    out = A.solarize(x, p=1.0, generator=gen())
    assert torch.equal(out, torch.where(x >= 0.5, 1 - x, x))
    assert torch.equal(out[..., 50], 1 - x[..., 50])  # 0.5 itself is at the threshold
    assert out.max() <= 0.5
    assert torch.equal(A.solarize(x, p=0.0, generator=gen()), x)
    # another threshold, with a pixel exactly at it (0.25 and 0.75 are exact in float32)
    z = torch.tensor([0.0, 0.2, 0.25, 0.3, 0.75, 1.0]).reshape(1, 1, 1, 6)
    assert torch.equal(
        A.solarize(z, p=1.0, threshold=0.25, generator=gen()),
        torch.tensor([0.0, 0.2, 0.75, 0.7, 0.25, 0.0]).reshape(1, 1, 1, 6),
    )
    y = torch.rand(4000, 1, 2, 2, generator=gen(28)) * 0.5 + 0.5  # every pixel above the threshold
    rate = (A.solarize(y, p=0.2, generator=gen(29)) != y).all(dim=(1, 2, 3)).float().mean().item()
    assert abs(rate - 0.2) < 0.03


# ------------------------------------------------------------------------------------------------------------------
# pipelines: per-sample parameters, dtype, range, seeding
# ------------------------------------------------------------------------------------------------------------------

OPS = {
    "crop": lambda x, g: A.random_resized_crop(x, 16, generator=g),
    "jitter": lambda x, g: A.color_jitter(x, 0.8, 0.8, 0.8, 0.2, p=1.0, generator=g),
    "gray": lambda x, g: A.grayscale(x, p=1.0, generator=g),
    "blur": lambda x, g: A.gaussian_blur(x, p=1.0, generator=g),
    "solarize": lambda x, g: A.solarize(x, p=1.0, generator=g),
}


@pytest.mark.parametrize("op", sorted(OPS))
def test_ops_keep_float32_shape_and_unit_range(op):
    x = rand_images(64, size=16, seed=30)
    out = OPS[op](x, gen(31))
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1 + 1e-6
    # the extremes stay in range too
    ext = torch.randint(0, 2, (64, 3, 16, 16), generator=gen(32)).float()
    out = OPS[op](ext, gen(33))
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6


def test_samples_of_one_batch_get_their_own_views():
    img = torch.randint(0, 256, (1, 3, 32, 32), generator=gen(34), dtype=torch.uint8)
    recipe = A.recipe_views("simclr")[0]
    views = A.augment(img.expand(64, -1, -1, -1), recipe, gen(35))
    assert views.dtype == torch.float32 and views.shape == (64, 3, 32, 32)
    assert views.flatten(1).unique(dim=0).shape[0] == 64
    mean = torch.tensor(recipe.mean)[None, :, None, None]
    std = torch.tensor(recipe.std)[None, :, None, None]
    raw = views * std + mean  # the ops' output before normalisation
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5


def test_same_seed_same_views_different_seed_different():
    img = torch.randint(0, 256, (16, 3, 32, 32), generator=gen(36), dtype=torch.uint8)
    recipes = A.recipe_views("byol", blur=True)
    a = A.make_views(img, recipes, gen(1))
    b = A.make_views(img, recipes, gen(1))
    c = A.make_views(img, recipes, gen(2))
    assert len(a) == 2 and all(v.shape == (16, 3, 32, 32) for v in a)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert all(not torch.equal(u, v) for u, v in zip(a, c))
    assert not torch.equal(a[0], a[1])  # the two views of one call differ


def test_sharded_generator_gives_each_rank_its_rows_of_the_global_views():
    img = torch.randint(0, 256, (12, 3, 32, 32), generator=gen(39), dtype=torch.uint8)
    recipes = A.recipe_views("byol", blur=True) + [replace(A.recipe_views("byol")[1], solarize_p=0.5, blur_p=0.5)]
    whole = A.make_views(img, recipes, gen(7))
    for rank in range(3):
        rows = slice(4 * rank, 4 * rank + 4)
        part = A.make_views(img[rows], recipes, A.ShardedGenerator(gen(7), rank, 3))
        assert all(torch.allclose(p, w[rows], atol=1e-6) for p, w in zip(part, whole))


def test_augment_with_nothing_random_is_the_normalisation():
    img = torch.randint(0, 256, (4, 3, 16, 16), generator=gen(37), dtype=torch.uint8)
    r = A.ViewRecipe(size=16, scale=(1, 1), ratio=(1, 1), flip_p=0, jitter_p=0, gray_p=0)
    out = A.augment(img, r, gen())
    mean = torch.tensor(r.mean, dtype=torch.float64)[None, :, None, None]
    std = torch.tensor(r.std, dtype=torch.float64)[None, :, None, None]
    assert torch.allclose(out.double(), (img.double() / 255 - mean) / std, atol=1e-5)


def test_multicrop_views_have_their_sizes():
    img = torch.randint(0, 256, (8, 3, 32, 32), generator=gen(38), dtype=torch.uint8)
    views = A.make_views(img, A.recipe_views("simclr", local_crops=2), gen())
    assert [tuple(v.shape) for v in views] == [(8, 3, 32, 32)] * 2 + [(8, 3, 16, 16)] * 2


# ------------------------------------------------------------------------------------------------------------------
# recipes
# ------------------------------------------------------------------------------------------------------------------


def test_named_recipes():
    simclr, byol = A.recipe_views("simclr"), A.recipe_views("byol")
    assert len(simclr) == 2 and len(byol) == 2
    assert all(r.size == 32 and r.blur_p == 0 for r in simclr + byol)  # blur off below 64 px by default
    assert byol[0].solarize_p == 0 and byol[1].solarize_p == 0.2  # asymmetric
    assert simclr[0] == simclr[1]  # symmetric
    big = A.recipe_views("byol", size=96)
    assert [r.blur_p for r in big] == [1.0, 0.1] and all(r.size == 96 for r in big)
    assert [r.blur_p for r in A.recipe_views("simclr", size=64)] == [0.5, 0.5]
    assert [r.blur_p for r in A.recipe_views("simclr", size=32, blur=True)] == [0.5, 0.5]
    assert [r.blur_p for r in A.recipe_views("simclr", size=96, blur=False)] == [0.0, 0.0]


def test_multicrop_recipes():
    views = A.recipe_views("simclr", size=32, local_crops=4)
    assert len(views) == 6
    assert [v.size for v in views] == [32, 32, 16, 16, 16, 16]
    assert all(v.scale == (0.14, 1.0) for v in views[:2]) and all(v.scale == (0.05, 0.14) for v in views[2:])
    assert [v.size for v in A.recipe_views("byol", size=96, local_crops=2, local_size=40)] == [96, 96, 40, 40]
    assert A.recipe_views("byol", size=8, local_crops=1)[-1].size == 8  # never below 8 px
    with pytest.raises(ValueError, match="local_crops"):
        A.recipe_views("simclr", local_crops=-1)


def test_unknown_recipe():
    with pytest.raises(ValueError) as info:
        A.recipe_views("moco-v9")
    assert "simclr" in str(info.value) and "byol" in str(info.value)


@pytest.mark.parametrize(
    "field, value",
    [
        ("flip_p", 1.5),
        ("jitter_p", -0.1),
        ("gray_p", 2.0),
        ("blur_p", -1.0),
        ("solarize_p", 1.01),
        ("scale", (0.0, 1.0)),
        ("scale", (0.6, 0.3)),
        ("scale", (0.2, 1.5)),
        ("ratio", (0.0, 1.0)),
        ("ratio", (2.0, 1.0)),
        ("size", 2),
    ],
)
def test_view_recipe_rejects_bad_fields(field, value):
    with pytest.raises(ValueError, match=field):
        A.ViewRecipe(**{field: value})
    A.ViewRecipe()  # the defaults are valid


# ------------------------------------------------------------------------------------------------------------------
# the pipeline's contract: composition and order of draws, dtypes, devices, defaults (from mutation testing)
# ------------------------------------------------------------------------------------------------------------------


def test_augment_is_crop_jitter_grey_blur_solarise_normalise_with_the_recipes_probabilities():
    """augment = the documented composition, each op with the recipe's own parameters and probabilities (none of them
    the functions' defaults), drawing from one generator in the documented order."""
    r = A.ViewRecipe(
        size=16,
        scale=(0.3, 0.9),
        flip_p=0.35,
        jitter_p=0.6,
        brightness=0.3,
        contrast=0.5,
        saturation=0.7,
        hue=0.15,
        gray_p=0.3,
        blur_p=0.7,
        solarize_p=0.45,
    )
    img = torch.randint(0, 256, (64, 3, 24, 24), generator=gen(70), dtype=torch.uint8)
    g = gen(71)
    x = A.random_resized_crop(img.double() / 255, 16, r.scale, r.ratio, r.flip_p, g)
    x = A.color_jitter(x, r.brightness, r.contrast, r.saturation, r.hue, r.jitter_p, g)
    x = A.grayscale(x, r.gray_p, g)
    x = A.gaussian_blur(x, r.blur_p, generator=g)
    x = A.solarize(x, r.solarize_p, generator=g)
    mean = torch.tensor(r.mean, dtype=torch.float64)[None, :, None, None]
    std = torch.tensor(r.std, dtype=torch.float64)[None, :, None, None]
    torch.testing.assert_close(A.augment(img, r, gen(71)).double(), (x - mean) / std, atol=2e-5, rtol=0)


def test_a_stage_with_probability_zero_draws_no_random_numbers():
    """Stages switched off cost nothing and leave the random stream where the crop left it."""
    img = torch.randint(0, 256, (8, 3, 16, 16), generator=gen(72), dtype=torch.uint8)
    r = A.ViewRecipe(size=16, jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=0.0)
    g_aug, g_crop = gen(73), gen(73)
    A.augment(img, r, g_aug)
    A.random_resized_crop(A.to_float(img), 16, r.scale, r.ratio, r.flip_p, g_crop)
    assert torch.equal(g_aug.get_state(), g_crop.get_state())


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_every_op_and_the_pipeline_keep_the_input_dtype(dtype):
    """Constants (hue troughs, blur offsets, mean and std) are made in the images' dtype: a float32 constant would
    promote bf16 images to float32."""
    x = rand_images(6, size=12, seed=74).to(dtype)
    for name, op in OPS.items():
        assert op(x, gen(75)).dtype == dtype, name
    recipe = A.ViewRecipe(size=12, blur_p=0.5, solarize_p=0.5)
    assert A.augment(x, recipe, gen(76)).dtype == dtype
    k7 = A.gaussian_blur(rand_images(2, size=16, seed=77).to(dtype), p=1.0, kernel_size=7, generator=gen(78))
    assert k7.dtype == dtype


def test_normalisation_in_float64_uses_the_exact_constants():
    """float64 images are normalised with float64 mean and std (a float32 constant is off by ~1e-8)."""
    x = torch.rand(4, 3, 16, 16, generator=gen(79), dtype=torch.float64)
    r = A.ViewRecipe(size=16, scale=(1, 1), ratio=(1, 1), flip_p=0, jitter_p=0, gray_p=0)
    mean = torch.tensor(r.mean, dtype=torch.float64)[None, :, None, None]
    std = torch.tensor(r.std, dtype=torch.float64)[None, :, None, None]
    torch.testing.assert_close(A.augment(x, r, gen()), (x - mean) / std, atol=1e-12, rtol=0)


def test_every_op_creates_its_tensors_on_the_images_device():
    """On the meta device (shapes only, no data) any tensor made on the default device instead of the images' fails
    to combine with them: the check a GPU would make, without one. (Generators are per device: the global RNG.)"""
    x = torch.empty(4, 3, 16, 16, device="meta")
    for name, op in OPS.items():
        assert op(x, None).device.type == "meta", name
    assert A.gaussian_blur(x, p=1.0, kernel_size=7).device.type == "meta"
    assert A.random_resized_crop(x, 8).device.type == "meta"
    recipe = A.ViewRecipe(size=12, blur_p=0.5, solarize_p=0.5)
    assert A.augment(x, recipe).device.type == "meta"


def test_the_functions_defaults_are_the_papers_values():
    """color_jitter's defaults are BYOL's (Grill et al., 2020, table 6: brightness 0.4, contrast 0.4, saturation 0.2,
    hue 0.1, p 0.8), grayscale's p 0.2, the flip's 0.5 — measured from what they do, not read from the signature:
    mid-grey images are changed by brightness only (contrast, saturation and hue leave grey alone)."""
    n = 4000
    grey = torch.full((n, 3, 2, 2), 0.5)
    factor = A.color_jitter(grey, generator=gen(80))[:, 0, 0, 0] / 0.5
    changed = (factor - 1).abs() > 1e-6
    assert abs(changed.float().mean().item() - 0.8) < 4 * math.sqrt(0.8 * 0.2 / n)
    drawn = factor[changed]
    assert 0.6 <= drawn.min() < 0.61 and 1.39 < drawn.max() <= 1.4  # U(1 - 0.4, 1 + 0.4)
    # contrast 0.4: a two-level image's spread scales by c ~ U(0.6, 1.4), brightness fixed at 1
    two = torch.cat([torch.full((n, 3, 1, 2), 0.4), torch.full((n, 3, 1, 2), 0.6)], dim=2)
    c = A.color_jitter(two, brightness=0.0, saturation=0.0, hue=0.0, p=1.0, generator=gen(81))
    c = (c[:, 0, 1, 0] - c[:, 0, 0, 0]) / 0.2
    assert 0.6 <= c.min() < 0.61 and 1.39 < c.max() <= 1.4
    # saturation 0.2: a pure colour's distance from its grey scales by s ~ U(0.8, 1.2)
    red = torch.zeros(n, 3, 1, 1)
    red[:, 0] = 0.5
    s = A.color_jitter(red, brightness=0.0, contrast=0.0, hue=0.0, p=1.0, generator=gen(82))
    s = (s[:, 0, 0, 0] - 0.299 * 0.5) / (0.5 - 0.299 * 0.5)
    assert 0.8 <= s.min() < 0.81 and 1.19 < s.max() <= 1.2
    # hue 0.1: a pure red's hue moves by up to 0.1 of the wheel either way (colorsys reads it back)
    hues = A.color_jitter(red, brightness=0.0, contrast=0.0, saturation=0.0, p=1.0, generator=gen(83))
    h = torch.tensor([colorsys.rgb_to_hsv(*px.tolist())[0] for px in hues[:, :, 0, 0]])
    h = torch.where(h > 0.5, h - 1, h)
    assert -0.1 - 1e-5 <= h.min() < -0.099 and 0.099 < h.max() <= 0.1 + 1e-5
    greyed = A.grayscale(rand_images(n, size=2, seed=84), generator=gen(85))
    is_grey = (greyed[:, 0] == greyed[:, 1]).flatten(1).all(dim=1)
    assert abs(is_grey.float().mean().item() - 0.2) < 4 * math.sqrt(0.2 * 0.8 / n)
    box = crop_boxes(A.random_resized_crop(coord_image(n), OUT, (0.2, 0.5), generator=gen(86)))
    assert abs(box["flip"].float().mean().item() - 0.5) < 4 * math.sqrt(0.25 / n)


def test_make_views_scales_uint8_once_and_takes_float_images_as_they_are():
    img = torch.randint(0, 256, (6, 3, 16, 16), generator=gen(87), dtype=torch.uint8)
    recipes = A.recipe_views("byol", size=16)
    from_uint8 = A.make_views(img, recipes, gen(88))
    from_float = A.make_views(img.float() / 255, recipes, gen(88))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(from_uint8, from_float))
    one = A.augment(img.float() / 255, recipes[0], gen(88))
    assert torch.allclose(from_float[0], one, atol=1e-6)


def test_local_crops_follow_the_first_global_views_recipe():
    """Multi-crop's small crops take view 0's pipeline (BYOL: blur 1.0, no solarisation), not view 1's."""
    views = A.recipe_views("byol", size=96, local_crops=2)
    assert [(v.blur_p, v.solarize_p) for v in views] == [(1.0, 0.0), (0.1, 0.2), (1.0, 0.0), (1.0, 0.0)]


@pytest.mark.parametrize("size, ok", [(3, False), (4, True)])
def test_view_recipe_size_limit_is_four_pixels(size, ok):
    if ok:
        assert A.ViewRecipe(size=size).size == 4
    else:
        with pytest.raises(ValueError, match="size must be >= 4 pixels, got 3"):
            A.ViewRecipe(size=size)


def test_crops_of_a_constant_image_are_constant_up_to_the_border():
    """Boxes near the image border sample within its outer half-pixel: the reflection padding keeps those samples at
    the image's value (zero padding would darken the edges of such crops)."""
    x = torch.full((2000, 3, 8, 8), 0.7)
    out = A.random_resized_crop(x, 8, scale=(0.08, 1.0), generator=gen(89))
    assert (out - 0.7).abs().max().item() < 1e-6
