// The settings of the specdec::linear CPU kernel (csrc/cpu/linear.cpp), torch-free so that the Python module
// (csrc/module.cpp) can expose them: the instruction-set path (which paths this CPU can run, which one runs,
// forcing another for tests and benchmarks), and up to how many rows the other CPU kernels' products take the
// kernel instead of ATen's GEMM (linear_small_product_rows; linear_cpu.h runs them).
#pragma once

#include <cstdint>

namespace specdec {

// The name of path `isa` ("portable", "avx2", "avx512", "avx512_bf16"), nullptr when out of range.
const char* linear_isa_name(int isa);
// True when this CPU (and its OS) can run path `isa`.
bool linear_isa_supported(int isa);
// The path that runs now: the best supported one, unless linear_isa_set chose another.
int linear_isa_current();
// Run path `isa` from now on; false (and nothing changes) when it is not supported here.
bool linear_isa_set(int isa);

// Products of at most this many rows in dtype `dtype` (a LinearDtype: 0 fp32, 1 fp16, 2 bf16) that other CPU
// kernels compute through linear_cpu.h's linear_product_out take this kernel; larger ones (and every dtype set
// to 0, the default) take ATen's GEMM. Set by specdec_kernels from its measurement of the kernel against torch
// on this CPU (specdec_kernels.ops.linear_choice). Both return -1 for an unknown dtype; set returns the previous.
int64_t linear_small_product_rows(int dtype);
int64_t linear_set_small_product_rows(int dtype, int64_t rows);

}  // namespace specdec
