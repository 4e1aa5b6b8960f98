// C++ CPU kernels of specdec::verify_greedy and specdec::verify_sample (parallel over requests).
//
// The walk is the reference's state machine (specdec_kernels/reference/verify.py), one request at a time:
// state = (accepted node u, next candidate child c); a step tests c: accept -> descend (c = first_child[c]),
// reject -> c = next_sibling[c]. At most N steps and N - 1 accepted children, links outside [0, N) end the
// list, so malformed links (cycles included) cannot loop forever, and every result equals the reference.
// Sampling keeps the residual target distribution p (and draft distribution q) of the current node as
// dense fp32 rows: the CPU has the memory, and it follows the reference operation by operation.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <vector>

#include "specdec/verify_checks.h"

namespace specdec {
namespace {

// The state of one walk and the writing of its outputs (shared by both ops).
struct Walk {
  const int32_t* fc;
  const int32_t* ns;
  int64_t N;
  int64_t cur = 0, cand = -1, length = 1, steps = 0;
  int32_t* path;  // accept_nodes row

  Walk(const int32_t* fc_, const int32_t* ns_, int64_t N_, bool valid, int32_t* path_)
      : fc(fc_), ns(ns_), N(N_), path(path_) {
    std::fill(path, path + N, -1);
    path[0] = 0;
    cand = valid ? follow(fc, 0) : -1;
  }
  int64_t follow(const int32_t* links, int64_t node) const {
    if (node < 0 || node >= N) return -1;
    const int64_t nxt = links[node];
    return nxt >= 0 && nxt < N ? nxt : -1;
  }
  // One more candidate to test? (the reference's `active`, within its N steps)
  bool active() const { return steps < N && cand >= 0 && length < N; }
  void accept() {
    path[length++] = static_cast<int32_t>(cand);
    cur = cand;
    cand = follow(fc, cand);
    ++steps;
  }
  void reject() {
    cand = follow(ns, cand);
    ++steps;
  }
  void write(const int64_t* tok, int64_t bonus, int32_t* len_out, int64_t* out_tok) const {
    *len_out = static_cast<int32_t>(length);
    for (int64_t j = 0; j < N; ++j) {
      out_tok[j] = j < length - 1 ? tok[path[j + 1]] : (j == length - 1 ? bonus : -1);
    }
  }
};

// torch.argmax semantics: the first NaN wins, else the first maximal value.
template <typename T>
int64_t argmax_row(const T* row, int64_t V) {
  int64_t best = 0;
  float bv = static_cast<float>(row[0]);
  if (std::isnan(bv)) return 0;
  for (int64_t v = 1; v < V; ++v) {
    const float x = static_cast<float>(row[v]);
    if (std::isnan(x)) return v;
    if (x > bv) {
      bv = x;
      best = v;
    }
  }
  return best;
}

void verify_greedy_cpu(const at::Tensor& first_child, const at::Tensor& next_sibling, const at::Tensor& valid,
                       const at::Tensor& tokens, const at::Tensor& logits, at::Tensor& accept_nodes,
                       at::Tensor& accept_len, at::Tensor& out_tokens) {
  const bool ids = check_verify_greedy_args("specdec::verify_greedy", kCpuVerifyKernels, first_child, next_sibling,
                                            valid, tokens, logits, accept_nodes, accept_len, out_tokens);
  const int64_t B = tokens.size(0), N = tokens.size(1);
  const int32_t* fc = first_child.data_ptr<int32_t>();
  const int32_t* ns = next_sibling.data_ptr<int32_t>();
  const bool* ok = valid.data_ptr<bool>();
  const int64_t* tok = tokens.data_ptr<int64_t>();
  int32_t* an = accept_nodes.data_ptr<int32_t>();
  int32_t* al = accept_len.data_ptr<int32_t>();
  int64_t* ot = out_tokens.data_ptr<int64_t>();

  auto run = [&](auto argmax_at) {
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        Walk w(fc + b * N, ns + b * N, N, ok[b], an + b * N);
        const int64_t* t = tok + b * N;
        int64_t am = argmax_at(b, w.cur);  // computed once per accepted node (only nodes the walk visits)
        while (w.active()) {
          if (t[w.cand] == am) {
            w.accept();
            am = argmax_at(b, w.cur);
          } else {
            w.reject();
          }
        }
        w.write(t, am, al + b, ot + b * N);
      }
    });
  };
  if (ids) {
    const int64_t* am = logits.data_ptr<int64_t>();
    run([&](int64_t b, int64_t u) { return am[b * N + u]; });
  } else {
    const int64_t V = logits.size(2);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "verify_greedy_cpu", [&] {
      const scalar_t* lg = logits.data_ptr<scalar_t>();
      run([&](int64_t b, int64_t u) { return argmax_row(lg + (b * N + u) * V, V); });
    });
  }
}

// ----------------------------------------------------------------------------------------------------
// verify_sample

void normalise(std::vector<float>& x) {
  double s = 0;  // the value only decides the scale; the reference's float sum differs by rounding only
  for (float v : x) s += v;
  const float sf = static_cast<float>(s);
  if (sf > 0) {
    for (float& v : x) v /= sf;
  } else {
    std::fill(x.begin(), x.end(), 0.f);
  }
}

// reference.verify.filtered_probs for one row: temperature, top-k (ties kept), softmax, top-p (ties kept).
template <typename T>
void filtered_probs(const T* row, int64_t V, float temperature, int64_t k, float top_p, std::vector<float>& p,
                    std::vector<float>& scratch) {
  const float t = temperature > 0 ? temperature : 1.f;
  for (int64_t v = 0; v < V; ++v) p[v] = static_cast<float>(row[v]) / t;
  float kth = -std::numeric_limits<float>::infinity();
  const bool use_k = k > 0 && k < V;
  if (use_k) {  // the k-th largest value (duplicates counted), by selection rather than a full sort
    scratch.assign(p.begin(), p.end());
    std::nth_element(scratch.begin(), scratch.begin() + (k - 1), scratch.end(), std::greater<float>());
    kth = scratch[k - 1];
  }
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t v = 0; v < V; ++v) {
    if (!use_k || p[v] >= kth) m = std::max(m, p[v]);
  }
  double s = 0;
  for (int64_t v = 0; v < V; ++v) {
    const bool keep = !use_k || p[v] >= kth;
    p[v] = keep ? std::exp(p[v] - m) : 0.f;
    s += p[v];
  }
  const float sf = static_cast<float>(s);
  for (float& v : p) v /= sf;
  if (top_p < 1.f) {
    // Keep x iff the mass strictly before it in descending order is < top_p (the most probable always),
    // plus every token tied with the least probable kept one: threshold on the value, as the reference.
    scratch.assign(p.begin(), p.end());
    std::sort(scratch.begin(), scratch.end(), std::greater<float>());
    double above = 0;
    int64_t n_keep = 1;
    for (int64_t i = 0; i < V; ++i) {
      if (i == 0 || above < top_p)
        n_keep = i + 1;
      else
        break;
      above += scratch[i];
    }
    const float thr = scratch[n_keep - 1];
    for (float& v : p) v = v >= thr ? v : 0.f;
  }
  normalise(p);
}

template <typename T, typename Q>
void verify_sample_rows(const at::Tensor& first_child, const at::Tensor& next_sibling, const at::Tensor& valid,
                        const at::Tensor& tokens, const at::Tensor& logits, const at::Tensor& uniforms,
                        const at::Tensor& temperature, const at::Tensor& top_k, const at::Tensor& top_p, const Q* draft,
                        at::Tensor& accept_nodes, at::Tensor& accept_len, at::Tensor& out_tokens) {
  const int64_t B = tokens.size(0), N = tokens.size(1), V = logits.size(2);
  const int32_t* fc = first_child.data_ptr<int32_t>();
  const int32_t* ns = next_sibling.data_ptr<int32_t>();
  const bool* ok = valid.data_ptr<bool>();
  const int64_t* tok = tokens.data_ptr<int64_t>();
  const T* lg = logits.data_ptr<T>();
  const float* un = uniforms.data_ptr<float>();
  const float* temp = temperature.data_ptr<float>();
  const int32_t* tk = top_k.data_ptr<int32_t>();
  const float* tp = top_p.data_ptr<float>();
  int32_t* an = accept_nodes.data_ptr<int32_t>();
  int32_t* al = accept_len.data_ptr<int32_t>();
  int64_t* ot = out_tokens.data_ptr<int64_t>();

  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> p(V), q, scratch;
    if (draft != nullptr) q.resize(V);
    for (int64_t b = b0; b < b1; ++b) {
      Walk w(fc + b * N, ns + b * N, N, ok[b], an + b * N);
      const int64_t* t = tok + b * N;
      const float* u = un + b * (N + 1);
      const bool greedy = !(temp[b] > 0);  // NaN temperature is greedy too, like the reference
      auto row = [&](int64_t node) { return lg + (b * N + node) * V; };
      auto load = [&](int64_t node) {
        if (greedy) return;
        filtered_probs(row(node), V, temp[b], tk[b], tp[b], p, scratch);
        if (draft != nullptr) {
          const Q* d = draft + (b * N + node) * V;
          for (int64_t v = 0; v < V; ++v) q[v] = std::max(static_cast<float>(d[v]), 0.f);
          normalise(q);
        }
      };
      int64_t am = argmax_row(row(0), V);
      load(0);
      while (w.active()) {
        const int64_t x = t[w.cand];
        const bool in_vocab = x >= 0 && x < V;
        bool acc;
        if (greedy) {
          acc = x == am;
        } else {
          const float px = in_vocab ? p[x] : 0.f;
          const float uc = u[w.cand];
          acc = draft == nullptr ? uc < px : uc * (in_vocab ? q[x] : 0.f) < px;
        }
        if (acc) {
          w.accept();
          am = argmax_row(row(w.cur), V);
          load(w.cur);
        } else {
          if (!greedy) {
            if (draft == nullptr) {
              if (in_vocab) p[x] = 0.f;
              normalise(p);
            } else {
              for (int64_t v = 0; v < V; ++v) p[v] = std::max(p[v] - q[v], 0.f);
              normalise(p);
              if (in_vocab) q[x] = 0.f;
              normalise(q);
            }
          }
          w.reject();
        }
      }
      int64_t bonus = am;
      if (!greedy) {
        // Inverse CDF in id order: the smallest x with cumsum(p)[x] > u_N * sum(p) (cumsum as torch's CPU
        // cumsum: double accumulator, float values).
        double acc = 0;
        scratch.resize(V);
        for (int64_t v = 0; v < V; ++v) {
          acc += p[v];
          scratch[v] = static_cast<float>(acc);
        }
        const float total = scratch[V - 1];
        if (total > 0) {
          const float thr = u[N] * total;
          int64_t drawn = std::upper_bound(scratch.begin(), scratch.begin() + V, thr) - scratch.begin();
          if (drawn >= V) {  // u -> 1 with rounding: the last token with mass
            drawn = V - 1;
            while (drawn > 0 && !(p[drawn] > 0)) --drawn;
          }
          bonus = drawn;
        }
      }
      w.write(t, bonus, al + b, ot + b * N);
    }
  });
}

void verify_sample_cpu(const at::Tensor& first_child, const at::Tensor& next_sibling, const at::Tensor& valid,
                       const at::Tensor& tokens, const at::Tensor& logits, const at::Tensor& uniforms,
                       const at::Tensor& temperature, const at::Tensor& top_k, const at::Tensor& top_p,
                       const std::optional<at::Tensor>& draft_probs, at::Tensor& accept_nodes, at::Tensor& accept_len,
                       at::Tensor& out_tokens) {
  const bool has_q = check_verify_sample_args("specdec::verify_sample", kCpuVerifyKernels, first_child, next_sibling,
                                              valid, tokens, logits, uniforms, temperature, top_k, top_p, draft_probs,
                                              accept_nodes, accept_len, out_tokens);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "verify_sample_cpu", [&] {
    using T = scalar_t;
    if (!has_q) {
      verify_sample_rows<T, float>(first_child, next_sibling, valid, tokens, logits, uniforms, temperature, top_k,
                                   top_p, nullptr, accept_nodes, accept_len, out_tokens);
    } else {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, draft_probs->scalar_type(), "verify_sample_cpu_q", [&] {
        verify_sample_rows<T, scalar_t>(first_child, next_sibling, valid, tokens, logits, uniforms, temperature, top_k,
                                        top_p, draft_probs->data_ptr<scalar_t>(), accept_nodes, accept_len, out_tokens);
      });
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) {
  m.impl("verify_greedy", &verify_greedy_cpu);
  m.impl("verify_sample", &verify_sample_cpu);
}

}  // namespace specdec
