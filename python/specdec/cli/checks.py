"""Checks of the arguments that name files, devices and backends, shared by the subcommands; none loads a model.

Each raises CliError (see specdec.cli.errors) with the one line the user sees.
"""

from __future__ import annotations

import json
import os
import re
from typing import Optional

from ..arguments import Verbatim
from .errors import RUNTIME, CliError, arg_error

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
        raise arg_error(arg, expected, Verbatim(f"{path!r}, which is a file, not a folder"))
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        raise arg_error(arg, expected, Verbatim(f"{path!r}, which has no config.json"))
    try:
        with open(cfg_file) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as exc:
        raise arg_error(
            arg,
            f"{what} with a readable config.json",
            Verbatim(f"{path!r}, whose config.json does not parse ({' '.join(str(exc).split())})"),
        ) from exc
    if not isinstance(cfg, dict):
        raise arg_error(
            arg,
            f"{what} whose config.json holds a JSON object",
            Verbatim(f"{path!r}, whose config.json holds a {type(cfg).__name__}"),
        )
    if not any(os.path.isfile(os.path.join(path, n)) for n in weights):
        raise arg_error(
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


def check_target(text: str):
    """(path or cached hub id to pass to from_pretrained, config dict or None, local folder or None)."""
    what = "a Hugging Face model folder"
    if not text.strip():
        raise arg_error("--target", f"{what} (a folder with config.json)", text)
    if text.strip() == "default":
        from ..default_target import TargetFetchError, resolve_target

        try:
            text = resolve_target("default")  # fetched once (progress on stderr), then a local folder
        except TargetFetchError as exc:
            raise CliError(f"argument --target: {exc}", RUNTIME) from exc
    path = os.path.expanduser(text)
    if os.path.exists(path):
        return path, read_config("--target", path, TARGET_WEIGHTS, what), path
    if HUB_ID.match(text) and ".." not in text:
        cached = _cached_hub_config(text)
        if cached is not None:
            try:
                with open(cached) as f:
                    cfg = json.load(f)
            except (OSError, ValueError):
                cfg = None
            return text, cfg if isinstance(cfg, dict) else None, None
        raise arg_error(
            "--target",
            f"{what} (a folder with config.json) or the id of a model in the local Hugging Face cache",
            Verbatim(
                f"{text!r}, which is neither: no such folder, and not in the "
                f"cache (nothing is downloaded; fetch it with `hf download "
                f"{text}` first)"
            ),
        )
    raise arg_error("--target", f"{what} (a folder with config.json)", Verbatim(f"{text!r}, which does not exist"))


def vocab_size(cfg: Optional[dict]) -> Optional[int]:
    """vocab_size of a model's config.json (or of its text_config), None when absent or not a positive int."""
    if not cfg:
        return None
    v = cfg.get("vocab_size")
    if v is None and isinstance(cfg.get("text_config"), dict):
        v = cfg["text_config"].get("vocab_size")
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def check_ids_in_vocab(prompts: list, vocab: int, source: str) -> None:
    """CliError for --prompt-ids outside [0, vocab); `source` says where vocab comes from."""
    for b, p in enumerate(prompts):
        bad = [t for t in p if not 0 <= t < vocab]
        if bad:
            raise arg_error(
                "--prompt-ids",
                f"token ids in [0, {vocab}) ({source})",
                Verbatim(f"prompt {b} with ids outside it: {bad[:5]}"),
            )


def resolve_dtype(name: Optional[str], device) -> str:
    """The torch dtype name of --dtype `name` on `device` (specdec.dtypes.model_dtype); when the default
    (None or "auto") picks it, one line on stderr says what was picked and why."""
    import sys

    from ..dtypes import AUTO, model_dtype

    dtype = model_dtype(name, device)
    if name in (None, AUTO):
        from ..machine_dtype import auto_note

        print(auto_note(device), file=sys.stderr)
    return dtype


def check_backend(backend: Optional[str], device) -> None:
    """The named backend must be able to run some kernel on `device` (not built, no Triton, wrong device)."""
    if backend is None:
        return
    import specdec_kernels as sk

    reasons = []
    for name in sk.list_ops():
        op = sk.get_op(name)
        if backend not in op.backends:
            continue
        reason = op.static_reason(backend, device)
        if reason is None:
            return
        reasons.append(reason)
    why = reasons[0] if reasons else "no kernel implements it"
    raise arg_error(
        "--backend",
        f"a backend that can run on the {device.type} device of --device",
        Verbatim(f"{backend!r}, which cannot: {' '.join(why.split())}"),
    )


def draft_folder(spec: str) -> str:
    """The folder of a --draft value (a shipped head's name or a path), or CliError."""
    from ..heads import resolve_draft

    try:
        folder = resolve_draft(spec) if spec.strip() else ""
    except FileNotFoundError as e:
        raise arg_error(
            "--draft", "a shipped head present in this installation or a folder", Verbatim(str(e))
        ) from None
    if not folder or not os.path.exists(folder):
        raise arg_error(
            "--draft",
            "eagle, fspad or griffin (a shipped head of the default target) or a draft head folder (with config.json)",
            Verbatim(f"{spec!r}, which does not exist"),
        )
    return folder


def check_cuda_graph_device(args, device) -> None:
    """--cuda-graph needs a CUDA --device (a usage error before anything loads)."""
    if getattr(args, "cuda_graph", False) and device.type != "cuda":
        raise arg_error("--cuda-graph", "a CUDA --device (graphs replay CUDA kernels)", Verbatim(f"device {device}"))
