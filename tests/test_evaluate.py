"""erlib.evaluate against explicit references: brute-force weighted kNN, separable / random-label probes, RankMe's
definition on matrices of known spectrum, and the feature normalisation."""

from __future__ import annotations

import math

import pytest
import torch

from erlib import evaluate as E

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------------------------
# kNN
# ------------------------------------------------------------------------------------------------------------------


def knn_reference(train, labels, test, num_classes, k, t):
    """Weighted kNN written out: cosine similarity to every training sample, the k largest vote e^{s/t}."""
    train, test = train.tolist(), test.tolist()
    labels = labels.tolist()
    scores = []
    for q in test:
        nq = math.sqrt(sum(v * v for v in q))
        sims = []
        for j, p in enumerate(train):
            npn = math.sqrt(sum(v * v for v in p))
            sims.append((sum(a * b for a, b in zip(q, p)) / (nq * npn), j))
        sims.sort(reverse=True)
        votes = [0.0] * num_classes
        for s, j in sims[:k]:
            votes[labels[j]] += math.exp(s / t)
        scores.append(votes)
    return torch.tensor(scores, dtype=F64)


@pytest.mark.parametrize("k, t, chunk", [(1, 0.1, 1024), (5, 0.1, 7), (12, 0.5, 3), (60, 0.1, 1024)])
def test_knn_matches_the_brute_force_reference(k, t, chunk):
    g = gen(k)
    train = torch.randn(60, 6, generator=g, dtype=F64) * torch.rand(60, 1, generator=g, dtype=F64).add(0.1)
    labels = torch.randint(0, 4, (60,), generator=g)
    test = torch.randn(25, 6, generator=g, dtype=F64) * 3
    ref = knn_reference(train, labels, test, 4, k, t)
    got = E.knn_predict(train, labels, test, 4, k=k, temperature=t, chunk=chunk)
    assert got.shape == (25, 4)
    assert torch.allclose(got.double(), ref, rtol=1e-4, atol=1e-6)
    assert torch.equal(got.argmax(dim=1), ref.argmax(dim=1))
    test_labels = torch.randint(0, 4, (25,), generator=g)
    expected = (ref.argmax(dim=1) == test_labels).double().mean().item()
    assert E.knn_accuracy(train, labels, test, test_labels, 4, k=k, temperature=t) == pytest.approx(expected)


def test_knn_is_scale_invariant_and_k1_is_the_nearest_neighbour():
    g = gen(1)
    train, test = torch.randn(40, 5, generator=g), torch.randn(10, 5, generator=g)
    labels = torch.arange(40) % 5
    a = E.knn_predict(train, labels, test, 5, k=7)
    b = E.knn_predict(train * 13.0, labels, test * 0.01, 5, k=7)
    assert torch.allclose(a, b, rtol=1e-5)
    one = E.knn_predict(train, labels, test, 5, k=1)
    nn = (torch.nn.functional.normalize(test, dim=1) @ torch.nn.functional.normalize(train, dim=1).T).argmax(dim=1)
    assert torch.equal(one.argmax(dim=1), labels[nn])
    assert ((one > 0).sum(dim=1) == 1).all()  # one voter


@pytest.mark.parametrize("k, t", [(0, 0.1), (5, 0.0), (5, -1.0)])
def test_knn_rejects_bad_parameters(k, t):
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match=rf"k must be >= 1 and temperature > 0, got k={k}, temperature={t}"):
        E.knn_predict(x, torch.zeros(10, dtype=torch.int64), x, 2, k=k, temperature=t)


def gaussian_clusters(means: torch.Tensor, n_per: int, seed: int):
    g = gen(seed)
    labels = torch.arange(len(means)).repeat_interleave(n_per)
    x = means[labels] + torch.randn(len(labels), means.shape[1], generator=g)
    perm = torch.randperm(len(labels), generator=g)
    return x[perm], labels[perm]


def test_knn_on_separated_clusters_is_perfect():
    means = torch.randn(5, 16, generator=gen(2))
    means = 20.0 * means / means.norm(dim=1, keepdim=True) + 5.0  # unit noise, centres far apart (and off 0)
    xtr, ytr = gaussian_clusters(means, 100, seed=3)
    xte, yte = gaussian_clusters(means, 40, seed=4)
    assert E.knn_accuracy(xtr, ytr, xte, yte, 5, k=20) == 1.0
    assert E.knn_accuracy(xtr, ytr, xte, yte, 5, k=200) == 1.0


def test_knn_refuses_more_neighbours_than_the_bank_holds():
    x = torch.randn(50, 4, generator=gen(5))
    with pytest.raises(ValueError, match="k = 200 exceeds the 50 training features"):
        E.knn_predict(x, torch.zeros(50, dtype=torch.int64), x, 2, k=200)


def test_knn_on_random_labels_is_chance():
    g = gen(4)
    xtr, xte = torch.randn(2000, 16, generator=g), torch.randn(1000, 16, generator=g)
    ytr, yte = torch.randint(0, 10, (2000,), generator=g), torch.randint(0, 10, (1000,), generator=g)
    acc = E.knn_accuracy(xtr, ytr, xte, yte, 10, k=200)
    assert abs(acc - 0.1) < 0.04  # binomial sd 0.0095


# ------------------------------------------------------------------------------------------------------------------
# linear probe
# ------------------------------------------------------------------------------------------------------------------


def separable(n: int, seed: int):
    g = gen(seed)
    means = torch.zeros(3, 20)
    means[0, 0], means[1, 1], means[2, 2] = 6.0, 6.0, 6.0
    y = torch.randint(0, 3, (n,), generator=g)
    x = means[y] + torch.randn(n, 20, generator=g) + 5.0  # an offset, removed by the standardisation
    return x * torch.linspace(0.5, 20, 20), y  # and unequal feature scales


def test_linear_probe_on_separable_classes():
    xtr, ytr = separable(600, 5)
    xte, yte = separable(600, 6)
    assert E.linear_probe(xtr, ytr, xte, yte, 3) >= 0.97


def test_linear_probe_on_random_labels_is_chance():
    g = gen(7)
    xtr, xte = torch.randn(600, 20, generator=g), torch.randn(1500, 20, generator=g)
    ytr, yte = torch.randint(0, 3, (600,), generator=g), torch.randint(0, 3, (1500,), generator=g)
    acc = E.linear_probe(xtr, ytr, xte, yte, 3)
    assert acc <= 0.5
    assert abs(acc - 1 / 3) < 0.07  # binomial sd 0.012


def test_linear_probe_survives_a_constant_feature():
    xtr, ytr = separable(300, 8)
    xte, yte = separable(300, 9)
    xtr, xte = torch.cat([xtr, torch.ones(300, 1)], 1), torch.cat([xte, torch.ones(300, 1)], 1)
    acc = E.linear_probe(xtr, ytr, xte, yte, 3)
    assert math.isfinite(acc) and acc >= 0.97


# ------------------------------------------------------------------------------------------------------------------
# RankMe
# ------------------------------------------------------------------------------------------------------------------


def rankme_reference(sigmas: list[float]) -> float:
    total = sum(sigmas)
    p = [s / total for s in sigmas]
    return math.exp(-sum(q * math.log(q) for q in p if q > 0))


@pytest.mark.parametrize("r", [2, 5, 12])
def test_rankme_of_a_low_rank_matrix(r):
    g = gen(r)
    x = torch.randn(300, r, generator=g) @ torch.randn(r, 32, generator=g)
    value = E.rankme(x)
    assert 1 < value <= r + 0.01
    sig = torch.linalg.svdvals(x.double())[:r].tolist()
    assert value == pytest.approx(rankme_reference(sig), abs=0.01)


def test_rankme_of_collapse_is_one():
    row = torch.randn(1, 64, generator=gen(9))
    assert E.rankme(row.expand(500, -1).contiguous()) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("d", [1, 7, 64])
def test_rankme_of_an_isotropic_basis_is_the_dimension(d):
    # d equal singular values: p_k = 1/d, entropy log d. RankMe (Garrido et al.) adds eps = 1e-7 to every p_k,
    # which raises the value by about d^2 eps (log d - 1) (1.3e-3 at d = 64): compare with that formula too
    eps = 1e-7
    with_eps = math.exp(-d * (1 / d + eps) * math.log(1 / d + eps))
    q, _ = torch.linalg.qr(torch.randn(200, d, generator=gen(d), dtype=F64))
    assert E.rankme((3.7 * q).float()) == pytest.approx(with_eps, abs=1e-3)
    assert E.rankme((3.7 * q).float()) == pytest.approx(d, abs=1e-3 + d * d * eps * math.log(d + 1))
    rot, _ = torch.linalg.qr(torch.randn(d, d, generator=gen(d + 1), dtype=F64))
    assert E.rankme((0.01 * rot).float()) == pytest.approx(with_eps, abs=1e-3)


def test_rankme_of_a_known_spectrum():
    # singular values 3, 2, 1: p = (1/2, 1/3, 1/6)
    x = torch.zeros(10, 4)
    x[0, 0], x[1, 1], x[2, 2] = 3.0, -2.0, 1.0
    expected = math.exp(-(0.5 * math.log(0.5) + (1 / 3) * math.log(1 / 3) + (1 / 6) * math.log(1 / 6)))
    assert E.rankme(x) == pytest.approx(expected, abs=1e-3)
    assert E.rankme(x * 50) == pytest.approx(expected, abs=1e-3)  # scale invariant


# ------------------------------------------------------------------------------------------------------------------
# feature extraction
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [512, 7])
def test_extract_features_normalises_exactly(batch_size):
    images = torch.randint(0, 256, (20, 3, 4, 5), generator=gen(10), dtype=torch.uint8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    feats = E.extract_features(lambda x: x.flatten(1), images, mean, std, batch_size=batch_size)
    assert feats.dtype == torch.float32 and feats.shape == (20, 60)
    ref = torch.empty(20, 3, 4, 5, dtype=F64)
    for c in range(3):
        ref[:, c] = (images[:, c].double() / 255 - mean[c]) / std[c]
    assert torch.allclose(feats.double(), ref.flatten(1), atol=1e-5)
    assert not feats.requires_grad


def test_extract_features_chunks_128_images_on_the_cpu_and_honours_channels_last():
    seen = []

    def encoder(x):
        seen.append((x.shape[0], x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()))
        return x.flatten(1)

    images = torch.randint(0, 256, (300, 3, 4, 4), generator=gen(11), dtype=torch.uint8)
    nchw = E.extract_features(encoder, images, (0.5,) * 3, (0.25,) * 3)
    assert seen == [(128, False), (128, False), (44, False)]
    seen.clear()
    cl = E.extract_features(encoder, images, (0.5,) * 3, (0.25,) * 3, batch_size=200, channels_last=True)
    assert seen == [(200, True), (100, True)]
    # the layout is the encoder's business: flatten(1) reads logical order, so the features are identical
    assert torch.equal(cl, nchw)


def test_extract_features_keeps_the_order_across_batches():
    images = torch.arange(10, dtype=torch.uint8)[:, None, None, None].expand(10, 1, 2, 2).contiguous()
    feats = E.extract_features(lambda x: x.mean(dim=(1, 2, 3))[:, None], images, (0.0,), (1.0,), batch_size=3)
    assert torch.allclose(feats[:, 0], torch.arange(10) / 255)


def test_evaluate_run_scores_the_checkpoint_and_the_untrained_network_of_a_run(tmp_path):
    """The trained scores come from the checkpoint (and go to eval.json); untrained=True rebuilds the network the
    trainer started from, so its kNN equals the run's epoch-0 record on the same bank and queries."""
    import json

    from erlib.runs import load_run
    from erlib.train import TrainConfig, train

    cfg = TrainConfig(
        dataset="synthetic",
        backbone="convnet_tiny",
        method="simclr",
        batch_size=64,
        epochs=1,
        optimizer="sgd",
        lr=0.05,
        warmup_epochs=0,
        monitor_size=64,
        knn_k=200,
        knn_test_size=0,
        knn_train_size=0,
        progress=False,
        precision="fp32",
        channels_last=False,
        out_dir=str(tmp_path),
        name="r",
        method_options={"proj_hidden_dim": 64, "proj_dim": 32},
    )
    run = load_run(train(cfg))
    first, last = run.epoch_records()[0], run.epoch_records()[-1]
    trained = E.evaluate_run(run.path, device="cpu", linear=False)
    assert trained["epoch"] == 1 and trained["knn200"] == pytest.approx(last["knn200"], abs=1e-6)
    assert json.loads((run.path / "eval.json").read_text())["knn200"] == trained["knn200"]
    (run.path / "eval.json").unlink()
    untrained = E.evaluate_run(run.path, device="cpu", linear=False, untrained=True)
    assert untrained["epoch"] == 0 and untrained["knn200"] == pytest.approx(first["knn200"], abs=1e-6)
    assert untrained["knn200"] != trained["knn200"] and not (run.path / "eval.json").exists()


def test_untrained_bn_baseline_script_reproduces_the_epoch_0_record_then_recalibrates(tmp_path, capsys):
    """scripts/untrained_bn_baseline.py rebuilds a run's untrained network and scores it with the trainer's kNN: its
    first figure must equal the run's own epoch-0 record (same weights, bank, queries and protocol); its second
    re-estimates BatchNorm's statistics on training images, which changes the features, so the score may differ."""
    import importlib.util
    import re
    from pathlib import Path

    from erlib.config import TrainConfig
    from erlib.train import train
    from tests.helpers import MICRO_RUN

    cfg = TrainConfig(
        **{**MICRO_RUN, "train_subset": 0, "knn_every": 1, "method": "simclr", "out_dir": str(tmp_path), "name": "r"}
    )
    run_dir = train(cfg.validate())
    path = Path(__file__).resolve().parent.parent / "scripts" / "untrained_bn_baseline.py"
    spec = importlib.util.spec_from_file_location("untrained_bn_baseline", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([]) == 2  # no run folder: the usage, exit status 2
    capsys.readouterr()
    assert script.main([str(run_dir)]) == 0
    line = capsys.readouterr().out
    recorded, recomputed, recalibrated = (float(x) for x in re.findall(r"(\d\.\d{4})", line)[:3])
    assert recomputed == pytest.approx(recorded, abs=1e-4)
    assert 0.0 <= recalibrated <= 1.0 and re.search(r"BatchNorm statistics from \d+ training images", line)
