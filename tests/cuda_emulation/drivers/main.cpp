// The emulation executable: `cudaemu ENTRY REQUEST_DIR` runs one kernel entry (drivers/*.cpp) on the
// buffers and scalars of REQUEST_DIR (see request.h) and writes the outputs back. Exit status 0 on success,
// 2 on a usage or request error, 3 when the emulation refused a launch or found a barrier problem; the
// sanitizers exit with their own status (the test sets it).
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <new>
#include <sstream>
#include <stdexcept>

#include "request.h"

namespace cudaemu {

namespace {
std::map<std::string, Entry>& entries() {
  static std::map<std::string, Entry> m;
  return m;
}
}  // namespace

bool register_entry(const char* name, Entry entry) {
  entries()[name] = entry;
  return true;
}

Buffer::~Buffer() {
  ::operator delete(data, std::align_val_t(256));
}

Request::Request(std::string dir) : dir_(std::move(dir)) {
  std::ifstream f(dir_ + "/scalars.txt");
  std::string name, value;
  while (f >> name >> value) scalars_[name] = value;
}

namespace {
// The whole of `text` as T by `parse` (std::stoll / std::stod), else a request error naming the scalar.
template <typename T, typename Parse>
T parse_scalar(const std::map<std::string, std::string>& scalars, const std::string& name, Parse parse,
               const char* kind) {
  auto it = scalars.find(name);
  if (it == scalars.end()) throw std::runtime_error("scalar '" + name + "' missing from scalars.txt");
  size_t used = 0;
  T v{};
  try {
    v = parse(it->second, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != it->second.size()) {
    throw std::runtime_error("scalar '" + name + "' = '" + it->second + "' is not " + kind);
  }
  return v;
}
}  // namespace

int64_t Request::scalar(const std::string& name) const {
  return parse_scalar<int64_t>(
      scalars_, name, [](const std::string& s, size_t* used) { return std::stoll(s, used); }, "an integer");
}

double Request::real(const std::string& name) const {
  return parse_scalar<double>(
      scalars_, name, [](const std::string& s, size_t* used) { return std::stod(s, used); }, "a real number");
}

bool Request::has(const std::string& name) const {
  return buffers_.count(name) != 0 || std::ifstream(dir_ + "/" + name + ".bin").good();
}

Buffer& Request::raw(const std::string& name, bool output) {
  auto it = buffers_.find(name);
  if (it == buffers_.end()) {
    std::ifstream f(dir_ + "/" + name + ".bin", std::ios::binary);
    if (!f) throw std::runtime_error("buffer '" + name + "': cannot open " + name + ".bin");
    std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    auto b = std::make_unique<Buffer>();
    b->bytes = bytes.size();
    b->data = static_cast<unsigned char*>(::operator new(bytes.size(), std::align_val_t(256)));
    std::copy(bytes.begin(), bytes.end(), b->data);
    it = buffers_.emplace(name, std::move(b)).first;
  }
  it->second->output = it->second->output || output;
  return *it->second;
}

Buffer& Request::load(const std::string& name, size_t bytes) {
  Buffer& b = raw(name, false);
  if (b.bytes != bytes) {
    throw std::runtime_error("buffer '" + name + "' holds " + std::to_string(b.bytes) +
                             " bytes, the kernel entry expects " + std::to_string(bytes));
  }
  return b;
}

void Request::write_outputs() const {
  for (const auto& [name, b] : buffers_) {
    if (!b->output) continue;
    std::ofstream f(dir_ + "/" + name + ".bin", std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(b->data), static_cast<std::streamsize>(b->bytes));
    if (!f) throw std::runtime_error("cannot write " + name + ".bin");
  }
}

}  // namespace cudaemu

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s ENTRY REQUEST_DIR\n", argv[0]);
    return 2;
  }
  auto& table = cudaemu::entries();
  auto it = table.find(argv[1]);
  if (it == table.end()) {
    std::fprintf(stderr, "cudaemu: no kernel entry '%s'; known:", argv[1]);
    for (const auto& kv : table) std::fprintf(stderr, " %s", kv.first.c_str());
    std::fprintf(stderr, "\n");
    return 2;
  }
  try {
    cudaemu::Request r(argv[2]);
    const int rc = it->second(r);
    if (rc == 0) r.write_outputs();
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cudaemu: request error: %s\n", e.what());
    return 2;
  }
}
