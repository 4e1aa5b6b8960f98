"""Benchmark of fspad_feature_sampling / griffin_token_fusion: every backend against eager PyTorch.

Two regimes:
- decode: T = 10..60 tree nodes, inference (no autograd, output into a preallocated buffer). The call
  reads every weight once (W_fc 2H^2, W_g/W_u/W_d 3HI elements), so it is bound by memory bandwidth:
  floor = weight bytes / bandwidth. Reported: time, GB/s of weights read, and time / floor.
- train: T = batch x sequence (8 x 2048 by default), forward + backward under autograd; GEMM bound.
  Reported: time, achieved TFLOP/s (forward 2T(2H^2 + 3HI) FLOPs for both heads, backward twice that),
  and speedup over eager.

Targets on a GPU: decode within 1.3x of the floor; training at least 1.3x faster than eager.
`eager` is the plain composition (specdec_kernels.reference.features, torch.cat + F.linear); the other
rows are the op's backends. Results print as a table and append to a CSV keyed by kernel, mode, backend,
shape, dtype, device, torch version and commit.

    python bench/bench_features.py                 # GPU: H=4096, I=11008, bf16
    python bench/bench_features.py --quick         # small shapes, runs on a CPU in seconds
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import specdec_kernels as sk  # noqa: E402
from specdec_kernels import BackendError  # noqa: E402
from specdec_kernels.reference import features as ref  # noqa: E402

KERNELS = {
    "fspad": (sk.fspad_feature_sampling, ref.fspad_feature_sampling),
    "griffin": (sk.griffin_token_fusion, ref.griffin_token_fusion),
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ---------------------------------------------------------------------------------------------------
# Minimal timing helpers (bench/common.py did not exist when this was written)

def timeit(fn, device: torch.device, warmup: int, iters: int) -> float:
    """Median milliseconds of fn() over `iters` runs after `warmup` (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        for _ in range(iters):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except Exception:
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu x{os.cpu_count()}"


# ---------------------------------------------------------------------------------------------------

def make_inputs(kind, T, H, I, V, dtype, device, requires_grad):
    def w(*shape, scale):
        return (torch.randn(*shape, device=device, dtype=dtype) * scale).requires_grad_(requires_grad)

    feats = torch.randn(T, H, device=device, dtype=dtype).requires_grad_(requires_grad)
    ids = torch.randint(0, V, (T,), device=device)
    emb = torch.randn(V, H, device=device, dtype=dtype)
    fc, b = w(H, 2 * H, scale=(2 * H) ** -0.5), w(H, scale=0.1)
    ones = lambda: torch.ones(H, device=device, dtype=dtype).requires_grad_(requires_grad)  # noqa: E731
    if kind == "fspad":
        rest = [ones(), w(I, H, scale=H ** -0.5), w(I, H, scale=H ** -0.5), w(H, I, scale=I ** -0.5)]
    else:
        rest = [ones(), ones(), w(I, 2 * H, scale=(2 * H) ** -0.5), w(H, I, scale=I ** -0.5)]
    return [feats, ids, emb, fc, b, *rest]


def weight_bytes(H, I, dtype) -> int:
    elem = torch.empty(0, dtype=dtype).element_size()
    return (2 * H * H + 3 * H * I + 3 * H) * elem


def fwd_flops(T, H, I) -> float:
    return 2.0 * T * (2 * H * H + 3 * H * I)


def bench_one(kind, mode, backend, T, H, I, V, dtype, device, args_):
    """Milliseconds of one call (decode: inference into a buffer; train: forward + backward)."""
    fn, ref_fn = KERNELS[kind]
    inputs = make_inputs(kind, T, H, I, V, dtype, device, requires_grad=(mode == "train"))
    eps = 1e-6
    if mode == "decode":
        out = torch.empty(T, H, device=device, dtype=dtype)
        if backend == "eager":
            call = lambda: ref_fn(*inputs, eps)  # noqa: E731
        else:
            call = lambda: fn(*inputs, eps, backend=backend, out=out, check_ids=False)  # noqa: E731
        with torch.no_grad():
            try:
                call()
            except BackendError as exc:
                return None, str(exc).splitlines()[-1]
            return timeit(lambda: call(), device, args_.warmup, args_.iters), ""
    grad = torch.randn(T, H, device=device, dtype=dtype)
    leaves = [t for i, t in enumerate(inputs) if i not in (1, 2)]

    def step():
        o = ref_fn(*inputs, eps) if backend == "eager" else fn(*inputs, eps, backend=backend, check_ids=False)
        torch.autograd.grad(o, leaves, grad)

    try:
        step()
    except BackendError as exc:
        return None, str(exc).splitlines()[-1]
    return timeit(step, device, args_.warmup, args_.iters), ""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes and few iterations (runs on a CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default bf16 on GPU, fp32 on CPU")
    p.add_argument("--kernels", default="fspad,griffin")
    p.add_argument("--modes", default="decode,train")
    p.add_argument("--backends", default=None,
                   help="comma list among eager,cuda,triton,cpu,torch (default: all that run on the device; "
                        "triton is left out on CPU, where it only runs interpreted)")
    p.add_argument("-H", type=int, default=None)
    p.add_argument("-I", type=int, default=None)
    p.add_argument("-V", type=int, default=None)
    p.add_argument("--decode-T", default=None, help="comma list of tree sizes (default 10,30,60)")
    p.add_argument("--train-T", type=int, default=None, help="rows of a training step (default 8 x 2048)")
    p.add_argument("--bandwidth", type=float, default=None,
                   help="memory bandwidth in GB/s for the decode floor (default: 3350 for H100, 4800 for H200)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--csv", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                 "features.csv"))
    a = p.parse_args(argv)
    device = torch.device(a.device)
    dtype = DTYPES[a.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    if a.quick:
        H, I, V, decode_T, train_T = a.H or 256, a.I or 688, a.V or 32000, a.decode_T or "10,60", a.train_T or 512
        a.warmup, a.iters = a.warmup or 1, a.iters or 3
    else:
        H, I, V = a.H or 4096, a.I or 11008, a.V or 32000
        decode_T, train_T = a.decode_T or "10,30,60", a.train_T or 16384
        a.warmup, a.iters = a.warmup or 5, a.iters or 20
    if a.backends:
        backends = a.backends.split(",")
    else:
        backends = ["eager", "cuda", "triton", "torch"] if device.type == "cuda" else ["eager", "cpu", "torch"]
    bw = a.bandwidth
    if bw is None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        bw = 4800.0 if "H200" in name else 3350.0 if "H100" in name else None
    wbytes = weight_bytes(H, I, dtype)
    print(f"# {device_name(device)}, {dtype}, H={H} I={I} V={V}; weights {wbytes / 1e6:.1f} MB"
          + (f", decode floor {wbytes / (bw * 1e9) * 1e3:.3f} ms at {bw:.0f} GB/s" if bw else ""))
    header = f"{'kernel':8} {'mode':6} {'T':>6} {'backend':8} {'ms':>9} {'TFLOP/s':>8} {'GB/s':>8} " \
             f"{'x floor':>8} {'vs eager':>8}"
    print(header)
    print("-" * len(header))
    rows = []
    for kind in a.kernels.split(","):
        for mode in a.modes.split(","):
            Ts = [int(t) for t in decode_T.split(",")] if mode == "decode" else [train_T]
            for T in Ts:
                eager_ms = None
                for backend in backends:
                    ms, why = bench_one(kind, mode, backend, T, H, I, V, dtype, device, a)
                    if ms is None:
                        print(f"{kind:8} {mode:6} {T:>6} {backend:8} skipped: {why}")
                        continue
                    if backend == "eager":
                        eager_ms = ms
                    flops = fwd_flops(T, H, I) * (3 if mode == "train" else 1)
                    tflops = flops / (ms * 1e-3) / 1e12
                    gbps = wbytes / (ms * 1e-3) / 1e9 if mode == "decode" else float("nan")
                    floor = (ms * 1e-3) / (wbytes / (bw * 1e9)) if (bw and mode == "decode") else float("nan")
                    speed = eager_ms / ms if eager_ms else float("nan")
                    print(f"{kind:8} {mode:6} {T:>6} {backend:8} {ms:9.3f} {tflops:8.2f} {gbps:8.1f} "
                          f"{floor:8.2f} {speed:8.2f}")
                    rows.append(dict(kernel=kind, mode=mode, backend=backend, T=T, H=H, I=I, V=V,
                                     dtype=str(dtype).replace("torch.", ""), ms=f"{ms:.4f}", tflops=f"{tflops:.3f}",
                                     gbps=f"{gbps:.1f}", x_floor=f"{floor:.3f}", speedup_vs_eager=f"{speed:.3f}",
                                     device=device_name(device), torch=torch.__version__, commit=commit()))
    if a.csv and rows:
        os.makedirs(os.path.dirname(a.csv), exist_ok=True)
        new = not os.path.exists(a.csv)
        with open(a.csv, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                w.writeheader()
            w.writerows(rows)
        print(f"# appended {len(rows)} rows to {a.csv}")


if __name__ == "__main__":
    main()
