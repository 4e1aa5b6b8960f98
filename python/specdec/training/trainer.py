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

import json
import os
import time
import warnings
from typing import Optional

import torch
from torch import nn

from ..files import atomic_write_text
from . import checkpointing as ckpt
from .autocast import _Autocast
from .batches import _collate, _load_datasets, _to_device, epoch_order
from .config import CHECK_POSITIONS, DTYPES, SimulatedKill, TrainConfig
from .csv_log import _CsvLog
from .distributed import _Dist
from .fingerprints import fingerprint_target, manifest_hash
from .metrics import _ACC_KEYS, _COUNT_KEYS, _as_float, _metric
from .recipe import _clip, _loss_fn, _LossModule
from .rng import _get_rng, _set_rng, derive_seed
from .schedule import default_warmup, recipe_lr, warmup_cosine
from .stage_head import _build_head, _save_head
from .target import _load_target, _resolve_target
from .validation import validate
from .vocab import _draft_vocab_ids

# The public names callers import from specdec.training.trainer (some defined in the modules above).
__all__ = [
    "CHECK_POSITIONS",
    "DTYPES",
    "SimulatedKill",
    "TrainConfig",
    "default_warmup",
    "derive_seed",
    "epoch_order",
    "fingerprint_target",
    "manifest_hash",
    "recipe_lr",
    "train",
]


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
