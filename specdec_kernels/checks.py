"""Argument checks shared by every public function of specdec_kernels and specdec.

One helper for tensors (`check_tensor`), caller buffers (`check_out`) and devices (`same_device`), and
the one definition of the floating dtypes: every message says what was expected and what came.
"""

from __future__ import annotations

import numbers
from typing import Iterable, Optional, Sequence

import torch

try:  # NumPy's bool is not a Python bool but is no more a number here than True is
    from numpy import bool_ as np_bool
except ImportError:  # pragma: no cover - numpy is optional
    np_bool = bool

# The floating dtypes of the kernels (CUDA, Triton, C++ CPU).
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# ... plus fp64, which the torch reference (and, for the feature blocks, the C++ CPU kernels) also take:
# gradcheck-style tests and the draft heads' fp64 mode use it.
FLOAT_DTYPES_FP64 = FLOAT_DTYPES + (torch.float64,)
# Token ids.
ID_DTYPES = (torch.int32, torch.int64)


def check_tensor(
    name: str,
    t,
    *,
    dtype=None,
    dtypes: Optional[Iterable[torch.dtype]] = None,
    ndim: Optional[int] = None,
    shape: Optional[Sequence[Optional[int]]] = None,
    device: Optional[torch.device] = None,
) -> None:
    """Raise TypeError/ValueError unless `t` is a tensor of the expected dtype, rank, shape, device.

    In `shape`, None matches any size. `device` "cuda" matches any CUDA device, "cuda:1" only that one.

    Example:
        >>> import torch
        >>> from specdec_kernels.checks import check_tensor
        >>> check_tensor("parents", torch.zeros(2, 5, dtype=torch.int32), dtype=torch.int32, shape=(2, None))
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    if dtypes is not None:
        dtypes = dtypes if isinstance(dtypes, (tuple, frozenset, set)) else tuple(dtypes)
        if t.dtype not in dtypes:
            raise TypeError(f"{name}: expected dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    got = t.shape
    if shape is not None:
        ndim = len(shape)
    if ndim is not None and len(got) != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(got)}")
    if shape is not None:
        for i, want in enumerate(shape):
            if want is not None and want != got[i]:
                exp = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
                raise ValueError(f"{name}: expected shape {exp}, got {tuple(got)} (dimension {i})")
    if device is not None:
        want = torch.device(device)
        if t.device.type != want.type or (want.index is not None and t.device.index != want.index):
            raise ValueError(f"{name}: expected a tensor on {want}, got one on {t.device}")


def check_out(name: str, t, like_shape, dtype, device) -> None:
    """A caller-provided output buffer: exact shape, dtype and device, contiguous."""
    check_tensor(name, t, dtype=dtype, shape=like_shape, device=device)
    if not t.is_contiguous():
        raise ValueError(f"{name}: output buffers must be contiguous")


def same_device(**tensors) -> torch.device:
    """The common device of the given tensors (None values skipped); raises when they differ."""
    devs = {k: v.device for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    uniq = set(devs.values())
    if len(uniq) > 1:
        detail = ", ".join(f"{k} on {d}" for k, d in devs.items())
        raise ValueError(f"all tensors must be on one device, got {detail}")
    return next(iter(uniq))


# Scalar arguments (ints are never bools; cache_len is an int or an int32 tensor [B]).


def is_int(x) -> bool:
    """A Python or NumPy integer, never a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np_bool))


def is_number(x) -> bool:
    """A Python or NumPy real number, never a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np_bool))


def int_arg(name: str, x) -> int:
    """`x` as an int (Python or NumPy integer); TypeError for anything else, bools included."""
    if not is_int(x):
        raise TypeError(f"{name}: expected an int, got {type(x).__name__}")
    return int(x)


def cache_len_arg(cache_len, B: int, device) -> torch.Tensor:
    """cache_len as int32 [B]: an int (the same for every request) or an int32 tensor [B] as given."""
    if isinstance(cache_len, torch.Tensor):
        check_tensor("cache_len", cache_len, dtype=torch.int32, shape=(B,))
        return cache_len
    if not is_int(cache_len):
        raise TypeError(f"cache_len: expected an int or an int32 tensor [B], got {type(cache_len).__name__}")
    cache_len = int(cache_len)
    if not -(2**31) <= cache_len < 2**31:
        raise ValueError(f"cache_len: expected an int32 value, got {cache_len}")
    return torch.full((B,), cache_len, dtype=torch.int32, device=device)
