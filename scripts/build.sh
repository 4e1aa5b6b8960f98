#!/usr/bin/env bash
# Incremental rebuild of specdec_kernels._C in place (for development; ninja recompiles changed files).
# A lock keeps concurrent builds in one checkout from clobbering each other.
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
exec flock /tmp/specdec_build.lock python setup.py -q build_ext --inplace "$@"
