"""Answering prompts for self-distillation: `model.generate` batches against continuous batching on our cache.

    python bench/data_generation.py --target default --num-prompts 96 --slots 32 --dtype bfloat16

Both engines answer the same ShareGPT first turns (conversations after the first --skip of the file, so
not the shipped heads' own training prompts) greedily under the chat template, with the budget the data
builder gives (min(--max-new-tokens, --max-len - prompt length)):
- `hf`: what specdec.data.responses did before continuous batching: prompts sorted by length, batches of
  --slots, left padding, transformers' `generate` until every answer of the batch ended;
- `static`: specdec.target.continuous_batching.generate_many with --slots slots;
- `paged`: the same on pages of --page-size tokens that requests take from a pool and give back (no K/V
  copies at refills; paged_tree_attention in every forward).
The model's linears are those `specdec data` gives it (speed_up_cpu_linears; --plain-linears keeps
torch's): the C++ kernel in our engines where it wins, oneDNN's prepacked layers in `model.generate` where
they run. Reported: generated tokens per second (padding excluded), forwards, and how many answers are identical
(greedy bf16 answers may differ after a near-tie: batched rows round differently). Writes
data_generation_<device>.{csv,md} with the machine's CPU, ISA flags and threads.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from specdec.dtypes import DTYPE_NAMES, torch_dtype

from common import cpu_flags, env_info, print_table, write_csv


def first_turn_prompts(tokenizer, count: int, skip: int, max_len: int) -> list:
    """Token ids of `count` ShareGPT first user turns (after the first `skip` conversations), rendered with
    the generation prompt, those shorter than max_len only."""
    from specdec.data.chat import render
    from specdec.data.sharegpt import load_conversations

    prompts = []
    for conv in load_conversations("sharegpt", skip + 4 * count)[skip:]:
        msgs = [m for m in conv.messages if m["role"] == "system"][:1]
        user = next((m for m in conv.messages if m["role"] == "user"), None)
        if user is None:
            continue
        ids = tokenizer(render(tokenizer, msgs + [user], add_generation_prompt=True), add_special_tokens=False)
        if len(ids["input_ids"]) < max_len:
            prompts.append(ids["input_ids"])
        if len(prompts) == count:
            break
    return prompts


def run_hf(model, prompts: list, budgets: list, eos: list, pad_id: int, slots: int) -> tuple:
    """(answers in prompt order, seconds, generate calls): sorted batches, left padded, greedy."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers = [None] * len(prompts)
    t0, calls = time.perf_counter(), 0
    for b0 in range(0, len(order), slots):
        batch = order[b0 : b0 + slots]
        longest = max(len(prompts[i]) for i in batch)
        inp = torch.full((len(batch), longest), pad_id, dtype=torch.long)
        att = torch.zeros((len(batch), longest), dtype=torch.long)
        for r, i in enumerate(batch):
            inp[r, longest - len(prompts[i]) :] = torch.tensor(prompts[i])
            att[r, longest - len(prompts[i]) :] = 1
        budget = max(budgets[i] for i in batch)
        with torch.no_grad():
            out = model.generate(
                input_ids=inp,
                attention_mask=att,
                max_new_tokens=budget,
                pad_token_id=pad_id,
                eos_token_id=eos,
                do_sample=False,
                temperature=None,
                top_k=None,
                top_p=None,
            )
        calls += 1
        for r, i in enumerate(batch):
            gen = out[r, longest:].tolist()[: budgets[i]]
            cut = next((t + 1 for t, tok in enumerate(gen) if tok in eos), len(gen))
            answers[i] = gen[:cut]
    return answers, time.perf_counter() - t0, calls


def run_static(model, prompts: list, budgets: list, eos: list, pad_id: int, slots: int, page_size=None) -> tuple:
    """(answers in prompt order, seconds, forwards) of generate_many (on pages of `page_size` when given)."""
    from specdec.target import TargetModel
    from specdec.target.continuous_batching import DecodeStats, generate_many

    # untimed: the first forward checks the lean decoder path against transformers' (specdec.target.lean_layers)
    generate_many(TargetModel(model), prompts[:1], max_new_tokens=1, eos_ids=eos, slots=1, pad_id=pad_id)
    stats = DecodeStats()
    t0 = time.perf_counter()
    answers = generate_many(
        TargetModel(model),
        prompts,
        max_new_tokens=budgets,
        eos_ids=eos,
        slots=slots,
        pad_id=pad_id,
        stats=stats,
        page_size=page_size,
    )
    return answers, time.perf_counter() - t0, stats.prefills + stats.steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="default")
    p.add_argument("--num-prompts", type=int, default=96)
    p.add_argument("--skip", type=int, default=5000, help="conversations of the file skipped first")
    p.add_argument("--slots", type=int, default=32, help="batch size (hf) and slots (static)")
    p.add_argument("--max-new-tokens", type=int, default=192)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPE_NAMES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--engines", default="static,hf", help="comma-separated: static, paged, hf")
    p.add_argument(
        "--plain-linears",
        action="store_true",
        help="keep torch's linears (default: speed_up_cpu_linears, as `specdec data` does: our engines run the "
        "C++ linear where it wins, model.generate keeps oneDNN's prepacked layers where they run, torch's elsewhere)",
    )
    p.add_argument("--page-size", type=int, default=16, help="page size of the paged engine")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specdec.default_target import resolve_target
    from specdec.eos import eos_ids

    path = resolve_target(args.target)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(args.dtype), local_files_only=True).eval()
    if not args.plain_linears:
        from specdec.target.kernel_linears import speed_up_cpu_linears

        speed_up_cpu_linears(model)
    eos = eos_ids(model, tok)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    prompts = first_turn_prompts(tok, args.num_prompts, args.skip, args.max_len)
    budgets = [max(1, min(args.max_new_tokens, args.max_len - len(x))) for x in prompts]
    engines = {"hf": run_hf, "static": run_static, "paged": functools.partial(run_static, page_size=args.page_size)}
    env = env_info("cpu")
    print(f"{env['device']}; flags: {cpu_flags()}; load {os.getloadavg()[0]:.2f}; {len(prompts)} prompts")
    rows, answers = [], {}
    for name in args.engines.split(","):
        got, seconds, forwards = engines[name](model, prompts, budgets, eos, pad_id, args.slots)
        answers[name] = got
        new = sum(len(a) for a in got)
        rows.append(
            dict(
                engine=name,
                dtype=args.dtype,
                threads=args.threads,
                linears="plain" if args.plain_linears else "specdec data's",
                slots=args.slots,
                prompts=len(prompts),
                prompt_tokens=sum(len(x) for x in prompts),
                new_tokens=new,
                seconds=round(seconds, 2),
                tokens_per_s=round(new / seconds, 1),
                forwards=forwards,
                cpu_flags=cpu_flags(),
                load=round(os.getloadavg()[0], 2),
            )
        )
    if "hf" in answers:  # answers identical to hf's and speed relative to hf, per engine
        hf_rate = next(r["tokens_per_s"] for r in rows if r["engine"] == "hf")
        for r in rows:
            same = sum(a == b for a, b in zip(answers["hf"], answers[r["engine"]]))
            r["same_answers"] = f"{same}/{len(prompts)}"
            r["speedup_vs_hf"] = round(r["tokens_per_s"] / hf_rate, 2)
    print_table(rows, [c for c in rows[0] if c not in ("cpu_flags",)])
    path_csv = write_csv(rows, f"data_generation_{args.dtype}_threads{args.threads}", "cpu", out_dir=args.out)
    print("wrote", path_csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
