// CUDA kernels of specdec::build_tree and specdec::select_tree: one thread block per tree (batch row).
//
// build_tree (N <= kMaxTreeNodes nodes, specdec/limits.h; one thread per node):
//   1. load parents into shared memory and validate with one block reduction (__syncthreads_or); a
//      malformed tree is written as all padding, so no later walk can run out of bounds or loop;
//   2. warp 0 derives first_child / next_sibling in increasing index order without atomics: it scans the
//      nodes in chunks of 32 from the last chunk to the first; __match_any_sync groups the lanes of a
//      chunk by parent, the next sibling inside the chunk is the next lane of the group, and the group's
//      last lane takes the first child of that parent seen in the later chunks, which a shared array
//      `first[]` holds (the group's first lane then overwrites it). When the scan reaches chunk 0,
//      first[q] is q's smallest child. ceil(N/32) steps of a few instructions each;
//   3. meanwhile (and then warp 0 too) every node walks its own ancestor chain to the root. Validation
//      guarantees 0 <= parent < child, so the walk is bounded by the node's index and visits strictly
//      decreasing indices: the mask row is built one 32-bit word at a time from the high word down, in a
//      register, and each word is stored once. Depth is the length of the walk. O(depth) per thread.
//
// select_tree (M <= kMaxCandidates candidates, specdec/limits.h): keys = candidate_key(score, index)
//   (specdec/tree.h: higher score, then lower index, NaN last; 64-bit, all distinct), bitonic sort in shared
//   memory (descending), the first K = N - 1 keys are the chosen candidates; a block prefix sum over
//   "chosen" flags in candidate order gives each chosen candidate its node index (so nodes stay in
//   topological order), then parents are remapped through that table. Everything stays on the device: no
//   host synchronisation.
#include "common.cuh"
#include "specdec/tree.h"
#include "specdec/tree_launch.h"

#include <algorithm>

namespace specdec {
namespace {

using tree_launch::kDefaultSmemBytes;
using tree_launch::kMaxBlockThreads;
using tree_launch::kWarpSize;
using tree_launch::sort_length;
constexpr unsigned kFullMask = 0xffffffffu;

// What the kernels below need of the limits in specdec/limits.h (set in specdec_kernels/_limits.py).
static_assert(kMaxTreeNodes <= kMaxBlockThreads,
              "build_tree runs one thread per node in one block: SPECDEC_MAX_TREE_NODES must be <= 1024");
static_assert(sort_length(kMaxCandidates) * static_cast<int64_t>(sizeof(uint64_t)) + kMaxCandidates +
                      kWarpSize * static_cast<int64_t>(sizeof(int)) <=
                  kDefaultSmemBytes,
              "select_tree sorts one request's candidates in shared memory (8 bytes per padded key + 1 per "
              "candidate, within 48 KiB): SPECDEC_MAX_CANDIDATES must be <= 4096");

__global__ void build_tree_kernel(const int32_t* __restrict__ parents, const int32_t* __restrict__ num_nodes,
                                  int32_t* __restrict__ depth, uint32_t* __restrict__ mask,
                                  int32_t* __restrict__ first_child, int32_t* __restrict__ next_sibling,
                                  bool* __restrict__ valid, int N, int W) {
  extern __shared__ int32_t smem[];
  int32_t* s_par = smem;        // [N] parents of this tree
  int32_t* s_first = smem + N;  // [N] smallest child of each node seen so far by the link scan, -1 none

  const int b = blockIdx.x;
  const int tid = threadIdx.x;
  const int64_t row0 = static_cast<int64_t>(b) * N;
  parents += row0;
  depth += row0;
  first_child += row0;
  next_sibling += row0;
  mask += row0 * W;

  // 1. Load and validate. Nodes at or past num_nodes are padding and not checked.
  const int n_raw = num_nodes[b];
  const bool n_ok = n_raw >= 1 && n_raw <= N;
  const int n = n_ok ? n_raw : 0;
  int bad = 0;
  for (int i = tid; i < N; i += blockDim.x) {
    const int32_t p = parents[i];
    s_par[i] = p;
    s_first[i] = -1;
    if (i < n) bad |= (i == 0) ? (p != -1) : (p < 0 || p >= i);
  }
  const bool ok = n_ok && !__syncthreads_or(bad);  // also the barrier after the shared stores
  const int live = ok ? n : 0;                     // an invalid tree is all padding
  if (tid == 0) valid[b] = ok;

  // 2. Links (warp 0): next_sibling of every node in the scanned chunks; s_first for the end.
  const int link_chunks = (live + kWarpSize - 1) / kWarpSize;
  if (tid < kWarpSize) {
    const int lane = tid;
    const unsigned lower = (1u << lane) - 1u;     // lanes below this one
    const unsigned upper = ~((2u << lane) - 1u);  // lanes above this one (0 for lane 31)
    for (int c = link_chunks - 1; c >= 0; --c) {
      const int i = c * kWarpSize + lane;
      // Group key: the parent of a live non-root node, else a per-lane negative value that matches nothing.
      const int q = (i >= 1 && i < live) ? s_par[i] : -1 - lane;
      const unsigned group = __match_any_sync(kFullMask, q);
      int ns = -1;
      if (q >= 0) {
        const unsigned later = group & upper;
        ns = later ? c * kWarpSize + __ffs(later) - 1 : s_first[q];
      }
      __syncwarp();  // every read of s_first in this chunk happens before the group leaders overwrite it
      if (q >= 0 && (group & lower) == 0) s_first[q] = i;
      __syncwarp();
      if (i < N) next_sibling[i] = ns;
    }
  }

  // 3. Depth and mask rows, one node per thread (rows past `live` are padding).
  for (int i = tid; i < N; i += blockDim.x) {
    uint32_t* row = mask + static_cast<int64_t>(i) * W;
    if (i >= live) {
      depth[i] = 0;
      for (int w = 0; w < W; ++w) row[w] = 0u;
      if (i >= link_chunks * kWarpSize) next_sibling[i] = -1;
      continue;
    }
    int w = W - 1;
    for (; w > (i >> 5); --w) row[w] = 0u;  // words above the node's own word hold no ancestor
    uint32_t acc = 0u;
    int a = i, d = 0;
    for (;;) {  // at most i steps: ancestors strictly decrease (validated above)
      for (const int wa = a >> 5; w > wa; --w) {
        row[w] = acc;
        acc = 0u;
      }
      acc |= 1u << (a & 31);
      if (a == 0) break;
      a = s_par[a];
      ++d;
    }
    row[0] = acc;  // the walk ended at the root, in word 0
    depth[i] = d;
  }

  __syncthreads();  // s_first is final
  for (int i = tid; i < N; i += blockDim.x) first_child[i] = i < live ? s_first[i] : -1;
}

// Block-wide exclusive prefix sum of one int per thread (blockDim.x a multiple of 32, at most kMaxBlockThreads).
__device__ __forceinline__ int block_exclusive_scan(int value, int* s_warp_sums) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int num_warps = blockDim.x / kWarpSize;
  int incl = value;
#pragma unroll
  for (int off = 1; off < kWarpSize; off <<= 1) {
    const int y = __shfl_up_sync(kFullMask, incl, off);
    if (lane >= off) incl += y;
  }
  if (lane == kWarpSize - 1) s_warp_sums[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int t = lane < num_warps ? s_warp_sums[lane] : 0;
#pragma unroll
    for (int off = 1; off < kWarpSize; off <<= 1) {
      const int y = __shfl_up_sync(kFullMask, t, off);
      if (lane >= off) t += y;
    }
    if (lane < num_warps) s_warp_sums[lane] = t;  // inclusive sums over warps
  }
  __syncthreads();
  return incl - value + (warp > 0 ? s_warp_sums[warp - 1] : 0);
}

__global__ void select_tree_kernel(const float* __restrict__ cand_scores, const int32_t* __restrict__ cand_parents,
                                   const int64_t* __restrict__ cand_tokens, const int64_t* __restrict__ root_tokens,
                                   int32_t* __restrict__ parents, int64_t* __restrict__ tokens,
                                   int32_t* __restrict__ selected, int M, int N, int P) {
  extern __shared__ uint64_t s_key[];                                     // [P] sort keys, 0 = padding
  int32_t* s_node = reinterpret_cast<int32_t*>(s_key);                    // [M] node of each candidate (after sort)
  unsigned char* s_chosen = reinterpret_cast<unsigned char*>(s_key + P);  // [M]
  __shared__ int s_warp_sums[kWarpSize];

  const int b = blockIdx.x;
  const int tid = threadIdx.x, T = blockDim.x;
  const int K = N - 1;
  cand_scores += static_cast<int64_t>(b) * M;
  cand_parents += static_cast<int64_t>(b) * M;
  cand_tokens += static_cast<int64_t>(b) * M;
  parents += static_cast<int64_t>(b) * N;
  tokens += static_cast<int64_t>(b) * N;
  selected += static_cast<int64_t>(b) * N;

  if (tid == 0) {
    parents[0] = -1;
    tokens[0] = root_tokens[b];
    selected[0] = -1;
  }
  if (K == 0) return;  // uniform over the block

  for (int i = tid; i < P; i += T) {
    s_key[i] = i < M ? candidate_key(__float_as_uint(cand_scores[i]), static_cast<uint32_t>(i)) : 0ull;
  }
  for (int i = tid; i < M; i += T) s_chosen[i] = 0;
  __syncthreads();

  // Bitonic sort, descending, over the P (a power of two) keys; skipped when every candidate is kept.
  if (K < M) {
    for (int k = 2; k <= P; k <<= 1) {
      for (int j = k >> 1; j > 0; j >>= 1) {
        for (int t = tid; t < P / 2; t += T) {
          const int lo = ((t & ~(j - 1)) << 1) | (t & (j - 1));  // pair (lo, lo + j)
          const int hi = lo + j;
          const bool descending = (lo & k) == 0;
          const uint64_t x = s_key[lo], y = s_key[hi];
          if ((x < y) == descending) {
            s_key[lo] = y;
            s_key[hi] = x;
          }
        }
        __syncthreads();
      }
    }
  }
  for (int r = tid; r < K; r += T) s_chosen[candidate_index(s_key[r])] = 1;
  __syncthreads();  // keys are dead from here: s_node reuses their storage

  // Node index = 1 + number of chosen candidates before this one: an exclusive scan over contiguous chunks.
  const int per = (M + T - 1) / T;
  const int c0 = min(M, tid * per), c1 = min(M, c0 + per);
  int count = 0;
  for (int c = c0; c < c1; ++c) count += s_chosen[c];
  int node = 1 + block_exclusive_scan(count, s_warp_sums);
  for (int c = c0; c < c1; ++c) s_node[c] = s_chosen[c] ? node++ : -1;
  __syncthreads();

  for (int c = tid; c < M; c += T) {
    const int k = s_node[c];
    if (k < 0) continue;
    // A parent that is out of range or was dropped makes the node its own parent (build_tree then flags
    // the tree invalid), as in the reference.
    const int32_t q = cand_parents[c];
    int32_t pn;
    if (q == -1) {
      pn = 0;
    } else if (q < -1 || q >= M) {
      pn = k;
    } else {
      const int qn = s_node[q];
      pn = qn < 0 ? k : qn;
    }
    parents[k] = pn;
    tokens[k] = cand_tokens[c];
    selected[k] = c;
  }
}

void build_tree_cuda(const at::Tensor& parents, const at::Tensor& num_nodes, at::Tensor& depth, at::Tensor& mask,
                     at::Tensor& first_child, at::Tensor& next_sibling, at::Tensor& valid) {
  check_build_tree_args(parents, num_nodes, depth, mask, first_child, next_sibling, valid);
  TORCH_CHECK(parents.is_cuda(), "specdec::build_tree (CUDA kernel): expected CUDA tensors, got ", parents.device());
  const int64_t B = parents.size(0), N = parents.size(1);
  TORCH_CHECK(N <= kMaxTreeNodes, "specdec::build_tree (CUDA kernel): at most ", kMaxTreeNodes,
              " nodes per tree (one tree per thread block), got N = ", N);
  TORCH_CHECK(B < (int64_t{1} << 31), "specdec::build_tree (CUDA kernel): batch too large, B = ", B);
  if (B == 0) return;
  const c10::cuda::CUDAGuard guard(parents.device());
  const tree_launch::Config cfg = tree_launch::build_tree_config(B, N);
  build_tree_kernel<<<cfg.grid, cfg.threads, cfg.smem, cuda::current_stream()>>>(
      parents.data_ptr<int32_t>(), num_nodes.data_ptr<int32_t>(), depth.data_ptr<int32_t>(),
      reinterpret_cast<uint32_t*>(mask.data_ptr<int32_t>()), first_child.data_ptr<int32_t>(),
      next_sibling.data_ptr<int32_t>(), valid.data_ptr<bool>(), static_cast<int>(N), static_cast<int>(mask.size(2)));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void select_tree_cuda(const at::Tensor& cand_scores, const at::Tensor& cand_parents, const at::Tensor& cand_tokens,
                      const at::Tensor& root_tokens, at::Tensor& parents, at::Tensor& tokens, at::Tensor& selected) {
  check_select_tree_args(cand_scores, cand_parents, cand_tokens, root_tokens, parents, tokens, selected);
  TORCH_CHECK(cand_scores.is_cuda(), "specdec::select_tree (CUDA kernel): expected CUDA tensors, got ",
              cand_scores.device());
  const int64_t B = cand_scores.size(0), M = cand_scores.size(1), N = parents.size(1);
  TORCH_CHECK(M <= kMaxCandidates, "specdec::select_tree (CUDA kernel): at most ", kMaxCandidates,
              " candidates per row (one row per thread block), got M = ", M);
  TORCH_CHECK(B < (int64_t{1} << 31), "specdec::select_tree (CUDA kernel): batch too large, B = ", B);
  if (B == 0) return;
  const c10::cuda::CUDAGuard guard(cand_scores.device());
  // Keys (8 B each, padded to cfg.sort_len), then one "chosen" byte per candidate: within 48 KiB (static_assert
  // above).
  const tree_launch::Config cfg = tree_launch::select_tree_config(B, M);
  select_tree_kernel<<<cfg.grid, cfg.threads, cfg.smem, cuda::current_stream()>>>(
      cand_scores.data_ptr<float>(), cand_parents.data_ptr<int32_t>(), cand_tokens.data_ptr<int64_t>(),
      root_tokens.data_ptr<int64_t>(), parents.data_ptr<int32_t>(), tokens.data_ptr<int64_t>(),
      selected.data_ptr<int32_t>(), static_cast<int>(M), static_cast<int>(N), cfg.sort_len);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CUDA, m) {
  m.impl("build_tree", &build_tree_cuda);
  m.impl("select_tree", &select_tree_cuda);
}

}  // namespace specdec
