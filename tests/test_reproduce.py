"""Combining claim verdicts over seeds, exporting reference runs (no checkpoints) and reading them back."""

from __future__ import annotations

import json

import pytest

from erlib import claims as C
from erlib.reproduce import combine_seeds, export_results, reference_runs


def verdict(status: str, claim: str = "C8") -> C.Verdict:
    return C.Verdict(
        claim, "t", status, "criterion", {"x": 1}, "measured x", reason="" if status != "INCONCLUSIVE" else "too short"
    )


def test_a_claim_passes_over_seeds_only_if_every_seed_passes():
    [v] = combine_seeds({0: [verdict("PASS")], 1: [verdict("PASS")], 2: [verdict("PASS")]})
    assert v.status == "PASS" and v.numbers["seeds"] == {"0": "PASS", "1": "PASS", "2": "PASS"}
    [v] = combine_seeds({0: [verdict("PASS")], 1: [verdict("FAIL")], 2: [verdict("PASS")]})
    assert v.status == "INCONCLUSIVE" and v.reason == "the seeds disagree: PASS in 2 of 3 seeds, FAIL in 1 of 3 seeds"
    [v] = combine_seeds({0: [verdict("FAIL")], 1: [verdict("FAIL")]})
    assert v.status == "FAIL"
    [v] = combine_seeds({3: [verdict("FAIL")]})
    assert v == verdict("FAIL")  # one seed: the verdict itself


def _simclr_run(src):
    """A 6-epoch SimCLR run folder whose InfoNCE and ER estimate rise below log 128 (C8 PASSes on it)."""
    run = src / "simclr"
    run.mkdir(parents=True)
    config = {
        "method": "simclr",
        "er": False,
        "method_options": {},
        "dataset": "cifar10-jpeg75",
        "batch_size": 128,
        "monitor_size": 256,
        "epochs": 6,
    }
    (run / "config.json").write_text(json.dumps(config))
    records = [
        {"kind": "epoch", "epoch": e, "step": 10 * e, "monitor_infonce": 0.2 * e, "monitor_er_bound": 0.3 * e}
        for e in range(7)
    ]
    records += [{"kind": "train", "epoch": e, "step": 10 * e, "infonce": 0.1, "er_bound": 0.1} for e in range(1, 7)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "meta.json").write_text(json.dumps({"format": 2, "commit": "abc123"}))
    (run / "checkpoint.pt").write_bytes(b"weights")
    return run


def test_export_copies_runs_without_checkpoints_and_records_their_verdicts(tmp_path):
    src = tmp_path / "runs"
    _simclr_run(src)
    dest = export_results(
        {0: src}, tmp_path / "results" / "cpu-small", "CPU reference", "python -m erlib claims", ["C8"]
    )
    assert sorted(p.name for p in (dest / "seed0" / "simclr").iterdir()) == [
        "config.json",
        "meta.json",
        "metrics.jsonl",
    ]
    [ref] = reference_runs(tmp_path / "results")
    assert ref["label"] == "CPU reference" and ref["commit"] == "abc123" and ref["path"] == dest
    assert ref["claims"] == ["C8"]  # the claims exported, so that a check of the set decides those and no others
    # the summary says which commits, commands and execution paths made the runs (here one run, one of each)
    assert ref["provenance"] == {"commits": {"abc123": 1}, "commands": {"None": 1}, "execution": {"": 1}}
    [c8] = ref["verdicts"]["0"]
    assert c8["claim"] == "C8" and c8["status"] == "PASS"  # log k = log 128 caps both; both rose over 6 epochs


def test_the_report_sets_the_readers_verdicts_next_to_each_reference_set(tmp_path):
    from erlib import claims as C
    from erlib.reproduce import reference_table

    ref_dir = tmp_path / "results" / "gpu-full"
    ref_dir.mkdir(parents=True)
    recorded = {"0": [_verdict("C8", C.PASS).to_dict()], "1": [_verdict("C8", C.FAIL).to_dict()]}
    (ref_dir / "summary.json").write_text(
        json.dumps(
            {
                "label": "H200 reference, 40 epochs",
                "preset": "full",
                "command": "python -m erlib claims --preset full",
                "machine": "NVIDIA H200",
                "commit": "abc1234567",
                "verdicts": recorded,
            }
        )
    )
    refs = reference_runs(tmp_path / "results")
    lines = reference_table([_verdict("C8", C.PASS)], refs)
    assert "| claim | these runs | H200 reference, 40 epochs |" in lines
    assert "| C8 | PASS | INCONCLUSIVE |" in lines  # the reference's seeds disagree
    assert any("python -m erlib claims --preset full" in line and "NVIDIA H200" in line for line in lines)
    assert reference_table([_verdict("C8", C.PASS)], []) == []


def _verdict(claim: str, status: str):
    from erlib import claims as C

    return C.Verdict(claim, "title", status, "criterion", {"x": 1.0}, "sentence")


def test_the_report_has_a_figure_of_each_claim_drawn_from_its_runs(tmp_path):
    from erlib.reproduce import reproduce

    _simclr_run(tmp_path / "runs" / "seed0")
    out = tmp_path / "report"
    result = reproduce("small", ["C8", "C9"], [0], out_dir=out, train=False, runs_root=tmp_path / "runs")
    # C8's run logged what C8 reads; C9 reads η, which this run never logged, so C9 has nothing to draw
    assert set(result.figures) == {"C8"}
    for claim_id, png in result.figures.items():
        assert png == out / "figures" / f"{claim_id}.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / "figures" / f"{claim_id}.html").is_file()
    report = (out / "report.md").read_text()
    assert "## Figures (seed 0)" in report and "[C8.png](figures/C8.png)" in report
    # the figure shows the quantities C8 reads, from the run's own records
    html = (out / "figures" / "C8.html").read_text()
    assert "InfoNCE bound (monitor), nats" in html and "ER estimate (monitor), nats" in html
    # with no run at all there is nothing to draw, and no figure
    empty = reproduce("small", ["C2"], [0], out_dir=tmp_path / "empty", train=False, runs_root=tmp_path / "none")
    assert empty.figures == {} and not (tmp_path / "empty" / "figures").exists()
    assert "## Figures" not in (tmp_path / "empty" / "report.md").read_text()


def test_provenance_counts_the_runs_of_each_commit_command_and_execution_path(tmp_path):
    from erlib.reproduce import run_provenance

    metas = {
        "seed0/simclr": {
            "commit": "aaa",
            "command": "python -m erlib claims",
            "execution": {"device": "cpu", "precision": "bf16", "cpu_capability": "AVX512"},
        },
        "seed0/byol": {
            "commit": "bbb",
            "command": "a script",
            "execution": {"device": "cpu", "precision": "fp32", "cpu_capability": "AVX2"},
        },
        "seed1/simclr": {
            "commit": "aaa",
            "command": "python -m erlib claims",
            "execution": {"device": "cpu", "precision": "bf16", "cpu_capability": "AVX512"},
        },
    }
    for name, meta in metas.items():
        run = tmp_path / name
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"method": name.split("/")[1], "er": False}))
        (run / "metrics.jsonl").write_text(json.dumps({"kind": "epoch", "epoch": 0, "step": 0}) + "\n")
        (run / "meta.json").write_text(json.dumps(meta))
    (tmp_path / "seed1" / "not-a-run").mkdir()  # no config.json: not counted
    assert run_provenance(tmp_path) == {
        "commits": {"aaa": 2, "bbb": 1},
        "commands": {"python -m erlib claims": 2, "a script": 1},
        "execution": {"cpu bf16 AVX512": 2, "cpu fp32 AVX2": 1},
    }


def test_export_copies_extra_roles_outside_the_claims_and_names_them(tmp_path):
    src = tmp_path / "runs"
    _simclr_run(src)
    extra = src / "dino-er@entropy_on=embedding"
    extra.mkdir()
    for name in ("config.json", "metrics.jsonl", "meta.json"):
        (extra / name).write_text((src / "simclr" / name).read_text())
    (extra / "checkpoint.pt").write_bytes(b"weights")
    dest = export_results(
        {0: src}, tmp_path / "set", "label", "cmd", ["C8"], "small", extra_roles=["dino-er@entropy_on=embedding"]
    )
    assert sorted(p.name for p in (dest / "seed0").iterdir()) == ["dino-er@entropy_on=embedding", "simclr"]
    assert not list(dest.rglob("checkpoint.pt"))
    [ref] = reference_runs(tmp_path)
    assert ref["extra_roles"] == ["dino-er@entropy_on=embedding"] and ref["provenance"]["commits"] == {"abc123": 2}
    # without the option the folder stays behind
    plain = export_results({0: src}, tmp_path / "plain", "label", "cmd", ["C8"], "small")
    assert [p.name for p in (plain / "seed0").iterdir()] == ["simclr"]


@pytest.mark.parametrize("role", ["../escape", "a/b", ".hidden", "", "..", "x y"])
def test_an_extra_role_that_is_not_one_folder_name_is_refused_before_any_copy(tmp_path, role):
    from erlib.reproduce import check_extra_roles

    with pytest.raises(ValueError, match=r"extra role .* is not a run folder name .* e\.g\. dino-er@entropy_on"):
        check_extra_roles([role])
    with pytest.raises(ValueError, match="is not a run folder name"):
        export_results({0: tmp_path}, tmp_path / "set", "label", "cmd", ["C8"], "small", extra_roles=[role])
    assert not (tmp_path / "set").exists()


def test_cli_extra_role_needs_export_and_a_folder_name_before_any_training(tmp_path, capsys, monkeypatch):
    from erlib.__main__ import main

    monkeypatch.chdir(tmp_path)
    for argv, message in (
        (["claims", "--preset", "tiny", "--extra-role", "dino-er@entropy_on=embedding"], "give --export DIR too"),
        (["claims", "--preset", "tiny", "--export", "set", "--extra-role", "../x"], "is not a run folder name"),
    ):
        try:
            code = main(argv)
        except ValueError as exc:
            assert message in str(exc)
        except SystemExit as exc:
            assert exc.code == 2 and message in capsys.readouterr().err
        else:
            assert code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing trained, nothing written


def test_dino_er_embedding_script_trains_the_roles_the_committed_set_exports(capsys):
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location(
        "dino_er_embedding_runs", root / "scripts" / "dino_er_embedding_runs.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([]) == 2 and "usage" in capsys.readouterr().out
    assert script.main(["huge", "0"]) == 2  # not a preset: refused before any training
    names = [s.name for s in script.SPECS]
    assert names == ["dino-er@entropy_on=embedding", "dino-er@entropy_on=embedding,tau_base=0.0"]
    assert all(s.er and s.method_options["entropy_on"] == "embedding" for s in script.SPECS)
    assert script.SPECS[1].method_options["tau_base"] == 0.0
    [ref] = [r for r in reference_runs(root / "results") if r["path"].name == "cpu-small-3seeds-2026-12-03"]
    assert ref["extra_roles"] == names  # the set carries exactly what the script trains


def test_a_seeds_runs_are_under_the_given_root_or_in_the_notebooks_folders(tmp_path):
    from pathlib import Path

    from erlib.presets import default_runs_dir
    from erlib.reproduce import seed_runs_dir

    assert seed_runs_dir("small", 2, tmp_path) == tmp_path / "seed2"
    assert seed_runs_dir("small", 0) == Path(default_runs_dir("small", 0)) == Path("runs/notebook-runs/small")
    assert seed_runs_dir("small", 1, None) == Path("runs/notebook-runs/small-seed1")


def test_cli_plan_lists_what_claims_would_train_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import shutil
    from pathlib import Path

    from erlib.__main__ import main
    from erlib.reproduce import claim_configs

    monkeypatch.chdir(tmp_path)
    # seed 2's C3 runs: one folder holds the committed run (its config, no checkpoint: resumed from its start), one
    # the same run with another learning rate (trained afresh)
    committed = Path(__file__).resolve().parent.parent / "results" / "cpu-small-3seeds-2026-12-03" / "seed2"
    names = [cfg.name for cfg in claim_configs("small", ["C3", "C7"], 0)]
    for name in names[:2]:
        shutil.copytree(committed / name, tmp_path / "r" / "seed2" / name)
    other = tmp_path / "r" / "seed2" / names[1] / "config.json"
    other.write_text(json.dumps({**json.loads(other.read_text()), "lr": 0.5}))
    before = sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))

    argv = ["claims", "--preset", "small", "--only", "C3,C7", "--seeds", "0,2", "--plan", "--runs-dir", "r"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in out[1:-1]]
    actions = {("2", names[0]): "resume", ("2", names[1]): "retrain"}
    assert [r[:3] for r in rows] == [[s, n, actions.get((s, n), "train")] for s in ("0", "2") for n in names]
    cfg = claim_configs("small", ["C3", "C7"], 0)[0]
    steps = f"{cfg.epochs * (cfg.train_subset // cfg.batch_size):,}" if cfg.train_subset else "?"  # ? on synthetic data
    assert {(r[3], r[4]) for r in rows} == {(str(cfg.epochs), steps)}
    n, epochs = 2 * len(names), 2 * len(names) * cfg.epochs
    counts = f"{n - 2} to train, 1 to resume, 1 to train afresh"
    assert out[-1].startswith(f"{n} runs: {counts}") and f"0 finished (reused); {epochs} epochs to train" in out[-1]
    assert sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before  # nothing trained or written

    for extra, message in (
        (["--export", "set"], "--plan only lists the runs"),
        (["--out", "report"], "--plan only lists the runs"),
        (["--no-train"], "--plan only lists the runs"),
        (["--seeds", "0,1,0"], "names a seed twice"),
    ):
        with pytest.raises(ValueError, match=message):
            main(["claims", "--preset", "small", "--plan", "--debug", *extra])
    assert sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before


def test_claims_progress_counts_down_the_epochs_of_the_runs_it_trains(tmp_path, capsys, monkeypatch):
    import erlib.reproduce as R

    trained = []
    monkeypatch.setattr(R, "ensure_run", lambda cfg: trained.append(cfg.name))  # a stand-in that trains instantly
    R.reproduce("small", ["C3"], seeds=[0, 1], runs_root=tmp_path)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[seed")]
    configs = R.claim_configs("small", ["C3"], 0)
    n, per_run = 2 * len(configs), configs[0].epochs
    assert len(lines) == len(trained) == n and n >= 4
    for i, line in enumerate(lines[:-1], 1):  # the epochs left fall by one run's epochs at each run
        assert line.endswith(f" left ({(n - i) * per_run} epochs to train)"), line
    assert lines[-1].endswith(" min")  # the last run: nothing left
    with pytest.raises(ValueError, match="name seed 1 twice"):
        R.reproduce("small", ["C3"], seeds=[1, 0, 1], runs_root=tmp_path)
    assert len(trained) == n  # refused before any run


def test_progress_note_gives_the_time_left_at_the_pace_so_far():
    from erlib.reproduce import _progress_note

    # 20 epochs trained in 240 s: 12 s an epoch, so 30 epochs left take 6 minutes
    assert _progress_note(120.0, 10, 30, 240.0, 20) == "2.0 min; about 6 min left (30 epochs to train)"
    assert _progress_note(0.2, 0, 30, 240.0, 20) == "reused; about 6 min left (30 epochs to train)"
    assert _progress_note(6.0, 1, 1, 6.0, 1) == "0.1 min; under a minute left (1 epoch to train)"
    assert _progress_note(0.2, 0, 30, 0.2, 0) == "reused"  # nothing trained yet: no pace to go by
    assert _progress_note(90.0, 10, 0, 90.0, 10) == "1.5 min"  # the last run
