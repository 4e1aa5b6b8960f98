"""specdec.decoding: EAGLE-2 tree drafting against a brute-force re-implementation, and the generate API.

Losslessness itself is tested in test_lossless.py.
"""

from __future__ import annotations

import pytest
import torch

import specdec_kernels as sk
from specdec.decoding import GenerationResult, TreeDrafter, generate, generate_baseline, num_candidates, tree_nodes
from specdec.models import DraftConfig, build_draft_head
from specdec.target import TargetModel
from specdec.testing import TargetOracleHead

from helpers import tolerance
from tiny_models import head_reduction, make_target, one_thread  # noqa: F401  (autouse fixture)


def make_head(model, kind="eagle", seed=1, sharpen=1.0):
    torch.manual_seed(seed)
    head = build_draft_head(DraftConfig.from_target(model.config, kind)).eval()
    head.bind_target(model.get_input_embeddings(), model.get_output_embeddings())
    # Scale the head's output so its draft distributions are peaked (deeper trees, fewer near-ties).
    with torch.no_grad():
        for p in head.parameters():
            p.mul_(sharpen)
    return head


# -- drafting -----------------------------------------------------------------------------------------


@torch.no_grad()
def brute_force_tree(head, feats, toks, k, depth, N):
    """EAGLE-2 for one request, evaluating every node by replaying its whole path through a fresh cache
    one pair at a time (no tree attention): the specification of TreeDrafter.draft."""

    def run(pairs):
        cache = head.new_cache(1, len(pairs) + 1)
        cache_len = torch.zeros(1, dtype=torch.int32)
        logits = hidden = None
        for t, (f, x) in enumerate(pairs):
            out = head(
                f.view(1, 1, -1),
                torch.tensor([[x]]),
                torch.tensor([[t]]),
                cache,
                cache_len,
                torch.ones(1, 1, 1, dtype=torch.int32),
            )
            cache_len += 1
            logits, hidden = out.logits[0, 0].float(), out.hidden[0, 0]
        return logits, hidden

    committed = [(feats[t], int(toks[t])) for t in range(len(toks))]
    root_logits, root_hidden = run(committed)
    lp = torch.log_softmax(root_logits, -1)
    s, t = torch.topk(lp, k)
    cands = [dict(score=float(s[i]), token=int(t[i]), parent=-1, path=[(root_hidden, int(t[i]))]) for i in range(k)]
    frontier = list(range(k))
    for _ in range(depth - 1):
        base = len(cands)
        child_scores, children = [], []
        for f in frontier:
            logits, hidden = run(committed + cands[f]["path"])
            cs, ct = torch.topk(torch.log_softmax(logits, -1), k)
            for c in range(k):
                sc = torch.tensor(cands[f]["score"], dtype=torch.float32) + cs[c]
                child_scores.append(sc)
                children.append(
                    dict(score=float(sc), token=int(ct[c]), parent=f, path=cands[f]["path"] + [(hidden, int(ct[c]))])
                )
        cands += children
        frontier = [base + int(i) for i in torch.topk(torch.stack(child_scores), k).indices]
    scores = torch.tensor([c["score"] for c in cands])
    order = sorted(range(len(cands)), key=lambda i: (-float(scores[i]), i))[: N - 1]
    chosen = sorted(order)
    node = {c: i + 1 for i, c in enumerate(chosen)}
    parents = [-1] + [0 if cands[c]["parent"] == -1 else node[cands[c]["parent"]] for c in chosen]
    tokens = [cands[c]["token"] for c in chosen]
    return parents, tokens, root_logits


@pytest.mark.parametrize("kind", ["eagle", "griffin"])
@pytest.mark.parametrize("k, depth, total", [(3, 3, 10), (2, 4, 9), (4, 1, 5)])
def test_drafter_matches_brute_force(kind, k, depth, total):
    model = make_target()
    head = make_head(model, kind, sharpen=1.5)
    B, L, H = 2, 6, 64
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(B, L, H, generator=g)
    toks = torch.randint(0, 128, (B, L), generator=g)
    n = torch.tensor([6, 4], dtype=torch.int32)
    drafter = TreeDrafter(head, B, 32, k, depth, total)
    root_logits, root_hidden = drafter.extend(feats, toks, n)
    assert drafter.cache_len.tolist() == [6, 4]
    roots = torch.tensor([7, 9])
    parents, tokens = drafter.draft(roots, root_logits, root_hidden)
    N = tree_nodes(k, depth, total)
    assert parents.shape == (B, N) and tokens.shape == (B, N)
    assert bool(sk.build_tree(parents).valid.all())
    assert tokens[:, 0].tolist() == [7, 9]
    for b in range(B):
        want_p, want_t, want_root = brute_force_tree(head, feats[b, : n[b]], toks[b, : n[b]], k, depth, N)
        # the same fp32 head computed two ways (batched tree attention vs one pair at a time)
        atol, rtol = tolerance(
            torch.float32, head_reduction(head.config, keys=32), scale=max(1.0, float(want_root.abs().max()))
        )
        torch.testing.assert_close(root_logits[b], want_root, atol=atol, rtol=rtol)
        assert parents[b].tolist() == want_p, (b, parents[b].tolist(), want_p)
        assert tokens[b, 1:].tolist() == want_t, (b, tokens[b].tolist(), want_t)
    # Drafting never commits: the draft cache length is unchanged.
    assert drafter.cache_len.tolist() == [6, 4]


def test_tree_size_helpers():
    assert num_candidates(10, 6) == 10 + 5 * 100
    assert tree_nodes(10, 6, 60) == 60
    assert tree_nodes(2, 1, 60) == 3  # capped by the candidates drafted
    assert tree_nodes(1, 1, 1) == 1


# -- generate API ---------------------------------------------------------------------------------------

PROMPTS = [[5, 17, 33, 2, 90], [7, 8], [100, 3, 4, 50, 12, 61, 9]]
TREE = dict(tree_top_k=3, depth=3, total_tokens=8)


def test_tensor_inputs_with_padding_equal_lists():
    model = make_target(sharpen=8.0)
    head = TargetOracleHead(model)
    want = generate(model, head, PROMPTS, max_new_tokens=6, **TREE)
    L = max(map(len, PROMPTS))
    ids = torch.zeros(3, L, dtype=torch.int64)
    mask = torch.zeros(3, L, dtype=torch.int64)
    for b, p in enumerate(PROMPTS):  # left padding, as tokenizers do
        ids[b, L - len(p) :] = torch.tensor(p)
        mask[b, L - len(p) :] = 1
    got = generate(TargetModel(model), head, ids, mask, max_new_tokens=6, **TREE)
    assert got.sequences == want.sequences
    got = generate(model, head, PROMPTS, max_new_tokens=6, prefill_chunk_size=2, **TREE)
    assert got.sequences == want.sequences
    one = generate(model, head, PROMPTS[0], max_new_tokens=6, **TREE)  # a single flat prompt
    assert one.sequences == want.sequences[:1]
    ref = generate(model, head, PROMPTS, max_new_tokens=6, backend="torch", **TREE)  # reference kernels
    assert ref.sequences == want.sequences


def test_result_statistics():
    model = make_target(sharpen=8.0)
    res = generate(model, TargetOracleHead(model), PROMPTS, max_new_tokens=10, tree_top_k=1, depth=4, total_tokens=5)
    assert isinstance(res, GenerationResult)
    assert res.prompt_lengths == [5, 2, 7]
    assert res.num_new_tokens == 30
    assert res.accept_lengths.shape == (res.passes, 3)
    # First token from the prefill, then 9 tokens in passes of up to depth + 1 = 5.
    assert res.passes >= 2 and res.tau <= 5.0
    assert res.tau == pytest.approx(float(res.accept_lengths.sum()) / float((res.accept_lengths > 0).sum()))
    assert len(res.tau_per_request) == 3
    assert "tau" in res.summary() and res.draft_time > 0 and res.verify_time > 0
    base = generate_baseline(model, PROMPTS, max_new_tokens=10)
    assert base.sequences == res.sequences
    assert base.tau == 1.0 and base.passes == 9


def test_baseline_equals_hf_greedy():
    model = make_target()
    res = generate_baseline(model, PROMPTS, max_new_tokens=8)
    for b, p in enumerate(PROMPTS):
        hf = model.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False)
        assert res.sequences[b] == hf[0, len(p) :].tolist()


def test_sampling_is_reproducible_with_a_generator():
    model = make_target(sharpen=4.0)
    head = make_head(model)
    kw = dict(max_new_tokens=8, temperature=0.8, top_p=0.9, **TREE)
    a = generate(model, head, PROMPTS, generator=torch.Generator().manual_seed(5), **kw)
    b = generate(model, head, PROMPTS, generator=torch.Generator().manual_seed(5), **kw)
    assert a.sequences == b.sequences
    assert all(len(s) == 8 for s in a.sequences)
    c = generate_baseline(
        model, PROMPTS, generator=torch.Generator().manual_seed(5), max_new_tokens=8, temperature=0.8, top_p=0.9
    )
    assert all(len(s) == 8 for s in c.sequences)


def test_eos_per_request_and_finished_requests_are_frozen():
    model = make_target(sharpen=8.0)
    full = generate_baseline(model, PROMPTS, max_new_tokens=12).sequences
    eos = full[1][2]  # request 1 stops early
    res = generate(model, TargetOracleHead(model), PROMPTS, max_new_tokens=12, eos_token_id=eos, **TREE)
    for b, seq in enumerate(full):
        want = seq[: seq.index(eos) + 1] if eos in seq else seq
        assert res.sequences[b] == want
    # Once finished, a request accepts nothing more (accept_len 0).
    acc = res.accept_lengths[:, 1]
    first_zero = int((acc == 0).nonzero()[0]) if bool((acc == 0).any()) else len(acc)
    assert bool((acc[first_zero:] == 0).all())


def test_eos_defaults_to_the_generation_config():
    """eos_token_id=None stops where model.generate stops: at generation_config.eos_token_id (an int or a
    list); eos_token_id=[] turns stopping off. For generate and generate_baseline alike."""
    model = make_target(sharpen=8.0)
    full = generate_baseline(model, PROMPTS, max_new_tokens=12).sequences  # no eos in the config yet
    eos = full[1][2]  # request 1 stops early
    want = [seq[: seq.index(eos) + 1] if eos in seq else seq for seq in full]
    assert want != full
    for config_eos in (eos, [eos, 10**6]):
        model.generation_config.eos_token_id = config_eos
        assert generate(model, TargetOracleHead(model), PROMPTS, max_new_tokens=12, **TREE).sequences == want
        assert generate_baseline(TargetModel(model), PROMPTS, max_new_tokens=12).sequences == want
        hf = model.generate(torch.tensor([PROMPTS[1]]), max_new_tokens=12, do_sample=False)
        assert hf[0, len(PROMPTS[1]) :].tolist() == want[1]
    assert (
        generate(model, TargetOracleHead(model), PROMPTS, max_new_tokens=12, eos_token_id=[], **TREE).sequences == full
    )
    assert generate_baseline(model, PROMPTS, max_new_tokens=12, eos_token_id=[]).sequences == full
    with pytest.raises(TypeError, match="eos_token_id"):
        generate_baseline(model, PROMPTS, max_new_tokens=2, eos_token_id="</s>")


def test_errors():
    model = make_target()
    head = make_head(model)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, head, PROMPTS, max_new_tokens=0)
    with pytest.raises(ValueError, match="tree_top_k"):
        generate(model, head, PROMPTS, tree_top_k=200)  # more than the vocabulary
    with pytest.raises(ValueError, match="depth"):
        generate(model, head, PROMPTS, depth=0)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, head, PROMPTS, temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, head, PROMPTS, temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="empty"):
        generate(model, head, [[1, 2], []])
    with pytest.raises(ValueError, match="attention_mask"):
        generate(model, head, torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="input_ids"):
        generate(model, head, "hello")
    with pytest.raises(ValueError, match="cuda_graph=True needs the target on a CUDA device; it is on cpu"):
        generate(model, head, PROMPTS, cuda_graph=True)
    with pytest.raises(ValueError, match="cuda_graph=True needs the target on a CUDA device"):
        generate_baseline(model, PROMPTS, cuda_graph=True)
    with pytest.raises(TypeError, match="cuda_graph: expected True or False"):
        generate(model, head, PROMPTS, cuda_graph="yes")


# -- CUDA graphs -------------------------------------------------------------------------------------


def test_a_recorded_pass_replays_the_eager_loop(recorded_passes):
    """What CUDA graphs rely on, checked without a GPU: replaying one recorded pass (no Python re-run)
    emits exactly the eager loop's tokens and accept lengths, for ragged requests, with a request stopping
    on EOS, for generate and generate_baseline: no pass depends on host-side state that changes."""
    model = make_target(sharpen=4.0)
    heads = [make_head(model, kind) for kind in ("eagle", "fspad")]
    torch.manual_seed(2)  # GRIFFIN with a reduced draft vocabulary: the draft-to-target gather is replayed too
    reduced = build_draft_head(DraftConfig.from_target(model.config, "griffin", draft_vocab_size=64)).eval()
    reduced.set_draft_vocab(torch.randperm(model.config.vocab_size)[:64])
    reduced.bind_target(model.get_input_embeddings(), model.get_output_embeddings())
    heads.append(reduced)
    target = TargetModel(model)
    full = generate_baseline(target, PROMPTS, max_new_tokens=12, eos_token_id=[]).sequences
    for eos, head in (([], heads[0]), ([], heads[1]), ([full[1][4]], heads[2])):
        kw = dict(max_new_tokens=12, eos_token_id=eos)
        for run in (
            lambda g, kw=kw, head=head: generate(target, head, PROMPTS, cuda_graph=g, **kw, **TREE),
            lambda g, kw=kw: generate(target, TargetOracleHead(model), PROMPTS, cuda_graph=g, **kw, **TREE),
            lambda g, kw=kw: generate_baseline(target, PROMPTS, cuda_graph=g, **kw),
        ):
            eager, replayed = run(False), run(True)
            assert replayed.sequences == eager.sequences
            assert replayed.passes == eager.passes - 1  # the recording ran the second pass
            want = torch.cat([eager.accept_lengths[:1], eager.accept_lengths[2:]])
            assert torch.equal(replayed.accept_lengths, want)
    assert len(recorded_passes) == 9 and min(recorded_passes) > 20  # every run was recorded and replayed


def test_a_failed_capture_says_how_to_decode_without_graphs(recorded_passes, monkeypatch):
    import importlib

    mod = importlib.import_module("specdec.decoding.cuda_graphs")

    def failing(one_pass, dev, generator):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(mod, "capture_pass", failing)
    model = make_target(sharpen=4.0)
    with pytest.raises(RuntimeError, match="capturing the decode pass as a CUDA graph failed .*cuda_graph=False"):
        generate(model, make_head(model), PROMPTS, max_new_tokens=8, eos_token_id=[], cuda_graph=True, **TREE)


# -- CUDA graphs (need a GPU) -------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["batch1", "ragged3"])
def test_cuda_graph_passes_equal_eager_ones(prompts):
    """One captured pass replayed: the same tokens, passes and accept lengths as the eager loop (greedy,
    equal to the target's own greedy decoding); sampled with a generator, reproducible run to run."""
    model = make_target(sharpen=4.0).cuda()
    target = TargetModel(model)
    kw = dict(max_new_tokens=12, eos_token_id=[], **TREE)
    for kind in ("eagle", "fspad", "griffin"):
        head = make_head(model, kind).cuda()
        eager = generate(target, head, prompts, **kw)
        graph = generate(target, head, prompts, cuda_graph=True, **kw)
        assert graph.sequences == eager.sequences and graph.passes == eager.passes, kind
        assert torch.equal(graph.accept_lengths, eager.accept_lengths)
        assert graph.capture_time > 0 and eager.capture_time == 0
    base = generate_baseline(target, prompts, max_new_tokens=12, eos_token_id=[], cuda_graph=True)
    assert base.sequences == eager.sequences and base.passes == 11
    oracle = generate(target, TargetOracleHead(model), prompts, cuda_graph=True, **kw)
    assert oracle.sequences == eager.sequences and oracle.tau > graph.tau  # the oracle's whole paths get in
    sample = dict(temperature=0.8, top_p=0.9, **kw)
    runs = [
        generate(target, head, prompts, generator=torch.Generator("cuda").manual_seed(3), cuda_graph=g, **sample)
        for g in (True, True, False)
    ]
    assert runs[0].sequences == runs[1].sequences  # reproducible
    # the registered generator advances by one pass's draws per replay: the eager loop's uniforms
    assert runs[0].sequences == runs[2].sequences


@pytest.mark.cuda
def test_cuda_graph_stops_on_eos_and_after_one_pass():
    """A request that stops on EOS stays frozen across replays; a run that ends in its first (eager) pass
    captures nothing."""
    model = make_target(sharpen=8.0).cuda()
    full = generate_baseline(model, PROMPTS, max_new_tokens=12).sequences
    eos = full[1][2]
    res = generate(
        model, TargetOracleHead(model), PROMPTS, max_new_tokens=12, eos_token_id=eos, cuda_graph=True, **TREE
    )
    for b, seq in enumerate(full):
        assert res.sequences[b] == (seq[: seq.index(eos) + 1] if eos in seq else seq)
    short = generate(model, TargetOracleHead(model), PROMPTS, max_new_tokens=2, cuda_graph=True, **TREE)
    assert short.passes == 1 and short.sequences == [s[:2] for s in full]
