// Argument checks of the raw specdec::compact_kv op, shared by the CPU (csrc/cpu/compact.cpp) and CUDA
// (csrc/cuda/compact.cu) kernels, so that torch.ops.specdec.compact_kv called directly (opcheck, other
// engines) fails with the same message on both devices instead of reading or writing out of bounds.
//
// The public function (specdec_kernels/ops/compact.py) checks first and says more. Nothing here reads
// tensor values (no host synchronisation on CUDA): out-of-range indices are the kernels' business (they
// skip such rows). Every message starts with the op name and says what was expected and what came.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/util/Exception.h>

#include <cstddef>
#include <cstdint>
#include <limits>

namespace specdec {

// What one device's compact_kv kernel accepts.
struct CompactKernels {
  c10::DeviceType device;  // every tensor must be on cache_len's device, of this type
  int64_t max_extent;      // most heads X and most slots S_max of one cache tensor
};

inline constexpr CompactKernels kCpuCompactKernels{c10::DeviceType::CPU, std::numeric_limits<int64_t>::max()};

namespace detail {

// An index tensor: int32, contiguous, on `dev`, of `dim` dimensions whose first is B (when B >= 0).
inline void check_compact_index(const char* op, const c10::Device& dev, const at::Tensor& t, const char* name,
                                const char* layout, int64_t dim, int64_t B) {
  TORCH_CHECK(t.device() == dev, op, ": ", name, " must be on ", dev, " like cache_len, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kInt, op, ": ", name, " must be int32, got ", t.scalar_type());
  if (B < 0) {
    TORCH_CHECK(t.dim() == dim, op, ": ", name, " must have shape ", layout, ", got ", t.sizes());
  } else {
    TORCH_CHECK(t.dim() == dim && t.size(0) == B, op, ": ", name, " must have shape ", layout, " with B = ", B,
                " (as cache_len), got ", t.sizes());
  }
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", t.strides());
}

}  // namespace detail

// cache_len int32 [B], accept_nodes int32 [B, W], accept_len int32 [B], all contiguous; every tensor of
// `caches` a 4-D view [B, X, S_max, Y] with unit stride along Y (when Y > 1), X and S_max within
// k.max_extent. Everything on cache_len's device, which must be of type k.device.
inline void check_compact_kv_args(const char* op, const CompactKernels& k, at::TensorList caches,
                                  const at::Tensor& cache_len, const at::Tensor& accept_nodes,
                                  const at::Tensor& accept_len) {
  const c10::Device dev = cache_len.device();
  TORCH_CHECK(dev.type() == k.device, op, ": cache_len must be a ", c10::DeviceTypeName(k.device),
              " tensor, got one on ", dev);
  detail::check_compact_index(op, dev, cache_len, "cache_len", "[B]", 1, -1);
  const int64_t B = cache_len.size(0);
  detail::check_compact_index(op, dev, accept_nodes, "accept_nodes", "[B, W]", 2, B);
  detail::check_compact_index(op, dev, accept_len, "accept_len", "[B]", 1, B);
  for (size_t i = 0; i < caches.size(); ++i) {
    const at::Tensor& t = caches[i];
    TORCH_CHECK(t.device() == dev, op, ": caches[", i, "] must be on ", dev, " like cache_len, got ", t.device());
    TORCH_CHECK(t.dim() == 4 && t.size(0) == B, op, ": caches[", i,
                "] must be a 4-D view [B, X, S_max, Y] with B = ", B, ", got shape ", t.sizes());
    TORCH_CHECK(t.size(3) <= 1 || t.stride(3) == 1, op, ": caches[", i,
                "] must have unit stride along its last dimension Y (rows are copied as bytes), got strides ",
                t.strides());
    TORCH_CHECK(t.size(1) <= k.max_extent && t.size(2) <= k.max_extent, op, ": the ", c10::DeviceTypeName(k.device),
                " kernel takes caches of at most ", k.max_extent, " heads (X) and slots (S_max), got caches[", i,
                "] of shape ", t.sizes());
  }
}

}  // namespace specdec
