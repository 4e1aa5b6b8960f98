"""specdec.decoding.budget: the expected-tokens model, the tree choice on synthetic cost curves, and the
cached verify-cost measurement on a tiny model."""

from __future__ import annotations

import doctest
import importlib
import json

import pytest
import torch

from specdec.decoding import budget
from specdec.decoding.budget import (
    acceptance_of,
    choose_tree,
    default_candidates,
    expected_tokens,
    head_acceptance,
    interpolate_cost,
    measure_verify_cost,
)
from specdec.decoding.drafting import num_candidates

from tiny_models import make_target, one_thread  # noqa: F401  (autouse fixture)


def flat(N):
    return 0.020 + 0.0001 * N  # GPU-like: 64 nodes cost 1.3x one


def steep(N):
    return 0.020 * N  # every node costs a full decode step


def curve(fn, Ns=(1, 2, 4, 8, 16, 32, 64)):
    return {n: fn(n) for n in Ns}


def draft(N, depth, k):
    return 0.002 * depth


def test_doctests():
    res = doctest.testmod(budget)
    assert res.attempted >= 4 and res.failed == 0


# -- expected tokens ----------------------------------------------------------------------------------


def test_expected_tokens_closed_forms():
    assert expected_tokens(1, 6, 10, [0.9]) == 1.0  # root only
    # a chain (k = 1): 1 + a + a^2 + ... + a^depth
    a = 0.6
    assert expected_tokens(7, 6, 1, [a]) == pytest.approx(1 + sum(a**d for d in range(1, 7)))
    # acceptance 1: a chain of depth d always yields d + 1 tokens
    assert expected_tokens(5, 4, 3, [1.0]) == pytest.approx(5.0)
    # acceptance 0: only the bonus token
    assert expected_tokens(60, 6, 10, [0.0]) == 1.0
    # one level of k children: 1 + 1 - (1 - a)^k
    assert expected_tokens(4, 1, 3, [0.5]) == pytest.approx(1 + 1 - 0.5**3)
    # per-depth rates: a chain of 3 with a_1, a_2, a_3
    assert expected_tokens(4, 3, 1, [0.9, 0.5, 0.2]) == pytest.approx(1 + 0.9 + 0.45 + 0.09)
    # depths beyond the given rates reuse the last one
    assert expected_tokens(4, 3, 1, [0.9, 0.5]) == pytest.approx(1 + 0.9 + 0.45 + 0.225)


def test_expected_tokens_monotone():
    for k in (1, 2, 4, 10):
        for depth in (1, 3, 6):
            prev = 0.0
            for N in range(1, num_candidates(k, depth) + 2):
                e = expected_tokens(N, depth, k, [0.7, 0.6, 0.5])
                assert e >= prev - 1e-12
                assert e <= 1 + depth + 1e-9  # never more than a full path + bonus
                prev = e
    # more acceptance, more tokens
    prev = 0.0
    for a in (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0):
        e = expected_tokens(32, 6, 8, [a])
        assert e >= prev - 1e-12
        prev = e
    # more depth or wider expansion at the same N never hurts
    assert expected_tokens(32, 6, 8, [0.8]) >= expected_tokens(32, 3, 8, [0.8])
    assert expected_tokens(32, 6, 8, [0.5]) >= expected_tokens(32, 6, 2, [0.5])


def test_expected_tokens_from_coverage():
    """A coverage list gives the rank-r child c(r) - c(r - 1); ranks beyond the list catch nothing."""
    # one level of 3 children: 1 + c(3)
    assert expected_tokens(4, 1, 3, [[0.5, 0.6, 0.65]]) == pytest.approx(1.65)
    assert expected_tokens(6, 1, 5, [[0.5, 0.6, 0.65]]) == pytest.approx(1.65)  # ranks 4, 5: nothing
    # the geometric model's coverage as a list gives the same value as the rate
    a, k = 0.45, 4
    geo = [1 - (1 - a) ** r for r in range(1, k + 1)]
    for N, depth in ((8, 2), (16, 3), (30, 4)):
        assert expected_tokens(N, depth, k, [geo]) == pytest.approx(expected_tokens(N, depth, k, [a]))
    # depth 2 of a star (k = 2, N = 7: both levels whole): 1 + (p1 + p2) + (p1 + p2) * (q1 + q2)
    cov = [[0.5, 0.7], [0.4, 0.45]]
    assert expected_tokens(7, 2, 2, cov) == pytest.approx(1 + 0.7 + 0.7 * 0.45)
    # mixed entries: a coverage list at depth 1, a rate at depth 2 (reused below)
    assert expected_tokens(4, 3, 1, [[0.9, 0.95], 0.5]) == pytest.approx(1 + 0.9 + 0.45 + 0.225)
    # flatter coverage (the same top-1) means fewer expected tokens than the geometric model
    assert expected_tokens(12, 2, 4, [[0.49, 0.58, 0.62, 0.65]]) < expected_tokens(12, 2, 4, [0.49]) - 0.2


def test_expected_tokens_rejects_bad_input():
    with pytest.raises(ValueError):
        expected_tokens(0, 1, 1, [0.5])
    with pytest.raises(ValueError):
        expected_tokens(4, 2, 2, [])
    with pytest.raises(ValueError):
        expected_tokens(4, 2, 2, [1.5])
    with pytest.raises(ValueError, match="non-decreasing"):
        expected_tokens(4, 2, 2, [[0.5, 0.4]])
    with pytest.raises(ValueError, match="non-decreasing"):
        expected_tokens(4, 2, 2, [[0.5, 1.2]])
    with pytest.raises(ValueError, match="at least one value"):
        expected_tokens(4, 2, 2, [[]])


# -- cost curves and the choice -----------------------------------------------------------------------


def test_interpolate_cost():
    c = {8: 1.0, 16: 2.0, 32: 2.5}
    assert interpolate_cost(c, 16) == 2.0
    assert interpolate_cost(c, 12) == pytest.approx(1.5)
    assert interpolate_cost(c, 24) == pytest.approx(2.25)
    assert interpolate_cost(c, 2) == 1.0
    assert interpolate_cost(c, 64) == pytest.approx(3.5)
    assert interpolate_cost({8: 2.0, 16: 1.0}, 64) == 1.0  # a noisy falling tail is never extrapolated down
    with pytest.raises(ValueError):
        interpolate_cost({}, 4)


def test_flat_curve_big_tree_steep_curve_small_tree():
    acc = [0.8, 0.75, 0.7, 0.65, 0.6, 0.6]
    N_flat, d_flat, k_flat, tps_flat = choose_tree(curve(flat), draft, acc)
    N_steep, d_steep, k_steep, tps_steep = choose_tree(curve(steep), draft, acc)
    assert N_flat >= 32
    assert N_steep <= 8
    assert tps_flat > tps_steep > 0
    # the reported rate is the model's
    t = draft(N_flat, d_flat, k_flat) + flat(N_flat)
    assert tps_flat == pytest.approx(expected_tokens(N_flat, d_flat, k_flat, acc) / t, rel=1e-6)


def test_choice_reuses_its_expected_tokens_and_reads_bad_acceptance_as_before():
    """choose_tree memoises expected_tokens per (tree, acceptance) for the process (auto calls it once per
    generate call): the same answer from lists or tuples, a cache hit per candidate the second time, and
    bad acceptance still raises (errors are not memoised)."""
    from specdec.decoding import budget

    acc = [[0.5, 0.62, 0.7, 0.75], [0.48, 0.6, 0.7, 0.74], 0.55]
    first = choose_tree(curve(flat), draft, acc)
    hits = budget._expected_memo.cache_info().hits
    again = choose_tree(curve(flat), draft, tuple(tuple(e) if isinstance(e, list) else e for e in acc))
    assert again == first
    assert budget._expected_memo.cache_info().hits - hits == len(default_candidates())
    for bad in ([[0.7, 0.5]], [1.5], [[]]):
        for _ in range(2):
            with pytest.raises(ValueError, match="acceptance"):
                choose_tree(curve(flat), draft, bad)


def test_acceptance_zero_picks_the_smallest_tree():
    cands = default_candidates()
    smallest = min(cands)
    for c in (curve(flat), curve(steep)):
        N, depth, k, _ = choose_tree(c, draft, [0.0])
        assert (N, depth, k) == smallest
    # also with free drafting: ties go to the smaller tree
    assert choose_tree(curve(flat), None, [0.0])[:3] == smallest


def test_choice_monotone_in_cost_slope_and_acceptance():
    acc = [0.75, 0.7, 0.65, 0.6, 0.55, 0.5]
    # steeper verify curves never choose a bigger tree
    prev = None
    for slope in (0.0, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03):
        N = choose_tree(curve(lambda n, slope=slope: 0.02 + slope * n), draft, acc)[0]
        assert prev is None or N <= prev
        prev = N
    # better heads never get fewer tokens per second, nor fewer tokens per pass; they leave the smallest
    # tree (N itself is not monotone: a very good head prefers a narrow, deep tree, i.e. fewer nodes)
    prev_e, prev_tps = 0.0, 0.0
    smallest = min(default_candidates())
    for a in (0.0, 0.2, 0.4, 0.6, 0.8, 0.95):
        N, d, k, tps = choose_tree(curve(lambda n: 0.02 + 0.001 * n), draft, [a])
        e = expected_tokens(N, d, k, [a])
        assert e >= prev_e - 1e-12 and tps >= prev_tps
        assert (a == 0.0) == ((N, d, k) == smallest)
        prev_e, prev_tps = e, tps
    # costlier drafting never chooses a deeper tree
    prev = None
    for per_level in (0.0, 0.001, 0.005, 0.02, 0.1):
        d = choose_tree(curve(flat), lambda N, depth, k, per_level=per_level: per_level * depth, acc)[1]
        assert prev is None or d <= prev
        prev = d


def test_draft_cost_forms_and_candidates():
    acc = [0.8]
    cands = [(8, 2, 4), (16, 3, 4), (32, 4, 8)]
    by_call = choose_tree(curve(flat), lambda N, d, k: 0.001 * d, acc, cands)
    by_full = choose_tree(curve(flat), {c: 0.001 * c[1] for c in cands}, acc, cands)
    by_dk = choose_tree(curve(flat), {(d, k): 0.001 * d for _, d, k in cands}, acc, cands)
    by_depth = choose_tree(curve(flat), {d: 0.001 * d for _, d, _ in cands}, acc, cands)
    assert by_call == by_full == by_dk == by_depth
    assert by_call[:3] in cands
    assert choose_tree(curve(flat), 0.01, acc, cands)[:3] in cands  # a constant
    with pytest.raises(KeyError):
        choose_tree(curve(flat), {2: 0.001}, acc, cands)
    with pytest.raises(ValueError):
        choose_tree(curve(flat), None, acc, [])
    for N, depth, k in default_candidates():
        assert num_candidates(k, depth) + 1 >= N


def test_head_acceptance():
    class Cfg:
        extra = {
            "specdec_training": {
                "result": {
                    "validation": [
                        {"acc_1": 0.1, "acc_2": 0.1},
                        {"acc_1": 0.7, "acc_2": 0.6, "acc_3": float("nan"), "tau_chain": 2.1},
                    ]
                }
            }
        }

    class Head:
        config = Cfg()

    assert head_acceptance(Head()) == [0.7, 0.6]
    # coverage where the row has it; `specdec validate --write` results come first
    Cfg.extra["specdec_training"]["result"]["validation"][-1]["cov_1"] = [0.7, 0.8]
    assert head_acceptance(Head()) == [[0.7, 0.8], 0.6]
    Cfg.extra["specdec_validation"] = {"result": {"acc_1": 0.5, "cov_1": [0.5, 0.55], "acc_2": 0.3, "cov_2": None}}
    assert head_acceptance(Head()) == [[0.5, 0.55], 0.3]

    class Bare:
        class config:
            extra = {}

    assert head_acceptance(Bare()) is None
    assert head_acceptance(object()) is None


# -- measurement (tiny model) -------------------------------------------------------------------------


def test_measure_verify_cost_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDEC_HOME", str(tmp_path))
    model = make_target()
    cost = measure_verify_cost(model, Ns=(1, 4), context=16, repeats=1)
    assert sorted(cost) == [1, 4] and all(t > 0 for t in cost.values())
    path = tmp_path / "verify_cost.json"
    store = json.loads(path.read_text())
    assert len(store) == 1
    key = next(iter(store))
    assert "cpu" in key and "float32" in key and "ctx=16" in key

    calls = []
    real = budget.time_verify

    def spy(target, Ns, **kw):
        calls.append(list(Ns))
        return real(target, Ns, **kw)

    monkeypatch.setattr(budget, "time_verify", spy)
    again = measure_verify_cost(model, Ns=(1, 4, 8), context=16, repeats=1)
    assert calls == [[8]]  # only the missing N is measured
    assert again[1] == cost[1] and again[4] == cost[4]
    measure_verify_cost(model, Ns=(1, 4, 8), context=16, repeats=1)
    assert calls == [[8]]
    # another dtype is another entry (measured on a converted copy; the model itself is unchanged)
    measure_verify_cost(model, Ns=(1,), dtype=torch.bfloat16, context=16, repeats=1)
    assert len(json.loads(path.read_text())) == 2
    assert model.lm_head.weight.dtype == torch.float32
    # use_cache=False neither reads nor writes
    measure_verify_cost(model, Ns=(2,), context=16, repeats=1, use_cache=False)
    assert "2" not in json.loads(path.read_text())[key]


def test_measure_draft_cost_and_auto_tree(tmp_path, monkeypatch):
    from specdec.models import DraftConfig, build_draft_head
    from specdec.target import TargetModel

    monkeypatch.setenv("SPECDEC_HOME", str(tmp_path))
    model = make_target()
    target = TargetModel(model)
    torch.manual_seed(0)
    head = build_draft_head(DraftConfig.from_target(model.config, "griffin")).eval()
    level = budget.measure_draft_cost(head, target, ks=(2, 4), context=16)
    assert sorted(level) == [2, 4] and all(t > 0 for t in level.values())
    cands = [(4, 2, 2), (8, 3, 4), (16, 4, 4)]
    N, depth, k, tps = budget.auto_tree(target, head, context=16, candidates=cands, allow_plain=False)
    assert (N, depth, k) in cands and tps > 0
    store = json.loads((tmp_path / "verify_cost.json").read_text())
    # the context is rounded up to 128: verify and draft costs at ctx=128, plus the draft entry at 16
    assert sorted(key.startswith("draft:") for key in store) == [False, True, True]
    assert sum("|ctx=128" in key for key in store) == 2
    # the choice below must come from the cache, not from timing noise on a tiny model (the measured costs
    # of N = 4 and 8 can swap): overwrite the cached entries with a strictly increasing synthetic curve
    for key, entry in store.items():
        store[key] = {n: 1e-3 * (1 + int(n)) for n in entry}
    (tmp_path / "verify_cost.json").write_text(json.dumps(store))
    calls = []
    monkeypatch.setattr(budget, "time_verify", lambda *a, **kw: calls.append(a) or {})
    monkeypatch.setattr(budget, "time_draft_level", lambda *a, **kw: calls.append(a) or {})
    # acceptance 0 -> plain decoding; without it, the smallest candidate, from the cached costs
    assert budget.auto_tree(target, head, context=16, acceptance=[0.0], candidates=cands) == (*budget.PLAIN, 500.0)
    assert budget.auto_tree(target, head, context=16, acceptance=[0.0], candidates=cands, allow_plain=False)[:3] == (
        4,
        2,
        2,
    )
    # the head's own validation rates are used when present
    head.config.extra["specdec_training"] = {"result": {"validation": [{"acc_1": 0.0, "acc_2": 0.0}]}}
    assert budget.auto_tree(target, head, context=16, candidates=cands, allow_plain=False)[:3] == (4, 2, 2)
    assert calls == []  # nothing was re-measured


def test_graph_costs_are_measured_on_replays_and_cached_apart(tmp_path, monkeypatch, recorded_passes):
    """cuda_graph=True: the verify and draft-level costs time replays of one captured call (the CPU emulation
    of conftest's recorded_passes) and sit under their own cache keys, so eager and graph plans never mix;
    auto_tree passes the choice through."""
    from specdec.models import DraftConfig, build_draft_head
    from specdec.target import TargetModel

    monkeypatch.setenv("SPECDEC_HOME", str(tmp_path))
    model = make_target()
    target = TargetModel(model)
    torch.manual_seed(0)
    head = build_draft_head(DraftConfig.from_target(model.config, "griffin")).eval()
    eager = measure_verify_cost(target, Ns=(1, 4), context=16, repeats=1)
    graph = measure_verify_cost(target, Ns=(1, 4), context=16, repeats=1, cuda_graph=True)
    assert len(recorded_passes) == 2 and all(t > 0 for t in graph.values())  # one capture per N
    level = budget.measure_draft_cost(head, target, ks=(2,), context=16, cuda_graph=True)
    assert len(recorded_passes) == 3 and level[2] > 0
    keys = sorted(json.loads((tmp_path / "verify_cost.json").read_text()))
    assert len(keys) == 3 and sum(k.endswith("|cuda_graph") for k in keys) == 2
    assert measure_verify_cost(target, Ns=(1, 4), context=16, cuda_graph=True) == graph  # cached
    assert measure_verify_cost(target, Ns=(1, 4), context=16) == eager
    seen = []
    monkeypatch.setattr(budget, "measure_verify_cost", lambda t, Ns, **kw: seen.append(kw) or {n: 1.0 for n in Ns})
    monkeypatch.setattr(budget, "measure_draft_cost", lambda h, t, ks, **kw: seen.append(kw) or {k: 0.1 for k in ks})
    budget.auto_tree(target, head, context=16, candidates=[(4, 2, 2)], cuda_graph=True)
    assert [kw["cuda_graph"] for kw in seen] == [True, True]


def test_cost_timings_interleave_their_calls(monkeypatch):
    """The costs' timings run their calls round by round (a slow stretch of a shared machine then falls on
    every tree size alike) and report each call's median after the warm-up rounds; time_verify goes through
    it (as time_draft_level does)."""
    order, clock = [], iter(range(1000))
    monkeypatch.setattr(budget.time, "perf_counter", lambda: float(next(clock)))
    calls = {n: (lambda n=n: order.append(n)) for n in (1, 4, 8)}
    got = budget._median_times(calls, torch.device("cpu"), warmup=1, repeats=3)
    assert order == [1, 4, 8] * 4 and got == {1: 1.0, 4: 1.0, 8: 1.0}
    from specdec.target import TargetModel

    seen, real = [], budget._median_times
    spy = lambda calls, *a, **kw: seen.append(sorted(calls)) or real(calls, *a, **kw)
    monkeypatch.setattr(budget, "_median_times", spy)
    budget.time_verify(TargetModel(make_target()), (1, 3), context=8, repeats=1)
    assert seen == [[1, 3]]


@pytest.mark.parametrize(
    "verify, level, acceptance, want",
    [
        # GPU-like flat verify curve, cheap draft levels, a good head: a tree
        ({1: 0.010, 4: 0.0102, 8: 0.0104, 16: 0.011}, 0.0005, [0.8] * 4, "tree"),
        # the same machine, a head that accepts nothing: plain decoding
        ({1: 0.010, 4: 0.0102, 8: 0.0104, 16: 0.011}, 0.0005, [0.0] * 4, "plain"),
        # fp32 on one CPU core: a second row costs a whole step; a weak head cannot pay for it
        ({1: 0.100, 4: 0.200, 8: 0.210, 16: 0.230}, 0.017, [0.4, 0.35, 0.3, 0.3], "plain"),
        # bf16 prepacked on one core: flat to 8 rows; the same head pays
        ({1: 0.050, 4: 0.050, 8: 0.051, 16: 0.064}, 0.0037, [0.4, 0.35, 0.3, 0.3], "tree"),
    ],
)
def test_auto_tree_weighs_plain_decoding(monkeypatch, verify, level, acceptance, want):
    """auto_tree returns PLAIN exactly when 1 / verify(1) beats the best candidate's expected rate."""
    monkeypatch.setattr(budget, "measure_verify_cost", lambda target, Ns, **kw: {n: verify[n] for n in Ns})
    monkeypatch.setattr(budget, "measure_draft_cost", lambda head, target, ks, **kw: {k: level for k in ks})
    cands = [(4, 2, 2), (8, 2, 4), (16, 3, 4)]
    got = budget.auto_tree(None, None, acceptance=acceptance, candidates=cands)
    best = budget.choose_tree(verify, budget.draft_cost_model({k: level for k in (2, 4)}), acceptance, cands)
    assert (got[:3] == budget.PLAIN) == (want == "plain")
    assert got == ((*budget.PLAIN, 1 / verify[1]) if want == "plain" else best)
    assert budget.auto_tree(None, None, acceptance=acceptance, candidates=cands, allow_plain=False) == best


def test_acceptance_at_a_temperature_reads_the_sampled_coverage():
    row = {"acc_1": 0.6, "cov_1": [0.6, 0.8], "scov_1": [0.2, 0.3], "acc_2": 0.5, "cov_2": None, "scov_2": [0.1, 0.2]}
    row["sampled_temperature"] = 1.0
    assert acceptance_of(row) == [[0.6, 0.8], 0.5]  # greedy: unchanged
    assert acceptance_of(row, 1.0) == [[0.2, 0.3], [0.1, 0.2]]
    assert acceptance_of(row, 2.0) == acceptance_of(row, 1.0)  # beyond the measured temperature: its values
    half = acceptance_of(row, 0.5)  # in between: a linear mix (top-1 rate where there is no greedy coverage)
    assert half[0] == pytest.approx([0.4, 0.55]) and half[1] == pytest.approx([0.3, 0.35])
    old = {"acc_1": 0.6, "cov_1": [0.6, 0.8]}  # a head validated before scov: the greedy entries
    assert acceptance_of(old, 1.0) == [[0.6, 0.8]]
    with pytest.raises(ValueError, match="temperature"):
        acceptance_of(row, -1.0)


def test_auto_tree_at_a_temperature_uses_the_sampled_coverage(monkeypatch):
    """A head whose target spreads its mass at T = 1: a tree pays at T = 0, plain decoding at T = 1, and
    generate passes its temperature to the budget."""
    gen_mod = importlib.import_module("specdec.decoding.generate")  # the module (the package exports the function)

    verify = {1: 0.050, 4: 0.058, 8: 0.068, 16: 0.090}
    monkeypatch.setattr(budget, "measure_verify_cost", lambda target, Ns, **kw: {n: verify[n] for n in Ns})
    monkeypatch.setattr(budget, "measure_draft_cost", lambda head, target, ks, **kw: {k: 0.006 for k in ks})
    cov, scov = [0.6, 0.75, 0.8, 0.85], [0.2, 0.25, 0.28, 0.3]
    result = {"sampled_temperature": 1.0}
    for k in (1, 2, 3):
        result.update({f"acc_{k}": cov[0], f"cov_{k}": cov, f"scov_{k}": scov})

    class Head:
        class config:
            extra = {"specdec_validation": {"result": result}}

    cands = [(4, 2, 2), (8, 2, 4), (16, 3, 4)]
    assert budget.auto_tree(None, Head(), candidates=cands)[:3] != budget.PLAIN
    assert budget.auto_tree(None, Head(), candidates=cands, temperature=1.0)[:3] == budget.PLAIN
    seen = []
    monkeypatch.setattr(budget, "auto_tree", lambda *a, **kw: seen.append(kw["temperature"]) or (*budget.PLAIN, 1.0))
    gen_mod._auto_tree("auto", None, Head(), 10, False, 0.7)
    assert seen == [0.7]


def test_generate_auto_plain_is_generate_baseline(monkeypatch):
    """When "auto" chooses plain decoding, generate returns generate_baseline's tokens with tree PLAIN."""
    from specdec.decoding import generate, generate_baseline
    from specdec.models import DraftConfig, build_draft_head

    model = make_target(sharpen=4.0)
    torch.manual_seed(1)
    head = build_draft_head(DraftConfig.from_target(model.config, "griffin")).eval()
    monkeypatch.setattr(budget, "auto_tree", lambda *a, **kw: (*budget.PLAIN, 100.0))
    prompt = [[5, 17, 3, 99, 42, 8], [7, 7, 1]]
    res = generate(model, head, prompt, max_new_tokens=7, total_tokens="auto", eos_token_id=[])
    base = generate_baseline(model, prompt, max_new_tokens=7, eos_token_id=[])
    assert res.sequences == base.sequences and res.tree == budget.PLAIN
    assert res.tau == 1.0 and res.passes == base.passes == 6 and res.draft_time == 0.0
    assert res.total_time >= res.prefill_time > 0
    for b, p in enumerate(prompt):
        ref = model.generate(torch.tensor([p]), max_new_tokens=7, do_sample=False)[0, len(p) :].tolist()
        assert res.sequences[b] == ref


def test_generate_auto_is_lossless(tmp_path, monkeypatch):
    from specdec.decoding import generate
    from specdec.models import DraftConfig, build_draft_head

    monkeypatch.setenv("SPECDEC_HOME", str(tmp_path))
    model = make_target(sharpen=4.0)
    torch.manual_seed(1)
    head = build_draft_head(DraftConfig.from_target(model.config, "griffin")).eval()
    prompt = [[5, 17, 3, 99, 42, 8], [7, 7, 1]]
    chosen = []
    real = budget.auto_tree

    contexts = []

    def spy(*a, **kw):
        contexts.append(kw["context"])
        # allow_plain=False: this test is about speculative decoding, which plain decoding might beat here
        chosen.append(real(*a, candidates=[(4, 2, 2), (8, 3, 4), (12, 4, 3)], allow_plain=False, **kw))
        return chosen[-1]

    monkeypatch.setattr(budget, "auto_tree", spy)
    res = generate(model, head, prompt, max_new_tokens=12, total_tokens="auto", eos_token_id=[])
    assert len(chosen) == 1 and chosen[0][:3] in [(4, 2, 2), (8, 3, 4), (12, 4, 3)]
    # costs are measured per context bucket, not per prompt length: another short prompt measures nothing
    generate(model, head, [[1, 2]], max_new_tokens=2, total_tokens="auto", eos_token_id=[])
    assert contexts == [256, 256]
    assert budget.context_bucket(6) == 256 and budget.context_bucket(300) == 512
    for b, p in enumerate(prompt):
        ref = model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False)[0, len(p) :].tolist()
        assert res.sequences[b] == ref
    with pytest.raises(ValueError, match="auto"):
        generate(model, head, prompt, max_new_tokens=2, total_tokens="big")


def test_profiler_hooks_mark_every_phase_and_change_nothing():
    from specdec.decoding import drafting, generate

    model = make_target(sharpen=4.0)
    torch.manual_seed(1)
    from specdec.models import DraftConfig, build_draft_head

    head = build_draft_head(DraftConfig.from_target(model.config, "griffin")).eval()
    prompt = [[5, 17, 3, 99, 42, 8]]
    kw = dict(max_new_tokens=8, tree_top_k=3, depth=3, total_tokens=8, eos_token_id=[])
    plain = generate(model, head, prompt, **kw)

    class Recorder:
        def __init__(self):
            self.marks = []

        def mark(self, name, level=None):
            self.marks.append((name, level))

    rec = Recorder()
    assert drafting.get_profiler() is None
    drafting.set_profiler(rec)
    try:
        profiled = generate(model, head, prompt, **kw)
    finally:
        drafting.set_profiler(None)
    assert profiled.sequences == plain.sequences
    names = {n for n, _ in rec.marks}
    expected = {"host.pass", "host.emit", "draft.topk", "draft.layer", "draft.select", "draft.rerank"}
    expected |= {"draft.extend", "verify.build_tree", "verify.target", "verify.op", "verify.compact"}
    assert names == expected
    assert rec.marks.count(("draft.rerank", None)) == profiled.passes
    assert {lv for n, lv in rec.marks if n == "draft.layer"} == {2, 3}
    assert {lv for n, lv in rec.marks if n == "draft.select"} == {2}


def test_break_even_tau_from_the_cost_curves(monkeypatch):
    """(draft time of the tree + verify time of N nodes) / verify time of one node, from the cached curves."""
    got = {}

    def verify_cost(target, Ns, **kw):
        got["Ns"] = Ns
        return {1: 0.010, 4: 0.014, 8: 0.020}

    monkeypatch.setattr(budget, "measure_verify_cost", verify_cost)
    monkeypatch.setattr(budget, "measure_draft_cost", lambda head, target, ks, **kw: {2: 0.0005, 4: 0.001})
    assert budget.break_even_tau(None, None, 8, 3, 4) == pytest.approx((3 * 0.001 + 0.020) / 0.010)
    assert got["Ns"] == [1, 8]
    assert budget.break_even_tau(None, None, 4, 2, 2) == pytest.approx((2 * 0.0005 + 0.014) / 0.010)


@pytest.mark.parametrize(
    "lengths, break_even, loses",
    [
        ([[1]] * 4, 1.9, True),  # four passes that accepted nothing: 1 + 2 * 0.5 / 2 = 1.5 is below 1.9 ...
        ([[1]] * 4, 1.45, False),  # ... not below 1.45 ...
        ([[1]] * 8, 1.45, True),  # ... until eight such passes (1 + 2 * 0.5 / 2.83 = 1.35)
        ([[1], [2], [1], [3]], 1.9, False),  # mean 1.75: not clearly below before FALLBACK_MIN_PASSES ...
        ([[1], [2], [1], [3]] * 4, 1.9, True),  # ... but below it at 16 passes
        ([[3], [2], [2], [3]] * 4, 1.9, False),  # a tree that pays
        ([[1, 0], [1, 0], [1, 0], [1, 0], [1, 0], [1, 0], [1, 0], [1, 0]], 1.9, True),  # finished rows: not counted
        ([[1] * 32] * 4, 1.45, False),  # a batch: the samples are its 4 passes, not its 128 accept lengths ...
        ([[1] * 32] * 8, 1.45, True),  # ... as for one request
        ([[0, 0]], 1.9, False),  # nothing running
    ],
)
def test_tree_loses_rule(lengths, break_even, loses):
    """The fallback's test (generate._tree_loses): before FALLBACK_MIN_PASSES passes only a clear loss (the mean
    plus two standard errors, the spread at least FALLBACK_SD, below the break-even) switches; from then on the
    mean alone decides."""
    gen_mod = importlib.import_module("specdec.decoding.generate")
    assert gen_mod._tree_loses(torch.tensor(lengths, dtype=torch.int32), break_even) is loses


@pytest.mark.parametrize("break_even, page_size", [(0.0, None), (100.0, None), (100.0, 4)])
def test_generate_auto_falls_back_to_plain_decoding(monkeypatch, break_even, page_size):
    """A tree that realises fewer tokens per pass than its break-even is dropped for plain decoding at the
    next check, and the output is still the target's greedy output (on contiguous and paged caches); one that
    pays runs to the end."""
    from specdec.decoding import generate
    from specdec.models import DraftConfig, build_draft_head

    model = make_target(sharpen=4.0)
    torch.manual_seed(1)
    head = build_draft_head(DraftConfig.from_target(model.config, "griffin")).eval()
    monkeypatch.setattr(budget, "auto_tree", lambda *a, **kw: (8, 3, 4, 1.0))
    monkeypatch.setattr(budget, "break_even_tau", lambda *a, **kw: break_even)
    gen_mod = importlib.import_module("specdec.decoding.generate")  # the module (the package exports the function)
    monkeypatch.setattr(gen_mod, "FALLBACK_MIN_PASSES", 2)
    monkeypatch.setattr(gen_mod, "FALLBACK_EVERY", 2)  # one check, at the second pass
    prompt = [[5, 17, 3, 99, 42, 8], [7, 7, 1]]
    res = generate(model, head, prompt, max_new_tokens=20, total_tokens="auto", eos_token_id=[], page_size=page_size)
    for b, p in enumerate(prompt):
        ref = model.generate(torch.tensor([p]), max_new_tokens=20, do_sample=False)[0, len(p) :].tolist()
        assert res.sequences[b] == ref
    assert res.tree == (8, 3, 4)
    if break_even == 0.0:
        assert res.plain_after is None
    else:
        assert res.plain_after == 2 and res.passes > 2
        assert int(res.accept_lengths[2:].max()) == 1  # one token per plain pass
        assert res.verify_time > 0 and res.draft_time > 0


def test_generate_auto_fallback_when_sampling(monkeypatch):
    """The switch under sampling: every request still gets its max_new_tokens tokens, reproducibly for a
    seeded generator (the tokens' distribution is the target's on both sides of the switch)."""
    from specdec.decoding import generate
    from specdec.models import DraftConfig, build_draft_head

    model = make_target(sharpen=4.0)
    torch.manual_seed(1)
    head = build_draft_head(DraftConfig.from_target(model.config, "griffin")).eval()
    monkeypatch.setattr(budget, "auto_tree", lambda *a, **kw: (8, 3, 4, 1.0))
    monkeypatch.setattr(budget, "break_even_tau", lambda *a, **kw: 100.0)
    gen_mod = importlib.import_module("specdec.decoding.generate")
    monkeypatch.setattr(gen_mod, "FALLBACK_MIN_PASSES", 3)
    monkeypatch.setattr(gen_mod, "FALLBACK_EVERY", 3)
    runs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(7)
        runs.append(
            generate(
                model,
                head,
                [[5, 17, 3], [9]],
                max_new_tokens=15,
                total_tokens="auto",
                temperature=1.0,
                generator=g,
                eos_token_id=[],
            )
        )
    assert runs[0].plain_after == 3 and [len(s) for s in runs[0].sequences] == [15, 15]
    assert runs[0].sequences == runs[1].sequences
