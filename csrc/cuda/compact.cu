// CUDA kernel of specdec::compact_kv: in-place KV cache compaction after tree verification, every layer's K
// and V (and any per-token feature tensor) in one launch.
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

#include <algorithm>
#include <vector>

namespace specdec {
namespace {

struct TensorDesc {
  char* base;
  int64_t sb, sx, ss;  // strides in bytes along B, X, S
  int32_t X, S;        // heads (or 1), slots
  int32_t cols;        // vectors per row
  int32_t vec_bytes;   // 16, 8, 4, 2 or 1: the widest access every row start and the row size allow
};

template <int kMaxTensors>
struct CompactParams {
  TensorDesc t[kMaxTensors];
};

// The descriptors hold heads and slots as int32.
constexpr CompactKernels kCudaCompactKernels{c10::DeviceType::CUDA, INT32_MAX};

constexpr int kThreads = 256;
constexpr int kRowsPerChunk = 4;  // rows staged in registers per column before writing (4 x 16 B = 16 regs)

template <typename Vec>
__device__ __forceinline__ void copy_tile_column(char* row0, int64_t ss, int64_t S, const int32_t* __restrict__ a,
                                                 int64_t c, int32_t n) {
  // row0 = this column in slot cache_len[b]. j = 0 is the root (a[0] = 0): never moves.
  for (int32_t j0 = 1; j0 < n; j0 += kRowsPerChunk) {
    Vec buf[kRowsPerChunk];
    int32_t aj[kRowsPerChunk];
#pragma unroll
    for (int r = 0; r < kRowsPerChunk; ++r) {
      const int32_t j = j0 + r;
      aj[r] = j < n ? a[j] : j;
      // Skipped: src == dst (the accepted prefix), -1 padding, a slot outside [0, S_max).
      if (aj[r] != j && aj[r] >= 0 && c + aj[r] < S && c + j < S) {
        buf[r] = *reinterpret_cast<const Vec*>(row0 + aj[r] * ss);
      } else {
        aj[r] = -1;
      }
    }
#pragma unroll
    for (int r = 0; r < kRowsPerChunk; ++r) {
      if (aj[r] >= 0) *reinterpret_cast<Vec*>(row0 + (j0 + r) * ss) = buf[r];
    }
  }
}

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
    char* row0 = d.base + b * d.sb + x * d.sx + c * d.ss + col * d.vec_bytes;
    const int32_t* a = accept_nodes + b * W;
    switch (d.vec_bytes) {  // uniform across the block: one tensor per blockIdx.y
      case 16:
        copy_tile_column<uint4>(row0, d.ss, d.S, a, c, n);
        break;
      case 8:
        copy_tile_column<uint2>(row0, d.ss, d.S, a, c, n);
        break;
      case 4:
        copy_tile_column<uint32_t>(row0, d.ss, d.S, a, c, n);
        break;
      case 2:
        copy_tile_column<uint16_t>(row0, d.ss, d.S, a, c, n);
        break;
      default:
        copy_tile_column<uint8_t>(row0, d.ss, d.S, a, c, n);
        break;
    }
  }
}

// The widest power-of-two access (<= 16 bytes) that every row start and the row size are multiples of.
int32_t vector_bytes(uintptr_t base, int64_t row_bytes, int64_t sb, int64_t sx, int64_t ss) {
  uint64_t bits = static_cast<uint64_t>(base) | static_cast<uint64_t>(row_bytes) | static_cast<uint64_t>(sb) |
                  static_cast<uint64_t>(sx) | static_cast<uint64_t>(ss) | 16u;
  return static_cast<int32_t>(bits & (~bits + 1));  // lowest set bit
}

template <int kMaxTensors>
void launch(const TensorDesc* descs, int64_t count, const at::Tensor& cache_len, const at::Tensor& accept_nodes,
            const at::Tensor& accept_len, int64_t B, int64_t W, cudaStream_t stream, int num_sms) {
  CompactParams<kMaxTensors> p{};
  int64_t max_items = 0;
  for (int64_t i = 0; i < count; ++i) {
    p.t[i] = descs[i];
    max_items = std::max<int64_t>(max_items, B * descs[i].X * descs[i].cols);
  }
  // Enough blocks to fill the GPU a few times over across all tensors, not more (grid-stride beyond).
  const int64_t want = (max_items + kThreads - 1) / kThreads;
  const int64_t cap = std::max<int64_t>(1, (int64_t{num_sms} * 8 + count - 1) / count);
  const dim3 grid(static_cast<unsigned>(std::max<int64_t>(1, std::min(want, cap))), static_cast<unsigned>(count));
  compact_kv_kernel<kMaxTensors><<<grid, kThreads, 0, stream>>>(
      p, cache_len.data_ptr<int32_t>(), accept_nodes.data_ptr<int32_t>(), accept_len.data_ptr<int32_t>(), B, W);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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
    const int64_t row_bytes = t.size(3) * es;
    TensorDesc d;
    d.base = static_cast<char*>(t.data_ptr());
    d.sb = t.stride(0) * es;
    d.sx = t.stride(1) * es;
    d.ss = t.stride(2) * es;
    d.X = static_cast<int32_t>(t.size(1));
    d.S = static_cast<int32_t>(t.size(2));
    d.vec_bytes = vector_bytes(reinterpret_cast<uintptr_t>(d.base), row_bytes, d.sb, d.sx, d.ss);
    TORCH_CHECK(row_bytes / d.vec_bytes <= INT32_MAX, "specdec::compact_kv: the CUDA kernel takes rows of at most ",
                INT32_MAX, " accesses of ", d.vec_bytes, " bytes, got caches[", i, "] with rows of ", row_bytes,
                " bytes");
    d.cols = static_cast<int32_t>(row_bytes / d.vec_bytes);
    descs.push_back(d);
  }
  if (descs.empty() || B == 0 || W <= 1) return;
  c10::cuda::CUDAGuard guard(dev);
  cudaStream_t stream = cuda::current_stream();
  int device_index = dev.index(), num_sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device_index));
  // Parameter structs of 16 / 64 / 256 descriptors (0.8 / 3 / 12 KiB; CUDA >= 12.1 takes up to 32 KiB of
  // kernel parameters): the smallest that fits keeps the launch cheap for few tensors.
  constexpr int64_t kLargest = 256;
  for (int64_t start = 0; start < static_cast<int64_t>(descs.size()); start += kLargest) {
    const int64_t count = std::min<int64_t>(kLargest, static_cast<int64_t>(descs.size()) - start);
    if (count <= 16) {
      launch<16>(descs.data() + start, count, cache_len, accept_nodes, accept_len, B, W, stream, num_sms);
    } else if (count <= 64) {
      launch<64>(descs.data() + start, count, cache_len, accept_nodes, accept_len, B, W, stream, num_sms);
    } else {
      launch<kLargest>(descs.data() + start, count, cache_len, accept_nodes, accept_len, B, W, stream, num_sms);
    }
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CUDA, m) {
  m.impl("compact_kv", &compact_kv_cuda);
}

}  // namespace specdec
