"""`specdec train`: train an EAGLE, FSPAD or GRIFFIN draft head (specdec.training.train).

    specdec train --kind griffin --data data/smollm2 --out heads/griffin --stages 1,2,3 --draft-vocab 8192
    specdec train --kind eagle --data data/smollm2-tokens --online --out heads/eagle --dtype bf16
    specdec train ... --resume                      # continue a killed run from its last checkpoint
    torchrun --nproc_per_node 8 -m specdec.cli train ...   # the same command, data-parallel

Every argument is checked before anything is loaded (exit status 2, one line naming the argument).
"""

from __future__ import annotations

import argparse
import json
import os

from ..arguments import Verbatim, check_device
from ..arguments import float_type as _float
from ..arguments import int_type as _int
from ..dtypes import TRAIN_DTYPE_NAMES, dtype_choices, resolve_dtype
from ..head_kinds import KINDS
from ..loading import check_target
from .args import add_debug_argument
from .errors import arg_error

COMMAND = "train"
SUMMARY = "train a draft head"


def _stages(text: str) -> tuple:
    expected = 'increasing stage numbers >= 1, comma-separated, e.g. "1,2,3"'
    try:
        v = tuple(int(t) for t in text.replace(" ", "").split(",") if t != "")
    except ValueError:
        v = ()
    if not v or any(s < 1 for s in v) or list(v) != sorted(set(v)):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return v


_stages.__name__ = "stages"


def register(sub, formatter_class):
    """Add `specdec train` to the subparsers `sub`; returns its parser."""
    p = sub.add_parser(
        COMMAND,
        formatter_class=formatter_class,
        help="train a draft head (EAGLE, FSPAD or GRIFFIN) on data from `specdec data`",
        description="Train a one-layer draft head with its paper's recipe (see docs/training.md). Writes the "
        "head to --out (model.safetensors + config.json, loadable by `specdec generate --draft`), with "
        "checkpoints, CSV logs, a JSON summary and a plot of the curves beside it. Every argument is checked "
        "before anything is loaded. Runs unchanged under `torchrun --nproc_per_node N`.",
    )
    _add_input_arguments(p)
    _add_head_arguments(p)
    _add_length_arguments(p)
    _add_optimizer_arguments(p)
    _add_loss_arguments(p)
    _add_run_arguments(p)
    add_debug_argument(p)
    p.set_defaults(handler=_handle)
    return p


def _add_input_arguments(p) -> None:
    """Add what is trained on what, and where it goes: --kind, --data, --out, --target, --online."""
    a = p.add_argument
    a("--kind", required=True, choices=KINDS, help="which head to train (required)")
    a("--data", required=True, metavar="PATH", help="a `specdec data` output folder (required)")
    a("--out", required=True, metavar="PATH", help="output folder of the head, checkpoints and logs (required)")
    a(
        "--target",
        default=None,
        metavar="PATH",
        help="a Hugging Face target folder, or the word default (SmolLM2-135M-Instruct, fetched when needed) "
        "(default: the target recorded in the data manifest)",
    )
    a("--online", action="store_true", help="compute the target's features in the training loop (nothing stored)")


def _add_head_arguments(p) -> None:
    """Add where the head starts from and what it predicts: --stages, --init, --draft-vocab."""
    a = p.add_argument
    a(
        "--stages",
        type=_stages,
        default=(1,),
        metavar="LIST",
        help="GRIFFIN's training stages to run in sequence, e.g. 1,2,3; stage j starts from stage j-1's head "
        "(default: 1)",
    )
    a("--init", default=None, metavar="PATH", help="head folder the first stage starts from (default: random init)")
    a(
        "--draft-vocab",
        type=_int(1),
        default=None,
        metavar="V",
        help="reduced draft vocabulary: the V most frequent response tokens (plus EOS) (default: the whole vocabulary)",
    )


def _add_length_arguments(p) -> None:
    """Add how much is trained: --epochs, --max-steps, --batch-size, --batch-tokens, --max-length."""
    a = p.add_argument
    a("--epochs", type=_int(1), default=1, metavar="N", help="passes over the training split per stage")
    a("--max-steps", type=_int(1), default=None, metavar="N", help="stop each stage after N steps (default: no limit)")
    a("--batch-size", type=_int(1), default=8, metavar="N", help="sequences per optimizer step, over all processes")
    a(
        "--batch-tokens",
        type=_int(1),
        default=None,
        metavar="N",
        help="instead: batches of sequences of about one length, at most N tokens each with padding, in a "
        "seeded order (almost no padding; --batch-size then sets only validation's batches) (default: off)",
    )
    a("--max-length", type=_int(3), default=None, metavar="T", help="cut sequences to T tokens (default: as stored)")


def _add_optimizer_arguments(p) -> None:
    """Add the optimizer's settings: --lr, --warmup-steps, --min-lr-ratio, --weight-decay, --grad-clip, --clip-mode."""
    a = p.add_argument
    a(
        "--lr",
        type=_float(lambda v: v > 0, "a number > 0"),
        default=None,
        metavar="LR",
        help="peak learning rate (default: the recipe's; EAGLE 3e-5, FSPAD 5e-5, GRIFFIN 5e-5 then 3e-5)",
    )
    a(
        "--warmup-steps",
        type=_int(0),
        default=None,
        metavar="N",
        help="linear warmup steps before the cosine decay (default: 2000, at most 5%% of the steps)",
    )
    a(
        "--min-lr-ratio",
        type=_float(lambda v: 0 <= v <= 1, "a number in [0, 1]"),
        default=0.0,
        metavar="R",
        help="final lr as a fraction of the peak",
    )
    a(
        "--weight-decay",
        type=_float(lambda v: v >= 0, "a number >= 0"),
        default=0.0,
        metavar="W",
        help="AdamW weight decay",
    )
    a(
        "--grad-clip",
        type=_float(lambda v: v >= 0, "a number >= 0"),
        default=0.5,
        metavar="C",
        help="gradient clipping threshold (see --clip-mode); 0 = off",
    )
    a(
        "--clip-mode",
        choices=("value", "norm"),
        default="value",
        help="clip each gradient entry to [-C, C] (the reference trainers' clip_grad_value_) or the global norm to C",
    )


def _add_loss_arguments(p) -> None:
    """Add the input noise and GRIFFIN's loss mask: --noise, --topk-mask, --check-position."""
    a = p.add_argument
    a(
        "--noise",
        type=_float(lambda v: v >= 0, "a number >= 0"),
        default=0.1,
        metavar="A",
        help="amplitude of the uniform noise on input features; 0 = off",
    )
    a(
        "--topk-mask",
        type=_int(1),
        default=3,
        metavar="K",
        help="GRIFFIN's loss mask: ground truth within the draft's top-K",
    )
    a(
        "--check-position",
        choices=("same", "previous"),
        default="same",
        help="GRIFFIN's loss mask: check at the same position (reference code) or one earlier",
    )


def _add_run_arguments(p) -> None:
    """Add where and how the run goes: --dtype, --device, --seed, checkpoints, validation, output."""
    a = p.add_argument
    a(
        "--dtype",
        choices=dtype_choices(TRAIN_DTYPE_NAMES),
        default=None,
        help="float32, or bfloat16 autocast (default: auto = bfloat16 on CUDA; on a CPU the faster of "
        "bfloat16 and float32, measured once and cached)",
    )
    a(
        "--device",
        default=None,
        help="cpu, cuda or cuda:N (default: cuda when available, else cpu; cuda:LOCAL_RANK under torchrun)",
    )
    a("--seed", type=_int(0), default=0, help="seed of the init, the data order and the noise")
    a("--checkpoint-every", type=_int(1), default=500, metavar="K", help="steps between checkpoints")
    a("--keep-checkpoints", type=_int(0), default=2, metavar="N", help="checkpoints kept; 0 = all")
    a("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    a("--val-steps", type=_int(1), default=5, metavar="K", help="draft steps whose acceptance rates validation reports")
    a("--val-sequences", type=_int(1), default=None, metavar="N", help="validate on at most N sequences (default: all)")
    a(
        "--val-every",
        type=_int(1),
        default=None,
        metavar="K",
        help="also validate (and checkpoint) every K steps of a stage, not only at the end of each epoch: the "
        "points of a learning curve within one pass (default: epoch ends only)",
    )
    a("--no-progress", action="store_true", help="no progress bar or validation lines")
    a("--no-plot", action="store_true", help="do not write curves.png")


def _check_head_folder(arg: str, path: str, kind: str) -> None:
    """`path` (of `arg`) is a head folder with config.json and weights, of `kind` when its config says."""
    expected = f"a {kind} head folder (config.json + model.safetensors)"
    if not os.path.isdir(path):
        raise arg_error(
            arg,
            expected,
            Verbatim(f"{path!r}, which does not exist" if not os.path.exists(path) else f"{path!r}, which is a file"),
        )
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        raise arg_error(arg, expected, Verbatim(f"{path!r}, which has no config.json"))
    if not any(os.path.isfile(os.path.join(path, n)) for n in ("model.safetensors", "pytorch_model.bin")):
        raise arg_error(arg, expected, Verbatim(f"{path!r}, which has no weights"))
    try:
        with open(cfg_file) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        raise arg_error(arg, expected, Verbatim(f"{path!r}, whose config.json does not parse")) from None
    k = cfg.get("specdec_kind") if isinstance(cfg, dict) else None
    if k is not None and k != kind:
        raise arg_error(arg, expected, Verbatim(f"{path!r}, a {k} head"))


def validate_args(args) -> dict:
    """Every check that loads nothing, in the order the user sees them; returns the TrainConfig keyword
    arguments (or raises CliError)."""
    data, manifest = _read_data_manifest(args)
    _check_data_contents(args, manifest)
    _check_target(args, manifest)
    _check_stages(args)
    _check_draft_vocab(args, manifest)
    out = _check_out(args)
    device = check_device(args.device)
    _check_batch(args, manifest)
    dtype = resolve_dtype(args.dtype, device, training=True)  # after the checks: it may measure
    return _train_config(args, data=data, out=out, dtype=dtype, device=device)


def _read_data_manifest(args) -> tuple:
    """--data: a folder with a readable manifest.json holding an object; returns (folder, manifest)."""
    data = os.path.expanduser(args.data)
    expected = "a `specdec data` output folder (with manifest.json)"
    if not os.path.isdir(data):
        raise arg_error(
            "--data",
            expected,
            Verbatim(
                f"{args.data!r}, which does not exist"
                if not os.path.exists(data)
                else f"{args.data!r}, which is a file"
            ),
        )
    man_file = os.path.join(data, "manifest.json")
    if not os.path.isfile(man_file):
        raise arg_error("--data", expected, Verbatim(f"{args.data!r}, which has no manifest.json"))
    try:
        with open(man_file) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        raise arg_error("--data", expected, Verbatim(f"{args.data!r}, whose manifest.json does not parse")) from None
    if not isinstance(manifest, dict):
        raise arg_error("--data", expected, Verbatim(f"{args.data!r}, whose manifest.json is not an object"))
    return data, manifest


def _check_data_contents(args, manifest: dict) -> None:
    """--data: a complete build, with stored features unless --online, and a training split."""
    if not manifest.get("complete"):
        # name the split that is short: a folder built with --splits val holds no training data yet, and
        # rerunning that same command would not add it
        short = []
        for name in ("train", "val"):
            sp = (manifest.get("splits") or {}).get(name) or {}
            have, want = len(sp.get("shards") or []), sp.get("num_shards")
            if isinstance(want, int) and have < want:
                short.append(f"{name} {have} of {want} shards")
        raise arg_error(
            "--data",
            "a complete data folder",
            Verbatim(
                f"{args.data!r}, whose build is not finished ({', '.join(short) or 'not marked complete'}); run its "
                "`specdec data` command again with --splits all (the default) to finish it"
            ),
        )
    settings = manifest.get("settings") or {}
    if not args.online and settings.get("features") is False:
        raise arg_error(
            "--data",
            "a data folder with stored features (or --online)",
            Verbatim(f"{args.data!r}, built without features; add --online"),
        )
    splits = manifest.get("splits") or {}
    if not (splits.get("train") or {}).get("shards"):
        raise arg_error(
            "--data", "a data folder with a training split", Verbatim(f"{args.data!r}, whose train split is empty")
        )


def _check_target(args, manifest: dict) -> None:
    """--target: unset (the manifest must name one), default, or a model folder (specdec.loading.check_target)
    of the data's vocabulary."""
    target = args.target
    if target is None:
        t = manifest.get("target")
        if not (isinstance(t, dict) and t.get("path")) and not isinstance(t, str):
            raise arg_error("--target", "a target (the data manifest names none)", Verbatim("nothing"))
        return
    tcfg = check_target(target, hub_cache=False, fetch=False).config or {}  # "default": the trainer fetches it
    vocab = (manifest.get("target") or {}).get("vocab_size") if isinstance(manifest.get("target"), dict) else None
    if vocab and tcfg.get("vocab_size") and tcfg["vocab_size"] != vocab:
        raise arg_error(
            "--target",
            f"the data's target (vocabulary {vocab})",
            Verbatim(f"{target!r}, whose vocabulary is {tcfg['vocab_size']}"),
        )


def _check_stages(args) -> None:
    """--stages: more than stage 1 only for GRIFFIN; --init: a head of --kind, required from stage 2 on."""
    if args.kind != "griffin" and args.stages != (1,):
        raise arg_error(
            "--stages",
            f"1 for --kind {args.kind} (multi-stage training is GRIFFIN's)",
            Verbatim(",".join(map(str, args.stages))),
        )
    if args.init is not None:
        _check_head_folder("--init", os.path.expanduser(args.init), args.kind)
    elif args.stages[0] > 1:
        raise arg_error(
            "--init", f"a stage-{args.stages[0] - 1} head to start stage {args.stages[0]} from", Verbatim("none")
        )


def _check_draft_vocab(args, manifest: dict) -> None:
    """--draft-vocab: at most the target's vocabulary when the manifest records it."""
    vocab = None
    t = manifest.get("target")
    if isinstance(t, dict):
        vocab = t.get("vocab_size")
    if args.draft_vocab is not None and isinstance(vocab, int) and args.draft_vocab > vocab:
        raise arg_error("--draft-vocab", f"at most {vocab} (the target's vocabulary)", Verbatim(str(args.draft_vocab)))


def _check_out(args) -> str:
    """--out: not a file, and without an earlier run unless --resume; returns it with ~ expanded."""
    out = os.path.expanduser(args.out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise arg_error(
            "--out", "a folder (new, or an earlier run's with --resume)", Verbatim(f"{args.out!r}, which is a file")
        )
    earlier = os.path.isdir(out) and (
        os.path.isdir(os.path.join(out, "checkpoints"))
        and os.listdir(os.path.join(out, "checkpoints"))
        or os.path.isfile(os.path.join(out, "train_log.csv"))
    )
    if earlier and not args.resume:
        raise arg_error(
            "--out",
            "a folder without an earlier run (or --resume to continue it)",
            Verbatim(f"{args.out!r}, which holds one"),
        )
    return out


def _check_batch(args, manifest: dict) -> None:
    """--batch-size: a multiple of the processes, at most the training sequences; --warmup-steps <= --max-steps."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.batch_size % world:
        raise arg_error("--batch-size", f"a multiple of the {world} processes", Verbatim(str(args.batch_size)))
    splits = manifest.get("splits") or {}
    n_train = sum((e or {}).get("sequences", 0) for e in (splits.get("train") or {}).get("shards", []))
    if n_train and args.batch_size > n_train:
        raise arg_error("--batch-size", f"at most the {n_train} training sequences", Verbatim(str(args.batch_size)))
    if args.warmup_steps is not None and args.max_steps is not None and args.warmup_steps > args.max_steps:
        raise arg_error("--warmup-steps", f"at most --max-steps ({args.max_steps})", Verbatim(str(args.warmup_steps)))


def _train_config(args, *, data: str, out: str, dtype: str, device) -> dict:
    """The TrainConfig keyword arguments of the checked arguments."""
    return dict(
        kind=args.kind,
        data=data,
        out=out,
        target=args.target,
        online=args.online,
        stages=args.stages,
        init=os.path.expanduser(args.init) if args.init else None,
        draft_vocab=args.draft_vocab,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        batch_tokens=args.batch_tokens,
        max_length=args.max_length,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        min_lr_ratio=args.min_lr_ratio,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        clip_mode=args.clip_mode,
        noise=args.noise,
        topk_mask=args.topk_mask,
        check_position=args.check_position,
        dtype=dtype,
        device=str(device) if args.device else None,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        resume=args.resume,
        val_steps=args.val_steps,
        val_every=args.val_every,
        val_sequences=args.val_sequences,
        progress=not args.no_progress,
        plot=not args.no_plot,
    )


def _handle(args, stage) -> int:
    kw = validate_args(args)
    stage.what = "importing the training code"
    from ..training.trainer import TrainConfig, train

    cfg = TrainConfig(**kw)

    def phase(what: str) -> None:
        stage.what = what

    out = train(cfg, phase=phase)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"draft head: {out}")
    return 0
