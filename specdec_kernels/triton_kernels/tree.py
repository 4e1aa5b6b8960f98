"""Triton kernels of build_tree and select_tree (placeholder: filled in by the Triton tree work)."""
