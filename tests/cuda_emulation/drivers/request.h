// A request of the emulation executable: named raw little-endian buffers in a folder (NAME.bin, written by
// numpy/torch `tofile`) and scalars (scalars.txt, "name value" per line: integers, or reals as strtod reads
// them). A kernel entry reads its
// inputs, runs the kernel through its launch configuration and marks its outputs, which main() writes back
// as NAME.bin after the run. Every buffer is its own heap block of exactly its size, aligned like
// cudaMalloc, so AddressSanitizer reports any access past it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

namespace cudaemu {

struct Buffer {
  unsigned char* data = nullptr;
  size_t bytes = 0;
  bool output = false;
  ~Buffer();
};

class Request {
 public:
  explicit Request(std::string dir);
  int64_t scalar(const std::string& name) const;  // an integer scalar
  double real(const std::string& name) const;     // a real scalar
  bool has(const std::string& name) const;        // whether NAME.bin exists (an optional operand)
  // The buffer NAME.bin, which must hold exactly `count` elements of T.
  template <typename T>
  T* in(const std::string& name, int64_t count) {
    return reinterpret_cast<T*>(load(name, static_cast<size_t>(count) * sizeof(T)).data);
  }
  // As in(), and written back after the kernel ran (its initial content is what the test filled it with).
  template <typename T>
  T* out(const std::string& name, int64_t count) {
    Buffer& b = load(name, static_cast<size_t>(count) * sizeof(T));
    b.output = true;
    return reinterpret_cast<T*>(b.data);
  }
  // A buffer of whatever size the file has (raw bytes).
  Buffer& raw(const std::string& name, bool output);
  void write_outputs() const;

 private:
  Buffer& load(const std::string& name, size_t bytes);
  std::string dir_;
  std::map<std::string, std::string> scalars_;
  std::map<std::string, std::unique_ptr<Buffer>> buffers_;
};

using Entry = int (*)(Request&);
// Registers a kernel entry under `name` (the __global__ kernel it runs) at static initialisation.
bool register_entry(const char* name, Entry entry);

}  // namespace cudaemu

#define CUDAEMU_ENTRY(name, fn) \
  [[maybe_unused]] static const bool cudaemu_entry_##fn = cudaemu::register_entry(name, fn)
