// Launch decisions of the CUDA tree_attention kernels (csrc/cuda/attention.cu), contiguous and paged
// (paged_tree_attention), torch-free: rows per warp,
// padded head dim, split-K count, grid, shared-memory layout and size, the kernel parameters built from raw
// pointers and element strides, and the split-K workspace sizes. The CUDA launcher and the CPU emulation of
// the kernels (tests/cuda_emulation/) both use them, so what runs emulated is what would launch on a GPU.
#pragma once

#include "specdec/fast_div.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace specdec {

namespace attention_launch {

inline constexpr int kWarps = 4;
inline constexpr int kThreads = kWarps * 32;    // threads of both kernels
inline constexpr int kTile = 32;                // key slots per tile: one per lane in Q K^T, one mask word in the tree
inline constexpr int kMaxSplits = 32;           // one split per lane in the merge kernel
inline constexpr int64_t kMinSplitSlots = 512;  // cache slots per split at least
// Head dims are padded to one of 64, 128 or kLargestDPad, each an instantiation of the kernel.
inline constexpr int kLargestDPad = 256;
inline constexpr size_t kDefaultSmemBytes = 48 * 1024;  // dynamic shared memory without the opt-in attribute
inline constexpr int64_t kMaxGridY = 65535;
inline constexpr int64_t kMaxPagedSlots = (int64_t{1} << 31) - 1;  // logical slots of a paged request

// Byte offsets of the dynamic shared memory of tree_attention_kernel<T, d_pad, rpw> for elements of
// elem_bytes bytes. Every section starts 16-byte aligned (d_pad * elem_bytes is a multiple of 128).
struct SmemLayout {
  int vec;       // elements per 16-byte vector
  int k_stride;  // elements between staged K rows: d_pad + vec (+16 bytes: conflict-free column reads)
  int q;         // float [kWarps * rpw][d_pad]: the block's query rows, pre-scaled
  int p;         // float [kWarps][rpw][kTile]: each warp's probabilities of the tile
  int k;         // T [kTile][k_stride]
  int v;         // T [kTile][d_pad]
  int words;     // uint32 [kWarps * rpw + 1]: the rows' mask words of a tree tile, then their union
  int bytes;     // total
};

constexpr SmemLayout smem_layout(int elem_bytes, int d_pad, int rpw) {
  SmemLayout s{};
  const int rows = kWarps * rpw;
  s.vec = 16 / elem_bytes;
  s.k_stride = d_pad + s.vec;
  s.q = 0;
  s.p = s.q + rows * d_pad * 4;
  s.k = s.p + kWarps * rpw * kTile * 4;
  s.v = s.k + kTile * s.k_stride * elem_bytes;
  s.words = s.v + kTile * d_pad * elem_bytes;
  s.bytes = s.words + (rows + 1) * 4;
  return s;
}

// Rows per warp for R query rows per (request, KV head): decode-sized groups (R <= kWarps) one row per warp,
// so no warp idles; else four.
constexpr int rows_per_warp(int64_t R) {
  return R <= kWarps ? 1 : 4;
}

// The kernel's padded head dim for D <= kLargestDPad: 64, 128 or kLargestDPad.
constexpr int padded_head_dim(int64_t D) {
  return D <= 64 ? 64 : (D <= 128 ? 128 : kLargestDPad);
}

// Prefix splits for `blocks` blocks per split over caches of S slots on a GPU of num_sms SMs: enough blocks
// to cover the GPU twice, at least kMinSplitSlots cache slots per split, at most kMaxSplits. Shapes and the SM
// count only, never cache_len values (no host synchronisation).
inline int choose_splits(int64_t blocks, int64_t S, int num_sms) {
  const int64_t sms = std::max(num_sms, 1);
  if (blocks >= sms) return 1;
  const int64_t want = (2 * sms + blocks - 1) / blocks;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({want, S / kMinSplitSlots, kMaxSplits})));
}

// Whether tree_attention takes these sizes: R = H / H_kv * Nq rows, W mask words, B * H_kv blocks along x and
// the row tiles along y within the kernel's index ranges. Returns nullptr when it does, else what is too large.
inline const char* size_error(int64_t B, int64_t H, int64_t H_kv, int64_t Nq, int64_t W) {
  const int64_t R = (H / H_kv) * Nq;
  if (R > (int64_t{1} << 30)) return "H / H_kv * Nq query rows per KV head";
  if (W > (int64_t{1} << 26)) return "W mask words";
  if (B * H_kv >= (int64_t{1} << 31)) return "B * H_kv";
  const int rows = kWarps * rows_per_warp(R);
  if ((R + rows - 1) / rows > kMaxGridY) return "H / H_kv * Nq query rows per KV head (row tiles > 65535)";
  return nullptr;
}

// Whether paged_tree_attention's kernel takes pages of page_size slots under a block table of max_pages
// columns: its slot arithmetic is 32-bit (logical slots < 2^31, as cache_len's int32 already bounds the
// prefix). Returns nullptr when it does, else what is too large.
inline const char* paged_size_error(int64_t max_pages, int64_t page_size) {
  if (page_size > kMaxPagedSlots || max_pages > kMaxPagedSlots / page_size) return "max_pages * page_size slots";
  return nullptr;
}

struct Plan {
  int64_t R;              // query rows per (request, KV head): the G = H / H_kv heads x Nq queries of its group
  int rpw;                // rows per warp
  int d_pad;              // padded head dim of the kernel
  int num_splits;         // prefix splits (1: no workspace, no merge)
  unsigned grid_x;        // blocks along x: B * H_kv
  unsigned grid_y;        // blocks along y: row tiles of kWarps * rpw rows
  unsigned grid_z;        // blocks along z: num_splits
  size_t smem;            // dynamic shared memory of tree_attention_kernel
  bool smem_opt_in;       // smem > 48 KiB: the launcher raises the kernel's limit first
  int64_t total_rows;     // B * H * Nq: rows of q / out
  unsigned merge_blocks;  // merge_splits_kernel (num_splits > 1): one warp per row
};

// The launches of tree_attention over q [B, H, Nq, D] of elem_bytes-byte elements and caches of S slots
// (size_error must have accepted the sizes).
inline Plan plan(int64_t B, int64_t H, int64_t H_kv, int64_t Nq, int64_t D, int64_t S, int elem_bytes, int num_sms) {
  Plan p{};
  p.R = (H / H_kv) * Nq;
  p.rpw = rows_per_warp(p.R);
  p.d_pad = padded_head_dim(D);
  const int64_t rows = kWarps * p.rpw;
  const int64_t row_tiles = (p.R + rows - 1) / rows;
  p.num_splits = choose_splits(B * H_kv * row_tiles, S, num_sms);
  p.grid_x = static_cast<unsigned>(B * H_kv);
  p.grid_y = static_cast<unsigned>(row_tiles);
  p.grid_z = static_cast<unsigned>(p.num_splits);
  p.smem = static_cast<size_t>(smem_layout(elem_bytes, p.d_pad, p.rpw).bytes);
  p.smem_opt_in = p.smem > kDefaultSmemBytes;
  p.total_rows = B * H * Nq;
  p.merge_blocks = static_cast<unsigned>((p.total_rows + kWarps - 1) / kWarps);
  return p;
}

// The kernel parameter (both kernels read it by value).
struct Params {
  const void* q;
  const void* k;
  const void* v;
  const int32_t* cache_len;
  const uint32_t* mask;
  void* out;
  float* ws_acc;  // [num_splits, total_rows, D] when num_splits > 1
  float* ws_ml;   // [num_splits, total_rows, 2]: running max (base 2) and sum
  // Element strides. Contiguous caches: along B, H_kv, S. Paged caches: along pages, H_kv, page slots.
  int64_t k_sb, k_sh, k_ss, v_sb, v_sh, v_ss;
  int64_t S, total_rows;         // S: logical slots (paged: max_pages * page_size)
  const int32_t* table;          // paged caches: block table int32 [B, max_pages]; nullptr: contiguous
  int64_t max_pages, page_size;  // paged caches only
  int32_t H_kv, Nq, W, R, D, num_splits;
  float qk_scale;       // scale * log2(e)
  bool vec_ok;          // every K/V row start is 16-byte aligned and D is a whole number of 16-byte vectors
  FastDivU32 page_div;  // paged caches: division by page_size
};

// A K or V cache [B, H_kv, S, D] with unit stride along D: its data and element strides along B, H_kv, S.
struct Cache {
  const void* data;
  int64_t sb, sh, ss;
};

// Whether every row of `c` starts 16-byte aligned for elem_bytes-byte elements.
inline bool rows_aligned(const Cache& c, int elem_bytes) {
  const int64_t vec = 16 / elem_bytes;
  return reinterpret_cast<uintptr_t>(c.data) % 16 == 0 && c.sb % vec == 0 && c.sh % vec == 0 && c.ss % vec == 0;
}

// The parameters of the plan's launches over contiguous q / out [B, H, Nq, D], contiguous cache_len [B] and
// mask [B, Nq, W]; the split-K workspaces (ws_acc, ws_ml) are the caller's to set when plan.num_splits > 1.
inline Params make_params(const Plan& plan, const void* q, const Cache& k, const Cache& v, const int32_t* cache_len,
                          const uint32_t* mask, void* out, int64_t H_kv, int64_t Nq, int64_t D, int64_t S, int64_t W,
                          double scale, int elem_bytes) {
  Params p{};
  p.q = q;
  p.k = k.data;
  p.v = v.data;
  p.cache_len = cache_len;
  p.mask = mask;
  p.out = out;
  p.k_sb = k.sb;
  p.k_sh = k.sh;
  p.k_ss = k.ss;
  p.v_sb = v.sb;
  p.v_sh = v.sh;
  p.v_ss = v.ss;
  p.S = S;
  p.total_rows = plan.total_rows;
  p.H_kv = static_cast<int32_t>(H_kv);
  p.Nq = static_cast<int32_t>(Nq);
  p.W = static_cast<int32_t>(W);
  p.R = static_cast<int32_t>(plan.R);
  p.D = static_cast<int32_t>(D);
  p.num_splits = plan.num_splits;
  p.qk_scale = static_cast<float>(scale * 1.4426950408889634);  // log2(e): the kernel's softmax is base 2
  p.vec_ok = D % (16 / elem_bytes) == 0 && rows_aligned(k, elem_bytes) && rows_aligned(v, elem_bytes);
  return p;
}

// A paged K or V cache (NHD [pages, P, H_kv, D] or HND [pages, H_kv, P, D]) with unit stride along D: its
// data and element strides along pages, H_kv and page slots.
struct Pages {
  const void* data;
  int64_t sp, sh, ss;
};

// The parameters of the plan's launches over paged caches read through `table` (int32 [B, max_pages],
// contiguous): logical slot s of request b is on page table[b, s / page_size] at offset s % page_size. The
// plan is that of the logical cache of max_pages * page_size slots (paged_size_error must have accepted
// them); the rest as make_params.
inline Params make_paged_params(const Plan& plan, const void* q, const Pages& k, const Pages& v, const int32_t* table,
                                int64_t max_pages, int64_t page_size, const int32_t* cache_len, const uint32_t* mask,
                                void* out, int64_t H_kv, int64_t Nq, int64_t D, int64_t W, double scale,
                                int elem_bytes) {
  Params p = make_params(plan, q, Cache{k.data, k.sp, k.sh, k.ss}, Cache{v.data, v.sp, v.sh, v.ss}, cache_len, mask,
                         out, H_kv, Nq, D, max_pages * page_size, W, scale, elem_bytes);
  p.table = table;
  p.max_pages = max_pages;
  p.page_size = page_size;
  p.page_div = fast_div_u32(static_cast<uint32_t>(page_size));
  return p;
}

// Elements of the split-K workspaces (fp32): ws_acc [num_splits, total_rows, D], ws_ml [num_splits, total_rows, 2].
inline int64_t ws_acc_elems(const Plan& plan, int64_t D) {
  return plan.num_splits * plan.total_rows * D;
}
inline int64_t ws_ml_elems(const Plan& plan) {
  return plan.num_splits * plan.total_rows * 2;
}

}  // namespace attention_launch

}  // namespace specdec
