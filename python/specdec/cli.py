"""The `specdec` command.

  specdec --version                  version of specdec and specdec_kernels
  specdec info                       versions, what was built, which backend each kernel op uses here
  specdec generate --target PATH --draft PATH --prompt "..." [options]
                                     lossless EAGLE-2 tree speculative decoding of one or more prompts;
                                     prints the generated text (or token ids) and statistics
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
          "bfloat16": "bfloat16", "bf16": "bfloat16"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specdec", description="Lossless tree speculative decoding "
                                     "(EAGLE-2 drafting with EAGLE, FSPAD or GRIFFIN heads).")
    parser.add_argument("--version", action="store_true", help="print the versions and exit")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="versions, build and backend report")

    g = sub.add_parser("generate", help="speculative decoding with a target model and a draft head",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g.add_argument("--target", required=True, help="Hugging Face causal LM folder (or hub id when online)")
    g.add_argument("--draft", required=True, help="draft head folder (ours, or a published EAGLE/FSPAD/GRIFFIN one)")
    g.add_argument("--prompt", action="append", default=[],
                   help="prompt text (repeat for a batch); needs a tokenizer in the target folder")
    g.add_argument("--prompt-ids", action="append", default=[],
                   help='prompt as space-separated token ids, e.g. "1 2 3" (repeat for a batch)')
    g.add_argument("--chat", action="store_true", help="wrap text prompts in the tokenizer's chat template")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--top-p", type=float, default=1.0, help="1.0 = off")
    g.add_argument("--tree-top-k", type=int, default=10, help="children per drafted node")
    g.add_argument("--depth", type=int, default=6, help="levels of the draft tree")
    g.add_argument("--total-tokens", type=int, default=60, help="nodes of the verified tree, root included")
    g.add_argument("--eos-token-id", type=int, action="append", default=None,
                   help="stop token (repeatable); default: the target's generation config / tokenizer")
    g.add_argument("--no-eos", action="store_true", help="never stop early (exactly --max-new-tokens tokens)")
    g.add_argument("--baseline", action="store_true",
                   help="also run plain autoregressive decoding and report the speedup")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    g.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                   help="model dtype (default: bfloat16 on CUDA, float32 on CPU)")
    g.add_argument("--seed", type=int, default=0, help="seed of the sampling generator")
    g.add_argument("--backend", default=None, choices=["cuda", "triton", "cpu", "torch"],
                   help="specdec_kernels backend (default: chosen per op)")
    return parser


def _versions() -> str:
    import specdec
    import specdec_kernels
    return f"specdec {specdec.__version__} (specdec_kernels {specdec_kernels.__version__})"


def _has_tokenizer(path: str) -> bool:
    if not os.path.isdir(path):
        return True  # a hub id: let transformers decide
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    return any(os.path.isfile(os.path.join(path, n)) for n in names)


def _parse_ids(text: str) -> list:
    try:
        ids = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise SystemExit(f"specdec generate: --prompt-ids expects space-separated integers, got {text!r}")
    if not ids:
        raise SystemExit("specdec generate: --prompt-ids is empty")
    return ids


def _generate(args) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .decoding import generate, generate_baseline
    from .models import load_draft_head
    from .target import TargetModel

    if not args.prompt and not args.prompt_ids:
        raise SystemExit("specdec generate: give at least one --prompt or --prompt-ids")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else (
        torch.bfloat16 if device.type == "cuda" else torch.float32)

    tokenizer = None
    if _has_tokenizer(args.target):
        try:
            tokenizer = AutoTokenizer.from_pretrained(args.target)
        except (OSError, ValueError) as exc:
            if args.prompt:
                raise SystemExit(f"specdec generate: cannot load a tokenizer from {args.target} ({exc}); "
                                 "use --prompt-ids")
    if args.prompt and tokenizer is None:
        raise SystemExit(f"specdec generate: {args.target} has no tokenizer; give the prompt as token ids with "
                         '--prompt-ids "1 2 3"')
    prompts = []
    for text in args.prompt:
        if args.chat and getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                tokenize=True)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        else:
            ids = tokenizer(text)["input_ids"]
        prompts.append(list(ids))
    prompts += [_parse_ids(t) for t in args.prompt_ids]

    model = AutoModelForCausalLM.from_pretrained(args.target, dtype=dtype).to(device).eval()
    target = TargetModel(model, backend=args.backend)
    head = load_draft_head(args.draft, device=device, dtype=dtype).eval()
    vocab = target.vocab_size
    for b, p in enumerate(prompts):
        bad = [t for t in p if not 0 <= t < vocab]
        if bad:
            raise SystemExit(f"specdec generate: prompt {b} has token ids outside [0, {vocab}): {bad[:5]}")

    if args.no_eos:
        eos = None
    elif args.eos_token_id:
        eos = args.eos_token_id
    else:
        eos = getattr(model.generation_config, "eos_token_id", None)
        if eos is None and tokenizer is not None:
            eos = tokenizer.eos_token_id

    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
              eos_token_id=eos, backend=args.backend)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    res = generate(target, head, prompts, tree_top_k=args.tree_top_k, depth=args.depth,
                   total_tokens=args.total_tokens, generator=gen, **kw)

    def show(seq):
        return tokenizer.decode(seq, skip_special_tokens=True) if tokenizer is not None else " ".join(map(str, seq))

    print(f"target {type(model).__name__} ({args.target}), draft {head.kind} ({args.draft}), device {device}, "
          f"dtype {str(dtype).replace('torch.', '')}")
    print(f"tree: top-k {args.tree_top_k}, depth {args.depth}, {args.total_tokens} tokens; "
          f"temperature {args.temperature}, top-k {args.top_k}, top-p {args.top_p}")
    for b, seq in enumerate(res.sequences):
        print(f"[{b}] {show(seq)}")
        if tokenizer is not None:
            print(f"[{b}] ids: {' '.join(map(str, seq))}")
    print(f"speculative: {res.summary()}")
    if args.baseline:
        gen = torch.Generator(device=device).manual_seed(args.seed)
        base = generate_baseline(target, prompts, generator=gen, **kw)
        print(f"baseline:    {base.summary()}")
        spec_t = res.draft_time + res.verify_time
        base_t = base.verify_time
        speedup = (base_t / base.num_new_tokens) / (spec_t / res.num_new_tokens) if spec_t > 0 and \
            res.num_new_tokens and base.num_new_tokens else float("nan")
        print(f"speedup (decode time per token, prefill excluded): {speedup:.2f}x")
        if args.temperature == 0:
            same = base.sequences == res.sequences
            print(f"greedy outputs identical to the baseline: {'yes' if same else 'NO'}")
            if not same:
                return 1
    return 0


def main(argv: Optional[list] = None) -> int:
    """Entry point of the `specdec` command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        print(_versions())
        return 0
    if args.command == "info" or args.command is None:
        from specdec_kernels.info import report

        print(_versions())
        print(report())
        return 0
    if args.command == "generate":
        return _generate(args)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
