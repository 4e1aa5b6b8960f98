"""Choose the reduced draft vocabulary by measurement: held-out coverage vs the cost of a draft level.

    python bench/draft_vocab.py --data ~/.cache/specdec/data/sharegpt-5k --target default --out bench/results

Coverage: the top-V response tokens of the data's train split (the ranking `specdec train --draft-vocab V`
uses), as the share of the *validation* split's response tokens they contain: a token outside the draft
vocabulary can never be drafted, so coverage bounds each step's acceptance (EAGLE-3 / FR-Spec).
Cost: one tree level of a random GRIFFIN head with that output layer (time_draft_level: the head over
k = 10 frontier nodes, log-softmax, top-k) after 300 context tokens, bf16, on this machine; and the
target's own decode step for scale. Writes draft_vocab_<device>.{csv,md}.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time

import torch

SIZES = (2048, 4096, 8192, 16384, 32768, None)  # None: the full vocabulary
# For the estimate column: a chain of DEPTH drafted tokens each accepted with ALPHA x coverage (ALPHA: a
# typical per-step acceptance of a trained head inside the vocabulary), verified for VERIFY target steps.
ALPHA, DEPTH, VERIFY = 0.7, 5, 1.3


def estimated_speed(coverage: float, level_over_step: float) -> float:
    """Expected tokens per target-step time of one pass: sum_i (ALPHA coverage)^i over DEPTH + 1 terms,
    over DEPTH draft levels (plus the extension, about one more) and VERIFY steps of verification."""
    a = ALPHA * coverage
    tokens = sum(a**i for i in range(DEPTH + 1))
    return tokens / ((DEPTH + 1) * level_over_step + VERIFY)


def response_counts(folder: str, split: str) -> torch.Tensor:
    """int64 [V]: occurrences of each token among the response tokens of a split (the shards' own counts)."""
    from specdec.data import TokenDataset

    return TokenDataset(folder, split=split).token_counts()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--target", default="default")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top-k", type=int, default=10)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM

    from specdec.decoding.budget import time_draft_level, time_verify
    from specdec.default_target import resolve_target
    from specdec.eos import eos_ids
    from specdec.models import DraftConfig, build_draft_head
    from specdec.target import TargetModel
    from specdec.training.vocab import top_tokens

    path = resolve_target(args.target)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, local_files_only=True).eval()
    target = TargetModel(model)
    V = model.config.vocab_size
    train, val = response_counts(args.data, "train"), response_counts(args.data, "val")
    if int(train.sum()) == 0 or int(val.sum()) == 0:
        sys.exit(f"{args.data}: no response tokens in the train or val split")
    eos = eos_ids(model)  # the ids the training run's draft vocabulary always keeps (the model's EOS)

    # the target's own decode step (TargetModel.verify of one node after 300 tokens of context), for scale
    step = time_verify(target, [1], context=300, repeats=7)[1]

    rows = []
    for size in SIZES:
        vd = V if size is None else size
        cfg = DraftConfig.from_target(model.config, "griffin", draft_vocab_size=size)
        head = build_draft_head(cfg, dtype=torch.bfloat16).eval()
        if size is not None:
            vocab = top_tokens(train, size, always=eos)
            head.set_draft_vocab(vocab)
            covered = int(val[vocab].sum())
        else:
            covered = int(val.sum())
        head.bind_target(target.embed_tokens, target.lm_head)
        with torch.no_grad():
            level = time_draft_level(head, [args.top_k], repeats=7)[args.top_k]
        rows.append(
            {
                "draft_vocab": vd,
                "val_coverage": covered / int(val.sum()),
                "draft_level_ms": level * 1e3,
                "level_vs_target_step": level / step,
                "estimated_tokens_per_step": estimated_speed(covered / int(val.sum()), level / step),
            }
        )
        print(rows[-1], flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    from specdec_kernels.cpu_info import cpu_model

    cpu = cpu_model()
    stamp = f"{cpu}, {args.threads} threads, commit {commit}, {time.strftime('%Y-%m-%d')}"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "draft_vocab_cpu.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(args.out, "draft_vocab_cpu.md"), "w") as f:
        data = os.path.basename(os.path.normpath(args.data))
        f.write(
            f"# Draft vocabulary: held-out coverage vs draft cost\n\n{stamp}; data {data} ({int(train.sum())} "
            f"train / {int(val.sum())} val response tokens); target decode step {step * 1e3:.1f} ms.\n\n"
        )
        f.write(
            "| draft vocab | val coverage | draft level (k=10) | level / target step | est. tokens per step-time |\n"
            "|---|---|---|---|---|\n"
        )
        for r in rows:
            f.write(
                f"| {r['draft_vocab']} | {r['val_coverage']:.4f} | {r['draft_level_ms']:.2f} ms "
                f"| {r['level_vs_target_step']:.2f} | {r['estimated_tokens_per_step']:.3f} |\n"
            )
        f.write(
            f"\nEstimate: a chain of {DEPTH} drafted tokens, each accepted with {ALPHA} x coverage, costs "
            f"{DEPTH + 1} draft levels (the extension counted as one) and {VERIFY} target steps of verification; "
            "tokens per pass over that time, in target steps. Coverage is measured on held-out data; the cost on "
            "this machine.\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
