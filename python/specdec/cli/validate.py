"""`specdec validate`: measure a draft head's acceptance rates and top-k coverage on held-out data.

    specdec validate --draft griffin --data ~/.cache/specdec/data/sharegpt-5k
    specdec validate --draft PATH --data DIR --target PATH --sequences 100 --write

Prints acc_k (the draft's top-1 agreement at step k, given steps < k were accepted) and the top-k coverage
per step; --write stores them in the head's config.json, where the automatic tree budget (`--total-tokens
auto`) reads them. Heads trained by `specdec train` record coverage themselves; this is for heads made
before that, heads from elsewhere, or another data set. The data is a `specdec data` folder with features
(`--splits val` builds its held-out split alone); never validate on the prompts you evaluate on.
"""

from __future__ import annotations

import os
import sys

from ..arguments import int_type as _int
from .args import add_debug_argument

COMMAND = "validate"
SUMMARY = "measure a head's acceptance and top-k coverage on held-out data"


def register(sub, formatter_class):
    """Add `specdec validate` to the subparsers `sub`; returns its parser."""
    p = sub.add_parser(
        COMMAND,
        formatter_class=formatter_class,
        help=SUMMARY,
        description=__doc__.split("\n\n")[0] + " " + __doc__.split("\n\n")[2].replace("\n", " "),
    )
    p.add_argument(
        "--draft",
        required=True,
        metavar="HEAD",
        help="eagle, fspad or griffin (a shipped head of the default target) or a draft head folder (required)",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="a `specdec data` folder with features, built from the head's target (required)",
    )
    p.add_argument(
        "--target",
        default=None,
        metavar="PATH",
        help='the target the data was built from: "default" or a model folder (default: the folder the data '
        "manifest names, else the default target)",
    )
    p.add_argument("--split", choices=("val", "train"), default="val", help="the split to measure on")
    p.add_argument("--sequences", type=_int(1), default=None, metavar="N", help="measure the first N sequences")
    p.add_argument("--steps", type=_int(1), default=5, metavar="K", help="draft steps to measure")
    p.add_argument("--top-k", type=_int(1, 64), default=10, metavar="R", help="coverage ranks to count")
    p.add_argument("--batch-size", type=_int(1), default=8, metavar="B", help="sequences per forward pass")
    p.add_argument("--threads", type=_int(1), default=None, metavar="N", help="torch threads (default: torch's)")
    p.add_argument(
        "--write",
        action="store_true",
        help="store the result in the head's config.json (specdec_validation), for --total-tokens auto",
    )
    p.add_argument(
        "--calibration",
        action="store_true",
        help="also print how well the draft's top-1 probability predicts acceptance per step (10 bins, ECE)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    add_debug_argument(p)
    p.set_defaults(handler=_handle)
    return p


def _plan(args):
    """(head folder, data manifest, target spec, what from_pretrained loads for it): every check that loads no
    model, or CliError."""
    from ..arguments import Verbatim
    from ..data.shards import ShardError, read_manifest
    from ..loading import check_draft, check_target
    from .errors import arg_error, target_errors

    folder, _ = check_draft(args.draft)
    data = os.path.expanduser(args.data)
    if not os.path.isdir(data):
        raise arg_error("--data", "a `specdec data` folder", Verbatim(f"{args.data!r}, which is not a folder"))
    try:
        manifest = read_manifest(data)
    except ShardError as exc:
        raise arg_error(
            "--data", "a `specdec data` folder with a manifest", Verbatim(f"{args.data!r}: {exc}")
        ) from None
    if not manifest.get("settings", {}).get("features"):
        raise arg_error(
            "--data", "a folder built with features", Verbatim(f"{args.data!r}, built with --no-features (tokens only)")
        )
    target = args.target
    if target is None:
        recorded = manifest.get("target", {}).get("path")
        target = recorded if recorded and os.path.isdir(recorded) else "default"
    if args.write and args.split != "val":
        # the record is what --total-tokens auto plans with: numbers from the data the head was trained on
        # would overrate it
        raise arg_error("--write", "held-out numbers (--split val)", Verbatim(f"--split {args.split}"))
    if args.write and not os.access(os.path.join(folder, "config.json"), os.W_OK):
        raise arg_error("--write", "a head folder whose config.json is writable", Verbatim(folder))
    with target_errors():
        target_path = check_target(target)[0]
    return folder, manifest, target, target_path


def _handle(args, stage) -> int:
    from .errors import RUNTIME, CliError

    folder, manifest, target_spec, target_path = _plan(args)
    stage.what = "importing torch and transformers"
    import torch

    from ..data import FeatureDataset
    from ..data.provenance import DataTargetMismatch, check_built_from
    from ..data.shards import ShardError
    from ..loading import load_head, load_target
    from ..models import HeadTargetMismatch, check_head_fits
    from ..training.validation import format_calibration, format_result, measure_acceptance, record_acceptance

    if args.threads:
        torch.set_num_threads(args.threads)
    stage.what = f"reading the {args.split} split of --data {args.data!r}"
    try:
        ds = FeatureDataset(os.path.expanduser(args.data), args.split)
    except ShardError as exc:
        raise CliError(f"argument --data: {exc}", RUNTIME) from exc
    if len(ds) == 0:
        raise CliError(f"argument --data: the {args.split} split of {args.data!r} holds no sequences")
    stage.what = f"loading the target from {target_spec!r}"
    model = load_target(target_path, dtype=torch.float32, tokenizer=False).model
    try:
        check_built_from(manifest, model, target_path, target_spec)
    except DataTargetMismatch as exc:
        raise CliError(f"argument --target: {exc}") from exc
    stage.what = f"loading the draft head from {folder!r}"
    head = load_head(folder, dtype=torch.float32)
    try:
        check_head_fits(head, model.config)
    except HeadTargetMismatch as exc:
        raise CliError(f"argument --draft: {exc}") from exc
    head.bind_target(model.get_input_embeddings(), model.get_output_embeddings())
    n = len(ds) if args.sequences is None else min(len(ds), args.sequences)

    def progress(done: int) -> None:
        if not args.no_progress:
            print(f"validate: {done}/{n} sequences", file=sys.stderr, flush=True)

    stage.what = f"measuring {n} sequences"
    res = measure_acceptance(
        head,
        ds,
        sequences=n,
        steps=args.steps,
        topk=args.top_k,
        batch_size=args.batch_size,
        progress=progress,
        calibration_bins=10 if args.calibration else 0,
    )
    print(format_result(res, args.steps))
    if args.calibration:
        print(format_calibration(res, args.steps))
    if args.write:
        val = manifest.get("splits", {}).get(args.split, {})
        data = {
            "settings": manifest.get("settings"),
            "split": args.split,
            "shards_sha256": [e.get("sha256") for e in val.get("shards", [])],
        }
        record_acceptance(folder, res, data)
        print(f"written to {os.path.join(folder, 'config.json')} (specdec_validation)")
    return 0
