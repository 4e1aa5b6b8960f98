// C++ CPU kernels of specdec::build_tree and specdec::select_tree (parallel over the batch).
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace specdec {
namespace {

void build_tree_cpu(const at::Tensor& parents, const at::Tensor& num_nodes, at::Tensor& depth, at::Tensor& mask,
                    at::Tensor& first_child, at::Tensor& next_sibling, at::Tensor& valid) {
  const int64_t B = parents.size(0), N = parents.size(1), W = mask.size(2);
  const int32_t* par = parents.data_ptr<int32_t>();
  const int32_t* nn = num_nodes.data_ptr<int32_t>();
  int32_t* dep = depth.data_ptr<int32_t>();
  uint32_t* msk = reinterpret_cast<uint32_t*>(mask.data_ptr<int32_t>());
  int32_t* fc = first_child.data_ptr<int32_t>();
  int32_t* ns = next_sibling.data_ptr<int32_t>();
  bool* ok = valid.data_ptr<bool>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
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
        if (last[q] < 0) f[q] = static_cast<int32_t>(i); else s[last[q]] = static_cast<int32_t>(i);
        last[q] = static_cast<int32_t>(i);
      }
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) {
  m.impl("build_tree", &build_tree_cpu);
}

}  // namespace specdec
