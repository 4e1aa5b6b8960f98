// Kernel entries of csrc/cuda/tree.cu: build_tree_kernel, select_tree_kernel.
#include "torch_neutral.h"
// clang-format off
#include "tree.cu.cpp"  // csrc/cuda/tree.cu after rewrite.py
// clang-format on
#include "request.h"

namespace {

using cudaemu::Request;

// scalars B, N; in: parents, num_nodes; out: depth, mask, first_child, next_sibling, valid.
int build_tree_entry(Request& r) {
  const int64_t B = r.scalar("B"), N = r.scalar("N"), W = (N + 31) / 32;
  const int32_t* parents = r.in<int32_t>("parents", B * N);
  const int32_t* num_nodes = r.in<int32_t>("num_nodes", B);
  int32_t* depth = r.out<int32_t>("depth", B * N);
  uint32_t* mask = r.out<uint32_t>("mask", B * N * W);
  int32_t* first_child = r.out<int32_t>("first_child", B * N);
  int32_t* next_sibling = r.out<int32_t>("next_sibling", B * N);
  bool* valid = r.out<bool>("valid", B);
  if (B == 0) return 0;  // as the launcher: no launch
  const auto cfg = specdec::tree_launch::build_tree_config(B, N);
  cudaemu::launch(cfg.grid, cfg.threads, cfg.smem, specdec::build_tree_kernel, parents, num_nodes, depth, mask,
                  first_child, next_sibling, valid, static_cast<int>(N), static_cast<int>(W));
  return 0;
}
CUDAEMU_ENTRY("build_tree_kernel", build_tree_entry);

// scalars B, M, N; in: cand_scores, cand_parents, cand_tokens, root_tokens; out: parents, tokens, selected.
int select_tree_entry(Request& r) {
  const int64_t B = r.scalar("B"), M = r.scalar("M"), N = r.scalar("N");
  const float* scores = r.in<float>("cand_scores", B * M);
  const int32_t* cand_parents = r.in<int32_t>("cand_parents", B * M);
  const int64_t* cand_tokens = r.in<int64_t>("cand_tokens", B * M);
  const int64_t* root_tokens = r.in<int64_t>("root_tokens", B);
  int32_t* parents = r.out<int32_t>("parents", B * N);
  int64_t* tokens = r.out<int64_t>("tokens", B * N);
  int32_t* selected = r.out<int32_t>("selected", B * N);
  if (B == 0) return 0;
  const auto cfg = specdec::tree_launch::select_tree_config(B, M);
  cudaemu::launch(cfg.grid, cfg.threads, cfg.smem, specdec::select_tree_kernel, scores, cand_parents, cand_tokens,
                  root_tokens, parents, tokens, selected, static_cast<int>(M), static_cast<int>(N), cfg.sort_len);
  return 0;
}
CUDAEMU_ENTRY("select_tree_kernel", select_tree_entry);

}  // namespace
