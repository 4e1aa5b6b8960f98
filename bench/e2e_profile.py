"""End-to-end profile of speculative decoding: one decoding pass broken into its phases.

Per setting (tree size N, dtype) it runs `specdec.decoding.generate` for a fixed number of passes (EOS off)
with the phase profiler of specdec.decoding.drafting installed, and reports the mean milliseconds per pass of:

  draft   root top-k             log-softmax + top-k of the root logits (level 1)
          level l layer          the head's decoder layer at level l (input block, attention, MLP)
          level l output layer   the head's logits: the (target's, or reduced) lm_head
          level l top-k          log-softmax + top-k of the k*k children (+ draft-to-target id map)
          level l selection      the next frontier: top-k of the children, gathers of features and masks
          rerank                 specdec_kernels.select_tree (N - 1 best candidates)
          extend                 the draft's append of the accepted pairs (after verification)
  verify  build_tree             specdec_kernels.build_tree of the drafted parents
          target layers          the target's decoder layers minus tree attention (embedding, norms, RoPE,
                                 projections, MLPs, cache writes)
          tree attention         specdec_kernels.tree_attention inside the target's layers
          output layer           the target's lm_head over the N rows
  verification op                verify_greedy / verify_sample
  compaction                     compact_kv + cache_len update
  host overhead                  the loop's own work: the per-pass host sync, output emit, tensor bookkeeping

The timers are time.perf_counter marks at the phase boundaries (on CUDA each mark synchronises, which only
happens here: with no profiler installed the library's hooks are no-ops). The target's tree attention and
output layer are timed by wrapping them from here (the attention module's specdec_kernels reference and
forward hooks on lm_head); the head's output layer by wrapping head.compute_logits.

For reference, at the same context: `model.generate`'s decode step (transformers, greedy; (time of
1 + M new tokens - time of 1) / M) and generate_baseline's per-token decode time, plus the whole
generate's wall-clock tokens per second.

    python bench/e2e_profile.py                      # default target, random GRIFFIN head, N = 8/16/32/60, fp32+bf16
    python bench/e2e_profile.py --quick              # fewer passes and repetitions
    python bench/e2e_profile.py --draft path/to/head --dtypes bf16 --Ns 16 32

Writes bench/results/e2e_profile_<device>.md and .csv (or --out-dir), stamped with machine, commit and date.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import specdec.target.attention as _attn_mod
from specdec.decoding import drafting, generate, generate_baseline
from specdec.dtypes import DTYPE_NAMES, torch_dtype
from specdec.files import portable_paths

from common import RESULTS_DIR, default_device, env_info

PROMPT = (
    "Speculative decoding speeds up the inference of large language models without changing their outputs. "
    "A small draft model proposes several tokens ahead, organised as a tree of candidate continuations, and "
    "the large target model checks all of them in a single forward pass, keeping the longest prefix that "
    "agrees with its own choices. The speedup depends on how many tokens are accepted per pass and on how "
    "much a pass costs compared with one ordinary decoding step. "
)


class PhaseProfiler:
    """Receives the decode path's marks: the time since the previous mark goes to (name, level)."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.acc = collections.defaultdict(float)
        self.passes = 0
        self.t = time.perf_counter()
        self.in_tree = False
        self.next_level = 2
        self.phase = None  # "verify" while target.verify runs (for the target-side wrappers)
        self.complete = 1  # passes of the profiled run (set by the caller)

    def mark(self, name, level=None):
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        dt, self.t = now - self.t, now
        if name == "host.pass":
            self.passes += 1
            if self.passes == 1:  # prefill and the first extend: not part of a pass
                self.phase = None
                return
        if self.passes == 0:
            return
        self.acc[(name, level)] += dt
        if name == "draft.topk" and level == 1:
            self.in_tree, self.next_level = True, 2
        elif name in ("draft.select",):
            self.next_level = level + 1
        elif name == "draft.rerank":
            self.in_tree = False
        elif name == "verify.build_tree":
            self.phase = "verify"
        elif name == "verify.target":
            self.phase = None

    # -- wrappers installed around the head and the target ---------------------------------------------

    @contextlib.contextmanager
    def install(self, head, target):
        prof = self
        orig_logits = head.compute_logits

        def compute_logits(x):
            if not prof.in_tree:
                return orig_logits(x)
            prof.mark("draft.layer", prof.next_level)
            out = orig_logits(x)
            prof.mark("draft.output", prof.next_level)
            return out

        def timed_attention(real, method: str):
            """`real` with its `method` (a tree-attention call) marked as the verify's attention phase."""

            def call(*a, **kw):
                if prof.phase != "verify":
                    return getattr(real, method)(*a, **kw)
                prof.mark("verify.layers")
                out = getattr(real, method)(*a, **kw)
                prof.mark("verify.attention")
                return out

            proxy = type("Timed", (), {"__getattr__": lambda self, name: getattr(real, name)})()
            setattr(proxy, method, call)
            return proxy

        real_sk, real_op = _attn_mod.specdec_kernels, _attn_mod._OP

        def pre(module, args):
            if prof.phase == "verify":
                prof.mark("verify.layers")

        def post(module, args, output):
            if prof.phase == "verify":
                prof.mark("verify.output")

        head.compute_logits = compute_logits
        _attn_mod.specdec_kernels = timed_attention(real_sk, "tree_attention")
        # layers after a forward's first run the checked kernel directly (attention.TreeAttentionState.plan)
        _attn_mod._OP = timed_attention(real_op, "run")
        h1 = target.lm_head.register_forward_pre_hook(pre)
        h2 = target.lm_head.register_forward_hook(post)
        drafting.set_profiler(self)
        try:
            yield self
        finally:
            drafting.set_profiler(None)
            h1.remove()
            h2.remove()
            _attn_mod.specdec_kernels = real_sk
            _attn_mod._OP = real_op
            del head.compute_logits


def phase_rows(prof: PhaseProfiler, depth: int) -> list:
    """[(group, phase, ms per pass)] in display order."""
    # Every pass starts with a "host.pass" mark (the first one, closing the prefill, is discarded), so the
    # loop's host time between passes is counted for passes 2..n; prof.complete = generate's passes.
    acc = prof.acc
    npass = prof.complete
    ms = lambda key: acc.get(key, 0.0) * 1e3 / npass
    rows = [("draft", "root top-k (level 1)", ms(("draft.topk", 1)))]
    for level in range(2, depth + 1):
        rows.append(("draft", f"level {level} layer", ms(("draft.layer", level))))
        rows.append(("draft", f"level {level} output layer", ms(("draft.output", level))))
        rows.append(("draft", f"level {level} top-k", ms(("draft.topk", level))))
        if level < depth:
            rows.append(("draft", f"level {level} selection", ms(("draft.select", level))))
    rows.append(("draft", "rerank (select_tree)", ms(("draft.rerank", None))))
    rows.append(("draft", "extend (accepted pairs)", ms(("draft.extend", None))))
    rows.append(("verify", "build_tree", ms(("verify.build_tree", None))))
    rows.append(
        ("verify", "target layers (excl. attention)", ms(("verify.layers", None)) + ms(("verify.target", None)))
    )
    rows.append(("verify", "tree attention", ms(("verify.attention", None))))
    rows.append(("verify", "output layer (lm_head)", ms(("verify.output", None))))
    rows.append(("verification op", "verify_greedy", ms(("verify.op", None))))
    rows.append(("compaction", "compact_kv", ms(("verify.compact", None))))
    rows.append(("host", "emit + loop (sync, bookkeeping)", ms(("host.emit", None)) + ms(("host.pass", None))))
    return rows


def hf_decode_step(model, ids, new_tokens: int, repeats: int) -> float:
    """Seconds per decode step of transformers' model.generate (greedy) after the prompt `ids` [1, L]."""

    def run(n):
        t0 = time.perf_counter()
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
        )
        if ids.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    run(2)
    ones = [run(1) for _ in range(repeats)]
    many = [run(1 + new_tokens) for _ in range(repeats)]
    return (statistics.median(many) - statistics.median(ones)) / new_tokens


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="default", help="'default' or a Hugging Face model folder")
    ap.add_argument("--draft", default=None, help="a draft head folder (default: a random GRIFFIN head)")
    ap.add_argument("--Ns", type=int, nargs="+", default=[8, 16, 32, 60], help="tree sizes (nodes incl. the root)")
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPE_NAMES))
    ap.add_argument("--top-k", type=int, default=10, help="tree_top_k (default 10)")
    ap.add_argument("--depth", type=int, default=6, help="tree depth (default 6)")
    ap.add_argument("--context", type=int, default=300, help="prompt tokens (default 300)")
    ap.add_argument("--passes", type=int, default=None, help="decode passes per setting (default 32, --quick 10)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--device", default=str(default_device()))
    ap.add_argument("--quick", action="store_true", help="a short run: fewer passes and repetitions")
    ap.add_argument("--out-dir", default=RESULTS_DIR, help="output folder (default bench/results)")
    ap.add_argument("--no-reference", action="store_true", help="skip model.generate and generate_baseline")
    ap.add_argument(
        "--no-prepack",
        action="store_true",
        help="keep the CPU linears as torch runs them (default: prepacked, or the C++ kernel where oneDNN's "
        "bf16 path does not run: specdec.target.kernel_linears)",
    )
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specdec.default_target import resolve_target
    from specdec.models import DraftConfig, build_draft_head, load_draft_head
    from specdec.target import TargetModel
    from specdec.target.kernel_linears import speed_up_cpu_linears

    passes = args.passes or (10 if args.quick else 32)
    repeats = 2 if args.quick else 3
    folder = resolve_target(args.target)
    dev = torch.device(args.device)
    try:
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        text_ids = tok(PROMPT)["input_ids"]
    except Exception:
        text_ids = list(range(1, 200))
    prompt = (text_ids * (args.context // max(len(text_ids), 1) + 1))[: args.context]
    ids = torch.tensor([prompt], dtype=torch.int64, device=dev)

    env = env_info(dev)
    env["threads"] = torch.get_num_threads()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    summary, tables, csv_rows = [], [], []
    head_desc = args.draft or "random GRIFFIN head (seed 0)"
    for dname in args.dtypes:
        dtype = torch_dtype(dname)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True).to(dev).eval()
        target = TargetModel(model)
        if args.draft:
            head = load_draft_head(args.draft, device=dev, dtype=dtype).eval()
        else:
            torch.manual_seed(0)
            head = build_draft_head(DraftConfig.from_target(model.config, "griffin"), device=dev, dtype=dtype).eval()
        # as load_target/load_head(prepack=True): oneDNN's prepacked bf16 linear where it runs, else the C++
        # kernel where it measured faster (specdec.target.kernel_linears)
        sped = [(0, 0)] if args.no_prepack else [speed_up_cpu_linears(model), speed_up_cpu_linears(head)]
        packed, kernel = sum(p for p, _ in sped), sum(k for _, k in sped)
        env["prepacked_linears"] = f"{env.get('prepacked_linears', '')} {dname}:{packed}".strip()
        env["kernel_linears"] = f"{env.get('kernel_linears', '')} {dname}:{kernel}".strip()
        ref = {}
        if not args.no_reference:
            ref["hf_step_ms"] = hf_decode_step(model, ids, 8 if args.quick else 16, repeats) * 1e3
            generate_baseline(target, ids, max_new_tokens=4, eos_token_id=[])
            bl = [generate_baseline(target, ids, max_new_tokens=passes, eos_token_id=[]) for _ in range(repeats)]
            ref["baseline_ms"] = statistics.median(r.verify_time / r.passes for r in bl) * 1e3
        for N in args.Ns:
            kw = dict(tree_top_k=args.top_k, depth=args.depth, total_tokens=N, eos_token_id=[])
            generate(target, head, ids, max_new_tokens=3, **kw)  # warm-up
            best = None
            for _ in range(repeats):
                prof = PhaseProfiler(dev)
                with prof.install(head, target):
                    res = generate(target, head, ids, max_new_tokens=passes, **kw)
                prof.complete = max(res.passes, 1)
                total = sum(prof.acc.values()) * 1e3 / prof.complete
                if best is None or total < best[0]:
                    best = (total, prof, res)
            # the same settings without the profiler: its marks' cost is not in this number
            plain = min(
                (generate(target, head, ids, max_new_tokens=passes, **kw) for _ in range(repeats)),
                key=lambda r: r.total_time,
            )
            total, prof, res = best
            rows = phase_rows(prof, args.depth)
            groups = collections.OrderedDict()
            for g, _, v in rows:
                groups[g] = groups.get(g, 0.0) + v
            draft_levels = collections.defaultdict(float)
            for (name, _level), v in prof.acc.items():
                if name in ("draft.layer", "draft.output", "draft.topk", "draft.select"):
                    draft_levels[name] += v * 1e3 / prof.complete
            unprof_pass = (plain.draft_time + plain.verify_time) / max(plain.passes, 1) * 1e3
            s = {
                "dtype": dname,
                "N": N,
                "draft_ms": groups.get("draft", 0.0),
                "draft_layers_ms": draft_levels["draft.layer"],
                "draft_output_ms": draft_levels["draft.output"],
                "draft_topk_select_ms": draft_levels["draft.topk"]
                + draft_levels["draft.select"]
                + prof.acc.get(("draft.rerank", None), 0) * 1e3 / prof.complete,
                "verify_target_ms": groups.get("verify", 0.0),
                "verify_op_ms": groups.get("verification op", 0.0),
                "compaction_ms": groups.get("compaction", 0.0),
                "host_ms": groups.get("host", 0.0),
                "pass_ms": total,
                "pass_unprofiled_ms": unprof_pass,
                "tau": res.tau,
                "tokens_per_s": plain.num_new_tokens / max(plain.total_time - plain.prefill_time, 1e-9),
                "hf_step_ms": ref.get("hf_step_ms", float("nan")),
                "baseline_ms": ref.get("baseline_ms", float("nan")),
            }
            summary.append(s)
            tables.append((dname, N, rows, total, res))
            for g, p, v in rows:
                csv_rows.append({"dtype": dname, "N": N, "group": g, "phase": p, "ms_per_pass": round(v, 4)})
            print(
                f"[{dname} N={N}] pass {total:.1f} ms (unprofiled {unprof_pass:.1f}): draft {s['draft_ms']:.1f}, "
                f"verify {s['verify_target_ms']:.1f}, op {s['verify_op_ms']:.2f}, compact {s['compaction_ms']:.2f}, "
                f"host {s['host_ms']:.2f}; tau {res.tau:.2f}",
                flush=True,
            )
        del model, target, head

    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    env["loadavg_1min"] = f"{load_start:.2f}->{load_end:.2f}"
    os.makedirs(args.out_dir, exist_ok=True)
    base = os.path.join(args.out_dir, f"e2e_profile_{dev.type}")
    with open(base + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(csv_rows[0]) + list(env))
        w.writeheader()
        for r in csv_rows:
            w.writerow({**r, **env})
        for s in summary:  # the per-setting totals as group "summary"
            for k, v in s.items():
                if k in ("dtype", "N"):
                    continue
                w.writerow(
                    {
                        "dtype": s["dtype"],
                        "N": s["N"],
                        "group": "summary",
                        "phase": k,
                        "ms_per_pass": round(v, 4),
                        **env,
                    }
                )
    with open(base + ".md", "w") as f:
        f.write("# End-to-end decode profile (bench/e2e_profile.py)\n\n")
        f.write(
            f"- machine: {env['device']}; torch {env['torch']}; threads {env['threads']}; 1-minute load average "
            f"{env['loadavg_1min']} (start -> end; above the thread count means other work shared the cores)\n"
            f"- commit {env['commit']}, {env['date']}; prepacked target + head linears per dtype: "
            f"{env['prepacked_linears']}; on the C++ linear kernel: {env['kernel_linears']}\n"
            f"- target: {args.target} ({portable_paths(str(folder))}); draft: {portable_paths(head_desc)}; batch 1; "
            f"context {len(prompt)} tokens; "
            f"tree_top_k {args.top_k}, depth {args.depth}; greedy; {passes} passes per run, best of {repeats} "
            f"runs{' (--quick)' if args.quick else ''}\n"
            "- ms per decoding pass. `pass` is the sum of the profiled phases (each mark synchronises on "
            "CUDA); `unprofiled` is generate's own draft + verify time per pass without the profiler. "
            "`model.generate step` is transformers' greedy decode step and `baseline/token` generate_baseline's "
            "decode time per token, both at the same context.\n\n"
        )
        f.write("## Summary\n\n")
        cols = [
            ("dtype", "dtype"),
            ("N", "N"),
            ("draft", "draft_ms"),
            ("draft layers", "draft_layers_ms"),
            ("draft output layers", "draft_output_ms"),
            ("draft top-k+select+rerank", "draft_topk_select_ms"),
            ("verify (target)", "verify_target_ms"),
            ("verification op", "verify_op_ms"),
            ("compaction", "compaction_ms"),
            ("host", "host_ms"),
            ("pass", "pass_ms"),
            ("unprofiled pass", "pass_unprofiled_ms"),
            ("tau", "tau"),
            ("tokens/s", "tokens_per_s"),
            ("model.generate step", "hf_step_ms"),
            ("baseline/token", "baseline_ms"),
        ]
        f.write("| " + " | ".join(c for c, _ in cols) + " |\n")
        f.write("|" + "---|" * len(cols) + "\n")
        for s in summary:
            cells = []
            for _, k in cols:
                v = s[k]
                cells.append(
                    f"{v:.2f}"
                    if isinstance(v, float) and k == "tau"
                    else f"{v:.1f}"
                    if isinstance(v, float)
                    else str(v)
                )
            f.write("| " + " | ".join(cells) + " |\n")
        for dname, N, rows, total, res in tables:
            f.write(f"\n## {dname}, N = {N} (pass {total:.1f} ms, tau {res.tau:.2f})\n\n")
            f.write("| group | phase | ms/pass | % of pass |\n|---|---|---|---|\n")
            for g, p, v in rows:
                f.write(f"| {g} | {p} | {v:.2f} | {100 * v / total:.1f} |\n")
    print(f"wrote {base}.md and {base}.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
