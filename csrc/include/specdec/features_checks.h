// Argument checks of the raw feature-sampling ops (specdec::fspad_feature_sampling,
// fspad_feature_sampling_backward, griffin_token_fusion, griffin_token_fusion_backward), shared by the CPU
// (csrc/cpu/features.cpp) and CUDA (csrc/cuda/features_cuda.cpp) kernels. Each check_<op> below checks the
// arguments of specdec::<op> in the schema's order (specdec_kernels/_schemas.py).
//
// The public functions (specdec_kernels/ops/features.py) check first, with friendlier messages; these guard
// direct torch.ops.specdec.* calls (opcheck, other engines) so that a short weight, a wrong dtype, a strided
// tensor or a small output buffer fails with a message saying what was expected and what came, instead of
// reading or writing out of bounds. Every message starts with the op name. Nothing here reads tensor values
// (no host synchronisation on CUDA); the range of token ids is each device's business (the CUDA kernels
// clamp them, the CPU kernels check them).
//
// What differs between the devices is a FeaturesKernels value: the device the tensors must be on, whether
// fp64 features are taken (they come with fp64 row statistics; fp32/fp16/bf16 features always have fp32
// statistics), and the CUDA launch limits (rows per call, intermediate size).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <optional>

namespace specdec {

// What one device's kernels accept.
struct FeaturesKernels {
  c10::DeviceType device;    // every tensor must be on features' device, of this type
  bool fp64;                 // float64 features accepted (with float64 row statistics)
  int64_t max_rows;          // most rows T in one call
  int64_t min_intermediate;  // smallest intermediate size I (W_g / W_u rows)
};

inline constexpr FeaturesKernels kCpuFeatureKernels{c10::DeviceType::CPU, true, std::numeric_limits<int64_t>::max(), 0};

// Checks against the features' device and dtype. `dt` is the dtype of every floating operand and buffer,
// `stat_dt` that of the saved row statistics (rstd / stats).
struct FeaturesChecker {
  const char* op;
  c10::Device dev;
  at::ScalarType dt;
  at::ScalarType stat_dt;
  int64_t min_intermediate;

  void tensor(const at::Tensor& t, const char* name, c10::IntArrayRef shape, bool contiguous = true,
              std::optional<at::ScalarType> dtype = std::nullopt) const {
    TORCH_CHECK(t.device() == dev, op, ": ", name, " must be on ", dev, " like features, got ", t.device());
    const at::ScalarType want = dtype.value_or(dt);
    TORCH_CHECK(t.scalar_type() == want, op, ": ", name, " must be ", want, ", got ", t.scalar_type());
    TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
    TORCH_CHECK(!contiguous || t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", t.strides());
  }
  void optional(const std::optional<at::Tensor>& t, const char* name, c10::IntArrayRef shape) const {
    if (t.has_value()) tensor(*t, name, shape);
  }
  // Row statistics: fp32, fp64 for fp64 features.
  void stats(const at::Tensor& t, const char* name, c10::IntArrayRef shape) const {
    tensor(t, name, shape, true, stat_dt);
  }
  void ids(const at::Tensor& t, int64_t T) const {
    TORCH_CHECK(t.device() == dev, op, ": token_ids must be on ", dev, " like features, got ", t.device());
    TORCH_CHECK(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, op,
                ": token_ids must be int32 or int64, got ", t.scalar_type());
    TORCH_CHECK(t.dim() == 1 && t.size(0) == T && t.is_contiguous(), op, ": token_ids must be a contiguous [T] = [", T,
                "] tensor, got shape ", t.sizes(), " and strides ", t.strides());
  }
  // The embedding table may be a row-strided view (e.g. a slice of a padded table): rows are gathered with
  // its own leading dimension.
  void embed(const at::Tensor& t, int64_t H) const {
    TORCH_CHECK(t.device() == dev, op, ": embed_weight must be on ", dev, " like features, got ", t.device());
    TORCH_CHECK(t.scalar_type() == dt, op, ": embed_weight must be ", dt, ", got ", t.scalar_type());
    TORCH_CHECK(t.dim() == 2 && t.size(1) == H && t.size(0) >= 1, op, ": embed_weight must have shape [V >= 1, ", H,
                "], got ", t.sizes());
    TORCH_CHECK(t.stride(1) == 1 && t.stride(0) >= H, op,
                ": embed_weight rows must be contiguous (stride [>= H, 1]), got strides ", t.strides());
  }
  // The intermediate size I from the rows of `w` (gate_weight for FSPAD, up_weight for GRIFFIN), whose
  // full shape is checked afterwards.
  int64_t intermediate(const at::Tensor& w, const char* name, int64_t cols) const {
    TORCH_CHECK(w.dim() == 2 && w.size(0) >= min_intermediate, op, ": ", name,
                " must have shape [I >= ", min_intermediate, ", ", cols, "], got ", w.sizes());
    return w.size(0);
  }
};

// The checker of one call: features must be a contiguous [T, H] tensor on `k.device`, of a dtype the
// kernels take, with T within the launch limit.
inline FeaturesChecker features_checker(const char* op, const at::Tensor& features, const FeaturesKernels& k) {
  TORCH_CHECK(features.device().type() == k.device, op, ": features must be a ", c10::DeviceTypeName(k.device),
              " tensor, got ", features.device());
  const at::ScalarType dt = features.scalar_type();
  const bool ok = dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || (k.fp64 && dt == at::kDouble);
  TORCH_CHECK(ok, op, ": the ", c10::DeviceTypeName(k.device), " kernels take ",
              k.fp64 ? "float32, float16, bfloat16 or float64" : "float32, float16 or bfloat16", " features, got ", dt);
  TORCH_CHECK(features.dim() == 2 && features.is_contiguous(), op,
              ": features must be a contiguous [T, H] tensor, got shape ", features.sizes(), " and strides ",
              features.strides());
  TORCH_CHECK(features.size(1) >= 1, op, ": features must have H >= 1 columns");
  TORCH_CHECK(features.size(0) <= k.max_rows, op, ": the ", c10::DeviceTypeName(k.device), " kernels take at most ",
              k.max_rows, " rows (T), got ", features.size(0), "; split the call");
  return FeaturesChecker{op, features.device(), dt, dt == at::kDouble ? at::kDouble : at::kFloat, k.min_intermediate};
}

// ---------------------------------------------------------------------------------------------------------
// FSPAD: z = W_fc [e; f] + b, u = z + W_d (SiLU(W_g e) * W_u RMSNorm(z)); saved: z [T, H], rstd [T],
// gate, up [T, I].

// The inputs both directions take; returns I.
inline int64_t check_fspad_inputs(const FeaturesChecker& c, const at::Tensor& features, const at::Tensor& token_ids,
                                  const at::Tensor& embed_weight, const at::Tensor& fc_weight,
                                  const std::optional<at::Tensor>& fc_bias, const at::Tensor& norm_weight,
                                  const at::Tensor& gate_weight, const at::Tensor& up_weight,
                                  const at::Tensor& down_weight) {
  const int64_t T = features.size(0), H = features.size(1);
  const int64_t I = c.intermediate(gate_weight, "gate_weight", H);
  c.ids(token_ids, T);
  c.embed(embed_weight, H);
  c.tensor(fc_weight, "fc_weight", {H, 2 * H});
  c.optional(fc_bias, "fc_bias", {H});
  c.tensor(norm_weight, "norm_weight", {H});
  c.tensor(gate_weight, "gate_weight", {I, H});
  c.tensor(up_weight, "up_weight", {I, H});
  c.tensor(down_weight, "down_weight", {H, I});
  return I;
}

inline void check_eps(const FeaturesChecker& c, double eps) {
  TORCH_CHECK(eps >= 0, c.op, ": eps must be >= 0, got ", eps);  // also rejects NaN
}

inline FeaturesChecker check_fspad_feature_sampling(
    const char* op, const FeaturesKernels& k, const at::Tensor& features, const at::Tensor& token_ids,
    const at::Tensor& embed_weight, const at::Tensor& fc_weight, const std::optional<at::Tensor>& fc_bias,
    const at::Tensor& norm_weight, const at::Tensor& gate_weight, const at::Tensor& up_weight,
    const at::Tensor& down_weight, double eps, const at::Tensor& out, const at::Tensor& z, const at::Tensor& rstd,
    const std::optional<at::Tensor>& gate, const std::optional<at::Tensor>& up) {
  const FeaturesChecker c = features_checker(op, features, k);
  const int64_t I = check_fspad_inputs(c, features, token_ids, embed_weight, fc_weight, fc_bias, norm_weight,
                                       gate_weight, up_weight, down_weight);
  const int64_t T = features.size(0), H = features.size(1);
  check_eps(c, eps);
  c.tensor(out, "out", {T, H});
  c.tensor(z, "z", {T, H});
  c.stats(rstd, "rstd", {T});
  c.optional(gate, "gate", {T, I});
  c.optional(up, "up", {T, I});
  return c;
}

inline FeaturesChecker check_fspad_feature_sampling_backward(
    const char* op, const FeaturesKernels& k, const at::Tensor& grad_out, const at::Tensor& features,
    const at::Tensor& token_ids, const at::Tensor& embed_weight, const at::Tensor& fc_weight,
    const std::optional<at::Tensor>& fc_bias, const at::Tensor& norm_weight, const at::Tensor& gate_weight,
    const at::Tensor& up_weight, const at::Tensor& down_weight, const at::Tensor& z, const at::Tensor& rstd,
    const at::Tensor& gate, const at::Tensor& up, const std::optional<at::Tensor>& d_features,
    const std::optional<at::Tensor>& d_fc_weight, const std::optional<at::Tensor>& d_fc_bias,
    const std::optional<at::Tensor>& d_norm_weight, const std::optional<at::Tensor>& d_gate_weight,
    const std::optional<at::Tensor>& d_up_weight, const std::optional<at::Tensor>& d_down_weight) {
  const FeaturesChecker c = features_checker(op, features, k);
  const int64_t I = check_fspad_inputs(c, features, token_ids, embed_weight, fc_weight, fc_bias, norm_weight,
                                       gate_weight, up_weight, down_weight);
  const int64_t T = features.size(0), H = features.size(1);
  c.tensor(grad_out, "grad_out", {T, H});
  c.tensor(z, "z", {T, H});
  c.stats(rstd, "rstd", {T});
  c.tensor(gate, "gate", {T, I});
  c.tensor(up, "up", {T, I});
  c.optional(d_features, "d_features", {T, H});
  c.optional(d_fc_weight, "d_fc_weight", {H, 2 * H});
  c.optional(d_fc_bias, "d_fc_bias", {H});
  c.optional(d_norm_weight, "d_norm_weight", {H});
  c.optional(d_gate_weight, "d_gate_weight", {I, H});
  c.optional(d_up_weight, "d_up_weight", {I, H});
  c.optional(d_down_weight, "d_down_weight", {H, I});
  return c;
}

// ---------------------------------------------------------------------------------------------------------
// GRIFFIN: h = W_fc [e; f] + b, g = h + W_d SiLU(W_u [N_a(N_b(h)); N_a(e)]); saved: h [T, H],
// stats [T, 3] = (rstd(h), rstd(N_b(h)), rstd(e)), pre_act [T, I].

inline int64_t check_griffin_inputs(const FeaturesChecker& c, const at::Tensor& features, const at::Tensor& token_ids,
                                    const at::Tensor& embed_weight, const at::Tensor& fc_weight,
                                    const std::optional<at::Tensor>& fc_bias, const at::Tensor& norm_b_weight,
                                    const at::Tensor& norm_a_weight, const at::Tensor& up_weight,
                                    const at::Tensor& down_weight) {
  const int64_t T = features.size(0), H = features.size(1);
  const int64_t I = c.intermediate(up_weight, "up_weight", 2 * H);
  c.ids(token_ids, T);
  c.embed(embed_weight, H);
  c.tensor(fc_weight, "fc_weight", {H, 2 * H});
  c.optional(fc_bias, "fc_bias", {H});
  c.tensor(norm_b_weight, "norm_b_weight", {H});
  c.tensor(norm_a_weight, "norm_a_weight", {H});
  c.tensor(up_weight, "up_weight", {I, 2 * H});
  c.tensor(down_weight, "down_weight", {H, I});
  return I;
}

inline FeaturesChecker check_griffin_token_fusion(const char* op, const FeaturesKernels& k, const at::Tensor& features,
                                                  const at::Tensor& token_ids, const at::Tensor& embed_weight,
                                                  const at::Tensor& fc_weight, const std::optional<at::Tensor>& fc_bias,
                                                  const at::Tensor& norm_b_weight, const at::Tensor& norm_a_weight,
                                                  const at::Tensor& up_weight, const at::Tensor& down_weight,
                                                  double eps, const at::Tensor& out, const at::Tensor& h,
                                                  const at::Tensor& stats, const std::optional<at::Tensor>& pre_act) {
  const FeaturesChecker c = features_checker(op, features, k);
  const int64_t I = check_griffin_inputs(c, features, token_ids, embed_weight, fc_weight, fc_bias, norm_b_weight,
                                         norm_a_weight, up_weight, down_weight);
  const int64_t T = features.size(0), H = features.size(1);
  check_eps(c, eps);
  c.tensor(out, "out", {T, H});
  c.tensor(h, "h", {T, H});
  c.stats(stats, "stats", {T, 3});
  c.optional(pre_act, "pre_act", {T, I});
  return c;
}

inline FeaturesChecker check_griffin_token_fusion_backward(
    const char* op, const FeaturesKernels& k, const at::Tensor& grad_out, const at::Tensor& features,
    const at::Tensor& token_ids, const at::Tensor& embed_weight, const at::Tensor& fc_weight,
    const std::optional<at::Tensor>& fc_bias, const at::Tensor& norm_b_weight, const at::Tensor& norm_a_weight,
    const at::Tensor& up_weight, const at::Tensor& down_weight, const at::Tensor& h, const at::Tensor& stats,
    const at::Tensor& pre_act, const std::optional<at::Tensor>& d_features,
    const std::optional<at::Tensor>& d_fc_weight, const std::optional<at::Tensor>& d_fc_bias,
    const std::optional<at::Tensor>& d_norm_b_weight, const std::optional<at::Tensor>& d_norm_a_weight,
    const std::optional<at::Tensor>& d_up_weight, const std::optional<at::Tensor>& d_down_weight) {
  const FeaturesChecker c = features_checker(op, features, k);
  const int64_t I = check_griffin_inputs(c, features, token_ids, embed_weight, fc_weight, fc_bias, norm_b_weight,
                                         norm_a_weight, up_weight, down_weight);
  const int64_t T = features.size(0), H = features.size(1);
  c.tensor(grad_out, "grad_out", {T, H});
  c.tensor(h, "h", {T, H});
  c.stats(stats, "stats", {T, 3});
  c.tensor(pre_act, "pre_act", {T, I});
  c.optional(d_features, "d_features", {T, H});
  c.optional(d_fc_weight, "d_fc_weight", {H, 2 * H});
  c.optional(d_fc_bias, "d_fc_bias", {H});
  c.optional(d_norm_b_weight, "d_norm_b_weight", {H});
  c.optional(d_norm_a_weight, "d_norm_a_weight", {H});
  c.optional(d_up_weight, "d_up_weight", {I, 2 * H});
  c.optional(d_down_weight, "d_down_weight", {H, I});
  return c;
}

}  // namespace specdec
