// specdec::linear kernel for AVX-512 (F, BW, VL) + FMA + F16C, any weight dtype.
//
// Compiled for those extensions by the target pragma below (this TU alone; linear.cpp calls it only where cpuid
// says the CPU and the OS support them). 16 lanes per step, bf16 weights widened by a shift, fp16 by
// VCVTPH2PS, the tail of a row by a masked load; 4 weight rows x 6 rows of x per register tile (24
// accumulators + 4 weights of the 32 zmm registers). See linear_kernels.h for what this TU may include.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c"))), apply_to = function)
#else
// GCC 12's intrinsics pass an undefined vector as the unused pass-through operand of unmasked builtins, which
// -Wuninitialized then reports at every inlined use; nothing uninitialised is read.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")
#endif

#include <immintrin.h>

#include <cstdint>

#include "specdec/linear_kernels.h"
#include "specdec/linear_tile.h"

namespace specdec {
namespace {

struct Avx512 {
  using Acc = __m512;
  using XV = __m512;
  using WV = __m512;
  using XT = float;
  static constexpr int KW = 16, MR = 6, NR = 4;

  static const float* xrow(const LinearProblem& p, int64_t m) { return p.xf + m * p.x_row; }
  static Acc zero() { return _mm512_setzero_ps(); }
  static XV load_x(const float* x) { return _mm512_loadu_ps(x); }
  static Acc madd(Acc acc, XV x, WV w) { return _mm512_fmadd_ps(x, w, acc); }
  static Acc add(Acc a, Acc b) { return _mm512_add_ps(a, b); }

  template <LinearDtype D>
  static WV widen(__m256i h) {
    if constexpr (D == LinearDtype::f16) {
      return _mm512_cvtph_ps(h);
    } else {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
  }

  template <LinearDtype D>
  static WV load_w(const char* row, int64_t k) {
    if constexpr (D == LinearDtype::f32) {
      return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + k);
    } else {
      return widen<D>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * k)));
    }
  }

  template <LinearDtype D>
  static WV load_w_tail(const char* row, int64_t k, int64_t rem) {
    const __mmask16 mask = static_cast<__mmask16>((1u << rem) - 1u);
    if constexpr (D == LinearDtype::f32) {
      return _mm512_maskz_loadu_ps(mask, reinterpret_cast<const float*>(row) + k);
    } else {
      return widen<D>(_mm256_maskz_loadu_epi16(mask, row + 2 * k));
    }
  }

  static float hsum(Acc v) { return _mm512_reduce_add_ps(v); }
  static float half_to_float(uint16_t h) { return _cvtsh_ss(h); }
  static uint16_t float_to_half(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }
};

}  // namespace

void linear_rows_avx512(const LinearProblem& p, int64_t n0, int64_t n1) {
  linear_rows_for<Avx512>(p, n0, n1);
}

}  // namespace specdec

#if defined(__clang__)
#pragma clang attribute pop
#endif
