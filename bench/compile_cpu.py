"""Does torch.compile pay for the target on a CPU? One forward of N new rows after a cached context.

Three versions of the same target, timed round-robin in one process so that machine noise hits all alike:

  eager            transformers as loaded (the DynamicCache, cropped back after every call)
  eager prepacked  specdec.target.prepack: bf16 linears reordered once for oneDNN (what specdec uses)
  inductor         torch.compile(model.forward, dynamic=False) with inductor's freezing (weights folded in as
                   constants and prepacked by inductor itself) over a StaticCache: the recipe transformers
                   documents for compiled decoding, one compiled graph per N

N = 1 is a decode step of model.generate; N = 8 / 16 are tree verifications of that many nodes (the tree's
mask costs the same as the causal one here). Speculative decoding gains from compilation only if it speeds
the N-row forward up more than the one-row step: both sides of the comparison would use it.

    python bench/compile_cpu.py                       # default target, bf16, 1 thread, context 300, N = 1 8 16
    python bench/compile_cpu.py --threads 2 --Ns 1 16

Writes bench/results/compile_cpu_threads<T>.md (or --out-dir), stamped with machine, commit and date.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS_DIR, env_info


def _timed(fn, N: int, repeats: int) -> float:
    """Median seconds of fn(N) over `repeats` calls."""
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(N)
        t.append(time.perf_counter() - t0)
    return statistics.median(t)


def _prefilled(model, prompt, cache_cls):
    """A new cache_cls() holding `prompt` run through `model`."""
    cache = cache_cls()
    model(prompt, cache=cache, use_cache=True)
    return cache


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="default")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--context", type=int, default=300)
    ap.add_argument("--Ns", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--rounds", type=int, default=5, help="round-robin rounds (median over rounds)")
    ap.add_argument("--repeats", type=int, default=10, help="calls per version per round (median)")
    ap.add_argument("--out-dir", default=RESULTS_DIR)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, DynamicCache, StaticCache

    from specdec.default_target import resolve_target
    from specdec.target.prepack import prepack_linears

    folder = resolve_target(args.target)

    def load():
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, local_files_only=True).eval()

    ctx = args.context
    prompt = torch.arange(1, ctx + 1).unsqueeze(0)
    maxN = max(args.Ns)
    new = torch.arange(7, 7 + maxN).unsqueeze(0)
    env = env_info(torch.device("cpu"))
    env["threads"] = torch.get_num_threads()

    eager, packed, comp = load(), load(), load()
    n_packed = prepack_linears(packed)
    runners, compile_s = {}, {}
    with torch.no_grad():
        for name, model in (("eager", eager), ("eager prepacked", packed)):
            cache = _prefilled(model, prompt, DynamicCache)

            def run(N, model=model, cache=cache):
                model(new[:, :N], cache=cache, use_cache=True)
                cache.crop(-N)

            runners[name] = run

        static = StaticCache(config=comp.config, max_cache_len=ctx + maxN)
        comp(prompt, cache=static, use_cache=True, cache_position=torch.arange(ctx))  # eager prefill
        fwd = torch.compile(comp.forward, dynamic=False, options={"freezing": True})

        def run_compiled(N):
            # the same positions every call: the static cache overwrites them, like a rejected tree would be
            out = fwd(new[:, :N], cache=static, use_cache=True, cache_position=torch.arange(ctx, ctx + N))
            for layer in static.layers:  # rewind the layer's write position (transformers' StaticLayer.crop)
                layer.crop(-N)
            return out

        for N in args.Ns:
            t0 = time.perf_counter()
            run_compiled(N)
            compile_s[N] = time.perf_counter() - t0
            print(f"inductor: N={N} compiled in {compile_s[N]:.0f} s", flush=True)
        runners["inductor"] = run_compiled

        # the outputs agree? prepacking is bitwise; inductor reassociates bf16 sums, so compare greedy tokens
        ref = eager(new, cache=_prefilled(eager, prompt, DynamicCache), use_cache=True).logits.float()
        outs = {
            "eager prepacked": packed(new, cache=_prefilled(packed, prompt, DynamicCache), use_cache=True).logits,
            "inductor": run_compiled(maxN).logits,
        }
        agree = {
            name: ((ref.argmax(-1) == out.argmax(-1)).float().mean().item(), (ref - out.float()).abs().max().item())
            for name, out in outs.items()
        }

        times = {(name, N): [] for name in runners for N in args.Ns}
        for _ in range(args.rounds):
            for N in args.Ns:
                for name, run in runners.items():
                    run(N)
                    times[(name, N)].append(_timed(run, N, args.repeats))

    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    lines = [
        "# torch.compile (inductor, freezing) vs eager for the target on the CPU",
        "",
        f"{env['device']}, torch {env['torch']}; commit {env.get('commit', '?')}, {env.get('date', '')}; "
        f"target {os.path.basename(folder)}, bf16, {env['threads']} thread(s), context {ctx}, batch 1; "
        f"load average at the end {os.getloadavg()[0]:.1f}; {n_packed} linears prepacked; "
        f"median of {args.rounds} round-robin rounds x {args.repeats} calls; `python bench/compile_cpu.py`.",
        "",
        "| N new rows | eager ms | eager prepacked ms | inductor ms | prepacked / eager | inductor / eager | "
        "inductor compile s |",
        "|---|---|---|---|---|---|---|",
    ]
    for N in args.Ns:
        e, p, c = ms[("eager", N)], ms[("eager prepacked", N)], ms[("inductor", N)]
        lines.append(f"| {N} | {e:.1f} | {p:.1f} | {c:.1f} | {e / p:.2f}x | {e / c:.2f}x | {compile_s[N]:.0f} |")
    if len(set(args.Ns)) > 1:
        lo, hi = min(args.Ns), max(args.Ns)
        lines += [
            "",
            f"Verify cost ratio N={hi} / N={lo} (what the speculative speedup depends on): "
            + ", ".join(f"{name} {ms[(name, hi)] / ms[(name, lo)]:.2f}" for name in runners),
        ]
    lines += [""] + [
        f"{name} vs eager over the {maxN} rows: greedy token equal on {a:.0%}, max |logit difference| {d:.3g}."
        for name, (a, d) in agree.items()
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, f"compile_cpu_threads{env['threads']}.md")
    with open(path, "w") as f:
        f.write(text)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
