// The plain interface between csrc/cpu/linear.cpp (torch-facing: checks, packing, threads, dispatch) and the
// ISA kernels of specdec::linear (csrc/cpu/linear_<isa>.cpp).
//
// Each ISA kernel is its own translation unit compiled for its own instruction set (`#pragma GCC target` at
// its top). Such a TU must not contain a definition with external linkage that another TU could also define
// (an inline function of torch, c10 or the standard library): the linker keeps one copy of those, and the
// AVX-512 copy would then run on every CPU. So the ISA TUs include only this header, <cstdint>, <cstring>,
// <immintrin.h> and linear_tile.h (everything in an anonymous namespace), and export one function each.
#pragma once

#include <cstdint>

namespace specdec {

enum class LinearDtype : int { f32 = 0, f16 = 1, bf16 = 2 };

// The instruction-set paths, in order of preference; the names are those of SPECDEC_LINEAR_ISA.
enum class LinearIsa : int { portable = 0, avx2 = 1, avx512 = 2, avx512_bf16 = 3 };
inline constexpr int kLinearIsaCount = 4;

// Rows of x packed per block: every weight row loaded is used for up to this many rows of x.
inline constexpr int64_t kLinearMaxRows = 64;
// The packed x rows are zero-padded to a multiple of this many elements (a whole vector of any path).
inline constexpr int64_t kLinearKAlign = 32;

struct LinearProblem {
  int64_t M, N, K;      // this block: M <= kLinearMaxRows rows of x
  LinearDtype dtype;    // of weight, bias and out
  const void* w;        // weight [N, K], unit stride along K
  int64_t w_row;        // row stride of weight, in elements
  const void* bias;     // [N] or nullptr
  int64_t bias_stride;  // in elements
  // x as fp32 (the paths that widen the weight) or as raw bf16 (the AVX-512 BF16 path for bf16 weights), rows
  // x_row elements apart. Unless K is a multiple of kLinearKAlign, rows are packed and zero-padded to a multiple
  // of it, so that the tail of a row can be read as a whole vector.
  const float* xf;
  const uint16_t* xh;
  int64_t x_row;
  void* out;               // [M, N]
  int64_t out_s0, out_s1;  // strides of out, in elements
};

// out[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]) for every m < M and n0 <= n < n1, accumulated in fp32.
void linear_rows_portable(const LinearProblem& p, int64_t n0, int64_t n1);
void linear_rows_avx2(const LinearProblem& p, int64_t n0, int64_t n1);
void linear_rows_avx512(const LinearProblem& p, int64_t n0, int64_t n1);
// bf16 weights only (the dot products of VDPBF16PS); the other dtypes take linear_rows_avx512.
void linear_rows_avx512_bf16(const LinearProblem& p, int64_t n0, int64_t n1);

}  // namespace specdec
