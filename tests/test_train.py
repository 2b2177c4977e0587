"""The training engine: config validation, resume after SIGKILL, corrupt checkpoints, non-finite losses, the CLI,
and a learning test on the real (offline) CIFAR-10 pack."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from erlib.methods import CONTINUOUS_METRICS
from erlib.runs import load_checkpoint, load_run
from erlib.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
FAST = dict(
    dataset="synthetic",
    backbone="convnet_tiny",
    batch_size=64,
    epochs=2,
    optimizer="sgd",
    lr=0.05,
    warmup_epochs=0,
    log_every=2,
    monitor_size=64,
    knn_k=20,
    progress=False,
    method_options={"proj_hidden_dim": 64, "proj_dim": 32},
)


def fast(tmp_path: Path, **overrides) -> TrainConfig:
    return TrainConfig(**{**FAST, "out_dir": str(tmp_path), **overrides})


BAD_CONFIGS = [
    ("method", "mocov9"),
    ("backbone", "vgg16"),
    ("dataset", "imagenet22k"),
    ("optimizer", "adam"),
    ("precision", "fp8"),
    ("augmentation", "randaugment"),
    ("epochs", 0),
    ("batch_size", 1),
    ("log_every", 0),
    ("monitor_size", 1),
    ("knn_k", 0),
    ("lr", 0.0),
    ("lr", float("nan")),
    ("weight_decay", -1e-4),
    ("momentum", 1.0),
    ("warmup_epochs", 500.0),
    ("min_lr", 10.0),
    ("grad_clip", -1.0),
    ("knn_temperature", 0.0),
    ("train_subset", 10),
    ("local_crops", -1),
    ("device", "tpu"),
    ("final_weight_decay", -0.1),
    ("method_options", {"er": True}),
    ("epochs", 2.5),
    ("final_weight_decay", float("inf")),
    ("local_crops", 2),
    ("name", "../x"),
    ("device", "cuda:x"),
    ("momentum", float("nan")),
]


@pytest.mark.parametrize("field,value", BAD_CONFIGS, ids=[f"{f}={v!r}" for f, v in BAD_CONFIGS])
def test_bad_config_raises_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field} = .* is invalid: "):
        TrainConfig(**{field: value}).validate()


def test_bad_method_option_names_the_option():
    with pytest.raises(ValueError, match="tau_bse"):
        TrainConfig(method="byol", method_options={"tau_bse": 0.9}).validate()
    with pytest.raises(ValueError, match="temperature"):
        TrainConfig(method="simclr", method_options={"temperature": -1.0}).validate()


def test_unknown_config_field_in_json():
    with pytest.raises(ValueError, match=r"unknown TrainConfig field\(s\) \['batchsize'\]"):
        TrainConfig.from_dict({"batchsize": 3})


def test_train_writes_run_folder_with_metrics_and_checkpoint(tmp_path):
    run_dir = train(fast(tmp_path, method="byol", er=True, name="byol-er"))
    run = load_run(run_dir)
    assert run.config["method"] == "byol" and run.config["er"] is True
    train_records, epochs = run.train_records(), run.epoch_records()
    assert [r["epoch"] for r in epochs] == [0, 1, 2] and [r["step"] for r in epochs] == [0, 8, 16]
    # "epoch" means epochs completed in every record: fractional in train records (log_every = 2 of 8 steps)
    assert [r["epoch"] for r in train_records] == [s / 8 for s in range(2, 17, 2)]
    for key in ("loss", *CONTINUOUS_METRICS):
        assert all(math.isfinite(r[key]) for r in train_records), key
        assert key == "loss" or all(math.isfinite(r[f"monitor_{key}"]) for r in epochs), key
    assert all(r["knn20"] > 0.25 for r in epochs[1:]), "the synthetic classes are learnable: kNN beats chance (1/4)"
    ckpt = load_checkpoint(run.checkpoint)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 2 * (512 // 64)
    assert any(k.startswith("target.") for k in ckpt["method"])  # the EMA teacher is in the checkpoint
    assert run.meta["format"] == 2 and run.meta["device"] == "cpu" and run.meta["torch"] == torch.__version__


def test_existing_run_is_not_overwritten(tmp_path):
    train(fast(tmp_path, epochs=1, name="once", knn_every=0))
    with pytest.raises(FileExistsError, match="resume"):
        train(fast(tmp_path, epochs=1, name="once", knn_every=0))


def test_truncated_checkpoint_gives_clear_error(tmp_path):
    run_dir = train(fast(tmp_path, epochs=1, name="cut", knn_every=0))
    ckpt = run_dir / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"checkpoint .*cut/checkpoint.pt is damaged"):
        train(fast(tmp_path, epochs=2, name="cut", knn_every=0), resume=True)


def test_non_finite_loss_stops_with_step_and_checkpoint(tmp_path):
    cfg = fast(tmp_path, name="nan", lr=1e30, epochs=3, knn_every=0, log_every=1)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step \d+ .*checkpoint"):
        train(cfg)


def _cli(*args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "erlib", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


RESUME_ARGS = [
    "train",
    "--dataset",
    "synthetic",
    "--backbone",
    "convnet-tiny".replace("-", "_"),
    "--method",
    "swav",
    "--opt",
    "num_prototypes=16",
    "--opt",
    "proj_hidden_dim=32",
    "--opt",
    "proj_dim=16",
    "--batch-size",
    "32",
    "--epochs",
    "5",
    "--optimizer",
    "lars",
    "--lr",
    "0.2",
    "--warmup-epochs",
    "1",
    "--log-every",
    "4",
    "--monitor-size",
    "32",
    "--knn-k",
    "20",
    "--no-progress",
    "--seed",
    "3",
]


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    full = _cli(*RESUME_ARGS, "--out-dir", str(tmp_path), "--name", "full")
    killed = _cli(*RESUME_ARGS, "--out-dir", str(tmp_path), "--name", "killed")
    ckpt, metrics = tmp_path / "killed" / "checkpoint.pt", tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and killed.poll() is None:  # kill mid-epoch, after the first checkpoint
        if ckpt.exists() and metrics.exists():
            records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            done = load_checkpoint(ckpt)["epoch"] if records else 0
            if any(r["kind"] == "train" and r["epoch"] == done for r in records):
                break
        time.sleep(0.05)
    assert killed.poll() is None, "the run finished before it could be killed; make it longer"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    out = _cli("train", "--resume", str(tmp_path / "killed")).communicate(timeout=300)[0]
    assert "resuming from epoch" in out
    assert full.wait(timeout=300) == 0, full.stdout.read()

    def comparable(name):
        return [{k: v for k, v in r.items() if k != "images_per_s"} for r in load_run(tmp_path / name).records]

    resumed, uninterrupted = comparable("killed"), comparable("full")
    assert len(resumed) == len(uninterrupted), out
    assert resumed == uninterrupted


def test_cli_train_and_eval(tmp_path):
    proc = _cli(
        "train",
        "--dataset",
        "synthetic",
        "--backbone",
        "convnet_tiny",
        "--method",
        "dino",
        "--opt",
        "out_dim=32",
        "--opt",
        "hidden_dim=32",
        "--opt",
        "bottleneck_dim=16",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--optimizer",
        "adamw",
        "--lr",
        "1e-3",
        "--warmup-epochs",
        "0",
        "--knn-k",
        "20",
        "--no-progress",
        "--out-dir",
        str(tmp_path),
        "--name",
        "d",
    )
    assert proc.wait(timeout=300) == 0, proc.stdout.read()
    proc = _cli("eval", str(tmp_path / "d"))
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    result = json.loads((tmp_path / "d" / "eval.json").read_text())
    assert {"knn200", "knn20", "linear", "rankme", "protocol"} <= set(result)
    assert result["epoch"] == 1 and result["dataset"] == "synthetic"


def test_cli_rejects_bad_flag_value(tmp_path):
    proc = _cli("train", "--batch-size", "1", "--out-dir", str(tmp_path))
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2 and out.strip() == (
        "error: TrainConfig.batch_size = 1 is invalid: must be an integer >= 2"
    )
    assert not any(tmp_path.iterdir())


def test_cli_stops_quietly_when_the_reader_of_its_output_leaves():
    proc = subprocess.Popen(
        [sys.executable, "-m", "erlib", "methods"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    proc.stdout.close()  # as `| head` does once it has read enough; here before a line is written
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and err == ""  # 128 + SIGPIPE, and no traceback or "error:" line


DDP_ARGS = [
    "train",
    "--dataset",
    "synthetic",
    "--backbone",
    "convnet_tiny",
    "--batch-size",
    "64",
    "--epochs",
    "1",
    "--optimizer",
    "lars",
    "--lr",
    "0.1",
    "--warmup-epochs",
    "0",
    "--log-every",
    "1",
    "--monitor-size",
    "64",
    "--knn-k",
    "20",
    "--no-progress",
    "--opt",
    "proj_hidden_dim=32",
    "--opt",
    "proj_dim=16",
    "--precision",
    "fp32",
    "--no-channels-last",
]  # the same numerics in both runs (auto is a timing)


@pytest.mark.slow
@pytest.mark.parametrize("method", [["--method", "simclr"], ["--method", "byol", "--er"]], ids=["simclr", "byol-er"])
def test_two_process_training_matches_one_process(tmp_path, method):
    from tests.conftest import torchrun

    args = [*DDP_ARGS, *method, "--out-dir", str(tmp_path)]
    torchrun("-m", "erlib", *args, "--name", "ddp", nproc=2)
    single = _cli(*args, "--name", "single")
    assert single.wait(timeout=300) == 0, single.stdout.read()
    ddp, one = load_run(tmp_path / "ddp"), load_run(tmp_path / "single")
    keys = ["loss", "entropy_online", "reconstruction", "er_bound"]
    assert len(ddp.records) == len(one.records)
    # the first steps agree to float32 rounding; later ones drift apart (summation order and the kernels' alignment-
    # dependent vectorisation differ between the processes, amplified by LARS): a few percent by step 8
    for a, b in zip(ddp.records, one.records):
        tol = dict(rel=1e-4, abs=1e-5) if b["step"] <= 2 else dict(rel=5e-2, abs=5e-3)
        for key in keys + [f"monitor_{k}" for k in keys[1:]]:
            if key in b:
                assert a[key] == pytest.approx(b[key], **tol), (key, a["step"])
    pa, pb = load_checkpoint(ddp.checkpoint)["method"], load_checkpoint(one.checkpoint)["method"]
    for name, value in pb.items():
        if value.is_floating_point():
            torch.testing.assert_close(pa[name], value, rtol=2e-2, atol=2e-3, msg=name)


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_epoch_zero_monitor_measures_the_network_as_it_trains(tmp_path, method):
    """At initialisation the monitor batch's η equals the train-mode forward's η on the same views (not the eval-mode
    value, whose BatchNorm running statistics have not adapted yet)."""
    from erlib.augment import ShardedGenerator, make_views, recipe_views

    # fp32 NCHW, as the reference forward below: this test is about BatchNorm's statistics, not the autocast path
    cfg = fast(tmp_path, method=method, epochs=1, name=method, knn_every=0, precision="fp32", channels_last=False)
    run = load_run(train(cfg))
    record = run.epoch_records()[0]
    assert record["epoch"] == 0 and record["step"] == 0
    torch.manual_seed(cfg.seed)  # the trainer's seed before it builds the method: the same initial weights
    train_set, _ = cfg.load_datasets()
    net = cfg.build_method(len(train_set))
    idx = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(12345))[: cfg.monitor_size]
    recipes = recipe_views("byol" if method == "byol" else "simclr", size=32)
    views = make_views(train_set.images[idx], recipes[:2], ShardedGenerator(torch.Generator().manual_seed(2024)))
    with torch.no_grad():
        train_mode = net.train()(views, index=idx).metrics["eta_online"].item()
        eval_mode = net.eval()(views, index=idx).metrics["eta_online"].item()
    assert record["monitor_eta_online"] == pytest.approx(train_mode, abs=1e-5)
    assert abs(eval_mode - train_mode) > 0.05, "the eval-mode value must differ, or this test proves nothing"
    assert 0 < record["monitor_eta_features"] <= 1
