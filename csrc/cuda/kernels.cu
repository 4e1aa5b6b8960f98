// The one CUDA translation unit of specdec_kernels._C: it includes every op's kernels (csrc/cuda/*.cuh)
// so that nvcc parses the torch headers once. Each .cuh holds its kernels and a TORCH_LIBRARY_IMPL
// fragment for the CUDA dispatch key.
#include "common.cuh"
