"""Draft heads (EAGLE, FSPAD, GRIFFIN): forward against hand-written formulas of docs/methods.md, the tree
attention decode path against dense attention, incremental decoding, save/load, published layouts, errors.

All CPU, fp32, tiny configs (the CUDA low-precision case excepted). Float tolerances follow from the dtype
and the length of the reductions behind the compared values (helpers.tolerance, see `head_reduction`), or
from PyTorch's own error against an fp64 truth (helpers.assert_close_as_torch).
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings

import pytest
import torch
import torch.nn.functional as F

import specdec_kernels
from specdec.models import (
    KINDS,
    CheckpointError,
    DraftConfig,
    DraftOutput,
    build_draft_head,
    infer_kind,
    load_draft_head,
)
from specdec.models.layers import RotaryEmbedding, dense_tree_attention

from helpers import assert_close_as_torch, backend_params, tolerance
from tiny_models import head_reduction

MAX_KEYS = 32  # the most key slots any attention below runs over (cache max_len, sequence length)

V, H, I, NH, NKV = 97, 32, 48, 4, 2


def make_config(kind, **kw) -> DraftConfig:
    base = dict(
        kind=kind,
        vocab_size=V,
        hidden_size=H,
        intermediate_size=I,
        num_attention_heads=NH,
        num_key_value_heads=NKV,
        rms_norm_eps=1e-5,
        max_position_embeddings=64,
    )
    base.update(kw)
    return DraftConfig(**base)


class Target(torch.nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.nn.Embedding(V, H)
        self.lm_head = torch.nn.Linear(H, V, bias=False)
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(V, H, generator=g))
            self.lm_head.weight.copy_(torch.randn(V, H, generator=g) / math.sqrt(H))


def randomize(head, seed=1) -> None:
    """Every parameter (norm weights and biases too) random, of a scale that keeps activations O(1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if name.endswith("layernorm.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))


def make_head(kind, seed=1, backend=None, **kw):
    """A random head bound to a random Target; `backend` is the fused input block's (FSPAD, GRIFFIN)."""
    head = build_draft_head(make_config(kind, **kw))
    if backend is not None:
        head.fc.backend = backend
    randomize(head, seed)
    target = Target()
    head.bind_target(target.embed, target.lm_head)
    return head, target


def inputs(B, T, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, H, generator=g), torch.randint(0, V, (B, T), generator=g)


def chain_mask(B, T, offset=0):
    """Row i sees tree slots offset..offset+i (a causal chain written at slot_offset = offset)."""
    W = (offset + T + 31) // 32
    m = torch.zeros(B, T, W, dtype=torch.int64)
    for i in range(T):
        for j in range(offset, offset + i + 1):
            m[:, i, j // 32] |= 1 << (j % 32)
    return _to_i32(m)


def _to_i32(m: torch.Tensor) -> torch.Tensor:
    return torch.where(m >= 2**31, m - 2**32, m).to(torch.int32)


# --------------------------------------------------------------------------------------------------
# Tolerances


def assert_head_close(actual, expected, cfg: DraftConfig, what: str, keys: int = MAX_KEYS) -> None:
    """fp32 head outputs computed two ways (each with its own rounding) agree to helpers.tolerance for the
    head's reduction chain, at the scale of the values compared."""
    scale = max(1.0, float(expected.detach().abs().max()))
    atol, rtol = tolerance(torch.float32, head_reduction(cfg, keys), scale)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


# --------------------------------------------------------------------------------------------------
# The hand-written reference (docs/methods.md / docs/checkpoints.md formulas over raw weight tensors).


def ref_rms(x, w, eps):
    return w * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def ref_rope(x, pos, theta, hd):
    """x [B, T, heads, hd], pos [B, T]: rotate-half RoPE, frequency i = theta^(-2i/hd)."""
    half = hd // 2
    inv = torch.tensor([theta ** (-2.0 * i / hd) for i in range(half)])
    ang = pos.double()[..., None] * inv.double()  # [B, T, half]
    cos, sin = ang.cos().float()[:, :, None], ang.sin().float()[:, :, None]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def ref_linear(sd, name, x):
    y = x @ sd[name + ".weight"].T
    return y + sd[name + ".bias"] if name + ".bias" in sd else y


def ref_attention(sd, cfg, x, pos, visible):
    """visible [B, T, T] bool: query i sees key j."""
    B, T, _ = x.shape
    hd, nh, nkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    p = "layers.0.self_attn."
    q = ref_rope(ref_linear(sd, p + "q_proj", x).view(B, T, nh, hd), pos, cfg.rope_theta, hd)
    k = ref_rope(ref_linear(sd, p + "k_proj", x).view(B, T, nkv, hd), pos, cfg.rope_theta, hd)
    v = ref_linear(sd, p + "v_proj", x).view(B, T, nkv, hd)
    out = torch.zeros(B, T, nh, hd)
    for h in range(nh):
        kv = h // (nh // nkv)
        s = torch.einsum("btd,bsd->bts", q[:, :, h], k[:, :, kv]) / math.sqrt(hd)
        s = s.masked_fill(~visible, float("-inf"))
        out[:, :, h] = torch.softmax(s, -1) @ v[:, :, kv]
    return ref_linear(sd, p + "o_proj", out.reshape(B, T, nh * hd))


def ref_forward(kind, sd, cfg, target, f, ids, pos, visible=None):
    """(logits, hidden) of docs/methods.md for one head, from its state dict."""
    T = f.shape[1]
    if visible is None:
        visible = torch.ones(T, T, dtype=torch.bool).tril().expand(f.shape[0], T, T)
    e = target.embed.weight[ids]
    eps = cfg.rms_norm_eps
    silu = F.silu
    if kind == "eagle":
        x = ref_linear(sd, "fc", torch.cat((e, f), -1))
    elif kind == "fspad":
        z = ref_linear(sd, "fc.fc", torch.cat((e, f), -1))
        gate = e @ sd["fc.mlp.gate_proj.weight"].T
        up = ref_rms(z, sd["fc.post_attention_layernorm.weight"], eps) @ sd["fc.mlp.up_proj.weight"].T
        x = z + (silu(gate) * up) @ sd["fc.mlp.down_proj.weight"].T
    else:
        h = ref_linear(sd, "fc.fc", torch.cat((e, f), -1))
        na = sd["fc.mlp.input_layernorm.weight"]
        nb = sd["fc.post_attention_layernorm.weight"]
        cat = torch.cat((ref_rms(ref_rms(h, nb, eps), na, eps), ref_rms(e, na, eps)), -1)
        x = h + silu(cat @ sd["fc.mlp.up_proj.weight"].T) @ sd["fc.mlp.down_proj.weight"].T
    a = x + ref_attention(sd, cfg, x, pos, visible)
    n = ref_rms(a, sd["layers.0.post_attention_layernorm.weight"], eps)
    m = (silu(n @ sd["layers.0.mlp.gate_proj.weight"].T) * (n @ sd["layers.0.mlp.up_proj.weight"].T)) @ sd[
        "layers.0.mlp.down_proj.weight"
    ].T
    if kind == "eagle":
        o = a + m
        return target.lm_head(o), o
    out = torch.cat((a, a), -1) + m
    return target.lm_head(out[..., :H]), out[..., H:]


def decode_all(head, f, ids, pos, cache_len=None, max_len=24):
    """All T positions in one decode-path call (chain mask, slot_offset 0) from an empty cache."""
    B, T = ids.shape
    cache = head.new_cache(B, max_len)
    cl = torch.zeros(B, dtype=torch.int32) if cache_len is None else cache_len
    with torch.no_grad():
        return head(f, ids, pos, cache, cl, chain_mask(B, T)), cache


# --------------------------------------------------------------------------------------------------
# Forward = the formulas


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("qkv_bias,bias", [(False, True), (True, False)])
def test_forward_matches_formula(kind, qkv_bias, bias):
    head, target = make_head(kind, qkv_bias=qkv_bias, bias=bias)
    B, T = 2, 7
    f, ids = inputs(B, T)
    pos = torch.arange(T).expand(B, T) + torch.tensor([[0], [3]])  # two requests, different offsets
    sd = {k: v.detach() for k, v in head.state_dict().items()}
    with torch.no_grad():
        want_logits, want_hidden = ref_forward(kind, sd, head.config, target, f, ids, pos)
        seq = head.forward_sequence(f, ids, pos)
    assert isinstance(seq, DraftOutput)
    assert seq.logits.shape == (B, T, V) and seq.hidden.shape == (B, T, H)
    cfg = head.config
    assert_head_close(seq.hidden, want_hidden, cfg, f"{kind} hidden (sequence path)")
    assert_head_close(seq.logits, want_logits, cfg, f"{kind} logits (sequence path)")
    dec, _ = decode_all(head, f, ids, pos)
    assert_head_close(dec.hidden, want_hidden, cfg, f"{kind} hidden (tree attention path)")
    assert_head_close(dec.logits, want_logits, cfg, f"{kind} logits (tree attention path)")


def test_dense_tree_attention_chain_equals_causal():
    g = torch.Generator().manual_seed(0)
    B, T, D, P = 2, 5, 16, 3
    q = torch.randn(B, NH, T, D, generator=g)
    k = torch.randn(B, NKV, P + T + 2, D, generator=g)
    v = torch.randn(B, NKV, P + T + 2, D, generator=g)
    cache_len = torch.full((B,), P, dtype=torch.int32)
    got = dense_tree_attention(q, k, v, cache_len, chain_mask(B, T), 1 / math.sqrt(D))
    kk = k[:, :, : P + T].repeat_interleave(NH // NKV, 1)
    vv = v[:, :, : P + T].repeat_interleave(NH // NKV, 1)
    visible = torch.ones(T, P + T, dtype=torch.bool).tril(P)
    want = F.scaled_dot_product_attention(q, kk, vv, attn_mask=visible)
    # scores over D terms, then softmax and P.V over the P + T + 2 slots
    atol, rtol = tolerance(torch.float32, D + 2 * (P + T + 2), scale=float(want.abs().max()))
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol, msg="dense tree attention, chain mask")
    torch.testing.assert_close(
        specdec_kernels.tree_attention(q, k, v, cache_len, chain_mask(B, T)),
        want,
        atol=atol,
        rtol=rtol,
        msg="specdec_kernels.tree_attention, chain mask",
    )


# --------------------------------------------------------------------------------------------------
# The decode path: incremental = all at once; trees = their root-to-node chains.


@pytest.mark.parametrize("kind", KINDS)
def test_incremental_equals_all_at_once(kind):
    head, _ = make_head(kind)
    B, T = 2, 6
    f, ids = inputs(B, T)
    pos = torch.arange(T).expand(B, T).contiguous()
    full, _ = decode_all(head, f, ids, pos)
    cache = head.new_cache(B, 16)
    cache_len = torch.zeros(B, dtype=torch.int32)
    one = torch.ones(B, 1, 1, dtype=torch.int32)  # bit 0: the query's own slot
    with torch.no_grad():
        for t in range(T):
            out = head(f[:, t : t + 1], ids[:, t : t + 1], pos[:, t : t + 1], cache, cache_len, one)
            assert_head_close(out.hidden[:, 0], full.hidden[:, t], head.config, f"{kind} hidden at step {t}")
            assert_head_close(out.logits[:, 0], full.logits[:, t], head.config, f"{kind} logits at step {t}")
            cache_len += 1  # the caller commits
    # a chunk of 3 after a committed prefix of 3 equals the same positions from scratch
    cache = head.new_cache(B, 16)
    with torch.no_grad():
        head(f[:, :3], ids[:, :3], pos[:, :3], cache, torch.zeros(B, dtype=torch.int32), chain_mask(B, 3))
        out = head(f[:, 3:], ids[:, 3:], pos[:, 3:], cache, torch.full((B,), 3, dtype=torch.int32), chain_mask(B, 3))
    assert_head_close(out.hidden, full.hidden[:, 3:], head.config, f"{kind} hidden after a committed prefix")


@pytest.mark.parametrize("kind", KINDS)
def test_logits_at_selects_one_row_per_request(kind):
    """forward(logits_at=idx): logits [B, 1, V] equal to the full call's logits at idx[b]; hidden unchanged."""
    head, _ = make_head(kind)
    B, T = 3, 5
    f, ids = inputs(B, T, seed=7)
    pos = torch.arange(T).expand(B, T).contiguous()
    idx = torch.tensor([4, 0, 2])
    with torch.no_grad():
        full = head(f, ids, pos, head.new_cache(B, 8), torch.zeros(B, dtype=torch.int32), chain_mask(B, T))
        some = head(
            f, ids, pos, head.new_cache(B, 8), torch.zeros(B, dtype=torch.int32), chain_mask(B, T), logits_at=idx
        )
    assert some.logits.shape == (B, 1, full.logits.shape[2])
    # not bitwise: a 1-row product may take another BLAS path than a T-row one
    assert_head_close(some.logits[:, 0], full.logits[torch.arange(B), idx], head.config, f"{kind} logits_at")
    assert torch.equal(some.hidden, full.hidden)
    with pytest.raises(TypeError, match="logits_at"):
        head(
            f,
            ids,
            pos,
            head.new_cache(B, 8),
            torch.zeros(B, dtype=torch.int32),
            chain_mask(B, T),
            logits_at=idx.float(),
        )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("page_size", [None, 3])
def test_tree_expansion_equals_chains(kind, page_size):
    """EAGLE-2 style expansion: a prefix, then two levels of frontier nodes written at fresh slot offsets
    with ancestor masks; each node's output equals running its root-to-node path as a plain chain. On a
    paged cache (pages of 3 slots from a shuffled pool) the prefix ends mid-page and the tree crosses pages."""
    head, _ = make_head(kind)
    B, P = 1, 4
    f, ids = inputs(B, P + 6, seed=5)
    cache = head.new_cache(B, 32, page_size=page_size)
    cl = torch.full((B,), P, dtype=torch.int32)
    pre_pos = torch.arange(P).expand(B, P)
    with torch.no_grad():
        head(f[:, :P], ids[:, :P], pre_pos, cache, torch.zeros(B, dtype=torch.int32), chain_mask(B, P))
        # tree slots after the prefix: 0 = root, 1, 2 = children of the root, 3, 4 = children of node 1,
        # 5 = child of node 2. Node i uses feature/token column P + i.
        parents = [-1, 0, 0, 1, 1, 2]
        depth = [0, 1, 1, 2, 2, 2]

        def anc(i):
            out = [i]
            while parents[out[-1]] >= 0:
                out.append(parents[out[-1]])
            return out

        def mask_rows(nodes):
            m = torch.zeros(B, len(nodes), 1, dtype=torch.int64)
            for r, i in enumerate(nodes):
                for j in anc(i):
                    m[:, r, 0] |= 1 << j
            return _to_i32(m)

        outs = {}
        for level in ([0], [1, 2], [3, 4, 5]):
            cols = [P + i for i in level]
            pos = torch.tensor([[P + depth[i] for i in level]])
            o = head(f[:, cols], ids[:, cols], pos, cache, cl, mask_rows(level), slot_offset=level[0])
            for r, i in enumerate(level):
                outs[i] = o.hidden[:, r]
        for i in range(6):
            path = anc(i)[::-1]
            cols = list(range(P)) + [P + j for j in path]
            pos = torch.arange(len(cols)).expand(B, len(cols))
            want = head.forward_sequence(f[:, cols], ids[:, cols], pos).hidden[:, -1]
            assert_head_close(outs[i], want, head.config, f"{kind} tree node {i}")


def test_slot_offset_tensor_and_cache_untouched_elsewhere():
    head, _ = make_head("eagle")
    B, T = 2, 3
    f, ids = inputs(B, T)
    pos = torch.arange(T).expand(B, T)
    cache = head.new_cache(B, 12)
    cl = torch.tensor([1, 4], dtype=torch.int32)
    off = torch.tensor([2, 0], dtype=torch.int32)
    with torch.no_grad():
        head(f, ids, pos, cache, cl, chain_mask(B, T, offset=2), slot_offset=off)
    written = (cache.k != 0).any(-1).any(1)  # [B, S]
    want = torch.zeros(B, 12, dtype=torch.bool)
    want[0, 3:6] = True
    want[1, 4:7] = True
    assert torch.equal(written, want)


# --------------------------------------------------------------------------------------------------
# RoPE


def test_rope_matches_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    pos = torch.tensor([[0, 5, 100, 1999]])
    for scaling in (
        {"rope_type": "linear", "factor": 4.0},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    ):
        hf = LlamaConfig(
            hidden_size=64,
            num_attention_heads=2,
            rope_theta=500000.0,
            rope_scaling=scaling,
            max_position_embeddings=131072,
        )
        cfg = DraftConfig.from_target(hf, "eagle")
        inv, attn_factor = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](hf, "cpu")
        assert attn_factor == 1.0
        cos, sin = RotaryEmbedding(cfg)(pos)
        ang = pos.float()[..., None] * inv.float()
        # cos/sin of an fp32 angle x are only known to |x| eps: the frequencies may differ in their last bit
        atol, rtol = tolerance(torch.float32, 1, scale=float(ang.abs().max()))
        torch.testing.assert_close(
            cos, torch.cat((ang, ang), -1).cos(), atol=atol, rtol=rtol, msg=f"{scaling['rope_type']} cos"
        )
        torch.testing.assert_close(
            sin, torch.cat((ang, ang), -1).sin(), atol=atol, rtol=rtol, msg=f"{scaling['rope_type']} sin"
        )


def test_rope_dynamic():
    cfg = make_config("eagle", rope_scaling={"type": "dynamic", "factor": 2.0})
    plain = RotaryEmbedding(make_config("eagle"))
    dyn = RotaryEmbedding(cfg)
    short = torch.arange(10)[None]
    assert torch.equal(dyn(short)[0], plain(short)[0])  # within max_position_embeddings: plain RoPE
    long = torch.arange(128)[None]
    d, seq = cfg.head_dim, 128.0
    base = 10000.0 * (2.0 * seq / 64 - 1.0) ** (d / (d - 2))
    inv = 1.0 / base ** (torch.arange(0, d, 2).float() / d)
    ang = long.float()[..., None] * inv
    atol, rtol = tolerance(torch.float32, 1, scale=float(ang.abs().max()))  # cos of an fp32 angle, as above
    torch.testing.assert_close(
        dyn(long)[0], torch.cat((ang, ang), -1).cos(), atol=atol, rtol=rtol, msg="dynamic NTK cos"
    )


# --------------------------------------------------------------------------------------------------
# Target sharing


@pytest.mark.parametrize("kind", KINDS)
def test_shared_target_modules(kind):
    head, target = make_head(kind)
    assert head.lm_head is target.lm_head and head.embed_tokens is target.embed
    ids = {id(p) for p in head.parameters()}
    assert id(target.lm_head.weight) not in ids and id(target.embed.weight) not in ids
    assert not any("embed" in k or "lm_head" in k for k in head.state_dict())
    head.to(torch.float64)  # the target is not moved with the head
    assert target.lm_head.weight.dtype == torch.float32 and head.lm_head is target.lm_head
    # training: gradients reach the head, never the embedding
    head.to(torch.float32)
    f, x = inputs(2, 4)
    out = head.forward_sequence(f, x, attention_mask=torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]))
    (out.logits.logsumexp(-1).sum() + out.hidden.square().sum()).backward()
    assert target.embed.weight.grad is None
    assert all(p.grad is not None for p in head.parameters())


def test_unbound_head_errors():
    head = build_draft_head(make_config("eagle"))
    f, x = inputs(1, 2)
    with pytest.raises(RuntimeError, match="bind_target"):
        head.forward_sequence(f, x)


# --------------------------------------------------------------------------------------------------
# Save / load


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind, tmp_path):
    head, target = make_head(kind, qkv_bias=(kind == "griffin"), bias=(kind != "fspad"))
    head.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["specdec_kind"] == kind and cfg["hidden_size"] == H and cfg["num_hidden_layers"] == 1
    loaded = load_draft_head(tmp_path)
    assert loaded.kind == kind and loaded.config.to_dict() == head.config.to_dict()
    assert loaded.load_report["missing"] == [] and loaded.load_report["unexpected"] == []
    loaded.bind_target(target.embed, target.lm_head)
    f, ids = inputs(2, 5)
    pos = torch.arange(5).expand(2, 5)
    a, _ = decode_all(head, f, ids, pos)
    b, _ = decode_all(loaded, f, ids, pos)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.hidden, b.hidden)
    half = load_draft_head(tmp_path, dtype=torch.float16)
    assert half.dtype == torch.float16


def published_state(kind, cfg: DraftConfig, seed=3, qkv_bias=False, fc_bias=True):
    """A state dict with exactly the keys of docs/checkpoints.md for `kind`."""
    g = torch.Generator().manual_seed(seed)
    hd, nh, nkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads

    def w(*shape):
        return torch.randn(*shape, generator=g) / math.sqrt(shape[-1])

    sd = {"embed_tokens.weight": torch.randn(V, H, generator=g)}
    p = "layers.0."
    sd.update(
        {
            p + "self_attn.q_proj.weight": w(nh * hd, H),
            p + "self_attn.k_proj.weight": w(nkv * hd, H),
            p + "self_attn.v_proj.weight": w(nkv * hd, H),
            p + "self_attn.o_proj.weight": w(H, nh * hd),
            p + "mlp.gate_proj.weight": w(I, H),
            p + "mlp.up_proj.weight": w(I, H),
            p + "mlp.down_proj.weight": w(H if kind == "eagle" else 2 * H, I),
            p + "post_attention_layernorm.weight": 1 + 0.1 * torch.randn(H, generator=g),
        }
    )
    if qkv_bias:
        for n, d in (("q", nh * hd), ("k", nkv * hd), ("v", nkv * hd)):
            sd[p + f"self_attn.{n}_proj.bias"] = 0.1 * torch.randn(d, generator=g)
    fc = "fc." if kind == "eagle" else "fc.fc."
    sd[fc + "weight"] = w(H, 2 * H)
    if fc_bias:
        sd[fc + "bias"] = 0.1 * torch.randn(H, generator=g)
    if kind == "fspad":
        sd.update(
            {
                "fc.mlp.gate_proj.weight": w(I, H),
                "fc.mlp.up_proj.weight": w(I, H),
                "fc.mlp.down_proj.weight": w(H, I),
                "fc.post_attention_layernorm.weight": 1 + 0.1 * torch.randn(H, generator=g),
            }
        )
    if kind == "griffin":
        sd.update(
            {
                "fc.mlp.input_layernorm.weight": 1 + 0.1 * torch.randn(H, generator=g),
                "fc.mlp.up_proj.weight": w(I, 2 * H),
                "fc.mlp.down_proj.weight": w(H, I),
                "fc.post_attention_layernorm.weight": 1 + 0.1 * torch.randn(H, generator=g),
            }
        )
    return sd


def write_published(path, kind, sd, config_extra=None, fmt="bin"):
    """config.json as the original repositories write it (no specdec_kind) + pytorch_model.bin."""
    os.makedirs(path, exist_ok=True)
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": V,
        "hidden_size": H,
        "intermediate_size": I,
        "num_hidden_layers": 1,
        "num_attention_heads": NH,
        "num_key_value_heads": NKV,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "max_position_embeddings": 64,
        "hidden_act": "silu",
        "model_type": "llama",
        "torch_dtype": "float16",
    }
    cfg.update(config_extra or {})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    if fmt == "bin":
        torch.save(sd, os.path.join(path, "pytorch_model.bin"))
    else:
        from safetensors.torch import save_file

        save_file(sd, os.path.join(path, "model.safetensors"))


@pytest.mark.parametrize(
    "kind,qkv_bias,fc_bias,fmt",
    [
        ("eagle", False, True, "bin"),
        ("eagle", True, False, "safetensors"),
        ("fspad", False, True, "bin"),
        ("griffin", False, True, "bin"),
        ("griffin", True, True, "safetensors"),
    ],
)
def test_published_layout_loads_and_runs(kind, qkv_bias, fc_bias, fmt, tmp_path):
    cfg = make_config(kind, qkv_bias=qkv_bias, bias=fc_bias)
    sd = published_state(kind, cfg, qkv_bias=qkv_bias, fc_bias=fc_bias)
    # the config says bias true (the default) even where the tensors are absent: the tensors win
    write_published(tmp_path, kind, sd, {"bias": True}, fmt=fmt)
    assert infer_kind(sd) == kind
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        head = load_draft_head(tmp_path)
    assert head.kind == kind and head.config.bias == fc_bias and head.config.qkv_bias == qkv_bias
    assert head.load_report["ignored"] == ["embed_tokens.weight"]
    # unbound, the head embeds with the checkpoint's copy; logits need the target's lm_head
    assert torch.equal(head.embed_weight(), sd["embed_tokens.weight"])
    target = Target()
    head.bind_target(target.embed, target.lm_head)
    assert head.embed_tokens_weight is None and head.embed_weight() is target.embed.weight
    f, ids = inputs(2, 5)
    pos = torch.arange(5).expand(2, 5)
    out, _ = decode_all(head, f, ids, pos)
    want_logits, want_hidden = ref_forward(kind, sd, head.config, target, f, ids, pos)
    assert_head_close(out.hidden, want_hidden, head.config, f"published {kind} hidden")
    assert_head_close(out.logits, want_logits, head.config, f"published {kind} logits")


def test_published_eagle_non_strict_reports(tmp_path):
    cfg = make_config("eagle")
    sd = published_state("eagle", cfg)
    sd["layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(cfg.head_dim // 2)  # old checkpoints carry it
    sd["layers.0.input_layernorm.weight"] = torch.ones(H)  # not used by layer 0
    write_published(tmp_path, "eagle", sd)
    with pytest.warns(UserWarning, match="layers.0.input_layernorm.weight"):
        head = load_draft_head(tmp_path)
    assert head.load_report["unexpected"] == ["layers.0.input_layernorm.weight"]
    assert "layers.0.self_attn.rotary_emb.inv_freq" in head.load_report["ignored"]
    with pytest.raises(CheckpointError, match="input_layernorm"):
        load_draft_head(tmp_path, strict=True)


def test_published_rope_scaling_uses_default_base(tmp_path):
    sd = published_state("eagle", make_config("eagle"))
    write_published(tmp_path, "eagle", sd, {"rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 2}})
    head = load_draft_head(tmp_path)
    assert head.config.rope_theta == 10000.0 and head.config.rope_scaling == {"rope_type": "linear", "factor": 2}


@pytest.mark.parametrize("kind", KINDS)
def test_bad_checkpoints(kind, tmp_path):
    cfg = make_config(kind)
    good = published_state(kind, cfg)
    bad = dict(good)
    bad["layers.0.mlp.up_proj.weight"] = torch.zeros(I + 1, H)
    write_published(tmp_path / "shape", kind, bad)
    with pytest.raises(
        CheckpointError, match=r"layers\.0\.mlp\.up_proj\.weight has shape \[49, 32\], expected \[48, 32\]"
    ):
        load_draft_head(tmp_path / "shape")
    missing = dict(good)
    del missing["layers.0.self_attn.k_proj.weight"]
    write_published(tmp_path / "missing", kind, missing)
    with pytest.raises(CheckpointError, match=r"missing keys .*layers\.0\.self_attn\.k_proj\.weight"):
        load_draft_head(tmp_path / "missing")
    if kind != "eagle":
        extra = dict(good, **{"fc.extra.weight": torch.zeros(2)})
        write_published(tmp_path / "extra", kind, extra)
        with pytest.raises(CheckpointError, match=r"unexpected keys .*fc\.extra\.weight"):
            load_draft_head(tmp_path / "extra")
    else:
        with pytest.warns(UserWarning, match="k_proj"):
            head = load_draft_head(tmp_path / "missing", strict=False)
        assert head.load_report["missing"] == ["layers.0.self_attn.k_proj.weight"]
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_draft_head(tmp_path / "nowhere")


# --------------------------------------------------------------------------------------------------
# Config and input checks


def test_config_from_target():
    from transformers import LlamaConfig, Qwen2Config

    llama = LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_attention_heads=32,
        num_key_value_heads=8,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
    )
    c = DraftConfig.from_target(llama, "griffin")
    assert (c.kind, c.vocab_size, c.head_dim, c.num_key_value_heads, c.rope_theta, c.qkv_bias, c.bias) == (
        "griffin",
        128256,
        128,
        8,
        500000.0,
        False,
        True,
    )
    qwen = Qwen2Config(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_attention_heads=28,
        num_key_value_heads=4,
        rope_theta=1e6,
    )
    c = DraftConfig.from_target(qwen, "fspad", intermediate_size=1024)
    assert c.qkv_bias and c.rope_theta == 1e6 and c.intermediate_size == 1024 and c.head_dim == 128
    d = DraftConfig.from_target(llama.to_dict(), "eagle")
    assert d.hidden_size == 4096 and d.kind == "eagle"
    with pytest.raises(ValueError, match="kind"):
        DraftConfig.from_target(llama, "medusa")
    with pytest.raises(NotImplementedError, match="yarn"):
        make_config("eagle", rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ValueError, match="num_key_value_heads"):
        make_config("eagle", num_key_value_heads=3)


def test_paged_draft_cache_pages_pool_and_checks():
    """new_cache(page_size=P): NHD pages from the pool, writes land at block_table[b, s // P], s % P, the
    outputs equal the contiguous cache's, release() returns the pages; misuse gets clear errors."""
    from specdec.kv_pages import PagePool
    from specdec.models import PagedDraftCache

    head, _ = make_head("eagle")
    B, T, P = 2, 3, 4
    f, ids = inputs(B, T)
    pos = torch.arange(T).expand(B, T)
    pool = PagePool(12, seed=3)
    cache = head.new_cache(B, 12, page_size=P, pool=pool)
    assert isinstance(cache, PagedDraftCache) and cache.max_len == 12 and pool.free == 12 - 2 * 3
    assert cache.k.shape == (12, P, head.config.num_key_value_heads, head.config.head_dim)
    flat = head.new_cache(B, 12)
    cl = torch.tensor([1, 4], dtype=torch.int32)
    off = torch.tensor([2, 0], dtype=torch.int32)
    with torch.no_grad():
        want = head(f, ids, pos, flat, cl, chain_mask(B, T, offset=2), slot_offset=off)
        got = head(f, ids, pos, cache, cl, chain_mask(B, T, offset=2), slot_offset=off)
    torch.testing.assert_close(got.hidden, want.hidden)
    torch.testing.assert_close(got.logits, want.logits)
    for b, slots in ((0, range(3, 6)), (1, range(4, 7))):
        for s in slots:  # the pages hold what the contiguous cache holds at the same logical slot
            page = cache.block_table[b, s // P].item()
            assert torch.equal(cache.k[page, s % P], flat.k[b, :, s])
    with torch.no_grad():
        bad = PagedDraftCache(cache.k, cache.v, cache.block_table.long(), P)
        with pytest.raises(TypeError, match="cache.block_table: expected dtype torch.int32"):
            head(f, ids, pos, bad, cl, chain_mask(B, T))
        bad = PagedDraftCache(cache.k, cache.v, cache.block_table, 3)
        with pytest.raises(ValueError, match=r"cache.k: expected shape \[\*, 3, 2, 8\]"):
            head(f, ids, pos, bad, cl, chain_mask(B, T))
    with pytest.raises(ValueError, match="page_size: expected an int >= 1"):
        head.new_cache(B, 12, page_size=0)
    head.new_cache(B, 12, page_size=P, pool=pool).release()  # the 6 free pages fit one more batch
    assert pool.free == 6
    with pytest.raises(ValueError, match="need 8 pages of 4; 6 of 12 are free"):
        head.new_cache(B, 16, page_size=P, pool=pool)
    assert pool.free == 6  # nothing taken by the failed call
    cache.release()
    assert pool.free == 12
    x = torch.zeros(1, 2, 1, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="inference-only"):
        cache.attend(x, cl[:1], chain_mask(1, 1), 1.0)


def test_input_checks():
    head, _ = make_head("fspad")
    B, T = 2, 3
    f, ids = inputs(B, T)
    pos = torch.arange(T).expand(B, T)
    cache = head.new_cache(B, 8)
    cl = torch.zeros(B, dtype=torch.int32)
    m = chain_mask(B, T)
    with torch.no_grad():
        with pytest.raises(TypeError, match="input_ids: expected dtype torch.int64"):
            head(f, ids.int(), pos, cache, cl, m)
        with pytest.raises(ValueError, match=r"features: expected shape \[\*, \*, 32\]"):
            head(f[..., :8], ids, pos, cache, cl, m)
        with pytest.raises(TypeError, match="cache_len: expected dtype torch.int32"):
            head(f, ids, pos, cache, cl.long(), m)
        with pytest.raises(ValueError, match=r"tree_mask: expected shape \[2, 3, \*\]"):
            head(f, ids, pos, cache, cl, m[:, :2])
        with pytest.raises(TypeError, match="cache.k: expected dtype torch.float32"):
            head(f, ids, pos, head.new_cache(B, 8, dtype=torch.float16), cl, m)
        with pytest.raises(ValueError, match=r"cache.k: expected shape \[2, 2, \*, 8\]"):
            head(f, ids, pos, head.new_cache(B + 1, 8), cl, m)


# --------------------------------------------------------------------------------------------------
# Fused input blocks (specdec_kernels.fspad_feature_sampling / griffin_token_fusion)


def wide_twin(head, target, dtype=torch.float64):
    """A copy of `head` in `dtype` bound to the same target (the embedding rows are cast exactly), with
    its fused input block on the plain PyTorch backend: the wide-precision truth."""
    twin = copy.deepcopy(head).to(dtype)
    twin.bind_target(target.embed, target.lm_head)
    twin.fc.backend = "torch"
    return twin


FUSED_OPS = {"fspad": "fspad_feature_sampling", "griffin": "griffin_token_fusion"}


def cpu_backend_params(kind) -> list:
    """(backend, device) params of the kind's fused op on CPU tensors (the tests below build CPU heads)."""
    return [
        pytest.param(kind, *p.values, marks=p.marks, id=f"{kind}-{p.id}")
        for p in backend_params(FUSED_OPS[kind])
        if p.values[1] == "cpu"
    ]


@pytest.mark.parametrize("kind,backend,device", cpu_backend_params("fspad") + cpu_backend_params("griffin"))
def test_fused_features_agree(kind, backend, device):
    """The fused input block on each backend and the plain PyTorch composition (backend="torch") compute
    the same outputs and gradients: the fused result is as close to the fp64 truth as PyTorch's own fp32
    result (helpers.assert_close_as_torch), whatever the machine."""
    plain, target = make_head(kind, backend="torch")
    fused, _ = make_head(kind, backend=backend)
    fused.bind_target(target.embed, target.lm_head)
    truth = wide_twin(plain, target)
    f, ids = inputs(2, 5)
    pos = torch.arange(5).expand(2, 5)
    a, _ = decode_all(plain, f, ids, pos)
    b, _ = decode_all(fused, f, ids, pos)
    with torch.no_grad():
        t = truth.forward_sequence(f, ids, pos).hidden
    assert_close_as_torch(b.hidden, t, a.hidden, what=f"{kind} fused vs plain hidden")
    # gradients through the fused block agree too (a reduction over tokens x features per weight entry)
    ga = torch.autograd.grad(plain.forward_sequence(f, ids, pos).hidden.sum(), plain.fc.fc.weight)[0]
    gb = torch.autograd.grad(fused.forward_sequence(f, ids, pos).hidden.sum(), fused.fc.fc.weight)[0]
    gt = torch.autograd.grad(truth.forward_sequence(f, ids, pos).hidden.sum(), truth.fc.fc.weight)[0]
    assert_close_as_torch(gb, gt, ga, what=f"{kind} fused vs plain grad of fc.fc.weight")


@pytest.mark.parametrize("kind,backend,device", cpu_backend_params("fspad") + cpu_backend_params("griffin"))
def test_train_step_under_bf16_autocast(kind, backend, device):
    """Mixed precision: one training step of an fp32 head under torch.autocast("cpu", bfloat16), forward
    and backward through the fused input block. Every parameter gets a finite fp32 gradient and moves;
    loss and the gradient of fc.fc.weight are as close to the fp64 truth as those of the plain PyTorch
    block under the same autocast."""
    if backend == "triton":
        pytest.skip("bf16 is unreliable under the Triton interpreter (GPU-only case, as in test_features.py)")
    head, target = make_head(kind, backend=backend)
    plain, _ = make_head(kind, backend="torch")
    plain.bind_target(target.embed, target.lm_head)
    truth = wide_twin(head, target)
    f, ids = inputs(2, 6)
    pos = torch.arange(6).expand(2, 6)

    def loss_of(h):
        out = h.forward_sequence(f, ids, pos)
        return out.logits.float().logsumexp(-1).mean() + out.hidden.float().square().mean()

    head.train()
    before = {k: p.detach().clone() for k, p in head.named_parameters()}
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_of(head)
        plain_loss = loss_of(plain)
    loss.backward()
    plain_loss.backward()
    truth_loss = loss_of(truth)
    truth_loss.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert bool(torch.isfinite(p.grad).all()), f"{kind}: non-finite gradient of {name}"
    assert_close_as_torch(
        loss.detach().float(),
        truth_loss.detach(),
        plain_loss.detach().float(),
        what=f"{kind} bf16 autocast loss",
        floor=torch.finfo(torch.bfloat16).eps * max(1.0, abs(float(truth_loss.detach()))),
    )
    assert_close_as_torch(
        head.fc.fc.weight.grad,
        truth.fc.fc.weight.grad,
        plain.fc.fc.weight.grad,
        what=f"{kind} bf16 autocast grad of fc.fc.weight",
        floor=torch.finfo(torch.bfloat16).eps * float(truth.fc.fc.weight.grad.abs().max()),
    )
    opt.step()
    moved = [k for k, p in head.named_parameters() if not torch.equal(p.detach(), before[k])]
    assert sorted(moved) == sorted(before), f"{kind}: parameters not updated: {set(before) - set(moved)}"


def test_half_head_keeps_fp32_rope():
    head = build_draft_head(make_config("eagle", rope_theta=500000.0), dtype=torch.float16)
    assert head.dtype == torch.float16
    pos = torch.tensor([[0, 4000, 60000]])
    cos, _ = head.rotary_emb(pos)
    want, _ = RotaryEmbedding(make_config("eagle", rope_theta=500000.0))(pos)
    assert cos.dtype == torch.float32 and torch.equal(cos, want)


# --------------------------------------------------------------------------------------------------
# GPU: the low-precision decode path against the fp32 formula, judged against PyTorch's own
# low-precision error on the same computation (flash-attention's criterion).


@pytest.mark.cuda
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_low_precision_decode(kind, dtype):
    head, target = make_head(kind)
    head.cuda()
    target.cuda()
    head.bind_target(target.embed, target.lm_head)
    B, T = 3, 9
    f, ids = inputs(B, T)
    f, ids = f.cuda(), ids.cuda()
    pos = torch.arange(T, device="cuda").expand(B, T)
    with torch.no_grad():
        want = head.forward_sequence(f, ids, pos).hidden
        low = build_draft_head(head.config, device="cuda", dtype=dtype)
        low.load_state_dict(head.state_dict())
        lt = Target().to("cuda", dtype)
        lt.load_state_dict(target.state_dict())
        low.bind_target(lt.embed, lt.lm_head)
        torch_low = low.forward_sequence(f.to(dtype), ids, pos).hidden
        cache = low.new_cache(B, 16)
        got = low(
            f.to(dtype), ids, pos, cache, torch.zeros(B, dtype=torch.int32, device="cuda"), chain_mask(B, T).cuda()
        ).hidden
    assert_close_as_torch(
        got,
        want,
        torch_low,
        what=f"{kind} {dtype} decode path",
        floor=tolerance(dtype, head_reduction(head.config, MAX_KEYS))[0],
    )


# --------------------------------------------------------------------------------------------------
# The training forward: forward_train = forward_sequence at the selected positions; past keys/values.


@pytest.mark.parametrize("kind", KINDS)
def test_forward_train_matches_forward_sequence(kind):
    """hidden everywhere and logits (of p for FSPAD/GRIFFIN, of o for EAGLE) at the positions asked for,
    by bool mask, flat index (any order) or all; with a padding mask too."""
    head, _ = make_head(kind)
    B, T = 2, 7
    f, ids = inputs(B, T)
    pos = torch.arange(T).expand(B, T) + torch.tensor([[0], [2]])
    pad = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    cfg = head.config
    for am in (None, pad):
        with torch.no_grad():
            want = head.forward_sequence(f, ids, pos, attention_mask=am)
        sel = torch.zeros(B, T, dtype=torch.bool)
        sel[0, [1, 4]] = True
        sel[1, [0, 6]] = True
        flat = torch.tensor([13, 2, 2, 7])
        for index in (None, sel, flat):
            with torch.no_grad():
                out = head.forward_train(f, ids, attention_mask=am, position_ids=pos, logits_index=index)
            want_idx = (
                torch.arange(B * T) if index is None else (sel.reshape(-1).nonzero()[:, 0] if index is sel else flat)
            )
            assert torch.equal(out.index, want_idx)
            assert out.logits.shape == (want_idx.numel(), V) and out.p.shape == (want_idx.numel(), H)
            assert out.kv is None
            assert_head_close(out.hidden, want.hidden, cfg, f"{kind} forward_train hidden (mask {am is not None})")
            assert_head_close(
                out.logits, want.logits.reshape(B * T, V)[want_idx], cfg, f"{kind} forward_train logits at {index}"
            )
            if kind == "eagle":  # the logits' feature is the fed-back one
                assert torch.equal(out.p, out.hidden.reshape(B * T, H)[want_idx])


@pytest.mark.parametrize("kind", KINDS)
def test_forward_train_past_kv_equals_concatenated_sequence(kind):
    """A second call attending to the first call's keys/values (TrainKV) through a [B, T, S + T] mask equals
    forward_sequence over the concatenated inputs with the same [2T, 2T] mask; gradients reach the first
    call's parameters through the reused keys."""
    head, _ = make_head(kind)
    B, T = 2, 5
    f1, ids1 = inputs(B, T, seed=3)
    f2, ids2 = inputs(B, T, seed=4)
    pos = torch.arange(T).expand(B, T)
    g = torch.Generator().manual_seed(0)
    m2 = torch.rand(B, T, 2 * T, generator=g) < 0.5
    m2[:, torch.arange(T), T + torch.arange(T)] = True  # every row sees its own key
    first = head.forward_train(f1, ids1, position_ids=pos, return_kv=True)
    assert first.kv.k.shape == (B, NKV, T, head.config.head_dim) and first.kv.length == T
    second = head.forward_train(f2, ids2, attention_mask=m2, position_ids=pos, past_kv=first.kv, return_kv=True)
    assert second.kv.length == 2 * T
    full_mask = torch.cat(
        (
            torch.cat(
                (torch.ones(T, T, dtype=torch.bool).tril().expand(B, T, T), torch.zeros(B, T, T, dtype=torch.bool)), 2
            ),
            m2,
        ),
        1,
    )
    want = head.forward_sequence(
        torch.cat((f1, f2), 1), torch.cat((ids1, ids2), 1), torch.cat((pos, pos), 1), attention_mask=full_mask
    )
    cfg = head.config
    assert_head_close(second.hidden, want.hidden[:, T:], cfg, f"{kind} second-pass hidden")
    assert_head_close(second.logits, want.logits[:, T:].reshape(B * T, V), cfg, f"{kind} second-pass logits")
    # gradients through the reused keys/values equal those through the concatenated sequence
    params = [p for p in head.parameters()]
    ga = torch.autograd.grad(second.hidden.square().sum(), params)
    gb = torch.autograd.grad(want.hidden[:, T:].square().sum(), params)
    for (name, _), a, b in zip(head.named_parameters(), ga, gb):
        scale = max(1.0, float(b.abs().max()))
        atol, rtol = tolerance(torch.float32, head_reduction(cfg, MAX_KEYS) * B * T, scale)
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=f"{kind} grad of {name}")


def test_forward_train_argument_checks():
    head, _ = make_head("fspad")
    f, ids = inputs(1, 4)
    first = head.forward_train(f, ids, return_kv=True)
    with pytest.raises(ValueError, match="past_kv needs an explicit bool mask"):
        head.forward_train(f, ids, past_kv=first.kv)
    with pytest.raises(ValueError, match="past_kv needs an explicit bool mask"):
        head.forward_train(f, ids, attention_mask=torch.ones(1, 4, dtype=torch.bool), past_kv=first.kv)
    with pytest.raises(ValueError, match="attention_mask"):
        head.forward_train(f, ids, attention_mask=torch.ones(1, 4, 4, dtype=torch.bool), past_kv=first.kv)
    with pytest.raises(ValueError, match="logits_index"):
        head.forward_train(f, ids, logits_index=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="logits_index"):
        head.forward_train(f, ids, logits_index=torch.tensor([0, 1], dtype=torch.int32))
