// specdec::linear kernel for bf16 weights on AVX-512 BF16 CPUs (Cooper Lake, Sapphire Rapids, Zen 4 and later).
//
// VDPBF16PS multiplies 32 bf16 pairs and adds them into 16 fp32 lanes in one instruction: x (bf16, as the op
// takes it) and the weight are read as they are, with no widening at all. The products of two bf16 are exact
// in fp32; the instruction adds each pair before accumulating (another summation order than the widening
// paths, within the same fp32 accuracy) and treats denormal inputs as zero. Other dtypes run the AVX-512
// kernel. Compiled for these extensions by the target pragma below; see linear_kernels.h for what this TU may
// include.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c"))), \
                             apply_to = function)
#else
// GCC 12's intrinsics pass an undefined vector as the unused pass-through operand of unmasked builtins, which
// -Wuninitialized then reports at every inlined use; nothing uninitialised is read.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")
#endif

#include <immintrin.h>

#include <cstdint>

#include "specdec/linear_kernels.h"
#include "specdec/linear_tile.h"

namespace specdec {
namespace {

struct Avx512Bf16 {
  using Acc = __m512;
  using XV = __m512i;
  using WV = __m512i;
  using XT = uint16_t;
  static constexpr int KW = 32, MR = 6, NR = 4;

  static const uint16_t* xrow(const LinearProblem& p, int64_t m) { return p.xh + m * p.x_row; }
  static Acc zero() { return _mm512_setzero_ps(); }
  static XV load_x(const uint16_t* x) { return _mm512_loadu_si512(x); }
  static Acc madd(Acc acc, XV x, WV w) { return _mm512_dpbf16_ps(acc, (__m512bh)x, (__m512bh)w); }
  static Acc add(Acc a, Acc b) { return _mm512_add_ps(a, b); }

  template <LinearDtype D>
  static WV load_w(const char* row, int64_t k) {
    static_assert(D == LinearDtype::bf16, "the AVX-512 BF16 kernel takes bf16 weights only");
    return _mm512_loadu_si512(row + 2 * k);
  }

  template <LinearDtype D>
  static WV load_w_tail(const char* row, int64_t k, int64_t rem) {
    static_assert(D == LinearDtype::bf16, "the AVX-512 BF16 kernel takes bf16 weights only");
    return _mm512_maskz_loadu_epi16(static_cast<__mmask32>((uint64_t{1} << rem) - 1u), row + 2 * k);
  }

  static float hsum(Acc v) { return _mm512_reduce_add_ps(v); }
  static float half_to_float(uint16_t h) { return _cvtsh_ss(h); }
  static uint16_t float_to_half(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }
};

}  // namespace

void linear_rows_avx512_bf16(const LinearProblem& p, int64_t n0, int64_t n1) {
  if (p.dtype == LinearDtype::bf16) {
    linear_rows_typed<Avx512Bf16, LinearDtype::bf16>(p, n0, n1);
  } else {
    linear_rows_avx512(p, n0, n1);
  }
}

}  // namespace specdec

#if defined(__clang__)
#pragma clang attribute pop
#endif
