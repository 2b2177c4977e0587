"""The benchmark's figures mean what they say: rates and ratios from a driven clock, FLOPs against a hand count,
paths resolved as erlib.accel decides, and a real CPU run end to end (speed itself is measured, not tested)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from erlib import accel, bench
from erlib.__main__ import main
from erlib.bench import RESULT_FIELDS, BenchConfig, count_step_flops, format_table, run_benchmark
from erlib.methods.common import MethodOutput

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(backbone="convnet_tiny", dataset="synthetic", small_heads=True, device="cpu")


def test_rates_and_ratios_follow_the_clock(monkeypatch):
    """With a clock that advances 10 ms per training step and 5 ms per augmentation call, and nowhere else, every
    rate and ratio is known exactly: end to end = augmentation + step, model only = step, baseline = step."""
    clock = {"t": 0.0}
    real_step, real_views = bench.train_step, bench.make_views

    def step(*args, **kwargs):
        clock["t"] += 0.010
        return real_step(*args, **kwargs)

    def views(*args, **kwargs):
        clock["t"] += 0.005
        return real_views(*args, **kwargs)

    monkeypatch.setattr(bench, "_clock", lambda: clock["t"])
    monkeypatch.setattr(bench, "train_step", step)
    monkeypatch.setattr(bench, "make_views", views)
    cfg = BenchConfig(
        methods=["simclr"],
        er_variants=False,
        batch_size=16,
        warmup=1,
        steps=3,
        repeats=2,
        baseline_workers=0,
        paths=["fp32", "fp32-cl"],
        **SMALL,
    )
    report = run_benchmark(cfg, progress=False)
    assert [(r["path"], r["precision"], r["channels_last"]) for r in report["results"]] == [
        ("fp32", "fp32", False),
        ("fp32-cl", "fp32", True),
    ]
    for row in report["results"]:
        assert set(RESULT_FIELDS) <= set(row)
        assert row["e2e_images_per_s"] == pytest.approx(16 / 0.015)  # source images, not views
        assert row["model_only_images_per_s"] == pytest.approx(16 / 0.010)
        assert row["baseline_images_per_s"] == pytest.approx(16 / 0.010)
        assert row["e2e_over_model_only"] == pytest.approx(2 / 3)
        assert row["e2e_over_baseline"] == pytest.approx(2 / 3)
        assert row["e2e_over_reference"] == pytest.approx(1.0)
        assert row["e2e_tflops"] == pytest.approx(row["step_tflop"] / 0.015)
        assert row["model_only_tflops"] == pytest.approx(row["step_tflop"] / 0.010)
        assert row["peak_memory_gb"] is None and row["baseline_peak_memory_gb"] is None  # CPU: no counter
    assert report["config"]["paths"] == ["fp32", "fp32-cl"]


class LinearMethod(nn.Module):
    """The smallest thing the training step accepts: one linear layer, loss = sum over views of mean(y^2)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.fc = nn.Linear(d_in, d_out)

    def forward(self, views, index=None):
        loss = sum(self.fc(v).square().mean() for v in views)
        return MethodOutput(loss, {"loss_copy": loss.detach()})

    def update(self, progress: float) -> None:
        pass


def test_flop_count_of_a_linear_model_matches_the_hand_count():
    b, d_in, d_out = 8, 5, 3
    method = LinearMethod(d_in, d_out)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    views = [torch.randn(b, d_in), torch.randn(b, d_in)]
    # per view: forward y = x W^T (2 b d_in d_out) and the weight gradient g^T x (2 b d_in d_out); the inputs need
    # no gradient, biases and the loss are not matrix products
    assert count_step_flops(method, method, optimizer, views, None) == 2 * 2 * (2 * b * d_in * d_out)
    assert count_step_flops(method, method, optimizer, views[:1], None) == 2 * (2 * b * d_in * d_out)


def test_flop_count_of_one_convolution_matches_the_hand_count():
    class ConvMethod(LinearMethod):
        def __init__(self):
            nn.Module.__init__(self)
            self.fc = nn.Conv2d(3, 4, 3, padding=1, bias=False)

    method = ConvMethod()
    views = [torch.randn(2, 3, 6, 6)]
    per_pass = 2 * (2 * 6 * 6) * 4 * (3 * 3 * 3)  # 2 (b H W) C_out (C_in k k)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    assert count_step_flops(method, method, optimizer, views, None) == 2 * per_pass  # forward + weight gradient


def test_auto_path_is_what_accel_chooses():
    dtype, cl = bench.resolve_path("auto", torch.device("cpu"))
    assert dtype is accel.choose_precision("cpu") and cl is accel.choose_channels_last("cpu")
    assert bench.resolve_path("fp32", torch.device("cpu")) == (None, False)
    assert bench.resolve_path("bf16-cl", torch.device("cpu")) == (torch.bfloat16, True)


@pytest.mark.slow
def test_benchmark_on_the_cpu_reports_old_and_new_path_for_every_method(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "--methods",
                "simclr,dino",
                "--backbone",
                "convnet_tiny",
                "--dataset",
                "synthetic",
                "--batch-size",
                "32",
                "--warmup",
                "1",
                "--steps",
                "2",
                "--repeats",
                "3",
                "--workers",
                "1",
                "--small-heads",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert [(r["method"], r["er"], r["path"]) for r in report["results"]] == [
        (m, er, p) for m in ("simclr", "dino") for er in (False, True) for p in ("fp32", "auto")
    ]
    auto = ("bf16" if accel.choose_precision("cpu") else "fp32", accel.choose_channels_last("cpu"))
    for row in report["results"]:
        assert set(RESULT_FIELDS) <= set(row)
        for key in ("e2e_images_per_s", "model_only_images_per_s", "baseline_images_per_s", "step_tflop"):
            assert row[key] > 0 and math.isfinite(row[key]), key
        # the model-only step is the ceiling of the end-to-end one (generous: two cores shared with others)
        assert row["model_only_images_per_s"] > 0.6 * row["e2e_images_per_s"], row
        assert row["e2e_over_model_only"] == pytest.approx(row["e2e_images_per_s"] / row["model_only_images_per_s"])
        if row["path"] == "fp32":
            assert (row["precision"], row["channels_last"], row["e2e_over_reference"]) == ("fp32", False, 1.0)
        else:
            assert (row["precision"], row["channels_last"]) == auto
    # the paths share one step: the same FLOPs
    assert len({(r["method"], r["er"], r["step_tflop"]) for r in report["results"]}) == 4
    assert {"device", "torch", "python", "accel"} <= set(report["environment"])
    assert report["environment"]["accel"]["precision"] == auto[0]
    table = capsys.readouterr().out
    assert "simclr-er" in table and "img/s baseline" in table and "x ref" in table


def test_deepcluster_bench_without_baseline():
    cfg = BenchConfig(
        methods=["deepcluster"],
        er_variants=False,
        batch_size=32,
        warmup=0,
        steps=1,
        repeats=1,
        baseline=False,
        paths=["fp32"],
        **SMALL,
    )
    report = run_benchmark(cfg, progress=False)
    row = report["results"][0]
    assert row["baseline_images_per_s"] is None and row["e2e_images_per_s"] > 0
    assert "deepcluster" in format_table(report)


@pytest.mark.parametrize(
    "field,value",
    [
        ("methods", ["moco"]),
        ("methods", []),
        ("batch_size", 1),
        ("steps", 0),
        ("repeats", 0),
        ("warmup", -1),
        ("backbone", "vgg"),
        ("paths", ["fp16"]),
        ("paths", []),
        ("paths", ["fp32", "fp32"]),
    ],
)
def test_bad_bench_config(field, value):
    with pytest.raises(ValueError, match=f"BenchConfig.{field}"):
        BenchConfig(**{field: value}).validate()


def test_cli_paths_choose_what_is_measured_and_bad_ones_are_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = [
        "bench",
        "--methods",
        "simclr",
        "--no-er",
        "--backbone",
        "convnet_tiny",
        "--dataset",
        "synthetic",
        "--batch-size",
        "16",
        "--warmup",
        "0",
        "--steps",
        "1",
        "--repeats",
        "1",
        "--no-baseline",
        "--small-heads",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    assert main([*args, "--paths", "bf16-cl,fp32"]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["path"], r["precision"], r["channels_last"]) for r in rows] == [
        ("bf16-cl", "bf16", True),
        ("fp32", "fp32", False),
    ]
    out.unlink()
    assert main([*args, "--paths", "fp64"]) == 2
    assert "BenchConfig.paths = ['fp64'] is invalid" in capsys.readouterr().err and not out.exists()
