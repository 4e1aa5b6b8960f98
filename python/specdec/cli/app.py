"""The `specdec` command: the top-level parser, dispatch to the subcommand modules and the one-line error report.

  specdec --version                  version of specdec and specdec_kernels
  specdec info                       versions, what was built, which backend each kernel op uses here
  specdec generate ...               lossless speculative decoding of prompts (specdec.cli.generate)
  specdec target|data|train|validate|eval ...
                                     the other subcommands, one module each under specdec.cli

Every argument is checked before anything is loaded. A user error is one line on stderr,
"specdec generate: error: argument --X: expected ..., got ...", with exit status 2; a failure while
loading or generating is one line too, with exit status 1. --debug re-raises instead (full traceback).
Called in-process, main() returns 0 (or 1 when --baseline finds different greedy outputs) and raises
SystemExit for errors, as argparse does: its `code` is the exit status and str() the message.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from ..arguments import ArgumentError
from . import data, evaluate, generate, target, train, validate
from .args import DEBUG_HELP, HelpFormatter, Parser, add_debug_argument
from .errors import RUNTIME, CliError, CliExit

# The modules that add a subcommand, in the order of the top-level help. Each defines COMMAND (its name),
# SUMMARY (one line for the top-level help) and `register(sub, formatter_class)`, which calls
# sub.add_parser(COMMAND, formatter_class=formatter_class, ...), sets `handler=fn` on it with
# fn(args, stage) -> exit status (stage.what names the current phase for the one-line error report;
# stage.target_phases sets it while specdec.loading.load_target runs) and
# returns that parser. Bad arguments raise CliError (see arg_error) before anything loads.
COMMAND_MODULES = (generate, target, data, train, validate, evaluate)


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="specdec",
        formatter_class=HelpFormatter,
        description="Lossless tree speculative decoding (EAGLE-2 drafting with EAGLE, FSPAD or GRIFFIN heads).",
    )
    parser.add_argument("--version", action="store_true", help="print the versions and exit")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    modules = COMMAND_MODULES
    names = ["info"] + [m.COMMAND for m in modules]
    sub = parser.add_subparsers(
        dest="command",
        metavar="{" + ",".join(names) + "}",
        help="info (the default): versions, build and backends"
        + "".join(f"; {m.COMMAND}: {m.SUMMARY}" for m in modules),
    )
    info = sub.add_parser("info", help="versions, build and backend report", formatter_class=HelpFormatter)
    add_debug_argument(info)
    parser.subcommands = {"info": info}
    for module in modules:
        parser.subcommands[module.COMMAND] = module.register(sub, HelpFormatter)
    return parser


def _versions() -> str:
    import specdec
    import specdec_kernels

    return f"specdec {specdec.__version__} (specdec_kernels {specdec_kernels.__version__})"


class _Stage:
    """What the run is doing, for the one-line report of a failure, and whether --debug was given."""

    def __init__(self, debug: bool):
        self.what = "parsing the arguments"
        self.prog = "specdec"
        self.debug = debug

    def target_phases(self, target: str):
        """The `phase` of specdec.loading.load_target for the --target value `target`: what it loads now."""
        said = {
            "tokenizer": f"loading the tokenizer of --target {target!r}",
            "model": f"loading the target model from --target {target!r}",
        }
        return lambda step: setattr(self, "what", said[step])


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
    if getattr(args, "handler", None) is not None:
        stage.what = "checking the arguments"
        try:
            return args.handler(args, stage)
        except ArgumentError as exc:  # a check shared with library code (specdec.arguments): the same one line
            raise CliError(exc.message) from exc
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
