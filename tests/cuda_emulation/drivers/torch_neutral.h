// Included before a rewritten .cu file: its TORCH_LIBRARY_IMPL registration becomes an unused function, so
// the torch-facing launchers compile (against torch's headers) but are never emitted or linked; the
// entries call the kernels directly with the launch configurations of specdec/*_launch.h, or the .cu's own
// torch-free launch functions. Those check CUDA calls with C10_CUDA_CHECK / C10_CUDA_KERNEL_LAUNCH_CHECK,
// which are redefined here without libc10_cuda: a failed call stops the run (cudaemu::check_status), and an
// emulated launch either ran or already stopped the run, so the launch check has nothing left to check.
#pragma once

#include "cudaemu.h"

#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#undef C10_CUDA_CHECK
#define C10_CUDA_CHECK(EXPR) cudaemu::check_status((EXPR), #EXPR)
#undef C10_CUDA_KERNEL_LAUNCH_CHECK
#define C10_CUDA_KERNEL_LAUNCH_CHECK() static_cast<void>(0)

#undef TORCH_LIBRARY_IMPL
#define CUDAEMU_CAT2(a, b) a##b
#define CUDAEMU_CAT(a, b) CUDAEMU_CAT2(a, b)
#define TORCH_LIBRARY_IMPL(ns, key, m) \
  [[maybe_unused]] static void CUDAEMU_CAT(cudaemu_unregistered_, __LINE__)(torch::Library & m)
