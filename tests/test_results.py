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
from erlib.reproduce import reference_runs, run_provenance
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
    for key in ("label", "preset", "command", "machine", "commit", "verdicts", "provenance"):
        assert ref.get(key), f"{path}/summary.json lacks {key!r}"
    # the commits, commands and execution paths the summary names are those of the runs' own meta.json
    assert ref["provenance"] == run_provenance(path)
    assert sum(ref["provenance"]["commits"].values()) == len([p for p in path.glob("seed*/*") if p.is_dir()])
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


BENCH = ROOT / "results" / "bench-cpu-2026-12-03"
METHOD_NAMES = {"simclr": "SimCLR", "deepcluster": "DeepCluster-v2", "swav": "SwAV", "byol": "BYOL", "dino": "DINO"}


def _bench_rows(name: str) -> dict[tuple[str, str], dict]:
    report = json.loads((BENCH / name).read_text())
    # the benchmark of commit 54e0fc4 measured one path and wrote no "path" field
    return {
        (METHOD_NAMES[r["method"]] + ("-ER" if r["er"] else ""), r.get("path", "fp32")): r for r in report["results"]
    }


def test_the_readmes_cpu_benchmark_figures_are_the_committed_measurements():
    """Every figure of the README's bf16 CPU table, and the before / after pairs in the text under it, is read from
    the committed benchmark JSON (rounded as printed)."""
    readme = (ROOT / "README.md").read_text()
    header = (
        "| method | fp32, NCHW (img/s) | `auto` = bf16, channels_last (img/s) | `auto` / fp32 | `auto` / DataLoader"
    )
    table = readme[readme.index(header) :].split("\n\n")[0].splitlines()[2:]
    rows = _bench_rows("all-methods-fp32-auto.json")
    assert len(table) == 10
    for line in table:
        name, fp32, auto, ratio, over_base = [c.strip() for c in line.strip("|").split("|")]
        r32, rauto = rows[name, "fp32"], rows[name, "auto"]
        assert rauto["precision"] == "bf16" and rauto["channels_last"] is True
        assert fp32 == f"{r32['e2e_images_per_s']:,.0f}" and auto == f"{rauto['e2e_images_per_s']:,.0f}"
        assert ratio == f"{rauto['e2e_over_reference']:.2f}" and over_base == f"{rauto['e2e_over_baseline']:.1f}"
    old, new = _bench_rows("pair-54e0fc4.json"), _bench_rows("pair-head.json")
    for name in ("SimCLR", "SimCLR-ER", "BYOL", "BYOL-ER"):
        before = old[name, "fp32"]["e2e_images_per_s"]
        after = new[name, "auto"]["e2e_images_per_s"]
        assert f"{name} {before:,.0f} → {after:,.0f}" in readme.replace("images/s ", "")
        assert f"({after / before:.1f}×)" in readme


@pytest.mark.parametrize("ref", SETS, ids=[s["path"].name for s in SETS])
def test_reference_runs_are_what_todays_preset_trains_for_their_roles(ref):
    """Every claim run of a set has exactly the configuration today's preset gives its role and seed (apart from the
    folder it was trained in), whatever command trained it: a change to a preset fails here until the set is
    re-exported from runs of the new preset."""
    from erlib.presets import spec_config

    specs = {spec.name: spec for spec in C.required_runs()}
    path = Path(ref["path"])
    checked = 0
    for run_dir in sorted(path.glob("seed*/*")):
        if run_dir.name not in specs:
            continue  # an extra role (summary.json's extra_roles): outside the claims
        seed = int(run_dir.parent.name.removeprefix("seed"))
        got = json.loads((run_dir / "config.json").read_text())
        want = json.loads(
            json.dumps(spec_config(ref["preset"], specs[run_dir.name], str(run_dir.parent), seed).to_dict())
        )
        for key in ("out_dir", "progress"):
            got.pop(key, None), want.pop(key, None)
        assert got == want, f"{run_dir}: {[k for k in want if got.get(k) != want[k]]}"
        checked += 1
    assert checked >= 10, f"{path}: only {checked} claim runs (a set holds at least the ten base runs)"
