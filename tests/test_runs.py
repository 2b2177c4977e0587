"""Run folders you can trust: nothing loaded from one executes code, damaged checkpoints are caught, a run owns its
folder, records survive a bad line, resume checks what it continues, bad input is refused before any work and the
command line reports errors on one line."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from erlib import runs
from erlib.config import TrainConfig
from erlib.runs import RunInUseError, RunLock, load_checkpoint, load_run, read_records, repair_metrics
from erlib.train import resume_run, train
from tests.helpers import MICRO_RUN

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(MICRO_RUN)


def small(tmp_path: Path, **overrides) -> TrainConfig:
    return TrainConfig(**{**SMALL, "out_dir": str(tmp_path), "name": "run", **overrides})


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One finished 1-epoch run, copied by the tests that damage it."""
    return train(small(tmp_path_factory.mktemp("finished")))


def copy_run(src: Path, dst_root: Path, name: str = "run") -> Path:
    dst = dst_root / name
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "erlib", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


# ------------------------------------------------------------------------------------------ nothing executes code
class Payload:
    """Unpickling this object would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant_payload(run_dir: Path, marker: Path) -> None:
    """Replace the checkpoint by one whose unpickling runs code, with a digest that matches it."""
    state = load_checkpoint(run_dir / runs.CHECKPOINT)
    state["config"] = {"evil": Payload(marker)}
    path = run_dir / runs.CHECKPOINT
    torch.save(state, path)
    import hashlib

    digest = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "previous": None, "epoch": 1, "step": 2}
    (run_dir / runs.DIGEST).write_text(json.dumps(digest))


def test_crafted_checkpoint_is_refused_and_its_code_never_runs(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    marker = tmp_path / "pwned"
    plant_payload(run_dir, marker)
    with pytest.raises(ValueError, match=r"checkpoint .*run/checkpoint.pt holds objects other than tensors"):
        load_checkpoint(run_dir / runs.CHECKPOINT)
    assert not marker.exists()
    for args in (["eval", str(run_dir), "--no-linear"], ["train", "--resume", str(run_dir), "--epochs", "2"]):
        proc = cli(*args)
        assert proc.returncode == 2, proc.stderr
        assert "holds objects other than tensors" in proc.stderr and "Traceback" not in proc.stderr
        assert not marker.exists(), f"{args[0]} ran the payload"


# ------------------------------------------------------------------------------------------------------ integrity
@pytest.mark.parametrize("where", ["middle", "weight"])
def test_a_flipped_byte_in_the_checkpoint_is_caught(finished, tmp_path, where):
    run_dir = copy_run(finished, tmp_path)
    path = run_dir / runs.CHECKPOINT
    data = bytearray(path.read_bytes())
    if where == "middle":
        data[len(data) // 2] ^= 0xFF
    else:  # the exponent byte of one float32 weight: the value changes by many orders of magnitude, the zip stays valid
        tensor = load_checkpoint(path)["method"]["backbone.features.0.weight"]
        weight = bytes(tensor.untyped_storage())[:16]  # the first four float32 values as stored (any memory layout)
        at = bytes(data).index(weight) + 3
        data[at] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"checkpoint .*checkpoint.pt is damaged: its sha256"):
        load_checkpoint(path)


def test_checkpoint_without_digest_is_refused(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    (run_dir / runs.DIGEST).unlink()
    with pytest.raises(ValueError, match="has no readable digest"):
        load_checkpoint(run_dir / runs.CHECKPOINT)


def test_kill_between_digest_and_checkpoint_leaves_a_pair_that_verifies(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    old = load_checkpoint(run_dir / runs.CHECKPOINT)
    old_digest = json.loads((run_dir / runs.DIGEST).read_text())["sha256"]
    # the digest of a newer checkpoint was written, the rename of that checkpoint never happened
    (run_dir / runs.DIGEST).write_text(json.dumps({"sha256": "0" * 64, "previous": old_digest}))
    assert load_checkpoint(run_dir / runs.CHECKPOINT)["step"] == old["step"]


def test_damaged_checkpoint_advice_works(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    ckpt = run_dir / runs.CHECKPOINT
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"damaged.*delete .*checkpoint.pt and .*checkpoint.sha256, then"):
        resume_run(run_dir, epochs=2)
    ckpt.unlink()  # as the message advises
    (run_dir / runs.DIGEST).unlink()
    resume_run(run_dir, epochs=2)
    assert [r["epoch"] for r in load_run(run_dir).epoch_records()] == [0, 1, 2]


# --------------------------------------------------------------------------------------------- exclusive folders
def test_rejected_train_leaves_the_existing_run_untouched(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    before = {f.name: f.read_bytes() for f in run_dir.iterdir()}
    with pytest.raises(FileExistsError, match=r"already holds a run; continue it with .*--resume"):
        train(small(tmp_path, lr=0.5, method="byol"))
    assert {f.name: f.read_bytes() for f in run_dir.iterdir()} == before


def test_a_live_lock_refuses_a_second_training_and_nothing_is_written(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with RunLock(run_dir):
        with pytest.raises(RunInUseError, match=rf"in use by pid {os.getpid()}"):
            train(small(tmp_path))
    assert sorted(p.name for p in run_dir.iterdir()) == []


def test_a_stale_lock_of_a_killed_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    import socket

    (run_dir / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "then"}))
    train(small(tmp_path))
    assert not (run_dir / ".lock").exists() and (run_dir / runs.CHECKPOINT).is_file()


def test_default_names_never_collide(tmp_path):
    cfg = small(tmp_path, name="")
    names = {runs.new_run_name(cfg) for _ in range(50)}
    assert len(names) == 50
    a, b = train(cfg), train(cfg)
    assert a != b and a.parent == b.parent == tmp_path
    assert json.loads((a / "config.json").read_text())["name"] == a.name


def test_two_trainings_started_at_once_into_one_folder(tmp_path):
    args = [
        "train",
        "--dataset",
        "synthetic",
        "--backbone",
        "convnet_tiny",
        "--train-subset",
        "64",
        "--batch-size",
        "32",
        "--epochs",
        "3",
        "--optimizer",
        "sgd",
        "--lr",
        "0.05",
        "--warmup-epochs",
        "0",
        "--log-every",
        "1",
        "--monitor-size",
        "32",
        "--knn-every",
        "0",
        "--no-progress",
        "--opt",
        "proj_hidden_dim=32",
        "--opt",
        "proj_dim=16",
        "--out-dir",
        str(tmp_path),
        "--name",
        "both",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "erlib", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    loser = outs[[p.returncode for p in procs].index(2)][1]
    assert "in use by pid" in loser or "already holds a run" in loser
    steps = [r["step"] for r in load_run(tmp_path / "both").train_records()]
    assert steps == sorted(set(steps)) == list(range(1, 7))


# ---------------------------------------------------------------------------------------------------- no lost records
def test_an_unreadable_line_costs_no_valid_record(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"kind": "train", "step": s, "epoch": s / 4}) for s in range(1, 9)]
    lines.insert(3, "{garbage")
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match=r"1 unreadable line\(s\) set aside in metrics.jsonl.bad"):
        kept = repair_metrics(path, last_step=6)
    assert [r["step"] for r in kept] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in read_records(path)[0]] == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "metrics.jsonl.bad").read_text() == "{garbage\n"


def test_resume_keeps_the_records_after_a_bad_line(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    lines.insert(1, "not json at all")
    metrics.write_text("\n".join(lines) + "\n")
    before = read_records(metrics)[0]
    with pytest.warns(UserWarning, match="set aside"):
        resume_run(run_dir, epochs=2)
    after = load_run(run_dir).records
    assert after[: len(before)] == before and len(after) > len(before)


# ------------------------------------------------------------------------------------------------- resume checks
def test_resume_refuses_an_edited_config_naming_the_fields(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    config = json.loads((run_dir / "config.json").read_text())
    config.update(lr=0.7, seed=5, train_subset=96)
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError,
        match=r"differs from the checkpoint .* in lr: 0.05 there, 0.7 here, seed: 0 there, "
        r"5 here, train_subset: 64 there, 96 here",
    ):
        resume_run(run_dir, epochs=2)


def test_resume_with_other_flags_is_an_error_naming_them(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    proc = cli("train", "--resume", str(run_dir), "--epochs", "4", "--lr", "0.01", "--seed", "2")
    assert proc.returncode == 2 and "not --lr, --seed" in proc.stderr
    assert json.loads((run_dir / "config.json").read_text())["epochs"] == 1


def test_resume_extends_a_run_explicitly(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    assert resume_run(run_dir) == run_dir  # finished: nothing to do
    assert len(load_run(run_dir).epoch_records()) == 2
    resume_run(run_dir, epochs=2)
    run = load_run(run_dir)
    assert run.config["epochs"] == 2 and [r["epoch"] for r in run.epoch_records()] == [0, 1, 2]
    assert load_checkpoint(run.checkpoint)["epoch"] == 2


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_zero(tmp_path, capfd):
    cfg = small(tmp_path, epochs=2)

    def kill_after_two_steps(record):
        if record["kind"] == "train" and record["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, callback=kill_after_two_steps)
    run_dir = tmp_path / "run"
    assert not (run_dir / runs.CHECKPOINT).exists() and not (run_dir / ".lock").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg)
    resume_run(run_dir)
    err = capfd.readouterr().err
    assert "no checkpoint yet" in err and "resuming from step 0" in err
    records = load_run(run_dir).records
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [0, 1, 2]


# --------------------------------------------------------------------------------- validation before any work
@pytest.mark.parametrize(
    "field,value,message",
    [
        ("monitor_size", 96, "monitor_size = 96 is invalid: exceeds the 64 training images"),
        ("knn_train_size", 128, "knn_train_size = 128 is invalid: exceeds the 64 training images"),
        ("knn_test_size", 1000, "knn_test_size = 1000 is invalid: exceeds the 256 test images"),
        ("train_subset", 4096, "train_subset = 4096 is invalid: exceeds the 512 training images"),
        ("knn_k", 100, "knn_k = 100 is invalid: exceeds the 64 images of the kNN bank"),
        ("batch_size", 96, "train_subset = 64 is invalid: must be 0 or at least batch_size"),
    ],
)
def test_sizes_larger_than_the_data_are_refused_before_the_folder_exists(tmp_path, field, value, message):
    extra = {"knn_every": 1} if field == "knn_k" else {}
    with pytest.raises(ValueError, match=message):
        train(small(tmp_path, **{field: value}, **extra))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "overrides,error,message",
    [
        (dict(dataset="imagefolder", data_dir="/nonexistent/folder"), FileNotFoundError, "ImageFolder split not found"),
        (dict(dataset="imagefolder", data_dir=""), ValueError, "needs data_dir"),
        (dict(dataset="cifar10"), FileNotFoundError, "cifar10 .train. not found"),
        (dict(train_subset=0, batch_size=1024), ValueError, "batch_size = 1024 is invalid: exceeds the 512 training"),
    ],
)
def test_failures_after_validation_leave_no_folder(tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        train(small(tmp_path, **overrides))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["../../escape", "/tmp/absolute", "a/b", ".hidden", ".."])
def test_run_names_cannot_leave_out_dir(tmp_path, name):
    with pytest.raises(ValueError, match=r"TrainConfig.name = .* single folder name"):
        small(tmp_path, name=name).validate()


def test_files_of_a_run_share_one_permission(finished):
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in finished.iterdir()}
    umask = os.umask(0)
    os.umask(umask)
    assert set(modes.values()) == {0o666 & ~umask}, modes


# ------------------------------------------------------------------------------------------------ the command line
def test_cli_errors_are_one_line_with_status_2_and_debug_shows_the_traceback(tmp_path):
    proc = cli("train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "none"), "--out-dir", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ImageFolder split not found")
    proc = cli("--debug", "train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "none"))
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_cli_train_help_documents_every_flag():
    proc = cli("train", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for f in TrainConfig.field_info():
        flag = "--opt" if f.name == "method_options" else "--" + f.name.replace("_", "-")
        assert flag in text, flag
        assert f.metadata["help"] and " ".join(f.metadata["help"].split())[:40] in text, f.name
    for group in ("data:", "model and method:", "optimisation:", "schedules:", "evaluation:", "run:"):
        assert group in text
    assert "{simclr,deepcluster,swav,byol,dino}" in text and "{sgd,lars,adamw}" in text


def test_load_run_skips_a_bad_line_with_a_warning(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write("{cut by a kill\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = load_run(run_dir)
    assert any("skipped 1 unreadable line" in str(w.message) for w in caught)
    assert len(run.records) == len(load_run(finished).records)
