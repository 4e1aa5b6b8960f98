# Sourced by scripts/demo.sh and scripts/test.sh: make sure a Python environment with torch, the
# project's dependencies and a fresh build of specdec_kernels._C is active.
# - Uses the active virtual environment if there is one, else creates/reuses .venv at the repo root.
# - CUDA kernels are compiled when nvcc is found (CUDA_HOME, default /usr/local/cuda); no GPU needed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x "$ROOT/.venv/bin/python" ]; then
    echo "[setup] creating $ROOT/.venv"
    "$PY" -m venv "$ROOT/.venv"
  fi
  # shellcheck disable=SC1091
  . "$ROOT/.venv/bin/activate"
fi
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
TORCH_VERSION="${SPECDEC_TORCH_VERSION:-2.14.1}"
if ! python -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
  echo "[setup] installing torch==$TORCH_VERSION"
  python -m pip install -q "torch==$TORCH_VERSION"
fi
python -m pip install -q -r "$ROOT/requirements-dev.txt"
echo "[setup] building specdec_kernels._C"
(cd "$ROOT" && flock /tmp/specdec_build.lock python -m pip install -q --no-build-isolation --no-deps -e . ) \
  || { echo "[setup] build failed" >&2; exit 1; }
