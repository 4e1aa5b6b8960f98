#!/usr/bin/env bash
# Runs the whole test suite from a fresh machine: sets up the environment (scripts/setup_env.sh), builds
# the C++ and CUDA kernels, and runs pytest. Without a GPU, Triton kernels run under the interpreter.
# Extra arguments go to pytest. SPECDEC_LINT=1 (set by .ci/run) runs scripts/lint.sh first.
set -euo pipefail
. "$(dirname "$0")/setup_env.sh"
cd "$ROOT"
if [ "${SPECDEC_LINT:-0}" = "1" ]; then bash scripts/lint.sh; fi
python -m specdec_kernels.info
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  export TRITON_INTERPRET=1
fi
python -m pytest -q "$@"
