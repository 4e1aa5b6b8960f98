// Kernel entries of csrc/cuda/paged.cu: block_table_from_csr_kernel and accept_slots_kernel, through the .cu's
// own torch-free enqueue functions (launch decisions of specdec/paged_launch.h).
#include "torch_neutral.h"
// clang-format off
#include "paged.cu.cpp"  // csrc/cuda/paged.cu after rewrite.py
// clang-format on
#include <stdexcept>

#include "request.h"

namespace {

using cudaemu::Request;

// scalars B, max_pages, nnz; in: kv_indptr int32 [B + 1], kv_indices int32 [nnz]; out: out int32 [B, max_pages].
int block_table_from_csr_entry(Request& r) {
  const int64_t B = r.scalar("B"), max_pages = r.scalar("max_pages"), nnz = r.scalar("nnz");
  const int32_t* indptr = r.in<int32_t>("kv_indptr", B + 1);
  const int32_t* indices = nnz > 0 ? r.in<int32_t>("kv_indices", nnz) : nullptr;
  int32_t* out = r.out<int32_t>("out", B * max_pages);
  specdec::enqueue_block_table_from_csr(indptr, indices, nnz, out, B, max_pages, nullptr);
  return 0;
}
CUDAEMU_ENTRY("block_table_from_csr_kernel", block_table_from_csr_entry);

// scalars B, S, W, N; in: cache_len, num_nodes, accept_len int32 [B], accept_nodes int32 [B, W]; in/out:
// slot_table int32 [B, S]; out: freed int32 [B, N], freed_count int32 [B].
int accept_slots_entry(Request& r) {
  const int64_t B = r.scalar("B"), S = r.scalar("S"), W = r.scalar("W"), N = r.scalar("N");
  if (N > specdec::kMaxTreeNodes) throw std::runtime_error("N > kMaxTreeNodes: the launcher refuses it");
  int32_t* table = r.out<int32_t>("slot_table", B * S);
  const int32_t* cache_len = r.in<int32_t>("cache_len", B);
  const int32_t* num_nodes = r.in<int32_t>("num_nodes", B);
  const int32_t* accept_nodes = r.in<int32_t>("accept_nodes", B * W);
  const int32_t* accept_len = r.in<int32_t>("accept_len", B);
  int32_t* freed = r.out<int32_t>("freed", B * N);
  int32_t* freed_count = r.out<int32_t>("freed_count", B);
  specdec::enqueue_accept_slots(table, cache_len, num_nodes, accept_nodes, accept_len, freed, freed_count, B, S, W,
                                N, nullptr);
  return 0;
}
CUDAEMU_ENTRY("accept_slots_kernel", accept_slots_entry);

}  // namespace
