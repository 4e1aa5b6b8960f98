// CUDA kernels of the FSPAD / GRIFFIN feature-sampling blocks (math: specdec_kernels/reference/features.py;
// composition and registration: csrc/cuda/features_cuda.cpp; interface: csrc/cuda/features_launch.h).
//
// What lives here, and why:
//   * gemm_nt_kernel: C = sum_s A_s W_s^T with a fused epilogue, where A_s's rows may be GATHERED from the
//     embedding table by token id and RMSNorm-scaled while loading. It computes every product that reads the
//     embedding (z = [e; f] W_fc^T + b as two segments over W_fc's column halves, one accumulator, one
//     rounding; FSPAD's gate e W_g^T fused with SiLU(gate) * up; GRIFFIN's x1 W_u1^T + N_a(e) W_u2^T fused
//     with SiLU), so neither e = E[ids] [T, H] nor a concatenation [T, 2H] is ever materialised.
//   * gemm_tn_kernel: the weight gradients that read the embedding (dW_fe = dz^T e, dW_g = dg^T e,
//     dW_u2 = dv^T N_a(e)), with the same gathered / normalised loads, written into column-half views.
//   * Row kernels: RMSNorm forward with fp32 statistics (and its recomputation from saved statistics), the
//     fused RMSNorm backward + residual (+ bias) with per-block column partial sums of the norm weights' and
//     the bias' gradients, reduced by a second kernel in a fixed order (deterministic: no atomics).
//   * The SiLU (x up) backward, elementwise.
// Everything else (the products that read neither the embedding nor need a fused epilogue) goes to cuBLAS
// through ATen in the host file.
//
// The GEMMs are shared-memory tiled SIMT kernels with a register tile per thread and fp32 FMA accumulation
// (exact fp32 for fp32 inputs, like the reference with TF32 off). Decode (T <= 64 rows) is bound by reading
// the weights, which these tiles read once per row block, coalesced along K. Known headroom, not yet measured
// on a GPU: 16-byte vector loads with a register prefetch of the next slice (more bytes in flight per SM for
// decode), and a tensor-core main loop (mma.sync) for training-size T, where cuBLAS-class throughput needs it.
//
// Only CUDA headers are included (no torch header): this translation unit compiles in seconds.
#include "features_launch.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace specdec {
namespace features_cuda {
namespace {

// ---------------------------------------------------------------------------------------------------------
// Element type helpers

__device__ __forceinline__ float to_f(float x) {
  return x;
}
__device__ __forceinline__ float to_f(__half x) {
  return __half2float(x);
}
__device__ __forceinline__ float to_f(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_f<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// x rounded to T and back: where the reference rounds an fp32 result to the input dtype.
template <typename T>
__device__ __forceinline__ float round_to(float x) {
  return to_f(from_f<T>(x));
}

__device__ __forceinline__ float sigmoid_f(float x) {
  return 1.f / (1.f + __expf(-x));
}

// Row of the embedding table for position t. Clamped for memory safety only: the Python op range-checks the
// ids (a device assertion on CUDA), and a kernel cannot raise on values without synchronising.
__device__ __forceinline__ int64_t embed_row(const void* ids, bool ids64, int64_t t, int64_t vocab) {
  const int64_t r =
      ids64 ? static_cast<const int64_t*>(ids)[t] : static_cast<int64_t>(static_cast<const int32_t*>(ids)[t]);
  return r < 0 ? 0 : (r >= vocab ? vocab - 1 : r);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum of v over the block (blockDim.x a multiple of 32, <= 1024), returned to every thread. `red` holds 33
// floats of shared memory; the leading barrier makes back-to-back calls on the same buffer safe. The order of
// the additions is fixed, so the result is deterministic.
__device__ float block_sum(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < nwarps ? red[lane] : 0.f;
    s = warp_sum(s);
    if (lane == 0) red[32] = s;
  }
  __syncthreads();
  return red[32];
}

// ---------------------------------------------------------------------------------------------------------
// Tiled GEMM core. A CTA computes a BM x BN tile of C with 256 threads laid out TY x TX = 16 x 16; thread
// (ty, tx) owns rows ty + i * TY (i < TM) and columns tx + j * TX (j < TN) of the tile, so a warp's lanes
// read consecutive Bs columns (no bank conflict) and store consecutive output columns (coalesced). The
// reduction dimension is staged through shared memory in slices of BK as fp32 (loads convert and apply the
// on-the-fly RMSNorm once per element); rows are padded by one float so that the transposing stores of the
// NT kernel are conflict-free.

constexpr int kThreads = 256;
constexpr int kTX = 16, kTY = 16;

// MinBlocks: __launch_bounds__'s resident CTAs per SM, which bounds the registers ptxas may use (1: up to 255).
template <int BM, int BN, int BK, int TM, int TN, int MinBlocks = 1>
struct TileCfg {
  static_assert(BM == TM * kTY && BN == TN * kTX, "tile must match the 16 x 16 thread layout");
  static constexpr int kBM = BM, kBN = BN, kBK = BK, kTM = TM, kTN = TN, kMinBlocks = MinBlocks;
};

template <int BM, int BN, int BK, int TM, int TN>
__device__ __forceinline__ void tile_fma(const float (*As)[BM + 1], const float (*Bs)[BN + 1], float (&acc)[TM][TN],
                                         int tx, int ty) {
#pragma unroll
  for (int kk = 0; kk < BK; ++kk) {
    float a[TM], b[TN];
#pragma unroll
    for (int i = 0; i < TM; ++i) a[i] = As[kk][ty + i * kTY];
#pragma unroll
    for (int j = 0; j < TN; ++j) b[j] = Bs[kk][tx + j * kTX];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
  }
}

// Typed copy of ASegment / GemmNT (the header's are type-erased).
template <typename T>
struct Seg {
  const T* a;
  int64_t lda;
  const void* ids;
  int64_t vocab;
  const float* row_scale;
  int64_t rs_stride;
  const T* col_scale;
  const T* w;
  int64_t ldw;
  int64_t K;
  bool ids64;
};

template <typename T>
struct NTParams {
  Seg<T> seg[2];
  int nseg;
  int64_t M, N;
  const T* bias;
  T* out;
  int64_t ldo;
  T* pre;
  int64_t ldp;
  const T* mul;
  int64_t ldm;
};

// C[M, N] = sum_s A_s W_s^T, epilogue EPI (see Epilogue in features_launch.h). Grid: (ceil(N / BN), ceil(M / BM)).
template <typename T, typename Cfg, int EPI>
__global__ void __launch_bounds__(kThreads, Cfg::kMinBlocks) gemm_nt_kernel(const NTParams<T> p) {
  constexpr int BM = Cfg::kBM, BN = Cfg::kBN, BK = Cfg::kBK, TM = Cfg::kTM, TN = Cfg::kTN;
  __shared__ float As[BK][BM + 1];
  __shared__ float Ws[BK][BN + 1];
  __shared__ int64_t row_off[BM];
  __shared__ float row_scl[BM];
  static_assert(kThreads % BK == 0, "a thread loads one column kk = tid % BK of every slice");
  constexpr int kRowStep = kThreads / BK;
  static_assert(BM % kRowStep == 0 && BN % kRowStep == 0, "every thread loads as many rows of each slice");
  const int tid = threadIdx.x, tx = tid % kTX, ty = tid / kTX, kk = tid % BK, r0 = tid / BK;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * BM, n0 = static_cast<int64_t>(blockIdx.x) * BN;
  // Rows / columns of this tile inside C (at most BM / BN).
  const int m_rows = static_cast<int>(p.M - m0 < BM ? p.M - m0 : BM);
  const int n_cols = static_cast<int>(p.N - n0 < BN ? p.N - n0 : BN);
  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;

#pragma unroll
  for (int s = 0; s < 2; ++s) {  // unrolled: p.seg is indexed statically (no local-memory copy of the params)
    if (s >= p.nseg) break;
    const Seg<T>& g = p.seg[s];
    __syncthreads();  // the previous segment's last slice is consumed before row_off is overwritten
    for (int i = tid; i < BM; i += kThreads) {
      const int64_t m = m0 + i;
      const bool ok = m < p.M;
      const int64_t r = !ok ? 0 : (g.ids != nullptr ? embed_row(g.ids, g.ids64, m, g.vocab) : m);
      row_off[i] = r * g.lda;
      row_scl[i] = (ok && g.row_scale != nullptr) ? g.row_scale[m * g.rs_stride] : 1.f;
    }
    __syncthreads();
    // This thread loads column kk of every slice, rows r0 + i * kRowStep: its addresses are 64-bit bases that
    // advance by BK per slice plus a row step, with no 64-bit multiply per element (the per-element index
    // arithmetic cost registers: on sm_90 the decode tile spilled 44-52 bytes with it, 4 without).
    const T* a_k = g.a + kk;
    const T* w_k = g.w + (n0 + r0) * g.ldw + kk;
    const int64_t w_step = kRowStep * g.ldw;
    for (int64_t k0 = 0; k0 < g.K; k0 += BK, a_k += BK, w_k += BK) {
      const bool k_ok = k0 + kk < g.K;
      const float cs = (k_ok && g.col_scale != nullptr) ? to_f(g.col_scale[k0 + kk]) : 1.f;
      // A slice [BM x BK], k fastest across the lanes: each gathered row is read contiguously.
#pragma unroll
      for (int i = 0; i < BM / kRowStep; ++i) {
        const int mm = r0 + i * kRowStep;
        float v = 0.f;
        if (k_ok && mm < m_rows) {
          v = to_f(a_k[row_off[mm]]);
          if (g.row_scale != nullptr) v = round_to<T>(v * row_scl[mm]);
          if (g.col_scale != nullptr) v = round_to<T>(cs * v);
        }
        As[kk][mm] = v;
      }
      // W slice [BN x BK] (W rows are contiguous along k), stored transposed.
      const T* w = w_k;
#pragma unroll
      for (int i = 0; i < BN / kRowStep; ++i, w += w_step) {
        const int nn = r0 + i * kRowStep;
        Ws[kk][nn] = (k_ok && nn < n_cols) ? to_f(*w) : 0.f;
      }
      __syncthreads();
      tile_fma<BM, BN, BK, TM, TN>(As, Ws, acc, tx, ty);
      __syncthreads();
    }
  }

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t m = m0 + ty + i * kTY;
    if (m >= p.M) continue;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t n = n0 + tx + j * kTX;
      if (n >= p.N) continue;
      float v = acc[i][j];
      if constexpr (EPI == static_cast<int>(Epilogue::kStore)) {
        if (p.bias != nullptr) v += to_f(p.bias[n]);
        p.out[m * p.ldo + n] = from_f<T>(v);
      } else {
        // The pre-activation is a linear layer's output in the reference: rounded before the activation, and
        // backward recomputes the activation from exactly this saved value.
        v = round_to<T>(v);
        if (p.pre != nullptr) p.pre[m * p.ldp + n] = from_f<T>(v);
        float act = v * sigmoid_f(v);
        if constexpr (EPI == static_cast<int>(Epilogue::kGatedSilu))
          act = round_to<T>(act) * to_f(p.mul[m * p.ldm + n]);
        p.out[m * p.ldo + n] = from_f<T>(act);
      }
    }
  }
}

template <typename T>
struct TNParams {
  const T* g;
  int64_t ldg;
  const T* b;
  int64_t ldb;
  const void* ids;
  int64_t vocab;
  const float* row_scale;
  int64_t rs_stride;
  const T* col_scale;
  T* c;
  int64_t ldc;
  int64_t R, M, N;
  bool ids64;
};

// C[M, N] = sum_t G[t, m] B(t, n) (see GemmTN). Grid: (ceil(N / BN), ceil(M / BM)). Both operand slices are
// read row by row along their contiguous dimension and stored untransposed.
template <typename T, typename Cfg>
__global__ void __launch_bounds__(kThreads) gemm_tn_kernel(const TNParams<T> p) {
  constexpr int BM = Cfg::kBM, BN = Cfg::kBN, BK = Cfg::kBK, TM = Cfg::kTM, TN = Cfg::kTN;
  __shared__ float Gs[BK][BM + 1];
  __shared__ float Bs[BK][BN + 1];
  __shared__ int64_t row_off[BK];
  __shared__ float row_scl[BK];
  const int tid = threadIdx.x, tx = tid % kTX, ty = tid / kTX;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * BM, n0 = static_cast<int64_t>(blockIdx.x) * BN;
  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;

  for (int64_t t0 = 0; t0 < p.R; t0 += BK) {
    for (int i = tid; i < BK; i += kThreads) {
      const int64_t t = t0 + i;
      const bool ok = t < p.R;
      const int64_t r = !ok ? 0 : (p.ids != nullptr ? embed_row(p.ids, p.ids64, t, p.vocab) : t);
      row_off[i] = r * p.ldb;
      row_scl[i] = (ok && p.row_scale != nullptr) ? p.row_scale[t * p.rs_stride] : 1.f;
    }
    __syncthreads();
    for (int i = tid; i < BK * BM; i += kThreads) {
      const int tt = i / BM, mm = i % BM;
      const int64_t t = t0 + tt, m = m0 + mm;
      Gs[tt][mm] = (t < p.R && m < p.M) ? to_f(p.g[t * p.ldg + m]) : 0.f;
    }
    for (int i = tid; i < BK * BN; i += kThreads) {
      const int tt = i / BN, nn = i % BN;
      const int64_t t = t0 + tt, n = n0 + nn;
      float v = 0.f;
      if (t < p.R && n < p.N) {
        v = to_f(p.b[row_off[tt] + n]);
        if (p.row_scale != nullptr) v = round_to<T>(v * row_scl[tt]);
        if (p.col_scale != nullptr) v = round_to<T>(to_f(p.col_scale[n]) * v);
      }
      Bs[tt][nn] = v;
    }
    __syncthreads();
    tile_fma<BM, BN, BK, TM, TN>(Gs, Bs, acc, tx, ty);
    __syncthreads();  // the slices and row_off are consumed before the next iteration overwrites them
  }

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t m = m0 + ty + i * kTY;
    if (m >= p.M) continue;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t n = n0 + tx + j * kTX;
      if (n < p.N) p.c[m * p.ldc + n] = from_f<T>(acc[i][j]);
    }
  }
}

// Tile shapes. Decode (M <= 16 rows): one row block, narrow column tiles so that the weight read spreads over
// many CTAs; up to 128 rows: every weight element is still read by at most two row blocks; beyond: the
// classic 128 x 128 x 8 register-blocked tile (compute bound). The two smaller tiles bound the CTAs per SM
// (registers <= 65536 / (256 * MinBlocks)): left to itself, ptxas (nvcc 13.0, sm_90) holds the decode tile at
// 40 registers (6 CTAs) and spills, and gives the middle tile 72 registers (3 CTAs); bounded, the decode tile
// takes 48 registers without spilling (5 CTAs) and the middle one 64 (4 CTAs).
using CfgTiny = TileCfg<16, 32, 64, 1, 2, 5>;
using CfgMid = TileCfg<64, 32, 32, 4, 2, 4>;
using CfgBig = TileCfg<128, 128, 8, 8, 8>;
using CfgWgrad = TileCfg<64, 64, 16, 4, 4>;

template <typename T, typename Cfg>
void run_nt(const NTParams<T>& p, Epilogue epi, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((p.N + Cfg::kBN - 1) / Cfg::kBN),
                  static_cast<unsigned>((p.M + Cfg::kBM - 1) / Cfg::kBM));
  switch (epi) {
    case Epilogue::kStore:
      gemm_nt_kernel<T, Cfg, 0><<<grid, kThreads, 0, stream>>>(p);
      break;
    case Epilogue::kGatedSilu:
      gemm_nt_kernel<T, Cfg, 1><<<grid, kThreads, 0, stream>>>(p);
      break;
    case Epilogue::kSilu:
      gemm_nt_kernel<T, Cfg, 2><<<grid, kThreads, 0, stream>>>(p);
      break;
  }
}

template <typename T>
void gemm_nt(const GemmNT& q, cudaStream_t stream) {
  NTParams<T> p{};
  for (int s = 0; s < 2; ++s) {
    const ASegment& a = q.seg[s];
    p.seg[s] = Seg<T>{static_cast<const T*>(a.a),
                      a.lda,
                      a.ids,
                      a.vocab,
                      a.row_scale,
                      a.rs_stride,
                      static_cast<const T*>(a.col_scale),
                      static_cast<const T*>(a.w),
                      a.ldw,
                      a.K,
                      a.ids_int64};
  }
  p.nseg = q.nseg;
  p.M = q.M;
  p.N = q.N;
  p.bias = static_cast<const T*>(q.bias);
  p.out = static_cast<T*>(q.out);
  p.ldo = q.ldo;
  p.pre = static_cast<T*>(q.pre);
  p.ldp = q.ldp;
  p.mul = static_cast<const T*>(q.mul);
  p.ldm = q.ldm;
  if (q.M <= 16) {
    run_nt<T, CfgTiny>(p, q.epi, stream);
  } else if (q.M <= 128) {
    run_nt<T, CfgMid>(p, q.epi, stream);
  } else {
    run_nt<T, CfgBig>(p, q.epi, stream);
  }
}

template <typename T>
void gemm_tn(const GemmTN& q, cudaStream_t stream) {
  const TNParams<T> p{static_cast<const T*>(q.g),
                      q.ldg,
                      static_cast<const T*>(q.b),
                      q.ldb,
                      q.ids,
                      q.vocab,
                      q.row_scale,
                      q.rs_stride,
                      static_cast<const T*>(q.col_scale),
                      static_cast<T*>(q.c),
                      q.ldc,
                      q.R,
                      q.M,
                      q.N,
                      q.ids_int64};
  const dim3 grid(static_cast<unsigned>((q.N + CfgWgrad::kBN - 1) / CfgWgrad::kBN),
                  static_cast<unsigned>((q.M + CfgWgrad::kBM - 1) / CfgWgrad::kBM));
  gemm_tn_kernel<T, CfgWgrad><<<grid, kThreads, 0, stream>>>(p);
}

// ---------------------------------------------------------------------------------------------------------
// Row kernels: one CTA of kRowThreads per row (forward) or per block of rows (backward, for the partial sums).
// Thread `tid` owns columns tid, tid + kRowThreads, ...: the same thread touches the same columns in every
// pass and every row, so its partial-sum columns need no synchronisation.

constexpr int kRowThreads = 256;

__device__ __forceinline__ float rstd_of(float sumsq, int64_t H, float eps) {
  return rsqrtf(sumsq / static_cast<float>(H) + eps);
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    rms_rows_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y, float* __restrict__ rstd,
                    bool saved, int64_t H, float eps) {
  __shared__ float red[33];
  const int64_t t = blockIdx.x;
  const T* xr = x + t * H;
  float r;
  if (saved) {
    r = rstd[t];
  } else {
    float ss = 0.f;
    for (int64_t k = threadIdx.x; k < H; k += kRowThreads) {
      const float v = to_f(xr[k]);
      ss += v * v;
    }
    r = rstd_of(block_sum(ss, red), H, eps);
    if (threadIdx.x == 0) rstd[t] = r;
  }
  T* yr = y + t * H;
  for (int64_t k = threadIdx.x; k < H; k += kRowThreads) yr[k] = from_f<T>(to_f(w[k]) * round_to<T>(to_f(xr[k]) * r));
}

// N_b(h) at column k, rounded like the reference: round(n_b * round(h * rb)).
template <typename T>
__device__ __forceinline__ float norm_b_at(const T* hr, const T* nb, int64_t k, float rb) {
  return round_to<T>(to_f(nb[k]) * round_to<T>(to_f(hr[k]) * rb));
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    griffin_norms_kernel(const T* __restrict__ h, const T* __restrict__ embed, int64_t lde, const void* ids, bool ids64,
                         int64_t vocab, const T* __restrict__ nb, const T* __restrict__ na, T* __restrict__ x1,
                         float* __restrict__ stats, bool saved, int64_t H, float eps) {
  __shared__ float red[33];
  const int64_t t = blockIdx.x;
  const T* hr = h + t * H;
  float rb, r1;
  if (saved) {
    rb = stats[t * 3 + 0];
    r1 = stats[t * 3 + 1];
  } else {
    float ss = 0.f;
    for (int64_t k = threadIdx.x; k < H; k += kRowThreads) {
      const float v = to_f(hr[k]);
      ss += v * v;
    }
    rb = rstd_of(block_sum(ss, red), H, eps);
    // rstd of the rounded N_b(h), as the reference computes it from the tensor it materialises.
    ss = 0.f;
    for (int64_t k = threadIdx.x; k < H; k += kRowThreads) {
      const float v = norm_b_at(hr, nb, k, rb);
      ss += v * v;
    }
    r1 = rstd_of(block_sum(ss, red), H, eps);
    const T* er = embed + embed_row(ids, ids64, t, vocab) * lde;
    ss = 0.f;
    for (int64_t k = threadIdx.x; k < H; k += kRowThreads) {
      const float v = to_f(er[k]);
      ss += v * v;
    }
    const float re = rstd_of(block_sum(ss, red), H, eps);
    if (threadIdx.x == 0) {
      stats[t * 3 + 0] = rb;
      stats[t * 3 + 1] = r1;
      stats[t * 3 + 2] = re;
    }
  }
  T* xr = x1 + t * H;
  for (int64_t k = threadIdx.x; k < H; k += kRowThreads)
    xr[k] = from_f<T>(to_f(na[k]) * round_to<T>(norm_b_at(hr, nb, k, rb) * r1));
}

// Backward of y = n * (x r) for one row given dy: returns mean_k(n dy x r) (the row term of dx).
template <typename T, typename DYF, typename XF>
__device__ __forceinline__ float rms_bwd_mean(DYF dy_at, XF xh_at, const T* n, int64_t H, float* red) {
  float s = 0.f;
  for (int64_t k = threadIdx.x; k < H; k += kRowThreads) s += to_f(n[k]) * dy_at(k) * xh_at(k);
  return block_sum(s, red) / static_cast<float>(H);
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    fspad_norm_backward_kernel(const T* __restrict__ dout, const T* __restrict__ dy, const T* __restrict__ z,
                               const T* __restrict__ nw, const float* __restrict__ rstd, T* __restrict__ dz,
                               float* __restrict__ part, int64_t rows, int64_t T_, int64_t H) {
  __shared__ float red[33];
  float* p_n = part + static_cast<int64_t>(blockIdx.x) * 2 * H;
  float* p_b = p_n + H;
  for (int64_t k = threadIdx.x; k < H; k += kRowThreads) p_n[k] = p_b[k] = 0.f;
  const int64_t t_end = min(T_, (static_cast<int64_t>(blockIdx.x) + 1) * rows);
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * rows; t < t_end; ++t) {  // uniform across the block
    const T* zr = z + t * H;
    const T* dyr = dy + t * H;
    const float r = rstd[t];
    const float mean = rms_bwd_mean<T>([&](int64_t k) { return to_f(dyr[k]); },
                                       [&](int64_t k) { return to_f(zr[k]) * r; }, nw, H, red);
    for (int64_t k = threadIdx.x; k < H; k += kRowThreads) {
      const float zh = to_f(zr[k]) * r, d_y = to_f(dyr[k]);
      const float d = to_f(dout[t * H + k]) + r * (to_f(nw[k]) * d_y - zh * mean);
      dz[t * H + k] = from_f<T>(d);
      p_n[k] += d_y * zh;
      p_b[k] += d;
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    griffin_norm_backward_kernel(const T* __restrict__ dout, const T* __restrict__ dx1, const T* __restrict__ dx2,
                                 int64_t ldx, const T* __restrict__ h, const T* __restrict__ embed, int64_t lde,
                                 const void* ids, bool ids64, int64_t vocab, const T* __restrict__ nb,
                                 const T* __restrict__ na, const float* __restrict__ stats, T* __restrict__ dh,
                                 float* __restrict__ part, int64_t rows, int64_t T_, int64_t H) {
  __shared__ float red[33];
  float* p_a = part + static_cast<int64_t>(blockIdx.x) * 3 * H;
  float* p_nb = p_a + H;
  float* p_db = p_a + 2 * H;
  for (int64_t k = threadIdx.x; k < H; k += kRowThreads) p_a[k] = p_nb[k] = p_db[k] = 0.f;
  const int64_t t_end = min(T_, (static_cast<int64_t>(blockIdx.x) + 1) * rows);
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * rows; t < t_end; ++t) {  // uniform across the block
    const float rb = stats[t * 3 + 0], r1 = stats[t * 3 + 1], re = stats[t * 3 + 2];
    const T* hr = h + t * H;
    const T* d1 = dx1 + t * ldx;
    // x1 = N_a(yb), yb = N_b(h) (rounded as in forward): first N_a's backward to d yb ...
    auto yh_at = [&](int64_t k) { return norm_b_at(hr, nb, k, rb) * r1; };
    const float mean1 = rms_bwd_mean<T>([&](int64_t k) { return to_f(d1[k]); }, yh_at, na, H, red);
    auto dyb_at = [&](int64_t k) { return r1 * (to_f(na[k]) * to_f(d1[k]) - yh_at(k) * mean1); };
    // ... then N_b's backward to dh, plus the residual.
    const float mean2 = rms_bwd_mean<T>(dyb_at, [&](int64_t k) { return to_f(hr[k]) * rb; }, nb, H, red);
    const T* er = dx2 != nullptr ? embed + embed_row(ids, ids64, t, vocab) * lde : nullptr;
    const T* d2 = dx2 != nullptr ? dx2 + t * ldx : nullptr;
    for (int64_t k = threadIdx.x; k < H; k += kRowThreads) {
      const float hh = to_f(hr[k]) * rb, dyb = dyb_at(k);
      const float d = to_f(dout[t * H + k]) + rb * (to_f(nb[k]) * dyb - hh * mean2);
      dh[t * H + k] = from_f<T>(d);
      // N_a normalises both halves: its gradient sums dx1 * N_b(h)-hat and dx2 * e-hat.
      float da = to_f(d1[k]) * yh_at(k);
      if (d2 != nullptr) da += to_f(d2[k]) * to_f(er[k]) * re;
      p_a[k] += da;
      p_nb[k] += dyb * hh;
      p_db[k] += d;
    }
  }
}

template <typename T>
struct Outs3 {
  T* o[3];
};

template <typename T>
__global__ void column_sums_kernel(const float* __restrict__ part, int64_t nblk, int64_t C, int64_t H, Outs3<T> outs) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= C * H) return;
  const int64_t c = i / H, k = i - c * H;
  T* o = c == 0 ? outs.o[0] : (c == 1 ? outs.o[1] : outs.o[2]);
  if (o == nullptr) return;
  float s = 0.f;
  for (int64_t b = 0; b < nblk; ++b) s += part[(b * C + c) * H + k];
  o[k] = from_f<T>(s);
}

template <typename T, bool kGated>
__global__ void silu_backward_kernel(const T* __restrict__ g, const T* __restrict__ u, const T* __restrict__ da,
                                     T* __restrict__ act, T* __restrict__ dg, T* __restrict__ du, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float x = to_f(g[i]), s = sigmoid_f(x), silu = x * s, d = to_f(da[i]);
    const float dsilu = s * (1.f + x * (1.f - s));
    if constexpr (kGated) {
      const float up = to_f(u[i]);
      act[i] = from_f<T>(round_to<T>(silu) * up);
      dg[i] = from_f<T>(d * up * dsilu);
      du[i] = from_f<T>(d * silu);
    } else {
      act[i] = from_f<T>(silu);
      dg[i] = from_f<T>(d * dsilu);
    }
  }
}

template <typename F>
void dispatch(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32:
      f(float{});
      break;
    case DType::kFloat16:
      f(__half{});
      break;
    case DType::kBFloat16:
      f(__nv_bfloat16{});
      break;
  }
}

int64_t rows_per_block(int64_t T) {
  // Enough CTAs to fill a GPU (T / rows >= ~512), at most 64 rows each: few partial-sum rows to reduce.
  int64_t rows = 1;
  while (rows < 64 && rows * 512 < T) rows *= 2;
  return rows;
}

}  // namespace

void launch_gemm_nt(DType dtype, const GemmNT& p, cudaStream_t stream) {
  if (p.M <= 0 || p.N <= 0) return;
  dispatch(dtype, [&](auto tag) { gemm_nt<decltype(tag)>(p, stream); });
}

void launch_gemm_tn(DType dtype, const GemmTN& p, cudaStream_t stream) {
  if (p.M <= 0 || p.N <= 0) return;
  dispatch(dtype, [&](auto tag) { gemm_tn<decltype(tag)>(p, stream); });
}

void launch_rms_rows(DType dtype, const void* x, const void* w, void* y, float* rstd, bool saved, int64_t T, int64_t H,
                     float eps, cudaStream_t stream) {
  if (T <= 0) return;
  dispatch(dtype, [&](auto tag) {
    using T_ = decltype(tag);
    rms_rows_kernel<T_><<<static_cast<unsigned>(T), kRowThreads, 0, stream>>>(
        static_cast<const T_*>(x), static_cast<const T_*>(w), static_cast<T_*>(y), rstd, saved, H, eps);
  });
}

void launch_griffin_norms(DType dtype, const void* h, const void* embed, int64_t lde, const void* ids, bool ids_int64,
                          int64_t vocab, const void* norm_b, const void* norm_a, void* x1, float* stats, bool saved,
                          int64_t T, int64_t H, float eps, cudaStream_t stream) {
  if (T <= 0) return;
  dispatch(dtype, [&](auto tag) {
    using T_ = decltype(tag);
    griffin_norms_kernel<T_><<<static_cast<unsigned>(T), kRowThreads, 0, stream>>>(
        static_cast<const T_*>(h), static_cast<const T_*>(embed), lde, ids, ids_int64, vocab,
        static_cast<const T_*>(norm_b), static_cast<const T_*>(norm_a), static_cast<T_*>(x1), stats, saved, H, eps);
  });
}

int64_t norm_backward_blocks(int64_t T) {
  const int64_t rows = rows_per_block(T);
  return (T + rows - 1) / rows;
}

void launch_fspad_norm_backward(DType dtype, const void* dout, const void* dy, const void* z, const void* norm_w,
                                const float* rstd, void* dz, float* part, int64_t nblk, int64_t T, int64_t H,
                                cudaStream_t stream) {
  if (T <= 0) return;
  const int64_t rows = rows_per_block(T);
  dispatch(dtype, [&](auto tag) {
    using T_ = decltype(tag);
    fspad_norm_backward_kernel<T_><<<static_cast<unsigned>(nblk), kRowThreads, 0, stream>>>(
        static_cast<const T_*>(dout), static_cast<const T_*>(dy), static_cast<const T_*>(z),
        static_cast<const T_*>(norm_w), rstd, static_cast<T_*>(dz), part, rows, T, H);
  });
}

void launch_griffin_norm_backward(DType dtype, const void* dout, const void* dx1, const void* dx2, int64_t ldx,
                                  const void* h, const void* embed, int64_t lde, const void* ids, bool ids_int64,
                                  int64_t vocab, const void* norm_b, const void* norm_a, const float* stats, void* dh,
                                  float* part, int64_t nblk, int64_t T, int64_t H, cudaStream_t stream) {
  if (T <= 0) return;
  const int64_t rows = rows_per_block(T);
  dispatch(dtype, [&](auto tag) {
    using T_ = decltype(tag);
    griffin_norm_backward_kernel<T_><<<static_cast<unsigned>(nblk), kRowThreads, 0, stream>>>(
        static_cast<const T_*>(dout), static_cast<const T_*>(dx1), static_cast<const T_*>(dx2), ldx,
        static_cast<const T_*>(h), static_cast<const T_*>(embed), lde, ids, ids_int64, vocab,
        static_cast<const T_*>(norm_b), static_cast<const T_*>(norm_a), stats, static_cast<T_*>(dh), part, rows, T, H);
  });
}

void launch_column_sums(DType dtype, const float* part, int64_t nblk, int64_t C, int64_t H, void* const* outs,
                        cudaStream_t stream) {
  if (C <= 0 || H <= 0) return;
  constexpr int kBlock = 256;
  const unsigned grid = static_cast<unsigned>((C * H + kBlock - 1) / kBlock);
  dispatch(dtype, [&](auto tag) {
    using T_ = decltype(tag);
    Outs3<T_> o{};
    for (int64_t c = 0; c < C && c < 3; ++c) o.o[c] = static_cast<T_*>(outs[c]);
    column_sums_kernel<T_><<<grid, kBlock, 0, stream>>>(part, nblk, C, H, o);
  });
}

void launch_silu_backward(DType dtype, const void* g, const void* u, const void* da, void* act, void* dg, void* du,
                          int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  constexpr int kBlock = 256;
  // Grid-stride: a bounded grid (a few waves of any GPU) covers any n.
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>((n + kBlock - 1) / kBlock, 65536));
  dispatch(dtype, [&](auto tag) {
    using T_ = decltype(tag);
    if (u != nullptr) {
      silu_backward_kernel<T_, true><<<grid, kBlock, 0, stream>>>(static_cast<const T_*>(g), static_cast<const T_*>(u),
                                                                  static_cast<const T_*>(da), static_cast<T_*>(act),
                                                                  static_cast<T_*>(dg), static_cast<T_*>(du), n);
    } else {
      silu_backward_kernel<T_, false><<<grid, kBlock, 0, stream>>>(static_cast<const T_*>(g), nullptr,
                                                                   static_cast<const T_*>(da), static_cast<T_*>(act),
                                                                   static_cast<T_*>(dg), nullptr, n);
    }
  });
}

}  // namespace features_cuda
}  // namespace specdec
