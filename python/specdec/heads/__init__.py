"""Draft heads shipped with the package: EAGLE, FSPAD and GRIFFIN heads trained by this project for its
default target (SmolLM2-135M-Instruct, see specdec.default_target), each a folder of exactly config.json +
model.safetensors (bf16) + README.md (recipe, data, measured acceptance). How they were made (the exact
commands, training logs and curves, the data manifest) is kept in the repository, under
bench/results/training/, not in the package; docs/heads.md describes both.

Wherever a command takes `--draft`, the word `eagle`, `fspad` or `griffin` picks the shipped head of that
kind (for the default target only: a head reads its own target's features); anything else is a folder.
"""

from __future__ import annotations

import os
from typing import Dict

from ..head_kinds import KINDS

# Folder of the default target's heads, named like the target folder of specdec.default_target.
HEADS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "SmolLM2-135M-Instruct")


def shipped_heads() -> Dict[str, str]:
    """{kind: folder} of the shipped heads present in this installation.

    Example:
        >>> from specdec.heads import shipped_heads
        >>> set(shipped_heads()) <= {"eagle", "fspad", "griffin"}
        True
    """
    found = {}
    for kind in KINDS:
        folder = os.path.join(HEADS_DIR, kind)
        if os.path.isfile(os.path.join(folder, "config.json")):
            found[kind] = folder
    return found


def resolve_draft(spec: str) -> str:
    """The folder a `--draft` value names: a shipped head's folder for "eagle" / "fspad" / "griffin" (when no
    folder of that name exists in the working directory), else the path itself with ~ expanded.

    Raises FileNotFoundError for a shipped name whose head is not in this installation.

    Example:
        >>> from specdec.heads import resolve_draft
        >>> resolve_draft("~/my_head").endswith("my_head")
        True
    """
    if spec in KINDS and not os.path.exists(spec):
        folder = os.path.join(HEADS_DIR, spec)
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise FileNotFoundError(
                f"the shipped {spec} head is missing from this installation (expected {folder}); "
                f"available: {sorted(shipped_heads()) or 'none'}"
            )
        return folder
    return os.path.expanduser(spec)


def describe_draft(folder: str) -> str:
    """How a record (an eval report, a log) names the head in `folder`: a shipped head by its kind, as
    "griffin (shipped)", any other by its folder with this machine's home folders written portably
    (specdec.files.portable_paths), so that committed records name no machine's paths.

    Example:
        >>> from specdec.heads import describe_draft, resolve_draft, shipped_heads
        >>> all(describe_draft(resolve_draft(k)) == f"{k} (shipped)" for k in shipped_heads())
        True
    """
    from ..files import portable_paths

    for kind, shipped in shipped_heads().items():
        if os.path.realpath(folder) == os.path.realpath(shipped):
            return f"{kind} (shipped)"
    return portable_paths(folder)
