"""csrc/include/specdec/fast_div.h: division by a launch-time constant as multiply-high and shifts (the CUDA
paged attention kernel divides logical slots by the page size this way).

The header is torch-free host/device C++; a small program built with the host C++ compiler checks
fast_div(n, fast_div_u32(d)) == n / d for every divisor kind (1, powers of two, divisors whose magic fits
32 bits, divisors that need the 33-bit `add` form, up to 2^32 - 1) over edge numerators (0, multiples of d
and their neighbours, 2^31 - 1, 2^32 - 1) and random ones. The emulated paged-attention tests run the
kernel with pages of 1, 3 and 16 slots; this covers the rest of the divisor range.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_PROGRAM = r"""
#include "specdec/fast_div.h"

#include <cstdint>
#include <cstdio>
#include <random>

using specdec::fast_div;
using specdec::fast_div_u32;

static long checks = 0, bad = 0;

static void check(uint32_t n, uint32_t d) {
  ++checks;
  const uint32_t got = fast_div(n, fast_div_u32(d));
  if (got != n / d && bad++ < 10) std::printf("n=%u d=%u: got %u, want %u\n", n, d, got, n / d);
}

int main() {
  std::mt19937_64 rng(0);
  auto divisors = [&](auto f) {
    for (uint32_t d = 1; d <= 1100; ++d) f(d);
    for (int s = 1; s < 32; ++s)
      for (int o = -3; o <= 3; ++o) f(static_cast<uint32_t>((uint64_t{1} << s) + o));
    for (int i = 0; i < 2000; ++i) f(static_cast<uint32_t>(rng() >> (32 + rng() % 32)) | 1u);
    f(0xffffffffu);
  };
  int add_form = 0;
  divisors([&](uint32_t d) {
    if (d == 0) return;
    add_form += fast_div_u32(d).add;
    for (uint32_t n = 0; n < 300; ++n) check(n, d);
    for (int k = 0; k < 200; ++k) {
      const uint32_t m = static_cast<uint32_t>(rng()) / d * d;
      check(m, d);
      check(m - 1, d);
      check(m + 1, d);
      check(static_cast<uint32_t>(rng() >> (32 + rng() % 32)), d);
    }
    check(0x7fffffffu, d);
    check(0xfffffffeu, d);
    check(0xffffffffu, d);
  });
  std::printf("%ld checks, %ld wrong, %d divisors in the add form\n", checks, bad, add_form);
  return bad == 0 && add_form > 0 ? 0 : 1;
}
"""


def test_fast_div_matches_integer_division(tmp_path):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler")
    src = tmp_path / "fast_div_check.cpp"
    src.write_text(_PROGRAM)
    exe = tmp_path / "fast_div_check"
    include = os.path.join(REPO, "csrc", "include")
    subprocess.run([cxx, "-std=c++17", "-O1", f"-I{include}", str(src), "-o", str(exe)], check=True)
    proc = subprocess.run([str(exe)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
