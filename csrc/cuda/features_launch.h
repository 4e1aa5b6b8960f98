// Launchers of the CUDA kernels of the FSPAD / GRIFFIN feature-sampling blocks (csrc/cuda/features.cu).
//
// Plain C++ interface (pointers, sizes, a stream): the kernels' translation unit includes no torch header,
// and the host composition (csrc/cuda/features_cuda.cpp: ATen/cuBLAS GEMMs, allocation, checks, the
// TORCH_LIBRARY_IMPL registration) is compiled by the host compiler. Every launcher only enqueues work on
// `stream`: no allocation, no synchronisation. All matrices are row-major with the given leading dimension
// (elements between consecutive rows) and unit stride along the row. Element types are fp32, fp16 or bf16
// (`DType`); accumulation and row statistics are fp32.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace specdec {
namespace features_cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Most rows T the kernels take: the GEMMs put 128-row blocks on gridDim.y (at most 65535).
constexpr int64_t kMaxRows = int64_t{65535} * 128;

// One operand segment of the "NT" GEMM below: it adds sum_k A(m, k) W[n, k] over k < K.
//   A(m, k) = a[row(m) * lda + k], row(m) = ids[m] (clamped to [0, vocab): memory safety only, the ids are
//   range-checked by the Python op) when ids != nullptr, else m. So the embedding rows e = E[ids] are read
//   straight from the table inside the GEMM, never copied into a [T, H] tensor.
//   With row_scale (and col_scale), RMSNorm is applied while loading, with the reference's rounding:
//   A = round(col_scale[k] * round(A * row_scale[m * rs_stride])) (round = to the element type).
struct ASegment {
  const void* a = nullptr;
  int64_t lda = 0;
  const void* ids = nullptr;
  bool ids_int64 = false;
  int64_t vocab = 0;
  const float* row_scale = nullptr;
  int64_t rs_stride = 0;
  const void* col_scale = nullptr;
  const void* w = nullptr;  // W [N, K], rows ldw apart (a column half of W_fc / W_u: ldw = 2H)
  int64_t ldw = 0;
  int64_t K = 0;
};

// Epilogues of the NT GEMM on the fp32 accumulator acc[m, n]:
//   kStore      out = round(acc + bias[n])                       (bias optional)
//   kGatedSilu  v = round(acc); pre = v (optional); out = round(SiLU(v) * mul[m, n])   (FSPAD: gate, act)
//   kSilu       v = round(acc); pre = v (optional); out = round(SiLU(v))              (GRIFFIN: pre_act, act)
enum class Epilogue : int { kStore = 0, kGatedSilu = 1, kSilu = 2 };

struct GemmNT {
  ASegment seg[2];
  int nseg = 1;  // 1 or 2 segments, summed into one accumulator (a single rounding of [e; f] W^T)
  int64_t M = 0, N = 0;
  Epilogue epi = Epilogue::kStore;
  const void* bias = nullptr;
  void* out = nullptr;
  int64_t ldo = 0;
  void* pre = nullptr;
  int64_t ldp = 0;
  const void* mul = nullptr;
  int64_t ldm = 0;
};

// C[m, n] = sum over the segments of A(m, k) W[n, k], then the epilogue. M, N, K of any size (edges masked).
void launch_gemm_nt(DType dtype, const GemmNT& p, cudaStream_t stream);

// The weight-gradient GEMM reading gathered rows: C[m, n] = round(sum_{t < R} G[t, m] * B(t, n)), with
//   B(t, n) = b[row(t) * ldb + n], row(t) = ids[t] (clamped) or t, and with row_scale / col_scale the same
//   on-the-fly RMSNorm as ASegment: B = round(col_scale[n] * round(B * row_scale[t * rs_stride])).
// C [M, N] has leading dimension ldc (a column half of dW_fc / dW_u: ldc = 2H).
struct GemmTN {
  const void* g = nullptr;
  int64_t ldg = 0;
  const void* b = nullptr;
  int64_t ldb = 0;
  const void* ids = nullptr;
  bool ids_int64 = false;
  int64_t vocab = 0;
  const float* row_scale = nullptr;
  int64_t rs_stride = 0;
  const void* col_scale = nullptr;
  void* c = nullptr;
  int64_t ldc = 0;
  int64_t R = 0, M = 0, N = 0;
};

void launch_gemm_tn(DType dtype, const GemmTN& p, cudaStream_t stream);

// FSPAD RMSNorm rows: y[t] = round(w * round(x[t] * r_t)); r_t = rsqrt(mean(x[t]^2) + eps) is written to
// rstd[t] (saved == false) or read from it (saved == true, backward's recomputation). x, y: [T, H].
void launch_rms_rows(DType dtype, const void* x, const void* w, void* y, float* rstd, bool saved, int64_t T, int64_t H,
                     float eps, cudaStream_t stream);

// GRIFFIN norms: x1[t] = N_a(N_b(h[t])) with the reference's rounding, and the statistics
// stats[t] = [rstd(h), rstd(N_b(h)), rstd(e)] (e = embed[ids[t]], rows lde apart) written (saved == false)
// or read (saved == true; then only x1 is written). h, x1: [T, H]; stats: [T, 3].
void launch_griffin_norms(DType dtype, const void* h, const void* embed, int64_t lde, const void* ids, bool ids_int64,
                          int64_t vocab, const void* norm_b, const void* norm_a, void* x1, float* stats, bool saved,
                          int64_t T, int64_t H, float eps, cudaStream_t stream);

// Rows per block of the norm-backward kernels and the resulting number of blocks (= rows of `part`).
int64_t norm_backward_blocks(int64_t T);

// FSPAD RMSNorm backward fused with the residual: dz[t] = round(dout[t] + r (n dy - zh mean(n dy zh))),
// zh = z r. part [nblk, 2, H] (fp32) receives per-block column sums [sum dy zh (-> dn), sum dz (-> db)]
// (dz unrounded), reduced deterministically by launch_column_sums.
void launch_fspad_norm_backward(DType dtype, const void* dout, const void* dy, const void* z, const void* norm_w,
                                const float* rstd, void* dz, float* part, int64_t nblk, int64_t T, int64_t H,
                                cudaStream_t stream);

// GRIFFIN norm backward: given dx1 (and dx2, may be nullptr when N_a's gradient is not wanted), rows ldx
// apart, dh[t] = round(dout[t] + N_b'(N_a'(dx1))); part [nblk, 3, H] receives per-block column sums
// [d n_a, d n_b, d b].
void launch_griffin_norm_backward(DType dtype, const void* dout, const void* dx1, const void* dx2, int64_t ldx,
                                  const void* h, const void* embed, int64_t lde, const void* ids, bool ids_int64,
                                  int64_t vocab, const void* norm_b, const void* norm_a, const float* stats, void* dh,
                                  float* part, int64_t nblk, int64_t T, int64_t H, cudaStream_t stream);

// outs[c][k] = round(sum_{b < nblk} part[b, c, k]) for c < C (C <= 3) where outs[c] != nullptr; the blocks
// are summed in a fixed order, so the result is deterministic (no atomics).
void launch_column_sums(DType dtype, const float* part, int64_t nblk, int64_t C, int64_t H, void* const* outs,
                        cudaStream_t stream);

// SiLU backward, elementwise over n entries. Gated (u != nullptr, FSPAD): act = SiLU(g) u, dg = da u SiLU'(g),
// du = da SiLU(g). Plain (u == nullptr, GRIFFIN): act = SiLU(g), dg = da SiLU'(g); du unused.
void launch_silu_backward(DType dtype, const void* g, const void* u, const void* da, void* act, void* dg, void* du,
                          int64_t n, cudaStream_t stream);

}  // namespace features_cuda
}  // namespace specdec
