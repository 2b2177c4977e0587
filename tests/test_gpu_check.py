"""The prepared GPU check runs end to end on the CPU in dry-run mode and leaves what the device would send back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from erlib.reproduce import reference_runs
from erlib.runs import load_run

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_dry_run_leaves_at_most_eight_files_and_a_reference_set(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "GPU_CHECK_DRY": "1", "OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["bench.json", "log.txt", "results.tar.gz", "summary.md"]
    bench = json.loads((out / "bench.json").read_text())
    assert {r["method"] for r in bench["results"]} == {"simclr", "byol"}
    summary = (out / "summary.md").read_text()
    for role in ("simclr", "byol", "byol@tau_base=0.0", "byol-er@tau_base=0.0"):
        assert f"| {role} | 1 |" in summary, role
    assert "C2 INCONCLUSIVE" in summary and "synthetic" in summary  # dry-run data can decide nothing
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
        assert not [n for n in names if n.endswith("checkpoint.pt")]
        tar.extractall(tmp_path / "unpacked", filter="data")
    results = tmp_path / "results"
    (tmp_path / "unpacked" / "reference").rename(results / "cpu-dry" if results.mkdir() is None else None)
    [ref] = reference_runs(results)
    assert ref["label"].startswith("cpu (dry run) reference") and set(ref["verdicts"]) == {"0"}
    run = load_run(results / "cpu-dry" / "seed0" / "byol-er@tau_base=0.0")
    assert run.config["er"] is True and run.config["method_options"]["tau_base"] == 0.0
    assert [r["epoch"] for r in run.epoch_records()] == [0, 1]
