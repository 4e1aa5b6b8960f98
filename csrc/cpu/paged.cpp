// C++ CPU kernels of specdec::block_table_from_csr and specdec::accept_slots (contracts:
// specdec_kernels/ops/paged.py, specification: specdec_kernels/reference/paged.py). Both are small index
// rewrites, one task per request; values are never checked (the CUDA kernels cannot without a host sync), and
// out-of-range ones follow the reference: a CSR offset past kv_indices reads its last entry, tree positions
// outside the table are not in the tree.
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "specdec/paged_checks.h"

namespace specdec {
namespace {

void block_table_from_csr_cpu(const at::Tensor& kv_indptr, const at::Tensor& kv_indices, at::Tensor out) {
  check_block_table_from_csr_args("specdec::block_table_from_csr (CPU kernel)", c10::DeviceType::CPU, kv_indptr,
                                  kv_indices, out);
  const int64_t B = out.size(0), max_pages = out.size(1), nnz = kv_indices.numel();
  const int32_t* indptr = kv_indptr.data_ptr<int32_t>();
  const int32_t* indices = kv_indices.data_ptr<int32_t>();
  int32_t* table = out.data_ptr<int32_t>();
  at::parallel_for(0, B, std::max<int64_t>(1, 4096 / std::max<int64_t>(max_pages, 1)), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t start = indptr[b], count = static_cast<int64_t>(indptr[b + 1]) - start;
      for (int64_t p = 0; p < max_pages; ++p) {
        int32_t page = -1;
        if (p < count) page = nnz > 0 ? indices[std::clamp<int64_t>(start + p, 0, nnz - 1)] : 0;
        table[b * max_pages + p] = page;
      }
    }
  });
}

void accept_slots_cpu(const at::Tensor& slot_table, const at::Tensor& cache_len, const at::Tensor& num_nodes,
                      const at::Tensor& accept_nodes, const at::Tensor& accept_len, at::Tensor freed,
                      at::Tensor freed_count) {
  check_accept_slots_args("specdec::accept_slots (CPU kernel)", c10::DeviceType::CPU, slot_table, cache_len, num_nodes,
                          accept_nodes, accept_len, freed, freed_count);
  const int64_t B = slot_table.size(0), S = slot_table.size(1), W = accept_nodes.size(1), N = freed.size(1);
  int32_t* table = slot_table.data_ptr<int32_t>();
  const int32_t* cl = cache_len.data_ptr<int32_t>();
  const int32_t* nn = num_nodes.data_ptr<int32_t>();
  const int32_t* an = accept_nodes.data_ptr<int32_t>();
  const int32_t* al = accept_len.data_ptr<int32_t>();
  int32_t* fr = freed.data_ptr<int32_t>();
  int32_t* fc = freed_count.data_ptr<int32_t>();
  at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
    std::vector<int32_t> old(N);
    std::vector<char> accepted(N);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t c = cl[b], n = nn[b];
      int32_t* row = table + b * S;
      const int32_t* nodes = an + b * W;
      auto in_tree = [&](int64_t i) { return i < n && c + i >= 0 && c + i < S; };
      auto took = [&](int64_t j) { return j < al[b] && nodes[j] >= 0 && nodes[j] < n && nodes[j] < N; };
      // Every old slot is read before any is written: a path need not be increasing for this to be right.
      for (int64_t i = 0; i < N; ++i) {
        old[i] = in_tree(i) ? row[c + i] : -1;
        accepted[i] = 0;
      }
      for (int64_t j = 0; j < W; ++j) {
        if (took(j)) accepted[nodes[j]] = 1;
      }
      for (int64_t i = 0; i < N; ++i) {
        if (in_tree(i)) row[c + i] = i < W && took(i) ? old[nodes[i]] : -1;
      }
      int32_t count = 0;
      for (int64_t i = 0; i < N; ++i) {
        if (in_tree(i) && !accepted[i]) fr[b * N + count++] = old[i];
      }
      std::fill(fr + b * N + count, fr + (b + 1) * N, -1);
      fc[b] = count;
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) {
  m.impl("block_table_from_csr", &block_table_from_csr_cpu);
  m.impl("accept_slots", &accept_slots_cpu);
}

}  // namespace specdec
