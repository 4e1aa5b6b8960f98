"""Target side of the reference drafting system: a Hugging Face causal LM on our KV cache and tree attention.

The packed masks it takes (chain_mask, pack_bits, ...) are specdec_kernels' (specdec_kernels.chain_mask).
"""

from .attention import ATTN_IMPLEMENTATION, TreeAttentionState, tree_attention_forward
from .cache import TreeKVCache, TreeKVLayer
from .model import TargetModel, TargetOutput
from .paged_cache import PagedTreeKVCache, PagedTreeKVLayer, PagePool

__all__ = [
    "ATTN_IMPLEMENTATION",
    "TargetModel",
    "TargetOutput",
    "PagePool",
    "PagedTreeKVCache",
    "PagedTreeKVLayer",
    "TreeAttentionState",
    "TreeKVCache",
    "TreeKVLayer",
    "tree_attention_forward",
]
