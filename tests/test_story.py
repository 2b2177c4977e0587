"""The notebooks' shared helpers: curves against epochs, baselines, reference overlays, verdicts as takeaways."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from erlib import claims as C
from erlib import presets, story
from erlib.runs import Run


def make_run(path: Path, method="byol", er=False, dataset="cifar10-jpeg75", untrained=0.25, final=0.40) -> Run:
    records = [
        {
            "kind": "epoch",
            "epoch": e,
            "step": 4 * e,
            "knn200": untrained + (final - untrained) * e / 3,
            "monitor_eta_online": 0.5,
        }
        for e in range(4)
    ]
    records += [{"kind": "train", "epoch": s / 4, "step": s, "eta_online": 0.1 * (s % 4)} for s in range(1, 13)]
    return Run(path, {"method": method, "er": er, "dataset": dataset, "method_options": {}}, records)


def test_curves_use_epochs_completed_for_both_kinds_of_record(tmp_path):
    run = make_run(tmp_path / "byol-er@tau_base=0.0", er=True)
    knn = story.curve(run, "knn200")
    assert knn.x == [0, 1, 2, 3] and knn.dash is True and knn.name == "BYOL-ER (tau_base=0.0)"
    eta = story.curve(run, "eta_online")
    assert eta.x == [s / 4 for s in range(1, 13)]
    # epoch e holds the training records in (e - 1, e]: steps 1..4 -> epoch 1 (values 0.1, 0.2, 0.3, 0.0)
    assert story.epoch_means(run, "eta_online") == pytest.approx({1: 0.15, 2: 0.15, 3: 0.15})


def test_baselines_are_chance_and_the_untrained_network(tmp_path):
    runs = [make_run(tmp_path / "a", untrained=0.24), make_run(tmp_path / "b", untrained=0.26)]
    assert story.baselines(runs) == [(0.1, "chance (1/10)"), (pytest.approx(0.25), "untrained network")]
    assert story.baselines([make_run(tmp_path / "c", dataset="synthetic")])[0] == (0.25, "chance (1/4)")


def test_reference_curves_come_from_committed_sets_with_their_label(tmp_path):
    ref = tmp_path / "results" / "cpu-small"
    run_dir = ref / "seed0" / "byol"
    run_dir.mkdir(parents=True)
    run = make_run(run_dir)
    (run_dir / "config.json").write_text(json.dumps(run.config))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in run.records))
    (ref / "summary.json").write_text(json.dumps({"label": "CPU reference, small preset", "preset": "small"}))
    [series] = story.reference_curves("byol", "knn200", preset="small", root=tmp_path / "results")
    assert series.name == "CPU reference, small preset: BYOL" and series.dash == "dot" and series.x == [0, 1, 2, 3]
    assert story.reference_curves("byol", "knn200", preset="full", root=tmp_path / "results") == []
    # the tiny preset previews the small one: its reader sees the small reference next to their own run
    [preview] = story.reference_curves("byol", "knn200", preset="tiny", root=tmp_path / "results")
    assert preview.name == series.name
    assert story.reference_curves("dino", "knn200", root=tmp_path / "results") == []
    # a set of several seeds draws one of them, and says which
    (ref / "seed1" / "byol").mkdir(parents=True)
    for name in ("config.json", "metrics.jsonl"):
        (ref / "seed1" / "byol" / name).write_text((run_dir / name).read_text())
    [seed1] = story.reference_curves("byol", "knn200", preset="small", root=tmp_path / "results", seed=1)
    assert seed1.name == "CPU reference, small preset — seed 1 drawn: BYOL"


def test_takeaway_states_the_verdict_its_criterion_and_why_not_decided(tmp_path, capsys):
    verdict = C.decide("C2", make_run(tmp_path / "byol", dataset="synthetic"))
    text = story.takeaway(verdict)
    assert text.startswith("**C2 — ⚠ INCONCLUSIVE: BYOL keeps the entropy stable")
    assert "*Criterion (fixed before the run):* " + verdict.criterion in text
    assert "synthetic" in text and text in capsys.readouterr().out


def test_data_banner_warns_on_the_synthetic_fallback(monkeypatch):
    monkeypatch.setattr(story, "preset_data", lambda: presets.PresetData("synthetic", False, "SYNTHETIC"))
    with pytest.warns(UserWarning, match="SYNTHETIC"):
        assert "⚠ Warning" in story.data_banner()
    monkeypatch.setattr(story, "preset_data", lambda: presets.PresetData("cifar10", True, "CIFAR-10 (torchvision)"))
    assert story.data_banner() == "Data: CIFAR-10 (torchvision)."


def test_describe_change_says_only_what_the_epoch_records_say(tmp_path):
    run = make_run(tmp_path / "byol", untrained=0.25, final=0.40)  # knn200 0.25, 0.30, 0.35, 0.40 at epochs 0..3
    assert story.describe_change(run, "knn200", "kNN200", band=0.01) == (
        "kNN200 went from 0.250 (epoch 0) to 0.400 (epoch 3): a rise of 0.150, more than ±0.01 (range 0.250–0.400)"
    )
    # inside the band the change is still given, with its sign: a steady rise is not "no trend"
    assert story.describe_change(run, "knn200", "kNN200", start=2, band=0.06).endswith(
        "a rise of 0.050, within ±0.06 (range 0.350–0.400)"
    )
    falling = make_run(tmp_path / "dino", untrained=0.40, final=0.25)
    assert story.describe_change(falling, "knn200", "kNN").endswith(
        "a fall of 0.150, more than ±0.05 (range 0.250–0.400)"
    )
    assert "fewer than two epoch records" in story.describe_change(run, "knn200", "kNN", start=3)
    # a path back to where it started has no direction to name, only its range
    flat = make_run(tmp_path / "flat", untrained=0.30, final=0.30)
    flat.records[1]["knn200"] = 0.36
    assert story.describe_change(flat, "knn200", "kNN").endswith(
        "no change at three decimals, within ±0.05 (range 0.300–0.360)"
    )


def test_collapse_warnings_become_one_line_per_run_and_others_pass_through(capsys):
    import warnings

    def train():
        for epoch in (2, 3):  # the trainer's wording (erlib/train.py)
            warnings.warn(
                f"dino: entropy at its floor after epoch {epoch} (monitor η = 0.001): the representation has collapsed",
                stacklevel=1,
            )
        warnings.warn("something else", UserWarning, stacklevel=1)
        return "the run"

    with pytest.warns(UserWarning, match="something else") as passed:
        assert story.train_and_count_collapse(train) == "the run"
    assert len(passed) == 1
    out = capsys.readouterr().out
    assert out.strip() == (
        f"dino: the trainer warned that the monitor η fell below the collapse floor "
        f"{C.COLLAPSE_ETA} after epoch(s) 2, 3"
    )


def test_epoch_panel_draws_the_runs_and_their_committed_references(tmp_path, monkeypatch):
    ref = tmp_path / "results" / "cpu-small"
    ref_run = make_run(ref / "seed0" / "byol", untrained=0.30, final=0.45)
    (ref / "seed0" / "byol").mkdir(parents=True)
    (ref / "seed0" / "byol" / "config.json").write_text(json.dumps(ref_run.config))
    (ref / "seed0" / "byol" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ref_run.records))
    (ref / "summary.json").write_text(json.dumps({"label": "CPU reference", "preset": "small"}))
    mine = make_run(tmp_path / "runs" / "byol")
    import erlib.reproduce

    real = erlib.reproduce.reference_runs
    monkeypatch.setattr(erlib.reproduce, "reference_runs", lambda root=None: real(tmp_path / "results"))
    panel = story.epoch_panel(
        [mine], "knn200", "kNN", "accuracy", preset="tiny", hlines=[(0.1, "chance")], names=["mine"], colors=["#123456"]
    )
    assert [s.name for s in panel.series] == ["mine", "CPU reference: BYOL"] and panel.xlabel == "epochs completed"
    assert panel.series[0].color == "#123456" and panel.series[1].y[-1] == pytest.approx(0.45)
    assert panel.hlines == [(0.1, "chance")]


@pytest.mark.parametrize(
    "x,digits,width,text",
    [
        (-1e-7, 3, 0, "0.000"),
        (-0.0, 3, 0, "0.000"),
        (-0.0004, 3, 8, "   0.000"),
        (-0.0006, 3, 0, "-0.001"),
        (0.12345, 2, 6, "  0.12"),
        (2.5, 0, 0, "2"),
    ],
)
def test_fixed_never_prints_a_negative_zero(x, digits, width, text):
    assert story.fixed(x, digits, width) == text


def _eta_run(path: Path, method: str, etas: list[float], er: bool = False) -> Run:
    records = [{"kind": "epoch", "epoch": e, "step": 4 * e, "monitor_eta_online": v} for e, v in enumerate(etas)]
    return Run(path, {"method": method, "er": er, "dataset": "cifar10-jpeg75", "method_options": {}}, records)


def test_f1_expectation_judges_rise_and_plateau_by_their_stated_criteria(tmp_path):
    n = C.C2_MIN_EPOCHS + 1  # epochs 0..C2_MIN_EPOCHS: just long enough to judge a plateau
    # rising methods and every ER variant: the last η above the first by more than 0.02
    assert story.f1_expectation(_eta_run(tmp_path / "s", "simclr", [0.50, 0.53]))[:2] == (
        "rise towards the ceiling",
        True,
    )
    assert story.f1_expectation(_eta_run(tmp_path / "s", "swav", [0.50, 0.519]))[1] is False
    assert story.f1_expectation(_eta_run(tmp_path / "b", "byol", [0.5, 0.4], er=True))[1] is False
    # a plateau: within the band of the epoch-C2_REF_EPOCH value from that epoch on; the transient before is free
    steady = [0.1] * C.C2_REF_EPOCH + [0.60] * (n - C.C2_REF_EPOCH - 1) + [0.60 + C.C2_ETA_BAND - 0.001]
    shape, shows, detail = story.f1_expectation(_eta_run(tmp_path / "b", "byol", steady))
    assert (shape, shows) == ("a transient, then a plateau", True)
    assert detail.endswith(
        f"largest distance from the epoch-{C.C2_REF_EPOCH} value {C.C2_ETA_BAND - 0.001:.3f} (band ±{C.C2_ETA_BAND})"
    )
    drifting = steady[:-1] + [0.60 - C.C2_ETA_BAND - 0.001]
    assert story.f1_expectation(_eta_run(tmp_path / "d", "dino", drifting))[1] is False
    flat_collapsed = [0.02] * n  # steady, but at the collapse floor: not a healthy plateau
    assert story.f1_expectation(_eta_run(tmp_path / "d", "dino", flat_collapsed))[1] is False
    # too short to judge a plateau; DeepCluster-v2 has no stated shape
    assert story.f1_expectation(_eta_run(tmp_path / "b", "byol", steady[:-2])) == (
        "a transient, then a plateau",
        None,
        "",
    )
    assert story.f1_expectation(_eta_run(tmp_path / "c", "deepcluster", steady)) == ("no shape stated", None, "")


def test_preset_targets_reports_the_base_runs_and_the_reference_sets_shown_with_the_preset(tmp_path):
    from erlib import targets

    runs = {
        "byol": make_run(tmp_path / "byol", untrained=0.25, final=0.30),  # +5 points: missed
        "byol-er": make_run(tmp_path / "byol-er", er=True, untrained=0.25, final=0.40),
        "byol@tau_base=0.0": make_run(tmp_path / "x", untrained=0.25, final=0.26),  # not a base run
    }
    root = tmp_path / "results"
    for name, preset, run in [("small-set", "small", runs["byol-er"]), ("full-set", "full", runs["byol"])]:
        (root / name).mkdir(parents=True)
        recorded = {"0": {run.path.name: [c.to_dict() for c in targets.check_run(run.path.name, run)]}}
        summary = {"label": f"{preset} reference", "preset": preset, "targets": recorded}
        (root / name / "summary.json").write_text(json.dumps(summary))
    text = story.preset_targets(runs, "tiny", root=root)
    assert "| byol | kNN gain |" in text and "byol@tau_base" not in text
    missed = "* kNN gain, 1 of 2 runs: byol +5.0 points, 25.0 % → 30.0 %\n"
    assert "**These runs meet 3 of 4 targets.** Missed:\n" + missed in text
    assert "*small reference:* 2 of 2 targets met in every seed (1 seed(s))." in text  # tiny previews small
    assert "full reference" not in text
    synthetic = {"byol": make_run(tmp_path / "byol", dataset="synthetic")}
    assert "**These runs meet 0 of 2 targets.** 2 undecided (synthetic data)." in story.preset_targets(synthetic, "x")


def _write_run(run_dir: Path, run: Run) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(run.config))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in run.records))


def test_reference_claim_runs_read_every_role_from_the_newest_set_that_holds_them(tmp_path):
    root = tmp_path / "results"
    roles = [spec.name for spec in C.CLAIMS["C9"].runs]  # simclr, simclr@bs-small
    for name, exported, final in (("older", "2026-12-01T10:00:00", 0.30), ("newer", "2026-12-02T10:00:00", 0.45)):
        for role in roles:
            _write_run(root / name / "seed0" / role, make_run(root / name / "seed0" / role, "simclr", final=final))
        (root / name / "summary.json").write_text(
            json.dumps({"label": f"set {name}", "preset": "small", "exported": exported})
        )
    runs, source = story.reference_claim_runs("small", "C9", seed=0, root=root)
    assert source == "set newer" and sorted(runs) == sorted(roles)
    assert C.final_knn(runs["simclr@bs-small"]) == pytest.approx(0.45)
    # a set missing one role of the seed is passed over; none holding them names the way out
    (root / "newer" / "seed0" / "simclr@bs-small" / "config.json").unlink()
    assert story.reference_claim_runs("small", "C9", seed=0, root=root)[1] == "set older"
    with pytest.raises(
        ValueError, match=r"no committed reference set of preset 'small' holds every run of C9 for seed 1"
    ):
        story.reference_claim_runs("small", "C9", seed=1, root=root)
    with pytest.raises(ValueError, match=r"batch_runs = 'train'"):
        story.reference_claim_runs("tiny", "C9", seed=0, root=root)
    with pytest.raises(ValueError, match=r"train them instead \(ablation_runs = 'train'\)"):
        story.reference_claim_runs("tiny", "C9", seed=0, root=root, why="ablation_runs = 'train'")


def test_reference_claim_runs_of_the_committed_small_set_are_the_batch_size_runs():
    runs, source = story.reference_claim_runs("small", "C4", seed=0)
    assert "small preset" in source
    small = presets.PRESET_TABLE["small"]
    for method in C.C4_METHODS:
        assert runs[method].config["batch_size"] == small.fields["batch_size"]
        assert runs[f"{method}-er@bs-small"].config["batch_size"] == small.small_batch


def test_claim_panels_draw_what_each_criterion_reads_with_its_reference_lines(tmp_path):
    byol, byol_er = make_run(tmp_path / "byol"), make_run(tmp_path / "byol-er", er=True, final=0.5)
    dino = make_run(tmp_path / "dino", method="dino")
    # C3 is decided method by method: one panel per method and key, the runs' own values, ER dashed
    panels = story.claim_panels("C3", {"byol": byol, "byol-er": byol_er, "dino": dino, "dino-er": None})
    assert [(p.title, p.ylabel.split(" ")[0]) for p in panels] == [
        ("BYOL", "kNN"),
        ("DINO", "kNN"),
        ("BYOL", "η"),
        ("DINO", "η"),
    ]
    knn_byol = panels[0]
    assert [s.name for s in knn_byol.series] == ["BYOL", "BYOL-ER"] and [s.dash for s in knn_byol.series] == [
        False,
        True,
    ]
    assert knn_byol.series[1].y == pytest.approx([r["knn200"] for r in byol_er.records if r["kind"] == "epoch"])
    assert knn_byol.series[0].color != knn_byol.series[1].color
    assert knn_byol.hlines == story.baselines([byol, byol_er])
    assert panels[2].hlines == story.ETA_LINES
    # C6's information panel is H(p̄) − mean H(p) of the predictions, with C6's 1-nat threshold drawn
    swav = Run(
        tmp_path / "swav",
        {"method": "swav", "er": False, "dataset": "cifar10-jpeg75", "method_options": {"num_prototypes": 50}},
        [
            {
                "kind": "epoch",
                "epoch": e,
                "step": e,
                "monitor_marginal_entropy_pred": 3.0 + e,
                "monitor_conditional_entropy_pred": 2.5,
                "monitor_cross_entropy": 4.0 - e,
            }
            for e in range(3)
        ],
    )
    panels = {p.ylabel: p for p in story.claim_panels("C6", {"swav": swav, "deepcluster": None})}
    info = next(p for label, p in panels.items() if label.startswith("I(X;W)"))
    assert info.series[0].y == pytest.approx([0.5, 1.5, 2.5])
    assert (C.C6_MIN_INFORMATION, "1 nat (C6's threshold)") in info.hlines
    ce = next(p for label, p in panels.items() if label.startswith("cross-entropy"))
    assert ce.hlines == [(pytest.approx(math.log(50)), "log K (K = 50)")]
    # nothing logged, nothing drawn
    assert story.claim_panels("C8", {"simclr": None}) == []


@pytest.mark.parametrize(
    "batch_runs, preset, expected",
    [
        ("auto", "small", True),  # the 8 small-batch runs overrun notebook 07's budget on small
        ("auto", "tiny", False),
        ("auto", "full", False),
        ("train", "small", False),
        ("reference", "tiny", True),
    ],
)
def test_batch_runs_option_decides_where_notebook_07_takes_c4s_runs(batch_runs, preset, expected):
    assert story.runs_from_reference(batch_runs, preset, "batch_runs") is expected
    assert story.runs_from_reference(batch_runs, preset, "ablation_runs") is expected  # notebook 05's, same rule


def test_batch_runs_option_refuses_other_values_naming_the_choices():
    with pytest.raises(ValueError, match=r"batch_runs must be 'auto', 'train' or 'reference', got 'refrence'"):
        story.runs_from_reference("refrence", "small", "batch_runs")
    with pytest.raises(ValueError, match=r"ablation_runs must be 'auto', 'train' or 'reference', got True"):
        story.runs_from_reference(True, "small", "ablation_runs")


def test_reference_roles_reads_any_run_folder_of_a_set_and_names_the_way_out(tmp_path):
    root = tmp_path / "results"
    role = "dino-er@entropy_on=embedding"
    _write_run(root / "s" / "seed2" / role, make_run(root / "s" / "seed2" / role, "dino", er=True, final=0.41))
    (root / "s" / "summary.json").write_text(json.dumps({"label": "set s", "preset": "small", "exported": "x"}))
    runs, source = story.reference_roles("small", [role], seed=2, root=root)
    assert source == "set s" and C.final_knn(runs[role]) == pytest.approx(0.41)
    with pytest.raises(ValueError, match=rf"holds {role} for seed 0; train it: dino_er_embedding = True"):
        story.reference_roles("small", [role], seed=0, root=root, why="train it: dino_er_embedding = True")


@pytest.mark.parametrize(
    "value, preset, expected",
    [
        (None, "small", "reference"),  # a seventh run would overrun notebook 05's budget on small
        (None, "tiny", "off"),
        (None, "full", "train"),
        (True, "small", "train"),
        (True, "tiny", "train"),
        (False, "full", "off"),
    ],
)
def test_dino_er_embedding_option_decides_where_notebook_05_takes_the_variant(value, preset, expected):
    assert story.embedding_variant_source(value, preset) == expected


def test_dino_er_embedding_option_refuses_other_values():
    with pytest.raises(ValueError, match=r"dino_er_embedding must be None, True or False, got 'yes'"):
        story.embedding_variant_source("yes", "small")
