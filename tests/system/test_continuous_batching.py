"""specdec.target.continuous_batching.generate_many: many prompts answered by continuous batching.

Greedy fp32 answers equal the model's own `generate` of each prompt alone, whatever the number of slots;
sampled answers depend on the seed only (not the slots) and follow softmax(logits / T); with `features`
the answers are unchanged and every token's captured feature (prompt, answer, tail after an end token)
matches the target's own forward over the whole sequence, contiguous or paged; bad arguments are refused
with messages that say what was expected.
"""

from __future__ import annotations

import pytest
import torch

from specdec.data import target_hidden
from specdec.data.responses import respond
from specdec.target import TargetModel
from specdec.target.continuous_batching import DecodeStats, generate_many

from helpers import assert_close
from tiny_models import FAMILIES, make_target, one_thread  # noqa: F401  (autouse fixture)


def alone(model, prompt, budget, eos):
    """The model's own greedy answer to one prompt: at most `budget` tokens, ending at the first end token."""
    out = model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=budget,
        do_sample=False,
        eos_token_id=eos or None,
        pad_token_id=0,
    )[0, len(prompt) :].tolist()
    cut = next((t + 1 for t, tok in enumerate(out) if tok in eos), len(out))
    return out[:cut]


def random_prompts(n, vocab, seed=0, longest=30):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, longest, (n,), generator=g).tolist()
    budgets = torch.randint(1, 14, (n,), generator=g).tolist()
    return [torch.randint(0, vocab, (ln,), generator=g).tolist() for ln in lengths], budgets


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("slots", [1, 3, 64])
def test_greedy_equals_generate_of_each_prompt(family, slots):
    model = make_target(family, sharpen=4.0)
    prompts, budgets = random_prompts(11, 128, seed=slots)
    # end tokens the answers do produce, so that some answers end early and free their slot
    eos = [alone(model, p, 1, [])[0] for p in prompts[:3]]
    stats = DecodeStats()
    got = generate_many(TargetModel(model), prompts, max_new_tokens=budgets, eos_ids=eos, slots=slots, stats=stats)
    want = [alone(model, p, b, eos) for p, b in zip(prompts, budgets)]
    assert got == want
    assert any(len(a) < b for a, b in zip(got, budgets)) and any(len(a) == b for a, b in zip(got, budgets))
    assert stats.requests == 11 and stats.new_tokens == sum(len(a) for a in got)
    if slots == 1:
        assert stats.idle_rows == 0  # one slot is refilled before every decode step it would spend idle


@pytest.mark.parametrize("page_size,num_pages", [(1, None), (4, None), (16, None), (4, 12)])
def test_paged_slots_answer_as_the_contiguous_cache(page_size, num_pages, monkeypatch):
    """page_size: every request's K/V on pages it takes from a pool when it starts and gives back when it
    ends (no K/V copies at refill or shrink). Greedy answers equal the contiguous cache's and the model's
    own; with a pool too small for every slot at once, requests wait for pages, which are reused."""
    from specdec.target import batch_kv

    kvs = []
    real_init = batch_kv.PagedSlotKV.__init__

    def recorded(self, *a, **k):
        real_init(self, *a, **k)
        kvs.append(self)

    monkeypatch.setattr(batch_kv.PagedSlotKV, "__init__", recorded)
    model = make_target("llama", sharpen=4.0)
    prompts, budgets = random_prompts(11, 128, seed=5)
    eos = [alone(model, p, 1, [])[0] for p in prompts[:3]]
    t = TargetModel(model)
    kw = dict(max_new_tokens=budgets, eos_ids=eos, slots=4)
    flat = generate_many(t, prompts, **kw)
    paged = generate_many(t, prompts, page_size=page_size, num_pages=num_pages, **kw)
    assert paged == flat == [alone(model, p, b, eos) for p, b in zip(prompts, budgets)]
    (kv,) = kvs
    assert kv.pool.free == kv.pool.num_pages - 1  # every request gave its pages back (the scratch page stays)
    assert kv.pages_taken > kv.pool.num_pages - 1  # pages were handed out again to later requests


def test_paged_slots_refuse_a_pool_that_cannot_hold_one_request():
    model = make_target()
    with pytest.raises(ValueError, match="num_pages: 3 pages of 4 cannot hold the longest request"):
        generate_many(TargetModel(model), [[1] * 10], max_new_tokens=5, eos_ids=[], page_size=4, num_pages=3)
    with pytest.raises(ValueError, match="page_size: expected an int >= 1"):
        generate_many(TargetModel(model), [[1, 2]], max_new_tokens=5, eos_ids=[], page_size=0)


def test_one_budget_for_all_and_no_end_tokens():
    model = make_target()
    prompts, _ = random_prompts(5, 128, seed=3)
    got = generate_many(TargetModel(model), prompts, max_new_tokens=6, eos_ids=[], slots=2)
    assert got == [alone(model, p, 6, []) for p in prompts] and all(len(a) == 6 for a in got)
    assert generate_many(TargetModel(model), [], max_new_tokens=4, eos_ids=[]) == []


def test_sampling_depends_on_the_seed_only():
    target = TargetModel(make_target(sharpen=2.0))
    prompts, budgets = random_prompts(9, 128, seed=5)
    seeds = list(range(100, 109))
    runs = [
        generate_many(target, prompts, max_new_tokens=budgets, eos_ids=[], temperature=0.8, seeds=seeds, slots=s)
        for s in (1, 4, 9)
    ]
    assert runs[0] == runs[1] == runs[2]
    other = generate_many(
        target, prompts, max_new_tokens=budgets, eos_ids=[], temperature=0.8, seeds=[s + 1 for s in seeds], slots=4
    )
    assert other != runs[0]


def test_sampled_first_tokens_follow_the_softmax():
    """400 draws of the first answer token: each of the five likeliest tokens within 4.5 standard deviations
    of its expected count under softmax(logits / T)."""
    model = make_target(sharpen=1.5)
    prompt, T, n = [5, 17, 42], 0.7, 400
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([prompt])).logits[0, -1].double() / T, -1)
    got = generate_many(
        TargetModel(model), [prompt] * n, max_new_tokens=1, eos_ids=[], temperature=T, seeds=range(n), slots=16
    )
    counts = torch.bincount(torch.tensor([a[0] for a in got]), minlength=probs.numel()).double()
    for tok in probs.topk(5).indices.tolist():
        p = float(probs[tok])
        assert abs(counts[tok] - n * p) <= 4.5 * (n * p * (1 - p)) ** 0.5 + 1, (tok, counts[tok], n * p)


def test_respond_engines_agree_greedy(tmp_path):
    """respond's "static" and "hf" engines give the same greedy fp32 answers."""
    from test_data import conversations, make_tokenizer

    tok = make_tokenizer("chatml")
    model = make_target(vocab=len(tok), hidden=32)
    convs = [c.messages for c in conversations(6)]
    eos = [tok.eos_token_id]
    kw = dict(eos_ids=eos, max_new_tokens=5, max_len=60, batch_size=3)
    static, hf = (respond(model, tok, convs, engine=e, **kw) for e in ("static", "hf"))
    assert [a.messages for a in static] == [a.messages for a in hf]
    assert [a.open_last for a in static] == [a.open_last for a in hf]
    with pytest.raises(ValueError, match="engine: expected one of"):
        respond(model, tok, convs, engine="fast", **kw)


def test_bad_arguments_are_refused():
    target = TargetModel(make_target())
    with pytest.raises(TypeError, match="TargetModel"):
        generate_many(make_target(), [[1]], max_new_tokens=2, eos_ids=[])
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate_many(target, [[1], []], max_new_tokens=2, eos_ids=[])
    with pytest.raises(ValueError, match="one budget per prompt"):
        generate_many(target, [[1], [2]], max_new_tokens=[2], eos_ids=[])
    with pytest.raises(ValueError, match="every budget must be >= 1"):
        generate_many(target, [[1]], max_new_tokens=0, eos_ids=[])
    with pytest.raises(ValueError, match="one seed per prompt"):
        generate_many(target, [[1]], max_new_tokens=2, eos_ids=[], temperature=1.0)
    with pytest.raises(ValueError, match="temperature"):
        generate_many(target, [[1]], max_new_tokens=2, eos_ids=[], temperature=-1.0)
    with pytest.raises(ValueError, match="slots"):
        generate_many(target, [[1]], max_new_tokens=2, eos_ids=[], slots=0)


@pytest.mark.parametrize("page_size", [None, 4])
@pytest.mark.parametrize("slots", [1, 3])
def test_features_captured_while_answering(page_size, slots):
    """features[i]: the hidden state of every token of prompt + answer (+ its tail when the answer ended with an
    end token), as target_hidden computes it over the finished sequence (fp32: to rounding); answers unchanged."""
    model = make_target("llama", sharpen=4.0)
    prompts, budgets = random_prompts(9, 128, seed=5)
    eos = [alone(model, p, 1, [])[0] for p in prompts[:3]]
    tails = [[(7 * i) % 128 for _ in range(i % 3)] for i in range(len(prompts))]  # 0-2 tokens each
    kw = dict(max_new_tokens=budgets, eos_ids=eos, slots=slots, page_size=page_size)
    plain = generate_many(TargetModel(model), prompts, **kw)
    feats = []
    got = generate_many(TargetModel(model), prompts, features=feats, tails=tails, **kw)
    assert got == plain and len(feats) == len(prompts)
    ended = [bool(a) and a[-1] in eos for a in got]
    assert any(ended) and not all(ended) and any(e and t for e, t in zip(ended, tails))
    for p, a, t, e, f in zip(prompts, got, tails, ended, feats):
        ids = p + a + (t if e else [])
        assert f.shape == (len(ids), model.config.hidden_size)
        assert_close(f, target_hidden(model, torch.tensor([ids]))[0].double())


def test_feature_arguments_are_checked():
    t = TargetModel(make_target("llama"))
    with pytest.raises(ValueError, match="tails: only used with features"):
        generate_many(t, [[1]], max_new_tokens=2, eos_ids=[], tails=[[1]])
    with pytest.raises(TypeError, match="features: expected a list to fill, got dict"):
        generate_many(t, [[1]], max_new_tokens=2, eos_ids=[], features={})
    with pytest.raises(ValueError, match=r"tails: expected one list per prompt \(2\), got 1"):
        generate_many(t, [[1], [2]], max_new_tokens=2, eos_ids=[], features=[], tails=[[3]])


def test_feeding_the_tail_draws_nothing(monkeypatch):
    """Sampled with features: a request's generator draws once per answer token (prefill's pick included),
    never in the steps that feed its last token and tail; the answers equal those without features."""
    from specdec.target import continuous_batching as cb

    model = make_target("llama", sharpen=4.0)
    prompts, budgets = random_prompts(7, 128, seed=9)
    eos = [alone(model, p, 1, [])[0] for p in prompts[:3]]
    kw = dict(max_new_tokens=budgets, eos_ids=eos, slots=3, temperature=1.0, seeds=list(range(7)))
    plain = generate_many(TargetModel(model), prompts, **kw)
    drawn = []
    real = cb._Sampler.__call__
    monkeypatch.setattr(
        cb._Sampler, "__call__", lambda self, logits, reqs: drawn.extend(reqs) or real(self, logits, reqs)
    )
    got = generate_many(TargetModel(model), prompts, features=[], tails=[[1, 2]] * 7, **kw)
    assert got == plain
    assert [drawn.count(r) for r in range(7)] == [len(a) for a in got]
