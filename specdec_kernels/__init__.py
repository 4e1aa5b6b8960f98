"""specdec_kernels: kernels for lossless tree speculative decoding.

Every public op takes `backend=None` (see `get_op` and docs/design.md for the choice among cuda,
triton, cpu and torch) and checks its inputs with errors that say what was expected.
"""

from __future__ import annotations

# Import order matters: _loader defines the schemas and loads the compiled kernels (a failure there is
# recorded, not raised), then triton_kernels attaches the Triton kernels when Triton is importable.
from . import _loader, triton_kernels  # noqa: F401
from ._backend import BACKENDS, BackendError, KernelOp, get_op, list_ops
from ._loader import ExtensionFallbackWarning
from ._version import __version__
from .ops.attention import tree_attention
from .ops.compact import compact_kv
from .ops.engine_formats import flashinfer_custom_mask, sglang_tree
from .ops.features import fspad_feature_sampling, griffin_token_fusion
from .ops.linear import linear
from .ops.masks import chain_mask, mask_words, pack_bits, tree_attention_bias, tree_visibility, unpack_mask
from .ops.paged import accept_slots, block_table_from_csr, compact_paged_kv, paged_tree_attention
from .ops.tree import SelectedTree, Tree, TreePaths, build_tree, select_tree, tree_paths
from .ops.verify import VerifyResult, verify_greedy, verify_sample

__all__ = [
    "__version__",
    "BACKENDS",
    "BackendError",
    "ExtensionFallbackWarning",
    "KernelOp",
    "get_op",
    "list_ops",
    "Tree",
    "SelectedTree",
    "TreePaths",
    "VerifyResult",
    "build_tree",
    "select_tree",
    "tree_paths",
    "mask_words",
    "pack_bits",
    "chain_mask",
    "unpack_mask",
    "tree_visibility",
    "tree_attention_bias",
    "tree_attention",
    "compact_kv",
    "paged_tree_attention",
    "block_table_from_csr",
    "compact_paged_kv",
    "accept_slots",
    "sglang_tree",
    "flashinfer_custom_mask",
    "verify_greedy",
    "verify_sample",
    "fspad_feature_sampling",
    "griffin_token_fusion",
    "linear",
]
