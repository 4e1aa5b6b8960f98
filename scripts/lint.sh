#!/usr/bin/env bash
# Lint and format check: ruff (Python), clang-format (C++/CUDA under csrc/) and the structure checks
# (scripts/check_structure.py: import cycles, file and function sizes, machine paths, doc paths). Seconds.
# `bash scripts/lint.sh --fix` rewrites the files instead of checking them.
set -euo pipefail
cd "$(dirname "$0")/.."
CPP=$(find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' -o -name '*.h' | LC_ALL=C sort)
if [ "${1:-}" = "--fix" ]; then
  ruff check --fix .
  ruff format .
  clang-format -i $CPP
  exit 0
fi
ruff check .
ruff format --check .
clang-format --dry-run -Werror $CPP
python scripts/check_structure.py
echo "[lint] ruff, clang-format and the structure checks: clean"
