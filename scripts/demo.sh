#!/usr/bin/env bash
# The main job, from a fresh machine: sets up the environment, builds the kernels, prints what was built
# and runs the offline demo.
set -euo pipefail
. "$(dirname "$0")/setup_env.sh"
cd "$ROOT"
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  export TRITON_INTERPRET=1
fi
python -m specdec_kernels.info
python -m specdec.demo "$@"
