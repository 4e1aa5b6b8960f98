"""Decode passes with and without CUDA graphs (`generate(..., cuda_graph=True)`), against model.generate.

A small target's decode pass is a few hundred kernel launches (30 layers of projections, norms, RoPE, cache
writes and attention, plus the draft's levels, the verification op and the compaction), each microseconds of
GPU work: on a GPU the pass is bound by launching. `cuda_graph=True` captures one pass after an eager first
one and replays it. This benchmark measures, per tree and for plain decoding, the milliseconds per pass of
the eager loop and of the replayed graph (the eager first pass and the capture, paid once per call, are
reported apart), and checks that both emit the same tokens (greedy).

The target defaults to a randomly initialised model of SmolLM2-135M-Instruct's shape (the device machine
cannot download the real one; speed does not depend on the weights) and the draft to the shipped GRIFFIN
head; with random target weights acceptance is near zero, so the numbers are per pass, not per token: the
speedup at the head's real acceptance is tau times the per-pass ratio against model.generate's step.

    python bench/e2e_cuda_graph.py                    # on CUDA: bf16, trees 16/3/4 and 60/5/10, plain
    python bench/e2e_cuda_graph.py --quick
    python bench/e2e_cuda_graph.py --device cpu --tiny --quick   # smoke run of the script (no graphs on a CPU)

Writes bench/results/e2e_cuda_graph_<device>.md and .csv (or --out-dir), stamped with machine, commit and date.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from specdec.decoding import generate, generate_baseline
from specdec.dtypes import DTYPE_NAMES, torch_dtype
from specdec.models import DraftConfig, build_draft_head, load_draft_head
from specdec.target import TargetModel

from common import RESULTS_DIR, default_device, env_info, synchronize, write_csv

# SmolLM2-135M-Instruct's shape (its config.json)
SMOLLM2 = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)
TINY = dict(SMOLLM2, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512)  # fmt: skip


def build(args, device, dtype):
    """(Hugging Face target, draft head): a random model of the chosen shape, or --target; the shipped GRIFFIN
    head when it fits the target, else a random GRIFFIN head."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if args.target:
        model = AutoModelForCausalLM.from_pretrained(args.target, dtype=dtype, local_files_only=True)
    else:
        model = LlamaForCausalLM(LlamaConfig(**(TINY if args.tiny else SMOLLM2))).to(dtype)
    model = model.to(device).eval()
    head = None
    if not args.tiny:
        from specdec.heads import resolve_draft

        try:
            head = load_draft_head(resolve_draft(args.draft), device=device, dtype=dtype)
        except Exception as exc:  # fall back to a random head of the right shape, and say so
            print(f"draft {args.draft!r} not usable here ({exc}); a random GRIFFIN head", file=sys.stderr)
        if head is not None and (head.config.hidden_size, head.config.vocab_size) != (
            model.config.hidden_size,
            model.config.vocab_size,
        ):
            head = None
    if head is None:
        head = build_draft_head(DraftConfig.from_target(model.config, "griffin")).to(device=device, dtype=dtype)
    return model, head.eval()


def per_pass_ms(run, repeats: int) -> tuple:
    """(median ms per decode pass, the result of the last run): GenerationResult.time_per_pass, which with
    CUDA graphs counts the replayed passes only (the eager first pass and the capture are capture_time)."""
    times, res = [], None
    for _ in range(repeats):
        res = run()
        times.append(1e3 * res.time_per_pass)
    return statistics.median(times), res


def hf_step_ms(model, prompt, new: int, repeats: int, device) -> float:
    """model.generate's decode step: (time of 1 + new tokens - time of 1 token) / new, median of repeats."""
    ids = torch.tensor([prompt], device=device)

    def run(n):
        synchronize(device)
        t = time.perf_counter()
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False)
        synchronize(device)
        return time.perf_counter() - t

    run(2)
    return statistics.median(1e3 * (run(1 + new) - run(1)) / new for _ in range(repeats))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=str(default_device()))
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPE_NAMES))
    ap.add_argument("--target", default=None, help="a Hugging Face model folder (default: random, SmolLM2's shape)")
    ap.add_argument("--draft", default="griffin", help="a shipped head name or a head folder")
    ap.add_argument("--tiny", action="store_true", help="a tiny random target and head (a smoke run)")
    ap.add_argument("--trees", default="16:3:4,60:5:10", help="N:depth:top-k of each tree, comma-separated")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--passes", type=int, default=64, help="decode passes per run (new tokens, EOS off)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="16 passes, 1 repeat")
    ap.add_argument("--out-dir", default=RESULTS_DIR)
    args = ap.parse_args(argv)
    if args.quick:
        args.passes, args.repeats = 16, 1
    device, dtype = torch.device(args.device), torch_dtype(args.dtype)
    graphs = device.type == "cuda"
    model, head = build(args, device, dtype)
    target = TargetModel(model)
    prompt = torch.randint(0, model.config.vocab_size, (args.prompt_len,), generator=torch.Generator().manual_seed(1))
    prompt = prompt.tolist()
    kw = dict(max_new_tokens=args.passes + 1, eos_token_id=[])
    rows = []
    hf = hf_step_ms(model, prompt, min(args.passes, 32), args.repeats, device)
    settings = [None] + [tuple(int(x) for x in t.split(":")) for t in args.trees.split(",")]
    for tree in settings:
        if tree is None:

            def run(g):
                return generate_baseline(target, [prompt], cuda_graph=g, **kw)
        else:
            N, depth, k = tree

            def run(g, N=N, depth=depth, k=k):
                return generate(target, head, [prompt], tree_top_k=k, depth=depth, total_tokens=N, cuda_graph=g, **kw)

        run(False)  # warm-up (Triton compiles, allocator)
        eager, e_res = per_pass_ms(lambda: run(False), args.repeats)
        row = {
            "setting": "plain" if tree is None else f"tree {tree[0]}/{tree[1]}/{tree[2]}",
            "eager_ms_per_pass": round(eager, 3),
            "graph_ms_per_pass": "",
            "graph_capture_ms": "",
            "graph_speedup": "",
            "same_tokens": "",
            "hf_generate_ms_per_token": round(hf, 3),
            "tau": round(e_res.tau, 3),
        }
        if graphs:
            run(True)
            graph, g_res = per_pass_ms(lambda: run(True), args.repeats)
            row.update(
                graph_ms_per_pass=round(graph, 3),
                graph_capture_ms=round(1e3 * g_res.capture_time, 1),
                graph_speedup=round(eager / graph, 2),
                same_tokens="yes" if g_res.sequences == e_res.sequences else "NO",
            )
        rows.append(row)
        print(row, flush=True)

    info = env_info(device)
    stem = write_csv(rows, "e2e_cuda_graph", device, out_dir=args.out_dir)[: -len(".csv")]
    shape = "tiny random" if args.tiny else (args.target or "random, SmolLM2-135M's shape")
    with open(stem + ".md", "w") as f:
        f.write(f"# Decode passes with and without CUDA graphs ({info['device']}, {args.dtype})\n\n")
        f.write(f"{', '.join(f'{k} {v}' for k, v in info.items())}\n\n")
        f.write(f"target: {shape}; draft: {args.draft if not args.tiny else 'random'}; prompt {args.prompt_len} ")
        f.write(f"tokens, {args.passes} passes, median of {args.repeats}\n\n")
        cols = list(rows[0])
        f.write("| " + " | ".join(cols) + " |\n| " + " | ".join("---" for _ in cols) + " |\n")
        for r in rows:
            f.write("| " + " | ".join(str(r[c]) for c in cols) + " |\n")
    print(f"wrote {stem}.md and .csv")
    return 0 if all(r["same_tokens"] in ("", "yes") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
