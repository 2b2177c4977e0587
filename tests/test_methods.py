"""erlib.methods: the five SSL families and their ER variants, checked against mathematics and against each other.

1. Every loss against an independent re-derivation from its definition (explicit loops / NumPy, float64 inputs):
   NT-Xent, Sinkhorn–Knopp, SwAV's swapped prediction, BYOL, DINO (loss and center), DeepCluster-v2 (loss and
   spherical k-means); the logged ER metrics against a float64 NumPy / mpmath re-derivation.
2. Collapse signatures: the known values of the losses and estimators on collapsed inputs.
3. Optimisation: a few steps on a fixed batch lower the loss of every variant; the EMA teacher gets no gradient and
   moves only by the EMA rule.
4. DDP: 2 gloo processes equal 1 process on the concatenated batch (loss, DDP-averaged gradients, DINO's center,
   the logged metrics) — torchrun, marked slow.
5. End to end: every variant (and the multi-crop / option variants) trains 3 steps with finite loss and metrics.
6. The registry and config validation.
7. ``monitor()`` and ``erlib.nn.batch_statistics``: the training metrics plus backbone-feature η, without side effects,
   BatchNorm on batch statistics with the running statistics untouched.
8. Self-documenting options: ``describe``, ``summary``, help texts, enumerations, renamed options.
9. Every option's effect: the configured value reaches the computation, against an independent float64 reference
   (the network outputs come from a copy of the method's own modules; the loss / update formula is re-derived here).

Everything runs on the CPU with the tiny ConvNet and small heads.
"""

from __future__ import annotations

import copy
import inspect
import math

import mpmath as mp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from erlib import bounds
from erlib import methods as M
from erlib.methods.common import (
    continuous_metrics,
    discrete_metrics,
    encode_views,
    er_objective,
    feature_metrics,
    full_precision,
    global_marginal_entropy,
)
from erlib.nn import GlobalBatchNorm, TinyConvNet, batch_statistics, convert_to_global_batchnorm
from erlib.schedules import ema_momentum
from tests.conftest import torchrun
from tests.ddp.methods_shared import CASES as DDP_CASES
from tests.ddp.methods_shared import global_views, run_case

F64 = torch.float64

SMALL = {
    "simclr": dict(proj_hidden_dim=64, proj_dim=16),
    "swav": dict(proj_hidden_dim=64, proj_dim=16, num_prototypes=32),
    "deepcluster": dict(proj_hidden_dim=64, proj_dim=16, num_prototypes=(8, 6), num_samples=16),
    "byol": dict(proj_hidden_dim=64, proj_dim=16, pred_hidden_dim=64),
    "dino": dict(out_dim=64, hidden_dim=64, bottleneck_dim=16),
}
NAMES = ("simclr", "deepcluster", "swav", "byol", "dino")
VARIANTS = [(name, er) for name in NAMES for er in (False, True)]
VARIANT_IDS = [f"{name}{'-er' if er else ''}" for name, er in VARIANTS]
DISCRETE_FAMILIES = {"swav", "dino", "deepcluster"}


pytestmark = pytest.mark.usefixtures("one_thread")


def make(name: str, er: bool = False, **overrides) -> M.Method:
    """A small, seeded method in training mode."""
    torch.manual_seed(0)
    return M.build(name, er=er, backbone="convnet_tiny", **{**SMALL[name], **overrides}).train()


def make64(name: str, er: bool = False, **overrides) -> M.Method:
    """``make`` in float64, for comparisons against float64 references at tight tolerances."""
    return make(name, er, **overrides).double()


def images(n: int, size: int = 32, seed: int = 0, count: int = 2, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 3, size, size, generator=g).to(dtype) for _ in range(count)]


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=1)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


@torch.no_grad()
def perturb_(module: nn.Module, seed: int, scale: float = 0.05) -> None:
    """Move every parameter of ``module`` by seeded noise (breaks the teacher = student symmetry at initialisation,
    so a test can tell which network a quantity came from)."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(F64).numpy()


def log_softmax_np(x: np.ndarray) -> np.ndarray:
    x = x - x.max()
    return x - math.log(np.exp(x).sum())


def lse_rows(x: np.ndarray) -> np.ndarray:
    """log Σ_j exp(x_ij) per row, with the max shift."""
    m = x.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]


def softmax_rows(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy_rows(target: np.ndarray, logits: np.ndarray) -> float:
    """Mean over rows of −Σ_c target_c log softmax(logits)_c."""
    return float(np.mean(-(target * (logits - lse_rows(logits)[:, None])).sum(axis=1)))


def marginal_entropy_np(p: np.ndarray) -> float:
    """H(p̄) of the batch-mean of probability rows."""
    m = p.mean(axis=0)
    return float(-(m * np.log(m)).sum())


def relative_kde_entropy_np(z: np.ndarray, kappa: float) -> float:
    """Constant-free Joe KDE entropy with self-term: −(1/k) Σ_i log Σ_j exp(κ z_iᵀz_j) + log k, unit rows."""
    return float(-lse_rows(kappa * z @ z.T).mean() + math.log(len(z)))


def log_vmf_normalizer_mpmath(d: int, kappa: float) -> float:
    mp.mp.dps = 30
    return float((d / 2 - 1) * mp.log(kappa) - (d / 2) * mp.log(2 * mp.pi) - mp.log(mp.besseli(d / 2 - 1, kappa)))


def sinkhorn_reference(scores: np.ndarray, epsilon: float, iterations: int) -> np.ndarray:
    """SwAV's Sinkhorn–Knopp, written from its description: Q = exp(S/ε)ᵀ (K×B), total mass 1, then per iteration
    every prototype row gets mass 1/K and every sample column mass 1/B; finally columns are scaled to sum to 1."""
    q = np.exp((scores - scores.max()) / epsilon).T
    n_protos, n_samples = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        for k in range(n_protos):
            q[k, :] = q[k, :] / q[k, :].sum() / n_protos
        for b in range(n_samples):
            q[:, b] = q[:, b] / q[:, b].sum() / n_samples
    return (q * n_samples).T


def cross_entropy_np(target: np.ndarray, logits: np.ndarray) -> float:
    """Mean over rows of −Σ_c target_c log softmax(logits)_c (an explicit loop over rows)."""
    return float(np.mean([-(t * log_softmax_np(row)).sum() for t, row in zip(target, logits)]))


def ntxent_np(z1: np.ndarray, z2: np.ndarray, temperature: float) -> float:
    """NT-Xent by an explicit double loop over the 2B anchors (unit rows)."""
    u, batch = np.concatenate([z1, z2]), len(z1)
    total = 0.0
    for a in range(2 * batch):
        positive = a + batch if a < batch else a - batch
        denominator = sum(math.exp(u[a] @ u[b] / temperature) for b in range(2 * batch) if b != a)
        total += -math.log(math.exp(u[a] @ u[positive] / temperature) / denominator)
    return total / (2 * batch)


def dino_loss_np(
    student: list[np.ndarray], teacher: list[np.ndarray], center: np.ndarray, tau_s: float, tau_t: float
) -> float:
    """Mean over (teacher global view t, student view s ≠ t) of the batch-mean CE(softmax((g_t − c)/τ_t), g_s/τ_s)."""
    terms = [
        cross_entropy_rows(softmax_rows((teacher[t] - center) / tau_t), student[s] / tau_s)
        for t in range(len(teacher))
        for s in range(len(student))
        if s != t
    ]
    return float(np.mean(terms))


def by_resolution(views: list[torch.Tensor], fn) -> list[torch.Tensor]:
    """``fn`` applied to the concatenation of the views of each resolution, split back into views (how the methods
    batch views, so that BatchNorm sees the same batches)."""
    out: list = [None] * len(views)
    for size in dict.fromkeys(v.shape[-1] for v in views):
        idx = [i for i, v in enumerate(views) if v.shape[-1] == size]
        for i, part in zip(idx, fn(torch.cat([views[i] for i in idx])).chunk(len(idx))):
            out[i] = part
    return out


def state_snapshot(module: nn.Module) -> dict:
    return copy.deepcopy(module.state_dict())


def assert_same_state(module: nn.Module, snapshot: dict) -> None:
    """Every tensor bit-identical and every extra state (host counters) equal."""
    state = module.state_dict()
    assert set(state) == set(snapshot)
    for key, value in state.items():
        if torch.is_tensor(value):
            assert torch.equal(value, snapshot[key]), key
        else:
            assert value == snapshot[key], key


# ------------------------------------------------------------------------------------------------------------------
# 1. losses against independent re-derivations
# ------------------------------------------------------------------------------------------------------------------


def test_ntxent_matches_explicit_double_loop_over_2b_anchors():
    batch, temperature = 6, 0.3
    z1, z2 = randn(batch, 5, seed=1), randn(batch, 5, seed=2)  # not normalised: the loss normalises inside
    u = torch.cat([unit(z1), unit(z2)]).numpy()
    total = 0.0
    for a in range(2 * batch):
        positive = a + batch if a < batch else a - batch
        denominator = sum(math.exp(u[a] @ u[b] / temperature) for b in range(2 * batch) if b != a)
        total += -math.log(math.exp(u[a] @ u[positive] / temperature) / denominator)
    expected = total / (2 * batch)
    assert float(M.ntxent_loss(z1, z2, temperature)) == pytest.approx(expected, rel=1e-5)


def test_sinkhorn_converged_codes_have_unit_rows_and_uniform_batch_marginal():
    batch, protos = 24, 32
    scores = unit(randn(batch, 16, seed=3)) @ unit(randn(protos, 16, seed=4)).T
    q = M.sinkhorn_knopp(scores, epsilon=0.05, iterations=200)
    assert q.shape == (batch, protos) and bool((q >= 0).all())
    torch.testing.assert_close(q.sum(dim=1).double(), torch.ones(batch, dtype=F64), rtol=0, atol=1e-6)
    # the K×B transport plan Q = qᵀ/B: every prototype carries mass 1/K and every sample mass 1/B
    plan = q.double().T / batch
    torch.testing.assert_close(plan.sum(dim=1), torch.full((protos,), 1 / protos, dtype=F64), rtol=0, atol=1e-6)
    torch.testing.assert_close(plan.sum(dim=0), torch.full((batch,), 1 / batch, dtype=F64), rtol=0, atol=1e-6)
    torch.testing.assert_close(q.double().mean(dim=0), torch.full((protos,), 1 / protos, dtype=F64), rtol=0, atol=1e-6)


def test_sinkhorn_three_iterations_match_reference_loop_and_rows_sum_to_one():
    batch, protos = 10, 7
    scores = unit(randn(batch, 6, seed=5)) @ unit(randn(protos, 6, seed=6)).T
    q = M.sinkhorn_knopp(scores)  # defaults: ε = 0.05, 3 iterations
    torch.testing.assert_close(q.sum(dim=1).double(), torch.ones(batch, dtype=F64), rtol=0, atol=1e-6)
    expected = torch.from_numpy(sinkhorn_reference(scores.numpy(), 0.05, 3))
    torch.testing.assert_close(q.double(), expected, rtol=1e-5, atol=1e-7)
    # a common shift of the scores cancels (the implementation subtracts the max before exp)
    torch.testing.assert_close(M.sinkhorn_knopp(scores + 3.0), q, rtol=1e-5, atol=1e-7)


def test_swav_loss_matches_explicit_swapped_prediction():
    batch, protos, temperature, epsilon = 8, 5, 0.1, 0.05
    prototypes = unit(randn(protos, 6, seed=7))
    s1, s2 = unit(randn(batch, 6, seed=8)) @ prototypes.T, unit(randn(batch, 6, seed=9)) @ prototypes.T
    q1, q2 = (sinkhorn_reference(s.numpy(), epsilon, 3) for s in (s1, s2))
    expected = 0.5 * (cross_entropy_np(q1, s2.numpy() / temperature) + cross_entropy_np(q2, s1.numpy() / temperature))
    assert float(M.swav_loss(s1, s2, temperature, epsilon)) == pytest.approx(expected, rel=1e-5)
    assert float(M.swav_loss(s1, s2)) == pytest.approx(expected, rel=1e-5)  # SwAV's τ 0.1, ε 0.05, 3 iterations
    q1, q2 = (sinkhorn_reference(s.numpy(), 0.1, 1) for s in (s1, s2))  # the iterations argument reaches Sinkhorn
    one = 0.5 * (cross_entropy_np(q1, s2.numpy() / 0.2) + cross_entropy_np(q2, s1.numpy() / 0.2))
    assert float(M.swav_loss(s1, s2, 0.2, 0.1, iterations=1)) == pytest.approx(one, rel=1e-5)
    assert abs(one - float(M.swav_loss(s1, s2, 0.2, 0.1))) > 1e-4


def test_byol_loss_is_two_minus_two_cosine_and_squared_distance_of_unit_vectors():
    p, z = randn(9, 7, seed=10), randn(9, 7, seed=11)
    cosines = [float(a @ b / (a.norm() * b.norm())) for a, b in zip(p, z)]
    expected = sum(2 - 2 * c for c in cosines) / len(cosines)
    squared = float(((unit(p) - unit(z)) ** 2).sum(dim=1).mean())
    got = float(M.byol_loss(p, z))
    assert got == pytest.approx(expected, rel=1e-5)
    assert got == pytest.approx(squared, rel=1e-5)
    assert float(M.byol_loss(p, 3.0 * p)) == pytest.approx(0.0, abs=1e-6)  # scale-free; identical directions → 0


def test_dino_loss_matches_explicit_loops_over_teacher_and_other_student_views():
    batch, k, tau_s, tau_t = 5, 6, 0.1, 0.04
    teacher = [randn(batch, k, seed=20 + v) for v in range(2)]  # 2 global views
    student = [randn(batch, k, seed=30 + v).requires_grad_(True) for v in range(4)]  # 2 global + 2 local views
    center = 0.3 * randn(k, seed=40)
    terms = []
    for t in range(2):
        for s in range(4):
            if s == t:
                continue
            per_sample = []
            for i in range(batch):
                p_t = np.exp(log_softmax_np((teacher[t][i] - center).numpy() / tau_t))
                per_sample.append(-(p_t * log_softmax_np(student[s][i].detach().numpy() / tau_s)).sum())
            terms.append(np.mean(per_sample))
    assert len(terms) == 6
    loss = M.dino_loss(student, teacher, center, tau_s, tau_t)
    assert float(loss.detach()) == pytest.approx(float(np.mean(terms)), rel=1e-5)
    # the teacher side is a stop-gradient target
    teacher_grad = [t.clone().requires_grad_(True) for t in teacher]
    M.dino_loss(student, teacher_grad, center, tau_s, tau_t).backward()
    assert all(t.grad is None for t in teacher_grad) and all(s.grad is not None for s in student)


def test_center_update_is_ema_of_teacher_mean_over_views_and_batch():
    center, momentum = randn(6, seed=41), 0.7
    teacher = [randn(4, 6, seed=42), randn(4, 6, seed=43)]
    mean = sum(teacher[v][i] for v in range(2) for i in range(4)) / 8
    torch.testing.assert_close(
        M.center_update(center, teacher, momentum).double(),
        momentum * center + (1 - momentum) * mean,
        rtol=1e-6,
        atol=1e-7,
    )


def test_deepcluster_loss_matches_explicit_cross_entropy():
    scores, temperature = unit(randn(7, 4, seed=50)) @ unit(randn(5, 4, seed=51)).T, 0.1
    labels = torch.tensor([0, 4, 2, 2, 1, 3, 0])
    expected = np.mean([-log_softmax_np(s / temperature)[y] for s, y in zip(scores.numpy(), labels.tolist())])
    assert float(M.deepcluster_loss(scores, labels, temperature)) == pytest.approx(float(expected), rel=1e-5)


def test_deepcluster_loss_averages_over_the_labelled_images_only():
    """Label −1 (an image the bank had not seen at the last clustering) contributes nothing, to the sum or to the
    count; with no labelled image the loss is 0."""
    scores, temperature = unit(randn(7, 4, seed=52)) @ unit(randn(5, 4, seed=53)).T, 0.2
    ce = [-log_softmax_np(s / temperature) for s in scores.numpy()]
    for labels in ([0, -1, 2, -1, 1, 3, -1], [-1, -1, 4, -1, -1, -1, -1]):
        expected = np.mean([c[y] for c, y in zip(ce, labels) if y >= 0])
        loss = M.deepcluster_loss(scores, torch.tensor(labels), temperature)
        assert float(loss) == pytest.approx(float(expected), rel=1e-12)
    assert float(M.deepcluster_loss(scores, torch.full((7,), -1), temperature)) == 0.0


def inertia(x: torch.Tensor, centroids: torch.Tensor) -> float:
    """Σ_i (1 − max_c cos(x_i, c))."""
    return float((1 - (x @ centroids.T).max(dim=1).values).sum())


def test_spherical_kmeans_lowers_inertia_and_assigns_each_point_to_nearest_unit_centroid():
    centres = unit(randn(4, 8, seed=60))
    x = unit(centres[torch.arange(80) % 4] + 0.4 * randn(80, 8, seed=61))
    init = x[torch.randperm(80, generator=torch.Generator().manual_seed(62))[:4]]
    centroids, assign = M.spherical_kmeans(x, 4, iterations=50, init=init)
    assert centroids.shape == (4, 8) and assign.shape == (80,)
    torch.testing.assert_close(centroids.norm(dim=1), torch.ones(4, dtype=F64))
    assert torch.equal(assign, (x @ centroids.T).argmax(dim=1))
    assert inertia(x, centroids) < inertia(x, init) - 1e-3
    for c in range(4):  # converged: every centroid is the normalised mean direction of its points
        torch.testing.assert_close(centroids[c], unit(x[assign == c].sum(dim=0, keepdim=True))[0])
    # the default (random-sample) initialisation is seeded by the generator
    a = M.spherical_kmeans(x, 4, generator=torch.Generator().manual_seed(1))
    b = M.spherical_kmeans(x, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_spherical_kmeans_empty_cluster_keeps_its_previous_centroid():
    e = torch.eye(4, dtype=F64)
    x = unit(torch.cat([e[0] + 0.1 * randn(10, 4, seed=63), e[1] + 0.1 * randn(10, 4, seed=64)]))
    init = torch.stack([e[0], e[1], unit(-(e[0] + e[1])[None])[0]])  # the third centroid faces away from every point
    centroids, assign = M.spherical_kmeans(x, 3, iterations=10, init=init)
    assert not bool((assign == 2).any())
    assert torch.equal(centroids[2], init[2])
    assert set(assign.tolist()) == {0, 1}


def test_spherical_kmeans_needs_at_least_k_points():
    with pytest.raises(ValueError, match="k=5"):
        M.spherical_kmeans(unit(randn(3, 4, seed=65)), 5)


# ------------------------------------------------------------------------------------------------------------------
# 2. collapse signatures
# ------------------------------------------------------------------------------------------------------------------


def test_swav_loss_of_constant_scores_is_exactly_log_k():
    for k in (2, 32, 3000):
        scores = torch.full((16, k), 0.37, dtype=F64)
        assert float(M.swav_loss(scores, scores)) == pytest.approx(math.log(k), rel=1e-6)


def test_swav_loss_of_collapsed_embeddings_is_at_least_log_k():
    k = 32
    prototypes = unit(randn(k, 8, seed=70))
    z = unit(randn(1, 8, seed=71)).expand(16, 8)  # every sample has the same embedding
    scores = z @ prototypes.T
    codes = M.sinkhorn_knopp(scores)
    torch.testing.assert_close(codes.double(), torch.full((16, k), 1 / k, dtype=F64), rtol=1e-5, atol=0)
    assert float(M.swav_loss(scores, scores)) >= math.log(k) - 1e-6


def test_collapsed_batch_estimator_signatures():
    d, kappa = 16, 10.0
    z = unit(randn(1, d, seed=72)).repeat(12, 1)
    assert float(bounds.kde_entropy(z, kappa)) == pytest.approx(-kappa - log_vmf_normalizer_mpmath(d, kappa), rel=1e-10)
    assert float(bounds.normalized_entropy(z, kappa)) == pytest.approx(0.0, abs=1e-12)
    assert float(bounds.er_bound(z, z, kappa)) == pytest.approx(0.0, abs=1e-12)
    assert float(bounds.infonce_bound(z, z, kappa)) == pytest.approx(0.0, abs=1e-12)
    one_hot = F.one_hot(torch.full((12,), 3), 7).to(F64)
    assert float(bounds.marginal_entropy(one_hot)) == 0.0
    assert float(bounds.conditional_entropy(one_hot)) == 0.0


def test_method_metrics_of_a_collapsed_batch():
    z = unit(randn(1, 16, seed=73)).repeat(10, 1)
    metrics = continuous_metrics(z, z, z, 10.0)
    for key in ("eta_online", "eta_target", "er_bound", "infonce"):
        assert float(metrics[key]) == pytest.approx(0.0, abs=1e-5), key
    assert float(metrics["reconstruction"]) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("kappa", [2.0, 10.0, 40.0])
def test_continuous_metrics_match_a_float64_rederivation(kappa):
    """Every continuous metric from its definition in NumPy, with the vMF constant from mpmath's Bessel function:
    H̃(z) = −(1/k)Σ_i log Σ_j e^{κ z_iᵀz_j} + log k, Ĥ = H̃ − log C_d(κ), η = (H̃ + κ)/log k,
    Î_ER = H̃(t) + κ·mean cos(p, t), Î_NCE = (1/k)Σ_i [κ p_iᵀt_i − log Σ_j e^{κ p_iᵀt_j}] + log k."""
    k, d = 12, 8
    pred, target, online = unit(randn(k, d, seed=90)), unit(randn(k, d, seed=91)), unit(randn(k, d, seed=92))
    got = {key: float(v) for key, v in continuous_metrics(pred, target, online, kappa).items()}
    p, t, o = np64(pred), np64(target), np64(online)
    log_c = log_vmf_normalizer_mpmath(d, kappa)
    h_online, h_target = relative_kde_entropy_np(o, kappa), relative_kde_entropy_np(t, kappa)
    cosines = (p * t).sum(axis=1)
    cross = kappa * p @ t.T
    expected = {
        "entropy_online": h_online - log_c,
        "entropy_target": h_target - log_c,
        "eta_online": (h_online + kappa) / math.log(k),
        "eta_target": (h_target + kappa) / math.log(k),
        "reconstruction": float(cosines.mean()),
        "er_bound": h_target + kappa * float(cosines.mean()),
        "infonce": float((np.diag(cross) - lse_rows(cross)).mean()) + math.log(k),
    }
    assert set(got) == set(expected) == set(M.CONTINUOUS_METRICS)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key


def test_estimators_and_losses_stay_in_float32_under_bf16_autocast():
    """Under autocast a float32 Gram matrix κ zᵀz would be rounded to bf16 (~0.01·κ per kernel logit): the ER terms,
    NT-Xent and every metric switch autocast off and give the float32 values."""
    z1, z2, z3 = (unit(randn(16, 8, seed=s)).float() for s in (97, 98, 99))
    logits = 5 * randn(16, 12, seed=100).float()
    probs = torch.softmax(logits, dim=1)
    computations = {
        "er_objective": lambda: er_objective(z1, z2, z3, 10.0),
        "ntxent_loss": lambda: M.ntxent_loss(z1, z2, 0.2),
        "embedding_entropy": lambda: M.embedding_entropy([z1, z2], 10.0),
        "global_marginal_entropy": lambda: global_marginal_entropy([probs, probs.flip(0)]),
        **{f"continuous:{k}": (lambda k=k: continuous_metrics(z1, z2, z3, 10.0)[k]) for k in M.CONTINUOUS_METRICS},
        **{f"discrete:{k}": (lambda k=k: discrete_metrics(probs, logits)[k]) for k in M.DISCRETE_METRICS},
        **{f"features:{k}": (lambda k=k: feature_metrics(z1, 10.0)[k]) for k in M.FEATURE_METRICS},
    }
    for name, compute in computations.items():
        exact_value = compute()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast_value = compute()
        assert autocast_value.dtype == torch.float32, name
        assert float(autocast_value) == pytest.approx(float(exact_value), rel=1e-6, abs=1e-6), name
    # bf16 network outputs (what autocast hands the losses) are widened first: the float32 values of the rounded inputs
    b1, b2 = z1.bfloat16(), z2.bfloat16()
    assert full_precision(b1).dtype == torch.float32 and full_precision(z1.double()).dtype == torch.float64
    for name, compute in {"ntxent_loss": M.ntxent_loss, "byol_loss": lambda a, b, _: M.byol_loss(a, b)}.items():
        widened = compute(b1, b2, 0.2)
        assert widened.dtype == torch.float32, name
        assert float(widened) == float(compute(b1.float(), b2.float(), 0.2)), name


def test_er_objective_is_kappa_times_mean_cosine_plus_entropy_of_the_chosen_rows():
    kappa = 7.0
    pred, target, ent = unit(randn(10, 6, seed=93)), unit(randn(10, 6, seed=94)), unit(randn(10, 6, seed=95))
    expected = kappa * float((np64(pred) * np64(target)).sum(axis=1).mean()) + relative_kde_entropy_np(np64(ent), kappa)
    assert float(er_objective(pred, target, ent, kappa)) == pytest.approx(expected, rel=1e-10)
    # the entropy is that of ``entropy_of``, not of the target
    assert float(er_objective(pred, target, target, kappa)) != pytest.approx(expected, rel=1e-3)


# ------------------------------------------------------------------------------------------------------------------
# 3. optimisation and the EMA teacher
# ------------------------------------------------------------------------------------------------------------------


def test_deepcluster_fill_memory_stores_both_large_crops_and_touches_nothing_else():
    """fill_memory (the trainer's pass before the first step) writes exactly the rows of ``index``: the unit projections
    of views 0 and 1 in memory crops 0 and 1, marks them seen, and changes no weight and no BatchNorm statistic; the
    first clustering then runs at epoch 0."""
    from erlib.nn import batch_statistics

    method = make64("deepcluster", num_samples=8, num_prototypes=(3, 4))
    views = images(4, 32, seed=31, dtype=F64) + images(4, 16, seed=32, dtype=F64)  # two large crops, two small
    index = torch.tensor([6, 1, 3, 0])
    before = {
        k: v.clone()
        for k, v in method.state_dict().items()
        if isinstance(v, torch.Tensor) and not k.startswith(("memory", "seen"))
    }
    with batch_statistics(method):
        method.fill_memory(views, index)
        # both large crops through the network as one batch (BatchNorm normalises over both, as in training)
        expected = unit(method.projector(method.backbone(torch.cat(views[:2])))).chunk(2)
    for crop in range(2):
        torch.testing.assert_close(method.memory[crop, index], expected[crop], rtol=1e-12, atol=1e-12)
    others = torch.tensor([2, 4, 5, 7])
    assert bool(method.memory[:, others].eq(0).all()) and method.seen.tolist() == [i in (0, 1, 3, 6) for i in range(8)]
    after = method.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items()), "fill_memory changed weights or BN statistics"
    method.on_epoch_start(0)
    assert method.has_labels  # 4 images seen >= max(K) = 4: clustered before any step
    assert method.assignments[:, others].eq(-1).all() and method.assignments[:, index].ge(0).all()
    assert M.build("simclr", backbone="convnet_tiny").memory_bank is False and method.memory_bank is True


def fill_bank_and_cluster(method: M.DeepClusterV2, views: list[torch.Tensor], index: torch.Tensor) -> None:
    """DeepCluster-v2's first epoch: forward passes over every sample fill the memory bank, then k-means."""
    assert not method.has_labels
    with torch.no_grad():
        out = method(views, index=index)
    if not method.er:
        assert float(out.loss.detach()) == 0.0  # nothing to predict while the bank fills
    assert bool(method.seen.all())
    method.cluster()
    assert method.has_labels and bool((method.assignments >= 0).all())
    assert method.assignments.shape == (len(method.cfg.num_prototypes), method.cfg.num_samples)
    for h, k in enumerate(method.cfg.num_prototypes):
        assert bool((method.assignments[h] < k).all())
        torch.testing.assert_close(method.prototypes(h).norm(dim=1), torch.ones(k, dtype=method.memory.dtype))


def converge_dino_center(method: M.DINO, views: list[torch.Tensor]) -> None:
    """Set DINO's center to the teacher's batch mean on ``views``. The center is a moving target: starting from 0 it
    moves to the mean of the (nearly identical, at initialisation) teacher logits within a few steps, which spreads
    the centred teacher targets and *raises* the cross-entropy whatever the student does. From the fixed point the
    loss measures the student's fit alone."""
    teacher = method.teacher
    with torch.no_grad():
        logits = by_resolution(views[:2], lambda x: teacher["head"](teacher["backbone"](x)))
        method.center.copy_(torch.cat(logits).mean(dim=0))


@pytest.mark.parametrize("name,er", VARIANTS, ids=VARIANT_IDS)
def test_a_few_adam_steps_on_a_fixed_batch_lower_the_loss(name, er):
    method = make(name, er, **({"num_samples": 8} if name == "deepcluster" else {}))
    views, index = images(8, seed=1), torch.arange(8)
    if name == "deepcluster":
        fill_bank_and_cluster(method, views, index)
    if name == "dino":
        converge_dino_center(method, views)
    optimizer = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(8):
        out = method(views, index=index)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        method.update((step + 1) / 8)
        losses.append(float(out.loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.05, losses


TEACHERS = {
    "byol": {"target.0.": "backbone.", "target.1.": "projector."},
    "dino": {"teacher.backbone.": "backbone.", "teacher.head.": "head."},
}


def teacher_student_pairs(method: M.Method, kind: str) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, teacher tensor, student tensor) for every teacher parameter or buffer, matched by name."""
    prefixes = TEACHERS[method.name]
    named = dict(method.named_parameters() if kind == "params" else method.named_buffers())
    pairs = []
    for name, tensor in named.items():
        for t_prefix, s_prefix in prefixes.items():
            if name.startswith(t_prefix):
                pairs.append((name, tensor, named[s_prefix + name[len(t_prefix) :]]))
    return pairs


@pytest.mark.parametrize("name", ["byol", "dino"])
@pytest.mark.parametrize("er", [False, True], ids=["orig", "er"])
def test_ema_teacher_gets_no_gradient_and_moves_only_by_the_ema_rule(name, er):
    tau_base, progress = 0.9, 0.3
    method = make(name, er, tau_base=tau_base)
    params, buffers = teacher_student_pairs(method, "params"), teacher_student_pairs(method, "buffers")
    n_teacher = sum(1 for n, _ in method.named_parameters() if n.startswith(tuple(TEACHERS[name])))
    assert len(params) == n_teacher > 0 and len(buffers) > 0  # every teacher tensor has a student twin
    n_student = sum(1 for n, _ in method.named_parameters() if n.startswith(tuple(TEACHERS[name].values())))
    assert n_student == n_teacher  # ... and every student tensor a teacher twin of its own (a deep copy, not shared)
    assert all(t.data_ptr() != s.data_ptr() for _, t, s in params)
    # an optimiser over *all* parameters, as a naive trainer would build it
    optimizer = torch.optim.SGD(method.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    out = method(images(8, seed=2))
    optimizer.zero_grad()
    out.loss.backward()
    for _, teacher, _ in params:
        assert not teacher.requires_grad and teacher.grad is None
    before = [t.detach().clone() for _, t, _ in params]
    optimizer.step()
    for (n, teacher, _student), old in zip(params, before):
        assert torch.equal(teacher, old), f"the optimiser moved the teacher parameter {n}"
    assert any(not torch.equal(s, t) for _, t, s in params)  # the student moved away from the teacher
    method.update(progress)
    tau = ema_momentum(tau_base, progress)
    assert tau == pytest.approx(1 - (1 - tau_base) * (math.cos(math.pi * progress) + 1) / 2)
    for (n, teacher, student), old in zip(params, before):
        torch.testing.assert_close(teacher, tau * old + (1 - tau) * student, rtol=1e-6, atol=1e-7, msg=n)
    for n, teacher, student in buffers:  # BN statistics are copied from the student
        assert torch.equal(teacher, student), n
    assert float(method(images(8, seed=3)).metrics["ema_momentum"]) == pytest.approx(tau)


@pytest.mark.parametrize("name", ["byol", "dino"])
def test_ema_with_zero_momentum_makes_the_teacher_equal_the_student(name):
    method = make(name, tau_base=0.0)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    method(images(8, seed=4)).loss.backward()
    optimizer.step()
    method.update(0.0)
    for n, teacher, student in teacher_student_pairs(method, "params") + teacher_student_pairs(method, "buffers"):
        torch.testing.assert_close(teacher, student, rtol=0, atol=1e-7, msg=n)


# ------------------------------------------------------------------------------------------------------------------
# 4. DDP: 2 processes equal 1 process on the concatenated batch (BatchNorm replaced, see tests/ddp/methods_shared.py)
# ------------------------------------------------------------------------------------------------------------------

#: cases where every rank computes the same global loss (everything gathered); the others average local losses
GLOBAL_LOSS = {"simclr", "simclr_er", "byol_er"}


@pytest.fixture(scope="module")
def ddp_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("methods_ddp")
    torchrun("tests/ddp/methods_worker.py", str(out), nproc=2)
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    return ranks


@pytest.fixture(scope="module")
def single_process():
    return {case: run_case(case, global_views(case)) for case in DDP_CASES}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(DDP_CASES))
def test_two_processes_equal_one_process_loss_gradients_and_center(case, ddp_ranks, single_process):
    single = single_process[case]
    for r, rank in enumerate(ddp_ranks):
        got = rank["results"][case]
        assert float(got["loss_mean"]) == pytest.approx(float(single["loss"]), rel=1e-5, abs=1e-6), r
        if case in GLOBAL_LOSS:
            assert float(got["loss"]) == pytest.approx(float(single["loss"]), rel=1e-5, abs=1e-6), r
        assert got["teacher_grads"] == [] and single["teacher_grads"] == []
        assert set(got["grads"]) == set(single["grads"]) and single["grads"]
        for name, full in single["grads"].items():
            # the gather's backward sums every rank's copy of the loss; the DDP average then gives the full gradient
            scale = float(full.abs().max())
            torch.testing.assert_close(
                got["grads"][name], full, rtol=1e-4, atol=1e-4 * scale + 1e-9, msg=f"{case} rank {r}: {name}"
            )
        if single["center"] is not None:
            assert float(single["center"].abs().max()) > 0  # the forward moved the center off zero
            torch.testing.assert_close(got["center"], single["center"], rtol=1e-5, atol=1e-6)
    for name in single["grads"]:  # the DDP average is the same on both ranks
        assert torch.equal(ddp_ranks[0]["results"][case]["grads"][name], ddp_ranks[1]["results"][case]["grads"][name])


@pytest.mark.slow
@pytest.mark.parametrize("case", list(DDP_CASES))
def test_two_processes_log_the_global_batch_metrics(case, ddp_ranks, single_process):
    """Every logged metric is computed on the global batch (common.py), so every rank reports the 1-process value."""
    single = single_process[case]["metrics"]
    for r, rank in enumerate(ddp_ranks):
        got = rank["results"][case]["metrics"]
        assert set(got) == set(single)
        wrong = {
            k: (float(got[k]), float(v))
            for k, v in single.items()
            if not math.isclose(float(got[k]), float(v), rel_tol=1e-4, abs_tol=1e-5)
        }
        assert not wrong, f"rank {r} reports per-shard values (2 processes, 1 process): {wrong}"


# ------------------------------------------------------------------------------------------------------------------
# 5. end to end: three training steps of every variant
# ------------------------------------------------------------------------------------------------------------------

E2E = [(name, er, 2, {}) for name, er in VARIANTS]
E2E += [(name, er, 4, {}) for name in ("swav", "dino", "deepcluster") for er in (False, True)]  # 2×32 px + 2×16 px
E2E += [
    ("swav", False, 2, dict(queue_length=16, queue_start_epoch=0)),
    ("swav", True, 4, dict(keep_sinkhorn=True)),
    ("swav", False, 2, dict(freeze_prototypes_steps=2)),
    ("byol", True, 2, dict(entropy_on="prediction")),
    ("dino", True, 4, dict(centering=False, sharpening=False)),
    ("dino", False, 2, dict(teacher_temp_warmup_fraction=0.5, teacher_temp_start=0.02, freeze_last_layer_steps=1)),
    ("dino", True, 4, dict(entropy_on="embedding")),
    ("simclr", False, 2, dict(proj_layers=3)),
]
E2E_IDS = [f"{n}{'-er' if er else ''}-{v}views{'-' + '-'.join(o) if o else ''}" for n, er, v, o in E2E]


@pytest.mark.parametrize("name,er,n_views,options", E2E, ids=E2E_IDS)
def test_three_training_steps_end_to_end(name, er, n_views, options):
    overrides = dict(options, num_samples=8) if name == "deepcluster" else options
    method = make(name, er, **overrides)
    views = images(8, 32, seed=7) + (images(8, 16, seed=8) if n_views == 4 else [])
    index = torch.arange(8)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    expected = M.CONTINUOUS_METRICS + (M.DISCRETE_METRICS if name in DISCRETE_FAMILIES else ())
    for step in range(3):
        method.on_epoch_start(step)
        out = method(views, index=index)
        assert out.loss.dim() == 0 and math.isfinite(float(out.loss.detach())), step
        missing = set(expected) - set(out.metrics)
        assert not missing, f"missing metrics {sorted(missing)}"
        for key, value in out.metrics.items():
            assert value.dim() == 0 and not value.requires_grad and math.isfinite(float(value)), (step, key)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        method.update((step + 1) / 3)
    if name == "deepcluster":  # the bank filled at step 0, k-means ran at the start of step 1
        assert method.has_labels and bool((method.assignments >= 0).all())
    if options.get("queue_length"):
        assert method.use_queue and method.queue_filled == 16
    assert all(torch.isfinite(p).all() for p in method.parameters())


def test_float64_model_trains_for_every_variant():
    """``method.double()`` must work (float64 is how tests check math); only half precision is promoted to float32."""
    failures = {}
    for name, er in VARIANTS:
        method = make(name, er, **({"num_samples": 8} if name == "deepcluster" else {})).double()
        views = [v.double() for v in images(8, seed=9)]
        try:
            out = method(views, index=torch.arange(8))
            out.loss.backward()
            if out.loss.dtype != F64:
                failures[f"{name}{'-er' if er else ''}"] = f"loss computed in {out.loss.dtype}"
        except RuntimeError as err:
            failures[f"{name}{'-er' if er else ''}"] = f"{type(err).__name__}: {err}"
    assert not failures, failures


def test_loss_functions_keep_float64_inputs_in_float64():
    z1, z2 = randn(6, 5, seed=80), randn(6, 5, seed=81)
    scores = unit(z1) @ unit(randn(4, 5, seed=82)).T
    results = {
        "ntxent_loss": M.ntxent_loss(z1, z2, 0.2),
        "sinkhorn_knopp": M.sinkhorn_knopp(scores),
        "swav_loss": M.swav_loss(scores, scores.flip(0)),
        "byol_loss": M.byol_loss(z1, z2),
        "dino_loss": M.dino_loss([z1, z2], [z2, z1], torch.zeros(5, dtype=F64), 0.1, 0.04),
        "deepcluster_loss": M.deepcluster_loss(scores, torch.arange(6) % 4, 0.1),
    }
    downcast = {name: str(value.dtype) for name, value in results.items() if value.dtype != F64}
    assert not downcast, f"float64 inputs downcast to float32 by {downcast}"


# ------------------------------------------------------------------------------------------------------------------
# 6. registry and configuration
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,er", VARIANTS, ids=VARIANT_IDS)
def test_build_every_variant_by_name(name, er):
    method = M.build(name, er=er, backbone="convnet_tiny", **SMALL[name])
    assert isinstance(method, M.METHODS[name]) and method.name == name
    assert method.er is er and method.cfg.er is er and method.cfg.backbone == "convnet_tiny"
    assert isinstance(M.config_for(name, er=er), M.METHODS[name].Config)


def test_registry_holds_the_five_families():
    assert set(M.METHODS) == {"simclr", "deepcluster", "swav", "byol", "dino"}
    assert M.build("simclr", backbone="convnet_tiny", **SMALL["simclr"]).er is False  # the original by default


def test_unknown_method_raises_naming_it():
    with pytest.raises(ValueError, match="mocov3"):
        M.build("mocov3")
    with pytest.raises(ValueError, match="mocov3"):
        M.config_for("mocov3", er=True)


def test_unknown_option_raises_naming_it():
    with pytest.raises(ValueError, match="num_prototypes") as info:
        M.build("simclr", backbone="convnet_tiny", num_prototypes=10)
    assert "simclr" in str(info.value) and "temperature" in str(info.value)  # lists the allowed fields


BAD_CONFIGS = [
    ("simclr", dict(temperature=0), "temperature"),
    ("simclr", dict(kappa=-1), "kappa"),
    ("simclr", dict(temperature=float("nan")), "temperature"),
    ("simclr", dict(backbone="vgg"), "backbone"),
    ("simclr", dict(proj_dim=0), "proj_dim"),
    ("byol", dict(tau_base=1.5), "tau_base"),
    ("byol", dict(entropy_on="x"), "entropy_on"),
    ("byol", dict(pred_hidden_dim=-4), "pred_hidden_dim"),
    ("deepcluster", dict(num_prototypes=(1,)), "num_prototypes"),
    ("deepcluster", dict(num_prototypes=()), "num_prototypes"),
    ("deepcluster", dict(num_samples=50, num_prototypes=(8, 100)), "num_prototypes"),
    ("deepcluster", dict(temperature=-0.1), "temperature"),
    ("dino", dict(center_momentum=2), "center_momentum"),
    ("dino", dict(teacher_temp=0), "teacher_temp"),
    ("dino", dict(teacher_temp_warmup_fraction=1.5), "teacher_temp_warmup_fraction"),
    ("dino", dict(teacher_temp_start=0.0), "teacher_temp_start"),
    ("dino", dict(entropy_on="x"), "entropy_on"),
    ("dino", dict(freeze_last_layer_steps=-1), "freeze_last_layer_steps"),
    ("simclr", dict(kappa=1e9), "kappa"),
    ("deepcluster", dict(seed=-1), "seed"),
    ("swav", dict(freeze_prototypes_steps=-2), "freeze_prototypes_steps"),
    ("dino", dict(tau_base=-0.1), "tau_base"),
    ("swav", dict(epsilon=0), "epsilon"),
    ("swav", dict(sinkhorn_iterations=0), "sinkhorn_iterations"),
    ("swav", dict(queue_length=-1), "queue_length"),
    ("swav", dict(num_prototypes=0), "num_prototypes"),
]


@pytest.mark.parametrize(
    "name,options,field",
    BAD_CONFIGS,
    ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for n, o, _ in BAD_CONFIGS],
)
def test_bad_config_raises_value_error_naming_the_field(name, options, field):
    options = {"backbone": "convnet_tiny", **options}
    with pytest.raises(ValueError, match=field):
        M.build(name, **options)


NUMERIC_OPTIONS = [
    (name, info.name, info.type) for name in NAMES for info in M.describe(name) if info.type in ("int", "float")
]


@pytest.mark.parametrize("name,option,kind", NUMERIC_OPTIONS, ids=[f"{n}-{o}" for n, o, _ in NUMERIC_OPTIONS])
def test_every_numeric_option_rejects_non_numbers_negatives_and_fractions_naming_itself(name, option, kind):
    """Every int and float option is validated: a bool, a string, NaN or -1 (and 2.5 for a count) is refused with an
    error that starts with the option's name, before any network is built (otherwise the error would come from deep
    inside torch, or for the k-means iterations only after the first epoch, without naming the option)."""
    bad = [True, "1", float("nan"), -1] + ([2.5] if kind == "int" else [])
    for value in bad:
        with pytest.raises(ValueError, match=rf"^{option} must"):
            M.config_for(name, **{option: value})


UNIT_INTERVAL_OPTIONS = [
    ("byol", "tau_base"),
    ("dino", "tau_base"),
    ("dino", "center_momentum"),
    ("dino", "teacher_temp_warmup_fraction"),
]


@pytest.mark.parametrize("name,option", UNIT_INTERVAL_OPTIONS, ids=[f"{n}-{o}" for n, o in UNIT_INTERVAL_OPTIONS])
def test_unit_interval_options_accept_both_ends_and_nothing_beyond(name, option):
    for value in (0.0, 1.0):  # e.g. tau_base = 1: a frozen teacher; 0: the teacher copies the student
        assert getattr(M.config_for(name, **{option: value}), option) == value
    for value in (-1e-9, 1 + 1e-9, 1.5):
        with pytest.raises(ValueError, match=rf"^{option} must lie in \[0.0, 1.0\], got {value!r}"):
            M.config_for(name, **{option: value})


def test_deepcluster_cluster_counts_run_from_two_to_the_bank_size():
    assert M.config_for("deepcluster", num_samples=16, num_prototypes=(2, 16)).num_prototypes == (2, 16)
    for counts in [(True, 4), (1,), (17,), (4.0,)]:
        with pytest.raises(ValueError, match=r"^num_prototypes must be a non-empty list of cluster counts in \[2, "):
            M.config_for("deepcluster", num_samples=16, num_prototypes=counts)


# ------------------------------------------------------------------------------------------------------------------
# 7. monitor() and batch_statistics
# ------------------------------------------------------------------------------------------------------------------

MONITOR_CASES = [(name, er, {}) for name, er in VARIANTS] + [
    ("swav", False, dict(queue_length=8, queue_start_epoch=0)),
    ("dino", True, dict(entropy_on="embedding")),
]
MONITOR_IDS = [f"{n}{'-er' if er else ''}{'-' + '-'.join(o) if o else ''}" for n, er, o in MONITOR_CASES]


def method_and_views(name: str, er: bool = False, n: int = 16, **options):
    method = make(name, er, **({"num_samples": n} if name == "deepcluster" else {}), **options)
    return method, images(n, seed=11), torch.arange(n)


@pytest.mark.parametrize("name,er,options", MONITOR_CASES, ids=MONITOR_IDS)
def test_monitor_reports_the_training_metrics_plus_backbone_feature_entropy_without_side_effects(name, er, options):
    method, views, index = method_and_views(name, er, **options)
    method.on_epoch_start(0)
    if options.get("queue_length"):  # a full queue, so that the codes use it
        method(views, index=index)
        assert method.use_queue and method.queue_filled == 8
    train_keys = set(method(views, index=index).metrics)
    for mode in ("train", "eval"):
        method.train(mode == "train")
        before = state_snapshot(method)
        with batch_statistics(method):
            metrics = method.monitor(views, index=index)
        assert_same_state(method, before)  # no center update, queue push, bank write, counter, BN statistic
        assert method.training is (mode == "train")
        assert set(metrics) == train_keys | set(M.FEATURE_METRICS), mode
        for key, value in metrics.items():
            assert value.dim() == 0 and not value.requires_grad and math.isfinite(float(value)), (mode, key)
    method.eval()
    before = state_snapshot(method)
    method.monitor(views, index=index)  # plain eval mode: no side effect either
    assert_same_state(method, before)


@pytest.mark.parametrize("name", NAMES)
def test_monitor_under_batch_statistics_equals_the_train_mode_forward_and_keeps_running_statistics(name):
    """At initialisation the running statistics are the identity, so eval-mode η measures BatchNorm warming up:
    the monitor must normalise with batch statistics (train-mode values) and leave the running statistics alone."""
    method, views, index = method_and_views(name)
    method.eval()
    before = state_snapshot(method)
    with batch_statistics(method):
        monitored = method.monitor(views, index=index)
    assert_same_state(method, before)  # running_mean / running_var / num_batches_tracked bit-identical
    eval_mode = method.monitor(views, index=index)
    reference = copy.deepcopy(method).train()
    trained = reference(views, index=index).metrics
    for key, value in trained.items():
        assert float(monitored[key]) == pytest.approx(float(value), rel=1e-5, abs=1e-6), key
    # the backbone-feature terms, from their definition on the train-mode features of view 0
    with torch.no_grad():
        h0 = np64(unit(reference.backbone(torch.cat(views[:2]))[: len(index)]))
    kappa, d = method.cfg.kappa, h0.shape[1]
    h_tilde = relative_kde_entropy_np(h0, kappa)
    assert float(monitored["entropy_features"]) == pytest.approx(
        h_tilde - log_vmf_normalizer_mpmath(d, kappa), rel=1e-5
    )
    assert float(monitored["eta_features"]) == pytest.approx((h_tilde + kappa) / math.log(len(index)), rel=1e-5)
    # the test can fail: eval mode (running statistics) gives a very different η
    assert abs(float(eval_mode["eta_features"]) - float(monitored["eta_features"])) > 0.1
    assert float(monitored["eta_features"]) > 0.2 > float(eval_mode["eta_features"])


def test_monitor_with_global_batchnorm_equals_the_train_mode_forward():
    method, views, _ = method_and_views("byol")
    convert_to_global_batchnorm(method)
    assert any(isinstance(m, GlobalBatchNorm) for m in method.modules())
    method.eval()
    before = state_snapshot(method)
    with batch_statistics(method):
        monitored = method.monitor(views)
    assert_same_state(method, before)
    trained = copy.deepcopy(method).train()(views).metrics
    for key, value in trained.items():
        assert float(monitored[key]) == pytest.approx(float(value), rel=1e-5, abs=1e-6), key


def test_batch_statistics_restores_flags_and_leaves_the_method_mode_alone():
    method = make("simclr")
    method.eval()
    method.backbone.features[1].train()  # one BN layer in training mode, the rest in eval mode
    norms = [m for m in method.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    flags = [(m.training, m.track_running_stats) for m in norms]
    assert len({f[0] for f in flags}) == 2
    with pytest.raises(RuntimeError, match="inside"):
        with batch_statistics(method):
            assert all(m.training and not m.track_running_stats for m in norms)
            assert not method.training and not method.projector.training  # only BatchNorm layers change
            raise RuntimeError("an error inside the block")
    assert [(m.training, m.track_running_stats) for m in norms] == flags


def test_global_batchnorm_distributed_branch_under_batch_statistics(monkeypatch):
    """GlobalBatchNorm's DDP path (gathered statistics), here with a 1-rank 'world': inside batch_statistics it
    normalises with the batch's mean and biased variance and leaves the running statistics and counter alone."""
    from erlib import distributed

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 1)
    monkeypatch.setattr(distributed, "gather", lambda x: x)
    torch.manual_seed(3)
    bn = GlobalBatchNorm(5).double()
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 1.5, 5))
        bn.bias.copy_(torch.linspace(-1, 1, 5))
    bn.eval()
    x = 2.0 + 3.0 * randn(32, 5, seed=96)
    before = state_snapshot(bn)
    with batch_statistics(bn):
        y = bn(x)
    assert_same_state(bn, before)
    xs = np64(x)
    expected = (xs - xs.mean(0)) / np.sqrt(xs.var(0) + bn.eps) * np64(bn.weight) + np64(bn.bias)
    np.testing.assert_allclose(np64(y), expected, rtol=1e-10, atol=1e-10)
    bn.train()
    bn(x)  # the same call in training mode does move the running statistics (so the check above can fail)
    assert int(bn.num_batches_tracked) == 1 and not torch.equal(bn.running_mean, before["running_mean"])


# ------------------------------------------------------------------------------------------------------------------
# 8. self-documenting options
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_describe_lists_every_field_with_type_default_help_and_choices(name):
    infos = M.describe(name)
    config = M.config_for(name)
    assert [o.name for o in infos] == M.METHODS[name].Config.field_names()
    assert [o.name for o in infos[:3]] == ["backbone", "er", "kappa"]  # the common fields first
    for info in infos:
        assert info.default == getattr(config, info.name), info.name
        assert info.type in {"str", "bool", "int", "float", "tuple[int, ...]"}, (info.name, info.type)
        assert 20 <= len(info.help) <= 400 and info.help.endswith("."), info.name
        if info.choices is not None:
            assert info.default in info.choices
    choices = {o.name: o.choices for o in infos if o.choices is not None}
    assert choices["backbone"] == tuple(
        sorted(
            ["convnet_tiny", "resnet18_cifar", "resnet34_cifar", "resnet50_cifar", "resnet18", "resnet34", "resnet50"]
        )
    )
    assert set(choices) == {"backbone"} | ({"entropy_on"} if name in ("byol", "dino") else set())


def test_describe_help_names_the_original_recipes():
    helps = {(name, o.name): o.help for name in NAMES for o in M.describe(name)}
    expected = {
        ("dino", "tau_base"): ["0.996", "0.9995", "256"],
        ("dino", "teacher_temp"): ["0.04", "0.07"],
        ("dino", "teacher_temp_start"): ["0.04"],
        ("dino", "center_momentum"): ["0.9"],
        ("dino", "freeze_last_layer_steps"): ["epoch"],
        ("swav", "epsilon"): ["0.05"],
        ("swav", "sinkhorn_iterations"): ["3"],
        ("swav", "freeze_prototypes_steps"): ["313"],
        ("swav", "queue_length"): ["3840", "256"],
        ("swav", "queue_start_epoch"): ["15"],
        ("byol", "tau_base"): ["0.99", "0.996", "1000", "0.97", "40"],
        ("simclr", "temperature"): ["0.5", "0.2", "0.1", "solo-learn"],
        ("simclr", "kappa"): ["1/τ"],
    }
    for key, fragments in expected.items():
        for fragment in fragments:
            assert fragment in helps[key], (key, fragment)


PAPERS = {
    "simclr": "Chen et al., 2020",
    "deepcluster": "Caron et al., 2020",
    "swav": "Caron et al., 2020",
    "byol": "Grill et al., 2020",
    "dino": "Caron et al., 2021",
}


@pytest.mark.parametrize("name", NAMES)
def test_summary_is_one_paragraph_naming_the_paper(name):
    text = M.summary(name)
    assert "\n" not in text and 100 < len(text) < 600
    assert PAPERS[name] in text and f"{name}-er" in text.lower().replace("deepcluster-v2-er", "deepcluster-er")


def test_describe_and_summary_reject_an_unknown_method():
    with pytest.raises(ValueError, match="mocov3"):
        M.describe("mocov3")
    with pytest.raises(ValueError, match="mocov3"):
        M.summary("mocov3")


@pytest.mark.parametrize("name", NAMES)
def test_every_enumeration_rejects_a_value_outside_its_choices(name):
    for info in M.describe(name):
        if info.choices is None:
            continue
        with pytest.raises(ValueError, match=rf"{info.name} must be one of .*got 'nonsense'"):
            M.config_for(name, **{info.name: "nonsense"})


@pytest.mark.parametrize("kappa", [1e9, 1000.5, float("inf")])
def test_kappa_above_its_documented_bound_raises_before_any_allocation(kappa):
    with pytest.raises(ValueError, match=r"kappa must (lie in \(0, 1000\]|be a number > 0)"):
        M.config_for("byol", kappa=kappa)
    assert M.config_for("byol", kappa=1000.0).kappa == 1000.0  # the bound itself is allowed
    assert M.KAPPA_MAX == 1000.0


def test_renamed_dino_options_raise_naming_the_new_name():
    with pytest.raises(ValueError, match="warmup_teacher_temp -> teacher_temp_start"):
        M.build("dino", warmup_teacher_temp=0.02)
    with pytest.raises(ValueError, match="teacher_temp_warmup -> teacher_temp_warmup_fraction"):
        M.config_for("dino", teacher_temp_warmup=0.3)
    with pytest.raises(ValueError) as both:
        M.config_for("dino", warmup_teacher_temp=0.02, teacher_temp_warmup=0.3)
    assert str(both.value) == (
        "option(s) of method 'dino' renamed: warmup_teacher_temp -> teacher_temp_start, "
        "teacher_temp_warmup -> teacher_temp_warmup_fraction"
    )


# ------------------------------------------------------------------------------------------------------------------
# 9. every option reaches the computation (network outputs from a copy of the method's modules, formulas here)
# ------------------------------------------------------------------------------------------------------------------


def linear_shapes(module: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def test_encode_views_batches_views_of_one_resolution_and_keeps_view_order():
    views = images(3, 32, count=2) + images(3, 16, seed=1, count=1) + images(3, 32, seed=2, count=1)
    calls = []

    def backbone(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x.mean(dim=(2, 3))

    def head(h: torch.Tensor) -> torch.Tensor:  # a batch statistic: shows which views went through together
        return h - h.mean(dim=0)

    feats, outs = encode_views(views, backbone, head)
    assert calls == [9, 3]  # the three 32 px views in one batch, then the 16 px view
    for view, feat in zip(views, feats):
        torch.testing.assert_close(feat, view.mean(dim=(2, 3)))
    large = torch.cat([feats[i] for i in (0, 1, 3)])
    torch.testing.assert_close(outs[3], (large - large.mean(dim=0))[6:])
    torch.testing.assert_close(outs[2], feats[2] - feats[2].mean(dim=0))
    with pytest.raises(ValueError, match=r"^views must hold at least one \[B, C, H, W\] tensor$"):
        encode_views([], backbone, head)


def test_backbone_option_builds_the_named_network():
    tiny = make("simclr")
    assert isinstance(tiny.backbone, TinyConvNet) and tiny.feature_dim == 128
    assert linear_shapes(tiny.projector)[0] == (128, 64)
    cifar = M.build("simclr", backbone="resnet18_cifar", proj_hidden_dim=8, proj_dim=4)
    imagenet = M.build("simclr", backbone="resnet18", proj_hidden_dim=8, proj_dim=4)
    for method in (cifar, imagenet):
        assert isinstance(method.backbone, torchvision.models.ResNet) and method.feature_dim == 512
        assert linear_shapes(method.projector)[0] == (512, 8)
    assert cifar.backbone.conv1.kernel_size == (3, 3) and cifar.backbone.conv1.stride == (1, 1)
    assert isinstance(cifar.backbone.maxpool, nn.Identity)
    assert imagenet.backbone.conv1.kernel_size == (7, 7) and isinstance(imagenet.backbone.maxpool, nn.MaxPool2d)


# --- SimCLR ---------------------------------------------------------------------------------------------------------


def simclr_projections(ref: M.SimCLR, views: list[torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        z = ref.projector(ref.backbone(torch.cat(views[:2])))
    return [np64(unit(t)) for t in z.chunk(2)]


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_simclr_loss_is_ntxent_at_the_configured_temperature(temperature):
    method = make64("simclr", temperature=temperature)
    views = images(6, seed=20, dtype=F64)
    z1, z2 = simclr_projections(copy.deepcopy(method), views)
    out = method(views)
    expected = ntxent_np(z1, z2, temperature)
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-9)
    assert float(out.metrics["ntxent"]) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("temperature", [0.2, 0.5])
def test_simclr_er_loss_uses_kappa_one_over_temperature_and_the_metrics_the_configured_kappa(temperature):
    kappa = 3.0
    method = make64("simclr", er=True, temperature=temperature, kappa=kappa)
    views = images(6, seed=21, dtype=F64)
    z1, z2 = simclr_projections(copy.deepcopy(method), views)
    out = method(views)
    k = 1.0 / temperature
    mean_cos = float((z1 * z2).sum(axis=1).mean())
    expected = -(k * mean_cos + 0.5 * (relative_kde_entropy_np(z1, k) + relative_kde_entropy_np(z2, k)))
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-9)
    eta = (relative_kde_entropy_np(z1, kappa) + kappa) / math.log(6)
    assert float(out.metrics["eta_online"]) == pytest.approx(eta, rel=1e-9)
    assert float(out.metrics["er_bound"]) == pytest.approx(
        relative_kde_entropy_np(z2, kappa) + kappa * mean_cos, rel=1e-9
    )


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_simclr_projector_has_the_configured_depth_and_sizes(layers):
    method = make("simclr", proj_layers=layers, proj_hidden_dim=24, proj_dim=10)
    expected = [(128, 10)] if layers == 1 else [(128, 24)] + [(24, 24)] * (layers - 2) + [(24, 10)]
    assert linear_shapes(method.projector) == expected
    assert sum(isinstance(m, nn.BatchNorm1d) for m in method.projector) == layers - 1


# --- BYOL -----------------------------------------------------------------------------------------------------------


def byol_tensors(ref: M.BYOL, views: list[torch.Tensor]):
    """(unit projections z, unit predictions p, unit target projections z') of the two views, NumPy float64."""
    with torch.no_grad():
        z = ref.projector(ref.backbone(torch.cat(views[:2]))).chunk(2)
        p = [unit(ref.predictor(zv)) for zv in z]
        zt = unit(ref.target[1](ref.target[0](torch.cat(views[:2])))).chunk(2)
    return [np64(unit(t)) for t in z], [np64(t) for t in p], [np64(t) for t in zt]


def test_byol_loss_is_the_symmetrised_two_minus_two_cosine_to_the_other_views_target():
    method = make64("byol")
    perturb_(method.target, seed=1)  # the target differs from the online network
    views = images(6, seed=22, dtype=F64)
    z, p, zt = byol_tensors(copy.deepcopy(method), views)
    out = method(views)
    expected = 0.5 * sum(float(np.mean(2 - 2 * (p[a] * zt[b]).sum(axis=1))) for a, b in ((0, 1), (1, 0)))
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-9)
    assert float(out.metrics["byol_loss"]) == pytest.approx(
        float(np.mean(2 - 2 * (p[0] * zt[1]).sum(axis=1))), rel=1e-9
    )


@pytest.mark.parametrize("entropy_on", ["projection", "prediction"])
@pytest.mark.parametrize("kappa", [5.0, 20.0])
def test_byol_er_loss_puts_the_entropy_on_the_configured_rows_with_the_configured_kappa(entropy_on, kappa):
    method = make64("byol", er=True, entropy_on=entropy_on, kappa=kappa)
    perturb_(method.target, seed=1)
    views = images(6, seed=23, dtype=F64)
    z, p, zt = byol_tensors(copy.deepcopy(method), views)
    out = method(views)

    def loss_with_entropy_of(ent: list[np.ndarray]) -> float:
        return -0.5 * sum(
            kappa * float((p[a] * zt[b]).sum(axis=1).mean()) + relative_kde_entropy_np(ent[a], kappa)
            for a, b in ((0, 1), (1, 0))
        )

    chosen, other = (z, p) if entropy_on == "projection" else (p, z)
    assert float(out.loss.detach()) == pytest.approx(loss_with_entropy_of(chosen), rel=1e-9)
    assert abs(loss_with_entropy_of(chosen) - loss_with_entropy_of(other)) > 1e-3  # the choice is visible


@pytest.mark.parametrize("name", ["simclr", "byol"])
@pytest.mark.parametrize("er", [False, True], ids=["orig", "er"])
def test_two_view_methods_ignore_views_beyond_the_first_two(name, er):
    """SimCLR and BYOL read the two global views only: a third view of the same size (which would share their
    BatchNorm batch if it were encoded) changes neither the loss nor the metrics."""
    method = make(name, er)
    views = images(8, seed=37, count=3)
    two, three = copy.deepcopy(method)(views[:2]), copy.deepcopy(method)(views)
    assert float(three.loss.detach()) == float(two.loss.detach())
    assert {k: float(v) for k, v in three.metrics.items()} == {k: float(v) for k, v in two.metrics.items()}


def test_byol_heads_have_the_configured_sizes():
    method = make("byol", proj_hidden_dim=24, proj_dim=10, pred_hidden_dim=12)
    assert linear_shapes(method.projector) == [(128, 24), (24, 10)]
    assert linear_shapes(method.predictor) == [(10, 12), (12, 10)]
    assert linear_shapes(method.target) == [(128, 24), (24, 10)]


# --- DINO -----------------------------------------------------------------------------------------------------------


def dino_tensors(ref: M.DINO, views: list[torch.Tensor]):
    """Student (unit embeddings, logits) of every view and teacher (unit embeddings, logits) of the global views."""
    teacher = ref.teacher
    with torch.no_grad():
        e_s = by_resolution(views, lambda x: unit(ref.head.mlp(ref.backbone(x))))
        e_t = by_resolution(views[:2], lambda x: unit(teacher["head"].mlp(teacher["backbone"](x))))
        g_s = [ref.head.last_layer(e) for e in e_s]
        g_t = [teacher["head"].last_layer(e) for e in e_t]
    return [np64(t) for t in e_s], [np64(t) for t in g_s], [np64(t) for t in e_t], [np64(t) for t in g_t]


def dino_views(batch: int = 6, seed: int = 24) -> list[torch.Tensor]:
    """Two global 32 px views and two local 16 px views, float64."""
    return images(batch, 32, seed=seed, dtype=F64) + images(batch, 16, seed=seed + 1, dtype=F64)


def make_dino(**options) -> M.DINO:
    method = make64("dino", **options)
    perturb_(method.teacher, seed=2)
    return method


DINO_LOSS_CASES = [dict(), dict(student_temp=0.2, teacher_temp=0.07), dict(centering=False), dict(sharpening=False)]


@pytest.mark.parametrize("options", DINO_LOSS_CASES, ids=["defaults", "temperatures", "no-centering", "no-sharpening"])
def test_dino_loss_and_metrics_use_the_configured_temperatures_centering_and_sharpening(options):
    method = make_dino(**options)
    center = 0.5 * randn(64, seed=3)
    method.center.copy_(center)  # nonzero: with centering=False it must be ignored
    views = dino_views()
    _, g_s, _, g_t = dino_tensors(copy.deepcopy(method), views)
    out = method(views)
    cfg = method.cfg
    tau_t = cfg.teacher_temp if cfg.sharpening else cfg.student_temp
    c = np64(center) if cfg.centering else np.zeros(64)
    assert float(out.loss.detach()) == pytest.approx(dino_loss_np(g_s, g_t, c, cfg.student_temp, tau_t), rel=1e-9)
    assert float(out.metrics["teacher_temp"]) == pytest.approx(tau_t, abs=1e-15)
    # the logged discrete metrics use the loss's target (centred with the center *before* this step's update)
    target = softmax_rows((g_t[0] - c) / tau_t)
    assert float(out.metrics["marginal_entropy_target"]) == pytest.approx(marginal_entropy_np(target), rel=1e-9)
    assert float(out.metrics["cross_entropy"]) == pytest.approx(
        cross_entropy_rows(target, g_s[1] / cfg.student_temp), rel=1e-9
    )


@pytest.mark.parametrize("momentum", [0.6, 0.95])
def test_dino_center_is_the_ema_of_the_teacher_logits_over_the_batch_and_both_global_views(momentum):
    method = make_dino(center_momentum=momentum)
    c0 = 0.3 * randn(64, seed=5)
    method.center.copy_(c0)
    views = dino_views()
    _, _, _, g_t = dino_tensors(copy.deepcopy(method), views)
    method(views)
    rows = [g_t[v][i] for v in range(2) for i in range(6)]  # global views only, every image
    batch_mean = sum(rows) / len(rows)
    np.testing.assert_allclose(
        np64(method.center), momentum * np64(c0) + (1 - momentum) * batch_mean, rtol=1e-10, atol=1e-12
    )


def test_dino_center_stays_put_without_centering_and_in_eval_mode():
    for method in (make_dino(centering=False), make_dino().eval()):
        method.center.copy_(0.3 * randn(64, seed=5))
        before = method.center.clone()
        method(dino_views())
        assert torch.equal(method.center, before)


def test_dino_teacher_temperature_warms_up_linearly_from_its_start_value():
    method = make_dino(teacher_temp_start=0.02, teacher_temp=0.06, teacher_temp_warmup_fraction=0.4)
    assert method.teacher_temperature() == pytest.approx(0.02, abs=1e-15)  # progress 0, before any update
    for progress in (0.0, 0.1, 0.2, 0.3, 0.4, 0.55, 1.0):
        method.update(progress)
        expected = 0.02 + (0.06 - 0.02) * progress / 0.4 if progress < 0.4 else 0.06
        assert method.teacher_temperature() == pytest.approx(expected, abs=1e-15), progress
    method.update(0.1)  # τ_t = 0.03: the loss and the logged value use it
    views = dino_views()
    _, g_s, _, g_t = dino_tensors(copy.deepcopy(method), views)
    out = method(views)
    assert float(out.metrics["teacher_temp"]) == pytest.approx(0.03, abs=1e-15)
    assert float(out.loss.detach()) == pytest.approx(dino_loss_np(g_s, g_t, np.zeros(64), 0.1, 0.03), rel=1e-9)
    # no warm-up: teacher_temp from the first step; no sharpening: the student's temperature throughout
    assert make("dino", teacher_temp=0.05).teacher_temperature() == 0.05
    flat = make("dino", sharpening=False, student_temp=0.2, teacher_temp_warmup_fraction=0.5)
    flat.update(0.1)
    assert flat.teacher_temperature() == 0.2


@pytest.mark.parametrize("frozen_steps", [0, 2])
def test_dino_last_layer_gets_no_update_for_exactly_freeze_last_layer_steps(frozen_steps):
    method = make("dino", freeze_last_layer_steps=frozen_steps)
    last = method.head.last_layer.parametrizations.weight.original1  # the direction v of the weight-normed layer
    first = method.head.mlp[0].weight
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    views = images(8, seed=25)
    for step in range(frozen_steps + 2):
        last_before, first_before = last.detach().clone(), first.detach().clone()
        out = method(views)
        optimizer.zero_grad()
        out.loss.backward()
        assert (last.grad is None) is (step < frozen_steps), step
        optimizer.step()
        method.update((step + 1) / 10)
        assert torch.equal(last, last_before) is (step < frozen_steps), step
        assert not torch.equal(first, first_before), step  # the rest of the head learns meanwhile


def test_dino_heads_have_the_configured_sizes():
    method = make("dino", out_dim=40, hidden_dim=24, bottleneck_dim=12)
    assert linear_shapes(method.head.mlp) == [(128, 24), (24, 24), (24, 12)]
    assert method.head.last_layer.weight.shape == (40, 12) and method.center.shape == (40,)
    assert linear_shapes(method.teacher["head"].mlp) == [(128, 24), (24, 24), (24, 12)]


@pytest.mark.parametrize("use_bn", [False, True])
def test_dino_head_batchnorm_option_standardises_each_hidden_layer_over_the_batch(use_bn):
    """use_bn_in_head puts a BatchNorm after each hidden linear layer (student and teacher): in training mode each
    hidden unit then has batch mean 0 and (biased) variance 1 before the GELU, whatever its input's scale."""
    method = make("dino", out_dim=40, hidden_dim=24, bottleneck_dim=12, use_bn_in_head=use_bn)
    for head in (method.head, method.teacher["head"]):
        norms = [m for m in head.mlp if isinstance(m, nn.BatchNorm1d)]
        assert len(norms) == (2 if use_bn else 0)
    seen = []
    linear = method.head.mlp[0]
    following = method.head.mlp[1]
    following.register_forward_hook(lambda mod, inp, out: seen.append(out.detach().double()))
    x = (5.0 + 3.0 * randn(32, 128, seed=41)).float()
    method.head.train()
    method.head.embed(x)
    pre = linear(x).detach().double()
    if use_bn:
        expected = (pre - pre.mean(0)) / torch.sqrt(pre.var(0, unbiased=False) + 1e-5)  # γ = 1, β = 0 at init
        torch.testing.assert_close(seen[0], expected, rtol=1e-4, atol=1e-4)
    else:  # straight into the GELU
        torch.testing.assert_close(seen[0], torch.nn.functional.gelu(pre), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_dino_norm_last_layer_keeps_the_prototypes_unit_or_lets_their_scale_learn(norm_last_layer):
    """norm_last_layer=True: the weight-norm scale gets no gradient, every prototype row keeps norm 1, and the logits
    of unit embeddings are cosines in [-1, 1]; False: the scale is trained and the row norms leave 1."""
    method = make_dino(norm_last_layer=norm_last_layer)
    scale = method.head.last_layer.parametrizations.weight.original0
    assert scale.requires_grad is (not norm_last_layer)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    views = dino_views()
    for step in range(3):
        optimizer.zero_grad()
        method(views).loss.backward()
        optimizer.step()
        method.update((step + 1) / 10)
    norms = method.head.last_layer.weight.detach().norm(dim=1)
    if norm_last_layer:
        torch.testing.assert_close(norms, torch.ones_like(norms), rtol=1e-6, atol=1e-6)
        e = method.head.embed(randn(16, method.feature_dim, seed=43))
        assert method.head.logits(e).abs().max() <= 1 + 1e-6
    else:
        assert (norms - 1).abs().max() > 1e-4


@pytest.mark.parametrize("entropy_on", ["marginal", "embedding"])
def test_dino_er_adds_exactly_minus_the_configured_entropy_term(entropy_on):
    """DINO-ER − DINO = −H(p̄_s) over all student views ("marginal") or −(1/V)Σ_v H̃_κ(ē_{s,v}) ("embedding")."""
    kappa = 6.0
    er, original = make_dino(er=True, entropy_on=entropy_on, kappa=kappa), make_dino(kappa=kappa)
    views = dino_views()
    e_s, g_s, _, _ = dino_tensors(copy.deepcopy(er), views)
    difference = float(er(views).loss.detach()) - float(original(views).loss.detach())
    marginal = marginal_entropy_np(np.concatenate([softmax_rows(g / er.cfg.student_temp) for g in g_s]))
    embedding = float(np.mean([relative_kde_entropy_np(e, kappa) for e in e_s]))
    assert difference == pytest.approx(-(marginal if entropy_on == "marginal" else embedding), rel=1e-8, abs=1e-10)
    assert abs(marginal - embedding) > 0.1  # the two options are distinguishable


def test_dino_er_embedding_entropy_gradient_spreads_collapsed_embeddings():
    kappa = 10.0
    centre = unit(randn(1, 16, seed=26))
    z = (centre + 0.02 * randn(12, 16, seed=27)).requires_grad_(True)

    def mean_cosine(x: torch.Tensor) -> float:
        u = unit(x.detach())
        return float(((u @ u.T).sum() - len(u)) / (len(u) * (len(u) - 1)))

    start_cosine, entropies = mean_cosine(z), []
    for _ in range(30):  # gradient ascent on the entropy = descent on DINO-ER's added term
        entropy = M.embedding_entropy([unit(z)], kappa)
        (grad,) = torch.autograd.grad(entropy, z)
        with torch.no_grad():
            z += 0.5 * grad
        entropies.append(float(entropy.detach()))
    assert start_cosine > 0.99 and mean_cosine(z) < 0.9
    assert all(b > a for a, b in zip(entropies, entropies[1:]))
    # the marginal term is blind to this collapse: near-uniform logits give H(p̄) ≈ log K for identical embeddings
    collapsed = centre.repeat(12, 1)
    probs = torch.softmax(collapsed @ (0.01 * randn(64, 16, seed=28)).T / 0.1, dim=1)
    assert float(bounds.marginal_entropy(probs)) > 0.995 * math.log(64)
    assert float(bounds.normalized_entropy(collapsed, kappa)) == pytest.approx(0.0, abs=1e-12)


# --- SwAV -----------------------------------------------------------------------------------------------------------


def swav_tensors(ref: M.SwAV, views: list[torch.Tensor]):
    """(unit projections, prototype scores) of every crop, NumPy float64."""
    with torch.no_grad():
        z = by_resolution(views, lambda x: unit(ref.projector(ref.backbone(x))))
        scores = [zv @ ref.prototypes.weight.T for zv in z]
    return [np64(t) for t in z], [np64(s) for s in scores]


def swapped_prediction_np(targets: list[np.ndarray], scores: list[np.ndarray], temperature: float) -> float:
    return float(
        np.mean(
            [
                cross_entropy_np(targets[a], scores[v] / temperature)
                for a in range(len(targets))
                for v in range(len(scores))
                if v != a
            ]
        )
    )


SWAV_CASES = [
    dict(),
    dict(temperature=0.2, epsilon=0.1, sinkhorn_iterations=5),
    dict(epsilon=0.03, sinkhorn_iterations=1),
]


@pytest.mark.parametrize("options", SWAV_CASES, ids=["defaults", "tau-eps-iters", "eps-one-iter"])
def test_swav_loss_uses_the_configured_temperature_epsilon_and_sinkhorn_iterations(options):
    method = make64("swav", **options)
    views = dino_views(8, seed=30)
    _, scores = swav_tensors(copy.deepcopy(method), views)
    cfg = method.cfg
    codes = [sinkhorn_reference(scores[a], cfg.epsilon, cfg.sinkhorn_iterations) for a in range(2)]
    out = method(views)
    assert float(out.loss.detach()) == pytest.approx(swapped_prediction_np(codes, scores, cfg.temperature), rel=1e-9)
    assert float(out.metrics["marginal_entropy_target"]) == pytest.approx(marginal_entropy_np(codes[0]), rel=1e-9)


@pytest.mark.parametrize("keep_sinkhorn", [False, True])
def test_swav_er_targets_follow_keep_sinkhorn_and_the_loss_subtracts_the_marginal_entropy(keep_sinkhorn):
    method = make64("swav", er=True, keep_sinkhorn=keep_sinkhorn)
    views = dino_views(8, seed=31)
    _, scores = swav_tensors(copy.deepcopy(method), views)
    tau = method.cfg.temperature
    sinkhorn = [sinkhorn_reference(scores[a], 0.05, 3) for a in range(2)]
    softmax = [softmax_rows(scores[a] / tau) for a in range(2)]
    entropy = marginal_entropy_np(np.concatenate([softmax_rows(s / tau) for s in scores]))
    expected = {k: swapped_prediction_np(t, scores, tau) - entropy for k, t in ((True, sinkhorn), (False, softmax))}
    assert float(method(views).loss.detach()) == pytest.approx(expected[keep_sinkhorn], rel=1e-9)
    assert abs(expected[True] - expected[False]) > 1e-3


@pytest.mark.parametrize("frozen_steps", [0, 2])
def test_swav_prototypes_get_no_update_for_exactly_freeze_prototypes_steps(frozen_steps):
    method = make("swav", freeze_prototypes_steps=frozen_steps)
    prototypes, first = method.prototypes.weight, method.projector[0].weight
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    views = images(8, seed=32)
    for step in range(frozen_steps + 2):
        before, first_before = prototypes.detach().clone(), first.detach().clone()
        out = method(views)
        optimizer.zero_grad()
        out.loss.backward()
        assert (prototypes.grad is None) is (step < frozen_steps), step
        optimizer.step()
        method.update((step + 1) / 10)  # re-normalises the prototypes (a no-op up to rounding while frozen)
        moved = float((prototypes.detach() - before).abs().max())
        assert (moved < 1e-6) if step < frozen_steps else (moved > 1e-4), (step, moved)
        assert not torch.equal(first, first_before), step


def swav_loss_with_queue(ref: M.SwAV, z: list[np.ndarray], scores: list[np.ndarray], queue=None) -> float:
    """SwAV's loss from float64 projections and scores; with a queue (one array per large crop), Sinkhorn sees
    [queue scores; batch scores] and the batch keeps its rows of the codes."""
    cfg, codes = ref.cfg, []
    for a in range(2):
        queued = np.zeros((0, scores[a].shape[1])) if queue is None else queue[a] @ np64(ref.prototypes.weight).T
        both = np.concatenate([queued, scores[a]])
        codes.append(sinkhorn_reference(both, cfg.epsilon, cfg.sinkhorn_iterations)[len(queued) :])
    return swapped_prediction_np(codes, scores, cfg.temperature)


def test_swav_queue_starts_at_queue_start_epoch_holds_the_newest_embeddings_and_has_queue_length_rows():
    method = make64("swav", queue_length=16, queue_start_epoch=1)
    assert method.queue.shape == (2, 16, 16)
    batches = [images(8, seed=40 + i, dtype=F64) for i in range(4)]
    ref = copy.deepcopy(method)  # no optimiser step here: the networks stay fixed, only the queue moves
    tensors = [swav_tensors(ref, views) for views in batches]

    def expected_loss(step: int, queue: list[np.ndarray] | None) -> float:
        return swav_loss_with_queue(ref, *tensors[step], queue)

    def newest(*steps: int) -> list[np.ndarray]:  # the queue of crop a: newest batch first
        return [np.concatenate([tensors[s][0][a] for s in steps]) for a in range(2)]

    method.on_epoch_start(0)
    for step in range(3):  # epoch 0: the queue fills (full after two batches) but the codes do not use it
        loss = float(method(batches[step]).loss.detach())
        assert loss == pytest.approx(expected_loss(step, None), rel=1e-9), step
    assert method.queue_filled == 16
    assert abs(expected_loss(2, newest(1, 0)) - expected_loss(2, None)) > 1e-6  # a queue would have been visible
    for a in range(2):
        np.testing.assert_allclose(np64(method.queue[a]), newest(2, 1)[a], rtol=0, atol=1e-12)
    method.on_epoch_start(1)  # from queue_start_epoch on: Sinkhorn sees [queue; batch]
    loss = float(method(batches[3]).loss.detach())
    assert loss == pytest.approx(expected_loss(3, newest(2, 1)), rel=1e-9)
    for a in range(2):
        np.testing.assert_allclose(np64(method.queue[a]), newest(3, 2)[a], rtol=0, atol=1e-12)


@pytest.mark.parametrize("queue_length", [1, 8])
def test_swav_queue_stays_off_until_on_epoch_start_turns_it_on_even_when_full(queue_length):
    """A new method uses no queue: only ``on_epoch_start`` (which the trainer calls every epoch) turns it on, for any
    positive length, the shortest included."""
    method = make64("swav", queue_length=queue_length, queue_start_epoch=0)
    batches = [images(8, seed=50 + i, dtype=F64) for i in range(3)]
    ref = copy.deepcopy(method)
    tensors = [swav_tensors(ref, views) for views in batches]
    for step in range(2):  # full after the first batch (8 rows >= queue_length), still off
        assert float(method(batches[step]).loss.detach()) == pytest.approx(
            swav_loss_with_queue(ref, *tensors[step]), rel=1e-9
        ), step
    method.on_epoch_start(0)
    queue = [tensors[1][0][a][:queue_length] for a in range(2)]  # the newest rows: batch 1's first ones
    expected = swav_loss_with_queue(ref, *tensors[2], queue)
    assert abs(expected - swav_loss_with_queue(ref, *tensors[2])) > 1e-6
    assert float(method(batches[2]).loss.detach()) == pytest.approx(expected, rel=1e-9)


def test_swav_queue_is_used_only_once_full():
    method = make64("swav", queue_length=9, queue_start_epoch=0)  # one row more than a batch
    batches = [images(8, seed=60 + i, dtype=F64) for i in range(3)]
    ref = copy.deepcopy(method)
    tensors = [swav_tensors(ref, views) for views in batches]
    method.on_epoch_start(0)
    for step in range(2):  # 8 of 9 rows after the first batch: not yet used at the second
        assert float(method(batches[step]).loss.detach()) == pytest.approx(
            swav_loss_with_queue(ref, *tensors[step]), rel=1e-9
        ), step
    queue = [np.concatenate([tensors[1][0][a], tensors[0][0][a][:1]]) for a in range(2)]
    assert float(method(batches[2]).loss.detach()) == pytest.approx(
        swav_loss_with_queue(ref, *tensors[2], queue), rel=1e-9
    )


def test_swav_heads_have_the_configured_sizes():
    method = make("swav", proj_hidden_dim=24, proj_dim=10, num_prototypes=7, queue_length=5)
    assert linear_shapes(method.projector) == [(128, 24), (24, 10)]
    assert method.prototypes.weight.shape == (7, 10) and method.queue.shape == (2, 5, 10)
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(7))


# --- DeepCluster-v2 -------------------------------------------------------------------------------------------------


def kmeans_np(x: np.ndarray, init: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means from its description: assign to the nearest (max cosine) centroid, centroid ← normalised
    sum of its points (an empty cluster keeps its centroid); ``iterations`` rounds, then a final assignment."""
    centroids = init.copy()
    for _ in range(iterations):
        assign = (x @ centroids.T).argmax(axis=1)
        for c in range(len(centroids)):
            members = x[assign == c]
            if len(members):
                total = members.sum(axis=0)
                centroids[c] = total / np.linalg.norm(total)
    return centroids, (x @ centroids.T).argmax(axis=1)


@pytest.mark.parametrize("er", [False, True], ids=["orig", "er"])
@pytest.mark.parametrize("temperature", [0.1, 0.3])
def test_deepcluster_loss_uses_the_labels_centroids_and_configured_temperature(er, temperature):
    method = make64("deepcluster", er, num_samples=8, temperature=temperature)
    views, index = images(8, seed=33, dtype=F64), torch.arange(8)
    fill_bank_and_cluster(method, views, index)
    ref = copy.deepcopy(method)
    with torch.no_grad():
        z = [np64(t) for t in by_resolution(views, lambda x: unit(ref.projector(ref.backbone(x))))]
    labels = method.assignments.numpy()
    heads = [np64(method.prototypes(h)) for h in range(2)]
    expected = float(
        np.mean(
            [
                np.mean(-(s - lse_rows(s)[:, None])[np.arange(8), labels[h]])
                for h, c in enumerate(heads)
                for s in (zv @ c.T / temperature for zv in z)
            ]
        )
    )
    if er:
        expected -= float(
            np.mean(
                [marginal_entropy_np(np.concatenate([softmax_rows(zv @ c.T / temperature) for zv in z])) for c in heads]
            )
        )
    assert float(method(views, index=index).loss.detach()) == pytest.approx(expected, rel=1e-9)


def test_deepcluster_metrics_take_head_0_labels_as_targets_and_the_prediction_where_an_image_has_none():
    method = make64("deepcluster", num_samples=8, num_prototypes=(3, 2))
    views, index = images(8, seed=35, dtype=F64), torch.arange(8)
    with torch.no_grad():
        method([v[:6] for v in views], index=index[:6])  # the bank sees images 0-5 only
    method.on_epoch_start(0)
    labels = method.assignments[0].tolist()
    assert labels[6:] == [-1, -1] and min(labels[:6]) >= 0
    ref = copy.deepcopy(method)
    with torch.no_grad():
        z = [np64(t) for t in by_resolution(views, lambda x: unit(ref.projector(ref.backbone(x))))]
        out = method(views, index=index)
    soft = softmax_rows(z[0] @ np64(method.prototypes(0)).T / method.cfg.temperature)
    target = np.stack([np.eye(3)[y] if y >= 0 else soft[i] for i, y in enumerate(labels)])
    conditional = -np.mean([(p * np.log(p)).sum() for p in target[6:]]) * 2 / 8  # one-hot rows have entropy 0
    assert float(out.metrics["marginal_entropy_target"]) == pytest.approx(marginal_entropy_np(target), rel=1e-9)
    assert float(out.metrics["conditional_entropy_target"]) == pytest.approx(conditional, rel=1e-9)


def test_deepcluster_single_head_loss_is_zero_with_no_gradient_until_the_first_clustering():
    method = make("deepcluster", num_prototypes=(4,))
    out = method(images(8, seed=36), index=torch.arange(8))
    assert float(out.loss.detach()) == 0.0
    out.loss.backward()  # the zero loss still reaches the projector, with a zero gradient
    grads = [p.grad for p in method.projector.parameters()]
    assert all(g is not None and float(g.abs().max()) == 0.0 for g in grads)


CLUSTER_CASES = [(0, 1), (0, 4), (5, 4)]


def clustered(seed: int, iterations: int, n: int = 24) -> M.DeepClusterV2:
    method = make64("deepcluster", num_samples=n, num_prototypes=(5, 3), seed=seed, kmeans_iterations=iterations)
    with torch.no_grad():
        method(images(n, seed=34, dtype=F64), index=torch.arange(n))  # fills the bank
    method.on_epoch_start(2)
    return method


@pytest.mark.parametrize("seed,iterations", CLUSTER_CASES)
def test_deepcluster_kmeans_uses_seed_plus_epoch_and_the_configured_iterations(seed, iterations):
    method = clustered(seed, iterations)
    generator = torch.Generator().manual_seed(seed + 2)  # epoch 2; the heads draw their k rows in turn
    for h, k in enumerate((5, 3)):
        bank = np64(method.memory[h % 2])  # head h clusters large crop h mod 2
        init = bank[torch.randperm(len(bank), generator=generator)[:k].numpy()]
        centroids, assign = kmeans_np(bank, init, iterations)
        np.testing.assert_allclose(np64(method.prototypes(h)), centroids, rtol=0, atol=1e-12)
        assert method.assignments[h].tolist() == assign.tolist()


def test_deepcluster_seed_and_iterations_change_the_clustering():
    protos = {case: clustered(*case).prototypes(0) for case in CLUSTER_CASES}
    assert not torch.equal(protos[0, 1], protos[0, 4]) and not torch.equal(protos[0, 4], protos[5, 4])


def test_deepcluster_buffers_and_heads_have_the_configured_sizes():
    method = make("deepcluster", num_samples=20, proj_hidden_dim=24, proj_dim=10, num_prototypes=(4, 7, 5))
    assert linear_shapes(method.projector) == [(128, 24), (24, 10)]
    assert [tuple(method.prototypes(h).shape) for h in range(3)] == [(4, 10), (7, 10), (5, 10)]
    assert method.memory.shape == (2, 20, 10) and method.seen.shape == (20,)
    assert method.assignments.shape == (3, 20)
    for h, k in enumerate((4, 7, 5)):  # unit centroids before the first clustering too (the epoch-0 metrics use them)
        torch.testing.assert_close(method.prototypes(h).norm(dim=1), torch.ones(k))


# --- every option is covered -----------------------------------------------------------------------------------------

#: option -> the tests above that show its value reaching the computation ((method, option) or option for all)
OPTION_TESTS = {
    "backbone": ["test_backbone_option_builds_the_named_network"],
    "er": [
        "test_simclr_er_loss_uses_kappa_one_over_temperature_and_the_metrics_the_configured_kappa",
        "test_dino_er_adds_exactly_minus_the_configured_entropy_term",
        "test_deepcluster_loss_uses_the_labels_centroids_and_configured_temperature",
    ],
    "kappa": [
        "test_simclr_er_loss_uses_kappa_one_over_temperature_and_the_metrics_the_configured_kappa",
        "test_byol_er_loss_puts_the_entropy_on_the_configured_rows_with_the_configured_kappa",
        "test_continuous_metrics_match_a_float64_rederivation",
        "test_kappa_above_its_documented_bound_raises_before_any_allocation",
    ],
    ("simclr", "proj_hidden_dim"): ["test_simclr_projector_has_the_configured_depth_and_sizes"],
    ("simclr", "proj_dim"): ["test_simclr_projector_has_the_configured_depth_and_sizes"],
    ("simclr", "proj_layers"): ["test_simclr_projector_has_the_configured_depth_and_sizes"],
    ("simclr", "temperature"): ["test_simclr_loss_is_ntxent_at_the_configured_temperature"],
    ("byol", "proj_hidden_dim"): ["test_byol_heads_have_the_configured_sizes"],
    ("byol", "proj_dim"): ["test_byol_heads_have_the_configured_sizes"],
    ("byol", "pred_hidden_dim"): ["test_byol_heads_have_the_configured_sizes"],
    ("byol", "tau_base"): ["test_ema_teacher_gets_no_gradient_and_moves_only_by_the_ema_rule"],
    ("byol", "entropy_on"): ["test_byol_er_loss_puts_the_entropy_on_the_configured_rows_with_the_configured_kappa"],
    ("dino", "out_dim"): ["test_dino_heads_have_the_configured_sizes"],
    ("dino", "hidden_dim"): ["test_dino_heads_have_the_configured_sizes"],
    ("dino", "bottleneck_dim"): ["test_dino_heads_have_the_configured_sizes"],
    ("dino", "use_bn_in_head"): ["test_dino_head_batchnorm_option_standardises_each_hidden_layer_over_the_batch"],
    ("dino", "norm_last_layer"): ["test_dino_norm_last_layer_keeps_the_prototypes_unit_or_lets_their_scale_learn"],
    ("dino", "student_temp"): ["test_dino_loss_and_metrics_use_the_configured_temperatures_centering_and_sharpening"],
    ("dino", "teacher_temp"): ["test_dino_loss_and_metrics_use_the_configured_temperatures_centering_and_sharpening"],
    ("dino", "teacher_temp_start"): ["test_dino_teacher_temperature_warms_up_linearly_from_its_start_value"],
    ("dino", "teacher_temp_warmup_fraction"): ["test_dino_teacher_temperature_warms_up_linearly_from_its_start_value"],
    ("dino", "center_momentum"): [
        "test_dino_center_is_the_ema_of_the_teacher_logits_over_the_batch_and_both_global_views"
    ],
    ("dino", "tau_base"): ["test_ema_teacher_gets_no_gradient_and_moves_only_by_the_ema_rule"],
    ("dino", "freeze_last_layer_steps"): ["test_dino_last_layer_gets_no_update_for_exactly_freeze_last_layer_steps"],
    ("dino", "centering"): [
        "test_dino_loss_and_metrics_use_the_configured_temperatures_centering_and_sharpening",
        "test_dino_center_stays_put_without_centering_and_in_eval_mode",
    ],
    ("dino", "sharpening"): ["test_dino_loss_and_metrics_use_the_configured_temperatures_centering_and_sharpening"],
    ("dino", "entropy_on"): ["test_dino_er_adds_exactly_minus_the_configured_entropy_term"],
    ("swav", "proj_hidden_dim"): ["test_swav_heads_have_the_configured_sizes"],
    ("swav", "proj_dim"): ["test_swav_heads_have_the_configured_sizes"],
    ("swav", "num_prototypes"): ["test_swav_heads_have_the_configured_sizes"],
    ("swav", "temperature"): ["test_swav_loss_uses_the_configured_temperature_epsilon_and_sinkhorn_iterations"],
    ("swav", "epsilon"): ["test_swav_loss_uses_the_configured_temperature_epsilon_and_sinkhorn_iterations"],
    ("swav", "sinkhorn_iterations"): ["test_swav_loss_uses_the_configured_temperature_epsilon_and_sinkhorn_iterations"],
    ("swav", "freeze_prototypes_steps"): ["test_swav_prototypes_get_no_update_for_exactly_freeze_prototypes_steps"],
    ("swav", "queue_length"): [
        "test_swav_queue_starts_at_queue_start_epoch_holds_the_newest_embeddings_and_has_queue_length_rows"
    ],
    ("swav", "queue_start_epoch"): [
        "test_swav_queue_starts_at_queue_start_epoch_holds_the_newest_embeddings_and_has_queue_length_rows"
    ],
    ("swav", "keep_sinkhorn"): [
        "test_swav_er_targets_follow_keep_sinkhorn_and_the_loss_subtracts_the_marginal_entropy"
    ],
    ("deepcluster", "num_samples"): ["test_deepcluster_buffers_and_heads_have_the_configured_sizes"],
    ("deepcluster", "proj_hidden_dim"): ["test_deepcluster_buffers_and_heads_have_the_configured_sizes"],
    ("deepcluster", "proj_dim"): ["test_deepcluster_buffers_and_heads_have_the_configured_sizes"],
    ("deepcluster", "num_prototypes"): [
        "test_deepcluster_buffers_and_heads_have_the_configured_sizes",
        "test_deepcluster_kmeans_uses_seed_plus_epoch_and_the_configured_iterations",
    ],
    ("deepcluster", "temperature"): ["test_deepcluster_loss_uses_the_labels_centroids_and_configured_temperature"],
    ("deepcluster", "kmeans_iterations"): [
        "test_deepcluster_kmeans_uses_seed_plus_epoch_and_the_configured_iterations",
        "test_deepcluster_seed_and_iterations_change_the_clustering",
    ],
    ("deepcluster", "seed"): [
        "test_deepcluster_kmeans_uses_seed_plus_epoch_and_the_configured_iterations",
        "test_deepcluster_seed_and_iterations_change_the_clustering",
    ],
}


@pytest.mark.parametrize("name", NAMES)
def test_every_option_of_every_method_has_an_effect_test(name):
    tests = {n for n, f in globals().items() if n.startswith("test_") and inspect.isfunction(f)}
    for option in M.METHODS[name].Config.field_names():
        covering = OPTION_TESTS.get((name, option)) or OPTION_TESTS.get(option)
        assert covering, f"{name}.{option} has no test of its effect: add one and list it in OPTION_TESTS"
        assert set(covering) <= tests, sorted(set(covering) - tests)


@pytest.mark.parametrize(
    "name,state",
    [
        ("dino", {"step": 7, "progress": 0.3, "momentum": 0.9925}),
        ("swav", {"step": 5, "queue_filled": 64, "use_queue": True}),
        ("deepcluster", {"has_labels": True}),
    ],
)
def test_training_state_outside_the_parameters_survives_a_checkpoint(name, state, tmp_path):
    """What a resumed run must get back besides the weights (the schedule's position, the queue's fill, whether the
    k-means labels exist) travels in the state dict and through a weights-only torch.load."""
    trained = make(name)
    for key, value in state.items():
        setattr(trained, key, value)
    torch.save(trained.state_dict(), tmp_path / "state.pt")
    fresh = make(name)
    assert {key: getattr(fresh, key) for key in state} != state  # a fresh method starts elsewhere
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert {key: getattr(fresh, key) for key in state} == state
