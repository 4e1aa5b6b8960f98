"""Every op schema of the namespace `specdec`, in one place.

Naming: `specdec::<op>` is the compiled kernel (C++ on CPU tensors, CUDA on CUDA tensors, attached by
specdec_kernels._C through TORCH_LIBRARY_IMPL); `specdec::<op>_triton` is the Triton kernel (attached in
specdec_kernels/triton_kernels). The torch backend is plain PyTorch (specdec_kernels/reference) and
needs no schema. Decode-path ops are out-variants: they write into caller buffers (`Tensor(a!)`) and
return nothing, so they never allocate or synchronise and can be captured in a CUDA graph.

Every op has a fake (meta) implementation so torch.compile and opcheck can trace it.
"""

from __future__ import annotations

import torch

LIB = torch.library.Library("specdec", "DEF")  # noqa: TOR901 - the one definition of the namespace

# name -> schema (without the name). Each entry is defined twice: `name` and `name_triton`.
SCHEMAS: dict[str, str] = {
    "build_tree": (
        "(Tensor parents, Tensor num_nodes, Tensor(a!) depth, Tensor(b!) mask, Tensor(c!) first_child, "
        "Tensor(d!) next_sibling, Tensor(e!) valid) -> ()"
    ),
    "select_tree": (
        "(Tensor cand_scores, Tensor cand_parents, Tensor cand_tokens, Tensor root_tokens, "
        "Tensor(a!) parents, Tensor(b!) tokens, Tensor(c!) selected) -> ()"
    ),
    # q [B, H, N, D]; caches [B, H_kv, S_max, D]; tree keys at slots cache_len[b] + i; out like q.
    "tree_attention": (
        "(Tensor q, Tensor k_cache, Tensor v_cache, Tensor cache_len, Tensor tree_mask, float scale, "
        "Tensor(a!) out) -> ()"
    ),
    # Every tensor of `caches` is a 4-D view [B, X, S_max, Y] (KV: X = H_kv, Y = D; per-token tensors
    # [B, S_max, ...] are viewed as [B, 1, S_max, prod(...)]); moves slot cache_len[b] + accept_nodes[b, j]
    # to slot cache_len[b] + j for j < accept_len[b], in place.
    "compact_kv": "(Tensor(a!)[] caches, Tensor cache_len, Tensor accept_nodes, Tensor accept_len) -> ()",
    # logits: float logits [B, N, V] (argmax fused), or int64 [B, N] argmax ids.
    "verify_greedy": (
        "(Tensor first_child, Tensor next_sibling, Tensor valid, Tensor tokens, Tensor logits, "
        "Tensor(a!) accept_nodes, Tensor(b!) accept_len, Tensor(c!) out_tokens) -> ()"
    ),
    # draft_probs: None for deterministic (top-k) drafts, else float [B, N, V], the draft distribution at
    # each node from which its children were sampled (SpecInfer-style rule).
    "verify_sample": (
        "(Tensor first_child, Tensor next_sibling, Tensor valid, Tensor tokens, Tensor logits, "
        "Tensor uniforms, Tensor temperature, Tensor top_k, Tensor top_p, Tensor? draft_probs, "
        "Tensor(a!) accept_nodes, Tensor(b!) accept_len, Tensor(c!) out_tokens) -> ()"
    ),
    # Paged caches (ops/paged.py): pages NHD [num_pages, P, H_kv, D] or (hnd) HND [num_pages, H_kv, P, D];
    # block_table int32 [B, max_pages] (logical page p of request b is physical page block_table[b, p]).
    "block_table_from_csr": "(Tensor kv_indptr, Tensor kv_indices, Tensor(a!) out) -> ()",
    "paged_tree_attention": (
        "(Tensor q, Tensor k_pages, Tensor v_pages, Tensor block_table, Tensor cache_len, Tensor tree_mask, "
        "bool hnd, float scale, Tensor(a!) out) -> ()"
    ),
    # caches: 4-D page views, NHD [num_pages, P, X, Y] or (hnd) HND [num_pages, X, P, Y], unit stride along Y
    # (K/V: X = H_kv, Y = D; a per-token tensor [num_pages, P, ...] is viewed with X = 1).
    "compact_paged_kv": (
        "(Tensor(a!)[] caches, Tensor block_table, Tensor cache_len, Tensor accept_nodes, Tensor accept_len, "
        "bool hnd) -> ()"
    ),
    # Page size 1 (token-to-slot tables): no K/V moves, the table is rewritten and rejected slots listed.
    "accept_slots": (
        "(Tensor(a!) slot_table, Tensor cache_len, Tensor num_nodes, Tensor accept_nodes, Tensor accept_len, "
        "Tensor(b!) freed, Tensor(c!) freed_count) -> ()"
    ),
    # Feature sampling over token embeddings (ops/features.py): `fspad_feature_sampling` and
    # `griffin_token_fusion` are the forward of the public functions of the same names, `<name>_backward`
    # their backward. The kernels take fc_bias right after fc_weight (the public functions take it by
    # keyword). All [T, *] inputs are flattened over batch x positions; token_ids int32/int64 [T] index rows
    # of the frozen embed_weight [V, H]. Forward writes `out` [T, H] plus what backward needs: z / h [T, H]
    # (the fc output), row statistics in fp32 (fp64 for fp64 inputs; FSPAD: rstd of z [T]; GRIFFIN: [T, 3] =
    # rstd of h, of N_b(h), of e) and, when given, the [T, I] pre-activations (FSPAD: gate = e W_g^T and
    # up = RMSNorm(z) W_u^T; GRIFFIN: pre_act = W_u [N_a(N_b(h)); N_a(e)]).
    # Backward writes the gradients that are not None (the embedding is frozen: none for it).
    "fspad_feature_sampling": (
        "(Tensor features, Tensor token_ids, Tensor embed_weight, Tensor fc_weight, Tensor? fc_bias, "
        "Tensor norm_weight, Tensor gate_weight, Tensor up_weight, Tensor down_weight, float eps, "
        "Tensor(a!) out, Tensor(b!) z, Tensor(c!) rstd, Tensor(d!)? gate, Tensor(e!)? up) -> ()"
    ),
    "fspad_feature_sampling_backward": (
        "(Tensor grad_out, Tensor features, Tensor token_ids, Tensor embed_weight, Tensor fc_weight, "
        "Tensor? fc_bias, Tensor norm_weight, Tensor gate_weight, Tensor up_weight, Tensor down_weight, "
        "float eps, Tensor z, Tensor rstd, Tensor gate, Tensor up, Tensor(a!)? d_features, "
        "Tensor(b!)? d_fc_weight, Tensor(c!)? d_fc_bias, Tensor(d!)? d_norm_weight, Tensor(e!)? d_gate_weight, "
        "Tensor(f!)? d_up_weight, Tensor(g!)? d_down_weight) -> ()"
    ),
    "griffin_token_fusion": (
        "(Tensor features, Tensor token_ids, Tensor embed_weight, Tensor fc_weight, Tensor? fc_bias, "
        "Tensor norm_b_weight, Tensor norm_a_weight, Tensor up_weight, Tensor down_weight, float eps, "
        "Tensor(a!) out, Tensor(b!) h, Tensor(c!) stats, Tensor(d!)? pre_act) -> ()"
    ),
    "griffin_token_fusion_backward": (
        "(Tensor grad_out, Tensor features, Tensor token_ids, Tensor embed_weight, Tensor fc_weight, "
        "Tensor? fc_bias, Tensor norm_b_weight, Tensor norm_a_weight, Tensor up_weight, Tensor down_weight, "
        "float eps, Tensor h, Tensor stats, Tensor pre_act, Tensor(a!)? d_features, Tensor(b!)? d_fc_weight, "
        "Tensor(c!)? d_fc_bias, Tensor(d!)? d_norm_b_weight, Tensor(e!)? d_norm_a_weight, Tensor(f!)? d_up_weight, "
        "Tensor(g!)? d_down_weight) -> ()"
    ),
    # out = x @ weight^T (+ bias) (ops/linear.py): x [M, K] (any strides), weight [N, K] (unit stride along K),
    # bias [N], out [M, N], one dtype; a C++ CPU kernel only (CUDA tensors run torch, i.e. cuBLAS).
    "linear": "(Tensor x, Tensor weight, Tensor? bias, Tensor(a!) out) -> ()",
}


def _out_variant_fake(*args, **kwargs):
    """Every op is an out-variant (it returns nothing), so its fake implementation does nothing."""
    return None


def _define_all() -> None:
    for name, schema in SCHEMAS.items():
        for suffix in ("", "_triton"):
            LIB.define(name + suffix + schema)
            torch.library.register_fake(f"specdec::{name}{suffix}", lib=LIB)(_out_variant_fake)


_define_all()
