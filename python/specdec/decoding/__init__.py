"""Decoding: EAGLE-2 tree drafting, verification, acceptance and the generate loops.

(The oracle draft head of the tests and the demo lives in specdec.testing.)
"""

from .drafting import TreeDrafter, check_tree_params, num_candidates, tree_nodes
from .generate import GenerationResult, generate, generate_baseline

__all__ = [
    "GenerationResult",
    "TreeDrafter",
    "check_tree_params",
    "generate",
    "generate_baseline",
    "num_candidates",
    "tree_nodes",
]
