// Argument checks of the raw specdec::tree_attention op, shared by the CPU (csrc/cpu/attention.cpp) and
// CUDA (csrc/cuda/attention.cu) kernels, so torch.ops.specdec.tree_attention called directly fails with
// a clear message instead of reading or writing out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace specdec {

// `op` names the kernel in messages, `device_type` is the device the kernel runs on, `max_head_dim` its
// head-dimension limit. Every tensor must be on q's device.
inline void check_tree_attention_args(const char* op, c10::DeviceType device_type, int64_t max_head_dim,
                                      const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const at::Tensor& cache_len, const at::Tensor& tree_mask, const at::Tensor& out) {
  const auto dev = q.device();
  TORCH_CHECK(dev.type() == device_type, op, ": expected ", c10::DeviceTypeName(device_type), " tensors, got q on ",
              dev);
  TORCH_CHECK(q.dim() == 4, op, ": q must be [B, H, Nq, D], got shape ", q.sizes());
  const auto dt = q.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, op,
              ": q must be float32, float16 or bfloat16, got ", dt);
  TORCH_CHECK(q.is_contiguous(), op, ": q must be contiguous");
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), D = q.size(3);
  TORCH_CHECK(D <= max_head_dim, op, ": head dim D = ", D, " > ", max_head_dim);
  for (const at::Tensor* t : {&k, &v}) {
    const char* name = t == &k ? "k_cache" : "v_cache";
    TORCH_CHECK(t->device() == dev, op, ": ", name, " must be on ", dev, " like q, got ", t->device());
    TORCH_CHECK(t->scalar_type() == dt, op, ": ", name, " must have q's dtype ", dt, ", got ", t->scalar_type());
    TORCH_CHECK(t->dim() == 4 && t->size(0) == B && t->size(3) == D, op, ": ", name, " must be [B=", B,
                ", H_kv, S_max, D=", D, "], got shape ", t->sizes());
    TORCH_CHECK(D <= 1 || t->stride(3) == 1, op, ": ", name, " must have unit stride along D, got strides ",
                t->strides());
  }
  TORCH_CHECK(v.sizes() == k.sizes(), op, ": v_cache shape ", v.sizes(), " != k_cache shape ", k.sizes());
  const int64_t H_kv = k.size(1);
  TORCH_CHECK(H_kv >= 1 && H % H_kv == 0, op, ": H = ", H, " query heads is not a multiple of H_kv = ", H_kv);
  TORCH_CHECK(cache_len.device() == dev && cache_len.scalar_type() == at::kInt && cache_len.dim() == 1 &&
                  cache_len.size(0) == B && cache_len.is_contiguous(),
              op, ": cache_len must be a contiguous int32 [B=", B, "] tensor on ", dev, ", got ",
              cache_len.scalar_type(), " of shape ", cache_len.sizes(), " on ", cache_len.device());
  TORCH_CHECK(tree_mask.device() == dev && tree_mask.scalar_type() == at::kInt && tree_mask.dim() == 3 &&
                  tree_mask.size(0) == B && tree_mask.size(1) == Nq && tree_mask.size(2) >= 1 &&
                  tree_mask.is_contiguous(),
              op, ": tree_mask must be a contiguous int32 [B=", B, ", Nq=", Nq, ", W>=1] tensor on ", dev, ", got ",
              tree_mask.scalar_type(), " of shape ", tree_mask.sizes(), " on ", tree_mask.device());
  TORCH_CHECK(out.device() == dev && out.scalar_type() == dt && out.sizes() == q.sizes() && out.is_contiguous(), op,
              ": out must be a contiguous ", dt, " tensor of q's shape ", q.sizes(), " on ", dev, ", got ",
              out.scalar_type(), " of shape ", out.sizes(), " on ", out.device());
}

}  // namespace specdec
