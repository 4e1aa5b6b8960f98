"""Optimizer steps in 1/D of an epoch of a `specdec data` folder's train split (its sequences / 8 sequences per
step / D), for the training scripts (train_heads.sh, scale_heads.sh). Refuses a train split that is not
completely built (e.g. a folder made by `--splits val`, or a build still running), which would give a
--max-steps of 0 or too few.

    python3 scripts/epoch_steps.py CALLER MANIFEST D      # CALLER names the script in the error message
"""

import json
import os
import sys


def main(argv) -> None:
    caller, manifest, parts = argv[1], argv[2], int(argv[3])
    if not os.path.isfile(manifest):
        sys.exit(f"{caller}: no data yet ({manifest}): run STEP=data first")
    with open(manifest) as f:
        train = json.load(f)["splits"]["train"]
    have, want = len(train.get("shards") or []), train.get("num_shards")
    if want is None or have < want or not train.get("sequences"):
        sys.exit(f"{caller}: the train split of {manifest} is not built ({have} of {want} shards): run STEP=data first")
    print(train["sequences"] // 8 // parts)


if __name__ == "__main__":
    main(sys.argv)
