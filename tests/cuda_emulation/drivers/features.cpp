// Kernel entries of csrc/cuda/features.cu, through its own torch-free launchers (csrc/cuda/features_launch.h):
// gemm_nt_kernel, gemm_tn_kernel, rms_rows_kernel, griffin_norms_kernel, silu_backward_kernel, and the two norm
// backward kernels each followed by column_sums_kernel (the pair features_cuda.cpp launches). The test composes
// them with torch's matrix products exactly as csrc/cuda/features_cuda.cpp composes them with ATen's.
//
// Matrices cross as spans: the buffer NAME.bin holds the elements from a view's first to its last, and the
// leading dimension is a scalar (a column half of W_fc / W_u is a span with ld = 2H). Optional operands are
// absent buffers (nullptr). Element types: scalar dtype (0 fp32, 1 fp16, 2 bf16); row statistics are fp32.
#include "cudaemu.h"
// clang-format off
#include "features.cu.cpp"  // csrc/cuda/features.cu after rewrite.py
// clang-format on
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "request.h"

namespace {

using cudaemu::Request;
namespace fc = specdec::features_cuda;

int64_t elem_bytes(const Request& r) {
  switch (r.scalar("dtype")) {
    case 0:
      return 4;
    case 1:
    case 2:
      return 2;
    default:
      throw std::runtime_error("dtype: 0, 1 or 2");
  }
}

fc::DType dtype_of(const Request& r) {
  elem_bytes(r);  // checks the code
  return static_cast<fc::DType>(r.scalar("dtype"));
}

// The span of a rows x cols matrix with leading dimension ld and es-byte elements (nullptr when the buffer is
// absent and optional), checked to hold it.
void* span(Request& r, const std::string& name, int64_t rows, int64_t cols, int64_t ld, int64_t es, bool output = false,
           bool optional = false) {
  if (optional && !r.has(name)) return nullptr;
  cudaemu::Buffer& b = r.raw(name, output);
  const int64_t need = rows <= 0 || cols <= 0 ? 0 : ((rows - 1) * ld + cols) * es;
  if (ld < cols || static_cast<int64_t>(b.bytes) < need) {
    throw std::runtime_error("buffer '" + name + "' of " + std::to_string(b.bytes) + " bytes: too small for " +
                             std::to_string(rows) + " x " + std::to_string(cols) + " with ld " + std::to_string(ld));
  }
  return b.data;
}

// Token ids (int32 or int64 by scalar ids64) of `count` rows, or nullptr when absent.
const void* ids_of(Request& r, const std::string& name, int64_t count) {
  if (!r.has(name)) return nullptr;
  return span(r, name, count, 1, 1, r.scalar("ids64") != 0 ? 8 : 4);
}

// scalars dtype, M, N, nseg (1 or 2), epi (0 store, 1 gated SiLU, 2 SiLU), ldo, ldp, ldm, ids64, vocab and per
// segment s: K<s>, lda<s>, ldw<s>, rs_stride<s>; in: a<s> (rows: vocab when ids<s> is given, else M), ids<s>,
// row_scale<s> (fp32), col_scale<s> [K], w<s> [N, K], bias [N], mul [M, N]; out: out [M, N], pre [M, N].
int gemm_nt_entry(Request& r) {
  const int64_t es = elem_bytes(r), M = r.scalar("M"), N = r.scalar("N");
  fc::GemmNT p;
  p.nseg = static_cast<int>(r.scalar("nseg"));
  if (p.nseg < 1 || p.nseg > 2) throw std::runtime_error("nseg: 1 or 2");
  for (int s = 0; s < p.nseg; ++s) {
    const std::string k = std::to_string(s);
    fc::ASegment& g = p.seg[s];
    g.K = r.scalar("K" + k);
    g.ids = ids_of(r, "ids" + k, M);
    g.ids_int64 = r.scalar("ids64") != 0;
    g.vocab = r.scalar("vocab");
    g.lda = r.scalar("lda" + k);
    g.a = span(r, "a" + k, g.ids != nullptr ? g.vocab : M, g.K, g.lda, es);
    g.rs_stride = r.scalar("rs_stride" + k);
    g.row_scale = static_cast<const float*>(span(r, "row_scale" + k, M, 1, g.rs_stride, 4, false, true));
    g.col_scale = span(r, "col_scale" + k, 1, g.K, g.K, es, false, true);
    g.ldw = r.scalar("ldw" + k);
    g.w = span(r, "w" + k, N, g.K, g.ldw, es);
  }
  p.M = M;
  p.N = N;
  p.epi = static_cast<fc::Epilogue>(r.scalar("epi"));
  p.bias = span(r, "bias", 1, N, N, es, false, true);
  p.ldo = r.scalar("ldo");
  p.out = span(r, "out", M, N, p.ldo, es, true);
  p.ldp = r.scalar("ldp");
  p.pre = span(r, "pre", M, N, p.ldp, es, true, true);
  p.ldm = r.scalar("ldm");
  p.mul = span(r, "mul", M, N, p.ldm, es, false, true);
  fc::launch_gemm_nt(dtype_of(r), p, nullptr);
  return 0;
}
CUDAEMU_ENTRY("gemm_nt_kernel", gemm_nt_entry);

// scalars dtype, R, M, N, ldg, ldb, ldc, ids64, vocab, rs_stride; in: g [R, M], b (rows: vocab when ids is
// given, else R) [., N], ids, row_scale (fp32), col_scale [N]; out: c [M, N].
int gemm_tn_entry(Request& r) {
  const int64_t es = elem_bytes(r);
  fc::GemmTN p;
  p.R = r.scalar("R");
  p.M = r.scalar("M");
  p.N = r.scalar("N");
  p.ldg = r.scalar("ldg");
  p.g = span(r, "g", p.R, p.M, p.ldg, es);
  p.ids = ids_of(r, "ids", p.R);
  p.ids_int64 = r.scalar("ids64") != 0;
  p.vocab = r.scalar("vocab");
  p.ldb = r.scalar("ldb");
  p.b = span(r, "b", p.ids != nullptr ? p.vocab : p.R, p.N, p.ldb, es);
  p.rs_stride = r.scalar("rs_stride");
  p.row_scale = static_cast<const float*>(span(r, "row_scale", p.R, 1, p.rs_stride, 4, false, true));
  p.col_scale = span(r, "col_scale", 1, p.N, p.N, es, false, true);
  p.ldc = r.scalar("ldc");
  p.c = span(r, "c", p.M, p.N, p.ldc, es, true);
  fc::launch_gemm_tn(dtype_of(r), p, nullptr);
  return 0;
}
CUDAEMU_ENTRY("gemm_tn_kernel", gemm_tn_entry);

// scalars dtype, T, H, saved, real eps; in: x [T, H], w [H]; in/out: rstd [T] (fp32; read when saved, else
// written); out: y [T, H].
int rms_rows_entry(Request& r) {
  const int64_t es = elem_bytes(r), T = r.scalar("T"), H = r.scalar("H");
  const bool saved = r.scalar("saved") != 0;
  const void* x = span(r, "x", T, H, H, es);
  const void* w = span(r, "w", 1, H, H, es);
  void* y = span(r, "y", T, H, H, es, true);
  auto* rstd = static_cast<float*>(span(r, "rstd", T, 1, 1, 4, !saved));
  fc::launch_rms_rows(dtype_of(r), x, w, y, rstd, saved, T, H, static_cast<float>(r.real("eps")), nullptr);
  return 0;
}
CUDAEMU_ENTRY("rms_rows_kernel", rms_rows_entry);

// scalars dtype, T, H, lde, ids64, vocab, saved, real eps; in: h [T, H], embed [vocab, H] (ld lde), ids [T],
// norm_b, norm_a [H]; in/out: stats [T, 3] (fp32; read when saved, else written); out: x1 [T, H].
int griffin_norms_entry(Request& r) {
  const int64_t es = elem_bytes(r), T = r.scalar("T"), H = r.scalar("H"), vocab = r.scalar("vocab");
  const bool saved = r.scalar("saved") != 0;
  const int64_t lde = r.scalar("lde");
  const void* h = span(r, "h", T, H, H, es);
  const void* embed = span(r, "embed", vocab, H, lde, es);
  const void* ids = ids_of(r, "ids", T);
  const void* nb = span(r, "norm_b", 1, H, H, es);
  const void* na = span(r, "norm_a", 1, H, H, es);
  void* x1 = span(r, "x1", T, H, H, es, true);
  auto* stats = static_cast<float*>(span(r, "stats", T, 3, 3, 4, !saved));
  fc::launch_griffin_norms(dtype_of(r), h, embed, lde, ids, r.scalar("ids64") != 0, vocab, nb, na, x1, stats, saved, T,
                           H, static_cast<float>(r.real("eps")), nullptr);
  return 0;
}
CUDAEMU_ENTRY("griffin_norms_kernel", griffin_norms_entry);

// The per-block column partial sums [nblk, C, H] of a norm backward, as the caching allocator hands them out:
// stale (NaN), so a partial sum the kernel does not write reaches the result.
std::vector<float> partial_sums(int64_t T, int64_t C, int64_t H) {
  return std::vector<float>(static_cast<size_t>(fc::norm_backward_blocks(T) * C * H), std::nanf(""));
}

// The launch plan of a norm backward into the optional int64 output `nblk` (blocks = rows of the partial sums).
void report_blocks(Request& r, int64_t nblk) {
  if (void* out = span(r, "nblk", 1, 1, 1, 8, true, true)) *static_cast<int64_t*>(out) = nblk;
}

// scalars dtype, T, H; in: dout, dy, z [T, H], norm_w [H], rstd [T] (fp32); out: dz [T, H] and, optional,
// d_norm, d_bias [H] (column_sums_kernel over the partial sums), nblk [1] (int64: the blocks launched).
int fspad_norm_backward_entry(Request& r) {
  const int64_t es = elem_bytes(r), T = r.scalar("T"), H = r.scalar("H");
  const void* dout = span(r, "dout", T, H, H, es);
  const void* dy = span(r, "dy", T, H, H, es);
  const void* z = span(r, "z", T, H, H, es);
  const void* nw = span(r, "norm_w", 1, H, H, es);
  const auto* rstd = static_cast<const float*>(span(r, "rstd", T, 1, 1, 4));
  void* dz = span(r, "dz", T, H, H, es, true);
  void* outs[3] = {span(r, "d_norm", 1, H, H, es, true, true), span(r, "d_bias", 1, H, H, es, true, true), nullptr};
  std::vector<float> part = partial_sums(T, 2, H);
  const int64_t nblk = fc::norm_backward_blocks(T);
  fc::launch_fspad_norm_backward(dtype_of(r), dout, dy, z, nw, rstd, dz, part.data(), nblk, T, H, nullptr);
  report_blocks(r, nblk);
  if (outs[0] != nullptr || outs[1] != nullptr) {
    fc::launch_column_sums(dtype_of(r), part.data(), nblk, 2, H, outs, nullptr);
  }
  return 0;
}
CUDAEMU_ENTRY("fspad_norm_backward_kernel", fspad_norm_backward_entry);

// scalars dtype, T, H, ldx, lde, ids64, vocab; in: dout [T, H], dx1 and (optional) dx2 [T, H] (ld ldx), h [T, H],
// embed [vocab, H] (ld lde), ids [T], norm_b, norm_a [H], stats [T, 3] (fp32); out: dh [T, H] and, optional,
// d_norm_a, d_norm_b, d_bias [H] (column_sums_kernel over the partial sums), nblk [1] (int64: the blocks launched).
int griffin_norm_backward_entry(Request& r) {
  const int64_t es = elem_bytes(r), T = r.scalar("T"), H = r.scalar("H"), vocab = r.scalar("vocab");
  const int64_t ldx = r.scalar("ldx"), lde = r.scalar("lde");
  const void* dout = span(r, "dout", T, H, H, es);
  const void* dx1 = span(r, "dx1", T, H, ldx, es);
  const void* dx2 = span(r, "dx2", T, H, ldx, es, false, true);
  const void* h = span(r, "h", T, H, H, es);
  const void* embed = span(r, "embed", vocab, H, lde, es);
  const void* ids = ids_of(r, "ids", T);
  const void* nb = span(r, "norm_b", 1, H, H, es);
  const void* na = span(r, "norm_a", 1, H, H, es);
  const auto* stats = static_cast<const float*>(span(r, "stats", T, 3, 3, 4));
  void* dh = span(r, "dh", T, H, H, es, true);
  void* outs[3] = {span(r, "d_norm_a", 1, H, H, es, true, true), span(r, "d_norm_b", 1, H, H, es, true, true),
                   span(r, "d_bias", 1, H, H, es, true, true)};
  std::vector<float> part = partial_sums(T, 3, H);
  const int64_t nblk = fc::norm_backward_blocks(T);
  fc::launch_griffin_norm_backward(dtype_of(r), dout, dx1, dx2, ldx, h, embed, lde, ids, r.scalar("ids64") != 0, vocab,
                                   nb, na, stats, dh, part.data(), nblk, T, H, nullptr);
  report_blocks(r, nblk);
  if (outs[0] != nullptr || outs[1] != nullptr || outs[2] != nullptr) {
    fc::launch_column_sums(dtype_of(r), part.data(), nblk, 3, H, outs, nullptr);
  }
  return 0;
}
CUDAEMU_ENTRY("griffin_norm_backward_kernel", griffin_norm_backward_entry);

// scalars dtype, n; in: g [n], u [n] (optional: gated when given), da [n]; out: act, dg [n], du [n] (gated only).
int silu_backward_entry(Request& r) {
  const int64_t es = elem_bytes(r), n = r.scalar("n");
  const void* g = span(r, "g", 1, n, n, es);
  const void* u = span(r, "u", 1, n, n, es, false, true);
  const void* da = span(r, "da", 1, n, n, es);
  void* act = span(r, "act", 1, n, n, es, true);
  void* dg = span(r, "dg", 1, n, n, es, true);
  void* du = u != nullptr ? span(r, "du", 1, n, n, es, true) : nullptr;
  fc::launch_silu_backward(dtype_of(r), g, u, da, act, dg, du, n, nullptr);
  return 0;
}
CUDAEMU_ENTRY("silu_backward_kernel", silu_backward_entry);

}  // namespace
