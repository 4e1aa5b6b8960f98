"""FSPAD draft head: feature sampling by the token embedding + the dual-output (partial alignment) layer.

  z = fc.fc([e; f]) (+ bias)
  u = z + fc.mlp.down_proj( silu(fc.mlp.gate_proj(e)) * fc.mlp.up_proj(fc.post_attention_layernorm(z)) )
  a = u + Attn(u);  [p; r] = [a; a] + MLP(norm(a))   (layers.0.mlp.down_proj: I -> 2H)
  logits = LMHead(p); hidden = r (regressed to f_{t+1}, fed back when drafting).

With use_fused_features (default: when specdec_kernels.fspad_feature_sampling exists) the input block
runs as one fused op that gathers embedding rows inside the matmul; else plain PyTorch.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

import specdec_kernels

from .base import DraftHead
from .config import DraftConfig
from .layers import RMSNorm


class FeatureSamplingMLP(nn.Module):
    """fc.mlp: gate_proj, up_proj [I, H], down_proj [H, I]."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)


class FeatureSampling(nn.Module):
    """FSPAD's input block (the checkpoint's `fc.*`)."""

    def __init__(self, config: DraftConfig):
        super().__init__()
        H = config.hidden_size
        self.fc = nn.Linear(2 * H, H, bias=config.bias)
        self.mlp = FeatureSamplingMLP(H, config.intermediate_size)
        self.post_attention_layernorm = RMSNorm(H, config.rms_norm_eps)

    def forward(self, e: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        z = self.fc(torch.cat((e, f), dim=-1))
        m = self.mlp
        return z + m.down_proj(F.silu(m.gate_proj(e)) * m.up_proj(self.post_attention_layernorm(z)))


def fused_available() -> bool:
    return hasattr(specdec_kernels, "fspad_feature_sampling")


class FSPADHead(DraftHead):
    """FSPAD: logits = LMHead(p), hidden = r."""

    kind = "fspad"
    dual_output = True

    def __init__(self, config: DraftConfig, use_fused_features: Optional[bool] = None):
        super().__init__(config)
        self.fc = FeatureSampling(config)
        self.use_fused_features = fused_available() if use_fused_features is None else bool(use_fused_features)

    def fuse(self, features: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        ew = self.embed_weight()
        if self.use_fused_features and fused_available() and ew.dtype == self.dtype and ew.device == self.device:
            B, T, H = features.shape
            blk = self.fc
            u = specdec_kernels.fspad_feature_sampling(
                features.reshape(B * T, H), input_ids.reshape(B * T), ew.detach(), blk.fc.weight, blk.fc.bias,
                blk.post_attention_layernorm.weight, blk.mlp.gate_proj.weight, blk.mlp.up_proj.weight,
                blk.mlp.down_proj.weight, blk.post_attention_layernorm.eps)
            return u.reshape(B, T, H)
        return self.fc(self.embed(input_ids), features)
