"""The run folder: its format, and every read and write of it.

``runs/<name>/`` holds

* ``config.json`` — the :class:`~erlib.config.TrainConfig`, written once the run has claimed its folder;
* ``meta.json`` — who made it: the record format, erlib's version and commit, Python / torch versions, host, device,
  the command line and the start time;
* ``metrics.jsonl`` — one JSON record per line. ``kind="train"`` records (every ``log_every`` steps) carry the
  training-batch metrics, ``step`` (optimiser steps done) and ``epoch`` = epochs completed as a float
  (``step / steps_per_epoch``). ``kind="epoch"`` records carry the monitor-batch metrics (``monitor_*``) and the kNN
  accuracies, with ``epoch`` = epochs completed: there is one at epoch 0 (the untrained network, before the first
  step) and one after every epoch. ``epoch`` has this one meaning, epochs completed, in every record;
* ``checkpoint.pt`` and ``checkpoint.sha256`` — model, optimiser, EMA teacher, method state, RNG states, step and the
  config, with a digest written before it (see :func:`save_checkpoint`);
* ``.lock`` — while a process trains the run: its pid, host and start time. Another trainer is refused; a reader
  that needs the finished run can wait for it (:func:`wait_while_in_use`, what the notebooks' ``ensure_run`` does).

A run folder is something people share, so reading one never executes code: checkpoints are loaded with
``torch.load(weights_only=True)`` (tensors and plain Python data only) after their digest is checked, JSON is parsed
as JSON, and nothing else is read.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import secrets
import socket
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from erlib.config import TrainConfig
from erlib.fileio import atomic_write, atomic_write_text

if TYPE_CHECKING:
    from erlib.data import Dataset
    from erlib.methods import Method

__all__ = [
    "Run",
    "load_run",
    "RunLock",
    "RunInUseError",
    "RUN_FILES",
    "FORMAT",
    "new_run_name",
    "holds_run",
    "write_config",
    "write_meta",
    "read_records",
    "repair_metrics",
    "append_record",
    "save_checkpoint",
    "load_checkpoint",
    "remove_run",
    "wait_while_in_use",
    "CHECKPOINT",
    "DIGEST",
    "COMPARED_AT_RESUME",
]

#: Version of the run-folder format (records, checkpoint layout); runs of another format are not reused.
FORMAT = 2
CHECKPOINT, DIGEST, METRICS, CONFIG, META, LOCK = (
    "checkpoint.pt",
    "checkpoint.sha256",
    "metrics.jsonl",
    "config.json",
    "meta.json",
    ".lock",
)
#: Files whose presence means a folder holds a run.
RUN_FILES = (CONFIG, METRICS, CHECKPOINT, DIGEST, META)
#: Config fields that only say where a run lives or how it is displayed: a resume may differ in them.
_NOT_COMPARED = ("out_dir", "name", "progress", "device")
COMPARED_AT_RESUME = tuple(f.name for f in TrainConfig.field_info() if f.name not in _NOT_COMPARED)


def new_run_name(cfg: TrainConfig) -> str:
    """``<method>[-er]-<YYYYmmdd-HHMMSS>-<8 hex>``: two runs started in the same second get different names.

    The trainer also creates the folder with an atomic ``mkdir`` and draws again on a clash, so even a repeated name
    cannot make two runs share a folder."""
    return f"{cfg.run_label()}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"


def holds_run(path: Path) -> bool:
    """Whether ``path`` is a folder that already holds (part of) a run."""
    return Path(path).is_dir() and any((Path(path) / f).exists() for f in RUN_FILES)


# --------------------------------------------------------------------------------------------------- exclusivity
class RunInUseError(FileExistsError):
    """Another live process holds the run folder's lock."""


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host and is not a zombie (exited, not yet reaped by its parent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:  # Linux: state Z is a process that has exited
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class RunLock:
    """An exclusive claim on a run folder: ``.lock`` created with ``O_EXCL`` (atomic on local file systems), holding
    the pid, host and start time of its holder. A lock left by a killed process on this host is taken over; a lock
    held by a live process, or by another host, is refused with the holder named."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.held = False

    def holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"pid": -1, "host": "?", "since": "?"}

    def live_holder(self) -> dict | None:
        """Who holds the lock, if anyone may still be training: None when there is no lock or when it was left by a
        killed process on this host; the holder otherwise (a live pid here, or any holder on another host, whose
        liveness cannot be checked from here)."""
        holder = self.holder()
        if holder is None:
            return None
        pid = int(holder.get("pid", -1))
        if holder.get("host") == socket.gethostname() and pid > 0 and not _pid_alive(pid):
            return None
        return holder

    def acquire(self) -> RunLock:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now().isoformat(timespec="seconds")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                holder = self.live_holder()
                if holder is not None:
                    raise RunInUseError(
                        f"run folder {self.path.parent} is in use by pid {holder.get('pid')} on host "
                        f"{holder.get('host')} (since {holder.get('since')}); wait for it to finish, or delete "
                        f"{self.path} if that process no longer exists"
                    ) from None
                self.path.unlink(missing_ok=True)  # left by a killed process on this host
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise RunInUseError(f"could not claim {self.path.parent}: another process claimed it at the same time")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def wait_while_in_use(run_dir: Path, poll: float = 1.0, say: Callable[[str], None] | None = print) -> float:
    """Block while another live process holds ``run_dir``'s lock (e.g. a second notebook training the same run);
    ``say`` is told once whom we wait for. Returns the seconds waited (0.0 when the folder was free)."""
    lock, start, told = RunLock(run_dir), time.monotonic(), False
    while (holder := lock.live_holder()) is not None:
        if not told and say is not None:
            say(
                f"waiting for {Path(run_dir).name}: pid {holder.get('pid')} on host {holder.get('host')} is training "
                f"it (since {holder.get('since')}); its run is used once it finishes (delete {lock.path} if that "
                "process no longer exists)"
            )
            told = True
        time.sleep(poll)
    return time.monotonic() - start


def remove_run(path: Path) -> None:
    """Delete a run folder's run files (not the folder's other contents); refused while a live process holds it."""
    path = Path(path)
    with RunLock(path):
        for name in (*RUN_FILES, METRICS + ".bad", "eval.json"):
            (path / name).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ config and meta
def write_config(run_dir: Path, cfg: TrainConfig) -> None:
    atomic_write_text(Path(run_dir) / CONFIG, cfg.to_json() + "\n")


def _erlib_commit() -> str:
    head = Path(__file__).resolve().parent.parent / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (head.parent / ref[5:]).read_text().strip()[:12]
        return ref[:12]
    except OSError:
        return "unknown"


def _command_line() -> str:
    argv = list(sys.argv)
    if argv and argv[0].endswith(("erlib/__main__.py", "erlib\\__main__.py")):
        argv[0:1] = ["python", "-m", "erlib"]
    return " ".join(argv)


def write_meta(run_dir: Path, device: torch.device, path: dict | None = None) -> None:
    """``meta.json``: the record format and what produced the run (version, commit, machine, command, start)."""
    from erlib import __version__

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    meta = {
        "format": FORMAT,
        "erlib": __version__,
        "commit": _erlib_commit(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "host": socket.gethostname(),
        "device": name,
        "command": _command_line(),
        "started": datetime.now().isoformat(timespec="seconds"),
        "execution": path or {},
    }
    atomic_write_text(Path(run_dir) / META, json.dumps(meta, indent=2) + "\n")


# -------------------------------------------------------------------------------------------------------- records
def append_record(path: Path, record: dict) -> None:
    """Append one record as a JSON line."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_records(path: Path) -> tuple[list[dict], list[str]]:
    """(valid records, unreadable lines) of a metrics file; a bad line never hides the records after it."""
    records, bad = [], []
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad.append(line)
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and "kind" in record:
                records.append(record)
            else:
                bad.append(line)
    return records, bad


def repair_metrics(path: Path, last_step: int) -> list[dict]:
    """Before a resume: keep the valid records up to ``last_step`` (later ones will be written again), set every
    unreadable line aside in ``metrics.jsonl.bad`` with a warning, and rewrite the file atomically."""
    path = Path(path)
    records, bad = read_records(path)
    kept = [r for r in records if r["step"] <= last_step]
    if bad:
        with open(path.with_name(path.name + ".bad"), "a") as f:
            f.writelines(line + "\n" for line in bad)
        warnings.warn(
            f"{path}: {len(bad)} unreadable line(s) set aside in {path.name}.bad; the "
            f"{len(records)} valid records were kept",
            stacklevel=2,
        )
    if path.is_file():
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


# ---------------------------------------------------------------------------------------------------- checkpoints
#: The keys a checkpoint holds (all tensors or plain Python data).
CHECKPOINT_KEYS = ("method", "optimizer", "aug_generator", "torch_rng", "epoch", "step", "config")


def save_checkpoint(run_dir: Path, state: dict) -> None:
    """Write ``checkpoint.pt`` and its digest so that a kill at any moment leaves a pair that verifies.

    The state is serialised in memory and hashed; ``checkpoint.sha256`` (the new digest and the previous one) is
    replaced first, then ``checkpoint.pt``, each atomically. Killed between the two renames, the old checkpoint still
    matches the recorded previous digest."""
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    run_dir = Path(run_dir)
    previous = _read_json_object(run_dir / DIGEST).get("sha256")
    digest = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "previous": previous,
        "epoch": state["epoch"],
        "step": state["step"],
    }
    atomic_write_text(run_dir / DIGEST, json.dumps(digest) + "\n")
    atomic_write(run_dir / CHECKPOINT, lambda f: f.write(data))


def _read_json_object(path: Path) -> dict:
    try:
        digest = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return digest if isinstance(digest, dict) else {}


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict:
    """Verify a checkpoint's digest, then load it with ``weights_only=True``.

    Raises FileNotFoundError if there is none, and a ValueError naming the file when it is damaged (digest mismatch,
    truncated), has no digest, or holds anything but tensors and plain data (which could run code when unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    restart = (
        f"delete {path} and {path.with_name(DIGEST)}, then `python -m erlib train --resume {path.parent}` "
        "restarts the run from step 0; or restore both files from a copy"
    )
    digest_path = path.with_name(DIGEST)
    digest = _read_json_object(digest_path)
    if "sha256" not in digest:
        raise ValueError(f"checkpoint {path} has no readable digest ({digest_path}); it cannot be verified: {restart}")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual not in (digest["sha256"], digest.get("previous")):
        raise ValueError(
            f"checkpoint {path} is damaged: its sha256 {actual[:12]}... does not match the digest "
            f"{digest['sha256'][:12]}... recorded in {digest_path.name}: {restart}"
        )
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"checkpoint {path} holds objects other than tensors and plain Python data; erlib refuses "
            f"to load it, since unpickling such objects can run code ({str(exc).splitlines()[0]})"
        ) from None
    except Exception as exc:  # zip / storage errors of a damaged file
        raise ValueError(f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}: {exc}): {restart}") from exc
    if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
        raise ValueError(f"checkpoint {path} is not an erlib checkpoint (expected the keys {CHECKPOINT_KEYS})")
    return state


# ----------------------------------------------------------------------------------------------------- reading back
@dataclass
class Run:
    """A run folder read back: its config, its metric records and its checkpoint."""

    path: Path
    config: dict
    records: list[dict]
    meta: dict = field(default_factory=dict)

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def name(self) -> str:
        return self.path.name

    def train_config(self) -> TrainConfig:
        """The run's :class:`~erlib.config.TrainConfig`, validated."""
        return TrainConfig.from_dict(self.config).validate()

    def epoch_records(self) -> list[dict]:
        return [r for r in self.records if r.get("kind") == "epoch"]

    def train_records(self) -> list[dict]:
        return [r for r in self.records if r.get("kind") == "train"]

    def last_epoch(self) -> dict:
        """The last "epoch" record (a ValueError naming the run if there is none)."""
        epochs = self.epoch_records()
        if not epochs:
            raise ValueError(f"run {self.path} has no epoch record yet")
        return epochs[-1]

    def series(self, key: str, kind: str = "epoch") -> tuple[list[float], list[float]]:
        """(x, values) of metric ``key`` in records of ``kind``; x is ``epoch`` (epochs completed) for "epoch" records
        and ``step`` for "train" records."""
        xs, ys = [], []
        for r in self.records:
            if r.get("kind") == kind and key in r:
                xs.append(r["epoch"] if kind == "epoch" else r["step"])
                ys.append(r[key])
        return xs, ys

    def datasets(self, device: torch.device | str = "cpu") -> tuple[Dataset, Dataset]:
        """The run's training set (with its subset) and test set, on ``device``."""
        train_set, test_set = self.train_config().load_datasets()
        return train_set.to(device), test_set.to(device)

    def build_method(
        self, device: torch.device | str = "cpu", weights: bool = True, num_samples: int | None = None
    ) -> Method:
        """The run's method on ``device``, with the checkpoint's weights (``weights=True``), in eval mode.

        ``num_samples`` (DeepCluster-v2's memory bank) defaults to the size of the run's training set."""
        cfg = self.train_config()
        if num_samples is None:
            num_samples = len(cfg.load_datasets()[0]) if cfg.method == "deepcluster" else 0
        method = cfg.build_method(num_samples).to(device)
        if weights:
            method.load_state_dict(load_checkpoint(self.checkpoint, map_location=device)["method"])
        return method.eval()


def load_run(path: str | Path) -> Run:
    """Read a run folder; FileNotFoundError naming the folder if it is not one. Unreadable metric lines are skipped
    with a warning (the file is not changed)."""
    path = Path(path)
    config_file = path / CONFIG
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a run folder (no {CONFIG})")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as exc:
        raise ValueError(f"{config_file} is not valid JSON ({exc})") from None
    records, bad = read_records(path / METRICS)
    if bad:
        warnings.warn(f"{path / METRICS}: skipped {len(bad)} unreadable line(s)", stacklevel=2)
    meta = _read_json_object(path / META)
    return Run(path, config, records, meta)
