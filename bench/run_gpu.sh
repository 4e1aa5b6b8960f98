#!/usr/bin/env bash
# Everything worth running when a GPU is available, in one go (device time is scarce), most valuable
# first: the build, the CUDA and Triton tests on the GPU, then every kernel benchmark with its CSV
# (device, commit, date in each row). Usage from the repo root on a GPU machine:
#
#   bash bench/run_gpu.sh [--quick] [--all-tests]
#
# - On a machine without network whose python3 already holds torch (the project's borrowed H100/H200):
#     SPECDEC_NO_INSTALL=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 STEP_TIMEOUT=240 \
#       PYTEST_ARGS="-n 8 --timeout 120" OUT=$OUT bash bench/run_gpu.sh --quick
#   (no virtual environment or download, see scripts/setup_env.sh). Measured on an H200 machine
#   (2026-12-04): the build 81-89 s for sm_90 on 16 cores, the GPU tests about 200 s with -n 8 (about 540
#   tests), the --quick benchmarks about 230 s together: the whole run fits one 10-minute command.
# - OUT: a folder that gets the logs and result CSVs as ONE archive, run_gpu.tgz, plus summary.txt (for
#   tools that bring back only a few files). Without OUT they stay in bench/out/ and bench/results/.
# - --all-tests: also the whole suite with the GPU present (minutes; CI runs it on CPUs anyway).
# - STEP_TIMEOUT (seconds, default none): each step is stopped after that long, so that one hang cannot
#   eat a scarce lease. PYTEST_ARGS: extra pytest arguments (e.g. "-n 8 --timeout 120" where pytest-xdist
#   and pytest-timeout are installed).
# Each step runs even when an earlier one failed; the summary lists every step's exit status. With OUT,
# the archive is rewritten after every step, so a run stopped from outside still returns what it finished.
# If the CUDA kernels fail to build, the CPU kernels are built alone (SPECDEC_NO_CUDA=1) and the steps
# still run: the torch and Triton backends are then tested on the GPU, the CUDA backend is reported absent.
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

# archive: the logs and result CSVs so far into $OUT (when set)
archive() {
  [ -n "${OUT:-}" ] || return 0
  mkdir -p "$OUT"
  cp "$SUMMARY" "$OUT/summary.txt"
  local csvs
  shopt -s nullglob
  csvs=(bench/results/*_cuda.csv bench/results/e2e_cuda_graph_cuda*.md)
  shopt -u nullglob
  tar -czf "$OUT/run_gpu.tgz" "$LOG_DIR" "${csvs[@]}"
}

# step NAME COMMAND...: run it (under STEP_TIMEOUT), log to $LOG_DIR/NAME.txt, record status and seconds
# in the summary, refresh the archive
step() {
  local name="$1" t rc
  shift
  t=$(date +%s)
  echo "=== $name: $*" | tee -a "$SUMMARY"
  if [ -n "${STEP_TIMEOUT:-}" ]; then
    timeout -k 10 "$STEP_TIMEOUT" "$@" > "$LOG_DIR/$name.txt" 2>&1
  else
    "$@" > "$LOG_DIR/$name.txt" 2>&1
  fi
  rc=$?
  [ $rc = 124 ] && echo "    (stopped after STEP_TIMEOUT=$STEP_TIMEOUT s)" >> "$SUMMARY"
  tail -n 3 "$LOG_DIR/$name.txt" | sed 's/^/    /' >> "$SUMMARY"
  echo "    -> rc $rc in $(($(date +%s) - t)) s" | tee -a "$SUMMARY"
  archive
  return $rc
}

# The environment is made in a child first (setup_env.sh exits on failure), then sourced here, where it
# finds everything done, for its PATH and virtual environment.
SETUP_OK=1
if ! step setup bash -c '. scripts/setup_env.sh'; then
  echo "setup failed: see $LOG_DIR/setup.txt; trying the CPU kernels alone" | tee -a "$SUMMARY"
  export SPECDEC_NO_CUDA=1
  step setup_no_cuda bash -c '. scripts/setup_env.sh' || SETUP_OK=0
fi
if [ "$SETUP_OK" = 0 ]; then
  echo "setup failed: see $LOG_DIR/setup*.txt" | tee -a "$SUMMARY"
else
  # shellcheck disable=SC1091
  . scripts/setup_env.sh > /dev/null 2>&1
  set +e  # setup_env.sh sets -e; every step below runs whatever the one before it did
  step info python -m specdec_kernels.info
  # The GPU tests in two steps, the files that failed on the first GPU run (2026-12-04) first, so that
  # their tracebacks come back even when the lease ends during the second; -v names each result as it
  # happens (with -n too), -rfE repeats the failures at the end.
  FIRST=(tests/kernels/test_features.py tests/system/test_lossless.py)
  PYTEST=(python -m pytest -q -m cuda -p no:cacheprovider -v --tb=short -rfE)
  # shellcheck disable=SC2086  # PYTEST_ARGS is a list of words
  step pytest_cuda_first "${PYTEST[@]}" ${PYTEST_ARGS:-} "${FIRST[@]}"
  # shellcheck disable=SC2086
  step pytest_cuda_rest "${PYTEST[@]}" ${PYTEST_ARGS:-} "${FIRST[@]/#/--ignore=}" tests
  # shellcheck disable=SC2086
  if [ "$ALL_TESTS" = 1 ]; then step pytest_all python -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-} tests; fi
  for b in tree compact verify attention features paged; do
    step "bench_$b" python "bench/bench_$b.py" --results "${QUICK[@]}"
  done
  # whole decode passes, eager against one replayed CUDA graph (and model.generate's step), same tokens
  step e2e_cuda_graph python bench/e2e_cuda_graph.py "${QUICK[@]}"
fi
echo "=== total $(($(date +%s) - T0)) s" | tee -a "$SUMMARY"
archive
[ -n "${OUT:-}" ] && echo "wrote $OUT/run_gpu.tgz and $OUT/summary.txt"
exit 0
