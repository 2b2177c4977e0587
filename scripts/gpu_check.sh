#!/usr/bin/env bash
# The GPU check as ONE script for a lent H100/H200 (torch preinstalled there, no Jupyter, no registry).
# Needs the offline pack carried with the tree:  mkdir -p data/cache && cp ../shared/data/cifar10-jpeg75.npz data/cache/
# Writes summary.md, bench.json, results.tar.gz and log.txt under $OUT (at most 8 files come back from the device).
# GPU_CHECK_DRY=1 runs the same steps at tiny sizes on the CPU (tests/test_gpu_check.py does).
# GPU_CHECK_MINUTES sets the budget (default 11.5). See scripts/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" scripts/gpu_check.py "$@"
