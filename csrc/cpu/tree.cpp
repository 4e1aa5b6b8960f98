// C++ CPU kernels of specdec::build_tree and specdec::select_tree (parallel over the batch).
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#include "specdec/tree.h"

namespace specdec {
namespace {

// Simple steps per parallel chunk (ATen's GRAIN_SIZE): below that, waking the thread pool costs more than it saves.
constexpr int64_t kGrainSize = 32768;

void build_tree_cpu(const at::Tensor& parents, const at::Tensor& num_nodes, at::Tensor& depth, at::Tensor& mask,
                    at::Tensor& first_child, at::Tensor& next_sibling, at::Tensor& valid) {
  check_build_tree_args(parents, num_nodes, depth, mask, first_child, next_sibling, valid);
  TORCH_CHECK(parents.device().is_cpu(), "specdec::build_tree (CPU kernel): expected CPU tensors, got ",
              parents.device());
  const int64_t B = parents.size(0), N = parents.size(1), W = mask.size(2);
  const int32_t* par = parents.data_ptr<int32_t>();
  const int32_t* nn = num_nodes.data_ptr<int32_t>();
  int32_t* dep = depth.data_ptr<int32_t>();
  uint32_t* msk = reinterpret_cast<uint32_t*>(mask.data_ptr<int32_t>());
  int32_t* fc = first_child.data_ptr<int32_t>();
  int32_t* ns = next_sibling.data_ptr<int32_t>();
  bool* ok = valid.data_ptr<bool>();
  // A tree costs about N * (W + 4) simple steps: batch rows go to threads only in chunks worth a fork
  // (decode-sized batches of 60-node trees stay on the calling thread, which is faster than waking a pool).
  const int64_t grain = std::max<int64_t>(1, kGrainSize / (N * (W + 4)));
  at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
    std::vector<int32_t> last(N);
    for (int64_t b = b0; b < b1; ++b) {
      const int32_t* p = par + b * N;
      int32_t* d = dep + b * N;
      uint32_t* m = msk + b * N * W;
      int32_t* f = fc + b * N;
      int32_t* s = ns + b * N;
      const int64_t n = nn[b];
      bool good = n >= 1 && n <= N && p[0] == -1;
      for (int64_t i = 1; good && i < n; ++i) good = p[i] >= 0 && p[i] < i;
      ok[b] = good;
      std::fill(d, d + N, 0);
      std::fill(m, m + N * W, 0u);
      std::fill(f, f + N, -1);
      std::fill(s, s + N, -1);
      if (!good) continue;
      std::fill(last.begin(), last.end(), -1);
      m[0] = 1u;
      for (int64_t i = 1; i < n; ++i) {
        const int32_t q = p[i];
        d[i] = d[q] + 1;
        std::copy(m + q * W, m + (q + 1) * W, m + i * W);  // ancestors of i = ancestors of q, plus i
        m[i * W + i / 32] |= 1u << (i % 32);
        if (last[q] < 0)
          f[q] = static_cast<int32_t>(i);
        else
          s[last[q]] = static_cast<int32_t>(i);
        last[q] = static_cast<int32_t>(i);
      }
    }
  });
}

// EAGLE-2 reranking of one batch row per task: the best K = N - 1 candidates by candidate_key (higher score,
// then lower index, NaN last; see specdec/tree.h), emitted in candidate order after the root. Selection is
// std::nth_element on the distinct 64-bit keys: O(M) on average, and exact because keys never tie.
void select_tree_cpu(const at::Tensor& cand_scores, const at::Tensor& cand_parents, const at::Tensor& cand_tokens,
                     const at::Tensor& root_tokens, at::Tensor& parents, at::Tensor& tokens, at::Tensor& selected) {
  check_select_tree_args(cand_scores, cand_parents, cand_tokens, root_tokens, parents, tokens, selected);
  TORCH_CHECK(cand_scores.device().is_cpu(), "specdec::select_tree (CPU kernel): expected CPU tensors, got ",
              cand_scores.device());
  const int64_t B = cand_scores.size(0), M = cand_scores.size(1), N = parents.size(1);
  const int64_t K = N - 1;  // candidates kept; K <= M is checked above
  TORCH_CHECK(M < (int64_t{1} << 31), "specdec::select_tree: at most 2^31 - 1 candidates per row, got M = ", M);
  const float* sc = cand_scores.data_ptr<float>();
  const int32_t* cpar = cand_parents.data_ptr<int32_t>();
  const int64_t* ctok = cand_tokens.data_ptr<int64_t>();
  const int64_t* rtok = root_tokens.data_ptr<int64_t>();
  int32_t* opar = parents.data_ptr<int32_t>();
  int64_t* otok = tokens.data_ptr<int64_t>();
  int32_t* osel = selected.data_ptr<int32_t>();
  // A row costs about M + N steps of ~10 ns (keys, nth_element, two passes over the candidates), ~4 us for
  // EAGLE-2's 410 candidates: threads only for chunks of a few hundred microseconds.
  const int64_t grain = std::max<int64_t>(1, kGrainSize / (M + N));
  at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
    std::vector<uint64_t> keys(M);
    std::vector<int32_t> node_of(M);  // node index of each chosen candidate, -1 when dropped
    for (int64_t b = b0; b < b1; ++b) {
      const float* s = sc + b * M;
      const int32_t* cp = cpar + b * M;
      const int64_t* ct = ctok + b * M;
      int32_t* p = opar + b * N;
      int64_t* t = otok + b * N;
      int32_t* sel = osel + b * N;
      p[0] = -1;
      t[0] = rtok[b];
      sel[0] = -1;
      if (K == 0) continue;
      for (int64_t i = 0; i < M; ++i) {
        uint32_t bits;
        std::memcpy(&bits, s + i, sizeof(bits));
        keys[i] = candidate_key(bits, static_cast<uint32_t>(i));
      }
      // After nth_element the K largest keys occupy [0, K) (in no particular order).
      if (K < M) std::nth_element(keys.begin(), keys.begin() + K, keys.end(), std::greater<uint64_t>());
      std::fill(node_of.begin(), node_of.end(), -1);
      for (int64_t r = 0; r < K; ++r) node_of[candidate_index(keys[r])] = 0;  // mark chosen
      int32_t k = 0;
      for (int64_t c = 0; c < M; ++c) {
        if (node_of[c] < 0) continue;
        node_of[c] = ++k;  // nodes 1..K in increasing candidate order keep the topological order
        // Parents precede children in candidate order, so node_of[parent] is final here; a parent that
        // comes later, is out of range or was dropped makes the node its own parent (build_tree then
        // reports the tree invalid), exactly as the reference does.
        const int32_t q = cp[c];
        int32_t pn;
        if (q == -1) {
          pn = 0;
        } else if (q < -1 || q >= M || q > c) {
          pn = (q > c && q < M) ? -2 : k;  // a later parent's node is only known after this loop
        } else {
          pn = node_of[q] < 0 ? k : node_of[q];
        }
        p[k] = pn;
        t[k] = ct[c];
        sel[k] = static_cast<int32_t>(c);
      }
      // Rare malformed input: a parent candidate listed after its child. Resolve with the final node_of.
      for (int32_t i = 1; i <= k; ++i) {
        if (p[i] != -2) continue;
        const int32_t q = cp[sel[i]];
        p[i] = node_of[q] < 0 ? i : node_of[q];
      }
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) {
  m.impl("build_tree", &build_tree_cpu);
  m.impl("select_tree", &select_tree_cpu);
}

}  // namespace specdec
