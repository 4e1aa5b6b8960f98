// Kernel entries of csrc/cuda/compact.cu: compact_kv_kernel and compact_paged_kv_kernel (all three
// parameter-struct sizes), through the .cu's own torch-free enqueue.
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
  const specdec::Indices ix{nullptr, 0, cache_len, accept_nodes, accept_len, B, W};
  specdec::enqueue(descs.data(), static_cast<int64_t>(descs.size()), ix, nullptr, num_sms);
  return 0;
}
CUDAEMU_ENTRY("compact_kv_kernel", compact_kv_entry);

// scalars B, W, num_sms, T, max_pages and per tensor i: es<i>, offset<i> (bytes into cache<i>), X<i> (heads),
// P<i> (page slots), Y<i>, num_pages<i> and element strides sp<i> (pages), sx<i> (heads), ss<i> (page slots);
// in: block_table int32 [B, max_pages], cache_len, accept_nodes, accept_len; in/out: cache<i> (raw storages).
int compact_paged_kv_entry(Request& r) {
  const int64_t B = r.scalar("B"), W = r.scalar("W"), T = r.scalar("T"), max_pages = r.scalar("max_pages");
  const int num_sms = static_cast<int>(r.scalar("num_sms"));
  const int32_t* table = r.in<int32_t>("block_table", B * max_pages);
  const int32_t* cache_len = r.in<int32_t>("cache_len", B);
  const int32_t* accept_nodes = r.in<int32_t>("accept_nodes", B * W);
  const int32_t* accept_len = r.in<int32_t>("accept_len", B);
  std::vector<cl::TensorDesc> descs;
  for (int64_t i = 0; i < T; ++i) {
    const std::string k = std::to_string(i);
    cudaemu::Buffer& buf = r.raw("cache" + k, true);
    const int64_t es = r.scalar("es" + k), off = r.scalar("offset" + k), pages = r.scalar("num_pages" + k);
    const int64_t X = r.scalar("X" + k), P = r.scalar("P" + k), Y = r.scalar("Y" + k);
    const int64_t sp = r.scalar("sp" + k), sx = r.scalar("sx" + k), ss = r.scalar("ss" + k);
    if (pages * X * P * Y == 0) continue;  // as the launcher: empty tensors are left out
    const int64_t last = off + es * ((pages - 1) * sp + (X - 1) * sx + (P - 1) * ss + Y);
    if (off < 0 || last > static_cast<int64_t>(buf.bytes))
      throw std::runtime_error("cache" + k + ": view past its buffer");
    cl::TensorDesc d;
    if (!cl::make_desc(reinterpret_cast<char*>(buf.data) + off, es, X, P, Y, sp, sx, ss, d)) {
      throw std::runtime_error("cache" + k + ": row too long");
    }
    descs.push_back(d);
  }
  const specdec::Indices ix{table, max_pages, cache_len, accept_nodes, accept_len, B, W};
  specdec::enqueue(descs.data(), static_cast<int64_t>(descs.size()), ix, nullptr, num_sms);
  return 0;
}
CUDAEMU_ENTRY("compact_paged_kv_kernel", compact_paged_kv_entry);

}  // namespace
