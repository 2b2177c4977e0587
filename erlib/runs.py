"""The run folder format: ``runs/<name>/`` with ``config.json``, ``metrics.jsonl`` and ``checkpoint.pt``.

``metrics.jsonl`` holds one JSON object per line; each has ``kind`` ("train" every N steps, "epoch" once per epoch
with the monitor-batch ER metrics and kNN accuracy), ``epoch`` and ``step``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["Run", "load_run", "atomic_torch_save", "load_checkpoint", "append_jsonl"]


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename: never a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a checkpoint; a truncated or corrupt file raises a ValueError naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # zip / pickle errors of a damaged file
        raise ValueError(f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}: {exc}); "
                         "delete it to restart the run from scratch") from exc


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


@dataclass
class Run:
    """A run folder read back: its config, its metric records and where its checkpoint is."""

    path: Path
    config: dict
    records: list[dict]

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    def series(self, key: str, kind: str = "epoch") -> tuple[list[float], list[float]]:
        """(epochs or steps, values) of metric ``key`` in records of ``kind``."""
        xs, ys = [], []
        for r in self.records:
            if r.get("kind") == kind and key in r:
                xs.append(r["epoch"] if kind == "epoch" else r["step"])
                ys.append(r[key])
        return xs, ys


def load_run(path: str | Path) -> Run:
    """Read a run folder; raise FileNotFoundError naming the folder if it is not one."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a run folder (no config.json)")
    records = []
    metrics = path / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut by a kill: everything before it is valid
    return Run(path, json.loads(config_file.read_text()), records)
