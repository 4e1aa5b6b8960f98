"""The packed-mask helpers (specdec_kernels/ops/masks.py): mask_words, pack_bits, unpack_mask, chain_mask,
tree_visibility and tree_attention_bias.

Goldens written out by hand, pack/unpack round trips, agreement with build_tree's mask, and
tree_visibility / tree_attention_bias against the definition of what a tree_attention query sees (a
slot-by-slot loop, and the op itself compared with SDPA under the bias). Everything but the last test is
exact (bits and bools).
"""

from __future__ import annotations

import math

import pytest
import torch

import specdec_kernels as sk

from helpers import assert_close_as_torch, assert_equal, tolerance

#        0
#      /   \
#     1     2
#    / \     \
#   3   4     5
GOLDEN6 = [-1, 0, 0, 1, 1, 2]
# Nodes 1..31 are children of the root; 32 <- 31, 33 <- 32 (second mask word), 34 <- 5.
GOLDEN35 = [-1] + [0] * 31 + [31, 32, 5]


def random_parents(gen: torch.Generator, B: int, N: int) -> torch.Tensor:
    p = torch.full((B, N), -1, dtype=torch.int32)
    for i in range(1, N):
        p[:, i] = torch.randint(0, i, (B,), generator=gen, dtype=torch.int32)
    return p


def visibility_loop(tree_mask: torch.Tensor, cache_len: torch.Tensor, kv_len: int) -> torch.Tensor:
    """bool [B, Nq, kv_len] from tree_attention's definition, one slot at a time."""
    B, Nq, W = tree_mask.shape
    vis = torch.zeros(B, Nq, kv_len, dtype=torch.bool)
    for b in range(B):
        c = int(cache_len[b])
        for i in range(Nq):
            for s in range(kv_len):
                j = s - c
                vis[b, i, s] = j < 0 or (j < 32 * W and bool((int(tree_mask[b, i, j // 32]) >> (j % 32)) & 1))
    return vis


# ---------------------------------------------------------------------------------------------------
# mask_words, pack_bits, unpack_mask


def test_mask_words():
    assert [sk.mask_words(n) for n in (0, 1, 31, 32, 33, 64, 65, 1024)] == [1, 1, 1, 1, 2, 2, 3, 32]
    with pytest.raises(TypeError, match="num_nodes: expected an int, got bool"):
        sk.mask_words(True)
    with pytest.raises(ValueError, match="num_nodes: expected >= 0"):
        sk.mask_words(-1)


def test_pack_bits_golden():
    dense = torch.zeros(2, 40, dtype=torch.bool)
    dense[0, [0, 2]] = True  # 0b101
    dense[1, [31, 32, 39]] = True  # the sign bit of word 0; bits 0 and 7 of word 1
    assert sk.pack_bits(dense).tolist() == [[5, 0], [-(2**31), 0b10000001]]
    assert sk.pack_bits(torch.zeros(3, 0, dtype=torch.bool)).tolist() == [[0]] * 3  # at least one word
    with pytest.raises(TypeError, match=r"dense: expected dtype torch.bool, got torch.int32"):
        sk.pack_bits(dense.int())
    with pytest.raises(ValueError, match="0-dimensional"):
        sk.pack_bits(torch.tensor(True))


@pytest.mark.parametrize("n", [1, 5, 31, 32, 33, 64, 100])
def test_pack_bits_unpack_mask_round_trip(n):
    gen = torch.Generator().manual_seed(n)
    dense = torch.rand(3, 7, n, generator=gen) < 0.5
    packed = sk.pack_bits(dense)
    assert packed.shape == (3, 7, sk.mask_words(n)) and packed.dtype == torch.int32
    assert_equal(sk.unpack_mask(packed, n), dense, f"n={n}")
    # Every int32 word (sign bit included) survives unpack -> pack.
    words = torch.randint(-(2**31), 2**31, (2, 4, 3), generator=gen, dtype=torch.int64).to(torch.int32)
    assert_equal(sk.pack_bits(sk.unpack_mask(words, 96)), words, "words")


def test_unpack_mask_golden():
    t = sk.build_tree(torch.tensor([GOLDEN6], dtype=torch.int32), backend="torch")
    dense = sk.unpack_mask(t.mask)
    assert dense.dtype == torch.bool
    assert dense.int().tolist() == [
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 0, 1, 0, 0, 0],
            [1, 1, 0, 1, 0, 0],
            [1, 1, 0, 0, 1, 0],
            [1, 0, 1, 0, 0, 1],
        ]
    ]
    t35 = sk.build_tree(torch.tensor([GOLDEN35], dtype=torch.int32), backend="torch")
    d35 = sk.unpack_mask(t35.mask)[0]
    assert d35[33].nonzero().flatten().tolist() == [0, 31, 32, 33]  # bit 31 (sign bit) unpacked as set
    assert d35[34].nonzero().flatten().tolist() == [0, 5, 34]
    with pytest.raises(ValueError, match=r"mask: 1 words hold 32 nodes, fewer than 40"):
        sk.unpack_mask(t.mask, 40)
    with pytest.raises(TypeError, match=r"num_nodes: expected an int, got bool"):
        sk.unpack_mask(t.mask, True)


def test_build_tree_mask_is_pack_bits_of_the_ancestor_relation():
    """build_tree's mask = pack_bits(dense ancestor-or-self relation), computed here by walking parents."""
    gen = torch.Generator().manual_seed(3)
    parents = random_parents(gen, 4, 70)
    dense = torch.zeros(4, 70, 70, dtype=torch.bool)
    for b in range(4):
        for i in range(70):
            j = i
            while j >= 0:
                dense[b, i, j] = True
                j = int(parents[b, j])
    assert_equal(sk.build_tree(parents).mask, sk.pack_bits(dense), "mask")


# ---------------------------------------------------------------------------------------------------
# chain_mask


@pytest.mark.parametrize("length", [1, 3, 32, 33, 70])
def test_chain_mask_is_the_mask_of_a_chain(length):
    chain = torch.arange(-1, length - 1, dtype=torch.int32).expand(2, length).contiguous()
    assert_equal(sk.chain_mask(2, length), sk.build_tree(chain).mask, f"length {length}")
    dense = sk.unpack_mask(sk.chain_mask(1, length))[0]
    assert_equal(dense, torch.ones(length, length, dtype=torch.bool).tril(), "row i sees 0..i")


def test_chain_mask_words_and_errors():
    wide = sk.chain_mask(1, 3, words=2)
    assert wide.tolist() == [[[1, 0], [3, 0], [7, 0]]]
    assert sk.chain_mask(0, 4).shape == (0, 4, 1)
    with pytest.raises(ValueError, match=r"words: 40 nodes need at least 2 words per row, got 1"):
        sk.chain_mask(1, 40, words=1)
    with pytest.raises(TypeError, match=r"length: expected an int, got bool"):
        sk.chain_mask(1, True)
    with pytest.raises(ValueError, match=r"batch: expected >= 0"):
        sk.chain_mask(-1, 3)


# ---------------------------------------------------------------------------------------------------
# tree_visibility, tree_attention_bias


def test_tree_visibility_against_the_definition():
    """Random words (every bit, the sign bit included), cache_len 0, inside, at and past kv_len."""
    gen = torch.Generator().manual_seed(5)
    B, Nq, W, kv_len = 5, 6, 2, 50
    words = torch.randint(-(2**31), 2**31, (B, Nq, W), generator=gen, dtype=torch.int64).to(torch.int32)
    cache_len = torch.tensor([0, 7, 30, 50, 80], dtype=torch.int32)
    vis = sk.tree_visibility(words, cache_len, kv_len)
    assert vis.dtype == torch.bool and vis.shape == (B, Nq, kv_len)
    assert_equal(vis, visibility_loop(words, cache_len, kv_len), "visibility")
    # An int cache_len means the same length for every request.
    assert_equal(sk.tree_visibility(words, 7, kv_len), visibility_loop(words, torch.full((B,), 7), kv_len), "int")


def test_tree_visibility_arguments():
    m = sk.chain_mask(2, 3)
    with pytest.raises(TypeError, match=r"cache_len: expected an int or an int32 tensor \[B\], got bool"):
        sk.tree_visibility(m, True, 5)
    with pytest.raises(TypeError, match=r"cache_len: expected an int or an int32 tensor \[B\], got float"):
        sk.tree_visibility(m, 2.0, 5)
    with pytest.raises(TypeError, match=r"cache_len: expected dtype torch.int32, got torch.int64"):
        sk.tree_visibility(m, torch.tensor([1, 2]), 5)
    with pytest.raises(ValueError, match=r"cache_len: expected shape \[2\], got \(3,\)"):
        sk.tree_visibility(m, torch.tensor([1, 2, 3], dtype=torch.int32), 5)
    with pytest.raises(TypeError, match=r"kv_len: expected an int, got bool"):
        sk.tree_visibility(m, 1, True)
    with pytest.raises(TypeError, match=r"tree_mask: expected dtype torch.int32"):
        sk.tree_visibility(m.long(), 1, 5)


def test_tree_attention_bias_golden():
    t = sk.build_tree(torch.tensor([GOLDEN6, GOLDEN6], dtype=torch.int32), backend="torch")
    bias = sk.tree_attention_bias(t.mask, torch.tensor([2, 0], dtype=torch.int32), kv_len=9)
    assert bias.shape == (2, 1, 6, 9) and bias.dtype == torch.float32
    vis = (bias == 0).int()
    # Request 0: 2 committed tokens (slots 0, 1), tree node j at slot 2 + j, slot 8 past the tree.
    assert vis[0, 0].tolist() == [
        [1, 1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 1, 0, 0],
        [1, 1, 1, 0, 1, 0, 0, 1, 0],
    ]
    # Request 1: empty cache, the tree at slots 0..5.
    assert vis[1, 0, 4].tolist() == [1, 1, 0, 0, 1, 0, 0, 0, 0]
    assert bool(torch.isneginf(bias[vis == 0]).all())
    b16 = sk.tree_attention_bias(t.mask, 3, kv_len=9, dtype=torch.float16)
    assert b16.dtype == torch.float16 and (b16[0, 0, 5] == 0).int().tolist() == [1, 1, 1, 1, 0, 1, 0, 0, 1]
    three = torch.tensor([3, 3], dtype=torch.int32)
    assert_equal(sk.tree_attention_bias(t.mask, 3, 9), sk.tree_attention_bias(t.mask, three, 9), "int cache_len")
    with pytest.raises(TypeError, match=r"dtype: expected a floating torch.dtype"):
        sk.tree_attention_bias(t.mask, 3, 9, dtype=torch.int32)


def test_tree_attention_equals_sdpa_under_the_bias():
    """tree_visibility is what tree_attention sees: the op equals SDPA with tree_attention_bias (against SDPA in
    fp64, at most ~2x the error of SDPA in fp32: flash-attention's rule)."""
    gen = torch.Generator().manual_seed(9)
    B, H, N, D, S = 3, 2, 9, 16, 30
    q = torch.randn(B, H, N, D, generator=gen)
    k, v = torch.randn(B, H, S, D, generator=gen), torch.randn(B, H, S, D, generator=gen)
    mask = sk.build_tree(random_parents(gen, B, N)).mask
    cache_len = torch.tensor([0, 11, S - N], dtype=torch.int32)
    got = sk.tree_attention(q, k, v, cache_len, mask)
    bias = sk.tree_attention_bias(mask, cache_len, S, dtype=torch.float64)
    truth = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=bias)
    twin = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias.float())
    # In fp32 the twin is nearly exact: the floor allows fp32 sums over the S keys (helpers.tolerance).
    floor = tolerance(torch.float32, S, scale=max(float(truth.abs().max()), 1.0))[0]
    assert_close_as_torch(got, truth, twin, "tree_attention vs SDPA + tree_attention_bias", floor=floor)
    assert math.isfinite(float(got.abs().max()))
