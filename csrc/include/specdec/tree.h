// Tree-op helpers shared by the CPU (csrc/cpu/tree.cpp) and CUDA (csrc/cuda/tree.cu) kernels:
//  * the candidate ranking key of select_tree (__host__ __device__), so both devices rank identically;
//  * the argument checks of the raw ops, so torch.ops.specdec.* called directly (opcheck, other engines)
//    fails with a clear message instead of reading or writing out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

// kMaxTreeNodes (largest tree one CUDA thread block builds) and kMaxCandidates (most candidates one block
// ranks): the limits of specdec_kernels/_limits.py, which ops/tree.py checks before choosing cuda/triton.
#include "specdec/limits.h"

#if defined(__CUDACC__)
#define SPECDEC_HD __host__ __device__ __forceinline__
#else
#define SPECDEC_HD inline
#endif

namespace specdec {

// Order key of a float32 score given as its bit pattern: a larger key ranks earlier. Finite numbers and
// +-inf keep their order (the usual sign-flip trick), -0.0 and +0.0 share a key (they compare equal, so
// the candidate index breaks the tie as in the reference), and every NaN gets 0, below -inf (key
// 0x007fffff). Working on bits, not float compares, makes the ranking immune to flush-to-zero
// (--use_fast_math) and identical on host and device.
SPECDEC_HD uint32_t score_order_key(uint32_t bits) {
  const uint32_t mag = bits & 0x7fffffffu;
  if (mag > 0x7f800000u) return 0u;  // NaN, any payload
  if (mag == 0u) bits = 0u;          // -0.0 -> +0.0
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Total order of the candidates of one row: higher score, then lower index. Keys are distinct (the low
// word is ~index), so "candidate a ranks before b" is exactly key(a) > key(b); a zero key is never a
// real candidate (~index > 0 for index < 2^32 - 1) and serves as padding.
SPECDEC_HD uint64_t candidate_key(uint32_t score_bits, uint32_t index) {
  return (static_cast<uint64_t>(score_order_key(score_bits)) << 32) | static_cast<uint64_t>(~index);
}

SPECDEC_HD uint32_t candidate_index(uint64_t key) {
  return ~static_cast<uint32_t>(key);
}

// ---------------------------------------------------------------------------------------------------
// Argument checks of the raw ops (host only). The public Python functions check first and say more; these
// guard the kernels' memory accesses.

namespace detail {

inline void check_arg(const at::Tensor& t, const char* op, const char* name, at::ScalarType dtype,
                      c10::IntArrayRef shape, const at::Device& device) {
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.device() == device, op, ": ", name, " must be on ", device, " like the first input, got ", t.device());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

}  // namespace detail

inline void check_build_tree_args(const at::Tensor& parents, const at::Tensor& num_nodes, const at::Tensor& depth,
                                  const at::Tensor& mask, const at::Tensor& first_child, const at::Tensor& next_sibling,
                                  const at::Tensor& valid) {
  constexpr const char* op = "specdec::build_tree";
  TORCH_CHECK(parents.dim() == 2, op, ": parents must be [B, N], got shape ", parents.sizes());
  const int64_t B = parents.size(0), N = parents.size(1);
  TORCH_CHECK(N >= 1, op, ": parents needs at least one node (the root), got shape ", parents.sizes());
  const auto dev = parents.device();
  detail::check_arg(parents, op, "parents", at::kInt, {B, N}, dev);
  detail::check_arg(num_nodes, op, "num_nodes", at::kInt, {B}, dev);
  detail::check_arg(depth, op, "depth", at::kInt, {B, N}, dev);
  detail::check_arg(mask, op, "mask", at::kInt, {B, N, (N + 31) / 32}, dev);
  detail::check_arg(first_child, op, "first_child", at::kInt, {B, N}, dev);
  detail::check_arg(next_sibling, op, "next_sibling", at::kInt, {B, N}, dev);
  detail::check_arg(valid, op, "valid", at::kBool, {B}, dev);
}

inline void check_select_tree_args(const at::Tensor& cand_scores, const at::Tensor& cand_parents,
                                   const at::Tensor& cand_tokens, const at::Tensor& root_tokens,
                                   const at::Tensor& parents, const at::Tensor& tokens, const at::Tensor& selected) {
  constexpr const char* op = "specdec::select_tree";
  TORCH_CHECK(cand_scores.dim() == 2, op, ": cand_scores must be [B, M], got shape ", cand_scores.sizes());
  TORCH_CHECK(parents.dim() == 2, op, ": parents must be [B, N], got shape ", parents.sizes());
  const int64_t B = cand_scores.size(0), M = cand_scores.size(1), N = parents.size(1);
  TORCH_CHECK(N >= 1 && N <= M + 1, op, ": expected 1 <= N <= M + 1 = ", M + 1, " output nodes, got N = ", N);
  const auto dev = cand_scores.device();
  detail::check_arg(cand_scores, op, "cand_scores", at::kFloat, {B, M}, dev);
  detail::check_arg(cand_parents, op, "cand_parents", at::kInt, {B, M}, dev);
  detail::check_arg(cand_tokens, op, "cand_tokens", at::kLong, {B, M}, dev);
  detail::check_arg(root_tokens, op, "root_tokens", at::kLong, {B}, dev);
  detail::check_arg(parents, op, "parents", at::kInt, {B, N}, dev);
  detail::check_arg(tokens, op, "tokens", at::kLong, {B, N}, dev);
  detail::check_arg(selected, op, "selected", at::kInt, {B, N}, dev);
}

}  // namespace specdec
