"""Exporters of our Tree to engines' formats: walking each exported structure gives our tree back."""

from __future__ import annotations

import pytest
import torch

import specdec_kernels as sk

from helpers import assert_equal


def random_parents(B, N, seed):
    g = torch.Generator().manual_seed(seed)
    parents = torch.full((B, N), -1, dtype=torch.int32)
    for b in range(B):
        for i in range(1, N):
            parents[b, i] = int(torch.randint(0, i, (1,), generator=g))
    return parents


@pytest.mark.parametrize("N", [1, 2, 7, 40])
def test_sglang_walk_gives_the_parents_back(N):
    parents = random_parents(3, N, seed=N)
    tree = sk.build_tree(parents)
    index, next_token, next_sibling = sk.sglang_tree(tree)
    assert index.dtype == next_token.dtype == next_sibling.dtype == torch.int64
    for b in range(3):
        got = [-2] * N
        got[0] = -1
        stack = [0]
        while stack:  # SGLang's walk: a node's children are next_token, then next_sibling of each
            node = stack.pop()
            child = int(next_token[b, node])
            while child != -1:
                assert got[child] == -2, "a node reached twice"
                got[child] = node
                stack.append(child)
                child = int(next_sibling[b, child])
        assert got == parents[b].tolist()
        assert index[b].tolist() == [b * N + i for i in range(N)]


def test_sglang_invalid_tree_rows():
    tree = sk.build_tree(torch.tensor([[-1, 0], [-1, 5]], dtype=torch.int32))  # request 1 is malformed
    index, next_token, _ = sk.sglang_tree(tree)
    assert index.tolist() == [[0, 1], [-1, -1]] and next_token[1].tolist() == [-1, -1]


def unpack_segment(packed, start, end, bits):
    """The first `bits` bits of bytes [start, end), little-endian."""
    seg = packed[start:end].to(torch.int32)
    out = ((seg[:, None] >> torch.arange(8)) & 1).flatten()
    return out[:bits].bool()


@pytest.mark.parametrize("N", [1, 5, 33])
def test_flashinfer_mask_is_the_tree_visibility(N):
    parents = random_parents(3, N, seed=N + 1)
    tree = sk.build_tree(parents)
    cache_len = torch.tensor([0, 3, 10], dtype=torch.int32)
    packed, indptr = sk.flashinfer_custom_mask(tree, cache_len)
    assert packed.dtype == torch.uint8 and indptr.dtype == torch.int32 and indptr[0] == 0
    for b, c in enumerate(cache_len.tolist()):
        kv = c + N
        assert int(indptr[b + 1] - indptr[b]) == (N * kv + 7) // 8  # each request padded to a byte
        dense = unpack_segment(packed, int(indptr[b]), int(indptr[b + 1]), N * kv).view(N, kv)
        want = sk.tree_visibility(tree.mask[b : b + 1], c, kv)[0]
        assert_equal(dense, want, f"request {b}")
    # the same from an int and from a list
    for given in (7, [7, 7, 7]):
        p2, i2 = sk.flashinfer_custom_mask(tree, given)
        assert_equal(i2, sk.flashinfer_custom_mask(tree, torch.full((3,), 7, dtype=torch.int32))[1], "indptr")


def test_errors():
    tree = sk.build_tree(torch.tensor([[-1, 0]], dtype=torch.int32))
    with pytest.raises(TypeError, match="specdec_kernels.Tree"):
        sk.sglang_tree(tree.mask)
    with pytest.raises(ValueError, match="one per request"):
        sk.flashinfer_custom_mask(tree, [1, 2])
    with pytest.raises(ValueError, match=">= 0"):
        sk.flashinfer_custom_mask(tree, -1)
    with pytest.raises((TypeError, ValueError), match="cache_len"):
        sk.flashinfer_custom_mask(tree, torch.tensor([1]))
