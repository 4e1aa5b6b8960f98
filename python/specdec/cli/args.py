"""What every `specdec` subcommand parses with: the parser class, the help formatter and --debug.

The argument types (int_type, tree_size_type, float_type) are in specdec.arguments, shared with the demo.
"""

from __future__ import annotations

import argparse

from .errors import USAGE, CliError

__all__ = ["BACKENDS", "DEBUG_HELP", "HelpFormatter", "Parser", "add_debug_argument"]

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


DEBUG_HELP = "on an error, show the full traceback instead of one line"


def add_debug_argument(parser: argparse.ArgumentParser) -> None:
    """--debug on a subcommand. default SUPPRESS: `specdec --debug CMD` is not undone by the subcommand."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP + " (default: off)")
