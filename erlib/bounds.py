r"""The mathematics of the entropy–reconstruction (ER) view, as pure, differentiable torch functions.

Everything here follows Rodríguez-Gálvez et al., "The Role of Entropy and Reconstruction in Multi-View Self-Supervised
Learning" (ICML 2023); the derivations, step by step, are in ``docs/theory.md``:

* the ER lower bound  :math:`I(Z_1;Z_2) \ge H(Z_2) + \mathbb E[\log q(Z_2\mid Z_1)]`  (Barber & Agakov, 2003),
* its continuous estimator on the sphere (vMF kernel-density entropy + vMF reconstruction),
* its discrete estimator (marginal entropy of probability rows + categorical reconstruction),
* InfoNCE (Oord et al., 2018) for comparison, and a correlated-Gaussian toy with known MI.

Conventions
-----------
* ``z`` tensors are ``[k, d]`` batches of **unit** vectors (rows on :math:`\mathbb S^{d-1}`); ``k`` is the batch size.
* ``p`` tensors are ``[k, K]`` batches of probability rows.
* Entropies are in nats, w.r.t. the uniform *surface* (Lebesgue) measure on the sphere, so a collapsed continuous
  batch has a very negative entropy; the normalised entropy :math:`\eta\in[0,1]` is the plot-friendly version.
* Reconstructions are **log-likelihoods** (higher is better); losses are their negatives.
* Estimators accept any floating dtype; half precision inputs are promoted to float32 (never estimate in bf16).
* ``kappa`` (the vMF concentration, :math:`\kappa = 1/\text{temperature}`) is a finite scalar in
  :math:`(0, 1000]` (:data:`KAPPA_MAX`): a Python number or a 0-d tensor (the Bessel function and the vMF normaliser
  also take tensors of any shape, elementwise). The bound keeps the Bessel series short: its length grows like κ.
* ``check=True`` validates the inputs (unit rows, probability rows, finite values, shapes, κ). The checks read values
  back to the host, so the training hot path passes ``check=False`` after normalising its own inputs. Rows count as
  unit (or as summing to 1) up to the rounding error of their dtype (:func:`rounding_tolerance`), so rows normalised
  in float16 or bfloat16 pass.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "LEGACY_EPS",
    "KAPPA_MAX",
    "rounding_tolerance",
    "log_bessel_iv",
    "vmf_log_normalizer",
    "kde_log_density",
    "kde_entropy",
    "relative_kde_entropy",
    "normalized_entropy",
    "marginal_entropy",
    "conditional_entropy",
    "vmf_reconstruction",
    "categorical_reconstruction",
    "er_bound",
    "infonce_from_scores",
    "infonce_bound",
    "gaussian_mi",
    "GaussianToy",
]

#: The constant the official implementation adds inside ``log(I_nu(kappa) + eps)`` (``legacy_constant=True``).
LEGACY_EPS = 1e-7

#: Largest vMF concentration accepted (κ = 1/temperature; temperature ≥ 0.001). The Bessel power series needs about
#: κ/2 + 12·sqrt(κ/2) terms per value, so a huge κ (1e9) would allocate gigabytes; log I_ν is tested up to κ = 1000.
KAPPA_MAX = 1000.0

Estimator = Literal["joe", "plugin"]


# ----------------------------------------------------------------------------------------------------------------------
# input validation (host-side; skipped with check=False)
# ----------------------------------------------------------------------------------------------------------------------


def _as_float(x: Tensor, name: str) -> Tensor:
    """``x`` promoted to the dtype the estimators compute in (float32 for half precision); a TypeError / ValueError
    naming ``name`` unless it is a floating-point tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}; convert it with {name}.float()")
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_finite(x: Tensor, name: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf values; fix the computation that produced it")


def _check_batch(x: Tensor, name: str) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D batch [k, dim], got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"{name} must hold a batch of at least 2 rows (batch-level estimator), got k={x.shape[0]}")


_FLOAT32_EPS = torch.finfo(torch.float32).eps


def rounding_tolerance(dtype: torch.dtype, n: int) -> float:
    r"""How far from 1 the norm (or the sum) of a row of ``n`` entries stored in ``dtype`` may be from rounding alone.

    .. math:: \mathrm{tol} = 4\,\varepsilon_{\mathrm{row}} + 2\,(1+\log_2 n)\,\varepsilon_{32},\qquad
              \varepsilon_{\mathrm{row}} = \max(\varepsilon_{\mathrm{dtype}}, \varepsilon_{32}).

    Used by ``check=True`` for unit rows (``n`` = the dimension d) and probability rows (``n`` = K), with ε from
    ``torch.finfo``: 9.8e-4 (float16), 7.8e-3 (bfloat16), 1.2e-7 (float32), so about 4 ulps of a half-precision dtype.
    """
    # Why this bound. A row normalised (or softmax-ed) in a dtype with machine epsilon eps carries two roundings in
    # that dtype: the scale 1/||x|| (or 1/sum e^x) is rounded once and every stored entry once more, each a relative
    # error <= eps/2 that moves ||z|| (or sum p) by at most eps/2 -- together <= eps, whatever n. The norm or sum is a
    # reduction over n terms; torch accumulates float16/bfloat16 in float32 and sums float32 blockwise-pairwise, whose
    # relative error is at most ~log2(n) * eps_32 (Higham, "Accuracy and Stability of Numerical Algorithms", 2002,
    # sec. 4.2), halved by the square root of a norm. It is made twice: when the caller normalised, and when this check
    # recomputes the norm -- together <= log2(n) * eps_32. The tolerance takes 4x the rounding term and 2x the
    # reduction term (+ 2 eps_32 for small n). eps_row is at least float32's because rows normalised in float32 and
    # then promoted to float64 are ordinary input. Measured on the CPU (torch 2.14): rows normalised in their own dtype
    # miss 1 by <= 0.8 eps in float16 and bfloat16, and by <= 5.5 eps_32 in float32 at n = 65,536 -- well inside.
    row_eps = max(torch.finfo(dtype).eps, _FLOAT32_EPS)
    return 4 * row_eps + 2 * (1 + math.log2(max(n, 1))) * _FLOAT32_EPS


def _check_unit_rows(z: Tensor, name: str) -> None:
    """``z`` in its own (possibly half-precision) dtype: a finite [k >= 2, d] batch of rows of norm 1 up to rounding."""
    _check_batch(z, name)
    _check_finite(z, name)
    tol = rounding_tolerance(z.dtype, z.shape[1])
    err = (_as_float(z, name).norm(dim=1) - 1).abs().max().item()
    if err > tol:
        raise ValueError(
            f"{name} rows must be unit vectors (max | ||row|| - 1 | = {err:.3g}, more than the {tol:.2g} that rounding "
            f"in {z.dtype} explains); normalise them first, e.g. torch.nn.functional.normalize({name}, dim=1)"
        )


def _check_prob_rows(p: Tensor, name: str) -> None:
    """``p`` in its own dtype: a finite [k >= 2, K] batch of non-negative rows summing to 1 up to rounding."""
    _check_batch(p, name)
    _check_finite(p, name)
    if bool((p < 0).any()):
        raise ValueError(f"{name} has negative entries; it must hold probability rows (e.g. softmax(logits, dim=1))")
    tol = rounding_tolerance(p.dtype, p.shape[1])
    err = (_as_float(p, name).sum(dim=1) - 1).abs().max().item()
    if err > tol:
        raise ValueError(
            f"{name} rows must sum to 1 (max |sum - 1| = {err:.3g}, more than the {tol:.2g} that rounding in {p.dtype} "
            f"explains); pass probabilities, e.g. softmax(logits, dim=1)"
        )


def _unit_input(z: Tensor, name: str, check: bool) -> Tensor:
    """``z`` promoted for the estimators; with ``check``, first validated as unit rows in its own dtype."""
    promoted = _as_float(z, name)
    if check:
        _check_unit_rows(z, name)
    return promoted


def _prob_input(p: Tensor, name: str, check: bool) -> Tensor:
    """``p`` promoted for the estimators; with ``check``, first validated as probability rows in its own dtype."""
    promoted = _as_float(p, name)
    if check:
        _check_prob_rows(p, name)
    return promoted


def _check_kappa(kappa: float | Tensor, name: str = "kappa") -> None:
    """A concentration for the estimators: one finite number in (0, KAPPA_MAX], a Python number or a 0-d tensor."""
    if isinstance(kappa, Tensor):
        if kappa.dim() != 0:
            raise ValueError(
                f"{name} must be a scalar (a Python number or a 0-d tensor), got a tensor of shape "
                f"{tuple(kappa.shape)}; pass one concentration, e.g. {name}=10.0"
            )
        if kappa.dtype == torch.bool or kappa.is_complex():
            raise ValueError(f"{name} must be a real number, got a {kappa.dtype} tensor; pass e.g. {name}=10.0")
        value = float(kappa.detach())
    elif isinstance(kappa, numbers.Real) and not isinstance(kappa, bool):
        value = float(kappa)
    else:
        raise ValueError(
            f"{name} must be a real number (a Python number or a 0-d tensor), got "
            f"{type(kappa).__name__} {kappa!r}; pass e.g. {name}=10.0"
        )
    _check_kappa_range(value, name, f"{name}={value!r}")


def _check_kappa_range(value: float, name: str, shown: str) -> None:
    if not (math.isfinite(value) and 0 < value <= KAPPA_MAX):
        raise ValueError(
            f"{name} must be a finite number in (0, {KAPPA_MAX:g}] (a vMF concentration, "
            f"kappa = 1/temperature), got {shown}"
        )


def _check_kappa_values(kappa: Tensor, name: str = "kappa") -> None:
    """Elementwise concentrations (Bessel function, vMF normaliser): a non-empty tensor of values in (0, KAPPA_MAX]."""
    if kappa.numel() == 0:
        raise ValueError(f"{name} is an empty tensor; pass at least one concentration, e.g. {name}=10.0")
    if kappa.dtype == torch.bool or kappa.is_complex():
        raise ValueError(f"{name} must hold real numbers, got a {kappa.dtype} tensor; pass e.g. {name}=10.0")
    k64 = kappa.detach().to(torch.float64)
    bad = ~(torch.isfinite(k64) & (k64 > 0) & (k64 <= KAPPA_MAX))
    if bool(bad.any()):
        _check_kappa_range(float(k64[bad][0]), name, f"{float(k64[bad][0])!r} (first bad value of {kappa.numel()})")


def _check_same_shape(a: Tensor, b: Tensor, na: str, nb: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{na} and {nb} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def _check_choice(value: str, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


# ----------------------------------------------------------------------------------------------------------------------
# Bessel function and the vMF normaliser
# ----------------------------------------------------------------------------------------------------------------------


def _log1p_sum_exp(log_terms: Tensor, dim: int) -> Tensor:
    r""":math:`\log\sum_m e^{x_m}` as :math:`x_{\max} + \operatorname{log1p}(\sum_{m\ne\arg\max} e^{x_m-x_{\max}})`.

    The log1p keeps full *relative* accuracy when the result is close to :math:`x_{\max}` (e.g. :math:`\log I_0(10^{-3})
    \approx 2.5\cdot10^{-7}`), where a plain log-sum-exp loses digits to rounding of :math:`1+\epsilon`.
    """
    top, idx = log_terms.max(dim=dim, keepdim=True)
    rest = torch.exp(log_terms - top).scatter(dim, idx, 0.0).sum(dim=dim)
    return top.squeeze(dim) + torch.log1p(rest)


def log_bessel_iv(nu: float | Tensor, kappa: float | Tensor) -> Tensor:
    r"""Log of the modified Bessel function of the first kind, :math:`\log I_\nu(\kappa)`, computed in log space.

    Uses the power series, every term positive,

    .. math:: I_\nu(\kappa) = \sum_{m\ge0} \frac{(\kappa/2)^{2m+\nu}}{m!\,\Gamma(m+\nu+1)},

    summed as a log-sum-exp of :math:`(2m+\nu)\log(\kappa/2) - \log\Gamma(m+1) - \log\Gamma(m+\nu+1)`. The terms peak at
    :math:`m^\star=\sqrt{(\kappa/2)^2+\nu^2/4}-\nu/2` with a width of about :math:`\sqrt{m^\star}`; the series is cut
    where the terms are below :math:`e^{-60}` of the peak. Nothing over- or underflows, so the result is accurate for
    any dimension (:math:`\nu` up to :math:`10^5`) where :math:`I_\nu` itself would underflow (``scipy.special.iv``
    returns 0 from :math:`\nu=255` at :math:`\kappa=10`). Computed in float64 and returned in the promoted input dtype
    (float32 for non-float inputs); differentiable in :math:`\kappa` (and :math:`\nu`).

    ``nu`` and ``kappa`` broadcast against each other (numbers or tensors of any shape); every κ must lie in
    :math:`(0, 1000]` (:data:`KAPPA_MAX`: the number of series terms grows like κ/2), every ν be finite and
    :math:`\ge 0`. Tested against mpmath over :math:`\nu\in[0, 32768]`, :math:`\kappa\in[10^{-3},10^3]` (relative
    error :math:`\le 10^{-10}`).
    """
    nu_t = torch.as_tensor(nu)
    kappa_t = torch.as_tensor(kappa)
    _check_kappa_values(kappa_t)
    if nu_t.numel() == 0:
        raise ValueError("nu is an empty tensor; pass at least one order of the Bessel function, e.g. nu=63")
    out_dtype = torch.promote_types(
        nu_t.dtype if nu_t.is_floating_point() else torch.float32,
        kappa_t.dtype if kappa_t.is_floating_point() else torch.float32,
    )
    device = kappa_t.device
    nu64, kappa64 = torch.broadcast_tensors(nu_t.to(device, torch.float64), kappa_t.to(device, torch.float64))
    if bool((nu64 < 0).any()) or not bool(torch.isfinite(nu64).all()):
        raise ValueError(f"nu must be finite and >= 0 (order of the Bessel function), got {nu}")
    # Number of terms: the peak m* plus ~12 widths, + a margin; one static size for the whole broadcast batch.
    half = kappa64.detach() / 2
    m_star = torch.sqrt(half**2 + nu64.detach() ** 2 / 4) - nu64.detach() / 2
    n_terms = int((m_star + 12 * torch.sqrt(m_star + 1) + 30).max().ceil().item())
    m = torch.arange(n_terms, dtype=torch.float64, device=device)
    shape = nu64.shape
    nu_b, half_b = nu64.reshape(-1, 1), (kappa64 / 2).reshape(-1, 1)
    log_terms = (2 * m + nu_b) * torch.log(half_b) - torch.lgamma(m + 1) - torch.lgamma(m + nu_b + 1)
    return _log1p_sum_exp(log_terms, dim=1).reshape(shape).to(out_dtype)


def vmf_log_normalizer(d: int, kappa: float | Tensor, legacy_constant: bool = False) -> Tensor:
    r"""Log normaliser :math:`\log C_d(\kappa)` of the von Mises–Fisher density on :math:`\mathbb S^{d-1}`.

    .. math:: \mathrm{vMF}(z;\mu,\kappa) = C_d(\kappa)\,e^{\kappa\mu^\top z},\qquad
              \log C_d(\kappa) = (d/2-1)\log\kappa - (d/2)\log 2\pi - \log I_{d/2-1}(\kappa).

    ``legacy_constant=True`` reproduces the official implementation, which uses
    :math:`\log(I_{d/2-1}(\kappa) + 10^{-7})`; that is off by more than 0.01 nat from d ≈ 46 at κ = 10 and by 83 nats
    at d = 128 (``tests/test_bounds.py::test_legacy_constant_defect_table``). Only for parity checks.

    ``kappa``: a number in :math:`(0, 1000]` (cached), or a tensor of such values (elementwise, differentiable).
    """
    if isinstance(d, bool) or not isinstance(d, int) or d < 2:
        raise ValueError(f"d must be an integer dimension >= 2 (vectors on the sphere S^(d-1)), got {d!r}")
    if not isinstance(kappa, Tensor):  # a plain number: the constant is cached (no work in the training step)
        _check_kappa(kappa)
        return torch.tensor(_cached_log_normalizer(d, float(kappa), legacy_constant), dtype=torch.float64)
    _check_kappa_values(kappa)
    kappa_t = kappa if kappa.is_floating_point() else kappa.to(torch.float64)
    return _log_normalizer(d, kappa_t.to(torch.float64), legacy_constant).to(kappa_t.dtype)


def _log_normalizer(d: int, kappa64: Tensor, legacy_constant: bool) -> Tensor:
    nu = d / 2 - 1
    log_i = log_bessel_iv(nu, kappa64)
    if legacy_constant:
        log_i = torch.log(torch.exp(log_i) + LEGACY_EPS)
    return nu * torch.log(kappa64) - (d / 2) * math.log(2 * math.pi) - log_i


@functools.lru_cache(maxsize=256)
def _cached_log_normalizer(d: int, kappa: float, legacy_constant: bool) -> float:
    return float(_log_normalizer(d, torch.tensor(kappa, dtype=torch.float64), legacy_constant))


# ----------------------------------------------------------------------------------------------------------------------
# Entropy on the sphere: vMF kernel density estimate
# ----------------------------------------------------------------------------------------------------------------------


def _constant_free_kde(z: Tensor, kappa: float | Tensor, leave_one_out: bool) -> Tensor:
    r"""Per-sample :math:`-\log\hat p(z_i) - \log C_d(\kappa)` (the KDE negative log-density without its constant).

    .. math:: -\mathrm{LSE}_{j}(\kappa z_i^\top z_j) + \log k \quad\text{(self-term included)},\qquad
              -\mathrm{LSE}_{j\ne i}(\kappa z_i^\top z_j) + \log(k-1) \quad\text{(leave-one-out)}.
    """
    k = z.shape[0]
    logits = kappa * (z @ z.T)
    if leave_one_out:
        eye = torch.eye(k, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(eye, float("-inf"))
        return -torch.logsumexp(logits, dim=1) + math.log(k - 1)
    return -torch.logsumexp(logits, dim=1) + math.log(k)


def _reduce(values: Tensor, estimator: str) -> Tensor:
    """Joe's resubstitution average, or the plug-in expectation with weights softmax(log p̂) = softmax(-values)."""
    if estimator == "joe":
        return values.mean()
    weights = torch.softmax(-values, dim=0)
    return (weights * values).sum()


def kde_log_density(
    z: Tensor, kappa: float | Tensor, leave_one_out: bool = False, legacy_constant: bool = False, check: bool = True
) -> Tensor:
    r"""Per-sample log-density of the vMF kernel density estimate built on the same batch, :math:`\log\hat p(z_i)`.

    .. math:: \hat p(z) = \frac1k\sum_{j=1}^k C_d(\kappa)\,e^{\kappa z^\top z_j}
              \qquad(\text{leave-one-out: } \hat p_{-i}(z_i)=\tfrac1{k-1}\textstyle\sum_{j\ne i}\dots)
    """
    if check:
        _check_kappa(kappa)
    z = _unit_input(z, "z", check)
    log_c = vmf_log_normalizer(z.shape[1], kappa, legacy_constant).to(z.dtype)
    return -_constant_free_kde(z, kappa, leave_one_out) + log_c


def kde_entropy(
    z: Tensor,
    kappa: float | Tensor = 10.0,
    estimator: Estimator = "joe",
    leave_one_out: bool = False,
    legacy_constant: bool = False,
    check: bool = True,
) -> Tensor:
    r"""Differential entropy of a batch of unit vectors, by a vMF kernel density estimate on the same batch.

    With :math:`\ell_i = -\log\hat p(z_i)` (see :func:`kde_log_density`):

    * Joe's resubstitution estimator (Joe, 1989), ``estimator="joe"``: :math:`\hat H = \frac1k\sum_i \ell_i`;
    * the plug-in estimator (the official default), ``estimator="plugin"``:
      :math:`\hat H = \sum_i w_i\ell_i` with :math:`w_i = \hat p(z_i)/\sum_l \hat p(z_l)`; always
      :math:`\le` Joe's value (Chebyshev's sum inequality).

    With the self-term (default, as in the official code) the constant-free part
    :math:`\tilde H = \hat H + \log C_d(\kappa)` lies in :math:`[-\kappa, \log k - \kappa]`: exactly :math:`-\kappa` for
    a collapsed batch. ``leave_one_out=True`` drops :math:`j=i` from each density (and uses :math:`k-1`), removing the
    saturation of spread batches. Gradients flow through everything (also the plug-in weights).
    """
    _check_choice(estimator, ("joe", "plugin"), "estimator")
    if check:
        _check_kappa(kappa)
    z = _unit_input(z, "z", check)
    log_c = vmf_log_normalizer(z.shape[1], kappa, legacy_constant).to(z.dtype)
    return _reduce(_constant_free_kde(z, kappa, leave_one_out), estimator) - log_c


def relative_kde_entropy(
    z: Tensor,
    kappa: float | Tensor = 10.0,
    estimator: Estimator = "joe",
    leave_one_out: bool = False,
    check: bool = True,
) -> Tensor:
    r"""KDE entropy without the vMF constant, :math:`\tilde H = \hat H + \log C_d(\kappa)` (the part that moves).

    .. math:: \tilde H_{\mathrm{Joe}} = -\frac1k\sum_i \mathrm{LSE}_j(\kappa z_i^\top z_j) + \log k
              \;\in\;[-\kappa,\ \log k-\kappa]\quad\text{(self-term)}.

    Same gradients as :func:`kde_entropy`; it is the form training losses use, since the constant cancels against
    the reconstruction's (:func:`er_bound`) and would only cost float32 precision.
    """
    _check_choice(estimator, ("joe", "plugin"), "estimator")
    if check:
        _check_kappa(kappa)
    z = _unit_input(z, "z", check)
    return _reduce(_constant_free_kde(z, kappa, leave_one_out), estimator)


def normalized_entropy(
    z: Tensor, kappa: float | Tensor = 10.0, estimator: Estimator = "joe", check: bool = True
) -> Tensor:
    r"""Normalised KDE entropy :math:`\eta\in[0,1]` of a batch of unit vectors (self-term estimator).

    .. math:: \eta = \frac{\tilde H + \kappa}{\log k},\qquad
              \tilde H = -\frac1k\sum_i \mathrm{LSE}_j(\kappa z_i^\top z_j) + \log k
              = \hat H_{\mathrm{Joe}} + \log C_d(\kappa).

    0 means a collapsed batch; 1 means points so far apart that every kernel sees only itself. It does not depend on
    the dimension's constant, so curves from different d or κ share an axis; it does depend on the batch size k, so
    compare curves on a fixed monitor batch.
    """
    h_tilde = relative_kde_entropy(z, kappa, estimator, leave_one_out=False, check=check)
    return (h_tilde + kappa) / math.log(z.shape[0])


# ----------------------------------------------------------------------------------------------------------------------
# Discrete entropies
# ----------------------------------------------------------------------------------------------------------------------


def _entropy_of_rows(p: Tensor) -> Tensor:
    r""":math:`H(p_r) = -\sum_c p_{rc}\log p_{rc}` per row, with :math:`0\log0=0` and finite gradients at 0."""
    return -(p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))).sum(dim=-1)


def marginal_entropy(p: Tensor, check: bool = True) -> Tensor:
    r"""Shannon entropy of the batch-averaged distribution, the plug-in estimate of :math:`H(W)`.

    .. math:: \hat H(W) = -\sum_c \bar p_c\log\bar p_c,\qquad \bar p = \frac1k\sum_i p_i .

    :math:`\log K` for a uniform marginal (the equipartition SwAV enforces), 0 when every row is the same one-hot.
    (The official ``reduction="average"`` value :math:`-\frac1K\sum_c\log\bar p_c` is *not* an entropy: collapse
    maximises it. It is deliberately not offered.)
    """
    p = _prob_input(p, "p", check)
    return _entropy_of_rows(p.mean(dim=0))


def conditional_entropy(p: Tensor, check: bool = True) -> Tensor:
    r"""Mean per-sample entropy, the plug-in estimate of :math:`H(W\mid X)`.

    .. math:: \hat H(W\mid X) = \frac1k\sum_i H(p_i) = -\frac1k\sum_i\sum_c p_{ic}\log p_{ic}.

    :math:`\hat H(W) - \hat H(W\mid X) \ge 0` (concavity of H) is the plug-in :math:`\hat I(X;W)`: centering /
    equipartition raise the first term, sharpening lowers the second.
    """
    p = _prob_input(p, "p", check)
    return _entropy_of_rows(p).mean()


# ----------------------------------------------------------------------------------------------------------------------
# Reconstruction terms
# ----------------------------------------------------------------------------------------------------------------------


def vmf_reconstruction(
    pred: Tensor, target: Tensor, kappa: float | Tensor = 10.0, legacy_constant: bool = False, check: bool = True
) -> Tensor:
    r"""Reconstruction term :math:`\mathbb E[\log q(z_2\mid z_1)]` with a von Mises–Fisher :math:`q`, as a batch mean.

    .. math:: \frac1k\sum_i \log\mathrm{vMF}(t_i;\,\mu_i,\kappa)
              = \frac{\kappa}{k}\sum_i \mu_i^\top t_i + \log C_d(\kappa),

    ``pred`` = the means :math:`\mu_i` (e.g. :math:`z_1` or a predictor's output), ``target`` = :math:`t_i = z_2`; both
    unit rows. A log-likelihood (maximise it). No stop-gradient inside: detach the target in the caller if the method
    has one. BYOL's :math:`2-2\cos` is an affine function of it.
    """
    if check:
        _check_kappa(kappa)
    pred, target = _unit_input(pred, "pred", check), _unit_input(target, "target", check)
    if check:
        _check_same_shape(pred, target, "pred", "target")
    log_c = vmf_log_normalizer(pred.shape[1], kappa, legacy_constant).to(pred.dtype)
    return kappa * (pred * target).sum(dim=1).mean() + log_c


def categorical_reconstruction(target_probs: Tensor, pred_logits: Tensor, check: bool = True) -> Tensor:
    r"""Reconstruction term with a categorical :math:`q`: minus the cross-entropy, as a batch mean.

    .. math:: \frac1k\sum_i\sum_c p^{\mathrm{target}}_{ic}\,\log\operatorname{softmax}(\ell^{\mathrm{pred}}_i)_c
              = -\frac1k\sum_i \mathrm{CE}(p^{\mathrm{target}}_i, q_i).

    One-directional: the target distribution (a Sinkhorn code, a one-hot k-means label, a teacher softmax) is
    reconstructed from the predicting branch's logits (already divided by its temperature). Stop-gradient on the target
    is the caller's choice. A log-likelihood (≤ 0; maximise it).
    """
    target_probs, pred_logits = _prob_input(target_probs, "target_probs", check), _as_float(pred_logits, "pred_logits")
    if check:
        _check_same_shape(target_probs, pred_logits, "target_probs", "pred_logits")
        _check_finite(pred_logits, "pred_logits")
    return (target_probs * torch.log_softmax(pred_logits, dim=1)).sum(dim=1).mean()


# ----------------------------------------------------------------------------------------------------------------------
# The two MI lower bounds
# ----------------------------------------------------------------------------------------------------------------------


def er_bound(
    z1: Tensor,
    z2: Tensor,
    kappa: float | Tensor = 10.0,
    estimator: Estimator = "joe",
    leave_one_out: bool = False,
    check: bool = True,
) -> Tensor:
    r"""ER estimate of :math:`I(Z_1;Z_2)`: KDE entropy of :math:`Z_2` + vMF reconstruction of :math:`Z_2` from
    :math:`Z_1`.

    .. math:: \hat I_{ER} = \hat H(Z_2) + \frac1k\sum_i\log\mathrm{vMF}(z_{2i}; z_{1i},\kappa)
              = \frac\kappa k\sum_i z_{1i}^\top z_{2i} - \frac1k\sum_i\mathrm{LSE}_j(\kappa z_{2i}^\top z_{2j}) + \log k

    (Joe's estimator, same κ: the vMF constants cancel, so they are never computed here — no precision is lost to a
    large constant in float32). With the self-term :math:`\hat I_{ER}\le\log k`, and a collapsed batch gives exactly 0.
    """
    _check_choice(estimator, ("joe", "plugin"), "estimator")
    if check:
        _check_kappa(kappa)
    z1, z2 = _unit_input(z1, "z1", check), _unit_input(z2, "z2", check)
    if check:
        _check_same_shape(z1, z2, "z1", "z2")
    return relative_kde_entropy(z2, kappa, estimator, leave_one_out, check=False) + kappa * (z1 * z2).sum(dim=1).mean()


def infonce_from_scores(scores: Tensor) -> Tensor:
    r"""InfoNCE estimate of :math:`I(Z_1;Z_2)` from a critic matrix :math:`s_{ij} = f(z_{1i}, z_{2j})` (positives on
    the diagonal).

    .. math:: \hat I_{NCE} = \frac1k\sum_i\Big[s_{ii} - \log\frac1k\sum_j e^{s_{ij}}\Big] \;\le\; \log k .
    """
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1] or scores.shape[0] < 2:
        raise ValueError(f"scores must be a square [k, k] critic matrix with k >= 2, got shape {tuple(scores.shape)}")
    scores = _as_float(scores, "scores")
    k = scores.shape[0]
    return (scores.diagonal() - torch.logsumexp(scores, dim=1)).mean() + math.log(k)


def infonce_bound(z1: Tensor, z2: Tensor, kappa: float | Tensor = 10.0, check: bool = True) -> Tensor:
    r"""InfoNCE with the critic :math:`f(z_1, z_2) = \kappa z_1^\top z_2` (SimCLR's, κ = 1/temperature).

    .. math:: \hat I_{NCE} = \frac1k\sum_i\big[\kappa z_{1i}^\top z_{2i}
              - \mathrm{LSE}_j(\kappa z_{1i}^\top z_{2j})\big] + \log k
              = \text{vMF reconstruction} + \text{cross-view KDE entropy}.

    It differs from :func:`er_bound` only in where the KDE of :math:`Z_2` is evaluated: at :math:`z_{1i}` instead of
    :math:`z_{2i}`.
    """
    if check:
        _check_kappa(kappa)
    z1, z2 = _unit_input(z1, "z1", check), _unit_input(z2, "z2", check)
    if check:
        _check_same_shape(z1, z2, "z1", "z2")
    return infonce_from_scores(kappa * (z1 @ z2.T))


# ----------------------------------------------------------------------------------------------------------------------
# A toy with known mutual information: correlated Gaussians
# ----------------------------------------------------------------------------------------------------------------------


def gaussian_mi(rho: float, d: int) -> float:
    r"""MI of :math:`d` independent pairs of standard normals with correlation ρ: :math:`I=-\frac d2\log(1-\rho^2)`."""
    if not -1 < rho < 1:
        raise ValueError(f"rho must lie in (-1, 1) (a correlation), got {rho}")
    if d < 1:
        raise ValueError(f"d must be >= 1, got {d}")
    return -0.5 * d * math.log1p(-rho * rho)


@dataclass(frozen=True)
class GaussianToy:
    r"""Correlated Gaussians :math:`z_1\sim\mathcal N(0,I_d)`, :math:`z_2=\rho z_1+\sqrt{1-\rho^2}\,\epsilon`.

    Everything about it is known in closed form, so the bounds can be compared with the truth:
    :math:`H(Z_2)=\frac d2\log(2\pi e)`, :math:`p(z_2\mid z_1)=\mathcal N(\rho z_1,(1-\rho^2)I)`,
    :math:`I(Z_1;Z_2)=-\frac d2\log(1-\rho^2)`.
    """

    rho: float
    d: int = 10

    def __post_init__(self) -> None:
        gaussian_mi(self.rho, self.d)  # validates rho and d

    @property
    def mi(self) -> float:
        """The true mutual information, in nats."""
        return gaussian_mi(self.rho, self.d)

    @property
    def entropy(self) -> float:
        r"""The exact marginal entropy :math:`H(Z_2) = \frac d2\log(2\pi e)`."""
        return 0.5 * self.d * math.log(2 * math.pi * math.e)

    def sample(
        self, k: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
    ) -> tuple[Tensor, Tensor]:
        """Draw k pairs (z1, z2), each [k, d]."""
        if k < 2:
            raise ValueError(f"k (batch size) must be >= 2, got {k}")
        z1 = torch.randn(k, self.d, generator=generator, dtype=dtype)
        noise = torch.randn(k, self.d, generator=generator, dtype=dtype)
        return z1, self.rho * z1 + math.sqrt(1 - self.rho**2) * noise

    def log_q(self, z1: Tensor, z2: Tensor) -> Tensor:
        r"""Exact conditional log-density :math:`\log p(z_2\mid z_1)` for every pair (i, j): a [k, k] matrix."""
        var = 1 - self.rho**2
        sq = torch.cdist(self.rho * z1, z2) ** 2
        return -0.5 * sq / var - 0.5 * self.d * math.log(2 * math.pi * var)

    def log_marginal(self, z2: Tensor) -> Tensor:
        r""":math:`\log p(z_2)` of each row (standard normal)."""
        return -0.5 * (z2**2).sum(dim=1) - 0.5 * self.d * math.log(2 * math.pi)

    def er_estimate(self, z1: Tensor, z2: Tensor) -> Tensor:
        r"""ER bound with the exact entropy and the exact :math:`q`:
        :math:`H(Z_2)+\frac1k\sum_i\log p(z_{2i}\mid z_{1i})`.

        Unbiased for the true MI, whatever the batch size: the ER bound is not capped by :math:`\log k`.
        """
        return self.entropy + self.log_q(z1, z2).diagonal().mean()

    def infonce_estimate(self, z1: Tensor, z2: Tensor) -> Tensor:
        r"""InfoNCE with the optimal critic :math:`f(z_1,z_2)=\log p(z_2\mid z_1)-\log p(z_2)` (capped by
        :math:`\log k`)."""
        return infonce_from_scores(self.log_q(z1, z2) - self.log_marginal(z2)[None, :])
