// Launch configurations of the CUDA tree kernels (csrc/cuda/tree.cu), torch-free: the CUDA launchers and
// the CPU emulation of the kernels (tests/cuda_emulation/) compute grid, block and shared memory here, so
// what runs emulated is what would launch on a GPU.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace specdec {

namespace tree_launch {

inline constexpr int kWarpSize = 32;
inline constexpr int kMaxBlockThreads = 1024;            // CUDA's limit on the threads of one block
inline constexpr int64_t kDefaultSmemBytes = 48 * 1024;  // shared memory of a block without an opt-in attribute

// The padded sort length of select_tree for M candidates: a power of two >= M (and >= 2).
constexpr int64_t sort_length(int64_t M) {
  int64_t P = 2;
  while (P < M) P <<= 1;
  return P;
}

struct Config {
  unsigned grid;  // blocks: one per tree / request
  int threads;    // threads per block
  size_t smem;    // dynamic shared memory in bytes
  int sort_len;   // select_tree only: the padded sort length P
};

// build_tree over B trees of N nodes (1 <= N <= kMaxTreeNodes): one thread per node, rounded up to whole
// warps (the link scan's warp intrinsics use full masks); parents and first children in shared memory.
inline Config build_tree_config(int64_t B, int64_t N) {
  Config c{};
  c.grid = static_cast<unsigned>(B);
  c.threads = static_cast<int>((N + kWarpSize - 1) / kWarpSize * kWarpSize);
  c.smem = 2 * static_cast<size_t>(N) * sizeof(int32_t);
  return c;
}

// select_tree over B requests of M candidates (1 <= M <= kMaxCandidates): P / 2 threads (one per
// compare-exchange of the bitonic sort), at least one warp, at most one block; keys (8 B each, padded), then
// one "chosen" byte per candidate.
inline Config select_tree_config(int64_t B, int64_t M) {
  Config c{};
  c.grid = static_cast<unsigned>(B);
  c.sort_len = static_cast<int>(sort_length(M));
  c.threads = std::clamp(c.sort_len / 2, kWarpSize, kMaxBlockThreads);
  c.smem = static_cast<size_t>(c.sort_len) * sizeof(uint64_t) + static_cast<size_t>(M);
  return c;
}

}  // namespace tree_launch

}  // namespace specdec
