"""The emulated CUDA kernels under ThreadSanitizer (`tsan`) and Address+UB sanitizer (`asan`), small cases.

Shared-memory races (accesses of two threads not ordered by __syncthreads / __syncwarp), out-of-bounds
accesses of global and shared memory and undefined behaviour in the real csrc/cuda sources are reported by
the sanitizers and fail the test with the report. The last tests prove it: deliberately broken copies of
tree.cu (a barrier of select_tree's bitonic sort deleted; an off-by-one loop bound in build_tree) and of
attention.cu (the barrier between staging a K / V tile in shared memory and reading it deleted) are caught.
See docs/testing.md, "CUDA kernels under emulation".
"""

from __future__ import annotations

import re

import pytest
import torch
from test_cuda_emulated_attention import emulated_tree_attention

import cuda_emulation as ce
from test_cuda_emulated import CacheView, check_build_tree, check_compact, check_select_tree, i32
from test_tree import make_batch, make_parents, random_candidates
from test_tree_attention_kernel_paths import inputs

pytestmark = [
    pytest.mark.emulated,
    pytest.mark.skipif(ce.unavailable_reason() is not None, reason=str(ce.unavailable_reason())),
]

SANITIZERS = ["tsan", "asan"]


@pytest.mark.parametrize("variant", SANITIZERS)
def test_build_tree_kernel_sanitized(variant):
    gen = torch.Generator().manual_seed(3)
    chain = torch.stack([make_parents("chain", 64, gen)])
    check_build_tree(chain, torch.tensor([64], dtype=torch.int32), variant=variant)
    check_build_tree(*make_batch(3, 65, seed=65, ragged=True), variant=variant)


@pytest.mark.parametrize("variant", SANITIZERS)
def test_select_tree_kernel_sanitized(variant):
    check_select_tree(*random_candidates(2, 100, seed=1), 60, variant=variant)
    check_select_tree(*random_candidates(2, 33, seed=2), 34, variant=variant)  # keeps all: no sort


@pytest.mark.parametrize("variant", SANITIZERS)
def test_compact_kv_kernel_sanitized(variant):
    S = 12
    views = [
        CacheView((2, 2, S, 8), torch.float16, seed=1),
        CacheView((2, 2, S, 3), torch.float32, stride=(2 * S * 4, S * 4, 4, 1), offset=1, seed=2),
        CacheView((2, 1, S, 5), torch.int8, seed=3),
    ]
    check_compact(views, i32([0, 4]), i32([[0, 2, 5, 7], [0, 1, 3, 9]]), i32([4, 4]), num_sms=1, variant=variant)


# ---------------------------------------------------------------------------------------------------
# Proof that the emulation catches broken kernels


def broken_cu(tmp_path, family: str, old: str, new: str):
    """A copy of the family's .cu file (e.g. csrc/cuda/tree.cu) with `old` (which must occur exactly once)
    replaced by `new`."""
    source = ce.ROOT / ce.FAMILIES[family]
    src = source.read_text()
    assert src.count(old) == 1, f"{source.name} changed: update this test's edit of {old!r}"
    path = tmp_path / source.name
    path.write_text(src.replace(old, new))
    return path


def broken_tree_cu(tmp_path, old: str, new: str):
    return broken_cu(tmp_path, "tree", old, new)


def test_tsan_reports_a_missing_barrier_in_the_bitonic_sort(tmp_path):
    path = broken_tree_cu(
        tmp_path,
        """          }
        }
        __syncthreads();
      }
    }
  }""",
        """          }
        }
      }
    }
  }""",
    )
    exe = ce.executable("tsan", sources={"tree": path})
    # Caught either way: ThreadSanitizer reports the race when its shadow memory sees the unordered pair of
    # accesses, else the sort's wrong result fails the comparison with the reference (which one depends on
    # the OS threads' schedule).
    with pytest.raises((ce.EmulationError, AssertionError)) as caught:
        check_select_tree(*random_candidates(1, 100, seed=1), 60, variant="tsan", exe=exe)
    said = str(caught.value)
    assert "ThreadSanitizer: data race" in said or "entries differ" in said, said


def test_asan_reports_an_off_by_one_loop_bound(tmp_path):
    # build_tree's load loop reads parents[N] (past the last tree) and writes s_first[N] (past the dynamic
    # shared memory) with `<=`.
    path = broken_tree_cu(
        tmp_path,
        "  for (int i = tid; i < N; i += blockDim.x) {\n    const int32_t p = parents[i];",
        "  for (int i = tid; i <= N; i += blockDim.x) {\n    const int32_t p = parents[i];",
    )
    exe = ce.executable("asan", sources={"tree": path})
    with pytest.raises(ce.EmulationError, match="AddressSanitizer: heap-buffer-overflow"):
        check_build_tree(*make_batch(1, 64, seed=1), variant="asan", exe=exe)


def _lines_of(path, first: str, last: str) -> range:
    """Line numbers (1-based) of `path` from the line starting with `first` to the next line equal to `last`."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    end = next(i for i in range(start, len(lines)) if lines[i] == last)
    return range(start + 1, end + 2)


def test_tsan_reports_a_missing_barrier_in_tree_attention_kernel_tile_staging(tmp_path):
    # tree_attention_kernel's prefix loop without the __syncthreads between staging a K / V tile in shared
    # memory and the warps reading it: a warp may read slots that another warp has not written yet.
    old = "    stage(s0, [&](int t) { return t < n; });\n    __syncthreads();\n"
    path = broken_cu(tmp_path, "attention", old, "    stage(s0, [&](int t) { return t < n; });\n")
    exe = ce.executable("tsan", sources={"attention": path})
    q, k, v, cl, mask = inputs(1, 4, 1, 1, 64, 40, 1, torch.float32, seed=3, cache_len=[36])
    with pytest.raises(ce.EmulationError, match="ThreadSanitizer: data race") as caught:
        emulated_tree_attention(q, k, v, cl, mask, 0.2, variant="tsan", exe=exe)
    said = str(caught.value)
    # Reported at the two sides of the race: a store of the staging lambda, and a read of the tile by the
    # attend lambda (inlined from load_float); the rewrite keeps the .cu file's line numbers.
    at = {int(n) for n in re.findall(r"attention\.cu:(\d+)", said)}
    stage = _lines_of(path, "  auto stage = ", "  };")
    attend = _lines_of(path, "  auto attend = ", "  };")
    load = _lines_of(path, "__device__ __forceinline__ void load_float", "}")
    assert at & set(stage) and at & (set(attend) | set(load)), (
        f"the race should be reported at a line of stage ({stage.start}-{stage.stop - 1}) and at one of attend "
        f"({attend.start}-{attend.stop - 1}) or load_float ({load.start}-{load.stop - 1}):\n{said}"
    )
