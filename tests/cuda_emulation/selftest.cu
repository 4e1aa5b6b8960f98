// Kernels that test the emulation itself (tests/kernels/test_cuda_emulated.py): warp intrinsics, block
// reductions, shared-memory poisoning, launch limits and the barrier checks. Written as CUDA source and
// rewritten by rewrite.py like csrc/cuda/*.cu.
#include <cstdint>

namespace selftest {

constexpr unsigned kFull = 0xffffffffu;

// out[t * 9 + k]: the k-th intrinsic's result of thread t (two or more whole warps).
__global__ void warp_kernel(int32_t* out) {
  const int t = threadIdx.x, lane = t % 32;
  int32_t* o = out + t * 9;
  o[0] = __shfl_sync(kFull, t, 5);
  o[1] = __shfl_xor_sync(kFull, t, 1);
  o[2] = __shfl_up_sync(kFull, t, 3);
  o[3] = __shfl_down_sync(kFull, t, 3);
  o[4] = static_cast<int32_t>(__ballot_sync(kFull, lane % 3 == 0));
  o[5] = static_cast<int32_t>(__match_any_sync(kFull, lane / 4));
  o[6] = __any_sync(kFull, lane == 7);
  o[7] = __all_sync(kFull, lane < 31);
  o[8] = __shfl_xor_sync(kFull, t, 8, 16);  // width 16: stays within each half warp
}

// out[b * 5 + k]: per block, static shared memory as first seen (poison), __syncthreads_or / and / count,
// and the first int of the dynamic shared memory as first seen.
__global__ void block_kernel(int32_t* out) {
  __shared__ int32_t s_word;
  extern __shared__ int32_t s_dyn[];
  const int t = threadIdx.x;
  int32_t seen = 0, dyn_seen = 0;
  if (t == 0) {
    seen = s_word;
    dyn_seen = s_dyn[0];
  }
  __syncthreads();
  if (t == 0) {
    s_word = 12345;  // the next block must see poison again
    s_dyn[0] = 678;
  }
  const int any = __syncthreads_or(t == 77);
  const int all = __syncthreads_and(t < 1000);
  const int count = __syncthreads_count(t % 5 == 0);
  if (t == 0) {
    int32_t* o = out + blockIdx.x * 5;
    o[0] = seen;
    o[1] = any;
    o[2] = all;
    o[3] = count;
    o[4] = dyn_seen;
  }
}

__global__ void smem_kernel(int32_t* out) {
  extern __shared__ unsigned char s_bytes[];
  if (threadIdx.x == 0) out[0] = s_bytes[0];
}

// mode 0: threads of one block wait at two different __syncthreads; mode 1: warp 1 never reaches the
// barrier (it spins on a flag set after it); mode 2: a shuffle with a partial mask.
__global__ void broken_kernel(int32_t* out, int mode) {
  __shared__ volatile int32_t s_flag;
  const int t = threadIdx.x;
  if (mode == 0) {
    if (t < 32) {
      __syncthreads();
    } else {
      __syncthreads();
    }
  } else if (mode == 1) {
    if (t >= 32) {
      while (s_flag != 1) {  // poisoned, never 1 before the barrier
      }
    }
    __syncthreads();
    s_flag = 1;
  } else {
    out[t] = __shfl_sync(0x0000ffffu, t, 0);
  }
}

void launch_warp(int32_t* out, int threads) {
  warp_kernel<<<1, threads>>>(out);
}
void launch_block(int32_t* out, int blocks, int threads) {
  block_kernel<<<blocks, threads, 64>>>(out);
}
void launch_smem(int32_t* out, int64_t bytes, int64_t optin) {
  if (optin > 0)
    cudaFuncSetAttribute(smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(optin));
  smem_kernel<<<1, 32, static_cast<size_t>(bytes)>>>(out);
}
void launch_broken(int32_t* out, int mode) {
  broken_kernel<<<dim3(1), dim3(64), 0, nullptr>>>(out, mode);
}

}  // namespace selftest
