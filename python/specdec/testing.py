"""Test tooling of specdec (not part of the decoding API): TargetOracleHead.

TargetOracleHead is a stand-in draft head whose logits are the target's own (tests and demos only).

It follows the draft-head interface of specdec.models (head(features, input_ids, position_ids, cache,
cache_len, tree_mask, slot_offset) -> (logits, hidden)), but instead of a learned layer it re-runs the
target model on the token sequence each query sees: the request's first token, the committed pair tokens
(slot t holds x_{t+1}) and the tokens of the tree slots its mask row selects. Its drafts are therefore the
target's own predictions, so greedy speculative decoding accepts (almost) whole paths: this exercises long
accepted paths and compaction, and measures the decoding loop's upper bound on tau.

The pair at slot 0 is (f_0, x_1): the first prompt token x_0 is not passed to a draft head. The target's
feature at position 0 depends on x_0 alone, so the oracle recovers it by matching f_0 against a table of
position-0 features of every vocabulary token (computed once). It is slow (a target forward per query,
host-side loops) and meant for tiny models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

import specdec_kernels

__all__ = ["OracleCache", "OracleOutput", "TargetOracleHead"]


class OracleOutput(NamedTuple):
    """What TargetOracleHead returns, shaped like specdec.models.DraftOutput: logits float32 [B, T, V]
    (the target's), hidden = the features passed in (the oracle feeds nothing of its own back)."""

    logits: torch.Tensor
    hidden: torch.Tensor


@dataclass
class OracleCache:
    """tokens int64 [B, max_len] (slot t: x_{t+1}), first int64 [B] (x_0); k/v: empty placeholders."""

    tokens: torch.Tensor
    first: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor

    @property
    def batch_size(self) -> int:
        """B."""
        return self.tokens.shape[0]

    @property
    def max_len(self) -> int:
        """Token slots per request."""
        return self.tokens.shape[1]


class TargetOracleHead(torch.nn.Module):
    """A draft head that drafts with the target itself (see the module docstring).

    Args:
        model: the Hugging Face causal LM being decoded (run with its own attention implementation).
        chunk: sequences per target forward when evaluating many queries.
    """

    kind = "oracle"

    def __init__(self, model: torch.nn.Module, chunk: int = 4096):
        super().__init__()
        object.__setattr__(self, "model", model)  # not a submodule: nothing to save or move
        self.config = None
        self.chunk = chunk
        self._table: Optional[torch.Tensor] = None

    @property
    def device(self) -> torch.device:
        """The target's device."""
        return self.model.get_output_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The target's dtype."""
        return self.model.get_output_embeddings().weight.dtype

    def bind_target(self, embed_tokens, lm_head) -> "TargetOracleHead":
        """Nothing to bind: the oracle uses the whole target model."""
        return self

    def new_cache(self, batch_size: int, max_len: int, device=None, dtype=None, *, page_size=None, pool=None):
        """An empty OracleCache of `max_len` token slots per request (k/v are empty placeholders). The oracle
        keeps tokens, not K/V, so page_size and pool change nothing."""
        dev = device or self.device
        empty = torch.zeros(batch_size, 1, 0, 1, device=dev, dtype=dtype or self.dtype)
        return OracleCache(
            torch.zeros(batch_size, max_len, dtype=torch.int64, device=dev),
            torch.zeros(batch_size, dtype=torch.int64, device=dev),
            empty,
            empty,
        )

    @torch.no_grad()
    def _position0_table(self) -> torch.Tensor:
        if self._table is None:
            V = self.model.get_output_embeddings().weight.shape[0]
            ids = torch.arange(V, device=self.device)[:, None]
            base = self.model.get_decoder()
            rows = [
                base(input_ids=ids[s : s + self.chunk]).last_hidden_state[:, 0].float() for s in range(0, V, self.chunk)
            ]
            self._table = torch.cat(rows)
        return self._table

    @torch.no_grad()
    def forward(
        self,
        features,
        input_ids,
        position_ids,
        cache: OracleCache,
        cache_len,
        tree_mask,
        slot_offset=0,
        *,
        logits_at=None,
        **kwargs,
    ) -> OracleOutput:
        """The draft-head call of specdec.models.DraftHead.forward, answered with the target's logits.

        Writes input_ids at the token slots cache_len + slot_offset + i, then, for every query, runs the
        target over the tokens the query sees (x_0, the committed slots, its tree slots) and returns the
        logits after the last one. `features` are only used to recover x_0 (at position 0).
        """
        B, T = input_ids.shape
        dev = input_ids.device
        off = slot_offset if isinstance(slot_offset, int) else slot_offset.to(torch.int64)[:, None]
        slots = cache_len.to(torch.int64)[:, None] + off + torch.arange(T, device=dev)
        cache.tokens.scatter_(1, slots, input_ids)
        at0 = position_ids[:, 0] == 0  # this call holds pair 0: recover x_0
        # computed on every call, used where at0 holds: no host-side test, so that a pass with this head can
        # be captured as a CUDA graph like one with a real head
        d = torch.cdist(features[:, 0].float(), self._position0_table())
        cache.first.copy_(torch.where(at0, d.argmin(dim=1), cache.first))
        # Query (b, i) sees x_0, the committed slots s < cache_len[b] and the tree slots its mask row selects;
        # ancestors sit at increasing slots, so the visible slots in slot order are its token sequence.
        S = cache.max_len
        visible = specdec_kernels.tree_visibility(tree_mask=tree_mask, cache_len=cache_len, kv_len=S)  # [B, T, S]
        order = torch.sort((~visible).to(torch.int8), dim=2, stable=True).indices  # visible slots first, in order
        n = visible.sum(2)  # [B, T]
        seq = torch.cat(
            [cache.first[:, None, None].expand(B, T, 1), cache.tokens[:, None, :].expand(B, T, S).gather(2, order)],
            dim=2,
        )
        logits = self._last_logits(seq.reshape(B * T, S + 1), (n + 1).reshape(B * T)).view(B, T, -1)
        if logits_at is not None:  # as DraftHead.forward: logits [B, 1, V] at position logits_at[b]
            idx = logits_at.to(torch.int64)[:, None, None].expand(logits.shape[0], 1, logits.shape[2])
            logits = logits.gather(1, idx)
        return OracleOutput(logits, features)

    def _last_logits(self, seqs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Target logits after each right-padded sequence seqs[r, :lengths[r]]."""
        out = []
        L = seqs.shape[1]  # every column (not the longest length: reading it would synchronise the host)
        for s in range(0, seqs.shape[0], self.chunk):
            ids = seqs[s : s + self.chunk]
            mask = (torch.arange(L, device=ids.device)[None, :] < lengths[s : s + self.chunk, None]).to(torch.int64)
            # Right padding keeps the real rows causal; the lm_head runs on the last real row only.
            hidden = self.model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            last = (lengths[s : s + self.chunk] - 1)[:, None, None].expand(ids.shape[0], 1, hidden.shape[2])
            out.append(self.model.get_output_embeddings()(hidden.gather(1, last)[:, 0]).float())
        return torch.cat(out)
