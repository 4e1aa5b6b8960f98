"""Target side of the reference drafting system: a Hugging Face causal LM on our KV cache and tree attention."""
from .attention import ATTN_IMPLEMENTATION, TreeAttentionState, tree_attention_forward
from .cache import TreeKVCache, TreeKVLayer
from .masks import chain_mask, pack_bits
from .model import TargetModel, TargetOutput

__all__ = ["ATTN_IMPLEMENTATION", "TargetModel", "TargetOutput", "TreeAttentionState", "TreeKVCache", "TreeKVLayer",
           "chain_mask", "pack_bits", "tree_attention_forward"]
