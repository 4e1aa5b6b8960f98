# Sourced by scripts/demo.sh and scripts/test.sh: make sure a Python environment with torch, the
# project's dependencies and an up-to-date build of specdec_kernels._C is active.
# - Uses the active virtual environment if there is one, else creates/reuses .venv at the repo root.
# - CUDA kernels are compiled when nvcc is found (CUDA_HOME, default /usr/local/cuda); no GPU needed.
# - Nothing is reinstalled or rebuilt when nothing changed: the dependencies are stamped with a hash of
#   the requirements, the build with a hash of every input of the build (csrc/, setup.py, pyproject.toml,
#   specdec_kernels/_limits.py, the torch version and the build switches). SPECDEC_FORCE_BUILD=1 rebuilds.
# - SPECDEC_NO_INSTALL=1: use $PYTHON (default python3) as it is, with whatever torch, triton and
#   transformers it holds: no virtual environment and no download, only the build. For machines without
#   network whose Python already has torch (a GPU box; bench/run_gpu.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if [ "${SPECDEC_NO_INSTALL:-0}" = "1" ]; then
  # `python` below is $PY, whatever its name on this machine: a wrapper, not a symlink, because a
  # virtual environment's interpreter reached through a link elsewhere loses its environment
  SHIM="$ROOT/build/python-shim"
  mkdir -p "$SHIM"
  rm -f "$SHIM/python"  # never write through a link left by an older version of this script
  printf '#!/bin/sh\nexec "%s" "$@"\n' "$(command -v "$PY")" > "$SHIM/python"
  chmod +x "$SHIM/python"
  export PATH="$SHIM:$PATH"
  if ! python -c "import torch" 2>/dev/null; then
    echo "[setup] SPECDEC_NO_INSTALL=1: $PY ($(command -v "$PY")) cannot import torch" >&2
    exit 1
  fi
elif [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x "$ROOT/.venv/bin/python" ]; then
    echo "[setup] creating $ROOT/.venv"
    "$PY" -m venv "$ROOT/.venv"
  fi
  # shellcheck disable=SC1091
  . "$ROOT/.venv/bin/activate"
fi
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
if [ "${SPECDEC_NO_INSTALL:-0}" = "1" ]; then STAMPS="$ROOT/build/.specdec-stamps"
else STAMPS="$VIRTUAL_ENV/.specdec-stamps"; fi
mkdir -p "$STAMPS"

# Hash of files and strings given as arguments (files by content, in the order given).
_hash() {
  python - "$@" <<'EOF'
import hashlib, os, sys
h = hashlib.sha256()
for a in sys.argv[1:]:
    h.update(a.encode() + b"\0")
    if os.path.isfile(a):
        with open(a, "rb") as f:
            h.update(f.read())
print(h.hexdigest())
EOF
}

TORCH_VERSION="${SPECDEC_TORCH_VERSION:-2.14.1}"
DEPS_HASH="$(_hash "$ROOT/requirements-dev.txt" "torch==$TORCH_VERSION" "$(python -c 'import sys; print(sys.executable)')")"
if [ "${SPECDEC_NO_INSTALL:-0}" = "1" ]; then
  echo "[setup] SPECDEC_NO_INSTALL=1: $PY as it is: $(python -c 'import torch; print("torch", torch.__version__)')"
elif [ "$(cat "$STAMPS/deps" 2>/dev/null)" != "$DEPS_HASH" ]; then
  if ! python -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
    echo "[setup] installing torch==$TORCH_VERSION"
    python -m pip install -q "torch==$TORCH_VERSION"
  fi
  echo "[setup] installing the dependencies (requirements-dev.txt)"
  python -m pip install -q -r "$ROOT/requirements-dev.txt"
  echo "$DEPS_HASH" > "$STAMPS/deps"
else
  echo "[setup] dependencies up to date"
fi

cd "$ROOT"
BUILD_INPUTS=$(find csrc -type f | LC_ALL=C sort)
BUILD_HASH="$(_hash $BUILD_INPUTS setup.py pyproject.toml specdec_kernels/_limits.py \
  "torch=$(python -c 'import torch; print(torch.__version__)' 2>/dev/null)" \
  "CUDA_HOME=${CUDA_HOME:-}" "TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-}" \
  "SPECDEC_NO_CUDA=${SPECDEC_NO_CUDA:-}" "SPECDEC_NO_EXTENSION=${SPECDEC_NO_EXTENSION:-}")"
if [ "${SPECDEC_FORCE_BUILD:-0}" != "1" ] && [ "$(cat "$STAMPS/build" 2>/dev/null)" = "$BUILD_HASH" ] \
   && { [ "${SPECDEC_NO_EXTENSION:-0}" = "1" ] || ls specdec_kernels/_C*.so >/dev/null 2>&1; }; then
  echo "[setup] specdec_kernels._C up to date (no change under csrc/ or in the build settings)"
else
  echo "[setup] building specdec_kernels._C"
  flock /tmp/specdec_build.lock python -m pip install -q --no-build-isolation --no-deps -e . \
    || { echo "[setup] build failed" >&2; exit 1; }
  echo "$BUILD_HASH" > "$STAMPS/build"
fi
cd - >/dev/null
