"""Reduced draft vocabulary (config.draft_vocab_size; FR-Spec / EAGLE-3): choosing the tokens
(specdec.training.vocab), the head's restricted output layer over the target's frozen lm_head (cached rows,
no gradient into the target), save/load, the drafting loop mapping draft ids back to target ids, and
losslessness: greedy speculative decoding with a reduced-vocabulary head equals the target's greedy decoding.

CPU, fp32, tiny random targets (tests/tiny_models.py).
"""

from __future__ import annotations

import functools
import json

import pytest
import torch

from specdec.decoding import generate
from specdec.decoding.drafting import TreeDrafter
from specdec.models import DraftConfig, build_draft_head, load_draft_head
from specdec.testing import TargetOracleHead
from specdec.training.vocab import count_tokens, top_tokens

from helpers import assert_equal, tolerance
from tiny_models import head_reduction, make_target, one_thread  # noqa: F401  (autouse fixture)

KINDS = ("eagle", "fspad", "griffin")
PROMPTS = [[5, 17, 33, 2, 90], [7, 8], [100, 3, 4, 250, 12, 61, 9, 44, 18]]
VOCAB = 256


@functools.lru_cache(maxsize=None)
def target(sharpen: float = 1.0):
    return make_target("llama", vocab=VOCAB, max_positions=512, sharpen=sharpen)


def make_head(kind, draft_vocab=None, ids=None, seed=1, sharpen=1.0):
    torch.manual_seed(seed)
    cfg = DraftConfig.from_target(target(sharpen).config, kind, draft_vocab_size=draft_vocab)
    head = build_draft_head(cfg).eval()
    if draft_vocab is not None:
        if ids is None:
            g = torch.Generator().manual_seed(seed + 100)
            ids = torch.sort(torch.randperm(VOCAB, generator=g)[:draft_vocab]).values
        head.set_draft_vocab(ids)
    return head


@functools.lru_cache(maxsize=None)
def hf_greedy(sharpen: float, prompt: tuple, n: int) -> list:
    model = target(sharpen)
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)
    return out[0, len(prompt) :].tolist()


# --------------------------------------------------------------------------------------------------
# Choosing the vocabulary


def test_top_tokens_order_ties_and_always():
    counts = torch.tensor([5, 3, 5, 0, 7, 3])
    # count descending, ties to the lower id: 4 (7), 0 (5), 2 (5), 1 (3), 5 (3), 3 (0); returned sorted
    assert_equal(top_tokens(counts, 3), torch.tensor([0, 2, 4]))
    assert_equal(top_tokens(counts, 4), torch.tensor([0, 1, 2, 4]))
    assert_equal(top_tokens(counts, 6), torch.arange(6))
    assert_equal(top_tokens(counts, 3, always=(3,)), torch.tensor([0, 3, 4]))  # 3 has count 0 but is kept
    assert_equal(top_tokens(counts, 3, always=[3, 5, 3]), torch.tensor([3, 4, 5]))
    assert top_tokens(counts, 2).dtype == torch.int64
    for bad in (0, 7):
        with pytest.raises(ValueError, match="size"):
            top_tokens(counts, bad)
    with pytest.raises(ValueError, match="always"):
        top_tokens(counts, 1, always=(1, 2))
    with pytest.raises(ValueError, match="always"):
        top_tokens(counts, 2, always=(6,))


def test_count_tokens():
    ids = torch.tensor([[1, 2, 2, 3], [3, 3, 0, 1]])
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0]], dtype=torch.bool)
    assert_equal(count_tokens(ids, mask, 5), torch.tensor([1, 0, 2, 2, 0]))
    acc = count_tokens(ids, None, 5)
    assert_equal(acc, torch.tensor([1, 2, 2, 3, 0]))
    assert_equal(count_tokens(ids, mask, 5, counts=acc), torch.tensor([2, 2, 4, 5, 0]))
    with pytest.raises(ValueError, match="token ids"):
        count_tokens(ids, None, 3)


# --------------------------------------------------------------------------------------------------
# The restricted output layer


@pytest.mark.parametrize("kind", KINDS)
def test_reduced_logits_are_the_target_rows(kind):
    """Logits [.., V_d] = the full-vocabulary logits at the mapped ids; the rows are the bound lm_head's,
    gathered once (cached) and refreshed when the weight or the map changes; no gradient reaches it."""
    model = target()
    full = make_head(kind)
    ids = torch.tensor([3, 9, 10, 77, 200, 255, 0, 128])  # any order
    red = make_head(kind, len(ids), ids)
    red.load_state_dict({k: v for k, v in full.state_dict().items()}, strict=False)
    for h in (full, red):
        h.bind_target(model.get_input_embeddings(), model.lm_head)
    assert red.draft_vocab_size == 8 and full.draft_vocab_size == VOCAB
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 5, model.config.hidden_size, generator=g)
    x = torch.randint(0, VOCAB, (2, 5), generator=g)
    with torch.no_grad():
        a = full.forward_sequence(f, x)
        b = red.forward_sequence(f, x)
    assert b.logits.shape == (2, 5, 8)
    atol, rtol = tolerance(torch.float32, head_reduction(red.config, 8), float(a.logits.abs().max()))
    torch.testing.assert_close(b.logits, a.logits[..., ids], atol=atol, rtol=rtol)
    assert torch.equal(b.hidden, a.hidden)
    assert_equal(red.to_target_ids(torch.tensor([[0, 3], [7, 1]])), torch.tensor([[3, 77], [128, 9]]))
    # cached: the same rows tensor on the next call
    rows = red._draft_lm_cache[1]
    red.compute_logits(f)
    assert red._draft_lm_cache[1] is rows and rows.shape == (8, model.config.hidden_size)
    # training: gradients reach the head, never the target's lm_head or embedding
    out = red.forward_train(f, x)
    (out.logits.logsumexp(-1).sum() + out.hidden.square().sum()).backward()
    assert model.lm_head.weight.grad is None and model.get_input_embeddings().weight.grad is None
    assert all(p.grad is not None for p in red.parameters())
    # an in-place change of the target's weight (or of the map) is seen
    with torch.no_grad():
        before = red.compute_logits(f)
        model.lm_head.weight.mul_(2.0)
    try:
        with torch.no_grad():
            assert torch.equal(red.compute_logits(f), 2.0 * before)  # scaling by 2 is exact
    finally:
        with torch.no_grad():
            model.lm_head.weight.div_(2.0)
    red.set_draft_vocab(torch.arange(8))
    with torch.no_grad():
        torch.testing.assert_close(red.forward_sequence(f, x).logits, a.logits[..., :8], atol=atol, rtol=rtol)


def test_set_draft_vocab_checks():
    head = make_head("eagle", 4)
    with pytest.raises(ValueError, match="distinct"):
        head.set_draft_vocab(torch.tensor([1, 1, 2, 3]))
    with pytest.raises(ValueError, match="lie in"):
        head.set_draft_vocab(torch.tensor([1, 2, 3, VOCAB]))
    with pytest.raises(ValueError, match="full vocabulary"):
        make_head("eagle").set_draft_vocab(torch.arange(4))
    with pytest.raises(ValueError, match="draft_vocab_size"):
        DraftConfig(
            kind="eagle", vocab_size=10, hidden_size=8, intermediate_size=8, num_attention_heads=2, draft_vocab_size=11
        )


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind, tmp_path):
    head = make_head(kind, 32)
    head.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["draft_vocab_size"] == 32
    from safetensors.torch import load_file

    sd = load_file(tmp_path / "model.safetensors")
    assert sd["draft_to_target"].dtype == torch.int64 and torch.equal(sd["draft_to_target"], head.draft_to_target)
    loaded = load_draft_head(tmp_path)
    assert loaded.config.draft_vocab_size == 32 and loaded.load_report["missing"] == []
    assert torch.equal(loaded.draft_to_target, head.draft_to_target)
    half = load_draft_head(tmp_path, dtype=torch.float16)
    assert half.draft_to_target.dtype == torch.int64 and torch.equal(half.draft_to_target, head.draft_to_target)
    model = target()
    for h in (head, loaded):
        h.bind_target(model.get_input_embeddings(), model.lm_head)
    f = torch.randn(1, 4, model.config.hidden_size)
    x = torch.randint(0, VOCAB, (1, 4))
    with torch.no_grad():
        a, b = head.forward_sequence(f, x), loaded.forward_sequence(f, x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.hidden, b.hidden)
    # a full-vocabulary head records null and saves no map
    full = make_head(kind)
    full.save_pretrained(tmp_path / "full")
    assert json.loads((tmp_path / "full" / "config.json").read_text())["draft_vocab_size"] is None
    assert "draft_to_target" not in load_file(tmp_path / "full" / "model.safetensors")
    assert load_draft_head(tmp_path / "full").draft_to_target is None


# --------------------------------------------------------------------------------------------------
# Drafting


def run_drafter(head, k=4, depth=3, total=12, seed=0):
    model = target()
    head.bind_target(model.get_input_embeddings(), model.lm_head)
    B, T = 2, 6
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(B, T, model.config.hidden_size, generator=g)
    toks = torch.randint(0, VOCAB, (B, T), generator=g)
    d = TreeDrafter(head, B, 32, k, depth, total)
    logits, hidden = d.extend(feats, toks, torch.tensor([T, T - 2], dtype=torch.int32))
    return d.draft(toks[:, -1], logits, hidden)


@pytest.mark.parametrize("kind", KINDS)
def test_drafter_maps_draft_ids_to_target_ids(kind):
    """A head whose draft vocabulary is the whole vocabulary in another order grows exactly the tree of the
    full-vocabulary head (same target tokens); a smaller vocabulary drafts only its own tokens."""
    full = make_head(kind)
    perm = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(7))
    permuted = make_head(kind, VOCAB, perm)
    permuted.load_state_dict({k: v for k, v in full.state_dict().items()}, strict=False)
    pa, ta = run_drafter(full)
    pb, tb = run_drafter(permuted)
    assert_equal(pb, pa)
    assert_equal(tb, ta)
    small = make_head(kind, 16)
    _, tokens = run_drafter(small)
    assert bool(torch.isin(tokens[:, 1:], small.draft_to_target).all())
    with pytest.raises(ValueError, match="draft vocabulary"):
        TreeDrafter(small, 1, 8, tree_top_k=17, depth=2, total_tokens=10)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("draft_vocab", [16, 64])
def test_greedy_lossless_with_reduced_vocab(kind, draft_vocab):
    """Batch 3 (ragged prompts) and batch 1: the output equals the target's greedy decoding."""
    model = target()
    head = make_head(kind, draft_vocab)
    n = 10
    tree = dict(tree_top_k=4, depth=3, total_tokens=12)
    for prompts in (PROMPTS, PROMPTS[2:]):
        res = generate(model, head, prompts, max_new_tokens=n, **tree)
        assert res.sequences == [hf_greedy(1.0, tuple(p), n) for p in prompts]


class RestrictedOracle:
    """The target-oracle draft (specdec.testing.TargetOracleHead: the target's own predictions) seen through
    a reduced vocabulary: its logits restricted to `draft_to_target`, indexed by draft id."""

    def __init__(self, model, ids):
        self.oracle = TargetOracleHead(model)
        self.draft_to_target = ids

    @property
    def device(self):
        return self.oracle.device

    def bind_target(self, embed_tokens, lm_head):
        self.oracle.bind_target(embed_tokens, lm_head)
        return self

    def new_cache(self, *args, **kwargs):
        return self.oracle.new_cache(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        out = self.oracle(*args, **kwargs)
        return type(out)(out.logits[..., self.draft_to_target], out.hidden)


def test_greedy_lossless_reduced_vocab_long_paths():
    """Drafts that are the target's own predictions, restricted to a vocabulary of the target's greedy
    output tokens minus a few: paths are accepted through the mapped ids (tau well above 1) and stop at the
    tokens the draft cannot propose; the output equals the target's greedy decoding."""
    model = target(8.0)
    n = 12
    want = [hf_greedy(8.0, tuple(p), n) for p in PROMPTS]
    counts = count_tokens(torch.tensor([w for w in want]), None, VOCAB)
    emitted = counts.nonzero()[:, 0]
    dropped = emitted[::4]  # the draft cannot propose these
    c = counts.clone()
    c[dropped] = 0
    c[dropped] -= 1  # ranked after every other token
    ids = top_tokens(c, 48)
    assert not bool(torch.isin(dropped, ids).any())
    head = RestrictedOracle(model, ids)
    res = generate(model, head, PROMPTS, max_new_tokens=n, tree_top_k=2, depth=5, total_tokens=10)
    assert res.sequences == want
    assert res.tau > 1.5, res.tau


def test_rows_gathered_under_inference_mode_do_not_break_training():
    model = target()
    head = make_head("fspad", 16)
    head.bind_target(model.get_input_embeddings(), model.lm_head)
    f = torch.randn(1, 3, model.config.hidden_size)
    x = torch.randint(0, VOCAB, (1, 3))
    with torch.inference_mode():
        head.forward_sequence(f, x)  # caches the rows as inference tensors
    out = head.forward_train(f, x)
    out.logits.sum().backward()
    assert head.fc.fc.weight.grad is not None
