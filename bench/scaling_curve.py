"""Data-scaling curves of draft heads: held-out acceptance and expected tau against the training seen so far.

Reads the records `specdec train` writes into each run folder (summary.json: every validation with its per-step
acceptance acc_k and top-k coverage cov_k; train_log.csv: the tokens of every optimizer step) and writes, per
head, one row per validation point:

  tokens        response-and-prompt tokens the head has trained on so far (all runs of its lineage)
  token_passes  the same weighted by the forward passes a step makes over them: GRIFFIN's stage j drafts j
                steps per token (its multi-step training), so it costs about j times stage 1 per token
  epochs        passes over the training split so far
  acc_1..acc_5  held-out acceptance of draft step k given steps < k were accepted (specdec.training.validation)
  tau_chain     expected tokens per pass of a chain of 5 drafts (1 + acc_1 + acc_1 acc_2 + ...)
  tau_papers    expected tokens per pass of the papers' tree (60 nodes, depth 5, top-k 10) and
  tau_8         of the 8-node tree that pays on a CPU (depth 2, top-k 4), both from the coverage by the tree
                budget's model (specdec.decoding.budget.expected_tokens; on MT-bench the shipped heads reach
                about 0.9x of it for 8-node trees and 0.75-0.8x for the papers' tree: docs/results.md)

A head's lineage is its runs in order (a later run starts from the earlier one's weights, e.g. GRIFFIN's
stage-1 run then its stages-2-3 run): tokens, passes and epochs add up along it.

    python bench/scaling_curve.py --head fspad=RUNS/scale-fspad --head griffin=RUNS/scale-griffin-s1,RUNS/scale-griffin
    python bench/scaling_curve.py --head ... --out-dir bench/results/scaling --tag full-data

Writes scaling.csv, scaling.md and scaling.png (acc_1 and the expected tau against tokens seen, log scale)
into --out-dir (default: the folder scaling under bench/results).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS_DIR, env_info

PAPERS_TREE = (60, 5, 10)  # N, depth, top-k
CPU_TREE = (8, 2, 4)
STEPS = 5


def _train_tokens(run: str) -> dict:
    """{(stage, global_step): (cumulative tokens, cumulative token passes, cumulative epochs)} of a run's
    train_log.csv; the epoch column restarts with each stage, so a stage's epochs are added to those of the
    stages before it (the train log's epoch, not the validation record's: that one counts an epoch cut
    short by max_steps as whole in records written before the trainer recorded the fraction)."""
    path = os.path.join(run, "train_log.csv")
    if not os.path.isfile(path):
        raise SystemExit(f"scaling_curve: {run} has no train_log.csv (not a `specdec train` output folder)")
    out, tokens, passes, ends = {}, 0, 0, {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            stage, n = int(r["stage"]), int(float(r["tokens"]))
            tokens += n
            passes += n * stage  # stage j drafts j steps per token (stage 1: one)
            ends[stage] = float(r["epoch"])
            before = sum(e for s, e in ends.items() if s < stage)
            out[(stage, int(r["global_step"]))] = (tokens, passes, before + ends[stage])
    return out


def _validations(run: str) -> list:
    """The run's validation rows in order (summary.json keeps the cov_k lists the CSV leaves out), one per
    (stage, global step): a resumed run may have logged a step twice."""
    path = os.path.join(run, "summary.json")
    if not os.path.isfile(path):
        raise SystemExit(f"scaling_curve: {run} has no summary.json")
    with open(path) as f:
        stages = json.load(f).get("stages", {})
    rows = {}
    for stage in sorted(stages, key=int):
        for r in stages[stage].get("validation", []):
            rows[(int(r["stage"]), int(r["global_step"]))] = r
    return [rows[k] for k in sorted(rows, key=lambda k: (k[0], k[1]))]


def lineage_rows(head: str, runs: List[str]) -> list:
    """One row per validation point of the runs of a head's lineage (module docstring)."""
    from specdec.decoding.budget import acceptance_of, expected_tokens

    rows, base_tokens, base_passes, base_epochs = [], 0, 0, 0.0
    for run in runs:
        seen = _train_tokens(run)
        for v in _validations(run):
            key = (int(v["stage"]), int(v["global_step"]))
            if int(v["step"]) == 0 and rows:
                continue  # the start of a stage or a continuation: the same weights as the point before
            tokens, passes, epochs = seen.get(key, (0, 0, 0.0))  # a start point has no train-log row
            acc = acceptance_of(v)
            row = {
                "head": head,
                "run": os.path.basename(os.path.normpath(run)),
                "stage": key[0],
                "step": int(v["step"]),
                "tokens": base_tokens + tokens,
                "token_passes": base_passes + passes,
                "epochs": round(base_epochs + epochs, 4),
            }
            for k in range(1, STEPS + 1):
                a = v.get(f"acc_{k}")
                row[f"acc_{k}"] = round(a, 4) if isinstance(a, (int, float)) else ""
            row["tau_chain"] = round(v["tau_chain"], 4)
            row["tau_papers"] = round(expected_tokens(*PAPERS_TREE, acc), 3) if acc else ""
            row["tau_8"] = round(expected_tokens(*CPU_TREE, acc), 3) if acc else ""
            row["coverage"] = "yes" if v.get("cov_1") else "no (top-1 rank model)"
            row["val_loss"] = round(v["val_loss"], 4)
            rows.append(row)
        # the next run of the lineage starts from this one's weights: its training adds to this one's
        if seen:
            last_tokens, last_passes, last_epochs = max(seen.values())
            base_tokens, base_passes = base_tokens + last_tokens, base_passes + last_passes
            base_epochs += last_epochs
    return rows


def markdown(rows: list, args) -> str:
    env = env_info("cpu")
    cols = ["run", "stage", "step", "epochs", "tokens", "token_passes"]
    cols += [f"acc_{k}" for k in range(1, STEPS + 1)] + ["tau_chain", "tau_8", "tau_papers", "val_loss"]
    lines = [
        f"# Data-scaling curves of the draft heads{' (' + args.tag + ')' if args.tag else ''}",
        "",
        f"Written by `bench/scaling_curve.py` (commit {env['commit']}, {env['date']}) from the runs' own records "
        "(summary.json, train_log.csv). acc_k: held-out acceptance of draft step k given the earlier steps were "
        "accepted; tau_chain: a 5-draft chain; tau_8 / tau_papers: the tree budget's expected tokens per pass "
        "for the 8-node tree (depth 2, top-k 4) and the papers' (60 nodes, depth 5, top-k 10) from the held-out "
        "top-k coverage. tokens: training tokens seen; token_passes: weighted by the draft steps a token is "
        "trained over (GRIFFIN's stage j: j).",
        "",
    ]
    for head in dict.fromkeys(r["head"] for r in rows):
        lines += [f"## {head}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            if r["head"] == head:
                lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
        lines.append("")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, int) and v >= 10000:
        return f"{v / 1e6:.2f}M"
    return str(v)


def plot(rows: list, path: str) -> None:
    """acc_1 and the expected taus against tokens seen, one line per head (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        print("scaling_curve: matplotlib is not installed: no plot", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for head in dict.fromkeys(r["head"] for r in rows):
        pts = [r for r in rows if r["head"] == head and r["token_passes"] > 0]
        x = [r["token_passes"] for r in pts]
        for ax, key in zip(axes, ("acc_1", "tau_8", "tau_papers")):
            y = [r[key] if r[key] != "" else float("nan") for r in pts]
            ax.plot(x, y, "o-", label=head, markersize=3)
    titles = ("held-out acceptance, draft step 1", "expected tau, 8-node tree", "expected tau, papers' tree")
    for ax, title in zip(axes, titles):
        ax.set_xscale("log")
        ax.set_xlabel("training token passes")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--head",
        action="append",
        required=True,
        metavar="NAME=RUN[,RUN...]",
        help="a head's name and its lineage's run folders in order (repeat per head)",
    )
    ap.add_argument("--out-dir", default=os.path.join(RESULTS_DIR, "scaling"))
    ap.add_argument("--tag", default="", help="a word for the title (e.g. the data)")
    args = ap.parse_args(argv)
    rows = []
    for spec in args.head:
        name, sep, runs = spec.partition("=")
        if not sep or not name or not runs:
            ap.error(f"--head {spec!r}: expected NAME=RUN[,RUN...]")
        rows += lineage_rows(name, [r for r in runs.split(",") if r])
    if not rows:
        raise SystemExit("scaling_curve: no validation points in the given runs")
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "scaling.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(args.out_dir, "scaling.md"), "w") as f:
        f.write(markdown(rows, args) + "\n")
    plot(rows, os.path.join(args.out_dir, "scaling.png"))
    print(f"wrote {args.out_dir}/scaling.csv, scaling.md, scaling.png ({len(rows)} points)")


if __name__ == "__main__":
    main()
