"""Decoding: EAGLE-2 tree drafting, verification, acceptance and the generate loops."""
from .drafting import TreeDrafter, check_tree_params, num_candidates, tree_nodes
from .generate import GenerationResult, generate, generate_baseline
from .oracle import TargetOracleHead

__all__ = ["GenerationResult", "TargetOracleHead", "TreeDrafter", "check_tree_params", "generate", "generate_baseline",
           "num_candidates", "tree_nodes"]
