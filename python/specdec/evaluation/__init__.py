"""Evaluation of draft heads (`specdec eval`): prompts (MT-bench, HumanEval, JSONL), the interleaved
measurement harness with its greedy-equivalence check, and the report (CSV, markdown, plots).
See docs/eval.md."""

from .harness import EvalSettings, Harness, chat_ids, classify_divergence, tie_tolerance
from .prompts import Prompt, PromptError, fetch_benchmark, load_benchmark, load_jsonl, parse_jsonl
from .report import aggregate, stamp, write_report

__all__ = [
    "EvalSettings",
    "Harness",
    "Prompt",
    "PromptError",
    "aggregate",
    "chat_ids",
    "classify_divergence",
    "fetch_benchmark",
    "load_benchmark",
    "load_jsonl",
    "parse_jsonl",
    "stamp",
    "tie_tolerance",
    "write_report",
]
