"""Argument types and checks shared by the `specdec` command (specdec.cli) and the demo (specdec.demo).

Library code may import this module: it imports nothing from specdec.cli (and nothing heavy, so that
`--help` stays fast). Each type reports "expected ..., got ..." (argparse prefixes "argument --X: "), and
each check raises ArgumentError, "argument --X: expected ..., got ...", so a bad value is one line: the
command reports it with exit status 2 (specdec.cli.app), and so does the demo.

Example:
    >>> from specdec.arguments import ArgumentError, check_device
    >>> try:
    ...     check_device("tpu")
    ... except ArgumentError as exc:
    ...     print(exc)
    argument --device: expected cpu, cuda or cuda:N, got 'tpu'
"""

from __future__ import annotations

import argparse
import math
from typing import Optional

from .devices import default_device

__all__ = ["ArgumentError", "Verbatim", "check_device", "float_type", "int_type", "tree_size_type"]


class Verbatim(str):
    """A `got` text that ArgumentError shows as is (a sentence), not repr'd (a value)."""


class ArgumentError(ValueError):
    """A bad argument value in one line, `message`: "argument ARG: expected EXPECTED, got GOT", GOT repr'd
    unless it is a Verbatim."""

    def __init__(self, arg: str, expected: str, got):
        self.arg = arg
        self.message = f"argument {arg}: expected {expected}, got {got if isinstance(got, Verbatim) else repr(got)}"
        super().__init__(self.message)


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


# ---- checks of values that argparse cannot check alone: each raises ArgumentError ----


def check_device(text: Optional[str]):
    """The torch.device of --device (None: specdec.devices.default_device), or ArgumentError for a device
    that is malformed or not available."""
    import torch

    if text is None:
        return default_device()
    expected = "cpu, cuda or cuda:N"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise ArgumentError("--device", expected, text) from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ArgumentError("--device", expected, text)
    if not torch.cuda.is_available():
        raise ArgumentError(
            "--device",
            "an available device (cuda needs a GPU and a CUDA build of torch)",
            Verbatim(f"{text!r}, but torch.cuda.is_available() is False; use --device cpu"),
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ArgumentError("--device", f"cuda or cuda:N with N < {count} (the visible GPUs)", text)
    return device
