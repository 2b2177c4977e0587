"""erlib.bounds against mathematics: mpmath references, closed forms, float64 loops written from the definitions,
inequalities, known values and invariances."""

from __future__ import annotations

import math
import statistics

import mpmath as mp
import numpy as np
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
# Independent references: mpmath for the vMF constant, explicit float64 NumPy loops for the estimators
# ------------------------------------------------------------------------------------------------------------------


def mp_log_vmf_constant(d: int, kappa: float, legacy: bool = False) -> float:
    """log C_d(kappa) = (d/2-1) log kappa - (d/2) log 2 pi - log I_{d/2-1}(kappa), in 40-digit arithmetic."""
    mp.mp.dps = 40
    nu = mp.mpf(d) / 2 - 1
    bessel = mp.besseli(nu, kappa) + (mp.mpf("1e-7") if legacy else 0)
    return float(nu * mp.log(kappa) - mp.mpf(d) / 2 * mp.log(2 * mp.pi) - mp.log(bessel))


def np_neg_log_kde(
    z: np.ndarray, kappa: float, log_c: float, leave_one_out: bool = False, at: np.ndarray | None = None
) -> np.ndarray:
    """-log p_hat(x_i) for each query x_i (default: the batch itself), p_hat(x) = mean_j C e^{kappa x.z_j}, by loops."""
    queries = z if at is None else at
    out = []
    for i, x in enumerate(queries):
        terms = [
            math.exp(log_c + kappa * float(np.dot(x, zj))) for j, zj in enumerate(z) if not (leave_one_out and i == j)
        ]
        out.append(-math.log(sum(terms) / len(terms)))
    return np.array(out)


def np_entropy(neg_log_p: np.ndarray, estimator: str) -> float:
    """Joe: the mean of -log p_hat; plug-in: its mean weighted by p_hat(z_i) / sum_l p_hat(z_l)."""
    if estimator == "joe":
        return float(neg_log_p.mean())
    dens = np.exp(-neg_log_p)
    return float((dens * neg_log_p).sum() / dens.sum())


def np_vmf_reconstruction(pred: np.ndarray, target: np.ndarray, kappa: float, log_c: float) -> float:
    """mean_i log vMF(t_i; mu_i, kappa) = mean_i [log C + kappa mu_i.t_i], by a loop."""
    return sum(log_c + kappa * float(np.dot(m, t)) for m, t in zip(pred, target)) / len(pred)


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


@pytest.mark.parametrize(
    "nu,value",
    [(15, -2.259799), (63, -99.225268), (127, -286.959668), (499, -1801.956335), (511, -1857.3505), (1023, -4424.8010)],
)
def test_log_bessel_at_kappa_10_matches_tabulated_values(nu, value):
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


def test_log_bessel_of_float32_input_is_float32_and_accurate():
    out = B.log_bessel_iv(63, torch.tensor(10.0))
    assert out.dtype == torch.float32 and out.item() == pytest.approx(-99.225268, rel=1e-6)


# ------------------------------------------------------------------------------------------------------------------
# vMF normaliser: closed forms and normalisation
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kappa", [1e-3, 0.5, 10.0, 200.0])
def test_vmf_normalizer_matches_closed_form_on_s2(kappa):
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
    # error of log(I + 1e-7) against the exact log I at kappa = 10 (nats): log(1 + 1e-7 / I_{d/2-1}(10)), from mpmath
    # (the README quotes this table)
    table = {32: "0.000", 44: "0.004", 50: "0.33", 52: "1.11", 128: "83.1", 256: "270.8", 512: "735.1", 1000: "1785.8"}
    for d, err in table.items():
        diff = float(B.vmf_log_normalizer(d, 10.0) - B.vmf_log_normalizer(d, 10.0, legacy_constant=True))
        exact = mp_log_vmf_constant(d, 10.0) - mp_log_vmf_constant(d, 10.0, legacy=True)
        assert diff == pytest.approx(exact, rel=1e-9, abs=1e-12), d
        assert f"{diff:.{len(err.split('.')[1])}f}" == err, d  # the table, to the digits it shows


def test_legacy_constant_departs_where_bessel_drops_below_eps():
    # The legacy error log(1 + 1e-7 / I) exceeds 0.01 nat exactly when I_{d/2-1}(10) < 1e-7 / (e^0.01 - 1).
    mp.mp.dps = 30
    threshold = 1e-7 / math.expm1(0.01)
    expected = next(d for d in range(2, 200) if mp.besseli(d / 2 - 1, 10) < threshold)
    departs = next(
        d
        for d in range(2, 200)
        if float(B.vmf_log_normalizer(d, 10.0) - B.vmf_log_normalizer(d, 10.0, legacy_constant=True)) > 0.01
    )
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


def test_joe_exceeds_plugin_and_equals_it_when_all_densities_are_equal():
    # Chebyshev's sum inequality: Joe >= plug-in, with equality iff every p_hat(z_i) is the same
    for seed in range(5):
        z = clusters(64, 16, m=4, noise=0.3, seed=seed)
        for loo in (False, True):
            joe, plugin = float(B.kde_entropy(z, 10.0, "joe", loo)), float(B.kde_entropy(z, 10.0, "plugin", loo))
            assert joe > plugin + 1e-6
    # the cross-polytope {+-e_1, ..., +-e_d}: every point sees the same neighbourhood, so all densities are equal
    d = 8
    polytope = torch.cat([torch.eye(d, dtype=F64), -torch.eye(d, dtype=F64)])
    for loo in (False, True):
        joe = float(B.kde_entropy(polytope, 3.0, "joe", loo))
        assert float(B.kde_entropy(polytope, 3.0, "plugin", loo)) == pytest.approx(joe, rel=1e-13)
        # and both equal the closed form -log C - log(mean_j e^{kappa x.z_j}): one self/antipode pair, 2d-2 orthogonal
        terms = ([] if loo else [math.exp(3.0)]) + [math.exp(-3.0)] + [1.0] * (2 * d - 2)
        assert joe == pytest.approx(-mp_log_vmf_constant(d, 3.0) - math.log(sum(terms) / len(terms)), rel=1e-12)


def test_collapsed_batch_gives_the_entropy_floor_eta_zero_and_er_zero():
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
    # reference values of eta for k = 256 uniform draws on S^127 (independent draws agree within +-0.005)
    etas = [float(B.normalized_entropy(sphere(256, 128, seed=s), float(kappa))) for s in range(3)]
    assert sum(etas) / 3 == pytest.approx(uniform_eta, abs=0.01)


def test_eta_table_clustered_d128():
    # reference values for 10 unit centres + noise 0.05 per coordinate, renormalised (k = 256, d = 128)
    for kappa, ref in [(1.0, 0.160), (5.0, 0.581), (10.0, 0.783), (20.0, 0.962)]:
        etas = [float(B.normalized_entropy(clusters(256, 128, seed=s), kappa)) for s in range(4)]
        assert sum(etas) / 4 == pytest.approx(ref, abs=0.01)


def test_legacy_constant_shifts_entropy_and_reconstruction_by_log1p_eps_over_bessel():
    # H_legacy - H_exact = log C_exact - log C_legacy = log(1 + 1e-7 / I_63(10)) (mpmath), and the reconstruction moves
    # by the opposite amount, so the legacy H + reconstruction still equals the ER estimate written from its definition
    z1, z2 = noisy_views(0.5, k=64, d=128)
    shift = mp_log_vmf_constant(128, 10.0) - mp_log_vmf_constant(128, 10.0, legacy=True)
    assert shift == pytest.approx(83.1, abs=0.05)
    a, b = z1.numpy(), z2.numpy()
    log_c = mp_log_vmf_constant(128, 10.0)
    for est in ("joe", "plugin"):
        h_legacy = float(B.kde_entropy(z2, 10.0, est, legacy_constant=True))
        assert h_legacy - float(B.kde_entropy(z2, 10.0, est)) == pytest.approx(shift, rel=1e-10)
        rec_legacy = float(B.vmf_reconstruction(z1, z2, 10.0, legacy_constant=True))
        assert rec_legacy - float(B.vmf_reconstruction(z1, z2, 10.0)) == pytest.approx(-shift, rel=1e-10)
        er_reference = np_entropy(np_neg_log_kde(b, 10.0, log_c), est) + np_vmf_reconstruction(a, b, 10.0, log_c)
        assert h_legacy + rec_legacy == pytest.approx(er_reference, rel=1e-10, abs=1e-10)


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


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [3, 128, 2048])
def test_rows_normalised_in_half_precision_pass_the_check_and_are_estimated_in_float32(dtype, d):
    # rows normalised in their own dtype miss norm 1 by up to ~eps/2 (3e-4 in fp16, 3e-3 in bf16): accepted
    g = torch.Generator().manual_seed(d)
    z = unit(torch.randn(64, d, generator=g).to(dtype))
    y = unit(torch.randn(64, d, generator=g).to(dtype))
    assert float((z.double().norm(dim=1) - 1).abs().max()) > 1e-4  # what the old fixed tolerance rejected
    z64, y64 = z.double(), y.double()  # the same (rounded) rows in float64: the reference
    for value, reference in [
        (B.kde_entropy(z, 10.0), B.kde_entropy(z64, 10.0, check=False)),
        (B.normalized_entropy(z, 10.0), B.normalized_entropy(z64, 10.0, check=False)),
        (B.er_bound(y, z, 10.0), B.er_bound(y64, z64, 10.0, check=False)),
        (B.infonce_bound(y, z, 10.0), B.infonce_bound(y64, z64, 10.0, check=False)),
        (B.vmf_reconstruction(y, z, 10.0), B.vmf_reconstruction(y64, z64, 10.0, check=False)),
    ]:
        assert value.dtype == torch.float32
        assert float(value) == pytest.approx(float(reference), rel=1e-5, abs=1e-4)
    p = torch.softmax(torch.randn(64, 50, generator=g).to(dtype), dim=1)  # probability rows in half precision
    assert float(B.marginal_entropy(p)) == pytest.approx(float(B.marginal_entropy(p.double(), check=False)), abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_rounding_tolerance_admits_own_dtype_rounding_and_rejects_twice_the_tolerance(dtype):
    eps = torch.finfo(dtype).eps
    for d in (2, 64, 4096):
        tol = B.rounding_tolerance(dtype, d)
        # a few ulps: at least the worst rounding of a normalisation (eps), at most 4 eps_row + 2 (1 + log2 d) eps_32
        assert max(eps, torch.finfo(torch.float32).eps) < tol <= 4 * max(eps, 1.2e-7) + 2 * (1 + math.log2(d)) * 1.2e-7
        z = unit(torch.randn(32, d, generator=torch.Generator().manual_seed(d), dtype=F64).to(dtype))
        B.kde_entropy(z, 10.0)  # normalised in its own dtype: accepted
        with pytest.raises(ValueError, match=f"z rows must be unit vectors .* rounding in {dtype}"):
            B.kde_entropy(z * (1 + 2 * tol), 10.0)
    # float64 rows normalised in float32 and then promoted are ordinary input
    B.kde_entropy(unit(torch.randn(32, 4096)).double(), 10.0)
    B.marginal_entropy(torch.softmax(torch.randn(32, 1000), dim=1).double())


# ------------------------------------------------------------------------------------------------------------------
# Discrete entropies and reconstruction
# ------------------------------------------------------------------------------------------------------------------


def test_discrete_entropies_match_closed_forms():
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
    ref = sum((target[i] * torch.log(torch.exp(logits[i]) / torch.exp(logits[i]).sum())).sum() for i in range(20)) / 20
    assert float(B.categorical_reconstruction(target, logits)) == pytest.approx(float(ref), rel=1e-12)
    hard = F.one_hot(torch.arange(20) % 7, 7).to(F64)
    assert float(B.categorical_reconstruction(hard, logits)) == pytest.approx(
        -float(F.cross_entropy(logits, torch.arange(20) % 7)), rel=1e-12
    )


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
    return (
        unit(x + sigma * torch.randn(k, d, generator=g, dtype=F64)),
        unit(x + sigma * torch.randn(k, d, generator=g, dtype=F64)),
    )


@pytest.mark.parametrize("estimator", ["joe", "plugin"])
@pytest.mark.parametrize("leave_one_out", [False, True])
def test_er_bound_matches_entropy_plus_reconstruction_written_from_the_definition(estimator, leave_one_out):
    # H_hat(Z2) from the vMF KDE with the mpmath constant, plus mean_i log vMF(z2_i; z1_i, kappa), by float64 loops
    z1, z2 = noisy_views(0.5, k=48, d=32)
    a, b = z1.numpy(), z2.numpy()
    log_c = mp_log_vmf_constant(32, 10.0)
    reference = np_entropy(np_neg_log_kde(b, 10.0, log_c, leave_one_out), estimator) + np_vmf_reconstruction(
        a, b, 10.0, log_c
    )
    got = float(B.er_bound(z1, z2, 10.0, estimator, leave_one_out))
    assert got == pytest.approx(reference, rel=1e-11, abs=1e-11)


def test_er_and_infonce_at_most_log_k():
    for sigma in (0.0, 0.1, 0.5, 1.0, 3.0):
        z1, z2 = noisy_views(sigma, seed=int(10 * sigma))
        assert float(B.er_bound(z1, z2, 10.0)) <= math.log(256) + 1e-12
        assert float(B.infonce_bound(z1, z2, 10.0)) <= math.log(256) + 1e-12


def test_infonce_matches_its_definition_and_is_reconstruction_plus_cross_view_entropy():
    z1, z2 = noisy_views(0.5, k=48, d=16)
    a, b = z1.numpy(), z2.numpy()
    k, kappa = 48, 10.0
    # the definition: mean_i [s_ii - log mean_j e^{s_ij}], s_ij = kappa z1_i.z2_j
    definition = (
        sum(
            kappa * float(a[i] @ b[i]) - math.log(sum(math.exp(kappa * float(a[i] @ b[j])) for j in range(k)) / k)
            for i in range(k)
        )
        / k
    )
    # the decomposition: vMF reconstruction + the KDE of the Z2 batch evaluated at the other view, -log p_hat(z1_i)
    log_c = mp_log_vmf_constant(16, kappa)
    decomposition = np_vmf_reconstruction(a, b, kappa, log_c) + float(np_neg_log_kde(b, kappa, log_c, at=a).mean())
    got = float(B.infonce_bound(z1, z2, kappa))
    assert got == pytest.approx(definition, rel=1e-11)
    assert got == pytest.approx(decomposition, rel=1e-10)


@pytest.mark.parametrize(
    "sigma,er,nce",
    [(0.0, 5.528, 5.528), (0.1, 5.428, 5.526), (0.5, 3.523, 5.420), (1.0, 0.550, 4.254), (3.0, -3.492, 0.583)],
)
def test_spherical_toy_table_within_three_standard_deviations(sigma, er, nce):
    # reference values: one draw each (k = 256, d = 128, kappa = 10, 3 decimals), stated per-draw std <= 0.06. Our mean
    # of n draws differs from one reference draw with std s * sqrt(1 + 1/n), s = our measured per-draw std.
    n = 12
    draws = [noisy_views(sigma, seed=s) for s in range(n)]
    for values, reference in [
        ([float(B.er_bound(a, b, 10.0)) for a, b in draws], er),
        ([float(B.infonce_bound(a, b, 10.0)) for a, b in draws], nce),
    ]:
        spread = statistics.stdev(values)
        assert spread <= 0.06
        assert statistics.fmean(values) == pytest.approx(reference, abs=3 * spread * math.sqrt(1 + 1 / n) + 5e-4)


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
    if rho == 0.5:  # far below the ceiling InfoNCE is accurate: within 4 standard errors of the truth
        assert abs(statistics.fmean(nce) - toy.mi) < 4 * statistics.stdev(nce) / math.sqrt(20)


@pytest.mark.parametrize("rho,d", [(0.5, 1), (0.9, 10), (0.99, 10), (-0.3, 4)])
def test_gaussian_mi_equals_the_log_determinant_formula(rho, d):
    # I(Z1; Z2) = 1/2 [log det S11 + log det S22 - log det S] for the joint covariance S = [[I, rho I], [rho I, I]]
    eye = np.eye(d)
    joint = np.block([[eye, rho * eye], [rho * eye, eye]])
    reference = 0.5 * (np.linalg.slogdet(eye)[1] * 2 - np.linalg.slogdet(joint)[1])
    assert B.gaussian_mi(rho, d) == pytest.approx(reference, rel=1e-12)
    assert B.GaussianToy(rho, d).mi == pytest.approx(reference, rel=1e-12)


# ------------------------------------------------------------------------------------------------------------------
# Parity with the official implementation's README self-check (apple/ml-entropy-reconstruction)
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


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: B.kde_entropy(Z * 2, 10.0), "z rows must be unit"),
        (lambda: B.kde_entropy(unit(torch.randn(8, 64)).half() * 1.01, 10.0), "z rows must be unit .* torch.float16"),
        (lambda: B.kde_entropy(Z[:1], 10.0), "at least 2"),
        (lambda: B.kde_entropy(Z[0], 10.0), "2-D"),
        (lambda: B.kde_entropy(Z, 0.0), r"kappa must be a finite number in \(0, 1000\].*got kappa=0.0"),
        (lambda: B.kde_entropy(Z, -1.0), r"kappa must be a finite number in \(0, 1000\].*got kappa=-1.0"),
        (lambda: B.kde_entropy(Z, 1e9), r"kappa must be a finite number in \(0, 1000\].*got kappa=1000000000.0"),
        (lambda: B.kde_entropy(Z, torch.tensor(1000.5)), r"in \(0, 1000\].*got kappa=1000.5"),
        (lambda: B.kde_entropy(Z, torch.tensor([])), r"kappa must be a scalar .* shape \(0,\)"),
        (lambda: B.kde_entropy(Z, torch.tensor([5.0, 10.0])), r"kappa must be a scalar .* shape \(2,\)"),
        (lambda: B.er_bound(Z, Z, torch.ones(1, 1)), r"kappa must be a scalar .* shape \(1, 1\)"),
        (lambda: B.kde_entropy(Z, True), "kappa must be a real number .* got bool True"),
        (lambda: B.kde_entropy(Z, "10"), "kappa must be a real number .* got str '10'"),
        (lambda: B.vmf_reconstruction(Z, Z, float("nan")), "kappa must be a finite number"),
        (lambda: B.log_bessel_iv(3, torch.tensor([])), "kappa is an empty tensor"),
        (lambda: B.log_bessel_iv(torch.tensor([]), 10.0), "nu is an empty tensor"),
        (
            lambda: B.log_bessel_iv(3, torch.tensor([1.0, 1e9])),
            r"\(0, 1000\].*got 1000000000.0 \(first bad value of 2\)",
        ),
        (lambda: B.vmf_log_normalizer(16, torch.tensor([10.0, 0.0])), r"in \(0, 1000\].*got 0.0"),
        (lambda: B.vmf_log_normalizer(16, 2000.0), r"in \(0, 1000\].*got kappa=2000.0"),
        (lambda: B.kde_entropy(Z, 10.0, estimator="average"), "estimator"),
        (lambda: B.kde_entropy(torch.full((4, 3), float("nan"), dtype=F64), 10.0), "NaN"),
        (lambda: B.kde_entropy(torch.ones(4, 3, dtype=torch.long), 10.0), "floating"),
        (lambda: B.marginal_entropy(P * 2), "p rows must sum to 1"),
        (lambda: B.marginal_entropy((P * 1.02).half()), "p rows must sum to 1 .* torch.float16"),
        (lambda: B.marginal_entropy(P - 0.5), "negative"),
        (lambda: B.conditional_entropy(P[:1]), "at least 2"),
        (lambda: B.vmf_reconstruction(Z, sphere(8, 5), 10.0), "same shape"),
        (lambda: B.vmf_reconstruction(Z, Z * 3, 10.0), "target rows must be unit"),
        (lambda: B.categorical_reconstruction(P, torch.randn(8, 6, dtype=F64)), "same shape"),
        (lambda: B.categorical_reconstruction(P, torch.full((8, 5), float("inf"), dtype=F64)), "pred_logits"),
        (lambda: B.er_bound(Z, Z[:4], 10.0), "same shape"),
        (lambda: B.infonce_bound(Z, Z, float("inf")), "kappa must be a finite number .* got kappa=inf"),
        (lambda: B.vmf_log_normalizer(1, 10.0), "d must be"),
        (lambda: B.log_bessel_iv(-1, 10.0), "nu"),
        (lambda: B.gaussian_mi(1.0, 3), "rho"),
        (lambda: B.GaussianToy(0.5).sample(1), "k"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_kappa_max_itself_is_accepted_and_exact():
    # the documented upper bound is inclusive: on S^2, log C_3(1000) = log(1000 / (4 pi sinh 1000)) (mpmath)
    mp.mp.dps = 30
    ref = float(mp.log(1000 / (4 * mp.pi * mp.sinh(1000))))
    assert B.KAPPA_MAX == 1000.0
    assert float(B.vmf_log_normalizer(3, B.KAPPA_MAX)) == pytest.approx(ref, rel=1e-12)
    assert float(B.vmf_log_normalizer(3, torch.tensor(B.KAPPA_MAX, dtype=F64))) == pytest.approx(ref, rel=1e-12)
    z = sphere(16, 3)
    assert float(B.normalized_entropy(z, torch.tensor(1000.0, dtype=F64))) == pytest.approx(1.0, abs=1e-12)


# ----------------------------------------------------------------- found by mutation testing (CONTRIBUTING.md)
def test_gaussian_toy_log_marginal_is_the_standard_normal_log_density():
    """log N(z; 0, I_d) = −‖z‖²/2 − (d/2) log 2π, against the closed form written out in float64 per coordinate."""
    toy = B.GaussianToy(0.6, d=3)
    z = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]], dtype=torch.float64)
    expected = [sum(-0.5 * v * v - 0.5 * math.log(2 * math.pi) for v in row) for row in z.tolist()]
    assert toy.log_marginal(z).tolist() == pytest.approx(expected, rel=1e-14)


def test_gaussian_toy_samples_follow_the_generator_and_the_correlation():
    toy = B.GaussianToy(0.8, d=4)
    a = toy.sample(3, generator=torch.Generator().manual_seed(7))
    b = toy.sample(3, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and a[0].dtype == a[1].dtype == torch.float64
    # the noise is the generator's second draw: z2 = ρ z1 + √(1−ρ²) ε exactly
    gen = torch.Generator().manual_seed(7)
    z1, eps = (
        torch.randn(3, 4, generator=gen, dtype=torch.float64),
        torch.randn(3, 4, generator=gen, dtype=torch.float64),
    )
    torch.testing.assert_close(a[1], 0.8 * z1 + 0.6 * eps, rtol=1e-15, atol=1e-15)
    assert toy.sample(2)[0].shape == (2, 4)  # k = 2 is the smallest batch
    with pytest.raises(ValueError, match="k \\(batch size\\) must be >= 2, got 1"):
        toy.sample(1)


@pytest.mark.parametrize("rho", [-1.0, 1.0, -1.5])
def test_gaussian_mi_refuses_a_correlation_outside_the_open_interval(rho):
    with pytest.raises(ValueError, match=f"rho must lie in \\(-1, 1\\) \\(a correlation\\), got {rho}"):
        B.gaussian_mi(rho, 3)
    assert B.gaussian_mi(-0.999, 1) == pytest.approx(-0.5 * math.log1p(-(0.999**2)), rel=1e-15)


def test_shape_errors_name_the_argument_at_fault():
    z = F.normalize(torch.randn(4, 3, dtype=torch.float64), dim=1)
    with pytest.raises(ValueError, match=r"^pred and target must have the same shape, got \(4, 3\) and \(3, 3\)$"):
        B.vmf_reconstruction(z, z[:3])
    with pytest.raises(ValueError, match=r"^pred must hold a batch of at least 2 rows .* got k=1$"):
        B.vmf_reconstruction(z[:1], z[:1])
    with pytest.raises(ValueError, match=r"^target rows must be unit vectors .*normalize\(target, dim=1\)$"):
        B.vmf_reconstruction(z, 2 * z)
    assert float(B.vmf_reconstruction(z[:2], z[:2])) == pytest.approx(
        float(B.vmf_reconstruction(z[:2], z[:2], check=False)), rel=1e-15
    )  # k = 2 is a batch


def test_kappa_tensors_must_be_real_and_may_reach_kappa_max():
    for kappa in (torch.tensor([True]), torch.tensor([10.0 + 0j])):
        with pytest.raises(ValueError, match=rf"^kappa must hold real numbers, got a {kappa.dtype} tensor"):
            B.vmf_log_normalizer(8, kappa)
    # the interval is closed at KAPPA_MAX: the largest allowed value gives mpmath's constant, the next float is refused
    top = torch.tensor([B.KAPPA_MAX], dtype=torch.float64)
    assert float(B.vmf_log_normalizer(8, top)[0]) == pytest.approx(mp_log_vmf_constant(8, B.KAPPA_MAX), rel=1e-12)
    with pytest.raises(ValueError, match=r"kappa must be a finite number in \(0, 1000\] .* got 1000.0000000000001 "):
        B.vmf_log_normalizer(8, torch.tensor([math.nextafter(B.KAPPA_MAX, math.inf)], dtype=torch.float64))


def test_value_errors_of_unit_and_probability_rows_name_the_argument():
    """NaN rows and non-batches are reported under the caller's argument name (pred / target_probs), not a generic
    one."""
    z = F.normalize(torch.randn(4, 3, dtype=torch.float64), dim=1)
    bad = z.clone()
    bad[1, 0] = math.nan
    with pytest.raises(ValueError, match=r"^pred contains NaN or Inf values; fix the computation that produced it$"):
        B.vmf_reconstruction(bad, z)
    p = torch.softmax(torch.randn(4, 5, dtype=torch.float64), dim=1)
    logits = torch.randn(4, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^target_probs must be a 2-D batch \[k, dim\], got shape \(5,\)$"):
        B.categorical_reconstruction(p[0], logits[0])
    nan_p = p.clone()
    nan_p[2, 3] = math.nan
    with pytest.raises(ValueError, match=r"^target_probs contains NaN or Inf values"):
        B.categorical_reconstruction(nan_p, logits)
    with pytest.raises(ValueError, match=r"^p contains NaN or Inf values"):
        B.marginal_entropy(nan_p)


def test_vmf_reconstruction_default_kappa_is_ten():
    """Without a κ, the reconstruction is the mean vMF log-density at κ = 10 (the project's default concentration),
    against mpmath's normaliser."""
    z1, z2 = sphere(40, 8, seed=8), sphere(40, 8, seed=9)
    ref = mp_log_vmf_constant(8, 10.0) + 10.0 * float((z1 * z2).sum(dim=1).mean())
    assert float(B.vmf_reconstruction(z1, z2)) == pytest.approx(ref, rel=1e-10)


def test_kde_log_density_per_sample_against_loops_with_mpmaths_constant():
    """log p̂(z_i) of every sample, self-term included by default and left out on request, against the loop reference
    with mpmath's normaliser; rows that are not unit vectors are refused unless check=False."""
    z = sphere(12, 5, seed=10)
    log_c = mp_log_vmf_constant(5, 4.0)
    zn = z.numpy()
    default = B.kde_log_density(z, 4.0).numpy()
    np.testing.assert_allclose(default, -np_neg_log_kde(zn, 4.0, log_c), rtol=1e-12)
    loo = B.kde_log_density(z, 4.0, leave_one_out=True).numpy()
    np.testing.assert_allclose(loo, -np_neg_log_kde(zn, 4.0, log_c, leave_one_out=True), rtol=1e-12)
    assert (default != loo).all()
    with pytest.raises(ValueError, match=r"^z rows must be unit vectors"):
        B.kde_log_density(2 * z, 4.0)
    assert B.kde_log_density(2 * z, 4.0, check=False).shape == (12,)  # unchecked: computed as given


def test_errors_of_the_discrete_estimators_name_their_arguments():
    p = torch.softmax(torch.randn(4, 5, dtype=torch.float64), dim=1)
    logits = torch.randn(4, 5, dtype=torch.float64)
    counts = torch.ones(4, 5, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"^p must be a floating-point tensor, got dtype torch.int64; convert it with"):
        B.conditional_entropy(counts)
    with pytest.raises(ValueError, match=r"^target_probs must be a floating-point tensor, got dtype torch.int64"):
        B.categorical_reconstruction(counts, logits)
    with pytest.raises(ValueError, match=r"^pred_logits must be a floating-point tensor, got dtype torch.int64"):
        B.categorical_reconstruction(p, counts)
    with pytest.raises(ValueError, match=r"^target_probs and pred_logits must have the same shape, got \(4, 5\) and"):
        B.categorical_reconstruction(p, logits[:, :4])
    bad = logits.clone()
    bad[0, 0] = math.inf
    with pytest.raises(ValueError, match=r"^pred_logits contains NaN or Inf values"):
        B.categorical_reconstruction(p, bad)


def test_normalized_entropy_defaults_and_estimator_against_the_loop_reference():
    """η = (H̃ + κ) / log k with the self-term KDE: default κ = 10 and Joe's estimator, the plug-in one on request,
    both against the loops; rows that are not unit vectors are refused unless check=False."""
    z = sphere(16, 6, seed=11)
    k = 16

    def eta_ref(kappa, estimator):
        h_tilde = np_entropy(np_neg_log_kde(z.numpy(), kappa, 0.0), estimator)  # log C = 0: the relative entropy
        return (h_tilde + kappa) / math.log(k)

    assert float(B.normalized_entropy(z)) == pytest.approx(eta_ref(10.0, "joe"), rel=1e-12)
    assert float(B.normalized_entropy(z, 3.0, "plugin")) == pytest.approx(eta_ref(3.0, "plugin"), rel=1e-12)
    assert eta_ref(3.0, "plugin") != pytest.approx(eta_ref(3.0, "joe"), rel=1e-6)  # the choice matters here
    with pytest.raises(ValueError, match=r"^z rows must be unit vectors"):
        B.normalized_entropy(2 * z)
    assert math.isfinite(float(B.normalized_entropy(2 * z, check=False)))


def test_infonce_bound_default_kappa_checks_both_views_and_names_them():
    """Î_NCE with κ = 10 by default, against the loop formula; each view is checked under its own name."""
    z1, z2 = sphere(10, 4, seed=12), sphere(10, 4, seed=13)
    s = 10.0 * (z1 @ z2.T).numpy()
    ref = float(np.mean([s[i, i] - np.log(np.exp(s[i]).sum()) for i in range(10)]) + math.log(10))
    assert float(B.infonce_bound(z1, z2)) == pytest.approx(ref, rel=1e-12)
    for bad, name in ((2 * z1, "z1"), (2 * z2, "z2")):
        args = (bad, z2) if name == "z1" else (z1, bad)
        with pytest.raises(ValueError, match=rf"^{name} rows must be unit vectors"):
            B.infonce_bound(*args)
    nan = z1.clone()
    nan[0, 0] = math.nan
    with pytest.raises(ValueError, match=r"^z1 contains NaN"):
        B.infonce_bound(nan, z2)


def test_er_bound_default_kappa_and_estimator_choice_against_the_loops_and_its_errors_name_the_arguments():
    """Î_ER = H̃(Z2) + κ·mean cos(z1, z2) (self-term KDE, vMF constants cancelled), κ = 10 and Joe by default; every
    error names the argument at fault."""
    z1, z2 = sphere(10, 4, seed=14), sphere(10, 4, seed=15)
    cos = float((z1 * z2).sum(dim=1).mean())

    def ref(kappa, estimator):
        return np_entropy(np_neg_log_kde(z2.numpy(), kappa, 0.0), estimator) + kappa * cos

    assert float(B.er_bound(z1, z2)) == pytest.approx(ref(10.0, "joe"), rel=1e-12)
    assert float(B.er_bound(z1, z2, 3.0, "plugin")) == pytest.approx(ref(3.0, "plugin"), rel=1e-12)
    for bad, name in ((2 * z1, "z1"), (2 * z2, "z2")):
        args = (bad, z2) if name == "z1" else (z1, bad)
        with pytest.raises(ValueError, match=rf"^{name} rows must be unit vectors"):
            B.er_bound(*args)
        assert math.isfinite(float(B.er_bound(*args, check=False)))  # unchecked: computed as given
    for f in (B.er_bound, B.infonce_bound):
        with pytest.raises(ValueError, match=r"^z1 and z2 must have the same shape, got \(10, 4\) and \(9, 4\)$"):
            f(z1, z2[:9])
    for f in (B.er_bound, B.kde_entropy, B.relative_kde_entropy):
        args = (z1, z2) if f is B.er_bound else (z2,)
        with pytest.raises(ValueError, match=r"^estimator must be one of \('joe', 'plugin'\), got 'mean'$"):
            f(*args, 10.0, "mean")


def test_kde_entropies_default_kappa_is_ten_and_relative_entropy_checks_its_rows_by_default():
    z = sphere(12, 5, seed=16)
    log_c = mp_log_vmf_constant(5, 10.0)
    assert float(B.kde_entropy(z)) == pytest.approx(np_entropy(np_neg_log_kde(z.numpy(), 10.0, log_c), "joe"), 1e-12)
    relative = np_entropy(np_neg_log_kde(z.numpy(), 10.0, 0.0), "joe")
    assert float(B.relative_kde_entropy(z)) == pytest.approx(relative, rel=1e-12)
    with pytest.raises(ValueError, match=r"^z rows must be unit vectors"):
        B.relative_kde_entropy(2 * z)


def test_kde_log_density_passes_the_legacy_constant_on():
    """At d = 64 the official constant log(I + 1e-7) is off by many nats: the per-sample log-density moves with it."""
    z = sphere(6, 64, seed=17)
    legacy = B.kde_log_density(z, 10.0, legacy_constant=True).numpy()
    np.testing.assert_allclose(legacy, -np_neg_log_kde(z.numpy(), 10.0, mp_log_vmf_constant(64, 10.0, legacy=True)))
    assert float(np.abs(legacy - B.kde_log_density(z, 10.0).numpy()).min()) > 1.0


def test_infonce_from_scores_takes_square_critic_matrices_of_at_least_two_rows():
    s = torch.randn(3, 3, dtype=F64, generator=torch.Generator().manual_seed(18))
    ref = float(np.mean([s[i, i] - np.log(np.exp(s[i].numpy()).sum()) for i in range(3)]) + math.log(3))
    assert float(B.infonce_from_scores(s)) == pytest.approx(ref, rel=1e-12)
    assert float(B.infonce_from_scores(s[:2, :2])) <= math.log(2)  # k = 2 is a batch
    for bad in (s[:, :2], s[:1, :1], s.expand(3, 3, 3), s[0]):
        with pytest.raises(ValueError, match=r"^scores must be a square \[k, k\] critic matrix with k >= 2, got shape"):
            B.infonce_from_scores(bad)
    with pytest.raises(ValueError, match=r"^scores must be a floating-point tensor, got dtype torch.int64"):
        B.infonce_from_scores(torch.ones(3, 3, dtype=torch.int64))


def test_rounding_tolerance_is_its_documented_formula_down_to_a_single_entry():
    """tol = 4 ε_row + 2 (1 + log2 n) ε_32 with ε_row = max(ε_dtype, ε_32): n = 1 (no reduction) adds 2 ε_32."""
    e32 = torch.finfo(torch.float32).eps
    for dtype in (torch.bfloat16, torch.float32, torch.float64):
        row = max(torch.finfo(dtype).eps, e32)
        for n, log2n in ((1, 0), (2, 1), (1024, 10)):
            assert B.rounding_tolerance(dtype, n) == pytest.approx(4 * row + 2 * (1 + log2n) * e32, rel=1e-12)


def test_bessel_and_normaliser_return_the_promoted_input_dtype_computed_in_float64():
    """Float inputs keep their promoted dtype, integer ones give float32; the work is done in float64 whatever the
    input, so a float32 κ gives the float64 value rounded once."""
    k32 = torch.tensor([0.5, 10.0, 300.0])
    exact = B.log_bessel_iv(31.0, k32.double())
    assert torch.equal(B.log_bessel_iv(31.0, k32), exact.float())
    assert B.log_bessel_iv(torch.tensor(3.0, dtype=F64), torch.tensor(2.0)).dtype == F64
    assert B.log_bessel_iv(torch.tensor(3), torch.tensor(2)).dtype == torch.float32
    assert B.log_bessel_iv(torch.tensor(3), torch.tensor(2.0, dtype=torch.float16)).dtype == torch.float32
    assert torch.equal(B.vmf_log_normalizer(64, k32), B.vmf_log_normalizer(64, k32.double()).float())
    integer = B.vmf_log_normalizer(8, torch.tensor([10]))
    assert integer.dtype == F64 and float(integer[0]) == pytest.approx(mp_log_vmf_constant(8, 10.0), rel=1e-12)
    with pytest.raises(ValueError, match=r"^nu is an empty tensor; pass at least one order of the Bessel function"):
        B.log_bessel_iv(torch.tensor([]), 10.0)
    for d in (8.0, "8", 1, True):
        with pytest.raises(
            ValueError, match=r"^d must be an integer dimension >= 2 \(vectors on the sphere S\^\(d-1\)\)"
        ):
            B.vmf_log_normalizer(d, 10.0)


def test_scalar_kappa_tensors_must_be_real_and_integer_rows_are_refused_by_name():
    z = sphere(8, 4, seed=19)
    for kappa in (torch.tensor(True), torch.tensor(10.0 + 0j)):
        with pytest.raises(ValueError, match=rf"^kappa must be a real number, got a {kappa.dtype} tensor"):
            B.kde_entropy(z, kappa)
    with pytest.raises(
        ValueError, match=r"^z must be a floating-point tensor, got dtype torch.int64; convert it with z"
    ):
        B.kde_entropy(torch.ones(8, 4, dtype=torch.int64), 10.0)
