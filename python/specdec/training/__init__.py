"""Training of the draft heads: the EAGLE, FSPAD and GRIFFIN recipes (`specdec train`).

    from specdec.training import TrainConfig, train

    head_dir = train(TrainConfig(kind="griffin", data="data/smollm2", out="heads/griffin",
                                 stages=(1, 2, 3), draft_vocab=8192, dtype="bfloat16"))

Modules: trainer (the loop: train), config (TrainConfig), losses (the recipes' losses), recipe (the loss,
optimizer and clipping as the loop runs them), vocab (the reduced draft vocabulary), schedule (peak lr,
warmup + cosine), run_inputs (what a run loads: data, target, draft vocabulary), batches (data order and
batches), frozen_target (the frozen target), stage_head (a stage's head), metrics and csv_log (train_log.csv /
val_log.csv rows), checkpointing (atomic checkpoints, resume), rng (seeds, RNG state), distributed (the
process group), autocast, fingerprints (target and data hashes), validation (validation loss, the
per-step acceptance rates and their printed table), plots (curves.png), export_head (a trained head as a
shipped one). The command is specdec.cli.train.
See docs/training.md.
"""

from .trainer import SimulatedKill, TrainConfig, recipe_lr, train

__all__ = ["SimulatedKill", "TrainConfig", "recipe_lr", "train"]
