"""Self-distilled responses: the target answers each user turn of a conversation under its chat template.

Turn by turn over a batch of conversations: round r renders, for every conversation that still has a
user turn r, the conversation so far (its own earlier answers included) with the generation prompt,
and the target answers all of them together, greedy or sampled, with one of two engines:
- "static": specdec.target.continuous_batching.generate_many, continuous batching on our static KV cache
  (a slot whose answer ended takes the next prompt; 2.3x the tokens per second of "hf" in bf16 on a
  2-core AVX-512 BF16 CPU, bench/data_generation.py);
- "hf": Hugging Face `generate` over length-sorted, left-padded batches (for models TargetModel does not
  wrap);
"auto" takes "static" where TargetModel accepts the model.
A conversation stops early when its prompt already fills max_len tokens (nothing more would be stored)
or when an answer ends without an end-of-turn token (cut by max_new_tokens: it is kept as an unfinished
last turn, `open_last`, so the draft is not taught an end of turn the target did not produce).

With `features` ("static" only) each Answered also carries the features the target computed while
answering its last round (specdec.target.continuous_batching: the prompt's and every answer token's, and
the chat template's `tail` after an end of turn), with the token ids they belong to: the data builder keeps
them where those ids are the stored sequence, instead of a second pass over it.

Sampling is reproducible, so a resumed build regenerates the same shard: "static" draws each answer from
its own generator seeded from (seed, the caller's batch key, round, conversation), so an answer does not
depend on the batch; "hf" runs each generate call under torch.random.fork_rng seeded from (seed, key,
round, batch start).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch

from ..target import TargetModel
from ..target.continuous_batching import DecodeStats, generate_many
from .chat import TemplateError, render


@dataclass
class Answered:
    """One conversation as the target answered it."""

    messages: List[dict]  # system?/user/assistant..., ending with an assistant message (or empty: nothing fit)
    open_last: bool = False  # the last answer was cut (no end-of-turn token)
    ids: Optional[List[int]] = None  # with features: the tokens the target read in the last round
    hidden: Optional[torch.Tensor] = None  # ... and their features [len(ids), H], bf16 on the CPU (as stored)


@dataclass
class GenStats:
    """Totals of respond's generate calls (added to across calls)."""

    prompts: int = 0  # user turns answered
    new_tokens: int = 0  # tokens generated (padding excluded)
    seconds: float = 0.0
    calls: int = 0  # forwards ("static") or generate calls ("hf")
    engine: str = ""  # the engine that answered
    notes: List[str] = field(default_factory=list)


ENGINES = ("auto", "static", "hf")


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") >> 1


@dataclass
class _Dialogue:
    """A conversation being answered: the messages so far (its own answers), its user turns, the next."""

    out: List[dict]
    users: List[str]
    next: int = 0
    done: bool = False
    open: bool = False  # the last answer was cut
    ids: Optional[List[int]] = None  # the last round's tokens read and their features (respond's features)
    hidden: Optional[torch.Tensor] = None

    def finish(self, progress) -> None:
        """No more turns: the bar counts the unanswered ones as done."""
        if not self.done and progress is not None:
            progress.update(len(self.users) - self.next)
        self.done = True


def respond(
    model,
    tokenizer,
    conversations: Sequence[Sequence[dict]],
    *,
    eos_ids: Sequence[int],
    max_new_tokens: int = 256,
    max_len: int = 2048,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 8,
    key=0,
    pad_id: Optional[int] = None,
    stats: Optional[GenStats] = None,
    progress=None,
    engine: str = "auto",
    features: bool = False,
    tail: Sequence[int] = (),
) -> List[Answered]:
    """The conversations with every assistant message replaced by the target's own answer.

    conversations: normalised message lists (see sharegpt.normalize); their assistant messages are
    ignored, their user turns answered in order. Returns one Answered per conversation (messages empty
    when not even the first prompt fits in max_len). `progress`: an optional tqdm-like bar advanced by the
    number of user turns answered. `engine`: "auto", "static" or "hf" (module docstring); batch_size is
    the number of slots of "static" and the batch of "hf". `features`: also capture the target's features
    ("static"; ignored by "hf"), `tail` fed after each answer that ended with an end token (module docstring).
    """
    stats = stats if stats is not None else GenStats()
    target = _static_target(model, engine)
    stats.engine = "hf" if target is None else "static"
    eos = [int(i) for i in eos_ids]
    if pad_id is None:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    dialogues = []
    for conv in conversations:
        users = [m["content"] for m in conv if m["role"] == "user"]
        dialogues.append(_Dialogue([m for m in conv if m["role"] == "system"][:1], users, done=not users))
    rnd = 0
    while True:
        active = _prompts(tokenizer, dialogues, max_len, progress)
        if not active:
            break
        active.sort(key=lambda a: a[0])
        feats = [] if features and target is not None else None
        if target is not None:
            new = _answer_static(
                target, active, max_new_tokens, max_len, eos, temperature, seed, (key, rnd), batch_size, pad_id, stats,
                feats, tail,
            )  # fmt: skip
        else:
            new = _answer_hf(
                model, active, max_new_tokens, max_len, eos, temperature, seed, (key, rnd), batch_size, pad_id, stats
            )
        for k, ((n, i, ids, msgs), gen) in enumerate(zip(active, new)):
            _take_answer(tokenizer, dialogues[i], n, msgs, gen, eos, max_len, stats, progress)
            if feats is not None:
                ended = bool(gen) and gen[-1] in eos
                # to the CPU in bf16 now, as stored: a shard's worth on a GPU would hold many GB
                hidden = feats[k].to("cpu", torch.bfloat16)
                dialogues[i].ids, dialogues[i].hidden = ids + gen + (list(tail) if ended else []), hidden
        rnd += 1
    result = []
    for d in dialogues:
        msgs = d.out
        if not msgs or msgs[-1]["role"] != "assistant":
            msgs = []
        result.append(Answered(msgs, d.open, d.ids if msgs else None, d.hidden if msgs else None))
    return result


def _static_target(model, engine: str) -> Optional[TargetModel]:
    """The TargetModel that answers with engine "static" (or "auto" where it wraps the model); None: "hf"."""
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {ENGINES}, got {engine!r}")
    if engine == "hf":
        return None
    try:
        return TargetModel(model)
    except (TypeError, ValueError):
        if engine == "static":
            raise
        return None


def _prompts(tokenizer, dialogues: List[_Dialogue], max_len: int, progress) -> list:
    """(prompt length, dialogue index, prompt ids, messages) of every dialogue with a user turn left whose
    prompt (the conversation so far, the turn, the generation prompt) leaves room for an answer; the
    others are finished."""
    active = []
    for i, d in enumerate(dialogues):
        if d.done or d.next >= len(d.users):
            d.finish(progress)
            continue
        msgs = d.out + [{"role": "user", "content": d.users[d.next]}]
        try:
            text = render(tokenizer, msgs, add_generation_prompt=True)
        except TemplateError:
            d.finish(progress)
            continue
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= max_len:  # no room for an answer
            d.finish(progress)
            continue
        active.append((len(ids), i, ids, msgs))
    return active


def _answer_static(
    target, active, max_new_tokens, max_len, eos, temperature, seed, key, slots, pad_id, stats, feats=None, tail=()
):
    """The answers to `active`'s prompts (sorted by length) by continuous batching, each within
    min(max_new_tokens, max_len - its length) tokens and sampled from its own seed; `feats`: a list filled
    with their features (generate_many's features, `tail` after an end token)."""
    dstats = DecodeStats()
    new = generate_many(
        target,
        [ids for _, _, ids, _ in active],
        max_new_tokens=[max(1, min(max_new_tokens, max_len - n)) for n, _, _, _ in active],
        eos_ids=eos,
        temperature=temperature,
        seeds=[_seed(seed, *key, i) for _, i, _, _ in active],
        slots=slots,
        pad_id=pad_id,
        stats=dstats,
        features=feats,
        tails=None if feats is None else [list(tail)] * len(active),
    )
    stats.seconds += dstats.seconds
    stats.calls += dstats.prefills + dstats.steps
    return new


def _answer_hf(model, active, max_new_tokens, max_len, eos, temperature, seed, key, batch_size, pad_id, stats):
    """The answers to `active`'s prompts (sorted by length) by `generate` over batches of batch_size, each
    batch within min(max_new_tokens, max_len - its shortest prompt) tokens, sampled under one seed per batch."""
    new = []
    for b0 in range(0, len(active), batch_size):
        batch = active[b0 : b0 + batch_size]
        budget = max(1, min(max_new_tokens, max_len - batch[0][0]))
        prompts = [ids for _, _, ids, _ in batch]
        new += _generate(model, prompts, budget, pad_id, eos, temperature, _seed(seed, *key, b0), stats)
    return new


def _generate(
    model, prompts: list, budget: int, pad_id: int, eos: list, temperature: float, seed: int, stats: GenStats
) -> list:
    """The tokens the target generates after each prompt (left-padded into one batch; prompts sorted by
    length, the longest last), at most `budget` each, sampled under `seed` when temperature > 0."""
    device = next(model.parameters()).device
    longest = len(prompts[-1])
    inp = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    att = torch.zeros((len(prompts), longest), dtype=torch.long)
    for r, ids in enumerate(prompts):
        inp[r, longest - len(ids) :] = torch.tensor(ids)
        att[r, longest - len(ids) :] = 1
    kw = dict(max_new_tokens=budget, pad_token_id=pad_id, eos_token_id=eos or None)
    if temperature > 0:
        kw.update(do_sample=True, temperature=float(temperature), top_k=None, top_p=None)
    else:
        kw.update(do_sample=False, temperature=None, top_k=None, top_p=None)
    t0 = time.perf_counter()
    devices = [device] if device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = model.generate(input_ids=inp.to(device), attention_mask=att.to(device), **kw)
    stats.seconds += time.perf_counter() - t0
    stats.calls += 1
    return out[:, longest:].tolist()


def _take_answer(tokenizer, d: _Dialogue, n: int, msgs: list, gen: list, eos: list, max_len: int, stats, progress):
    """Append the answer `gen` (cut at its first end-of-turn token) to the dialogue whose prompt `msgs` was
    n tokens long; the dialogue ends when the answer was cut or no room for another turn is left."""
    cut = len(gen)
    for t, tok in enumerate(gen):
        if tok in eos:
            cut = t
            break
    finished = cut < len(gen)
    gen = gen[:cut]
    stats.new_tokens += cut + (1 if finished else 0)
    stats.prompts += 1
    text = tokenizer.decode(gen, skip_special_tokens=True)
    d.out = msgs + [{"role": "assistant", "content": text}]
    d.next += 1
    if progress is not None:
        progress.update(1)
    if not finished or n + cut + 1 >= max_len:
        d.finish(progress)
        d.open = not finished
