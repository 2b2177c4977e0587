"""erlib.targets on hand-built runs: each target met and missed on either side of its threshold, the method-specific
targets where they apply, the undecided cases (synthetic data, a key absent), the table over seeds, and the claims
command writing the targets of the base runs it finds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from erlib import targets as T
from erlib.__main__ import main
from erlib.reproduce import export_results, reproduce
from erlib.runs import Run
from tests.helpers import float32

K = 100  # the categorical heads' K in these runs
LOG_K = math.log(K)


def make_run(
    method: str = "simclr",
    er: bool = False,
    *,
    knn: tuple[float, float] = (0.30, 0.42),
    eta: float = 0.6,
    epoch_keys: dict | None = None,
    codes: list[float] | None = None,
    dataset: str = "cifar10-jpeg75",
    epochs: int = 3,
    planned: int | None = None,
) -> Run:
    """A run with epoch records 0..epochs (kNN from knn[0] linearly to knn[1], monitor η ``eta`` at the end, the
    ``epoch_keys`` values at the last epoch; ``planned`` epochs in its config, default ``epochs``) and, when ``codes``
    is given, one training record per value at epochs 0.5, 1.0, 1.5, ... carrying ``marginal_entropy_target``."""
    options = {"out_dim": K} if method == "dino" else {"num_prototypes": K} if method != "simclr" else {}
    config = {"method": method, "er": er, "method_options": options, "dataset": dataset, "batch_size": 128}
    config["epochs"] = planned if planned is not None else epochs
    records: list[dict] = []
    for e in range(epochs + 1):
        record = {"kind": "epoch", "epoch": e, "step": 10 * e}
        record["knn200"] = knn[1] if e == epochs else knn[0] + (knn[1] - knn[0]) * e / max(epochs, 1)
        record["monitor_eta_online"] = 0.05 if e < epochs else eta
        if e == epochs:
            record.update(epoch_keys or {})
        records.append(record)
    for i, value in enumerate(codes or [], 1):
        records.append({"kind": "train", "epoch": 0.5 * i, "step": 5 * i, "marginal_entropy_target": value})
    return Run(Path("runs") / method, config, records)


def by_target(checks: list[T.TargetCheck]) -> dict[str, T.TargetCheck]:
    return {c.target: c for c in checks}


def test_knn_gain_is_met_from_eight_points_over_the_untrained_network():
    met = by_target(T.check_run("simclr", make_run(knn=(0.30, 0.381))))["kNN gain"]
    missed = by_target(T.check_run("simclr", make_run(knn=(0.30, 0.379))))["kNN gain"]
    assert (met.met, missed.met) == (True, False)
    assert met.numbers["gain"] == pytest.approx(0.081) and missed.numbers["gain"] == pytest.approx(0.079)
    assert missed.measured == "+7.9 points, 30.0 % → 37.9 %"


def test_final_eta_reads_the_last_epoch_only():
    # η is 0.05 (collapsed) at every epoch but the last: the target reads the end of the run
    assert by_target(T.check_run("simclr", make_run(eta=0.31)))["final η"].met is True
    missed = by_target(T.check_run("simclr", make_run(eta=0.29)))["final η"]
    assert missed.met is False and missed.measured == "0.29" and missed.numbers == {"eta": 0.29}


def test_a_contrastive_run_has_only_the_two_common_targets():
    assert [c.target for c in T.check_run("simclr-er", make_run(er=True))] == ["kNN gain", "final η"]


@pytest.mark.parametrize(
    "marginal, conditional, met",
    [
        (0.85, 0.30, True),  # informative: a spread marginal and confident images
        (0.79, 0.30, False),  # the marginal too low
        (0.85, 0.51, False),  # images not confident enough
        (0.99, 0.98, False),  # uniform outputs
        (0.05, 0.01, False),  # one output dominates
    ],
)
def test_dino_teacher_entropies_are_judged_against_log_k(marginal, conditional, met):
    keys = {
        "monitor_marginal_entropy_target": marginal * LOG_K,
        "monitor_conditional_entropy_target": conditional * LOG_K,
    }
    check = by_target(T.check_run("dino", make_run("dino", epoch_keys=keys)))["teacher entropies"]
    assert check.met is met and check.numbers["K"] == K
    assert check.measured == f"H(p̄_t) {marginal:.2f} log K, H(p_t) {conditional:.2f} log K"


def test_swav_codes_must_stay_spread_from_epoch_one_and_its_predictions_carry_information():
    info = {"monitor_marginal_entropy_pred": 4.0, "monitor_conditional_entropy_pred": 2.9}  # 1.1 nats
    # a dip of the codes before epoch 1 (the first training record, epoch 0.5) does not count
    healthy = make_run("swav", codes=[0.5 * LOG_K, 0.96 * LOG_K, 0.97 * LOG_K], epoch_keys=info)
    checks = by_target(T.check_run("swav", healthy))
    assert [c.target for c in T.check_run("swav", healthy)][2:] == ["code marginal", "I(X;W) of the predictions"]
    assert checks["code marginal"].met is True and checks["code marginal"].numbers["min"] == 0.96 * LOG_K
    assert checks["I(X;W) of the predictions"].met is True
    assert checks["I(X;W) of the predictions"].numbers["information"] == pytest.approx(1.1)
    dipped = make_run("swav", codes=[0.97 * LOG_K, 0.94 * LOG_K, 0.97 * LOG_K], epoch_keys=info)
    assert by_target(T.check_run("swav", dipped))["code marginal"].met is False
    uninformative = {"monitor_marginal_entropy_pred": 4.0, "monitor_conditional_entropy_pred": 3.1}  # 0.9 nats
    run = make_run("swav", codes=[LOG_K, LOG_K], epoch_keys=uninformative)
    assert by_target(T.check_run("swav", run))["I(X;W) of the predictions"].met is False


def test_deepcluster_needs_information_in_both_its_clusters_and_its_predictions():
    keys = {
        "monitor_marginal_entropy_target": 4.5,
        "monitor_conditional_entropy_target": 0.5,  # clusters: 4.0 nats
        "monitor_marginal_entropy_pred": 4.5,
        "monitor_conditional_entropy_pred": 3.65,  # predictions: 0.85 nats
    }
    checks = by_target(T.check_run("deepcluster", make_run("deepcluster", epoch_keys=keys)))
    assert checks["I(X;W) of the clusters"].met is True
    assert checks["I(X;W) of the predictions"].met is False
    assert checks["I(X;W) of the predictions"].measured == "0.85 nats"


def test_synthetic_data_and_absent_keys_leave_targets_undecided():
    synthetic = T.check_run("simclr", make_run(dataset="synthetic", knn=(0.1, 0.9), eta=0.9))
    assert [(c.met, c.measured, c.status) for c in synthetic] == [(None, "synthetic data", "undecided")] * 2
    absent = by_target(T.check_run("dino", make_run("dino")))  # no teacher entropies were logged
    assert absent["teacher entropies"].met is None and "no teacher entropies" in absent["teacher entropies"].measured
    no_codes = by_target(T.check_run("swav", make_run("swav")))
    assert no_codes["code marginal"].met is None


def test_the_table_counts_the_seeds_that_met_each_target():
    per_seed = {
        0: {"simclr": T.check_run("simclr", make_run(knn=(0.3, 0.45), eta=0.5))},
        1: {"simclr": T.check_run("simclr", make_run(knn=(0.3, 0.35), eta=0.5))},
        2: {},  # no run in this seed
        3: {"simclr": T.check_run("simclr", make_run(dataset="synthetic"))},
    }
    lines = T.targets_table(per_seed).splitlines()
    assert lines[0] == "| run | target | criterion | seed 0 | seed 1 | seed 2 | seed 3 | met in |"
    knn_row = next(line for line in lines if line.startswith("| simclr | kNN gain |"))
    assert knn_row.startswith("| simclr | kNN gain | final kNN200 − untrained kNN200 ≥ 8 points | ✓ +15.0 points")
    assert "| ✗ +5.0 points" in knn_row and "| — (no run) |" in knn_row and "| ? synthetic data |" in knn_row
    assert knn_row.endswith("| 1 of 3 |")
    eta_row = next(line for line in lines if line.startswith("| simclr | final η |"))
    assert eta_row.endswith("| 2 of 3 |")
    assert lines[-1] == "0 of 2 targets met in every seed (4 seed(s)); 2 of them lack the run in some seed."
    both = {s: {"simclr": T.check_run("simclr", make_run(knn=(0.3, 0.45)))} for s in (0, 1)}
    assert T.targets_table(both).splitlines()[-1] == "2 of 2 targets met in every seed (2 seed(s))."


def write_run(folder: Path, run: Run) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(run.config))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in run.records))
    (folder / "meta.json").write_text(json.dumps({"format": 2, "commit": "abc123"}))


def test_the_claims_command_writes_the_targets_of_the_base_runs_it_finds(tmp_path, capsys):
    root = tmp_path / "runs"
    for seed, final in [(0, 0.45), (1, 0.36)]:
        write_run(root / f"seed{seed}" / "simclr", make_run(knn=(0.3, final), epochs=6))
        write_run(root / f"seed{seed}" / "byol@tau_base=0.0", make_run("byol"))  # not a base run: not checked
    result = reproduce("small", ["C8"], [0, 1], out_dir=tmp_path / "report", train=False, runs_root=root)
    assert {s: list(t) for s, t in result.targets.items()} == {0: ["simclr"], 1: ["simclr"]}
    assert result.targets_report == tmp_path / "report" / "targets.md"
    text = result.targets_report.read_text()
    assert "| simclr | kNN gain |" in text and "1 of 2 targets met in every seed (2 seed(s))." in text
    data = json.loads((tmp_path / "report" / "targets.json").read_text())
    assert [c["status"] for c in data["1"]["simclr"]] == ["missed", "met"]
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["targets"] == data
    # the command line prints the count and the file
    args = ["claims", "--preset", "small", "--only", "C8", "--seeds", "0,1", "--no-train"]
    assert main(args + ["--runs-dir", str(root), "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "preset targets of the base runs: 1 of 2 targets met in every seed (2 seed(s))." in out
    assert str(tmp_path / "cli" / "targets.md") in out


def test_no_base_run_no_targets_report(tmp_path):
    write_run(tmp_path / "seed0" / "byol@tau_base=0.0", make_run("byol"))
    result = reproduce("small", ["C8"], [0], out_dir=tmp_path / "report", train=False, runs_root=tmp_path)
    assert result.targets == {} and result.targets_report is None
    assert not (tmp_path / "report" / "targets.md").exists()


def test_export_records_the_targets_of_the_copied_runs(tmp_path):
    src = tmp_path / "runs"
    write_run(src / "simclr", make_run(knn=(0.3, 0.45), eta=0.2, epochs=6))
    dest = export_results({0: src}, tmp_path / "results", "CPU", "python -m erlib claims", ["C5"], "small")
    summary = json.loads((dest / "summary.json").read_text())
    assert [(c["target"], c["status"]) for c in summary["targets"]["0"]["simclr"]] == [
        ("kNN gain", "met"),
        ("final η", "missed"),
    ]


def test_targets_import_no_torch():
    import subprocess
    import sys

    code = "import sys, erlib.targets; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_threshold_is_met_exactly_at_its_value():
    # the values sit on the thresholds, computed as the code computes them: >= (and <=) must hold there
    assert (
        by_target(T.check_run("simclr", make_run(knn=(0.50, 0.58))))["kNN gain"].met is True
    )  # 0.0799999... in floats
    logged = [float32(x) for x in (0.246, 0.326)]  # as the trainer logs them
    assert (
        logged[1] - logged[0] < 0.08
        and by_target(T.check_run("simclr", make_run(knn=tuple(logged))))["kNN gain"].met is True
    )
    assert by_target(T.check_run("simclr", make_run(eta=0.3)))["final η"].met is True
    info = {"monitor_marginal_entropy_pred": 4.0, "monitor_conditional_entropy_pred": 3.0}  # exactly 1 nat
    swav = by_target(T.check_run("swav", make_run("swav", codes=[0.95 * LOG_K, 0.95 * LOG_K], epoch_keys=info)))
    assert swav["code marginal"].met is True and swav["I(X;W) of the predictions"].met is True
    keys = {"monitor_marginal_entropy_target": 0.8 * LOG_K, "monitor_conditional_entropy_target": 0.5 * LOG_K}
    assert by_target(T.check_run("dino", make_run("dino", epoch_keys=keys)))["teacher entropies"].met is True


def test_an_unfinished_or_untrained_run_decides_nothing():
    unfinished = T.check_run("simclr", make_run(knn=(0.3, 0.5), eta=0.9, epochs=2, planned=10))
    assert {(c.met, c.measured) for c in unfinished} == {(None, "unfinished: 2 of 10 epochs")}
    one_short = T.check_run("simclr", make_run(knn=(0.3, 0.5), eta=0.9, epochs=2, planned=3))
    assert {c.measured for c in one_short} == {"unfinished: 2 of 3 epochs"}
    # only the epoch-0 record: its η would otherwise pass as the "final" one
    untrained = T.check_run("dino", make_run("dino", eta=0.9, epochs=0, planned=10))
    assert [c.target for c in untrained] == ["kNN gain", "final η", "teacher entropies"]
    assert {(c.met, c.measured) for c in untrained} == {(None, "untrained: no epoch after epoch 0")}


def test_a_non_finite_value_misses_its_target():
    nan = float("nan")
    diverged = by_target(T.check_run("simclr", make_run(eta=nan)))["final η"]
    assert (diverged.met, diverged.measured) == (False, T.NON_FINITE)
    knn = by_target(T.check_run("simclr", make_run(knn=(0.3, nan))))["kNN gain"]
    assert knn.met is False
    codes = by_target(T.check_run("swav", make_run("swav", codes=[LOG_K, nan])))["code marginal"]
    assert codes.met is False
    inf = {"monitor_marginal_entropy_target": float("inf"), "monitor_conditional_entropy_target": 1.0}
    assert by_target(T.check_run("dino", make_run("dino", epoch_keys=inf)))["teacher entropies"].met is False


def test_absent_keys_name_what_is_missing():
    absent = by_target(T.check_run("swav", make_run("swav")))
    assert absent["I(X;W) of the predictions"].measured == "no pred entropies at the last epoch"
    assert absent["code marginal"].measured == "no marginal_entropy_target from epoch 1 on"
    run = make_run()
    last = next(r for r in run.records if r["kind"] == "epoch" and r["epoch"] == 3)
    del last["monitor_eta_online"]
    assert by_target(T.check_run("simclr", run))["final η"].measured == "no monitor_eta_online at the last epoch"


def test_a_check_round_trips_through_json():
    keys = {"monitor_marginal_entropy_target": 0.85 * LOG_K, "monitor_conditional_entropy_target": 0.3 * LOG_K}
    for check in T.check_run("dino-er", make_run("dino", True, epoch_keys=keys)):
        assert T.TargetCheck.from_dict(json.loads(json.dumps(check.to_dict()))) == check
