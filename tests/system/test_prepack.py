"""specdec.target.prepack: prepacked bf16 CPU linears give the same numbers as nn.Linear, everywhere they run.

The swap is checked on a tiny bf16 target: logits bitwise equal, the state_dict and tied weights untouched,
greedy speculative decoding on the prepacked model still equal to its own model.generate, gradients still
flowing (autograd falls back to F.linear), a stale packed copy refused, unpack_linears undoing it all, and
the tree budget's cost cache keeping prepacked and plain models apart.
"""

from __future__ import annotations

import pytest
import torch

from specdec.decoding import cost_keys
from specdec.decoding.generate import generate
from specdec.models import DraftConfig, build_draft_head
from specdec.target.prepack import (
    PackedLinear,
    is_prepacked,
    prepack_available,
    prepack_linears,
    unpack_linears,
)

from tiny_models import make_target, one_thread  # noqa: F401  (autouse fixture)

needs_prepack = pytest.mark.skipif(
    not prepack_available(), reason="no oneDNN prepacked bf16 linear here (torch build or CPU instructions)"
)


def bf16_target(**kw):
    return make_target("llama", **kw).to(torch.bfloat16)


def linears(model) -> int:
    return sum(type(m) is torch.nn.Linear for m in model.modules())


@needs_prepack
def test_logits_bitwise_and_state_dict_unchanged():
    model = bf16_target()
    model.lm_head.weight = model.get_input_embeddings().weight  # tied, as in SmolLM2
    ids = torch.randint(0, 128, (2, 9))
    n_lin, keys = linears(model), list(model.state_dict())
    with torch.no_grad():
        want = model(ids).logits
        assert prepack_linears(model) == n_lin > 0
        assert prepack_linears(model) == 0  # idempotent: nothing left to swap
        got = model(ids).logits
    assert is_prepacked(model) and linears(model) == 0
    assert torch.equal(got, want)
    assert list(model.state_dict()) == keys  # the packed copies are non-persistent
    assert model.lm_head.weight is model.get_input_embeddings().weight  # still tied


@needs_prepack
@pytest.mark.parametrize("kind", ["eagle", "griffin"])
def test_decoding_unchanged_by_prepacking(kind):
    """Speculative decoding (tree forwards of several rows) and model.generate (one row) give the same
    tokens on the prepacked model as on the plain one. (Whether bf16 speculative output equals bf16
    model.generate is another matter: near-ties round differently in a batched forward; the fp32
    losslessness tests cover the algorithm.)"""
    model = bf16_target(sharpen=4.0)
    torch.manual_seed(1)
    head = build_draft_head(DraftConfig.from_target(model.config, kind)).to(torch.bfloat16).eval()
    prompts = [[3, 17, 5, 99, 42, 8], [7, 7, 1]]
    tree = dict(max_new_tokens=12, depth=3, total_tokens=8, tree_top_k=3)

    def run():
        spec = generate(model, head, prompts, **tree).sequences
        plain = [
            model.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False)[0, len(p) :].tolist() for p in prompts
        ]
        return spec, plain

    before = run()
    assert prepack_linears(model) > 0
    assert run() == before


@needs_prepack
def test_autograd_falls_back_to_linear():
    lin = torch.nn.Linear(8, 5).to(torch.bfloat16)
    ref = torch.nn.Linear(8, 5).to(torch.bfloat16)
    ref.load_state_dict(lin.state_dict())
    packed = PackedLinear(lin)
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    packed(x).float().sum().backward()
    ref(x).float().sum().backward()
    assert torch.equal(lin.weight.grad, ref.weight.grad) and torch.equal(lin.bias.grad, ref.bias.grad)


@needs_prepack
def test_stale_weight_refused_and_unpack_restores():
    model = bf16_target()
    prepack_linears(model)
    ids = torch.randint(0, 128, (1, 5))
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(2.0)
        with pytest.raises(RuntimeError, match="changed after it was packed"):
            model(ids)
        n = unpack_linears(model)
        assert n > 0 and not is_prepacked(model) and linears(model) == n
        model(ids)  # plain nn.Linear again, on the updated weight


@needs_prepack
def test_only_bf16_cpu_linears_are_swapped():
    fp32 = make_target("llama")
    assert prepack_linears(fp32) == 0 and not is_prepacked(fp32)
    with pytest.raises(TypeError, match="bfloat16 CPU weight"):
        PackedLinear(torch.nn.Linear(4, 4))


@needs_prepack
def test_budget_cache_keys_differ():
    model = bf16_target()
    plain = cost_keys.target_cost_key(model, torch.bfloat16, "cpu", 256)
    prepack_linears(model)
    assert cost_keys.target_cost_key(model, torch.bfloat16, "cpu", 256) == plain + "|prepacked"


def test_prepack_available_follows_what_this_cpu_runs():
    """prepack_available() is True exactly when the packed bf16 op runs on this CPU (an AVX2-only CPU
    raises in it), and prepack_linears packs nothing where it is False instead of failing."""
    try:
        w = torch.ops.mkldnn._reorder_linear_weight(torch.ones(8, 16, dtype=torch.bfloat16), 1)
        torch.ops.mkldnn._linear_pointwise(torch.ones(2, 16, dtype=torch.bfloat16), w, None, "none", [], "")
        runs = True
    except (AttributeError, RuntimeError):
        runs = False
    assert prepack_available() == runs
    model = bf16_target()
    x = torch.randint(0, 64, (1, 5))
    with torch.no_grad():
        ref = model(x).logits
        n = prepack_linears(model)
        assert (n > 0) == runs and is_prepacked(model) == runs
        assert torch.equal(model(x).logits, ref)
