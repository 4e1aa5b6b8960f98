"""GRIFFIN draft head: token-guided fusion (TGF) + the dual-output (token-enhanced) layer.

  h = fc.fc([e; f]) (+ bias)
  g = h + fc.mlp.down_proj( silu( fc.mlp.up_proj([N_a(N_b(h)); N_a(e)]) ) )
      N_b = fc.post_attention_layernorm, N_a = fc.mlp.input_layernorm (one weight for both halves);
      up_proj [I, 2H] with no gate, down_proj [H, I]
  a = g + Attn(g);  [p; r] = [a; a] + MLP(norm(a));  logits = LMHead(p); hidden = r.

With use_fused_features (default: when specdec_kernels.griffin_token_fusion exists) the input block runs
as one fused op; else plain PyTorch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import FusedInputHead
from .config import DraftConfig
from .layers import RMSNorm


class TokenFusionMLP(nn.Module):
    """fc.mlp: input_layernorm [H], up_proj [I, 2H], down_proj [H, I]."""

    def __init__(self, config: DraftConfig):
        super().__init__()
        H, I = config.hidden_size, config.intermediate_size
        self.input_layernorm = RMSNorm(H, config.rms_norm_eps)
        self.up_proj = nn.Linear(2 * H, I, bias=False)
        self.down_proj = nn.Linear(I, H, bias=False)


class TokenGuidedFusion(nn.Module):
    """GRIFFIN's input block (the checkpoint's `fc.*`)."""

    def __init__(self, config: DraftConfig):
        super().__init__()
        H = config.hidden_size
        self.fc = nn.Linear(2 * H, H, bias=config.bias)
        self.mlp = TokenFusionMLP(config)
        self.post_attention_layernorm = RMSNorm(H, config.rms_norm_eps)

    def forward(self, e: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat((e, f), dim=-1))
        m = self.mlp
        x = torch.cat((m.input_layernorm(self.post_attention_layernorm(h)), m.input_layernorm(e)), dim=-1)
        return h + m.down_proj(F.silu(m.up_proj(x)))


def fused_available() -> bool:
    """Whether specdec_kernels.griffin_token_fusion exists."""
    return GriffinHead.fused_available()


class GriffinHead(FusedInputHead):
    """GRIFFIN: logits = LMHead(p), hidden = r."""

    kind = "griffin"
    input_block = TokenGuidedFusion
    fused_op = "griffin_token_fusion"

    def fused_weights(self) -> tuple:
        blk = self.fc
        return (blk.fc.weight, blk.fc.bias, blk.post_attention_layernorm.weight, blk.mlp.input_layernorm.weight,
                blk.mlp.up_proj.weight, blk.mlp.down_proj.weight, blk.post_attention_layernorm.eps)
