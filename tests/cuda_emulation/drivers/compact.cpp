// Kernel entry of csrc/cuda/compact.cu: compact_kv_kernel (all three parameter-struct sizes).
#include "torch_neutral.h"
// clang-format off
#include "compact.cu.cpp"  // csrc/cuda/compact.cu after rewrite.py
// clang-format on
#include <stdexcept>
#include <string>
#include <vector>

#include "request.h"

namespace {

using cudaemu::Request;
namespace cl = specdec::compact_launch;

template <int kCap>
void launch_part(const cl::TensorDesc* descs, int64_t count, const int32_t* cache_len, const int32_t* accept_nodes,
                 const int32_t* accept_len, int64_t B, int64_t W, int num_sms) {
  cl::CompactParams<kCap> p{};
  int64_t max_items = 0;
  for (int64_t i = 0; i < count; ++i) {
    p.t[i] = descs[i];
    max_items = std::max<int64_t>(max_items, B * descs[i].X * descs[i].cols);
  }
  const dim3 grid(cl::grid_x(max_items, count, num_sms), static_cast<unsigned>(count));
  cudaemu::launch(grid, dim3(cl::kThreads), 0, specdec::compact_kv_kernel<kCap>, p, cache_len, accept_nodes, accept_len,
                  B, W);
}

// scalars B, W, num_sms, T and per tensor i: es<i> (element bytes), offset<i> (bytes into cache<i>), X<i>,
// S<i>, Y<i> and element strides sb<i>, sx<i>, ss<i>; in: cache_len, accept_nodes, accept_len; in/out: cache<i>
// (the raw bytes of the tensor's storage).
int compact_kv_entry(Request& r) {
  const int64_t B = r.scalar("B"), W = r.scalar("W"), T = r.scalar("T");
  const int num_sms = static_cast<int>(r.scalar("num_sms"));
  const int32_t* cache_len = r.in<int32_t>("cache_len", B);
  const int32_t* accept_nodes = r.in<int32_t>("accept_nodes", B * W);
  const int32_t* accept_len = r.in<int32_t>("accept_len", B);
  std::vector<cl::TensorDesc> descs;
  for (int64_t i = 0; i < T; ++i) {
    const std::string k = std::to_string(i);
    cudaemu::Buffer& buf = r.raw("cache" + k, true);
    const int64_t es = r.scalar("es" + k), off = r.scalar("offset" + k);
    const int64_t X = r.scalar("X" + k), S = r.scalar("S" + k), Y = r.scalar("Y" + k);
    const int64_t sb = r.scalar("sb" + k), sx = r.scalar("sx" + k), ss = r.scalar("ss" + k);
    if (B * X * S * Y == 0) continue;  // as the launcher: empty tensors are left out
    const int64_t last = off + es * ((B - 1) * sb + (X - 1) * sx + (S - 1) * ss + Y);
    if (off < 0 || last > static_cast<int64_t>(buf.bytes))
      throw std::runtime_error("cache" + k + ": view past its buffer");
    cl::TensorDesc d;
    if (!cl::make_desc(reinterpret_cast<char*>(buf.data) + off, es, X, S, Y, sb, sx, ss, d)) {
      throw std::runtime_error("cache" + k + ": row too long");
    }
    descs.push_back(d);
  }
  if (descs.empty() || B == 0 || W <= 1) return 0;
  for (int64_t start = 0; start < static_cast<int64_t>(descs.size()); start += cl::kMaxPerLaunch) {
    const int64_t count = std::min<int64_t>(cl::kMaxPerLaunch, static_cast<int64_t>(descs.size()) - start);
    switch (cl::param_capacity(count)) {
      case 16:
        launch_part<16>(descs.data() + start, count, cache_len, accept_nodes, accept_len, B, W, num_sms);
        break;
      case 64:
        launch_part<64>(descs.data() + start, count, cache_len, accept_nodes, accept_len, B, W, num_sms);
        break;
      default:
        launch_part<cl::kMaxPerLaunch>(descs.data() + start, count, cache_len, accept_nodes, accept_len, B, W, num_sms);
        break;
    }
  }
  return 0;
}
CUDAEMU_ENTRY("compact_kv_kernel", compact_kv_entry);

}  // namespace
