"""FSPAD draft head: feature sampling by the token embedding + the dual-output (partial alignment) layer.

  z = fc.fc([e; f]) (+ bias)
  u = z + fc.mlp.down_proj( silu(fc.mlp.gate_proj(e)) * fc.mlp.up_proj(fc.post_attention_layernorm(z)) )
  a = u + Attn(u);  [p; r] = [a; a] + MLP(norm(a))   (layers.0.mlp.down_proj: I -> 2H)
  logits = LMHead(p); hidden = r (regressed to f_{t+1}, fed back when drafting).

The input block (`fc`, FeatureSampling) is a layer over specdec_kernels.fspad_feature_sampling, which
gathers the embedding rows inside its matmul and fuses the norm and gating.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

import specdec_kernels

from .base import FusedInputHead
from .config import DraftConfig
from .layers import RMSNorm, embedding_operand


class FeatureSamplingMLP(nn.Module):
    """fc.mlp: gate_proj, up_proj [I, H], down_proj [H, I] (parameters only; FeatureSampling runs them)."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)


class FeatureSampling(nn.Module):
    """FSPAD's input block as a layer: owns the checkpoint's `fc.*` parameters and calls the fused op.

    Parameters (published names): fc.weight [H, 2H] (+ fc.bias [H] when config.bias),
    mlp.{gate_proj, up_proj} [I, H], mlp.down_proj [H, I], post_attention_layernorm.weight [H].

    Attributes:
        backend: the specdec_kernels backend of the op (None chooses; "torch" = plain PyTorch).
    """

    def __init__(self, config: DraftConfig, backend: Optional[str] = None):
        super().__init__()
        H = config.hidden_size
        self.fc = nn.Linear(2 * H, H, bias=config.bias)
        self.mlp = FeatureSamplingMLP(H, config.intermediate_size)
        self.post_attention_layernorm = RMSNorm(H, config.rms_norm_eps)
        self.backend = backend

    def forward(self, features: torch.Tensor, input_ids: torch.Tensor, embed_weight: torch.Tensor) -> torch.Tensor:
        """u [..., H] from features f [..., H], token ids x [...] and the (frozen) embedding table [V, H]."""
        embed_weight, input_ids = embedding_operand(embed_weight, input_ids, features)
        m, norm = self.mlp, self.post_attention_layernorm
        return specdec_kernels.fspad_feature_sampling(
            features,
            input_ids,
            embed_weight,
            self.fc.weight,
            fc_bias=self.fc.bias,
            norm_weight=norm.weight,
            gate_weight=m.gate_proj.weight,
            up_weight=m.up_proj.weight,
            down_weight=m.down_proj.weight,
            eps=norm.eps,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"backend={self.backend}"


class FSPADHead(FusedInputHead):
    """FSPAD: logits = LMHead(p), hidden = r."""

    kind = "fspad"
    input_block = FeatureSampling
