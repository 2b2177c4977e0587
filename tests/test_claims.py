"""erlib.claims on hand-built runs: for every claim a run that shows the phenomenon (PASS) and one that does not (FAIL),
the INCONCLUSIVE cases (synthetic data, too short, a run missing or in the wrong role, a key absent), the record
helpers, the registry and the report writer."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from erlib import claims as C
from erlib.runs import Run
from tests.helpers import float32

LOG = math.log

# ---------------------------------------------------------------------------------------------------------------------
# Building runs by hand
# ---------------------------------------------------------------------------------------------------------------------


def make_run(
    role: str,
    method: str,
    er: bool = False,
    options: dict | None = None,
    *,
    epochs: dict | None = None,
    train: dict | None = None,
    batch_size: int = 256,
    monitor_size: int = 512,
    dataset: str = "cifar10-jpeg75",
    per_epoch: int = 4,
) -> Run:
    """A Run whose "epoch" records hold ``epochs[key][e]`` at epoch e = 0, 1, ... and whose "train" records hold
    ``train[key][e - 1]`` (a number, or a list with one value per record) at ``per_epoch`` steps inside epoch e."""
    epochs, train = epochs or {}, train or {}
    config = {
        "method": method,
        "er": er,
        "method_options": dict(options or {}),
        "dataset": dataset,
        "batch_size": batch_size,
        "monitor_size": monitor_size,
        "seed": 0,
    }
    records = []
    n_epochs = max((len(v) for v in epochs.values()), default=0)
    n_train = max((len(v) for v in train.values()), default=0)
    for e in range(max(n_epochs - 1, n_train) + 1):
        if e >= 1 and e - 1 < n_train:
            for j in range(1, per_epoch + 1):
                step = (e - 1) * per_epoch + j
                record = {"kind": "train", "step": step, "epoch": step / per_epoch}
                for key, values in train.items():
                    value = values[e - 1]
                    record[key] = value[j - 1] if isinstance(value, list) else value
                records.append(record)
        if e < n_epochs:
            record = {"kind": "epoch", "epoch": e, "step": e * per_epoch}
            record.update({key: values[e] for key, values in epochs.items() if values[e] is not None})
            records.append(record)
    return Run(Path("runs") / role, config, records)


def ramp(start: float, stop: float, n: int) -> list[float]:
    """n values from start to stop, evenly spaced."""
    return [start + (stop - start) * i / (n - 1) for i in range(n)]


def flat(value: float, n: int) -> list[float]:
    return [value] * n


# ---------------------------------------------------------------------------------------------------------------------
# C2 — BYOL entropy stable, reconstruction rising
# ---------------------------------------------------------------------------------------------------------------------

N = 13  # epoch records 0 ... 12


def byol_run(eta: list[float], cosine: list[float], **kw) -> Run:
    return make_run(
        "byol",
        "byol",
        epochs={"monitor_eta_target": eta, "monitor_reconstruction": cosine, "knn200": ramp(0.15, 0.45, len(eta))},
        **kw,
    )


def c2_pass_run(**kw) -> Run:
    # a transient (0.80 -> 0.60), then a plateau within +-0.04 of the epoch-2 value; the cosine rises 0.50 -> 0.80
    eta = [0.80, 0.70, 0.60, 0.62, 0.63, 0.64, 0.61, 0.58, 0.57, 0.59, 0.60, 0.62, 0.64]
    return byol_run(eta, [0.2, 0.4] + ramp(0.5, 0.8, N - 2), **kw)


def test_c2_passes_when_eta_stays_in_band_and_cosine_rises():
    v = C.c2_byol_entropy_stable(c2_pass_run())
    assert v.status == C.PASS
    assert v.numbers["eta_ref"] == 0.60 and v.numbers["eta_max_deviation"] == pytest.approx(0.04)
    assert v.numbers["cosine_rise"] == pytest.approx(0.30) and v.numbers["epochs"] == 12
    assert v.numbers["knn_untrained"] == pytest.approx(0.15)
    assert "stayed within ±0.05" in v.sentence and "from 0.500 to 0.800" in v.sentence


def test_c2_fails_when_eta_drifts_out_of_the_band():
    eta = [0.80, 0.70, 0.60, 0.60, 0.59, 0.58, 0.57, 0.56, 0.555, 0.55, 0.545, 0.54, 0.50]  # a slow downward trend
    v = C.c2_byol_entropy_stable(byol_run(eta, [0.2, 0.4] + ramp(0.5, 0.8, N - 2)))
    assert v.status == C.FAIL and v.numbers["eta_max_deviation"] == pytest.approx(0.10)
    assert "did not stay within ±0.05" in v.sentence


def test_c2_fails_when_the_cosine_rises_less_than_the_threshold():
    v = C.c2_byol_entropy_stable(byol_run(flat(0.6, N), [0.2, 0.4] + ramp(0.5, 0.59, N - 2)))
    assert v.status == C.FAIL and v.numbers["cosine_rise"] == pytest.approx(0.09)


def test_c2_band_edge_is_the_stated_constant():
    cosine = [0.2, 0.4] + ramp(0.5, 0.8, N - 2)
    inside = C.c2_byol_entropy_stable(byol_run(flat(0.6, N - 1) + [0.6 + C.C2_ETA_BAND - 1e-9], cosine))
    outside = C.c2_byol_entropy_stable(byol_run(flat(0.6, N - 1) + [0.6 + C.C2_ETA_BAND + 1e-9], cosine))
    assert (inside.status, outside.status) == (C.PASS, C.FAIL)


def test_c2_fails_on_a_stable_collapse():
    # a collapsed network has a perfectly "stable" entropy and a perfect reconstruction: it must not pass
    v = C.c2_byol_entropy_stable(byol_run(flat(0.01, N), [0.2, 0.4] + ramp(0.7, 1.0, N - 2)))
    assert v.numbers["cosine_rise"] == pytest.approx(0.3) and v.numbers["eta_max_deviation"] == 0.0
    assert v.status == C.FAIL and "below the collapse floor" in v.sentence


# ---------------------------------------------------------------------------------------------------------------------
# C3 — small EMA coefficient
# ---------------------------------------------------------------------------------------------------------------------

E = 11  # epoch records 0 ... 10


def distill_runs(
    method: str,
    knn_er0: float = 0.38,
    eta_er0: list[float] | None = None,
    knn_orig0: float = 0.25,
    eta_orig0: float = 0.30,
    knn_hi: float = 0.40,
    eta_hi: float = 0.60,
    **kw,
) -> dict[str, Run]:
    def run(role, er, options, knn, eta):
        return make_run(
            role, method, er, options, epochs={"knn200": ramp(0.12, knn, E), "monitor_eta_online": eta}, **kw
        )

    eta_er0 = eta_er0 or [0.7, 0.6, 0.55, 0.5, 0.5, 0.52, 0.5, 0.5, 0.51, 0.5, 0.5]  # min 0.5 >= 0.5 * 0.6
    return {
        method: run(method, False, {}, knn_hi, ramp(0.7, eta_hi, E)),
        f"{method}@tau_base=0.0": run(
            f"{method}@tau_base=0.0", False, {"tau_base": 0.0}, knn_orig0, ramp(0.7, eta_orig0, E)
        ),
        f"{method}-er@tau_base=0.0": run(f"{method}-er@tau_base=0.0", True, {"tau_base": 0.0}, knn_er0, eta_er0),
    }


def test_c3_passes_when_er_beats_the_hurt_original_at_tau_zero_and_keeps_its_entropy():
    v = C.c3_small_ema(distill_runs("byol") | distill_runs("dino"))
    assert v.status == C.PASS
    b = v.numbers["byol"]
    assert b["knn_gain"] == pytest.approx(0.13) and b["eta_er_epoch1"] == 0.6 and b["eta_er_min"] == 0.5
    assert b["original_hurt"] is True and b["passed"] is True and set(v.numbers) == {"byol", "dino"}


def test_c3_is_decided_on_the_methods_given():
    assert C.c3_small_ema(distill_runs("byol")).status == C.PASS
    assert set(C.c3_small_ema(distill_runs("byol")).numbers) == {"byol"}


@pytest.mark.parametrize(
    "change,why",
    [
        ({"knn_er0": 0.29}, "ER only 4 points above the original"),
        ({"eta_er0": [0.7, 0.6, 0.5, 0.4, 0.29, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]}, "ER eta below half its epoch-1 value"),
        ({"eta_er0": [0.7, 0.04, 0.04, 0.04, 0.04, 0.04, 0.04, 0.04, 0.04, 0.04, 0.04]}, "ER collapsed from epoch 1"),
        ({"knn_orig0": 0.395, "eta_orig0": 0.59, "knn_er0": 0.45}, "the original is not hurt by tau_base = 0"),
    ],
)
def test_c3_fails_when_one_condition_fails(change, why):
    v = C.c3_small_ema(distill_runs("byol", **change))
    assert v.status == C.FAIL, why
    assert v.numbers["byol"]["passed"] is False


def test_c3_fails_when_one_of_two_methods_fails():
    v = C.c3_small_ema(distill_runs("byol") | distill_runs("dino", knn_er0=0.26))
    assert v.status == C.FAIL and v.numbers["byol"]["passed"] and not v.numbers["dino"]["passed"]


def test_c3_reports_the_optional_er_run_at_high_tau():
    runs = distill_runs("byol")
    runs["byol-er"] = make_run(
        "byol-er", "byol", True, epochs={"knn200": ramp(0.1, 0.42, E), "monitor_eta_online": flat(0.7, E)}
    )
    assert C.c3_small_ema(runs).numbers["byol"]["knn_er_high"] == pytest.approx(0.42)


def test_c3_is_inconclusive_for_a_method_given_in_part_and_for_a_zero_tau_high_run():
    runs = distill_runs("byol")
    del runs["byol-er@tau_base=0.0"]
    v = C.c3_small_ema(runs)
    assert v.status == C.INCONCLUSIVE and "byol-er@tau_base=0.0" in v.reason and "missing" in v.reason
    runs = distill_runs("byol")
    runs["byol"].config["method_options"] = {"tau_base": 0.0}
    v = C.c3_small_ema(runs)
    assert v.status == C.INCONCLUSIVE and "tau_base=0.0; it must be the preset's" in v.reason


# ---------------------------------------------------------------------------------------------------------------------
# C4 — small batches
# ---------------------------------------------------------------------------------------------------------------------


def batch_runs(method: str, drop_orig: float, drop_er: float, small: int = 64) -> dict[str, Run]:
    out = {}
    for er, drop in ((False, drop_orig), (True, drop_er)):
        name = method + ("-er" if er else "")
        out[name] = make_run(name, method, er, epochs={"knn200": ramp(0.1, 0.50, E)}, batch_size=256)
        out[f"{name}@bs-small"] = make_run(
            f"{name}@bs-small", method, er, epochs={"knn200": ramp(0.1, 0.50 - drop, E)}, batch_size=small
        )
    return out


def test_c4_passes_when_originals_drop_more_for_a_majority():
    runs = (
        batch_runs("simclr", 0.08, 0.02)
        | batch_runs("swav", 0.10, 0.03)
        | batch_runs("byol", 0.05, 0.01)
        | batch_runs("dino", 0.01, 0.04)
    )
    v = C.c4_small_batches(runs)
    assert v.status == C.PASS and (v.numbers["methods_holding"], v.numbers["methods"]) == (3, 4)
    assert v.numbers["simclr"]["drop_orig"] == pytest.approx(0.08) and v.numbers["dino"]["holds"] is False
    assert "3 of 4 method(s)" in v.sentence


def test_c4_fails_without_a_strict_majority():
    runs = (
        batch_runs("simclr", 0.08, 0.02)
        | batch_runs("swav", 0.10, 0.03)
        | batch_runs("byol", 0.01, 0.05)
        | batch_runs("dino", 0.01, 0.04)
    )
    v = C.c4_small_batches(runs)
    assert v.status == C.FAIL and v.numbers["methods_holding"] == 2


def test_c4_is_inconclusive_when_the_small_batch_is_not_smaller():
    v = C.c4_small_batches(batch_runs("simclr", 0.08, 0.02, small=256))
    assert v.status == C.INCONCLUSIVE and "not a small batch below the preset's" in v.reason


# ---------------------------------------------------------------------------------------------------------------------
# C5 — competitive
# ---------------------------------------------------------------------------------------------------------------------


def pair(method: str, knn_orig: float, knn_er: float, untrained: float = 0.12) -> dict[str, Run]:
    return {
        name: make_run(name, method, er, epochs={"knn200": ramp(untrained, knn, E)})
        for name, er, knn in ((method, False, knn_orig), (f"{method}-er", True, knn_er))
    }


def test_c5_passes_when_every_er_variant_is_within_the_margin():
    v = C.c5_er_competitive(pair("simclr", 0.50, 0.48) | pair("byol", 0.52, 0.53) | pair("swav", 0.45, 0.4201))
    assert v.status == C.PASS and v.numbers["methods_within"] == 3
    assert v.numbers["mean_gap"] == pytest.approx((-0.02 + 0.01 - 0.0299) / 3)
    assert v.numbers["simclr"]["knn_untrained_orig"] == pytest.approx(0.12)


def test_c5_fails_when_one_er_variant_is_more_than_the_margin_below():
    v = C.c5_er_competitive(pair("simclr", 0.50, 0.48) | pair("dino", 0.50, 0.4699))
    assert v.status == C.FAIL and v.numbers["dino"]["within_margin"] is False


def test_c5_is_inconclusive_when_neither_variant_learned():
    v = C.c5_er_competitive(pair("dino", 0.125, 0.13))  # both within 2 points of the untrained 0.12
    assert v.status == C.INCONCLUSIVE and "neither DINO nor DINO-ER learned" in v.reason


def knn_run(name: str, method: str, er: bool, untrained: float, final: float, batch_size: int = 256) -> Run:
    """A run whose kNN goes from ``untrained`` (epoch 0) to exactly ``final`` (the last epoch)."""
    return make_run(
        name, method, er, epochs={"knn200": [untrained, *ramp(untrained, final, E)[1:-1], final]}, batch_size=batch_size
    )


def test_a_knn_difference_on_its_threshold_reaches_it_despite_float32_logging():
    on_threshold = float32(0.266) - float32(0.246)  # 2 points, 40 of 2,000 test images
    assert on_threshold < 0.02  # what a plain >= would get wrong
    assert C.knn_at_least(on_threshold, 0.02) is True
    assert C.knn_at_least(float32(0.2655) - float32(0.246), 0.02) is False  # one test image short of 2 points
    assert C.knn_at_least(-0.0300001, -0.03) is True and C.knn_at_least(-0.0301, -0.03) is False


def test_c5_counts_a_gain_of_exactly_two_logged_points_as_learned():
    untrained = float32(0.246)
    runs = {
        "swav": knn_run("swav", "swav", False, untrained, float32(0.258)),
        "swav-er": knn_run("swav-er", "swav", True, untrained, float32(0.266)),
    }
    v = C.c5_er_competitive(runs)
    assert v.status == C.PASS and v.numbers["swav"]["learned"] is True


def test_c4_equal_drops_do_not_hold_even_when_float32_logging_makes_one_larger():
    base_o, small_o, base_e, small_e = (float32(x) for x in (0.400, 0.3915, 0.383, 0.3745))  # both lose 0.85 points
    assert (base_o - small_o) > (base_e - small_e)  # by float32 rounding alone
    runs = {
        "simclr": knn_run("simclr", "simclr", False, 0.1, base_o),
        "simclr@bs-small": knn_run("simclr@bs-small", "simclr", False, 0.1, small_o, batch_size=64),
        "simclr-er": knn_run("simclr-er", "simclr", True, 0.1, base_e),
        "simclr-er@bs-small": knn_run("simclr-er@bs-small", "simclr", True, 0.1, small_e, batch_size=64),
    }
    v = C.c4_small_batches(runs)
    assert v.numbers["simclr"]["holds"] is False and v.status == C.FAIL


# ---------------------------------------------------------------------------------------------------------------------
# C6 — SwAV and DeepCluster-v2
# ---------------------------------------------------------------------------------------------------------------------

K = 100
E6 = 6  # epoch records 0 ... 5


def clustering_runs(
    code_marginal: list | None = None,
    swav_ce: list[float] | None = None,
    swav_pred: tuple[float, float] = (4.0, 2.0),
    dc_target: tuple[float, float] = (3.5, 0.0),
    dc_pred: tuple[float, float] = (3.0, 1.0),
    dc_ce: list[float] | None = None,
) -> dict[str, Run]:
    code_marginal = code_marginal or flat(0.99 * LOG(K), E6 - 1)
    swav = make_run(
        "swav",
        "swav",
        options={"num_prototypes": K},
        train={"marginal_entropy_target": code_marginal},
        epochs={
            "monitor_cross_entropy": swav_ce or ramp(4.6, 3.0, E6),
            "monitor_marginal_entropy_pred": flat(swav_pred[0], E6),
            "monitor_conditional_entropy_pred": flat(swav_pred[1], E6),
        },
    )
    dc = make_run(
        "deepcluster",
        "deepcluster",
        options={"num_prototypes": [K, K]},
        epochs={
            "monitor_cross_entropy": dc_ce or [4.6, 4.6, 4.0, 3.5, 3.2, 3.0],
            "monitor_marginal_entropy_target": flat(dc_target[0], E6),
            "monitor_conditional_entropy_target": flat(dc_target[1], E6),
            "monitor_marginal_entropy_pred": flat(dc_pred[0], E6),
            "monitor_conditional_entropy_pred": flat(dc_pred[1], E6),
        },
    )
    return {"swav": swav, "deepcluster": dc}


def test_c6_passes_when_codes_stay_at_log_k_ce_falls_and_both_carry_information():
    v = C.c6_clustering_maximises_mi(clustering_runs())
    assert v.status == C.PASS
    assert v.numbers["swav_K"] == K and v.numbers["deepcluster_K"] == K
    assert v.numbers["swav_code_marginal_min_over_log_K"] == pytest.approx(0.99)
    assert v.numbers["swav_information_pred"] == pytest.approx(2.0) and v.numbers["dc_information_clusters"] == 3.5
    assert v.numbers["dc_information_pred"] == pytest.approx(2.0)


def test_c6_ignores_the_first_epoch_of_codes_and_uses_epoch_2_for_deepcluster_ce():
    # a low code entropy inside epoch 1 (before epoch 1 is completed) and DeepCluster's CE rising during its
    # bank-filling first epoch do not count
    codes = [[0.5 * LOG(K), 0.9 * LOG(K), 0.99 * LOG(K), 0.99 * LOG(K)]] + flat(0.99 * LOG(K), E6 - 2)
    v = C.c6_clustering_maximises_mi(clustering_runs(code_marginal=codes, dc_ce=[1.0, 1.0, 4.0, 3.5, 3.2, 3.0]))
    assert v.status == C.PASS


@pytest.mark.parametrize(
    "change,why",
    [
        (
            {"code_marginal": flat(0.99 * LOG(K), 3) + [[0.99 * LOG(K)] * 3 + [0.94 * LOG(K)]] + [0.99 * LOG(K)]},
            "one code marginal below 0.95 log K after epoch 1",
        ),
        ({"swav_ce": [4.6, 3.0, 3.2, 3.4, 3.6, 3.8]}, "SwAV's cross-entropy rose"),
        ({"swav_pred": (3.0, 2.1)}, "SwAV's predictions carry 0.9 nat"),
        ({"dc_target": (0.9, 0.0)}, "DeepCluster's clusters carry 0.9 nat"),
        ({"dc_pred": (4.5, 3.6)}, "DeepCluster's predictions carry 0.9 nat (a collapsed network, spread clusters)"),
        ({"dc_ce": [4.6, 4.6, 3.0, 3.1, 3.2, 3.3]}, "DeepCluster's cross-entropy rose from epoch 2"),
    ],
)
def test_c6_fails_when_one_condition_fails(change, why):
    assert C.c6_clustering_maximises_mi(clustering_runs(**change)).status == C.FAIL, why


def test_c6_is_inconclusive_without_the_deepcluster_run():
    v = C.c6_clustering_maximises_mi({"swav": clustering_runs()["swav"]})
    assert v.status == C.INCONCLUSIVE and "['deepcluster'] missing" in v.reason


# ---------------------------------------------------------------------------------------------------------------------
# C7 — DINO ablation
# ---------------------------------------------------------------------------------------------------------------------

KD = 256


def dino_ablation(
    both=(5.0, 1.5), centering_only=(5.4, 5.3), sharpening_only=(0.2, 0.1), out_dim: int | None = KD
) -> dict[str, Run]:
    opts = {"out_dim": out_dim} if out_dim else {}

    def run(role, extra, pair):
        return make_run(
            role,
            "dino",
            False,
            opts | extra,
            epochs={
                "monitor_marginal_entropy_target": flat(pair[0], E),
                "monitor_conditional_entropy_target": flat(pair[1], E),
            },
        )

    return {
        "dino": run("dino", {}, both),
        "dino@sharpening=False": run("dino@sharpening=False", {"sharpening": False}, centering_only),
        "dino@centering=False": run("dino@centering=False", {"centering": False}, sharpening_only),
    }


def test_c7_passes_when_the_three_signatures_appear():
    v = C.c7_dino_centering_sharpening(dino_ablation())
    assert v.status == C.PASS and v.numbers["K"] == KD
    assert v.numbers["centering_only"]["marginal_over_log_K"] == pytest.approx(5.4 / LOG(KD))
    assert "signatures all appeared" in v.sentence


@pytest.mark.parametrize(
    "change,why",
    [
        ({"centering_only": (5.4, 4.9)}, "centering only: conditional 0.88 log K, not uniform"),
        ({"sharpening_only": (0.6, 0.1)}, "sharpening only: marginal 0.11 log K, no single output dominates"),
        ({"both": (4.4, 1.5)}, "both: marginal 0.79 log K"),
        ({"both": (5.0, 2.8)}, "both: conditional 0.505 log K"),
    ],
)
def test_c7_fails_when_one_signature_is_missing(change, why):
    v = C.c7_dino_centering_sharpening(dino_ablation(**change))
    assert v.status == C.FAIL, why
    assert "did not all appear" in v.sentence


def test_c7_uses_the_default_output_dimension_when_the_config_omits_it():
    # with K = 4096 (log K = 8.32) the same entropies are far from uniform: centering only fails
    v = C.c7_dino_centering_sharpening(dino_ablation(out_dim=None))
    assert v.numbers["K"] == 4096 and v.status == C.FAIL


# ---------------------------------------------------------------------------------------------------------------------
# C8 — InfoNCE and ER below log k
# ---------------------------------------------------------------------------------------------------------------------


def simclr_run(
    train_nce: list, monitor_nce: list[float], train_er: list | None = None, monitor_er: list[float] | None = None, **kw
) -> Run:
    return make_run(
        "simclr",
        "simclr",
        epochs={"monitor_infonce": monitor_nce, "monitor_er_bound": monitor_er or ramp(1.0, 3.0, len(monitor_nce))},
        train={"infonce": train_nce, "er_bound": train_er or ramp(1.0, 3.0, len(train_nce))},
        **kw,
    )


def test_c8_passes_when_both_estimates_rise_and_stay_below_log_k():
    v = C.c8_infonce_and_er_below_log_k(simclr_run(ramp(2.0, LOG(256) - 0.01, 6), ramp(2.0, LOG(512) - 0.01, 7)))
    assert v.status == C.PASS
    assert v.numbers["infonce"]["log_batch"] == pytest.approx(LOG(256))
    assert v.numbers["infonce"]["monitor_rise"] == pytest.approx(LOG(512) - 2.01)


def test_c8_fails_when_a_training_record_exceeds_log_batch_size():
    # 5.6 nats is below log 512 (the monitor size) but above log 256: k for a training record is the batch size
    train = ramp(2.0, 5.0, 5) + [[5.0, 5.0, 5.6, 5.0]]
    v = C.c8_infonce_and_er_below_log_k(simclr_run(train, ramp(2.0, 5.0, 7)))
    assert v.status == C.FAIL and v.numbers["infonce"]["max_train"] == 5.6


def test_c8_fails_when_an_estimate_does_not_rise():
    v = C.c8_infonce_and_er_below_log_k(simclr_run(ramp(2.0, 5.0, 6), ramp(2.0, 5.0, 7), monitor_er=ramp(2.0, 2.05, 7)))
    assert v.status == C.FAIL and v.numbers["er_bound"]["monitor_rise"] == pytest.approx(0.05)


# ---------------------------------------------------------------------------------------------------------------------
# C9 — training-batch vs monitor-batch entropy
# ---------------------------------------------------------------------------------------------------------------------


def batch_pair(
    train_base: float, train_small: float, mon_base: float, mon_small: float, monitor_small: int = 512
) -> dict[str, Run]:
    return {
        "simclr": make_run(
            "simclr",
            "simclr",
            epochs={"monitor_eta_online": flat(mon_base, 4)},
            train={"eta_online": flat(train_base, 3)},
            batch_size=256,
        ),
        "simclr@bs-small": make_run(
            "simclr@bs-small",
            "simclr",
            epochs={"monitor_eta_online": flat(mon_small, 4)},
            train={"eta_online": flat(train_small, 3)},
            batch_size=64,
            monitor_size=monitor_small,
        ),
    }


def test_c9_passes_when_training_eta_differs_and_monitor_eta_agrees():
    v = C.c9_batch_size_and_monitor_entropy(batch_pair(0.80, 0.60, 0.75, 0.73))
    assert v.status == C.PASS
    assert v.numbers["train_eta_gap"] == pytest.approx(0.20) and v.numbers["monitor_eta_gap"] == pytest.approx(0.02)
    assert v.numbers["epochs_compared"] == 3


def test_c9_fails_when_the_monitor_eta_differs_as_much():
    assert C.c9_batch_size_and_monitor_entropy(batch_pair(0.80, 0.60, 0.75, 0.62)).status == C.FAIL
    assert C.c9_batch_size_and_monitor_entropy(batch_pair(0.80, 0.79, 0.75, 0.75)).status == C.FAIL  # no batch effect


def test_c9_is_inconclusive_on_different_monitor_sizes():
    v = C.c9_batch_size_and_monitor_entropy(batch_pair(0.80, 0.60, 0.75, 0.73, monitor_small=256))
    assert v.status == C.INCONCLUSIVE and "monitor batches differ" in v.reason


# ---------------------------------------------------------------------------------------------------------------------
# INCONCLUSIVE: synthetic data, too short, missing run, wrong role, absent key
# ---------------------------------------------------------------------------------------------------------------------

PASSING = {
    "C2": lambda: {"byol": c2_pass_run()},
    "C3": lambda: distill_runs("byol"),
    "C4": lambda: batch_runs("simclr", 0.08, 0.02),
    "C5": lambda: pair("simclr", 0.50, 0.48),
    "C6": clustering_runs,
    "C7": dino_ablation,
    "C8": lambda: {"simclr": simclr_run(ramp(2.0, 5.0, 6), ramp(2.0, 5.0, 7))},
    "C9": lambda: batch_pair(0.80, 0.60, 0.75, 0.73),
}


@pytest.mark.parametrize("claim", list(C.CLAIMS))
def test_every_claim_passes_on_its_passing_runs_and_is_inconclusive_on_synthetic_data(claim):
    runs = PASSING[claim]()
    assert C.decide(claim, runs).status == C.PASS
    next(iter(runs.values())).config["dataset"] = C.SYNTHETIC_DATASET
    v = C.decide(claim, runs)
    assert v.status == C.INCONCLUSIVE and "synthetic fallback dataset" in v.reason
    assert v.sentence.startswith("Inconclusive: the run(s)") and "measured anyway" in v.sentence


@pytest.mark.parametrize("claim", list(C.CLAIMS))
def test_every_claim_is_inconclusive_with_no_runs(claim):
    v = C.decide(claim, {})
    assert v.status == C.INCONCLUSIVE and ("missing" in v.reason or "no runs given" in v.reason)
    assert v.numbers == {}


def test_a_run_shorter_than_the_claim_needs_is_inconclusive_and_says_how_many_epochs():
    v = C.c2_byol_entropy_stable(byol_run(flat(0.6, 6), ramp(0.2, 0.9, 6)))  # 5 epochs
    assert v.status == C.INCONCLUSIVE
    assert f"needs runs of at least {C.C2_MIN_EPOCHS} epochs (epochs completed — byol: 5)" in v.reason


def test_an_absent_key_is_inconclusive_and_named():
    run = c2_pass_run()
    for record in run.records:
        record.pop("monitor_reconstruction", None)
    v = C.c2_byol_entropy_stable(run)
    assert v.status == C.INCONCLUSIVE and "monitor_reconstruction at epoch 2 is absent" in v.reason


def test_a_run_of_another_method_or_variant_is_inconclusive():
    v = C.c2_byol_entropy_stable(make_run("byol", "dino", epochs={"monitor_eta_target": flat(0.6, N)}))
    assert v.status == C.INCONCLUSIVE and "is dino, not byol" in v.reason
    runs = distill_runs("byol")
    runs["byol-er@tau_base=0.0"].config["er"] = False
    assert "is byol, not byol-er" in C.c3_small_ema(runs).reason
    runs = dino_ablation()
    runs["dino@centering=False"].config["method_options"].pop("centering")
    assert "has centering=<preset default>, not centering=False" in C.c7_dino_centering_sharpening(runs).reason


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: C.decide("C1", {}), r"unknown claim id\(s\) \['C1'\]"),
        (lambda: C.c3_small_ema({"byol@tau0": None}), r"C3 has no run role\(s\) \['byol@tau0'\]; its roles are"),
        (lambda: C.c3_small_ema(distill_runs("byol")["byol"]), "C3 needs a mapping of role -> Run"),
        (lambda: C.c2_byol_entropy_stable({"byol": {"config": {}}}), r"runs\['byol'\] for C2 must be a Run"),
        (lambda: C.c2_byol_entropy_stable([c2_pass_run()]), "runs for C2 must be a Run or a mapping"),
        (lambda: C.RunSpec("byol", batch="tiny"), "RunSpec.batch must be 'base' or 'small', got 'tiny'"),
        (lambda: C.required_runs(["C2", "C10"]), r"unknown claim id\(s\) \['C10'\]"),
        (lambda: C.num_prototypes(make_run("simclr", "simclr")), "it has no categorical head"),
        (lambda: C.Verdict.from_dict({"claim": "C2"}), "a verdict record lacks"),
        (lambda: C.write_report(["PASS"], "unused"), "write_report takes Verdict objects, got str"),
    ],
)
def test_bad_input_raises_value_error_naming_it(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------------------------------------------------
# Record helpers
# ---------------------------------------------------------------------------------------------------------------------


def test_record_helpers_read_epochs_monitor_train_and_untrained_values():
    run = make_run(
        "r",
        "simclr",
        epochs={"knn200": [0.11, 0.2, 0.3], "monitor_eta_online": [0.7, 0.6, None]},
        train={"eta_online": [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]]},
    )
    run.records.append({"kind": "epoch", "epoch": 1, "step": 4, "knn200": 0.25})  # a re-written epoch 1: the later wins
    run.records.append({"kind": "epoch", "epoch": 3, "step": 12, "knn200": float("nan")})
    assert C.untrained_knn(run) == 0.11
    assert [r["epoch"] for r in C.epoch_records(run)] == [0, 1, 2, 3] and C.epochs_completed(run) == 3
    assert C.last_epoch_record(run)["epoch"] == 3
    assert C.epoch_series(run, "knn200") == ([0, 1, 2], [0.11, 0.25, 0.3])  # NaN is not a value
    assert C.monitor_series(run, "eta_online") == C.monitor_series(run, "monitor_eta_online") == ([0], [0.7])
    assert C.value_at_epoch(run, "knn200", 2) == 0.3 and C.value_at_epoch(run, "knn200", 5) is None
    assert C.final_knn(run) is None  # the last epoch has no finite kNN: not silently an earlier one
    xs, ys = C.train_series(run, "eta_online")
    assert xs == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0] and ys == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert C.train_epoch_mean(run, "eta_online", 1) == pytest.approx(0.25)  # records in (0, 1]
    assert C.train_epoch_mean(run, "eta_online", 2) == pytest.approx(0.65)
    assert C.train_epoch_mean(run, "eta_online", 3) is None
    assert [r["step"] for r in C.train_records(run)] == list(range(1, 9))
    assert not C.is_synthetic(run) and C.is_synthetic(make_run("s", "simclr", dataset="synthetic"))


def test_num_prototypes_reads_the_config_and_the_method_defaults_match_erlib_methods():
    from erlib.methods import config_for

    assert C.num_prototypes(make_run("s", "swav", options={"num_prototypes": 70})) == 70
    assert C.num_prototypes(make_run("d", "deepcluster", options={"num_prototypes": [30, 40]})) == 30
    assert C.num_prototypes(make_run("d", "dino")) == config_for("dino").out_dim
    assert C.DEFAULT_NUM_PROTOTYPES == {
        "swav": config_for("swav").num_prototypes,
        "deepcluster": config_for("deepcluster", num_samples=10_000).num_prototypes[0],
        "dino": config_for("dino").out_dim,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------------


def test_registry_names_runs_by_role_and_states_criteria_from_the_constants():
    assert list(C.CLAIMS) == ["C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9"]
    assert C.RunSpec("byol", True, {"tau_base": 0.0}).name == "byol-er@tau_base=0.0"
    assert C.RunSpec("simclr", batch="small").name == "simclr@bs-small"
    assert C.RunSpec("dino", False, {"sharpening": False}).tag == "sharpening=False"
    assert C.CLAIMS["C7"].roles == ("dino", "dino@sharpening=False", "dino@centering=False")
    assert f"±{C.C2_ETA_BAND}" in C.CLAIMS["C2"].criterion and f"{C.C2_MIN_EPOCHS} epochs" in C.C2_CRITERION
    assert (
        f"{100 * C.C3_MIN_KNN_GAIN:.0f} points" in C.C3_CRITERION
        and f"{C.C6_CODE_MARGINAL_FRACTION} log K" in C.C6_CRITERION
    )
    for claim in C.CLAIMS.values():
        assert claim.decide({}).claim == claim.id and claim.decide({}).criterion == claim.criterion


def test_required_runs_lists_each_run_once_and_keeps_it_required_if_any_claim_needs_it():
    specs = C.required_runs()
    names = [s.name for s in specs]
    assert len(names) == len(set(names)) == 24
    by_name = {s.name: s for s in specs}
    assert by_name["byol-er"].required  # optional for C3, needed by C4 and C5
    assert not {s.name: s for s in C.required_runs(["C3"])}["byol-er"].required
    assert [s.name for s in C.required_runs(["C9"])] == ["simclr", "simclr@bs-small"]
    assert by_name["dino@tau_base=0.0"].to_dict() == {
        "name": "dino@tau_base=0.0",
        "method": "dino",
        "er": False,
        "method_options": {"tau_base": 0.0},
        "batch": "base",
        "required": True,
    }


def test_load_claim_runs_and_decide_all_read_run_folders_named_by_role(tmp_path):
    run = c2_pass_run()
    folder = tmp_path / "byol"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(run.config))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in run.records))
    assert C.load_claim_runs(tmp_path, "C9") == {"simclr": None, "simclr@bs-small": None}
    verdicts = C.decide_all(tmp_path, ["C2", "C8"])
    assert [(v.claim, v.status) for v in verdicts] == [("C2", C.PASS), ("C8", C.INCONCLUSIVE)]
    assert verdicts[0].runs == {"byol": str(folder)}


def test_claims_import_no_torch():
    code = "import sys, erlib.claims; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------------


def test_write_report_writes_a_markdown_table_and_json_that_round_trips(tmp_path):
    verdicts = [C.decide(claim, PASSING[claim]()) for claim in C.CLAIMS]
    verdicts.append(
        C.Verdict(
            "C2", "a title | with a pipe", C.FAIL, "criterion\non two lines", {"x": 0.5, "n": {"k": 2}}, "it failed"
        )
    )
    md, js = C.write_report(verdicts, tmp_path / "out")
    assert (md.name, js.name) == ("report.md", "report.json")
    lines = md.read_text().splitlines()
    header = lines.index("| claim | verdict | criterion | key numbers |")
    rows = lines[header + 2 : header + 2 + len(verdicts)]
    assert len(rows) == len(verdicts) and all(r.startswith("| C") and r.endswith(" |") for r in rows)
    assert rows[0].startswith("| C2: BYOL keeps the entropy stable while the reconstruction rises | PASS | ")
    assert "eta_ref = 0.6" in rows[0] and "cosine_rise = 0.3" in rows[0]
    assert "byol.knn_gain = 0.13" in rows[1]  # nested numbers are flattened
    assert rows[-1] == r"| C2: a title \| with a pipe | FAIL | criterion on two lines | x = 0.5, n.k = 2 |"
    assert f"- **C2 PASS**: {verdicts[0].sentence}" in lines
    assert C.read_report(js) == verdicts
    assert C.format_verdicts(verdicts[:1]) == f"C2 PASS: {verdicts[0].sentence}"


@pytest.mark.parametrize(
    "marginal, conditional, expected",
    [
        (0.95, 0.92, "uniform outputs"),  # centering only: both entropies near log K
        (0.05, 0.01, "one output dominates"),  # sharpening only: the marginal collapses
        (0.85, 0.30, "informative"),  # DINO: a spread marginal, confident per-image outputs
        (0.85, 0.60, "between the signatures"),
        (0.70, 0.30, "between the signatures"),
    ],
)
def test_dino_regime_names_c7s_signatures_from_the_fractions_of_log_k(marginal, conditional, expected):
    k = 256
    assert C.dino_regime(marginal * math.log(k), conditional * math.log(k), k) == expected
