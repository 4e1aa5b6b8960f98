"""The generate loops: EAGLE-2 tree speculative decoding and plain autoregressive decoding.

Both run the target through specdec.target.TargetModel (our KV cache + tree attention), so the baseline
differs from speculative decoding only by its one-node trees. Per pass of `generate`:
  1. draft: TreeDrafter.draft grows and reranks the tree under each request's root (last accepted token);
  2. verify: build_tree, one target forward over all N nodes (positions cache_len + depth), then
     verify_greedy (temperature 0) or verify_sample (uniforms from `generator`): the accepted path and
     the bonus token;
  3. commit: compact_kv moves the accepted nodes' K/V into place, cache_len += accept_len; the draft
     appends the pairs (target feature of each accepted node, next emitted token) to its own cache;
  4. the emitted tokens (accepted drafts + bonus) are written into a device buffer.
Requests finish on EOS or max_new_tokens; finished requests keep running with accept_len forced to 0, so
their caches stop growing and their outputs stop changing. The loop synchronises with the host once per
pass (to learn whether every request has finished); the steps themselves never do.

Outputs are exactly the target's tokens: greedy output equals the target's own greedy decoding, and
sampled output follows the target's sampling distribution (temperature, top-k, top-p as
specdec_kernels.verify_sample defines them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch

from ..devices import synchronize
from ..eos import eos_ids
from . import cuda_graphs
from .drafting import TreeDrafter, check_tree_params, get_profiler, tree_nodes
from .inputs import as_target, check_sampling, eos_tensor, pad_rows, prompt_rows
from .passes import OutputBuffer, PassState, TokenChooser, graph_passes, plain_pass, speculative_pass


@dataclass
class GenerationResult:
    """What generate / generate_baseline return.

    sequences: per request, the NEW tokens only (prompt excluded), ending with the EOS token when one
        was produced, at most max_new_tokens.
    prompt_lengths: tokens of each prompt.
    passes: target forward passes after the prefill (verification passes; one per token for the baseline).
    tau: mean tokens emitted per target pass, bonus included, over the passes in which a request was still
        running (EAGLE's "average acceptance length"); 1.0 for the baseline. The prefill's first token is
        not counted.
    tau_per_request: the same per request.
    accept_lengths: int32 [passes, B] on the CPU, accept_len of every pass (0 once a request finished).
    prefill_time, draft_time, verify_time, total_time: seconds (wall clock; on CUDA the phases are
        synchronised so the split is meaningful). draft_time includes the draft's own prefill and
        extensions; verify_time the target verification, the verification op and the compaction.
    tree: (N, depth, tree_top_k) of the drafted trees, the nodes N capped by the candidates drafted (what
        total_tokens="auto" chose); (1, 0, 0) when "auto" chose plain decoding (no tree expected to be
        faster here); None for the baseline.
    capture_time: with cuda_graph=True, seconds of the first pass (eager) and of the graph capture; the
        replayed passes (passes - 1 of them) are then verify_time, whole, and draft_time holds only the
        draft's prefill. 0 without graphs.
    plain_after: with total_tokens="auto", the number of tree passes after which the tokens per pass realised
        so far fell below the tree's break-even (budget.break_even_tau) and the remaining tokens were decoded
        plainly (one-node passes, counted in passes and tau); None when the trees ran to the end.
    """

    sequences: list
    prompt_lengths: list
    passes: int = 0
    tau: float = 1.0
    tau_per_request: list = field(default_factory=list)
    accept_lengths: Optional[torch.Tensor] = None
    prefill_time: float = 0.0
    draft_time: float = 0.0
    verify_time: float = 0.0
    total_time: float = 0.0
    tree: Optional[tuple] = None  # (nodes N, depth, top-k) of the drafted trees (what "auto" chose)
    capture_time: float = 0.0  # cuda_graph=True: the first (eager) pass and the capture
    plain_after: Optional[int] = None  # "auto": passes drafted before switching to plain decoding

    @property
    def num_new_tokens(self) -> int:
        """Tokens generated over all requests."""
        return sum(len(s) for s in self.sequences)

    @property
    def time_per_pass(self) -> float:
        """Seconds per decode pass (draft + verify), prefill excluded; with CUDA graphs, per replayed pass
        (the eager first pass and the capture are capture_time)."""
        if self.capture_time > 0:
            return self.verify_time / max(self.passes - 1, 1)
        return (self.draft_time + self.verify_time) / max(self.passes, 1)

    def summary(self) -> str:
        """One line of statistics."""
        tps = self.num_new_tokens / self.total_time if self.total_time > 0 else float("nan")
        return (
            f"requests {len(self.sequences)}  new tokens {self.num_new_tokens}  passes {self.passes}  "
            f"tau {self.tau:.3f}  prefill {self.prefill_time * 1e3:.1f} ms  draft {self.draft_time * 1e3:.1f} ms  "
            f"verify {self.verify_time * 1e3:.1f} ms  "
            + (f"capture {self.capture_time * 1e3:.1f} ms  " if self.capture_time > 0 else "")
            + f"per pass {self.time_per_pass * 1e3:.2f} ms  "
            f"total {self.total_time:.3f} s  ({tps:.1f} tokens/s)"
        )


# -- speculative decoding -----------------------------------------------------------------------------


@torch.no_grad()
def generate(
    target,
    draft,
    input_ids,
    attention_mask: Optional[torch.Tensor] = None,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    tree_top_k: int = 10,
    depth: int = 6,
    total_tokens: Union[int, str] = 60,
    eos_token_id: Union[int, Sequence[int], None] = None,
    generator: Optional[torch.Generator] = None,
    prefill_chunk_size: Optional[int] = None,
    backend: Optional[str] = None,
    cuda_graph: bool = False,
    page_size: Optional[int] = None,
) -> GenerationResult:
    """Lossless EAGLE-2 tree speculative decoding of a batch of prompts.

    Args:
        target: a specdec.target.TargetModel or a Hugging Face causal LM (wrapped).
        draft: a specdec.models.DraftHead (EAGLE, FSPAD or GRIFFIN) for this target; generate binds it to
            the target's embedding and lm_head (head.bind_target).
        input_ids: list of token lists (prompts of any lengths), or a [B, L] tensor with an optional 0/1
            attention_mask (left or right padding).
        max_new_tokens: tokens to generate per request (at most; fewer when EOS comes first).
        temperature: 0 = greedy (output equals the target's greedy decoding); > 0 samples losslessly.
        top_k (0 = off), top_p (1.0 = off): the target's sampling filters.
        tree_top_k, depth, total_tokens: EAGLE-2 tree parameters (children per node, levels, nodes incl. the
            root; the tree is capped at the number of drafted candidates + 1). total_tokens="auto": the
            hardware-aware budget (specdec.decoding.budget.auto_tree) picks total_tokens, depth AND
            tree_top_k (the given ones are ignored) to maximise expected tokens per second, from the
            target's verify cost and the head's draft cost on this machine (measured once, cached under
            $SPECDEC_HOME) and the head's validation acceptance rates (else budget.DEFAULT_ACCEPTANCE).
            When no tree is expected to beat plain decoding on this machine, "auto" decodes plainly
            (generate_baseline; the result's tree is budget.PLAIN = (1, 0, 0) and tau 1). When a chosen tree
            realises fewer tokens per pass than it needs to beat plain decoding (budget.break_even_tau;
            checked every 4 passes, without cuda_graph: _tree_loses), the rest is decoded plainly
            (the result's plain_after).
        eos_token_id: int or list of ints: a request stops after emitting one of them. None (default):
            the model's `generation_config.eos_token_id`, like `model.generate` (specdec.eos.eos_ids); `[]`:
            never stop early.
        generator: torch.Generator on the target's device for the sampling uniforms (reproducible runs).
        prefill_chunk_size: prefill at most this many prompt columns per forward (None: all at once).
        backend: specdec_kernels backend for every kernel (None chooses; a TargetModel passed as `target`
            keeps its own backend for the target's kernels).
        cuda_graph: on a CUDA device, capture one whole pass (draft, verify, commit, extension) as a CUDA
            graph after a first eager pass and replay it for every later pass: the same tokens with one
            launch per pass, for small models whose passes are bound by kernel launches. The graph is
            captured per call (tens of milliseconds). With it the result's capture_time holds the first
            pass and the capture, verify_time the replayed passes whole and draft_time only the draft's
            prefill (a graph's phases cannot be timed apart).

        page_size: None keeps the target's and the draft's K/V in one contiguous cache per layer; an int
            puts both on pages of that many tokens, handed out in shuffled order as a serving engine's paged
            cache (specdec.target.PagedTreeKVCache and specdec.models.PagedDraftCache: paged_tree_attention
            and compact_paged_kv run instead of tree_attention and compact_kv). The output is the same.

    Returns:
        GenerationResult (sequences = new tokens only).
    """
    t_start = time.perf_counter()
    target = as_target(target, backend)
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    dev = target.device
    cuda_graphs.check_cuda_graph(cuda_graph, dev)
    if draft.device != dev:
        raise ValueError(f"draft: the head is on {draft.device}, the target on {dev}; move them to one device")
    ids, lengths = pad_rows(rows := prompt_rows(input_ids, attention_mask), dev)
    B, L = ids.shape
    total_tokens, depth, tree_top_k, break_even = _tree_settings(
        total_tokens, depth, tree_top_k, target, draft, L, cuda_graph, temperature
    )
    if total_tokens is None:  # "auto": plain decoding is expected to be faster here
        return _plain_instead(
            t_start,
            target,
            rows,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_token_id=eos_token_id,
            generator=generator,
            prefill_chunk_size=prefill_chunk_size,
            backend=backend,
            cuda_graph=cuda_graph,
        )
    check_tree_params(tree_top_k, depth, total_tokens, target.vocab_size)
    N = tree_nodes(tree_top_k, depth, total_tokens)
    max_path = min(N, depth + 1)  # longest accepted path (root included)
    # Committed tokens < L + max_new_tokens + depth (a last pass may commit a whole path); the target: one tree more.
    committed = L + max_new_tokens + depth + 1
    cache = target.new_cache(B, committed + N, page_size=page_size)
    draft.bind_target(target.embed_tokens, target.lm_head)
    drafter = TreeDrafter(draft, B, committed, tree_top_k, depth, total_tokens, backend=backend, page_size=page_size)
    choose = TokenChooser(B, dev, temperature, top_k, top_p, generator, backend)
    out = OutputBuffer(B, max_new_tokens, max_path, eos_tensor(eos_ids(target.model, given=eos_token_id), dev), dev)
    st, t_prefill, t_draft = _prefill(target, drafter, choose, out, ids, lengths, cache, prefill_chunk_size, cuda_graph)

    def one_pass(clock=None):
        speculative_pass(st, drafter, target, choose, out, cache, max_path, backend, clock)

    fallback = None if break_even is None else (break_even, lambda: plain_pass(st, target, choose, out, cache))
    accepts, passes, t_passes_draft, t_verify, t_capture, plain_after = _run_passes(
        one_pass, st, out, dev, None if choose.greedy else generator, max_new_tokens + 1, cuda_graph, fallback
    )
    t_draft += t_passes_draft
    return _result(
        out,
        rows,
        accepts,
        passes,
        t_prefill - t_start,
        t_draft,
        t_verify,
        time.perf_counter() - t_start,
        tree=(N, depth, tree_top_k),
        capture_time=t_capture,
        plain_after=plain_after,
    )


def _tree_settings(total_tokens, depth: int, tree_top_k: int, target, draft, context, cuda_graph, temperature) -> tuple:
    """(total_tokens, depth, tree_top_k, break-even tokens per pass or None): as given for a number of nodes,
    else _auto_tree's."""
    if isinstance(total_tokens, str):
        return _auto_tree(total_tokens, target, draft, context, cuda_graph, temperature)
    if total_tokens is None:
        raise ValueError("total_tokens: expected an int >= 1 or 'auto', got None")
    return total_tokens, depth, tree_top_k, None


def _auto_tree(total_tokens: str, target, draft, context: int, cuda_graph: bool, temperature: float) -> tuple:
    """total_tokens="auto": (total_tokens, depth, tree_top_k, break-even tokens per pass) of the hardware-aware
    budget, or (None, 0, 0, None) when it expects plain decoding to be faster (budget.PLAIN). The break-even
    (budget.break_even_tau) is None with cuda_graph: a replayed graph holds the tree passes only."""
    if total_tokens != "auto":
        raise ValueError(f"total_tokens: expected an int >= 1 or 'auto', got {total_tokens!r}")
    from .budget import PLAIN, auto_tree, break_even_tau, context_bucket

    bucket = context_bucket(context)
    total_tokens, depth, tree_top_k, _ = auto_tree(
        target, draft, context=bucket, cuda_graph=cuda_graph, temperature=temperature
    )
    if (total_tokens, depth, tree_top_k) == PLAIN:
        return None, 0, 0, None
    break_even = None if cuda_graph else break_even_tau(target, draft, total_tokens, depth, tree_top_k, bucket)
    return total_tokens, depth, tree_top_k, break_even


def _run_passes(one_pass, st: PassState, out: OutputBuffer, dev, sampler, max_passes: int, cuda_graph, fallback):
    """The decode loop after the prefill: replayed CUDA graphs (graph_passes: their phases cannot be timed
    apart, the replays count as verify time) or eager passes (_eager_passes, with "auto"'s fallback).

    Returns (accepts, passes, seconds drafting, seconds verifying, seconds capturing, plain_after)."""
    accepts = []
    if cuda_graph:
        passes, t_capture, t_verify = graph_passes(one_pass, st, out, dev, sampler, accepts, max_passes)
        return accepts, passes, 0.0, t_verify, t_capture, None
    passes, t_draft, t_verify, plain_after = _eager_passes(one_pass, st, out, dev, accepts, max_passes, fallback)
    return accepts, passes, t_draft, t_verify, 0.0, plain_after


def _prefill(target, drafter, choose, out, ids, lengths, cache, chunk_size, static: bool) -> tuple:
    """The target commits the prompts and picks the first token; the draft commits the pairs (f_t, x_{t+1})
    for t < length, the last pairing the feature of the prompt's last token with that token.

    Returns (the first pass's PassState, the time the target's prefill ended, the draft's prefill seconds)."""
    B, dev = ids.shape[0], ids.device
    pre = target.prefill(ids, lengths, cache, chunk_size=chunk_size)
    root = choose.first(pre.logits)
    out.emit(root[:, None], torch.ones(B, dtype=torch.int64, device=dev))
    synchronize(dev)
    t_prefill = time.perf_counter()
    pair_tokens = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)
    pair_tokens.scatter_(1, (lengths.to(torch.int64) - 1)[:, None], root[:, None])
    root_logits, root_hidden = drafter.extend(pre.hidden, pair_tokens, lengths)
    synchronize(dev)
    t_draft = time.perf_counter() - t_prefill
    return PassState(root, root_logits, root_hidden, static=static), t_prefill, t_draft


# "auto"'s watch over the realised tokens per pass, checked every FALLBACK_EVERY tree passes (each check reads
# the passes' accept lengths on the host: one more synchronisation per FALLBACK_EVERY passes). From
# FALLBACK_MIN_PASSES passes on, a mean below the break-even switches. Before, the mean says little (one pass
# accepts 1 to depth + 1 tokens), so only a clear loss switches: the mean plus FALLBACK_Z standard errors still
# below the break-even, the spread of the passes' accept lengths taken as at least FALLBACK_SD (a few equal
# lengths would otherwise claim certainty). A tree that accepts next to nothing (a prompt far from the head's
# training data) then costs 4 passes instead of 16 where the break-even is above 1.5, 8 where it is above
# 1.36 -- on a short answer most of the difference.
FALLBACK_MIN_PASSES = 16
FALLBACK_EVERY = 4
FALLBACK_Z = 2.0
FALLBACK_SD = 0.5


def _tree_loses(acc: torch.Tensor, break_even: float) -> bool:
    """Whether "auto" should switch to plain decoding after the tree passes' accept lengths acc [passes, B]
    (0 where a request had finished), against the tree's break-even tokens per pass (see above)."""
    active = (acc > 0).sum(1)
    if int(active.sum()) == 0:
        return False
    mean = _tokens_per_pass(acc)
    if acc.shape[0] >= FALLBACK_MIN_PASSES:
        return mean < break_even
    # The samples are the passes (their mean over the running requests): a request's passes are not
    # independent of each other, so counting every request's would overstate the certainty of a batch.
    per_pass = (acc.sum(1).double() / active.clamp(min=1))[active > 0]
    sd = max(float(per_pass.std()) if per_pass.numel() > 1 else 0.0, FALLBACK_SD)
    return mean + FALLBACK_Z * sd / per_pass.numel() ** 0.5 < break_even


def _tokens_per_pass(acc: torch.Tensor) -> float:
    """GenerationResult.tau of accept lengths acc [passes, B]: tokens emitted over the passes in which a
    request was running (0 after it finished); 0.0 when none was."""
    active = int((acc > 0).sum())
    return float(acc.sum()) / active if active else 0.0


def _eager_passes(
    one_pass, st: PassState, out: OutputBuffer, dev, accepts: list, max_passes: int, fallback=None
) -> tuple:
    """Decode eagerly until every request has finished (one host sync per pass, on the finished flags),
    timing each pass's draft and verify phases. Appends each pass's n to accepts.

    fallback: None, or (break_even, one_plain_pass): when the tokens per pass realised so far lose against
    break_even at a check (every FALLBACK_EVERY passes; _tree_loses), the rest is decoded with
    one_plain_pass (plain decoding from the same state and cache; its time counts as verify time). Every
    token is still the target's own, so the switch changes only the speed: greedy output stays the target's
    greedy output, and sampled tokens keep the target's distribution (the decision reads only what earlier
    passes emitted: their accept lengths). The whole batch switches at once.

    Returns (passes, seconds drafting, seconds verifying, tree passes before the switch or None)."""
    marks = []  # the pass's phase boundaries (clock)

    def clock():
        synchronize(dev)
        marks.append(time.perf_counter())

    passes, t_draft, t_verify, plain_after = 0, 0.0, 0.0, None
    while not bool(out.finished.all()):  # the one host sync per pass
        prof = get_profiler()
        if prof is not None:
            prof.mark("host.pass")
        if plain_after is not None:
            t0 = time.perf_counter()
            fallback[1]()
            synchronize(dev)
            t_verify += time.perf_counter() - t0
        else:
            marks[:] = [time.perf_counter()]
            one_pass(clock)
            t_draft += (marks[1] - marks[0]) + (marks[3] - marks[2])
            t_verify += marks[2] - marks[1]
        accepts.append(st.n)
        passes += 1
        if passes > max_passes:  # every active pass emits >= 1 token
            raise RuntimeError("generate: no progress (a request emitted no token in a pass); please report")
        if fallback is not None and plain_after is None and passes % FALLBACK_EVERY == 0:
            if _tree_loses(torch.stack(accepts), fallback[0]) and not bool(out.finished.all()):
                plain_after = passes
    return passes, t_draft, t_verify, plain_after


def _plain_instead(t_start: float, target, rows: list, **kw) -> GenerationResult:
    """generate's path when "auto" chose plain decoding: generate_baseline on the same prompts, its times
    counted from generate's start (the choice included) and the tree reported as budget.PLAIN."""
    from .budget import PLAIN

    res = generate_baseline(target, rows, **kw)
    before = time.perf_counter() - t_start - res.total_time
    res.prefill_time += before
    res.total_time += before
    res.tree = PLAIN
    return res


def _result(
    out: OutputBuffer,
    rows,
    accepts,
    passes,
    t_prefill,
    t_draft,
    t_verify,
    t_total,
    tree=None,
    capture_time=0.0,
    plain_after=None,
) -> GenerationResult:
    acc = torch.stack(accepts).to(torch.int32).cpu() if accepts else torch.zeros(0, len(rows), dtype=torch.int32)
    active = (acc > 0).sum(0)
    emitted = acc.sum(0)
    per_req = [float(e) / float(a) if a > 0 else 0.0 for e, a in zip(emitted.tolist(), active.tolist())]
    tau = _tokens_per_pass(acc)
    return GenerationResult(
        sequences=out.sequences(),
        prompt_lengths=[len(r) for r in rows],
        passes=passes,
        tau=tau,
        tau_per_request=per_req,
        accept_lengths=acc,
        prefill_time=t_prefill,
        draft_time=t_draft,
        verify_time=t_verify,
        total_time=t_total,
        tree=tree,
        capture_time=capture_time,
        plain_after=plain_after,
    )


# -- plain autoregressive decoding --------------------------------------------------------------------


@torch.no_grad()
def generate_baseline(
    target,
    input_ids,
    attention_mask: Optional[torch.Tensor] = None,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_token_id: Union[int, Sequence[int], None] = None,
    generator: Optional[torch.Generator] = None,
    prefill_chunk_size: Optional[int] = None,
    backend: Optional[str] = None,
    cuda_graph: bool = False,
) -> GenerationResult:
    """Plain autoregressive decoding through the same TargetModel (a one-node tree per pass).

    Same arguments and result as `generate` without a draft (eos_token_id too: None = the model's
    generation_config, [] = no stopping; cuda_graph: one captured graph per decode step); tau is 1 and
    draft_time 0. With the same
    generator state it consumes uniforms differently from `generate`, so sampled outputs agree in
    distribution, not token for token.
    """
    t_start = time.perf_counter()
    target = as_target(target, backend)
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    dev = target.device
    cuda_graphs.check_cuda_graph(cuda_graph, dev)
    rows = prompt_rows(input_ids, attention_mask)
    B = len(rows)
    ids, lengths = pad_rows(rows, dev)
    cache = target.new_cache(B, ids.shape[1] + max_new_tokens + 1)
    choose = TokenChooser(B, dev, temperature, top_k, top_p, generator, backend)
    out = OutputBuffer(B, max_new_tokens, 1, eos_tensor(eos_ids(target.model, given=eos_token_id), dev), dev)
    pre = target.prefill(ids, lengths, cache, chunk_size=prefill_chunk_size)
    root = choose.first(pre.logits)
    out.emit(root[:, None], torch.ones(B, dtype=torch.int64, device=dev))
    synchronize(dev)
    t_prefill = time.perf_counter()
    st = PassState(root, static=cuda_graph)
    passes, accepts, t_capture = 0, [], 0.0
    if cuda_graph:
        sampler = None if choose.greedy else generator

        def one_step():
            plain_pass(st, target, choose, out, cache)

        passes, t_capture, t_steps = graph_passes(one_step, st, out, dev, sampler, accepts, max_new_tokens + 1)
    while not cuda_graph and not bool(out.finished.all()):
        plain_pass(st, target, choose, out, cache)
        accepts.append(st.n)
        passes += 1
    synchronize(dev)
    t_end = time.perf_counter()
    if not cuda_graph:
        t_steps = t_end - t_prefill
    return _result(
        out, rows, accepts, passes, t_prefill - t_start, 0.0, t_steps, t_end - t_start, capture_time=t_capture
    )
