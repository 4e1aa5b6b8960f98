#!/usr/bin/env bash
# Issue 24's runs for the default target (SmolLM2-135M-Instruct): all of ShareGPT's usable first turns,
# self-distilled by the target (3.5x the data of the shipped heads), then the data-scaling runs of the
# heads. Long: spread over several sessions; every step resumes where it stopped, so rerun the same
# command after an interruption.
#
#   THREADS=1 STEP=data bash scripts/scale_heads.sh     # build (or continue) the data; THREADS=2 when the
#                                                       # machine is otherwise idle
#   STEP=status bash scripts/scale_heads.sh             # where the data build stands
#   THREADS=1 STEP=train KIND=fspad bash scripts/scale_heads.sh    # a head's curve run (KIND=eagle|fspad|griffin;
#                                                       # two kinds side by side with THREADS=1 each)
#   THREADS=1 STEP=stages bash scripts/scale_heads.sh   # GRIFFIN's stages 2-3 on its stage-1 curve run
#   THREADS=1 STEP=control ARM=griffin|fspad|eagle bash scripts/scale_heads.sh   # the same compute, one-step passes
#   STEP=curve bash scripts/scale_heads.sh              # the scaling table and plot (bench/scaling_curve.py)
#   STEP=export bash scripts/scale_heads.sh             # ship the heads of SHIP (below) with their records
#   STEP=validate bash scripts/scale_heads.sh           # their held-out acceptance and coverage -> config.json
#   THREADS=2 STEP=eval TREE=paper|auto|8 [OLD=REV] bash scripts/scale_heads.sh   # the README's specdec eval of
#                                                       # the shipped heads (and those of git revision REV,
#                                                       # named <kind>-REV, in the same run) -> bench/results/eval
#   DRY_RUN=1 STEP=... bash scripts/scale_heads.sh      # print a step's command without running it
#
# The data: first turns of every usable ShareGPT conversation (--max-turns 1, no --num-prompts), the
# target's greedy answers (at most 192 tokens, 512 per sequence) by continuous batching on specdec's KV
# cache (32 slots), features stored. --dtype auto (the default) records "auto": each shard is computed in
# the faster dtype of the machine that builds it (bf16 on every CPU measured; on AVX2-only ones through
# specdec's C++ linear kernel).
# The held-out split is the hash-chosen 2% of conversations, as for the shipped heads' 5,000 (whose
# held-out conversations it contains).
#
# The runs (under $WORK/runs): every head from scratch with the shipped heads' recipe (8,192-token draft
# vocabulary, peak lr 3e-4, train_heads.sh; --dtype auto: bf16 autocast on CPUs with bf16 instructions, fp32
# on AVX2-only ones) for EPOCHS passes (default 4), except the batches: length-grouped, at most BATCH_TOKENS
# (1,920) tokens each, the tokens of 8 sequences of this data's mean length (238) with almost no padding
# (the shipped heads' 8 random sequences a step spent 40% of their layer's compute on padding),
# validated on 96 held-out sequences at step 0 and every quarter epoch: the learning curve against tokens seen
# (bench/scaling_curve.py; inside the first pass the points measure data, after it epochs). GRIFFIN's run is
# its stage 1 (one-step training). Then the papers' ordering under control, from the converged stage 1:
#   stages  GRIFFIN's stages 2 and 3 (multi-step training masked where drafting diverged), S steps each
#           (S = a quarter epoch), at the recipe's 0.6x peak lr; stage j drafts j steps per token, so this
#           costs about (2 + 3) S = 5 S one-step steps;
#   control the same 5 S steps of one-step training from the same stage-1 head (ARM=griffin, the clean
#           control: same architecture) or from FSPAD's curve run (ARM=fspad, the issue's comparison),
#           same peak lr and schedule shape; ARM=eagle gives EAGLE's curve run the
#           same compute, so that the three shipped heads had equal compute (4 epochs + 5 S steps).
set -euo pipefail
shopt -s inherit_errexit
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${WORK:-${SPECDEC_HOME:-$HOME/.cache/specdec}}"
DATA="$WORK/data/sharegpt-all"
THREADS="${THREADS:-2}"
STEP="${STEP:-data}"
RUNS="$WORK/runs"
EPOCHS="${EPOCHS:-4}"
BATCH_TOKENS="${BATCH_TOKENS:-1920}"
PY="${PY:-$ROOT/.venv/bin/python}"
export OMP_NUM_THREADS="$THREADS"
export PYTHONPATH="$ROOT/python:$ROOT${PYTHONPATH:+:$PYTHONPATH}"

RECIPE=(--data "$DATA" --draft-vocab 8192 --dtype auto --batch-tokens "$BATCH_TOKENS" --checkpoint-every 200 --resume
  --val-sequences 96 --no-progress)

# The data: what STEP=data runs (with --threads) and the recipes of the exported heads name.
DATA_CMD=(specdec data --target default --out "$DATA" --max-turns 1 --max-len 512 --max-new-tokens 192
  --batch-size 32 --shard-size 250 --no-progress)
# The shipped heads' lineages: KIND=RUN[,RUN...], in order (each run starts from the one before).
LINEAGES="eagle=scale-eagle,scale-eagle-more fspad=scale-fspad,scale-fspad-more griffin=scale-griffin-s1,scale-griffin-s23"
# The heads STEP=export ships, as LINEAGES: the last run of each is exported, the earlier ones' records are
# kept beside it under their run names.
SHIP="${SHIP:-$LINEAGES}"
# shellcheck source=scripts/head_records.sh
source "$ROOT/scripts/head_records.sh"  # HEADS, RECORDS, validate_cmd, copy_portable, ship_head

# The step of this script that makes run RUN (for the recipes).
step_of() {
  case "$1" in
    scale-eagle | scale-fspad) echo "STEP=train KIND=${1#scale-}" ;;
    scale-griffin-s1) echo "STEP=train KIND=griffin" ;;
    scale-griffin-s23) echo "STEP=stages" ;;
    scale-griffin-more) echo "STEP=control ARM=griffin" ;;
    scale-fspad-more) echo "STEP=control ARM=fspad" ;;
    scale-eagle-more) echo "STEP=control ARM=eagle" ;;
    *)
      echo "scale_heads.sh: no step makes run $1" >&2
      return 1
      ;;
  esac
}

# RECIPE.md of an exported head (kept in bench/results/training/<kind>/): KIND RUN [RUN ...] (its lineage).
recipe() {
  local kind="$1" r st cmd
  shift
  echo "# How this $kind head was made"
  echo
  echo "By \`scripts/scale_heads.sh\` (commit $(git -C "$ROOT" rev-parse --short HEAD), $(date -u +%Y-%m-%d)) on CPUs,"
  echo "training with one or two torch threads (OMP_NUM_THREADS; one when two runs went side by side: the"
  echo "results differ only by float rounding). The runs, in order:"
  echo
  echo '```bash'
  echo "specdec target fetch"
  echo "${DATA_CMD[*]}"
  for r in "$@"; do
    st=$(step_of "$r")  # an assignment of its own: an unknown run stops the script here
    # shellcheck disable=SC2086  # st: VAR=value words
    cmd=$(env $st DRY_RUN=1 WORK="$WORK" bash "$ROOT/scripts/scale_heads.sh" 2>&1 >/dev/null)
    echo "${cmd#+ }"
  done
  local src
  src=$(head_of_run "$RUNS/$r")
  src="${src:-$RUNS/$r}"
  echo "python -m specdec.training.export_head $src python/specdec/heads/SmolLM2-135M-Instruct/$kind"
  validate_cmd "$kind"
  echo '```'
  echo
  if [[ "$src" == */snapshot ]]; then
    echo "The head is the last run's snapshot (the head of its newest validation) while that run went on: its"
    echo "config.json records the step and epoch reached (specdec_training.result.snapshot); the logs are as they"
    echo "stood at the export."
    echo
  fi
  echo "config.json records the training settings and the last validation (per-step acceptance on 96 held-out"
  echo "sequences), and under specdec_validation the acceptance and top-k coverage \`specdec validate\` measured on"
  echo "the whole held-out split; summary.json, train_log.csv, val_log.csv and curves.png beside this file are the"
  echo "last run's own records, the files named after an earlier run of the lineage (e.g. scale-griffin-s1_) that"
  echo "run's; ../data_manifest.json identifies the data (settings, target, checksums of every shard)."
}

# Optimizer steps in 1/D of an epoch (the train split's length-grouped batches / D); refuses an unfinished
# train split.
epoch_part() { "$PY" "$ROOT/scripts/epoch_steps.py" scale_heads.sh "$DATA/manifest.json" "$1" "$BATCH_TOKENS"; }

train() {
  echo "+ specdec train $*" >&2
  if [[ "${DRY_RUN:-0}" != 1 ]]; then "$PY" -m specdec.cli train "$@"; fi
}

case "$STEP" in
  train)
    KIND="${KIND:?STEP=train needs KIND=eagle, fspad or griffin}"
    quarter=$(epoch_part 4)
    name="scale-$KIND"
    [[ "$KIND" == griffin ]] && name="scale-griffin-s1"
    train --kind "$KIND" --out "$RUNS/$name" --epochs "$EPOCHS" --lr 3e-4 --val-every "$quarter" "${RECIPE[@]}"
    ;;
  stages)
    quarter=$(epoch_part 4)
    train --kind griffin --out "$RUNS/scale-griffin-s23" --init "$RUNS/scale-griffin-s1" --stages 2,3 --epochs 1 \
      --max-steps "$quarter" --lr 1.8e-4 --val-every "$((quarter / 2))" "${RECIPE[@]}"
    ;;
  control)
    ARM="${ARM:?STEP=control needs ARM=griffin, fspad or eagle}"
    quarter=$(epoch_part 4)
    from="scale-$ARM"
    [[ "$ARM" == griffin ]] && from="scale-griffin-s1"
    train --kind "$ARM" --out "$RUNS/scale-$ARM-more" --init "$RUNS/$from" --epochs 2 --max-steps "$((5 * quarter))" \
      --seed 1 --lr 1.8e-4 --val-every "$((quarter / 2))" "${RECIPE[@]}"
    ;;
  curve)
    heads=()
    # the shipped lineages and the clean control (GRIFFIN's stage 1 with one-step passes instead of stages 2-3)
    for h in $LINEAGES griffin-one-step=scale-griffin-s1,scale-griffin-more; do
      runs=""
      IFS=, read -ra parts <<<"${h#*=}"
      for r in "${parts[@]}"; do
        if [[ -f "$RUNS/$r/summary.json" ]]; then runs="${runs:+$runs,}$RUNS/$r"; fi
      done
      if [[ -n "$runs" ]]; then heads+=(--head "${h%%=*}=$runs"); fi
    done
    if [[ ${#heads[@]} -eq 0 ]]; then echo "scale_heads.sh: no runs under $RUNS yet" >&2; exit 1; fi
    "$PY" "$ROOT/bench/scaling_curve.py" "${heads[@]}" --tag "all ShareGPT first turns"
    ;;
  data)
    echo "+ ${DATA_CMD[*]} --threads $THREADS" >&2
    if [[ "${DRY_RUN:-0}" != 1 ]]; then "$PY" -m specdec.cli "${DATA_CMD[@]:1}" --threads "$THREADS"; fi
    ;;
  export)
    for entry in $SHIP; do
      kind="${entry%%=*}"
      IFS=, read -ra lineage <<<"${entry#*=}"
      earlier=()
      for r in "${lineage[@]:0:${#lineage[@]}-1}"; do earlier+=("$r:$r"); done
      if [[ "${DRY_RUN:-0}" != 1 ]]; then recipe "$kind" "${lineage[@]}" >"$RUNS/$kind.scale.RECIPE.md"; fi
      ship_head "$kind" "$RUNS/${lineage[-1]}" "$RUNS/$kind.scale.RECIPE.md" "$DATA" "${earlier[@]}"
    done
    ;;
  eval)
    TREE="${TREE:-paper}"
    heads=(--draft eagle --draft fspad --draft griffin)
    if [[ -n "${OLD:-}" ]]; then
      # the heads of revision OLD taken out of git, under the ignored bench/out and named relative to the
      # checkout, so that meta.json records no path of this machine
      old="bench/out/heads-$OLD"
      if [[ "${DRY_RUN:-0}" != 1 && ! -d "$ROOT/$old" ]]; then
        rm -rf "$ROOT/$old.tmp" && mkdir -p "$ROOT/$old.tmp"
        git -C "$ROOT" archive "$OLD" python/specdec/heads/SmolLM2-135M-Instruct | tar -x -C "$ROOT/$old.tmp"
        mv "$ROOT/$old.tmp" "$ROOT/$old"
      fi
      for k in eagle fspad griffin; do heads+=(--draft "$k-$OLD=$old/python/specdec/heads/SmolLM2-135M-Instruct/$k"); done
    fi
    case "$TREE" in
      paper) tree=() ;;
      auto) tree=(--total-tokens auto) ;;
      8) tree=(--total-tokens 8 --depth 2 --tree-top-k 4) ;;  # the issue's 8-node tree, the one that pays on CPUs
      *)
        echo "scale_heads.sh: TREE=paper, auto or 8, not $TREE" >&2
        exit 1
        ;;
    esac
    # the README's setting: 5 questions of each benchmark spread over the categories, 128 new tokens
    cmd=(specdec eval --target default "${heads[@]}" --bench mtbench,humaneval --limit 5 --spread
      --max-new-tokens 128 --threads "$THREADS" "${tree[@]}" --resume --no-progress
      --out "bench/results/eval/smollm2-135m_threads${THREADS}_${TREE}-tree_scale${OLD:+_vs-$OLD}")
    echo "+ ${cmd[*]}" >&2
    if [[ "${DRY_RUN:-0}" != 1 ]]; then (cd "$ROOT" && "$PY" -m specdec.cli "${cmd[@]:1}"); fi
    ;;
  validate)
    for entry in $SHIP; do
      read -ra cmd <<<"$(validate_cmd "${entry%%=*}")"  # "specdec validate ...": run by this script's Python
      (cd "$ROOT" && "$PY" -m specdec.cli "${cmd[@]:1}")
    done
    ;;
  status)
    "$PY" - "$DATA" <<'PY'
import glob, json, os, sys
folder = sys.argv[1]
shards, wanted = {}, {}
for path in sorted(glob.glob(os.path.join(folder, "manifest*.json"))):
    m = json.load(open(path))
    for split, s in m.get("splits", {}).items():
        wanted[split] = s.get("num_shards") or wanted.get(split)
        for e in s.get("shards", []):
            shards[(split, e["index"])] = (e, s.get("num_shards"))
if not shards:
    sys.exit(f"{folder}: no shards yet")
for split in ("train", "val"):
    es = [e for (sp, _), (e, _) in shards.items() if sp == split]
    want = wanted.get(split)
    if not es:
        print(f"{split}: 0 of {want} shards")
        continue
    t = [e["timing"] for e in es]
    secs = sum(x["responses_seconds"] + x.get("prefill_seconds", 0) for x in t)
    print(f"{split}: {len(es)} of {want} shards, {sum(e['sequences'] for e in es)} sequences, "
          f"{sum(e['tokens'] for e in es)} tokens; {secs / len(es):.0f} s per shard; answers "
          f"{sum(x['responses_tokens'] for x in t) / sum(x['responses_seconds'] for x in t):.0f} tokens/s; "
          f"dtypes {sorted({e.get('dtype') for e in es})}")
PY
    ;;
  *)
    echo "scale_heads.sh: unknown STEP=$STEP (data, status, train, stages, control, curve, export, validate)" >&2
    exit 2
    ;;
esac
