"""The head of a training stage: built from the target's config (or loaded from --init), saved atomically."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from ..files import atomic_folder
from .rng import derive_seed

if TYPE_CHECKING:
    from .config import TrainConfig


def build_stage_head(cfg: TrainConfig, hf_config, stage: int, init: Optional[str], d2t: Optional[torch.Tensor], device):
    """The fp32 head a stage starts from: the --init / previous stage's head folder `init`, or a new head
    for the target config `hf_config` with seed-derived weights (reduced to the draft vocabulary d2t, the
    sorted target ids, when given)."""
    from specdec.models import DraftConfig, build_draft_head, load_draft_head

    if init is not None:
        head = load_draft_head(init, device=device, dtype=torch.float32)
        if head.kind != cfg.kind:
            raise ValueError(f"--init {init!r} holds a {head.kind} head, expected {cfg.kind}")
        return head
    overrides = {}
    if d2t is not None:
        overrides["draft_vocab_size"] = int(d2t.numel())
    dc = DraftConfig.from_target(hf_config, cfg.kind, **overrides)
    torch.manual_seed(derive_seed(cfg.seed, "init", stage))
    head = build_draft_head(dc, device=device, dtype=torch.float32)
    if d2t is not None:
        head.set_draft_vocab(d2t.to(device))
    return head


def init_draft_vocab(head, init: str, draft_vocab: Optional[int]) -> Optional[torch.Tensor]:
    """The draft-to-target map (CPU) of a head loaded from `init`, None for a full vocabulary; ValueError
    when its size is not the requested draft_vocab."""
    vd = head.config.draft_vocab_size
    if draft_vocab is not None and vd != draft_vocab:
        raise ValueError(
            f"init head {init!r} has a draft vocabulary of {vd or head.config.vocab_size} tokens, "
            f"not draft_vocab={draft_vocab}"
        )
    return None if vd is None else head.draft_to_target.detach().cpu().clone()


def save_head(head, folder: str, merge: bool = True) -> None:
    """head.save_pretrained into `folder` through specdec.files.atomic_folder: with `merge` each file is
    replaced whole and the folder's other files stay (a one-stage run's head folder is the run's out/,
    which also holds its logs and checkpoints); without it the whole folder is replaced at once (readers
    never see a new config.json beside old weights)."""
    with atomic_folder(folder, merge=merge) as tmp:
        head.save_pretrained(tmp)
