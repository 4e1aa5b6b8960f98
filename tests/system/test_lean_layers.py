"""specdec.target.lean_layers: the target's decoder layers without transformers' per-layer machinery.

The oracle is transformers' own path through the same TargetModel (lean=False): the lean path must give
bitwise the same hidden states, logits and cache contents for every supported family, on contiguous and
paged caches; an unsupported layer keeps transformers' path; a lean path that differs is dropped on the first
forward, with a warning, and nothing it computed is kept. With the C++ linear kernel, the lean path's
stacked projections (one kernel call for q/k/v, one for gate/up) are bitwise the separate calls, change no
value of the model, and follow replaced, converted or unmarked linears.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import specdec_kernels as sk
from specdec.target import TargetModel, kernel_linears, lean_layers
from specdec.target.model import LEAN_VERDICT
from specdec.target.prepack import PackedLinear
from specdec_kernels.ops.linear import linear_isas

from tiny_models import FAMILIES, make_target, one_thread  # noqa: F401  (autouse fixture)

IDS = torch.randint(1, 100, (2, 7), generator=torch.Generator().manual_seed(5))
LENGTHS = torch.tensor([7, 3], dtype=torch.int32)
TREE = sk.build_tree(torch.tensor([[-1, 0, 0, 1, 3], [-1, 0, 1, 1, 2]], dtype=torch.int32))
TOKENS = torch.randint(1, 100, (2, 5), generator=torch.Generator().manual_seed(6))


def decode(tgt, page_size=None):
    """Prefill, a verify, a commit and a second verify; every output and the caches after."""
    cache = tgt.new_cache(2, 24, page_size=page_size)
    outs = [tgt.prefill(IDS, LENGTHS, cache)]
    outs.append(tgt.verify(TOKENS, TREE, cache))
    tgt.commit(cache, torch.tensor([[0, 1, 3], [0, 2, -1]], dtype=torch.int32), torch.tensor([3, 2], dtype=torch.int32))
    outs.append(tgt.verify(TOKENS.flip(1), TREE, cache))
    return outs, cache


def assert_same(a, b):
    (outs_a, cache_a), (outs_b, cache_b) = a, b
    for x, y in zip(outs_a, outs_b):
        assert torch.equal(x.hidden, y.hidden) and torch.equal(x.logits, y.logits)
    assert torch.equal(cache_a.cache_len, cache_b.cache_len)
    assert all(torch.equal(u, v) for u, v in zip(cache_a.caches(), cache_b.caches()))


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("page_size", [None, 4])
def test_lean_path_is_bitwise_transformers(family, page_size):
    model = make_target(family)
    lean, plain = TargetModel(model), TargetModel(model, lean=False)
    assert lean.lean and not plain.lean
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the first forward's check passes silently
        assert_same(decode(lean, page_size), decode(plain, page_size))
    assert lean.lean and getattr(model.model, LEAN_VERDICT)[1] is True  # kept after the check, on the model


def test_lean_path_runs_after_the_check(monkeypatch):
    """After the first forward only the lean path runs (transformers' decoder forward is not called)."""
    model = make_target("qwen3")
    tgt = TargetModel(model)
    calls = []
    real = type(tgt.base).forward
    monkeypatch.setattr(type(tgt.base), "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    decode(tgt)
    assert len(calls) == 1  # the prefill's check only


def test_unsupported_layers_keep_transformers_path():
    """A layer class the lean path does not know (here a subclass, as a patched or quantized layer would be),
    a missing submodule or a forward hook in the decoder keeps every forward on transformers' path; a layer
    replaced after the TargetModel was built is planned again (here: not supported, so transformers')."""
    model = make_target("llama")
    layer = model.model.layers[1]
    layer.__class__ = type("PatchedDecoderLayer", (type(layer),), {})
    assert lean_layers.LeanDecoder.plan(model.model, 2) is None and not TargetModel(model).lean
    model = make_target("llama")
    del model.model.layers[0].mlp.act_fn
    assert not TargetModel(model).lean
    model = make_target("llama")
    seen = []
    model.model.layers[0].mlp.register_forward_hook(lambda *a: seen.append(1))
    tgt = TargetModel(model)
    assert not tgt.lean
    decode(tgt)
    assert len(seen) == 3  # the hook ran in every forward
    model = make_target("llama")
    tgt = TargetModel(model)
    decode(tgt)
    layer = model.model.layers[1]
    model.model.layers[1] = type("PatchedDecoderLayer", (type(layer),), {})(model.config, 1)
    model.model.layers[1].load_state_dict(layer.state_dict())
    assert_same(decode(tgt), decode(TargetModel(model, lean=False)))
    assert not tgt.lean


def test_linears_replaced_after_construction_are_used(monkeypatch):
    """The lean path looks the layers' submodules up on every forward: a projection replaced after the
    TargetModel was built (as prepacking does) is the one that runs, on both paths alike."""
    model = make_target("qwen2")
    tgt = TargetModel(model)
    decode(tgt)  # checked
    attn = model.model.layers[0].self_attn
    new = torch.nn.Linear(attn.q_proj.in_features, attn.q_proj.out_features, bias=True)
    torch.nn.init.normal_(new.weight, std=0.5)
    attn.q_proj = new
    assert tgt.lean
    assert_same(decode(tgt), decode(TargetModel(model, lean=False)))


def test_a_failing_lean_path_falls_back(monkeypatch):
    """A lean forward that raises before it was checked (an unexpected module, say) warns, returns
    transformers' result and leaves the model on transformers' path."""
    monkeypatch.setattr(lean_layers.LeanDecoder, "forward", lambda *a: 1 / 0)
    model = make_target("llama")
    tgt = TargetModel(model)
    with pytest.warns(RuntimeWarning, match="lean decoder path failed .ZeroDivisionError"):
        got = decode(tgt)
    assert not tgt.lean and not TargetModel(model).lean
    assert_same(got, decode(TargetModel(model, lean=False)))


def test_a_differing_lean_path_is_dropped_with_a_warning(monkeypatch):
    """A lean path whose arithmetic differs from transformers' (as after a transformers change) is caught by
    the first forward: a RuntimeWarning, transformers' outputs and cache, and transformers' path from then on."""
    real = lean_layers._rms_norm
    monkeypatch.setattr(lean_layers, "_rms_norm", lambda x, norm: real(x, norm) * (1 + 2**-10))
    model = make_target("mistral")
    tgt = TargetModel(model)
    with pytest.warns(RuntimeWarning, match="lean decoder path differs from transformers'"):
        got = decode(tgt)
    assert not tgt.lean and not TargetModel(model).lean  # the verdict stays with the model
    assert_same(got, decode(TargetModel(model, lean=False)))


# Configurations the family tests above leave out: half precision (the CPU default), Llama's optional
# attention and MLP biases, and Qwen's per-layer sliding-window attention (a window larger than the cache,
# which the tree attention serves; the lean path must read each layer's own window).
VARIANTS = {
    "llama-bf16": ("llama", torch.bfloat16, {}),
    "qwen3-bf16": ("qwen3", torch.bfloat16, {}),
    "llama-fp16": ("llama", torch.float16, {}),
    "llama-biases": ("llama", torch.float32, {"attention_bias": True, "mlp_bias": True}),
    "qwen2-sliding": ("qwen2", torch.float32, dict(use_sliding_window=True, sliding_window=32, max_window_layers=1)),
    "qwen3-sliding": ("qwen3", torch.float32, dict(use_sliding_window=True, sliding_window=32, max_window_layers=1)),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("page_size", [None, 4])
def test_lean_path_is_bitwise_transformers_variants(variant, page_size):
    family, dtype, config = VARIANTS[variant]
    model = make_target(family, **config).to(dtype)
    if "attention_bias" in config:  # random biases (transformers initialises them to zero)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(std=0.5, generator=torch.Generator().manual_seed(len(name)))
    if "sliding_window" in config:  # the layers really differ: one full, one sliding
        assert [layer.self_attn.sliding_window for layer in model.model.layers] == [None, 32]
    lean, plain = TargetModel(model), TargetModel(model, lean=False)
    assert lean.lean
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same(decode(lean, page_size), decode(plain, page_size))
    assert getattr(model.model, LEAN_VERDICT)[1] is True


def test_a_window_smaller_than_the_cache_fails_both_paths_alike():
    """A sliding window the tree attention cannot serve (smaller than the cache) raises the same error on the
    lean path as on transformers', also once the lean path runs alone (it reads each layer's own window);
    it is the input's fault, so the lean path is not condemned."""
    model = make_target("qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=1)
    with pytest.raises(NotImplementedError, match="sliding-window attention .window 8. with a cache of 24"):
        decode(TargetModel(model, lean=False))
    tgt = TargetModel(model)
    tgt.prefill(IDS[:1, :3], LENGTHS[:1].clamp(max=3), tgt.new_cache(1, 8))  # fits the window: checked
    assert getattr(model.model, LEAN_VERDICT)[1] is True
    with pytest.raises(NotImplementedError, match="sliding-window attention .window 8. with a cache of 24"):
        decode(tgt)  # the lean path alone
    assert tgt.lean


# With the C++ linear kernel (specdec.target.kernel_linears), the lean path computes each layer's q/k/v and its
# gate/up projections in one kernel call over their stacked weights (KernelLinearGroup); transformers' path
# still calls the kernel once per linear, so the bitwise comparison checks the stacking too.
NEEDS_KERNEL = pytest.mark.skipif(not linear_isas(), reason="specdec_kernels._C (the C++ linear kernel) is not loaded")
KERNEL_VARIANTS = {
    "llama-bf16": ("llama", torch.bfloat16),
    "qwen2-biases": ("qwen2", torch.float32),  # q/k/v biases, stacked too
    "qwen3-bf16": ("qwen3", torch.bfloat16),  # q/k norms on the stacked call's column slices
}


def kernel_target(family, dtype):
    model = make_target(family).to(dtype)
    with torch.no_grad():  # random biases (transformers initialises them to zero)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.5, generator=torch.Generator().manual_seed(len(name)))
    assert kernel_linears.use_kernel_linears(model) > 0
    return model


def same_storage(*modules) -> bool:
    return len({m.weight.untyped_storage().data_ptr() for m in modules}) == 1


@NEEDS_KERNEL
@pytest.mark.parametrize("variant", list(KERNEL_VARIANTS))
@pytest.mark.parametrize("page_size", [None, 4])
def test_grouped_kernel_projections_are_bitwise_the_separate_calls(force_kernel, kernel_calls, variant, page_size):
    model = kernel_target(*KERNEL_VARIANTS[variant])
    lean, plain = TargetModel(model), TargetModel(model, lean=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same(decode(lean, page_size), decode(plain, page_size))
    assert lean.lean and getattr(model.model, LEAN_VERDICT)[1] is True
    for layer in model.model.layers:  # stacked in place: one storage per group, Parameters kept
        a, m = layer.self_attn, layer.mlp
        assert same_storage(a.q_proj, a.k_proj, a.v_proj) and same_storage(m.gate_proj, m.up_proj)
        assert not same_storage(a.q_proj, m.gate_proj) and isinstance(a.q_proj.weight, torch.nn.Parameter)
    layers = len(model.model.layers)
    for tgt, per_layer in ((lean, 4), (plain, 7)):  # q/k/v, o, gate/up, down: 4 calls; 7 one by one
        cache = tgt.new_cache(2, 24, page_size=page_size)
        tgt.prefill(IDS, LENGTHS, cache)
        kernel_calls.clear()
        tgt.verify(TOKENS, TREE, cache)
        assert len(kernel_calls) == per_layer * layers + 1  # + the output layer


@NEEDS_KERNEL
def test_grouping_changes_no_value_and_keeps_the_model_usable(force_kernel):
    """Stacking moves the weights' storage, nothing else: the state_dict, model.generate (which computes
    through F.linear on the same Parameters) and loading weights afterwards, even when the grouping happened
    under inference_mode (the stacked weights must not be inference tensors)."""
    model = kernel_target("llama", torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(1, 100, (1, 6), generator=torch.Generator().manual_seed(1))
    reference = model.generate(ids, max_new_tokens=5, do_sample=False)
    with torch.inference_mode():
        decode(TargetModel(model))
    attn = model.model.layers[0].self_attn
    assert same_storage(attn.q_proj, attn.k_proj, attn.v_proj) and not attn.q_proj.weight.is_inference()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model.generate(ids, max_new_tokens=5, do_sample=False), reference)
    model.load_state_dict({k: v * 2 for k, v in before.items()})  # in place, into the stacked storage
    assert torch.equal(attn.k_proj.weight, before["model.layers.0.self_attn.k_proj.weight"] * 2)


@NEEDS_KERNEL
def test_groups_follow_replaced_converted_and_unmarked_linears(force_kernel, kernel_calls):
    """A projection replaced after grouping, the model converted to another dtype (every weight moves), or
    the kernel marks undone (plain_linears): the lean path sees it on the next forward and stays bitwise
    transformers'."""
    model = kernel_target("qwen2", torch.bfloat16)
    tgt = TargetModel(model)
    decode(tgt)
    attn = model.model.layers[1].self_attn
    new = torch.nn.Linear(attn.k_proj.in_features, attn.k_proj.out_features, bias=True).to(torch.bfloat16)
    torch.nn.init.normal_(new.weight, std=0.5)
    attn.k_proj = new
    kernel_linears.use_kernel_linears(model)  # the new layer runs the kernel too
    assert_same(decode(tgt), decode(TargetModel(model, lean=False)))
    assert same_storage(attn.q_proj, attn.k_proj, attn.v_proj)  # grouped again with the new layer
    model.to(torch.float32)
    assert_same(decode(tgt), decode(TargetModel(model, lean=False)))
    assert same_storage(attn.q_proj, attn.v_proj)
    kernel_linears.plain_linears(model)
    kernel_calls.clear()
    assert_same(decode(tgt), decode(TargetModel(model, lean=False)))
    assert kernel_calls == []


def test_only_kernel_linears_of_one_kind_are_grouped():
    """group_kernel_linears changes nothing unless every module is a kernel layer with the same dtype and
    input size and biases on all or none."""
    lins = [torch.nn.Linear(8, n) for n in (4, 3)]
    assert kernel_linears.group_kernel_linears(lins) is None  # plain nn.Linear
    for lin in lins:
        lin.__class__ = kernel_linears.KernelLinear
    mixed = [lins[0], torch.nn.Linear(8, 2, bias=False)]
    mixed[1].__class__ = kernel_linears.KernelLinear
    other_k = torch.nn.Linear(6, 2)
    other_k.__class__ = kernel_linears.KernelLinear
    pointers = [lin.weight.data_ptr() for lin in lins]
    assert kernel_linears.group_kernel_linears(mixed) is None
    assert kernel_linears.group_kernel_linears([lins[0], other_k]) is None
    assert [lin.weight.data_ptr() for lin in lins] == pointers  # nothing moved
    group = kernel_linears.group_kernel_linears(lins)
    assert group is not None and group.splits == (4, 3) and group.intact(tuple(lins))
    assert group.weight.shape == (7, 8) and group.bias.shape == (7,)
    lins[1].weight.data = lins[1].weight.data.clone()
    assert not group.intact(tuple(lins))


class _FakeOneDNN:
    """Stand-ins for oneDNN's packed bf16 linear (torch.ops.mkldnn), which AVX2-only CPUs cannot run: the
    "packed" weight is a copy and the product F.linear on it, so HybridLinear's routing and PackedLinear's
    weight stamp are exercised on every machine."""

    _reorder_linear_weight = staticmethod(lambda w, batch: w.clone())
    _linear_pointwise = staticmethod(lambda x, packed, bias, *rest: torch.nn.functional.linear(x, packed, bias))


@NEEDS_KERNEL
def test_grouped_hybrid_linears_keep_their_packed_path(monkeypatch, kernel_calls):
    """HybridLinear layers (where oneDNN's bf16 path runs: the kernel for calls of at most kernel_rows rows,
    the packed weight beyond) group for small calls like kernel layers; grouping re-stamps their packed
    copy, so larger calls still take it (no 'weight changed after it was packed' error), bitwise as
    transformers' path; a group whose smallest kernel_rows is below the call's rows runs layer by layer."""
    monkeypatch.setattr(torch.ops, "mkldnn", _FakeOneDNN())
    model = make_target("llama").to(torch.bfloat16)
    projections = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}
    for layer in model.model.layers:
        for part, names in projections.items():
            parent = getattr(layer, part)
            for name in names:
                hybrid = PackedLinear(getattr(parent, name))
                hybrid.__class__ = kernel_linears.HybridLinear
                hybrid.kernel_rows = 2 if name == "k_proj" else 12  # the prefill (14 rows) and verify (10) differ
                setattr(parent, name, hybrid)
    lean, plain = TargetModel(model), TargetModel(model, lean=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same(decode(lean), decode(plain))
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert same_storage(attn.q_proj, attn.k_proj, attn.v_proj) and same_storage(mlp.gate_proj, mlp.up_proj)
    cache = lean.new_cache(2, 24)
    lean.prefill(IDS, LENGTHS, cache)  # 14 rows: every layer on its packed weight
    kernel_calls.clear()
    lean.verify(TOKENS, TREE, cache)  # 10 rows: q/k/v one by one (k_proj packed), o, gate/up grouped, down
    assert kernel_calls == [10, 10, 10, 10, 10] * len(model.model.layers)
