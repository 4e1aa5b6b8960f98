"""Benchmark of fspad_feature_sampling / griffin_token_fusion: every backend against eager PyTorch.

Two regimes:
- decode: T = 10..60 tree nodes, inference (no autograd, output into a preallocated buffer). The call
  reads every weight once (W_fc 2H^2, W_g/W_u/W_d 3HI elements), so it is bound by memory bandwidth:
  floor = weight bytes / peak bandwidth. Reported: time, GB/s of weights read, and time / floor
  (--peak-gbps, or the bandwidth of a known GPU; no floor on CPU unless given).
- train: T = batch x sequence (8 x 2048 by default), forward + backward under autograd; GEMM bound.
  Reported: time, achieved TFLOP/s (forward 2T(2H^2 + 3HI) FLOPs for both heads, backward twice that),
  and speedup over eager.

Targets on a GPU: decode within 1.3x of the floor; training at least 1.3x faster than eager.
`eager` is the plain composition (specdec_kernels.reference.features, torch.cat + F.linear); the other
rows are the op's backends (those that refuse the inputs are listed as skipped). Times are microseconds
per call (median over batches, and the minimum); the CSV (bench/common.py columns: device, versions,
commit, date) goes to bench/out/ by default, bench/results/ with --results.

    python bench/bench_features.py                 # GPU: H=4096, I=11008, bf16
    python bench/bench_features.py --quick         # small shapes, runs on a CPU in seconds
    python bench/bench_features.py --results       # CSV into bench/results/ instead of bench/out/
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import specdec_kernels as sk
from specdec.dtypes import DTYPE_NAMES, torch_dtype
from specdec_kernels import BACKENDS, BackendError
from specdec_kernels.reference import features as ref

from common import add_common_args, peak_gbps, print_table, time_stats, write_csv

KERNELS = {  # kind -> (public function, plain composition); the op (registry) name is the function's name
    "fspad": (sk.fspad_feature_sampling, ref.fspad_feature_sampling),
    "griffin": (sk.griffin_token_fusion, ref.griffin_token_fusion),
}
FROZEN = ("token_ids", "embed_weight")  # inputs without a gradient
MODES = ("decode", "train")
PROVIDERS = ("eager",) + tuple(BACKENDS)


EPS = 1e-6


def make_inputs(kind, T, H, I, V, dtype, device, requires_grad):
    """The op's tensor inputs by name (keyword arguments of the op and of the composition; eps aside),
    scaled so activations stay O(1)."""

    def w(*shape, scale):
        return (torch.randn(*shape, device=device, dtype=dtype) * scale).requires_grad_(requires_grad)

    ones = lambda: torch.ones(H, device=device, dtype=dtype).requires_grad_(requires_grad)
    a = dict(
        features=torch.randn(T, H, device=device, dtype=dtype).requires_grad_(requires_grad),
        token_ids=torch.randint(0, V, (T,), device=device),
        embed_weight=torch.randn(V, H, device=device, dtype=dtype),
        fc_weight=w(H, 2 * H, scale=(2 * H) ** -0.5),
        fc_bias=w(H, scale=0.1),
    )
    if kind == "fspad":
        a.update(norm_weight=ones(), gate_weight=w(I, H, scale=H**-0.5), up_weight=w(I, H, scale=H**-0.5))
    else:
        a.update(norm_b_weight=ones(), norm_a_weight=ones(), up_weight=w(I, 2 * H, scale=(2 * H) ** -0.5))
    a["down_weight"] = w(H, I, scale=I**-0.5)
    return a


def weight_bytes(H, I, dtype) -> int:
    """Bytes of the weights one call reads (both heads have 2H^2 + 3HI matrix elements, ~3H vectors)."""
    elem = torch.empty(0, dtype=dtype).element_size()
    return (2 * H * H + 3 * H * I + 3 * H) * elem


def fwd_flops(T, H, I) -> float:
    return 2.0 * T * (2 * H * H + 3 * H * I)


def make_call(kind, mode, provider, T, H, I, V, dtype, device):
    """A closure running one decode call (into a preallocated buffer) or one training step (fwd + bwd)."""
    fn, ref_fn = KERNELS[kind]
    inputs = make_inputs(kind, T, H, I, V, dtype, device, requires_grad=(mode == "train"))
    if mode == "decode":
        out = torch.empty(T, H, device=device, dtype=dtype)
        if provider == "eager":
            return lambda: ref_fn(**inputs, eps=EPS)
        # check_ids=False: the range check of token_ids is a host sync the decode path does not pay.
        return lambda: fn(**inputs, eps=EPS, backend=provider, out=out, check_ids=False)
    grad = torch.randn(T, H, device=device, dtype=dtype)
    leaves = [t for k, t in inputs.items() if k not in FROZEN]

    def step():
        o = (
            ref_fn(**inputs, eps=EPS)
            if provider == "eager"
            else fn(**inputs, eps=EPS, backend=provider, check_ids=False)
        )
        torch.autograd.grad(o, leaves, grad)

    return step


def bench_case(kind, mode, T, H, I, V, dtype, device, providers, min_time, warmup, peak) -> list:
    """Rows of one (kernel, mode, T) over `providers`; a provider that refuses the inputs is printed as skipped."""
    wbytes = weight_bytes(H, I, dtype)
    flops = fwd_flops(T, H, I) * (3 if mode == "train" else 1)
    rows = []
    op = sk.get_op(KERNELS[kind][0].__name__)
    for provider in providers:
        # What the registry rules out without inputs (not built, no Triton, wrong device) ...
        reason = None if provider == "eager" else op.static_reason(provider, device)
        if reason is not None:
            print(f"skipped {kind} {mode} T={T} {provider}: {reason}")
            continue
        call = make_call(kind, mode, provider, T, H, I, V, dtype, device)
        # Inference mode has no autograd graph to record; training needs it.
        with torch.no_grad() if mode == "decode" else torch.enable_grad():
            try:
                call()
            except BackendError as exc:  # ... and what it refuses for these inputs (dtype, sizes)
                print(f"skipped {kind} {mode} T={T} {provider}: {str(exc).splitlines()[-1]}")
                continue
            us, us_min = time_stats(call, device, min_time=min_time, warmup=warmup)
        secs = us * 1e-6
        gbps = wbytes / secs / 1e9 if mode == "decode" else float("nan")
        rows.append(
            {
                "kernel": kind,
                "mode": mode,
                "provider": provider,
                "dtype": str(dtype).replace("torch.", ""),
                "T": T,
                "H": H,
                "I": I,
                "V": V,
                "time_us": us,
                "min_us": us_min,
                "TFLOPs": flops / secs / 1e12,
                "weight_GBps": gbps,
                "x_floor": peak / gbps if (peak and mode == "decode") else float("nan"),
            }
        )  # = time / floor
    eager = next((r["time_us"] for r in rows if r["provider"] == "eager"), None)
    for r in rows:
        r["x_vs_eager"] = eager / r["time_us"] if eager else float("nan")
    return rows


def csv_list(choices):
    """argparse type: a comma list whose items are all in `choices`."""

    def parse(text):
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"expected a comma list among {','.join(choices)}, got {text!r}")
        return items

    return parse


def int_list(text):
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None


def main(argv=None) -> None:
    parser = add_common_args(
        argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    parser.add_argument(
        "--kernels",
        type=csv_list(tuple(KERNELS)),
        default=list(KERNELS),
        help="comma list among fspad,griffin (default both)",
    )
    parser.add_argument(
        "--modes", type=csv_list(MODES), default=list(MODES), help="comma list among decode,train (default both)"
    )
    parser.add_argument(
        "--backends",
        type=csv_list(PROVIDERS),
        default=None,
        help=f"comma list among {','.join(PROVIDERS)} (default: those that run on the device; "
        "triton is left out on CPU, where it only runs interpreted)",
    )
    parser.add_argument(
        "--dtype", choices=sorted(DTYPE_NAMES), default=None, help="default: bfloat16 on CUDA, float32 on CPU"
    )
    parser.add_argument("-H", type=int, default=None, help="hidden size (default 4096; --quick 256)")
    parser.add_argument("-I", type=int, default=None, help="MLP intermediate size (default 11008; --quick 688)")
    parser.add_argument("-V", type=int, default=None, help="vocabulary size of the embedding (default 32000)")
    parser.add_argument(
        "--decode-T", type=int_list, default=None, help="comma list of tree sizes (default 10,30,60; --quick 10,60)"
    )
    parser.add_argument(
        "--train-T", type=int, default=None, help="rows of a training step (default 8 x 2048 = 16384; --quick 512)"
    )
    parser.add_argument(
        "--peak-gbps",
        "--bandwidth",
        dest="peak_gbps",
        type=float,
        default=None,
        help="peak memory bandwidth in GB/s for the decode floor (default: known GPUs' table)",
    )
    args = parser.parse_args(argv)

    device = args.device
    on_cuda = torch.device(device).type == "cuda"
    dtype = torch_dtype(args.dtype) if args.dtype else (torch.bfloat16 if on_cuda else torch.float32)
    H = args.H or (256 if args.quick else 4096)
    I = args.I or (688 if args.quick else 11008)  # the usual name of the intermediate size
    V = args.V or 32000
    decode_T = args.decode_T or ([10, 60] if args.quick else [10, 30, 60])
    train_T = args.train_T or (512 if args.quick else 16384)
    # By default only what can run on the device: no cpu backend on CUDA tensors, no cuda backend on CPU ones,
    # and no triton on CPU (there it only runs interpreted, a test tool rather than something to time).
    providers = args.backends or [p for p in PROVIDERS if p not in (("cpu",) if on_cuda else ("cuda", "triton"))]
    min_time = args.min_time / (10 if args.quick else 1)
    warmup = 1 if args.quick else 3
    peak = peak_gbps(device, args.peak_gbps)
    torch.manual_seed(0)

    wbytes = weight_bytes(H, I, dtype)
    rows = []
    for kind in args.kernels:
        for mode in args.modes:
            for T in decode_T if mode == "decode" else [train_T]:
                rows += bench_case(kind, mode, T, H, I, V, dtype, device, providers, min_time, warmup, peak)

    print(
        f"feature heads on {device} ({str(dtype).replace('torch.', '')}, H={H}, I={I}, V={V}): weights "
        f"{wbytes / 1e6:.1f} MB; time per call in microseconds (median, min)"
        + (f"; decode floor {wbytes / (peak * 1e9) * 1e6:.1f} us at {peak:.0f} GB/s" if peak else "")
    )
    tables = {
        "decode": ["kernel", "provider", "T", "time_us", "min_us", "weight_GBps", "x_floor", "x_vs_eager"],
        "train": ["kernel", "provider", "T", "time_us", "min_us", "TFLOPs", "x_vs_eager"],
    }
    for mode in args.modes:
        mode_rows = [r for r in rows if r["mode"] == mode]
        if mode_rows:
            print(f"\n{mode}:")
            print_table(mode_rows, tables[mode], floatfmt="{:.3g}")
    if not rows:  # keep an earlier CSV rather than overwrite it with a header only
        print("no provider ran these inputs; nothing written")
        return
    path = write_csv(rows, "features", device, results=args.results, out_dir=args.out_dir)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
