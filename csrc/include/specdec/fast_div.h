// Division of unsigned 32-bit integers by a divisor known before the launch, as a multiply-high and shifts
// (Granlund and Montgomery 1994, in the form libdivide uses). An integer `/` or `%` by a runtime divisor in a
// CUDA kernel is a long instruction sequence (64-bit: a subroutine call, around which ptxas spills live
// registers); this form is one multiply-high and two shifts, with the divisor's constants in the kernel
// parameters. Torch-free: the launchers compute the constants, the kernels and the CPU emulation divide.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SPECDEC_HOST_DEVICE __host__ __device__
#else
#define SPECDEC_HOST_DEVICE
#endif

namespace specdec {

// The constants of n / d. magic == 0: d is a power of two, n / d = n >> shift. Else with q = mulhi(magic, n):
// n / d = q >> shift, or, when add is set (d needs a 33-bit magic), (((n - q) >> 1) + q) >> shift.
struct FastDivU32 {
  uint32_t magic;
  int32_t shift;
  bool add;
};

// The constants of division by d (d >= 1; d = 0 is treated as 1).
inline FastDivU32 fast_div_u32(uint32_t d) {
  if (d <= 1) return {0, 0, false};
  int l = 31;
  while (((d >> l) & 1u) == 0) --l;  // floor(log2 d)
  if ((d & (d - 1)) == 0) return {0, l, false};
  // 2^(32 + l) / d < 2^32, since d > 2^l.
  const uint64_t num = uint64_t{1} << (32 + l);
  uint32_t m = static_cast<uint32_t>(num / d);
  const uint32_t rem = static_cast<uint32_t>(num % d);
  if (d - rem < (uint32_t{1} << l)) return {m + 1, l, false};
  // m + 1 is one bit short: use 2^(33 + l) / d + 1 less its top bit, and add n back (the `add` form).
  m += m;
  const uint32_t twice_rem = rem + rem;
  if (twice_rem >= d || twice_rem < rem) m += 1;
  return {m + 1, l, true};
}

SPECDEC_HOST_DEVICE inline uint32_t mulhi_u32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// n / d for the constants f = fast_div_u32(d).
SPECDEC_HOST_DEVICE inline uint32_t fast_div(uint32_t n, const FastDivU32& f) {
  if (f.magic == 0) return n >> f.shift;
  const uint32_t q = mulhi_u32(f.magic, n);
  return f.add ? (((n - q) >> 1) + q) >> f.shift : q >> f.shift;
}

}  // namespace specdec

#undef SPECDEC_HOST_DEVICE
