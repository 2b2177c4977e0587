"""erlib.bounds against mathematics: mpmath references, closed forms, inequalities, known values and invariances."""

from __future__ import annotations

import math

import mpmath as mp
import pytest
import torch
import torch.nn.functional as F

from erlib import bounds as B

F64 = torch.float64


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=1)


def sphere(k: int, d: int, seed: int = 0, dtype=F64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return unit(torch.randn(k, d, generator=g, dtype=dtype))


def clusters(k: int, d: int, m: int = 10, noise: float = 0.05, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = unit(torch.randn(m, d, generator=g, dtype=F64))
    idx = torch.arange(k) % m
    return unit(centres[idx] + noise * torch.randn(k, d, generator=g, dtype=F64))


# ------------------------------------------------------------------------------------------------------------------
# log I_nu(kappa) against mpmath, and its derivative against the recurrence
# ------------------------------------------------------------------------------------------------------------------

NUS = [0, 0.5, 1, 2, 7.5, 15, 24, 63, 127, 255, 499, 1000, 4095, 32767, 32768]
KAPPAS = [1e-3, 1e-2, 0.1, 1, 1.5, 10, 31.6, 100, 316, 1e3]


def test_log_bessel_matches_mpmath_on_grid():
    mp.mp.dps = 40
    nu = torch.tensor([n for n in NUS for _ in KAPPAS], dtype=F64)
    kappa = torch.tensor([k for _ in NUS for k in KAPPAS], dtype=F64)
    got = B.log_bessel_iv(nu, kappa)
    for n, k, g in zip(nu.tolist(), kappa.tolist(), got.tolist()):
        ref = float(mp.log(mp.besseli(n, k)))
        assert abs(g - ref) <= 1e-10 * max(abs(ref), 1e-12), (n, k, g, ref)


@pytest.mark.parametrize("nu,value", [(15, -2.259799), (63, -99.225268), (127, -286.959668), (499, -1801.956335),
                                      (511, -1857.3505), (1023, -4424.8010)])
def test_log_bessel_spec_values_at_kappa_10(nu, value):
    got = float(B.log_bessel_iv(nu, torch.tensor(10.0, dtype=F64)))
    assert got == pytest.approx(value, abs=5e-5)


def test_log_bessel_gradient_is_the_bessel_ratio():
    # d/dk log I_nu(k) = I_{nu+1}(k)/I_nu(k) + nu/k
    mp.mp.dps = 30
    for nu, k in [(0, 0.3), (15, 10.0), (63, 10.0), (499, 50.0), (2.5, 700.0)]:
        kappa = torch.tensor(k, dtype=F64, requires_grad=True)
        B.log_bessel_iv(nu, kappa).backward()
        ref = float(mp.besseli(nu + 1, k) / mp.besseli(nu, k) + mp.mpf(nu) / k)
        assert kappa.grad.item() == pytest.approx(ref, rel=1e-10)


def test_log_bessel_float32_input_gives_float32():
    out = B.log_bessel_iv(63, torch.tensor(10.0))
    assert out.dtype == torch.float32 and out.item() == pytest.approx(-99.225268, rel=1e-6)


# ------------------------------------------------------------------------------------------------------------------
# vMF normaliser: closed forms and normalisation
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kappa", [1e-3, 0.5, 10.0, 200.0])
def test_vmf_normalizer_d3_closed_form(kappa):
    # On S^2: C_3(kappa) = kappa / (4 pi sinh kappa)
    mp.mp.dps = 30
    ref = float(mp.log(kappa / (4 * mp.pi * mp.sinh(kappa))))
    assert float(B.vmf_log_normalizer(3, kappa)) == pytest.approx(ref, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("kappa", [0.1, 3.0, 40.0])
def test_vmf_density_integrates_to_one_on_circle(kappa):
    theta = torch.linspace(0, 2 * math.pi, 20001, dtype=F64)
    density = torch.exp(B.vmf_log_normalizer(2, kappa) + kappa * torch.cos(theta))
    assert float(torch.trapezoid(density, theta)) == pytest.approx(1.0, rel=1e-9)


def test_legacy_constant_defect_table():
    # ER-SPEC.md §1.4: error of log(I + 1e-7) against the exact log I at kappa = 10 (nats)
    table = {32: 0.000, 44: 0.004, 50: 0.33, 52: 1.11, 128: 83.1, 256: 270.8, 512: 735.1, 1000: 1785.8}
    for d, err in table.items():
        diff = float(B.vmf_log_normalizer(d, 10.0) - B.vmf_log_normalizer(d, 10.0, legacy_constant=True))
        assert diff == pytest.approx(err, abs=0.006 + 0.001 * err), d


def test_legacy_constant_departs_where_bessel_drops_below_eps():
    # The legacy error log(1 + 1e-7 / I) exceeds 0.01 nat exactly when I_{d/2-1}(10) < 1e-7 / (e^0.01 - 1).
    mp.mp.dps = 30
    threshold = 1e-7 / math.expm1(0.01)
    expected = next(d for d in range(2, 200) if mp.besseli(d / 2 - 1, 10) < threshold)
    departs = next(d for d in range(2, 200)
                   if float(B.vmf_log_normalizer(d, 10.0) - B.vmf_log_normalizer(d, 10.0, legacy_constant=True)) > 0.01)
    assert departs == expected and 44 < departs <= 50


# ------------------------------------------------------------------------------------------------------------------
# KDE entropy: independent re-derivation, consistency, bounds, normalisation
# ------------------------------------------------------------------------------------------------------------------


def brute_force_kde_entropy_s2(z: torch.Tensor, kappa: float, leave_one_out: bool) -> tuple[float, float]:
    """Joe and plug-in on S^2 written from the definition with explicit loops and the closed-form C_3."""
    k = z.shape[0]
    c3 = kappa / (4 * math.pi * math.sinh(kappa))
    neg_log_p = []
    for i in range(k):
        terms = [c3 * math.exp(kappa * float(z[i] @ z[j])) for j in range(k) if not (leave_one_out and i == j)]
        neg_log_p.append(-math.log(sum(terms) / len(terms)))
    joe = sum(neg_log_p) / k
    dens = [math.exp(-v) for v in neg_log_p]
    plugin = sum(p * v for p, v in zip(dens, neg_log_p)) / sum(dens)
    return joe, plugin


@pytest.mark.parametrize("leave_one_out", [False, True])
def test_kde_entropy_matches_definition(leave_one_out):
    z = sphere(40, 3, seed=1)
    joe, plugin = brute_force_kde_entropy_s2(z, 4.0, leave_one_out)
    assert float(B.kde_entropy(z, 4.0, "joe", leave_one_out)) == pytest.approx(joe, rel=1e-12)
    assert float(B.kde_entropy(z, 4.0, "plugin", leave_one_out)) == pytest.approx(plugin, rel=1e-12)


@pytest.mark.parametrize("d,true_entropy", [(2, math.log(2 * math.pi)), (3, math.log(4 * math.pi))])
def test_leave_one_out_kde_recovers_uniform_sphere_entropy(d, true_entropy):
    # A vMF kernel convolved with the uniform density is uniform, so the leave-one-out density is unbiased and
    # Joe's estimate converges to log(surface area) of S^(d-1).
    z = sphere(4000, d, seed=2)
    assert float(B.kde_entropy(z, 10.0, leave_one_out=True)) == pytest.approx(true_entropy, abs=0.02)


def test_joe_at_least_plugin_and_plugin_weights_sum():
    for seed in range(5):
        z = clusters(64, 16, m=4, noise=0.3, seed=seed)
        assert float(B.kde_entropy(z, 10.0, "joe")) >= float(B.kde_entropy(z, 10.0, "plugin")) - 1e-12


def test_collapse_gives_the_floor():
    z = unit(torch.randn(1, 32, dtype=F64)).repeat(50, 1)
    log_c = float(B.vmf_log_normalizer(32, 7.0))
    assert float(B.kde_entropy(z, 7.0)) == pytest.approx(-7.0 - log_c, abs=1e-10)  # tilde H = -kappa
    assert float(B.normalized_entropy(z, 7.0)) == pytest.approx(0.0, abs=1e-12)
    assert float(B.er_bound(z, z, 7.0)) == pytest.approx(0.0, abs=1e-12)


def test_normalized_entropy_in_unit_interval_and_ordering():
    for kappa in (1.0, 10.0, 50.0):
        for z in (sphere(128, 64), clusters(128, 64)):
            eta = float(B.normalized_entropy(z, kappa))
            assert 0.0 <= eta <= 1.0
    assert float(B.normalized_entropy(sphere(256, 128), 10.0)) > float(B.normalized_entropy(clusters(256, 128), 10.0))


@pytest.mark.parametrize("kappa,uniform_eta", [(1, 0.178), (2, 0.353), (5, 0.809), (10, 0.997), (20, 1.000)])
def test_eta_table_uniform_d128(kappa, uniform_eta):
    # ER-SPEC.md §1.4, k = 256, d = 128, uniform on the sphere (independent draws agree within +-0.005)
    etas = [float(B.normalized_entropy(sphere(256, 128, seed=s), float(kappa))) for s in range(3)]
    assert sum(etas) / 3 == pytest.approx(uniform_eta, abs=0.01)


def test_eta_table_clustered_d128():
    # ER-SPEC.md §1.4, 10 unit centres + noise 0.05 per coordinate, renormalised
    for kappa, ref in [(1.0, 0.160), (5.0, 0.581), (10.0, 0.783), (20.0, 0.962)]:
        etas = [float(B.normalized_entropy(clusters(256, 128, seed=s), kappa)) for s in range(4)]
        assert sum(etas) / 4 == pytest.approx(ref, abs=0.01)


def test_entropy_shift_between_constants_is_only_the_constant():
    z = sphere(64, 128)
    shift = float(B.kde_entropy(z, 10.0, legacy_constant=True) - B.kde_entropy(z, 10.0))
    assert shift == pytest.approx(83.1, abs=0.05)
    for est in ("joe", "plugin"):
        a = B.kde_entropy(z, 10.0, est) - B.kde_entropy(z, 10.0, est, legacy_constant=True)
        b = B.vmf_reconstruction(z, z, 10.0) - B.vmf_reconstruction(z, z, 10.0, legacy_constant=True)
        assert float(a + b) == pytest.approx(0.0, abs=1e-9)  # ER = H + rec is unaffected by the defect


def test_gradient_ascent_on_entropy_spreads_a_clustered_batch():
    z0 = clusters(64, 8, m=3, noise=0.05, seed=3)
    param = z0.clone().requires_grad_(True)
    opt = torch.optim.SGD([param], lr=1.0)
    before = float(B.kde_entropy(z0, 10.0))
    for _ in range(20):
        opt.zero_grad()
        (-B.kde_entropy(unit(param), 10.0, check=False)).backward()
        opt.step()
    after = float(B.kde_entropy(unit(param.detach()), 10.0))
    assert after > before + 0.5


def test_float32_agrees_with_float64():
    z64, y64 = sphere(128, 64, seed=4), sphere(128, 64, seed=5)
    z32, y32 = unit(z64.float()), unit(y64.float())
    pairs = [
        (B.kde_entropy(z32, 10.0), B.kde_entropy(z64, 10.0)),
        (B.kde_entropy(z32, 10.0, "plugin", True), B.kde_entropy(z64, 10.0, "plugin", True)),
        (B.er_bound(y32, z32, 10.0), B.er_bound(y64, z64, 10.0)),
        (B.infonce_bound(y32, z32, 10.0), B.infonce_bound(y64, z64, 10.0)),
        (B.normalized_entropy(z32, 10.0), B.normalized_entropy(z64, 10.0)),
    ]
    for a, b in pairs:
        assert a.dtype == torch.float32
        assert float(a) == pytest.approx(float(b), rel=2e-5, abs=2e-5)


def test_bf16_inputs_are_estimated_in_float32():
    z = sphere(64, 32).to(torch.bfloat16)
    assert B.kde_entropy(unit(z.float()).to(torch.bfloat16), 10.0, check=False).dtype == torch.float32


# ------------------------------------------------------------------------------------------------------------------
# Discrete entropies and reconstruction
# ------------------------------------------------------------------------------------------------------------------


def test_discrete_entropy_values():
    K = 37
    uniform = torch.full((10, K), 1 / K, dtype=F64)
    assert float(B.marginal_entropy(uniform)) == pytest.approx(math.log(K), rel=1e-14)
    one_hot = F.one_hot(torch.full((10,), 3), K).to(F64)
    assert float(B.marginal_entropy(one_hot)) == 0.0 and float(B.conditional_entropy(one_hot)) == 0.0
    # one-hot rows spread evenly over the K classes: marginal log K, conditional 0 (a perfect clustering)
    spread = F.one_hot(torch.arange(K * 3) % K, K).to(F64)
    assert float(B.marginal_entropy(spread)) == pytest.approx(math.log(K), rel=1e-14)
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(3 * torch.randn(50, K, generator=g, dtype=F64), dim=1)
    assert float(B.marginal_entropy(p)) >= float(B.conditional_entropy(p)) >= 0.0


def test_discrete_entropy_gradients_finite_at_zero_probabilities():
    p = F.one_hot(torch.tensor([0, 1, 1]), 4).to(F64).requires_grad_(True)
    (B.marginal_entropy(p) + B.conditional_entropy(p)).backward()
    assert torch.isfinite(p.grad).all()


def test_categorical_reconstruction_is_minus_cross_entropy():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(20, 7, generator=g, dtype=F64)
    target = torch.softmax(torch.randn(20, 7, generator=g, dtype=F64), dim=1)
    ref = -sum(-(target[i] * torch.log(torch.exp(logits[i]) / torch.exp(logits[i]).sum())).sum() for i in range(20)) / 20
    assert float(B.categorical_reconstruction(target, logits)) == pytest.approx(float(ref), rel=1e-12)
    hard = F.one_hot(torch.arange(20) % 7, 7).to(F64)
    assert float(B.categorical_reconstruction(hard, logits)) == pytest.approx(
        -float(F.cross_entropy(logits, torch.arange(20) % 7)), rel=1e-12)


def test_vmf_reconstruction_is_mean_log_density():
    z1, z2 = sphere(30, 3, seed=6), sphere(30, 3, seed=7)
    c3 = 5.0 / (4 * math.pi * math.sinh(5.0))
    ref = sum(math.log(c3 * math.exp(5.0 * float(z1[i] @ z2[i]))) for i in range(30)) / 30
    assert float(B.vmf_reconstruction(z1, z2, 5.0)) == pytest.approx(ref, rel=1e-12)


# ------------------------------------------------------------------------------------------------------------------
# The bounds: ER and InfoNCE
# ------------------------------------------------------------------------------------------------------------------


def noisy_views(sigma: float, k: int = 256, d: int = 128, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(k, d, generator=g, dtype=F64)
    return (unit(x + sigma * torch.randn(k, d, generator=g, dtype=F64)),
            unit(x + sigma * torch.randn(k, d, generator=g, dtype=F64)))


def test_er_bound_is_entropy_plus_reconstruction():
    z1, z2 = noisy_views(0.5, k=64, d=32)
    for est in ("joe", "plugin"):
        total = B.kde_entropy(z2, 10.0, est) + B.vmf_reconstruction(z1, z2, 10.0)
        assert float(B.er_bound(z1, z2, 10.0, est)) == pytest.approx(float(total), rel=1e-12, abs=1e-12)


def test_er_and_infonce_at_most_log_k():
    for sigma in (0.0, 0.1, 0.5, 1.0, 3.0):
        z1, z2 = noisy_views(sigma, seed=int(10 * sigma))
        assert float(B.er_bound(z1, z2, 10.0)) <= math.log(256) + 1e-12
        assert float(B.infonce_bound(z1, z2, 10.0)) <= math.log(256) + 1e-12


def test_infonce_is_reconstruction_plus_cross_view_entropy():
    z1, z2 = noisy_views(0.5, k=64, d=16)
    # -log p_hat_{Z2}(z1_i), the KDE of the Z2 batch evaluated at the other view
    log_c = float(B.vmf_log_normalizer(16, 10.0))
    cross = -(torch.logsumexp(10.0 * z1 @ z2.T, dim=1) - math.log(64) + log_c).mean()
    assert float(B.infonce_bound(z1, z2, 10.0)) == pytest.approx(float(B.vmf_reconstruction(z1, z2, 10.0) + cross),
                                                                  rel=1e-12)


@pytest.mark.parametrize("sigma,er,nce,tol", [(0.0, 5.528, 5.528, 0.01), (0.1, 5.428, 5.526, 0.01),
                                              (0.5, 3.523, 5.420, 0.08), (1.0, 0.550, 4.254, 0.2),
                                              (3.0, -3.492, 0.583, 0.25)])
def test_spherical_toy_table(sigma, er, nce, tol):
    # ER-SPEC.md §1.7 (one draw; across seeds the std is <= 0.06): regenerated with our own seeds
    vals = [noisy_views(sigma, seed=s) for s in range(3)]
    er_mean = sum(float(B.er_bound(a, b, 10.0)) for a, b in vals) / 3
    nce_mean = sum(float(B.infonce_bound(a, b, 10.0)) for a, b in vals) / 3
    assert er_mean == pytest.approx(er, abs=tol)
    assert nce_mean == pytest.approx(nce, abs=tol)


@pytest.mark.parametrize("rho", [0.5, 0.9, 0.99])
def test_gaussian_toy_er_recovers_mi_infonce_saturates(rho):
    toy = B.GaussianToy(rho, d=10)
    g = torch.Generator().manual_seed(0)
    er, nce = [], []
    for _ in range(20):
        z1, z2 = toy.sample(256, g)
        er.append(float(toy.er_estimate(z1, z2)))
        nce.append(float(toy.infonce_estimate(z1, z2)))
    er_mean = sum(er) / 20
    er_std = (sum((e - er_mean) ** 2 for e in er) / 19) ** 0.5
    assert abs(er_mean - toy.mi) < 4 * er_std / math.sqrt(20) + 1e-9  # unbiased, not capped by log k
    assert max(nce) <= math.log(256) + 1e-9
    if rho == 0.99:
        assert toy.mi > 19 and sum(nce) / 20 > math.log(256) - 0.05  # InfoNCE pinned at the log k ceiling
    if rho == 0.5:
        assert sum(nce) / 20 == pytest.approx(toy.mi, abs=0.15)  # far below the ceiling InfoNCE is accurate


def test_gaussian_mi_closed_form():
    assert B.gaussian_mi(0.9, 10) == pytest.approx(8.30, abs=0.005)
    assert B.gaussian_mi(0.99, 10) == pytest.approx(19.59, abs=0.005)


# ------------------------------------------------------------------------------------------------------------------
# Parity with the official implementation's README self-check (ER-SPEC.md §4.2, §6.2)
# ------------------------------------------------------------------------------------------------------------------


def test_official_readme_self_check_values():
    g = torch.Generator().manual_seed(0)
    z = unit(torch.randn(1000, 1000, generator=g))
    assert float(B.kde_entropy(z, 10.0, "plugin", legacy_constant=True)) == pytest.approx(-249.30849, abs=1e-3)
    assert float(B.kde_entropy(z, 10.0, "joe", legacy_constant=True)) == pytest.approx(-249.30833, abs=1e-3)
    assert float(B.kde_entropy(z.double(), 10.0, "joe")) == pytest.approx(-2035.15, abs=0.01)  # exact constant
    low_t = torch.softmax(torch.rand(1000, 1000, generator=g), dim=1)
    assert float(B.marginal_entropy(low_t)) == pytest.approx(6.907612, abs=1e-4)
    high = torch.softmax(1000 * torch.rand(1000, 1000, generator=g), dim=1)
    assert float(B.marginal_entropy(high)) == pytest.approx(6.695544, abs=0.03)
    one_hot = torch.softmax(1e4 * F.one_hot(torch.zeros(1000, dtype=torch.long), 1000).float(), dim=1)
    assert abs(float(B.marginal_entropy(one_hot))) < 1e-6


# ------------------------------------------------------------------------------------------------------------------
# Bad input: a ValueError that names the argument
# ------------------------------------------------------------------------------------------------------------------

Z = sphere(8, 4)
P = torch.softmax(torch.randn(8, 5, dtype=F64), dim=1)


@pytest.mark.parametrize("call,match", [
    (lambda: B.kde_entropy(Z * 2, 10.0), "z rows must be unit"),
    (lambda: B.kde_entropy(Z[:1], 10.0), "at least 2"),
    (lambda: B.kde_entropy(Z[0], 10.0), "2-D"),
    (lambda: B.kde_entropy(Z, 0.0), "kappa"),
    (lambda: B.kde_entropy(Z, -1.0), "kappa"),
    (lambda: B.kde_entropy(Z, 10.0, estimator="average"), "estimator"),
    (lambda: B.kde_entropy(torch.full((4, 3), float("nan"), dtype=F64), 10.0), "NaN"),
    (lambda: B.kde_entropy(torch.ones(4, 3, dtype=torch.long), 10.0), "floating"),
    (lambda: B.marginal_entropy(P * 2), "p rows must sum to 1"),
    (lambda: B.marginal_entropy(P - 0.5), "negative"),
    (lambda: B.conditional_entropy(P[:1]), "at least 2"),
    (lambda: B.vmf_reconstruction(Z, sphere(8, 5), 10.0), "same shape"),
    (lambda: B.vmf_reconstruction(Z, Z * 3, 10.0), "target rows must be unit"),
    (lambda: B.categorical_reconstruction(P, torch.randn(8, 6, dtype=F64)), "same shape"),
    (lambda: B.categorical_reconstruction(P, torch.full((8, 5), float("inf"), dtype=F64)), "pred_logits"),
    (lambda: B.er_bound(Z, Z[:4], 10.0), "same shape"),
    (lambda: B.infonce_bound(Z, Z, float("inf")), "kappa"),
    (lambda: B.vmf_log_normalizer(1, 10.0), "d must be"),
    (lambda: B.log_bessel_iv(-1, 10.0), "nu"),
    (lambda: B.gaussian_mi(1.0, 3), "rho"),
    (lambda: B.GaussianToy(0.5).sample(1), "k"),
])
def test_bad_input_raises_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
