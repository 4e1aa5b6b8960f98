"""What the CPU is, read once from /proc/cpuinfo: its model name and which of some ISA flags it has. Used by
the per-machine choices (specdec_kernels.ops.linear_choice, specdec.machine_dtype) and by the records of
measurements (specdec.evaluation.report, bench/)."""

from __future__ import annotations

import functools
import platform
from typing import Iterable, List, Optional


@functools.lru_cache(maxsize=None)
def _cpuinfo() -> tuple:
    """(model name or None, flags or None) of the first processor in /proc/cpuinfo (None where unreadable)."""
    name, flags = None, None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if name is None and line.lower().startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif flags is None and line.startswith("flags"):
                    flags = tuple(line.split(":", 1)[1].split())
                if name is not None and flags is not None:
                    break
    except OSError:
        pass
    return name, flags


def cpu_model() -> str:
    """The CPU's model name (platform's processor or machine name where /proc/cpuinfo does not say)."""
    return _cpuinfo()[0] or platform.processor() or platform.machine()


def cpu_flags(wanted: Iterable[str]) -> Optional[List[str]]:
    """The flags of `wanted` the CPU has, in the order given; None when /proc/cpuinfo gives no flags."""
    flags = _cpuinfo()[1]
    return None if flags is None else [x for x in wanted if x in flags]
