"""FSPAD draft head: feature sampling by the token embedding + the dual-output (partial alignment) layer.

  z = fc.fc([e; f]) (+ bias)
  u = z + fc.mlp.down_proj( silu(fc.mlp.gate_proj(e)) * fc.mlp.up_proj(fc.post_attention_layernorm(z)) )
  a = u + Attn(u);  [p; r] = [a; a] + MLP(norm(a))   (layers.0.mlp.down_proj: I -> 2H)
  logits = LMHead(p); hidden = r (regressed to f_{t+1}, fed back when drafting).

With use_fused_features (default: when specdec_kernels.fspad_feature_sampling exists) the input block
runs as one fused op that gathers embedding rows inside the matmul; else plain PyTorch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import FusedInputHead
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
    """Whether specdec_kernels.fspad_feature_sampling exists."""
    return FSPADHead.fused_available()


class FSPADHead(FusedInputHead):
    """FSPAD: logits = LMHead(p), hidden = r."""

    kind = "fspad"
    input_block = FeatureSampling
    fused_op = "fspad_feature_sampling"

    def fused_weights(self) -> tuple:
        blk = self.fc
        return (blk.fc.weight, blk.fc.bias, blk.post_attention_layernorm.weight, blk.mlp.gate_proj.weight,
                blk.mlp.up_proj.weight, blk.mlp.down_proj.weight, blk.post_attention_layernorm.eps)
