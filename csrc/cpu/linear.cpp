// C++ CPU kernel of specdec::linear: out = x @ weight^T (+ bias) for small M, fp32 accumulation.
//
// This TU checks the arguments, packs x, splits the weight rows across threads and calls the kernel of the
// instruction-set path chosen at load by cpuid (csrc/cpu/linear_<isa>.cpp, each compiled for its own ISA; see
// linear_kernels.h). Rows of x are taken kLinearMaxRows at a time, so every weight element loaded serves up
// to 64 rows; the weight is read once per 64 rows of x, which is what the small-M (decode, tree verify)
// layers are bound by.
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "specdec/linear_cpu.h"
#include "specdec/linear_isa.h"
#include "specdec/linear_kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace specdec {
namespace {

constexpr const char* kIsaNames[kLinearIsaCount] = {"portable", "avx2", "avx512", "avx512_bf16"};
using RowsFn = void (*)(const LinearProblem&, int64_t, int64_t);
constexpr RowsFn kIsaKernels[kLinearIsaCount] = {linear_rows_portable, linear_rows_avx2, linear_rows_avx512,
                                                 linear_rows_avx512_bf16};
// Thread chunks start at multiples of this many weight rows: a multiple of every path's tile (T::NR = 3 or 4).
constexpr int64_t kRowTile = 12;
// Weight elements per thread chunk at least: below that, waking the other thread costs more than it saves.
constexpr int64_t kGrainElements = 32768;

// Each bit says one path is supported; cpuid and XGETBV (the OS must save the AVX / AVX-512 registers).
unsigned detect_isas() {
  unsigned ok = 1u << static_cast<int>(LinearIsa::portable);
#if defined(__x86_64__) || defined(__i386__)
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return ok;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28), f16c = c & (1u << 29);
  if (!(osxsave && avx)) return ok;
  unsigned xlo, xhi;
  __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
  const bool os_avx = (xlo & 0x6u) == 0x6u, os_avx512 = (xlo & 0xe6u) == 0xe6u;
  if (__get_cpuid_max(0, nullptr) < 7) return ok;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = b & (1u << 5), avx512f = b & (1u << 16), avx512bw = b & (1u << 30), avx512vl = b & (1u << 31);
  __cpuid_count(7, 1, a, b, c, d);
  const bool avx512bf16 = a & (1u << 5);
  const bool has_avx2 = os_avx && avx2 && fma && f16c;
  const bool has_avx512 = has_avx2 && os_avx512 && avx512f && avx512bw && avx512vl;
  if (has_avx2) ok |= 1u << static_cast<int>(LinearIsa::avx2);
  if (has_avx512) ok |= 1u << static_cast<int>(LinearIsa::avx512);
  if (has_avx512 && avx512bf16) ok |= 1u << static_cast<int>(LinearIsa::avx512_bf16);
#endif
  return ok;
}

const unsigned kSupported = detect_isas();

int best_isa() {
  for (int i = kLinearIsaCount - 1; i > 0; --i) {
    if (kSupported & (1u << i)) return i;
  }
  return 0;
}

std::atomic<int> g_isa{best_isa()};
// Per LinearDtype: products of at most this many rows take the kernel in linear_product_out (0: never).
std::atomic<int64_t> g_small_rows[3] = {{0}, {0}, {0}};

LinearDtype linear_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return LinearDtype::f32;
    case at::kHalf:
      return LinearDtype::f16;
    case at::kBFloat16:
      return LinearDtype::bf16;
    default:
      TORCH_CHECK(false, "specdec::linear (CPU kernel): expected float32, float16 or bfloat16 tensors, got ", t);
  }
}

void check_linear_args(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                       const at::Tensor& out) {
  constexpr const char* op = "specdec::linear (CPU kernel)";
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D [M, K], got shape ", x.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == x.size(1), op, ": weight must be [N, K] with K = ", x.size(1),
              " (x's last dimension), got shape ", weight.sizes());
  TORCH_CHECK(weight.size(1) <= 1 || weight.stride(1) == 1, op, ": weight must have unit stride along K, got strides ",
              weight.strides());
  TORCH_CHECK(out.dim() == 2 && out.size(0) == x.size(0) && out.size(1) == weight.size(0), op,
              ": out must be [M, N] = [", x.size(0), ", ", weight.size(0), "], got shape ", out.sizes());
  for (const at::Tensor* t : {&x, &weight, &out}) {
    TORCH_CHECK(t->device().is_cpu(), op, ": expected CPU tensors, got one on ", t->device());
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), op, ": x, weight, bias and out must share one dtype, got ",
                x.scalar_type(), " and ", t->scalar_type());
  }
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must be [N] with N = ", weight.size(0),
                ", got shape ", bias->sizes());
    TORCH_CHECK(bias->device().is_cpu(), op, ": expected CPU tensors, got bias on ", bias->device());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type(), op, ": x, weight, bias and out must share one dtype, got ",
                x.scalar_type(), " and ", bias->scalar_type());
  }
  linear_dtype(x.scalar_type());
}

template <class In, class Out>
void widen_row(const In* src, int64_t stride, int64_t K, Out* dst) {
  for (int64_t k = 0; k < K; ++k) dst[k] = static_cast<Out>(static_cast<float>(src[k * stride]));
}

// Rows m0..m0+rows of x, as the kernel reads them: fp32 (or raw bf16 when `raw_bf16`), rows x_row apart and
// zero-padded to it. x is used in place when it needs neither (the right type, unit stride, K a multiple of the
// padding: no row has a tail).
template <class Out>
const Out* pack_rows(const at::Tensor& x, int64_t m0, int64_t rows, bool raw_bf16, std::vector<Out>& buf,
                     int64_t& x_row) {
  const int64_t K = x.size(1), s0 = x.stride(0), s1 = x.stride(1);
  const bool same_type = raw_bf16 || x.scalar_type() == at::kFloat;
  if (same_type && (s1 == 1 || K == 1) && K % kLinearKAlign == 0) {
    x_row = s0;
    return static_cast<const Out*>(x.const_data_ptr()) + m0 * s0;
  }
  x_row = (K + kLinearKAlign - 1) / kLinearKAlign * kLinearKAlign;
  buf.assign(static_cast<size_t>(rows * x_row), Out{});
  for (int64_t m = 0; m < rows; ++m) {
    Out* dst = buf.data() + m * x_row;
    const int64_t base = (m0 + m) * s0;
    if (raw_bf16) {
      const uint16_t* src = static_cast<const uint16_t*>(x.const_data_ptr());
      for (int64_t k = 0; k < K; ++k) dst[k] = static_cast<Out>(src[base + k * s1]);
    } else if (x.scalar_type() == at::kFloat) {
      widen_row(x.const_data_ptr<float>() + base, s1, K, dst);
    } else if (x.scalar_type() == at::kHalf) {
      widen_row(x.const_data_ptr<at::Half>() + base, s1, K, dst);
    } else {
      widen_row(x.const_data_ptr<at::BFloat16>() + base, s1, K, dst);
    }
  }
  return buf.data();
}

void linear_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, at::Tensor& out) {
  check_linear_args(x, weight, bias, out);
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  if (M == 0 || N == 0) return;
  if (K == 0) {  // an empty sum: the bias, or zero
    if (bias.has_value()) {
      out.copy_(bias->unsqueeze(0).expand({M, N}));
    } else {
      out.zero_();
    }
    return;
  }
  const int isa = g_isa.load(std::memory_order_relaxed);
  const LinearDtype dtype = linear_dtype(x.scalar_type());
  const bool raw_bf16 = isa == static_cast<int>(LinearIsa::avx512_bf16) && dtype == LinearDtype::bf16;
  const RowsFn rows_fn = kIsaKernels[isa];
  // Reused between calls: a fresh allocation of this size would be fresh pages (page faults) every call.
  thread_local std::vector<float> xf_buf;
  thread_local std::vector<uint16_t> xh_buf;
  const int64_t es = static_cast<int64_t>(x.element_size());
  const int64_t tiles = (N + kRowTile - 1) / kRowTile;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / (kRowTile * K));
  for (int64_t m0 = 0; m0 < M; m0 += kLinearMaxRows) {
    const int64_t rows = std::min(kLinearMaxRows, M - m0);
    LinearProblem p{};
    p.M = rows;
    p.N = N;
    p.K = K;
    p.dtype = dtype;
    p.w = weight.const_data_ptr();
    p.w_row = weight.stride(0);
    p.bias = bias.has_value() ? bias->const_data_ptr() : nullptr;
    p.bias_stride = bias.has_value() ? bias->stride(0) : 0;
    if (raw_bf16) {
      p.xh = pack_rows<uint16_t>(x, m0, rows, true, xh_buf, p.x_row);
    } else {
      p.xf = pack_rows<float>(x, m0, rows, false, xf_buf, p.x_row);
    }
    p.out = static_cast<char*>(out.data_ptr()) + m0 * out.stride(0) * es;
    p.out_s0 = out.stride(0);
    p.out_s1 = out.stride(1);
    at::parallel_for(0, tiles, grain,
                     [&](int64_t t0, int64_t t1) { rows_fn(p, t0 * kRowTile, std::min(N, t1 * kRowTile)); });
  }
}

}  // namespace

at::Tensor& linear_product_out(at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual) {
  const at::ScalarType t = x.scalar_type();
  const int dtype = t == at::kFloat ? 0 : t == at::kHalf ? 1 : t == at::kBFloat16 ? 2 : -1;
  TORCH_CHECK(!(bias.has_value() && residual.has_value()),
              "linear_product_out: a bias and a residual together are not supported (their rounding order)");
  // The kernel writes out while it reads x, and adds the residual afterwards: any overlap goes to ATen.
  const auto overlaps = [&](const at::Tensor& t) { return at::get_overlap_status(out, t) != at::MemOverlapStatus::No; };
  const bool kernel = dtype >= 0 && x.size(0) <= g_small_rows[dtype].load(std::memory_order_relaxed) &&
                      (weight.size(1) <= 1 || weight.stride(1) == 1) && !overlaps(x) &&
                      !(residual.has_value() && overlaps(*residual));
  if (!kernel) {
    if (residual.has_value()) {
      at::addmm_out(out, *residual, x, weight.t());
    } else if (bias.has_value()) {
      at::addmm_out(out, *bias, x, weight.t());
    } else {
      at::mm_out(out, x, weight.t());
    }
    return out;
  }
  linear_cpu(x, weight, bias, out);
  if (residual.has_value()) out.add_(*residual);
  return out;
}

at::Tensor linear_product(const at::Tensor& x, const at::Tensor& weight) {
  at::Tensor out = at::empty({x.size(0), weight.size(0)}, x.options());
  return linear_product_out(out, x, weight);
}

const char* linear_isa_name(int isa) {
  return isa >= 0 && isa < kLinearIsaCount ? kIsaNames[isa] : nullptr;
}

bool linear_isa_supported(int isa) {
  return isa >= 0 && isa < kLinearIsaCount && (kSupported & (1u << isa));
}

int linear_isa_current() {
  return g_isa.load(std::memory_order_relaxed);
}

bool linear_isa_set(int isa) {
  if (!linear_isa_supported(isa)) return false;
  g_isa.store(isa, std::memory_order_relaxed);
  return true;
}

int64_t linear_small_product_rows(int dtype) {
  return dtype >= 0 && dtype < 3 ? g_small_rows[dtype].load(std::memory_order_relaxed) : -1;
}

int64_t linear_set_small_product_rows(int dtype, int64_t rows) {
  if (dtype < 0 || dtype >= 3) return -1;
  return g_small_rows[dtype].exchange(std::max<int64_t>(0, rows), std::memory_order_relaxed);
}

TORCH_LIBRARY_IMPL(specdec, CPU, m) {
  m.impl("linear", &linear_cpu);
}

}  // namespace specdec
