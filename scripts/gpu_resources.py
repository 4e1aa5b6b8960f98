#!/usr/bin/env python3
"""Static resource check of the compiled GPU kernels, for sm_80 and sm_90, without a GPU (issue 23).

    python scripts/gpu_resources.py                                         # print the table
    python scripts/gpu_resources.py --write bench/results/cuda_resources.md # write it
    python scripts/gpu_resources.py --no-triton                             # CUDA kernels only

CUDA kernels (csrc/cuda/*.cu): every `__global__` entry of every instantiation the launchers use, from the
device side of the extension's own nvcc command (setup.py's nvcc flags, defines and kernel limits, the
flags torch's BuildExtension adds, torch's include folders), compiled with `-fatbin` (the host compilation,
which does not change the device code, is skipped) for sm_80 and sm_90 with `-Xptxas -v`. Parsed: registers,
spill stores / loads, stack frame (local memory per thread) and static shared memory from ptxas's report;
`.maxntid` / `.minnctapersm` (`__launch_bounds__`) from the PTX kept by `--keep`. The result is cached in
build/gpu_resources/ under a hash of the inputs (sources, command, nvcc and torch versions).

Triton kernels: the compiles of tests/triton_compile_util.py (its default cases: those not marked slow),
whose ptxas reports give registers, spills and stack, and whose metadata gives the shared memory; cached
the same way (hash of specdec_kernels/, the case list, the Triton and torch versions).

Launches: the block size and dynamic shared memory each CUDA launcher computes, mirrored in CUDA_LAUNCHES
for representative shapes (the launchers are C++; no GPU runs them here); Triton launches are recorded
from the Python launchers themselves (num_warps, the kernel's shared memory).

Occupancy (the CUDA occupancy calculator's rules, cudaOccMaxActiveBlocksPerMultiprocessor), per SM:
    warps = ceil(threads / 32); regs_warp = roundup(regs * 32, 256)
    by_regs = 4 * floor((65536 / 4) / regs_warp) // warps        (4 sub-partitions of 16K registers)
    by_warps = (2048 / 32) // warps; by_blocks = 32
    by_smem = smem_SM // roundup(static + dynamic + 1024, 128)     (1 KiB reserved per block by the driver)
    blocks = min(by_regs, by_warps, by_blocks, by_smem); occupancy = blocks * warps / 64
with smem_SM = 164 KiB (sm_80) / 228 KiB (sm_90), the largest carveout. A launch fails when threads > 1024,
threads > .maxntid, regs_warp * warps > 65536, static + dynamic > 163 KiB (sm_80) / 227 KiB (sm_90), or
static + dynamic > 48 KiB without the launcher's opt-in (cudaFuncSetAttribute; Triton's launcher opts in).
Sources: CUDA C++ Programming Guide, "Compute capabilities" (technical specifications table); CUDA
Occupancy Calculator (cuda_occupancy.h: register allocation unit 256 per warp, 4 warp schedulers).
"""

from __future__ import annotations

import argparse
import ast
import datetime
import glob
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_DIR = os.path.join(REPO, "build", "gpu_resources")
CACHE_VERSION = 1  # bump when the parsed fields change
ARCHS = (80, 90)


@dataclass(frozen=True)
class ArchLimits:
    smem_per_sm: int  # bytes, largest carveout
    smem_per_block: int  # bytes, opt-in maximum of one block (static + dynamic)
    regs_per_sm: int = 65536
    regs_per_block: int = 65536
    threads_per_sm: int = 2048
    threads_per_block: int = 1024
    blocks_per_sm: int = 32
    smem_default: int = 48 * 1024  # a block's shared memory without the opt-in attribute
    smem_reserved: int = 1024  # per block, reserved by the driver (sm_80 and later)
    smem_unit: int = 128
    reg_unit: int = 256  # registers are allocated per warp in units of 256
    sub_partitions: int = 4
    warp: int = 32


LIMITS = {80: ArchLimits(smem_per_sm=164 * 1024, smem_per_block=163 * 1024), 90: ArchLimits(228 * 1024, 227 * 1024)}


def _roundup(x: int, unit: int) -> int:
    return (x + unit - 1) // unit * unit


# ---------------------------------------------------------------------------------------------------------
# Occupancy and launch checks


@dataclass(frozen=True)
class Occupancy:
    blocks: int  # resident blocks per SM (0: the launch cannot run)
    occupancy: float  # resident warps / 64
    limiter: str  # what bounds `blocks`: regs, warps, blocks, smem


def occupancy(arch: int, threads: int, regs: int, smem: int) -> Occupancy:
    """Resident blocks per SM of a launch of `threads` threads, `regs` registers / thread, `smem` bytes of
    shared memory (static + dynamic) per block; see the module docstring for the formula."""
    lim = LIMITS[arch]
    warps = math.ceil(threads / lim.warp)
    regs_warp = _roundup(max(regs, 1) * lim.warp, lim.reg_unit)
    per_sub = (lim.regs_per_sm // lim.sub_partitions) // regs_warp
    limits = {
        "warps": (lim.threads_per_sm // lim.warp) // warps,
        "blocks": lim.blocks_per_sm,
        "regs": (lim.sub_partitions * per_sub) // warps,
        "smem": lim.smem_per_sm // _roundup(smem + lim.smem_reserved, lim.smem_unit),
    }
    limiter = min(limits, key=limits.get)  # on a tie, the first: warps, blocks, regs, smem
    blocks = limits[limiter]
    return Occupancy(blocks, blocks * warps / (lim.threads_per_sm // lim.warp), limiter)


def launch_violations(
    arch: int, threads: int, regs: int, smem: int, maxntid: int | None = None, opt_in: bool = True
) -> list[str]:
    """Why a launch cannot run on `arch` (empty: it can). smem: static + dynamic bytes per block; maxntid:
    the kernel's launch bound (None: none); opt_in: the launcher raises the dynamic shared memory limit."""
    lim = LIMITS[arch]
    out = []
    if threads > lim.threads_per_block:
        out.append(f"{threads} threads per block > {lim.threads_per_block}")
    if maxntid is not None and threads > maxntid:
        out.append(f"{threads} threads per block > __launch_bounds__ {maxntid}")
    block_regs = _roundup(max(regs, 1) * lim.warp, lim.reg_unit) * math.ceil(threads / lim.warp)
    if block_regs > lim.regs_per_block:
        out.append(f"{regs} registers x {threads} threads = {block_regs} allocated > {lim.regs_per_block} per block")
    if smem > lim.smem_per_block:
        out.append(f"{smem} bytes of shared memory > {lim.smem_per_block} per block")
    elif smem > lim.smem_default and not opt_in:
        out.append(f"{smem} bytes of shared memory > {lim.smem_default} without the launcher's opt-in")
    if not out and occupancy(arch, threads, regs, smem).blocks == 0:
        out.append("no block fits on an SM")
    return out


def spill_violations(row: dict) -> list[str]:
    """Spills of one compiled kernel (ptxas report fields spill_stores / spill_loads)."""
    if row.get("spill_stores") is None or row.get("spill_loads") is None:
        return ["no ptxas spill report"]
    if row["spill_stores"] or row["spill_loads"]:
        return [f"spills: {row['spill_stores']} bytes stored, {row['spill_loads']} bytes loaded"]
    return []


# ---------------------------------------------------------------------------------------------------------
# ptxas -v and PTX parsing

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for 'sm_(\d+)a?'")
_PROPS = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(text: str) -> dict:
    """{(mangled name, arch): {regs, spill_stores, spill_loads, stack, smem, entry}} from ptxas -v output.

    An entry's numbers come from the "Function properties" and "Used" lines after its "Compiling entry
    function" line; a non-inlined device function (properties without an entry line) is recorded with
    entry False and the arch of the entry being compiled."""
    out: dict = {}
    entry = arch = props = None
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            entry, arch = m.group(1), int(m.group(2))
            out[(entry, arch)] = {"entry": True, "regs": None, "spill_stores": None, "spill_loads": None}
            out[(entry, arch)].update(stack=None, smem=0)
            props = None
            continue
        m = _PROPS.search(line)
        if m:
            props = m.group(1)
            if arch is not None and (props, arch) not in out:
                out[(props, arch)] = {"entry": False, "regs": None, "spill_stores": None, "spill_loads": None}
                out[(props, arch)].update(stack=None, smem=0)
            continue
        m = _FRAME.search(line)
        if m and props is not None and (props, arch) in out:
            stack, st, ld = (int(g) for g in m.groups())
            out[(props, arch)].update(stack=stack, spill_stores=st, spill_loads=ld)
            continue
        m = _USED.search(line)
        if m and entry is not None:
            out[(entry, arch)]["regs"] = int(m.group(1))
            s = _SMEM.search(line)
            out[(entry, arch)]["smem"] = int(s.group(1)) if s else 0
    return out


def parse_ptx_bounds(text: str) -> dict:
    """{mangled entry name: (maxntid threads or None, minnctapersm or None)} from PTX."""
    out = {}
    name = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith(".entry ") or s.startswith(".visible .entry ") or s.startswith(".weak .entry "):
            name = s.split(".entry ", 1)[1].split("(", 1)[0].strip()
            out[name] = (None, None)
        elif name is not None:
            if s.startswith("{"):
                name = None
            elif s.startswith(".maxntid") or s.startswith(".reqntid"):
                dims = [int(x) for x in re.findall(r"\d+", s)]
                out[name] = (math.prod(dims), out[name][1])
            elif s.startswith(".minnctapersm"):
                out[name] = (out[name][0], int(re.findall(r"\d+", s)[0]))
    return out


_SHORT = [
    ("(anonymous namespace)::", ""),
    ("specdec::", ""),
    ("features_cuda::", ""),
    ("c10::BFloat16", "bf16"),
    ("c10::Half", "fp16"),
    ("__nv_bfloat16", "bf16"),
    ("__half", "fp16"),
]


def short_name(demangled: str) -> str:
    """`tree_attention_kernel<bf16, 128, 4>` of `void specdec::(anonymous namespace)::tree_attention_kernel<
    c10::BFloat16, 128, 4>(specdec::(anonymous namespace)::Params)`: no return type, namespaces, parameters."""
    s = demangled
    if s.endswith(")"):  # drop the parameter list: the parenthesis matching the last one
        depth = 0
        for i in range(len(s) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(s[i], 0)
            if depth == 0:
                s = s[:i]
                break
    if s.startswith("void "):
        s = s[5:]
    for old, new in _SHORT:
        s = s.replace(old, new)
    return re.sub(r"\bfloat\b", "fp32", s)


def template_args(name: str) -> tuple[str, list[str]]:
    """("gemm_nt_kernel", ["bf16", "TileCfg<16, 32, 64, 1, 2>", "0"]) of a short name."""
    if "<" not in name:
        return name, []
    base, rest = name.split("<", 1)
    rest = rest[: rest.rfind(">")]
    args, depth, cur = [], 0, ""
    for ch in rest:
        depth += {"<": 1, ">": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            args.append(cur.strip())
            cur = ""
        else:
            cur += ch
    args.append(cur.strip())
    return base, args


def demangle(names: list[str]) -> dict:
    """{mangled: demangled} through c++filt (the names themselves where it is missing)."""
    tool = shutil.which("c++filt")
    if not names or tool is None:
        return {n: n for n in names}
    proc = subprocess.run([tool], input="\n".join(names) + "\n", capture_output=True, text=True, check=True)
    return dict(zip(names, proc.stdout.splitlines()))


# ---------------------------------------------------------------------------------------------------------
# The launches of the CUDA launchers (csrc/cuda/*.cu host code), mirrored for representative shapes


@dataclass(frozen=True)
class Launch:
    shape: str  # the call it stands for
    threads: int
    dyn_smem: int = 0
    opt_in: bool = False  # the launcher calls cudaFuncSetAttribute(MaxDynamicSharedMemorySize)


_ELT = {"fp32": 4, "fp16": 2, "bf16": 2}


def attention_smem(elt: int, d_pad: int, rpw: int) -> int:
    """smem_layout(elt, d_pad, rpw).bytes of csrc/include/specdec/attention_launch.h (kWarps 4, kTile 32)."""
    rows, vec = 4 * rpw, 16 // elt
    k_off = rows * d_pad * 4 + 4 * rpw * 32 * 4
    v_off = k_off + 32 * (d_pad + vec) * elt
    return v_off + 32 * d_pad * elt + (rows + 1) * 4


def _sort_length(m: int) -> int:
    p = 2
    while p < m:
        p <<= 1
    return p


def _tree_launches(base: str, args: list[str]) -> list[Launch]:
    if base == "build_tree_kernel":  # threads: N rounded up to a warp; smem: 2 N int32
        return [Launch(f"N={n}", _roundup(n, 32), 8 * n) for n in (1, 60, 1024)]
    out = []  # select_tree: P = pow2 >= M; threads clamp(P / 2, 32, 1024); smem 8 P + M
    for m in (410, 4096):
        p = _sort_length(m)
        out.append(Launch(f"M={m}", min(max(p // 2, 32), 1024), 8 * p + m))
    return out


def _attention_launches(base: str, args: list[str]) -> list[Launch]:
    if base == "merge_splits_kernel":
        return [Launch("split-K merge", 128)]
    elt, d_pad, rpw = _ELT[args[0]], int(args[1]), int(args[2])
    smem = attention_smem(elt, d_pad, rpw)
    rows = "R<=4 rows/KV head (decode)" if rpw == 1 else "R>4 rows/KV head (tree N=60: R=240 at H/H_kv=4)"
    paged = ", paged" if len(args) > 3 and args[3] == "true" else ""
    return [Launch(f"D<={d_pad}, {rows}{paged}", 128, smem, opt_in=smem > 48 * 1024)]


def _paged_launches(base: str, args: list[str]) -> list[Launch]:
    if base == "block_table_from_csr_kernel":
        return [Launch("B * max_pages entries (fixed block, grid-stride)", 256)]
    # accept_slots: one block per request, threads = N rounded up to a warp (<= 256), smem 5 N bytes
    return [Launch(f"N={n}", min(max(_roundup(n, 32), 32), 256), 5 * n) for n in (1, 60, 1024)]


_GEMM_RANGE = {16: "M<=16", 64: "16<M<=128", 128: "M>128"}
_EPI = {"0": "store", "1": "gated SiLU", "2": "SiLU"}


def _features_launches(base: str, args: list[str]) -> list[Launch]:
    if base == "gemm_nt_kernel":
        tile = template_args(args[1])[1]
        return [Launch(f"{_GEMM_RANGE.get(int(tile[0]), '?')}, tile {'x'.join(tile[:3])}, {_EPI[args[2]]}", 256)]
    if base == "gemm_tn_kernel":
        return [Launch(f"weight gradient, tile {'x'.join(template_args(args[1])[1][:3])}", 256)]
    return [Launch("one row / rows block" if "norm" in base or "rms" in base else "elementwise", 256)]


def _verify_launches(base: str, args: list[str]) -> list[Launch]:
    if base == "greedy_ids_kernel":
        return [Launch("N=60 (one request per thread)", 128)]
    return [Launch("N=60 (one request per block)", 512)]


# base name of the kernel -> its launches: (base, template args) -> [Launch]
CUDA_LAUNCHES = {
    "build_tree_kernel": _tree_launches,
    "select_tree_kernel": _tree_launches,
    "tree_attention_kernel": _attention_launches,
    "merge_splits_kernel": _attention_launches,
    "compact_kv_kernel": lambda base, args: [Launch(f"{args[0]} descriptors (fixed block)", 256)],
    "compact_paged_kv_kernel": lambda base, args: [Launch(f"{args[0]} descriptors (fixed block)", 256)],
    "block_table_from_csr_kernel": _paged_launches,
    "accept_slots_kernel": _paged_launches,
    "gemm_nt_kernel": _features_launches,
    "gemm_tn_kernel": _features_launches,
    "rms_rows_kernel": _features_launches,
    "griffin_norms_kernel": _features_launches,
    "fspad_norm_backward_kernel": _features_launches,
    "griffin_norm_backward_kernel": _features_launches,
    "column_sums_kernel": _features_launches,
    "silu_backward_kernel": _features_launches,
    "verify_logits_kernel": _verify_launches,
    "greedy_ids_kernel": _verify_launches,
}


# ---------------------------------------------------------------------------------------------------------
# Compilation of the CUDA kernels


def find_nvcc() -> str | None:
    """nvcc as setup.py finds it (CUDA_HOME, CUDA_PATH, /usr/local/cuda, PATH)."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home is None and os.path.exists("/usr/local/cuda/bin/nvcc"):
        home = "/usr/local/cuda"
    if home is None and shutil.which("nvcc"):
        home = os.path.dirname(os.path.dirname(os.path.realpath(shutil.which("nvcc"))))
    nvcc = os.path.join(home, "bin", "nvcc") if home else None
    return nvcc if nvcc and os.path.exists(nvcc) else None


def _literal_assigns(path: str) -> dict:
    with open(path) as fh:
        tree = ast.parse(fh.read(), filename=path)
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return out


def setup_nvcc_flags(repo: str = REPO) -> list[str]:
    """setup.py's nvcc flags of the CUDA extension (its literal list plus the kernel limits) and its
    define_macros, read from setup.py's source."""
    with open(os.path.join(repo, "setup.py")) as fh:
        tree = ast.parse(fh.read())
    flags = macros = None
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "nvcc":
                    flags = ast.literal_eval(value.left if isinstance(value, ast.BinOp) else value)
        if isinstance(node, ast.keyword) and node.arg == "define_macros":
            macros = ast.literal_eval(node.value)
    if flags is None or macros is None:
        raise RuntimeError("setup.py: no nvcc flags / define_macros found (did setup.py change?)")
    limits = {k: v for k, v in _literal_assigns(os.path.join(repo, "specdec_kernels", "_limits.py")).items()}
    limit_flags = [f"-DSPECDEC_{k}={v}" for k, v in limits.items() if k.isupper() and type(v) is int]
    return [f"-D{k}={v}" for k, v in macros] + flags + limit_flags


def nvcc_command(nvcc: str, src: str, out: str, keep_dir: str, repo: str = REPO) -> list[str]:
    """The extension's nvcc command for `src` (device side: -fatbin), both archs, with ptxas -v and --keep."""
    home = os.path.dirname(os.path.dirname(nvcc))
    os.environ.setdefault("CUDA_HOME", home)  # as setup.py does (else torch guesses one, with a warning)
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths

    cuda_include = os.path.join(home, "include")
    includes = [os.path.join(repo, "csrc", "include")] + include_paths() + [cuda_include]
    gencode = [f for a in ARCHS for f in ("-gencode", f"arch=compute_{a},code=sm_{a}")]
    torch_flags = ["--compiler-options", "-fPIC", "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C"]
    return (
        [nvcc, "-fatbin", "-o", out, src]
        + [f"-I{p}" for p in includes]
        + list(COMMON_NVCC_FLAGS)
        + torch_flags
        + setup_nvcc_flags(repo)
        + gencode
        + ["-Xptxas", "-v", "--keep", "--keep-dir", keep_dir]
    )


def cuda_sources(repo: str = REPO) -> list[str]:
    return sorted(glob.glob(os.path.join(repo, "csrc", "cuda", "*.cu")))


def _nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"release ([\d.]+), V([\d.]+)", out)
    return m.group(2) if m else out.strip().splitlines()[-1]


def _hash(parts: list) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def _cuda_cache_key(nvcc: str, repo: str) -> str:
    import torch

    files = sorted(
        glob.glob(os.path.join(repo, "csrc", "cuda", "*"))
        + glob.glob(os.path.join(repo, "csrc", "include", "**", "*"), recursive=True)
    )
    parts = [CACHE_VERSION, _nvcc_version(nvcc), torch.__version__, " ".join(nvcc_command(nvcc, "S", "O", "K", repo))]
    for f in files:
        if os.path.isfile(f):
            with open(f, "rb") as fh:
                parts += [os.path.relpath(f, repo), fh.read()]
    return _hash(parts)


def _compile_one(nvcc: str, src: str, tmp: str, repo: str) -> list[dict]:
    stem = os.path.splitext(os.path.basename(src))[0]
    keep = os.path.join(tmp, stem)
    os.makedirs(keep)
    cmd = nvcc_command(nvcc, src, os.path.join(keep, stem + ".fatbin"), keep, repo)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo)
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed on {os.path.relpath(src, repo)}:\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}")
    stats = parse_ptxas(proc.stdout + proc.stderr)
    bounds = {}
    for a in ARCHS:
        with open(os.path.join(keep, f"{stem}.compute_{a}.ptx")) as fh:
            bounds[a] = parse_ptx_bounds(fh.read())
    rows = []
    for (mangled, arch), s in sorted(stats.items()):
        maxntid, minblocks = bounds[arch].get(mangled, (None, None))
        rows.append(dict(s, mangled=mangled, arch=arch, source=f"csrc/cuda/{stem}.cu", maxntid=maxntid))
        rows[-1]["min_blocks"] = minblocks
    return rows


def cuda_cache_path(repo: str = REPO) -> str:
    """The cache file of the CUDA report for the present inputs (it exists when the cache is warm)."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found (set CUDA_HOME)")
    return os.path.join(CACHE_DIR, f"cuda-{_cuda_cache_key(nvcc, repo)}.json")


def cuda_report(repo: str = REPO, use_cache: bool = True, log=print) -> dict:
    """{"nvcc": version, "seconds": compile time, "cached": bool, "kernels": [row per (function, arch)]}."""
    path = cuda_cache_path(repo)
    nvcc = find_nvcc()
    if use_cache and os.path.exists(path):
        with open(path) as fh:
            return dict(json.load(fh), cached=True)
    import time

    t0 = time.perf_counter()
    os.makedirs(CACHE_DIR, exist_ok=True)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    log(f"compiling {len(cuda_sources(repo))} CUDA files for sm_{'/sm_'.join(map(str, ARCHS))} ({cores} jobs)...")
    with tempfile.TemporaryDirectory(dir=CACHE_DIR, prefix="nvcc-") as tmp:
        with ThreadPoolExecutor(max_workers=cores) as pool:
            parts = list(pool.map(lambda s: _compile_one(nvcc, s, tmp, repo), cuda_sources(repo)))
    rows = [r for part in parts for r in part]
    names = demangle(sorted({r["mangled"] for r in rows}))
    for r in rows:
        r["name"] = short_name(names[r["mangled"]])
    report = {"nvcc": _nvcc_version(nvcc), "seconds": round(time.perf_counter() - t0, 1), "kernels": rows}
    with open(path + ".tmp", "w") as fh:
        json.dump(report, fh, indent=1)
    os.replace(path + ".tmp", path)
    return dict(report, cached=False)


# ---------------------------------------------------------------------------------------------------------
# Rows of the tables


def cuda_rows(report: dict) -> list[dict]:
    """One row per (entry, arch, launch) with occupancy and violations; device functions and entries no
    launcher is known for get a row with launch None and a violation."""
    rows = []
    for k in sorted(report["kernels"], key=lambda k: (k["source"], k["name"], k["arch"])):
        base, args = template_args(k["name"])
        viol = spill_violations(k)
        if not k["entry"]:
            if viol:
                rows.append(dict(k, launch=None, occ=None, violations=viol))
            continue
        fn = CUDA_LAUNCHES.get(base)
        if fn is None:
            rows.append(dict(k, launch=None, occ=None, violations=viol + ["no launch in CUDA_LAUNCHES"]))
            continue
        for launch in fn(base, args):
            smem = k["smem"] + launch.dyn_smem
            v = launch_violations(k["arch"], launch.threads, k["regs"], smem, k["maxntid"], launch.opt_in)
            occ = occupancy(k["arch"], launch.threads, k["regs"], smem)
            rows.append(dict(k, launch=asdict(launch), occ=asdict(occ), violations=viol + v))
    return rows


def triton_pairs(which: str = "fast") -> list:
    tcu = _tcu()
    return sorted((c.id, a) for c in tcu.CASES for a in c.archs if which == "all" or a in c.fast)


def _tcu():
    sys.path.insert(0, os.path.join(REPO, "tests"))
    try:
        import triton_compile_util
    finally:
        sys.path.pop(0)
    return triton_compile_util


def triton_report(which: str = "fast", use_cache: bool = True, log=print) -> dict:
    """tests/triton_compile_util.py's report of the (case, arch) pairs `which` selects, cached."""
    import importlib.metadata

    import torch

    tcu = _tcu()
    pairs = triton_pairs(which)
    files = sorted(glob.glob(os.path.join(REPO, "specdec_kernels", "**", "*.py"), recursive=True))
    files.append(os.path.join(REPO, "tests", "triton_compile_util.py"))
    version = importlib.metadata.version("triton")
    parts = [CACHE_VERSION, version, torch.__version__, json.dumps(pairs)]
    for f in files:
        with open(f, "rb") as fh:
            parts += [os.path.relpath(f, REPO), fh.read()]
    path = os.path.join(CACHE_DIR, f"triton-{_hash(parts)}.json")
    if use_cache and os.path.exists(path):
        with open(path) as fh:
            return dict(json.load(fh), cached=True)
    import time

    log(f"compiling the Triton kernels of {len(pairs)} (case, arch) pairs...")
    t0 = time.perf_counter()
    rep = tcu.run_child(pairs)
    rep.update(triton=version, seconds=round(time.perf_counter() - t0, 1), pairs=pairs)
    os.makedirs(CACHE_DIR, exist_ok=True)
    with open(path + ".tmp", "w") as fh:
        json.dump(rep, fh)
    os.replace(path + ".tmp", path)
    return dict(rep, cached=False)


def triton_rows(rep: dict) -> list[dict]:
    """One row per distinct compile (first case that reaches it), with occupancy and violations. A config
    of an autotuned launch that cannot launch is a violation only when no config of its group can (the
    autotuner skips configs that fail to load); spills are violations in every config."""
    rows, seen, groups = [], set(), {}
    for case_id, per_arch in rep["cases"].items():
        for arch, entry in per_arch.items():
            if entry["error"]:
                rows.append({"case": case_id, "arch": int(arch), "kernel": "-", "violations": [entry["error"]]})
            for launch in entry["launches"]:
                job = None if launch["job"] is None else rep["jobs"][launch["job"]]
                if job is None and not launch.get("error"):
                    continue
                if launch.get("job") is not None and (launch["job"], arch) in seen:
                    continue
                seen.add((launch.get("job"), arch))
                row = _triton_row(case_id, int(arch), launch, job)
                if launch.get("autotune_group") is not None:
                    groups.setdefault((case_id, arch, launch["autotune_group"]), []).append(row)
                rows.append(row)
    for group in groups.values():
        if any(not r["launch_violations"] for r in group):
            for r in group:
                if r["launch_violations"]:
                    r["note"] = "cannot load: skipped by the autotuner"
                    r["launch_violations"] = []
    for r in rows:
        r["violations"] = r.get("violations", []) + r.pop("launch_violations", [])
    return rows


def _triton_row(case_id: str, arch: int, launch: dict, job: dict | None) -> dict:
    row = {"case": case_id, "arch": arch, "kernel": launch["kernel"], "config": launch.get("label") or "-"}
    row.update(warps=launch.get("num_warps"), stages=launch.get("num_stages"), note="")
    if job is None or not job.get("ok"):
        row.update(violations=[f"does not compile: {(job or launch).get('error', '')[:300]}"], launch_violations=[])
        return row
    threads = launch["num_warps"] * 32
    row.update({k: job.get(k) for k in ("regs", "spill_stores", "spill_loads", "stack", "shared")})
    row["threads"] = threads
    regs = row["regs"] or 0
    row["occ"] = asdict(occupancy(arch, threads, regs, job["shared"]))
    row["violations"] = spill_violations(row)
    row["launch_violations"] = launch_violations(arch, threads, regs, job["shared"], threads, True)
    return row


# ---------------------------------------------------------------------------------------------------------
# Markdown


def _fmt_occ(occ: dict | None) -> tuple[str, str]:
    if not occ:
        return "-", "-"
    return str(occ["blocks"]), f"{occ['occupancy'] * 100:.0f}% ({occ['limiter']})"


def _cuda_table(rows: list[dict]) -> list[str]:
    lines = [
        "| arch | kernel | file | launch shape | threads | bounds | regs | spill st/ld | stack | static smem "
        "| dyn smem | blocks/SM | occupancy (limiter) | problems |",
        "|" + " --- |" * 14,
    ]
    for r in rows:
        la = r["launch"] or {}
        bounds = (
            "-" if r.get("maxntid") is None else f"{r['maxntid']}" + (f", {r['min_blocks']}" if r["min_blocks"] else "")
        )
        blocks, occ = _fmt_occ(r["occ"])
        lines.append(
            f"| sm_{r['arch']} | `{r['name']}` | {os.path.basename(r['source'])} | {la.get('shape', '-')} "
            f"| {la.get('threads', '-')} | {bounds} | {r['regs']} | {r['spill_stores']}/{r['spill_loads']} "
            f"| {r['stack']} | {r['smem']} | {la.get('dyn_smem', '-')}{' (opt-in)' if la.get('opt_in') else ''} "
            f"| {blocks} | {occ} | {'; '.join(r['violations']) or '-'} |"
        )
    return lines


def _triton_table(rows: list[dict]) -> list[str]:
    lines = [
        "| arch | case | kernel | config | warps | stages | regs | spill st/ld | stack | smem | blocks/SM "
        "| occupancy (limiter) | problems |",
        "|" + " --- |" * 13,
    ]
    for r in rows:
        blocks, occ = _fmt_occ(r.get("occ"))
        problems = "; ".join(r["violations"]) or r.get("note") or "-"
        lines.append(
            f"| sm_{r['arch']} | {r['case']} | `{r['kernel']}` | {r.get('config', '-')} | {r.get('warps', '-')} "
            f"| {r.get('stages', '-')} | {r.get('regs', '-')} "
            f"| {r.get('spill_stores', '-')}/{r.get('spill_loads', '-')} "
            f"| {r.get('stack', '-')} | {r.get('shared', '-')} | {blocks} | {occ} | {problems} |"
        )
    return lines


def _commit() -> str:
    try:
        sha = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results"],
            capture_output=True,
            text=True,
        )
        return sha.stdout.strip() + ("+local changes" if dirty.stdout.strip() else "")
    except OSError:
        return "?"


def markdown(cuda: dict | None, crows: list, triton: dict | None, trows: list) -> str:
    import torch

    doc = (__doc__ or "").split("Occupancy (", 1)[1].split('\n"""', 1)[0]
    head = [
        "# Resources of the compiled GPU kernels (sm_80, sm_90)",
        "",
        f"Generated by `python scripts/gpu_resources.py --write bench/results/cuda_resources.md` on "
        f"{datetime.date.today().isoformat()}, commit {_commit()}: nvcc {cuda['nvcc'] if cuda else '-'}, "
        f"Triton {triton['triton'] if triton else '-'}, torch {torch.__version__}. No GPU is involved: the numbers "
        "are ptxas's (registers, spills, stack frame, static shared memory), the PTX's `__launch_bounds__` "
        "(`bounds`: max threads, min blocks per SM) and Triton's compile metadata (shared memory); the checks "
        "are tests/kernels/test_gpu_resources.py.",
        "",
        "CUDA kernels: every `__global__` instantiation of csrc/cuda/*.cu, compiled with the extension's nvcc "
        "flags (setup.py, torch's BuildExtension); `launch shape`, `threads` and `dyn smem` are what the C++ "
        "launcher computes for that shape (mirrored in CUDA_LAUNCHES of scripts/gpu_resources.py). Triton "
        "kernels: the default (not `slow`) cases of tests/triton_compile_util.py, each distinct compile once "
        "(the first case reaching it), every config of autotuned kernels; `smem` is the dynamic shared "
        "memory the kernel launches with.",
        "",
        "Occupancy (" + doc.strip(),
        "",
    ]
    bad = [r for r in crows + trows if r["violations"]]
    summary = [
        "## Summary",
        "",
        f"- CUDA: {len({(r['name'], r['arch']) for r in crows})} kernel instantiations x arch, {len(crows)} launches; "
        f"Triton: {len(trows)} compiles.",
        f"- Launches the architecture cannot hold: "
        f"{sum(any(not v.startswith('spills:') for v in r['violations']) for r in bad) or 'none'}.",
        f"- Kernels that spill: {sum(any(v.startswith('spills:') for v in r['violations']) for r in bad) or 'none'}"
        " (tests/kernels/test_gpu_resources.py fails on any spill)" + (":" if bad else "."),
    ]
    for r in bad:
        where = (
            f"`{r['name']}` ({r['launch']['shape'] if r.get('launch') else '-'})"
            if "name" in r
            else (f"`{r['kernel']}` [{r.get('config', '-')}] in {r['case']}")
        )
        summary.append(f"  - sm_{r['arch']} {where}: {'; '.join(r['violations'])}")
    lowest = sorted((r for r in crows if r["occ"]), key=lambda r: r["occ"]["occupancy"])[:6]
    if lowest:
        summary.append("- Lowest CUDA occupancy:")
        for r in lowest:
            summary.append(
                f"  - sm_{r['arch']} `{r['name']}` ({r['launch']['shape']}): {r['occ']['blocks']} blocks/SM, "
                f"{r['occ']['occupancy'] * 100:.0f}% ({r['occ']['limiter']})"
            )
    body = summary + ["", "## CUDA kernels", ""] + _cuda_table(crows) + ["", "## Triton kernels", ""]
    body += _triton_table(trows) if trows else ["(not run)"]
    return "\n".join(head + body) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--write", metavar="PATH", help="write the markdown table there (default: print it)")
    ap.add_argument("--no-cuda", action="store_true")
    ap.add_argument("--no-triton", action="store_true")
    ap.add_argument("--triton-cases", choices=("fast", "all"), default="fast")
    ap.add_argument("--no-cache", action="store_true", help="recompile even when the cache holds the inputs")
    a = ap.parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr)
    cuda = None if a.no_cuda else cuda_report(use_cache=not a.no_cache, log=log)
    triton = None if a.no_triton else triton_report(a.triton_cases, use_cache=not a.no_cache, log=log)
    crows = cuda_rows(cuda) if cuda else []
    trows = triton_rows(triton) if triton else []
    text = markdown(cuda, crows, triton, trows)
    if a.write:
        with open(a.write, "w") as fh:
            fh.write(text)
        log(f"wrote {a.write}")
    else:
        print(text)
    return 1 if any(r["violations"] for r in crows + trows) else 0


if __name__ == "__main__":
    sys.exit(main())
