"""The training loop of the draft-head recipes (EAGLE, FSPAD, GRIFFIN): `train(TrainConfig) -> head folder`.

One function runs every setting: stored features (specdec.data.FeatureDataset) or online features (the
target computes them inside the loop), fp32 or bf16 autocast, CPU or CUDA, one process or many under
`torchrun` (DistributedDataParallel: gloo on CPU, NCCL on GPU). See docs/training.md.

Determinism. With the same settings, seed and process count a run is bitwise reproducible on the same
machine: the head's init is drawn from seed-derived generators, the data order of each epoch is a seeded
permutation of the training sequences, and the global RNG is re-seeded before every optimizer step from
(seed, stage, step, rank), so the input noise of a step does not depend on what ran before it. A killed
run resumed from its last checkpoint therefore ends with exactly the parameters of an uninterrupted one.

Data parallelism. Step s of an epoch takes the global batch perm[s*B:(s+1)*B] (B = batch_size, in
sequences); rank r of W processes trains on its elements r, r+W, ... The loss of each rank is rescaled by
W * (its masked positions) / (all ranks' masked positions) before DDP averages the gradients, so the
update equals the one of a single process on the whole global batch (up to fp32 rounding).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..dtypes import TRAIN_DTYPE_NAMES, torch_dtype
from ..files import atomic_write_text
from ..head_kinds import KINDS
from . import checkpointing as ckpt
from .schedule import warmup_cosine
from .validation import validate

DTYPES = {name: torch_dtype(name) for name in TRAIN_DTYPE_NAMES}
CHECK_POSITIONS = ("same", "previous")

# Default learning rates (METHODS.md), used when specdec.training.losses has no RECIPES table.
_DEFAULT_LR = {"eagle": 3e-5, "fspad": 5e-5, "griffin": 5e-5, "griffin_later": 3e-5}

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
        initial head (step 0).
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
        for name in ("max_steps", "max_length", "draft_vocab", "val_sequences", "val_batch_size", "stop_after"):
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
        if self.dtype not in DTYPES:
            bad("dtype", f"one of {sorted(DTYPES)}", self.dtype)
        if self.keep_checkpoints < 0:
            bad("keep_checkpoints", "an integer >= 0", self.keep_checkpoints)

    def settings(self) -> dict:
        """The JSON-able settings (what config.json records as the recipe)."""
        d = dataclasses.asdict(self)
        d["stages"] = list(self.stages)
        d["betas"] = list(self.betas)
        d["dtype"] = str(DTYPES[self.dtype]).replace("torch.", "")
        return d

    def trajectory_settings(self) -> dict:
        """The settings a resumed run must share with the killed one."""
        return {k: v for k, v in self.settings().items() if k not in _FREE_FIELDS}


# ---- small helpers -------------------------------------------------------------------------------


def derive_seed(*parts) -> int:
    """A 63-bit seed from any printable parts (stable across processes and Python versions)."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(h[:8], "big") & ((1 << 63) - 1)


def recipe_lr(kind: str, stage: int) -> float:
    """The recipe's peak learning rate (specdec.training.losses.learning_rate; METHODS.md)."""
    try:
        from .losses import learning_rate
    except ImportError:  # pragma: no cover - losses.py is part of the package
        learning_rate = None
    if learning_rate is not None:
        return float(learning_rate(kind, stage))
    if kind == "griffin" and stage > 1:
        return _DEFAULT_LR["griffin_later"]
    return _DEFAULT_LR[kind]


def default_warmup(total_steps: int) -> int:
    """The recipes' 2000 warmup steps, capped at 5% of a shorter run (at least 1)."""
    return max(1, min(2000, math.ceil(0.05 * total_steps)))


def fingerprint_target(path: Optional[str]) -> Optional[str]:
    """sha256 over a target folder's config.json and, per weight file, its name, size and first and last
    MiB (cheap for an 8B target; changes whenever the weights are replaced)."""
    if path is None or not os.path.isdir(path):
        return None
    h = hashlib.sha256()
    cfg = os.path.join(path, "config.json")
    if os.path.isfile(cfg):
        with open(cfg, "rb") as f:
            h.update(f.read())
    for name in sorted(os.listdir(path)):
        if not (name.endswith(".safetensors") or name.endswith(".bin")):
            continue
        file = os.path.join(path, name)
        size = os.path.getsize(file)
        h.update(f"{name}:{size}".encode())
        with open(file, "rb") as f:
            h.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(size - (1 << 20))
                h.update(f.read(1 << 20))
    return "sha256:" + h.hexdigest()


def manifest_hash(manifest: Optional[dict]) -> Optional[str]:
    if not manifest:
        return None
    return "sha256:" + hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()


class _Dist:
    """Process-group state: rank, world size, and the collectives the loop uses (no-ops for one process)."""

    def __init__(self, device: torch.device):
        import torch.distributed as dist

        self.dist = dist
        self.owned = False
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.owned = True
        self.on = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1
        self.device = device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.on and self.world > 1:
            self.dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.on and self.world > 1:
            if self.device.type == "cuda":
                self.dist.barrier(device_ids=[self.device.index or 0])
            else:
                self.dist.barrier()

    def close(self) -> None:
        if self.owned and self.dist.is_initialized():
            self.dist.destroy_process_group()


def _pick_device(text: Optional[str]) -> torch.device:
    local = os.environ.get("LOCAL_RANK")
    if text is None:
        text = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(text)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", int(local) if local is not None else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    return dev


class _Autocast:
    """torch.autocast for bf16 runs, a no-op for fp32 (re-enterable)."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device_type, self.dtype = device.type, dtype
        self._ctx = []

    def __enter__(self):
        if self.dtype == torch.float32:
            self._ctx.append(None)
            return None
        c = torch.autocast(self.device_type, dtype=self.dtype)
        self._ctx.append(c)
        return c.__enter__()

    def __exit__(self, *exc):
        c = self._ctx.pop()
        return c.__exit__(*exc) if c is not None else False


# ---- data ----------------------------------------------------------------------------------------


def _load_datasets(cfg: TrainConfig):
    from specdec.data import FeatureDataset, TokenDataset

    cls = TokenDataset if cfg.online else FeatureDataset
    return cls(cfg.data, split="train"), cls(cfg.data, split="val")


def _collate(items: list, max_length: Optional[int], pad_id: int = 0) -> dict:
    from specdec.data import collate

    if max_length is not None:
        items = [
            {k: (v[:max_length] if isinstance(v, torch.Tensor) and v.dim() >= 1 else v) for k, v in it.items()}
            for it in items
        ]
    return collate(items, pad_id=pad_id)


def _to_device(batch: dict, device: torch.device, feat_dtype: torch.dtype) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            if k == "hidden":
                v = v.to(feat_dtype)
        out[k] = v
    return out


def epoch_order(n: int, seed: int, stage: int, epoch: int) -> torch.Tensor:
    """The seeded permutation of the training sequences for one epoch of one stage."""
    g = torch.Generator().manual_seed(derive_seed(seed, "order", stage, epoch))
    return torch.randperm(n, generator=g)


# ---- the target and the head --------------------------------------------------------------------


def _resolve_target(cfg: TrainConfig, manifest: Optional[dict]) -> Optional[str]:
    name = cfg.target
    if name is None and manifest:
        t = manifest.get("target")
        name = t.get("path") if isinstance(t, dict) else t
    if name is None:
        return None
    try:
        from specdec.targets import resolve_target  # type: ignore
    except ImportError:
        resolve_target = None
    if resolve_target is not None:
        return str(resolve_target(name))
    if name == "default":
        raise FileNotFoundError("the default target needs specdec.targets (`specdec target fetch`)")
    return os.path.expanduser(name)


def _load_target(spec, path: Optional[str], dtype: torch.dtype, device: torch.device, full: bool):
    """(model or None, embed, lm_head, hf config, eos ids). With full=False only the embedding and the
    lm_head are kept (stored-feature mode)."""
    if isinstance(spec, nn.Module):
        model = spec
    else:
        if path is None:
            raise ValueError("no target: give TrainConfig.target (the data manifest names none)")
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    model.eval().requires_grad_(False)
    eos = []
    for src in (
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        getattr(model.config, "eos_token_id", None),
    ):
        for i in [src] if isinstance(src, int) else list(src or ()):
            if isinstance(i, int) and i not in eos:
                eos.append(i)
    given = isinstance(spec, nn.Module)

    def placed(m):  # a module on `device` in `dtype`; a caller's module is copied, never converted in place
        p = next(m.parameters())
        if p.device == device and p.dtype == dtype:
            return m
        return (copy.deepcopy(m) if given else m).to(device=device, dtype=dtype)

    if full:
        model = placed(model)
        return model, model.get_input_embeddings(), model.get_output_embeddings(), model.config, eos
    embed, lm_head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = lm_head.weight is embed.weight
    embed = placed(embed)
    if tied and isinstance(lm_head, nn.Linear) and lm_head.bias is None:
        out = nn.Linear(embed.weight.shape[1], embed.weight.shape[0], bias=False, device="meta")
        out.weight = embed.weight  # keep the tie (one copy of the table)
        lm_head = out
    else:
        lm_head = placed(lm_head)
    return None, embed, lm_head, model.config, eos


def _draft_vocab_ids(train_ds, size: int, eos: list, vocab: int) -> torch.Tensor:
    """The V most frequent response tokens of the training split, EOS ids always included (sorted)."""
    from .vocab import top_tokens

    counts = train_ds.token_counts()
    if counts.numel() < vocab:  # a tokenizer-sized count vector shorter than the model's vocabulary
        counts = torch.cat((counts, torch.zeros(vocab - counts.numel(), dtype=counts.dtype)))
    return top_tokens(counts[:vocab].to(torch.int64), size, always=[i for i in eos if 0 <= i < vocab])


def _build_head(cfg: TrainConfig, hf_config, stage: int, init: Optional[str], d2t: Optional[torch.Tensor], device):
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
        _set_d2t(head, d2t.to(device))
    return head


def _set_d2t(head, d2t: torch.Tensor) -> None:
    head.set_draft_vocab(d2t)


# ---- the loss ------------------------------------------------------------------------------------

_COUNT_KEYS = ("count", "masked", "num_masked", "n_masked", "tokens", "n")
_ACC_KEYS = ("acc", "top1", "accuracy", "acc_top1")


def _metric(metrics: dict, keys) -> Optional[str]:
    for k in keys:
        if k in metrics:
            return k
    return None


def _as_float(v) -> Optional[float]:
    if isinstance(v, torch.Tensor):
        return float(v.detach().float()) if v.numel() == 1 else None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return None


def _loss_fn(cfg: TrainConfig, stage: int, noise: float):
    from .losses import recipe_loss  # the recipes' losses

    def fn(head, batch, generator=None):
        return recipe_loss(
            cfg.kind,
            head,
            batch,
            stage=stage,
            topk_mask=cfg.topk_mask,
            check_position=cfg.check_position,
            noise=noise,
            generator=generator,
            **cfg.extra,
        )

    return fn


class _LossModule(nn.Module):
    """Wraps the head so DistributedDataParallel runs (and hooks) the recipe's loss as its forward."""

    def __init__(self, head, fn):
        super().__init__()
        self.head = head
        self.fn = fn

    def forward(self, batch, generator=None):
        return self.fn(self.head, batch, generator)


# ---- logs ----------------------------------------------------------------------------------------


class _CsvLog:
    """Append-only CSV whose header is fixed by its first row; truncate() drops rows past a checkpoint."""

    def __init__(self, path: str, enabled: bool):
        self.path, self.enabled = path, enabled
        self.rows = 0
        self.header: Optional[list] = None
        if enabled and os.path.isfile(path):
            with open(path, newline="") as f:
                r = list(csv.reader(f))
            if r:
                self.header, self.rows = r[0], len(r) - 1

    def truncate(self, rows: int) -> None:
        if not self.enabled or not os.path.isfile(self.path):
            self.rows = 0
            return
        with open(self.path, newline="") as f:
            r = list(csv.reader(f))
        keep = r[: rows + 1]
        buf = io.StringIO()
        csv.writer(buf).writerows(keep)
        atomic_write_text(buf.getvalue(), self.path)
        self.header = keep[0] if keep else None
        self.rows = max(len(keep) - 1, 0)

    def write(self, row: dict) -> None:
        if not self.enabled:
            self.rows += 1
            return
        new = self.header is None
        if new:
            self.header = list(row)
        elif any(k not in self.header for k in row):
            # new columns (e.g. a later GRIFFIN stage's losses): rewrite the file with the wider header
            self.header = self.header + [k for k in row if k not in self.header]
            with open(self.path, newline="") as f:
                old = list(csv.reader(f))[1:]
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(self.header)
            for r in old:
                w.writerow(r + [""] * (len(self.header) - len(r)))
            atomic_write_text(buf.getvalue(), self.path)
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(self.header)
            w.writerow([_fmt(row.get(k, "")) for k in self.header])
        self.rows += 1


def _fmt(v) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


# ---- the run -------------------------------------------------------------------------------------


def train(
    config: TrainConfig,
    *,
    target_model: Optional[nn.Module] = None,
    datasets: Optional[tuple] = None,
    phase=None,
) -> str:
    """Train the draft head of `config` and return the folder of the final head.

    target_model: an already loaded Hugging Face causal LM to use instead of config.target.
    datasets: (train, val) dataset objects to use instead of config.data (items as FeatureDataset's, or
    TokenDataset's with config.online; the train one needs token_counts() for draft_vocab).
    phase: called with a short description of each phase ("loading the target", ...; the CLI's error line).
    """
    config.check()
    cfg = config
    device = _pick_device(cfg.device)
    dist = _Dist(device)
    try:
        return _Run(cfg, device, dist, target_model, datasets, phase).run()
    finally:
        dist.close()


class _Run:
    def __init__(self, cfg: TrainConfig, device, dist: _Dist, target_model, datasets, phase=None):
        self.cfg, self.device, self.dist = cfg, device, dist
        self.phase = phase or (lambda what: None)
        self.dtype = DTYPES[cfg.dtype]
        self.autocast = _Autocast(device, self.dtype)
        if cfg.batch_size % dist.world:
            raise ValueError(
                f"batch_size {cfg.batch_size} is not a multiple of the {dist.world} processes "
                "(the global batch is split evenly)"
            )
        self.out = os.path.abspath(os.path.expanduser(cfg.out))
        self.ckpt_dir = os.path.join(self.out, "checkpoints")
        if datasets is not None:
            self.train_ds, self.val_ds = datasets
        else:
            if cfg.data is None:
                raise ValueError("TrainConfig.data: expected a `specdec data` folder, got None")
            self.phase(f"loading the data {cfg.data!r}")
            self.train_ds, self.val_ds = _load_datasets(cfg)
        self.manifest = getattr(self.train_ds, "manifest", None)
        self.phase("resolving the target")
        self.target_path = None if target_model is not None else _resolve_target(cfg, self.manifest)
        self.phase(f"loading the target {self.target_path or 'model'}")
        model, self.embed, self.lm_head, self.hf_config, self.eos = _load_target(
            target_model, self.target_path, self.dtype, device, full=cfg.online
        )
        self.features = None
        if cfg.online:
            from specdec.data import OnlineFeatures

            self.features = OnlineFeatures(model)
        self.pad_id = 0
        if isinstance(self.manifest, dict):
            tok = self.manifest.get("tokenizer") or {}
            if isinstance(tok.get("pad_token_id"), int):
                self.pad_id = tok["pad_token_id"]
            for i in tok.get("eos_token_ids") or ():
                if isinstance(i, int) and i not in self.eos:
                    self.eos.append(i)
        self.d2t = None
        if cfg.draft_vocab is not None:
            vocab = int(self.hf_config.vocab_size)
            if cfg.draft_vocab > vocab:
                raise ValueError(f"draft_vocab {cfg.draft_vocab} exceeds the target's vocabulary ({vocab})")
            self.d2t = _draft_vocab_ids(self.train_ds, cfg.draft_vocab, self.eos, vocab)
        n = len(self.train_ds)
        if n < cfg.batch_size:
            raise ValueError(f"the training split has {n} sequences, fewer than one batch ({cfg.batch_size})")
        self.steps_per_epoch = n // cfg.batch_size
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.warmup = cfg.warmup_steps if cfg.warmup_steps is not None else default_warmup(self.total_steps)
        self.steps_this_call = 0
        self.train_log = _CsvLog(os.path.join(self.out, "train_log.csv"), dist.main)
        self.val_log = _CsvLog(os.path.join(self.out, "val_log.csv"), dist.main)
        self.summary = {"kind": cfg.kind, "stages": {}}

    # -- paths and metadata --

    def stage_dir(self, stage: int) -> str:
        if len(self.cfg.stages) == 1:
            return self.out
        return os.path.join(self.out, "stages", f"stage{stage}")

    def metadata(self, stage: int, lr: float) -> dict:
        cfg = self.cfg
        return {
            "kind": cfg.kind,
            "stage": stage,
            "target": {
                "path": self.target_path,
                "fingerprint": fingerprint_target(self.target_path),
                "vocab_size": int(self.hf_config.vocab_size),
                "eos_token_ids": self.eos,
            },
            "draft_vocab": None
            if self.d2t is None
            else {
                "size": int(self.d2t.numel()),
                "eos_included": self.eos,
                "source": "train-split response token counts",
            },
            "recipe": dict(
                cfg.settings(),
                lr_used=lr,
                warmup_steps_used=self.warmup,
                total_steps=self.total_steps,
                steps_per_epoch=self.steps_per_epoch,
                world_size=self.dist.world,
            ),
            "data": {
                "path": os.path.abspath(cfg.data) if cfg.data else None,
                "manifest_sha256": manifest_hash(self.manifest),
                "train_sequences": len(self.train_ds),
                "val_sequences": len(self.val_ds) if self.val_ds is not None else 0,
                "online": cfg.online,
            },
        }

    # -- the run --

    def run(self) -> str:
        cfg, dist = self.cfg, self.dist
        if dist.main:
            os.makedirs(self.ckpt_dir, exist_ok=True)
            ckpt.clean_temporaries(self.ckpt_dir)
        dist.barrier()
        resume = None
        if cfg.resume:
            found = ckpt.load_latest(self.ckpt_dir, map_location="cpu")
            if found is None:
                if dist.main:
                    start = f"from --init {cfg.init!r}" if cfg.init else "from scratch"
                    warnings.warn(f"--resume: no checkpoint in {self.ckpt_dir}; starting {start}", stacklevel=2)
            else:
                resume = found[3]
                self._check_resumable(resume, found[2])
        elif ckpt.list_checkpoints(self.ckpt_dir) or os.path.isfile(os.path.join(self.out, "train_log.csv")):
            raise FileExistsError(f"{self.out} holds an earlier run; pass resume=True (--resume) or another out folder")
        if resume is not None:
            self.train_log.truncate(resume["log_rows"][0])
            self.val_log.truncate(resume["log_rows"][1])
            self.summary = resume.get("summary", self.summary)
        elif dist.main:
            for log in (self.train_log, self.val_log):
                if os.path.isfile(log.path):
                    os.remove(log.path)
                log.rows, log.header = 0, None
        dist.barrier()

        final = None
        prev_dir = cfg.init
        for si, stage in enumerate(cfg.stages):
            state = None
            if resume is not None:
                r_stage = resume["stage"]
                if stage < r_stage or (stage == r_stage and resume["done"]):
                    prev_dir = self.stage_dir(stage)
                    final = prev_dir
                    continue
                if stage == r_stage:
                    state = resume
            final = self._train_stage(stage, si, prev_dir, state)
            prev_dir = final
        if final != self.out and dist.main:
            # the final head also sits at out/ (a multi-stage run's last stage)
            import shutil

            for name in ("model.safetensors", "config.json"):
                shutil.copyfile(os.path.join(final, name), os.path.join(self.out, f".{name}.tmp"))
                os.replace(os.path.join(self.out, f".{name}.tmp"), os.path.join(self.out, name))
        dist.barrier()
        return self.out

    def _check_resumable(self, state: dict, path: str) -> None:
        mine = self.cfg.trajectory_settings()
        theirs = state.get("settings", {})
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            shown = ", ".join(f"{k}: {theirs.get(k)!r} -> {mine.get(k)!r}" for k in diff)
            raise ValueError(f"--resume: checkpoint {path} was written with other settings ({shown})")
        if state.get("world_size", 1) != self.dist.world and self.dist.main:
            warnings.warn(
                f"--resume: the checkpoint was written by {state.get('world_size')} processes, now "
                f"{self.dist.world}: the run continues, but not bitwise as the original would have",
                stacklevel=2,
            )

    def _train_stage(self, stage: int, si: int, init: Optional[str], state: Optional[dict]) -> str:
        cfg, dist, device = self.cfg, self.dist, self.device
        self.phase(f"building the stage-{stage} head" + (f" from {init!r}" if init else ""))
        head = _build_head(cfg, self.hf_config, stage, init, self.d2t if init is None else None, device)
        if init is not None:
            vd = head.config.draft_vocab_size
            if cfg.draft_vocab is not None and vd != cfg.draft_vocab:
                raise ValueError(
                    f"init head {init!r} has a draft vocabulary of {vd or head.config.vocab_size} tokens, "
                    f"not draft_vocab={cfg.draft_vocab}"
                )
            self.d2t = None if vd is None else head.draft_to_target.detach().cpu().clone()
        head.bind_target(self.embed, self.lm_head)
        head.train()
        lr = cfg.lr if cfg.lr is not None else recipe_lr(cfg.kind, stage)
        opt = torch.optim.AdamW(
            head.parameters(), lr=lr, betas=cfg.betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay
        )
        sched = warmup_cosine(opt, self.warmup, self.total_steps, cfg.min_lr_ratio)
        epoch, pos, step = 0, 0, 0
        stats = {"tokens": 0, "time": 0.0}
        if state is not None:
            head.load_state_dict(state["head"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            _set_rng(state["rng"])
            epoch, pos, step = state["epoch"], state["position"], state["step"]
            stats = dict(state.get("stats", stats))
        module = _LossModule(head, _loss_fn(cfg, stage, cfg.noise))
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            module = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
        val_fn = _loss_fn(cfg, stage, 0.0)

        if state is None and cfg.validate_at_start:
            self._validate(head, val_fn, stage, si, epoch=0, step=0)
        bar = None
        if dist.main and cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=self.total_steps, initial=step, desc=f"{cfg.kind} stage {stage}", dynamic_ncols=True, unit="step"
            )
        B, W, R = cfg.batch_size, dist.world, dist.rank
        self.phase(f"training stage {stage}")
        try:
            while step < self.total_steps and epoch < cfg.epochs:
                order = epoch_order(len(self.train_ds), cfg.seed, stage, epoch)
                while pos < self.steps_per_epoch and step < self.total_steps:
                    t0 = time.perf_counter()
                    idx = order[pos * B : (pos + 1) * B][R::W].tolist()
                    batch = self._batch(idx)
                    gen = torch.Generator(device=device).manual_seed(derive_seed(cfg.seed, "noise", stage, step, R))
                    with self.autocast:
                        loss, metrics = module(batch, gen)
                    count = _as_float(metrics.get(_metric(metrics, _COUNT_KEYS) or "", None))
                    if count is None:
                        count = float(batch["loss_mask"].sum())
                    tokens = float(batch["attention_mask"].sum())
                    keys = [
                        k
                        for k in sorted(metrics)
                        if _as_float(metrics[k]) is not None and not k.endswith("count") and not k.startswith("pass1/")
                    ]
                    vec = torch.tensor(
                        [count, tokens, float(loss.detach())] + [_as_float(metrics[k]) * count for k in keys],
                        dtype=torch.float64,
                        device=device,
                    )
                    vec[2] = vec[2] * count
                    dist.all_reduce(vec)
                    if W > 1:
                        loss = loss * (W * count / max(float(vec[0]), 1.0))
                    loss.backward()
                    gnorm = _clip(head, cfg.grad_clip, cfg.clip_mode)
                    cur_lr = opt.param_groups[0]["lr"]
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    dt = time.perf_counter() - t0
                    step += 1
                    pos += 1
                    self.steps_this_call += 1
                    stats["tokens"] += float(vec[1])
                    stats["time"] += dt
                    total_count = max(float(vec[0]), 1.0)
                    row = {
                        "stage": stage,
                        "step": step,
                        "global_step": si * self.total_steps + step,
                        "epoch": round(epoch + pos / self.steps_per_epoch, 6),
                        "lr": cur_lr,
                        "loss": float(vec[2]) / total_count,
                    }
                    for i, k in enumerate(keys):
                        if k != "loss":
                            row[k.replace("/", "_")] = float(vec[3 + i]) / total_count
                    acc_key = _metric(metrics, _ACC_KEYS)
                    if acc_key and acc_key != "acc":
                        row["acc"] = row[acc_key]
                    row.update(
                        grad_norm=float(gnorm),
                        masked=int(vec[0]),
                        tokens=int(vec[1]),
                        tokens_per_s=float(vec[1]) / dt if dt > 0 else float("nan"),
                        seconds=dt,
                    )
                    self.train_log.write(row)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(
                            loss=f"{row['loss']:.4f}",
                            acc=f"{row.get('acc', float('nan')):.3f}",
                            tok_s=f"{row['tokens_per_s']:.0f}",
                            refresh=False,
                        )
                    at_end = pos >= self.steps_per_epoch or step >= self.total_steps
                    if step % cfg.checkpoint_every == 0 and not at_end:
                        self._checkpoint(stage, head, opt, sched, epoch, pos, step, stats, done=False)
                    if cfg.stop_after is not None and self.steps_this_call >= cfg.stop_after:
                        raise SimulatedKill(f"stopped after {self.steps_this_call} steps (stop_after)")
                # end of an epoch (or of the stage's steps)
                if bar is not None:
                    bar.refresh()
                self._validate(head, val_fn, stage, si, epoch=epoch + 1, step=step)
                epoch, pos = epoch + 1, 0
                done = step >= self.total_steps or epoch >= cfg.epochs
                if not done:
                    self._checkpoint(stage, head, opt, sched, epoch, pos, step, stats, done=False)
        finally:
            if bar is not None:
                bar.close()
        folder = self.stage_dir(stage)
        tput = stats["tokens"] / stats["time"] if stats["time"] > 0 else float("nan")
        self.summary["stages"].setdefault(str(stage), {}).update(
            {
                "head": folder,
                "steps": step,
                "tokens": int(stats["tokens"]),
                "train_seconds": stats["time"],
                "tokens_per_s": tput,
            }
        )
        if dist.main:
            # a measurement of the --init head (specdec validate --write) does not describe this one
            head.config.extra.pop("specdec_validation", None)
            head.config.extra["specdec_training"] = self.metadata(stage, lr)
            head.config.extra["specdec_training"]["result"] = self.summary["stages"][str(stage)]
            _save_head(head, folder)
            self._write_summary()
        dist.barrier()
        self._checkpoint(stage, head, opt, sched, epoch, pos, step, stats, done=True)
        return folder

    def _batch(self, idx: list, dataset=None) -> dict:
        ds = dataset if dataset is not None else self.train_ds
        batch = _collate([ds[i] for i in idx], self.cfg.max_length, self.pad_id)
        batch = _to_device(batch, self.device, self.dtype)
        if self.features is not None:
            with torch.no_grad(), self.autocast:
                hidden = self.features(batch["input_ids"], batch["attention_mask"])
            batch["hidden"] = hidden.to(self.dtype)
        return batch

    def _validate(self, head, loss_fn, stage: int, si: int, epoch: int, step: int) -> Optional[dict]:
        cfg, dist = self.cfg, self.dist
        if self.val_ds is None or len(self.val_ds) == 0:
            return None
        n = len(self.val_ds) if cfg.val_sequences is None else min(len(self.val_ds), cfg.val_sequences)
        mine = list(range(dist.rank, n, dist.world))
        vb = cfg.val_batch_size or max(1, cfg.batch_size // dist.world)

        def batches():
            for i in range(0, len(mine), vb):
                yield self._batch(mine[i : i + vb], self.val_ds)

        def lf(batch):
            loss, metrics = loss_fn(head, batch)
            count = _as_float(metrics.get(_metric(metrics, _COUNT_KEYS) or "", None))
            return loss, (count if count is not None else float(batch["loss_mask"].sum()))

        t0 = time.perf_counter()
        self.phase(f"validating stage {stage} at step {step}")
        res = validate(head, batches(), lf, steps=cfg.val_steps, autocast=self.autocast, all_reduce=dist.all_reduce)
        row = {"stage": stage, "epoch": epoch, "step": step, "global_step": si * self.total_steps + step}
        row.update(res)
        row["seconds"] = time.perf_counter() - t0
        self.phase(f"training stage {stage}")
        # the top-k coverage lists (cov_k) stay in summary.json: one CSV column per rank and step is noise
        self.val_log.write({k: v for k, v in row.items() if not k.startswith("cov_")})
        st = self.summary["stages"].setdefault(str(stage), {})
        st.setdefault("validation", []).append(row)
        if dist.main:
            self._write_summary()
            if cfg.progress:
                accs = " ".join(f"{res[f'acc_{k}']:.3f}" for k in range(1, cfg.val_steps + 1))
                print(
                    f"[{cfg.kind} stage {stage}] epoch {epoch} step {step}: val_loss {res['val_loss']:.4f}, "
                    f"acceptance per step {accs}, tau_chain {res['tau_chain']:.3f}",
                    flush=True,
                )
        return res

    def _write_summary(self) -> None:
        atomic_write_text(
            json.dumps(self.summary, indent=2, sort_keys=True, default=str) + "\n",
            os.path.join(self.out, "summary.json"),
        )
        if self.cfg.plot:
            from .plots import plot_curves

            try:
                plot_curves(self.train_log.path, self.val_log.path, os.path.join(self.out, "curves.png"))
            except Exception as exc:
                warnings.warn(f"plotting the curves failed: {type(exc).__name__}: {exc}", stacklevel=2)

    def _checkpoint(self, stage, head, opt, sched, epoch, pos, step, stats, done: bool) -> None:
        dist = self.dist
        dist.barrier()
        if dist.main:
            state = {
                "version": 1,
                "stage": stage,
                "done": done,
                "epoch": epoch,
                "position": pos,
                "step": step,
                "head": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()},
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": _get_rng(),
                "settings": self.cfg.trajectory_settings(),
                "world_size": dist.world,
                "log_rows": (self.train_log.rows, self.val_log.rows),
                "stats": dict(stats),
                "summary": self.summary,
                "d2t": None if self.d2t is None else self.d2t.cpu(),
            }
            ckpt.atomic_save(state, os.path.join(self.ckpt_dir, ckpt.checkpoint_name(stage, step)))
            ckpt.prune_checkpoints(self.ckpt_dir, self.cfg.keep_checkpoints)
        dist.barrier()


def _clip(head, limit: float, mode: str) -> torch.Tensor:
    """Clip the gradients (by value, as the reference trainers do, or by global norm); returns the
    gradient norm before clipping."""
    params = [p for p in head.parameters() if p.grad is not None]
    if mode == "norm" and limit > 0:
        return torch.nn.utils.clip_grad_norm_(params, limit)
    norm = (
        torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in params]))
        if params
        else torch.tensor(0.0)
    )
    if limit > 0:
        torch.nn.utils.clip_grad_value_(params, limit)
    return norm


def _save_head(head, folder: str) -> None:
    """head.save_pretrained through a temporary folder swapped in file by file (never half-written)."""
    tmp = os.path.join(
        os.path.dirname(folder.rstrip("/")) or ".", f".{os.path.basename(folder.rstrip('/'))}.tmp-{os.getpid()}"
    )
    head.save_pretrained(tmp)
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(tmp):
        os.replace(os.path.join(tmp, name), os.path.join(folder, name))
    os.rmdir(tmp)


def _get_rng() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    return state


def _set_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except RuntimeError:
            pass
    if "numpy" in state:
        try:
            import numpy as np

            np.random.set_state(state["numpy"])
        except ImportError:
            pass
