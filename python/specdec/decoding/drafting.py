"""EAGLE-2 dynamic tree drafting with a one-layer draft head (EAGLE, FSPAD or GRIFFIN).

The draft keeps its own KV cache of ACCEPTED positions only: pair t = (f_t, x_{t+1}), the target's feature
at position t with the next token, sits at draft slot t and RoPE position t. `TreeDrafter.extend` appends
pairs (the prompt after prefill, the accepted path plus the bonus token after each verification) and
returns the draft's logits and fed-back feature at the last new pair: the prediction for the root of the
next tree (the last accepted token, whose own target feature is not known yet).

`TreeDrafter.draft` then grows the tree (docs/methods.md, "EAGLE-2 dynamic tree drafting"):
  level 1: the top-k tokens of the root logits, scored by their log-probability;
  level l >= 2: the k frontier nodes of level l - 1 run through the draft at once (position
      cache_len + l - 2, written at uncommitted slots cache_len + (l - 2) k + i, each seeing the committed
      pairs plus its own and its ancestors' slots through the packed mask), each proposes its top-k children
      with cumulative score parent + log-prob; the best k of the k*k become the next frontier, and they
      inherit their parent's output feature;
  rerank: specdec_kernels.select_tree keeps the total_tokens - 1 best of all candidates (every level's k*k
      children, the closure under ancestors holds because log-probs are <= 0), topologically ordered,
      under the root.
Everything is fixed-shape tensor code: no host synchronisation.

Reduced draft vocabulary (a head with config.draft_vocab_size): the head's logits are indexed by draft id;
every top-k draft id is mapped to its target id (head.draft_to_target[draft_id]) where candidates' tokens
are produced, so the tree, the draft's next inputs and verification only ever see target ids.
Verification is untouched, so the output stays lossless (the draft just cannot propose other tokens).

Profiling hooks: `set_profiler(p)` installs an object with a `mark(name, level=None)` method, called at the
phase boundaries of `TreeDrafter.draft` and of the generate loops (bench/e2e_profile.py attributes the time
since the previous mark to `name`). With no profiler installed (the default) every hook is one `is None`
test: no timing, no synchronisation.
"""

from __future__ import annotations

from typing import Optional

import torch

import specdec_kernels
from specdec_kernels import chain_mask, mask_words, pack_bits

from ..target.kernel_linears import in_kernel_linear_scope

_profiler = None  # see set_profiler


def set_profiler(profiler) -> None:
    """Install (or, with None, remove) the phase profiler of the decode path: an object whose
    `mark(name, level=None)` is called at each phase boundary (module docstring). For benchmarks only."""
    global _profiler
    _profiler = profiler


def get_profiler():
    """The installed phase profiler, or None (the default: hooks are no-ops)."""
    return _profiler


def num_candidates(tree_top_k: int, depth: int) -> int:
    """Candidates the expansion produces: k at level 1, then k * k per further level."""
    return tree_top_k + (depth - 1) * tree_top_k * tree_top_k


def tree_nodes(tree_top_k: int, depth: int, total_tokens: int) -> int:
    """Nodes of the verified tree (root included): total_tokens, capped by the candidates drafted."""
    return min(total_tokens, num_candidates(tree_top_k, depth) + 1)


def check_tree_params(tree_top_k: int, depth: int, total_tokens: int, vocab_size: Optional[int] = None) -> None:
    """Raise ValueError unless the tree parameters make sense (k >= 1, depth >= 1, total_tokens >= 1, k <= V)."""
    for name, v in (("tree_top_k", tree_top_k), ("depth", depth), ("total_tokens", total_tokens)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
    if vocab_size is not None and tree_top_k > vocab_size:
        raise ValueError(f"tree_top_k: {tree_top_k} exceeds the vocabulary size {vocab_size}")


class TreeDrafter:
    """Draft-side state of a batch of requests: the head, its KV cache and its committed lengths.

    Args:
        head: a specdec.models.DraftHead (bound to the target's embedding and lm_head).
        batch_size: B.
        max_len: committed pairs a request may reach (prompt + new tokens + one accepted path); the cache
            adds room for the uncommitted tree slots.
        tree_top_k, depth, total_tokens: EAGLE-2 parameters (top-k per node, levels, nodes incl. the root).
        backend: specdec_kernels backend of select_tree (None chooses; the head picks its own kernels).
        page_size: None keeps the draft's K/V in one contiguous cache; an int puts it on pages of that many
            slots (head.new_cache: a PagedDraftCache read by paged_tree_attention). The drafts are the same.
    """

    def __init__(
        self,
        head,
        batch_size: int,
        max_len: int,
        tree_top_k: int = 10,
        depth: int = 6,
        total_tokens: int = 60,
        backend: Optional[str] = None,
        page_size: Optional[int] = None,
    ):
        check_tree_params(tree_top_k, depth, total_tokens)
        # draft id -> target id for a reduced-vocabulary head (None: logits are indexed by target id)
        self.d2t = getattr(head, "draft_to_target", None)
        if self.d2t is not None and tree_top_k > self.d2t.shape[0]:
            raise ValueError(
                f"tree_top_k: {tree_top_k} exceeds the draft vocabulary size {self.d2t.shape[0]} of the head"
            )
        self.head = head
        self.backend = backend
        self.k = tree_top_k
        self.depth = depth
        self.num_nodes = tree_nodes(tree_top_k, depth, total_tokens)
        self.batch_size = batch_size
        self.device = head.device
        # The tree expansion writes (depth - 1) * k uncommitted slots, an extend at most max_len columns past
        # the committed length (both start at cache_len).
        self.tree_slots = (depth - 1) * tree_top_k
        self.max_len = max_len
        self.cache = head.new_cache(batch_size, max_len + max(self.tree_slots, depth + 1), page_size=page_size)
        self.cache_len = torch.zeros(batch_size, dtype=torch.int32, device=self.device)
        # own_bits[l][i]: the packed bit of frontier node i of level l + 1 (its slot (l * k) + i).
        W = mask_words(self.tree_slots)
        self.words = W
        eye = torch.zeros(max(depth - 1, 0), tree_top_k, W * 32, dtype=torch.bool, device=self.device)
        for l in range(depth - 1):
            eye[l, torch.arange(tree_top_k), l * tree_top_k + torch.arange(tree_top_k)] = True
        self.own_bits = pack_bits(eye) if depth > 1 else None  # [depth - 1, k, W]

    @torch.no_grad()
    @in_kernel_linear_scope  # the head's layers marked by use_kernel_linears run the C++ linear (specdec.target)
    def extend(self, features: torch.Tensor, tokens: torch.Tensor, num_new: torch.Tensor) -> tuple:
        """Commit num_new[b] new pairs (features[b, j], tokens[b, j]), j < num_new[b], after cache_len[b].

        features float [B, T, H], tokens int64 [B, T] (columns >= num_new[b] are padding: they are written
        to uncommitted slots and ignored), num_new int32 [B] (0 leaves the request unchanged).

        Returns (root_logits float32 [B, V_d], root_hidden [B, H]): the draft's output at the last new pair
        (logits over the head's draft vocabulary: V_d = V unless the head has a reduced one),
        i.e. the prediction of the next token after the last accepted one and the feature to feed back.
        """
        B, T = tokens.shape
        pos = self.cache_len.to(torch.int64)[:, None] + torch.arange(T, device=self.device)
        last = (num_new.to(torch.int64) - 1).clamp(min=0)
        # logits at the last new pair only: the output layer is the draft's largest cost (bench/e2e_profile.py)
        out = self.head(
            features, tokens, pos, self.cache, self.cache_len, chain_mask(B, T, self.device), logits_at=last
        )
        logits = out.logits[:, 0]
        hidden = out.hidden.gather(1, last[:, None, None].expand(B, 1, out.hidden.shape[2]))[:, 0]
        self.cache_len.add_(num_new.to(torch.int32))
        return logits.float(), hidden

    @torch.no_grad()
    @in_kernel_linear_scope
    def draft(self, root_tokens: torch.Tensor, root_logits: torch.Tensor, root_hidden: torch.Tensor) -> tuple:
        """Grow the EAGLE-2 tree under each root and rerank it.

        Args:
            root_tokens: int64 [B], the last accepted token (node 0).
            root_logits: float [B, V_d], the draft's logits for the token after the root (from extend), indexed
                by draft id (= target id unless the head has a reduced vocabulary).
            root_hidden: [B, H], the draft's fed-back feature at the root.

        Returns:
            (parents int32 [B, N], tokens int64 [B, N]) with N = self.num_nodes, topologically ordered.
        """
        B, k, dev = self.batch_size, self.k, self.device
        prof = get_profiler()
        logp = torch.log_softmax(root_logits.float(), dim=-1)
        f_scores, f_tokens = torch.topk(logp, k, dim=-1)  # [B, k]
        f_tokens = self._target_ids(f_tokens)
        if prof is not None:
            prof.mark("draft.topk", 1)
        f_cand = torch.arange(k, device=dev, dtype=torch.int32).expand(B, k)  # candidate index of the frontier
        f_hidden = root_hidden[:, None, :].expand(B, k, root_hidden.shape[-1])
        f_anc = torch.zeros(B, k, self.words, dtype=torch.int32, device=dev)  # ancestors' slot bits
        scores, parents, tokens = [f_scores], [torch.full((B, k), -1, dtype=torch.int32, device=dev)], [f_tokens]
        base = k
        for level in range(self.depth - 1):
            mask = f_anc | self.own_bits[level]  # [B, k, W]
            pos = (self.cache_len.to(torch.int64) + level)[:, None].expand(B, k)
            out = self.head(f_hidden, f_tokens, pos, self.cache, self.cache_len, mask, slot_offset=level * k)
            if prof is not None:
                prof.mark("draft.layer", level + 2)
            lp = torch.log_softmax(out.logits.float(), dim=-1)  # [B, k, V]
            c_lp, c_tok = torch.topk(lp, k, dim=-1)  # [B, k, k]
            c_tok = self._target_ids(c_tok)
            if prof is not None:
                prof.mark("draft.topk", level + 2)
            c_scores = (f_scores[:, :, None] + c_lp).reshape(B, k * k)
            c_tok = c_tok.reshape(B, k * k)
            scores.append(c_scores)
            parents.append(f_cand.repeat_interleave(k, dim=1))
            tokens.append(c_tok)
            if level == self.depth - 2:
                break
            f_scores, idx = torch.topk(c_scores, k, dim=-1)  # next frontier
            par = idx // k
            f_tokens = c_tok.gather(1, idx)
            f_cand = (base + idx).to(torch.int32)
            f_hidden = out.hidden.gather(1, par[:, :, None].expand(B, k, out.hidden.shape[-1]))
            f_anc = mask.gather(1, par[:, :, None].expand(B, k, self.words))
            base += k * k
            if prof is not None:
                prof.mark("draft.select", level + 2)
        cand_scores = torch.cat(scores, dim=1).float().contiguous()
        cand_parents = torch.cat(parents, dim=1).contiguous()
        cand_tokens = torch.cat(tokens, dim=1).contiguous()
        t_parents, t_tokens, _ = specdec_kernels.select_tree(
            cand_scores, cand_parents, cand_tokens, root_tokens, self.num_nodes, backend=self.backend
        )
        if prof is not None:
            prof.mark("draft.rerank")
        return t_parents, t_tokens

    def _target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Target token ids of top-k draft ids (a gather through the head's map; identity without one)."""
        return draft_ids if self.d2t is None else self.d2t[draft_ids]
