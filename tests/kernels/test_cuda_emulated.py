"""The CUDA kernels of csrc/cuda run on the CPU under the project's CUDA emulation (tests/cuda_emulation/).

Each test id names the __global__ kernel. The real .cu sources, compiled by g++ against cudaemu.h, run
with the launch configuration their CUDA launcher would use (specdec/*_launch.h) on the case generators of
test_tree.py / test_compact.py, and are compared with the PyTorch references exactly (integers and moved
bytes). The `tsan` / `asan` tests run a few small cases under ThreadSanitizer and Address+UB sanitizer; the
last test proves the emulation catches a broken kernel. See docs/testing.md, "CUDA kernels under emulation".
"""

from __future__ import annotations

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels.reference import compact as compact_ref

import cuda_emulation as ce
from helpers import assert_equal
from test_tree import KINDS, MALFORMED, eagle_candidates, make_batch, make_parents, random_candidates

pytestmark = [
    pytest.mark.emulated,
    pytest.mark.skipif(ce.unavailable_reason() is not None, reason=str(ce.unavailable_reason())),
]

TREE_FIELDS = ("depth", "mask", "first_child", "next_sibling", "valid")


# ---------------------------------------------------------------------------------------------------
# Runners: the kernel entries of tests/cuda_emulation/drivers on torch tensors


def emulated_build_tree(parents, num_nodes, variant="plain", exe=None):
    B, N = parents.shape
    W = (N + 31) // 32
    outputs = {
        "depth": ce.poisoned((B, N), torch.int32),
        "mask": ce.poisoned((B, N, W), torch.int32),
        "first_child": ce.poisoned((B, N), torch.int32),
        "next_sibling": ce.poisoned((B, N), torch.int32),
        "valid": ce.poisoned((B,), torch.uint8),
    }
    got = ce.run(
        "build_tree_kernel",
        {"B": B, "N": N},
        {"parents": parents.to(torch.int32), "num_nodes": num_nodes.to(torch.int32)},
        outputs,
        variant=variant,
        exe=exe,
    )
    got["valid"] = got["valid"].to(torch.bool)  # 0 / 1 bytes (anything else fails the comparison below)
    return got


def check_build_tree(parents, num_nodes, variant="plain", exe=None):
    got = emulated_build_tree(parents, num_nodes, variant, exe)
    want = sk.build_tree(parents, num_nodes, backend="torch")
    for name in TREE_FIELDS:
        assert_equal(got[name], getattr(want, name), f"build_tree_kernel {name}")
    return want


def emulated_select_tree(scores, cparents, ctokens, root, N, variant="plain", exe=None):
    B, M = scores.shape
    outputs = {
        "parents": ce.poisoned((B, N), torch.int32),
        "tokens": ce.poisoned((B, N), torch.int64),
        "selected": ce.poisoned((B, N), torch.int32),
    }
    inputs = {"cand_scores": scores, "cand_parents": cparents, "cand_tokens": ctokens, "root_tokens": root}
    return ce.run("select_tree_kernel", {"B": B, "M": M, "N": N}, inputs, outputs, variant=variant, exe=exe)


def check_select_tree(scores, cparents, ctokens, root, N, variant="plain", exe=None):
    got = emulated_select_tree(scores, cparents, ctokens, root, N, variant, exe)
    want = sk.select_tree(scores, cparents, ctokens, root, N, backend="torch")
    for name, w in zip(("parents", "tokens", "selected"), want):
        assert_equal(got[name], w, f"select_tree_kernel {name}")


# ---------------------------------------------------------------------------------------------------
# build_tree_kernel


def _one_kind(kind, N, B=2, seed=0):
    gen = torch.Generator().manual_seed(seed + N)
    parents = torch.stack([make_parents(kind, N, gen) for _ in range(B)])
    return parents, torch.full((B,), N, dtype=torch.int32)


@pytest.mark.parametrize("N", [1, 2, 33, 64, 1024], ids=lambda n: f"N{n}")
@pytest.mark.parametrize("kind", KINDS)
def test_build_tree_kernel_shapes(kind, N):
    """Chains, stars, k-ary, random and deep trees from one node up to the kernel's limit (1024 threads)."""
    check_build_tree(*_one_kind(kind, N))


@pytest.mark.parametrize("N", [31, 32, 65, 200], ids=lambda n: f"N{n}")
def test_build_tree_kernel_ragged(N):
    """Ragged batches (junk padding past num_nodes), every shape class in one launch."""
    parents, num_nodes = make_batch(7, N, seed=N, ragged=True)
    assert bool(check_build_tree(parents, num_nodes).valid.all())


def test_build_tree_kernel_malformed():
    names = list(MALFORMED)
    parents = torch.tensor([MALFORMED[k][0] for k in names] + [[-1, 0, 0, 1]], dtype=torch.int32)
    num_nodes = torch.tensor([MALFORMED[k][1] for k in names] + [4], dtype=torch.int32)
    want = check_build_tree(parents, num_nodes)
    assert want.valid.tolist() == [False] * len(names) + [True]


def test_build_tree_kernel_random_malformed():
    B, N = 16, 64
    parents, num_nodes = make_batch(B, N, seed=5, ragged=True)
    gen = torch.Generator().manual_seed(6)
    rows = torch.arange(0, B, 2)
    cols = torch.randint(0, N, (len(rows),), generator=gen)
    parents[rows, cols] = torch.randint(-3, N + 3, (len(rows),), generator=gen, dtype=torch.int32)
    assert not bool(check_build_tree(parents, num_nodes).valid.all())


def test_build_tree_kernel_empty_batch():
    got = emulated_build_tree(torch.empty(0, 5, dtype=torch.int32), torch.empty(0, dtype=torch.int32))
    assert got["depth"].shape == (0, 5)


def test_build_tree_kernel_refuses_past_the_block_limit():
    """N = 1025 would need 1056 threads in one block: the emulated launch refuses, as a GPU would."""
    parents, num_nodes = _one_kind("chain", 1025, B=1)
    with pytest.raises(ce.EmulationError, match="at most 1024 threads"):
        emulated_build_tree(parents, num_nodes)


# ---------------------------------------------------------------------------------------------------
# select_tree_kernel


@pytest.mark.parametrize(
    "M,N",
    [(1, 1), (1, 2), (5, 3), (31, 32), (33, 20), (100, 60), (410, 60), (510, 101), (1000, 1001), (4096, 1024)],
    ids=lambda v: str(v),
)
def test_select_tree_kernel_random(M, N):
    """Ties, NaN, +-inf, -0.0, invalid parents; every kept-all case (N = M + 1) and the 4096 limit."""
    check_select_tree(*random_candidates(3 if M < 4096 else 1, M, seed=M * 7 + N), N)


def test_select_tree_kernel_eagle():
    scores, cparents, ctokens, root = eagle_candidates(B=5, top_k=10, depth=6, seed=4)
    check_select_tree(scores, cparents, ctokens, root, 60)


def test_select_tree_kernel_golden_nan_and_signed_zero():
    inf, nan = float("inf"), float("nan")
    scores = torch.tensor([[nan, -inf, -1.0, nan], [-0.0, 0.0, -1.0, -2.0], [0.0, -0.0, -1.0, -2.0], [nan] * 4])
    cparents = torch.tensor([[-1, -1, -1, -1]] * 4, dtype=torch.int32)
    got = emulated_select_tree(scores, cparents, torch.arange(100, 116).reshape(4, 4), torch.tensor([1, 2, 3, 4]), 3)
    assert got["selected"].tolist() == [[-1, 1, 2], [-1, 0, 1], [-1, 0, 1], [-1, 0, 1]]


def test_select_tree_kernel_root_only():
    got = emulated_select_tree(
        torch.tensor([[-1.0, -2.0]]), torch.full((1, 2), -1, dtype=torch.int32), torch.ones(1, 2, dtype=torch.int64),
        torch.tensor([8]), 1,
    )  # fmt: skip
    assert got["parents"].tolist() == [[-1]] and got["tokens"].tolist() == [[8]]


# ---------------------------------------------------------------------------------------------------
# compact_kv_kernel: caches are strided views into raw byte storages


class CacheView:
    """A [B, X, S, Y] view of dtype `dtype` into its own storage (elements), with any strides and offset."""

    def __init__(self, shape, dtype, stride=None, offset=0, seed=0):
        B, X, S, Y = shape
        stride = stride or (X * S * Y, S * Y, Y, 1)
        numel = offset + sum((n - 1) * s for n, s in zip(shape, stride)) + 1
        gen = torch.Generator().manual_seed(seed)
        raw = torch.randint(0, 256, (numel * torch.empty((), dtype=dtype).element_size(),), generator=gen)
        if dtype == torch.bool:
            raw = raw % 2  # a bool byte other than 0 / 1 is not a valid value
        self.storage = raw.to(torch.uint8).view(dtype)
        self.shape, self.stride, self.offset, self.dtype = shape, stride, offset, dtype

    def view(self, storage=None):
        s = self.storage if storage is None else storage
        return torch.as_strided(s, self.shape, self.stride, self.offset)


def emulated_compact(views, cache_len, accept_nodes, accept_len, num_sms=132, variant="plain", exe=None):
    B, W = accept_nodes.shape
    scalars = {"B": B, "W": W, "T": len(views), "num_sms": num_sms}
    outputs = {}
    for i, v in enumerate(views):
        es = v.storage.element_size()
        scalars.update({f"es{i}": es, f"offset{i}": v.offset * es})
        scalars.update({f"{k}{i}": n for k, n in zip("BXSY", v.shape) if k != "B"})
        scalars.update({f"{k}{i}": s for k, s in zip(("sb", "sx", "ss"), v.stride[:3])})
        outputs[f"cache{i}"] = v.storage
    inputs = {"cache_len": cache_len, "accept_nodes": accept_nodes, "accept_len": accept_len}
    return ce.run("compact_kv_kernel", scalars, inputs, outputs, variant=variant, exe=exe)


def check_compact(views, cache_len, accept_nodes, accept_len, **kw):
    """The kernel against specdec_kernels.reference.compact on copies; every storage byte must match."""
    got = emulated_compact(views, cache_len, accept_nodes, accept_len, **kw)
    want = [v.storage.clone() for v in views]
    compact_ref.compact_kv([v.view(w) for v, w in zip(views, want)], cache_len, accept_nodes, accept_len)
    for i, w in enumerate(want):
        assert_equal(got[f"cache{i}"].view(torch.uint8), w.view(torch.uint8), f"compact_kv_kernel cache{i}")
    return want


def i32(x):
    return torch.tensor(x, dtype=torch.int32)


@pytest.mark.parametrize(
    "nodes,n_acc",
    [([0, 1, 2], 3), ([0, 2, 5], 3), ([0, 3, 4, 9], 4), ([0, -1, -1], 1), ([0, 1, 7, -1], 3), ([0, 4, 6, 7], 2)],
    ids=lambda v: str(v),
)
def test_compact_kv_kernel_paths(nodes, n_acc):
    """Overlapping sources and destinations ([0, 2, 5]: slot 2 is read by j = 1 and written by j = 2)."""
    check_compact([CacheView((1, 2, 16, 3), torch.float32)], i32([4]), i32([nodes]), i32([n_acc]))


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.bool, torch.int64, torch.float64]


@pytest.mark.parametrize("Y", [1, 3, 8, 17])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_compact_kv_kernel_dtypes(dtype, Y):
    """Every dtype and row size: 1-, 2-, 4-, 8- and 16-byte accesses; ragged requests, out-of-range slots."""
    cl = i32([0, 7, 13, 5])
    an = i32([[0, 1, 3, 6, -1], [0, 2, 3, 4, 8], [0, -1, -1, -1, -1], [0, 2, 3, 4, 9]])
    al = i32([4, 5, 1, 5])  # request 3: slot 5 + 9 = 14 is past S = 12, so j = 4 moves nothing
    views = [CacheView((4, 2, 24, Y), dtype, seed=Y), CacheView((4, 3, 12, Y), dtype, seed=Y + 1)]
    check_compact(views, cl, an, al, num_sms=1)


def test_compact_kv_kernel_strided_offset_views():
    """Heads strided, rows offset by one element (narrower accesses), a per-token [B, 1, S, Y] view."""
    B, S = 3, 24
    views = [
        CacheView((B, 2, S, 8), torch.float16, stride=(4 * S * 8, 2 * S * 8, 8, 1), seed=1),  # every 2nd head
        CacheView((B, 2, S, 8), torch.float32, stride=(2 * S * 9, S * 9, 9, 1), offset=1, seed=2),  # padded rows
        CacheView((B, 1, S, 6), torch.float32, stride=(S * 6, 0, 6, 1), seed=3),  # per-token features
        CacheView((B, 1, S, 1), torch.int64, stride=(S, 0, 1, 1), seed=4),  # per-token ids
        CacheView((B, 2, S, 4), torch.bfloat16, stride=(2 * 4, 4, B * 2 * 4, 1), seed=5),  # slot-major
    ]
    check_compact(views, i32([0, 7, 13]), i32([[0, 1, 3, 6, -1], [0, 2, 3, 4, 8], [0, 1, 5, -1, -1]]), i32([4, 5, 3]))


@pytest.mark.parametrize("T", [17, 70, 300], ids=lambda t: f"T{t}")
def test_compact_kv_kernel_many_tensors(T):
    """64- and 256-descriptor parameter structs, and more tensors than one launch takes (two launches)."""
    dtypes = [torch.float16, torch.float32, torch.int8]
    views = [CacheView((2, 1, 10, 2 + i % 5), dtypes[i % 3], seed=i) for i in range(T)]
    check_compact(views, i32([1, 3]), i32([[0, 2, 4], [0, 1, 3]]), i32([3, 3]), num_sms=2)


@pytest.mark.parametrize("num_sms", [1, 132])
def test_compact_kv_kernel_random(num_sms):
    """test_compact.py's random paths, many requests: grid-stride loops with a one-SM grid."""
    gen = torch.Generator().manual_seed(0)
    B, X, S, Y, W = 6, 2, 40, 5, 7
    cl = torch.randint(0, S - 2 * W, (B,), generator=gen, dtype=torch.int32)
    al = torch.randint(1, W + 1, (B,), generator=gen, dtype=torch.int32)
    an = torch.full((B, W), -1, dtype=torch.int32)
    for b in range(B):
        steps = torch.randint(1, 3, (int(al[b]) - 1,), generator=gen)
        an[b, : int(al[b])] = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(steps, 0)]).int()
    views = [CacheView((B, X, S, Y), torch.float16), CacheView((B, X, S, 64), torch.bfloat16, seed=9)]
    check_compact(views, cl, an, al, num_sms=num_sms)


# ---------------------------------------------------------------------------------------------------
# The emulation itself: tests/cuda_emulation/selftest.cu


def _selftest(entry, scalars, n_out, env=None):
    return ce.run(entry, scalars, {}, {"out": ce.poisoned((n_out,), torch.int32)}, env=env)["out"]


def test_selftest_warp_intrinsics():
    """Each warp intrinsic's result per lane, over two warps, against its definition."""
    got = _selftest("warp_kernel", {"threads": 64}, 64 * 9).view(64, 9)
    t = torch.arange(64)
    lane, base = t % 32, t - t % 32
    as_i32 = lambda bits: torch.tensor(bits, dtype=torch.int64).to(torch.int32)
    ballot = sum(1 << k for k in range(32) if k % 3 == 0)
    match = torch.stack([as_i32(0xF << (4 * (k // 4))) for k in range(32)]).repeat(2)
    want = torch.stack(
        [
            base + 5,
            t ^ 1,
            torch.where(lane >= 3, t - 3, t),
            torch.where(lane < 29, t + 3, t),
            as_i32(ballot).expand(64),
            match,
            torch.ones(64, dtype=torch.int64),
            torch.zeros(64, dtype=torch.int64),
            t ^ 8,
        ],
        dim=1,
    ).to(torch.int32)
    assert_equal(got, want, "warp intrinsics")


def test_selftest_block_reductions_and_shared_memory_poison():
    """__syncthreads_or / and / count over 96 threads; static and dynamic shared memory poisoned per block."""
    got = _selftest("block_kernel", {"blocks": 3, "threads": 96}, 3 * 5).view(3, 5)
    poison = torch.tensor([0xA5A5A5A5], dtype=torch.int64).to(torch.int32).item()
    assert got.tolist() == [[poison, 1, 1, 20, poison]] * 3


@pytest.mark.parametrize(
    "arch,nbytes,optin,refused",
    [
        ("sm_80", 48 * 1024, 0, False),
        ("sm_80", 48 * 1024 + 1, 0, True),  # more than 48 KiB needs the opt-in attribute
        ("sm_80", 100 * 1024, 100 * 1024, False),
        ("sm_80", 200 * 1024, 200 * 1024, True),  # sm_80: at most 163 KiB
        ("sm_90", 200 * 1024, 200 * 1024, False),
        ("sm_90", 100 * 1024, 64 * 1024, True),  # more than the kernel opted in to
    ],
)
def test_selftest_dynamic_shared_memory_limits(arch, nbytes, optin, refused):
    scalars = {"bytes": nbytes, "optin": optin}
    if refused:
        with pytest.raises(ce.EmulationError, match="cudaemu: .*(shared memory|allows at most)"):
            _selftest("smem_kernel", scalars, 1, env={"CUDAEMU_ARCH": arch})
    else:
        assert _selftest("smem_kernel", scalars, 1, env={"CUDAEMU_ARCH": arch}).tolist() == [0xA5]


@pytest.mark.parametrize(
    "mode,message",
    [(0, "divergent __syncthreads"), (1, "timeout"), (2, "only the full mask")],
    ids=["two-barriers", "barrier-never-reached", "partial-mask"],
)
def test_selftest_broken_kernels_are_reported(mode, message):
    with pytest.raises(ce.EmulationError, match=message):
        _selftest("broken_kernel", {"mode": mode}, 64, env={"CUDAEMU_TIMEOUT_S": "2"})


@pytest.mark.parametrize("optional", [False, True])
def test_selftest_request_scalars_optional_buffers_and_status_check(optional):
    """Integer and real scalars (a float crosses exactly), an absent optional buffer, a failed CUDA call."""
    x = 0.1 + 2.0**-40
    ins = {"optional": torch.zeros(1)} if optional else {}
    outs = {"out": ce.poisoned((2,), torch.float64), "has": ce.poisoned((1,), torch.int32)}
    got = ce.run("protocol", {"n": -(2**40), "x": x, "status": 0}, ins, outs)
    assert got["out"].tolist() == [-(2**40), x] and got["has"].tolist() == [int(optional)]
    with pytest.raises(ce.EmulationError, match="is not an integer"):
        ce.run("protocol", {"n": 1.5, "x": x, "status": 0}, ins, outs)
    with pytest.raises(ce.EmulationError, match="cudaemu: the checked call returned CUDA error 1"):
        ce.run("protocol", {"n": 1, "x": x, "status": 1}, ins, outs)
