// Kernel entries of tests/cuda_emulation/selftest.cu (the emulation's own tests).
#include "cudaemu.h"
// clang-format off
#include "selftest.cu.cpp"  // tests/cuda_emulation/selftest.cu after rewrite.py
// clang-format on
#include "request.h"

namespace {

using cudaemu::Request;

// scalars threads; out: out [threads * 9].
int warp_entry(Request& r) {
  const int64_t threads = r.scalar("threads");
  selftest::launch_warp(r.out<int32_t>("out", threads * 9), static_cast<int>(threads));
  return 0;
}
CUDAEMU_ENTRY("warp_kernel", warp_entry);

// scalars blocks, threads; out: out [blocks * 5].
int block_entry(Request& r) {
  const int64_t blocks = r.scalar("blocks"), threads = r.scalar("threads");
  selftest::launch_block(r.out<int32_t>("out", blocks * 5), static_cast<int>(blocks), static_cast<int>(threads));
  return 0;
}
CUDAEMU_ENTRY("block_kernel", block_entry);

// scalars bytes, optin (0: no cudaFuncSetAttribute); out: out [1].
int smem_entry(Request& r) {
  selftest::launch_smem(r.out<int32_t>("out", 1), r.scalar("bytes"), r.scalar("optin"));
  return 0;
}
CUDAEMU_ENTRY("smem_kernel", smem_entry);

// scalars mode; out: out [64].
int broken_entry(Request& r) {
  selftest::launch_broken(r.out<int32_t>("out", 64), static_cast<int>(r.scalar("mode")));
  return 0;
}
CUDAEMU_ENTRY("broken_kernel", broken_entry);

// The request protocol and cudaemu::check_status (what C10_CUDA_CHECK becomes): scalars n (an integer), x (a
// real), status (a cudaError_t to check); out: out float64 [2] = {n, x}, has [1] = whether optional.bin exists.
int protocol_entry(Request& r) {
  double* out = r.out<double>("out", 2);
  out[0] = static_cast<double>(r.scalar("n"));
  out[1] = r.real("x");
  *r.out<int32_t>("has", 1) = r.has("optional") ? 1 : 0;
  cudaemu::check_status(static_cast<cudaError_t>(r.scalar("status")), "the checked call");
  return 0;
}
CUDAEMU_ENTRY("protocol", protocol_entry);

}  // namespace
