// specdec::linear kernel for AVX2 + FMA + F16C (the AVX2-only CPUs: most laptops, many EPYC / Xeon servers).
//
// Compiled for those extensions by the target pragma below (this TU alone; linear.cpp calls it only where cpuid
// says the CPU has them). bf16 weights widen to fp32 by a shift of each 16-bit lane into the high half, fp16
// weights by VCVTPH2PS; 8 lanes per step, 3 weight rows x 4 rows of x per register tile (12 accumulators + 3
// weights + a temporary fit the 16 ymm registers; x is a memory operand of the FMA). See linear_kernels.h for what this
// TU may include.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
// GCC 12's intrinsics pass an undefined vector as the unused pass-through operand of unmasked builtins, which
// -Wuninitialized then reports at every inlined use; nothing uninitialised is read.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx2,fma,f16c")
#endif

#include <immintrin.h>

#include <cstdint>

#include "specdec/linear_kernels.h"
#include "specdec/linear_tile.h"

namespace specdec {
namespace {

struct Avx2 {
  using Acc = __m256;
  using XV = __m256;
  using WV = __m256;
  using XT = float;
  static constexpr int KW = 8, MR = 4, NR = 3;

  static const float* xrow(const LinearProblem& p, int64_t m) { return p.xf + m * p.x_row; }
  static Acc zero() { return _mm256_setzero_ps(); }
  static XV load_x(const float* x) { return _mm256_loadu_ps(x); }
  static Acc madd(Acc acc, XV x, WV w) { return _mm256_fmadd_ps(x, w, acc); }
  static Acc add(Acc a, Acc b) { return _mm256_add_ps(a, b); }

  template <LinearDtype D>
  static WV load_w(const char* row, int64_t k) {
    if constexpr (D == LinearDtype::f32) {
      return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + k);
    } else {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * k));
      if constexpr (D == LinearDtype::f16) {
        return _mm256_cvtph_ps(h);
      } else {
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
      }
    }
  }

  // No masked loads on AVX2 for 16-bit lanes: the rem < 8 last elements go through a zeroed buffer.
  template <LinearDtype D>
  static WV load_w_tail(const char* row, int64_t k, int64_t rem) {
    constexpr int64_t es = D == LinearDtype::f32 ? 4 : 2;
    alignas(32) char buf[32] = {};
    __builtin_memcpy(buf, row + k * es, static_cast<unsigned long>(rem * es));
    return load_w<D>(buf, 0);
  }

  static float hsum(Acc v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }

  static float half_to_float(uint16_t h) { return _cvtsh_ss(h); }
  static uint16_t float_to_half(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }
};

}  // namespace

void linear_rows_avx2(const LinearProblem& p, int64_t n0, int64_t n1) {
  linear_rows_for<Avx2>(p, n0, n1);
}

}  // namespace specdec

#if defined(__clang__)
#pragma clang attribute pop
#endif
