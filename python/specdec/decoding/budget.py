"""Hardware-aware tree budget: pick the EAGLE-2 tree (N, depth, top_k) that maximises tokens per second.

Two ingredients (the idea behind Sequoia's hardware-aware trees and EAGLE-2's per-hardware settings):

1. The target's verify cost against the tree size N, measured once per model, device, dtype, thread count
   and context (`measure_verify_cost`, cached in $SPECDEC_HOME/verify_cost.json). On a CPU the curve is
   far from flat (fp32: one extra row costs 1.5x), on a GPU it is nearly flat up to a few dozen nodes.

2. The expected tokens per pass of a tree, from the head's measured acceptance per depth d, one entry
   per depth, each either
   - the top-k coverage c_d = [c_d(1), ..., c_d(R)] (cov_k of specdec.training.validation: the
     probability that the target's token is among the draft's r best at depth d, given that depths < d
     were accepted); the rank-r child is then accepted with probability
         p_{d,r} = c_d(r) - c_d(r - 1)        (c_d(0) = 0; p_{d,r} = 0 beyond the measured R), or
   - a top-1 rate a_d alone (acc_k; heads validated before coverage was recorded, DEFAULT_ACCEPTANCE),
     with the geometric rank model
         p_{d,r} = a_d * (1 - a_d)^(r - 1)
     (each lower-ranked sibling catches the fraction a_d of what the higher ranks missed). Measured
     coverage is far below it for the lower ranks: for a head with a_1 = 0.49 the model says top-4
     coverage 0.93, which made "auto" expect tau 2.66 where MT-bench gave 1.86; prefer coverage.
   Depths beyond the given entries reuse the last. The model (`expected_tokens`):
   - node value: a node's probability of lying on the accepted path is the product of p_{d,r} along its
     path from the root (root = 1).
   - tree shape: exactly what TreeDrafter.draft builds, with node values in place of draft scores:
     level 1 = the k children of the root; level l + 1 = the k children of each of the k best nodes of
     level l; the tree is the root plus the N - 1 best of all candidates (ancestor-closed because a
     child's value never exceeds its parent's).
   - expected tokens per pass = 1 (the bonus / correction token) + the sum of the tree nodes' values
     (EAGLE-2's and Sequoia's expected accepted length under independent per-node acceptance).

   That is greedy verification's (temperature 0). Sampling verification accepts a node's rank-r child with
   the target's probability of its token, so at T > 0 the model reads the sampled coverage scov_d (the
   target mass at T = 1 that the draft's r best hold, specdec.training.validation) where the head records
   it, mixed with the greedy one for 0 < T < 1 (acceptance_of). Measured on the default target: well
   below the greedy coverage (a chatty target spreads its mass at T = 1), which is why trees that pay at
   T = 0 can lose at T = 1.

`choose_tree` then maximises expected_tokens(N, depth, k) / (draft_time(N, depth, k) + verify_time(N)) over
a grid of candidates. Verify times between measured N are interpolated linearly (extrapolated from the
last two points). `auto_tree` also weighs plain decoding (one token per one-row pass, no drafting) and
returns PLAIN = (1, 0, 0) when no tree is expected to beat it: where a head accepts too little for its cost,
or where one more row costs as much as a whole step (fp32 on one CPU core: verify_cost(4) ~ 2 x
verify_cost(1)), "auto" decodes plainly rather than slowly, and says so in GenerationResult.tree.

The acceptance model can still be wrong for the prompts at hand (a benchmark off the validation data's
distribution; sampling from a chatty target, whose sampled contexts are further from the greedy answers the
heads were trained and validated on: on MT-bench at T = 1 the shipped GRIFFIN head accepted at least one
token in 26% of the passes of a 2-wide tree where the validation's sampled coverage says 53%). So generate's
"auto" also watches what the tree realises: every few passes it compares the tokens per pass realised so far
(over the batch's running requests) with break_even_tau, and decodes the rest plainly when the tree does not
pay (GenerationResult.plain_after). The break-even comes from costs measured at batch 1, where a large batch
makes the tree's verification relatively dearer: for batches it errs towards keeping the tree.

Example:
    >>> cost = {1: 0.020, 8: 0.021, 16: 0.022, 32: 0.024, 64: 0.028}        # flat (GPU-like)
    >>> N, depth, k, tps = choose_tree(cost, lambda N, d, k: 0.002 * d, [0.8] * 6)
    >>> N >= 32
    True
"""

from __future__ import annotations

import functools
import heapq
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

import torch

from ..devices import synchronize
from ..files import read_json_store, specdec_home, store_json_entry
from .cost_keys import head_cost_key, target_cost_key

# Acceptance rates used when a head carries no validation summary: roughly what a trained EAGLE-style
# head reaches on chat data per depth (EAGLE-2's reported ~0.75 top-1 acceptance decaying with depth).
DEFAULT_ACCEPTANCE = (0.7, 0.65, 0.6, 0.55, 0.5, 0.5)

# What auto_tree returns when plain decoding is expected to be fastest: one node, no drafting.
PLAIN = (1, 0, 0)

# The default (N, depth, top_k) grid of choose_tree.
DEFAULT_NS = (4, 8, 12, 16, 24, 32, 48, 60)
DEFAULT_DEPTHS = (2, 3, 4, 5, 6)
DEFAULT_TOP_KS = (2, 4, 6, 8, 10)


def default_candidates() -> list:
    """The default grid of (N, depth, top_k) candidates (every combination of DEFAULT_NS/DEPTHS/TOP_KS that
    drafts at least N - 1 candidates)."""
    from .drafting import num_candidates

    return [
        (n, d, k) for n in DEFAULT_NS for d in DEFAULT_DEPTHS for k in DEFAULT_TOP_KS if num_candidates(k, d) + 1 >= n
    ]


# -- expected tokens per pass -------------------------------------------------------------------------


def rank_probs(entry, k: int) -> list:
    """[p_1, ..., p_k]: the probability that the target's token is the draft's rank-r child at one depth,
    from that depth's acceptance entry: a top-k coverage list (cumulative, non-decreasing in [0, 1]) or a
    top-1 rate (geometric rank model); see the module docstring.

    >>> [round(p, 3) for p in rank_probs(0.5, 3)]
    [0.5, 0.25, 0.125]
    >>> [round(p, 3) for p in rank_probs([0.5, 0.6, 0.65], 4)]
    [0.5, 0.1, 0.05, 0.0]
    """
    if isinstance(entry, (int, float)):
        a = float(entry)
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"acceptance: rates must lie in [0, 1], got {a}")
        return [a * (1 - a) ** r for r in range(k)]
    cov = [float(c) for c in entry]
    if not cov:
        raise ValueError("acceptance: a coverage list needs at least one value")
    if not all(0.0 <= c <= 1.0 for c in cov) or any(b < a for a, b in zip(cov, cov[1:])):
        raise ValueError(f"acceptance: coverage must be non-decreasing values in [0, 1], got {cov}")
    probs = [b - a for a, b in zip([0.0] + cov, cov)]
    return (probs + [0.0] * k)[:k]


def _entry(acceptance: Sequence, depth: int):
    return acceptance[min(depth, len(acceptance)) - 1]


def expected_tokens(N: int, depth: int, top_k: int, acceptance: Sequence[float]) -> float:
    """Expected tokens per pass (bonus included) of an EAGLE-2 tree of N nodes (root included), `depth`
    levels and `top_k` children per expanded node, under per-depth acceptance: one entry per depth, a
    top-k coverage list or a top-1 rate (module docstring, rank_probs).

    >>> expected_tokens(1, 6, 10, [0.9])            # the root alone: only the bonus token
    1.0
    >>> round(expected_tokens(3, 2, 1, [0.5]), 3)   # a chain of 2: 1 + 0.5 + 0.25
    1.75
    >>> round(expected_tokens(3, 1, 2, [[0.5, 0.6]]), 3)   # two children of the root: 1 + 0.5 + 0.1
    1.6
    """
    if N < 1 or depth < 1 or top_k < 1:
        raise ValueError(f"expected_tokens: need N, depth, top_k >= 1, got {(N, depth, top_k)}")
    if not acceptance:
        raise ValueError("acceptance: expected at least one rate")
    k = top_k
    frontier = rank_probs(_entry(acceptance, 1), k)
    cand = list(frontier)
    for level in range(2, depth + 1):
        ranks = rank_probs(_entry(acceptance, level), k)
        parents = heapq.nlargest(k, frontier)
        children = [v * p for v in parents for p in ranks]
        cand.extend(children)
        frontier = children
    best = heapq.nlargest(N - 1, cand)
    return 1.0 + float(sum(best))


def _freeze(acceptance):
    """A hashable copy of per-depth acceptance entries (tuples of floats), or None when it has none."""
    try:
        return tuple(float(e) if isinstance(e, (int, float)) else tuple(float(c) for c in e) for e in acceptance)
    except TypeError:
        return None


@functools.lru_cache(maxsize=4096)
def _expected_memo(N: int, depth: int, top_k: int, acceptance: tuple) -> float:
    # choose_tree scores ~165 candidates per call, and "auto" calls it once per generate() call: the
    # expected tokens of a head's fixed acceptance are computed once per process (about 10 ms per call saved)
    return expected_tokens(N, depth, top_k, acceptance)


# -- cost curves --------------------------------------------------------------------------------------


def interpolate_cost(cost: Dict[int, float], N: int) -> float:
    """cost[N] for a measured N, else linear interpolation between the neighbours; below the measured range
    the smallest N's cost, above it linear extrapolation from the last two points (never below the last).

    >>> c = {8: 1.0, 16: 2.0}
    >>> interpolate_cost(c, 12), interpolate_cost(c, 4), interpolate_cost(c, 24)
    (1.5, 1.0, 3.0)
    """
    if not cost:
        raise ValueError("verify_cost: empty")
    pts = sorted((int(n), float(t)) for n, t in cost.items())
    if N in cost:
        return float(cost[N])
    if len(pts) == 1 or N <= pts[0][0]:
        return pts[0][1]
    if N >= pts[-1][0]:
        (n0, t0), (n1, t1) = pts[-2], pts[-1]
        return max(t1, t1 + (t1 - t0) * (N - n1) / (n1 - n0))
    i = next(j for j in range(1, len(pts)) if pts[j][0] >= N)
    (n0, t0), (n1, t1) = pts[i - 1], pts[i]
    return t0 + (t1 - t0) * (N - n0) / (n1 - n0)


def _draft_time(draft_cost, N: int, depth: int, top_k: int) -> float:
    if draft_cost is None:
        return 0.0
    if callable(draft_cost):
        return float(draft_cost(N, depth, top_k))
    if isinstance(draft_cost, dict):
        for key in ((N, depth, top_k), (depth, top_k), depth):
            if key in draft_cost:
                return float(draft_cost[key])
        raise KeyError(f"draft_cost: no entry for (N, depth, top_k) = {(N, depth, top_k)}, (depth, top_k) or depth")
    return float(draft_cost)


def choose_tree(
    verify_cost: Dict[int, float],
    draft_cost: Union[Callable[[int, int, int], float], dict, float, None],
    acceptance: Sequence[float],
    candidates: Optional[Iterable[Tuple[int, int, int]]] = None,
) -> Tuple[int, int, int, float]:
    """The (N, depth, top_k) of `candidates` that maximises expected tokens per second.

    Args:
        verify_cost: {N: seconds of one target verification of N nodes} (interpolate_cost between points).
        draft_cost: seconds of drafting one tree: a callable (N, depth, top_k) -> s, a dict keyed by
            (N, depth, top_k), (depth, top_k) or depth, a constant, or None (free drafting).
        acceptance: per-depth acceptance entries, top-k coverage lists or top-1 rates (expected_tokens).
        candidates: (N, depth, top_k) triples; default default_candidates().

    Returns:
        (N, depth, top_k, expected tokens per second). Ties go to the smaller tree (fewer nodes, then
        shallower, then narrower), so acceptance 0 picks the smallest candidate.
    """
    cands = sorted(set(default_candidates() if candidates is None else (tuple(map(int, c)) for c in candidates)))
    if not cands:
        raise ValueError("candidates: empty")
    frozen = _freeze(acceptance)
    best = None
    for N, depth, k in cands:
        t = _draft_time(draft_cost, N, depth, k) + interpolate_cost(verify_cost, N)
        if t <= 0:
            raise ValueError(f"cost of (N, depth, top_k) = {(N, depth, k)} is {t} s; expected > 0")
        if frozen is not None:
            tps = _expected_memo(N, depth, k, frozen) / t
        else:
            tps = expected_tokens(N, depth, k, acceptance) / t
        if best is None or tps > best[3] * (1 + 1e-9):
            best = (N, depth, k, tps)
    return best


# -- acceptance rates of a head -----------------------------------------------------------------------


def acceptance_of(row: dict, temperature: float = 0.0) -> Optional[list]:
    """The per-depth acceptance entries of one validation result (specdec.training.validation.summarize):
    depth d's top-k coverage list cov_d where recorded, else its top-1 rate acc_d; None if it has none.
    Stops at the first depth without data (nan or None).

    temperature > 0 (sampling verification): where the row holds the sampled coverage scov_d (measured at
    its "sampled_temperature", 1.0), the entries are (1 - w) cov_d + w scov_d with w = min(1, temperature /
    that temperature), a linear guess between the two measured ends; rows without scov_d give the greedy
    entries (an optimistic model for sampling on chatty targets).

    >>> acceptance_of({"acc_1": 0.5, "cov_1": [0.5, 0.6], "acc_2": 0.4, "acc_3": float("nan")})
    [[0.5, 0.6], 0.4]
    >>> acceptance_of({"acc_1": 0.5, "cov_1": [0.5, 0.7], "scov_1": [0.3, 0.5], "sampled_temperature": 1.0}, 1.0)
    [[0.3, 0.5]]
    """
    if temperature < 0:
        raise ValueError(f"temperature: expected >= 0, got {temperature}")
    w = 0.0
    if temperature > 0 and row.get("scov_1"):
        w = min(1.0, temperature / float(row.get("sampled_temperature") or 1.0))
    out = []
    k = 1
    while f"acc_{k}" in row:
        a, cov, scov = row[f"acc_{k}"], row.get(f"cov_{k}"), row.get(f"scov_{k}")
        if a is None or not (0.0 <= float(a) <= 1.0):  # nan: no data at that depth
            break
        entry = [float(c) for c in cov] if cov else float(a)
        if w > 0 and scov:
            greedy = entry if cov else [float(a)] * len(scov)
            entry = [(1.0 - w) * g + w * float(c) for g, c in zip(greedy, scov)]
        out.append(entry)
        k += 1
    return out or None


def head_acceptance(head, temperature: float = 0.0) -> Optional[list]:
    """Per-depth acceptance entries (acceptance_of at `temperature`) of a head: from `specdec validate
    --write` (in config.extra["specdec_validation"]["result"]) if it was run, else from the last validation
    row of the head's last `specdec train` stage (config.extra["specdec_training"]["result"]); None if
    neither."""
    cfg = getattr(head, "config", None)
    extra = getattr(cfg, "extra", None) or {}
    measured = (extra.get("specdec_validation") or {}).get("result")
    if measured:
        got = acceptance_of(measured, temperature)
        if got:
            return got
    res = (extra.get("specdec_training") or {}).get("result") or {}
    rows = res.get("validation") or []
    return acceptance_of(rows[-1], temperature) if rows else None


# -- measuring the verify cost ------------------------------------------------------------------------


def cache_path() -> Path:
    """$SPECDEC_HOME/verify_cost.json (default ~/.cache/specdec)."""
    return specdec_home() / "verify_cost.json"


def context_bucket(tokens: int) -> int:
    """The context length the costs are measured at for a prompt of `tokens`: the next power of two, at
    least 256. Costs change slowly with the context, and one measurement per bucket (not per prompt
    length) keeps "auto" from re-measuring for every new prompt.

    Example:
        >>> [context_bucket(n) for n in (1, 256, 257, 1500)]
        [256, 256, 512, 2048]
    """
    return 1 << max(8, (max(1, int(tokens)) - 1).bit_length())


def _median_times(calls: dict, dev, warmup: int, repeats: int, cuda_graph: bool = False) -> dict:
    """{key: median seconds of calls[key]() over `repeats` calls after `warmup`}, the calls interleaved round by
    round, so that a slow stretch of a shared machine falls on every key alike (the budget reads ratios of
    them) instead of on whichever key it was timing. cuda_graph: of replays of each call captured as a CUDA
    graph (after one eager call), the way generate(cuda_graph=True) runs its passes."""
    if cuda_graph:
        from . import cuda_graphs  # the decode loop's own warm-up and capture

        for fn in calls.values():
            cuda_graphs.warmup_pass(fn, dev)
        calls = {key: cuda_graphs.capture_pass(fn, dev, None) for key, fn in calls.items()}
    times: dict = {key: [] for key in calls}
    for i in range(warmup + repeats):
        for key, call in calls.items():
            synchronize(dev)
            t0 = time.perf_counter()
            call()
            synchronize(dev)
            if i >= warmup:
                times[key].append(time.perf_counter() - t0)
    return {key: sorted(t)[len(t) // 2] for key, t in times.items()}


@torch.no_grad()
def time_verify(
    target,
    Ns: Sequence[int],
    context: int = 300,
    repeats: int = 5,
    warmup: int = 1,
    seed: int = 0,
    cuda_graph: bool = False,
) -> dict:
    """{N: median seconds of target.verify on a chain of N nodes after a `context`-token prefill} (batch 1,
    uncached; the target's own device and dtype). The tree's shape hardly matters: the cost is the N rows.
    cuda_graph: time replays of a captured verify (what a pass costs under generate(cuda_graph=True))."""
    import specdec_kernels

    dev = target.device
    g = torch.Generator().manual_seed(seed)
    V = target.vocab_size
    ids = torch.randint(0, V, (1, context), generator=g).to(dev)
    cache = target.new_cache(1, context + max(Ns) + 1)
    target.prefill(ids, torch.tensor([context], dtype=torch.int32, device=dev), cache)
    calls = {}
    for N in Ns:
        parents = torch.arange(-1, N - 1, dtype=torch.int32, device=dev)[None]
        tree = specdec_kernels.build_tree(parents)
        tokens = torch.randint(0, V, (1, N), generator=g).to(dev)
        calls[int(N)] = lambda tokens=tokens, tree=tree: target.verify(tokens, tree, cache)
    return _median_times(calls, dev, warmup, repeats, cuda_graph)


def measure_verify_cost(
    model,
    Ns: Sequence[int] = (1, 4, 8, 16, 32, 64),
    dtype: Optional[torch.dtype] = None,
    device=None,
    context: int = 300,
    *,
    repeats: int = 5,
    use_cache: bool = True,
    refresh: bool = False,
    cuda_graph: bool = False,
) -> Dict[int, float]:
    """{N: seconds of one target verification of N nodes} at batch 1 after `context` committed tokens.

    model: a specdec.target.TargetModel or a Hugging Face causal LM. dtype/device default to the model's;
    if they differ, a copy of the model is moved there for the measurement. Results are cached in
    cache_path() under (model name, config hash, device, dtype, threads, context, graphs); only the Ns
    missing from the cache are measured (refresh=True measures all again; use_cache=False neither reads nor
    writes). cuda_graph: the cost of a replayed captured verification (another cost curve).
    """
    from ..target import TargetModel

    target = model if isinstance(model, TargetModel) else TargetModel(model)
    hf = target.model
    dtype = dtype or target.dtype
    device = torch.device(device) if device is not None else target.device
    key = target_cost_key(hf, dtype, device, context, target.lean) + ("|cuda_graph" if cuda_graph else "")

    def measure(missing: list) -> dict:
        timed = target
        if dtype != target.dtype or device != target.device:
            import copy

            moved = copy.deepcopy(hf).to(device=device, dtype=dtype)
            timed = TargetModel(moved, backend=target.backend, lean=target.lean)
        return time_verify(timed, missing, context=context, repeats=repeats, cuda_graph=cuda_graph)

    return _cached(key, Ns, measure, use_cache, refresh=refresh)


# -- measuring the draft cost -------------------------------------------------------------------------


@torch.no_grad()
def time_draft_level(
    head,
    ks: Sequence[int],
    context: int = 300,
    repeats: int = 5,
    warmup: int = 1,
    seed: int = 0,
    cuda_graph: bool = False,
):
    """{k: median seconds of one tree level of the draft: the head over k frontier nodes + log-softmax +
    top-k} after `context` committed pairs (batch 1; the head must be bound to its target). cuda_graph: of
    replays of the level captured as a CUDA graph."""
    from specdec_kernels import chain_mask, pack_bits

    dev, H = head.device, head.config.hidden_size
    g = torch.Generator().manual_seed(seed)
    V = head.config.vocab_size
    cache = head.new_cache(1, context + max(ks) + 1)
    cache_len = torch.zeros(1, dtype=torch.int32, device=dev)
    feats = torch.randn(1, context, H, generator=g).to(dev, head.dtype)
    toks = torch.randint(0, V, (1, context), generator=g).to(dev)
    pos = torch.arange(context, device=dev)[None]
    head(feats, toks, pos, cache, cache_len, chain_mask(1, context, dev), return_logits=False)
    cache_len.fill_(context)
    calls = {}
    for k in ks:
        x = torch.randn(1, k, H, generator=g).to(dev, head.dtype)
        t = torch.randint(0, V, (1, k), generator=g).to(dev)
        p = torch.full((1, k), context, dtype=torch.int64, device=dev)
        mask = pack_bits(torch.eye(k, dtype=torch.bool, device=dev)[None])

        def level(x=x, t=t, p=p, mask=mask, k=k):
            o = head(x, t, p, cache, cache_len, mask)
            torch.topk(torch.log_softmax(o.logits.float(), dim=-1), k, dim=-1)

        calls[int(k)] = level
    return _median_times(calls, dev, warmup, repeats, cuda_graph)


def _cached(
    key: str, wanted: Sequence[int], measure: Callable[[list], dict], use_cache: bool, refresh: bool = False
) -> dict:
    """{n: cost} for `wanted`, from the JSON cache under `key`; measure(missing) fills (and stores) the rest.
    refresh: ignore what is cached (measure all, store the result); use_cache=False: neither read nor write."""
    store = read_json_store(cache_path()) if use_cache else {}
    cached = store.get(key)
    entry = {} if refresh or not isinstance(cached, dict) else {int(n): float(t) for n, t in cached.items()}
    missing = [int(n) for n in wanted if int(n) not in entry]
    if missing:
        entry.update(measure(missing))
        if use_cache:
            store_json_entry(cache_path(), key, {str(n): t for n, t in sorted(entry.items())})
    return {int(n): entry[int(n)] for n in wanted}


def measure_draft_cost(
    head, target, ks: Sequence[int] = DEFAULT_TOP_KS, context: int = 300, *, use_cache=True, cuda_graph=False
):
    """{k: seconds of one draft tree level with k frontier nodes} for `head` bound to `target` (a
    TargetModel), cached in cache_path() beside the verify costs (key: head config hash + the target's key);
    cuda_graph: of a replayed captured level."""
    key = head_cost_key(head, target_cost_key(target.model, head.dtype, head.device, context, target.lean))
    key += "|cuda_graph" if cuda_graph else ""
    head.bind_target(target.embed_tokens, target.lm_head)
    return _cached(key, ks, lambda m: time_draft_level(head, m, context=context, cuda_graph=cuda_graph), use_cache)


def draft_cost_model(level_cost: Dict[int, float]) -> Callable[[int, int, int], float]:
    """draft_cost(N, depth, k) = depth * level_cost[k]: the root's top-k plus depth - 1 head levels, and the
    extension after verification (one more head call), each about one level (rerank and selection are small)."""

    def cost(N: int, depth: int, k: int) -> float:
        return depth * interpolate_cost(level_cost, k)

    return cost


def break_even_tau(
    target,
    head,
    N: int,
    depth: int,
    top_k: int,
    context: int = 300,
    *,
    cuda_graph: bool = False,
    use_cache: bool = True,
) -> float:
    """Tokens per pass at which a tree (N, depth, top_k) only matches plain decoding on this machine:
    (draft time + verify time of N nodes) / verify time of one node, from the same measured (cached) cost
    curves as auto_tree (measured at batch 1). generate's "auto" switches to plain decoding when the tokens per
    pass realised so far fall below this (specdec.decoding.generate)."""
    ctx = max(128, -(-int(context) // 128) * 128)
    verify = measure_verify_cost(target, sorted({1, int(N)}), context=ctx, use_cache=use_cache, cuda_graph=cuda_graph)
    level = measure_draft_cost(head, target, [int(top_k)], context=ctx, use_cache=use_cache, cuda_graph=cuda_graph)
    pass_time = draft_cost_model(level)(N, depth, top_k) + interpolate_cost(verify, N)
    return pass_time / interpolate_cost(verify, 1)


def auto_tree(
    target,
    head,
    context: int = 300,
    acceptance: Optional[Sequence[float]] = None,
    candidates: Optional[Iterable[Tuple[int, int, int]]] = None,
    *,
    use_cache: bool = True,
    allow_plain: bool = True,
    cuda_graph: bool = False,
    temperature: float = 0.0,
) -> Tuple[int, int, int, float]:
    """(N, depth, top_k, expected tokens/s) for `head` drafting for `target` (a TargetModel) on this machine.

    Verify costs (measure_verify_cost at the candidates' N) and draft level costs (measure_draft_cost at
    their top-k) are measured once and cached; acceptance defaults to head_acceptance(head, temperature)
    (the head's measured coverage: greedy at temperature 0, sampled at temperature > 0 where recorded),
    else DEFAULT_ACCEPTANCE. `context`: committed tokens of the
    measurement (rounded up to a multiple of 128 so nearby prompt lengths share one cache entry). Costs are
    measured at batch 1: for large batches the verify curve is steeper and the choice optimistic.

    allow_plain: when plain decoding (1 / verify_cost(1) tokens/s) is expected to be at least as fast as the
    best candidate, return (*PLAIN, that rate) instead; False always returns a candidate (to measure or
    test speculative decoding itself).

    cuda_graph: plan with the costs of replayed CUDA graphs (generate(cuda_graph=True)): measured that way,
    cached apart from the eager ones."""
    cands = sorted(set(default_candidates() if candidates is None else (tuple(map(int, c)) for c in candidates)))
    ctx = max(128, -(-int(context) // 128) * 128)
    Ns = sorted({1} | {c[0] for c in cands})
    ks = sorted({c[2] for c in cands})
    verify = measure_verify_cost(target, Ns, context=ctx, use_cache=use_cache, cuda_graph=cuda_graph)
    level = measure_draft_cost(head, target, ks, context=ctx, use_cache=use_cache, cuda_graph=cuda_graph)
    acc = acceptance if acceptance is not None else (head_acceptance(head, temperature) or list(DEFAULT_ACCEPTANCE))
    best = choose_tree(verify, draft_cost_model(level), acc, cands)
    plain = 1.0 / interpolate_cost(verify, 1)
    if allow_plain and plain >= best[3]:
        return (*PLAIN, plain)
    return best
