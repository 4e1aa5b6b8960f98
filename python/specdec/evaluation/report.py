"""The files of `specdec eval`: eval.csv (every prompt and turn), eval.md (the table), tau.png and
speedup.png, and meta.json (machine, commit, date, settings), all stamped alike.

Aggregates per (head, benchmark, temperature): tau = accepted tokens / target passes over all turns
(bonus included); accept_ge_k = the fraction of all passes that accepted at least k draft tokens; the
speedups are throughput ratios over all turns (sum of new tokens / sum of seconds, speculative over the other
method), so long answers weigh more, as in the papers' wall-clock speedups.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Optional

from specdec_kernels.cpu_info import cpu_model

from ..files import atomic_path

BASE_COLUMNS = [
    "benchmark",
    "prompt_id",
    "turn",
    "head",
    "temperature",
    "tree",
    "plain_after",
    "prompt_tokens",
    "new_tokens",
    "passes",
    "accepted_tokens",
    "tau",
]
TAIL_COLUMNS = [
    "generate_tokens",
    "baseline_tokens",
    "time_generate",
    "time_baseline",
    "time_speculative",
    "tokens_per_s_generate",
    "tokens_per_s_baseline",
    "tokens_per_s_speculative",
    "speedup_generate",
    "speedup_baseline",
    "mismatch",
    "mismatch_position",
    "mismatch_gap",
    "mismatch_tol",
    "baseline_mismatch",
]


def columns(depth: int) -> list:
    """The CSV columns for a tree of `depth` levels."""
    return BASE_COLUMNS + [f"accept_ge_{k}" for k in range(1, depth + 1)] + TAIL_COLUMNS


def git_commit(cwd=None) -> str:
    try:
        cwd = cwd or os.path.dirname(os.path.abspath(__file__))
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_label() -> str:
    """The CPU model and the vector ISA torch dispatches to (AVX2, AVX512, ...): two "AMD EPYC" hosts can
    differ in the ISA, and bf16 speed (and whether oneDNN's packed bf16 path runs at all) depends on it."""
    import torch

    return f"{cpu_model()} ({getattr(torch.backends.cpu, 'get_cpu_capability', lambda: '?')()})"


def gpu_label(device) -> Optional[str]:
    """The GPU's name for a CUDA device, else None."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return None


def stamp(device=None, dtype=None) -> dict:
    """Machine, commit and date of a run."""
    import torch

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "platform": platform.platform(),
        "cpu": cpu_label(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if device is not None:
        info["device"] = str(device)
        gpu = gpu_label(device)
        if gpu is not None:
            info["gpu"] = gpu
    if dtype is not None:
        info["dtype"] = str(dtype).replace("torch.", "")
    return info


def stamp_line(info: dict, short: bool = False) -> str:
    keys = ("date", "commit", "cpu", "gpu", "torch_threads", "device", "dtype")
    keys += () if short else ("platform", "torch")
    return "; ".join(f"{k} {info[k]}" for k in keys if k in info)


def switched_to_plain(row: dict) -> bool:
    """Whether "auto" went on plainly in this turn (a plain_after recorded; "" or "None" from a CSV when not)."""
    return str(row.get("plain_after", "")) not in ("", "None")


def tree_passes(row: dict) -> int:
    """A turn's tree passes: all its passes, or those before "auto" went on plainly (plain_after)."""
    return int(row["plain_after"]) if switched_to_plain(row) else int(row["passes"])


def aggregate(rows: list, depth: int) -> list:
    """One dict per (head, benchmark, temperature), in first-seen order."""
    groups = {}
    for r in rows:
        groups.setdefault((r["head"], r["benchmark"], r["temperature"]), []).append(r)
    out = []
    for (head, bench, temp), rs in groups.items():
        passes = sum(r["passes"] for r in rs)
        acc = sum(r["accepted_tokens"] for r in rs)
        t = {m: sum(r[f"time_{m}"] for r in rs) for m in ("generate", "baseline", "speculative")}
        n = {
            "generate": sum(r["generate_tokens"] for r in rs),
            "baseline": sum(r["baseline_tokens"] for r in rs),
            "speculative": sum(r["new_tokens"] for r in rs),
        }
        tps = {m: n[m] / t[m] if t[m] > 0 else float("nan") for m in t}
        g = {
            "head": head,
            "benchmark": bench,
            "temperature": temp,
            "turns": len(rs),
            "tree": ",".join(sorted({str(r.get("tree", "")) for r in rs})),
            "to_plain": sum(switched_to_plain(r) for r in rs),
            "new_tokens": n["speculative"],
            "passes": passes,
            "tau": acc / passes if passes else float("nan"),
            "tokens_per_s_speculative": tps["speculative"],
            "tokens_per_s_generate": tps["generate"],
            "tokens_per_s_baseline": tps["baseline"],
            "speedup_generate": tps["speculative"] / tps["generate"] if tps["generate"] else float("nan"),
            "speedup_baseline": tps["speculative"] / tps["baseline"] if tps["baseline"] else float("nan"),
            "ties": sum(r["mismatch"] == "tie" for r in rs),
            "mismatches": sum(r["mismatch"] == "mismatch" for r in rs),
            "baseline_mismatches": sum(r["baseline_mismatch"] == "mismatch" for r in rs),
            "greedy": temp == 0,
        }
        for k in range(1, depth + 1):
            w = [
                (r[f"accept_ge_{k}"], tree_passes(r))
                for r in rs
                if tree_passes(r) and r[f"accept_ge_{k}"] == r[f"accept_ge_{k}"]
            ]
            total = sum(p for _, p in w)
            g[f"accept_ge_{k}"] = sum(a * p for a, p in w) / total if total else float("nan")
        out.append(g)
    return out


def write_csv(rows: list, path, depth: int) -> None:
    cols = columns(depth)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def check_same_run(saved: dict, ident: dict) -> None:
    """ValueError unless `ident` (the settings of a run about to resume) equals `saved` (those of the
    interrupted run in the checkpoint): a resumed run must measure what the interrupted one measured."""
    differ = [k for k in sorted(set(saved) | set(ident)) if saved.get(k) != ident.get(k)]
    if differ:
        k = differ[0]
        raise ValueError(
            f"expected the interrupted run's {', '.join(differ)}; {k} was {saved.get(k)!r}, "
            f"now {ident.get(k)!r} (same arguments, or another --out)"
        )


class Checkpoint:
    """`eval.partial.jsonl`, the checkpoint of a run: the run's settings on the first line, then one line per
    measured turn ({"row": the eval.csv row, "answer": the answer's text, which a second turn continues
    from}), each flushed as soon as the turn is measured. A run that is interrupted after hours keeps what
    it measured, and `specdec eval --resume` with the same arguments continues it (see `load`); the
    finished run removes the file (`close(keep=False)`)."""

    NAME = "eval.partial.jsonl"

    def __init__(self, out, settings: dict, done: Optional[list] = None):
        """Start the file with `settings`, then the (row, answer) pairs of `done` (a resumed run's turns).
        It is written beside and renamed into place (specdec.files.atomic_path), so a resumed run killed
        or failing while rewriting it still leaves the previous checkpoint whole."""
        self.path = Path(out) / self.NAME
        self.rows = 0
        with atomic_path(self.path) as tmp:
            self._f = open(tmp, "w")  # kept open for add(): the handle follows the file when it is renamed
            try:
                self._write({"settings": settings})
                for row, answer in done or []:
                    self.add(row, answer)
            except BaseException:
                self._f.close()
                raise

    def _write(self, obj: dict) -> None:
        self._f.write(json.dumps(obj) + "\n")
        self._f.flush()

    def add(self, row: dict, answer: str) -> None:
        self._write({"row": row, "answer": answer})
        self.rows += 1

    def close(self, keep: bool) -> None:
        self._f.close()
        if not keep:
            self.path.unlink(missing_ok=True)

    @classmethod
    def load(cls, out) -> tuple:
        """(settings, [(row, answer), ...]) of the checkpoint in `out`; ValueError if it is unreadable. A
        last line cut short by the interruption is dropped."""
        path = Path(out) / cls.NAME
        lines = path.read_text().splitlines()
        try:
            settings = json.loads(lines[0])["settings"]
        except (IndexError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: expected a first line with the run's settings ({exc})") from exc
        done = []
        for i, line in enumerate(lines[1:], 2):
            try:
                item = json.loads(line)
                done.append((item["row"], item["answer"]))
            except (KeyError, TypeError, json.JSONDecodeError) as exc:
                if i == len(lines):
                    break  # written when the run was killed
                raise ValueError(f"{path}, line {i}: expected a measured turn ({exc})") from exc
        return settings, done


def tree_cell(group: dict) -> str:
    """The summary table's tree cell: the trees drafted, and in how many turns "auto" went on plainly."""
    n = group.get("to_plain", 0)
    return group["tree"] + (f" (to plain in {n})" if n else "")


def markdown(groups: list, info: dict, settings: dict, depth: int) -> str:
    lines = [
        "# specdec eval",
        "",
        f"Machine and run: {stamp_line(info)}.",
        "",
        "Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()) + ".",
        "",
    ]
    real = sum(g["mismatches"] for g in groups if g["greedy"])
    if real:
        low = info.get("dtype") in ("bfloat16", "float16")
        why = "expected from reduced-precision rounding" if low else "in fp32 this is a BUG"
        lines += [
            f"**WARNING: {real} REAL MISMATCH(ES) at temperature 0**: speculative output differs from "
            "model.generate's greedy output where the target's top-2 logits do not tie "
            f"({why}; "
            "see the mismatch columns of eval.csv).",
            "",
        ]
    acc_cols = " | ".join(f">={k}" for k in range(1, depth + 1))
    lines += [
        "| head | benchmark | T | tree N/depth/k | turns | tau | speedup vs generate | speedup vs baseline | "
        "tokens/s | "
        f"ties | mismatches | {acc_cols} |",
        "|" + "---|" * (11 + depth),
    ]
    for g in groups:
        greedy = g["greedy"]
        mism = ("**" + str(g["mismatches"]) + "**" if g["mismatches"] else "0") if greedy else "-"
        lines.append(
            f"| {g['head']} | {g['benchmark']} | {g['temperature']:g} | {tree_cell(g)} | {g['turns']} | "
            f"{g['tau']:.2f} | "
            f"{g['speedup_generate']:.2f}x | {g['speedup_baseline']:.2f}x | {g['tokens_per_s_speculative']:.1f} | "
            f"{g['ties'] if greedy else '-'} | {mism} | "
            + " | ".join(f"{g[f'accept_ge_{k}']:.2f}" for k in range(1, depth + 1))
            + " |"
        )
    lines += [
        "",
        "tau: tokens per target pass (bonus included). Speedup: throughput of speculative decoding over the "
        "target's own `model.generate` and over `generate_baseline`, same run, interleaved prompt by prompt. "
        ">=k: fraction of tree passes that accepted at least k draft tokens. ties / mismatches: at temperature 0, "
        "outputs that differ from model.generate's at a near-tie of the target's top-2 logits / elsewhere. "
        '"to plain in n": with --total-tokens auto, in n turns the tree realised fewer tokens per pass than it '
        "needs to beat plain decoding and the rest of the turn was decoded plainly (GenerationResult.plain_after).",
        "",
    ]
    return "\n".join(lines)


def plots(groups: list, out: Path, info: dict) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = list(dict.fromkeys(g["head"] for g in groups))
    keys = list(dict.fromkeys((g["benchmark"], g["temperature"]) for g in groups))
    by = {(g["head"], g["benchmark"], g["temperature"]): g for g in groups}
    files = []
    for name, metrics, ylabel in (
        ("tau.png", [("tau", "")], "tau (tokens per target pass)"),
        ("speedup.png", [("speedup_generate", " vs generate"), ("speedup_baseline", " vs baseline")], "speedup (x)"),
    ):
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(keys) * len(metrics)), 4.2))
        series = [(h, m, lab) for h in heads for m, lab in metrics]
        width = 0.8 / max(len(series), 1)
        for j, (h, m, lab) in enumerate(series):
            xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(keys))]
            ys = [by[(h, b, t)][m] if (h, b, t) in by else float("nan") for b, t in keys]
            bars = ax.bar(xs, ys, width, label=h + lab)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([f"{b}\nT={t:g}" for b, t in keys])
        ax.set_ylabel(ylabel)
        if name == "speedup.png":
            ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.legend(fontsize=8)
        ax.set_title(f"specdec eval: {ylabel}", fontsize=10)
        fig.text(0.01, 0.005, stamp_line(info, short=True), fontsize=6, color="gray")
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        files.append(out / name)
    return files


def write_report(rows: list, out, depth: int, info: dict, settings: dict) -> dict:
    """Write eval.csv, eval.md, tau.png, speedup.png and meta.json into `out`; {name: path} and the groups."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    groups = aggregate(rows, depth)
    write_csv(rows, out / "eval.csv", depth)
    md = markdown(groups, info, settings, depth)
    (out / "eval.md").write_text(md)
    files = {"csv": out / "eval.csv", "markdown": out / "eval.md"}
    for f in plots(groups, out, info):
        files[f.stem] = f
    (out / "meta.json").write_text(
        json.dumps({"machine": info, "settings": settings, "summary": groups}, indent=2, default=str) + "\n"
    )
    files["meta"] = out / "meta.json"
    return {"files": files, "groups": groups, "markdown": md}
