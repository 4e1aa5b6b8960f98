#!/usr/bin/env bash
# The exact commands that made the shipped heads of the default target (python/specdec/heads/
# SmolLM2-135M-Instruct/): self-distilled ShareGPT data, then EAGLE, FSPAD and GRIFFIN (three stages) on
# the same data, draft vocabulary and passes over the data, then the bf16 export.
#
#   bash scripts/train_heads.sh            # everything (resumes: rerun after an interruption)
#   STEP=data|eagle|fspad|griffin|export bash scripts/train_heads.sh   # one step
#
# Every step resumes where it stopped (`specdec data` skips finished shards, `specdec train --resume`
# continues from its newest checkpoint bitwise equal to an uninterrupted run). Logs go to $WORK/logs.
# On GPUs: the same commands (drop THREADS; `torchrun --nproc_per_node N -m specdec.cli train ...` for DDP),
# with a bigger --num-prompts and --epochs for a bigger target.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${WORK:-${SPECDEC_HOME:-$HOME/.cache/specdec}}"
DATA="$WORK/data/sharegpt-5k"
RUNS="$WORK/runs"
HEADS="$ROOT/python/specdec/heads/SmolLM2-135M-Instruct"
THREADS="${THREADS:-2}"
STEP="${STEP:-all}"
SPECDEC="${SPECDEC:-$ROOT/.venv/bin/specdec}"
PY="${PY:-$ROOT/.venv/bin/python}"
export OMP_NUM_THREADS="$THREADS"  # torch's CPU threads in `specdec train`
mkdir -p "$WORK/logs" "$RUNS"

# The common recipe: 8192-token draft vocabulary (bench/results/draft_vocab_cpu.md), bf16 autocast, batch 8,
# peak lr 3e-4 (the papers' 3e-5..5e-5 are for ~100x more optimizer steps), the papers' value clipping 0.5
# and feature noise 0.1, three passes over the data for every head.
COMMON=(--data "$DATA" --draft-vocab 8192 --dtype bf16 --batch-size 8 --lr 3e-4
  --checkpoint-every 200 --resume --no-progress)

step() { [[ "$STEP" == all || "$STEP" == "$1" ]]; }

if step data; then
  "$SPECDEC" data --target default --out "$DATA" --num-prompts 5000 --max-turns 1 --max-len 512 \
    --max-new-tokens 192 --batch-size 32 --shard-size 250 --threads "$THREADS" --dtype bf16 --no-progress
fi
if step eagle; then
  "$SPECDEC" train --kind eagle --out "$RUNS/eagle" --epochs 3 "${COMMON[@]}"
fi
if step fspad; then
  "$SPECDEC" train --kind fspad --out "$RUNS/fspad" --epochs 3 "${COMMON[@]}"
fi
if step griffin; then
  # GRIFFIN: stage 1 (one-step loss), then stages 2 and 3 (multi-step, masked where drafting diverged),
  # one pass each: the same three passes over the data as EAGLE and FSPAD.
  "$SPECDEC" train --kind griffin --out "$RUNS/griffin" --stages 1,2,3 --epochs 1 "${COMMON[@]}"
fi
if step export; then
  for kind in eagle fspad griffin; do
    "$PY" -m specdec.heads.export "$RUNS/$kind" "$HEADS/$kind" --data "$DATA"
  done
fi
