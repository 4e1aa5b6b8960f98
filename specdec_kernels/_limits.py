"""Limits of the fast kernels: the one definition, shared with C++.

setup.py reads this file (without importing the package) and passes each name to the compiler as a macro
(`-DSPECDEC_MAX_TREE_NODES=1024`, ...); csrc/include/specdec/limits.h turns them into constants and
refuses to compile without them. The Python side uses them to refuse inputs before a launch.
"""

# The CUDA and Triton tree kernels (build_tree, verify_*) keep one tree in one thread block.
MAX_TREE_NODES = 1024
# The CUDA and Triton select_tree kernels rank one request's candidates in one thread block.
MAX_CANDIDATES = 4096
# The CUDA and Triton tree_attention kernels keep a query row of D values in registers.
MAX_HEAD_DIM = 256
