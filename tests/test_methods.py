"""erlib.methods: the five SSL families and their ER variants, checked against mathematics and against each other.

1. Every loss against an independent re-derivation from its definition (explicit loops / NumPy, float64 inputs):
   NT-Xent, Sinkhorn–Knopp, SwAV's swapped prediction, BYOL, DINO (loss and center), DeepCluster-v2 (loss and
   spherical k-means).
2. Collapse signatures: the known values of the losses and estimators on collapsed inputs.
3. Optimisation: a few steps on a fixed batch lower the loss of every variant; the EMA teacher gets no gradient and
   moves only by the EMA rule.
4. DDP: 2 gloo processes equal 1 process on the concatenated batch (loss, DDP-averaged gradients, DINO's center,
   the logged metrics) — torchrun, marked slow.
5. End to end: every variant (and the multi-crop / option variants) trains 3 steps with finite loss and metrics.
6. The registry and config validation.

Everything runs on the CPU with the tiny ConvNet and small heads.
"""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from erlib import bounds
from erlib import methods as M
from erlib.methods.common import continuous_metrics, encode_views
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
VARIANTS = [(name, er) for name in ("simclr", "deepcluster", "swav", "byol", "dino") for er in (False, True)]
VARIANT_IDS = [f"{name}{'-er' if er else ''}" for name, er in VARIANTS]
DISCRETE_FAMILIES = {"swav", "dino", "deepcluster"}


pytestmark = pytest.mark.usefixtures("one_thread")


def make(name: str, er: bool = False, **overrides) -> M.Method:
    """A small, seeded method in training mode."""
    torch.manual_seed(0)
    return M.build(name, er=er, backbone="convnet_tiny", **{**SMALL[name], **overrides}).train()


def images(n: int, size: int = 32, seed: int = 0, count: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 3, size, size, generator=g) for _ in range(count)]


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=1)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def log_softmax_np(x: np.ndarray) -> np.ndarray:
    x = x - x.max()
    return x - math.log(np.exp(x).sum())


def sinkhorn_reference(scores: np.ndarray, epsilon: float, iterations: int) -> np.ndarray:
    """SwAV's Sinkhorn–Knopp, written from its description: Q = exp(S/ε)ᵀ (K×B), total mass 1, then per iteration
    every prototype row gets mass 1/K and every sample column mass 1/B; finally columns are scaled to sum to 1."""
    q = np.exp(scores / epsilon).T
    n_protos, n_samples = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        for k in range(n_protos):
            q[k, :] = q[k, :] / q[k, :].sum() / n_protos
        for b in range(n_samples):
            q[:, b] = q[:, b] / q[:, b].sum() / n_samples
    return (q * n_samples).T


def cross_entropy_np(target: np.ndarray, logits: np.ndarray) -> float:
    """Mean over rows of −Σ_c target_c log softmax(logits)_c."""
    return float(np.mean([-(t * log_softmax_np(row)).sum() for t, row in zip(target, logits)]))


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
    torch.testing.assert_close(q.double().mean(dim=0), torch.full((protos,), 1 / protos, dtype=F64), rtol=0,
                               atol=1e-6)


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
    torch.testing.assert_close(M.center_update(center, teacher, momentum).double(),
                               momentum * center + (1 - momentum) * mean, rtol=1e-6, atol=1e-7)


def test_deepcluster_loss_matches_explicit_cross_entropy():
    scores, temperature = unit(randn(7, 4, seed=50)) @ unit(randn(5, 4, seed=51)).T, 0.1
    labels = torch.tensor([0, 4, 2, 2, 1, 3, 0])
    expected = np.mean([-log_softmax_np(s / temperature)[y] for s, y in zip(scores.numpy(), labels.tolist())])
    assert float(M.deepcluster_loss(scores, labels, temperature)) == pytest.approx(float(expected), rel=1e-5)


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


def log_vmf_normalizer_mpmath(d: int, kappa: float) -> float:
    mp.mp.dps = 30
    return float((d / 2 - 1) * mp.log(kappa) - (d / 2) * mp.log(2 * mp.pi) - mp.log(mp.besseli(d / 2 - 1, kappa)))


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


# ------------------------------------------------------------------------------------------------------------------
# 3. optimisation and the EMA teacher
# ------------------------------------------------------------------------------------------------------------------


def fill_bank_and_cluster(method: M.DeepClusterV2, views: list[torch.Tensor], index: torch.Tensor) -> None:
    """DeepCluster-v2's first epoch: forward passes over every sample fill the memory bank, then k-means."""
    assert not method.has_labels
    with torch.no_grad():
        out = method(views, index=index)
    if not method.er:
        assert float(out.loss) == 0.0  # nothing to predict while the bank fills
    assert bool(method.seen.all())
    method.cluster()
    assert method.has_labels and bool((method.assignments >= 0).all())
    assert method.assignments.shape == (len(method.cfg.num_prototypes), method.cfg.num_samples)
    for h, k in enumerate(method.cfg.num_prototypes):
        assert bool((method.assignments[h] < k).all())
        torch.testing.assert_close(method.prototypes(h).norm(dim=1), torch.ones(k))


def converge_dino_center(method: M.DINO, views: list[torch.Tensor]) -> None:
    """Set DINO's center to the teacher's batch mean on ``views``. The center is a moving target: starting from 0 it
    moves to the mean of the (nearly identical, at initialisation) teacher logits within a few steps, which spreads
    the centred teacher targets and *raises* the cross-entropy whatever the student does. From the fixed point the
    loss measures the student's fit alone."""
    teacher = method.teacher
    with torch.no_grad():
        logits = encode_views(lambda x: teacher["head"](teacher["backbone"](x)), views[:2])
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


TEACHERS = {"byol": {"target.0.": "backbone.", "target.1.": "projector."},
            "dino": {"teacher.backbone.": "backbone.", "teacher.head.": "head."}}


def teacher_student_pairs(method: M.Method, kind: str) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, teacher tensor, student tensor) for every teacher parameter or buffer, matched by name."""
    prefixes = TEACHERS[method.name]
    named = dict(method.named_parameters() if kind == "params" else method.named_buffers())
    pairs = []
    for name, tensor in named.items():
        for t_prefix, s_prefix in prefixes.items():
            if name.startswith(t_prefix):
                pairs.append((name, tensor, named[s_prefix + name[len(t_prefix):]]))
    return pairs


@pytest.mark.parametrize("name", ["byol", "dino"])
@pytest.mark.parametrize("er", [False, True], ids=["orig", "er"])
def test_ema_teacher_gets_no_gradient_and_moves_only_by_the_ema_rule(name, er):
    tau_base, progress = 0.9, 0.3
    method = make(name, er, tau_base=tau_base)
    params, buffers = teacher_student_pairs(method, "params"), teacher_student_pairs(method, "buffers")
    n_teacher = sum(1 for n, _ in method.named_parameters() if n.startswith(tuple(TEACHERS[name])))
    assert len(params) == n_teacher > 0 and len(buffers) > 0  # every teacher tensor has a student twin
    # an optimiser over *all* parameters, as a naive trainer would build it
    optimizer = torch.optim.SGD(method.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    out = method(images(8, seed=2))
    optimizer.zero_grad()
    out.loss.backward()
    for _, teacher, _ in params:
        assert not teacher.requires_grad and teacher.grad is None
    before = [t.detach().clone() for _, t, _ in params]
    optimizer.step()
    for (n, teacher, student), old in zip(params, before):
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


def test_dino_discrete_metrics_use_the_center_of_the_loss():
    """The logged teacher target (marginal/conditional entropy, cross-entropy) must be the distribution the loss was
    computed with, i.e. centred with the center *before* this step's center update."""
    method = make("dino", center_momentum=0.5)
    views = images(8, seed=5)
    method.center.copy_(0.5 * torch.randn(64, generator=torch.Generator().manual_seed(6)))
    old_center = method.center.clone()
    with torch.no_grad():  # BN in training mode: the per-resolution concatenation matters, replicate it
        g_t = encode_views(lambda x: method.teacher["head"](method.teacher["backbone"](x)), views)
        g_s = [method.head.logits(e) for e in encode_views(lambda x: method.head.embed(method.backbone(x)), views)]
    out = method(views)
    assert not torch.equal(method.center, old_center)  # the forward did update the center
    target = torch.softmax((g_t[0] - old_center) / method.cfg.teacher_temp, dim=1)
    expected_ce = -(target * torch.log_softmax(g_s[1] / method.cfg.student_temp, dim=1)).sum(dim=1).mean()
    assert float(out.metrics["marginal_entropy_target"]) == pytest.approx(
        float(bounds.marginal_entropy(target)), rel=1e-4)
    assert float(out.metrics["cross_entropy"]) == pytest.approx(float(expected_ce), rel=1e-4)


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
            torch.testing.assert_close(got["grads"][name], full, rtol=1e-4, atol=1e-4 * scale + 1e-9,
                                       msg=f"{case} rank {r}: {name}")
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
        wrong = {k: (float(got[k]), float(v)) for k, v in single.items()
                 if not math.isclose(float(got[k]), float(v), rel_tol=1e-4, abs_tol=1e-5)}
        assert not wrong, f"rank {r} reports per-shard values (2 processes, 1 process): {wrong}"


# ------------------------------------------------------------------------------------------------------------------
# 5. end to end: three training steps of every variant
# ------------------------------------------------------------------------------------------------------------------

E2E = [(name, er, 2, {}) for name, er in VARIANTS]
E2E += [(name, er, 4, {}) for name in ("swav", "dino", "deepcluster") for er in (False, True)]  # 2×32 px + 2×16 px
E2E += [("swav", False, 2, dict(queue_length=16, queue_start_epoch=0)), ("swav", True, 4, dict(keep_sinkhorn=True)),
        ("swav", False, 2, dict(freeze_prototypes_steps=2)), ("byol", True, 2, dict(entropy_on="prediction")),
        ("dino", True, 4, dict(centering=False, sharpening=False)),
        ("dino", False, 2, dict(teacher_temp_warmup=0.5, warmup_teacher_temp=0.02, freeze_last_layer_steps=1)),
        ("simclr", False, 2, dict(proj_layers=3))]
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
    ("dino", dict(teacher_temp_warmup=1.5), "teacher_temp_warmup"),
    ("dino", dict(tau_base=-0.1), "tau_base"),
    ("swav", dict(epsilon=0), "epsilon"),
    ("swav", dict(sinkhorn_iterations=0), "sinkhorn_iterations"),
    ("swav", dict(queue_length=-1), "queue_length"),
    ("swav", dict(num_prototypes=0), "num_prototypes"),
]


@pytest.mark.parametrize("name,options,field", BAD_CONFIGS,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for n, o, _ in BAD_CONFIGS])
def test_bad_config_raises_value_error_naming_the_field(name, options, field):
    options = {"backbone": "convnet_tiny", **options}
    with pytest.raises(ValueError, match=field):
        M.build(name, **options)


NON_INTEGER_COUNTS = [
    ("simclr", dict(proj_dim=16.5), "proj_dim"),
    ("swav", dict(sinkhorn_iterations=2.5), "sinkhorn_iterations"),
    ("deepcluster", dict(kmeans_iterations=2.5), "kmeans_iterations"),
]


@pytest.mark.parametrize("name,options,field", NON_INTEGER_COUNTS, ids=[f for _, _, f in NON_INTEGER_COUNTS])
def test_non_integer_counts_raise_value_error_naming_the_field(name, options, field):
    """Sizes and iteration counts must be integers; otherwise the error comes from deep inside torch (or, for the
    k-means iterations, only after the first epoch) without naming the field."""
    with pytest.raises(ValueError, match=field):
        M.build(name, backbone="convnet_tiny", **options)
