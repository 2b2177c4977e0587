"""The reference runs committed under results/ are what their summaries say: every run folder loads, none carries a
checkpoint, and the verdicts recorded at export are exactly what the claim functions compute from the runs today.

A change to a claim's criterion or to the record format that would change a committed verdict fails here: re-export
the reference set (``python -m erlib claims ... --export``) or explain the change."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from erlib import claims as C
from erlib.reproduce import reference_runs
from erlib.runs import load_run

ROOT = Path(__file__).resolve().parent.parent
SETS = reference_runs(ROOT / "results")


def test_the_repository_carries_a_reference_set():
    assert SETS, "results/ holds no reference set (a folder with summary.json); export one with python -m erlib claims"


def _close(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(a) and math.isnan(b))
    return a == b


@pytest.mark.parametrize("ref", SETS, ids=[s["path"].name for s in SETS])
def test_reference_runs_load_without_checkpoints_and_their_verdicts_hold(ref):
    path = Path(ref["path"])
    for key in ("label", "preset", "command", "machine", "commit", "verdicts"):
        assert ref.get(key), f"{path}/summary.json lacks {key!r}"
    assert not list(path.rglob("checkpoint.pt")), "reference sets carry no checkpoints"
    runs = [p for p in path.glob("seed*/*") if p.is_dir()]
    assert runs, f"{path} holds no run folders"
    for run_dir in runs:
        run = load_run(run_dir)
        assert run.epoch_records() and run.epoch_records()[0]["epoch"] == 0, run_dir
        assert run.config["dataset"] != C.SYNTHETIC_DATASET, f"{run_dir}: a reference run on synthetic data"
    for seed, recorded in ref["verdicts"].items():
        recorded_by_id = {v["claim"]: v for v in recorded}
        assert recorded_by_id, f"{path}: seed {seed} records no verdict"
        # a set exported for some claims (claims --only) names them; a set that names none records every claim
        today = [v.to_dict() for v in C.decide_all(path / f"seed{seed}", ref.get("claims"))]
        for verdict in today:
            old = recorded_by_id.get(verdict["claim"])
            assert old is not None, f"{path}: seed {seed} records no verdict for {verdict['claim']}"
            assert old["status"] == verdict["status"], (verdict["claim"], old["status"], verdict["status"])
            assert _close(json.loads(json.dumps(verdict["numbers"])), old["numbers"]), verdict["claim"]


@pytest.mark.parametrize("ref", SETS, ids=[s["path"].name for s in SETS])
def test_reference_targets_recorded_at_export_still_hold(ref):
    from erlib import targets as T

    assert "targets" in ref, f"{ref['path']}/summary.json records no preset targets; re-export the set"
    assert set(ref["targets"]) == set(ref["verdicts"]), "targets and verdicts cover different seeds"
    for seed, recorded in ref["targets"].items():
        today = {n: [c.to_dict() for c in cs] for n, cs in T.check_runs_dir(Path(ref["path"]) / f"seed{seed}").items()}
        assert _close(json.loads(json.dumps(today)), recorded), (
            f"{ref['path'].name}, seed {seed}: the preset targets computed today differ from those recorded"
        )


def test_a_recorded_target_matches_the_raw_metrics_of_its_run():
    """One target recomputed by hand from metrics.jsonl, outside erlib: DeepCluster-v2's I(X;W) of its predictions
    (last epoch record, marginal minus mean conditional entropy) in the seed-0 reference set."""
    path = ROOT / "results" / "cpu-small-2026-12-02"
    summary = json.loads((path / "summary.json").read_text())
    lines = (path / "seed0" / "deepcluster" / "metrics.jsonl").read_text().splitlines()
    last = max((json.loads(x) for x in lines if '"epoch"' in x), key=lambda r: (r["kind"] == "epoch", r["epoch"]))
    info = last["monitor_marginal_entropy_pred"] - last["monitor_conditional_entropy_pred"]
    [check] = [c for c in summary["targets"]["0"]["deepcluster"] if c["target"] == "I(X;W) of the predictions"]
    assert check["numbers"]["information"] == pytest.approx(info, abs=1e-12)
    assert check["met"] is (info >= 1.0) and check["measured"] == f"{info:.2f} nats"
