"""Losslessness of speculative decoding on tiny random Hugging Face models (CPU, fp32, no downloads).

Greedy: the speculative output equals the target's own `model.generate(do_sample=False)` token for token,
for Llama, Mistral, Qwen2 and Qwen3 targets, the EAGLE, FSPAD and GRIFFIN heads (random weights) and the
oracle head (drafts with the target itself, so long paths are accepted and compaction is exercised), batch
1 and 3 with prompts of different lengths, trees of depth 1..6 and 1..64 nodes.

Per kernel backend: greedy decoding with every kernel of the decode step on one backend b (SPECDEC_BACKEND=b
and `generate(..., backend=b)`: build_tree, select_tree, tree_attention, compact_kv, verify_greedy and the
fused input blocks of the FSPAD/GRIFFIN heads) reproduces the target's greedy decoding too.

Sampling: with a 16-token vocabulary, the joint distribution of the first emitted tokens under speculative
sampling matches the target's sampling distribution computed exactly by enumeration (chi-square, fixed
seeds), for temperature 1 and 0.7, top-k and top-p.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from specdec.decoding import generate
from specdec.models import DraftConfig, build_draft_head
from specdec.testing import TargetOracleHead
from specdec_kernels.reference.verify import filtered_probs

from helpers import backend_params
from tiny_models import FAMILIES, make_target, one_thread  # noqa: F401  (autouse fixture)

HEADS = ("eagle", "fspad", "griffin")
PROMPTS = [[5, 17, 33, 2, 90], [7, 8], [100, 3, 4, 250, 12, 61, 9, 44, 18]]


@functools.lru_cache(maxsize=None)
def target(family: str, sharpen: float = 1.0):
    return make_target(family, vocab=256, max_positions=512, sharpen=sharpen)


@functools.lru_cache(maxsize=None)
def head(family: str, kind: str, sharpen: float = 1.0):
    torch.manual_seed(1)
    h = build_draft_head(DraftConfig.from_target(target(family, sharpen).config, kind)).eval()
    return h


@functools.lru_cache(maxsize=None)
def hf_greedy(family: str, sharpen: float, prompt: tuple, n: int) -> list:
    """The oracle: the model's own generate with its default (sdpa) attention, one prompt at a time."""
    return hf_greedy_on(target(family, sharpen), prompt, n)


def on_device(module: torch.nn.Module, device: str) -> torch.nn.Module:
    """`module` itself on the CPU, a copy of it on another device (the cached CPU models stay where they are)."""
    return module if device == "cpu" else copy.deepcopy(module).to(device)


def hf_greedy_on(model, prompt, n: int) -> list:
    """The model's own greedy generate on the model's device."""
    dev = next(model.parameters()).device
    out = model.generate(torch.tensor([prompt], device=dev), max_new_tokens=n, do_sample=False)
    return out[0, len(prompt) :].tolist()


def assert_same_tokens(model, prompt, got, want, what=""):
    """Token-for-token equality; on a mismatch, print the target's top-2 logit gap at that step (a near-tie
    would show as a gap of ~1e-6, never as a reason to loosen the comparison)."""
    if got == want:
        return
    i = next((j for j, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    with torch.no_grad():
        ids = torch.tensor([list(prompt) + want[:i]], device=next(model.parameters()).device)
        logits = model(ids).logits[0, -1]
    top = torch.topk(logits, 2)
    raise AssertionError(
        f"{what}: first difference at new token {i}: got {got[i : i + 3]}, want {want[i : i + 3]} "
        f"(len {len(got)} vs {len(want)}); target top-2 {top.indices.tolist()} logit gap "
        f"{float(top.values[0] - top.values[1]):.3e}"
    )


def check_greedy(family, draft, prompts, n, sharpen=1.0, **tree):
    model = target(family, sharpen)
    res = generate(model, draft, prompts, max_new_tokens=n, **tree)
    assert len(res.sequences) == len(prompts)
    for b, p in enumerate(prompts):
        assert_same_tokens(
            model, p, res.sequences[b], hf_greedy(family, sharpen, tuple(p), n), f"{family} request {b} tree {tree}"
        )
    return res


@pytest.mark.parametrize("kind", HEADS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_greedy_random_heads(family, kind):
    """Every family x head: batch 3 (ragged prompts) and batch 1 equal the target's greedy decoding."""
    tree = dict(tree_top_k=4, depth=3, total_tokens=12)
    check_greedy(family, head(family, kind), PROMPTS, 10, **tree)
    check_greedy(family, head(family, kind), PROMPTS[2:], 10, **tree)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_greedy_oracle_head_long_paths(family):
    """With the target's own drafts the whole path is accepted: compaction of long paths, tau ~ depth + 1."""
    model = target(family, 8.0)
    res = check_greedy(
        family, TargetOracleHead(model), PROMPTS, 12, sharpen=8.0, tree_top_k=2, depth=5, total_tokens=10
    )
    assert res.tau > 3.0, (res.tau, res.accept_lengths)


@pytest.mark.parametrize(
    "k, depth, total",
    [
        (1, 1, 1),  # no draft token at all: plain decoding through the tree path
        (1, 1, 2),  # one draft token
        (2, 1, 3),  # a star
        (1, 6, 7),  # a chain of depth 6
        (3, 2, 8),
        (4, 3, 16),
        (2, 6, 13),
        (8, 6, 64),  # 64 nodes: two mask words
        (10, 6, 60),  # the EAGLE-2 default
    ],
)
def test_greedy_tree_shapes(k, depth, total):
    """Trees of depth 1..6 and 1..64 nodes, with the oracle head (deep acceptance) and a random EAGLE head."""
    tree = dict(tree_top_k=k, depth=depth, total_tokens=total)
    model = target("llama", 8.0)
    res = check_greedy("llama", TargetOracleHead(model), PROMPTS, 9, sharpen=8.0, **tree)
    if total > 1:
        assert res.accept_lengths.max() > 1
    check_greedy("llama", head("llama", "eagle"), PROMPTS, 6, **tree)


def test_greedy_truncates_in_the_middle_of_a_path():
    """max_new_tokens reached inside an accepted path: exactly max_new_tokens tokens, equal to the target's."""
    model = target("llama", 8.0)
    for n in (1, 2, 4, 8):
        res = check_greedy(
            "llama", TargetOracleHead(model), PROMPTS, n, sharpen=8.0, tree_top_k=1, depth=6, total_tokens=7
        )
        assert [len(s) for s in res.sequences] == [n] * 3


def test_greedy_stops_at_eos():
    """Each request stops after its first EOS (kept in the output), wherever it falls in an accepted path."""
    model = target("llama", 8.0)
    n = 12
    full = [hf_greedy("llama", 8.0, tuple(p), n) for p in PROMPTS]
    eos = full[0][5]
    res = generate(
        model,
        TargetOracleHead(model),
        PROMPTS,
        max_new_tokens=n,
        tree_top_k=1,
        depth=6,
        total_tokens=7,
        eos_token_id=[eos],
    )
    for b, seq in enumerate(full):
        want = seq[: seq.index(eos) + 1] if eos in seq else seq
        assert res.sequences[b] == want, (b, res.sequences[b], want)
    hf = model.generate(torch.tensor([PROMPTS[0]]), max_new_tokens=n, do_sample=False, eos_token_id=eos)
    assert res.sequences[0] == hf[0, len(PROMPTS[0]) :].tolist()


# -- per kernel backend ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend,device", backend_params("tree_attention"))
@pytest.mark.parametrize("draft", ["oracle", "eagle", "griffin"])
def test_greedy_lossless_per_backend(backend, device, draft, monkeypatch):
    """Every kernel on one backend. The oracle head accepts long paths (compaction really moves cache
    slots); the random heads exercise rejection at every level. Triton runs under its interpreter on
    CPU, so the shapes are tiny."""
    monkeypatch.setenv("SPECDEC_BACKEND", backend)  # the draft head's kernels too, not only generate's own
    n = 8
    model = on_device(target("llama", 4.0), device)
    drafter = TargetOracleHead(model) if draft == "oracle" else on_device(head("llama", draft, 4.0), device)
    res = generate(model, drafter, PROMPTS, max_new_tokens=n, backend=backend, tree_top_k=3, depth=3, total_tokens=10)
    # The reference on the same device: CPU and GPU arithmetic may part on a near-tie.
    want = [hf_greedy_on(model, p, n) for p in PROMPTS]
    for b, p in enumerate(PROMPTS):
        assert_same_tokens(model, p, res.sequences[b], want[b], f"{draft}/{backend}/{device} request {b}")
    if draft == "oracle":  # the oracle must really have accepted multi-token paths (compaction exercised)
        assert res.tau > 1.5, res.summary()


# -- sampling -----------------------------------------------------------------------------------------

SAMPLING_PROMPT = [3, 7, 1, 12, 5]


@functools.lru_cache(maxsize=None)
def small_target():
    # Logits of std ~1.5 over 16 tokens: distributions far from uniform, so a biased sampler shows.
    return make_target("llama", vocab=16, hidden=32, max_positions=512, sharpen=12.0, seed=3)


def exact_joint(model, prompt, temperature, top_k, top_p, k=3) -> torch.Tensor:
    """P[x1, ..., xk] of the target's sampling (temperature, top-k, top-p as verify_sample defines them),
    by enumerating every prefix."""
    V = model.config.vocab_size
    joint = torch.ones(1)
    prefixes = torch.tensor([prompt])
    for _ in range(k):
        with torch.no_grad():
            logits = model(prefixes).logits[:, -1].float()
        R = logits.shape[0]
        p = filtered_probs(
            logits, torch.full((R,), temperature), torch.full((R,), top_k, dtype=torch.int32), torch.full((R,), top_p)
        )
        joint = (joint[:, None] * p).reshape(-1)
        prefixes = torch.cat([prefixes.repeat_interleave(V, 0), torch.arange(V).repeat(R)[:, None]], dim=1)
    return joint.double()


def chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of Pearson's chi-square; cells with expected count < 5 are pooled into one bin. Cells of
    probability 0 must have count 0 (checked exactly by the caller)."""
    from scipy.stats import chi2

    n = counts.sum()
    exp = probs * n
    big = exp >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    ex = torch.cat([exp[big], exp[~big].sum()[None]])
    keep = ex > 0
    obs, ex = obs[keep], ex[keep]
    stat = float(((obs - ex) ** 2 / ex).sum())
    return float(chi2.sf(stat, len(ex) - 1))


def sampling_head(model, draft: str):
    """The oracle head (drafts the target's own tokens) or an untrained EAGLE head."""
    if draft == "oracle":
        return TargetOracleHead(model)
    return build_draft_head(DraftConfig.from_target(model.config, "eagle")).eval()


def assert_first_tokens_follow_target(res, model, temperature, top_k, top_p, k=3, V=16) -> None:
    """The first k emitted tokens of every run in `res` against the target's exact joint distribution:
    nothing of probability 0, and chi-square p > 1e-4 on the first k and on the first k - 1 tokens."""
    seqs = torch.tensor(res.sequences)
    assert seqs.shape == (len(res.sequences), k)
    probs = exact_joint(model, SAMPLING_PROMPT, temperature, top_k, top_p, k)
    cells = (seqs[:, 0] * V + seqs[:, 1]) * V + seqs[:, 2]
    counts = torch.bincount(cells, minlength=V**k).double()
    impossible = counts[probs == 0].sum()
    assert impossible == 0, f"{int(impossible)} runs produced a sequence of target probability 0"
    p3 = chi_square_p(counts, probs)
    p2 = chi_square_p(counts.view(V * V, V).sum(1), probs.view(V * V, V).sum(1))
    assert p3 > 1e-4 and p2 > 1e-4, (p2, p3, res.tau)


@pytest.mark.parametrize(
    "temperature, top_k, top_p, draft",
    [
        (1.0, 0, 1.0, "oracle"),
        (0.7, 0, 1.0, "eagle"),
        (1.0, 5, 1.0, "eagle"),
        (1.0, 0, 0.8, "oracle"),
    ],
)
def test_sampling_matches_target_distribution(temperature, top_k, top_p, draft):
    """Joint distribution of the first 3 emitted tokens (prefill token + drafted/bonus tokens of one or
    two passes) == the target's, over 6000 runs batched as copies of one prompt."""
    model = small_target()
    h = sampling_head(model, draft)
    R, k = 6000, 3
    g = torch.Generator().manual_seed(1234)
    res = generate(
        model,
        h,
        [SAMPLING_PROMPT] * R,
        max_new_tokens=k,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        tree_top_k=3,
        depth=2,
        total_tokens=6,
        generator=g,
    )
    assert len(res.sequences) == R
    assert_first_tokens_follow_target(res, model, temperature, top_k, top_p, k)
    # The draft was used: some passes accepted drafted tokens.
    assert res.accept_lengths.max() > 1


@pytest.mark.parametrize("page_size", [1, 3, 16])
def test_greedy_on_a_paged_cache_equals_the_contiguous_cache(page_size, monkeypatch):
    """The target's and the draft head's K/V on shuffled pages (paged_tree_attention and compact_paged_kv in
    every pass): the same tokens as the contiguous cache and as the target's own greedy decoding, ragged
    batch, with EOS."""
    import specdec_kernels
    from specdec.models import PagedDraftCache

    calls = {"paged_tree_attention": 0, "compact_paged_kv": 0, "draft": 0}
    real_attend = PagedDraftCache.attend

    def draft_attend(self, *a, **k):
        calls["draft"] += 1
        return real_attend(self, *a, **k)

    monkeypatch.setattr(PagedDraftCache, "attend", draft_attend)
    for name in ("paged_tree_attention", "compact_paged_kv"):
        real = getattr(specdec_kernels, name)

        def counted(*a, _real=real, _name=name, **k):
            calls[_name] += 1
            return _real(*a, **k)

        monkeypatch.setattr(specdec_kernels, name, counted)
    model = target("llama", 8.0)
    n = 12
    want = hf_greedy("llama", 8.0, tuple(PROMPTS[0]), n)
    eos = want[5]
    kw = dict(max_new_tokens=n, tree_top_k=2, depth=4, total_tokens=9, eos_token_id=eos)
    for draft in (TargetOracleHead(model), head("llama", "eagle")):
        flat = generate(model, draft, PROMPTS, **kw)
        paged = generate(model, draft, PROMPTS, page_size=page_size, **kw)
        assert paged.sequences == flat.sequences
        assert paged.accept_lengths.tolist() == flat.accept_lengths.tolist()
    assert paged.sequences[0] == want[: want.index(eos) + 1]  # request 0 stopped at its first EOS
    assert calls["paged_tree_attention"] > 0 and calls["compact_paged_kv"] > 0  # the paged ops ran
    assert calls["draft"] > 0  # the eagle head drafted from its paged cache


@pytest.mark.parametrize("draft", ["oracle", "eagle"])
def test_sampling_across_the_switch_to_plain_decoding(draft, monkeypatch):
    """total_tokens="auto" that drops its tree after the first pass (budget.break_even_tau out of reach): the
    first 3 emitted tokens (prefill token, the tree pass's, then plain passes') still follow the target's joint
    distribution, over 6000 runs batched as copies of one prompt."""
    import importlib

    from specdec.decoding import budget

    gen_mod = importlib.import_module("specdec.decoding.generate")
    monkeypatch.setattr(budget, "auto_tree", lambda *a, **kw: (6, 2, 3, 1.0))
    monkeypatch.setattr(budget, "break_even_tau", lambda *a, **kw: 100.0)
    monkeypatch.setattr(gen_mod, "FALLBACK_MIN_PASSES", 1)
    monkeypatch.setattr(gen_mod, "FALLBACK_EVERY", 1)
    model = small_target()
    h = sampling_head(model, draft)
    R, k = 6000, 3
    g = torch.Generator().manual_seed(4321)
    res = generate(model, h, [SAMPLING_PROMPT] * R, max_new_tokens=k, temperature=1.0, total_tokens="auto", generator=g)
    assert res.plain_after == 1 and len(res.sequences) == R
    assert_first_tokens_follow_target(res, model, 1.0, 0, 1.0, k)
    first = res.accept_lengths[0]
    assert (first == 1).any() and (first > 1).any()  # runs that emitted plain tokens after one or two tree tokens
