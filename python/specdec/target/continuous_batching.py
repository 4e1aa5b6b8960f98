"""Plain decoding of many prompts at once on TargetModel's static KV cache, with continuous batching.

`generate_many` answers a list of prompts (greedy or sampled) the way a serving engine would, for the data
builder's self-distillation: a fixed number of slots decode one token per forward each; when a slot's
answer ends (an end token or its token budget) the slot takes the next prompt, so no forward is spent on
rows that already finished, which `model.generate` on a padded batch keeps computing until the batch's
longest answer ends. Prompts are taken in order of length, so the prompts prefilled together need little
padding (prefill is batched per refill). With page_size the slots' K/V live on pages that requests take
from a pool and give back (specdec.target.batch_kv), as in a serving engine.

With `features` (a list to fill) the target's features come out too: features[i] holds the hidden state
(final norm output) of every token of prompt i and of its answer, and of `tails[i]` when the answer ended
with an end token (the chat template's text after the end of turn): what the data builder stores, without a
second pass over the finished sequences. The answer's last token and the tail are fed in extra decode
steps of that slot (their picks are ignored and draw nothing from the request's generator); the answers
are the same up to floating-point ties (a slot busy for those steps changes which prompts share a refill's
prefill, whose rows may round differently).

Sampling is per request: request i draws from its own torch.Generator seeded with seeds[i], so an answer
does not depend on which other prompts shared its batch, nor on the number of slots. Greedy answers equal
the target's own greedy decoding up to floating-point ties (rows of a batched matmul may round differently
from a one-row call in bf16).

Example:
    >>> from specdec.demo import tiny_target
    >>> from specdec.target import TargetModel
    >>> from specdec.target.continuous_batching import generate_many
    >>> target = TargetModel(tiny_target(seed=0))
    >>> out = generate_many(target, [[1, 2, 3], [4, 5]], max_new_tokens=4, eos_ids=[], slots=2)
    >>> [len(o) for o in out]
    [4, 4]
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import torch

from specdec_kernels import chain_mask

from .batch_kv import slot_kv
from .model import TargetModel


@dataclass
class DecodeStats:
    """What generate_many did (added to across calls): requests answered, tokens generated, forwards run
    (prefills and decode steps), decode rows computed for idle slots, and seconds."""

    requests: int = 0
    new_tokens: int = 0
    prefills: int = 0
    steps: int = 0
    idle_rows: int = 0
    seconds: float = 0.0


def _budgets(max_new_tokens: Union[int, Sequence[int]], n: int) -> List[int]:
    if isinstance(max_new_tokens, int):
        budgets = [max_new_tokens] * n
    else:
        budgets = [int(b) for b in max_new_tokens]
        if len(budgets) != n:
            raise ValueError(f"max_new_tokens: expected one budget per prompt ({n}), got {len(budgets)}")
    bad = [b for b in budgets if b < 1]
    if bad:
        raise ValueError(f"max_new_tokens: every budget must be >= 1, got {bad[0]}")
    return budgets


def _check_requests(target, prompts, max_new_tokens, slots: int) -> tuple:
    """(budgets, prompt lengths) of generate_many's requests; TypeError / ValueError for bad arguments."""
    if not isinstance(target, TargetModel):
        raise TypeError(f"target: expected a specdec.target.TargetModel, got {type(target).__name__}")
    budgets = _budgets(max_new_tokens, len(prompts))
    lengths = [len(p) for p in prompts]
    if any(ln < 1 for ln in lengths):
        raise ValueError(f"prompts: prompt {lengths.index(min(lengths))} is empty; every prompt needs a token")
    if slots < 1:
        raise ValueError(f"slots: expected >= 1, got {slots}")
    return budgets, lengths


class _Slots:
    """The decoding state of every slot: the request it serves (-1: idle), its last token, what it generated,
    how many tokens it may still generate, and (capturing features, once its answer ended) the tokens it
    has still to feed after the one fed next (None while answering)."""

    def __init__(self, n: int, device: torch.device, pad_id: int):
        self.request = [-1] * n
        self.left = [0] * n
        self.out: List[List[int]] = [[] for _ in range(n)]
        self.closing: List[Optional[List[int]]] = [None] * n
        self.tokens = torch.full((n,), pad_id, dtype=torch.int64, device=device)
        self.live = torch.zeros(n, dtype=torch.int32, device=device)

    def idle(self) -> List[int]:
        return [s for s, r in enumerate(self.request) if r < 0]

    def busy(self) -> bool:
        return any(r >= 0 for r in self.request)

    def select(self, keep: List[int], pad_id: int) -> "_Slots":
        """The state of slots `keep` only, in that order."""
        kept = _Slots(len(keep), self.tokens.device, pad_id)
        kept.request = [self.request[s] for s in keep]
        kept.left = [self.left[s] for s in keep]
        kept.out = [self.out[s] for s in keep]
        kept.closing = [self.closing[s] for s in keep]
        kept.tokens.copy_(self.tokens[torch.tensor(keep, dtype=torch.int64, device=self.tokens.device)])
        return kept


def _check_tails(tails, features, n: int) -> List[List[int]]:
    """One tail (list of token ids) per request; [] each without features. TypeError / ValueError."""
    if features is None:
        if tails is not None:
            raise ValueError("tails: only used with features (the tokens fed after an answer for their features)")
        return [[] for _ in range(n)]
    if not isinstance(features, list):
        raise TypeError(f"features: expected a list to fill, got {type(features).__name__}")
    if tails is None:
        return [[] for _ in range(n)]
    tails = [[int(t) for t in tail] for tail in tails]
    if len(tails) != n:
        raise ValueError(f"tails: expected one list per prompt ({n}), got {len(tails)}")
    return tails


class _Capture:
    """The features generate_many collects per request: a buffer of its prompt + budget + tail rows, filled
    in token order (the prompt's from its prefill, then one row per decode step of its slot)."""

    def __init__(self, features: list, need: List[int], n: int):
        features[:] = [None] * n
        self.features, self.need = features, need
        self.buffers: dict = {}
        self.filled: dict = {}

    def prompts(self, requests: List[int], hidden: torch.Tensor, lengths: List[int]) -> None:
        """Rows 0 .. len(prompt) - 1 of each of `requests` from a prefill's hidden [G, longest, H]."""
        for g, r in enumerate(requests):
            buf = hidden.new_empty(self.need[r], hidden.shape[-1])
            buf[: lengths[r]] = hidden[g, : lengths[r]]
            self.buffers[r], self.filled[r] = buf, lengths[r]

    def row(self, r: int, h: torch.Tensor) -> None:
        """The next row of request r: the hidden state of the token its slot fed in this step."""
        self.buffers[r][self.filled[r]] = h
        self.filled[r] += 1

    def done(self, r: int) -> None:
        self.features[r] = self.buffers.pop(r)[: self.filled.pop(r)].clone()  # not the whole budget's buffer


class _Sampler:
    """Next tokens from logits [n, V]: argmax (temperature 0) or one draw per row from that row's request's
    generator (softmax of logits / temperature, as transformers samples without top-k/top-p)."""

    def __init__(self, temperature: float, seeds: Optional[Sequence[int]], n: int):
        if temperature < 0:
            raise ValueError(f"temperature: expected >= 0, got {temperature}")
        self.temperature = float(temperature)
        self.generators = None
        if self.temperature > 0:
            if seeds is None or len(seeds) != n:
                raise ValueError(f"seeds: sampling needs one seed per prompt ({n})")
            self.generators = [None] * n
            self.seeds = [int(s) for s in seeds]

    def __call__(self, logits: torch.Tensor, requests: Sequence[int]) -> List[int]:
        if self.generators is None:
            return logits.argmax(dim=-1).tolist()
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        picks = []
        for row, r in enumerate(requests):
            if r < 0:
                picks.append(0)
                continue
            if self.generators[r] is None:
                self.generators[r] = torch.Generator(device=probs.device).manual_seed(self.seeds[r])
            picks.append(int(torch.multinomial(probs[row], 1, generator=self.generators[r])))
        return picks


class _Answers:
    """generate_many's bookkeeping as tokens come: a slot's answer grows until an end token or its budget;
    then (capturing features) the slot feeds that token and the tail before the request ends, its tokens
    (and features) handed to `results` and its slot freed."""

    def __init__(self, results, eos, tails, capture, kv, stats: DecodeStats, progress):
        self.results, self.eos, self.tails, self.capture = results, eos, tails, capture
        self.kv, self.stats, self.progress = kv, stats, progress

    def finish(self, state: _Slots, s: int) -> None:
        r = state.request[s]
        self.results[r] = state.out[s]
        state.request[s], state.out[s], state.closing[s] = -1, [], None
        if self.capture is not None:
            self.capture.done(r)
        self.kv.release(s)
        self.stats.requests += 1
        self.stats.new_tokens += len(self.results[r])
        if self.progress is not None:
            self.progress.update(1)

    def take(self, state: _Slots, s: int, token: int) -> None:
        """Slot s generated `token`."""
        state.out[s].append(token)
        state.left[s] -= 1
        if token in self.eos or state.left[s] == 0:
            if self.capture is None:
                self.finish(state, s)
            else:  # feed this token (and the tail) for their features before the slot is freed
                state.closing[s] = list(self.tails[state.request[s]]) if token in self.eos else []

    def advance(self, state: _Slots, s: int, token: int) -> None:
        """After a decode step: slot s's pick `token` taken, or its next tail token set to be fed, or (all fed)
        its request ended."""
        if state.closing[s] is None:
            self.take(state, s, token)
        elif state.closing[s]:
            state.tokens[s] = state.closing[s].pop(0)
        else:
            self.finish(state, s)


def generate_many(
    target: TargetModel,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: Union[int, Sequence[int]],
    eos_ids: Sequence[int],
    temperature: float = 0.0,
    seeds: Optional[Sequence[int]] = None,
    slots: int = 32,
    pad_id: int = 0,
    prefill_chunk: int = 512,
    stats: Optional[DecodeStats] = None,
    progress=None,
    page_size: Optional[int] = None,
    num_pages: Optional[int] = None,
    features: Optional[list] = None,
    tails: Optional[Sequence[Sequence[int]]] = None,
) -> List[List[int]]:
    """The tokens the target generates after each prompt, in the order of `prompts`.

    Args:
        target: the TargetModel (its model's device and dtype are used).
        prompts: token id lists (each at least one token).
        max_new_tokens: the most tokens generated per prompt, one int for all or one per prompt (>= 1).
        eos_ids: end tokens: an answer stops after the first of them (which is included in the answer).
        temperature: 0 = greedy, else sampled from softmax(logits / temperature).
        seeds: one seed per prompt, required when sampling (request i's draws come from its own generator).
        slots: requests decoded together (the batch of each decode forward).
        pad_id: the token fed to idle slots (never seen by a request).
        prefill_chunk: prompt columns per prefill forward (bounds activations of long prompts).
        stats: a DecodeStats to add to; progress: an optional tqdm-like bar advanced once per answer.
        page_size: None keeps each slot's K/V in a row of a contiguous cache (copied in at a refill, copied
            out when shrinking); an int puts it on pages of that many tokens that each request takes from a
            pool when it starts and returns when it ends (specdec.target.batch_kv.PagedSlotKV: no K/V copies,
            paged_tree_attention in every forward). The answers are the same.
        num_pages: the paged pool's size (default: every slot at full length, plus a scratch page); with
            fewer, a request waits in the queue until enough pages are free.
        features: None, or a list that is filled with one tensor per prompt: the target's hidden states
            [len(prompt) + len(answer) (+ len(tails[i]) when the answer ended with an end token), H], in its
            dtype, on its device (the module docstring).
        tails: with features, the tokens fed after an answer that ended with an end token, one list per
            prompt (default: none).

    Returns:
        one list of generated token ids per prompt (at most its budget; ending with an end token when one
        was generated).
    """
    n = len(prompts)
    budgets, lengths = _check_requests(target, prompts, max_new_tokens, slots)
    tails = _check_tails(tails, features, n)
    if features is not None:
        features.clear()
    sampler = _Sampler(temperature, seeds, n)
    stats = stats if stats is not None else DecodeStats()
    results: List[List[int]] = [[] for _ in range(n)]
    if n == 0:
        return results
    t0 = time.perf_counter()
    eos = {int(t) for t in eos_ids}
    dev = target.device
    slots = min(slots, n)
    need = [ln + b + len(t) for ln, b, t in zip(lengths, budgets, tails)]
    capture = _Capture(features, need, n) if features is not None else None
    capacity = max(need)
    kv = slot_kv(target, slots, capacity, page_size, num_pages)
    state = _Slots(slots, dev, pad_id)
    queue = sorted(range(n), key=lambda i: lengths[i])[::-1]  # pop() takes the shortest first
    mask = chain_mask(slots, 1, dev)

    answers = _Answers(results, eos, tails, capture, kv, stats, progress)

    while queue or state.busy():
        idle, group = state.idle(), []
        # Refill once an eighth of the slots wait (or none decode): on a CPU a prefill costs about its
        # tokens' rows whatever the group, so waiting longer would only spend decode rows on idle slots.
        if queue and idle and (len(idle) * 8 >= len(state.request) or not state.busy()):
            while queue and len(group) < len(idle) and kv.admit(idle[len(group)], need[queue[-1]]):
                group.append(queue.pop())
        if group:
            first = kv.prefill([prompts[r] for r in group], idle[: len(group)], pad_id, prefill_chunk)
            stats.prefills += 1
            picks = sampler(first.logits, group)
            if capture is not None:
                capture.prompts(group, first.hidden, lengths)
            for s, r, tok in zip(idle, group, picks):
                state.request[s], state.left[s], state.out[s] = r, budgets[r], []
                state.tokens[s] = tok
                answers.take(state, s, tok)
            continue
        if not queue and 2 * (len(state.request) - len(idle)) <= len(state.request) > 1:
            # The last answers: decode only the busy slots (a smaller cache: their rows copied, or the same
            # pages), instead of spending most of every forward on slots that have nothing left to answer.
            keep = [s for s, r in enumerate(state.request) if r >= 0]
            kv.shrink(keep)
            state = state.select(keep, pad_id)
            mask = chain_mask(len(state.request), 1, dev)
        picks, hidden = _decode_step(target, kv.cache, state, mask, sampler, stats)
        for s, tok in enumerate(picks):
            if state.request[s] >= 0:
                if capture is not None:
                    capture.row(state.request[s], hidden[s, 0])
                answers.advance(state, s, tok)
    stats.seconds += time.perf_counter() - t0
    return results


def _decode_step(target: TargetModel, cache, state: _Slots, mask, sampler: _Sampler, stats: DecodeStats) -> tuple:
    """One forward of every slot's last token; commits it for the busy slots and returns (each slot's next
    token, the hidden states [slots, 1, H] of the tokens fed); idle slots' values are meaningless."""
    requests = list(state.request)
    live = [r >= 0 for r in requests]
    # a slot feeding its answer's last token or tail (features) draws nothing from its request's generator
    picking = [r if c is None else -1 for r, c in zip(requests, state.closing)]
    state.live.copy_(torch.tensor(live, dtype=torch.int32))
    # Idle slots decode a pad token over an empty prefix (cache_len 0): cheap, and never committed.
    cache.cache_len.mul_(state.live)
    pos = cache.cache_len.to(torch.int64)[:, None]
    out = target.forward(state.tokens[:, None], pos, cache, mask)
    cache.cache_len.add_(state.live)
    stats.steps += 1
    stats.idle_rows += live.count(False)
    picks = sampler(out.logits[:, 0], picking)
    state.tokens.copy_(torch.tensor(picks, dtype=torch.int64))
    return picks, out.hidden
