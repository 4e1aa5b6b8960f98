// The blocked loops of specdec::linear, shared by every ISA kernel (csrc/cpu/linear_<isa>.cpp) and specialised
// by a traits class T of the ISA (its vector types, loads, multiply-add and reductions).
//
// Everything here lives in an anonymous namespace on purpose: each ISA TU compiles its own copy for its own
// instruction set, and no copy can be picked by the linker for another TU (see linear_kernels.h).
//
// Blocking. The layers this serves are weight-bandwidth bound at small M (a bf16 [1536 x 576] weight is 1.7 MB
// per call, the inputs a few KB), so the loops are arranged for each weight element to be read from memory
// once per call: a tile of T::NR weight rows is loaded vector by vector and multiplied with T::MR rows of x at
// a time (NR x MR accumulators in registers); the next groups of MR rows of x re-read the same NR weight rows
// from L1. The dot products run along K in the weight's natural [N, K] layout, so nothing is prepacked.
//
// T must provide:
//   Acc, XV, WV              accumulator, x-vector and weight-vector types
//   XT                       element type of the packed x (float, or uint16_t for raw bf16)
//   KW, MR, NR               K elements per vector step, rows of x and of weight per register tile
//   xrow(p, m)               the packed row m of x
//   zero(), load_x(ptr), madd(acc, x, w), add(acc, acc), hsum(acc)
//   load_w<D>(row, k)        KW weight elements from element k of a weight row (bytes pointer)
//   load_w_tail<D>(row, k, rem)  the last rem < KW elements, zero beyond
//   half_to_float(bits), float_to_half(bits): scalar fp16 conversions (bias and output)
#pragma once

#include <cstdint>

#include "specdec/linear_kernels.h"

namespace specdec {
namespace {

// How far ahead of the loads the tile loop prefetches the weight: 8 KiB measured best among 1, 2, 8 and 32 KiB
// (AMD EPYC, one thread, from memory); the weight rows of the next few tiles.
constexpr int64_t kLinearPrefetchBytes = 8192;

inline float linear_bits_to_float(uint32_t u) {
  float f;
  __builtin_memcpy(&f, &u, sizeof f);
  return f;
}

inline float linear_bf16_to_float(uint16_t h) {
  return linear_bits_to_float(static_cast<uint32_t>(h) << 16);
}

// Round to nearest even, as torch rounds fp32 to bf16; a NaN stays a (quiet) NaN.
inline uint16_t linear_float_to_bf16(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

template <class T, LinearDtype D>
inline float linear_load_scalar(const void* base, int64_t i) {
  if constexpr (D == LinearDtype::f32) {
    return static_cast<const float*>(base)[i];
  } else if constexpr (D == LinearDtype::f16) {
    return T::half_to_float(static_cast<const uint16_t*>(base)[i]);
  } else {
    return linear_bf16_to_float(static_cast<const uint16_t*>(base)[i]);
  }
}

template <class T, LinearDtype D>
inline void linear_store_scalar(void* base, int64_t i, float v) {
  if constexpr (D == LinearDtype::f32) {
    static_cast<float*>(base)[i] = v;
  } else if constexpr (D == LinearDtype::f16) {
    static_cast<uint16_t*>(base)[i] = T::float_to_half(v);
  } else {
    static_cast<uint16_t*>(base)[i] = linear_float_to_bf16(v);
  }
}

// One register tile: rows m0..m0+MR of x against weight rows n0..n0+NR, written to out (+ bias).
template <class T, LinearDtype D, int MR, int NR>
inline void linear_micro(const LinearProblem& p, int64_t m0, int64_t n0) {
  using Acc = typename T::Acc;
  constexpr int64_t es = D == LinearDtype::f32 ? 4 : 2;
  const char* w[NR];
#pragma GCC unroll 8
  for (int j = 0; j < NR; ++j) w[j] = static_cast<const char*>(p.w) + (n0 + j) * p.w_row * es;
  const typename T::XT* x[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) x[i] = T::xrow(p, m0 + i);
  Acc acc[MR][NR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) acc[i][j] = T::zero();
  }
  const int64_t K = p.K;
  // The first group of rows of x reads the tile's weight from memory. The NR rows of a tile lie side by side,
  // so the weight is one contiguous block read tile after tile, but within a tile the loads run along NR rows at
  // once: NR short streams, which the hardware prefetchers pick up late (each is a new stream). So this group
  // prefetches kLinearPrefetchBytes ahead along the block itself, one sequential stream as fast as the loads
  // consume it (at M = 2-4 about twice the bandwidth of the earlier one-tile-ahead prefetch per row).
  const char* pf = w[0] + kLinearPrefetchBytes;
  constexpr int64_t step_bytes = NR * T::KW * es;
  int64_t k = 0;
  for (; k + T::KW <= K; k += T::KW) {
    if (m0 == 0) {
#pragma GCC unroll 8
      for (int64_t b = 0; b < step_bytes; b += 64) __builtin_prefetch(pf + k * NR * es + b, 0, 3);
    }
    typename T::WV wv[NR];
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) wv[j] = T::template load_w<D>(w[j], k);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const typename T::XV xv = T::load_x(x[i] + k);
#pragma GCC unroll 8
      for (int j = 0; j < NR; ++j) acc[i][j] = T::madd(acc[i][j], xv, wv[j]);
    }
  }
  if (k < K) {  // the packed x is zero-padded, so a whole vector of it may be read here
    typename T::WV wv[NR];
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) wv[j] = T::template load_w_tail<D>(w[j], k, K - k);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const typename T::XV xv = T::load_x(x[i] + k);
#pragma GCC unroll 8
      for (int j = 0; j < NR; ++j) acc[i][j] = T::madd(acc[i][j], xv, wv[j]);
    }
  }
  float bias[NR];
#pragma GCC unroll 8
  for (int j = 0; j < NR; ++j) bias[j] = p.bias ? linear_load_scalar<T, D>(p.bias, (n0 + j) * p.bias_stride) : 0.0f;
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      linear_store_scalar<T, D>(p.out, (m0 + i) * p.out_s0 + (n0 + j) * p.out_s1, T::hsum(acc[i][j]) + bias[j]);
    }
  }
}

// The last rest < MR rows of x, with a tile of exactly that many rows (R counts down to 1).
template <class T, LinearDtype D, int NR, int R>
inline void linear_rest_rows(const LinearProblem& p, int64_t m0, int64_t n0, int64_t rest) {
  if constexpr (R > 0) {
    if (rest == R) {
      linear_micro<T, D, R, NR>(p, m0, n0);
    } else {
      linear_rest_rows<T, D, NR, R - 1>(p, m0, n0, rest);
    }
  }
}

// Weight rows n0..n0+NR against every row of x, in the fewest groups of at most MR rows, of balanced sizes
// (M = 8 with MR = 6 as 4 + 4, not 6 + 2): every group re-widens the weight vectors, and a small group pays that
// for few multiply-adds.
template <class T, LinearDtype D, int NR>
inline void linear_weight_tile(const LinearProblem& p, int64_t n0) {
  const int64_t groups = (p.M + T::MR - 1) / T::MR, base = p.M / groups, larger = p.M % groups;
  int64_t m = 0;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t rows = base + (g < larger ? 1 : 0);
    if (rows == T::MR) {
      linear_micro<T, D, T::MR, NR>(p, m, n0);
    } else {
      linear_rest_rows<T, D, NR, T::MR - 1>(p, m, n0, rows);
    }
    m += rows;
  }
}

// One row of x (a plain decode step) is a matrix-vector product, and the weight is read row after row: the
// [N, K] weight is then one sequential stream, which the hardware prefetchers follow from start to end (a tile
// of several rows read side by side is several short streams, each detected anew: measured about 30% slower
// from memory). Four accumulators along K give four independent chains of multiply-adds.
template <class T, LinearDtype D>
inline void linear_gemv_row(const LinearProblem& p, int64_t n) {
  using Acc = typename T::Acc;
  constexpr int64_t es = D == LinearDtype::f32 ? 4 : 2;
  const char* w = static_cast<const char*>(p.w) + n * p.w_row * es;
  const typename T::XT* x = T::xrow(p, 0);
  Acc a0 = T::zero(), a1 = T::zero(), a2 = T::zero(), a3 = T::zero();
  const int64_t K = p.K;
  int64_t k = 0;
  for (; k + 4 * T::KW <= K; k += 4 * T::KW) {
    a0 = T::madd(a0, T::load_x(x + k), T::template load_w<D>(w, k));
    a1 = T::madd(a1, T::load_x(x + k + T::KW), T::template load_w<D>(w, k + T::KW));
    a2 = T::madd(a2, T::load_x(x + k + 2 * T::KW), T::template load_w<D>(w, k + 2 * T::KW));
    a3 = T::madd(a3, T::load_x(x + k + 3 * T::KW), T::template load_w<D>(w, k + 3 * T::KW));
  }
  for (; k + T::KW <= K; k += T::KW) a0 = T::madd(a0, T::load_x(x + k), T::template load_w<D>(w, k));
  if (k < K) a1 = T::madd(a1, T::load_x(x + k), T::template load_w_tail<D>(w, k, K - k));  // x is zero-padded
  const float bias = p.bias ? linear_load_scalar<T, D>(p.bias, n * p.bias_stride) : 0.0f;
  linear_store_scalar<T, D>(p.out, n * p.out_s1, T::hsum(T::add(T::add(a0, a1), T::add(a2, a3))) + bias);
}

template <class T, LinearDtype D>
void linear_rows_typed(const LinearProblem& p, int64_t n0, int64_t n1) {
  int64_t n = n0;
  if (p.M == 1) {
    for (; n < n1; ++n) linear_gemv_row<T, D>(p, n);
    return;
  }
  for (; n + T::NR <= n1; n += T::NR) linear_weight_tile<T, D, T::NR>(p, n);
  for (; n < n1; ++n) linear_weight_tile<T, D, 1>(p, n);
}

template <class T>
void linear_rows_for(const LinearProblem& p, int64_t n0, int64_t n1) {
  switch (p.dtype) {
    case LinearDtype::f32:
      linear_rows_typed<T, LinearDtype::f32>(p, n0, n1);
      break;
    case LinearDtype::f16:
      linear_rows_typed<T, LinearDtype::f16>(p, n0, n1);
      break;
    case LinearDtype::bf16:
      linear_rows_typed<T, LinearDtype::bf16>(p, n0, n1);
      break;
  }
}

}  // namespace
}  // namespace specdec
