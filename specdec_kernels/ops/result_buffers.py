"""Result tuples that ops fill in place (`out=`): their allocation and the check of a caller's buffers.

A result class (`Tree`, `SelectedTree`, `VerifyResult`) has a layout function `(B, N) -> [(shape, dtype)]`,
one entry per field; `cls.empty(batch, num_nodes, device)` allocates it with `empty_result`, and an op
given `out=` checks it with `check_result_out`.
"""

from __future__ import annotations

import torch

from ..checks import check_out, int_arg


def empty_result(cls, layout, batch, num_nodes, device):
    """`cls(...)` of new buffers with the shapes and dtypes `layout(B, N)` gives: what `cls.empty` returns."""
    B, N = int_arg("batch", batch), int_arg("num_nodes", num_nodes)
    if B < 0 or N < 0:
        raise ValueError(f"{cls.__name__}.empty: expected batch >= 0 and num_nodes >= 0, got {B}, {N}")
    return cls(*(torch.empty(shape, dtype=dtype, device=device) for shape, dtype in layout(B, N)))


def check_result_out(out, cls, layout, B: int, N: int, dev) -> None:
    """`out` must be a `cls` (a result tuple) whose buffers are those of `cls.empty(B, N)` on `dev`."""
    if not isinstance(out, cls):
        raise TypeError(
            f"out: expected a {cls.__name__} (from {cls.__name__}.empty(batch, num_nodes, device)), "
            f"got {type(out).__name__}"
        )
    for name, t, (shape, dtype) in zip(cls._fields, out, layout(B, N)):
        check_out(f"out.{name}", t, shape, dtype, dev)
