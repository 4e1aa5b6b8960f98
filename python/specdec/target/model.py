"""TargetModel: a Hugging Face decoder-only LM driven with our static KV cache and tree attention.

Works with the Llama family of transformers models (Llama, Mistral, Qwen2, Qwen3 and others whose attention
goes through transformers' AttentionInterface): their own modeling code runs unchanged; only the attention
function (specdec_tree, see attention.py) and the cache (TreeKVCache) are ours.

Three operations, all free of host synchronisation:
- prefill: a batch of prompts of different lengths, processed as ragged causal chains (optionally in
  chunks), committed at once;
- verify: the N nodes of a draft tree per request at positions cache_len + depth, with the tree's ancestor
  mask; nothing is committed;
- commit: after acceptance, specdec_kernels.compact_kv moves the accepted nodes' K/V into place and
  cache_len += accept_len.
Every forward returns the last layer's hidden states after the final norm (the features f_t the draft heads
read) and the logits of the rows asked for. For the Llama-family layers it knows, the forward skips
transformers' per-layer machinery (specdec.target.lean_layers: the same modules and arithmetic, checked
bitwise against transformers' path on the first forward); lean=False keeps transformers' path.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from typing import NamedTuple, Optional

import torch
import transformers

import specdec_kernels
from specdec_kernels import chain_mask
from specdec_kernels.checks import check_tensor

from .attention import ATTN_IMPLEMENTATION, TreeAttentionState
from .cache import TreeKVCache
from .kernel_linears import in_kernel_linear_scope
from .lean_layers import LeanDecoder
from .paged_cache import PagedTreeKVCache, PagePool

# The attribute of the decoder module that remembers whether the lean path matched transformers' on it:
# (transformers version, True or False); absent until a forward has compared them.
LEAN_VERDICT = "_specdec_lean_verdict"


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (a NaN equals the same NaN, unlike torch.equal)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


class TargetOutput(NamedTuple):
    """logits float [B, T, V] (or [B, V] where documented) and hidden [B, T, H] (after the final norm)."""

    logits: Optional[torch.Tensor]
    hidden: torch.Tensor


def cache_argument(module: torch.nn.Module) -> str:
    """The name under which `module`'s forward takes the KV cache: "cache" (current transformers) or
    "past_key_values" (transformers < 5.x, which the newer versions still accept with a FutureWarning).

    Read once from the forward's signature (decorators that keep __wrapped__ are seen through), so it
    follows the installed transformers without comparing version strings.
    """
    params = inspect.signature(module.forward).parameters
    if "cache" in params and "past_key_values" not in params:
        return "cache"
    return "past_key_values"


class TargetModel:
    """Wraps a transformers causal LM (e.g. LlamaForCausalLM) for tree verification.

    Args:
        model: a decoder-only Hugging Face causal LM whose attention layers dispatch through
            transformers' AttentionInterface (Llama, Mistral, Qwen2, Qwen3, ...). It is not modified:
            the attention implementation is switched to specdec_tree only for the duration of each forward.
        backend: specdec_kernels backend for tree_attention / compact_kv (None chooses).
        lean: run the decoder layers through specdec.target.lean_layers where they are supported (default),
            after the first forward found its output bitwise equal to transformers' path; False: always
            transformers' path.
    """

    def __init__(self, model: torch.nn.Module, backend: Optional[str] = None, *, lean: bool = True):
        config = getattr(model, "config", None)
        if config is None:
            raise TypeError(f"TargetModel: expected a transformers PreTrainedModel, got {type(model).__name__}")
        if getattr(config, "is_encoder_decoder", False):
            raise ValueError(
                f"TargetModel: {type(model).__name__} is an encoder-decoder model; a decoder-only "
                "causal LM (Llama, Mistral, Qwen2, Qwen3, ...) is required"
            )
        if not getattr(model, "_supports_attention_backend", False):
            raise ValueError(
                f"TargetModel: {type(model).__name__} does not dispatch its attention through "
                "transformers' AttentionInterface, so the tree attention cannot be plugged in"
            )
        self.model = model
        self.config = config
        self.base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
        self.lm_head = model.get_output_embeddings()
        self.embed_tokens = model.get_input_embeddings()
        if self.lm_head is None or self.embed_tokens is None:
            raise ValueError(f"TargetModel: {type(model).__name__} has no input embedding or output projection")
        self.backend = backend
        self.num_layers = config.num_hidden_layers
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.hidden_size = config.hidden_size
        self.vocab_size = self.lm_head.weight.shape[0]
        self._cache_kw = cache_argument(self.base)
        # A LeanDecoder, or False where the layers are not supported or lean=False. Whether its output was
        # checked against transformers' path is remembered on the decoder module itself (LEAN_VERDICT), so that
        # the TargetModels that generate() and the tree budget wrap around the same model check it once.
        self._lean = (LeanDecoder.plan(self.base, self.num_layers) or False) if lean else False

    # -- properties -------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """The device of the model's lm_head (where inputs and caches must live)."""
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's lm_head (the default dtype of new caches)."""
        return self.lm_head.weight.dtype

    def __repr__(self) -> str:
        return (
            f"TargetModel({type(self.model).__name__}, layers={self.num_layers}, heads={self.num_heads}/"
            f"{self.num_kv_heads}, head_dim={self.head_dim}, vocab={self.vocab_size}, dtype={self.dtype})"
        )

    # -- cache ------------------------------------------------------------------------------------------
    def new_cache(
        self,
        batch_size: int,
        max_len: int,
        dtype: Optional[torch.dtype] = None,
        *,
        page_size: Optional[int] = None,
        pool: Optional[PagePool] = None,
        allocate: bool = True,
    ):
        """A TreeKVCache for `batch_size` requests of up to `max_len` slots each (cache_len = 0), or with
        `page_size` a PagedTreeKVCache: the same slots on pages of that many tokens from `pool` (a new pool
        of just enough pages when None), read and compacted by the paged ops. allocate=False takes no page
        yet (the caller hands pages to requests with PagedTreeKVCache.set_pages).

        max_len must hold every committed token plus one tree: prompt + new tokens + tree nodes.
        """
        args = (
            batch_size,
            max_len,
            self.num_layers,
            self.num_kv_heads,
            self.head_dim,
            dtype or self.dtype,
            self.device,
        )
        if page_size is None:
            return TreeKVCache(*args)
        return PagedTreeKVCache(*args, page_size=page_size, pool=pool, allocate=allocate)

    def _check_cache(self, cache, batch: int, new_tokens: int) -> None:
        if not isinstance(cache, (TreeKVCache, PagedTreeKVCache)):
            raise TypeError(
                f"cache: expected a TreeKVCache or PagedTreeKVCache (TargetModel.new_cache), got {type(cache).__name__}"
            )
        if cache.batch_size != batch:
            raise ValueError(f"cache: built for batch size {cache.batch_size}, the inputs have batch size {batch}")
        if len(cache.layers) != self.num_layers:
            raise ValueError(f"cache: has {len(cache.layers)} layers, the model {self.num_layers}")
        if new_tokens > cache.max_len:
            raise ValueError(
                f"cache too small: {new_tokens} new tokens per request need more than its "
                f"max_len = {cache.max_len} slots"
            )

    @contextlib.contextmanager
    def _tree_attention(self):
        # Switch the attention implementation only for this forward, so the model stays usable as a
        # plain Hugging Face model (e.g. model.generate) between calls.
        old = self.config._attn_implementation
        self.config._attn_implementation = ATTN_IMPLEMENTATION
        try:
            yield
        finally:
            self.config._attn_implementation = old

    # -- forward ----------------------------------------------------------------------------------------
    @torch.no_grad()
    @in_kernel_linear_scope  # layers marked by use_kernel_linears run the C++ linear here, not in model.generate
    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        cache: TreeKVCache,
        tree_mask: torch.Tensor,
        *,
        logits: bool = True,
    ) -> TargetOutput:
        """Run T new tokens per request; write their K/V at slots cache_len[b] + i (nothing committed).

        Args:
            input_ids: int64 [B, T]. position_ids: int64 [B, T] (RoPE positions).
            cache: the TreeKVCache; cache.cache_len[b] tokens are committed and visible to every new token.
            tree_mask: int32 [B, T, W]: bit j of row i lets new token i see new token j (must include i).
            logits: compute the logits of all T rows (else logits is None).

        Returns:
            TargetOutput(logits [B, T, V] or None, hidden [B, T, H]): hidden after the final norm.
        """
        dev = self.device
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError(
                f"input_ids: expected an int64 tensor [B, T], got "
                f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids)}"
            )
        B, T = input_ids.shape
        check_tensor("input_ids", input_ids, dtype=torch.int64, shape=(B, T), device=dev)
        check_tensor("position_ids", position_ids, dtype=torch.int64, shape=(B, T), device=dev)
        check_tensor("tree_mask", tree_mask, dtype=torch.int32, shape=(B, T, None), device=dev)
        if tree_mask.shape[2] * 32 < T:
            raise ValueError(f"tree_mask: {tree_mask.shape[2]} words per row cannot address {T} new tokens")
        self._check_cache(cache, B, T)
        hidden = self._layers(input_ids, position_ids, cache, tree_mask)
        return TargetOutput(self.lm_head(hidden) if logits else None, hidden)

    __call__ = forward

    @property
    def lean(self) -> bool:
        """Whether forwards skip transformers' per-layer machinery (specdec.target.lean_layers): a supported
        architecture whose first forward matched transformers' path bitwise (True before that forward too)."""
        verdict = getattr(self.base, LEAN_VERDICT, None)
        return bool(self._lean) and not self.base.training and verdict != (transformers.__version__, False)

    def _layers(self, input_ids, position_ids, cache, tree_mask) -> torch.Tensor:
        """The decoder's hidden states after the final norm: the lean path where it is in use, else
        transformers' own forward. Until the lean path was checked on this model, a forward runs both
        (transformers' writes the same K/V over the lean path's) and returns transformers'; the verdict is
        kept only when both agree bitwise."""

        def state():
            block_table = getattr(cache, "block_table", None)
            return TreeAttentionState(cache.cache_len, tree_mask.contiguous(), self.backend, block_table=block_table)

        lean, failure = None, None
        if self.lean and not self._lean.current():  # layers replaced since: plan again
            self._lean = LeanDecoder.plan(self.base, self.num_layers) or False
            self.base.__dict__.pop(LEAN_VERDICT, None)
        if self.lean:
            if getattr(self.base, LEAN_VERDICT, None) == (transformers.__version__, True):
                return self._lean.forward(input_ids, position_ids, cache, state())
            try:
                lean = self._lean.forward(input_ids, position_ids, cache, state())
            except Exception as exc:  # judged below: a fault of the inputs fails transformers' path too
                failure = exc
        with self._tree_attention():
            out = self.base(
                input_ids=input_ids,
                position_ids=position_ids,
                use_cache=True,
                specdec_state=state(),
                **{self._cache_kw: cache},
            )
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        if failure is not None:  # transformers' path ran where the lean one raised
            self._lean_rejected(f"failed ({type(failure).__name__}: {failure})")
        elif lean is not None:
            if _same_bits(lean, hidden):
                setattr(self.base, LEAN_VERDICT, (transformers.__version__, True))
            else:
                self._lean_rejected("differs from transformers'")
        return hidden

    def _lean_rejected(self, why: str) -> None:
        setattr(self.base, LEAN_VERDICT, (transformers.__version__, False))
        warnings.warn(
            f"TargetModel: the lean decoder path {why} for {type(self.model).__name__} (transformers "
            f"{transformers.__version__}); using transformers' path (see specdec.target.lean_layers)",
            RuntimeWarning,
            stacklevel=5,
        )

    @torch.no_grad()
    @in_kernel_linear_scope
    def prefill(
        self, input_ids: torch.Tensor, lengths: torch.Tensor, cache: TreeKVCache, *, chunk_size: Optional[int] = None
    ) -> TargetOutput:
        """Process and commit a batch of prompts of different lengths (right-padded).

        Args:
            input_ids: int64 [B, L], request b's prompt in columns < lengths[b] (the rest is padding).
            lengths: int32 [B], 1 <= lengths[b] <= L (not checked on the host: values).
            cache: TreeKVCache; the prompts are appended after cache_len (0 for a fresh cache), and
                cache_len += lengths afterwards. Needs cache_len[b] + L <= max_len.
            chunk_size: process at most this many columns per forward (bounds the attention mask and
                activations for long prompts); None = all at once.

        Returns:
            TargetOutput(logits [B, V] at each prompt's last token, hidden [B, L, H] for every column).
        """
        dev = self.device
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError("input_ids: expected an int64 tensor [B, L]")
        B, L = input_ids.shape
        if L < 1:
            raise ValueError("input_ids: expected at least one prompt token")
        check_tensor("lengths", lengths, dtype=torch.int32, shape=(B,), device=dev)
        self._check_cache(cache, B, L)
        C = L if chunk_size is None else int(chunk_size)
        if C < 1:
            raise ValueError(f"chunk_size: expected >= 1, got {chunk_size}")
        base = cache.cache_len.clone()
        hidden = []
        for start in range(0, L, C):
            T = min(C, L - start)
            # Every row writes the whole chunk at slots base + start + i: rows past a short prompt hold junk
            # that is never committed (cache_len is set to base + lengths at the end), and every write stays
            # below base + L <= max_len.
            cache.cache_len.copy_(base + start)
            pos = (base.to(torch.int64) + start)[:, None] + torch.arange(T, device=dev)
            out = self.forward(input_ids[:, start : start + T], pos, cache, chain_mask(B, T, dev), logits=False)
            hidden.append(out.hidden)
        cache.cache_len.copy_(base + lengths)
        hidden = torch.cat(hidden, dim=1) if len(hidden) > 1 else hidden[0]
        last = (lengths.to(torch.int64) - 1).clamp(min=0)
        h_last = hidden.gather(1, last[:, None, None].expand(B, 1, hidden.shape[2]))[:, 0]
        return TargetOutput(self.lm_head(h_last), hidden)

    @torch.no_grad()
    def verify(self, tokens: torch.Tensor, tree: specdec_kernels.Tree, cache: TreeKVCache) -> TargetOutput:
        """Score a batch of draft trees in one forward (nothing committed).

        Args:
            tokens: int64 [B, N], node tokens (node 0 = the root: the last accepted token, not in the cache).
            tree: specdec_kernels.build_tree(parents) of the same [B, N] trees.
            cache: TreeKVCache; node i is written at slot cache_len[b] + i, at position cache_len[b] + depth.

        Returns:
            TargetOutput(logits [B, N, V], hidden [B, N, H]).
        """
        if not isinstance(tree, specdec_kernels.Tree):
            raise TypeError(f"tree: expected a specdec_kernels.Tree (build_tree), got {type(tree).__name__}")
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
            raise ValueError("tokens: expected an int64 tensor [B, N]")
        B, N = tokens.shape
        if tuple(tree.depth.shape) != (B, N) or tree.mask.shape[:2] != (B, N):
            raise ValueError(f"tree: built for trees of shape {tuple(tree.depth.shape)}, tokens have shape {(B, N)}")
        pos = cache.cache_len.to(torch.int64)[:, None] + tree.depth.to(torch.int64)
        return self.forward(tokens, pos, cache, tree.mask)

    def commit(self, cache: TreeKVCache, accept_nodes: torch.Tensor, accept_len: torch.Tensor) -> None:
        """Keep the accepted tree nodes: move slot cache_len + accept_nodes[b, j] to cache_len + j for
        j < accept_len[b] in every layer (in place, one compact_kv), then cache_len += accept_len.

        accept_nodes int32 [B, W] (root first, -1 padded), accept_len int32 [B] (0 keeps nothing: a finished
        request's cache stays as it is).
        """
        self._check_cache(cache, accept_len.shape[0], 0)
        if isinstance(cache, PagedTreeKVCache):
            specdec_kernels.compact_paged_kv(
                cache.caches(), cache.block_table, cache.cache_len, accept_nodes, accept_len, backend=self.backend
            )
        else:
            specdec_kernels.compact_kv(cache.caches(), cache.cache_len, accept_nodes, accept_len, backend=self.backend)
        cache.cache_len.add_(accept_len)
