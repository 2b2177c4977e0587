"""The untrained network's kNN200 accuracy two ways, for the run folders given:

* as the trainer records it at epoch 0 (eval mode, BatchNorm with its initial running statistics, mean 0 and
  variance 1, so nearly the identity), and
* with BatchNorm's running statistics first estimated on training images (a cumulative average over up to 20
  batches of 256 un-augmented images, no gradient step), which is how every later epoch's network is normalised.

The difference is how much of a run's "gain over the untrained network" is BatchNorm adapting rather than learning.
Same bank, queries, k and temperature as the trainer's kNN; the network is rebuilt with the run's seed, as the
trainer builds it.

    python scripts/untrained_bn_baseline.py results/cpu-small-3seeds-2026-12-03/seed0/simclr
"""

from __future__ import annotations

import sys

import torch

from erlib.augment import CIFAR_MEAN, CIFAR_STD, to_float
from erlib.evaluate import extract_features, knn_accuracy
from erlib.runs import load_run

BATCHES, BATCH = 20, 256


def knn200(method, bank, queries, classes: int, temperature: float, amp) -> float:
    f_bank = extract_features(method.features, bank.images, CIFAR_MEAN, CIFAR_STD, amp_dtype=amp, channels_last=True)
    f_query = extract_features(
        method.features, queries.images, CIFAR_MEAN, CIFAR_STD, amp_dtype=amp, channels_last=True
    )
    return knn_accuracy(f_bank, bank.labels, f_query, queries.labels, classes, 200, temperature)


def main(run_dirs: list[str]) -> int:
    if not run_dirs:
        print(__doc__)
        return 2
    for run_dir in run_dirs:
        run = load_run(run_dir)
        cfg = run.config
        train_set, test_set = run.datasets(torch.device("cpu"))
        torch.manual_seed(cfg["seed"])  # as the trainer does before it builds the method
        method = run.build_method(torch.device("cpu"), weights=False, num_samples=len(train_set))
        method = method.eval().to(memory_format=torch.channels_last)
        bank = train_set.subset(cfg["knn_train_size"], seed=1) if cfg.get("knn_train_size") else train_set
        queries = test_set.subset(cfg["knn_test_size"], seed=2) if cfg.get("knn_test_size") else test_set
        amp = torch.bfloat16 if run.meta.get("execution", {}).get("precision") == "bf16" else None
        classes, temperature = len(train_set.classes), cfg.get("knn_temperature", 0.1)
        as_recorded = knn200(method, bank, queries, classes, temperature, amp)
        norms = [m for m in method.backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches below
            m.train()
        order = torch.randperm(len(train_set.images), generator=torch.Generator().manual_seed(0))[: BATCHES * BATCH]
        mean, std = torch.tensor(CIFAR_MEAN)[None, :, None, None], torch.tensor(CIFAR_STD)[None, :, None, None]
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp is not None):
            for i in range(0, len(order), BATCH):
                x = (to_float(train_set.images[order[i : i + BATCH]]) - mean) / std
                method.backbone(x.contiguous(memory_format=torch.channels_last))
        method.eval()
        recalibrated = knn200(method, bank, queries, classes, temperature, amp)
        recorded = run.epoch_records()[0].get("knn200")
        print(
            f"{run_dir}: epoch-0 record {recorded:.4f}; recomputed as recorded {as_recorded:.4f}; "
            f"BatchNorm statistics from {len(order)} training images {recalibrated:.4f} "
            f"({100 * (recalibrated - as_recorded):+.1f} points)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
