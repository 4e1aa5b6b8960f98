// C++ CPU kernel of specdec::tree_attention: tree queries over the committed KV prefix plus their visible
// tree keys (contract: specdec_kernels/ops/attention.py), and of specdec::paged_tree_attention, the same over
// a paged cache (specdec_kernels/ops/paged.py): one kernel, templated on where a K/V row lives.
//
// Work split: one task per (request b, KV head, block of query rows). The rows of a task are the GQA group's
// queries of that KV head (G = H / H_kv heads x Nq queries, contiguous in q), so each K/V tile is converted
// to fp32 once and then used by every row of the block: on fp16/bf16 caches that conversion, not the
// arithmetic, would otherwise dominate. Plain decoding (at most kRowGroup rows per KV head) with at least
// one request per thread takes one task per request and all its KV heads instead, tile by tile, so a slot's
// rows are located once (one block-table read on paged caches) and read together. Each row's arithmetic is
// the same however rows are split over threads, so the thread count never changes a result value.
//
// Per row: flash-style online softmax in fp32 over key tiles of kTile slots: scores of the tile, one rescale
// of the running accumulator per tile (not per key), then acc += p_t * v_t. Rows go through a tile in groups
// of four, so each K and V value loaded serves four queries: scores are outer products over a transposed K
// tile (8-wide fp32 vectors over keys), P V is 8-wide over D, and the routine is built for AVX2/FMA and for
// the baseline ISA, picked at load time. The softmax's max, exp and sum are 8-wide too (exp by a Cephes-style
// polynomial, ~1 ulp): with glibc's scalar expf they took half the kernel's time at 60 tree nodes. Keys no
// row of a group can see are skipped outright (never multiplied by 0), so garbage in unwritten cache slots
// (even NaN) cannot leak into rows that do not see them. A row that sees no key writes zeros.
#include "specdec/attention_checks.h"
#include "specdec/paged_checks.h"
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace specdec {
namespace {

constexpr int64_t kTile = 64;     // key slots per tile
constexpr int64_t kRowGroup = 4;  // rows that share each K / V load (register blocking)
// Sanity bound on D of the raw CPU op (the CPU kernel has no hard limit; the public function has its own
// limits). Not specdec::kMaxHeadDim, the limit of the CUDA and Triton kernels.
constexpr int64_t kCpuMaxHeadDim = 4096;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Eight fp32 lanes as a GCC/Clang vector: one AVX register, or two SSE ones in the baseline build. Loads and
// stores go through memcpy (unaligned, no aliasing questions); a vector times a float broadcasts.
// Vectors never cross a non-inlined call boundary (the helpers are always inlined into attend_tile), so the
// baseline-ISA ABI note of -Wpsabi ("AVX vector return without AVX enabled") does not apply.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float v8f __attribute__((vector_size(32)));

__attribute__((always_inline)) inline v8f load8(const float* p) {
  v8f x;
  std::memcpy(&x, p, sizeof(x));
  return x;
}

__attribute__((always_inline)) inline void store8(float* p, v8f x) {
  std::memcpy(p, &x, sizeof(x));
}

typedef int32_t v8i __attribute__((vector_size(32)));

// exp(x) for x <= 0 (softmax arguments; -inf gives 0): e^x = 2^n e^r with n = round(x / ln 2) and
// |r| <= ln(2) / 2 from a two-part ln 2, e^r by the degree-7 polynomial of Cephes' expf (relative error
// ~1e-7, as std::exp's rounding), 2^n written into the exponent bits. Arguments below -87 (e^x < 1e-38,
// nothing next to the row's max term 1) flush to 0.
__attribute__((always_inline)) inline v8f exp8_nonpos(v8f x) {
  const v8i tiny = x < -87.f;  // lanes of -1 where the result flushes to 0 (also -inf)
  x = tiny ? v8f{} - 87.f : x;
  const v8f fx = x * 1.44269504088896341f + 0.5f;
  v8i n = __builtin_convertvector(fx, v8i);     // truncates toward 0: floor needs -1 where fx < trunc(fx)
  n += (__builtin_convertvector(n, v8f) > fx);  // comparisons give -1 (true) / 0
  const v8f nf = __builtin_convertvector(n, v8f);
  const v8f r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  v8f y = r * 1.9875691500e-4f + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.f;
  v8i bits;
  std::memcpy(&bits, &y, sizeof(bits));
  bits += n << 23;  // y in [0.7, 1.5): adding n to its exponent field multiplies by 2^n (n >= -126 here)
  bits &= ~tiny;
  std::memcpy(&y, &bits, sizeof(y));
  return y;
}

// The hot loop is compiled twice, for AVX2 + FMA and for the baseline ISA, and picked at load time (an ifunc),
// so one wheel runs fast on current x86 machines and still runs on old ones.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SPECDEC_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SPECDEC_CPU_CLONES
#endif

template <typename scalar_t>
inline void to_float(const scalar_t* __restrict__ src, float* __restrict__ dst, int64_t n, float mul = 1.f) {
  for (int64_t d = 0; d < n; ++d) dst[d] = static_cast<float>(src[d]) * mul;
}

// One tile of n <= kTile key slots for rows [0, nr) (nr a multiple of kRowGroup; padding rows have q = 0 and
// are never written out). q rows are pre-scaled by the softmax scale. kT is the tile's K transposed to
// [D][kTile] fp32, so scores are outer-product updates over d (no horizontal sums); vrow[t] points at V row t
// in fp32. bits == nullptr: every row sees every slot; else row r sees slot t iff bit t of bits[r]. Columns
// of slots no row sees hold stale data: their scores are overwritten with -inf and their V rows never read.
// Updates the running max m, sum l and unnormalised accumulator acc of each row.
//
// krow != nullptr (tasks of at most kRowGroup rows: plain decoding, R = H / H_kv): K comes as rows krow[t]
// (fp32, row-major) and the scores are dot products over d instead. With so few rows the transposed tile
// costs more to build (D x kTile strided scalar stores) than the rows use it: this way a K row is converted
// with contiguous, vectorised loads and stores (fp32 caches are read in place), and each row serves four
// queries.
SPECDEC_CPU_CLONES
void attend_tile(const float* __restrict__ q, int64_t nr, int64_t D, const float* __restrict__ kT,
                 const float* const* krow, const float* const* vrow, int64_t n, const uint32_t* bits,
                 float* __restrict__ acc, float* __restrict__ m, float* __restrict__ l) {
  static_assert(kTile % 16 == 0, "scores go in blocks of 16 keys");
  float p[kRowGroup][kTile];
  for (int64_t r0 = 0; r0 < nr; r0 += kRowGroup) {
    uint32_t rb[kRowGroup] = {0u, 0u, 0u, 0u};
    uint32_t any = 0u;  // slots of this tile some row of the group sees (tree tiles are one word at most)
    if (bits != nullptr) {
      for (int i = 0; i < kRowGroup; ++i) any |= rb[i] = bits[r0 + i];
      if (any == 0u) continue;
    }
    auto seen = [&](int64_t t) { return bits == nullptr || ((any >> t) & 1u) != 0u; };
    const float* q0 = q + (r0 + 0) * D;
    const float* q1 = q + (r0 + 1) * D;
    const float* q2 = q + (r0 + 2) * D;
    const float* q3 = q + (r0 + 3) * D;

    if (krow != nullptr) {  // scores by dot products with K rows, 8-wide over d
      for (int64_t t = 0; t < n; ++t) {
        if (!seen(t)) continue;  // its score becomes -inf below
        const float* kr = krow[t];
        v8f a0 = {}, a1 = {}, a2 = {}, a3 = {};
        int64_t d = 0;
        for (; d + 8 <= D; d += 8) {
          const v8f kk = load8(kr + d);
          a0 += load8(q0 + d) * kk;
          a1 += load8(q1 + d) * kk;
          a2 += load8(q2 + d) * kk;
          a3 += load8(q3 + d) * kk;
        }
        float x0 = 0.f, x1 = 0.f, x2 = 0.f, x3 = 0.f;
        for (int j = 0; j < 8; ++j) {
          x0 += a0[j];
          x1 += a1[j];
          x2 += a2[j];
          x3 += a3[j];
        }
        for (; d < D; ++d) {
          x0 += q0[d] * kr[d];
          x1 += q1[d] * kr[d];
          x2 += q2[d] * kr[d];
          x3 += q3[d] * kr[d];
        }
        p[0][t] = x0;
        p[1][t] = x1;
        p[2][t] = x2;
        p[3][t] = x3;
      }
    }
    // Scores of 4 rows x 16 keys per pass: two K vectors and four broadcast q values feed eight FMAs.
    for (int64_t t0 = 0; krow == nullptr && t0 < n; t0 += 16) {
      if (bits != nullptr && ((any >> t0) & 0xFFFFu) == 0u) {  // t0 < 32 in tree tiles
        for (int i = 0; i < kRowGroup; ++i) {
          for (int64_t t = t0; t < t0 + 16; ++t) p[i][t] = kNegInf;
        }
        continue;
      }
      v8f s00 = {}, s01 = {}, s10 = {}, s11 = {}, s20 = {}, s21 = {}, s30 = {}, s31 = {};
      const float* kd = kT + t0;
      for (int64_t d = 0; d < D; ++d, kd += kTile) {
        const v8f k0 = load8(kd), k1 = load8(kd + 8);
        const float x0 = q0[d], x1 = q1[d], x2 = q2[d], x3 = q3[d];
        s00 += x0 * k0;
        s01 += x0 * k1;
        s10 += x1 * k0;
        s11 += x1 * k1;
        s20 += x2 * k0;
        s21 += x2 * k1;
        s30 += x3 * k0;
        s31 += x3 * k1;
      }
      store8(p[0] + t0, s00);
      store8(p[0] + t0 + 8, s01);
      store8(p[1] + t0, s10);
      store8(p[1] + t0 + 8, s11);
      store8(p[2] + t0, s20);
      store8(p[2] + t0 + 8, s21);
      store8(p[3] + t0, s30);
      store8(p[3] + t0 + 8, s31);
    }
    // Scores past n (to the next multiple of 8) and of slots a row does not see become -inf: the softmax
    // below runs 8 keys at a time and turns them into exact zeros.
    const int64_t n8 = (n + 7) / 8 * 8;
    for (int i = 0; i < kRowGroup; ++i) {
      for (int64_t t = n; t < n8; ++t) p[i][t] = kNegInf;
      if (bits != nullptr) {
        for (int64_t t = 0; t < n; ++t) {
          if (!((rb[i] >> t) & 1u)) p[i][t] = kNegInf;
        }
      }
    }

    // Online softmax: scores -> probabilities in place, one rescale factor per row and tile.
    float alpha[kRowGroup];
    for (int i = 0; i < kRowGroup; ++i) {
      const int64_t r = r0 + i;
      v8f vmax = v8f{} + kNegInf;
      for (int64_t t = 0; t < n8; t += 8) {
        const v8f x = load8(p[i] + t);
        vmax = x > vmax ? x : vmax;
      }
      float tile_max = kNegInf;
      for (int j = 0; j < 8; ++j) tile_max = std::max(tile_max, vmax[j]);
      if (tile_max == kNegInf) {  // nothing visible to this row here: leave its state alone
        alpha[i] = 1.f;
        for (int64_t t = 0; t < n8; ++t) p[i][t] = 0.f;
        continue;
      }
      const float m_new = std::max(m[r], tile_max);
      alpha[i] = std::exp(m[r] - m_new);  // 0 on the row's first visible tile (m = -inf)
      v8f vsum = {};
      for (int64_t t = 0; t < n8; t += 8) {
        const v8f e = exp8_nonpos(load8(p[i] + t) - m_new);  // -inf - m_new = -inf -> 0
        store8(p[i] + t, e);
        vsum += e;
      }
      float sum = 0.f;
      for (int j = 0; j < 8; ++j) sum += vsum[j];
      l[r] = l[r] * alpha[i] + sum;
      m[r] = m_new;
    }

    // acc = alpha * acc + P V in blocks of 32 columns held in registers across the tile's keys; each V load
    // serves the four rows.
    float* a0 = acc + (r0 + 0) * D;
    float* a1 = acc + (r0 + 1) * D;
    float* a2 = acc + (r0 + 2) * D;
    float* a3 = acc + (r0 + 3) * D;
    int64_t d0 = 0;
    for (; d0 + 32 <= D; d0 += 32) {
      v8f c[kRowGroup][4];
      for (int j = 0; j < 4; ++j) {
        c[0][j] = load8(a0 + d0 + 8 * j) * alpha[0];
        c[1][j] = load8(a1 + d0 + 8 * j) * alpha[1];
        c[2][j] = load8(a2 + d0 + 8 * j) * alpha[2];
        c[3][j] = load8(a3 + d0 + 8 * j) * alpha[3];
      }
      for (int64_t t = 0; t < n; ++t) {
        if (!seen(t)) continue;
        const float* v = vrow[t] + d0;
        for (int j = 0; j < 4; ++j) {
          const v8f vv = load8(v + 8 * j);
          c[0][j] += p[0][t] * vv;
          c[1][j] += p[1][t] * vv;
          c[2][j] += p[2][t] * vv;
          c[3][j] += p[3][t] * vv;
        }
      }
      for (int j = 0; j < 4; ++j) {
        store8(a0 + d0 + 8 * j, c[0][j]);
        store8(a1 + d0 + 8 * j, c[1][j]);
        store8(a2 + d0 + 8 * j, c[2][j]);
        store8(a3 + d0 + 8 * j, c[3][j]);
      }
    }
    if (d0 < D) {  // the last D % 32 columns
      float* rows[kRowGroup] = {a0, a1, a2, a3};
      for (int i = 0; i < kRowGroup; ++i) {
        for (int64_t d = d0; d < D; ++d) rows[i][d] *= alpha[i];
      }
      for (int64_t t = 0; t < n; ++t) {
        if (!seen(t)) continue;
        const float* v = vrow[t];
        for (int i = 0; i < kRowGroup; ++i) {
          for (int64_t d = d0; d < D; ++d) rows[i][d] += p[i][t] * v[d];
        }
      }
    }
  }
}

#pragma GCC diagnostic pop

void check_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cache_len,
                const at::Tensor& tree_mask, const at::Tensor& out) {
  check_tree_attention_args("specdec::tree_attention (CPU kernel)", c10::DeviceType::CPU, kCpuMaxHeadDim, q, k, v,
                            cache_len, tree_mask, out);
}

// Where the K and V rows of a (request, KV head, logical slot) are. Contiguous caches [B, H_kv, S_max, D]
// address slot s directly; paged caches through the block table: logical slot s of request b is on physical
// page table[b, s / P] at offset s % P (NHD [pages, P, H_kv, D] or HND [pages, H_kv, P, D]: only the strides
// differ). The kernel is the same for both, so paged attention costs one table read per key slot staged
// (shared by the KV heads of a task).
template <typename scalar_t>
struct ContiguousRows {
  const scalar_t *k, *v;
  int64_t ksb, kh, kss, vsb, vh, vss, slots;  // kh, vh: strides along KV heads
  // K and V rows of request b's slot s for KV head 0 (head h: + h * kh, + h * vh).
  void locate(int64_t b, int64_t s, const scalar_t*& kr, const scalar_t*& vr) const {
    kr = k + b * ksb + s * kss;
    vr = v + b * vsb + s * vss;
  }
};

template <typename scalar_t>
struct PagedRows {
  const scalar_t *k, *v;
  int64_t kpage, kslot, kh, vpage, vslot, vh;  // strides (kh, vh: along KV heads)
  const int32_t* table;
  int64_t max_pages, page_size, slots;
  // Entries that are not pages (-1) read page 0: such slots are never visible to a valid query.
  void locate(int64_t b, int64_t s, const scalar_t*& kr, const scalar_t*& vr) const {
    const int64_t pi = s / page_size, off = s - pi * page_size;
    const int64_t page = std::max<int32_t>(table[b * max_pages + pi], 0);
    kr = k + page * kpage + off * kslot;
    vr = v + page * vpage + off * vslot;
  }
};

template <typename scalar_t, typename Rows>
void tree_attention_kernel(const at::Tensor& q, const Rows& kv, int64_t H_kv, const at::Tensor& cache_len,
                           const at::Tensor& tree_mask, double scale_d, at::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), D = q.size(3);
  const int64_t S = kv.slots, W = tree_mask.size(2);
  const int64_t G = H / H_kv, R = G * Nq;  // rows (queries) per (request, KV head)
  const float scale = static_cast<float>(scale_d);
  const scalar_t* qp = q.data_ptr<scalar_t>();
  const int32_t* clp = cache_len.data_ptr<int32_t>();
  const uint32_t* mp = reinterpret_cast<const uint32_t*>(tree_mask.data_ptr<int32_t>());
  scalar_t* op = out.data_ptr<scalar_t>();

  // Split the rows of a (request, KV head) only when there are fewer of those than threads: each extra row
  // block converts the K/V tiles once more.
  const int64_t heads = B * H_kv;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t blocks_per_head = heads >= threads ? 1 : std::min<int64_t>(R, (threads + heads - 1) / heads);
  const int64_t RB = (R + blocks_per_head - 1) / blocks_per_head;  // rows per task
  const int64_t n_row_blocks = (R + RB - 1) / RB;
  const int64_t RB_pad = (RB + kRowGroup - 1) / kRowGroup * kRowGroup;
  constexpr bool kIsFloat = std::is_same_v<scalar_t, float>;
  // K as rows, not a transposed tile (see attend_tile). Chosen by R, not by the task's row block, so the
  // arithmetic of a row never depends on how many threads split the rows.
  const bool by_rows = R <= kRowGroup;
  // Plain decoding (the row path) with at least one request per thread: one task per request covering its
  // HT = H_kv KV heads. A slot's rows are located once for all heads (one table read on paged caches), and
  // the heads read each tile's cache rows one after another (adjacent in NHD pages) instead of one head's
  // rows at a stride of H_kv * D per task. Per-row arithmetic is unchanged, so results do not depend on it.
  const int64_t HT = by_rows && B >= threads ? H_kv : 1;
  const int64_t head_rows = RB_pad * D;  // per-head stride of qf and acc

  at::parallel_for(0, heads / HT * n_row_blocks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> qf(HT * head_rows), acc(HT * head_rows), m(HT * RB_pad), l(HT * RB_pad);
    // kT starts zeroed: columns of slots never staged are read (and their scores discarded), never garbage.
    std::vector<float> kT(D * kTile, 0.f), vbuf(kIsFloat ? 0 : kTile * D), kbuf(kIsFloat ? 0 : kTile * D);
    std::vector<const float*> vrow(kTile), krow(kTile);
    std::vector<const scalar_t*> kloc(kTile), vloc(kTile);  // the tile's rows of KV head 0
    std::vector<uint32_t> rows_bits(RB_pad);

    for (int64_t task = t0; task < t1; ++task) {
      const int64_t grp = task / n_row_blocks, rb = task % n_row_blocks;
      const int64_t b = grp * HT / H_kv, kvh0 = grp * HT % H_kv;
      const int64_t r0 = rb * RB, nr = std::min(R, r0 + RB) - r0;
      const int64_t nr_pad = (nr + kRowGroup - 1) / kRowGroup * kRowGroup;
      for (int64_t hh = 0; hh < HT; ++hh) {
        // Heads h = kvh * G + g are adjacent, so a task's rows of one KV head are contiguous in q and out.
        const int64_t row_base = (b * H_kv + kvh0 + hh) * R + r0;
        float* qh = qf.data() + hh * head_rows;
        to_float(qp + row_base * D, qh, nr * D, scale);
        std::fill(qh + nr * D, qh + nr_pad * D, 0.f);  // padding rows: never written out
        std::fill(acc.begin() + hh * head_rows, acc.begin() + hh * head_rows + nr_pad * D, 0.f);
        std::fill(m.begin() + hh * RB_pad, m.begin() + hh * RB_pad + nr_pad, kNegInf);
        std::fill(l.begin() + hh * RB_pad, l.begin() + hh * RB_pad + nr_pad, 0.f);
      }
      std::fill(rows_bits.begin(), rows_bits.begin() + nr_pad, 0u);
      const int64_t cl = clp[b];
      const int64_t prefix = std::clamp<int64_t>(cl, 0, S);
      const float* const* krows = by_rows ? krow.data() : nullptr;

      // Stage KV head kvh's rows of slots s0 + t (t < n) that `take(t)` selects (located in kloc / vloc): K
      // transposed into kT (fp32), vrow[t] at V row t (in the cache for fp32, converted into vbuf otherwise).
      // Once per tile and KV head for all rows of the task.
      auto stage = [&](int64_t kvh, int64_t n, auto take) {
        for (int64_t t = 0; t < n; ++t) {
          if (!take(t)) continue;
          const scalar_t* ks = kloc[t] + kvh * kv.kh;
          const scalar_t* vs = vloc[t] + kvh * kv.vh;
          if constexpr (kIsFloat) {
            vrow[t] = vs;
            krow[t] = ks;
          } else {
            to_float(vs, vbuf.data() + t * D, D);
            vrow[t] = vbuf.data() + t * D;
            if (by_rows) {
              to_float(ks, kbuf.data() + t * D, D);
              krow[t] = kbuf.data() + t * D;
            }
          }
          if (!by_rows) {
            float* col = kT.data() + t;
            for (int64_t d = 0; d < D; ++d) col[d * kTile] = static_cast<float>(ks[d]);
          }
        }
      };
      // One tile for every KV head of the task; bits as attend_tile's.
      auto tile = [&](int64_t s0, int64_t n, auto take, const uint32_t* bits) {
        for (int64_t t = 0; t < n; ++t) {
          if (take(t)) kv.locate(b, s0 + t, kloc[t], vloc[t]);  // slots not taken are never located
        }
        for (int64_t hh = 0; hh < HT; ++hh) {
          stage(kvh0 + hh, n, take);
          attend_tile(qf.data() + hh * head_rows, nr_pad, D, kT.data(), krows, vrow.data(), n, bits,
                      acc.data() + hh * head_rows, m.data() + hh * RB_pad, l.data() + hh * RB_pad);
        }
      };

      for (int64_t s0 = 0; s0 < prefix; s0 += kTile) {
        tile(s0, std::min(kTile, prefix - s0), [](int64_t) { return true; }, nullptr);
      }
      // Tree slots cl + j, j < 32 W, inside [0, S); tiles of one mask word so a row's bits are one load.
      const int64_t tree_lo = std::max<int64_t>(cl, 0), tree_hi = std::min<int64_t>(cl + 32 * W, S);
      for (int64_t s0 = tree_lo; s0 < tree_hi;) {
        const int64_t j = s0 - cl;
        const int64_t n = std::min<int64_t>(32 - j % 32, tree_hi - s0);
        uint32_t any = 0u;
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t i = (r0 + r) % Nq;
          uint32_t word = mp[(b * Nq + i) * W + j / 32] >> (j % 32);
          if (n < 32) word &= (1u << n) - 1u;  // bits past the tile (slots >= S_max)
          rows_bits[r] = word;
          any |= word;
        }
        if (any != 0u) {  // unseen slots are never read
          tile(s0, n, [&](int64_t t) { return ((any >> t) & 1u) != 0u; }, rows_bits.data());
        }
        s0 += n;
      }

      for (int64_t hh = 0; hh < HT; ++hh) {
        const int64_t row_base = (b * H_kv + kvh0 + hh) * R + r0;
        scalar_t* orow = op + row_base * D;
        const float* ah = acc.data() + hh * head_rows;
        const float* lh = l.data() + hh * RB_pad;
        for (int64_t r = 0; r < nr; ++r) {
          const float inv = lh[r] > 0.f ? 1.f / lh[r] : 0.f;  // a row without visible keys writes zeros
          for (int64_t d = 0; d < D; ++d) orow[r * D + d] = static_cast<scalar_t>(ah[r * D + d] * inv);
        }
      }
    }
  });
}

// Calls fn(scalar_t{}) for the kernels' three dtypes (the checks have refused any other).
template <typename Fn>
void by_dtype(at::ScalarType dt, const char* op, Fn&& fn) {
  switch (dt) {
    case at::kFloat:
      fn(float{});
      break;
    case at::kHalf:
      fn(c10::Half{});
      break;
    case at::kBFloat16:
      fn(c10::BFloat16{});
      break;
    default:
      TORCH_CHECK(false, op, ": unsupported dtype ", dt);
  }
}

template <typename scalar_t>
ContiguousRows<scalar_t> contiguous_rows(const at::Tensor& k, const at::Tensor& v) {
  return {k.data_ptr<scalar_t>(),
          v.data_ptr<scalar_t>(),
          k.stride(0),
          k.stride(1),
          k.stride(2),
          v.stride(0),
          v.stride(1),
          v.stride(2),
          k.size(2)};
}

template <typename scalar_t>
PagedRows<scalar_t> paged_rows(const at::Tensor& k, const at::Tensor& v, const at::Tensor& table, bool hnd) {
  const int slot = hnd ? 2 : 1, head = hnd ? 1 : 2;
  const int64_t P = k.size(slot);
  return {k.data_ptr<scalar_t>(),
          v.data_ptr<scalar_t>(),
          k.stride(0),
          k.stride(slot),
          k.stride(head),
          v.stride(0),
          v.stride(slot),
          v.stride(head),
          table.data_ptr<int32_t>(),
          table.size(1),
          P,
          table.size(1) * P};
}

void tree_attention_cpu(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                        const at::Tensor& cache_len, const at::Tensor& tree_mask, double scale, at::Tensor out) {
  check_args(q, k_cache, v_cache, cache_len, tree_mask, out);
  if (out.numel() == 0) return;
  by_dtype(q.scalar_type(), "specdec::tree_attention", [&](auto tag) {
    using scalar_t = decltype(tag);
    tree_attention_kernel<scalar_t>(q, contiguous_rows<scalar_t>(k_cache, v_cache), k_cache.size(1), cache_len,
                                    tree_mask, scale, out);
  });
}

void paged_tree_attention_cpu(const at::Tensor& q, const at::Tensor& k_pages, const at::Tensor& v_pages,
                              const at::Tensor& block_table, const at::Tensor& cache_len, const at::Tensor& tree_mask,
                              bool hnd, double scale, at::Tensor out) {
  check_paged_tree_attention_args("specdec::paged_tree_attention (CPU kernel)", c10::DeviceType::CPU, kCpuMaxHeadDim, q,
                                  k_pages, v_pages, block_table, cache_len, tree_mask, hnd, out);
  if (out.numel() == 0) return;
  by_dtype(q.scalar_type(), "specdec::paged_tree_attention", [&](auto tag) {
    using scalar_t = decltype(tag);
    tree_attention_kernel<scalar_t>(q, paged_rows<scalar_t>(k_pages, v_pages, block_table, hnd),
                                    k_pages.size(hnd ? 1 : 2), cache_len, tree_mask, scale, out);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) {
  m.impl("tree_attention", &tree_attention_cpu);
  m.impl("paged_tree_attention", &paged_tree_attention_cpu);
}

}  // namespace specdec
