// CUDA implementation of specdec::fspad_feature_sampling, fspad_feature_sampling_backward, griffin_token_fusion
// and griffin_token_fusion_backward (<op>_cuda implements specdec::<op>; math:
// specdec_kernels/reference/features.py; public functions and autograd: specdec_kernels/ops/features.py).
//
// Host-side composition, compiled by the host compiler (ATen's GEMM entry points need <ATen/ATen.h>, which is
// slow under nvcc); the kernels are in csrc/cuda/features.cu behind csrc/cuda/features_launch.h.
//
// Who computes what:
//   * Every product that reads the embedding e = E[ids] runs in our gathered GEMM (launch_gemm_nt /
//     launch_gemm_tn), which reads the table rows by token id in its loads: z = [e; f] W_fc^T + b (two
//     segments over W_fc's column halves, one fp32 accumulator), FSPAD's gate e W_g^T, GRIFFIN's
//     x1 W_u1^T + N_a(e) W_u2^T (N_a applied while loading), and the weight gradients dz^T e, dg^T e,
//     dv^T N_a(e). So neither e [T, H] nor a concatenation [T, 2H] is ever formed.
//   * Their epilogues fuse the bias, SiLU(gate) * up (FSPAD) and SiLU (GRIFFIN), storing the pre-activations
//     that backward needs.
//   * The products of dense operands go to cuBLAS through ATen (up = RMSNorm(z) W_u^T, the down projection
//     with the residual as addmm's input, and the backward's data / weight gradients), W_fc and W_u through
//     views of their halves (no copies).
//   * Row kernels: RMSNorm forward (fp32 statistics), its recomputation from the saved statistics, the fused
//     norm backward + residual with per-block partial column sums (norm weights, bias) reduced in a fixed
//     order (deterministic), and the SiLU backward.
// Workspaces ([T, H] normalised operands, [T, I] activations, partial sums) come from the caching allocator:
// no host synchronisation anywhere, so the forward can be captured in a CUDA graph.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>

#include "features_launch.h"
#include "specdec/features_checks.h"

namespace specdec {
namespace {

using at::Tensor;
namespace fc = features_cuda;

// The schemas' optional outputs (Tensor(a!)?) arrive as const optionals; the tensor itself is mutable.
inline Tensor& mut(const std::optional<Tensor>& t) {
  return const_cast<Tensor&>(*t);
}

template <typename P = void>
inline P* ptr_or_null(const std::optional<Tensor>& t) {
  return t.has_value() ? static_cast<P*>(t->data_ptr()) : nullptr;
}

fc::DType dtype_of(const char* op, const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return fc::DType::kFloat32;
    case at::kHalf:
      return fc::DType::kFloat16;
    case at::kBFloat16:
      return fc::DType::kBFloat16;
    default:
      TORCH_CHECK(false, op, ": the CUDA kernels take float32, float16 or bfloat16 features, got ", t.scalar_type());
  }
  return fc::DType::kFloat32;  // unreachable
}

// The raw ops' argument checks (csrc/include/specdec/features_checks.h): CUDA tensors, fp32/fp16/bf16 features
// with fp32 row statistics, and the launch limits of the kernels (rows per call; I >= 1). Never reads tensor
// values: no synchronisation. Token ids are clamped to [0, V) by the kernels (a bad id reads a wrong row, never
// out of bounds); the public function checks their range.
constexpr FeaturesKernels kCudaFeatureKernels{c10::DeviceType::CUDA, false, fc::kMaxRows, 1};

cudaStream_t current_stream() {
  return c10::cuda::getCurrentCUDAStream().stream();
}

// The A segment of embedding rows gathered by token id (the [T, H] e is never materialised).
fc::ASegment embed_segment(const Tensor& embed, const Tensor& ids, const Tensor& w, int64_t ldw, int64_t K) {
  fc::ASegment s;
  s.a = embed.data_ptr();
  s.lda = embed.stride(0);
  s.ids = ids.data_ptr();
  s.ids_int64 = ids.scalar_type() == at::kLong;
  s.vocab = embed.size(0);
  s.w = w.data_ptr();
  s.ldw = ldw;
  s.K = K;
  return s;
}

fc::ASegment dense_segment(const Tensor& a, const Tensor& w, int64_t ldw) {
  fc::ASegment s;
  s.a = a.data_ptr();
  s.lda = a.stride(0);
  s.w = w.data_ptr();
  s.ldw = ldw;
  s.K = a.size(1);
  return s;
}

// z = [e; f] W_fc^T + b: both column halves of W_fc in one accumulator (one rounding, like the reference's
// single linear layer over the concatenation).
void fc_forward(fc::DType dt, const Tensor& features, const Tensor& ids, const Tensor& embed, const Tensor& fc_weight,
                const std::optional<Tensor>& fc_bias, Tensor& z, cudaStream_t stream) {
  const int64_t T = features.size(0), H = features.size(1);
  fc::GemmNT p;
  p.seg[0] = embed_segment(embed, ids, fc_weight, 2 * H, H);
  p.seg[1] = dense_segment(features, fc_weight.narrow(1, H, H), 2 * H);
  p.nseg = 2;
  p.M = T;
  p.N = H;
  p.epi = fc::Epilogue::kStore;
  p.bias = ptr_or_null<const void>(fc_bias);
  p.out = z.data_ptr();
  p.ldo = H;
  fc::launch_gemm_nt(dt, p, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// c [M, N] (leading dimension ldc) = g^T [M, T] x B(t, :) with B's rows gathered from the embedding table and,
// with row_scale / col_scale, normalised on the fly (see GemmTN).
void gathered_wgrad(fc::DType dt, const Tensor& g, const Tensor& embed, const Tensor& ids, void* c, int64_t ldc,
                    const float* row_scale, int64_t rs_stride, const void* col_scale, cudaStream_t stream) {
  fc::GemmTN p;
  p.g = g.data_ptr();
  p.ldg = g.stride(0);
  p.b = embed.data_ptr();
  p.ldb = embed.stride(0);
  p.ids = ids.data_ptr();
  p.ids_int64 = ids.scalar_type() == at::kLong;
  p.vocab = embed.size(0);
  p.row_scale = row_scale;
  p.rs_stride = rs_stride;
  p.col_scale = col_scale;
  p.c = c;
  p.ldc = ldc;
  p.R = g.size(0);
  p.M = g.size(1);
  p.N = embed.size(1);
  fc::launch_gemm_tn(dt, p, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Gradients of z = W_fc [e; f] + b from dz (rounded to the dtype; the bias gradient was summed unrounded into
// part_bias by the norm-backward kernel and is reduced by the caller).
void fc_backward(fc::DType dt, const Tensor& dz, const Tensor& features, const Tensor& ids, const Tensor& embed,
                 const Tensor& fc_weight, const std::optional<Tensor>& d_features,
                 const std::optional<Tensor>& d_fc_weight, cudaStream_t stream) {
  const int64_t H = features.size(1);
  if (d_fc_weight.has_value()) {
    Tensor& dw = mut(d_fc_weight);
    gathered_wgrad(dt, dz, embed, ids, dw.data_ptr(), 2 * H, nullptr, 0, nullptr, stream);  // dW_fe = dz^T e
    Tensor dw_f = dw.narrow(1, H, H);
    at::mm_out(dw_f, dz.t(), features);  // dW_ff = dz^T f
  }
  if (d_features.has_value()) at::mm_out(mut(d_features), dz, fc_weight.narrow(1, H, H));
}

void column_sums(fc::DType dt, const Tensor& part, int64_t C, int64_t H, void* o0, void* o1, void* o2,
                 cudaStream_t stream) {
  if (o0 == nullptr && o1 == nullptr && o2 == nullptr) return;
  void* outs[3] = {o0, o1, o2};
  fc::launch_column_sums(dt, part.data_ptr<float>(), part.size(0), C, H, outs, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------------------------------------
// FSPAD: z = W_fc [e; f] + b, u = z + W_d (SiLU(W_g e) * W_u RMSNorm(z))

void fspad_feature_sampling_cuda(const Tensor& features, const Tensor& token_ids, const Tensor& embed_weight,
                                 const Tensor& fc_weight, const std::optional<Tensor>& fc_bias,
                                 const Tensor& norm_weight, const Tensor& gate_weight, const Tensor& up_weight,
                                 const Tensor& down_weight, double eps, Tensor& out, Tensor& z, Tensor& rstd,
                                 const std::optional<Tensor>& gate, const std::optional<Tensor>& up) {
  const FeaturesChecker c = check_fspad_feature_sampling(
      "fspad_feature_sampling", kCudaFeatureKernels, features, token_ids, embed_weight, fc_weight, fc_bias, norm_weight,
      gate_weight, up_weight, down_weight, eps, out, z, rstd, gate, up);
  const int64_t T = features.size(0), H = features.size(1), I = gate_weight.size(0);
  if (T == 0) return;
  const c10::cuda::CUDAGuard guard(features.device());
  const cudaStream_t stream = current_stream();
  const fc::DType dt = dtype_of(c.op, features);

  fc_forward(dt, features, token_ids, embed_weight, fc_weight, fc_bias, z, stream);
  Tensor y = at::empty_like(z);  // RMSNorm(z): a dense operand for cuBLAS
  fc::launch_rms_rows(dt, z.data_ptr(), norm_weight.data_ptr(), y.data_ptr(), rstd.data_ptr<float>(), false, T, H,
                      static_cast<float>(eps), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const Tensor u = up.has_value() ? at::mm_out(mut(up), y, up_weight.t()) : at::mm(y, up_weight.t());
  // act = SiLU(e W_g^T) * u: the gate GEMM gathers e and fuses the activation and the product.
  Tensor act = at::empty({T, I}, z.options());
  fc::GemmNT p;
  p.seg[0] = embed_segment(embed_weight, token_ids, gate_weight, H, H);
  p.nseg = 1;
  p.M = T;
  p.N = I;
  p.epi = fc::Epilogue::kGatedSilu;
  p.out = act.data_ptr();
  p.ldo = I;
  p.pre = ptr_or_null(gate);
  p.ldp = I;
  p.mul = u.data_ptr();
  p.ldm = u.stride(0);
  fc::launch_gemm_nt(dt, p, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::addmm_out(out, z, act, down_weight.t());  // out = z + act W_d^T (residual as addmm's input)
}

void fspad_feature_sampling_backward_cuda(
    const Tensor& grad_out, const Tensor& features, const Tensor& token_ids, const Tensor& embed_weight,
    const Tensor& fc_weight, const std::optional<Tensor>& fc_bias, const Tensor& norm_weight, const Tensor& gate_weight,
    const Tensor& up_weight, const Tensor& down_weight, double eps, const Tensor& z, const Tensor& rstd,
    const Tensor& gate, const Tensor& up, const std::optional<Tensor>& d_features,
    const std::optional<Tensor>& d_fc_weight, const std::optional<Tensor>& d_fc_bias,
    const std::optional<Tensor>& d_norm_weight, const std::optional<Tensor>& d_gate_weight,
    const std::optional<Tensor>& d_up_weight, const std::optional<Tensor>& d_down_weight) {
  (void)eps;  // backward reads the saved rstd
  const FeaturesChecker c = check_fspad_feature_sampling_backward(
      "fspad_feature_sampling_backward", kCudaFeatureKernels, grad_out, features, token_ids, embed_weight, fc_weight,
      fc_bias, norm_weight, gate_weight, up_weight, down_weight, z, rstd, gate, up, d_features, d_fc_weight, d_fc_bias,
      d_norm_weight, d_gate_weight, d_up_weight, d_down_weight);
  const int64_t T = features.size(0), H = features.size(1), I = gate_weight.size(0);
  const c10::cuda::CUDAGuard guard(features.device());
  if (T == 0) {  // no rows: every gradient is zero
    for (const auto* g :
         {&d_features, &d_fc_weight, &d_fc_bias, &d_norm_weight, &d_gate_weight, &d_up_weight, &d_down_weight})
      if (g->has_value()) mut(*g).zero_();
    return;
  }
  const cudaStream_t stream = current_stream();
  const fc::DType dt = dtype_of(c.op, features);

  const Tensor da = at::mm(grad_out, down_weight);  // [T, I]
  Tensor act = at::empty_like(gate), dg = at::empty_like(gate), du = at::empty_like(up);
  fc::launch_silu_backward(dt, gate.data_ptr(), up.data_ptr(), da.data_ptr(), act.data_ptr(), dg.data_ptr(),
                           du.data_ptr(), T * I, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (d_down_weight.has_value()) at::mm_out(mut(d_down_weight), grad_out.t(), act);
  if (d_gate_weight.has_value())  // dW_g = dg^T e, e gathered in the loads
    gathered_wgrad(dt, dg, embed_weight, token_ids, mut(d_gate_weight).data_ptr(), H, nullptr, 0, nullptr, stream);
  if (d_up_weight.has_value()) {  // dW_u = du^T RMSNorm(z), the norm recomputed from the saved rstd
    Tensor y = at::empty_like(z);
    fc::launch_rms_rows(dt, z.data_ptr(), norm_weight.data_ptr(), y.data_ptr(),
                        const_cast<float*>(rstd.data_ptr<float>()), true, T, H, 0.f, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    at::mm_out(mut(d_up_weight), du.t(), y);
  }
  const bool need_dz = d_features.has_value() || d_fc_weight.has_value() || d_fc_bias.has_value();
  if (!need_dz && !d_norm_weight.has_value()) return;
  const Tensor dy = at::mm(du, up_weight);  // [T, H]
  Tensor dz = at::empty_like(z);
  const int64_t nblk = fc::norm_backward_blocks(T);
  Tensor part = at::empty({nblk, 2, H}, z.options().dtype(at::kFloat));
  fc::launch_fspad_norm_backward(dt, grad_out.data_ptr(), dy.data_ptr(), z.data_ptr(), norm_weight.data_ptr(),
                                 rstd.data_ptr<float>(), dz.data_ptr(), part.data_ptr<float>(), nblk, T, H, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  column_sums(dt, part, 2, H, ptr_or_null(d_norm_weight), ptr_or_null(d_fc_bias), nullptr, stream);
  fc_backward(dt, dz, features, token_ids, embed_weight, fc_weight, d_features, d_fc_weight, stream);
}

// ---------------------------------------------------------------------------------------------------------
// GRIFFIN: h = W_fc [e; f] + b, g = h + W_d SiLU(W_u [N_a(N_b(h)); N_a(e)]);
// stats[:, 0] = rstd(h), stats[:, 1] = rstd(N_b(h)), stats[:, 2] = rstd(e)

void griffin_token_fusion_cuda(const Tensor& features, const Tensor& token_ids, const Tensor& embed_weight,
                               const Tensor& fc_weight, const std::optional<Tensor>& fc_bias,
                               const Tensor& norm_b_weight, const Tensor& norm_a_weight, const Tensor& up_weight,
                               const Tensor& down_weight, double eps, Tensor& out, Tensor& h, Tensor& stats,
                               const std::optional<Tensor>& pre_act) {
  const FeaturesChecker c = check_griffin_token_fusion("griffin_token_fusion", kCudaFeatureKernels, features, token_ids,
                                                       embed_weight, fc_weight, fc_bias, norm_b_weight, norm_a_weight,
                                                       up_weight, down_weight, eps, out, h, stats, pre_act);
  const int64_t T = features.size(0), H = features.size(1), I = up_weight.size(0);
  if (T == 0) return;
  const c10::cuda::CUDAGuard guard(features.device());
  const cudaStream_t stream = current_stream();
  const fc::DType dt = dtype_of(c.op, features);

  fc_forward(dt, features, token_ids, embed_weight, fc_weight, fc_bias, h, stream);
  // x1 = N_a(N_b(h)) materialised (a dense [T, H] operand); N_a(e) is applied inside the GEMM's loads.
  Tensor x1 = at::empty_like(h);
  float* st = stats.data_ptr<float>();
  fc::launch_griffin_norms(dt, h.data_ptr(), embed_weight.data_ptr(), embed_weight.stride(0), token_ids.data_ptr(),
                           token_ids.scalar_type() == at::kLong, embed_weight.size(0), norm_b_weight.data_ptr(),
                           norm_a_weight.data_ptr(), x1.data_ptr(), st, false, T, H, static_cast<float>(eps), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // v = x1 W_u1^T + N_a(e) W_u2^T (W_u's two column halves, one accumulator), act = SiLU(v).
  Tensor act = at::empty({T, I}, h.options());
  fc::GemmNT p;
  p.seg[0] = dense_segment(x1, up_weight, 2 * H);
  p.seg[1] = embed_segment(embed_weight, token_ids, up_weight.narrow(1, H, H), 2 * H, H);
  p.seg[1].row_scale = st + 2;  // rstd(e)
  p.seg[1].rs_stride = 3;
  p.seg[1].col_scale = norm_a_weight.data_ptr();
  p.nseg = 2;
  p.M = T;
  p.N = I;
  p.epi = fc::Epilogue::kSilu;
  p.out = act.data_ptr();
  p.ldo = I;
  p.pre = ptr_or_null(pre_act);
  p.ldp = I;
  fc::launch_gemm_nt(dt, p, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::addmm_out(out, h, act, down_weight.t());  // out = h + act W_d^T
}

void griffin_token_fusion_backward_cuda(
    const Tensor& grad_out, const Tensor& features, const Tensor& token_ids, const Tensor& embed_weight,
    const Tensor& fc_weight, const std::optional<Tensor>& fc_bias, const Tensor& norm_b_weight,
    const Tensor& norm_a_weight, const Tensor& up_weight, const Tensor& down_weight, double eps, const Tensor& h,
    const Tensor& stats, const Tensor& pre_act, const std::optional<Tensor>& d_features,
    const std::optional<Tensor>& d_fc_weight, const std::optional<Tensor>& d_fc_bias,
    const std::optional<Tensor>& d_norm_b_weight, const std::optional<Tensor>& d_norm_a_weight,
    const std::optional<Tensor>& d_up_weight, const std::optional<Tensor>& d_down_weight) {
  (void)eps;  // backward reads the saved statistics
  const FeaturesChecker c = check_griffin_token_fusion_backward(
      "griffin_token_fusion_backward", kCudaFeatureKernels, grad_out, features, token_ids, embed_weight, fc_weight,
      fc_bias, norm_b_weight, norm_a_weight, up_weight, down_weight, h, stats, pre_act, d_features, d_fc_weight,
      d_fc_bias, d_norm_b_weight, d_norm_a_weight, d_up_weight, d_down_weight);
  const int64_t T = features.size(0), H = features.size(1), I = up_weight.size(0);
  const c10::cuda::CUDAGuard guard(features.device());
  if (T == 0) {
    for (const auto* g :
         {&d_features, &d_fc_weight, &d_fc_bias, &d_norm_b_weight, &d_norm_a_weight, &d_up_weight, &d_down_weight})
      if (g->has_value()) mut(*g).zero_();
    return;
  }
  const cudaStream_t stream = current_stream();
  const fc::DType dt = dtype_of(c.op, features);
  const bool ids64 = token_ids.scalar_type() == at::kLong;
  const float* st = stats.data_ptr<float>();

  const Tensor dact = at::mm(grad_out, down_weight);  // [T, I]
  Tensor act = at::empty_like(pre_act), dv = at::empty_like(pre_act);
  fc::launch_silu_backward(dt, pre_act.data_ptr(), nullptr, dact.data_ptr(), act.data_ptr(), dv.data_ptr(), nullptr,
                           T * I, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (d_down_weight.has_value()) at::mm_out(mut(d_down_weight), grad_out.t(), act);
  if (d_up_weight.has_value()) {
    Tensor& du = mut(d_up_weight);
    // dW_u1 = dv^T x1 with x1 recomputed from the saved statistics ...
    Tensor x1 = at::empty_like(h);
    fc::launch_griffin_norms(dt, h.data_ptr(), embed_weight.data_ptr(), embed_weight.stride(0), token_ids.data_ptr(),
                             ids64, embed_weight.size(0), norm_b_weight.data_ptr(), norm_a_weight.data_ptr(),
                             x1.data_ptr(), const_cast<float*>(st), true, T, H, 0.f, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    Tensor du1 = du.narrow(1, 0, H);
    at::mm_out(du1, dv.t(), x1);
    // ... and dW_u2 = dv^T N_a(e), e gathered and normalised in the loads.
    gathered_wgrad(dt, dv, embed_weight, token_ids, du.narrow(1, H, H).data_ptr(), 2 * H, st + 2, 3,
                   norm_a_weight.data_ptr(), stream);
  }
  const bool need_dh = d_features.has_value() || d_fc_weight.has_value() || d_fc_bias.has_value();
  if (!need_dh && !d_norm_a_weight.has_value() && !d_norm_b_weight.has_value()) return;
  // dx = dv W_u = [dx1 | dx2]; dx2 only feeds N_a's weight gradient.
  const bool need_dx2 = d_norm_a_weight.has_value();
  const Tensor dx = need_dx2 ? at::mm(dv, up_weight) : at::mm(dv, up_weight.narrow(1, 0, H));
  const int64_t ldx = dx.stride(0);
  Tensor dh = at::empty_like(h);
  const int64_t nblk = fc::norm_backward_blocks(T);
  Tensor part = at::empty({nblk, 3, H}, h.options().dtype(at::kFloat));
  const char* dx_base = static_cast<const char*>(dx.data_ptr());
  fc::launch_griffin_norm_backward(dt, grad_out.data_ptr(), dx_base,
                                   need_dx2 ? dx_base + H * dx.element_size() : nullptr, ldx, h.data_ptr(),
                                   embed_weight.data_ptr(), embed_weight.stride(0), token_ids.data_ptr(), ids64,
                                   embed_weight.size(0), norm_b_weight.data_ptr(), norm_a_weight.data_ptr(), st,
                                   dh.data_ptr(), part.data_ptr<float>(), nblk, T, H, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  column_sums(dt, part, 3, H, ptr_or_null(d_norm_a_weight), ptr_or_null(d_norm_b_weight), ptr_or_null(d_fc_bias),
              stream);
  fc_backward(dt, dh, features, token_ids, embed_weight, fc_weight, d_features, d_fc_weight, stream);
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CUDA, m) {
  m.impl("fspad_feature_sampling", &fspad_feature_sampling_cuda);
  m.impl("fspad_feature_sampling_backward", &fspad_feature_sampling_backward_cuda);
  m.impl("griffin_token_fusion", &griffin_token_fusion_cuda);
  m.impl("griffin_token_fusion_backward", &griffin_token_fusion_backward_cuda);
}

}  // namespace specdec
