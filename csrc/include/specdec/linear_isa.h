// The instruction-set path of the specdec::linear CPU kernel (csrc/cpu/linear.cpp): which paths this CPU can
// run, which one runs, and forcing another (tests, benchmarks). specdec_kernels._C exposes these to Python.
#pragma once

namespace specdec {

// The name of path `isa` ("portable", "avx2", "avx512", "avx512_bf16"), nullptr when out of range.
const char* linear_isa_name(int isa);
// True when this CPU (and its OS) can run path `isa`.
bool linear_isa_supported(int isa);
// The path that runs now: the best supported one, unless linear_isa_set chose another.
int linear_isa_current();
// Run path `isa` from now on; false (and nothing changes) when it is not supported here.
bool linear_isa_set(int isa);

}  // namespace specdec
