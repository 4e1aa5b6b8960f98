"""specdec.target.lean_layers: the target's decoder layers without transformers' per-layer machinery.

The oracle is transformers' own path through the same TargetModel (lean=False): the lean path must give
bitwise the same hidden states, logits and cache contents for every supported family, on contiguous and
paged caches; an unsupported layer keeps transformers' path; a lean path that differs is dropped on the first
forward, with a warning, and nothing it computed is kept.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import specdec_kernels as sk
from specdec.target import TargetModel, lean_layers
from specdec.target.model import LEAN_VERDICT

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
