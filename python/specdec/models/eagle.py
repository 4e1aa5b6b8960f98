"""EAGLE draft head (EAGLE-1/2 weights): z = fc([e; f]); a = z + Attn(z); o = a + MLP(norm(a)).

Parameter names are those of the published checkpoints: fc.weight [H, 2H] (+ fc.bias when config.bias),
layers.0.self_attn.{q,k,v,o}_proj, layers.0.mlp.{gate,up,down}_proj, layers.0.post_attention_layernorm.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import DraftHead
from .config import DraftConfig


class EagleHead(DraftHead):
    """EAGLE: logits = LMHead(o), hidden = o (the predicted next feature)."""

    kind = "eagle"
    dual_output = False

    def __init__(self, config: DraftConfig):
        super().__init__(config)
        H = config.hidden_size
        self.fc = nn.Linear(2 * H, H, bias=config.bias)  # input order [embedding; feature]

    def fuse(self, features: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        e = self.embed(input_ids)
        return self.fc(torch.cat((e, features), dim=-1))
