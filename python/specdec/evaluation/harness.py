"""The measurement loop of `specdec eval` (batch 1, as the EAGLE / FSPAD / GRIFFIN papers measure).

For each head, temperature, benchmark prompt and turn, three decoders run on the same input, one after
the other, in an order that rotates from one measurement to the next (so slow phases of the machine hit
every method alike): the target's own Hugging Face `model.generate`, `generate_baseline` (plain decoding
through our TargetModel) and `generate` (tree speculative decoding with the head). Each is timed wall-clock
around the whole call (prefill included, host-synchronised on CUDA), after a warm-up of all three.

A conversation of several turns (MT-bench) continues with the speculative answer of the previous turn
(decoded to text, special tokens skipped) as the assistant message; at temperature 0 it equals the greedy one.

At temperature 0 each output is compared with model.generate's (see classify_divergence): "match",
"tie" (the first differing position is a near-tie of the target's own top logits) or "mismatch".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..decoding.budget import PLAIN
from ..devices import synchronize
from ..eos import eos_ids

MATCH, TIE, MISMATCH = "match", "tie", "mismatch"
METHODS = ("generate", "baseline", "speculative")


@dataclass
class EvalSettings:
    """What every measurement shares. Tree defaults: the papers' (60 nodes, depth 5, top-k 10)."""

    temperatures: tuple = (0.0, 1.0)
    max_new_tokens: int = 256
    tree_top_k: int = 10
    depth: int = 5
    total_tokens: int = 60
    seed: int = 0
    eos_token_id: Optional[list] = None  # None: specdec.eos.eos_ids of the model and its tokenizer
    backend: Optional[str] = None
    warmup: bool = True
    tie_eps_factor: float = 4.0
    cuda_graph: bool = False  # generate_baseline and generate replay captured passes (CUDA only)


def tie_tolerance(logits: torch.Tensor, factor: float = 4.0, dtype: Optional[torch.dtype] = None) -> float:
    """factor * eps(dtype) * max|logit|: how far two logits of the same value can drift between two
    computations (a cached one-token forward vs a batched tree forward) in `dtype` (default logits')."""
    eps = torch.finfo(dtype or logits.dtype).eps
    return float(factor * eps * logits.abs().max().float())


@torch.no_grad()
def classify_divergence(model, prompt: list, reference: list, output: list, factor: float = 4.0) -> dict:
    """Compare `output` with the `reference` greedy tokens (new tokens of the same prompt).

    Returns {"kind": match | tie | mismatch, "position": first differing index or -1, "gap": top-1 minus
    top-2 logit there, "tol": the tolerance}. At the first differing position p the target (the Hugging Face
    `model`, full forward in its own dtype) scores prompt + reference[:p]; the divergence is a tie when the
    top-2 logits are within tie_tolerance and every token the two sequences chose there (when one ended
    early, its absence counts as nothing) is within tol of the top logit.
    """
    n = min(len(reference), len(output))
    p = next((i for i in range(n) if reference[i] != output[i]), n)
    if p == n and len(reference) == len(output):
        return {"kind": MATCH, "position": -1, "gap": float("nan"), "tol": float("nan")}
    ids = torch.tensor([list(prompt) + list(reference[:p])], dtype=torch.long, device=model.device)
    logits = model(input_ids=ids).logits[0, -1].float()
    dtype = next(model.parameters()).dtype
    tol = tie_tolerance(logits, factor, dtype)
    top = torch.topk(logits, 2).values
    gap = float(top[0] - top[1])
    chosen = [s[p] for s in (reference, output) if p < len(s)]
    near = all(float(top[0] - logits[t]) <= tol for t in chosen)
    kind = TIE if gap <= tol and near else MISMATCH
    return {"kind": kind, "position": p, "gap": gap, "tol": tol}


def chat_ids(tokenizer, messages: list) -> list:
    """Token ids of a conversation through the tokenizer's chat template, with the generation prompt."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def _hf_generate(model, ids: list, temperature: float, max_new: int, eos: list, seed: int) -> list:
    from transformers import GenerationConfig

    x = torch.tensor([ids], dtype=torch.long, device=model.device)
    cfg = GenerationConfig(
        max_new_tokens=max_new,
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_k=0 if temperature > 0 else None,
        top_p=1.0 if temperature > 0 else None,
        eos_token_id=eos or None,
        pad_token_id=(eos[0] if eos else 0),
    )
    if temperature > 0:
        torch.manual_seed(seed)
    out = model.generate(x, attention_mask=torch.ones_like(x), generation_config=cfg)
    new = out[0, len(ids) :].tolist()
    for i, t in enumerate(new):  # model.generate stops at EOS (batch 1: no padding after it)
        if t in eos:
            return new[: i + 1]
    return new


class Harness:
    """Runs the measurements of one target (Hugging Face `model`, tokenizer) against draft heads.

    encode(messages) -> ids (default: the chat template) and decode(ids) -> text (default: the tokenizer's,
    special tokens skipped) can be replaced (tests use raw ids).
    """

    def __init__(
        self,
        model,
        tokenizer,
        settings: EvalSettings,
        encode: Optional[Callable] = None,
        decode: Optional[Callable] = None,
    ):
        from ..target import TargetModel

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.s = settings
        self.target = TargetModel(model, backend=settings.backend)
        self.device = self.target.device
        self.encode = encode or (lambda messages: chat_ids(tokenizer, messages))
        self.decode = decode or (lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
        self.eos = eos_ids(model, tokenizer, given=settings.eos_token_id)
        self.counter = 0  # rotates the order of the three methods
        self.trace = []  # per measured turn: (head, temperature, benchmark, prompt id, turn, messages, ids)

    # -- one measurement --------------------------------------------------------------------------------
    def _run(self, method: str, head, ids: list, temperature: float, seed: int, max_new: int):
        from ..decoding import generate, generate_baseline

        kw = dict(max_new_tokens=max_new, temperature=temperature, eos_token_id=self.eos, backend=self.s.backend)
        kw["cuda_graph"] = self.s.cuda_graph
        gen = torch.Generator(device=self.device).manual_seed(seed)
        if method == "generate":
            return _hf_generate(self.model, ids, temperature, max_new, self.eos, seed)
        if method == "baseline":
            return generate_baseline(self.target, [ids], generator=gen, **kw)
        return generate(
            self.target,
            head,
            [ids],
            generator=gen,
            tree_top_k=self.s.tree_top_k,
            depth=self.s.depth,
            total_tokens=self.s.total_tokens,
            **kw,
        )

    def measure(self, head, ids: list, temperature: float, seed: int, max_new: Optional[int] = None) -> dict:
        """The three methods on one input, in rotating order; {method: (output, seconds)}. With
        total_tokens "auto" the tree budget for the input's context is resolved first, outside the timings."""
        max_new = max_new or self.s.max_new_tokens
        if self.s.total_tokens == "auto":
            # "auto" measures this machine's costs once per context bucket (then reads its cache): do that
            # before the clock starts, so that no measured turn carries a one-time cost
            from ..decoding import budget

            budget.auto_tree(
                self.target,
                head,
                context=budget.context_bucket(len(ids)),
                cuda_graph=self.s.cuda_graph,
                temperature=temperature,
            )
        r = self.counter % len(METHODS)
        self.counter += 1
        out = {}
        for m in METHODS[r:] + METHODS[:r]:
            synchronize(self.device)
            t0 = time.perf_counter()
            res = self._run(m, head, ids, temperature, seed, max_new)
            synchronize(self.device)
            out[m] = (res, time.perf_counter() - t0)
        return out

    def warmup(self, head, ids: list) -> None:
        for t in self.s.temperatures:
            self.measure(head, ids, t, self.s.seed, max_new=min(16, self.s.max_new_tokens))
        self.counter = 0

    # -- the whole run ----------------------------------------------------------------------------------
    def run(
        self,
        heads: dict,
        benches: dict,
        progress: bool = True,
        on_row: Optional[Callable] = None,
        done: Optional[dict] = None,
    ) -> list:
        """Rows (dicts, one per head x temperature x prompt x turn); see report.columns(depth).

        `on_row(row, answer, done, total)` is called after each measured turn (`done` of `total` turns of
        this head and temperature; `answer` the decoded text): the CLI checkpoints it and, without progress
        bars, logs it. `done`: {turn_key(row): (row, answer)} of turns measured before (a resumed run):
        they are taken as they are, their answers continuing the conversation, and not measured again."""
        from tqdm.auto import tqdm

        rows = []
        turns_total = sum(len(p.turns) for ps in benches.values() for p in ps)
        for hname, head in heads.items():
            if self.s.warmup:
                first = next(p for ps in benches.values() for p in ps)
                self.warmup(head, self.encode([{"role": "user", "content": first.turns[0]}]))
            for temp in self.s.temperatures:
                bar = tqdm(
                    total=turns_total, desc=f"{hname} T={temp:g}", unit="turn", disable=not progress, dynamic_ncols=True
                )
                count = 0  # counted here: a disabled tqdm bar does not count
                for bench, prompts in benches.items():
                    for i, p in enumerate(prompts):
                        messages = []
                        for turn, text in enumerate(p.turns):
                            messages.append({"role": "user", "content": text})
                            key = self.key(hname, temp, bench, p.id, turn + 1)
                            if done and key in done:
                                row, answer = done[key]
                                rows.append(row)
                                messages.append({"role": "assistant", "content": answer})
                                bar.update(1)
                                count += 1
                                continue
                            ids = self.encode(messages)
                            self.trace.append((hname, temp, bench, p.id, turn + 1, [dict(m) for m in messages], ids))
                            seed = self.s.seed * 1_000_003 + i * 17 + turn
                            row = self.row(hname, head, bench, p, turn, ids, temp, seed)
                            rows.append(row)
                            answer = row.pop("_answer")
                            messages.append({"role": "assistant", "content": answer})
                            bar.update(1)
                            count += 1
                            bar.set_postfix(tau=f"{row['tau']:.2f}", speedup=f"{row['speedup_generate']:.2f}")
                            if on_row is not None:
                                on_row(row, answer, count, turns_total)
                bar.close()
        return rows

    @staticmethod
    def key(head: str, temperature, benchmark: str, prompt_id, turn) -> tuple:
        """What `run(done=...)` is keyed by, normalised (a checkpointed row comes back through JSON)."""
        return (head, float(temperature), benchmark, str(prompt_id), int(turn))

    @classmethod
    def turn_key(cls, row: dict) -> tuple:
        """The key of a row (see `key`)."""
        return cls.key(row["head"], row["temperature"], row["benchmark"], row["prompt_id"], row["turn"])

    def row(self, hname, head, bench, p, turn, ids, temp, seed) -> dict:
        m = self.measure(head, ids, temp, seed)
        hf, t_hf = m["generate"]
        base, t_base = m["baseline"]
        spec, t_spec = m["speculative"]
        seq = spec.sequences[0]
        acc = spec.accept_lengths[:, 0].tolist() if spec.accept_lengths is not None else []
        tree_acc = [a for a in acc[: spec.plain_after] if a > 0]  # >=k: of the tree passes, not the plain ones
        acc = [a for a in acc if a > 0]
        n_spec, n_hf, n_base = len(seq), len(hf), len(base.sequences[0])
        row = {
            "benchmark": bench,
            "prompt_id": p.id,
            "turn": turn + 1,
            "head": hname,
            "temperature": temp,
            "tree": ("plain" if tuple(spec.tree) == PLAIN else "/".join(map(str, spec.tree))) if spec.tree else "",
            "plain_after": "" if spec.plain_after is None else spec.plain_after,
            "prompt_tokens": len(ids),
            "new_tokens": n_spec,
            "passes": spec.passes,
            "accepted_tokens": sum(acc),
            "tau": spec.tau,
        }
        for k in range(1, self.s.depth + 1):
            row[f"accept_ge_{k}"] = sum(1 for a in tree_acc if a - 1 >= k) / len(tree_acc) if tree_acc else float("nan")
        row.update(
            {
                "generate_tokens": n_hf,
                "baseline_tokens": n_base,
                "time_generate": t_hf,
                "time_baseline": t_base,
                "time_speculative": t_spec,
                "tokens_per_s_generate": n_hf / t_hf,
                "tokens_per_s_baseline": n_base / t_base,
                "tokens_per_s_speculative": n_spec / t_spec,
                "speedup_generate": (n_spec / t_spec) / (n_hf / t_hf) if n_hf else float("nan"),
                "speedup_baseline": (n_spec / t_spec) / (n_base / t_base) if n_base else float("nan"),
                "mismatch": "",
                "mismatch_position": "",
                "mismatch_gap": "",
                "mismatch_tol": "",
                "baseline_mismatch": "",
            }
        )
        if temp == 0:
            c = classify_divergence(self.model, ids, hf, seq, self.s.tie_eps_factor)
            row["mismatch"] = c["kind"]
            if c["kind"] != MATCH:
                row.update(mismatch_position=c["position"], mismatch_gap=c["gap"], mismatch_tol=c["tol"])
            row["baseline_mismatch"] = classify_divergence(
                self.model, ids, hf, base.sequences[0], self.s.tie_eps_factor
            )["kind"]
        row["_answer"] = self.decode(seq)
        return row
