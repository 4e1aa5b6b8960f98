"""The training loop of the draft-head recipes (EAGLE, FSPAD, GRIFFIN): `train(TrainConfig) -> head folder`.

One function runs every setting: stored features (specdec.data.FeatureDataset) or online features (the
target computes them inside the loop), fp32 or bf16 autocast, CPU or CUDA, one process or many under
`torchrun` (DistributedDataParallel: gloo on CPU, NCCL on GPU). See docs/training.md.

Determinism. With the same settings, seed and process count a run is bitwise reproducible on the same
machine: the head's init is drawn from seed-derived generators, the data order of each epoch is a seeded
permutation of the training sequences, and the input noise of every optimizer step comes from a generator
seeded from (seed, stage, step, rank), so it does not depend on what ran before it. A killed
run resumed from its last checkpoint therefore ends with exactly the parameters of an uninterrupted one.

Batches. Step s of an epoch takes the global batch perm[s*B:(s+1)*B] (B = batch_size, in sequences), or
with batch_tokens the s-th of the epoch's length-grouped batches (batches.epoch_batches: sequences of
about one length, at most batch_tokens padded tokens each, in a seeded order).

Snapshots. After every validation the head as it stands is saved to out/snapshot (a complete head folder,
replaced whole, its config.json recording the step, epoch and tokens it had reached), so a run of hours can
be validated, evaluated or exported before it ends; the stage's own head folder is written at its end.

Data parallelism. Rank r of W processes trains on the global batch's elements r, r+W, ... The loss of
each rank is rescaled by W * (its masked positions) / (all ranks' masked positions) before DDP averages
the gradients, so the update equals the one of a single process on the whole global batch (up to fp32 rounding).

Parts (each in its own module): config (TrainConfig), run_inputs (the data, the frozen target and the
draft vocabulary, through frozen_target and vocab), batches (data order and batches), stage_head (building and
saving a stage's head), recipe (loss, optimizer, clipping), schedule (learning rates), metrics and
csv_log (train_log/val_log rows), checkpointing, rng (seeds, RNG state), distributed (the process
group), autocast, fingerprints.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..devices import default_device, process_device, synchronize
from ..dtypes import torch_dtype
from ..files import atomic_path, atomic_write_text
from .autocast import AutocastPolicy
from .batches import batch_sizes_by_length, collate_batch, epoch_batches, rank_indices, to_device
from .checkpointing import CheckpointManager, check_resumable, training_state
from .config import SimulatedKill, TrainConfig
from .csv_log import CsvLog
from .distributed import ProcessGroup
from .losses import learning_rate
from .metrics import logged_keys, masked_count, step_sums, train_row
from .recipe import clip_gradients, make_optimizer, stage_loss, training_module
from .rng import derive_seed, set_rng_state
from .run_inputs import RunInputs
from .schedule import default_warmup, warmup_cosine
from .stage_head import build_stage_head, init_draft_vocab, save_head
from .validation import validate

# The names callers import from specdec.training.trainer (specdec.training re-exports them).
__all__ = ["SimulatedKill", "TrainConfig", "recipe_lr", "train"]

# specdec.training's public name for the recipes' peak learning rate (losses.learning_rate).
recipe_lr = learning_rate

# out/<SNAPSHOT>: the head after the run's newest validation (_Run._snapshot).
SNAPSHOT = "snapshot"


def _pick_device(text: Optional[str]) -> torch.device:
    """The training device: `text` ("cpu", "cuda", "cuda:N"), None = cuda when available; a bare "cuda"
    becomes this process's GPU (specdec.devices.process_device), made the current CUDA device."""
    dev = process_device(default_device() if text is None else torch.device(text))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


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
    dist = ProcessGroup(device)
    try:
        return _Run(cfg, device, dist, target_model, datasets, phase).run()
    finally:
        dist.close()


@dataclass
class _Stage:
    """One training stage in progress: its head, optimizer and schedule, and where it stands."""

    number: int  # the stage j
    index: int  # its position in cfg.stages (0-based): global_step = index * total_steps + step
    head: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    lr: float
    module: Optional[nn.Module] = None  # runs the training loss (DDP-wrapped with several processes)
    val_loss: Optional[Callable] = None  # the loss without input noise
    epoch: int = 0
    position: int = 0  # the next global batch of the epoch
    step: int = 0
    stats: dict = field(default_factory=lambda: {"tokens": 0, "time": 0.0})

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint of this stage (checkpointing.training_state)."""
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.epoch, self.position, self.step = state["epoch"], state["position"], state["step"]
        self.stats = dict(state.get("stats", self.stats))


class _Run:
    """One call of train(): the data, the target and the logs, shared by the stages it trains."""

    def __init__(self, cfg: TrainConfig, device, dist: ProcessGroup, target_model, datasets, phase=None):
        self.cfg, self.device, self.dist = cfg, device, dist
        self.phase = phase or (lambda what: None)
        self.dtype = torch_dtype(cfg.dtype)
        self.autocast = AutocastPolicy(device, self.dtype)
        if cfg.batch_size % dist.world:
            raise ValueError(
                f"batch_size {cfg.batch_size} is not a multiple of the {dist.world} processes "
                "(the global batch is split evenly)"
            )
        self.out = os.path.abspath(os.path.expanduser(cfg.out))
        self.checkpoints = CheckpointManager(os.path.join(self.out, "checkpoints"), cfg.keep_checkpoints)
        self.inputs = RunInputs(cfg, device, self.dtype, target_model, datasets, self.phase)
        self._count_steps()
        self.steps_this_call = 0
        self.train_log = CsvLog(os.path.join(self.out, "train_log.csv"), dist.main)
        self.val_log = CsvLog(os.path.join(self.out, "val_log.csv"), dist.main)
        self.summary = {"kind": cfg.kind, "stages": {}}

    def _count_steps(self) -> None:
        """Steps per epoch and of each stage, and the warmup length (ValueError: not one batch of data)."""
        cfg = self.cfg
        n = len(self.inputs.train_ds)
        self.lengths = None
        if cfg.batch_tokens is not None:
            self.lengths = _train_lengths(self.inputs.train_ds, cfg.max_length)
            self.steps_per_epoch = len(batch_sizes_by_length(sorted(self.lengths), cfg.batch_tokens, self.dist.world))
            if self.steps_per_epoch == 0:
                raise ValueError(
                    f"the training split has {n} sequences, fewer than one per process ({self.dist.world})"
                )
        elif n < cfg.batch_size:
            raise ValueError(f"the training split has {n} sequences, fewer than one batch ({cfg.batch_size})")
        else:
            self.steps_per_epoch = n // cfg.batch_size
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.warmup = cfg.warmup_steps if cfg.warmup_steps is not None else default_warmup(self.total_steps)

    # -- paths and metadata --

    def stage_dir(self, stage: int) -> str:
        """The folder of a stage's head: out/ for a one-stage run, else out/stages/stage<j>."""
        if len(self.cfg.stages) == 1:
            return self.out
        return os.path.join(self.out, "stages", f"stage{stage}")

    def metadata(self, stage: int, lr: float) -> dict:
        """config.json's "specdec_training" record of a stage's head: the target, the draft vocabulary,
        the recipe's settings as run, the data."""
        cfg = self.cfg
        return {
            "kind": cfg.kind,
            "stage": stage,
            "target": self.inputs.target_record(),
            "draft_vocab": self.inputs.draft_vocab_record(),
            "recipe": dict(
                cfg.settings(),
                lr_used=lr,
                warmup_steps_used=self.warmup,
                total_steps=self.total_steps,
                steps_per_epoch=self.steps_per_epoch,
                world_size=self.dist.world,
            ),
            "data": self.inputs.data_record(cfg),
        }

    # -- the run --

    def run(self) -> str:
        """Train every stage of the config (skipping those a resumed run finished); returns out/."""
        resume = self._open_output()
        final = self._train_stages(resume)
        if final != self.out and self.dist.main:
            # the final head also sits at out/ (a multi-stage run's last stage)
            for name in ("model.safetensors", "config.json"):
                with atomic_path(os.path.join(self.out, name)) as tmp:
                    shutil.copyfile(os.path.join(final, name), tmp)
        self.dist.barrier()
        return self.out

    def _open_output(self) -> Optional[dict]:
        """Prepare out/ and return the checkpoint state to resume from (None: start afresh)."""
        dist = self.dist
        if dist.main:
            self.checkpoints.prepare()
        dist.barrier()
        resume = self._resume_state()
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
        return resume

    def _resume_state(self) -> Optional[dict]:
        """The newest checkpoint's state with --resume (checked against this run's settings); without it,
        FileExistsError when out/ holds an earlier run."""
        cfg = self.cfg
        if not cfg.resume:
            if self.checkpoints.exist() or os.path.isfile(os.path.join(self.out, "train_log.csv")):
                raise FileExistsError(
                    f"{self.out} holds an earlier run; pass resume=True (--resume) or another out folder"
                )
            return None
        found = self.checkpoints.newest()
        if found is None:
            if self.dist.main:
                start = f"from --init {cfg.init!r}" if cfg.init else "from scratch"
                warnings.warn(f"--resume: no checkpoint in {self.checkpoints.folder}; starting {start}", stacklevel=4)
            return None
        check_resumable(found[3], found[2], cfg.trajectory_settings(), self.dist.world, self.dist.main)
        return found[3]

    def _train_stages(self, resume: Optional[dict]) -> Optional[str]:
        """Train the stages in order, each from the previous one's head; returns the last one's folder."""
        final = None
        prev_dir = self.cfg.init
        for stage_index, stage in enumerate(self.cfg.stages):
            state = None
            if resume is not None:
                r_stage = resume["stage"]
                if stage < r_stage or (stage == r_stage and resume["done"]):
                    prev_dir = self.stage_dir(stage)
                    final = prev_dir
                    continue
                if stage == r_stage:
                    state = resume
            final = self._train_stage(stage, stage_index, prev_dir, state)
            prev_dir = final
        return final

    def _train_stage(self, stage: int, stage_index: int, init: Optional[str], state: Optional[dict]) -> str:
        """Train one stage from the head folder `init` (None: a new head), or from the checkpoint `state`
        of this stage; returns the folder of its head."""
        st = self._start_stage(stage, stage_index, init, state)
        if state is None and self.cfg.validate_at_start:
            self._validate(st.head, st.val_loss, stage, stage_index, epoch=0, step=0)
        bar = self._progress_bar(st)
        self.phase(f"training stage {stage}")
        try:
            self._train_epochs(st, bar)
        finally:
            if bar is not None:
                bar.close()
        return self._finish_stage(st)

    def _start_stage(self, stage: int, stage_index: int, init: Optional[str], state: Optional[dict]) -> _Stage:
        """The stage's head (bound to the target), optimizer, schedule and loss, restored from `state`."""
        cfg = self.cfg
        self.phase(f"building the stage-{stage} head" + (f" from {init!r}" if init else ""))
        inputs = self.inputs
        head = build_stage_head(cfg, inputs.hf_config, stage, init, inputs.d2t if init is None else None, self.device)
        if init is not None:
            inputs.d2t = init_draft_vocab(head, init, cfg.draft_vocab)
        head.bind_target(inputs.embed, inputs.lm_head)
        head.train()
        lr = cfg.lr if cfg.lr is not None else learning_rate(cfg.kind, stage)
        opt = make_optimizer(head, cfg, lr)
        sched = warmup_cosine(opt, self.warmup, self.total_steps, cfg.min_lr_ratio)
        st = _Stage(stage, stage_index, head, opt, sched, lr)
        if state is not None:
            st.restore(state)
        # after the restore: DDP broadcasts rank 0's parameters when it wraps them
        st.module = training_module(head, stage_loss(cfg, stage, cfg.noise), self.device, self.dist.world)
        st.val_loss = stage_loss(cfg, stage, 0.0)
        return st

    def _progress_bar(self, st: _Stage):
        if not (self.dist.main and self.cfg.progress):
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=self.total_steps,
            initial=st.step,
            desc=f"{self.cfg.kind} stage {st.number}",
            dynamic_ncols=True,
            unit="step",
        )

    def _train_epochs(self, st: _Stage, bar) -> None:
        """Optimizer steps until the stage's steps or epochs run out; validation and a checkpoint at the end
        of each epoch (and every cfg.val_every steps), a checkpoint every cfg.checkpoint_every steps."""
        cfg = self.cfg
        while st.step < self.total_steps and st.epoch < cfg.epochs:
            batches = epoch_batches(
                len(self.inputs.train_ds),
                cfg.batch_size,
                cfg.seed,
                st.number,
                st.epoch,
                self.lengths,
                cfg.batch_tokens,
                self.dist.world,
            )
            while st.position < self.steps_per_epoch and st.step < self.total_steps:
                row = self._train_step(st, batches[st.position])
                self.train_log.write(row)
                _show_step(bar, row)
                at_end = st.position >= self.steps_per_epoch or st.step >= self.total_steps
                if cfg.val_every is not None and st.step % cfg.val_every == 0 and not at_end:
                    # checkpointed right after, so a resume does not validate (and log) this step twice
                    epoch = self._epochs_reached(st)
                    self._validate(st.head, st.val_loss, st.number, st.index, epoch=epoch, step=st.step)
                    self._snapshot(st, epoch)
                    self._checkpoint(st, done=False)
                elif st.step % cfg.checkpoint_every == 0 and not at_end:
                    self._checkpoint(st, done=False)
                if cfg.stop_after is not None and self.steps_this_call >= cfg.stop_after:
                    raise SimulatedKill(f"stopped after {self.steps_this_call} steps (stop_after)")
            # end of an epoch (or of the stage's steps)
            if bar is not None:
                bar.refresh()
            epoch = self._epochs_reached(st)  # a stage cut short by max_steps ends part-way through an epoch
            self._validate(st.head, st.val_loss, st.number, st.index, epoch=epoch, step=st.step)
            self._snapshot(st, epoch)
            st.epoch, st.position = st.epoch + 1, 0
            if not (st.step >= self.total_steps or st.epoch >= cfg.epochs):
                self._checkpoint(st, done=False)

    def _epochs_reached(self, st: _Stage):
        """The stage's passes over the data so far: whole at an epoch's end, else the fraction reached."""
        if st.position >= self.steps_per_epoch:
            return st.epoch + 1
        return round(st.epoch + st.position / self.steps_per_epoch, 4)

    def _train_step(self, st: _Stage, global_batch: torch.Tensor) -> dict:
        """One optimizer step on `global_batch` (this process's share of it); returns its train_log row."""
        cfg, dist, device = self.cfg, self.dist, self.device
        t0 = time.perf_counter()
        batch = self._batch(rank_indices(global_batch, dist.rank, dist.world))
        gen = torch.Generator(device=device).manual_seed(derive_seed(cfg.seed, "noise", st.number, st.step, dist.rank))
        with self.autocast:
            loss, metrics = st.module(batch, gen)
        count = masked_count(metrics, batch)
        keys = logged_keys(metrics)
        sums = dist.all_reduce(step_sums(count, float(batch["attention_mask"].sum()), loss, metrics, keys, device))
        if dist.world > 1:  # DDP averages the gradients: weigh each rank by its share of the loss positions
            loss = loss * (dist.world * count / max(float(sums[0]), 1.0))
        loss.backward()
        gnorm = clip_gradients(st.head, cfg.grad_clip, cfg.clip_mode)
        cur_lr = st.optimizer.param_groups[0]["lr"]
        st.optimizer.step()
        st.scheduler.step()
        st.optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        dt = time.perf_counter() - t0
        st.step += 1
        st.position += 1
        self.steps_this_call += 1
        st.stats["tokens"] += float(sums[1])
        st.stats["time"] += dt
        where = {
            "stage": st.number,
            "step": st.step,
            "global_step": st.index * self.total_steps + st.step,
            "epoch": round(st.epoch + st.position / self.steps_per_epoch, 6),
            "lr": cur_lr,
        }
        return train_row(sums, keys, metrics, where, gnorm, dt)

    def _finish_stage(self, st: _Stage) -> str:
        """Record the stage in summary.json, save its head (with its metadata) and a final checkpoint."""
        dist, stage, stats = self.dist, st.number, st.stats
        folder = self.stage_dir(stage)
        tput = stats["tokens"] / stats["time"] if stats["time"] > 0 else float("nan")
        self.summary["stages"].setdefault(str(stage), {}).update(
            {
                "head": folder,
                "steps": st.step,
                "tokens": int(stats["tokens"]),
                "train_seconds": stats["time"],
                "tokens_per_s": tput,
            }
        )
        if dist.main:
            self._save_head(st, folder, self.summary["stages"][str(stage)])
            self._write_summary()
        dist.barrier()
        self._checkpoint(st, done=True)
        return folder

    def _save_head(self, st: _Stage, folder: str, result: dict, merge: bool = True) -> None:
        """Save the stage's head into `folder` with its config.json record: the training metadata and
        `result` (summary.json's record of the stage)."""
        extra = st.head.config.extra
        # a measurement of the --init head (specdec validate --write) does not describe this one
        extra.pop("specdec_validation", None)
        extra["specdec_training"] = self.metadata(st.number, st.lr)
        extra["specdec_training"]["result"] = result
        save_head(st.head, folder, merge=merge)

    def _snapshot(self, st: _Stage, epoch: float) -> None:
        """The head as it stands after a validation, in out/snapshot: a complete head folder (replaced whole)
        whose record says where its stage stood, so a long run's head can be validated, evaluated or exported
        while the run goes on (the stage's own folder is written only at its end)."""
        if self.dist.main:
            record = dict(self.summary["stages"].get(str(st.number), {}))
            record["snapshot"] = {"step": st.step, "epoch": epoch, "tokens": int(st.stats["tokens"])}
            self._save_head(st, os.path.join(self.out, SNAPSHOT), record, merge=False)

    def _batch(self, idx: list, dataset=None) -> dict:
        """The items `idx` of `dataset` (default: the training split) collated on the device, with the
        target's features computed now in an online run."""
        inputs = self.inputs
        ds = dataset if dataset is not None else inputs.train_ds
        batch = collate_batch([ds[i] for i in idx], self.cfg.max_length, inputs.pad_id)
        batch = to_device(batch, self.device, self.dtype)
        if inputs.features is not None:
            with torch.no_grad(), self.autocast:
                hidden = inputs.features(batch["input_ids"], batch["attention_mask"])
            batch["hidden"] = hidden.to(self.dtype)
        return batch

    def _validate(self, head, loss_fn, stage: int, stage_index: int, epoch: float, step: int) -> Optional[dict]:
        """Validation loss and acceptance of `head` on the validation split (this rank's share), logged to
        val_log.csv and summary.json; None without validation data."""
        cfg, dist, val_ds = self.cfg, self.dist, self.inputs.val_ds
        if val_ds is None or len(val_ds) == 0:
            return None
        n = len(val_ds) if cfg.val_sequences is None else min(len(val_ds), cfg.val_sequences)
        mine = list(range(dist.rank, n, dist.world))
        vb = cfg.val_batch_size or max(1, cfg.batch_size // dist.world)

        def batches():
            for i in range(0, len(mine), vb):
                yield self._batch(mine[i : i + vb], val_ds)

        def lf(batch):
            loss, metrics = loss_fn(head, batch)
            return loss, masked_count(metrics, batch)

        t0 = time.perf_counter()
        self.phase(f"validating stage {stage} at step {step}")
        res = validate(head, batches(), lf, steps=cfg.val_steps, autocast=self.autocast, all_reduce=dist.all_reduce)
        row = {"stage": stage, "epoch": epoch, "step": step, "global_step": stage_index * self.total_steps + step}
        row.update(res)
        row["seconds"] = time.perf_counter() - t0
        self.phase(f"training stage {stage}")
        # the top-k coverage lists (cov_k, scov_k) stay in summary.json: one CSV column per rank and step is noise
        self.val_log.write({k: v for k, v in row.items() if not k.startswith(("cov_", "scov_"))})
        self.summary["stages"].setdefault(str(stage), {}).setdefault("validation", []).append(row)
        if dist.main:
            self._write_summary()
            if cfg.progress:
                _print_validation(cfg, stage, epoch, step, res)
        return res

    def _write_summary(self) -> None:
        """Write summary.json and, with cfg.plot, curves.png (a plotting failure only warns)."""
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

    def _checkpoint(self, st: _Stage, done: bool) -> None:
        """Write a checkpoint of the stage (the main process; the others wait for it)."""
        self.dist.barrier()
        if self.dist.main:
            state = training_state(
                stage=st.number,
                done=done,
                epoch=st.epoch,
                position=st.position,
                step=st.step,
                head=st.head,
                optimizer=st.optimizer,
                scheduler=st.scheduler,
                settings=self.cfg.trajectory_settings(),
                world_size=self.dist.world,
                log_rows=(self.train_log.rows, self.val_log.rows),
                stats=st.stats,
                summary=self.summary,
                d2t=self.inputs.d2t,
            )
            self.checkpoints.save(state)
        self.dist.barrier()


def _train_lengths(ds, max_length: Optional[int]) -> list:
    """Each training sequence's token count after the max_length cut (for batch_tokens); the dataset
    needs lengths() (FeatureDataset and TokenDataset have it)."""
    if not hasattr(ds, "lengths"):
        raise ValueError(f"batch_tokens needs a training dataset with lengths(); {type(ds).__name__} has none")
    lengths = [int(x) for x in ds.lengths()]
    return [min(x, max_length) for x in lengths] if max_length is not None else lengths


def _show_step(bar, row: dict) -> None:
    """Advance the progress bar (if any) by one step, showing the step's loss, accuracy and throughput."""
    if bar is None:
        return
    bar.update(1)
    bar.set_postfix(
        loss=f"{row['loss']:.4f}",
        acc=f"{row.get('acc', float('nan')):.3f}",
        tok_s=f"{row['tokens_per_s']:.0f}",
        refresh=False,
    )


def _print_validation(cfg: TrainConfig, stage: int, epoch: float, step: int, res: dict) -> None:
    accs = " ".join(f"{res[f'acc_{k}']:.3f}" for k in range(1, cfg.val_steps + 1))
    print(
        f"[{cfg.kind} stage {stage}] epoch {epoch} step {step}: val_loss {res['val_loss']:.4f}, "
        f"acceptance per step {accs}, tau_chain {res['tau_chain']:.3f}",
        flush=True,
    )
