"""Argument types shared by the `specdec` command (specdec.cli) and the demo (specdec.demo).

Library code may import this module: it imports nothing from specdec.cli (and nothing heavy, so that
`--help` stays fast). Each type reports "expected ..., got ..." (argparse prefixes "argument --X: "), so a
bad value is one line.
"""

from __future__ import annotations

import argparse
import math
from typing import Optional

__all__ = ["Verbatim", "float_type", "int_type", "tree_size_type"]


class Verbatim(str):
    """A `got` text that arg_error shows as is (a sentence), not repr'd (a value)."""


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
