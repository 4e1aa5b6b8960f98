// Shared includes and helpers of the CUDA kernels. Only light headers: c10/cuda/CUDAStream.h gives the
// current stream without ATen/cuda/CUDAContext.h (which pulls cuBLAS/cuSPARSE headers).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>
#include <cuda_runtime.h>
#include <cstdint>

namespace specdec {
namespace cuda {
inline cudaStream_t current_stream() {
  return c10::cuda::getCurrentCUDAStream().stream();
}
}  // namespace cuda
}  // namespace specdec
