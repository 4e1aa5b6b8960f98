"""Optimizer steps in 1/D of an epoch of a `specdec data` folder's train split, for the training scripts
(train_heads.sh, scale_heads.sh): its sequences / 8 sequences per step / D, or with BATCH_TOKENS the
length-grouped batches of `specdec train --batch-tokens BATCH_TOKENS` / D (then run with specdec importable).
Refuses a train split that is not completely built (e.g. a folder made by `--splits val`, or a build still
running), which would give a --max-steps of 0 or too few.

    python3 scripts/epoch_steps.py CALLER MANIFEST D [BATCH_TOKENS]   # CALLER names the script in errors
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
    if len(argv) > 4 and argv[4]:
        # the trainer's own partition (one process), over the stored lengths
        from specdec.data import TokenDataset
        from specdec.training.batches import batch_sizes_by_length

        lengths = TokenDataset(os.path.dirname(manifest), split="train", verify=False).lengths()
        steps = len(batch_sizes_by_length(sorted(lengths), int(argv[4])))
    else:
        steps = train["sequences"] // 8
    print(steps // parts)


if __name__ == "__main__":
    main(sys.argv)
