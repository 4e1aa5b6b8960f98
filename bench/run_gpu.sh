#!/usr/bin/env bash
# Everything worth running when a GPU is available, in one go (device time is scarce), most valuable
# first: the build, the CUDA and Triton tests on the GPU, then every kernel benchmark with its CSV
# (device, commit, date in each row). Usage from the repo root on a GPU machine:
#
#   bash bench/run_gpu.sh [--quick] [--all-tests]
#
# - On a machine without network whose python3 already holds torch (the project's borrowed H100/H200):
#     SPECDEC_NO_INSTALL=1 TORCH_CUDA_ARCH_LIST=9.0 OUT=$OUT bash bench/run_gpu.sh --quick
#   (no virtual environment or download, see scripts/setup_env.sh; one architecture keeps the nvcc build
#   to a few minutes on 16 cores).
# - OUT: a folder that gets the logs and result CSVs as ONE archive, run_gpu.tgz, plus summary.txt (for
#   tools that bring back only a few files). Without OUT they stay in bench/out/ and bench/results/.
# - --all-tests: also the whole suite with the GPU present (minutes; CI runs it on CPUs anyway).
# Each step runs even when an earlier one failed; the summary lists every step's exit status.
set -uo pipefail
QUICK=()
ALL_TESTS=0
for a in "$@"; do
  case "$a" in
    --quick) QUICK=(--quick) ;;
    --all-tests) ALL_TESTS=1 ;;
    *) echo "run_gpu.sh: unknown argument $a (expected --quick, --all-tests)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
LOG_DIR="bench/out/run_gpu"
rm -rf "$LOG_DIR"
mkdir -p "$LOG_DIR"
SUMMARY="$LOG_DIR/summary.txt"
: > "$SUMMARY"
T0=$(date +%s)

# step NAME COMMAND...: run it, log to $LOG_DIR/NAME.txt, record status and seconds in the summary
step() {
  local name="$1" t rc
  shift
  t=$(date +%s)
  echo "=== $name: $*" | tee -a "$SUMMARY"
  "$@" > "$LOG_DIR/$name.txt" 2>&1
  rc=$?
  tail -n 3 "$LOG_DIR/$name.txt" | sed 's/^/    /' >> "$SUMMARY"
  echo "    -> rc $rc in $(($(date +%s) - t)) s" | tee -a "$SUMMARY"
  return $rc
}

# The environment is made in a child first (setup_env.sh exits on failure), then sourced here, where it
# finds everything done, for its PATH and virtual environment.
if ! step setup bash -c '. scripts/setup_env.sh'; then
  echo "setup failed: see $LOG_DIR/setup.txt" | tee -a "$SUMMARY"
else
  # shellcheck disable=SC1091
  . scripts/setup_env.sh > /dev/null 2>&1
  set +e  # setup_env.sh sets -e; every step below runs whatever the one before it did
  step info python -m specdec_kernels.info
  step pytest_cuda python -m pytest -q -m cuda -p no:cacheprovider tests
  if [ "$ALL_TESTS" = 1 ]; then step pytest_all python -m pytest -q -p no:cacheprovider tests; fi
  for b in tree compact verify attention features; do
    step "bench_$b" python "bench/bench_$b.py" --results "${QUICK[@]}"
  done
  # whole decode passes, eager against one replayed CUDA graph (and model.generate's step), same tokens
  step e2e_cuda_graph python bench/e2e_cuda_graph.py "${QUICK[@]}"
fi
echo "=== total $(($(date +%s) - T0)) s" | tee -a "$SUMMARY"

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$SUMMARY" "$OUT/summary.txt"
  shopt -s nullglob
  csvs=(bench/results/*_cuda.csv bench/results/e2e_cuda_graph_cuda.md)
  tar -czf "$OUT/run_gpu.tgz" "$LOG_DIR" "${csvs[@]}"
  echo "wrote $OUT/run_gpu.tgz and $OUT/summary.txt"
fi
