// C++ CPU kernel of specdec::compact_kv: in-place KV cache compaction after tree verification.
//
// Every tensor of `caches` is a 4-D view [B, X, S_max, Y], contiguous along Y (KV: X = H_kv, Y = D). For
// request b and j < accept_len[b], the row at slot cache_len[b] + accept_nodes[b, j] moves to slot
// cache_len[b] + j. Rows are copied as raw bytes, so tensors of different dtypes share one call.
//
// Why copying in increasing j, in place, is safe (no staging buffer):
//   accept_nodes is root first and strictly increasing with accept_nodes[b, j] >= j, so for j' > j
//   src(j') = c + a[j'] > c + a[j] >= c + j = dst(j):
//   the write of row j never lands on the source of a later row, and the earlier sources it may land on
//   have already been read. Rows with src == dst (the accepted prefix a[j] = j) are skipped. Each row is
//   one contiguous run of bytes and distinct slots do not share bytes, so each copy is a plain memcpy.
// Out-of-range indices never touch memory outside the tensor: a row whose source or destination slot is
// outside [0, S_max), or whose index is negative (-1 padding), is skipped (decode-path ops do not raise on
// values, so this is the only sane failure mode without a host sync).
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <c10/util/ArrayRef.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "specdec/compact_checks.h"
#include "specdec/paged_checks.h"

namespace specdec {
namespace {

struct CacheView {
  char* base;
  int64_t X, S, row_bytes;
  int64_t sb, sx, ss;  // strides in bytes
};

void compact_kv_cpu(at::TensorList caches, const at::Tensor& cache_len, const at::Tensor& accept_nodes,
                    const at::Tensor& accept_len) {
  check_compact_kv_args("specdec::compact_kv", kCpuCompactKernels, caches, cache_len, accept_nodes, accept_len);
  const int64_t B = cache_len.size(0), W = accept_nodes.size(1);
  std::vector<CacheView> views;
  views.reserve(caches.size());
  for (size_t i = 0; i < caches.size(); ++i) {
    const at::Tensor& t = caches[i];
    if (t.numel() == 0) continue;
    const int64_t es = static_cast<int64_t>(t.element_size());
    views.push_back({static_cast<char*>(t.data_ptr()), t.size(1), t.size(2), t.size(3) * es, t.stride(0) * es,
                     t.stride(1) * es, t.stride(2) * es});
  }
  if (views.empty() || B == 0 || W == 0) return;
  const int32_t* cl = cache_len.data_ptr<int32_t>();
  const int32_t* an = accept_nodes.data_ptr<int32_t>();
  const int32_t* al = accept_len.data_ptr<int32_t>();

  // Work items: (tensor, request, head) tiles, each W rows of row_bytes. Tiles are independent (disjoint
  // bytes), so they split across threads freely; the grain keeps a task at >= ~64 KiB of copies.
  std::vector<int64_t> offset(views.size() + 1, 0);
  int64_t row_bytes_max = 1;
  for (size_t i = 0; i < views.size(); ++i) {
    offset[i + 1] = offset[i] + B * views[i].X;
    row_bytes_max = std::max(row_bytes_max, views[i].row_bytes);
  }
  const int64_t grain = std::max<int64_t>(1, (int64_t{64} << 10) / (row_bytes_max * std::max<int64_t>(W, 1)));
  at::parallel_for(0, offset.back(), grain, [&](int64_t t0, int64_t t1) {
    size_t v = std::upper_bound(offset.begin(), offset.end(), t0) - offset.begin() - 1;
    for (int64_t t = t0; t < t1; ++t) {
      while (t >= offset[v + 1]) ++v;
      const CacheView& cv = views[v];
      const int64_t b = (t - offset[v]) / cv.X, x = (t - offset[v]) % cv.X;
      const int64_t c = cl[b];
      const int64_t n = std::min<int64_t>(al[b], W);
      if (n <= 1 || c < 0) continue;
      char* tile = cv.base + b * cv.sb + x * cv.sx;
      const int32_t* a = an + b * W;
      for (int64_t j = 1; j < n; ++j) {  // increasing j: see the safety argument at the top
        const int64_t src = c + a[j], dst = c + j;
        if (a[j] == j || a[j] < 0 || src >= cv.S || dst >= cv.S) continue;
        std::memmove(tile + dst * cv.ss, tile + src * cv.ss, static_cast<size_t>(cv.row_bytes));
      }
    }
  });
}

// compact_kv over paged caches: the same moves over logical slots, each mapped through the block table to
// (page, offset). Distinct logical slots of a request are distinct physical rows (its pages are its own), so
// the safety argument above holds unchanged. A row whose slot lies past the table or on a page entry < 0 is
// skipped, like an out-of-range slot above.
void compact_paged_kv_cpu(at::TensorList caches, const at::Tensor& block_table, const at::Tensor& cache_len,
                          const at::Tensor& accept_nodes, const at::Tensor& accept_len, bool hnd) {
  check_compact_paged_kv_args("specdec::compact_paged_kv", c10::DeviceType::CPU, caches, block_table, cache_len,
                              accept_nodes, accept_len, hnd);
  const int64_t B = cache_len.size(0), W = accept_nodes.size(1), max_pages = block_table.size(1);
  const int slot = hnd ? 2 : 1, head = hnd ? 1 : 2;
  struct PageView {
    char* base;
    int64_t X, P, row_bytes, s_page, s_head, s_slot;  // strides in bytes
  };
  std::vector<PageView> views;
  for (const at::Tensor& t : caches) {
    if (t.numel() == 0) continue;
    const int64_t es = static_cast<int64_t>(t.element_size());
    views.push_back({static_cast<char*>(t.data_ptr()), t.size(head), t.size(slot), t.size(3) * es, t.stride(0) * es,
                     t.stride(head) * es, t.stride(slot) * es});
  }
  if (views.empty() || B == 0 || W == 0) return;
  const int32_t* table = block_table.data_ptr<int32_t>();
  const int32_t* cl = cache_len.data_ptr<int32_t>();
  const int32_t* an = accept_nodes.data_ptr<int32_t>();
  const int32_t* al = accept_len.data_ptr<int32_t>();
  std::vector<int64_t> offset(views.size() + 1, 0);
  int64_t row_bytes_max = 1;
  for (size_t i = 0; i < views.size(); ++i) {
    offset[i + 1] = offset[i] + B * views[i].X;
    row_bytes_max = std::max(row_bytes_max, views[i].row_bytes);
  }
  // As compact_kv: a task moves >= ~64 KiB, so small acceptances do not pay for waking other threads.
  const int64_t grain = std::max<int64_t>(1, (int64_t{64} << 10) / (row_bytes_max * std::max<int64_t>(W, 1)));
  at::parallel_for(0, offset.back(), grain, [&](int64_t t0, int64_t t1) {
    size_t v = std::upper_bound(offset.begin(), offset.end(), t0) - offset.begin() - 1;
    for (int64_t t = t0; t < t1; ++t) {
      while (t >= offset[v + 1]) ++v;
      const PageView& pv = views[v];
      const int64_t b = (t - offset[v]) / pv.X, x = (t - offset[v]) % pv.X;
      const int64_t c = cl[b], n = std::min<int64_t>(al[b], W), S = max_pages * pv.P;
      if (n <= 1 || c < 0) continue;
      const int32_t* a = an + b * W;
      const int32_t* pages = table + b * max_pages;
      auto row = [&](int64_t s) -> char* {  // nullptr: no page holds logical slot s
        const int32_t page = pages[s / pv.P];
        return page < 0 ? nullptr : pv.base + page * pv.s_page + x * pv.s_head + (s % pv.P) * pv.s_slot;
      };
      for (int64_t j = 1; j < n; ++j) {  // increasing j: see the safety argument at the top
        const int64_t src = c + a[j], dst = c + j;
        if (a[j] == j || a[j] < 0 || src >= S || dst >= S) continue;
        char *from = row(src), *to = row(dst);
        if (from != nullptr && to != nullptr) std::memmove(to, from, static_cast<size_t>(pv.row_bytes));
      }
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) {
  m.impl("compact_kv", &compact_kv_cpu);
  m.impl("compact_paged_kv", &compact_paged_kv_cpu);
}

}  // namespace specdec
