"""Combining claim verdicts over seeds, exporting reference runs (no checkpoints) and reading them back."""

from __future__ import annotations

import json

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


def test_export_copies_runs_without_checkpoints_and_records_their_verdicts(tmp_path):
    src = tmp_path / "runs"
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
