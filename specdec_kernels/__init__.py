"""specdec_kernels: kernels for lossless tree speculative decoding.

Every public op takes `backend=None` (see specdec_kernels._backend for the choice among cuda, triton,
cpu and torch) and checks its inputs with errors that say what was expected.
"""
from __future__ import annotations

from . import _loader  # defines the schemas and loads the compiled kernels (never raises)
from . import triton_kernels  # attaches the Triton kernels when Triton is importable
from ._backend import BACKENDS, BackendError
from .ops.tree import (Tree, build_tree, empty_tree, mask_words, select_tree, tree_attention_bias, tree_paths,
                       unpack_mask)
from .ops.attention import tree_attention
from .ops.compact import compact_kv
from .ops.verify import empty_verify_out, verify_greedy, verify_sample
from .ops.features import fspad_feature_sampling, griffin_token_fusion

__version__ = "0.1.0"

__all__ = [
    "BACKENDS", "BackendError", "Tree", "build_tree", "empty_tree", "mask_words", "select_tree",
    "tree_attention_bias", "tree_paths", "unpack_mask", "__version__",
    "tree_attention", "compact_kv", "verify_greedy", "verify_sample", "empty_verify_out",
    "fspad_feature_sampling", "griffin_token_fusion",
]
