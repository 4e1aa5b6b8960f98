"""Static resource check of the compiled GPU kernels for sm_80 and sm_90, without a GPU (issue 23).

scripts/gpu_resources.py compiles every CUDA kernel of csrc/cuda with the extension's nvcc flags (ptxas -v)
and reuses the Triton compiles of tests/triton_compile_util.py (default cases); both results are cached in
build/gpu_resources/ under a hash of their inputs, so a warm run takes seconds. Asserted, per arch:

  * no kernel spills (ptxas: spill stores or spill loads > 0), CUDA or Triton (every autotune config);
  * every launch can run: threads <= 1024 and <= `__launch_bounds__`, registers x threads within the 64K
    registers of a block, shared memory within the block limit (and within 48 KiB unless the launcher opts
    in), at least one block per SM - at the block sizes and dynamic shared memory the launchers compute for
    representative shapes (an autotune config that cannot load is allowed when another config of the same
    launch can: the autotuner skips it);
  * every `__global__` kernel of csrc/cuda was compiled and has its launches mirrored in CUDA_LAUNCHES.

The parser and the limit checks are unit-tested on synthetic ptxas / PTX text and fake launches, so that
the checks above are known to fail when they should.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_resources", os.path.join(REPO, "scripts", "gpu_resources.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(mod)
    return mod


gr = _load_script()

# ---------------------------------------------------------------------------------------------------------
# The parser and the checks, on synthetic input

_PTXAS = """\
ptxas info    : 28 bytes gmem, 224 bytes cmem[4]
ptxas info    : Compiling entry function '_Z4fastPf' for 'sm_80'
ptxas info    : Function properties for _Z4fastPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 30 registers, used 1 barriers, 128 bytes smem, 420 bytes cmem[0]
ptxas info    : Compile time = 1.0 ms
ptxas info    : Function properties for _Z6helperv
    24 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads
ptxas info    : Compiling entry function '_Z5spillPf' for 'sm_90'
ptxas info    : Function properties for _Z5spillPf
    40 bytes stack frame, 36 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers
"""

_PTX = """\
.visible .entry _Z4fastPf(
\t.param .u64 _Z4fastPf_param_0
)
.maxntid 256, 1, 1
.minnctapersm 3
{
\tret;
}
.visible .entry _Z5spillPf(
\t.param .u64 _Z5spillPf_param_0
)
{
\tret;
}
.entry _Z3reqv()
.reqntid 32, 4, 1
{
}
"""


def test_parse_ptxas_report():
    got = gr.parse_ptxas(_PTXAS)
    assert got[("_Z4fastPf", 80)] == {
        "entry": True,
        "regs": 30,
        "spill_stores": 0,
        "spill_loads": 0,
        "stack": 0,
        "smem": 128,
    }
    assert got[("_Z5spillPf", 90)] == {
        "entry": True,
        "regs": 255,
        "spill_stores": 36,
        "spill_loads": 0,
        "stack": 40,
        "smem": 0,
    }
    helper = got[("_Z6helperv", 80)]  # a non-inlined device function, compiled while _Z4fastPf was
    assert helper["entry"] is False and helper["spill_stores"] == 8 and helper["spill_loads"] == 8


def test_spill_check_fails_on_spills():
    got = gr.parse_ptxas(_PTXAS)
    assert gr.spill_violations(got[("_Z4fastPf", 80)]) == []
    assert gr.spill_violations(got[("_Z5spillPf", 90)]) == ["spills: 36 bytes stored, 0 bytes loaded"]
    assert gr.spill_violations(got[("_Z6helperv", 80)])
    assert gr.spill_violations({"spill_stores": 0, "spill_loads": 4})
    assert gr.spill_violations({"spill_stores": None, "spill_loads": None}) == ["no ptxas spill report"]


def test_cuda_rows_report_spills_and_unknown_kernels():
    kernels = [
        dict(gr.parse_ptxas(_PTXAS)[("_Z5spillPf", 90)], name="compact_kv_kernel<16>", arch=90, maxntid=256),
        dict(gr.parse_ptxas(_PTXAS)[("_Z4fastPf", 80)], name="new_kernel", arch=80, maxntid=None),
    ]
    for k in kernels:
        k.update(min_blocks=None, source="csrc/cuda/x.cu", mangled="m")
    rows = gr.cuda_rows({"kernels": kernels})
    assert "spills: 36 bytes stored, 0 bytes loaded" in rows[0]["violations"]
    assert "no launch in CUDA_LAUNCHES" in rows[1]["violations"]


def test_parse_ptx_launch_bounds():
    assert gr.parse_ptx_bounds(_PTX) == {"_Z4fastPf": (256, 3), "_Z5spillPf": (None, None), "_Z3reqv": (128, None)}


def test_names():
    demangled = (
        "void specdec::(anonymous namespace)::tree_attention_kernel<c10::BFloat16, 128, 4>"
        "(specdec::(anonymous namespace)::Params)"
    )
    assert gr.short_name(demangled) == "tree_attention_kernel<bf16, 128, 4>"
    assert gr.short_name("void f<float>(int (*)(int))") == "f<fp32>"
    assert gr.template_args("gemm_nt_kernel<bf16, TileCfg<16, 32, 64, 1, 2>, 0>") == (
        "gemm_nt_kernel",
        ["bf16", "TileCfg<16, 32, 64, 1, 2>", "0"],
    )
    assert gr.template_args("build_tree_kernel") == ("build_tree_kernel", [])


@pytest.mark.parametrize(
    "arch, threads, regs, smem, blocks, occ, limiter",
    [
        (80, 256, 32, 0, 8, 1.0, "warps"),  # 8 warps x 1024 registers: 64 warps fit either way
        (80, 128, 127, 0, 4, 0.25, "regs"),  # 4096 registers per warp: 4 warps per 16K sub-partition
        (90, 128, 64, 0, 8, 0.5, "regs"),  # 2048 per warp: 8 per sub-partition, 32 warps
        (80, 32, 16, 0, 32, 0.5, "blocks"),  # one warp per block: the 32-block limit
        (80, 128, 32, 84548, 1, 4 / 64, "smem"),  # roundup(84548 + 1024, 128) = 85632 of 164 KiB
        (90, 128, 32, 84548, 2, 8 / 64, "smem"),  # of 228 KiB
        (80, 512, 255, 0, 0, 0.0, "regs"),  # 8192 registers per warp x 16 warps: no block fits
    ],
)
def test_occupancy_formula(arch, threads, regs, smem, blocks, occ, limiter):
    got = gr.occupancy(arch, threads, regs, smem)
    assert (got.blocks, got.occupancy, got.limiter) == (blocks, occ, limiter)


def test_launch_checks_fail_on_fake_over_limit_launches():
    assert gr.launch_violations(80, 256, 32, 0, maxntid=256, opt_in=False) == []
    assert gr.launch_violations(90, 1024, 64, 227 * 1024, maxntid=None, opt_in=True) == []
    assert gr.launch_violations(80, 1056, 16, 0) == ["1056 threads per block > 1024"]
    assert gr.launch_violations(80, 512, 32, 0, maxntid=256) == ["512 threads per block > __launch_bounds__ 256"]
    regs = gr.launch_violations(90, 512, 255, 0)
    assert regs == ["255 registers x 512 threads = 131072 allocated > 65536 per block"]
    assert gr.launch_violations(80, 128, 32, 163 * 1024 + 1) == [
        f"{163 * 1024 + 1} bytes of shared memory > 166912 per block"
    ]
    assert gr.launch_violations(90, 128, 32, 163 * 1024 + 1) == []  # sm_90 holds it
    assert gr.launch_violations(80, 128, 32, 48 * 1024 + 4, opt_in=False) == [
        "49156 bytes of shared memory > 49152 without the launcher's opt-in"
    ]


def test_attention_shared_memory_formula():
    # Smem<T, kDPad, kRpw>::kBytes of csrc/cuda/attention.cu for fp32, D 256, 4 rows per warp: the largest.
    assert gr.attention_smem(4, 256, 4) == 16 * 256 * 4 + 4 * 4 * 32 * 4 + 32 * 260 * 4 + 32 * 256 * 4 + 17 * 4


def test_setup_flags_are_read_from_setup_py():
    flags = gr.setup_nvcc_flags()
    for flag in ("-O3", "-std=c++20", "--use_fast_math", "-DSPECDEC_WITH_CUDA=1", "-DSPECDEC_MAX_TREE_NODES=1024"):
        assert flag in flags


# What CUDA_LAUNCHES of scripts/gpu_resources.py mirrors of the C++ launchers (csrc/cuda/*.cu, and the
# torch-free launch headers some of them take their configuration from, LAUNCH_HEADERS): the block sizes and
# shared-memory formulas as written there. When one of these no longer matches, update CUDA_LAUNCHES (and
# this list) to the launcher's new computation.
LAUNCH_HEADERS = {
    "tree.cu": "csrc/include/specdec/tree_launch.h",
    "verify.cu": "csrc/include/specdec/verify_launch.h",
    "compact.cu": "csrc/include/specdec/compact_launch.h",
    "attention.cu": "csrc/include/specdec/attention_launch.h",
    "paged.cu": "csrc/include/specdec/paged_launch.h",
}
LAUNCHER_SOURCE = {
    "tree.cu": [
        r"c\.threads = static_cast<int>\(\(N \+ kWarpSize - 1\) / kWarpSize \* kWarpSize\);",
        r"c\.smem = 2 \* static_cast<size_t>\(N\) \* sizeof\(int32_t\);",
        r"c\.threads = std::clamp\(c\.sort_len / 2, kWarpSize, kMaxBlockThreads\);",
        r"c\.smem = static_cast<size_t>\(c\.sort_len\) \* sizeof\(uint64_t\) \+ static_cast<size_t>\(M\);",
    ],
    "attention.cu": [
        r"constexpr int kWarps = 4;",
        r"constexpr int kTile = 32;",
        r"return R <= kWarps \? 1 : 4;",
        r"return D <= 64 \? 64 : \(D <= 128 \? 128 : kLargestDPad\);",
        r"kernel<<<grid, kThreads, plan\.smem, stream>>>",
        r"p\.smem_opt_in = p\.smem > kDefaultSmemBytes;",
        r"kDefaultSmemBytes = 48 \* 1024;",
        # smem_layout, mirrored by gpu_resources.attention_smem
        r"s\.vec = 16 / elem_bytes;",
        r"s\.k_stride = d_pad \+ s\.vec;",
        r"s\.p = s\.q \+ rows \* d_pad \* 4;",
        r"s\.k = s\.p \+ kWarps \* rpw \* kTile \* 4;",
        r"s\.v = s\.k \+ kTile \* s\.k_stride \* elem_bytes;",
        r"s\.words = s\.v \+ kTile \* d_pad \* elem_bytes;",
        r"s\.bytes = s\.words \+ \(rows \+ 1\) \* 4;",
    ],
    "verify.cu": [r"constexpr int kLogitsThreads = 512;", r"constexpr int kGreedyIdsThreads = 128;"],
    "compact.cu": [r"constexpr int kThreads = 256;", r"<<<grid, kThreads, 0, stream>>>"],
    "paged.cu": [
        r"kCsrThreads = 256;",
        r"kAcceptMaxThreads = 256;",
        r"std::clamp<int64_t>\(\(N \+ 31\) / 32 \* 32, 32, kAcceptMaxThreads\)",
        r"return static_cast<size_t>\(N\) \* 5;",
        r"<<<paged_launch::csr_blocks\(B \* max_pages\), paged_launch::kCsrThreads, 0, stream>>>",
        r"paged_launch::accept_threads\(N\), paged_launch::accept_smem\(N\)",
    ],
    "features.cu": [
        r"constexpr int kThreads = 256;",
        r"constexpr int kRowThreads = 256;",
        r"constexpr int kBlock = 256;",
        r"if \(q.M <= 16\) \{\s+run_nt<T, CfgTiny>",
        r"\} else if \(q.M <= 128\) \{\s+run_nt<T, CfgMid>",
    ],
}


@pytest.mark.parametrize("name", sorted(LAUNCHER_SOURCE))
def test_mirrored_launches_match_the_launchers(name):
    with open(os.path.join(REPO, "csrc", "cuda", name)) as fh:
        text = fh.read()
    if name in LAUNCH_HEADERS:
        with open(os.path.join(REPO, LAUNCH_HEADERS[name])) as fh:
            text += fh.read()
    missing = [p for p in LAUNCHER_SOURCE[name] if not re.search(p, text)]
    assert not missing, (
        f"csrc/cuda/{name} no longer computes its launches as CUDA_LAUNCHES of scripts/gpu_resources.py "
        f"mirrors them (update both): {missing}"
    )


# ---------------------------------------------------------------------------------------------------------
# The real kernels


def _torch_cuda_headers_reason():
    import torch

    if gr.find_nvcc() is None:
        return "nvcc not found"
    if torch.version.cuda is None:
        return "torch was built without CUDA (no CUDA headers for the extension)"
    return None


def _slow_while_cold(test):
    """Marks `test` slow while the CUDA compile is not cached (minutes of nvcc on two cores), not once it is."""
    try:
        warm = os.path.exists(gr.cuda_cache_path())
    except Exception:  # no nvcc / torch: the fixture skips
        warm = True
    return test if warm else pytest.mark.slow(test)


@pytest.fixture(scope="module")
def cuda_rows():
    reason = _torch_cuda_headers_reason()
    if reason:
        pytest.skip(reason)
    report = gr.cuda_report(log=lambda msg: None)
    print(f"CUDA compile: {'cached' if report['cached'] else str(report['seconds']) + ' s'} (nvcc {report['nvcc']})")
    return gr.cuda_rows(report)


def _global_kernels() -> set:
    names = set()
    for path in glob.glob(os.path.join(REPO, "csrc", "cuda", "*.cu")):
        with open(path) as fh:
            text = fh.read()
        names.update(re.findall(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(", text))
    return names


@_slow_while_cold
def test_every_cuda_kernel_is_compiled(cuda_rows):
    found = {gr.template_args(r["name"])[0] for r in cuda_rows}
    declared = _global_kernels()
    assert declared, "found no __global__ kernel in csrc/cuda (did the layout change?)"
    assert declared <= found, f"__global__ kernels missing from the compiled objects: {sorted(declared - found)}"
    assert {r["arch"] for r in cuda_rows} == set(gr.ARCHS)


@_slow_while_cold
@pytest.mark.parametrize("arch", gr.ARCHS)
def test_cuda_kernels_do_not_spill_and_can_launch(cuda_rows, arch):
    rows = [r for r in cuda_rows if r["arch"] == arch]
    print("\n".join(gr._cuda_table(rows)))
    bad = [
        f"{r['name']} [{(r['launch'] or {}).get('shape', '-')}]: {'; '.join(r['violations'])}"
        for r in rows
        if r["violations"]
    ]
    assert not bad, f"sm_{arch}:\n" + "\n".join(bad)


def _nvidia_backend_reason():
    try:
        from triton.backends import backends
    except Exception as exc:  # pragma: no cover - depends on the installation
        return f"Triton is not usable: {exc}"
    return None if "nvidia" in backends else "this Triton has no NVIDIA backend"


@pytest.fixture(scope="module")
def triton_rows():
    reason = _nvidia_backend_reason()
    if reason:
        pytest.skip(reason)
    report = gr.triton_report("fast", log=lambda msg: None)
    print(f"Triton compile: {'cached' if report['cached'] else str(report['seconds']) + ' s'}")
    return gr.triton_rows(report)


def _tile_keys(configs) -> set:
    return {(c.kwargs["BM"], c.kwargs["BN"], c.kwargs["BK"], c.num_warps, c.num_stages) for c in configs}


def test_feature_gemm_configs_fit_the_operands():
    """The autotune pruning of the feature GEMMs (features_shared.fitting_configs): every config for vectorised
    16-bit operands, the small tiles for operands Triton cannot vectorise and for exact fp32 dots."""
    import torch

    from specdec_kernels.triton_kernels import features_shared as fs

    one, two = fs.mm_configs(interpreted=False), fs.mm_configs(two_acc=True, interpreted=False)
    assert len(_tile_keys(one)) == len(one) and len(_tile_keys(two)) == len(two)

    def args(dt, H, prec="ieee", offset=0):
        w = torch.empty(H, 2 * H + offset, dtype=dt)[:, offset:]  # a column view, as the fc weight's halves
        a = torch.empty(60, H, dtype=dt)
        return {"A": a, "W": w, "M": 60, "N": H, "K": H, "stride_a": H, "stride_w": w.stride(0), "PREC": prec}

    bf16 = args(torch.bfloat16, 4096)
    assert fs.fitting_configs(one, bf16) == one and fs.fitting_configs(two, bf16, two_acc=True) == two
    for odd in (args(torch.bfloat16, 72), args(torch.float16, 4096, offset=1)):
        assert _tile_keys(fs.fitting_configs(one, odd)) == set(fs._SMALL)
        assert _tile_keys(fs.fitting_configs(two, odd, two_acc=True)) == set(fs._SMALL_TWO_ACC)
    fp32 = args(torch.float32, 4096)
    assert _tile_keys(fs.fitting_configs(one, fp32)) == set(fs._FMA)
    assert _tile_keys(fs.fitting_configs(two, fp32, two_acc=True)) == {(16, 32, 32, 4, 2)}
    assert fs.fitting_configs(one, dict(fp32, PREC="tf32")) == one  # TF32 dots run on tensor cores
    odd_tf32 = args(torch.float32, 72, prec="tf32")  # ... but unvectorised fp32 tiles take twice the registers
    assert _tile_keys(fs.fitting_configs(two, odd_tf32, two_acc=True)) == {(16, 32, 32, 4, 2)}
    # the weight-gradient GEMM loads along M and N: an odd row count T (its K) does not matter, an odd M does
    wgrad = {"A": torch.empty(61, 4096, dtype=torch.bfloat16), "M": 4096, "N": 4096, "K": 61, "PREC": "ieee"}
    assert fs.fitting_configs(one, wgrad, contiguous=("M", "N")) == one
    assert _tile_keys(fs.fitting_configs(one, dict(wgrad, M=72), contiguous=("M", "N"))) == set(fs._SMALL)


@pytest.mark.parametrize("arch", gr.ARCHS)
def test_triton_kernels_do_not_spill_and_can_launch(triton_rows, arch):
    rows = [r for r in triton_rows if r["arch"] == arch]
    assert rows, f"no Triton compile for sm_{arch}"
    print("\n".join(gr._triton_table(rows)))
    bad = [
        f"{r['case']}: {r['kernel']} [{r.get('config')}]: {'; '.join(r['violations'])}" for r in rows if r["violations"]
    ]
    assert not bad, f"sm_{arch}:\n" + "\n".join(bad)
