"""Random batches of B sequences against length-grouped batches of N tokens (`specdec train --batch-tokens`):
training throughput and, with --epochs, what a pass over the same sequences learns.

    python bench/batch_tokens.py --data ~/.cache/specdec/data/sharegpt-all --steps 25       # throughput
    python bench/batch_tokens.py --data ~/.cache/specdec/data/sharegpt-all --epochs 1       # + held-out acceptance

Both arms train the same head kind from the same seed on the same seeded sample of the data's train split
(--sequences), and validate on --val-sequences other train sequences (the val split stays untouched for
the heads); the target runs in fp32, the training in fp32 on --threads threads. Padding: the share of the
padded batch that is real tokens over one epoch of each arm. Writes batch_tokens_<device>.{csv,md} (with
--results under the results folder beside this script, else its out folder).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import OUT_DIR, RESULTS_DIR, env_info, write_csv


class _Sample(torch.utils.data.Dataset):
    """The items `idx` of a FeatureDataset (lengths and token counts for the trainer)."""

    def __init__(self, full, idx):
        self.full, self.idx, self.manifest = full, idx, full.manifest
        every = full.lengths()  # one pass over the shards' offsets, not one per item
        self._lengths = [every[i] for i in idx]

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, i):
        return self.full[self.idx[i]]

    def lengths(self):
        return list(self._lengths)

    def token_counts(self):
        return self.full.token_counts()


def padding_efficiency(lengths, batches) -> float:
    """Real tokens / padded tokens (count x longest) over `batches` (index tensors into lengths)."""
    lens = torch.tensor(lengths)
    real = sum(int(lens[b].sum()) for b in batches)
    return real / max(1, sum(len(b) * int(lens[b].max()) for b in batches))


def run_arm(name: str, arm: dict, args, target, train_ds, val_ds) -> dict:
    """Train one arm in a temporary folder; its throughput, padding efficiency and last validation."""
    from specdec.training.batches import epoch_batches
    from specdec.training.trainer import TrainConfig, train

    out = tempfile.mkdtemp(prefix=f"batch_tokens_{name}_")
    try:
        cfg = TrainConfig(
            kind=args.kind, out=out, draft_vocab=args.draft_vocab, lr=args.lr, epochs=args.epochs,
            max_steps=args.steps or None, progress=False, plot=False, validate_at_start=False,
            val_steps=args.val_steps, checkpoint_every=10**9, **arm,
        )  # fmt: skip
        train(cfg, target_model=target, datasets=(train_ds, val_ds))
        stage = json.load(open(os.path.join(out, "summary.json")))["stages"]["1"]
        batches = epoch_batches(len(train_ds), cfg.batch_size, 0, 1, 0, train_ds.lengths(), cfg.batch_tokens)
        row = {
            "arm": name,
            "setting": ", ".join(f"{k} {v}" for k, v in arm.items()),
            "steps": stage["steps"],
            "tokens": stage["tokens"],
            "seconds": round(stage["train_seconds"], 1),
            "tokens_per_s": round(stage["tokens_per_s"], 1),
            "real_share": round(padding_efficiency(train_ds.lengths(), batches), 3),
        }
        with open(os.path.join(out, "val_log.csv")) as f:
            last = f.read().splitlines()
        if args.steps == 0 and len(last) > 1:
            val = dict(zip(last[0].split(","), last[-1].split(",")))
            row.update({k: val[k] for k in ("val_loss", "acc_1", "acc_2", "acc_3", "tau_chain") if k in val})
        return row
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a `specdec data` folder with features")
    p.add_argument("--target", default="default")
    p.add_argument("--kind", default="fspad")
    p.add_argument("--sequences", type=int, default=1600, help="training sequences sampled from the train split")
    p.add_argument("--val-sequences", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batch-tokens", type=int, default=1920)
    p.add_argument("--steps", type=int, default=25, help="optimizer steps per arm (0: --epochs full passes)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--draft-vocab", type=int, default=8192)
    p.add_argument("--val-steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", action="store_true", help="write under bench/results instead of bench/out")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM

    from specdec.data import FeatureDataset
    from specdec.default_target import resolve_target

    full = FeatureDataset(args.data, split="train", allow_incomplete=True)
    need = args.sequences + args.val_sequences
    if len(full) < need:
        raise SystemExit(f"--data: its train split has {len(full)} sequences, fewer than the {need} asked for")
    pick = torch.randperm(len(full), generator=torch.Generator().manual_seed(0))[:need].tolist()
    train_ds, val_ds = _Sample(full, pick[: args.sequences]), _Sample(full, pick[args.sequences :])
    target = AutoModelForCausalLM.from_pretrained(resolve_target(args.target), dtype=torch.float32)
    arms = {"random": {"batch_size": args.batch_size}, "grouped": {"batch_tokens": args.batch_tokens}}
    rows = [run_arm(name, arm, args, target, train_ds, val_ds) for name, arm in arms.items()]
    rows[1]["speedup"] = round(rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"], 2)
    rows[0]["speedup"] = 1.0
    out_dir = RESULTS_DIR if args.results else OUT_DIR
    path = write_csv(rows, "batch_tokens", "cpu", out_dir=out_dir)
    env = env_info("cpu")
    cols = [c for c in rows[0] if c in rows[1]] + [c for c in rows[1] if c not in rows[0]]
    lines = [
        "# Random vs length-grouped training batches (bench/batch_tokens.py)",
        "",
        f"- {env['device']}; ISA {env['isa']}; load {env['load']}; torch {env['torch']}; commit {env['commit']}, "
        f"{env['date']}",
        f"- {args.kind} head, {args.sequences} training sequences of `{os.path.basename(args.data.rstrip('/'))}`"
        f" ({sum(train_ds.lengths())} tokens), {args.steps or f'{args.epochs} epoch(s) of'} steps, lr {args.lr}, "
        f"draft vocabulary {args.draft_vocab}; real_share: real / padded tokens over an epoch",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    with open(path[: -len(".csv")] + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
