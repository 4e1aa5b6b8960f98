"""Cache keys of the tree budget's measured costs (specdec.decoding.budget): what a cost depends on."""

from __future__ import annotations

import hashlib
import json
import os

import torch

from specdec_kernels.ops.linear import small_product_rows
from specdec_kernels.ops.linear_choice import linear_kernel_id

from ..target.kernel_linears import uses_kernel_linears
from ..target.prepack import is_prepacked


def target_cost_key(hf_model, dtype, device, context: int, lean: bool = False) -> str:
    """The cache key of a target's measured costs: its name and config hash, device, dtype, threads, context,
    how its CPU linears run and whether its layers run lean (TargetModel.lean)."""
    cfg = hf_model.config
    name = getattr(cfg, "_name_or_path", "") or type(hf_model).__name__
    try:
        text = cfg.to_json_string(use_diff=False)
    except Exception:  # pragma: no cover - non-HF configs
        text = repr(sorted(vars(cfg).items()))
    h = hashlib.sha1(text.encode()).hexdigest()[:12]
    dev = torch.device(device)
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    base = os.path.basename(str(name).rstrip("/"))
    dt = str(dtype).replace("torch.", "")
    # the CPU linears are another cost curve (specdec.target.prepack, specdec.target.kernel_linears)
    kernel = f"@{linear_kernel_id()}" if uses_kernel_linears(hf_model) else ""  # a rebuilt kernel: a new curve
    if is_prepacked(hf_model):
        packed = "|prepacked+kernel" + kernel if kernel else "|prepacked"
    else:
        packed = "|kernel-linears" + kernel if kernel else ""
    lean = "|lean" if lean else ""
    return f"{base}|{h}|{dev_name}|{dt}|threads={torch.get_num_threads()}|ctx={context}{packed}{lean}"


def head_cost_key(head, target_key: str) -> str:
    """The cache key of a draft head's measured level costs on the target of `target_key`."""
    c = head.config.to_dict() if hasattr(head.config, "to_dict") else vars(head.config)
    # the architecture only: training and validation records do not change what a draft level costs
    c = {k: v for k, v in c.items() if k not in ("extra", "specdec_training", "specdec_validation")}
    h = hashlib.sha1(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:12]
    small = small_product_rows(head.dtype) if head.device.type == "cpu" else 0  # the feature blocks' GEMMs
    return f"draft:{type(head).__name__}|{h}|{target_key}" + (f"|small{small}" if small else "")
