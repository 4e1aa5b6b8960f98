"""Training checkpoints: written atomically, found again after a kill.

A checkpoint is one file `<dir>/stage<j>-step<NNNNNNNN>.pt` (torch.save of a dict: head weights, optimizer,
scheduler, RNG states, data position, step, and the hash of the run's settings). It is first written to a
temporary file in the same folder (`.<name>.tmp-<pid>`), flushed and fsync'ed, then renamed over the final
name with os.replace, which is atomic on POSIX file systems: a checkpoint file either exists complete or
not at all. A run killed while writing leaves only the temporary file, which `latest_checkpoint` ignores
(and `clean_temporaries` removes).
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Optional

import torch

_NAME = re.compile(r"^stage(\d+)-step(\d{8})\.pt$")


def checkpoint_name(stage: int, step: int) -> str:
    return f"stage{stage}-step{step:08d}.pt"


def atomic_save(obj, path: str) -> None:
    """torch.save(obj) to `path` through a temporary file in the same folder and os.replace."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def list_checkpoints(folder: str) -> list:
    """[(stage, step, path)] of the complete checkpoints in `folder`, oldest first (temporaries ignored)."""
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        m = _NAME.match(name)
        if m:
            found.append((int(m.group(1)), int(m.group(2)), os.path.join(folder, name)))
    return sorted(found)


def latest_checkpoint(folder: str) -> Optional[tuple]:
    """(stage, step, path) of the newest complete checkpoint, or None."""
    found = list_checkpoints(folder)
    return found[-1] if found else None


def load_latest(folder: str, map_location="cpu") -> Optional[tuple]:
    """(stage, step, path, state) of the newest checkpoint that loads; an unreadable one is skipped with a
    warning (it cannot be half-written, but a disk can still corrupt it)."""
    for stage, step, path in reversed(list_checkpoints(folder)):
        try:
            state = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as exc:
            warnings.warn(
                f"checkpoint {path} does not load ({type(exc).__name__}: {exc}); trying an older one", stacklevel=2
            )
            continue
        return stage, step, path, state
    return None


def prune_checkpoints(folder: str, keep: int) -> None:
    """Delete all but the `keep` newest checkpoints (keep <= 0 keeps all)."""
    if keep <= 0:
        return
    for _, _, path in list_checkpoints(folder)[:-keep]:
        try:
            os.remove(path)
        except OSError:
            pass


def clean_temporaries(folder: str) -> list:
    """Remove temporary files left by a run killed while writing; returns their names."""
    if not os.path.isdir(folder):
        return []
    removed = []
    for name in os.listdir(folder):
        if name.startswith(".") and ".tmp-" in name:
            try:
                os.remove(os.path.join(folder, name))
                removed.append(name)
            except OSError:
                pass
    return removed
