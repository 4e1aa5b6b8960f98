"""The `specdec` command: argument parsing and dispatch only; the work is done by the library modules.

`main` is the entry point (`specdec` and `python -m specdec.cli`); `CliError`/`CliExit` are the errors it
reports as one line on stderr (see specdec.cli.errors).
"""

from .app import main
from .errors import CliError, CliExit

__all__ = ["CliError", "CliExit", "main"]
