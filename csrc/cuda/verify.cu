// CUDA kernels of specdec::verify_greedy and specdec::verify_sample.
//
// The walk is the reference's state machine (specdec_kernels/reference/verify.py): state = (accepted node u,
// candidate child c); a step tests c: accept -> descend (c = first_child[c]), reject -> c = next_sibling[c];
// at most N steps, links outside [0, N) end a list, so malformed trees cannot loop.
//
// * verify_greedy with argmax ids: one thread per request walks (the data of a walk is a few hundred bytes).
// * verify_greedy with logits and verify_sample: one thread block per request. Thread 0 walks; the whole
//   block works only on the logits rows of nodes the walk ACCEPTS (argmax, softmax and filters are never
//   computed for the other rows), with block-wide reductions over the vocabulary:
//     - argmax (NaN first, ties to the lower id, as torch.argmax);
//     - top-k threshold: the k-th largest z = logit / T, found by a 16-ary search over the order-preserving
//       32-bit key of z (15 pivots counted per pass, 8 passes), never a sort;
//     - top-p threshold: the same search on the bits of p (mass of p >= pivot per pass): keeps exactly the
//       reference's set "tokens whose strictly-more-probable mass is < top_p, plus ties";
//     - the residual distribution after rejections is never materialised: it is evaluated pointwise from
//       the base distribution and the per-rejection normalisers (at most one block pass per rejection, and
//       none without draft_probs);
//     - the bonus token by inverse CDF in id order: per-warp segment sums, then the one warp whose segment
//       holds the crossing scans it with warp prefix sums.
//   All reductions have a fixed order, so results are deterministic run to run.
// Agreement with the reference is exact except where a uniform falls within rounding of a decision boundary.
#include "common.cuh"
#include "specdec/limits.h"
#include "specdec/verify_checks.h"
#include "specdec/verify_launch.h"

#include <ATen/Dispatch.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <optional>

// The kernels compute in fp32: dispatch only the dtypes the public functions accept (fp64 logits would
// break argmax ties differently from torch.argmax, and each extra type is another large instantiation).
#define SPECDEC_DISPATCH_FP32_FP16_BF16(TYPE, NAME, ...)                                                \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                                                        \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) \
                         AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

namespace specdec {
namespace {

constexpr int kThreads = verify_launch::kLogitsThreads;  // threads of verify_logits_kernel
constexpr int kWarps = kThreads / 32;
constexpr int kPivots = 15;  // 16-ary search: 4 bits of the 32-bit key per pass
// Rejections recorded per node (shared memory) are at most N - 1: N is limited to kMaxTreeNodes
// (specdec/limits.h, set in specdec_kernels/_limits.py).
constexpr int kMaxNodes = static_cast<int>(kMaxTreeNodes);

// What the kernels accept (specdec/verify_checks.h): N <= kMaxNodes, one request per block along grid x,
// int32 vocabulary loops that step by kThreads.
constexpr VerifyKernels kCudaVerifyKernels{c10::DeviceType::CUDA, false, kMaxNodes, INT32_MAX,
                                           INT32_MAX - 2 * kThreads};

// ---------------------------------------------------------------------------------------------------
// Walk state (thread 0 only).
struct Walk {
  const int32_t* fc;
  const int32_t* ns;
  int32_t* path;
  int32_t N;
  int32_t cur, cand, length, steps;

  __device__ int32_t follow(const int32_t* links, int32_t node) const {
    if (node < 0 || node >= N) return -1;
    const int32_t nxt = links[node];
    return nxt >= 0 && nxt < N ? nxt : -1;
  }
  __device__ void init(bool valid) {
    cur = 0;
    length = 1;
    steps = 0;
    cand = valid ? follow(fc, 0) : -1;
  }
  __device__ bool active() const { return steps < N && cand >= 0 && length < N; }
  __device__ void accept() {
    path[length++] = cand;
    cur = cand;
    cand = follow(fc, cand);
    ++steps;
  }
  __device__ void reject() {
    cand = follow(ns, cand);
    ++steps;
  }
};

__device__ void write_tokens(const int64_t* tok, const int32_t* path, int32_t length, int64_t bonus, int64_t* out_tok,
                             int32_t N, int tid, int nthreads) {
  for (int32_t j = tid; j < N; j += nthreads) {
    out_tok[j] = j < length - 1 ? tok[path[j + 1]] : (j == length - 1 ? bonus : -1);
  }
}

// ---------------------------------------------------------------------------------------------------
// verify_greedy with argmax ids: one thread per request.
__global__ void greedy_ids_kernel(const int32_t* __restrict__ first_child, const int32_t* __restrict__ next_sibling,
                                  const bool* __restrict__ valid, const int64_t* __restrict__ tokens,
                                  const int64_t* __restrict__ amax, int32_t* __restrict__ accept_nodes,
                                  int32_t* __restrict__ accept_len, int64_t* __restrict__ out_tokens, int64_t B,
                                  int32_t N) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= B) return;
  int32_t* path = accept_nodes + b * N;
  for (int32_t j = 0; j < N; ++j) path[j] = j == 0 ? 0 : -1;
  Walk w{first_child + b * N, next_sibling + b * N, path, N};
  w.init(valid[b]);
  const int64_t* tok = tokens + b * N;
  const int64_t* am = amax + b * N;
  while (w.active()) {
    if (tok[w.cand] == am[w.cur])
      w.accept();
    else
      w.reject();
  }
  accept_len[b] = w.length;
  write_tokens(tok, path, w.length, am[w.cur], out_tokens + b * N, N, 0, 1);
}

// ---------------------------------------------------------------------------------------------------
// Block-wide helpers (blockDim.x == kThreads).

template <typename T>
__device__ __forceinline__ float to_f(T x) {
  return static_cast<float>(x);
}

struct ArgMax {
  float v;
  int32_t i;
};

// torch.argmax order: NaN beats everything, then larger values, ties to the lower index.
__device__ __forceinline__ ArgMax better(ArgMax a, ArgMax b) {
  const bool an = isnan(a.v), bn = isnan(b.v);
  if (an != bn) return an ? a : b;
  if (!an && a.v != b.v) return a.v > b.v ? a : b;
  return a.i <= b.i ? a : b;
}

struct Scratch {
  float red[kWarps][kPivots];
  ArgMax am[kWarps];
  float wsum[kWarps];
};

__device__ ArgMax block_argmax(ArgMax x, Scratch& s) {
  for (int o = 16; o > 0; o >>= 1) {
    ArgMax y{__shfl_xor_sync(0xffffffffu, x.v, o), __shfl_xor_sync(0xffffffffu, x.i, o)};
    x = better(x, y);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) s.am[warp] = x;
  __syncthreads();
  ArgMax r = s.am[0];
  for (int w = 1; w < kWarps; ++w) r = better(r, s.am[w]);
  return r;
}

// Sums K values per thread over the block in a fixed order; every thread gets the totals.
template <int K>
__device__ void block_sum(float (&v)[K], Scratch& s) {
#pragma unroll
  for (int k = 0; k < K; ++k) {
    for (int o = 16; o > 0; o >>= 1) v[k] += __shfl_xor_sync(0xffffffffu, v[k], o);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) s.red[warp][k] = v[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) {
    float t = 0.f;
    for (int w = 0; w < kWarps; ++w) t += s.red[w][k];
    v[k] = t;
  }
}

__device__ __forceinline__ float block_sum1(float x, Scratch& s) {
  float v[1] = {x};
  block_sum<1>(v, s);
  return v[0];
}

// Order-preserving 32-bit key of a float (larger float -> larger key; -0 and +0 share one key, as they
// compare equal).
__device__ __forceinline__ uint32_t ordered_key(float z) {
  const uint32_t u = z == 0.f ? 0u : __float_as_uint(z);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The largest key w with measure(key >= w) >= target (0 if even w = 0 falls short), by 16-ary search:
// measure_of(x, &key, &weight) gives element x's key and weight (1 for counts, p for mass).
template <typename F>
__device__ uint32_t search_threshold(int32_t V, float target, F measure_of, Scratch& s) {
  uint64_t lo = 0, hi = 0xffffffffull;  // measure(>= lo) >= target (or lo = 0); measure(>= hi + 1) < target
  while (lo < hi) {
    const uint64_t span = hi - lo + 1;
    uint32_t piv[kPivots];
#pragma unroll
    for (int i = 0; i < kPivots; ++i) piv[i] = static_cast<uint32_t>(lo + span * (i + 1) / (kPivots + 1));
    float m[kPivots];
#pragma unroll
    for (int i = 0; i < kPivots; ++i) m[i] = 0.f;
    for (int32_t x = threadIdx.x; x < V; x += kThreads) {
      uint32_t key;
      float wgt;
      measure_of(x, key, wgt);
#pragma unroll
      for (int i = 0; i < kPivots; ++i) m[i] += key >= piv[i] ? wgt : 0.f;
    }
    block_sum<kPivots>(m, s);
    // Keep the interval between the largest pivot that still reaches the target (measures shrink as the
    // pivot grows) and the next one; unrolled so that the pivots stay in registers.
    uint64_t new_lo = lo, new_hi = piv[0] > lo ? static_cast<uint64_t>(piv[0]) - 1 : lo;
#pragma unroll
    for (int i = 0; i < kPivots; ++i) {
      if (m[i] >= target) {
        new_lo = piv[i];
        new_hi = i + 1 < kPivots ? static_cast<uint64_t>(piv[i + 1 < kPivots ? i + 1 : i]) - 1 : hi;
      }
    }
    lo = new_lo;
    hi = new_hi < lo ? lo : new_hi;
  }
  return static_cast<uint32_t>(lo);
}

// The filtered target distribution of one row (reference.verify.filtered_probs), as parameters that let
// any thread evaluate p(x) pointwise.
struct Dist {
  float t, m, S, Z;
  uint32_t kth_key, p_key;  // z kept iff ordered_key(z) >= kth_key; p kept iff bits(p) >= p_key
  bool use_k, use_p;
};

template <typename T>
__device__ __forceinline__ float base_prob(const T* row, int32_t x, const Dist& d) {
  const float z = __fdiv_rn(to_f(row[x]), d.t);
  if (d.use_k && ordered_key(z) < d.kth_key) return 0.f;
  const float p = __fdiv_rn(expf(z - d.m), d.S);
  if (d.use_p && __float_as_uint(p) < d.p_key) return 0.f;
  return __fdiv_rn(p, d.Z);
}

// The residual after r rejections, evaluated pointwise (see the file comment): without draft_probs each
// rejection zeroes its token and renormalises; with them p <- normalise(max(p - q, 0)) then q(x_i) <- 0,
// q renormalised. zs / qs hold the normalisers (sums), xs the rejected tokens.
struct Residual {
  int64_t xs[kMaxNodes];
  float zs[kMaxNodes];
  float qs[kMaxNodes];
  int32_t count;
};

__device__ __forceinline__ void residual(int64_t x, float& p, float& q, const Residual& r, bool has_q) {
  for (int32_t i = 0; i < r.count; ++i) {
    if (has_q) {
      p = r.zs[i] > 0 ? __fdiv_rn(fmaxf(p - q, 0.f), r.zs[i]) : 0.f;
      q = x == r.xs[i] ? 0.f : q;
      q = r.qs[i] > 0 ? __fdiv_rn(q, r.qs[i]) : 0.f;
    } else {
      p = x == r.xs[i] ? 0.f : p;
      p = r.zs[i] > 0 ? __fdiv_rn(p, r.zs[i]) : 0.f;
    }
  }
}

struct Shared {
  Scratch s;
  Residual res;
  Dist dist;
  float q_sum;
  int32_t node;    // row to load next, -1 when the walk is over
  int32_t action;  // 0 = next row, 1 = rejection needing a block pass, 2 = done
  int64_t bonus;
  int64_t argmax;
};
// Static shared memory of verify_logits_kernel (Shared plus s_len) within the 48 KiB a block gets without an
// opt-in; the rejection records grow with kMaxNodes.
static_assert(sizeof(Shared) + sizeof(int32_t) <= 48 * 1024,
              "verify_logits_kernel keeps up to N rejections in shared memory: SPECDEC_MAX_TREE_NODES is too large");

template <typename T>
__device__ void load_dist(const T* row, int32_t V, float temperature, int32_t top_k, float top_p, float row_max,
                          Shared& sh) {
  Dist d;
  d.t = temperature > 0 ? temperature : 1.f;
  d.use_k = top_k > 0 && top_k < V;
  d.use_p = top_p < 1.f;
  d.kth_key = 0;
  d.p_key = 0;
  d.S = d.Z = 1.f;
  d.m = __fdiv_rn(row_max, d.t);  // the max of z is the z of the max logit (division by t > 0 is monotone)
  if (d.use_k) {
    d.kth_key = search_threshold(
        V, static_cast<float>(top_k),
        [&](int32_t x, uint32_t& key, float& w) {
          key = ordered_key(__fdiv_rn(to_f(row[x]), d.t));
          w = 1.f;
        },
        sh.s);
  }
  float s = 0.f;
  for (int32_t x = threadIdx.x; x < V; x += kThreads) {
    const float z = __fdiv_rn(to_f(row[x]), d.t);
    if (!d.use_k || ordered_key(z) >= d.kth_key) s += expf(z - d.m);
  }
  d.S = block_sum1(s, sh.s);
  if (d.use_p) {
    Dist pre = d;
    pre.use_p = false;
    uint32_t key = search_threshold(
        V, top_p,
        [&](int32_t x, uint32_t& k, float& w) {
          w = base_prob(row, x, pre);  // Z = 1 here: the softmax over the top-k set
          k = __float_as_uint(w);
        },
        sh.s);
    const uint32_t pmax_key = __float_as_uint(__fdiv_rn(1.f, d.S));  // p of the most probable token
    d.p_key = key < pmax_key ? key : pmax_key;                       // always keep the most probable
  }
  if (d.use_p) {
    Dist pre = d;
    float z = 0.f;
    for (int32_t x = threadIdx.x; x < V; x += kThreads) z += base_prob(row, x, pre);
    d.Z = block_sum1(z, sh.s);
  } else {
    d.Z = 1.f;  // softmax already normalised; renormalising would only add rounding
  }
  if (threadIdx.x == 0) sh.dist = d;
  __syncthreads();
}

template <typename T, typename Q>
__global__ void __launch_bounds__(kThreads)
    verify_logits_kernel(const int32_t* __restrict__ first_child, const int32_t* __restrict__ next_sibling,
                         const bool* __restrict__ valid, const int64_t* __restrict__ tokens,
                         const T* __restrict__ logits, const float* __restrict__ uniforms,
                         const float* __restrict__ temperature, const int32_t* __restrict__ top_k,
                         const float* __restrict__ top_p, const Q* __restrict__ draft, bool sample,
                         int32_t* __restrict__ accept_nodes, int32_t* __restrict__ accept_len,
                         int64_t* __restrict__ out_tokens, int32_t N, int32_t V) {
  __shared__ Shared sh;
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  int32_t* path = accept_nodes + b * N;
  const int64_t* tok = tokens + b * N;
  const float* u = sample ? uniforms + b * (N + 1) : nullptr;
  const float temp = sample ? temperature[b] : 0.f;
  const bool greedy = !sample || !(temp > 0);  // NaN temperature is greedy too, like the reference
  const bool has_q = !greedy && draft != nullptr;
  for (int32_t j = tid; j < N; j += kThreads) path[j] = j == 0 ? 0 : -1;
  Walk w{first_child + b * N, next_sibling + b * N, path, N};
  if (tid == 0) {
    w.init(valid[b]);
    sh.node = 0;
    sh.res.count = 0;
  }
  __syncthreads();
  while (true) {
    const int32_t node = sh.node;
    const T* row = logits + (b * N + node) * static_cast<int64_t>(V);
    // Argmax (greedy test, and the sampling fallback), one pass.
    ArgMax am{-INFINITY, INT32_MAX};
    for (int32_t x = tid; x < V; x += kThreads) am = better(am, ArgMax{to_f(row[x]), x});
    am = block_argmax(am, sh.s);
    const Q* qrow = has_q ? draft + (b * N + node) * static_cast<int64_t>(V) : nullptr;
    if (!greedy) {
      load_dist(row, V, temp, top_k[b], top_p[b], am.v, sh);
      if (has_q) {
        float s = 0.f;
        for (int32_t x = tid; x < V; x += kThreads) s += fmaxf(to_f(qrow[x]), 0.f);
        s = block_sum1(s, sh.s);
        if (tid == 0) sh.q_sum = s;
      }
    }
    if (tid == 0) {
      sh.argmax = am.i;
      sh.res.count = 0;
    }
    __syncthreads();
    // Test the children of `node` until one is accepted or none is left.
    int action;
    while (true) {
      if (tid == 0) {
        sh.action = 2;
        while (w.active()) {
          const int64_t x = tok[w.cand];
          const bool in_vocab = x >= 0 && x < V;
          bool acc;
          float px = 0.f, qx = 0.f;
          if (greedy) {
            acc = x == sh.argmax;
          } else {
            if (in_vocab) {
              px = base_prob(row, static_cast<int32_t>(x), sh.dist);
              if (has_q) qx = sh.q_sum > 0 ? __fdiv_rn(fmaxf(to_f(qrow[x]), 0.f), sh.q_sum) : 0.f;
              residual(x, px, qx, sh.res, has_q);
            }
            acc = has_q ? u[w.cand] * qx < px : u[w.cand] < px;
          }
          if (acc) {
            w.accept();
            sh.node = w.cur;
            sh.action = 0;
            break;
          }
          w.reject();
          if (greedy) continue;
          const int32_t r = sh.res.count;
          sh.res.xs[r] = in_vocab ? x : -1;
          if (has_q) {  // normalisers need a pass over the row: hand over to the block
            sh.action = 1;
            break;
          }
          sh.res.zs[r] = 1.f - px;  // sum of the residual (sums to 1) without token x
          sh.res.count = r + 1;
        }
      }
      __syncthreads();
      action = sh.action;
      if (action != 1) break;
      // A rejection with draft_probs: Z = sum max(p - q, 0), Q = sum of q without x (current residuals).
      const int64_t xr = sh.res.xs[sh.res.count];
      float sums[2] = {0.f, 0.f};
      for (int32_t x = tid; x < V; x += kThreads) {
        float p = base_prob(row, x, sh.dist);
        float q = sh.q_sum > 0 ? __fdiv_rn(fmaxf(to_f(qrow[x]), 0.f), sh.q_sum) : 0.f;
        residual(x, p, q, sh.res, true);
        sums[0] += fmaxf(p - q, 0.f);
        sums[1] += x == xr ? 0.f : q;
      }
      block_sum<2>(sums, sh.s);
      if (tid == 0) {
        sh.res.zs[sh.res.count] = sums[0];
        sh.res.qs[sh.res.count] = sums[1];
        ++sh.res.count;
      }
      __syncthreads();
    }
    if (action == 2) break;
  }
  // The walk is over: bonus token.
  if (greedy) {
    if (tid == 0) sh.bonus = sh.argmax;
  } else {
    const int32_t node = sh.node;
    const T* row = logits + (b * N + node) * static_cast<int64_t>(V);
    const Q* qrow = has_q ? draft + (b * N + node) * static_cast<int64_t>(V) : nullptr;
    auto weight = [&](int32_t x) {
      float p = base_prob(row, x, sh.dist);
      float q = has_q && sh.q_sum > 0 ? __fdiv_rn(fmaxf(to_f(qrow[x]), 0.f), sh.q_sum) : 0.f;
      residual(x, p, q, sh.res, has_q);
      return p;
    };
    // Segment per warp: [seg * warp, seg * (warp + 1)); lanes read it coalesced.
    const int warp = tid / 32, lane = tid % 32;
    const int32_t seg = (V + kWarps - 1) / kWarps;
    const int32_t x0 = warp * seg, x1 = min(V, x0 + seg);
    float s = 0.f;
    int32_t last_pos = -1;
    for (int32_t x = x0 + lane; x < x1; x += 32) {
      const float p = weight(x);
      s += p;
      if (p > 0) last_pos = x;
    }
    for (int o = 16; o > 0; o >>= 1) {
      s += __shfl_xor_sync(0xffffffffu, s, o);
      last_pos = max(last_pos, __shfl_xor_sync(0xffffffffu, last_pos, o));
    }
    __syncthreads();
    if (lane == 0) {
      sh.s.wsum[warp] = s;
      sh.s.am[warp].i = last_pos;
    }
    __syncthreads();
    float total = 0.f;
    int32_t last_any = -1;
    for (int k = 0; k < kWarps; ++k) {
      total += sh.s.wsum[k];
      last_any = max(last_any, sh.s.am[k].i);
    }
    if (tid == 0) sh.bonus = -2;  // not found yet
    __syncthreads();
    if (total > 0) {
      const float thr = u[N] * total;
      float before = 0.f;  // mass of the warps before this one, in the same order as `total`
      for (int k = 0; k < warp; ++k) before += sh.s.wsum[k];
      const bool mine = before + sh.s.wsum[warp] > thr && !(before > thr) && sh.s.wsum[warp] > 0;
      if (mine) {
        // Only the first warp whose running sum passes thr gets here with before <= thr; scan its segment.
        float run = before;
        for (int32_t base = x0; base < x1; base += 32) {
          const int32_t x = base + lane;
          float p = x < x1 ? weight(x) : 0.f;
          float incl = p;
          for (int o = 1; o < 32; o <<= 1) {
            const float y = __shfl_up_sync(0xffffffffu, incl, o);
            if (lane >= o) incl += y;
          }
          const unsigned hit = __ballot_sync(0xffffffffu, x < x1 && run + incl > thr);
          if (hit) {
            if (lane == 0) sh.bonus = base + __ffs(hit) - 1;
            break;
          }
          run += __shfl_sync(0xffffffffu, incl, 31);
        }
        // Rounding between the two summation orders can leave the crossing unfound: the segment's last mass.
        if (lane == 0 && sh.bonus == -2) sh.bonus = sh.s.am[warp].i;
      }
      __syncthreads();
      if (tid == 0 && sh.bonus == -2) sh.bonus = last_any >= 0 ? last_any : sh.argmax;  // u -> 1: last mass
    } else if (tid == 0) {
      sh.bonus = sh.argmax;  // no mass left (only through rounding or NaN): argmax of the logits
    }
  }
  __shared__ int32_t s_len;
  if (tid == 0) {
    accept_len[b] = w.length;
    s_len = w.length;
  }
  __syncthreads();  // also makes thread 0's path writes visible to the block
  write_tokens(tok, path, s_len, sh.bonus, out_tokens + b * N, N, tid, kThreads);
}

// ---------------------------------------------------------------------------------------------------
// Host side.

template <typename T, typename Q>
void launch_logits(const at::Tensor& first_child, const at::Tensor& next_sibling, const at::Tensor& valid,
                   const at::Tensor& tokens, const at::Tensor& logits, const float* uniforms, const float* temperature,
                   const int32_t* top_k, const float* top_p, const Q* draft, bool sample, at::Tensor& accept_nodes,
                   at::Tensor& accept_len, at::Tensor& out_tokens) {
  const int64_t B = tokens.size(0);
  const int32_t N = static_cast<int32_t>(tokens.size(1)), V = static_cast<int32_t>(logits.size(2));
  const verify_launch::Config cfg = verify_launch::logits_config(B);
  verify_logits_kernel<T, Q><<<cfg.grid, cfg.threads, cfg.smem, cuda::current_stream()>>>(
      first_child.data_ptr<int32_t>(), next_sibling.data_ptr<int32_t>(), valid.data_ptr<bool>(),
      tokens.data_ptr<int64_t>(), logits.data_ptr<T>(), uniforms, temperature, top_k, top_p, draft, sample,
      accept_nodes.data_ptr<int32_t>(), accept_len.data_ptr<int32_t>(), out_tokens.data_ptr<int64_t>(), N, V);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void verify_greedy_cuda(const at::Tensor& first_child, const at::Tensor& next_sibling, const at::Tensor& valid,
                        const at::Tensor& tokens, const at::Tensor& logits, at::Tensor& accept_nodes,
                        at::Tensor& accept_len, at::Tensor& out_tokens) {
  const bool ids = check_verify_greedy_args("specdec::verify_greedy", kCudaVerifyKernels, first_child, next_sibling,
                                            valid, tokens, logits, accept_nodes, accept_len, out_tokens);
  const int64_t B = tokens.size(0);
  if (B == 0) return;
  c10::cuda::CUDAGuard guard(tokens.device());
  if (ids) {
    const verify_launch::Config cfg = verify_launch::greedy_ids_config(B);
    greedy_ids_kernel<<<cfg.grid, cfg.threads, cfg.smem, cuda::current_stream()>>>(
        first_child.data_ptr<int32_t>(), next_sibling.data_ptr<int32_t>(), valid.data_ptr<bool>(),
        tokens.data_ptr<int64_t>(), logits.data_ptr<int64_t>(), accept_nodes.data_ptr<int32_t>(),
        accept_len.data_ptr<int32_t>(), out_tokens.data_ptr<int64_t>(), B, static_cast<int32_t>(tokens.size(1)));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  SPECDEC_DISPATCH_FP32_FP16_BF16(logits.scalar_type(), "verify_greedy_cuda", [&] {
    launch_logits<scalar_t, float>(first_child, next_sibling, valid, tokens, logits, nullptr, nullptr, nullptr, nullptr,
                                   nullptr, false, accept_nodes, accept_len, out_tokens);
  });
}

void verify_sample_cuda(const at::Tensor& first_child, const at::Tensor& next_sibling, const at::Tensor& valid,
                        const at::Tensor& tokens, const at::Tensor& logits, const at::Tensor& uniforms,
                        const at::Tensor& temperature, const at::Tensor& top_k, const at::Tensor& top_p,
                        const std::optional<at::Tensor>& draft_probs, at::Tensor& accept_nodes, at::Tensor& accept_len,
                        at::Tensor& out_tokens) {
  const bool has_q = check_verify_sample_args("specdec::verify_sample", kCudaVerifyKernels, first_child, next_sibling,
                                              valid, tokens, logits, uniforms, temperature, top_k, top_p, draft_probs,
                                              accept_nodes, accept_len, out_tokens);
  const c10::Device dev = tokens.device();
  const int64_t B = tokens.size(0);
  if (B == 0) return;
  c10::cuda::CUDAGuard guard(dev);
  SPECDEC_DISPATCH_FP32_FP16_BF16(logits.scalar_type(), "verify_sample_cuda", [&] {
    using T = scalar_t;
    if (!has_q) {
      launch_logits<T, float>(first_child, next_sibling, valid, tokens, logits, uniforms.data_ptr<float>(),
                              temperature.data_ptr<float>(), top_k.data_ptr<int32_t>(), top_p.data_ptr<float>(),
                              nullptr, true, accept_nodes, accept_len, out_tokens);
    } else {
      SPECDEC_DISPATCH_FP32_FP16_BF16(draft_probs->scalar_type(), "verify_sample_cuda_q", [&] {
        launch_logits<T, scalar_t>(first_child, next_sibling, valid, tokens, logits, uniforms.data_ptr<float>(),
                                   temperature.data_ptr<float>(), top_k.data_ptr<int32_t>(), top_p.data_ptr<float>(),
                                   draft_probs->data_ptr<scalar_t>(), true, accept_nodes, accept_len, out_tokens);
      });
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CUDA, m) {
  m.impl("verify_greedy", &verify_greedy_cuda);
  m.impl("verify_sample", &verify_sample_cuda);
}

}  // namespace specdec
