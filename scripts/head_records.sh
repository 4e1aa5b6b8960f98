# Sourced by scripts/train_heads.sh and scripts/scale_heads.sh (which set ROOT, PY and DATA): export a trained head
# into the package and keep how it was made in the repository.
#
#   ship_head KIND RUN RECIPE DATA [EARLIER_RUN:PREFIX ...]
#
# exports run folder RUN (before the run has ended, its snapshot/: head_of_run) as the shipped KIND head (python/specdec/heads/SmolLM2-135M-Instruct/<kind>: config.json,
# bf16 model.safetensors, README.md) and replaces bench/results/training/<kind>/ with its records: RECIPE (a
# markdown file the caller wrote: the commands), RUN's summary.json, train_log.csv, val_log.csv and curves.png,
# and the same logs of every EARLIER_RUN of its lineage (a folder beside RUN) as PREFIX_summary.json, ...; DATA's
# manifest goes to bench/results/training/$MANIFEST_NAME (default data_manifest.json). Text is written with
# this machine's folders made portable ($SPECDEC_HOME, ~). With DRY_RUN=1 it prints the export command only.

# (HEADS and RECORDS may be set beforehand, e.g. to folders of a test.)
HEADS="${HEADS:-$ROOT/python/specdec/heads/SmolLM2-135M-Instruct}"
RECORDS="${RECORDS:-$ROOT/bench/results/training}"
# The name of the data manifest's copy in RECORDS (each script's heads come from their own data).
MANIFEST_NAME="${MANIFEST_NAME:-data_manifest.json}"

# The folder a run's head is exported from: RUN itself once it has ended, else its snapshot/ (the head of its
# newest validation, `specdec train` writes it while the run goes on); nothing when neither holds a head.
head_of_run() {
  if [ -f "$1/model.safetensors" ]; then
    echo "$1"
  elif [ -f "$1/snapshot/model.safetensors" ]; then
    echo "$1/snapshot"
  fi
}

# The held-out measurement of a shipped head (specdec_validation in its config.json), on the caller's DATA.
validate_cmd() { echo "specdec validate --draft python/specdec/heads/SmolLM2-135M-Instruct/$1 --data $DATA --write --no-progress"; }

# Copies SRC DST [SRC DST ...] with this machine's folders written portably ($SPECDEC_HOME, ~) in text files.
copy_portable() {
  "$PY" -c 'import sys; from specdec.training.export_head import copy_portable as c; a = sys.argv[1:]
for s, d in zip(a[::2], a[1::2]): c(s, d)' "$@"
}

ship_head() {
  local kind="$1" src="$2" recipe_file="$3" data="$4"
  shift 4
  # The head's README.md is written by hand (recipe, data, measured acceptance) and kept across exports:
  # update its numbers after a new training. Without one, the export writes one from the config.
  local readme=()
  if [ -f "$HEADS/$kind/README.md" ]; then readme=(--readme "$HEADS/$kind/README.md"); fi
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    echo "+ python -m specdec.training.export_head $src $HEADS/$kind ${readme[*]}" >&2
    return 0
  fi
  # A run still going (or stopped) before its end ships its snapshot, with its logs as they stand.
  local head
  head=$(head_of_run "$src")
  if [ -z "$head" ]; then
    echo "export: $kind is not trained yet ($src)" >&2
    return 0
  elif [ "$head" != "$src" ]; then
    echo "export: $kind from the snapshot of an unfinished run ($head)" >&2
  fi
  "$PY" -m specdec.training.export_head "$head" "$HEADS/$kind" "${readme[@]}"
  # Records of an earlier lineage would mix with this one's under the same prefixes: start afresh (git keeps
  # the old ones).
  rm -rf "${RECORDS:?}/$kind"
  mkdir -p "$RECORDS/$kind"
  local pairs=("$recipe_file" "$RECORDS/$kind/RECIPE.md" "$data/manifest.json" "$RECORDS/$MANIFEST_NAME")
  local f pair
  for f in summary.json train_log.csv val_log.csv curves.png; do pairs+=("$src/$f" "$RECORDS/$kind/$f"); done
  for pair in "$@"; do
    for f in summary.json train_log.csv val_log.csv; do
      pairs+=("$(dirname "$src")/${pair%%:*}/$f" "$RECORDS/$kind/${pair#*:}_$f")
    done
  done
  copy_portable "${pairs[@]}"
}
