#!/usr/bin/env bash
# Everything worth running when a GPU is available, in one go (device time is scarce): the CUDA and
# Triton tests on the GPU, then every benchmark with its CSV written to bench/results/ (device, commit,
# date in each row). Usage from the repo root on a GPU machine:  bash bench/run_gpu.sh [--quick]
# Set OUT to also copy the logs somewhere (e.g. the device tool's $OUT).
set -uo pipefail
. "$(dirname "$0")/../scripts/setup_env.sh"
cd "$ROOT"
LOG_DIR="${OUT:-bench/out}"
mkdir -p "$LOG_DIR"
python -m specdec_kernels.info | tee "$LOG_DIR/info.txt"
python -m pytest -q -m cuda -p no:cacheprovider tests 2>&1 | tee "$LOG_DIR/pytest_cuda.txt"
python -m pytest -q -x -p no:cacheprovider tests 2>&1 | tail -5 | tee "$LOG_DIR/pytest_all.txt"
for b in tree compact verify attention features; do
  python "bench/bench_$b.py" --results "$@" 2>&1 | tee "$LOG_DIR/bench_$b.txt"
done
