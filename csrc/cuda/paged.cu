// CUDA kernels of specdec::block_table_from_csr and specdec::accept_slots (contracts:
// specdec_kernels/ops/paged.py, specification: specdec_kernels/reference/paged.py). Values are never checked
// (that would synchronise); out-of-range ones follow the reference, as the CPU kernels (csrc/cpu/paged.cpp) do.
// Launch decisions: specdec/paged_launch.h, shared with the CPU emulation of these kernels.
#include "common.cuh"
#include "specdec/limits.h"
#include "specdec/paged_checks.h"
#include "specdec/paged_launch.h"

namespace specdec {
namespace {

constexpr unsigned kFull = 0xffffffffu;

// out[b, p] = kv_indices[kv_indptr[b] + p] for p < kv_indptr[b + 1] - kv_indptr[b], else -1; one thread per
// entry, grid-stride. An offset past kv_indices reads its last entry (0 when it is empty), as the reference.
__global__ void __launch_bounds__(paged_launch::kCsrThreads)
    block_table_from_csr_kernel(const int32_t* __restrict__ kv_indptr, const int32_t* __restrict__ kv_indices,
                                int64_t nnz, int32_t* __restrict__ out, int64_t B, int64_t max_pages) {
  const int64_t total = B * max_pages;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = e / max_pages, p = e - b * max_pages;
    const int64_t start = kv_indptr[b], count = static_cast<int64_t>(kv_indptr[b + 1]) - start;
    int32_t page = -1;
    if (p < count) page = nnz > 0 ? kv_indices[min(max(start + p, int64_t{0}), nnz - 1)] : 0;
    out[e] = page;
  }
}

// One block per request b (see ops.paged.accept_slots): positions cache_len + i (i < num_nodes, inside the
// table) are the tree. 1. the tree's old slots and cleared accepted flags go to shared memory; 2. every taken
// path entry flags its node; 3. position cache_len + i takes the old slot of node accept_nodes[i] (or -1), so
// every read of step 3 is of shared memory, never of a position another thread rewrites; 4. the rejected
// nodes' old slots are compacted into freed in node order by a block-wide prefix count (warp ballots, one
// running base per chunk of blockDim.x nodes), the rest of freed is -1.
__global__ void __launch_bounds__(paged_launch::kAcceptMaxThreads)
    accept_slots_kernel(int32_t* __restrict__ slot_table, const int32_t* __restrict__ cache_len,
                        const int32_t* __restrict__ num_nodes, const int32_t* __restrict__ accept_nodes,
                        const int32_t* __restrict__ accept_len, int32_t* __restrict__ freed,
                        int32_t* __restrict__ freed_count, int64_t S, int64_t W, int64_t N) {
  extern __shared__ __align__(16) unsigned char smem[];
  int32_t* old_s = reinterpret_cast<int32_t*>(smem);
  unsigned char* accepted_s = smem + N * 4;
  __shared__ int32_t warp_count[paged_launch::kAcceptMaxThreads / 32];

  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;
  const int64_t c = cache_len[b], n = num_nodes[b], L = accept_len[b];
  int32_t* row = slot_table + b * S;
  const int32_t* nodes = accept_nodes + b * W;
  int32_t* out = freed + b * N;
  auto in_tree = [&](int64_t i) { return i < n && c + i >= 0 && c + i < S; };
  auto took = [&](int64_t j) {
    const int32_t node = nodes[j];
    return j < L && node >= 0 && node < n && node < N;
  };

  for (int64_t i = tid; i < N; i += blockDim.x) {
    old_s[i] = in_tree(i) ? row[c + i] : -1;
    accepted_s[i] = 0;
  }
  __syncthreads();
  for (int64_t j = tid; j < W; j += blockDim.x) {
    if (took(j)) accepted_s[nodes[j]] = 1;  // a node taken twice (not a path) gets the same byte twice
  }
  __syncthreads();
  for (int64_t i = tid; i < N; i += blockDim.x) {
    if (in_tree(i)) row[c + i] = i < W && took(i) ? old_s[nodes[i]] : -1;
  }

  int64_t base = 0;  // rejected nodes in earlier chunks; the loop bounds are uniform over the block
  for (int64_t i0 = 0; i0 < N; i0 += blockDim.x) {
    const int64_t i = i0 + tid;
    const bool rejected = i < N && in_tree(i) && !accepted_s[i];
    const unsigned votes = __ballot_sync(kFull, rejected);
    if (lane == 0) warp_count[warp] = __popc(votes);
    __syncthreads();
    int64_t before = 0, chunk = 0;
    for (int w = 0; w < warps; ++w) {
      before += w < warp ? warp_count[w] : 0;
      chunk += warp_count[w];
    }
    if (rejected) out[base + before + __popc(votes & ((1u << lane) - 1u))] = old_s[i];
    base += chunk;
    __syncthreads();  // warp_count is rewritten by the next chunk
  }
  for (int64_t i = base + tid; i < N; i += blockDim.x) out[i] = -1;  // disjoint from the ranks written above
  if (tid == 0) freed_count[b] = static_cast<int32_t>(base);
}

// Enqueue functions, torch-free so the CPU emulation runs these same launches.
void enqueue_block_table_from_csr(const int32_t* kv_indptr, const int32_t* kv_indices, int64_t nnz, int32_t* out,
                                  int64_t B, int64_t max_pages, cudaStream_t stream) {
  if (B * max_pages == 0) return;
  block_table_from_csr_kernel<<<paged_launch::csr_blocks(B * max_pages), paged_launch::kCsrThreads, 0, stream>>>(
      kv_indptr, kv_indices, nnz, out, B, max_pages);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void enqueue_accept_slots(int32_t* slot_table, const int32_t* cache_len, const int32_t* num_nodes,
                          const int32_t* accept_nodes, const int32_t* accept_len, int32_t* freed, int32_t* freed_count,
                          int64_t B, int64_t S, int64_t W, int64_t N, cudaStream_t stream) {
  if (B == 0) return;
  accept_slots_kernel<<<static_cast<unsigned>(B), paged_launch::accept_threads(N), paged_launch::accept_smem(N),
                        stream>>>(slot_table, cache_len, num_nodes, accept_nodes, accept_len, freed, freed_count, S, W,
                                  N);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void block_table_from_csr_cuda(const at::Tensor& kv_indptr, const at::Tensor& kv_indices, at::Tensor out) {
  check_block_table_from_csr_args("specdec::block_table_from_csr (CUDA kernel)", c10::DeviceType::CUDA, kv_indptr,
                                  kv_indices, out);
  const c10::cuda::CUDAGuard guard(out.device());
  enqueue_block_table_from_csr(kv_indptr.data_ptr<int32_t>(), kv_indices.data_ptr<int32_t>(), kv_indices.numel(),
                               out.data_ptr<int32_t>(), out.size(0), out.size(1), cuda::current_stream());
}

void accept_slots_cuda(const at::Tensor& slot_table, const at::Tensor& cache_len, const at::Tensor& num_nodes,
                       const at::Tensor& accept_nodes, const at::Tensor& accept_len, at::Tensor freed,
                       at::Tensor freed_count) {
  check_accept_slots_args("specdec::accept_slots (CUDA kernel)", c10::DeviceType::CUDA, slot_table, cache_len,
                          num_nodes, accept_nodes, accept_len, freed, freed_count);
  const int64_t B = slot_table.size(0), N = freed.size(1);
  TORCH_CHECK(N <= kMaxTreeNodes, "specdec::accept_slots: the CUDA kernel keeps one tree's slots in shared memory, ",
              "at most ", kMaxTreeNodes, " nodes; got freed of width N = ", N);
  TORCH_CHECK(B < (int64_t{1} << 31), "specdec::accept_slots: B = ", B, " requests exceed the grid");
  const c10::cuda::CUDAGuard guard(slot_table.device());
  enqueue_accept_slots(slot_table.data_ptr<int32_t>(), cache_len.data_ptr<int32_t>(), num_nodes.data_ptr<int32_t>(),
                       accept_nodes.data_ptr<int32_t>(), accept_len.data_ptr<int32_t>(), freed.data_ptr<int32_t>(),
                       freed_count.data_ptr<int32_t>(), B, slot_table.size(1), accept_nodes.size(1), N,
                       cuda::current_stream());
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CUDA, m) {
  m.impl("block_table_from_csr", &block_table_from_csr_cuda);
  m.impl("accept_slots", &accept_slots_cuda);
}

}  // namespace specdec
