"""Learning test on the real data: the tiny ConvNet on 2,000 images of the offline CIFAR-10 pack (JPEG q75 copy).

Measured on the 2-core CPU (4 epochs, batch 128, SGD lr 0.1, kNN k=200 t=0.1 on 1,000 test images): SimCLR reached
0.254 → 0.271 and BYOL-ER 0.252 → 0.294 over epochs 1–4 (this configuration with epochs=4, knn_every=1),
chance being 0.10. The threshold keeps a wide margin under those figures.
"""

from __future__ import annotations

import pytest

from erlib.data import CIFAR10_PACK, find_file
from erlib.runs import load_run
from erlib.train import TrainConfig, train

HEADS = {"proj_hidden_dim": 512, "proj_dim": 128}


@pytest.mark.slow
@pytest.mark.parametrize("method,er,extra", [("simclr", False, {}), ("byol", True, {"pred_hidden_dim": 512})])
def test_tiny_convnet_learns_on_real_cifar10(tmp_path, method, er, extra):
    find_file(CIFAR10_PACK)  # a clear error if the pack is missing
    cfg = TrainConfig(
        method=method,
        er=er,
        backbone="convnet_tiny",
        train_subset=2000,
        epochs=3,
        batch_size=128,
        optimizer="sgd",
        lr=0.1,
        warmup_epochs=0,
        knn_every=3,
        knn_test_size=1000,
        log_every=5,
        progress=False,
        out_dir=str(tmp_path),
        name=method,
        method_options={**HEADS, **extra},
    )
    run = load_run(train(cfg))
    final = [r for r in run.records if r["kind"] == "epoch"][-1]
    assert final["knn200"] > 0.20, final  # chance: 0.10
    assert final["monitor_eta_online"] > 0.05  # no collapse
