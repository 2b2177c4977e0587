"""The benchmark runs on the CPU at smoke size and reports every field (speed itself is measured, not tested)."""

from __future__ import annotations

import json
import math

import pytest

from erlib.__main__ import main
from erlib.bench import RESULT_FIELDS, BenchConfig, format_table, run_benchmark


@pytest.mark.slow
def test_benchmark_smoke_reports_every_field(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--methods", "simclr,dino", "--backbone", "convnet_tiny", "--dataset", "synthetic",
                 "--batch-size", "32", "--warmup", "1", "--steps", "1", "--repeats", "2", "--workers", "1",
                 "--small-heads", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [(r["method"], r["er"]) for r in report["results"]] == [("simclr", False), ("simclr", True),
                                                                    ("dino", False), ("dino", True)]
    for row in report["results"]:
        assert set(RESULT_FIELDS) <= set(row)
        for key in ("e2e_images_per_s", "model_only_images_per_s", "baseline_images_per_s", "step_tflop"):
            assert row[key] > 0 and math.isfinite(row[key]), key
        assert row["e2e_over_model_only"] == pytest.approx(row["e2e_images_per_s"] / row["model_only_images_per_s"])
        assert row["peak_memory_gb"] is None  # CPU: no device memory counter
    assert {"device", "torch", "python"} <= set(report["environment"])
    table = capsys.readouterr().out
    assert "simclr-er" in table and "img/s baseline" in table


def test_deepcluster_bench_without_baseline():
    cfg = BenchConfig(methods=["deepcluster"], er_variants=False, backbone="convnet_tiny", dataset="synthetic",
                      batch_size=32, warmup=0, steps=1, repeats=1, baseline=False, small_heads=True)
    report = run_benchmark(cfg, progress=False)
    row = report["results"][0]
    assert row["baseline_images_per_s"] is None and row["e2e_images_per_s"] > 0
    assert "deepcluster" in format_table(report)


@pytest.mark.parametrize("field,value", [("methods", ["moco"]), ("batch_size", 1), ("steps", 0),
                                         ("backbone", "vgg")])
def test_bad_bench_config(field, value):
    with pytest.raises(ValueError, match=field):
        BenchConfig(**{field: value}).validate()
