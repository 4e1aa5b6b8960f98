// Kernel entries of csrc/cuda/attention.cu: tree_attention_kernel (every padded head dim and rows per warp),
// contiguous and paged, and, when the plan splits the prefix, merge_splits_kernel, through the .cu's own
// enqueue<T> with the launch plan and parameters of specdec/attention_launch.h.
#include "torch_neutral.h"
// clang-format off
#include "attention.cu.cpp"  // csrc/cuda/attention.cu after rewrite.py
// clang-format on
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "request.h"

namespace {

using cudaemu::Request;
namespace al = specdec::attention_launch;

// A K or V cache: the raw storage NAME.bin viewed as [B, H_kv, S, D] from element NAME_offset with element
// strides NAME_sb, NAME_sh, NAME_ss (unit stride along D), checked to lie inside the buffer.
template <typename T>
al::Cache cache_view(Request& r, const std::string& name, int64_t B, int64_t H_kv, int64_t S, int64_t D) {
  cudaemu::Buffer& buf = r.raw(name, false);
  const int64_t off = r.scalar(name + "_offset");
  al::Cache c{nullptr, r.scalar(name + "_sb"), r.scalar(name + "_sh"), r.scalar(name + "_ss")};
  const int64_t last = off + (B - 1) * c.sb + (H_kv - 1) * c.sh + (S - 1) * c.ss + D;
  if (off < 0 || c.sb < 0 || c.sh < 0 || c.ss < 0 || last * static_cast<int64_t>(sizeof(T)) > int64_t(buf.bytes)) {
    throw std::runtime_error(name + ": view past its buffer");
  }
  c.data = reinterpret_cast<const T*>(buf.data) + off;
  return c;
}

// A paged K or V cache: the raw storage NAME.bin viewed as pages from element NAME_offset with element
// strides NAME_sp (pages), NAME_sh (KV heads), NAME_ss (page slots), checked to lie inside the buffer.
template <typename T>
al::Pages pages_view(Request& r, const std::string& name, int64_t num_pages, int64_t H_kv, int64_t P, int64_t D) {
  cudaemu::Buffer& buf = r.raw(name, false);
  const int64_t off = r.scalar(name + "_offset");
  al::Pages c{nullptr, r.scalar(name + "_sp"), r.scalar(name + "_sh"), r.scalar(name + "_ss")};
  const int64_t last = off + (num_pages - 1) * c.sp + (H_kv - 1) * c.sh + (P - 1) * c.ss + D;
  if (off < 0 || c.sp < 0 || c.sh < 0 || c.ss < 0 || last * static_cast<int64_t>(sizeof(T)) > int64_t(buf.bytes)) {
    throw std::runtime_error(name + ": view past its buffer");
  }
  c.data = reinterpret_cast<const T*>(buf.data) + off;
  return c;
}

// Runs the plan's launches with workspaces as the caching allocator would leave them: stale contents
// (poison), never zeroed; reports the plan into `plan_out`.
template <typename T>
void enqueue_with_workspace(al::Params p, const al::Plan& plan, int64_t D, int64_t* plan_out) {
  const int64_t reported[6] = {plan.num_splits, plan.rpw, plan.d_pad, plan.grid_y, static_cast<int64_t>(plan.smem),
                               plan.smem_opt_in};
  std::copy(reported, reported + 6, plan_out);
  std::vector<float> ws_acc, ws_ml;
  if (plan.num_splits > 1) {
    ws_acc.assign(al::ws_acc_elems(plan, D), std::nanf(""));
    ws_ml.assign(al::ws_ml_elems(plan), std::nanf(""));
    p.ws_acc = ws_acc.data();
    p.ws_ml = ws_ml.data();
  }
  if (!specdec::enqueue<T>(p, plan, nullptr)) throw std::runtime_error("no kernel for the padded head dim");
}

template <typename T>
void run_paged(Request& r, int64_t B, int64_t H, int64_t H_kv, int64_t Nq, int64_t D, int64_t W) {
  const int64_t P = r.scalar("P"), max_pages = r.scalar("max_pages"), num_pages = r.scalar("num_pages");
  if (P < 1 || max_pages < 1 || num_pages < 1) throw std::runtime_error("bad paging");
  const T* q = r.in<T>("q", B * H * Nq * D);
  const al::Pages k = pages_view<T>(r, "k", num_pages, H_kv, P, D), v = pages_view<T>(r, "v", num_pages, H_kv, P, D);
  const int32_t* table = r.in<int32_t>("block_table", B * max_pages);
  const int32_t* cache_len = r.in<int32_t>("cache_len", B);
  const uint32_t* mask = r.in<uint32_t>("mask", B * Nq * W);
  T* out = r.out<T>("out", B * H * Nq * D);
  const int elem_bytes = static_cast<int>(sizeof(T));
  const al::Plan plan =
      al::plan(B, H, H_kv, Nq, D, max_pages * P, elem_bytes, static_cast<int>(r.scalar("num_sms")));
  const al::Params p = al::make_paged_params(plan, q, k, v, table, max_pages, P, cache_len, mask, out, H_kv, Nq, D, W,
                                             r.real("scale"), elem_bytes);
  enqueue_with_workspace<T>(p, plan, D, r.out<int64_t>("plan", 6));
}

template <typename T>
void run(Request& r, int64_t B, int64_t H, int64_t H_kv, int64_t Nq, int64_t D, int64_t S, int64_t W) {
  const T* q = r.in<T>("q", B * H * Nq * D);
  const al::Cache k = cache_view<T>(r, "k", B, H_kv, S, D), v = cache_view<T>(r, "v", B, H_kv, S, D);
  const int32_t* cache_len = r.in<int32_t>("cache_len", B);
  const uint32_t* mask = r.in<uint32_t>("mask", B * Nq * W);
  const double scale = r.real("scale");
  T* out = r.out<T>("out", B * H * Nq * D);
  int64_t* plan_out = r.out<int64_t>("plan", 6);
  const int elem_bytes = static_cast<int>(sizeof(T));
  const al::Plan plan = al::plan(B, H, H_kv, Nq, D, S, elem_bytes, static_cast<int>(r.scalar("num_sms")));
  const al::Params p = al::make_params(plan, q, k, v, cache_len, mask, out, H_kv, Nq, D, S, W, scale, elem_bytes);
  enqueue_with_workspace<T>(p, plan, D, plan_out);
}

// scalars B, H, H_kv, Nq, D, S (cache slots), W (mask words), dtype (0 fp32, 1 fp16, 2 bf16), num_sms (of the
// GPU the split-K choice is made for), k_/v_ offset, sb, sh, ss (see cache_view) and the real scale; in:
// q [B, H, Nq, D], k, v (raw storages), cache_len int32 [B], mask int32 [B, Nq, W]; out: out [B, H, Nq, D],
// plan (int64: num_splits, rows per warp, padded head dim, row tiles, dynamic shared memory, opt-in).
// Checks the shapes common to both entries and calls fn(T{}) for the dtype; false when there is nothing to launch.
template <typename Fn>
bool by_dtype(Request& r, int64_t B, int64_t H, int64_t H_kv, int64_t Nq, int64_t D, int64_t W, Fn&& fn) {
  if (B * H * Nq * D == 0) return false;  // as the launcher: nothing to launch
  if (H_kv < 1 || H % H_kv != 0 || D > specdec::kMaxHeadDim || W < 1) throw std::runtime_error("bad shape");
  if (const char* e = al::size_error(B, H, H_kv, Nq, W)) throw std::runtime_error(std::string("too large: ") + e);
  switch (r.scalar("dtype")) {
    case 0:
      fn(float{});
      break;
    case 1:
      fn(c10::Half{});
      break;
#if CUDAEMU_SANITIZER_BUILD  // their cases run fp32 and fp16; a third of the build time saved
    case 2:
      throw std::runtime_error("dtype 2 (bf16) is not built into the sanitizer variants");
#else
    case 2:
      fn(c10::BFloat16{});
      break;
#endif
    default:
      throw std::runtime_error("dtype: 0, 1 or 2");
  }
  return true;
}

int tree_attention_entry(Request& r) {
  const int64_t B = r.scalar("B"), H = r.scalar("H"), H_kv = r.scalar("H_kv"), Nq = r.scalar("Nq");
  const int64_t D = r.scalar("D"), S = r.scalar("S"), W = r.scalar("W");
  by_dtype(r, B, H, H_kv, Nq, D, W, [&](auto tag) { run<decltype(tag)>(r, B, H, H_kv, Nq, D, S, W); });
  return 0;
}
CUDAEMU_ENTRY("tree_attention_kernel", tree_attention_entry);

// scalars B, H, H_kv, Nq, D, W, dtype, num_sms, scale as above, P (page size), max_pages, num_pages and k_/v_
// offset, sp, sh, ss (see pages_view); in: q, k, v (raw storages), block_table int32 [B, max_pages],
// cache_len, mask; out: out, plan (as above, for the logical cache of max_pages * P slots).
int paged_tree_attention_entry(Request& r) {
  const int64_t B = r.scalar("B"), H = r.scalar("H"), H_kv = r.scalar("H_kv"), Nq = r.scalar("Nq");
  const int64_t D = r.scalar("D"), W = r.scalar("W");
  by_dtype(r, B, H, H_kv, Nq, D, W, [&](auto tag) { run_paged<decltype(tag)>(r, B, H, H_kv, Nq, D, W); });
  return 0;
}
CUDAEMU_ENTRY("tree_attention_kernel_paged", paged_tree_attention_entry);

}  // namespace
