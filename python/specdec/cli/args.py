"""What every `specdec` subcommand parses with: the parser class, the help formatter and the argument types.

Each type reports "expected ..., got ..." (argparse prefixes "argument --X: "), so a bad value is one line.
"""

from __future__ import annotations

import argparse
import math
from typing import Optional

from .errors import USAGE, CliError

__all__ = [
    "BACKENDS",
    "DEBUG_HELP",
    "HelpFormatter",
    "Parser",
    "add_debug_argument",
    "float_type",
    "int_type",
    "tree_size_type",
]

BACKENDS = ("cuda", "triton", "cpu", "torch")  # specdec_kernels.BACKENDS (not imported for --help)


class Parser(argparse.ArgumentParser):
    """argparse with errors raised as CliError (one line, no usage block) instead of printed + exit(2)."""

    def error(self, message):
        raise CliError(" ".join(str(message).split()), USAGE, self.prog)


class HelpFormatter(argparse.HelpFormatter):
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


def int_type(lo: int, hi: Optional[int] = None, what: Optional[str] = None):
    """argparse type: an integer in [lo, hi] (hi None: no upper bound); `what` replaces the expected text."""
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
    ints = int_type(lo, what=f"auto or an integer >= {lo}")

    def parse(text: str):
        return "auto" if text.strip().lower() == "auto" else ints(text)

    parse.__name__ = "auto-or-int"
    return parse


def float_type(check, expected: str):
    """argparse type: a finite number for which check(value) holds; `expected` says which."""

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


DEBUG_HELP = "on an error, show the full traceback instead of one line"


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    """--debug on a subcommand. default SUPPRESS: `specdec --debug CMD` is not undone by the subcommand."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP + " (default: off)")
