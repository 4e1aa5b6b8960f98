"""specdec.target: a Hugging Face model driven with our KV cache and tree attention (CPU, fp32, tiny models).

The oracle is the model's own forward with its default attention over full sequences: prefill logits and
features (last hidden state after the final norm), tree verification logits of every node (= the logits
after the node's root-to-node path), and logits after compaction. Our fp32 results must be as close to
the model's fp64 forward as its own fp32 forward is (helpers.assert_close_as_torch).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import specdec_kernels as sk
from specdec.target import ATTN_IMPLEMENTATION, TargetModel, TreeKVCache

from helpers import assert_close_as_torch
from tiny_models import FAMILIES, make_target, one_thread  # noqa: F401  (autouse fixture)


def hf_last(model, seqs):
    """(logits [R, V], hidden [R, H]) after the last token of each sequence, from the model's own forward."""
    logits, hidden = [], []
    with torch.no_grad():
        for s in seqs:
            out = model(torch.tensor([s]), output_hidden_states=True)
            logits.append(out.logits[0, -1])
            hidden.append(out.hidden_states[-1][0, -1])
    return torch.stack(logits), torch.stack(hidden)


class Oracle:
    """The model's own forward on full sequences, in fp32 (PyTorch's twin of our fp32 computation) and in
    fp64 (the truth)."""

    def __init__(self, model):
        self.model, self.wide = model, copy.deepcopy(model).double()

    def check(self, logits, hidden, seqs, what):
        """Our logits [R, V] / hidden [R, H] after the last token of each sequence, against the oracle's."""
        lg, hd = hf_last(self.model, seqs)
        lg64, hd64 = hf_last(self.wide, seqs)
        assert_close_as_torch(logits, lg64, lg, what=f"{what} logits")
        if hidden is not None:
            assert_close_as_torch(hidden, hd64, hd, what=f"{what} hidden")


def path(parents, i):
    p = [i]
    while parents[p[-1]] != -1:
        p.append(parents[p[-1]])
    return p[::-1]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_prefill_verify_commit_match_full_forward(family):
    model = make_target(family)
    oracle = Oracle(model)
    tgt = TargetModel(model)
    prompts = [[1, 5, 9, 20, 33, 7, 8], [4, 2, 90], [11, 12, 13, 14, 15]]
    B, L = 3, 7
    ids = torch.zeros(B, L, dtype=torch.int64)
    for b, p in enumerate(prompts):
        ids[b, : len(p)] = torch.tensor(p)
    lengths = torch.tensor([len(p) for p in prompts], dtype=torch.int32)
    cache = tgt.new_cache(B, 40)
    pre = tgt.prefill(ids, lengths, cache, chunk_size=3)  # chunks smaller than the prompts
    assert cache.cache_len.tolist() == [7, 3, 5]
    oracle.check(pre.logits, None, prompts, f"{family} prefill")
    # Features of every real prompt column (compared all at once: the largest error of many values is a
    # steadier statistic than that of a few).
    got, h32, h64 = [], [], []
    for b, p in enumerate(prompts):
        with torch.no_grad():
            h32.append(model(torch.tensor([p]), output_hidden_states=True).hidden_states[-1][0])
            h64.append(oracle.wide(torch.tensor([p]), output_hidden_states=True).hidden_states[-1][0])
        got.append(pre.hidden[b, : len(p)])
    assert_close_as_torch(torch.cat(got), torch.cat(h64), torch.cat(h32), what=f"{family} prefill features")

    # A ragged batch of trees (different shapes per request), root = a fresh token.
    parents = torch.tensor(
        [
            [-1, 0, 0, 1, 1, 3, 2, 6],
            [-1, 0, 1, 2, 3, 4, 5, 6],  # a chain
            [-1, 0, 0, 0, 0, 0, 0, 0],
        ],
        dtype=torch.int32,
    )  # a star
    tokens = torch.randint(0, 128, (B, 8), generator=torch.Generator().manual_seed(1))
    tree = sk.build_tree(parents)
    ver = tgt.verify(tokens, tree, cache)
    assert cache.cache_len.tolist() == [7, 3, 5]  # verify commits nothing
    seqs = [prompts[b] + tokens[b, path(parents[b].tolist(), i)].tolist() for b in range(B) for i in range(8)]
    oracle.check(ver.logits.flatten(0, 1), ver.hidden.flatten(0, 1), seqs, f"{family} verify")

    # Accept different paths per request, compact, then verify a one-node tree: it must see exactly the
    # prompt + accepted path.
    accept_nodes = torch.tensor(
        [[0, 1, 3, 5, -1, -1, -1, -1], [0, 1, 2, 3, 4, 5, 6, 7], [0, -1, -1, -1, -1, -1, -1, -1]], dtype=torch.int32
    )
    accept_len = torch.tensor([4, 8, 1], dtype=torch.int32)
    tgt.commit(cache, accept_nodes, accept_len)
    assert cache.cache_len.tolist() == [11, 11, 6]
    nxt = torch.tensor([[3], [4], [5]])
    one = sk.build_tree(torch.full((B, 1), -1, dtype=torch.int32))
    ver2 = tgt.verify(nxt, one, cache)
    seqs = [
        prompts[b] + tokens[b, accept_nodes[b, : accept_len[b]].long()].tolist() + [int(nxt[b, 0])] for b in range(B)
    ]
    oracle.check(ver2.logits[:, 0], None, seqs, f"{family} after compaction")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_attention_checks_once_per_forward_and_changes_nothing(family, monkeypatch):
    """The first attention layer of a forward runs the checked specdec_kernels.tree_attention; the others
    reuse its backend choice (TreeAttentionState.plan). Outputs equal those of checking every layer."""
    from specdec.target import attention

    model = make_target(family)
    tgt = TargetModel(model)
    layers = model.config.num_hidden_layers
    ids = torch.randint(1, 100, (2, 6), generator=torch.Generator().manual_seed(3))
    lengths = torch.tensor([6, 4], dtype=torch.int32)
    tree = sk.build_tree(torch.tensor([[-1, 0, 0, 1], [-1, 0, 1, 2]], dtype=torch.int32))
    tokens = torch.randint(1, 100, (2, 4), generator=torch.Generator().manual_seed(4))

    def run():
        cache = tgt.new_cache(2, 16)
        pre = tgt.prefill(ids, lengths, cache)
        return pre, tgt.verify(tokens, tree, cache)

    run()  # the first forward also checks the lean layers against transformers' (specdec.target.lean_layers)
    checked = []
    real = attention.specdec_kernels.tree_attention
    monkeypatch.setattr(attention.specdec_kernels, "tree_attention", lambda *a, **k: checked.append(1) or real(*a, **k))
    planned = run()
    assert len(checked) == 2 and layers > 1  # one checked call per forward (prefill, verify)
    monkeypatch.setattr(attention, "_signature", lambda *a: object())  # never equal: check every layer
    checked.clear()
    every = run()
    assert len(checked) == 2 * layers
    for a, b in zip(planned, every):
        assert torch.equal(a.logits, b.logits) and torch.equal(a.hidden, b.hidden)


def test_model_stays_a_plain_hf_model():
    """The attention implementation is switched only inside our forward."""
    model = make_target()
    before = model.config._attn_implementation
    tgt = TargetModel(model)
    cache = tgt.new_cache(1, 16)
    tgt.prefill(torch.tensor([[1, 2, 3]]), torch.tensor([3], dtype=torch.int32), cache)
    assert model.config._attn_implementation == before != ATTN_IMPLEMENTATION
    model(torch.tensor([[1, 2, 3]]))  # still runs with its own attention


def test_attention_function_refuses_outside_target_forward():
    model = make_target()
    model.config._attn_implementation = ATTN_IMPLEMENTATION
    try:
        with pytest.raises(RuntimeError, match="specdec_state"):
            model(torch.tensor([[1, 2, 3]]))
    finally:
        model.config._attn_implementation = "sdpa"


def test_sliding_window_longer_than_cache_refused():
    model = make_target("mistral", sliding_window=8)
    tgt = TargetModel(model)
    with pytest.raises(NotImplementedError, match="sliding-window"):
        tgt.prefill(torch.tensor([[1, 2, 3]]), torch.tensor([3], dtype=torch.int32), tgt.new_cache(1, 16))
    tgt.prefill(torch.tensor([[1, 2, 3]]), torch.tensor([3], dtype=torch.int32), tgt.new_cache(1, 8))  # fits


def test_errors():
    model = make_target()
    tgt = TargetModel(model)
    cache = tgt.new_cache(2, 8)
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    lens = torch.tensor([3, 3], dtype=torch.int32)
    with pytest.raises(ValueError, match="batch size 2"):  # mismatched batch sizes
        tgt.prefill(ids[:1], lens[:1], cache)
    with pytest.raises(ValueError, match="cache too small"):
        tgt.prefill(torch.ones(2, 9, dtype=torch.int64), lens, cache)
    with pytest.raises(TypeError, match="int32"):
        tgt.prefill(ids, lens.long(), cache)
    with pytest.raises(TypeError, match="TreeKVCache"):
        tgt.prefill(ids, lens, object())
    tgt.prefill(ids, lens, cache)
    tree = sk.build_tree(torch.tensor([[-1, 0, 0]] * 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="tree"):  # tree of the wrong shape
        tgt.verify(torch.ones(2, 4, dtype=torch.int64), tree, cache)
    with pytest.raises(TypeError, match="Tree"):
        tgt.verify(torch.ones(2, 3, dtype=torch.int64), tree.mask, cache)
    with pytest.raises(TypeError, match="int64"):
        tgt.forward(ids.int(), ids, cache, sk.chain_mask(2, 3))
    with pytest.raises(ValueError, match="words"):
        tgt.forward(
            torch.ones(2, 40, dtype=torch.int64),
            torch.ones(2, 40, dtype=torch.int64),
            tgt.new_cache(2, 64),
            torch.zeros(2, 40, 1, dtype=torch.int32),
        )
    with pytest.raises(TypeError, match="PreTrainedModel"):
        TargetModel(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_forward_emits_no_deprecation_warning(family):
    """The cache goes to the model under the argument name of the installed transformers (`cache`, or
    `past_key_values` before it was renamed): no FutureWarning / DeprecationWarning on a target forward."""
    tgt = TargetModel(make_target(family))
    cache = tgt.new_cache(1, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tgt.prefill(torch.tensor([[1, 2, 3]]), torch.tensor([3], dtype=torch.int32), cache)
        tgt.verify(torch.tensor([[4, 5, 6]]), sk.build_tree(torch.tensor([[-1, 0, 0]], dtype=torch.int32)), cache)
    bad = [
        f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})"
        for w in caught
        if issubclass(w.category, (FutureWarning, DeprecationWarning))
    ]
    assert not bad, bad


def test_cache_layout():
    tgt = TargetModel(make_target())
    cache = tgt.new_cache(3, 10)
    assert isinstance(cache, TreeKVCache)
    assert len(cache.caches()) == 2 * 2
    assert cache.caches()[0].shape == (3, 2, 10, 16)
    assert cache.cache_len.dtype == torch.int32 and cache.cache_len.tolist() == [0, 0, 0]


@pytest.mark.parametrize("B,T,S", [(1, 1, 5), (3, 4, 9), (2, 7, 7)])
def test_write_slots_matches_scatter(B, T, S):
    from specdec.kv import write_slots

    g = torch.Generator().manual_seed(B * 100 + T)
    buf = torch.randn(B, 2, S, 3, generator=g, dtype=torch.float64).to(torch.bfloat16)
    new = torch.randn(B, T, 2, 3, generator=g).transpose(1, 2)  # fp32, non-contiguous, as after q/k/v views
    starts = torch.randint(0, S - T + 1, (B,), generator=g)
    slots = starts[:, None] + torch.arange(T)
    want = buf.clone().scatter_(2, slots[:, None, :, None].expand(B, 2, T, 3), new.to(torch.bfloat16))
    write_slots(buf, slots, new)
    assert torch.equal(buf, want)


def test_paged_cache_pool_and_prefill_match_the_contiguous_cache():
    """A PagedTreeKVCache draws shuffled pages from its pool, gives them back on release, and a prefill on
    it gives the contiguous cache's hidden states and logits."""
    from specdec.target import PagedTreeKVCache, PagePool

    model = make_target()
    t = TargetModel(model)
    pool = PagePool(40, seed=1)
    cache = t.new_cache(2, 20, page_size=3, pool=pool)
    assert isinstance(cache, PagedTreeKVCache) and pool.free == 40 - 2 * 7
    table = cache.block_table.flatten().tolist()
    assert len(set(table)) == 14 and table != sorted(table)  # distinct pages, not in physical order
    ids = torch.randint(0, 128, (2, 9))
    lengths = torch.tensor([9, 5], dtype=torch.int32)
    flat = t.prefill(ids, lengths, t.new_cache(2, 20))
    paged = t.prefill(ids, lengths, cache)
    torch.testing.assert_close(paged.logits, flat.logits)
    torch.testing.assert_close(paged.hidden, flat.hidden)
    cache.release()
    assert pool.free == 40
    with pytest.raises(ValueError, match="3 requests of 100 slots need 75 pages of 4; 10 of 10 are free"):
        t.new_cache(3, 100, page_size=4, pool=PagePool(10))
    with pytest.raises(ValueError, match="page_size >= 1"):
        t.new_cache(1, 10, page_size=0)
