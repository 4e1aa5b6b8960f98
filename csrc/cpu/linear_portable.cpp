// specdec::linear kernel for any CPU: the same blocking as the vector paths over plain arrays of 8 floats
// (which the compiler vectorises for the baseline instruction set), with software fp16 conversions.
#include <c10/util/Half.h>

#include <cstdint>

#include "specdec/linear_kernels.h"
#include "specdec/linear_tile.h"

namespace specdec {
namespace {

struct Portable {
  static constexpr int KW = 8, MR = 4, NR = 4;
  struct Vec {
    float v[KW];
  };
  using Acc = Vec;
  using XV = Vec;
  using WV = Vec;
  using XT = float;

  static const float* xrow(const LinearProblem& p, int64_t m) { return p.xf + m * p.x_row; }
  static Acc zero() { return Vec{}; }
  static XV load_x(const float* x) {
    Vec r;
    for (int i = 0; i < KW; ++i) r.v[i] = x[i];
    return r;
  }
  static Acc madd(Acc acc, const XV& x, const WV& w) {
    for (int i = 0; i < KW; ++i) acc.v[i] += x.v[i] * w.v[i];
    return acc;
  }
  static Acc add(Acc a, const Acc& b) {
    for (int i = 0; i < KW; ++i) a.v[i] += b.v[i];
    return a;
  }

  template <LinearDtype D>
  static WV load_w_tail(const char* row, int64_t k, int64_t rem) {
    Vec r{};
    for (int64_t i = 0; i < rem; ++i) {
      if constexpr (D == LinearDtype::f32) {
        r.v[i] = reinterpret_cast<const float*>(row)[k + i];
      } else {
        r.v[i] = linear_load_scalar<Portable, D>(row, k + i);
      }
    }
    return r;
  }
  template <LinearDtype D>
  static WV load_w(const char* row, int64_t k) {
    return load_w_tail<D>(row, k, KW);
  }

  static float hsum(const Acc& a) {
    float s = 0.0f;
    for (int i = 0; i < KW; ++i) s += a.v[i];
    return s;
  }
  static float half_to_float(uint16_t h) { return c10::detail::fp16_ieee_to_fp32_value(h); }
  static uint16_t float_to_half(float f) { return c10::detail::fp16_ieee_from_fp32_value(f); }
};

}  // namespace

void linear_rows_portable(const LinearProblem& p, int64_t n0, int64_t n1) {
  linear_rows_for<Portable>(p, n0, n1);
}

}  // namespace specdec
