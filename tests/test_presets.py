"""The notebooks' presets: where their data come from (and the visible fallback), and run reuse by ensure_run."""

from __future__ import annotations

import json

import pytest

from erlib import presets, runs
from erlib.presets import ensure_run, preset_config, preset_data, run_action
from erlib.runs import load_run


@pytest.fixture
def fresh_data_choice():
    preset_data.cache_clear()
    yield
    preset_data.cache_clear()


def test_the_offline_pack_or_its_cache_is_the_first_choice(fresh_data_choice, monkeypatch):
    monkeypatch.setattr(presets, "_pack_available", lambda: True)
    monkeypatch.setattr(presets, "_torchvision_cifar10", lambda download: pytest.fail("not needed"))
    data = preset_data()
    assert data.dataset == "cifar10-jpeg75" and data.real


def test_torchvision_cifar10_is_fetched_when_the_pack_is_missing(fresh_data_choice, monkeypatch):
    calls = []
    monkeypatch.setattr(presets, "_pack_available", lambda: False)
    monkeypatch.setattr(presets, "_torchvision_cifar10", lambda download: calls.append(download) or download)
    assert preset_data().dataset == "cifar10" and calls == [False, True]  # a local copy first, then a download


def test_synthetic_fallback_warns_and_fits_its_sizes(fresh_data_choice, monkeypatch):
    monkeypatch.setattr(presets, "_pack_available", lambda: False)
    monkeypatch.setattr(presets, "_torchvision_cifar10", lambda download: False)
    with pytest.warns(UserWarning, match="SYNTHETIC data set .* every claim verdict is INCONCLUSIVE"):
        data = preset_data()
    assert data.dataset == "synthetic" and not data.real and "SYNTHETIC" in data.note
    cfg = preset_config("tiny", "byol")
    assert cfg.dataset == "synthetic" and cfg.train_subset == 0 and cfg.knn_test_size == 0
    train_set, test_set = cfg.load_datasets()  # the sizes fit the synthetic set: no error
    assert len(train_set.classes) == 4 and cfg.monitor_size <= len(train_set)


def _micro(tmp_path, **overrides):
    fields = {
        **dict(
            dataset="synthetic",
            train_subset=64,
            batch_size=32,
            epochs=1,
            monitor_size=32,
            knn_every=0,
            log_every=1,
            knn_test_size=0,
        ),
        **overrides,
    }
    return preset_config(
        "tiny", "simclr", runs_dir=str(tmp_path), method_options={"proj_hidden_dim": 32, "proj_dim": 16}, **fields
    )


def test_ensure_run_reuses_a_finished_run_and_replaces_another_configuration(tmp_path):
    cfg = _micro(tmp_path)
    assert run_action(cfg) == ("train", 1)  # an empty folder
    first = ensure_run(cfg)
    stamp = (first.path / "metrics.jsonl").stat().st_mtime_ns
    assert run_action(cfg) == ("reuse", 0)
    again = ensure_run(cfg)
    assert (again.path / "metrics.jsonl").stat().st_mtime_ns == stamp  # reused, not retrained
    assert run_action(_micro(tmp_path, lr=0.2)) == ("retrain", 1)
    assert (first.path / "metrics.jsonl").stat().st_mtime_ns == stamp  # looking changes nothing
    changed = ensure_run(_micro(tmp_path, lr=0.2))
    assert changed.path == first.path and changed.config["lr"] == 0.2
    assert [r["epoch"] for r in changed.epoch_records()] == [0, 1]


def test_ensure_run_retrains_a_run_of_an_older_format(tmp_path):
    cfg = _micro(tmp_path)
    run = ensure_run(cfg)
    meta = json.loads((run.path / "meta.json").read_text())
    meta["format"] = runs.FORMAT - 1
    (run.path / "meta.json").write_text(json.dumps(meta))
    assert run_action(cfg) == ("retrain", 1)
    assert load_run(ensure_run(cfg).path).meta["format"] == runs.FORMAT


def test_run_action_resumes_a_folder_without_checkpoint_and_retrains_one_without_config(tmp_path):
    cfg = _micro(tmp_path, epochs=2)
    run = ensure_run(cfg)
    run.checkpoint.unlink()  # as a run stopped during its first epoch leaves it
    assert run_action(cfg) == ("resume", 2)
    (run.path / "config.json").unlink()
    assert run_action(cfg) == ("retrain", 2)
    ensure_run(cfg)
    assert (run.path / "config.json").is_file() and run_action(cfg) == ("reuse", 0)


def test_ensure_run_resumes_an_interrupted_run(tmp_path):
    cfg = _micro(tmp_path, epochs=2)
    from erlib.train import train

    def stop_during_the_second_epoch(record):  # 2 steps per epoch: step 3 is in epoch 2, after a checkpoint
        if record["kind"] == "train" and record["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, callback=stop_during_the_second_epoch)
    assert runs.load_checkpoint(tmp_path / cfg.name / runs.CHECKPOINT)["epoch"] == 1
    assert run_action(cfg) == ("resume", 1)  # one epoch of two left
    run = ensure_run(cfg)
    assert [r["epoch"] for r in run.epoch_records()] == [0, 1, 2]
    assert [r["step"] for r in run.train_records()] == [1, 2, 3, 4]


def _hold_lock_in_a_live_process(run_dir, seconds: float):
    """A process that lives ``seconds`` and a lock naming it, as the trainer writes it."""
    import socket
    import subprocess
    import sys
    import threading

    proc = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])
    threading.Thread(target=proc.wait, daemon=True).start()  # reaped when it ends, as its own parent would
    holder = {"pid": proc.pid, "host": socket.gethostname(), "since": "now"}
    (run_dir / runs.LOCK).write_text(json.dumps(holder))
    return proc


def test_ensure_run_waits_for_a_live_holder_then_reuses_its_run(tmp_path, capsys):
    cfg = _micro(tmp_path)
    run = ensure_run(cfg)
    stamp = (run.path / "metrics.jsonl").stat().st_mtime_ns
    holder = _hold_lock_in_a_live_process(run.path, 2.0)
    again = ensure_run(cfg)
    assert holder.poll() is not None, "ensure_run returned while the holder was still alive"
    assert f"waiting for {cfg.name}: pid {holder.pid}" in capsys.readouterr().out
    assert again.path == run.path and (run.path / "metrics.jsonl").stat().st_mtime_ns == stamp  # reused


def test_ensure_run_without_wait_refuses_a_run_another_process_is_training(tmp_path, capsys):
    cfg = _micro(tmp_path)
    path = tmp_path / cfg.name
    path.mkdir()
    holder = _hold_lock_in_a_live_process(path, 30.0)
    try:
        with pytest.raises(runs.RunInUseError, match=rf"is in use by pid {holder.pid} .*wait for it to finish"):
            ensure_run(cfg, wait=False)
    finally:
        holder.kill()
        holder.wait()
    assert not runs.holds_run(path) and "waiting" not in capsys.readouterr().out  # refused at once, nothing written


def test_wait_while_in_use_ignores_a_lock_left_by_a_killed_process(tmp_path, capsys):
    holder = _hold_lock_in_a_live_process(tmp_path, 30.0)
    holder.kill()
    holder.wait()
    assert runs.wait_while_in_use(tmp_path) == pytest.approx(0.0, abs=0.5)
    assert capsys.readouterr().out == ""


def test_two_processes_asking_for_the_same_run_train_it_once(tmp_path):
    """Two notebooks side by side on one runs folder: the first trains, the second waits for it and reuses the run
    (one epoch-0 record, not two; neither fails with RunInUseError)."""
    import subprocess
    import sys

    script = tmp_path / "ask.py"
    script.write_text(
        "import sys, time\n"
        "from pathlib import Path\n"
        "from erlib.presets import ensure_run, preset_config\n"
        "role, out = sys.argv[1], Path(sys.argv[2])\n"
        "cfg = preset_config('tiny', 'simclr', runs_dir=str(out), method_options={'proj_hidden_dim': 32, "
        "'proj_dim': 16}, dataset='synthetic', train_subset=64, batch_size=32, epochs=2, monitor_size=32, "
        "knn_every=0, log_every=1, knn_test_size=0)\n"
        "if role == 'second':\n"
        "    while not (out / cfg.name / '.lock').exists():\n"
        "        time.sleep(0.05)\n"
        "slow = (lambda record: time.sleep(0.5)) if role == 'first' else None\n"
        "run = ensure_run(cfg, callback=slow)\n"
        "print('epochs', [r['epoch'] for r in run.epoch_records()])\n"
    )
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), role, str(tmp_path / "runs")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for role in ("second", "first")
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert "waiting for simclr" in outs[0][0] and "waiting" not in outs[1][0]
    assert all("epochs [0, 1, 2]" in out for out, _ in outs)


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="zombie state is read from /proc")
def test_a_lock_held_by_an_exited_but_unreaped_process_is_stale(tmp_path):
    """A trainer that died while its parent has not reaped it yet (a zombie) holds nothing."""
    import socket
    import subprocess
    import time

    proc = subprocess.Popen(["sleep", "0"])
    stat = __import__("pathlib").Path(f"/proc/{proc.pid}/stat")
    while stat.read_text().rpartition(")")[2].split()[0] != "Z":  # exited, not reaped: we have not waited
        time.sleep(0.01)
    (tmp_path / runs.LOCK).write_text(json.dumps({"pid": proc.pid, "host": socket.gethostname(), "since": "now"}))
    assert runs.RunLock(tmp_path).live_holder() is None
    proc.wait()


@pytest.mark.parametrize("preset,small", [("tiny", 64), ("small", 32)])
def test_a_small_batch_run_takes_the_presets_small_batch_and_scales_the_learning_rate(preset, small, tmp_path):
    from erlib.claims import RunSpec
    from erlib.presets import spec_config

    base = spec_config(preset, RunSpec("simclr"), tmp_path)
    cfg = spec_config(preset, RunSpec("simclr", batch="small"), tmp_path)
    assert (base.batch_size, cfg.batch_size) == (128, small) and cfg.name == "simclr@bs-small"
    assert cfg.lr == pytest.approx(base.lr * small / 128, rel=1e-15)
