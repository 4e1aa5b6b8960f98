"""GRIFFIN draft head: token-guided fusion (TGF) + the dual-output (token-enhanced) layer.

  h = fc.fc([e; f]) (+ bias)
  g = h + fc.mlp.down_proj( silu( fc.mlp.up_proj([N_a(N_b(h)); N_a(e)]) ) )
      N_b = fc.post_attention_layernorm, N_a = fc.mlp.input_layernorm (one weight for both halves);
      up_proj [I, 2H] with no gate, down_proj [H, I]
  a = g + Attn(g);  [p; r] = [a; a] + MLP(norm(a));  logits = LMHead(p); hidden = r.

The input block (`fc`, TokenGuidedFusion) is a layer over specdec_kernels.griffin_token_fusion.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

import specdec_kernels

from .base import FusedInputHead
from .config import DraftConfig
from .layers import RMSNorm, embedding_operand


class TokenFusionMLP(nn.Module):
    """fc.mlp: input_layernorm [H], up_proj [I, 2H], down_proj [H, I] (parameters only)."""

    def __init__(self, config: DraftConfig):
        super().__init__()
        H, I = config.hidden_size, config.intermediate_size
        self.input_layernorm = RMSNorm(H, config.rms_norm_eps)
        self.up_proj = nn.Linear(2 * H, I, bias=False)
        self.down_proj = nn.Linear(I, H, bias=False)


class TokenGuidedFusion(nn.Module):
    """GRIFFIN's input block as a layer: owns the checkpoint's `fc.*` parameters and calls the fused op.

    Parameters (published names): fc.weight [H, 2H] (+ fc.bias [H] when config.bias),
    post_attention_layernorm.weight [H] (N_b), mlp.input_layernorm.weight [H] (N_a),
    mlp.up_proj [I, 2H], mlp.down_proj [H, I].

    Attributes:
        backend: the specdec_kernels backend of the op (None chooses; "torch" = plain PyTorch).
    """

    def __init__(self, config: DraftConfig, backend: Optional[str] = None):
        super().__init__()
        H = config.hidden_size
        self.fc = nn.Linear(2 * H, H, bias=config.bias)
        self.mlp = TokenFusionMLP(config)
        self.post_attention_layernorm = RMSNorm(H, config.rms_norm_eps)
        self.backend = backend

    def forward(self, features: torch.Tensor, input_ids: torch.Tensor, embed_weight: torch.Tensor) -> torch.Tensor:
        """g [..., H] from features f [..., H], token ids x [...] and the (frozen) embedding table [V, H]."""
        embed_weight, input_ids = embedding_operand(embed_weight, input_ids, features)
        m = self.mlp
        return specdec_kernels.griffin_token_fusion(
            features,
            input_ids,
            embed_weight,
            self.fc.weight,
            fc_bias=self.fc.bias,
            norm_b_weight=self.post_attention_layernorm.weight,
            norm_a_weight=m.input_layernorm.weight,
            up_weight=m.up_proj.weight,
            down_weight=m.down_proj.weight,
            eps=self.post_attention_layernorm.eps,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"backend={self.backend}"


class GriffinHead(FusedInputHead):
    """GRIFFIN: logits = LMHead(p), hidden = r."""

    kind = "griffin"
    input_block = TokenGuidedFusion
