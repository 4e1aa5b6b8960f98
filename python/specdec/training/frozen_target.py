"""The frozen target of a training run: which folder it is, and the parts of it the loop keeps."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from ..eos import eos_ids

if TYPE_CHECKING:
    from .config import TrainConfig


def resolve_target_path(cfg: TrainConfig, manifest: Optional[dict]) -> Optional[str]:
    """The target folder: cfg.target, else the one the data manifest records (None when neither names
    one), through specdec.default_target.resolve_target ("default" -> the default target's folder)."""
    name = cfg.target
    if name is None and manifest:
        t = manifest.get("target")
        name = t.get("path") if isinstance(t, dict) else t
    if name is None:
        return None
    from specdec.default_target import resolve_target

    return str(resolve_target(name))


def load_target(spec, path: Optional[str], dtype: torch.dtype, device: torch.device, full: bool):
    """(model or None, embed, lm_head, hf config, eos ids). With full=False only the embedding and the
    lm_head are kept (stored-feature mode).

    spec: an already loaded causal LM (copied, never converted in place, when it is not on `device` in
    `dtype`), or None to load the Hugging Face folder `path`. The modules are frozen (eval, no gradients).
    """
    given = isinstance(spec, nn.Module)
    if given:
        model = spec
    else:
        if path is None:
            raise ValueError("no target: give TrainConfig.target (the data manifest names none)")
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    model.eval().requires_grad_(False)
    eos = eos_ids(model)  # no tokenizer here: RunInputs adds the data tokenizer's ids

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
