"""Settings and small tools the tests share."""

from __future__ import annotations

import struct

#: The smallest training run that exercises the whole trainer: two steps of the tiny ConvNet on 64 synthetic images,
#: a training record every step, a monitor batch, no kNN (override ``epochs`` and the rest per test).
MICRO_RUN: dict = dict(
    dataset="synthetic",
    backbone="convnet_tiny",
    train_subset=64,
    batch_size=32,
    epochs=1,
    optimizer="sgd",
    lr=0.05,
    warmup_epochs=0,
    log_every=1,
    monitor_size=32,
    knn_every=0,
    progress=False,
    method_options={"proj_hidden_dim": 32, "proj_dim": 16},
)


def float32(x: float) -> float:
    """``x`` as the trainer logs a metric such as a kNN accuracy (float32), read back as a Python float."""
    return struct.unpack("f", struct.pack("f", x))[0]
