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

import specdec_kernels

from ..target import TargetModel
from . import cuda_graphs
from . import drafting as _drafting
from .drafting import TreeDrafter, check_tree_params, tree_nodes


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


# -- helpers ------------------------------------------------------------------------------------------


def _prompts(input_ids, attention_mask) -> list:
    """Prompts as lists of ints: from a list of lists, or a [B, L] tensor (+ optional 0/1 attention_mask,
    left or right padded: the tokens where the mask is 1, in order)."""
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids: expected a [B, L] tensor, got shape {tuple(input_ids.shape)}")
        rows = input_ids.tolist()
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(input_ids.shape):
                got = (
                    tuple(attention_mask.shape)
                    if isinstance(attention_mask, torch.Tensor)
                    else type(attention_mask).__name__
                )
                raise ValueError(
                    f"attention_mask: expected a tensor of shape {tuple(input_ids.shape)} (like input_ids), got {got}"
                )
            masks = attention_mask.tolist()
            rows = [[t for t, m in zip(r, mr) if m] for r, mr in zip(rows, masks)]
    else:
        if attention_mask is not None:
            raise ValueError("attention_mask: only meaningful with a tensor input_ids")
        if not isinstance(input_ids, (list, tuple)) or not input_ids:
            raise TypeError("input_ids: expected a non-empty list of token lists or a [B, L] tensor")
        if all(isinstance(t, int) for t in input_ids):
            input_ids = [input_ids]
        rows = [list(map(int, r)) for r in input_ids]
    for b, r in enumerate(rows):
        if not r:
            raise ValueError(f"input_ids: prompt {b} is empty (every request needs at least one token)")
    return rows


def _pad(rows: list, device) -> tuple:
    B, L = len(rows), max(len(r) for r in rows)
    ids = torch.zeros(B, L, dtype=torch.int64)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r, dtype=torch.int64)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.int32)
    return ids.to(device), lengths.to(device)


def _resolve_eos(eos_token_id, model) -> list:
    """The token ids that stop a request: `eos_token_id` when given, else the model's default.

    eos_token_id: an int, a sequence of ints, or None. None (the default of generate) takes
    `model.generation_config.eos_token_id` (int, list or None), as transformers' `model.generate` does;
    an empty sequence `[]` turns stopping off (only max_new_tokens ends a request). `model` is a
    TargetModel or a Hugging Face model.

    Example:
        >>> _resolve_eos([], None), _resolve_eos(2, None), _resolve_eos((2, 7), None)
        ([], [2], [2, 7])
    """
    if eos_token_id is None:
        hf = model.model if isinstance(model, TargetModel) else model
        gen_config = getattr(hf, "generation_config", None)
        eos_token_id = getattr(gen_config, "eos_token_id", None)
        if eos_token_id is None:
            return []
    if isinstance(eos_token_id, torch.Tensor):
        eos_token_id = eos_token_id.reshape(-1).tolist()
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, int):
            raise TypeError(f"eos_token_id: expected an int or a sequence of ints, got {eos_token_id!r}")
    return ids


def _eos_tensor(eos_ids: list, device) -> Optional[torch.Tensor]:
    return torch.tensor(eos_ids, dtype=torch.int64, device=device) if eos_ids else None


def _check_sampling(max_new_tokens, temperature, top_k, top_p) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected an int >= 1, got {max_new_tokens!r}")
    if temperature < 0:
        raise ValueError(f"temperature: expected >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k: expected >= 0 (0 = off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p: expected 0 < top_p <= 1 (1 = off), got {top_p}")


class _Chooser:
    """Verification with the requested decoding rule (greedy or lossless sampling), and uniforms to feed it."""

    def __init__(self, B: int, device, temperature: float, top_k: int, top_p: float, generator, backend):
        self.greedy = temperature == 0
        self.B, self.device, self.generator, self.backend = B, device, generator, backend
        self.temperature = torch.full((B,), float(temperature), dtype=torch.float32, device=device)
        self.top_k = torch.full((B,), int(top_k), dtype=torch.int32, device=device)
        self.top_p = torch.full((B,), float(top_p), dtype=torch.float32, device=device)
        self.one_node = specdec_kernels.build_tree(torch.full((B, 1), -1, dtype=torch.int32, device=device))

    def __call__(self, tree, tokens, logits) -> tuple:
        if self.greedy:
            return specdec_kernels.verify_greedy(tree, tokens, logits, backend=self.backend)
        u = torch.rand(self.B, tokens.shape[1] + 1, generator=self.generator, device=self.device)
        return specdec_kernels.verify_sample(
            tree,
            tokens,
            logits,
            u,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            backend=self.backend,
        )

    def first(self, last_logits: torch.Tensor) -> torch.Tensor:
        """The token after the prompt, drawn from the prefill logits [B, V] by the same rule (a one-node tree)."""
        tokens = torch.zeros(self.B, 1, dtype=torch.int64, device=self.device)
        return self(self.one_node, tokens, last_logits[:, None, :])[2][:, 0]


class _Output:
    """Device buffer of emitted tokens, per-request counts and finished flags (no host sync)."""

    def __init__(self, B: int, max_new: int, width: int, eos: Optional[torch.Tensor], device):
        self.buf = torch.full((B, max_new + width + 1), -1, dtype=torch.int64, device=device)
        self.dump = max_new + width  # column that absorbs padding writes
        self.count = torch.zeros(B, dtype=torch.int64, device=device)
        self.finished = torch.zeros(B, dtype=torch.bool, device=device)
        self.max_new, self.eos = max_new, eos

    def emit(self, tokens: torch.Tensor, n: torch.Tensor) -> None:
        """Append tokens[b, :n[b]] (n int [B]; a finished request must have n = 0)."""
        T = tokens.shape[1]
        j = torch.arange(T, device=tokens.device)[None, :]
        valid = j < n.to(torch.int64)[:, None]
        idx = torch.where(valid, self.count[:, None] + j, torch.full_like(j, self.dump))
        self.buf.scatter_(1, idx, tokens)
        self.count.add_(n.to(torch.int64))
        done = self.count >= self.max_new
        if self.eos is not None:
            done |= (torch.isin(tokens, self.eos) & valid).any(dim=1)
        self.finished |= done

    def sequences(self) -> list:
        rows, counts = self.buf.tolist(), self.count.tolist()
        eos = set(self.eos.tolist()) if self.eos is not None else set()
        out = []
        for r, c in zip(rows, counts):
            r = r[: min(c, self.max_new)]
            for i, t in enumerate(r):
                if t in eos:
                    r = r[: i + 1]
                    break
            out.append(r)
        return out


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _as_target(target, backend) -> TargetModel:
    if isinstance(target, TargetModel):
        return target
    return TargetModel(target, backend=backend)


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
            (generate_baseline; the result's tree is budget.PLAIN = (1, 0, 0) and tau 1).
        eos_token_id: int or list of ints: a request stops after emitting one of them. None (default):
            the model's `generation_config.eos_token_id`, like `model.generate`; `[]`: never stop early.
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

    Returns:
        GenerationResult (sequences = new tokens only).
    """
    t_start = time.perf_counter()
    target = _as_target(target, backend)
    _check_sampling(max_new_tokens, temperature, top_k, top_p)
    dev = target.device
    cuda_graphs.check_cuda_graph(cuda_graph, dev)
    if draft.device != dev:
        raise ValueError(f"draft: the head is on {draft.device}, the target on {dev}; move them to one device")
    rows = _prompts(input_ids, attention_mask)
    B = len(rows)
    ids, lengths = _pad(rows, dev)
    L = ids.shape[1]
    if isinstance(total_tokens, str):
        if total_tokens != "auto":
            raise ValueError(f"total_tokens: expected an int >= 1 or 'auto', got {total_tokens!r}")
        from .budget import PLAIN, auto_tree, context_bucket

        total_tokens, depth, tree_top_k, _ = auto_tree(target, draft, context=context_bucket(L), cuda_graph=cuda_graph)
        if (total_tokens, depth, tree_top_k) == PLAIN:
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
    D1 = min(N, depth + 1)  # longest accepted path (root included)
    # Committed tokens stay below L + max_new_tokens + depth (a request may commit a whole path on the pass
    # that finishes it); one tree more is written past them.
    cache = target.new_cache(B, L + max_new_tokens + depth + N + 1)
    draft.bind_target(target.embed_tokens, target.lm_head)
    drafter = TreeDrafter(draft, B, L + max_new_tokens + depth + 1, tree_top_k, depth, total_tokens, backend=backend)
    choose = _Chooser(B, dev, temperature, top_k, top_p, generator, backend)
    out = _Output(B, max_new_tokens, D1, _eos_tensor(_resolve_eos(eos_token_id, target), dev), dev)

    # Prefill: the target commits the prompts and picks the first token; the draft commits the pairs
    # (f_t, x_{t+1}) for t < length, the last pairing the feature of the prompt's last token with that token.
    pre = target.prefill(ids, lengths, cache, chunk_size=prefill_chunk_size)
    root = choose.first(pre.logits)
    out.emit(root[:, None], torch.ones(B, dtype=torch.int64, device=dev))
    _sync(dev)
    t_prefill = time.perf_counter()
    pair_tokens = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)
    pair_tokens.scatter_(1, (lengths.to(torch.int64) - 1)[:, None], root[:, None])
    root_logits, root_hidden = drafter.extend(pre.hidden, pair_tokens, lengths)
    _sync(dev)
    t_draft = time.perf_counter() - t_prefill
    t_verify = 0.0
    passes = 0
    accepts = []
    st = _PassState(root, root_logits, root_hidden, static=cuda_graph)

    def one_pass(clock=None):
        _speculative_pass(st, drafter, target, choose, out, cache, D1, backend, clock)

    t_capture = 0.0
    if cuda_graph:  # one graph per pass: its phases cannot be timed apart, the replays are verify_time
        sampler = None if choose.greedy else generator
        passes, t_capture, t_verify = _graph_passes(one_pass, st, out, dev, sampler, accepts, max_new_tokens + 1)
    marks = []  # the eager pass's phase boundaries (clock)

    def clock():
        _sync(dev)
        marks.append(time.perf_counter())

    while not cuda_graph and not bool(out.finished.all()):  # the one host sync per pass
        if _drafting._profiler is not None:
            _drafting._profiler.mark("host.pass")
        marks[:] = [time.perf_counter()]
        one_pass(clock)
        accepts.append(st.n)
        t_draft += (marks[1] - marks[0]) + (marks[3] - marks[2])
        t_verify += marks[2] - marks[1]
        passes += 1
        if passes > max_new_tokens + 1:  # every active pass emits >= 1 token
            raise RuntimeError("generate: no progress (a request emitted no token in a pass); please report")
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
    )


class _PassState:
    """What one pass reads and leaves for the next: the root token [B] (last emitted), the draft's logits
    [B, V_d] and fed-back feature [B, H] for the token after it (None for plain decoding), and n int32 [B],
    the tokens each request emitted in the pass. static: every update copies into the same buffers (a
    captured CUDA graph reads and writes fixed addresses); else the new tensors are just kept."""

    def __init__(self, root, root_logits=None, root_hidden=None, *, static: bool = False):
        self.static = static
        keep = (lambda t: t.clone()) if static else (lambda t: t)
        self.root = keep(root)
        self.root_logits = keep(root_logits) if root_logits is not None else None
        self.root_hidden = keep(root_hidden) if root_hidden is not None else None
        self.n = torch.zeros(root.shape[0], dtype=torch.int32, device=root.device)

    def update(self, root, n, root_logits=None, root_hidden=None) -> None:
        if self.static:
            self.root.copy_(root)
            self.n.copy_(n)
            if root_logits is not None:
                self.root_logits.copy_(root_logits)
                self.root_hidden.copy_(root_hidden)
        else:
            self.root, self.n = root, n
            if root_logits is not None:
                self.root_logits, self.root_hidden = root_logits, root_hidden


def _speculative_pass(st: _PassState, drafter, target, choose, out, cache, D1: int, backend, clock=None) -> None:
    """One pass of `generate` (module docstring, steps 1-4) from st's root to st's next root.

    Device work only, no host synchronisation: the same code runs eagerly and inside a CUDA graph capture.
    clock(), when given (the eager loop's timer; it synchronises), is called after the draft, after the
    verification and commit, and after the draft's extension; the profiler's marks are left out with it.
    """
    prof = _drafting._profiler if clock is not None else None  # phase marks for bench/e2e_profile.py
    B = st.root.shape[0]
    parents, tokens = drafter.draft(st.root, st.root_logits, st.root_hidden)
    if clock is not None:
        clock()
    tree = specdec_kernels.build_tree(parents, backend=backend)
    if prof is not None:
        prof.mark("verify.build_tree")
    ver = target.verify(tokens, tree, cache)
    if prof is not None:
        prof.mark("verify.target")
    accept_nodes, accept_len, out_tokens = choose(tree, tokens, ver.logits)
    if prof is not None:
        prof.mark("verify.op")
    n = torch.where(out.finished, torch.zeros_like(accept_len), accept_len)
    target.commit(cache, accept_nodes, n)
    if prof is not None:
        prof.mark("verify.compact")
    if clock is not None:
        clock()
    out.emit(out_tokens[:, :D1], n)
    if prof is not None:
        prof.mark("host.emit")
    # The draft's new pairs: (target feature of accepted node j, the token emitted after it).
    nodes = accept_nodes[:, :D1].to(torch.int64).clamp(min=0)
    feats = ver.hidden.gather(1, nodes[:, :, None].expand(B, D1, ver.hidden.shape[2]))
    root = out_tokens.gather(1, (accept_len.to(torch.int64) - 1).clamp(min=0)[:, None])[:, 0]
    root_logits, root_hidden = drafter.extend(feats, out_tokens[:, :D1].clamp(min=0), n)
    st.update(root, n, root_logits, root_hidden)
    if prof is not None:
        prof.mark("draft.extend")
    if clock is not None:
        clock()


def _plain_pass(st: _PassState, target, choose, out, cache) -> None:
    """One pass of `generate_baseline`: a one-node tree at st.root, verified, committed and emitted."""
    ver = target.verify(st.root[:, None], choose.one_node, cache)
    accept_nodes, accept_len, out_tokens = choose(choose.one_node, st.root[:, None], ver.logits)
    n = torch.where(out.finished, torch.zeros_like(accept_len), accept_len)
    target.commit(cache, accept_nodes, n)
    out.emit(out_tokens, n)
    st.update(out_tokens[:, 0], n)


def _graph_passes(one_pass, st: _PassState, out: _Output, dev, generator, accepts: list, max_passes: int) -> tuple:
    """Decode until every request has finished with CUDA graphs: the first pass runs eagerly on a side
    stream (it is a real pass, and it warms up what a capture cannot do: Triton compiles, cuBLAS
    workspaces, the kernels' backend choices), the second is captured once and every pass from then on
    replays it (one launch per pass instead of hundreds). The host synchronises once per pass, on the
    finished flags, as the eager loop does. Appends each pass's n to accepts.

    Returns (passes, seconds of the eager pass and the capture, seconds of the replayed passes)."""
    t0 = time.perf_counter()
    cuda_graphs.warmup_pass(one_pass, dev)
    accepts.append(st.n.clone())
    passes = 1
    if bool(out.finished.all()):
        return passes, time.perf_counter() - t0, 0.0
    try:
        replay = cuda_graphs.capture_pass(one_pass, dev, generator)
    except Exception as exc:  # an op of this model or head that a graph cannot hold: say what to do
        raise RuntimeError(
            f"cuda_graph=True: capturing the decode pass as a CUDA graph failed ({type(exc).__name__}: {exc}); "
            "cuda_graph=False runs the same decoding eagerly"
        ) from exc
    t1 = time.perf_counter()
    while not bool(out.finished.all()):
        replay()
        accepts.append(st.n.clone())
        passes += 1
        if passes > max_passes:  # every active pass emits >= 1 token
            raise RuntimeError("generate: no progress (a request emitted no token in a pass); please report")
    _sync(dev)
    return passes, t1 - t0, time.perf_counter() - t1


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
    out: _Output, rows, accepts, passes, t_prefill, t_draft, t_verify, t_total, tree=None, capture_time=0.0
) -> GenerationResult:
    acc = torch.stack(accepts).to(torch.int32).cpu() if accepts else torch.zeros(0, len(rows), dtype=torch.int32)
    active = (acc > 0).sum(0)
    emitted = acc.sum(0)
    per_req = [float(e) / float(a) if a > 0 else 0.0 for e, a in zip(emitted.tolist(), active.tolist())]
    tau = float(emitted.sum()) / float(active.sum()) if int(active.sum()) > 0 else 0.0
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
    target = _as_target(target, backend)
    _check_sampling(max_new_tokens, temperature, top_k, top_p)
    dev = target.device
    cuda_graphs.check_cuda_graph(cuda_graph, dev)
    rows = _prompts(input_ids, attention_mask)
    B = len(rows)
    ids, lengths = _pad(rows, dev)
    cache = target.new_cache(B, ids.shape[1] + max_new_tokens + 1)
    choose = _Chooser(B, dev, temperature, top_k, top_p, generator, backend)
    out = _Output(B, max_new_tokens, 1, _eos_tensor(_resolve_eos(eos_token_id, target), dev), dev)
    pre = target.prefill(ids, lengths, cache, chunk_size=prefill_chunk_size)
    root = choose.first(pre.logits)
    out.emit(root[:, None], torch.ones(B, dtype=torch.int64, device=dev))
    _sync(dev)
    t_prefill = time.perf_counter()
    st = _PassState(root, static=cuda_graph)
    passes, accepts, t_capture = 0, [], 0.0
    if cuda_graph:
        sampler = None if choose.greedy else generator

        def one_step():
            _plain_pass(st, target, choose, out, cache)

        passes, t_capture, t_steps = _graph_passes(one_step, st, out, dev, sampler, accepts, max_new_tokens + 1)
    while not cuda_graph and not bool(out.finished.all()):
        _plain_pass(st, target, choose, out, cache)
        accepts.append(st.n)
        passes += 1
    _sync(dev)
    t_end = time.perf_counter()
    if not cuda_graph:
        t_steps = t_end - t_prefill
    return _result(
        out, rows, accepts, passes, t_prefill - t_start, 0.0, t_steps, t_end - t_start, capture_time=t_capture
    )
