"""The GPU check, in one go, for a lent H100/H200 (about 15 minutes of device time, start-up included).

    OUT=/some/dir bash scripts/gpu_check.sh            # on the GPU machine (the tree travels with data/cache/)
    GPU_CHECK_DRY=1 OUT=/tmp/x bash scripts/gpu_check.sh   # the same steps at tiny sizes on the CPU (tested)

Steps, each bounded by what is left of the time budget (``GPU_CHECK_MINUTES``, default 11.5):

1. ``python -m erlib bench``: all ten variants at batch 512 (ResNet-18 CIFAR stem, two 32 px views), with the
   model-only ceiling and the same-run DataLoader baseline; then SimCLR again with ``--compile``.
2. Reference runs at full scale on CIFAR-10 (JPEG q75 copy), the ``full`` preset at batch 512 with kNN (k = 200,
   t = 0.1) every epoch, as many epochs as the measured throughput allows: ``simclr``, ``byol``,
   ``byol@tau_base=0.0`` and ``byol-er@tau_base=0.0`` (the role names of ``erlib.claims``).
3. ``python -m erlib claims --no-train`` on those runs: the verdicts they support.

Everything goes under ``$OUT``; at most 8 files come back from the device, so the script leaves four: ``summary.md``
(card, commands, table, verdicts), ``bench.json``, ``results.tar.gz`` (``reference/``: the run folders without
checkpoints and their verdicts, ready to commit as ``results/<card>-<date>/``; ``claims/``: the report) and
``log.txt``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DRY = os.environ.get("GPU_CHECK_DRY", "") not in ("", "0")
BUDGET_MIN = float(os.environ.get("GPU_CHECK_MINUTES", "5" if DRY else "11.5"))
OUT = Path(os.environ.get("OUT") or ROOT / "runs" / "gpu-check" / time.strftime("%Y%m%d-%H%M%S"))
START = time.perf_counter()
LOG = OUT / "log.txt"

#: The reference runs: role name, method, ER flag, method options.
REFERENCE_RUNS = [
    ("simclr", "simclr", False, {}),
    ("byol", "byol", False, {}),
    ("byol@tau_base=0.0", "byol", False, {"tau_base": 0.0}),
    ("byol-er@tau_base=0.0", "byol", True, {"tau_base": 0.0}),
]


def minutes_left() -> float:
    return BUDGET_MIN - (time.perf_counter() - START) / 60


def log(message: str) -> None:
    line = f"[{(time.perf_counter() - START) / 60:5.1f} min] {message}"
    print(line, flush=True)
    with open(LOG, "a") as f:
        f.write(line + "\n")


def erlib(*args: str, timeout_min: float) -> subprocess.CompletedProcess:
    """Run ``python -m erlib ARGS``, logging the command and its output; never longer than ``timeout_min``."""
    cmd = [sys.executable, "-m", "erlib", *args]
    log("$ " + " ".join(["python -m erlib", *args]))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(30, timeout_min * 60))
    except subprocess.TimeoutExpired as exc:
        log(f"timed out after {timeout_min:.1f} min")
        return subprocess.CompletedProcess(cmd, 124, exc.stdout or "", exc.stderr or "")
    with open(LOG, "a") as f:
        f.write(proc.stdout[-6000:] + proc.stderr[-6000:])
    log(f"exit {proc.returncode}")
    return proc


def card() -> str:
    if DRY:
        return "cpu (dry run)"
    try:
        return (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
            or "unknown GPU"
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown GPU"


def bench_args() -> list[str]:
    if DRY:
        return [
            "--device",
            "cpu",
            "--backbone",
            "convnet_tiny",
            "--small-heads",
            "--dataset",
            "synthetic",
            "--batch-size",
            "32",
            "--warmup",
            "1",
            "--steps",
            "1",
            "--repeats",
            "1",
            "--workers",
            "0",
            "--methods",
            "simclr,byol",
        ]
    return ["--batch-size", "512"]


def train_args(name: str, method: str, er: bool, options: dict, epochs: int, runs_dir: Path) -> list[str]:
    args = [
        "train",
        "--preset",
        "tiny" if DRY else "full",
        "--method",
        method,
        "--er" if er else "--no-er",
        "--epochs",
        str(epochs),
        "--out-dir",
        str(runs_dir),
        "--name",
        name,
        "--no-progress",
    ]
    if DRY:
        args += [
            "--dataset",
            "synthetic",
            "--train-subset",
            "128",
            "--batch-size",
            "64",
            "--knn-test-size",
            "0",
            "--knn-k",
            "20",
            "--monitor-size",
            "64",
        ]
    else:
        args += ["--batch-size", "512", "--warmup-epochs", str(max(1, min(10, epochs // 10))), "--log-every", "20"]
    for key, value in options.items():
        args += ["--opt", f"{key}={value}"]
    return args


def epochs_for(bench: dict, method: str, er: bool, minutes: float) -> int:
    """Epochs that fit in ``minutes`` at the benchmark's end-to-end rate (kNN each epoch and the monitor: 25%)."""
    if DRY:
        return 1
    row = next((r for r in bench.get("results", []) if r["method"] == method and r["er"] == er), None)
    rate = row["e2e_images_per_s"] if row else 5000.0
    return max(1, int(0.75 * minutes * 60 * rate / 50_000))


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    work = OUT / "work"
    runs_dir = work / "seed0"  # the layout `claims --runs-dir` reads: <root>/seed<k>/<role>
    work.mkdir(exist_ok=True)
    gpu = card()
    log(f"card: {gpu}; budget {BUDGET_MIN} min; dry run: {DRY}")
    lines = [f"# GPU check — {gpu}", "", f"erlib commit: {git_commit()}; budget {BUDGET_MIN} min", ""]

    bench_file = OUT / "bench.json"
    proc = erlib("bench", *bench_args(), "--out", str(bench_file), timeout_min=min(4.0, minutes_left() * 0.4))
    bench = json.loads(bench_file.read_text()) if bench_file.is_file() else {}
    lines += ["## Benchmark", "", "```", proc.stdout.strip()[-4000:], "```", ""]
    if minutes_left() > 6 and not DRY:  # compiling on a CPU takes minutes: the dry run skips it
        compiled = work / "bench-compile.json"
        proc = erlib(
            "bench",
            *bench_args(),
            "--methods",
            "simclr",
            "--no-er",
            "--no-baseline",
            "--compile",
            "--out",
            str(compiled),
            timeout_min=min(3.0, minutes_left() * 0.3),
        )
        lines += ["SimCLR with `--compile`:", "", "```", proc.stdout.strip()[-2000:], "```", ""]

    per_run = max(0.2, (minutes_left() - 0.7) / len(REFERENCE_RUNS))
    lines += [
        "## Reference runs",
        "",
        "| run | epochs | minutes | final kNN200 | untrained kNN200 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, method, er, options in REFERENCE_RUNS:
        if minutes_left() < 0.5:
            log(f"skipping {name}: out of time")
            continue
        epochs = epochs_for(bench, method, er, per_run)
        t0 = time.perf_counter()
        erlib(*train_args(name, method, er, options, epochs, runs_dir), timeout_min=per_run * 1.3 + 0.5)
        knn = final_and_untrained_knn(runs_dir / name)
        lines.append(f"| {name} | {epochs} | {(time.perf_counter() - t0) / 60:.1f} | {knn[0]} | {knn[1]} |")

    claims_out = work / "claims"
    proc = erlib(
        "claims",
        "--preset",
        "tiny" if DRY else "full",
        "--no-train",
        "--runs-dir",
        str(work),
        "--seeds",
        "0",
        "--out",
        str(claims_out),
        timeout_min=1.0,
    )
    lines += ["", "## Claims these runs support", "", "```", proc.stdout.strip()[-4000:], "```"]
    (OUT / "summary.md").write_text("\n".join(lines) + "\n")
    export_reference(work, runs_dir, gpu)
    bundle(work)
    log("done")
    return 0


def git_commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def final_and_untrained_knn(run_dir: Path) -> tuple[str, str]:
    try:
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return ("–", "–")
    knn = [r["knn200"] if "knn200" in r else r.get("knn20") for r in records if r.get("kind") == "epoch"]
    knn = [k for k in knn if k is not None]
    return (f"{knn[-1]:.3f}", f"{knn[0]:.3f}") if knn else ("–", "–")


def export_reference(work: Path, runs_dir: Path, gpu: str) -> None:
    """work/reference/: the runs without checkpoints and a summary.json with their verdicts — the folder to commit as
    results/<card>-<date>/ (``tar xzf results.tar.gz reference``)."""
    sys.path.insert(0, str(ROOT))
    from erlib.reproduce import export_results

    label = f"{gpu.split(',')[0]} reference, full preset at batch 512"
    try:
        export_results({0: runs_dir}, work / "reference", label, "bash scripts/gpu_check.sh")
    except Exception as exc:  # the bundle must come back even if this fails
        log(f"export failed: {type(exc).__name__}: {exc}")
    if (work / "reference").is_dir():
        shutil.copyfile(OUT / "summary.md", work / "reference" / "gpu_check.md")


def bundle(work: Path) -> None:
    """results.tar.gz: reference/ (runs without checkpoints + summary.json), claims/, the compile benchmark."""
    with tarfile.open(OUT / "results.tar.gz", "w:gz") as tar:
        for path in sorted(work.rglob("*")):
            if (
                path.is_file()
                and path.name not in ("checkpoint.pt", "checkpoint.sha256", ".lock")
                and (path.parts[len(work.parts)] != "seed0")
            ):  # the runs travel once, inside reference/
                tar.add(path, arcname=str(path.relative_to(work)))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
