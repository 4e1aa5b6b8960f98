"""The errors of the `specdec` command and its subcommands: one line on stderr and an exit status.

It imports only specdec.arguments and specdec.default_target (nothing heavy), so that every subcommand
module can import it cheaply (the top-level --help imports them all).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Optional

from ..arguments import ArgumentError
from ..default_target import TargetError, TargetFetchError

USAGE, RUNTIME = 2, 1  # exit statuses


class CliError(Exception):
    """An error reported as one line: `code` USAGE (a bad argument) or RUNTIME (loading or generating failed)."""

    def __init__(self, message: str, code: int = USAGE, prog: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.prog = prog


class CliExit(SystemExit):
    """Raised by main() after printing an error: SystemExit(code) whose str() is the printed message."""

    def __init__(self, code: int, message: str):
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


def arg_error(arg: str, expected: str, got) -> CliError:
    """The one-line usage error 'argument ARG: expected EXPECTED, got GOT' (exit status 2), worded by
    specdec.arguments.ArgumentError (GOT repr'd unless it is a Verbatim)."""
    return CliError(ArgumentError(arg, expected, got).message)


@contextmanager
def target_errors():
    """specdec.default_target's errors raised inside, as the one line "argument --target: ...": TargetError
    (a value naming no usable target; exit status 2) and TargetFetchError (the default target could not be
    fetched; exit status 1)."""
    try:
        yield
    except TargetFetchError as exc:
        raise CliError(f"argument --target: {exc}", RUNTIME) from exc
    except TargetError as exc:
        raise CliError(f"argument --target: {exc}") from exc
