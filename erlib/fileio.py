"""Atomic file writes with ordinary permissions, shared by the data cache and the run folders.

A file is written to a temporary name in its own folder, flushed to disk, given the permissions a plain ``open()``
would have given it (``0o666`` minus the umask: ``mkstemp`` alone creates ``0o600``), then renamed over the target:
a reader sees either the old file or the complete new one, never a half-written one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "atomic_write_text", "default_file_mode", "sha256_file"]


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file under the current umask (e.g. 0o644 for umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write(f)`` (its return value is ignored) on a temporary binary file beside ``path``, fsync, set ordinary
    permissions, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(text.encode()))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
