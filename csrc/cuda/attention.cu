// CUDA kernel of specdec::tree_attention: tree queries over the committed KV prefix plus their visible tree
// keys (contract: specdec_kernels/ops/attention.py), and of specdec::paged_tree_attention, the same over a
// paged cache (specdec_kernels/ops/paged.py): one kernel, templated on where a K/V row lives (kPaged).
//
// Grid: x = request x KV head (b * H_kv + kvh), y = tile of kRows query rows, z = prefix split. The rows of
// a (request, KV head) are the G = H / H_kv heads x Nq queries of its GQA group, contiguous in q (head
// h = kvh * G + g), so one K/V tile staged in shared memory serves every query of the group: the cache is
// read once per row tile, not once per query head.
//
// Block: 4 warps, each owning kRpw rows (1 for decode-sized groups, 4 otherwise). Per 32-slot tile:
//   1. all threads stage K and V [32 x D] into shared memory (16-byte loads when aligned; slots outside the
//      range, or that no row of the block sees, are zero-filled and never read from global memory, so stale
//      or NaN cache contents cannot reach the output through 0 * NaN);
//   2. S = Q K^T: lane t computes the scores of key t for the warp's rows (K rows padded by 16 bytes so the
//      32 lanes' 16-byte reads of 32 different rows hit distinct banks; Q reads are warp broadcasts);
//   3. online softmax in base 2 (scale * log2(e) is folded into Q when it is staged), fp32, per row: warp
//      max, one rescale of the accumulator per tile, the row sum kept per lane and reduced once at the end;
//   4. O += P V: lane owns D / 32 contiguous output dims, P comes from shared memory as float4 broadcasts.
// Prefix tiles need no visibility test except the tail; tree tiles are one mask word each (32 slots), and
// the block's row words are staged in shared memory together with their union.
//
// Split-K: decode has few (request, KV head) pairs (B = 1, H_kv = 8 gives 8 blocks on a 132-SM GPU) but long
// prefixes, so the prefix is cut into num_splits chunks (chosen from shapes and the SM count only, never from
// cache_len values: no host sync; each block cuts its chunk from the actual cache_len) that write fp32
// partials (accumulator, max, sum); merge_splits_kernel combines them. The tree slots belong to split 0.
//
// Paged caches: logical slot s of request b is on page table[b, s / P] at offset s % P (NHD and HND pages
// differ only in strides); each thread staging a row reads its table entry (page_offsets), and nothing else
// changes: the visibility rules, split-K and the merge work on logical slots. Logical slots are < 2^31, so
// the slot arithmetic is 32-bit, s / P a multiply-high by constants computed on the host (specdec/fast_div.h). Table
// entries are not checked (that would synchronise); an entry < 0 reads page 0, as the CPU kernel does, and a valid
// query never sees such a slot.
//
// Everything is asynchronous on the current stream; the only allocation is the split-K workspace, from
// PyTorch's caching allocator (legal under CUDA graph capture).
#include "specdec/attention_checks.h"
#include "specdec/attention_launch.h"
#include "specdec/paged_checks.h"
#include "specdec/limits.h"
#include "common.cuh"

#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>

namespace specdec {
namespace {

// Launch decisions (rows per warp, padded head dim, split-K, grid, shared-memory layout, parameters):
// specdec/attention_launch.h, shared with the CPU emulation of these kernels.
using attention_launch::kLargestDPad;
using attention_launch::kThreads;
using attention_launch::kTile;
using attention_launch::kWarps;
using attention_launch::Params;
// The limit of the raw op is kMaxHeadDim (specdec/limits.h, set in specdec_kernels/_limits.py).
static_assert(kMaxHeadDim <= kLargestDPad,
              "tree_attention has kernels for head dims up to 256: instantiate a larger padded head dim "
              "(enqueue, attention_launch::padded_head_dim) before raising SPECDEC_MAX_HEAD_DIM");
constexpr unsigned kFull = 0xffffffffu;

template <typename T, int N>
struct alignas(N * sizeof(T)) Pack {
  T v[N];
};

// N consecutive elements of T from shared memory (aligned to min(16, N * sizeof(T)) bytes) as floats, in
// loads of up to 16 bytes.
template <typename T, int N>
__device__ __forceinline__ void load_float(const T* __restrict__ src, float (&dst)[N]) {
  constexpr int kBytes = N * static_cast<int>(sizeof(T));
  constexpr int kPer = (kBytes >= 16 ? 16 : kBytes) / static_cast<int>(sizeof(T));
#pragma unroll
  for (int c = 0; c < N / kPer; ++c) {
    const Pack<T, kPer> pk = *reinterpret_cast<const Pack<T, kPer>*>(src + c * kPer);
#pragma unroll
    for (int e = 0; e < kPer; ++e) dst[c * kPer + e] = static_cast<float>(pk.v[e]);
  }
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(kFull, x, o));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(kFull, x, o);
  return x;
}

__device__ __forceinline__ uint32_t warp_or(uint32_t x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x |= __shfl_xor_sync(kFull, x, o);
  return x;
}

// Byte offsets of the dynamic shared memory (attention_launch::smem_layout): kQ float [kRows][kDPad] (Q, pre-scaled),
// kP float [kWarps][kRpw][kTile], kK T [kTile][kKStride], kV T [kTile][kDPad], kWords uint32 [kRows + 1].
template <typename T, int kDPad, int kRpw>
struct Smem {
  static constexpr attention_launch::SmemLayout kL = attention_launch::smem_layout(sizeof(T), kDPad, kRpw);
  static constexpr int kRows = kWarps * kRpw;
  static constexpr int kVec = kL.vec, kKStride = kL.k_stride;
  static constexpr int kQ = kL.q, kP = kL.p, kK = kL.k, kV = kL.v, kWords = kL.words, kBytes = kL.bytes;
};

// Paged caches: the element offsets of the K and V rows of request b's logical slot s from its KV head on
// page 0: page * sp + (s % P) * ss, page = table[b, s / P] (an entry < 0 reads page 0). Slots are < 2^31
// (attention_launch::paged_size_error), so s / P is 32-bit and by multiply-high; everything else is read from
// the parameters here, so no page arithmetic stays live in registers across the tile loops.
__device__ __forceinline__ void page_offsets(const Params& p, int64_t b, int64_t s, int64_t& k, int64_t& v) {
  const uint32_t s32 = static_cast<uint32_t>(s);
  const uint32_t page_idx = fast_div(s32, p.page_div);
  const int64_t in_page = s32 - page_idx * static_cast<uint32_t>(p.page_size);
  const int64_t page = max(p.table[b * p.max_pages + page_idx], 0);
  k = page * p.k_sb + in_page * p.k_ss;
  v = page * p.v_sb + in_page * p.v_ss;
}

template <typename T, int kDPad, int kRpw, bool kPaged>
__global__ void __launch_bounds__(kThreads) tree_attention_kernel(const Params p) {
  using L = Smem<T, kDPad, kRpw>;
  constexpr int kRows = L::kRows, kVec = L::kVec, kKStride = L::kKStride;
  constexpr int kDpl = kDPad / 32;       // output dims per lane in P V
  constexpr int kChunks = kDPad / kVec;  // 16-byte vectors per staged row
  static_assert(kDPad % 32 == 0 && kDPad % kVec == 0, "kDPad must be a multiple of 32 and of the vector width");

  extern __shared__ __align__(16) unsigned char smem[];
  float* q_s = reinterpret_cast<float*>(smem + L::kQ);
  float* p_s = reinterpret_cast<float*>(smem + L::kP);
  T* k_s = reinterpret_cast<T*>(smem + L::kK);
  T* v_s = reinterpret_cast<T*>(smem + L::kV);
  uint32_t* word_s = reinterpret_cast<uint32_t*>(smem + L::kWords);  // [0, kRows): row words, [kRows]: union

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // 32-bit divisions here, for the split chunk and for pages: a 64-bit `/` is a subroutine call, and ptxas
  // spills registers live across it.
  const int64_t bh = blockIdx.x;
  const int64_t b = blockIdx.x / static_cast<uint32_t>(p.H_kv), kvh = blockIdx.x % static_cast<uint32_t>(p.H_kv);
  const int row0 = blockIdx.y * kRows;
  const int split = blockIdx.z;
  const int D = p.D;

  // Q tile -> shared memory in fp32, pre-scaled, zero beyond D and for rows past R.
  const T* q = static_cast<const T*>(p.q);
  for (int idx = tid; idx < kRows * kDPad; idx += kThreads) {
    const int r = idx / kDPad, d = idx % kDPad, rr = row0 + r;
    float x = 0.f;
    if (rr < p.R && d < D) x = static_cast<float>(q[(bh * p.R + rr) * D + d]) * p.qk_scale;
    q_s[idx] = x;
  }

  const T* k_head = static_cast<const T*>(p.k) + (kPaged ? 0 : b * p.k_sb) + kvh * p.k_sh;
  const T* v_head = static_cast<const T*>(p.v) + (kPaged ? 0 : b * p.v_sb) + kvh * p.v_sh;

  // Stage slots s0 + t (t < kTile) for which take(t) holds; zeros elsewhere and beyond D.
  auto stage = [&](int64_t s0, auto take) {
    for (int idx = tid; idx < kTile * kChunks; idx += kThreads) {
      const int t = idx / kChunks, d0 = (idx % kChunks) * kVec;
      T* kd = k_s + t * kKStride + d0;
      T* vd = v_s + t * kDPad + d0;
      const bool ok = take(t);
      int64_t k_row = 0, v_row = 0;
      if constexpr (kPaged) {
        // Slots not taken read no table entry (tree slots past S would index past the request's row).
        if (ok) page_offsets(p, b, s0 + t, k_row, v_row);
      } else {
        k_row = (s0 + t) * p.k_ss;
        v_row = (s0 + t) * p.v_ss;
      }
      if (p.vec_ok) {
        // D is a multiple of kVec here, so a vector is either wholly inside [0, D) or wholly padding.
        uint4 kx = make_uint4(0u, 0u, 0u, 0u), vx = kx;
        if (ok && d0 < D) {
          kx = *reinterpret_cast<const uint4*>(k_head + k_row + d0);
          vx = *reinterpret_cast<const uint4*>(v_head + v_row + d0);
        }
        *reinterpret_cast<uint4*>(kd) = kx;
        *reinterpret_cast<uint4*>(vd) = vx;
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          const bool in = ok && d0 + e < D;
          kd[e] = in ? k_head[k_row + d0 + e] : T(0.f);
          vd[e] = in ? v_head[v_row + d0 + e] : T(0.f);
        }
      }
    }
  };

  float m[kRpw], l[kRpw], acc[kRpw][kDpl];
#pragma unroll
  for (int r = 0; r < kRpw; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.f;
#pragma unroll
    for (int c = 0; c < kDpl; ++c) acc[r][c] = 0.f;
  }
  const bool warp_live = row0 + warp * kRpw < p.R;  // the warp owns at least one real row

  // One staged tile; visible(r, t): key t of the tile is visible to the warp's row r.
  auto attend = [&](auto visible) {
    if (!warp_live) return;
    float s[kRpw];
#pragma unroll
    for (int r = 0; r < kRpw; ++r) s[r] = 0.f;
    const T* krow = k_s + lane * kKStride;
#pragma unroll
    for (int d0 = 0; d0 < kDPad; d0 += kVec) {
      float kf[kVec];
      load_float<T, kVec>(krow + d0, kf);
#pragma unroll
      for (int r = 0; r < kRpw; ++r) {
        const float4* qr = reinterpret_cast<const float4*>(q_s + (warp * kRpw + r) * kDPad + d0);
#pragma unroll
        for (int e4 = 0; e4 < kVec / 4; ++e4) {
          const float4 qv = qr[e4];
          s[r] += qv.x * kf[4 * e4] + qv.y * kf[4 * e4 + 1] + qv.z * kf[4 * e4 + 2] + qv.w * kf[4 * e4 + 3];
        }
      }
    }
    float* pw = p_s + warp * kRpw * kTile;
#pragma unroll
    for (int r = 0; r < kRpw; ++r) {
      const float x = visible(r, lane) ? s[r] : -INFINITY;
      const float m_new = fmaxf(m[r], warp_max(x));
      // Rows that have seen nothing yet keep m = -inf; subtracting 0 instead keeps exp2 at 0, not NaN.
      const float m_safe = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = exp2f(m[r] - m_safe);
      const float pr = exp2f(x - m_safe);
      l[r] = l[r] * alpha + pr;  // per-lane partial sum, reduced in the epilogue
      m[r] = m_new;
#pragma unroll
      for (int c = 0; c < kDpl; ++c) acc[r][c] *= alpha;
      pw[r * kTile + lane] = pr;
    }
    __syncwarp();
    const T* vcol = v_s + lane * kDpl;
#pragma unroll 4
    for (int t = 0; t < kTile; t += 4) {
      float pv[kRpw][4];
#pragma unroll
      for (int r = 0; r < kRpw; ++r) {
        const float4 x = *reinterpret_cast<const float4*>(pw + r * kTile + t);
        pv[r][0] = x.x;
        pv[r][1] = x.y;
        pv[r][2] = x.z;
        pv[r][3] = x.w;
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        float vf[kDpl];
        load_float<T, kDpl>(vcol + (t + u) * kDPad, vf);
#pragma unroll
        for (int r = 0; r < kRpw; ++r) {
#pragma unroll
          for (int c = 0; c < kDpl; ++c) acc[r][c] += pv[r][u] * vf[c];
        }
      }
    }
    __syncwarp();  // p_s is rewritten by the next tile
  };

  // Prefix: this split's chunk of [0, min(cache_len, S)), cut from the actual length in whole tiles.
  const int64_t cl = p.cache_len[b];
  const int64_t prefix = cl < 0 ? 0 : (cl > p.S ? p.S : cl);
  int64_t start = 0, end = prefix;
  if (p.num_splits > 1) {
    // prefix <= cache_len < 2^31 and num_splits <= 32: 32-bit.
    const int64_t per = static_cast<uint32_t>(prefix + p.num_splits - 1) / static_cast<uint32_t>(p.num_splits);
    const int64_t chunk = (per + kTile - 1) / kTile * kTile;
    start = min(static_cast<int64_t>(split) * chunk, prefix);
    end = min(start + chunk, prefix);
  }
  for (int64_t s0 = start; s0 < end; s0 += kTile) {
    const int64_t n = min(static_cast<int64_t>(kTile), end - s0);
    __syncthreads();  // the previous tile is consumed (and, the first time, Q is staged)
    stage(s0, [&](int t) { return t < n; });
    __syncthreads();
    if (n == kTile) {
      attend([](int, int) { return true; });
    } else {
      attend([&](int, int t) { return t < n; });
    }
  }

  // Tree slots cl + 32 w + t, split 0 only. Loop bounds are uniform over the block (syncs inside).
  if (split == 0) {
    const uint32_t* mask = p.mask;
    for (int w = 0; w < p.W; ++w) {
      const int64_t s0 = cl + static_cast<int64_t>(kTile) * w;
      if (s0 >= p.S) break;
      __syncthreads();  // the previous tile and its words are consumed
      if (warp == 0) {
        const int64_t slot = s0 + lane;
        const uint32_t in_range = __ballot_sync(kFull, slot >= 0 && slot < p.S);
        uint32_t word = 0u;
        const int rr = row0 + lane;
        if (lane < kRows && rr < p.R) word = mask[(b * p.Nq + rr % p.Nq) * p.W + w] & in_range;
        const uint32_t seen = warp_or(word);
        if (lane < kRows) word_s[lane] = word;
        if (lane == 0) word_s[kRows] = seen;
      }
      __syncthreads();
      const uint32_t seen = word_s[kRows];
      if (seen == 0u) continue;  // uniform: every thread read the same word
      stage(s0, [&](int t) { return ((seen >> t) & 1u) != 0u; });
      __syncthreads();
      uint32_t words[kRpw];
#pragma unroll
      for (int r = 0; r < kRpw; ++r) words[r] = word_s[warp * kRpw + r];
      attend([&](int r, int t) { return ((words[r] >> t) & 1u) != 0u; });
    }
  }

  // Epilogue: rows past R were computed on zeros and are dropped here.
#pragma unroll
  for (int r = 0; r < kRpw; ++r) {
    const float l_tot = warp_sum(l[r]);
    const int rr = row0 + warp * kRpw + r;
    if (rr >= p.R) continue;
    const int64_t row = bh * p.R + rr;  // row of q / out viewed as [B * H * Nq, D]
    if (p.num_splits == 1) {
      const float inv = l_tot > 0.f ? 1.f / l_tot : 0.f;  // a row without visible keys writes zeros
      T* o = static_cast<T*>(p.out) + row * D;
#pragma unroll
      for (int c = 0; c < kDpl; ++c) {
        const int d = lane * kDpl + c;
        if (d < D) o[d] = T(acc[r][c] * inv);
      }
    } else {
      const int64_t ws_row = static_cast<int64_t>(split) * p.total_rows + row;
      float* o = p.ws_acc + ws_row * D;
#pragma unroll
      for (int c = 0; c < kDpl; ++c) {
        const int d = lane * kDpl + c;
        if (d < D) o[d] = acc[r][c];
      }
      if (lane == 0) {
        p.ws_ml[ws_row * 2] = m[r];
        p.ws_ml[ws_row * 2 + 1] = l_tot;
      }
    }
  }
}

// out = sum_s 2^(m_s - m) acc_s / sum_s 2^(m_s - m) l_s, m = max_s m_s; one warp per row, lane s holds split s.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    merge_splits_kernel(const float* __restrict__ ws_acc, const float* __restrict__ ws_ml, T* __restrict__ out,
                        int64_t total_rows, int D, int num_splits) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row >= total_rows) return;  // whole warps leave together
  float m_s = -INFINITY, l_s = 0.f;
  if (lane < num_splits) {
    m_s = ws_ml[(lane * total_rows + row) * 2];
    l_s = ws_ml[(lane * total_rows + row) * 2 + 1];
  }
  const float m = warp_max(m_s);
  const float m_safe = m == -INFINITY ? 0.f : m;
  const float w = lane < num_splits ? exp2f(m_s - m_safe) : 0.f;
  const float l = warp_sum(w * l_s);
  const float inv = l > 0.f ? 1.f / l : 0.f;
  for (int d0 = 0; d0 < D; d0 += 32) {
    const int d = d0 + lane;
    float o = 0.f;
    for (int s = 0; s < num_splits; ++s) {
      const float ws = __shfl_sync(kFull, w, s);
      if (d < D) o += ws * ws_acc[(s * total_rows + row) * D + d];
    }
    if (d < D) out[row * D + d] = T(o * inv);
  }
}

int sm_count(int device) {
  static int cache[64] = {0};  // benign race: every writer stores the same value
  if (device < 0 || device >= 64) device = 0;
  if (cache[device] == 0) {
    int n = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    cache[device] = std::max(n, 1);
  }
  return cache[device];
}

template <typename T, int kDPad, int kRpw>
void launch(const Params& p, const attention_launch::Plan& plan, cudaStream_t stream) {
  constexpr int smem = Smem<T, kDPad, kRpw>::kBytes;
  static_assert(smem <= 227 * 1024, "tree_attention_kernel: more shared memory than a block of sm_90 can have");
  auto* kernel =
      p.table != nullptr ? tree_attention_kernel<T, kDPad, kRpw, true> : tree_attention_kernel<T, kDPad, kRpw, false>;
  if (plan.smem_opt_in) {
    C10_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(plan.smem)));
  }
  const dim3 grid(plan.grid_x, plan.grid_y, plan.grid_z);
  kernel<<<grid, kThreads, plan.smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Enqueues the plan's launches on `stream`: tree_attention_kernel of the plan's padded head dim and rows per
// warp (paged when p.table is set), then merge_splits_kernel when the prefix is split. Torch-free, so the CPU emulation
// runs this same path. Returns false when no kernel has the plan's padded head dim (an internal error).
template <typename T>
bool enqueue(const Params& p, const attention_launch::Plan& plan, cudaStream_t stream) {
  bool found = false;
#define SPECDEC_ATTN_LAUNCH(DP)          \
  if (plan.d_pad == DP) {                \
    found = true;                        \
    if (plan.rpw == 1) {                 \
      launch<T, DP, 1>(p, plan, stream); \
    } else {                             \
      launch<T, DP, 4>(p, plan, stream); \
    }                                    \
  }
  SPECDEC_ATTN_LAUNCH(64)
  SPECDEC_ATTN_LAUNCH(128)
  SPECDEC_ATTN_LAUNCH(kLargestDPad)
#undef SPECDEC_ATTN_LAUNCH
  if (!found) return false;
  if (plan.num_splits > 1) {
    merge_splits_kernel<T><<<plan.merge_blocks, kThreads, 0, stream>>>(p.ws_acc, p.ws_ml, static_cast<T*>(p.out),
                                                                       p.total_rows, p.D, p.num_splits);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return true;
}

void check_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cache_len,
                const at::Tensor& tree_mask, const at::Tensor& out) {
  check_tree_attention_args("specdec::tree_attention (CUDA kernel)", c10::DeviceType::CUDA, kMaxHeadDim, q, k, v,
                            cache_len, tree_mask, out);
}

void run(const at::Tensor& q, const attention_launch::Plan& plan, Params& p, const char* op);

attention_launch::Cache cache_of(const at::Tensor& t) {
  return {t.data_ptr(), t.stride(0), t.stride(1), t.stride(2)};
}

void tree_attention_cuda(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                         const at::Tensor& cache_len, const at::Tensor& tree_mask, double scale, at::Tensor out) {
  check_args(q, k_cache, v_cache, cache_len, tree_mask, out);
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), D = q.size(3);
  const int64_t H_kv = k_cache.size(1), S = k_cache.size(2), W = tree_mask.size(2);
  const char* too_large = attention_launch::size_error(B, H, H_kv, Nq, W);
  TORCH_CHECK(too_large == nullptr, "specdec::tree_attention: sizes out of the kernel's range (", too_large,
              "): H / H_kv * Nq = ", (H / H_kv) * Nq, ", W = ", W, ", B * H_kv = ", B * H_kv);
  const int elem_bytes = static_cast<int>(q.element_size());
  const attention_launch::Plan plan =
      attention_launch::plan(B, H, H_kv, Nq, D, S, elem_bytes, sm_count(q.get_device()));
  Params p = attention_launch::make_params(plan, q.data_ptr(), cache_of(k_cache), cache_of(v_cache),
                                           cache_len.data_ptr<int32_t>(),
                                           reinterpret_cast<const uint32_t*>(tree_mask.data_ptr<int32_t>()),
                                           out.data_ptr(), H_kv, Nq, D, S, W, scale, elem_bytes);
  run(q, plan, p, "specdec::tree_attention");
}

// Allocates the plan's split-K workspaces (if any) into p and enqueues the launches on the current stream.
void run(const at::Tensor& q, const attention_launch::Plan& plan, Params& p, const char* op) {
  at::Tensor ws_acc, ws_ml;
  if (plan.num_splits > 1) {
    const auto f32 = q.options().dtype(at::kFloat);
    ws_acc = at::empty({plan.num_splits, plan.total_rows, q.size(3)}, f32);
    ws_ml = at::empty({plan.num_splits, plan.total_rows, 2}, f32);
    p.ws_acc = ws_acc.data_ptr<float>();
    p.ws_ml = ws_ml.data_ptr<float>();
  }
  const cudaStream_t stream = cuda::current_stream();
  bool launched = false;
  switch (q.scalar_type()) {
    case at::kFloat:
      launched = enqueue<float>(p, plan, stream);
      break;
    case at::kHalf:
      launched = enqueue<c10::Half>(p, plan, stream);
      break;
    case at::kBFloat16:
      launched = enqueue<c10::BFloat16>(p, plan, stream);
      break;
    default:
      TORCH_CHECK(false, op, ": unsupported dtype ", q.scalar_type());
  }
  TORCH_CHECK(launched, op, ": internal error, no kernel for padded head dim ", plan.d_pad);
}

// The same kernels over paged caches: the plan of the logical cache of max_pages * P slots, K/V rows read
// through the block table. Table entries and cache_len are not checked (no host synchronisation).
void paged_tree_attention_cuda(const at::Tensor& q, const at::Tensor& k_pages, const at::Tensor& v_pages,
                               const at::Tensor& block_table, const at::Tensor& cache_len, const at::Tensor& tree_mask,
                               bool hnd, double scale, at::Tensor out) {
  check_paged_tree_attention_args("specdec::paged_tree_attention (CUDA kernel)", c10::DeviceType::CUDA, kMaxHeadDim, q,
                                  k_pages, v_pages, block_table, cache_len, tree_mask, hnd, out);
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(q.device());
  const int head = hnd ? 1 : 2, slot = hnd ? 2 : 1;
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), D = q.size(3);
  const int64_t H_kv = k_pages.size(head), P = k_pages.size(slot), max_pages = block_table.size(1);
  const int64_t W = tree_mask.size(2);
  const char* too_large = attention_launch::size_error(B, H, H_kv, Nq, W);
  if (too_large == nullptr) too_large = attention_launch::paged_size_error(max_pages, P);
  TORCH_CHECK(too_large == nullptr, "specdec::paged_tree_attention: sizes out of the kernel's range (", too_large,
              "): H / H_kv * Nq = ", (H / H_kv) * Nq, ", W = ", W, ", B * H_kv = ", B * H_kv,
              ", max_pages * page_size = ", max_pages * P, " (at most 2^31 - 1)");
  const int elem_bytes = static_cast<int>(q.element_size());
  const attention_launch::Plan plan =
      attention_launch::plan(B, H, H_kv, Nq, D, max_pages * P, elem_bytes, sm_count(q.get_device()));
  auto pages_of = [&](const at::Tensor& t) {
    return attention_launch::Pages{t.data_ptr(), t.stride(0), t.stride(head), t.stride(slot)};
  };
  Params p = attention_launch::make_paged_params(
      plan, q.data_ptr(), pages_of(k_pages), pages_of(v_pages), block_table.data_ptr<int32_t>(), max_pages, P,
      cache_len.data_ptr<int32_t>(), reinterpret_cast<const uint32_t*>(tree_mask.data_ptr<int32_t>()), out.data_ptr(),
      H_kv, Nq, D, W, scale, elem_bytes);
  run(q, plan, p, "specdec::paged_tree_attention");
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CUDA, m) {
  m.impl("tree_attention", &tree_attention_cuda);
  m.impl("paged_tree_attention", &paged_tree_attention_cuda);
}

}  // namespace specdec
