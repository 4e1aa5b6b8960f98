// Launch decisions of the CUDA kernels of csrc/cuda/paged.cu (block_table_from_csr, accept_slots),
// torch-free: threads, blocks and dynamic shared memory. The CUDA launchers and the CPU emulation of the
// kernels (tests/cuda_emulation/) both use them, so what runs emulated is what would launch on a GPU.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace specdec {

namespace paged_launch {

inline constexpr int kCsrThreads = 256;
inline constexpr int64_t kCsrMaxBlocks = 4096;  // a grid-stride loop covers the rest

// Blocks of block_table_from_csr_kernel for `entries` = B * max_pages table entries (> 0).
inline unsigned csr_blocks(int64_t entries) {
  return static_cast<unsigned>(std::clamp<int64_t>((entries + kCsrThreads - 1) / kCsrThreads, 1, kCsrMaxBlocks));
}

// accept_slots_kernel: one block per request, threads = N rounded up to a warp (at most 256; the block loops
// over the rest), dynamic shared memory = the tree's old slots (int32 [N]) and accepted flags (uint8 [N]).
inline constexpr int kAcceptMaxThreads = 256;

inline int accept_threads(int64_t N) {
  return static_cast<int>(std::clamp<int64_t>((N + 31) / 32 * 32, 32, kAcceptMaxThreads));
}

inline size_t accept_smem(int64_t N) {
  return static_cast<size_t>(N) * 5;
}

}  // namespace paged_launch

}  // namespace specdec
