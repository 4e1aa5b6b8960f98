"""One decode pass of `generate` and of `generate_baseline`, and what a pass reads and writes: the token
chooser (verification by the decoding rule), the device buffer of emitted tokens, the state handed from
pass to pass, and the CUDA-graph loop. Device work only inside a pass; see specdec.decoding.generate."""

from __future__ import annotations

import time
from typing import Optional

import torch

import specdec_kernels

from ..devices import synchronize
from . import cuda_graphs
from .drafting import get_profiler


class TokenChooser:
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


class OutputBuffer:
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
        """Each request's emitted tokens as a list, cut at max_new tokens and after its first stop token."""
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


class PassState:
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
        """Hand the pass's results to the next pass: copied into the same buffers when static, else kept."""
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


def speculative_pass(st: PassState, drafter, target, choose, out, cache, max_path: int, backend, clock=None) -> None:
    """One pass of `generate` (specdec.decoding.generate's module docstring, steps 1-4), from st's root to
    st's next root.

    Device work only, no host synchronisation: the same code runs eagerly and inside a CUDA graph capture.
    clock(), when given (the eager loop's timer; it synchronises), is called after the draft, after the
    verification and commit, and after the draft's extension; the profiler's marks are left out with it.
    """
    prof = get_profiler() if clock is not None else None  # phase marks for bench/e2e_profile.py
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
    out.emit(out_tokens[:, :max_path], n)
    if prof is not None:
        prof.mark("host.emit")
    # The draft's new pairs: (target feature of accepted node j, the token emitted after it).
    nodes = accept_nodes[:, :max_path].to(torch.int64).clamp(min=0)
    feats = ver.hidden.gather(1, nodes[:, :, None].expand(B, max_path, ver.hidden.shape[2]))
    root = out_tokens.gather(1, (accept_len.to(torch.int64) - 1).clamp(min=0)[:, None])[:, 0]
    root_logits, root_hidden = drafter.extend(feats, out_tokens[:, :max_path].clamp(min=0), n)
    st.update(root, n, root_logits, root_hidden)
    if prof is not None:
        prof.mark("draft.extend")
    if clock is not None:
        clock()


def plain_pass(st: PassState, target, choose, out, cache) -> None:
    """One pass of `generate_baseline`: a one-node tree at st.root, verified, committed and emitted."""
    ver = target.verify(st.root[:, None], choose.one_node, cache)
    accept_nodes, accept_len, out_tokens = choose(choose.one_node, st.root[:, None], ver.logits)
    n = torch.where(out.finished, torch.zeros_like(accept_len), accept_len)
    target.commit(cache, accept_nodes, n)
    out.emit(out_tokens, n)
    st.update(out_tokens[:, 0], n)


def graph_passes(one_pass, st: PassState, out: OutputBuffer, dev, generator, accepts: list, max_passes: int) -> tuple:
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
    synchronize(dev)
    return passes, t1 - t0, time.perf_counter() - t1
