"""Build, save and load draft heads: our format and the published EAGLE/FSPAD/GRIFFIN layouts.

Our format (head.save_pretrained): config.json (HF-style fields + "specdec_kind", "draft_vocab_size") +
model.safetensors holding exactly the head's state_dict (no embedding, no lm_head; with a reduced draft
vocabulary, the int64 map "draft_to_target" [V_d]).

Published layouts (docs/checkpoints.md): config.json + pytorch_model.bin (read with
torch.load(weights_only=True)) or model.safetensors. The kind comes from "specdec_kind" when present,
else from the keys: fc.fc.weight with fc.mlp.gate_proj.weight -> fspad, fc.mlp.input_layernorm.weight
-> griffin, anything else -> eagle. Structure follows the checkpoint where configs are known to be
unreliable: q/k/v biases are used when the checkpoint has them, the fc bias when it has one.

Key checking (strict=None, the default, mirrors the original loaders):
- fspad/griffin: the exact key set (the originals load strictly).
- eagle: unexpected keys are reported (warning + head.load_report) and ignored, as the original
  non-strict loader does; a missing key is an error, because the original would silently keep a random
  tensor. strict=False reports missing keys instead (they keep their random init); strict=True is exact.
Always accepted and never an error: embed_tokens.weight (kept as the head's embedding until
bind_target when its shape is [V, H]) and rotary_emb.inv_freq buffers of old checkpoints. A wrong shape
is always an error naming the key.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Optional, Union

import torch

from specdec_kernels.checks import FLOAT_DTYPES_FP64

from .base import DraftHead
from .config import DraftConfig
from .eagle import EagleHead
from .fspad import FSPADHead
from .griffin import GriffinHead

HEADS = {"eagle": EagleHead, "fspad": FSPADHead, "griffin": GriffinHead}


class CheckpointError(ValueError):
    """A checkpoint that cannot make a draft head (wrong shapes, missing or unknown keys)."""


class HeadTargetMismatch(ValueError):
    """A draft head that cannot run on a given target."""


def check_head_fits(head: DraftHead, target_config) -> None:
    """Raise HeadTargetMismatch when `head` cannot read the features of a target whose Hugging Face config is
    `target_config`: a head reads the target's hidden states, so both have one hidden size (bind_target
    would refuse the target's embedding later, in the words of tensor shapes)."""
    have, want = head.config.hidden_size, target_config.hidden_size
    if have != want:
        raise HeadTargetMismatch(
            f"a head of hidden size {have} cannot read this target's features (hidden size {want})"
        )


def build_draft_head(config: DraftConfig, *, device=None, dtype: Optional[torch.dtype] = None) -> DraftHead:
    """A randomly initialised head of config.kind (HF-style init), on `device` in `dtype` (default fp32)."""
    if not isinstance(config, DraftConfig):
        raise TypeError(f"build_draft_head: expected a DraftConfig, got {type(config).__name__}")
    head = _empty_head(config, device, dtype)
    head.reset_parameters()
    return head


def _empty_head(config: DraftConfig, device, dtype) -> DraftHead:
    """A head with uninitialised parameters allocated once, directly on `device` in `dtype` (built on the
    meta device first, so an 8B-size head is neither initialised twice nor staged on the CPU)."""
    cls = HEADS[config.kind]
    with torch.device("meta"):
        head = cls(config)
    if dtype is not None:
        if dtype not in FLOAT_DTYPES_FP64:
            raise TypeError(f"dtype: expected a floating dtype in {[str(d) for d in FLOAT_DTYPES_FP64]}, got {dtype}")
        head = head.to(dtype=dtype)
    return head.to_empty(device=device if device is not None else "cpu")


def infer_kind(keys) -> str:
    """The head kind a published state dict belongs to, from its keys."""
    keys = set(keys)
    if "fc.fc.weight" in keys and "fc.mlp.gate_proj.weight" in keys:
        return "fspad"
    if "fc.mlp.input_layernorm.weight" in keys:
        return "griffin"
    return "eagle"


def read_state_dict(path: Union[str, os.PathLike]) -> tuple:
    """(state dict on CPU, file name) from a checkpoint folder (model.safetensors or pytorch_model.bin)."""
    names = ("model.safetensors", "pytorch_model.bin")
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    # published drafts ship pytorch_model.bin first; ours ship model.safetensors
    order = names if "specdec_kind" in cfg else names[::-1]
    for name in order:
        file = os.path.join(path, name)
        if os.path.isfile(file):
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(file, device="cpu"), file
            sd = torch.load(file, map_location="cpu", weights_only=True)
            if not isinstance(sd, dict):
                raise CheckpointError(f"{file}: expected a state dict, got {type(sd).__name__}")
            return sd, file
    raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin beside config.json")


def load_draft_head(
    path: Union[str, os.PathLike], device=None, dtype: Optional[torch.dtype] = None, *, strict: Optional[bool] = None
) -> DraftHead:
    """Load a draft head saved by save_pretrained or published in the EAGLE/FSPAD/GRIFFIN layouts.

    Args:
        path: folder with config.json and model.safetensors or pytorch_model.bin.
        device, dtype: where and in which floating dtype to put the head; dtype None keeps the
            checkpoint's (that of its fc weight).
        strict: key checking, see the module docstring (None = per-kind default).

    Returns:
        The head, unbound (call head.bind_target(target_embed, target_lm_head) before drafting), with
        head.load_report = {"file", "missing", "unexpected", "ignored"}.
    """
    path = os.fspath(path)
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        raise FileNotFoundError(f"{path}: no config.json (expected a draft-head checkpoint folder)")
    with open(cfg_file) as f:
        raw = json.load(f)
    sd, file = read_state_dict(path)
    ours = "specdec_kind" in raw
    kind = raw.get("specdec_kind") or infer_kind(sd)
    prefix = "fc." if kind == "eagle" else "fc.fc."
    overrides = {} if ours else _published_config_fixes(raw, sd, prefix, file)
    try:
        config = DraftConfig.from_dict(raw, kind=kind)
        for k, v in overrides.items():
            setattr(config, k, v)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{cfg_file}: {exc}") from exc

    fc_w = sd.get(prefix + "weight")
    target_dtype = dtype or (fc_w.dtype if fc_w is not None and fc_w.dtype in FLOAT_DTYPES_FP64 else torch.float32)
    head = _empty_head(config, device, target_dtype)
    expected = head.state_dict()

    embed, ignored, unexpected = _sort_keys(sd, expected, config, kind, file, cfg_file)
    missing = [k for k in expected if k not in sd]
    report = {"file": file, "missing": missing, "unexpected": unexpected, "ignored": ignored}

    exact = strict if strict is not None else kind != "eagle"
    if unexpected and exact:
        raise CheckpointError(f"{file}: unexpected keys for a {kind} head: {unexpected}")
    if missing and strict is not False:
        raise CheckpointError(f"{file}: missing keys for a {kind} head: {missing}")
    if unexpected or missing:
        warnings.warn(
            f"{file}: loading a {kind} head non-strictly; unexpected keys (ignored): {unexpected}; "
            f"missing keys (left at random init): {missing}",
            stacklevel=2,
        )

    if missing:
        head.reset_parameters()  # what the checkpoint lacks gets the documented init, not garbage memory
    head.load_state_dict({k: v for k, v in sd.items() if k in expected}, strict=False)  # copies, casts
    if embed is not None:
        head.embed_tokens_weight = embed.to(device=head.device, dtype=target_dtype)
    head.load_report = report
    return head


def _published_config_fixes(raw: dict, sd: dict, prefix: str, file: str) -> dict:
    """Config values of a published (not specdec-written) checkpoint that its tensors or loaders overrule."""
    overrides = {}
    # the published config's bias flags are not always right; the tensors are
    overrides["bias"] = prefix + "bias" in sd
    overrides["qkv_bias"] = "layers.0.self_attn.q_proj.bias" in sd
    for k, v in overrides.items():
        if k in raw and bool(raw[k]) != v:
            warnings.warn(
                f"{file}: config.json says {k}={raw[k]} but the checkpoint "
                f"{'has' if v else 'lacks'} the tensors; following the checkpoint",
                stacklevel=3,  # the caller of load_draft_head
            )
    rs = raw.get("rope_scaling")
    if rs and raw.get("rope_theta", 10000.0) != 10000.0:
        # the original loaders build scaled RoPE with the default base, ignoring rope_theta
        overrides["rope_theta"] = 10000.0
    return overrides


def _sort_keys(sd: dict, expected: dict, config, kind: str, file: str, cfg_file: str) -> tuple:
    """(the target embedding some checkpoints carry or None, keys ignored, keys unexpected); CheckpointError
    for a tensor whose shape does not fit the head."""
    ignored, unexpected = [], []
    embed = None
    for key, t in sd.items():
        if key in expected:
            if tuple(t.shape) != tuple(expected[key].shape):
                raise CheckpointError(
                    f"{file}: {key} has shape {list(t.shape)}, expected {list(expected[key].shape)} "
                    f"for a {kind} head with config {cfg_file}"
                )
        elif key == "embed_tokens.weight":
            want = [config.vocab_size, config.hidden_size]
            if list(t.shape) != want:
                raise CheckpointError(f"{file}: embed_tokens.weight has shape {list(t.shape)}, expected {want}")
            embed = t
            ignored.append(key)
        elif key.endswith("rotary_emb.inv_freq"):
            ignored.append(key)
        else:
            unexpected.append(key)
    return embed, ignored, unexpected
