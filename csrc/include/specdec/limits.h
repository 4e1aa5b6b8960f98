// Size limits of the fast kernels, shared by the C++ and CUDA code.
//
// The one definition is specdec_kernels/_limits.py: setup.py reads it (without importing the package) and
// passes each NAME = value there as the macro SPECDEC_<NAME>=value to the C++ and CUDA compilers. The Python
// side uses the same values to refuse inputs before a launch, so the two can never disagree. A translation
// unit compiled without the macros (a build that bypasses setup.py) does not compile.
#pragma once

#include <cstdint>

#ifndef SPECDEC_MAX_TREE_NODES
#error "SPECDEC_MAX_TREE_NODES is not defined: build with setup.py (it passes specdec_kernels/_limits.py as -D flags)"
#endif
#ifndef SPECDEC_MAX_CANDIDATES
#error "SPECDEC_MAX_CANDIDATES is not defined: build with setup.py (it passes specdec_kernels/_limits.py as -D flags)"
#endif
#ifndef SPECDEC_MAX_HEAD_DIM
#error "SPECDEC_MAX_HEAD_DIM is not defined: build with setup.py (it passes specdec_kernels/_limits.py as -D flags)"
#endif

namespace specdec {

// Most nodes N of one tree in the CUDA tree kernels (build_tree, verify_*): one tree per thread block.
inline constexpr int64_t kMaxTreeNodes = SPECDEC_MAX_TREE_NODES;
// Most candidates M of one request in the CUDA select_tree kernel: one request's ranking per thread block.
inline constexpr int64_t kMaxCandidates = SPECDEC_MAX_CANDIDATES;
// Largest head dimension D of the CUDA tree_attention kernel: a query row of D values stays in registers.
inline constexpr int64_t kMaxHeadDim = SPECDEC_MAX_HEAD_DIM;

static_assert(kMaxTreeNodes >= 1, "SPECDEC_MAX_TREE_NODES must be positive");
static_assert(kMaxCandidates >= 1, "SPECDEC_MAX_CANDIDATES must be positive");
static_assert(kMaxHeadDim >= 1, "SPECDEC_MAX_HEAD_DIM must be positive");

}  // namespace specdec
