#!/usr/bin/env bash
# Issue 24's runs for the default target (SmolLM2-135M-Instruct): all of ShareGPT's usable first turns,
# self-distilled by the target (3.5x the data of the shipped heads), then the data-scaling runs of the
# heads. Long: spread over several sessions; every step resumes where it stopped, so rerun the same
# command after an interruption.
#
#   THREADS=1 STEP=data bash scripts/scale_heads.sh     # build (or continue) the data; THREADS=2 when the
#                                                       # machine is otherwise idle
#   STEP=status bash scripts/scale_heads.sh             # where the data build stands
#
# The data: first turns of every usable ShareGPT conversation (--max-turns 1, no --num-prompts), the
# target's greedy answers (at most 192 tokens, 512 per sequence) by continuous batching on specdec's KV
# cache (32 slots), features stored. --dtype auto (the default) records "auto": each shard is computed in
# the faster dtype of the machine that builds it (bf16 with AVX-512 BF16 / AMX, fp32 on AVX2-only CPUs).
# The held-out split is the hash-chosen 2% of conversations, as for the shipped heads' 5,000 (whose
# held-out conversations it contains).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${WORK:-${SPECDEC_HOME:-$HOME/.cache/specdec}}"
DATA="$WORK/data/sharegpt-all"
THREADS="${THREADS:-2}"
STEP="${STEP:-data}"
PY="${PY:-$ROOT/.venv/bin/python}"
export OMP_NUM_THREADS="$THREADS"
export PYTHONPATH="$ROOT/python:$ROOT${PYTHONPATH:+:$PYTHONPATH}"

case "$STEP" in
  data)
    "$PY" -m specdec.cli data --target default --out "$DATA" --max-turns 1 --max-len 512 --max-new-tokens 192 \
      --batch-size 32 --shard-size 250 --threads "$THREADS" --no-progress
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
    echo "scale_heads.sh: unknown STEP=$STEP (data, status)" >&2
    exit 2
    ;;
esac
