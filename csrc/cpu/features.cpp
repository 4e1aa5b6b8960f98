// CPU kernels of the FSPAD / GRIFFIN feature-sampling blocks (specdec::fspad_feature_sampling,
// fspad_feature_sampling_backward, griffin_token_fusion, griffin_token_fusion_backward; math in
// specdec_kernels/reference/features.py). Each kernel <op>_cpu implements specdec::<op>.
//
// The forward's products go to specdec::linear's kernel where it was measured faster than ATen's GEMM for their
// size (a draft step's few rows on a CPU without native bf16, where ATen's bf16 GEMM runs row by row), else to
// ATen's (csrc/include/specdec/linear_cpu.h); the backward's (training: thousands of rows) always to ATen's.
// The elementwise SiLU and gating product go to ATen's vectorised kernels; RMSNorm with its statistics and
// the backward's norm and column reductions are one fused pass over the rows each, accumulating in fp32
// (fp64 for fp64 inputs). The forward concatenates [e; f] (and GRIFFIN's [x1; x2]) into one [T, 2H]
// operand for a single GEMM with the whole W_fc (W_u): measured at decode sizes (T <= 60, bf16, one
// thread), two GEMMs over the column halves of the weight cost 30-40 us more per product than the copy of
// T x 2H activations saves. The embedding rows are gathered once (index_select) since a CPU GEMM needs a
// dense operand; on the GPU paths the gather happens inside the GEMM.
//
// Every op first checks its arguments (csrc/include/specdec/features_checks.h, shared with the CUDA kernels:
// same messages) and the token ids' range, since the row kernels below index raw pointers: a direct
// torch.ops.specdec.* call with a short weight, a wrong dtype or a small buffer fails cleanly.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "specdec/features_checks.h"
#include "specdec/linear_cpu.h"

#include <cmath>
#include <optional>
#include <vector>

namespace specdec {
namespace {

using at::Tensor;
template <typename T>
using acc_t = at::opmath_type<T>;  // float for half/bfloat16/float, double for double

constexpr int64_t kRowGrain = 16;

template <typename A>
inline A rsqrt_mean_sq(const A sumsq, int64_t H, double eps) {
  return A(1) / std::sqrt(sumsq / A(H) + A(eps));
}

template <typename A>
inline A sigmoid(A x) {
  return A(1) / (A(1) + std::exp(-x));
}

// y = w * cast(x * rstd) per row (Llama's rounding order), rstd written to rstd_out[t * stat_stride].
template <typename scalar_t>
void rms_norm_rows(const scalar_t* x, const scalar_t* w, scalar_t* y, acc_t<scalar_t>* rstd_out, int64_t stat_stride,
                   int64_t T, int64_t H, double eps) {
  using A = acc_t<scalar_t>;
  at::parallel_for(0, T, kRowGrain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const scalar_t* xr = x + t * H;
      A ss = 0;
      for (int64_t k = 0; k < H; ++k) ss += A(xr[k]) * A(xr[k]);
      const A r = rsqrt_mean_sq(ss, H, eps);
      if (rstd_out != nullptr) rstd_out[t * stat_stride] = r;
      if (y != nullptr) {
        scalar_t* yr = y + t * H;
        for (int64_t k = 0; k < H; ++k) yr[k] = scalar_t(A(w[k]) * A(scalar_t(A(xr[k]) * r)));
      }
    }
  });
}

// y = w * cast(x * rstd) per row from a saved rstd.
template <typename scalar_t>
void rms_apply_rows(const scalar_t* x, const scalar_t* w, const acc_t<scalar_t>* rstd, int64_t stat_stride, scalar_t* y,
                    int64_t T, int64_t H) {
  using A = acc_t<scalar_t>;
  at::parallel_for(0, T, kRowGrain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const A r = rstd[t * stat_stride];
      for (int64_t k = 0; k < H; ++k) y[t * H + k] = scalar_t(A(w[k]) * A(scalar_t(A(x[t * H + k]) * r)));
    }
  });
}

// RMSNorm backward through y = w * (x * rstd): dx = rstd * (w*dy - xh * mean(w*dy*xh)), xh = x * rstd.
// dx_acc (fp32/fp64) is *added to* when `accumulate`, else overwritten.
template <typename scalar_t, typename DY>
void rms_backward_rows(const DY* dy, const scalar_t* x, const scalar_t* w, const acc_t<scalar_t>* rstd,
                       int64_t stat_stride, acc_t<scalar_t>* dx, int64_t T, int64_t H) {
  using A = acc_t<scalar_t>;
  at::parallel_for(0, T, kRowGrain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const A r = rstd[t * stat_stride];
      A dot = 0;
      for (int64_t k = 0; k < H; ++k) dot += A(w[k]) * A(dy[t * H + k]) * A(x[t * H + k]) * r;
      const A m = dot / A(H);
      for (int64_t k = 0; k < H; ++k) {
        const A xh = A(x[t * H + k]) * r;
        dx[t * H + k] += r * (A(w[k]) * A(dy[t * H + k]) - xh * m);
      }
    }
  });
}

// dw[k] (+)= sum_t dy[t, k] * x[t, k] * rstd[t]: the norm weight's gradient, parallel over columns.
template <typename scalar_t, typename DY>
void rms_weight_grad(const DY* dy, const scalar_t* x, const acc_t<scalar_t>* rstd, int64_t stat_stride,
                     acc_t<scalar_t>* dw, int64_t T, int64_t H) {
  using A = acc_t<scalar_t>;
  at::parallel_for(0, H, 64, [&](int64_t k0, int64_t k1) {
    for (int64_t t = 0; t < T; ++t) {
      const A r = rstd[t * stat_stride];
      for (int64_t k = k0; k < k1; ++k) dw[k] += A(dy[t * H + k]) * A(x[t * H + k]) * r;
    }
  });
}

// The schemas' optional outputs (Tensor(a!)?) arrive as const optionals; the tensor itself is mutable.
inline Tensor& mut(const std::optional<Tensor>& t) {
  return const_cast<Tensor&>(*t);
}

// e = embed[ids]. The ids are range-checked first (reading them costs no synchronisation on the CPU): a
// direct torch.ops call gets a message naming the bad id, where the CUDA kernels clamp instead.
Tensor gather_rows(const char* op, const Tensor& embed, const Tensor& ids) {
  const int64_t V = embed.size(0), T = ids.numel();
  AT_DISPATCH_INDEX_TYPES(ids.scalar_type(), "features_check_ids_cpu", [&] {
    const index_t* p = ids.const_data_ptr<index_t>();
    for (int64_t t = 0; t < T; ++t)
      TORCH_CHECK_INDEX(p[t] >= 0 && p[t] < V, op, ": token_ids must be in [0, ", V,
                        ") (the rows of embed_weight), got ", p[t], " at position ", t);
  });
  return at::index_select(embed, 0, ids);
}

// z = W_fc [e; f] (+ b), written into z: one GEMM over the concatenated rows (see the header).
void fc_forward(const Tensor& e, const Tensor& f, const Tensor& fc_weight, const std::optional<Tensor>& bias,
                Tensor& z) {
  linear_product_out(z, at::cat({e, f}, 1), fc_weight, bias);
}

// Gradients of z = W_fc [e; f] + b from dz_acc (fp32/fp64): the bias sums it unrounded, the GEMMs take it
// rounded to the inputs' dtype.
void fc_backward(const Tensor& dz_acc, const Tensor& e, const Tensor& f, const Tensor& fc_weight,
                 const std::optional<Tensor>& d_features, const std::optional<Tensor>& d_fc_weight,
                 const std::optional<Tensor>& d_fc_bias) {
  const int64_t H = f.size(1);
  const Tensor dz = dz_acc.to(f.scalar_type());
  if (d_fc_weight.has_value()) {
    d_fc_weight->narrow(1, 0, H).copy_(at::mm(dz.t(), e));
    d_fc_weight->narrow(1, H, H).copy_(at::mm(dz.t(), f));
  }
  if (d_fc_bias.has_value()) d_fc_bias->copy_(at::sum(dz_acc, {0}));
  if (d_features.has_value()) at::mm_out(mut(d_features), dz, fc_weight.narrow(1, H, H));
}

// ---------------------------------------------------------------------------------------------------
// FSPAD

void fspad_feature_sampling_cpu(const Tensor& features, const Tensor& token_ids, const Tensor& embed_weight,
                                const Tensor& fc_weight, const std::optional<Tensor>& fc_bias,
                                const Tensor& norm_weight, const Tensor& gate_weight, const Tensor& up_weight,
                                const Tensor& down_weight, double eps, Tensor& out, Tensor& z, Tensor& rstd,
                                const std::optional<Tensor>& gate, const std::optional<Tensor>& up) {
  constexpr const char* op = "fspad_feature_sampling";
  check_fspad_feature_sampling(op, kCpuFeatureKernels, features, token_ids, embed_weight, fc_weight, fc_bias,
                               norm_weight, gate_weight, up_weight, down_weight, eps, out, z, rstd, gate, up);
  const int64_t T = features.size(0), H = features.size(1);
  const Tensor e = gather_rows(op, embed_weight, token_ids);
  fc_forward(e, features, fc_weight, fc_bias, z);
  Tensor y = at::empty_like(z);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "fspad_feature_sampling_cpu", [&] {
    rms_norm_rows<scalar_t>(z.const_data_ptr<scalar_t>(), norm_weight.const_data_ptr<scalar_t>(),
                            y.mutable_data_ptr<scalar_t>(), rstd.mutable_data_ptr<acc_t<scalar_t>>(), 1, T, H, eps);
  });
  Tensor g = gate.has_value() ? linear_product_out(mut(gate), e, gate_weight) : linear_product(e, gate_weight);
  Tensor u = up.has_value() ? linear_product_out(mut(up), y, up_weight) : linear_product(y, up_weight);
  // act = silu(g) * u, rounded after each op like the reference (vectorised ATen kernels).
  Tensor act = at::silu(g).mul_(u);
  linear_product_out(out, act, down_weight, std::nullopt, z);
}

void fspad_feature_sampling_backward_cpu(
    const Tensor& grad_out, const Tensor& features, const Tensor& token_ids, const Tensor& embed_weight,
    const Tensor& fc_weight, const std::optional<Tensor>& fc_bias, const Tensor& norm_weight, const Tensor& gate_weight,
    const Tensor& up_weight, const Tensor& down_weight, double eps, const Tensor& z, const Tensor& rstd,
    const Tensor& gate, const Tensor& up, const std::optional<Tensor>& d_features,
    const std::optional<Tensor>& d_fc_weight, const std::optional<Tensor>& d_fc_bias,
    const std::optional<Tensor>& d_norm_weight, const std::optional<Tensor>& d_gate_weight,
    const std::optional<Tensor>& d_up_weight, const std::optional<Tensor>& d_down_weight) {
  (void)eps;  // backward reads the saved rstd
  constexpr const char* op = "fspad_feature_sampling_backward";
  check_fspad_feature_sampling_backward(op, kCpuFeatureKernels, grad_out, features, token_ids, embed_weight, fc_weight,
                                        fc_bias, norm_weight, gate_weight, up_weight, down_weight, z, rstd, gate, up,
                                        d_features, d_fc_weight, d_fc_bias, d_norm_weight, d_gate_weight, d_up_weight,
                                        d_down_weight);
  const int64_t T = features.size(0), H = features.size(1);
  const Tensor e = gather_rows(op, embed_weight, token_ids);
  const Tensor da = at::mm(grad_out, down_weight);  // [T, I]
  Tensor act = at::empty_like(gate), dg = at::empty_like(gate), du = at::empty_like(up);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "fspad_act_backward_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* gp = gate.const_data_ptr<scalar_t>();
    const scalar_t* upp = up.const_data_ptr<scalar_t>();
    const scalar_t* dap = da.const_data_ptr<scalar_t>();
    scalar_t* ap = act.mutable_data_ptr<scalar_t>();
    scalar_t* dgp = dg.mutable_data_ptr<scalar_t>();
    scalar_t* dup = du.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, act.numel(), 4096, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const A x = A(gp[i]), s = sigmoid(x), silu = x * s, u = A(upp[i]), d = A(dap[i]);
        ap[i] = scalar_t(A(scalar_t(silu)) * u);  // rounded like the forward: silu(g), then * u
        dgp[i] = scalar_t(d * u * s * (A(1) + x * (A(1) - s)));
        dup[i] = scalar_t(d * silu);
      }
    });
  });
  if (d_down_weight.has_value()) at::mm_out(mut(d_down_weight), grad_out.t(), act);
  if (d_gate_weight.has_value()) at::mm_out(mut(d_gate_weight), dg.t(), e);
  if (d_up_weight.has_value()) {
    Tensor y = at::empty_like(z);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "fspad_norm_apply_cpu", [&] {
      rms_apply_rows<scalar_t>(z.const_data_ptr<scalar_t>(), norm_weight.const_data_ptr<scalar_t>(),
                               rstd.const_data_ptr<acc_t<scalar_t>>(), 1, y.mutable_data_ptr<scalar_t>(), T, H);
    });
    at::mm_out(mut(d_up_weight), du.t(), y);
  }
  const bool need_dz = d_features.has_value() || d_fc_weight.has_value() || d_fc_bias.has_value();
  if (!need_dz && !d_norm_weight.has_value()) return;
  const Tensor dy = at::mm(du, up_weight);  // [T, H]
  const auto acc = at::toOpMathType(z.scalar_type());
  // dz = grad_out + RMSNorm backward, accumulated in fp32 (a copy: grad_out itself is never written).
  Tensor dz = grad_out.to(acc, /*non_blocking=*/false, /*copy=*/true);
  Tensor dnw = at::zeros({H}, z.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "fspad_norm_backward_cpu", [&] {
    using A = acc_t<scalar_t>;
    const A* r = rstd.const_data_ptr<A>();
    if (need_dz)
      rms_backward_rows<scalar_t, scalar_t>(dy.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(),
                                            norm_weight.const_data_ptr<scalar_t>(), r, 1, dz.mutable_data_ptr<A>(), T,
                                            H);
    if (d_norm_weight.has_value())
      rms_weight_grad<scalar_t, scalar_t>(dy.const_data_ptr<scalar_t>(), z.const_data_ptr<scalar_t>(), r, 1,
                                          dnw.mutable_data_ptr<A>(), T, H);
  });
  if (d_norm_weight.has_value()) d_norm_weight->copy_(dnw);
  if (need_dz) fc_backward(dz, e, features, fc_weight, d_features, d_fc_weight, d_fc_bias);
}

// ---------------------------------------------------------------------------------------------------
// GRIFFIN (stats[:, 0] = rstd(h), stats[:, 1] = rstd(N_b(h)), stats[:, 2] = rstd(e))

// x1 = N_a(N_b(h)) and x2 = N_a(e) from the saved statistics; yb = N_b(h) when wanted.
template <typename scalar_t>
void griffin_norms(const Tensor& h, const Tensor& e, const Tensor& nb, const Tensor& na, const Tensor& stats,
                   Tensor& yb, Tensor& x1, Tensor& x2) {
  const int64_t T = h.size(0), H = h.size(1);
  const acc_t<scalar_t>* s = stats.const_data_ptr<acc_t<scalar_t>>();
  rms_apply_rows<scalar_t>(h.const_data_ptr<scalar_t>(), nb.const_data_ptr<scalar_t>(), s + 0, 3,
                           yb.mutable_data_ptr<scalar_t>(), T, H);
  rms_apply_rows<scalar_t>(yb.const_data_ptr<scalar_t>(), na.const_data_ptr<scalar_t>(), s + 1, 3,
                           x1.mutable_data_ptr<scalar_t>(), T, H);
  rms_apply_rows<scalar_t>(e.const_data_ptr<scalar_t>(), na.const_data_ptr<scalar_t>(), s + 2, 3,
                           x2.mutable_data_ptr<scalar_t>(), T, H);
}

void griffin_token_fusion_cpu(const Tensor& features, const Tensor& token_ids, const Tensor& embed_weight,
                              const Tensor& fc_weight, const std::optional<Tensor>& fc_bias,
                              const Tensor& norm_b_weight, const Tensor& norm_a_weight, const Tensor& up_weight,
                              const Tensor& down_weight, double eps, Tensor& out, Tensor& h, Tensor& stats,
                              const std::optional<Tensor>& pre_act) {
  constexpr const char* op = "griffin_token_fusion";
  check_griffin_token_fusion(op, kCpuFeatureKernels, features, token_ids, embed_weight, fc_weight, fc_bias,
                             norm_b_weight, norm_a_weight, up_weight, down_weight, eps, out, h, stats, pre_act);
  const int64_t T = features.size(0), H = features.size(1);
  const Tensor e = gather_rows(op, embed_weight, token_ids);
  fc_forward(e, features, fc_weight, fc_bias, h);
  Tensor yb = at::empty_like(h), x1 = at::empty_like(h), x2 = at::empty_like(h);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "griffin_norms_cpu", [&] {
    auto* s = stats.mutable_data_ptr<acc_t<scalar_t>>();
    rms_norm_rows<scalar_t>(h.const_data_ptr<scalar_t>(), norm_b_weight.const_data_ptr<scalar_t>(),
                            yb.mutable_data_ptr<scalar_t>(), s + 0, 3, T, H, eps);
    rms_norm_rows<scalar_t>(yb.const_data_ptr<scalar_t>(), norm_a_weight.const_data_ptr<scalar_t>(),
                            x1.mutable_data_ptr<scalar_t>(), s + 1, 3, T, H, eps);
    rms_norm_rows<scalar_t>(e.const_data_ptr<scalar_t>(), norm_a_weight.const_data_ptr<scalar_t>(),
                            x2.mutable_data_ptr<scalar_t>(), s + 2, 3, T, H, eps);
  });
  // v = W_u [x1; x2]: one GEMM over the concatenated rows (see the header).
  const Tensor x12 = at::cat({x1, x2}, 1);
  Tensor v = pre_act.has_value() ? linear_product_out(mut(pre_act), x12, up_weight) : linear_product(x12, up_weight);
  const Tensor act = at::silu(v);
  linear_product_out(out, act, down_weight, std::nullopt, h);
}

void griffin_token_fusion_backward_cpu(
    const Tensor& grad_out, const Tensor& features, const Tensor& token_ids, const Tensor& embed_weight,
    const Tensor& fc_weight, const std::optional<Tensor>& fc_bias, const Tensor& norm_b_weight,
    const Tensor& norm_a_weight, const Tensor& up_weight, const Tensor& down_weight, double eps, const Tensor& h,
    const Tensor& stats, const Tensor& pre_act, const std::optional<Tensor>& d_features,
    const std::optional<Tensor>& d_fc_weight, const std::optional<Tensor>& d_fc_bias,
    const std::optional<Tensor>& d_norm_b_weight, const std::optional<Tensor>& d_norm_a_weight,
    const std::optional<Tensor>& d_up_weight, const std::optional<Tensor>& d_down_weight) {
  (void)eps;  // backward reads the saved statistics
  constexpr const char* op = "griffin_token_fusion_backward";
  check_griffin_token_fusion_backward(op, kCpuFeatureKernels, grad_out, features, token_ids, embed_weight, fc_weight,
                                      fc_bias, norm_b_weight, norm_a_weight, up_weight, down_weight, h, stats, pre_act,
                                      d_features, d_fc_weight, d_fc_bias, d_norm_b_weight, d_norm_a_weight, d_up_weight,
                                      d_down_weight);
  const int64_t T = features.size(0), H = features.size(1);
  const Tensor e = gather_rows(op, embed_weight, token_ids);
  const Tensor dact = at::mm(grad_out, down_weight);  // [T, I]
  Tensor act = at::empty_like(pre_act), dv = at::empty_like(pre_act);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "griffin_act_backward_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* vp = pre_act.const_data_ptr<scalar_t>();
    const scalar_t* dp = dact.const_data_ptr<scalar_t>();
    scalar_t* ap = act.mutable_data_ptr<scalar_t>();
    scalar_t* dvp = dv.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, act.numel(), 4096, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const A x = A(vp[i]), s = sigmoid(x);
        ap[i] = scalar_t(x * s);
        dvp[i] = scalar_t(A(dp[i]) * s * (A(1) + x * (A(1) - s)));
      }
    });
  });
  if (d_down_weight.has_value()) at::mm_out(mut(d_down_weight), grad_out.t(), act);
  Tensor yb = at::empty_like(h), x1 = at::empty_like(h), x2 = at::empty_like(h);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "griffin_norms_cpu", [&] {
    griffin_norms<scalar_t>(h, e, norm_b_weight, norm_a_weight, stats, yb, x1, x2);
  });
  if (d_up_weight.has_value()) {
    d_up_weight->narrow(1, 0, H).copy_(at::mm(dv.t(), x1));
    d_up_weight->narrow(1, H, H).copy_(at::mm(dv.t(), x2));
  }
  const bool need_dh = d_features.has_value() || d_fc_weight.has_value() || d_fc_bias.has_value();
  if (!need_dh && !d_norm_a_weight.has_value() && !d_norm_b_weight.has_value()) return;
  const Tensor dx1 = at::mm(dv, up_weight.narrow(1, 0, H));  // [T, H]
  const auto acc = at::toOpMathType(h.scalar_type());
  Tensor dna = at::zeros({H}, h.options().dtype(acc)), dnb = at::zeros({H}, h.options().dtype(acc));
  Tensor dyb = at::zeros({T, H}, h.options().dtype(acc));
  Tensor dh = grad_out.to(acc, /*non_blocking=*/false, /*copy=*/true);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "griffin_norm_backward_cpu", [&] {
    using A = acc_t<scalar_t>;
    const A* s = stats.const_data_ptr<A>();
    if (d_norm_a_weight.has_value()) {
      // N_a sees both halves: its gradient sums over x1's and x2's contributions.
      const Tensor dx2 = at::mm(dv, up_weight.narrow(1, H, H));
      rms_weight_grad<scalar_t, scalar_t>(dx1.const_data_ptr<scalar_t>(), yb.const_data_ptr<scalar_t>(), s + 1, 3,
                                          dna.mutable_data_ptr<A>(), T, H);
      rms_weight_grad<scalar_t, scalar_t>(dx2.const_data_ptr<scalar_t>(), e.const_data_ptr<scalar_t>(), s + 2, 3,
                                          dna.mutable_data_ptr<A>(), T, H);
    }
    if (need_dh || d_norm_b_weight.has_value())
      rms_backward_rows<scalar_t, scalar_t>(dx1.const_data_ptr<scalar_t>(), yb.const_data_ptr<scalar_t>(),
                                            norm_a_weight.const_data_ptr<scalar_t>(), s + 1, 3,
                                            dyb.mutable_data_ptr<A>(), T, H);
    if (d_norm_b_weight.has_value())
      rms_weight_grad<scalar_t, A>(dyb.const_data_ptr<A>(), h.const_data_ptr<scalar_t>(), s + 0, 3,
                                   dnb.mutable_data_ptr<A>(), T, H);
    if (need_dh)
      rms_backward_rows<scalar_t, A>(dyb.const_data_ptr<A>(), h.const_data_ptr<scalar_t>(),
                                     norm_b_weight.const_data_ptr<scalar_t>(), s + 0, 3, dh.mutable_data_ptr<A>(), T,
                                     H);
  });
  if (d_norm_a_weight.has_value()) d_norm_a_weight->copy_(dna);
  if (d_norm_b_weight.has_value()) d_norm_b_weight->copy_(dnb);
  if (need_dh) fc_backward(dh, e, features, fc_weight, d_features, d_fc_weight, d_fc_bias);
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) {
  m.impl("fspad_feature_sampling", &fspad_feature_sampling_cpu);
  m.impl("fspad_feature_sampling_backward", &fspad_feature_sampling_backward_cpu);
  m.impl("griffin_token_fusion", &griffin_token_fusion_cpu);
  m.impl("griffin_token_fusion_backward", &griffin_token_fusion_backward_cpu);
}

}  // namespace specdec
