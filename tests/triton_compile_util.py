"""Ahead-of-time compilation of every Triton kernel of specdec_kernels for real GPUs, without a GPU.

The CPU test suite runs Triton kernels under the interpreter (TRITON_INTERPRET=1), which never lowers a
kernel to PTX: layout conversions, shared-memory budgets, register allocation, unsupported dot shapes or
dtypes on a given architecture and ptxas errors are invisible to it. This module compiles the kernels the
way a GPU launch would, for chosen targets (sm_80, sm_90), on a machine without a GPU:

1. A *case* calls one op's registered CUDA kernel (the Python launcher attached to `specdec::<op>_triton`
   for CUDA tensors) with **meta tensors** of a representative shape: no memory is allocated and no data is
   read, yet the launcher runs its own host logic (block sizes, warps, splits, dtype views, autotune lists).
2. `JITFunction.run` is replaced by a recorder, and `Autotuner.run` by a loop that forwards every config of
   the autotune list, so each launch the launcher would make is recorded with its exact arguments.
3. Each recorded launch is specialised for each target exactly as `JITFunction.run` does it (the same
   binder, hence the same signature, constexprs, divisibility-by-16 attributes - meta tensors report their
   storage offset as the address, so a view at an odd offset loses its alignment like a real one - and
   the same options), and compiled with `triton.compile` down to a cubin by the bundled ptxas. ptxas's own
   `-v` report gives registers, spills and stack per kernel.

Triton reads TRITON_INTERPRET when it is imported, and the test session has already imported it in
interpreter mode (tests/conftest.py), so the compile runs in a child process with a clean environment:
`run_child()` in the test process, `main()` in the child (`python tests/triton_compile_util.py`). The
child compiles the distinct launches in a pool of forked workers (one per available core).

Adding a Triton kernel: add a case below that reaches it through its op (tests/kernels/test_triton_compile.py
fails while a kernel launched in specdec_kernels/triton_kernels is reached by no case). Keep the cases that
are not marked slow (`fast`) cheap: the default run should stay around a minute on two cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ARCHS = (80, 90)
# Streaming multiprocessors of the reference GPU of each target (A100 SXM, H100 SXM): the attention
# launcher sizes its split-K from the SM count of the device.
SM_COUNT = {80: 108, 90: 132}
# Largest shared memory a block may use (opt-in maximum): a kernel above it fails to load on that GPU.
SHARED_LIMIT = {80: 166912, 90: 232448}


@dataclass(frozen=True)
class Ctx:
    """What a case knows about the target it is captured for."""

    arch: int
    sm_count: int


@dataclass(frozen=True)
class Case:
    """One call of an op's Triton launcher on meta tensors of one representative shape.

    archs: the targets it is compiled for; fast: those of them compiled in the default run (the others are
    marked `slow`: they run in CI's full run). decode: a shape of the decode path (Llama-3-8B-like target,
    EAGLE-2 tree of 60 nodes), whose sm_90 compiles are held to the spill limit. first_config: compile only
    the first config of each autotuned kernel (a cheap smoke case beside a full one). kernels: compile only
    the launches of these kernels (by function name; None: all).
    """

    id: str
    launch: Callable[[Ctx], None] = field(repr=False)
    decode: bool = False
    fast: tuple = ARCHS
    archs: tuple = ARCHS
    first_config: bool = False
    kernels: Optional[tuple] = None


# ------------------------------------------------------------------------------------------------------
# Case helpers (run in the child only: they import torch and the package lazily)


def _meta(*shape, dtype=None):
    """An fp32 (or `dtype`) meta tensor: shape, strides and dtype without storage."""
    import torch

    return torch.empty(*shape, dtype=dtype or torch.float32, device="meta")


def _call(op: str, *args) -> None:
    """Run the kernel registered for CUDA tensors on `specdec::<op>_triton` (what a GPU call dispatches to)."""
    import torch

    overload = getattr(torch.ops.specdec, f"{op}_triton").default
    overload.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA), *args)


# ---- tree -------------------------------------------------------------------------------------------


def _build_tree(B: int, N: int):
    def launch(ctx: Ctx) -> None:
        import torch

        i32 = torch.int32
        W = (N + 31) // 32
        _call(
            "build_tree",
            _meta(B, N, dtype=i32),
            _meta(B, dtype=i32),
            _meta(B, N, dtype=i32),
            _meta(B, N, W, dtype=i32),
            _meta(B, N, dtype=i32),
            _meta(B, N, dtype=i32),
            _meta(B, dtype=torch.bool),
        )

    return launch


def _select_tree(B: int, M: int, N: int):
    def launch(ctx: Ctx) -> None:
        import torch

        i32, i64 = torch.int32, torch.int64
        _call(
            "select_tree",
            _meta(B, M),
            _meta(B, M, dtype=i32),
            _meta(B, M, dtype=i64),
            _meta(B, dtype=i64),
            _meta(B, N, dtype=i32),
            _meta(B, N, dtype=i64),
            _meta(B, N, dtype=i32),
        )

    return launch


# ---- features -----------------------------------------------------------------------------------------


def _dtype(name: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _fspad(T: int, H: int, I: int, V: int, dt: str, *, train: bool, bias: bool = True, tf32: bool = False):
    """FSPAD forward (inference: no saved pre-activations; train: saved, then the full backward)."""

    def launch(ctx: Ctx) -> None:
        import torch

        d = _dtype(dt)
        m = lambda *s: _meta(*s, dtype=d)
        f, ids, emb = m(T, H), _meta(T, dtype=torch.int64), m(V, H)
        fc_w, fc_b, nw = m(H, 2 * H), (m(H) if bias else None), m(H)
        wg, wu, wd = m(I, H), m(I, H), m(H, I)
        z, rstd = m(T, H), _meta(T)
        gate, up = (m(T, I), m(T, I)) if train else (None, None)
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32  # the fp32 launchers follow torch's switch
        try:
            _call("fspad_feature_sampling", f, ids, emb, fc_w, fc_b, nw, wg, wu, wd, 1e-6, m(T, H), z, rstd, gate, up)
            if train:
                grads = [m(*t.shape) if t is not None else None for t in (f, fc_w, fc_b, nw, wg, wu, wd)]
                _call(
                    "fspad_feature_sampling_backward",
                    m(T, H),
                    f,
                    ids,
                    emb,
                    fc_w,
                    fc_b,
                    nw,
                    wg,
                    wu,
                    wd,
                    1e-6,
                    z,
                    rstd,
                    gate,
                    up,
                    *grads,
                )
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old

    return launch


def _griffin(T: int, H: int, I: int, V: int, dt: str, *, train: bool, bias: bool = True, tf32: bool = False):
    """GRIFFIN forward (inference / train with saved pre-activation), then the full backward when train."""

    def launch(ctx: Ctx) -> None:
        import torch

        d = _dtype(dt)
        m = lambda *s: _meta(*s, dtype=d)
        f, ids, emb = m(T, H), _meta(T, dtype=torch.int64), m(V, H)
        fc_w, fc_b, nb, na = m(H, 2 * H), (m(H) if bias else None), m(H), m(H)
        wu, wd = m(I, 2 * H), m(H, I)
        h, stats = m(T, H), _meta(T, 3)
        pre = m(T, I) if train else None
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            _call("griffin_token_fusion", f, ids, emb, fc_w, fc_b, nb, na, wu, wd, 1e-6, m(T, H), h, stats, pre)
            if train:
                grads = [m(*t.shape) if t is not None else None for t in (f, fc_w, fc_b, nb, na, wu, wd)]
                _call(
                    "griffin_token_fusion_backward",
                    m(T, H),
                    f,
                    ids,
                    emb,
                    fc_w,
                    fc_b,
                    nb,
                    na,
                    wu,
                    wd,
                    1e-6,
                    h,
                    stats,
                    pre,
                    *grads,
                )
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old

    return launch


# ---- attention ------------------------------------------------------------------------------------------


def _attention(B: int, H: int, H_kv: int, Nq: int, D: int, S_max: int, dt: str):
    """tree_attention with the split-K count the launcher would choose on the target's reference GPU."""

    def launch(ctx: Ctx) -> None:
        import torch

        from specdec_kernels.triton_kernels import attention as at

        d = _dtype(dt)
        W = (Nq + 31) // 32
        # The launcher asks the device for its SM count and architecture; meta tensors have neither, so answer
        # for the target.
        choose, sm_count, arch = at._choose_splits, at._sm_count, at._arch
        at._sm_count = lambda index: ctx.sm_count
        at._choose_splits = lambda device, programs, s_max: choose(torch.device("cuda", 0), programs, s_max)
        at._arch = lambda device: ctx.arch
        try:
            _call(
                "tree_attention",
                _meta(B, H, Nq, D, dtype=d),
                _meta(B, H_kv, S_max, D, dtype=d),
                _meta(B, H_kv, S_max, D, dtype=d),
                _meta(B, dtype=torch.int32),
                _meta(B, Nq, W, dtype=torch.int32),
                D**-0.5,
                _meta(B, H, Nq, D, dtype=d),
            )
        finally:
            at._choose_splits, at._sm_count, at._arch = choose, sm_count, arch

    return launch


def _paged_attention(B: int, H: int, H_kv: int, Nq: int, D: int, pages: int, P: int, dt: str):
    """paged_tree_attention over NHD pages of P slots (the same kernel as tree_attention, paged addressing)."""

    def launch(ctx: Ctx) -> None:
        import torch

        from specdec_kernels.triton_kernels import attention as at

        d = _dtype(dt)
        W = (Nq + 31) // 32
        arch, at._arch = at._arch, lambda device: ctx.arch  # meta tensors have no architecture: the target's
        try:
            _call(
                "paged_tree_attention",
                _meta(B, H, Nq, D, dtype=d),
                _meta(B * pages, P, H_kv, D, dtype=d),
                _meta(B * pages, P, H_kv, D, dtype=d),
                _meta(B, pages, dtype=torch.int32),
                _meta(B, dtype=torch.int32),
                _meta(B, Nq, W, dtype=torch.int32),
                False,
                D**-0.5,
                _meta(B, H, Nq, D, dtype=d),
            )
        finally:
            at._arch = arch

    return launch


# ---- compact -----------------------------------------------------------------------------------------


def _compact(B: int, W: int, caches):
    """compact_kv over [B, X, S_max, Y] caches given as (X, S_max, Y, dtype name, Y slice start or None)."""

    def launch(ctx: Ctx) -> None:
        import torch

        views = []
        for X, S, Y, dt, start in caches:
            d = {"u8": torch.uint8, "fp32": torch.float32}.get(dt) or _dtype(dt)
            t = _meta(B, X, S, Y, dtype=d)
            views.append(t if start is None else t[..., start:])  # a column slice: odd strides / offset
        i32 = torch.int32
        _call("compact_kv", views, _meta(B, dtype=i32), _meta(B, W, dtype=i32), _meta(B, dtype=i32))

    return launch


def _compact_paged(B: int, W: int, pages: int, P: int, X: int, Y: int, dt: str):
    """compact_paged_kv over two NHD page tensors [pages, P, X, Y] (K and V of one layer)."""

    def launch(ctx: Ctx) -> None:
        import torch

        i32 = torch.int32
        kv = [_meta(pages, P, X, Y, dtype=_dtype(dt)) for _ in range(2)]
        table = _meta(B, pages // B, dtype=i32)
        _call("compact_paged_kv", kv, table, _meta(B, dtype=i32), _meta(B, W, dtype=i32), _meta(B, dtype=i32), False)

    return launch


def _block_table(B: int, nnz: int, max_pages: int):
    """block_table_from_csr: CSR page lists (kv_indptr [B + 1], kv_indices [nnz]) into a block table."""

    def launch(ctx: Ctx) -> None:
        import torch

        i32 = torch.int32
        _call("block_table_from_csr", _meta(B + 1, dtype=i32), _meta(nnz, dtype=i32), _meta(B, max_pages, dtype=i32))

    return launch


def _accept_slots(B: int, S: int, N: int, W: int):
    """accept_slots: a token-to-slot table [B, S] rewritten for trees of N nodes and paths of W."""

    def launch(ctx: Ctx) -> None:
        import torch

        i32 = torch.int32
        b = _meta(B, dtype=i32)
        _call("accept_slots", _meta(B, S, dtype=i32), b, b, _meta(B, W, dtype=i32), b, _meta(B, N, dtype=i32), b)

    return launch


# ---- verify ------------------------------------------------------------------------------------------


def _verify_greedy(B: int, N: int, V: Optional[int], dt: Optional[str]):
    """verify_greedy with argmax ids (V None) or logits [B, N, V] of dtype dt (argmax fused)."""

    def launch(ctx: Ctx) -> None:
        import torch

        i32 = torch.int32
        target = _meta(B, N, dtype=torch.int64) if V is None else _meta(B, N, V, dtype=_dtype(dt))
        _call(
            "verify_greedy",
            _meta(B, N, dtype=i32),
            _meta(B, N, dtype=i32),
            _meta(B, dtype=torch.bool),
            _meta(B, N, dtype=torch.int64),
            target,
            _meta(B, N, dtype=i32),
            _meta(B, dtype=i32),
            _meta(B, N, dtype=torch.int64),
        )

    return launch


def _verify_sample(B: int, N: int, V: int, dt: str, draft_probs: bool):
    """verify_sample over logits [B, N, V] of dtype dt, with or without draft_probs (same dtype)."""

    def launch(ctx: Ctx) -> None:
        import torch

        i32, i64 = torch.int32, torch.int64
        d = _dtype(dt)
        _call(
            "verify_sample",
            _meta(B, N, dtype=i32),
            _meta(B, N, dtype=i32),
            _meta(B, dtype=torch.bool),
            _meta(B, N, dtype=i64),
            _meta(B, N, V, dtype=d),
            _meta(B, N + 1),
            _meta(B),
            _meta(B, dtype=i32),
            _meta(B),
            _meta(B, N, V, dtype=d) if draft_probs else None,
            _meta(B, N, dtype=i32),
            _meta(B, dtype=i32),
            _meta(B, N, dtype=i64),
        )

    return launch


# Decode shapes: Llama-3-8B target (H 4096, I 14336, V 128256, 32 heads / 8 KV heads of 128), EAGLE-2 tree of
# 60 nodes (top-k 10, depth 5: 410 candidates), draft frontier of 10 nodes, 4096 cached tokens.
LLAMA3_8B = dict(H=4096, I=14336, V=128256)
_SM90 = (90,)
CASES: list = [
    # tree: smallest, a few, the decode tree, the largest the kernels take (1024 nodes / 4096 candidates)
    Case("tree/build_tree-N1", _build_tree(2, 1)),
    Case("tree/build_tree-N8", _build_tree(3, 8)),
    Case("tree/build_tree-N60", _build_tree(4, 60), decode=True),
    Case("tree/build_tree-N256", _build_tree(2, 256)),
    Case("tree/build_tree-N1024", _build_tree(2, 1024)),
    Case("tree/select_tree-M1-N1", _select_tree(2, 1, 1)),
    Case("tree/select_tree-M16-N8", _select_tree(3, 16, 8)),
    Case("tree/select_tree-M410-N60", _select_tree(4, 410, 60), decode=True),
    Case("tree/select_tree-M1000-N200", _select_tree(2, 1000, 200)),
    Case("tree/select_tree-M4096-N4097", _select_tree(2, 4096, 4097)),
    # features. Decode: bf16 inference, every autotune config. Train: forward with saved pre-activations and
    # the whole backward, in small odd shapes (no 16-divisibility: unvectorised loads) in fp32 and fp16, in
    # bf16 at training sizes, fp32 with TF32 dots, and the widest rows (H 8192) of the row-wise backward.
    Case("features/fspad-decode-bf16", _fspad(60, dt="bf16", train=False, **LLAMA3_8B), decode=True, fast=_SM90),
    Case("features/griffin-decode-bf16", _griffin(60, dt="bf16", train=False, **LLAMA3_8B), decode=True, fast=_SM90),
    Case(
        "features/fspad-small-fp32-train-first-config",
        _fspad(5, 72, 200, 1000, "fp32", train=True),
        fast=_SM90,
        first_config=True,
    ),
    Case(
        "features/griffin-small-fp16-train-first-config",
        _griffin(5, 72, 200, 1000, "fp16", train=True),
        fast=_SM90,
        first_config=True,
    ),
    # (all configs of fp32 on sm_80 take ~20 minutes of ptxas: the first config there, all of them on sm_90)
    Case("features/fspad-small-fp32-train", _fspad(5, 72, 200, 1000, "fp32", train=True), fast=(), archs=_SM90),
    Case(
        "features/fspad-fp32-mlp-sm80",
        _fspad(5, 72, 200, 1000, "fp32", train=False),
        fast=(),
        archs=(80,),
        kernels=("_fspad_mlp_kernel",),
    ),
    Case(
        "features/griffin-fp32-mlp-sm80",
        _griffin(5, 72, 200, 1000, "fp32", train=False),
        fast=(),
        archs=(80,),
        kernels=("_griffin_mlp_kernel",),
    ),
    Case("features/griffin-small-fp16-train", _griffin(5, 72, 200, 1000, "fp16", train=True, bias=False), fast=()),
    Case("features/fspad-train-bf16", _fspad(4096, dt="bf16", train=True, **LLAMA3_8B), fast=()),
    Case("features/griffin-train-bf16", _griffin(4096, dt="bf16", train=True, **LLAMA3_8B), fast=()),
    Case("features/fspad-decode-fp16", _fspad(60, dt="fp16", train=False, **LLAMA3_8B), fast=(), archs=_SM90),
    Case(
        "features/fspad-small-tf32-train", _fspad(5, 72, 200, 1000, "fp32", train=True, tf32=True), fast=(), archs=_SM90
    ),
    Case("features/fspad-H8192-bf16-train", _fspad(256, 8192, 28672, 128256, "bf16", train=True), fast=(), archs=_SM90),
    Case(
        "features/griffin-H8192-bf16-train",
        _griffin(256, 8192, 28672, 128256, "bf16", train=True),
        fast=(),
        archs=_SM90,
    ),
    # attention: target verification of the 60-node tree and the draft's expansion of 10 nodes (bf16, split-K as
    # the launcher picks it for the target's GPU), plain decoding, small odd shapes, the widest heads.
    Case("attention/verify-N60-D128-bf16", _attention(1, 32, 8, 60, 128, 4096, "bf16"), decode=True),
    Case("attention/draft-N10-D128-bf16", _attention(1, 32, 8, 10, 128, 4096, "bf16"), decode=True, fast=_SM90),
    Case("attention/small-N3-D40-fp32", _attention(2, 4, 2, 3, 40, 100, "fp32"), fast=_SM90),
    Case("attention/decode-N1-D128-fp16", _attention(4, 32, 8, 1, 128, 4096, "fp16"), fast=()),
    Case("attention/N200-D256-fp16", _attention(2, 8, 8, 200, 256, 8192, "fp16"), fast=()),
    Case("attention/N60-D64-bf16-batch16", _attention(16, 16, 16, 60, 64, 2048, "bf16"), fast=()),
    Case("attention/paged-N60-D128-bf16-page16", _paged_attention(1, 32, 8, 60, 128, 256, 16, "bf16"), fast=_SM90),
    # compact: bf16 KV caches + bf16 draft features (int64 row copies), odd rows (int16 / byte copies)
    Case(
        "compact/decode-kv-bf16",
        _compact(1, 7, [(8, 4096, 128, "bf16", None), (8, 4096, 128, "bf16", None), (1, 4096, 4096, "bf16", None)]),
        decode=True,
    ),
    Case("compact/paged-page16-bf16", _compact_paged(2, 7, 512, 16, 8, 128, "bf16"), fast=_SM90),
    Case("paged/block-table-from-csr", _block_table(8, 256, 64), fast=_SM90),
    Case("paged/accept-slots-N60", _accept_slots(4, 4096, 60, 7), fast=_SM90),
    Case("compact/odd-rows", _compact(3, 4, [(2, 50, 3, "fp16", None), (1, 50, 5, "u8", None), (2, 50, 6, "fp32", 1)])),
    # verify: argmax ids, bf16 logits over the Llama-3 vocabulary (argmax fused), small fp32 logits, 1024 nodes
    Case("verify/greedy-ids-N60", _verify_greedy(4, 60, None, None), decode=True),
    Case("verify/greedy-logits-N60-bf16", _verify_greedy(1, 60, 128256, "bf16"), decode=True),
    Case("verify/greedy-logits-N8-fp32", _verify_greedy(2, 8, 100, "fp32")),
    Case("verify/greedy-ids-N1024", _verify_greedy(2, 1024, None, None)),
    # verify_sample: top-k drafts (no draft_probs) over bf16 Llama-3 logits; sampled drafts with draft_probs
    Case("verify/sample-N60-bf16", _verify_sample(1, 60, 128256, "bf16", False), decode=True),
    Case("verify/sample-draft-probs-N8-fp32", _verify_sample(2, 8, 100, "fp32", True), fast=_SM90),
    Case("verify/sample-draft-probs-N60-bf16", _verify_sample(2, 60, 128256, "bf16", True), fast=()),
    Case("verify/sample-N1024-fp16", _verify_sample(1, 1024, 32000, "fp16", False), fast=()),
]
CASE_BY_ID = {c.id: c for c in CASES}
assert len(CASE_BY_ID) == len(CASES), "duplicate case id"


# ------------------------------------------------------------------------------------------------------
# Test-process side


def run_child(compile_pairs, timeout: float = 7200.0) -> dict:
    """Capture every case for every arch in a clean child process and compile the (case id, arch) pairs.

    Returns the child's report (see `main`). Raises RuntimeError with the child's output if it fails.
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    with tempfile.TemporaryDirectory(prefix="specdec-triton-aot-") as tmp:
        env["TRITON_CACHE_DIR"] = os.path.join(tmp, "cache")  # fresh: every kernel really goes through ptxas
        env["TRITON_HOME"] = tmp
        req, out = os.path.join(tmp, "request.json"), os.path.join(tmp, "report.json")
        with open(req, "w") as fh:
            json.dump({"compile": [list(p) for p in compile_pairs]}, fh)
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), req, out],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(
                f"the compile child process failed (exit {proc.returncode}):\n"
                f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
            )
        with open(out) as fh:
            return json.load(fh)


# ------------------------------------------------------------------------------------------------------
# Child side

_JOBS: list = []  # (fn, target, src parts, options) of the distinct compiles; read by forked workers


def _capture(case: Case, ctx: Ctx) -> list:
    """Run a case with the launch recorders installed.

    Returns [(JITFunction, args, kwargs, label, group)], group = (index of the autotuned call in the case,
    number of configs in its list) for autotuned launches, else None.
    """
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    records, label, group, groups = [], [""], [None], [0]

    def record(self, *args, grid, warmup, **kwargs):
        records.append((self, args, kwargs, label[0], group[0]))

    def every_config(self, *args, **kwargs):
        # Autotuning would time each config on the device: compile them all instead - those left after the
        # autotuner's own pruning (prune_configs_by), as Autotuner.run leaves them. The launches of one
        # autotuned call form a group; on the GPU the autotuner skips configs that fail to load (shared memory).
        self.nargs = dict(zip(self.arg_names, args))
        configs = self.prune_configs(kwargs)
        self.nargs = None
        group[0], groups[0] = (groups[0], len(configs)), groups[0] + 1
        for i, cfg in enumerate(configs[:1] if case.first_config else configs):
            label[0] = f"autotune config {i + 1}/{len(configs)}"
            self.fn.run(*args, **kwargs, **cfg.all_kwargs())
        label[0], group[0] = "", None

    saved = JITFunction.run, Autotuner.run
    JITFunction.run, Autotuner.run = record, every_config
    try:
        case.launch(ctx)
    finally:
        JITFunction.run, Autotuner.run = saved
    return records


def _specialise(fn, args, kwargs, arch: int):
    """(target, signature, constexprs, attrs, options) exactly as JITFunction.run derives them on `arch`."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    kwargs = dict(kwargs)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    return target, signature, constexprs, attrs, options


def _ptxas_report(log: str) -> dict:
    """Registers, spill bytes and stack frame from ptxas -v's report (None where absent)."""
    import re

    def num(pattern):
        m = re.search(pattern, log)
        return int(m.group(1)) if m else None

    return {
        "regs": num(r"Used (\d+) registers"),
        "spill_stores": num(r"(\d+) bytes spill stores"),
        "spill_loads": num(r"(\d+) bytes spill loads"),
        "stack": num(r"(\d+) bytes stack frame"),
    }


def _compile_job(index: int) -> dict:
    """Compile _JOBS[index] to a cubin; the result (ok / error, ptxas numbers, shared memory, seconds)."""
    import contextlib
    import io
    import time

    import triton
    from triton import knobs
    from triton.compiler import ASTSource

    fn, target, signature, constexprs, attrs, options = _JOBS[index]
    knobs.nvidia.dump_ptxas_log = True  # make_cubin prints ptxas -v's report (Python print: redirectable)
    buf = io.StringIO()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(buf):
            kernel = triton.compile(
                ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__
            )
    except BaseException as exc:  # every failure is a result to report
        msg, cause = f"{type(exc).__name__}: {exc}", exc.__cause__ or exc.__context__
        for _ in range(8):  # a CompilationError's reason is its cause (e.g. a type error in a helper)
            if cause is None:
                break
            msg += f"\ncaused by {type(cause).__name__}: {cause}"
            cause = cause.__cause__ or cause.__context__
        return {"ok": False, "error": msg[:8000], "seconds": round(time.perf_counter() - t0, 2)}
    res = {
        "ok": True,
        "error": None,
        "seconds": round(time.perf_counter() - t0, 2),
        "shared": kernel.metadata.shared,
        "cubin_bytes": len(kernel.asm.get("cubin", b"")),
    }
    res.update(_ptxas_report(buf.getvalue()))
    return res


def _constexpr_names(fn, constexprs) -> dict:
    """Constexprs keyed by argument name (JSON-friendly values) for the report."""
    out = {}
    for path, value in constexprs.items():
        name = fn.arg_names[path[0]] + "".join(f"[{i}]" for i in path[1:])
        out[name] = value if isinstance(value, (bool, int, float, str, type(None))) else repr(value)
    return out


def main(request_path: str, report_path: str) -> None:
    """Child entry point: capture every case on every arch, compile the requested pairs, write the report.

    Report: {"cases": {case id: {arch: {"error": launcher error or None, "launches": [{kernel, module,
    label, autotune_group, autotune_configs (the size of its autotune list after pruning), constexprs, num_warps,
    num_stages, signature, job}]}}}, "jobs": [compile results]},
    where `job` indexes "jobs" (distinct compiles are done once) and is None for pairs not requested.
    """
    import multiprocessing

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("TRITON_INTERPRET must be unset to compile for a GPU target")
    import specdec_kernels  # noqa: F401  (loads the op schemas and registers the Triton kernels)
    from specdec_kernels import triton_kernels

    if triton_kernels.LOAD_ERROR:
        raise SystemExit(f"triton kernels failed to load: {triton_kernels.LOAD_ERROR}")

    with open(request_path) as fh:
        wanted = {(c, int(a)) for c, a in json.load(fh)["compile"]}
    report = {"cases": {}, "jobs": []}
    keys = {}
    for case in CASES:
        for arch in case.archs:
            entry = {"error": None, "launches": []}
            report["cases"].setdefault(case.id, {})[str(arch)] = entry
            try:
                records = _capture(case, Ctx(arch, SM_COUNT[arch]))
            except Exception as exc:  # reported per case
                entry["error"] = f"the launcher raised {type(exc).__name__}: {exc}"
                continue
            for fn, args, kwargs, label, group in records:
                launch = {
                    "kernel": fn.fn.__name__,
                    "module": fn.module,
                    "label": label,
                    "autotune_group": None if group is None else group[0],
                    "autotune_configs": None if group is None else group[1],
                    "job": None,
                }
                try:
                    target, signature, constexprs, attrs, options = _specialise(fn, args, kwargs, arch)
                except Exception as exc:
                    launch["error"] = f"specialisation failed: {type(exc).__name__}: {exc}"
                    entry["launches"].append(launch)
                    continue
                launch.update(
                    constexprs=_constexpr_names(fn, constexprs),
                    num_warps=options.num_warps,
                    num_stages=options.num_stages,
                    signature={k: v for k, v in signature.items() if v != "constexpr"},
                )
                if (case.id, arch) in wanted and (case.kernels is None or fn.fn.__name__ in case.kernels):
                    key = (
                        fn.module,
                        fn.fn.__qualname__,
                        arch,
                        repr(signature),
                        repr(sorted(constexprs.items())),
                        repr(sorted(attrs.items())),
                        repr(sorted(options.__dict__.items())),
                    )
                    if key not in keys:
                        keys[key] = len(_JOBS)
                        _JOBS.append((fn, target, signature, constexprs, attrs, options))
                    launch["job"] = keys[key]
                entry["launches"].append(launch)

    if _JOBS:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = max(1, min(cores, len(_JOBS)))
        # fork: the workers inherit the recorded launches (JIT functions are not picklable), and the child
        # never touched a GPU, so there is no device context for the fork to break.
        if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                report["jobs"] = pool.map(_compile_job, range(len(_JOBS)), chunksize=1)
        else:
            report["jobs"] = [_compile_job(i) for i in range(len(_JOBS))]
    with open(report_path, "w") as fh:
        json.dump(report, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
