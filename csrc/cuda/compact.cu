// CUDA kernels of specdec::compact_kv and specdec::compact_paged_kv: in-place KV cache compaction after tree
// verification, every layer's K and V (and any per-token feature tensor) in one launch, over contiguous caches
// or over pages mapped by a block table (the same copy, templated on where a logical slot's row is).
//
// Contract (see specdec_kernels/_schemas.py): every tensor of `caches` is a 4-D view [B, X, S_max, Y],
// contiguous along Y, any stride along B, X and S; for request b and j < accept_len[b] the row at slot
// cache_len[b] + accept_nodes[b, j] moves to slot cache_len[b] + j. Rows are copied as raw bytes, so the
// tensors may have different dtypes and row sizes.
//
// Launch: the tensors' pointers, strides and shapes travel as ONE kernel-parameter struct passed by value
// (no device descriptor buffer, hence no host->device copy, no allocation, nothing that syncs; a CUDA-graph
// capture bakes the struct into the graph). blockIdx.y picks the tensor, a grid-stride loop over x covers
// its (request, head, 16-byte column) work items. More than kMaxTensors tensors are split over several
// launches on the same stream (only above 256 tensors, i.e. 128 layers of K and V).
//
// Why the in-place copy is race-free without a barrier:
//   * Ownership: one thread owns one column (a vector of up to 16 bytes at a fixed offset within the row)
//     of one (tensor, request, head) tile, for ALL rows j of that tile. No other thread reads or writes
//     those bytes: other threads own other columns or other tiles (disjoint bytes for a non-overlapping
//     view), so there is no inter-thread hazard at all.
//   * Order within the owner: it reads rows j in [j0, j0 + R) into registers, then writes them, chunk by
//     chunk in increasing j. accept_nodes is strictly increasing with a[j] >= j, so for every j' > j,
//     src(j') = c + a[j'] > c + a[j] >= c + j = dst(j): a write never lands on a source that is read later.
//     Within a chunk all reads precede all writes; across chunks the inequality above does the work. (With
//     accept_len - 1 <= R this is exactly the reference's gather-then-scatter, whatever the indices.)
// Rows with src == dst are skipped (the accepted prefix), and so are rows whose index is negative or whose
// source/destination slot falls outside [0, S_max): the kernel never touches memory outside the tensor and
// never raises on values (a decode-path op cannot without syncing).
#include "common.cuh"
#include "specdec/compact_checks.h"
#include "specdec/compact_launch.h"
#include "specdec/paged_checks.h"

#include <algorithm>
#include <vector>

namespace specdec {
namespace {

// Descriptors, access widths, grid and parameter-struct sizes: specdec/compact_launch.h (shared with the CPU
// emulation of this kernel).
using compact_launch::CompactParams;
using compact_launch::kThreads;
using compact_launch::TensorDesc;

// The descriptors hold heads and slots as int32.
constexpr CompactKernels kCudaCompactKernels{c10::DeviceType::CUDA, INT32_MAX};

constexpr int kRowsPerChunk = 4;  // rows staged in registers per column before writing (4 x 16 B = 16 regs)

// The rows of one (tensor, request, head) tile, at one column: at(i) is the column's address in logical slot
// c + i (i >= 0), or nullptr when no row holds that slot (past S_max, past the block table, or on a page entry
// < 0). The copy below is the same for both.
struct ContiguousTile {
  char* row0;  // the column in slot c
  int64_t ss, S, c;
  __device__ __forceinline__ char* at(int64_t i) const { return c + i < S ? row0 + i * ss : nullptr; }
};

struct PagedTile {
  char* base;            // the column in slot 0 of page 0 at this head
  const int32_t* pages;  // the request's row of the block table
  int64_t max_pages, P, sp, ss, c;
  __device__ __forceinline__ char* at(int64_t i) const {
    const int64_t s = c + i;
    if (s >= max_pages * P) return nullptr;
    const int32_t page = pages[s / P];
    return page < 0 ? nullptr : base + page * sp + (s % P) * ss;
  }
};

template <typename Vec, typename Tile>
__device__ __forceinline__ void copy_tile_column(const Tile& tile, const int32_t* __restrict__ a, int32_t n) {
  // j = 0 is the root (a[0] = 0): never moves.
  for (int32_t j0 = 1; j0 < n; j0 += kRowsPerChunk) {
    Vec buf[kRowsPerChunk];
    char* dst[kRowsPerChunk];
#pragma unroll
    for (int r = 0; r < kRowsPerChunk; ++r) {
      const int32_t j = j0 + r;
      dst[r] = nullptr;
      const int32_t aj = j < n ? a[j] : j;
      // Skipped: src == dst (the accepted prefix), -1 padding, a slot no row holds.
      if (aj != j && aj >= 0) {
        const char* src = tile.at(aj);
        char* to = tile.at(j);
        if (src != nullptr && to != nullptr) {
          buf[r] = *reinterpret_cast<const Vec*>(src);
          dst[r] = to;
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kRowsPerChunk; ++r) {
      if (dst[r] != nullptr) *reinterpret_cast<Vec*>(dst[r]) = buf[r];
    }
  }
}

template <typename Tile>
__device__ __forceinline__ void copy_column(const Tile& tile, int32_t vec_bytes, const int32_t* a, int32_t n) {
  switch (vec_bytes) {  // uniform across the block: one tensor per blockIdx.y
    case 16:
      copy_tile_column<uint4>(tile, a, n);
      break;
    case 8:
      copy_tile_column<uint2>(tile, a, n);
      break;
    case 4:
      copy_tile_column<uint32_t>(tile, a, n);
      break;
    case 2:
      copy_tile_column<uint16_t>(tile, a, n);
      break;
    default:
      copy_tile_column<uint8_t>(tile, a, n);
      break;
  }
}

// Contiguous caches: descriptor fields as in compact_launch::TensorDesc.
template <int kMaxTensors>
__global__ void __launch_bounds__(kThreads, 3)
    compact_kv_kernel(const __grid_constant__ CompactParams<kMaxTensors> p, const int32_t* __restrict__ cache_len,
                      const int32_t* __restrict__ accept_nodes, const int32_t* __restrict__ accept_len, int64_t B,
                      int64_t W) {
  const TensorDesc d = p.t[blockIdx.y];
  const int64_t per_b = static_cast<int64_t>(d.X) * d.cols;
  const int64_t items = B * per_b;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < items;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / per_b;
    const int64_t rem = i - b * per_b;
    const int64_t x = rem / d.cols, col = rem - x * d.cols;
    const int32_t n = static_cast<int32_t>(min(static_cast<int64_t>(accept_len[b]), W));
    const int64_t c = cache_len[b];
    if (n <= 1 || c < 0) continue;
    const ContiguousTile tile{d.base + b * d.sb + x * d.sx + c * d.ss + col * d.vec_bytes, d.ss, d.S, c};
    copy_column(tile, d.vec_bytes, accept_nodes + b * W, n);
  }
}

// Paged caches (compact_paged_kv): descriptors of page views with sb the stride along pages and S the page
// size P; logical slot s of request b is on page table[b, s / P] at offset s % P.
// No minimum of 3 blocks per SM here (unlike compact_kv_kernel): the table lookups need more than the
// 85 registers that bound would leave, and ptxas spilled under it.
template <int kMaxTensors>
__global__ void __launch_bounds__(kThreads)
    compact_paged_kv_kernel(const __grid_constant__ CompactParams<kMaxTensors> p, const int32_t* __restrict__ table,
                            int64_t max_pages, const int32_t* __restrict__ cache_len,
                            const int32_t* __restrict__ accept_nodes, const int32_t* __restrict__ accept_len, int64_t B,
                            int64_t W) {
  const TensorDesc d = p.t[blockIdx.y];
  const int64_t per_b = static_cast<int64_t>(d.X) * d.cols;
  const int64_t items = B * per_b;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < items;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / per_b;
    const int64_t rem = i - b * per_b;
    const int64_t x = rem / d.cols, col = rem - x * d.cols;
    const int32_t n = static_cast<int32_t>(min(static_cast<int64_t>(accept_len[b]), W));
    const int64_t c = cache_len[b];
    if (n <= 1 || c < 0) continue;
    const PagedTile tile{d.base + x * d.sx + col * d.vec_bytes, table + b * max_pages, max_pages, d.S, d.sb, d.ss, c};
    copy_column(tile, d.vec_bytes, accept_nodes + b * W, n);
  }
}

// The indices of one compaction: table == nullptr for contiguous caches.
struct Indices {
  const int32_t* table;
  int64_t max_pages;
  const int32_t *cache_len, *accept_nodes, *accept_len;
  int64_t B, W;
};

template <int kMaxTensors>
void launch(const TensorDesc* descs, int64_t count, const Indices& ix, cudaStream_t stream, int num_sms) {
  CompactParams<kMaxTensors> p{};
  int64_t max_items = 0;
  for (int64_t i = 0; i < count; ++i) {
    p.t[i] = descs[i];
    max_items = std::max<int64_t>(max_items, ix.B * descs[i].X * descs[i].cols);
  }
  const dim3 grid(compact_launch::grid_x(max_items, count, num_sms), static_cast<unsigned>(count));
  if (ix.table != nullptr) {
    compact_paged_kv_kernel<kMaxTensors><<<grid, kThreads, 0, stream>>>(p, ix.table, ix.max_pages, ix.cache_len,
                                                                        ix.accept_nodes, ix.accept_len, ix.B, ix.W);
  } else {
    compact_kv_kernel<kMaxTensors>
        <<<grid, kThreads, 0, stream>>>(p, ix.cache_len, ix.accept_nodes, ix.accept_len, ix.B, ix.W);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Enqueues the compaction of `count` descriptors on `stream`, in launches of up to kMaxPerLaunch tensors with
// parameter structs of 16 / 64 / 256 descriptors (compact_launch::param_capacity). Torch-free, so the CPU
// emulation runs this same path.
void enqueue(const TensorDesc* descs, int64_t count, const Indices& ix, cudaStream_t stream, int num_sms) {
  if (count == 0 || ix.B == 0 || ix.W <= 1) return;
  constexpr int64_t kLargest = compact_launch::kMaxPerLaunch;
  for (int64_t start = 0; start < count; start += kLargest) {
    const int64_t part = std::min<int64_t>(kLargest, count - start);
    switch (compact_launch::param_capacity(part)) {
      case 16:
        launch<16>(descs + start, part, ix, stream, num_sms);
        break;
      case 64:
        launch<64>(descs + start, part, ix, stream, num_sms);
        break;
      default:
        launch<kLargest>(descs + start, part, ix, stream, num_sms);
        break;
    }
  }
}

int num_sms_of(const c10::Device& dev) {
  int num_sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, dev.index()));
  return num_sms;
}

void compact_kv_cuda(at::TensorList caches, const at::Tensor& cache_len, const at::Tensor& accept_nodes,
                     const at::Tensor& accept_len) {
  const c10::Device dev = cache_len.device();
  check_compact_kv_args("specdec::compact_kv", kCudaCompactKernels, caches, cache_len, accept_nodes, accept_len);
  const int64_t B = cache_len.size(0), W = accept_nodes.size(1);
  std::vector<TensorDesc> descs;
  descs.reserve(caches.size());
  for (size_t i = 0; i < caches.size(); ++i) {
    const at::Tensor& t = caches[i];
    if (t.numel() == 0) continue;
    const int64_t es = static_cast<int64_t>(t.element_size());
    TensorDesc d;
    const bool fits = compact_launch::make_desc(static_cast<char*>(t.data_ptr()), es, t.size(1), t.size(2), t.size(3),
                                                t.stride(0), t.stride(1), t.stride(2), d);
    TORCH_CHECK(fits, "specdec::compact_kv: the CUDA kernel takes rows of at most ", INT32_MAX, " accesses of ",
                d.vec_bytes, " bytes, got caches[", i, "] with rows of ", t.size(3) * es, " bytes");
    descs.push_back(d);
  }
  if (descs.empty() || B == 0 || W <= 1) return;
  c10::cuda::CUDAGuard guard(dev);
  const Indices ix{
      nullptr, 0, cache_len.data_ptr<int32_t>(), accept_nodes.data_ptr<int32_t>(), accept_len.data_ptr<int32_t>(),
      B,       W};
  enqueue(descs.data(), static_cast<int64_t>(descs.size()), ix, cuda::current_stream(), num_sms_of(dev));
}

// compact_kv over paged caches: the same moves over logical slots, each mapped through the block table. A
// request's logical slots are distinct physical rows (its pages are its own), so the ownership and ordering
// argument above holds unchanged. Table entries are not checked (no host synchronisation): a slot past the
// table or on an entry < 0 moves nothing.
void compact_paged_kv_cuda(at::TensorList caches, const at::Tensor& block_table, const at::Tensor& cache_len,
                           const at::Tensor& accept_nodes, const at::Tensor& accept_len, bool hnd) {
  check_compact_paged_kv_args("specdec::compact_paged_kv", c10::DeviceType::CUDA, caches, block_table, cache_len,
                              accept_nodes, accept_len, hnd);
  const int64_t B = cache_len.size(0), W = accept_nodes.size(1);
  const int head = hnd ? 1 : 2, slot = hnd ? 2 : 1;
  std::vector<TensorDesc> descs;
  descs.reserve(caches.size());
  for (size_t i = 0; i < caches.size(); ++i) {
    const at::Tensor& t = caches[i];
    if (t.numel() == 0) continue;
    TORCH_CHECK(t.size(head) <= INT32_MAX && t.size(slot) <= INT32_MAX, "specdec::compact_paged_kv: the CUDA kernel ",
                "takes at most ", INT32_MAX, " heads and page slots, got caches[", i, "] of shape ", t.sizes());
    const int64_t es = static_cast<int64_t>(t.element_size());
    TensorDesc d;
    const bool fits = compact_launch::make_desc(static_cast<char*>(t.data_ptr()), es, t.size(head), t.size(slot),
                                                t.size(3), t.stride(0), t.stride(head), t.stride(slot), d);
    TORCH_CHECK(fits, "specdec::compact_paged_kv: the CUDA kernel takes rows of at most ", INT32_MAX, " accesses of ",
                d.vec_bytes, " bytes, got caches[", i, "] with rows of ", t.size(3) * es, " bytes");
    descs.push_back(d);
  }
  if (descs.empty() || B == 0 || W <= 1) return;
  c10::cuda::CUDAGuard guard(cache_len.device());
  const Indices ix{block_table.data_ptr<int32_t>(),
                   block_table.size(1),
                   cache_len.data_ptr<int32_t>(),
                   accept_nodes.data_ptr<int32_t>(),
                   accept_len.data_ptr<int32_t>(),
                   B,
                   W};
  enqueue(descs.data(), static_cast<int64_t>(descs.size()), ix, cuda::current_stream(), num_sms_of(cache_len.device()));
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CUDA, m) {
  m.impl("compact_kv", &compact_kv_cuda);
  m.impl("compact_paged_kv", &compact_paged_kv_cuda);
}

}  // namespace specdec
