"""The notebooks' presets: where their data come from (and the visible fallback), and run reuse by ensure_run."""

from __future__ import annotations

import json

import pytest

from erlib import presets, runs
from erlib.presets import ensure_run, preset_config, preset_data
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
    first = ensure_run(cfg)
    stamp = (first.path / "metrics.jsonl").stat().st_mtime_ns
    again = ensure_run(cfg)
    assert (again.path / "metrics.jsonl").stat().st_mtime_ns == stamp  # reused, not retrained
    changed = ensure_run(_micro(tmp_path, lr=0.2))
    assert changed.path == first.path and changed.config["lr"] == 0.2
    assert [r["epoch"] for r in changed.epoch_records()] == [0, 1]


def test_ensure_run_retrains_a_run_of_an_older_format(tmp_path):
    cfg = _micro(tmp_path)
    run = ensure_run(cfg)
    meta = json.loads((run.path / "meta.json").read_text())
    meta["format"] = runs.FORMAT - 1
    (run.path / "meta.json").write_text(json.dumps(meta))
    assert load_run(ensure_run(cfg).path).meta["format"] == runs.FORMAT


def test_ensure_run_resumes_an_interrupted_run(tmp_path):
    cfg = _micro(tmp_path, epochs=2)
    from erlib.train import train

    def stop_during_the_second_epoch(record):  # 2 steps per epoch: step 3 is in epoch 2, after a checkpoint
        if record["kind"] == "train" and record["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, callback=stop_during_the_second_epoch)
    assert runs.load_checkpoint(tmp_path / cfg.name / runs.CHECKPOINT)["epoch"] == 1
    run = ensure_run(cfg)
    assert [r["epoch"] for r in run.epoch_records()] == [0, 1, 2]
    assert [r["step"] for r in run.train_records()] == [1, 2, 3, 4]
