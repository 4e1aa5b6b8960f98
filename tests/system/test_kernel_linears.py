"""specdec.target.kernel_linears: the C++ linear kernel in specdec's own passes, nowhere else.

Checked on tiny targets with the kernel's use forced ($SPECDEC_LINEAR_CHOICE=cpu, so the test does not depend
on which is faster here): marking keeps the Parameters, the state_dict and tied weights; outside
kernel_linear_scope a marked layer is bitwise F.linear and the kernel is never called (model.generate, the
reference, stays as it was); inside it the kernel runs and matches F.linear within the dtype's tolerance;
greedy speculative decoding on a marked fp32 target still equals model.generate; autograd falls back to
F.linear; $SPECDEC_LINEAR_CHOICE=torch marks nothing; where oneDNN's prepacking runs, speed_up_cpu_linears prepacks
and routes small calls to the kernel (HybridLinear, by rows); the tree budget's cost cache keeps marked, hybrid
and plain models apart; the data build's feature pass takes the kernel on a marked target.
"""

from __future__ import annotations

import pytest
import torch

from specdec.decoding import cost_keys
from specdec.decoding.generate import generate, generate_baseline
from specdec.models import DraftConfig, build_draft_head
from specdec.target import kernel_linears as kl
from specdec.target.prepack import PackedLinear, is_prepacked, prepack_available, unpack_linears
from specdec_kernels.ops import linear as linear_op
from specdec_kernels.ops import linear_choice

from helpers import assert_close, assert_close_as_torch
from tiny_models import make_target, one_thread  # noqa: F401  (autouse fixture)

pytestmark = pytest.mark.skipif(not linear_op.linear_isas(), reason="specdec_kernels._C is not loaded")


def n_linears(model, cls) -> int:
    return sum(type(m) is cls for m in model.modules())


def test_marking_keeps_parameters_and_undoes(force_kernel):
    model = make_target("llama").to(torch.bfloat16)
    model.lm_head.weight = model.get_input_embeddings().weight  # tied, as in SmolLM2
    keys, params = list(model.state_dict()), [p.data_ptr() for p in model.parameters()]
    n = n_linears(model, torch.nn.Linear)
    assert kl.use_kernel_linears(model) == n > 0
    assert kl.use_kernel_linears(model) == n  # idempotent
    assert kl.uses_kernel_linears(model) and n_linears(model, kl.KernelLinear) == n
    assert all(isinstance(m, torch.nn.Linear) for m in model.modules() if type(m) is kl.KernelLinear)
    assert list(model.state_dict()) == keys and [p.data_ptr() for p in model.parameters()] == params
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert kl.plain_linears(model) == n and not kl.uses_kernel_linears(model)
    assert n_linears(model, torch.nn.Linear) == n


def test_choice_torch_marks_nothing(monkeypatch):
    monkeypatch.setenv("SPECDEC_LINEAR_CHOICE", "torch")
    model = make_target("llama")
    assert kl.use_kernel_linears(model) == 0 and not kl.uses_kernel_linears(model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 3, 17])
def test_scope_decides(force_kernel, kernel_calls, dtype, rows):
    torch.manual_seed(0)
    lin = torch.nn.Linear(37, 29).to(dtype)
    x = torch.randn(2, rows, 37).to(dtype)
    kl.use_kernel_linears(lin)
    with torch.no_grad():
        want = torch.nn.functional.linear(x, lin.weight, lin.bias)
        assert torch.equal(lin(x), want) and kernel_calls == []  # outside the scope: F.linear itself
        with kl.kernel_linear_scope():
            with kl.kernel_linear_scope():  # nested
                got = lin(x)
            assert lin(x).shape == (2, rows, 29)
        assert torch.equal(lin(x), want)
    assert kernel_calls == [2 * rows, 2 * rows]
    assert_close(got, want.double())  # against fp64 rounding of the same inputs, as the kernel tests


def test_autograd_falls_back(force_kernel, kernel_calls):
    lin = torch.nn.Linear(8, 4)
    kl.use_kernel_linears(lin)
    x = torch.randn(3, 8, requires_grad=True)
    with kl.kernel_linear_scope():
        lin(x).sum().backward()
    assert kernel_calls == [] and x.grad is not None and lin.weight.grad is not None


def greedy_case():
    """(target, GRIFFIN head, prompts, the target's greedy continuations by model.generate): fp32, unmarked."""
    model = make_target("llama", sharpen=4.0)
    torch.manual_seed(1)
    head = build_draft_head(DraftConfig.from_target(model.config, "griffin")).eval()
    prompts = [[3, 17, 5, 99, 42, 8], [7, 7, 1]]
    plain = [
        model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False)[0, len(p) :].tolist() for p in prompts
    ]
    return model, head, prompts, plain


def test_model_generate_untouched_speculative_lossless(force_kernel, kernel_calls):
    """fp32: greedy speculative decoding and our plain loop on the marked target equal model.generate, and
    model.generate never calls the kernel (it is the reference the speedups are measured against)."""
    model, head, prompts, plain = greedy_case()
    assert kl.use_kernel_linears(model) > 0 and kl.use_kernel_linears(head) > 0
    with torch.no_grad():
        for p, want in zip(prompts, plain):
            got = model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False)[0, len(p) :].tolist()
            assert got == want
    assert kernel_calls == []
    spec = generate(model, head, prompts, max_new_tokens=12, depth=3, total_tokens=8, tree_top_k=3).sequences
    assert spec == plain
    assert max(kernel_calls) >= 2 * 8  # the verification of both requests' 8-node trees ran the kernel
    kernel_calls.clear()
    base = generate_baseline(model, prompts, max_new_tokens=12).sequences
    assert base == plain and 2 in kernel_calls  # our plain loop: one row per request per step


def test_speed_up_prepacks_and_routes_small_calls_where_onednn_runs(force_kernel):
    model = make_target("llama").to(torch.bfloat16)
    packed, kernel = kl.speed_up_cpu_linears(model)
    if prepack_available():
        assert packed > 0 and kernel == packed == n_linears(model, kl.HybridLinear) and is_prepacked(model)
        assert kl.uses_kernel_linears(model) and kl.speed_up_cpu_linears(model) == (packed, kernel)  # idempotent
        assert kl.plain_linears(model) == packed and n_linears(model, PackedLinear) == packed
        kl.speed_up_cpu_linears(model)  # unpacking the hybrid layers removes the mark with them
        assert unpack_linears(model) == packed and not kl.uses_kernel_linears(model)
    else:
        assert packed == 0 and kernel > 0 and kl.uses_kernel_linears(model)


def test_speed_up_prepacks_only_when_the_kernel_never_wins(monkeypatch):
    if not prepack_available():
        pytest.skip("oneDNN's prepacked bf16 linear does not run on this CPU")
    monkeypatch.setenv("SPECDEC_LINEAR_CHOICE", "torch")
    model = make_target("llama").to(torch.bfloat16)
    packed, kernel = kl.speed_up_cpu_linears(model)
    assert packed > 0 and kernel == 0 and not kl.uses_kernel_linears(model)
    assert n_linears(model, PackedLinear) == packed


@pytest.mark.parametrize("rows", [1, 3, 4, 9])
def test_hybrid_linear_routes_by_rows(kernel_calls, rows):
    """Inside the scope a HybridLinear runs the kernel for calls of at most kernel_rows rows (here 4) and
    oneDNN's packed weight beyond, with PackedLinear's results within bf16's tolerance; outside the scope it
    is a PackedLinear bit for bit and never calls the kernel."""
    if not prepack_available():
        pytest.skip("oneDNN's prepacked bf16 linear does not run on this CPU")
    g = torch.Generator().manual_seed(rows)
    lin = torch.nn.Linear(37, 29).to(torch.bfloat16)
    packed = PackedLinear(lin)
    hybrid = PackedLinear(lin)
    hybrid.__class__ = kl.HybridLinear
    hybrid.kernel_rows = 4
    x = torch.randn(1, rows, 37, generator=g).to(torch.bfloat16)  # leading dims flattened: M = rows
    with torch.no_grad():
        want = packed(x)
        assert torch.equal(hybrid(x), want) and kernel_calls == []
        with kl.kernel_linear_scope():
            got = hybrid(x)
    assert kernel_calls == ([rows] if rows <= 4 else [])
    assert got.shape == want.shape
    assert_close(got, want)


def test_budget_cache_key_tells_marked_models_apart(force_kernel):
    model = make_target("llama")
    plain = cost_keys.target_cost_key(model, torch.float32, "cpu", 64)
    kl.use_kernel_linears(model)
    marked = cost_keys.target_cost_key(model, torch.float32, "cpu", 64)
    kernel = linear_choice.linear_kernel_id()  # a rebuilt kernel is another cost curve
    assert marked != plain and marked.endswith(f"|kernel-linears@{kernel}")
    if prepack_available():
        packed_model = make_target("llama").to(torch.bfloat16)
        kl.speed_up_cpu_linears(packed_model)
        hybrid = cost_keys.target_cost_key(packed_model, torch.bfloat16, "cpu", 64)
        kl.plain_linears(packed_model)
        assert hybrid.endswith(f"|prepacked+kernel@{kernel}")
        assert cost_keys.target_cost_key(packed_model, torch.bfloat16, "cpu", 64).endswith("|prepacked")


@pytest.mark.parametrize("marked_target", [False, True])
def test_head_output_layer_runs_the_kernel(force_kernel, kernel_calls, marked_target):
    """The draft head's output layer -- the gathered rows of a reduced vocabulary, or the bound target lm_head
    itself -- runs the kernel inside the scope when the head (or the target) is marked, with the same logits."""
    model = make_target("llama")
    torch.manual_seed(2)
    cfgs = {
        "reduced": DraftConfig.from_target(model.config, "fspad", draft_vocab_size=16),
        "full": DraftConfig.from_target(model.config, "fspad"),
    }
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, model.config.hidden_size, generator=g)
    for name, cfg in cfgs.items():
        head = build_draft_head(cfg).eval()
        if name == "reduced":
            head.set_draft_vocab(torch.arange(16) * 3)
        head.bind_target(model.get_input_embeddings(), model.lm_head)
        with torch.no_grad():
            want = head.compute_logits(x)
            (kl.use_kernel_linears(model) if marked_target else kl.use_kernel_linears(head))
            kernel_calls.clear()
            with kl.kernel_linear_scope():
                got = head.compute_logits(x)
        ran = name == "reduced" and not marked_target or name == "full" and marked_target
        assert (kernel_calls == [3]) == ran, (name, marked_target, kernel_calls)
        assert_close(got, want)
        kl.plain_linears(model)
        kl.plain_linears(head)


def test_feature_pass_runs_the_kernel(force_kernel, kernel_calls):
    """`specdec data`'s feature pass (specdec.data.target_hidden) takes a marked bf16 target's kernel linears for
    every row of the padded batch, with features as close to the fp32 truth as torch's own bf16 pass, and
    zeros on padding; on an unmarked target it calls no kernel."""
    from specdec.data import target_hidden

    model = make_target("llama", hidden=96)
    ids = torch.randint(1, 128, (3, 11), generator=torch.Generator().manual_seed(3))
    att = torch.ones(3, 11, dtype=torch.bool)
    att[1, 7:] = att[2, 4:] = False
    truth = target_hidden(model, ids, att)
    bf16 = model.to(torch.bfloat16)
    plain = target_hidden(bf16, ids, att)
    assert kernel_calls == []
    layers = kl.use_kernel_linears(bf16)
    got = target_hidden(bf16, ids, att)
    assert len(kernel_calls) == layers - 1 and set(kernel_calls) == {3 * 11}  # every linear but the lm_head
    assert got.dtype == torch.bfloat16 and not got[~att].any()
    assert_close_as_torch(got[att], truth[att], plain[att], "features through the kernel")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_large_calls_run_torch_widened(force_kernel, kernel_calls, dtype):
    """Beyond its kernel_rows (wide_rows: a prefill) a KernelLinear runs torch's linear widened to fp32 inside
    the scope, bitwise kernel_rows.widened; up to it the kernel; outside the scope F.linear. A group of such
    layers is not usable beyond the least kernel_rows, so the lean path calls each layer's own forward."""
    from specdec.target.kernel_rows import widened

    torch.manual_seed(0)
    lins = [torch.nn.Linear(40, n).to(dtype) for n in (24, 8)]
    for lin in lins:
        kl.use_kernel_linears(lin)
    lins[0].kernel_rows, lins[1].kernel_rows = 3, 5
    assert "kernel up to 3 rows" in repr(lins[0])
    small, large = torch.randn(3, 40).to(dtype), torch.randn(2, 2, 40).to(dtype)
    with torch.no_grad():
        outside = lins[0](large)
        assert torch.equal(outside, torch.nn.functional.linear(large, lins[0].weight, lins[0].bias))
        with kl.kernel_linear_scope():
            got_small, got_large = lins[0](small), lins[0](large)
            assert kernel_calls == [3]
            assert torch.equal(got_large, widened(large, lins[0].weight, lins[0].bias))
            assert_close(
                got_small, torch.nn.functional.linear(small.double(), *(p.double() for p in lins[0].parameters()))
            )
            group = kl.group_kernel_linears(lins)
            assert group.usable(small) and not group.usable(large)
    assert_close(got_large, outside.double() if dtype == torch.float32 else outside)


def test_lossless_with_widened_calls(force_kernel, kernel_calls):
    """fp32, every KernelLinear of target and head widened beyond 4 rows (the prefill, the 8-node verification):
    greedy speculative decoding still equals model.generate."""
    model, head, prompts, plain = greedy_case()
    for m in (model, head):
        kl.use_kernel_linears(m)
        for sub in m.modules():
            if type(sub) is kl.KernelLinear:
                sub.kernel_rows = 4
    spec = generate(model, head, prompts, max_new_tokens=12, depth=3, total_tokens=8, tree_top_k=3).sequences
    assert spec == plain
    # the 16-row verifications and the 12-row prefill were widened; the kernel took the small calls (and the
    # head's draft-step logits through the bound lm_head's raw weight, which has no kernel_rows of its own)
    assert kernel_calls and max(kernel_calls) < 2 * 8
