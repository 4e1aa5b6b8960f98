// Argument checks of the raw specdec::verify_greedy and specdec::verify_sample ops, shared by the CPU
// (csrc/cpu/verify.cpp) and CUDA (csrc/cuda/verify.cu) kernels, so that torch.ops.specdec.verify_* called
// directly (opcheck, other engines) fails with the same message on both devices instead of reading or
// writing out of bounds.
//
// The public functions (specdec_kernels/ops/verify.py) check first and say more. Nothing here reads tensor
// values (no host synchronisation on CUDA): malformed links and out-of-vocabulary tokens are the kernels'
// business (a walk ends at a link outside [0, N); a token outside [0, V) is never accepted). Every message
// starts with the op name and says what was expected and what came.
//
// What differs between the devices is a VerifyKernels value: the device the tensors must be on, whether
// float64 logits are taken, and the CUDA launch limits (tree nodes per thread block, batch, vocabulary).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <optional>

namespace specdec {

// What one device's verify kernels accept.
struct VerifyKernels {
  c10::DeviceType device;  // every tensor must be on tokens' device, of this type
  bool fp64;               // float64 logits / draft_probs taken (besides float32, float16, bfloat16)
  int64_t max_nodes;       // most tree nodes N
  int64_t max_batch;       // most requests B
  int64_t max_vocab;       // most vocabulary entries V
};

inline constexpr VerifyKernels kCpuVerifyKernels{c10::DeviceType::CPU, true, std::numeric_limits<int64_t>::max(),
                                                 std::numeric_limits<int64_t>::max(),
                                                 std::numeric_limits<int64_t>::max()};

// Checks against tokens' device and shape [B, N].
struct VerifyChecker {
  const char* op;
  VerifyKernels k;
  c10::Device dev;
  int64_t B, N;

  // A tensor of one dtype and an exact shape (`layout` names the dimensions), contiguous, on tokens' device.
  void tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, const char* layout,
              c10::IntArrayRef shape) const {
    TORCH_CHECK(t.device() == dev, op, ": ", name, " must be on ", dev, " like tokens, got ", t.device());
    TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
    TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", layout, " = ", shape, ", got ", t.sizes());
    TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", t.strides());
  }

  // Float rows [B, N, V >= 1] of a dtype the kernels take (logits; draft_probs pass `like` = the logits).
  void rows(const at::Tensor& t, const char* name, const at::Tensor* like = nullptr) const {
    TORCH_CHECK(t.device() == dev, op, ": ", name, " must be on ", dev, " like tokens, got ", t.device());
    const at::ScalarType dt = t.scalar_type();
    const bool ok = dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || (k.fp64 && dt == at::kDouble);
    TORCH_CHECK(ok, op, ": the ", c10::DeviceTypeName(k.device), " kernel takes ",
                k.fp64 ? "float32, float16, bfloat16 or float64" : "float32, float16 or bfloat16", " ", name, ", got ",
                dt);
    if (like != nullptr) {
      TORCH_CHECK(t.sizes() == like->sizes(), op, ": ", name,
                  " must have the logits' shape [B, N, V] = ", like->sizes(), ", got ", t.sizes());
    } else {
      TORCH_CHECK(t.dim() == 3 && t.size(0) == B && t.size(1) == N && t.size(2) >= 1, op, ": ", name,
                  " must have shape [B, N, V >= 1] = [", B, ", ", N, ", V], got ", t.sizes());
      TORCH_CHECK(t.size(2) <= k.max_vocab, op, ": the ", c10::DeviceTypeName(k.device), " kernel takes at most ",
                  k.max_vocab, " vocabulary entries (V), got ", name, " of shape ", t.sizes());
    }
    TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", t.strides());
  }
};

// The tree and the outputs, shared by both ops: tokens int64 [B, N] (N >= 1) on a k.device device, the links
// first_child / next_sibling int32 [B, N], valid bool [B]; outputs accept_nodes int32 [B, N], accept_len
// int32 [B], out_tokens int64 [B, N]. All contiguous, on tokens' device.
inline VerifyChecker check_verify_tree_args(const char* op, const VerifyKernels& k, const at::Tensor& first_child,
                                            const at::Tensor& next_sibling, const at::Tensor& valid,
                                            const at::Tensor& tokens, const at::Tensor& accept_nodes,
                                            const at::Tensor& accept_len, const at::Tensor& out_tokens) {
  const c10::Device dev = tokens.device();
  TORCH_CHECK(dev.type() == k.device, op, ": tokens must be a ", c10::DeviceTypeName(k.device), " tensor, got one on ",
              dev);
  TORCH_CHECK(tokens.dim() == 2 && tokens.size(1) >= 1, op, ": tokens must have shape [B, N >= 1], got ",
              tokens.sizes());
  const int64_t B = tokens.size(0), N = tokens.size(1);
  TORCH_CHECK(N <= k.max_nodes, op, ": the ", c10::DeviceTypeName(k.device), " kernel takes at most ", k.max_nodes,
              " tree nodes (N; one tree per thread block), got N = ", N);
  TORCH_CHECK(B <= k.max_batch, op, ": the ", c10::DeviceTypeName(k.device), " kernel takes at most ", k.max_batch,
              " requests (B), got B = ", B);
  const VerifyChecker c{op, k, dev, B, N};
  c.tensor(tokens, "tokens", at::kLong, "[B, N]", {B, N});
  c.tensor(first_child, "first_child", at::kInt, "[B, N]", {B, N});
  c.tensor(next_sibling, "next_sibling", at::kInt, "[B, N]", {B, N});
  c.tensor(valid, "valid", at::kBool, "[B]", {B});
  c.tensor(accept_nodes, "accept_nodes", at::kInt, "[B, N]", {B, N});
  c.tensor(accept_len, "accept_len", at::kInt, "[B]", {B});
  c.tensor(out_tokens, "out_tokens", at::kLong, "[B, N]", {B, N});
  return c;
}

// verify_greedy: logits is int64 argmax ids [B, N], or float logits [B, N, V] (argmax fused). Returns true
// for ids.
inline bool check_verify_greedy_args(const char* op, const VerifyKernels& k, const at::Tensor& first_child,
                                     const at::Tensor& next_sibling, const at::Tensor& valid, const at::Tensor& tokens,
                                     const at::Tensor& logits, const at::Tensor& accept_nodes,
                                     const at::Tensor& accept_len, const at::Tensor& out_tokens) {
  const VerifyChecker c =
      check_verify_tree_args(op, k, first_child, next_sibling, valid, tokens, accept_nodes, accept_len, out_tokens);
  if (at::isFloatingType(logits.scalar_type())) {
    c.rows(logits, "logits");
    return false;
  }
  TORCH_CHECK(logits.scalar_type() == at::kLong, op,
              ": logits must be int64 argmax ids [B, N] or floating-point logits [B, N, V], got ",
              logits.scalar_type());
  c.tensor(logits, "logits (argmax ids)", at::kLong, "[B, N]", {c.B, c.N});
  return true;
}

// verify_sample: logits [B, N, V]; uniforms float32 [B, N + 1]; temperature float32 [B], top_k int32 [B],
// top_p float32 [B]; draft_probs (when given) of the logits' shape. Returns whether draft_probs is given.
inline bool check_verify_sample_args(const char* op, const VerifyKernels& k, const at::Tensor& first_child,
                                     const at::Tensor& next_sibling, const at::Tensor& valid, const at::Tensor& tokens,
                                     const at::Tensor& logits, const at::Tensor& uniforms,
                                     const at::Tensor& temperature, const at::Tensor& top_k, const at::Tensor& top_p,
                                     const std::optional<at::Tensor>& draft_probs, const at::Tensor& accept_nodes,
                                     const at::Tensor& accept_len, const at::Tensor& out_tokens) {
  const VerifyChecker c =
      check_verify_tree_args(op, k, first_child, next_sibling, valid, tokens, accept_nodes, accept_len, out_tokens);
  const int64_t B = c.B, N = c.N;
  c.rows(logits, "logits");
  c.tensor(uniforms, "uniforms", at::kFloat, "[B, N + 1]", {B, N + 1});
  c.tensor(temperature, "temperature", at::kFloat, "[B]", {B});
  c.tensor(top_k, "top_k", at::kInt, "[B]", {B});
  c.tensor(top_p, "top_p", at::kFloat, "[B]", {B});
  const bool has_q = draft_probs.has_value() && draft_probs->defined();
  if (has_q) c.rows(*draft_probs, "draft_probs", &logits);
  return has_q;
}

}  // namespace specdec
