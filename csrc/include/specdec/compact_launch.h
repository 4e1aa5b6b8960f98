// Launch decisions of the CUDA compact_kv kernel (csrc/cuda/compact.cu), torch-free: the tensor
// descriptors the kernel reads, the access width of each tensor, the grid and the parameter-struct size of
// each launch. The CUDA launcher and the CPU emulation of the kernel (tests/cuda_emulation/) both use them,
// so what runs emulated is what would launch on a GPU.
#pragma once

#include <algorithm>
#include <cstdint>

namespace specdec {

namespace compact_launch {

// One cache tensor [B, X, S, Y], contiguous along Y, as the kernel sees it.
struct TensorDesc {
  char* base;
  int64_t sb, sx, ss;  // strides in bytes along B, X, S
  int32_t X, S;        // heads (or 1), slots
  int32_t cols;        // vectors per row
  int32_t vec_bytes;   // 16, 8, 4, 2 or 1: the widest access every row start and the row size allow
};

// The kernel parameter: up to kMaxTensors descriptors, passed by value.
template <int kMaxTensors>
struct CompactParams {
  TensorDesc t[kMaxTensors];
};

inline constexpr int kThreads = 256;           // threads per block
inline constexpr int64_t kMaxPerLaunch = 256;  // tensors of the largest parameter struct (12 KiB)

// The widest power-of-two access (<= 16 bytes) that every row start and the row size are multiples of.
inline int32_t vector_bytes(uintptr_t base, int64_t row_bytes, int64_t sb, int64_t sx, int64_t ss) {
  uint64_t bits = static_cast<uint64_t>(base) | static_cast<uint64_t>(row_bytes) | static_cast<uint64_t>(sb) |
                  static_cast<uint64_t>(sx) | static_cast<uint64_t>(ss) | 16u;
  return static_cast<int32_t>(bits & (~bits + 1));  // lowest set bit
}

// The descriptor of a tensor with element size `es`, sizes X, S, Y (along B, X, S, Y) and element strides
// sb, sx, ss along B, X, S. cols is left to the caller when the row has more than INT32_MAX accesses
// (returns false then).
inline bool make_desc(char* base, int64_t es, int64_t X, int64_t S, int64_t Y, int64_t sb, int64_t sx, int64_t ss,
                      TensorDesc& d) {
  const int64_t row_bytes = Y * es;
  d.base = base;
  d.sb = sb * es;
  d.sx = sx * es;
  d.ss = ss * es;
  d.X = static_cast<int32_t>(X);
  d.S = static_cast<int32_t>(S);
  d.vec_bytes = vector_bytes(reinterpret_cast<uintptr_t>(base), row_bytes, d.sb, d.sx, d.ss);
  if (row_bytes / d.vec_bytes > INT32_MAX) return false;
  d.cols = static_cast<int32_t>(row_bytes / d.vec_bytes);
  return true;
}

// Parameter-struct capacity of a launch of `count` tensors: 16 / 64 / 256 descriptors (0.8 / 3 / 12 KiB;
// CUDA >= 12.1 takes up to 32 KiB of kernel parameters), the smallest that fits keeps the launch cheap.
inline int param_capacity(int64_t count) {
  return count <= 16 ? 16 : count <= 64 ? 64 : static_cast<int>(kMaxPerLaunch);
}

// Blocks along x for `count` tensors of at most max_items work items (B * X * cols): enough to fill the GPU
// a few times over across all tensors, not more (the kernel loops grid-stride beyond). Along y: count.
inline unsigned grid_x(int64_t max_items, int64_t count, int num_sms) {
  const int64_t want = (max_items + kThreads - 1) / kThreads;
  const int64_t cap = std::max<int64_t>(1, (int64_t{num_sms} * 8 + count - 1) / count);
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(want, cap)));
}

}  // namespace compact_launch

}  // namespace specdec
