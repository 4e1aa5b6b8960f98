// Argument checks of the raw paged-cache ops (specdec::paged_tree_attention, compact_paged_kv,
// block_table_from_csr, accept_slots), shared by their CPU and CUDA kernels, so
// torch.ops.specdec.* called directly fails with a clear message instead of reading out of bounds. Values
// (page ids, cache_len) are not checked: that would synchronise on a GPU (see specdec_kernels/ops/paged.py).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace specdec {

// Pages: NHD [num_pages, P, H_kv, D] or (hnd) HND [num_pages, H_kv, P, D], q's dtype, unit stride along D;
// block_table: contiguous int32 [B, max_pages >= 1]. The rest as check_tree_attention_args.
inline void check_paged_tree_attention_args(const char* op, c10::DeviceType device_type, int64_t max_head_dim,
                                            const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                            const at::Tensor& block_table, const at::Tensor& cache_len,
                                            const at::Tensor& tree_mask, bool hnd, const at::Tensor& out) {
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
  const char* layout = hnd ? "HND [num_pages, H_kv, P, D]" : "NHD [num_pages, P, H_kv, D]";
  for (const at::Tensor* t : {&k, &v}) {
    const char* name = t == &k ? "k_pages" : "v_pages";
    TORCH_CHECK(t->device() == dev, op, ": ", name, " must be on ", dev, " like q, got ", t->device());
    TORCH_CHECK(t->scalar_type() == dt, op, ": ", name, " must have q's dtype ", dt, ", got ", t->scalar_type());
    TORCH_CHECK(t->dim() == 4 && t->size(3) == D, op, ": ", name, " must be ", layout, " with D=", D, ", got shape ",
                t->sizes());
    TORCH_CHECK(D <= 1 || t->stride(3) == 1, op, ": ", name, " must have unit stride along D, got strides ",
                t->strides());
  }
  TORCH_CHECK(v.sizes() == k.sizes(), op, ": v_pages shape ", v.sizes(), " != k_pages shape ", k.sizes());
  const int64_t H_kv = k.size(hnd ? 1 : 2), P = k.size(hnd ? 2 : 1);
  TORCH_CHECK(P >= 1 && k.size(0) >= 1, op, ": expected at least one page of at least one slot, got ", k.sizes());
  TORCH_CHECK(H_kv >= 1 && H % H_kv == 0, op, ": H = ", H, " query heads is not a multiple of H_kv = ", H_kv);
  TORCH_CHECK(block_table.device() == dev && block_table.scalar_type() == at::kInt && block_table.dim() == 2 &&
                  block_table.size(0) == B && block_table.size(1) >= 1 && block_table.is_contiguous(),
              op, ": block_table must be a contiguous int32 [B=", B, ", max_pages>=1] tensor on ", dev, ", got ",
              block_table.scalar_type(), " of shape ", block_table.sizes(), " on ", block_table.device());
  TORCH_CHECK(cache_len.device() == dev && cache_len.scalar_type() == at::kInt && cache_len.dim() == 1 &&
                  cache_len.size(0) == B && cache_len.is_contiguous(),
              op, ": cache_len must be a contiguous int32 [B=", B, "] tensor on ", dev);
  TORCH_CHECK(tree_mask.device() == dev && tree_mask.scalar_type() == at::kInt && tree_mask.dim() == 3 &&
                  tree_mask.size(0) == B && tree_mask.size(1) == Nq && tree_mask.size(2) >= 1 &&
                  tree_mask.is_contiguous(),
              op, ": tree_mask must be a contiguous int32 [B=", B, ", Nq=", Nq, ", W>=1] tensor on ", dev);
  TORCH_CHECK(out.device() == dev && out.scalar_type() == dt && out.sizes() == q.sizes() && out.is_contiguous(), op,
              ": out must be a contiguous ", dt, " tensor of q's shape ", q.sizes(), " on ", dev);
}

// compact_paged_kv: block_table int32 [B, max_pages >= 1], cache_len / accept_len int32 [B], accept_nodes
// int32 [B, W], all contiguous on one device of type `device_type`; every cache a 4-D page view (NHD [pages, P,
// X, Y] or, hnd, HND [pages, X, P, Y]) with unit stride along Y, all with the same number of pages and P.
inline void check_compact_paged_kv_args(const char* op, c10::DeviceType device_type, at::TensorList caches,
                                        const at::Tensor& block_table, const at::Tensor& cache_len,
                                        const at::Tensor& accept_nodes, const at::Tensor& accept_len, bool hnd) {
  const auto dev = cache_len.device();
  TORCH_CHECK(dev.type() == device_type, op, ": expected ", c10::DeviceTypeName(device_type),
              " tensors, got cache_len on ", dev);
  const int64_t B = cache_len.size(0);
  auto index = [&](const at::Tensor& t, const char* name, int64_t dim, const char* shape) {
    TORCH_CHECK(
        t.device() == dev && t.scalar_type() == at::kInt && t.dim() == dim && t.size(0) == B && t.is_contiguous(), op,
        ": ", name, " must be a contiguous int32 ", shape, " tensor with B = ", B, " on ", dev, ", got ",
        t.scalar_type(), " of shape ", t.sizes(), " on ", t.device());
  };
  TORCH_CHECK(cache_len.dim() == 1, op, ": cache_len must be int32 [B], got shape ", cache_len.sizes());
  index(cache_len, "cache_len", 1, "[B]");
  index(block_table, "block_table", 2, "[B, max_pages]");
  TORCH_CHECK(block_table.size(1) >= 1, op, ": block_table must have at least one page per request");
  index(accept_nodes, "accept_nodes", 2, "[B, W]");
  index(accept_len, "accept_len", 1, "[B]");
  const int slot = hnd ? 2 : 1;
  for (size_t i = 0; i < caches.size(); ++i) {
    const at::Tensor& t = caches[i];
    TORCH_CHECK(t.device() == dev, op, ": caches[", i, "] must be on ", dev, ", got ", t.device());
    TORCH_CHECK(t.dim() == 4, op, ": caches[", i, "] must be a 4-D page view ",
                hnd ? "[pages, X, P, Y]" : "[pages, P, X, Y]", ", got shape ", t.sizes());
    TORCH_CHECK(t.size(3) <= 1 || t.stride(3) == 1, op, ": caches[", i,
                "] must have unit stride along its last dimension (rows are copied as bytes), got strides ",
                t.strides());
    TORCH_CHECK(t.size(0) == caches[0].size(0) && t.size(slot) == caches[0].size(slot), op, ": caches[", i, "] has ",
                t.size(0), " pages of ", t.size(slot), " slots, caches[0] ", caches[0].size(0), " of ",
                caches[0].size(slot));
  }
}

// block_table_from_csr: kv_indptr int32 [B + 1 >= 1], kv_indices int32 [nnz], out int32 [B, max_pages], all
// contiguous on one device of type `device_type`.
inline void check_block_table_from_csr_args(const char* op, c10::DeviceType device_type, const at::Tensor& kv_indptr,
                                            const at::Tensor& kv_indices, const at::Tensor& out) {
  const auto dev = kv_indptr.device();
  TORCH_CHECK(dev.type() == device_type, op, ": expected ", c10::DeviceTypeName(device_type),
              " tensors, got kv_indptr on ", dev);
  TORCH_CHECK(kv_indptr.scalar_type() == at::kInt && kv_indptr.dim() == 1 && kv_indptr.size(0) >= 1 &&
                  kv_indptr.is_contiguous(),
              op, ": kv_indptr must be a contiguous int32 [B + 1] tensor, got ", kv_indptr.scalar_type(), " of shape ",
              kv_indptr.sizes());
  TORCH_CHECK(kv_indices.device() == dev && kv_indices.scalar_type() == at::kInt && kv_indices.dim() == 1 &&
                  kv_indices.is_contiguous(),
              op, ": kv_indices must be a contiguous int32 [nnz] tensor on ", dev, ", got ", kv_indices.scalar_type(),
              " of shape ", kv_indices.sizes(), " on ", kv_indices.device());
  const int64_t B = kv_indptr.size(0) - 1;
  TORCH_CHECK(
      out.device() == dev && out.scalar_type() == at::kInt && out.dim() == 2 && out.size(0) == B && out.is_contiguous(),
      op, ": out must be a contiguous int32 [B=", B, ", max_pages] tensor on ", dev, ", got ", out.scalar_type(),
      " of shape ", out.sizes(), " on ", out.device());
}

// accept_slots: slot_table int32 [B, S], cache_len / num_nodes / accept_len int32 [B], accept_nodes int32 [B, W],
// freed int32 [B, N], freed_count int32 [B], all contiguous on one device of type `device_type`.
inline void check_accept_slots_args(const char* op, c10::DeviceType device_type, const at::Tensor& slot_table,
                                    const at::Tensor& cache_len, const at::Tensor& num_nodes,
                                    const at::Tensor& accept_nodes, const at::Tensor& accept_len,
                                    const at::Tensor& freed, const at::Tensor& freed_count) {
  const auto dev = slot_table.device();
  TORCH_CHECK(dev.type() == device_type, op, ": expected ", c10::DeviceTypeName(device_type),
              " tensors, got slot_table on ", dev);
  TORCH_CHECK(slot_table.scalar_type() == at::kInt && slot_table.dim() == 2 && slot_table.is_contiguous(), op,
              ": slot_table must be a contiguous int32 [B, S] tensor, got ", slot_table.scalar_type(), " of shape ",
              slot_table.sizes());
  const int64_t B = slot_table.size(0);
  auto index = [&](const at::Tensor& t, const char* name, int64_t dim, const char* shape) {
    TORCH_CHECK(
        t.device() == dev && t.scalar_type() == at::kInt && t.dim() == dim && t.size(0) == B && t.is_contiguous(), op,
        ": ", name, " must be a contiguous int32 ", shape, " tensor with B = ", B, " on ", dev, ", got ",
        t.scalar_type(), " of shape ", t.sizes(), " on ", t.device());
  };
  index(cache_len, "cache_len", 1, "[B]");
  index(num_nodes, "num_nodes", 1, "[B]");
  index(accept_nodes, "accept_nodes", 2, "[B, W]");
  index(accept_len, "accept_len", 1, "[B]");
  index(freed, "freed", 2, "[B, N]");
  index(freed_count, "freed_count", 1, "[B]");
}

}  // namespace specdec
