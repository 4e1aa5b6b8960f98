// Kernel entry of csrc/cuda/attention.cu: tree_attention_kernel (every padded head dim and rows per warp) and,
// when the plan splits the prefix, merge_splits_kernel, through the .cu's own enqueue<T> with the launch plan
// and parameters of specdec/attention_launch.h.
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
  const int64_t reported[6] = {plan.num_splits, plan.rpw, plan.d_pad, plan.grid_y, static_cast<int64_t>(plan.smem),
                               plan.smem_opt_in};
  std::copy(reported, reported + 6, plan_out);
  al::Params p = al::make_params(plan, q, k, v, cache_len, mask, out, H_kv, Nq, D, S, W, scale, elem_bytes);
  // The workspaces as the caching allocator would leave them: stale contents (poison), never zeroed.
  std::vector<float> ws_acc, ws_ml;
  if (plan.num_splits > 1) {
    ws_acc.assign(al::ws_acc_elems(plan, D), std::nanf(""));
    ws_ml.assign(al::ws_ml_elems(plan), std::nanf(""));
    p.ws_acc = ws_acc.data();
    p.ws_ml = ws_ml.data();
  }
  if (!specdec::enqueue<T>(p, plan, nullptr)) throw std::runtime_error("no kernel for the padded head dim");
}

// scalars B, H, H_kv, Nq, D, S (cache slots), W (mask words), dtype (0 fp32, 1 fp16, 2 bf16), num_sms (of the
// GPU the split-K choice is made for), k_/v_ offset, sb, sh, ss (see cache_view) and the real scale; in:
// q [B, H, Nq, D], k, v (raw storages), cache_len int32 [B], mask int32 [B, Nq, W]; out: out [B, H, Nq, D],
// plan (int64: num_splits, rows per warp, padded head dim, row tiles, dynamic shared memory, opt-in).
int tree_attention_entry(Request& r) {
  const int64_t B = r.scalar("B"), H = r.scalar("H"), H_kv = r.scalar("H_kv"), Nq = r.scalar("Nq");
  const int64_t D = r.scalar("D"), S = r.scalar("S"), W = r.scalar("W");
  if (B * H * Nq * D == 0) return 0;  // as the launcher: nothing to launch
  if (H_kv < 1 || H % H_kv != 0 || D > specdec::kMaxHeadDim || W < 1) throw std::runtime_error("bad shape");
  if (const char* e = al::size_error(B, H, H_kv, Nq, W)) throw std::runtime_error(std::string("too large: ") + e);
  switch (r.scalar("dtype")) {
    case 0:
      run<float>(r, B, H, H_kv, Nq, D, S, W);
      break;
    case 1:
      run<c10::Half>(r, B, H, H_kv, Nq, D, S, W);
      break;
    case 2:
      run<c10::BFloat16>(r, B, H, H_kv, Nq, D, S, W);
      break;
    default:
      throw std::runtime_error("dtype: 0, 1 or 2");
  }
  return 0;
}
CUDAEMU_ENTRY("tree_attention_kernel", tree_attention_entry);

}  // namespace
