// Launch configurations of the CUDA verify kernels (csrc/cuda/verify.cu), torch-free: the CUDA launchers
// and the CPU emulation of the kernels (tests/cuda_emulation/) compute grid and block here, so what runs
// emulated is what would launch on a GPU.
#pragma once

#include <cstddef>
#include <cstdint>

namespace specdec {

namespace verify_launch {

inline constexpr int kLogitsThreads = 512;     // verify_logits_kernel: one block per request
inline constexpr int kGreedyIdsThreads = 128;  // greedy_ids_kernel: one thread per request

struct Config {
  unsigned grid;  // blocks
  int threads;    // threads per block
  size_t smem;    // dynamic shared memory in bytes (the verify kernels use static shared memory only)
};

// verify_greedy with argmax ids over B >= 1 requests: one thread per request.
inline Config greedy_ids_config(int64_t B) {
  return {static_cast<unsigned>((B + kGreedyIdsThreads - 1) / kGreedyIdsThreads), kGreedyIdsThreads, 0};
}

// verify_greedy with logits and verify_sample over B >= 1 requests: one block of kLogitsThreads per request.
inline Config logits_config(int64_t B) {
  return {static_cast<unsigned>(B), kLogitsThreads, 0};
}

}  // namespace verify_launch

}  // namespace specdec
