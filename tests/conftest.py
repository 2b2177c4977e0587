"""Shared test helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers on two cores: one thread each, no oversubscription
    torch.set_num_threads(1)
    # ... and so for the processes the tests start (notebook kernels, the CLI): a kernel with two OpenMP threads next
    # to a busy worker ran its training 3-5x slower than alone
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """``make test`` runs ``--dist loadgroup --no-loadscope-reorder``: every test without an ``xdist_group`` runs with
    the rest of its file (as ``--dist loadfile`` would), and the groups named ``notebooks-*`` (tests/test_notebooks.py)
    are scheduled first, one per worker, since they are the longest."""
    for item in items:
        if not any(item.iter_markers("xdist_group")):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    items.sort(key=lambda item: not item.get_closest_marker("xdist_group").args[0].startswith("notebooks-"))


@pytest.fixture(autouse=True)
def _fresh_caches_under_mutmut():
    """mutmut forks each mutant from a process that already ran the tests, so a cache would answer with the unmutated
    code's values and hide the mutant (``make mutate``): clear erlib's one cache first."""
    if os.environ.get("MUTANT_UNDER_TEST"):
        from erlib import bounds

        bounds._cached_log_normalizer.cache_clear()
    yield


@pytest.fixture(scope="session")
def shared_runs_dir(tmp_path_factory):
    """One runs folder for the session, as `python -m erlib notebooks` uses: later notebooks reuse earlier runs, and
    tests/test_learning.py reads the tiny runs notebook 07 trains (or trains them first). Under xdist both workers
    share it (the folder above each worker's own), so a run trained by one is reused by the other; `ensure_run` waits
    while the other worker is still training it."""
    base = tmp_path_factory.getbasetemp()
    runs_dir = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "notebook-runs"
    runs_dir.mkdir(exist_ok=True)
    return runs_dir


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of many small ops: on a shared 2-core machine OpenMP threads spinning against
    each other make them up to ~50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def torchrun(script: str, *args: str, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``script`` under torchrun with ``nproc`` CPU processes (gloo); raise with its output on failure."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc
