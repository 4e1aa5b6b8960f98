"""`specdec eval`: tau, acceptance and wall-clock speedup of draft heads on MT-bench / HumanEval.

    specdec eval --target default --draft heads/griffin --bench mtbench,humaneval
    specdec eval --target default --draft g=heads/griffin --draft e=heads/eagle --temperatures 0 --limit 10
    specdec eval --target PATH --draft PATH --bench my_prompts.jsonl --max-new-tokens 128 --out bench/results/x

Every argument is checked before anything is loaded (exit status 2, one line naming the argument).
Exit status 1 when a temperature-0 output differs from model.generate's greedy output where the target's
logits do not tie (a real mismatch) in float32 (in bf16/fp16 they are reported, not failed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from ..arguments import Verbatim, check_device, tree_size_type
from ..arguments import int_type as _int
from ..dtypes import dtype_choices, resolve_dtype
from ..evaluation.report import Checkpoint, check_same_run, cpu_label, gpu_label
from ..loading import check_draft, check_target, has_tokenizer, load_head, load_target
from .args import add_debug_argument
from .errors import RUNTIME, CliError, arg_error, target_errors

COMMAND = "eval"
SUMMARY = "measure tau and speedup on MT-bench / HumanEval"


def _temperatures(text: str) -> tuple:
    try:
        v = tuple(float(t) for t in text.replace(" ", "").split(",") if t != "")
    except ValueError:
        v = ()
    if not v or any(not math.isfinite(t) or t < 0 for t in v) or len(set(v)) != len(v):
        raise argparse.ArgumentTypeError(f'expected distinct numbers >= 0, comma-separated, e.g. "0,1", got {text!r}')
    return v


_temperatures.__name__ = "temperatures"


def register(sub, formatter_class):
    """Add `specdec eval` to the subparsers `sub`; returns its parser."""
    p = sub.add_parser(
        COMMAND,
        formatter_class=formatter_class,
        help=SUMMARY,
        description="Measure draft heads the way the EAGLE / FSPAD / GRIFFIN papers do (batch 1): tau, "
        "per-step acceptance, tokens/s and the wall-clock speedup over the target's own model.generate "
        "and over generate_baseline, interleaved prompt by prompt; at temperature 0 every output is "
        "checked against model.generate's greedy output. Writes eval.csv, eval.md, tau.png, speedup.png "
        "and meta.json into --out. See docs/eval.md.",
    )
    _add_model_arguments(p)
    _add_prompt_arguments(p)
    _add_device_arguments(p)
    _add_tree_arguments(p)
    _add_run_arguments(p)
    add_debug_argument(p)
    p.set_defaults(handler=_handle)
    return p


def _add_model_arguments(p) -> None:
    """Add what is measured: --target, --draft."""
    p.add_argument(
        "--target",
        required=True,
        metavar="PATH",
        help="Hugging Face model folder with a tokenizer (chat template), or the word default "
        "(SmolLM2-135M-Instruct, fetched once) (required)",
    )
    p.add_argument(
        "--draft",
        required=True,
        action="append",
        metavar="[NAME=]HEAD",
        help="eagle, fspad or griffin (heads shipped for SmolLM2-135M-Instruct) or a draft head folder, "
        "optionally named (repeat for several heads; default name: the head's kind) (required)",
    )


def _add_prompt_arguments(p) -> None:
    """Add what it is measured on: --bench, --temperatures, --limit, --spread, --max-new-tokens."""
    p.add_argument(
        "--bench",
        default="mtbench,humaneval",
        metavar="LIST",
        help="comma-separated: mtbench, humaneval (fetched on first use into $SPECDEC_HOME) or "
        'paths of JSONL files ({"prompt": ...} or {"turns": [...]} per line)',
    )
    p.add_argument(
        "--temperatures",
        type=_temperatures,
        default=(0.0, 1.0),
        metavar="LIST",
        help='comma-separated sampling temperatures (0 = greedy) (default: "0,1")',
    )
    p.add_argument(
        "--limit",
        type=_int(1),
        default=None,
        metavar="N",
        help="only N prompts of each benchmark: the first N, or N spread evenly with --spread (default: all)",
    )
    p.add_argument(
        "--spread",
        action="store_true",
        help="with --limit N: take every (len/N)-th prompt instead of the first N, so a quick run covers every "
        "category of MT-bench (its questions are grouped by category, ten each)",
    )
    p.add_argument("--max-new-tokens", type=_int(1), default=256, metavar="N", help="tokens per answer, at most")


def _add_device_arguments(p) -> None:
    """Add where it runs: --dtype, --device, --threads."""
    p.add_argument(
        "--dtype",
        default=None,
        choices=dtype_choices(),
        help="model and head dtype (default: auto = bfloat16 on CUDA; on a CPU the faster of "
        "bfloat16 and float32, measured once and cached)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    p.add_argument(
        "--threads",
        type=_int(1),
        default=None,
        metavar="N",
        help="torch intra-op threads, for every method alike (default: torch's choice)",
    )


def _add_tree_arguments(p) -> None:
    """Add the shape of the draft tree: --tree-top-k, --depth, --total-tokens."""
    p.add_argument("--tree-top-k", type=_int(1), default=10, metavar="K", help="children per drafted node")
    p.add_argument("--depth", type=_int(1), default=5, metavar="D", help="levels of the draft tree")
    p.add_argument(
        "--total-tokens",
        type=tree_size_type(2),
        default=60,
        metavar="N",
        help="nodes of the verified tree, root included (the papers' 60 with depth 5, top-k 10), or auto: the "
        "fastest tree for this machine and head (nodes, depth and top-k; see specdec generate --help)",
    )


def _add_run_arguments(p) -> None:
    """Add how the run goes and where it writes: --out, --seed, --backend ... --no-progress."""
    p.add_argument("--out", default=os.path.join("bench", "results"), metavar="DIR", help="output folder")
    p.add_argument("--seed", type=_int(0), default=0, help="seed of the sampling at temperature > 0")
    p.add_argument(
        "--backend",
        default=None,
        choices=("cuda", "triton", "cpu", "torch"),
        help="specdec_kernels backend (default: chosen per op)",
    )
    p.add_argument(
        "--no-prepack",
        action="store_true",
        help="keep the target's and the heads' CPU linears as they are (default: the faster linear of this CPU: "
        "prepacked bf16 for oneDNN where it runs, which speeds up model.generate and speculative decoding alike, "
        "with specdec_kernels' C++ linear for the small calls it wins there; else the C++ linear where it measured "
        "faster than torch; the C++ linear runs in specdec's own passes only (generate_baseline and speculative "
        "decoding), model.generate unchanged; specdec.target.kernel_linears)",
    )
    p.add_argument(
        "--cuda-graph",
        action="store_true",
        help="on a CUDA device, run generate_baseline and speculative decoding with each decode pass replayed "
        "as one captured CUDA graph (model.generate stays as Hugging Face runs it)",
    )
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up runs")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run whose checkpoint (eval.partial.jsonl) is in --out, with the same "
        "arguments: its measured turns are kept, the rest measured (without a checkpoint: from the start)",
    )
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bars: one log line per turn instead (for log files)"
    )


def _parse_drafts(items: list) -> dict:
    """{name: folder} from --draft [NAME=]PATH; names default to the head's kind (specdec_kind) or folder name."""

    heads = {}
    for item in items:
        name, path = (
            item.split("=", 1) if "=" in item and not os.path.exists(os.path.expanduser(item)) else (None, item)
        )
        if name is not None and not name.strip():
            raise arg_error("--draft", "NAME=PATH with a non-empty NAME", item)
        path, cfg = check_draft(path)
        if name is None:
            name = cfg.get("specdec_kind") or os.path.basename(os.path.normpath(path))
        if name in heads:
            raise arg_error(
                "--draft", "distinct head names (name them: --draft NAME=PATH)", Verbatim(f"{name!r} twice")
            )
        heads[name] = path
    return heads


def _parse_bench(text: str) -> list:
    from ..evaluation.prompts import BENCHMARKS

    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise arg_error("--bench", "mtbench, humaneval or JSONL paths, comma-separated", text)
    for t in items:
        if t in BENCHMARKS:
            continue
        path = os.path.expanduser(t)
        if not os.path.isfile(path):
            why = (
                "which is a folder" if os.path.isdir(path) else "which is neither a benchmark name nor an existing file"
            )
            raise arg_error("--bench", f"{', '.join(BENCHMARKS)} or a JSONL file", Verbatim(f"{t!r}, {why}"))
    if len(set(items)) != len(items):
        raise arg_error("--bench", "distinct benchmarks", text)
    return items


def validate_args(args) -> argparse.Namespace:
    """Every check that loads no model: the plan of the run, or CliError."""
    from .checks import check_backend, check_cuda_graph_device

    plan = argparse.Namespace()
    plan.drafts = _parse_drafts(args.draft)
    plan.bench = _parse_bench(args.bench)
    if args.total_tokens != "auto" and args.total_tokens < 2:
        raise arg_error("--total-tokens", "auto or an integer >= 2", args.total_tokens)
    out = os.path.expanduser(args.out)
    if not args.out.strip() or (os.path.exists(out) and not os.path.isdir(out)):
        raise arg_error(
            "--out", "a folder", Verbatim(f"{args.out!r}, which is a file") if args.out.strip() else args.out
        )
    plan.out = out
    if not args.resume and os.path.isfile(os.path.join(out, Checkpoint.NAME)):
        raise arg_error(
            "--out",
            f"a folder without an interrupted run, or --resume to continue it ({os.path.join(out, Checkpoint.NAME)} "
            "holds one; delete it to start over)",
            args.out,
        )
    with target_errors():
        plan.target, target_cfg, local = check_target(args.target)
    if local is not None and not has_tokenizer(local):
        raise arg_error(
            "--target",
            "a model folder with a tokenizer (the prompts go through its chat template)",
            Verbatim(f"{args.target!r}, which has no tokenizer"),
        )
    vocab = (target_cfg or {}).get("vocab_size")
    if isinstance(vocab, int) and args.tree_top_k > vocab:
        raise arg_error("--tree-top-k", f"at most {vocab} (the target's vocabulary)", Verbatim(str(args.tree_top_k)))
    plan.device = check_device(args.device)
    import torch

    check_backend(args.backend, plan.device)
    check_cuda_graph_device(args, plan.device)
    plan.dtype = getattr(torch, resolve_dtype(args.dtype, plan.device))  # after the checks: it may measure
    return plan


def run_identity(args, plan, benches: dict, threads: int) -> dict:
    """What a resumed run must share with the interrupted one (JSON-normalised): the same target, heads,
    prompts and every setting that changes a measurement."""
    ident = {
        "target": plan.target,
        "heads": plan.drafts,
        "prompts": {b: [str(p.id) for p in ps] for b, ps in benches.items()},
        "temperatures": list(args.temperatures),
        "max_new_tokens": args.max_new_tokens,
        "tree": [args.tree_top_k, args.depth, args.total_tokens],
        "device": str(plan.device),
        "dtype": str(plan.dtype),
        "threads": threads,
        "seed": args.seed,
        "backend": args.backend,
        "prepack": not args.no_prepack,
    }
    if args.cuda_graph:  # absent when off: checkpoints written before the option existed still resume
        ident["cuda_graph"] = True
    # the speedups compare times: a run resumed on another processor would mix two machines' timings
    ident["processor"] = gpu_label(plan.device) or cpu_label()
    return json.loads(json.dumps(ident))


def _resume(args, plan, ident: dict) -> list:
    """The (row, answer) pairs of the checkpoint in --out that `ident` may continue; [] without one."""
    if not args.resume or not os.path.isfile(os.path.join(plan.out, Checkpoint.NAME)):
        if args.resume:
            print(f"specdec eval: --resume: no checkpoint in {plan.out}, starting from the first turn", file=sys.stderr)
        return []
    try:
        saved, done = Checkpoint.load(plan.out)
    except ValueError as exc:
        raise CliError(f"argument --resume: {exc}", 2) from exc
    if "processor" not in saved:  # a checkpoint written before runs recorded it
        print(
            f"specdec eval: --resume: the checkpoint does not say which processor measured it; its timings are "
            f"taken as this one's ({ident['processor']})",
            file=sys.stderr,
        )
        saved = dict(saved, processor=ident["processor"])
    try:
        check_same_run(saved, ident)
    except ValueError as exc:
        raise CliError(f"argument --resume: {exc}", 2) from exc
    return done


def _turn_line(row: dict, done: int, total: int) -> str:
    """One log line per measured turn (--no-progress): where the run is and what the turn gave."""
    check = f", {row['mismatch']}" if row.get("mismatch") else ""
    return (
        f"[{done}/{total}] {row['head']} T={row['temperature']:g} {row['benchmark']} {row['prompt_id']} "
        f"turn {row['turn']}: {row['new_tokens']} tokens in {row['passes']} passes, tau {row['tau']:.2f}, "
        f"{row['speedup_generate']:.2f}x model.generate{check}"
    )


def _handle(args, stage) -> int:
    """Run `specdec eval`: check, load, measure every turn, write the report; 1 on a real float32 mismatch."""
    plan = validate_args(args)
    stage.what = "loading the prompts"
    benches = _load_benches(plan.bench, args.limit, args.spread)
    stage.what = "importing torch, transformers and the decoding code"
    code = _import_code()
    if args.threads:
        code.torch.set_num_threads(args.threads)
    ident = run_identity(args, plan, benches, code.torch.get_num_threads())
    resumed = _resume(args, plan, ident)
    tokenizer, model, packed = _load_target(args, plan, stage)  # packed: (prepacked, kernel) linears
    heads = _load_heads(args, plan, stage)
    settings = _eval_settings(args, code)
    stage.what = "evaluating"
    harness = code.Harness(model, tokenizer, settings)
    _print_plan(args, plan, heads, benches, packed, code.torch.get_num_threads())
    checkpoint = _open_checkpoint(plan, ident, resumed)
    rows = _measure(args, harness, heads, benches, checkpoint, resumed)
    stage.what = f"writing the report into {plan.out!r}"
    rep = _write_report(args, plan, code, rows, packed)
    checkpoint.close(keep=False)
    print(rep["markdown"])
    print("wrote " + ", ".join(str(f) for f in rep["files"].values()))
    real = sum(g["mismatches"] for g in rep["groups"] if g["greedy"])
    if real:
        print(f"specdec eval: WARNING: {real} real mismatch(es) at temperature 0 (see eval.csv)", file=sys.stderr)
        if plan.dtype == code.torch.float32:
            return 1
    return 0


def _load_benches(specs: list, limit, spread: bool) -> dict:
    """{benchmark name: its selected prompts} for each --bench entry; CliError for a bad file or a name twice."""
    from ..evaluation.prompts import PromptError, load_benchmark, select_prompts

    benches = {}
    for spec in specs:
        try:
            prompts = load_benchmark(spec)
        except PromptError as exc:
            raise CliError(f"argument --bench: {exc}", RUNTIME) from exc
        name = prompts[0].bench
        if name in benches:
            raise CliError(f"argument --bench: two benchmarks named {name!r}; rename a file", 2)
        benches[name] = select_prompts(prompts, limit, spread)
    return benches


def _import_code() -> argparse.Namespace:
    """torch, the loaders and the evaluation code: the slow imports, made under their own stage."""
    import torch

    from ..evaluation.harness import EvalSettings, Harness
    from ..evaluation.report import stamp, write_report

    return argparse.Namespace(
        torch=torch, EvalSettings=EvalSettings, Harness=Harness, stamp=stamp, write_report=write_report
    )


def _load_target(args, plan, stage) -> tuple:
    """(tokenizer, target model on the device in eval mode, (prepacked linears, kernel linears)); CliError
    without a chat template."""
    with target_errors():
        loaded = load_target(
            args.target,
            dtype=plan.dtype,
            device=plan.device,
            prepack=not args.no_prepack,
            chat_template=True,
            phase=stage.target_phases(args.target),
        )
    return loaded.tokenizer, loaded.model, (loaded.prepacked, loaded.kernel_linears)


def _load_heads(args, plan, stage) -> dict:
    """{name: draft head} on the device in eval mode, its CPU linears sped up as the target's unless --no-prepack."""
    heads = {}
    for name, path in plan.drafts.items():
        stage.what = f"loading the draft head {name!r} from {path!r}"
        heads[name] = load_head(path, dtype=plan.dtype, device=plan.device, prepack=not args.no_prepack)
    return heads


def _eval_settings(args, code):
    """The EvalSettings of the arguments: what every measurement shares."""
    return code.EvalSettings(
        temperatures=args.temperatures,
        max_new_tokens=args.max_new_tokens,
        tree_top_k=args.tree_top_k,
        depth=args.depth,
        total_tokens=args.total_tokens,
        seed=args.seed,
        backend=args.backend,
        warmup=not args.no_warmup,
        cuda_graph=args.cuda_graph,
    )


def _print_plan(args, plan, heads: dict, benches: dict, packed: tuple, threads: int) -> None:
    """One line on stderr: what is about to be measured, on what."""
    n_turns = sum(len(p.turns) for ps in benches.values() for p in ps)
    print(
        f"specdec eval: {len(heads)} head(s) x {len(args.temperatures)} temperature(s) x {n_turns} turns "
        f"({', '.join(f'{b} {len(ps)}' for b, ps in benches.items())}); target {args.target}, "
        f"device {plan.device}, dtype {str(plan.dtype).replace('torch.', '')}, threads {threads}, "
        f"{packed[0]} prepacked linears, {packed[1]} on the C++ linear kernel",
        file=sys.stderr,
    )


def _open_checkpoint(plan, ident: dict, resumed: list) -> Checkpoint:
    """The checkpoint in --out (created) that keeps each turn as it finishes, holding the `resumed` ones."""
    os.makedirs(plan.out, exist_ok=True)
    checkpoint = Checkpoint(plan.out, ident, resumed)
    print(
        f"specdec eval: each turn is checkpointed in {checkpoint.path} as it finishes"
        + (f"; resuming after the {len(resumed)} turn(s) measured before" if resumed else ""),
        file=sys.stderr,
    )
    return checkpoint


def _measure(args, harness, heads: dict, benches: dict, checkpoint: Checkpoint, resumed: list) -> list:
    """The rows of every turn not measured before, each checkpointed as it finishes; kept on any stop."""

    def on_row(row: dict, answer: str, done: int, total: int) -> None:
        checkpoint.add(row, answer)
        if args.no_progress:
            print(_turn_line(row, done, total), file=sys.stderr, flush=True)

    done = {harness.turn_key(row): (row, answer) for row, answer in resumed}
    try:
        return harness.run(heads, benches, progress=not args.no_progress, on_row=on_row, done=done)
    except BaseException:
        checkpoint.close(keep=True)
        print(
            f"specdec eval: stopped; the {checkpoint.rows} turn(s) measured so far are in {checkpoint.path} "
            "(--resume with the same arguments continues)",
            file=sys.stderr,
        )
        raise


def _write_report(args, plan, code, rows: list, packed: tuple) -> dict:
    """eval.csv, eval.md, the plots and meta.json in --out; returns write_report's result."""
    from ..heads import describe_draft

    info = code.stamp(plan.device, plan.dtype)
    shown = {
        "target": args.target,
        "heads": json.dumps({name: describe_draft(folder) for name, folder in plan.drafts.items()}),
        "max_new_tokens": args.max_new_tokens,
        "prepacked_linears": packed[0],
        "kernel_linears": packed[1],
        "tree": f"top-k {args.tree_top_k} depth {args.depth} total {args.total_tokens}",
        "temperatures": ",".join(f"{t:g}" for t in args.temperatures),
        "limit": f"{args.limit} (spread)" if args.limit and args.spread else args.limit,
        "seed": args.seed,
    }
    return code.write_report(rows, plan.out, args.depth, info, shown)
