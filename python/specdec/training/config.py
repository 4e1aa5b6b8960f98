"""The settings of a training run: TrainConfig (the `specdec train` arguments) and their checks."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..dtypes import TRAIN_DTYPE_NAMES
from ..head_kinds import KINDS
from .losses import CHECK_POSITIONS

__all__ = ["CHECK_POSITIONS", "SimulatedKill", "TrainConfig"]

# Fields of TrainConfig that do not change the trajectory of the parameters (may differ on --resume).
_FREE_FIELDS = (
    "out",
    "resume",
    "progress",
    "plot",
    "stop_after",
    "device",
    "checkpoint_every",
    "keep_checkpoints",
    "val_steps",
    "val_sequences",
    "val_batch_size",
    "validate_at_start",
    "val_every",
)


class SimulatedKill(RuntimeError):
    """Raised by train() after `stop_after` optimizer steps (tests of kill-and-resume)."""


@dataclass
class TrainConfig:
    """Settings of a training run (the `specdec train` arguments).

    kind: "eagle" | "fspad" | "griffin". data: a `specdec data` folder (splits "train" and "val").
    out: the output folder; the final head is written there (model.safetensors + config.json), the
        per-stage heads of a multi-stage run under out/stages/stage<j>, checkpoints under
        out/checkpoints, logs as out/train_log.csv, out/val_log.csv, out/summary.json, out/curves.png.
    target: a Hugging Face folder, or "default"; None takes the target recorded in the data manifest.
    online: compute the target's features in the loop (the data need not hold features).
    stages: GRIFFIN's training stages, run in sequence (stage j >= 2 starts from stage j-1's head);
        (1,) for EAGLE and FSPAD. init: a head folder the first stage starts from (required when the
        first stage is >= 2).
    draft_vocab: V, the size of a reduced draft vocabulary (the V most frequent response tokens of the
        training split plus the EOS ids); None = the target's whole vocabulary.
    epochs, max_steps: passes over the training split; max_steps (per stage) stops earlier.
    batch_size: sequences per optimizer step over all processes (a multiple of the process count).
    batch_tokens: instead of batch_size sequences in random order, batches of sequences of about one
        length with at most this many tokens each, padding included (a longer sequence still makes a
        batch; the count a multiple of the process count), in a seeded random order: the same tokens
        per step on average as batch_size = batch_tokens / mean length, with almost no padding (random
        batches of ShareGPT answers are 40% padding). batch_size then sets only validation's batches.
    max_length: cut sequences to this many tokens (None = as stored).
    lr: the base learning rate (None = the recipe's: EAGLE 3e-5, FSPAD 5e-5, GRIFFIN stage 1 5e-5,
        later stages 3e-5). betas, weight_decay, adam_eps: AdamW. grad_clip: the clipping threshold (0 = off);
        clip_mode: "value" (each gradient entry clamped to [-grad_clip, grad_clip], as the reference
        EAGLE/FSPAD/GRIFFIN trainers do) or "norm" (the global gradient norm scaled down to grad_clip).
    warmup_steps: linear warmup (None = the recipes' 2000 steps, capped at 5% of the stage's steps, at
        least 1); then cosine decay to
        min_lr_ratio * lr at the last step.
    noise: amplitude of the uniform noise added to the input features (0 = off); topk_mask,
        check_position: GRIFFIN's loss mask (top-k, the position of the check: "same" | "previous").
    dtype: "float32" or "bfloat16" (autocast; the parameters and optimizer stay fp32).
    device: "cpu", "cuda", "cuda:N" (None = cuda when available; under torchrun, cuda:LOCAL_RANK).
    seed: init, data order and noise. checkpoint_every: steps between checkpoints (and one at the end of
        every epoch); keep_checkpoints: how many to keep (0 = all). resume: continue from the newest
        checkpoint in out/checkpoints.
    val_steps: draft steps of the acceptance measurement; val_sequences: cap on the validation
        sequences (None = all); val_batch_size (None = batch_size); validate_at_start: also validate the
        initial head (step 0); val_every: also validate (and checkpoint) every K optimizer steps of a stage,
        besides the end of each epoch (None = epoch ends only): the points of a learning curve inside
        one pass over the data.
    progress: tqdm bar; plot: write curves.png. stop_after: raise SimulatedKill after this many
        optimizer steps of this call (tests).
    """

    kind: str = "eagle"
    data: Optional[str] = None
    out: str = "draft-head"
    target: Optional[str] = None
    online: bool = False
    stages: Sequence[int] = (1,)
    init: Optional[str] = None
    draft_vocab: Optional[int] = None
    epochs: int = 1
    max_steps: Optional[int] = None
    batch_size: int = 8
    batch_tokens: Optional[int] = None
    max_length: Optional[int] = None
    lr: Optional[float] = None
    betas: Sequence[float] = (0.9, 0.95)
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    grad_clip: float = 0.5
    clip_mode: str = "value"
    warmup_steps: Optional[int] = None
    min_lr_ratio: float = 0.0
    noise: float = 0.1
    topk_mask: int = 3
    check_position: str = "same"
    dtype: str = "float32"
    device: Optional[str] = None
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    resume: bool = False
    val_steps: int = 5
    val_sequences: Optional[int] = None
    val_batch_size: Optional[int] = None
    validate_at_start: bool = True
    val_every: Optional[int] = None
    progress: bool = True
    plot: bool = True
    stop_after: Optional[int] = None
    extra: dict = field(default_factory=dict)  # more keyword arguments for losses.recipe_loss

    def __post_init__(self):
        self.stages = tuple(int(s) for s in self.stages)
        self.betas = tuple(float(b) for b in self.betas)
        self.check()

    def check(self) -> None:
        """Raise ValueError naming the first inconsistent setting."""

        def bad(name, expected, got):
            raise ValueError(f"TrainConfig.{name}: expected {expected}, got {got!r}")

        if self.kind not in KINDS:
            bad("kind", f"one of {KINDS}", self.kind)
        if not self.stages or any(s < 1 for s in self.stages) or list(self.stages) != sorted(set(self.stages)):
            bad("stages", "increasing stage numbers >= 1", self.stages)
        if self.kind != "griffin" and self.stages != (1,):
            bad("stages", f"(1,) for {self.kind} (multi-stage training is GRIFFIN's)", self.stages)
        if self.stages[0] > 1 and self.init is None:
            bad("init", f"a head folder to start stage {self.stages[0]} from", None)
        for name in ("epochs", "batch_size", "checkpoint_every", "val_steps", "topk_mask"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(name, "an integer >= 1", v)
        optional = (
            "max_steps",
            "max_length",
            "draft_vocab",
            "val_sequences",
            "val_batch_size",
            "val_every",
            "batch_tokens",
        )
        for name in optional + ("stop_after",):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                bad(name, "None or an integer >= 1", v)
        if self.max_length is not None and self.max_length < 3:
            bad("max_length", "None or an integer >= 3", self.max_length)
        if self.warmup_steps is not None and self.warmup_steps < 0:
            bad("warmup_steps", "None or an integer >= 0", self.warmup_steps)
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            bad("lr", "a positive number", self.lr)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            bad("betas", "two numbers in [0, 1)", self.betas)
        for name in ("weight_decay", "grad_clip", "noise"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                bad(name, "a number >= 0", v)
        if not (self.adam_eps > 0):
            bad("adam_eps", "a positive number", self.adam_eps)
        if not 0 <= self.min_lr_ratio <= 1:
            bad("min_lr_ratio", "a number in [0, 1]", self.min_lr_ratio)
        if self.clip_mode not in ("value", "norm"):
            bad("clip_mode", "'value' or 'norm'", self.clip_mode)
        if self.check_position not in CHECK_POSITIONS:
            bad("check_position", f"one of {CHECK_POSITIONS}", self.check_position)
        if self.dtype not in TRAIN_DTYPE_NAMES:
            bad("dtype", f"one of {sorted(TRAIN_DTYPE_NAMES)}", self.dtype)
        if self.keep_checkpoints < 0:
            bad("keep_checkpoints", "an integer >= 0", self.keep_checkpoints)

    def settings(self) -> dict:
        """The JSON-able settings (what config.json records as the recipe)."""
        d = dataclasses.asdict(self)
        d["stages"] = list(self.stages)
        d["betas"] = list(self.betas)
        d["dtype"] = TRAIN_DTYPE_NAMES[self.dtype]
        return d

    def trajectory_settings(self) -> dict:
        """The settings a resumed run must share with the killed one."""
        return {k: v for k, v in self.settings().items() if k not in _FREE_FIELDS}
