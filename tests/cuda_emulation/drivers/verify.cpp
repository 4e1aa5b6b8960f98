// Kernel entries of csrc/cuda/verify.cu: greedy_ids_kernel and verify_logits_kernel (greedy with fp32 /
// fp16 / bf16 logits; sampling with fp32 / fp16 / bf16 logits and draft probabilities of any of the three
// dtypes, or none).
#include "torch_neutral.h"
// clang-format off
#include "verify.cu.cpp"  // csrc/cuda/verify.cu after rewrite.py
// clang-format on
#include <stdexcept>

#include "request.h"

namespace {

using cudaemu::Request;
namespace vl = specdec::verify_launch;

// scalars B, N; in: first_child, next_sibling, valid, tokens, amax; out: accept_nodes, accept_len, out_tokens.
int greedy_ids_entry(Request& r) {
  const int64_t B = r.scalar("B"), N = r.scalar("N");
  const int32_t* fc = r.in<int32_t>("first_child", B * N);
  const int32_t* ns = r.in<int32_t>("next_sibling", B * N);
  const bool* valid = r.in<bool>("valid", B);
  const int64_t* tokens = r.in<int64_t>("tokens", B * N);
  const int64_t* amax = r.in<int64_t>("amax", B * N);
  int32_t* accept_nodes = r.out<int32_t>("accept_nodes", B * N);
  int32_t* accept_len = r.out<int32_t>("accept_len", B);
  int64_t* out_tokens = r.out<int64_t>("out_tokens", B * N);
  if (B == 0) return 0;
  const auto cfg = vl::greedy_ids_config(B);
  cudaemu::launch(cfg.grid, cfg.threads, cfg.smem, specdec::greedy_ids_kernel, fc, ns, valid, tokens, amax,
                  accept_nodes, accept_len, out_tokens, B, static_cast<int32_t>(N));
  return 0;
}
CUDAEMU_ENTRY("greedy_ids_kernel", greedy_ids_entry);

template <typename T, typename Q>
void launch_logits(Request& r, int64_t B, int64_t N, int64_t V, bool sample, bool has_q) {
  const int32_t* fc = r.in<int32_t>("first_child", B * N);
  const int32_t* ns = r.in<int32_t>("next_sibling", B * N);
  const bool* valid = r.in<bool>("valid", B);
  const int64_t* tokens = r.in<int64_t>("tokens", B * N);
  const T* logits = r.in<T>("logits", B * N * V);
  const float* uniforms = sample ? r.in<float>("uniforms", B * (N + 1)) : nullptr;
  const float* temperature = sample ? r.in<float>("temperature", B) : nullptr;
  const int32_t* top_k = sample ? r.in<int32_t>("top_k", B) : nullptr;
  const float* top_p = sample ? r.in<float>("top_p", B) : nullptr;
  const Q* draft = has_q ? r.in<Q>("draft_probs", B * N * V) : nullptr;
  int32_t* accept_nodes = r.out<int32_t>("accept_nodes", B * N);
  int32_t* accept_len = r.out<int32_t>("accept_len", B);
  int64_t* out_tokens = r.out<int64_t>("out_tokens", B * N);
  if (B == 0) return;
  const auto cfg = vl::logits_config(B);
  cudaemu::launch(cfg.grid, cfg.threads, cfg.smem, specdec::verify_logits_kernel<T, Q>, fc, ns, valid, tokens, logits,
                  uniforms, temperature, top_k, top_p, draft, sample, accept_nodes, accept_len, out_tokens,
                  static_cast<int32_t>(N), static_cast<int32_t>(V));
}

template <typename T>
void launch_logits_q(Request& r, int64_t B, int64_t N, int64_t V, bool sample, bool has_q) {
  if (!has_q) return launch_logits<T, float>(r, B, N, V, sample, false);
#if CUDAEMU_SANITIZER_BUILD
  if (r.scalar("q_dtype") != 0) throw std::runtime_error("q_dtype: only 0 (fp32) is built into the sanitizer variants");
  return launch_logits<T, float>(r, B, N, V, sample, true);
#else
  switch (r.scalar("q_dtype")) {
    case 0:
      return launch_logits<T, float>(r, B, N, V, sample, true);
    case 1:
      return launch_logits<T, c10::Half>(r, B, N, V, sample, true);
    case 2:
      return launch_logits<T, c10::BFloat16>(r, B, N, V, sample, true);
    default:
      throw std::runtime_error("q_dtype: 0, 1 or 2");
  }
#endif
}

// scalars B, N, V, dtype and q_dtype (0 fp32, 1 fp16, 2 bf16: of the logits and of the draft probabilities),
// sample (0 greedy, 1 sampling), has_q; in: first_child, next_sibling, valid, tokens, logits [B, N, V] and,
// when sampling, uniforms [B, N + 1], temperature, top_k, top_p [B], draft_probs [B, N, V] (when has_q); out:
// accept_nodes, accept_len, out_tokens. The plain build: every (logits, draft probabilities) dtype pair the
// launcher dispatches.
int verify_logits_entry(Request& r) {
  const int64_t B = r.scalar("B"), N = r.scalar("N"), V = r.scalar("V"), dtype = r.scalar("dtype");
  const bool sample = r.scalar("sample") != 0, has_q = r.scalar("has_q") != 0;
  if (has_q && !sample) throw std::runtime_error("draft_probs only when sampling");
  switch (dtype) {
    case 0:
      launch_logits_q<float>(r, B, N, V, sample, has_q);
      break;
#if CUDAEMU_SANITIZER_BUILD  // their cases run fp32 logits and draft probabilities: a fraction of the build
    case 1:
    case 2:
      throw std::runtime_error("dtype: only 0 (fp32) is built into the sanitizer variants");
#else
    case 1:
      launch_logits_q<c10::Half>(r, B, N, V, sample, has_q);
      break;
    case 2:
      launch_logits_q<c10::BFloat16>(r, B, N, V, sample, has_q);
      break;
#endif
    default:
      throw std::runtime_error("dtype: 0, 1 or 2");
  }
  return 0;
}
CUDAEMU_ENTRY("verify_logits_kernel", verify_logits_entry);

}  // namespace
