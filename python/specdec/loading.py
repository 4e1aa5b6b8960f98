"""The models a run loads, named by --target and --draft values: the checks of those values (no model is
loaded), then the loaders. Shared by the `specdec` subcommands (specdec.cli) and the demo.

    check_target(text), check_draft(spec)       before anything loads; ArgumentError: "argument --X: ..."
    model, tokenizer, path, _ = load_target("default", dtype=torch.bfloat16, device="cuda", prepack=True)
    head = load_head(folder, dtype=torch.bfloat16, device="cuda")

Fetching the default target (--target default) may raise specdec.default_target.TargetFetchError; a value
that names no target raises its TargetError.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, NamedTuple, Optional, Union

from .arguments import ArgumentError, Verbatim
from .default_target import TargetError, resolve_target

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
    """config.json of a local model folder, after checking the folder holds one of `weights`; ArgumentError
    for argument `arg` (`what` names what it expects) otherwise."""
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


# ---- loading ----


class LoadedTarget(NamedTuple):
    """What load_target loaded: the model, its tokenizer (None when not asked for), the path it was loaded
    from, how many linears were prepacked for oneDNN and how many run specdec's C++ linear kernel in specdec's
    own passes (both 0 without prepack; where both are not, the prepacked layers run the kernel for small
    calls: specdec.target.kernel_linears.HybridLinear)."""

    model: Any
    tokenizer: Any
    path: str
    prepacked: int
    kernel_linears: int = 0


def target_path(name_or_path: Union[str, os.PathLike]) -> str:
    """What from_pretrained loads for a --target value: "default" -> the default target's folder (fetched on
    first use), a local folder -> itself (~ expanded), anything else -> the value as given (the id of a model
    in the local Hugging Face cache). TargetError for an empty value or a folder without config.json."""
    text = os.fspath(name_or_path)
    if text.strip() == "default" or os.path.exists(os.path.expanduser(text)) or not HUB_ID.match(text):
        return resolve_target(text)
    return text


def load_target(
    name_or_path: Union[str, os.PathLike],
    *,
    dtype,
    device="cpu",
    prepack: bool = False,
    tokenizer: bool = True,
    chat_template: bool = False,
    phase: Optional[Callable[[str], None]] = None,
) -> LoadedTarget:
    """Load a target model (and its tokenizer) from a --target value, nothing downloaded but the default
    target's one fetch.

    Args:
        name_or_path: "default", a local Hugging Face model folder or the id of a model in the local Hugging
            Face cache (target_path).
        dtype, device: the model's torch dtype and device; it is returned in eval mode.
        prepack: give its CPU linears the faster linear of this machine (speed_up_cpu_linears): oneDNN's
            prepacked bf16 linear where it runs (counted in `prepacked`, used by model.generate too), with
            specdec_kernels' C++ linear for the small calls it wins there; elsewhere the C++ linear where it
            measured faster than torch. Layers running the kernel are counted in `kernel_linears`; the kernel
            runs only in specdec's TargetModel and TreeDrafter passes, never in model.generate.
        tokenizer: also load the tokenizer, before the model; chat_template: which must have a chat template.
        phase: called with "tokenizer" and "model" before each is loaded (a command's progress report).

    Raises TargetError for a value that names no target or, with chat_template, a tokenizer without one;
    TargetFetchError when the default target cannot be fetched.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = target_path(name_or_path)
    tok = None
    if tokenizer:
        if phase is not None:
            phase("tokenizer")
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if chat_template and not getattr(tok, "chat_template", None):
            raise TargetError(
                f"expected a tokenizer with a chat template, got {os.fspath(name_or_path)!r}, whose tokenizer has none"
            )
    if phase is not None:
        phase("model")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True).to(device).eval()
    packed = kernel = 0
    if prepack:
        from .target.kernel_linears import speed_up_cpu_linears

        packed, kernel = speed_up_cpu_linears(model)
    return LoadedTarget(model, tok, path, packed, kernel)


def load_head(folder: str, *, dtype, device=None, prepack: bool = False):
    """The draft head in `folder` (specdec.models.load_draft_head) on `device` in `dtype`, in eval mode;
    prepack: its CPU linears sped up as the target's are (specdec.target.kernel_linears.speed_up_cpu_linears)."""
    from .models import load_draft_head

    head = load_draft_head(folder, device=device, dtype=dtype).eval()
    if prepack:
        from .target.kernel_linears import speed_up_cpu_linears

        speed_up_cpu_linears(head)
    return head
