"""What a training run reads before its first step: the data splits, the frozen target and the draft
vocabulary (loaded once, shared by the stages), and how a head's config.json records them."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Optional

import torch
from torch import nn

from .batches import load_datasets
from .fingerprints import fingerprint_target, manifest_hash
from .frozen_target import load_target, resolve_target_path
from .vocab import draft_vocab_ids

if TYPE_CHECKING:
    from .config import TrainConfig


class RunInputs:
    """The data, the frozen target and the draft vocabulary of a training run.

    train_ds, val_ds: the splits; manifest: the data folder's (None for datasets given in memory);
    target_path: the target folder (None for a model given in memory); embed, lm_head, hf_config: the
    frozen target's layers the heads bind to, and its config; eos: the end-of-turn ids (the model's, then
    the data tokenizer's); features: the target's OnlineFeatures in an online run, else None; pad_id: the
    data's padding id; d2t: the draft vocabulary (sorted target ids), None for the full vocabulary.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        device: torch.device,
        dtype: torch.dtype,
        target_model: Optional[nn.Module] = None,
        datasets: Optional[tuple] = None,
        phase: Optional[Callable[[str], None]] = None,
    ):
        phase = phase or (lambda what: None)
        self._load_data(cfg, datasets, phase)
        self._load_target(cfg, device, dtype, target_model, phase)
        self.d2t = self._draft_vocab(cfg)

    def _load_data(self, cfg: TrainConfig, datasets: Optional[tuple], phase) -> None:
        if datasets is not None:
            self.train_ds, self.val_ds = datasets
        else:
            if cfg.data is None:
                raise ValueError("TrainConfig.data: expected a `specdec data` folder, got None")
            phase(f"loading the data {cfg.data!r}")
            self.train_ds, self.val_ds = load_datasets(cfg)
        self.manifest = getattr(self.train_ds, "manifest", None)

    def _load_target(self, cfg: TrainConfig, device, dtype, target_model: Optional[nn.Module], phase) -> None:
        phase("resolving the target")
        self.target_path = None if target_model is not None else resolve_target_path(cfg, self.manifest)
        phase(f"loading the target {self.target_path or 'model'}")
        model, self.embed, self.lm_head, self.hf_config, self.eos = load_target(
            target_model, self.target_path, dtype, device, full=cfg.online
        )
        self.features = None
        if cfg.online:
            from specdec.data import OnlineFeatures

            self.features = OnlineFeatures(model)
        self.pad_id = 0
        if isinstance(self.manifest, dict):  # the data's tokenizer may name end-of-turn ids the model does not
            tok = self.manifest.get("tokenizer") or {}
            if isinstance(tok.get("pad_token_id"), int):
                self.pad_id = tok["pad_token_id"]
            for i in tok.get("eos_token_ids") or ():
                if isinstance(i, int) and i not in self.eos:
                    self.eos.append(i)

    def _draft_vocab(self, cfg: TrainConfig) -> Optional[torch.Tensor]:
        if cfg.draft_vocab is None:
            return None
        vocab = int(self.hf_config.vocab_size)
        if cfg.draft_vocab > vocab:
            raise ValueError(f"draft_vocab {cfg.draft_vocab} exceeds the target's vocabulary ({vocab})")
        return draft_vocab_ids(self.train_ds, cfg.draft_vocab, self.eos, vocab)

    def target_record(self) -> dict:
        """config.json's record of the target: folder, weights fingerprint, vocabulary, end-of-turn ids."""
        return {
            "path": self.target_path,
            "fingerprint": fingerprint_target(self.target_path),
            "vocab_size": int(self.hf_config.vocab_size),
            "eos_token_ids": self.eos,
        }

    def draft_vocab_record(self) -> Optional[dict]:
        """config.json's record of the draft vocabulary (None for the full vocabulary)."""
        if self.d2t is None:
            return None
        return {
            "size": int(self.d2t.numel()),
            "eos_included": self.eos,
            "source": "train-split response token counts",
        }

    def data_record(self, cfg: TrainConfig) -> dict:
        """config.json's record of the data: folder, manifest hash, split sizes, online or stored features."""
        return {
            "path": os.path.abspath(cfg.data) if cfg.data else None,
            "manifest_sha256": manifest_hash(self.manifest),
            "train_sequences": len(self.train_ds),
            "val_sequences": len(self.val_ds) if self.val_ds is not None else 0,
            "online": cfg.online,
        }
