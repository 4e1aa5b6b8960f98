"""The models a run loads, named by --target and --draft values: checks of those values that load no model.

Shared by the `specdec` subcommands (specdec.cli) and the demo. Each check raises
specdec.arguments.ArgumentError, "argument --X: expected ..., got ...": one line for the user; fetching the
default target (--target default) may raise specdec.default_target.TargetFetchError.
"""

from __future__ import annotations

import json
import os
import re
from typing import NamedTuple, Optional

from .arguments import ArgumentError, Verbatim

# What `from_pretrained` / `load_draft_head` read from a folder besides config.json.
TARGET_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
DRAFT_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def read_config(arg: str, path: str, weights: tuple, what: str) -> dict:
    """config.json of a local model folder, after checking the folder holds one of `weights`."""
    expected = f"{what} (a folder with config.json)"
    if not os.path.isdir(path):
        raise ArgumentError(arg, expected, Verbatim(f"{path!r}, which is a file, not a folder"))
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        raise ArgumentError(arg, expected, Verbatim(f"{path!r}, which has no config.json"))
    try:
        with open(cfg_file) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as exc:
        raise ArgumentError(
            arg,
            f"{what} with a readable config.json",
            Verbatim(f"{path!r}, whose config.json does not parse ({' '.join(str(exc).split())})"),
        ) from exc
    if not isinstance(cfg, dict):
        raise ArgumentError(
            arg,
            f"{what} whose config.json holds a JSON object",
            Verbatim(f"{path!r}, whose config.json holds a {type(cfg).__name__}"),
        )
    if not any(os.path.isfile(os.path.join(path, n)) for n in weights):
        raise ArgumentError(
            arg,
            f"{what} with weights ({' or '.join(weights)})",
            Verbatim(f"{path!r}, which has config.json but no weights"),
        )
    return cfg


def _cached_hub_config(repo_id: str) -> Optional[str]:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:
        return None
    return found if isinstance(found, str) else None


class CheckedTarget(NamedTuple):
    """What check_target found: `path` to give from_pretrained (a folder, a cached hub id, or the word
    "default" when it was not fetched), its config.json (None when unknown) and the local folder (None for a
    hub id or an unfetched default)."""

    path: str
    config: Optional[dict]
    folder: Optional[str]


def check_target(text: str, *, hub_cache: bool = True, fetch: bool = True) -> CheckedTarget:
    """Check a --target value before anything loads: the word "default", a model folder (with config.json,
    which must parse, and weights) or, with `hub_cache`, the id of a model in the local Hugging Face cache
    (nothing is downloaded). "default" is fetched when missing if `fetch` (TargetFetchError if that fails),
    else left for load_target. Raises ArgumentError."""
    what = "a Hugging Face model folder"
    # the words for a value that names nothing: what each command has always said
    forms = f"{what} (a folder with config.json)" if hub_cache else f"the word 'default' or {what} (with config.json)"
    if not text.strip():
        raise ArgumentError("--target", forms, text)
    if text.strip() == "default":
        if not fetch:
            return CheckedTarget("default", None, None)
        from .default_target import resolve_target

        text = resolve_target("default")  # fetched once (progress on stderr), then a local folder
    path = os.path.expanduser(text)
    if os.path.exists(path):
        return CheckedTarget(path, read_config("--target", path, TARGET_WEIGHTS, what), path)
    if hub_cache and HUB_ID.match(text) and ".." not in text:
        cached = _cached_hub_config(text)
        if cached is not None:
            try:
                with open(cached) as f:
                    cfg = json.load(f)
            except (OSError, ValueError):
                cfg = None
            return CheckedTarget(text, cfg if isinstance(cfg, dict) else None, None)
        raise ArgumentError(
            "--target",
            f"{what} (a folder with config.json) or the id of a model in the local Hugging Face cache",
            Verbatim(
                f"{text!r}, which is neither: no such folder, and not in the "
                f"cache (nothing is downloaded; fetch it with `hf download "
                f"{text}` first)"
            ),
        )
    raise ArgumentError("--target", forms, Verbatim(f"{text!r}, which does not exist"))


def has_tokenizer(folder: str) -> bool:
    """Whether a model folder holds tokenizer files (TOKENIZER_FILES)."""
    return any(os.path.isfile(os.path.join(folder, n)) for n in TOKENIZER_FILES)


def check_draft(spec: str) -> tuple:
    """(folder, config.json) of a --draft value: a shipped head's name or a head folder with config.json and
    weights; or ArgumentError."""
    folder = draft_folder(spec)
    return folder, read_config("--draft", folder, DRAFT_WEIGHTS, "a draft head folder")


def draft_folder(spec: str) -> str:
    """The folder of a --draft value (a shipped head's name or a path), or ArgumentError."""
    from .heads import resolve_draft

    try:
        folder = resolve_draft(spec) if spec.strip() else ""
    except FileNotFoundError as e:
        raise ArgumentError(
            "--draft", "a shipped head present in this installation or a folder", Verbatim(str(e))
        ) from None
    if not folder or not os.path.exists(folder):
        raise ArgumentError(
            "--draft",
            "eagle, fspad or griffin (a shipped head of the default target) or a draft head folder (with config.json)",
            Verbatim(f"{spec!r}, which does not exist"),
        )
    return folder
