#!/usr/bin/env bash
# The exact commands that make the shipped heads of the default target (python/specdec/heads/
# SmolLM2-135M-Instruct/): self-distilled ShareGPT data, then EAGLE, FSPAD and GRIFFIN (three stages) on
# the same data and draft vocabulary with the same passes over the data (one, then two more, then two more),
# then the bf16 export, then the held-out acceptance and top-k coverage of each shipped head (what the tree
# budget of `--total-tokens auto` reads). The package ships config.json, model.safetensors and README.md of
# each head; the records of how it was made (RECIPE.md, the logs and curves of every run of its lineage, the
# data manifest) go to bench/results/training/.
#
#   bash scripts/train_heads.sh                                  # everything, in order
#   STEP=data|eagle|fspad|griffin|export|validate bash scripts/train_heads.sh   # one step
#   STEP=validate bash scripts/train_heads.sh   # measure the shipped heads again (builds the val split alone if
#                                               # the data is missing: about 20 minutes on 2 cores)
#   STEP=fullvocab bash scripts/train_heads.sh   # the full-vocabulary GRIFFIN stage 1 (a comparison, not shipped)
#   DRY_RUN=1 STEP=griffin bash scripts/train_heads.sh   # print a step's commands without running them
#
# Every step resumes where it stopped: `specdec data` skips finished shards and `specdec train --resume`
# continues from its newest checkpoint (bitwise equal to an uninterrupted run), so rerun after an
# interruption. THREADS sets torch's CPU threads (two trainings side by side with THREADS=1 each use two
# cores better than one with 2). On GPUs the same commands apply (torchrun --nproc_per_node N -m
# specdec.cli train ... for DDP), with more --num-prompts and --epochs for a bigger target.
set -euo pipefail
shopt -s inherit_errexit  # a failure inside $(...) (e.g. epoch_part without data) stops the script
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${WORK:-${SPECDEC_HOME:-$HOME/.cache/specdec}}"
DATA="$WORK/data/sharegpt-5k"
RUNS="$WORK/runs"
THREADS="${THREADS:-2}"
STEP="${STEP:-all}"
PY="${PY:-$ROOT/.venv/bin/python}"
# the first 5,000 conversations' manifest (scale_heads.sh's heads, on all of ShareGPT, keep data_manifest.json)
MANIFEST_NAME=data_manifest_first5000.json
# shellcheck source=scripts/head_records.sh
source "$ROOT/scripts/head_records.sh"  # HEADS, RECORDS, validate_cmd, copy_portable, ship_head
export OMP_NUM_THREADS="$THREADS"
mkdir -p "$RUNS"

DATA_CMD=(specdec data --target default --out "$DATA" --num-prompts 5000 --max-turns 1 --max-len 512
  --max-new-tokens 192 --batch-size 32 --shard-size 250 --threads 2 --dtype bf16 --no-progress)
# The common recipe: the 8192 most frequent response tokens as draft vocabulary (chosen with
# bench/draft_vocab.py: bench/results/draft_vocab_cpu.md), bf16 autocast, 8 sequences per step, peak lr
# 3e-4 (the papers' 3e-5..5e-5 suit their ~100x more optimizer steps), the papers' value clipping 0.5 and
# feature noise 0.1, and the same passes over the data for every head: one in round 1, two more in round 2
# and two more in round 3 (below; what fits three sessions on two CPU cores). Validation on 48 held-out
# sequences.
COMMON=(--data "$DATA" --draft-vocab 8192 --dtype bf16 --batch-size 8 --lr 3e-4 --checkpoint-every 100 --resume
  --val-sequences 48 --no-progress)
# 1/D of an epoch in optimizer steps (the training split's sequences / 8 / D), for GRIFFIN's stages.
# Refuses a train split that is not built yet (e.g. data made by STEP=validate's --splits val build),
# which would give --max-steps 0.
epoch_part() { python3 "$ROOT/scripts/epoch_steps.py" train_heads.sh "$DATA/manifest.json" "$1"; }
# One round of EAGLE or FSPAD: KIND SUFFIX INIT EPOCHS SEED (INIT: the run it starts from, "" for none).
one_step_round() {
  echo "specdec train --kind $1 --out $RUNS/$1$2${3:+ --init $RUNS/$3} --epochs $4${5:+ --seed $5} ${COMMON[*]}"
}
# One round of GRIFFIN: stage 1 (one-step loss), then stages 2 and 3 (multi-step, masked where drafting
# diverged) from it, at 0.6x the peak lr (the GRIFFIN recipe's ratio). Stage j costs about j times stage 1
# per token, so the rounds below give GRIFFIN the same passes of tokens as EAGLE and FSPAD.
# SUFFIX INIT (stage-1 run to start from) STAGE1_EPOCHS STAGE1_STEPS SEED STAGES23_STEPS ("" = option left out).
griffin_round() {
  echo "specdec train --kind griffin --out $RUNS/griffin-stage1$1 --stages 1${2:+ --init $RUNS/$2} --epochs $3" \
    "${4:+--max-steps $4 }${5:+--seed $5 }${COMMON[*]}"
  echo "specdec train --kind griffin --out $RUNS/griffin$1 --stages 2,3 --init $RUNS/griffin-stage1$1 --epochs 1" \
    "--max-steps $6${5:+ --seed $5} ${COMMON[*]} --lr 1.8e-4"
}
# Every command of a head's lineage, one per line, in order: the rounds. The step runs them and RECIPE.md
# records them.
# - Round 1, one pass over the data. GRIFFIN: stage 1 for half an epoch, stages 2 and 3 a quarter each.
# - Round 2, two more passes from round 1's weights (--init) with a fresh warmup + cosine schedule and
#   another data order (--seed 1): round 1's curves were still rising when its cosine reached zero.
#   GRIFFIN: one more epoch of stage 1 from round 1's stage 1, then stages 2 and 3 half an epoch each.
# - Round 3, two more passes. GRIFFIN's go mostly to stage 1 (1.5 epochs from round 2's stage 1, bringing
#   it to three passes like FSPAD after round 2), then stages 2 and 3 a quarter epoch each: round 2 showed
#   its multi-step stages working (best steps 2-3 on held-out data) while its one-step base, which sets
#   acc_1 and so most of tau, had half FSPAD's training.
# A further round is one more line per head (--init the last run, --seed 3) and FINAL_RUN below.
lineage() {
  case "$1" in
    eagle | fspad)
      one_step_round "$1" "" "" 1 ""
      one_step_round "$1" -r2 "$1" 2 1
      one_step_round "$1" -r3 "$1-r2" 2 2
      ;;
    griffin)
      local e2 e4
      e2=$(epoch_part 2)
      e4=$(epoch_part 4)
      griffin_round "" "" 1 "$e2" "" "$e4"
      griffin_round -r2 griffin-stage1 1 "" 1 "$e2"
      griffin_round -r3 griffin-stage1-r2 2 "$((3 * e2))" 2 "$e4"
      ;;
  esac
}
# What the reduced vocabulary costs in acceptance: GRIFFIN stage 1 with the full vocabulary, otherwise
# exactly round 1's stage-1 command (same data order, steps and lr), compared on the same validation split.
# Not shipped and not part of STEP=all: STEP=fullvocab runs it.
griffin1_fullvocab() {
  local e2
  e2=$(epoch_part 2)  # assignments stop the script on a failure; a $(...) inside echo's arguments would not
  echo "specdec train --kind griffin --out $RUNS/griffin-stage1-fullvocab --stages 1 --epochs 1" \
    "--max-steps $e2 --data $DATA --dtype bf16 --batch-size 8 --lr 3e-4 --checkpoint-every 100" \
    "--resume --val-sequences 48 --no-progress"
}

# The run each shipped head is exported from, and the earlier runs of its lineage whose records are kept
# beside the last run's in bench/results/training/<kind>/ (as <prefix>_summary.json, <prefix>_train_log.csv,
# <prefix>_val_log.csv).
declare -A FINAL_RUN=([eagle]=eagle-r3 [fspad]=fspad-r3 [griffin]=griffin-r3)
declare -A EARLIER_RUNS=([eagle]="eagle:round1 eagle-r2:round2" [fspad]="fspad:round1 fspad-r2:round2"
  [griffin]="griffin-stage1:round1_stage1 griffin:round1_stages23 griffin-stage1-r2:round2_stage1
  griffin-r2:round2_stages23 griffin-stage1-r3:stage1")

run() {
  echo "+ $*" >&2
  if [[ "${DRY_RUN:-0}" != 1 ]]; then "$ROOT/.venv/bin/$1" "${@:2}"; fi
}
step() { [[ "$STEP" == all || "$STEP" == "$1" ]]; }


# RECIPE.md of a head (kept in bench/results/training/<kind>/): what was run, from which commit.
recipe() {
  local kind="$1" out="$2"
  {
    echo "# How this $kind head was made"
    echo
    echo "By \`scripts/train_heads.sh\` (commit $(git -C "$ROOT" rev-parse --short HEAD), $(date -u +%Y-%m-%d)),"
    echo "on a $(python3 -c 'import platform; print(platform.machine())') CPU; training with OMP_NUM_THREADS=$THREADS (torch threads);"
    echo "\$WORK = $WORK."
    echo
    echo '```bash'
    echo "specdec target fetch"
    echo "${DATA_CMD[*]}"
    lineage "$kind"
    echo "python -m specdec.training.export_head $RUNS/${FINAL_RUN[$kind]} python/specdec/heads/SmolLM2-135M-Instruct/$kind"
    validate_cmd "$kind"
    echo '```'
    echo
    echo "config.json records the training settings and the last validation (per-step acceptance on the"
    echo "held-out split), and under specdec_validation the acceptance and top-k coverage \`specdec validate\` measured;"
    echo "summary.json, train_log.csv, val_log.csv and curves.png beside this file are the last run's own records,"
    echo "the files with a prefix (round1_, stage1_, ...) those of the earlier runs of the lineage;"
    echo "../$MANIFEST_NAME identifies the data (settings, target, checksums of every shard)."
  } > "$out"
}

if step data; then
  run "${DATA_CMD[@]}"
fi
for kind in eagle fspad griffin; do
  if step "$kind"; then
    cmds=$(lineage "$kind")  # computed first: a failure (no data manifest yet) stops the script here
    while read -r cmd; do
      # shellcheck disable=SC2086  # the commands are flat lists of words without spaces inside
      run $cmd </dev/null
    done <<<"$cmds"
  fi
done
if [[ "$STEP" == fullvocab ]]; then
  cmd=$(griffin1_fullvocab)  # an assignment of its own: a failure inside run's arguments would not stop the script
  # shellcheck disable=SC2086
  run $cmd
fi
if step export; then
  for kind in eagle fspad griffin; do
    if [[ "${DRY_RUN:-0}" != 1 ]]; then recipe "$kind" "$RUNS/$kind.RECIPE.md"; fi
    # shellcheck disable=SC2086  # EARLIER_RUNS: a flat list of RUN:PREFIX words
    ship_head "$kind" "$RUNS/${FINAL_RUN[$kind]}" "$RUNS/$kind.RECIPE.md" "$DATA" ${EARLIER_RUNS[$kind]}
  done
fi
if step validate; then
  run "${DATA_CMD[@]}" --splits val  # nothing to do when the data is there; else its held-out split alone
  for kind in eagle fspad griffin; do
    # shellcheck disable=SC2046  # a flat list of words without spaces inside
    (cd "$ROOT" && run $(validate_cmd "$kind"))
  done
fi
