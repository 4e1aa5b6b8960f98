"""Training checkpoints: written atomically, found again after a kill.

A checkpoint is one file `<dir>/stage<j>-step<NNNNNNNN>.pt` (torch.save of a dict: head weights, optimizer,
scheduler, RNG states, data position, step, and the hash of the run's settings). It is first written to a
temporary file in the same folder (`.<name>.tmp-<pid>`), flushed and fsync'ed, then renamed over the final
name with os.replace, which is atomic on POSIX file systems: a checkpoint file either exists complete or
not at all. A run killed while writing leaves only the temporary file, which `latest_checkpoint` ignores
(and `clean_temporaries` removes).

The trainer goes through CheckpointManager (one run's folder and how many checkpoints it keeps),
training_state (what a checkpoint holds) and check_resumable (may --resume continue from it).
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Optional

import torch

from ..files import atomic_path
from .rng import get_rng_state

_NAME = re.compile(r"^stage(\d+)-step(\d{8})\.pt$")


def checkpoint_name(stage: int, step: int) -> str:
    """The file name of the checkpoint after `step` optimizer steps of `stage`."""
    return f"stage{stage}-step{step:08d}.pt"


def atomic_save(obj, path: str) -> None:
    """torch.save(obj) to `path` through specdec.files.atomic_path (never a half-written checkpoint)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


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


class CheckpointManager:
    """The checkpoints of one run: `folder` (out/checkpoints), of which the `keep` newest stay (0 = all)."""

    def __init__(self, folder: str, keep: int):
        self.folder, self.keep = folder, keep

    def prepare(self) -> None:
        """Create the folder and remove the temporaries of a run killed while writing."""
        os.makedirs(self.folder, exist_ok=True)
        clean_temporaries(self.folder)

    def exist(self) -> bool:
        """Whether the folder holds a complete checkpoint."""
        return bool(list_checkpoints(self.folder))

    def newest(self) -> Optional[tuple]:
        """load_latest of the folder, on the CPU: (stage, step, path, state) or None."""
        return load_latest(self.folder, map_location="cpu")

    def save(self, state: dict) -> None:
        """Write `state` (training_state) as the checkpoint of its stage and step, then drop the oldest."""
        atomic_save(state, os.path.join(self.folder, checkpoint_name(state["stage"], state["step"])))
        prune_checkpoints(self.folder, self.keep)


def training_state(
    *,
    stage: int,
    done: bool,
    epoch: int,
    position: int,
    step: int,
    head,
    optimizer,
    scheduler,
    settings: dict,
    world_size: int,
    log_rows: tuple,
    stats: dict,
    summary: dict,
    d2t: Optional[torch.Tensor],
) -> dict:
    """What a checkpoint holds (version 1): where the stage stands (`done`: the stage is finished; epoch,
    position = the next global batch of the epoch, step), the head's weights (CPU copies), the optimizer's
    and scheduler's states, the global RNG states (read now), the run's trajectory settings and process
    count, the rows of train_log/val_log written so far, the stage's token and time totals, summary.json's
    contents and the draft-to-target map."""
    return {
        "version": 1,
        "stage": stage,
        "done": done,
        "epoch": epoch,
        "position": position,
        "step": step,
        "head": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": get_rng_state(),
        "settings": settings,
        "world_size": world_size,
        "log_rows": log_rows,
        "stats": dict(stats),
        "summary": summary,
        "d2t": None if d2t is None else d2t.cpu(),
    }


def check_resumable(state: dict, path: str, settings: dict, world_size: int, warn: bool) -> None:
    """Raise ValueError when the checkpoint `state` (file `path`) was written with other trajectory
    `settings`; warn (when `warn`) when another process count or another compute dtype wrote it (the run
    continues, not bitwise). The dtype may change because `--dtype auto` picks per machine (fp32 on an
    AVX2-only CPU, bf16 autocast with bf16 instructions) and a long run may resume on the other kind; the
    parameters and the optimizer state are fp32 either way."""
    theirs = state.get("settings", {})
    diff = sorted(k for k in set(settings) | set(theirs) if settings.get(k) != theirs.get(k) and k != "dtype")
    if settings.get("dtype") != theirs.get("dtype") and warn:
        warnings.warn(
            f"--resume: the checkpoint was trained in {theirs.get('dtype')}, now {settings.get('dtype')}: "
            "the run continues (fp32 parameters and optimizer either way), but not bitwise as the original would have",
            stacklevel=2,
        )
    if diff:
        shown = ", ".join(f"{k}: {theirs.get(k)!r} -> {settings.get(k)!r}" for k in diff)
        raise ValueError(f"--resume: checkpoint {path} was written with other settings ({shown})")
    if state.get("world_size", 1) != world_size and warn:
        warnings.warn(
            f"--resume: the checkpoint was written by {state.get('world_size')} processes, now "
            f"{world_size}: the run continues, but not bitwise as the original would have",
            stacklevel=2,
        )
