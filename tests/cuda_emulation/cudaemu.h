// cudaemu.h: CUDA execution semantics on the CPU, for tests only. g++ compiles the project's csrc/cuda/*.cu
// files against this header once rewrite.py has turned `kernel<<<grid, block, smem, stream>>>(args)` into
// cudaemu::launch(...) and `extern __shared__ T x[];` / `__shared__ T x[n];` into per-block storage.
//
// Model:
//  * one OS thread per CUDA thread of a block; the blocks of a launch run one after another, so
//    function-static storage is exactly one block's shared memory;
//  * __syncthreads / __syncthreads_or|and|count: a counting barrier that returned threads drop out of; all
//    threads of a barrier phase must wait at the same source line (else: "divergent barrier");
//  * warp intrinsics (__shfl*_sync, __ballot_sync, __any/__all_sync, __match_any_sync, __syncwarp): a
//    barrier over the warp's 32 lanes plus an exchange buffer. Only the full mask 0xffffffff of a complete
//    warp whose lanes are all live is modelled: anything else fails loudly;
//  * a barrier that not every live thread reaches fails after CUDAEMU_TIMEOUT_S seconds (default 60);
//  * barriers are mutex/condition-variable based, which ThreadSanitizer understands: shared-memory accesses
//    of two threads not ordered by a barrier are reported as data races;
//  * dynamic shared memory is one heap block of exactly the launch's size (AddressSanitizer sees overruns),
//    filled with a poison byte (CUDAEMU_POISON, default 0xA5) before every block; static shared memory is
//    poisoned by the first thread of each block that reaches its declaration;
//  * every launch is checked against the limits of the emulated GPU (CUDAEMU_ARCH = sm_80 (default) or
//    sm_90): threads per block, block and grid dimensions, dynamic shared memory (48 KiB unless raised with
//    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, n)), kernel parameter bytes.
// Any violation prints "cudaemu: ..." to stderr and exits with status 3.
#pragma once

#include <cuda_runtime.h>  // dim3, uint3, vector types, cudaError_t (the host part of the toolkit headers)

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <set>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __noinline__
#undef __shared__
#undef __constant__
#undef __launch_bounds__
#undef __grid_constant__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __shared__ static
#define __constant__ static
#define __launch_bounds__(...)
#define __grid_constant__

inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;
#ifndef warpSize
constexpr int warpSize = 32;
#endif

namespace cudaemu {

constexpr int kExitStatus = 3;

[[noreturn]] inline void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
[[noreturn]] inline void fail(const char* fmt, ...) {
  std::fprintf(stderr, "cudaemu: ");
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, " (block %u,%u,%u thread %u,%u,%u)\n", blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x,
               threadIdx.y, threadIdx.z);
  std::fflush(stderr);
  std::_Exit(kExitStatus);
}

inline int env_int(const char* name, int fallback) {
  const char* e = std::getenv(name);
  return e && *e ? std::atoi(e) : fallback;
}

// Limits of the emulated GPU (CUDA C Programming Guide, compute capabilities 8.0 and 9.0).
struct Arch {
  const char* name;
  size_t max_dynamic_smem_optin;  // per block, with cudaFuncAttributeMaxDynamicSharedMemorySize
};
inline Arch arch() {
  const char* e = std::getenv("CUDAEMU_ARCH");
  if (e == nullptr || std::strcmp(e, "sm_80") == 0) return {"sm_80", 163 * 1024};
  if (std::strcmp(e, "sm_90") == 0) return {"sm_90", 227 * 1024};
  fail("CUDAEMU_ARCH=%s: only sm_80 and sm_90 are modelled", e);
}
constexpr size_t kDefaultDynamicSmem = 48 * 1024;
constexpr size_t kMaxParamBytes = 32764;  // CUDA >= 12.1 on Volta and later

// Per-kernel attributes set by launchers (cudaFuncSetAttribute), keyed by the kernel's address.
inline std::mutex g_attr_mutex;
inline std::map<const void*, size_t> g_max_dynamic_smem;

// Counting barrier; drop() removes a participant (a thread that returned from the kernel).
class Barrier {
 public:
  void reset(int n) {
    count_ = n;
    arrived_ = 0;
  }
  // on_complete runs once, under the lock, when the last participant arrives.
  template <typename F>
  void wait(F&& on_complete, int site, const char* what) {
    std::unique_lock<std::mutex> lk(m_);
    const uint64_t g = gen_;
    if (arrived_ == 0) {
      site_ = site;
    } else if (site != site_) {
      fail("divergent %s: threads of one block/warp wait at line %d and at line %d", what, site_, site);
    }
    if (++arrived_ == count_) {
      on_complete();
      arrived_ = 0;
      ++gen_;
      lk.unlock();
      cv_.notify_all();
      return;
    }
    static const int timeout_s = env_int("CUDAEMU_TIMEOUT_S", 60);
    if (!cv_.wait_for(lk, std::chrono::seconds(timeout_s), [&] { return gen_ != g; })) {
      fail("%s at line %d: %d of %d live threads arrived before the timeout (a barrier some threads never reach?)",
           what, site, arrived_, count_);
    }
  }
  void drop() {
    std::lock_guard<std::mutex> lk(m_);
    --count_;
    if (arrived_ > 0 && arrived_ == count_) {
      arrived_ = 0;
      ++gen_;
      cv_.notify_all();
    }
  }
  std::mutex& mutex() { return m_; }
  int count() {
    std::lock_guard<std::mutex> lk(m_);
    return count_;
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  int count_ = 0, arrived_ = 0, site_ = 0;
  uint64_t gen_ = 0;
};

// The state of the block that runs now.
struct Block {
  Barrier block;
  std::vector<Barrier> warps;
  int reduce_acc = 0, reduce_out = 0;  // __syncthreads_or/and/count
  std::vector<uint64_t> xch[2];        // one 8-byte slot per thread for warp exchanges, double-buffered
  unsigned char* dyn_smem = nullptr;
  size_t dyn_bytes = 0;
  unsigned nthreads = 0;
  std::mutex static_mutex;
  std::set<const void*> static_seen;  // static __shared__ objects poisoned in this block
};
inline Block* g_block = nullptr;
// Warp exchanges of this thread in the current block: exchange k uses buffer k % 2, so one barrier per
// exchange suffices (a lane writes buffer k % 2 again only after barrier k + 1, which every lane reaches
// after reading exchange k).
inline thread_local unsigned t_exchanges = 0;

inline unsigned char poison_byte() {
  return static_cast<unsigned char>(env_int("CUDAEMU_POISON", 0xA5));
}
inline unsigned tid_linear() {
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}
inline Barrier& my_warp() {
  return g_block->warps[tid_linear() / 32];
}

inline void check_warp_op(unsigned mask, const char* what) {
  if (mask != 0xffffffffu) fail("%s with mask 0x%08x: only the full mask 0xffffffff is modelled", what, mask);
  const unsigned w = tid_linear() / 32;
  if (32 * (w + 1) > g_block->nthreads) {
    fail("%s with the full mask in an incomplete warp (block of %u threads)", what, g_block->nthreads);
  }
  if (my_warp().count() != 32) fail("%s with the full mask after some lanes of the warp returned", what);
}

// Dynamic shared memory of the running block (what `extern __shared__ T x[];` is rewritten into).
template <typename T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(g_block->dyn_smem);
}

// Called right after each static __shared__ declaration: the first thread of a block poisons the object.
inline void static_shared(const volatile void* object, size_t bytes) {
  void* p = const_cast<void*>(object);
  std::lock_guard<std::mutex> lk(g_block->static_mutex);
  if (g_block->static_seen.insert(p).second) std::memset(p, poison_byte(), bytes);
}

// Warp exchange: every lane publishes v; after the warp barrier each lane reads slot pick(lane) (-1: its own).
template <typename T, typename Pick>
T exchange(unsigned mask, T v, Pick pick, int site, const char* what) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp exchange of at most 8 bytes");
  check_warp_op(mask, what);
  const unsigned t = tid_linear(), base = t - t % 32, lane = t % 32;
  std::vector<uint64_t>& xch = g_block->xch[t_exchanges++ % 2];
  uint64_t slot = 0;
  std::memcpy(&slot, &v, sizeof(T));
  xch[t] = slot;
  my_warp().wait([] {}, site, what);
  const int src = pick(static_cast<int>(lane));
  T r = v;
  if (src >= 0) std::memcpy(&r, &xch[base + src], sizeof(T));
  return r;
}

template <typename... Args>
size_t param_bytes() {
  size_t total = 0;
  ((total = (total + alignof(Args) - 1) / alignof(Args) * alignof(Args) + sizeof(Args)), ...);
  return total;
}

inline void check_launch(dim3 grid, dim3 block, size_t smem, const void* kernel, size_t params) {
  const Arch a = arch();
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64) {
    fail("launch with block (%u, %u, %u): at most 1024 threads, (1024, 1024, 64) per dimension", block.x, block.y,
         block.z);
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    fail("launch with grid (%u, %u, %u): each dimension >= 1, at most (2^31 - 1, 65535, 65535)", grid.x, grid.y,
         grid.z);
  }
  size_t allowed = kDefaultDynamicSmem;
  {
    std::lock_guard<std::mutex> lk(g_attr_mutex);
    auto it = g_max_dynamic_smem.find(kernel);
    if (it != g_max_dynamic_smem.end()) allowed = it->second;
  }
  if (smem > allowed) {
    fail(
        "launch with %zu bytes of dynamic shared memory: the kernel may use %zu (48 KiB unless raised with "
        "cudaFuncSetAttribute; %s allows at most %zu)",
        smem, allowed, a.name, a.max_dynamic_smem_optin);
  }
  if (params > kMaxParamBytes) fail("launch with %zu bytes of kernel parameters (at most %zu)", params, kMaxParamBytes);
}

template <typename... P, typename... Args>
void launch(dim3 grid, dim3 block, size_t smem, void (*kernel)(P...), Args&&... args_in) {
  check_launch(grid, block, smem, reinterpret_cast<const void*>(kernel), param_bytes<P...>());
  // The kernel's parameters, converted once as the CUDA runtime copies them; every thread gets this copy.
  const std::tuple<std::decay_t<P>...> args(std::forward<Args>(args_in)...);
  Block b;
  b.nthreads = block.x * block.y * block.z;
  const unsigned nwarps = (b.nthreads + 31) / 32;
  b.warps = std::vector<Barrier>(nwarps);
  b.xch[0].assign(b.nthreads, 0);
  b.xch[1].assign(b.nthreads, 0);
  b.dyn_bytes = smem;
  b.dyn_smem = static_cast<unsigned char*>(::operator new(smem, std::align_val_t(16)));
  const unsigned char poison = poison_byte();
  Barrier between;  // every thread leaves block k before block k + 1 starts
  between.reset(static_cast<int>(b.nthreads));
  auto reset_block = [&] {
    b.block.reset(static_cast<int>(b.nthreads));
    for (unsigned w = 0; w < nwarps; ++w) b.warps[w].reset(static_cast<int>(std::min(32u, b.nthreads - 32 * w)));
    std::memset(b.dyn_smem, poison, smem);
    b.static_seen.clear();
  };
  reset_block();
  g_block = &b;
  std::vector<std::thread> threads;
  threads.reserve(b.nthreads);
  for (unsigned t = 0; t < b.nthreads; ++t) {
    threads.emplace_back([&, t] {
      threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
      blockDim = block;
      gridDim = grid;
      for (unsigned z = 0; z < grid.z; ++z) {
        for (unsigned y = 0; y < grid.y; ++y) {
          for (unsigned x = 0; x < grid.x; ++x) {
            blockIdx = {x, y, z};
            t_exchanges = 0;
            std::apply(kernel, args);
            b.block.drop();
            my_warp().drop();
            between.wait([&] { reset_block(); }, 0, "end of block");
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  g_block = nullptr;
  ::operator delete(b.dyn_smem, std::align_val_t(16));
}

// `kernel<<<grid, block, smem, stream>>>(args)` is rewritten into `cudaemu::config(grid, block, smem,
// stream).run(kernel, args)`.
struct Config {
  dim3 grid, block;
  size_t smem;
  template <typename K, typename... A>
  void run(K kernel, A&&... args) const {
    launch(grid, block, smem, kernel, std::forward<A>(args)...);
  }
};
template <typename S = cudaStream_t>
Config config(dim3 grid, dim3 block, size_t smem = 0, S = nullptr) {
  return {grid, block, smem};
}

inline void syncthreads(int line) {
  g_block->block.wait([] {}, line, "__syncthreads");
}
// op: 0 or, 1 and, 2 count.
inline int syncthreads_reduce(int pred, int op, int line, const char* what) {
  Block& b = *g_block;
  {
    std::lock_guard<std::mutex> lk(b.block.mutex());
    if (op == 0) b.reduce_acc |= pred != 0;
    if (op == 1) b.reduce_acc += pred == 0;  // number of false predicates
    if (op == 2) b.reduce_acc += pred != 0;
  }
  b.block.wait(
      [&] {
        b.reduce_out = op == 1 ? b.reduce_acc == 0 : b.reduce_acc;
        b.reduce_acc = 0;
      },
      line, what);
  std::lock_guard<std::mutex> lk(b.block.mutex());
  return b.reduce_out;
}
inline unsigned warp_vote(unsigned mask, int pred, int line, const char* what) {
  check_warp_op(mask, what);
  Block& b = *g_block;
  const unsigned t = tid_linear(), base = t - t % 32;
  std::vector<uint64_t>& xch = b.xch[t_exchanges++ % 2];
  xch[t] = pred != 0;
  my_warp().wait([] {}, line, what);
  unsigned r = 0;
  for (unsigned l = 0; l < 32; ++l) r |= static_cast<unsigned>(xch[base + l] != 0) << l;
  return r;
}
template <typename T>
unsigned match_any(unsigned mask, T v, int line) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "__match_any_sync of at most 8 bytes");
  check_warp_op(mask, "__match_any_sync");
  Block& b = *g_block;
  const unsigned t = tid_linear(), base = t - t % 32;
  std::vector<uint64_t>& xch = b.xch[t_exchanges++ % 2];
  uint64_t s = 0;
  std::memcpy(&s, &v, sizeof(T));
  xch[t] = s;
  my_warp().wait([] {}, line, "__match_any_sync");
  unsigned r = 0;
  for (unsigned l = 0; l < 32; ++l) r |= static_cast<unsigned>(xch[base + l] == s) << l;
  return r;
}

}  // namespace cudaemu

// ---- intrinsics -----------------------------------------------------------------------------------------
#define __syncthreads() cudaemu::syncthreads(__LINE__)
#define __syncthreads_or(p) cudaemu::syncthreads_reduce((p), 0, __LINE__, "__syncthreads_or")
#define __syncthreads_and(p) cudaemu::syncthreads_reduce((p), 1, __LINE__, "__syncthreads_and")
#define __syncthreads_count(p) cudaemu::syncthreads_reduce((p), 2, __LINE__, "__syncthreads_count")
#define __syncwarp(...) cudaemu::syncwarp(__LINE__ __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_sync(m, v, ...) cudaemu::shfl((m), (v), __LINE__, __VA_ARGS__)
#define __shfl_xor_sync(m, v, ...) cudaemu::shfl_xor((m), (v), __LINE__, __VA_ARGS__)
#define __shfl_up_sync(m, v, ...) cudaemu::shfl_up((m), (v), __LINE__, __VA_ARGS__)
#define __shfl_down_sync(m, v, ...) cudaemu::shfl_down((m), (v), __LINE__, __VA_ARGS__)
#define __ballot_sync(m, p) cudaemu::warp_vote((m), (p), __LINE__, "__ballot_sync")
#define __any_sync(m, p) (cudaemu::warp_vote((m), (p), __LINE__, "__any_sync") != 0u)
#define __all_sync(m, p) (cudaemu::warp_vote((m), (p), __LINE__, "__all_sync") == 0xffffffffu)
#define __match_any_sync(m, v) cudaemu::match_any((m), (v), __LINE__)

namespace cudaemu {
inline void syncwarp(int line, unsigned mask = 0xffffffffu) {
  check_warp_op(mask, "__syncwarp");
  my_warp().wait([] {}, line, "__syncwarp");
}
template <typename T>
T shfl(unsigned m, T v, int line, int src, int w = 32) {
  return exchange(m, v, [&](int lane) { return lane / w * w + ((src % w) + w) % w; }, line, "__shfl_sync");
}
template <typename T>
T shfl_xor(unsigned m, T v, int line, int x, int w = 32) {
  return exchange(
      m, v,
      [&](int lane) {
        const int s = lane ^ x;
        return s / w == lane / w ? s : -1;
      },
      line, "__shfl_xor_sync");
}
template <typename T>
T shfl_up(unsigned m, T v, int line, unsigned d, int w = 32) {
  return exchange(
      m, v,
      [&](int lane) {
        const int s = lane - static_cast<int>(d);
        return s >= lane / w * w ? s : -1;
      },
      line, "__shfl_up_sync");
}
template <typename T>
T shfl_down(unsigned m, T v, int line, unsigned d, int w = 32) {
  return exchange(
      m, v,
      [&](int lane) {
        const int s = lane + static_cast<int>(d);
        return s / w == lane / w ? s : -1;
      },
      line, "__shfl_down_sync");
}
}  // namespace cudaemu

inline void __threadfence() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
}
inline void __threadfence_block() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
}
inline int __ffs(unsigned x) {
  return __builtin_ffs(static_cast<int>(x));
}
inline int __ffs(int x) {
  return __builtin_ffs(x);
}
inline int __ffsll(unsigned long long x) {
  return __builtin_ffsll(static_cast<long long>(x));
}
inline int __popc(unsigned x) {
  return __builtin_popcount(x);
}
inline int __popcll(unsigned long long x) {
  return __builtin_popcountll(x);
}
inline int __clz(unsigned x) {
  return x ? __builtin_clz(x) : 32;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline int __float_as_int(float f) {
  int u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float __int_as_float(int u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float __fdiv_rn(float a, float b) {
  return a / b;
}
inline float __expf(float x) {
  return std::exp(x);
}
inline float __logf(float x) {
  return std::log(x);
}
inline float rsqrtf(float x) {
  return 1.f / std::sqrt(x);
}
using std::isfinite;
using std::isinf;
using std::isnan;

// Host runtime calls that launchers make on kernel pointers (the toolkit declares these for nvcc only).
template <typename T>
cudaError_t cudaFuncSetAttribute(T* kernel, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    const cudaemu::Arch a = cudaemu::arch();
    if (value < 0 || static_cast<size_t>(value) > a.max_dynamic_smem_optin) {
      cudaemu::fail("cudaFuncSetAttribute(MaxDynamicSharedMemorySize, %d): %s allows at most %zu", value, a.name,
                    a.max_dynamic_smem_optin);
    }
    std::lock_guard<std::mutex> lk(cudaemu::g_attr_mutex);
    cudaemu::g_max_dynamic_smem[reinterpret_cast<const void*>(kernel)] = static_cast<size_t>(value);
  }
  return cudaSuccess;
}
namespace cudaemu {
// C10_CUDA_CHECK of the emulated launchers (drivers/torch_neutral.h): a CUDA call that failed stops the run.
inline void check_status(cudaError_t status, const char* call) {
  if (status != cudaSuccess) fail("%s returned CUDA error %d", call, static_cast<int>(status));
}
}  // namespace cudaemu
template <typename T>
T atomicAdd(T* p, T v) {
  return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) {
  return b < a ? b : a;
}
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) {
  return a < b ? b : a;
}
