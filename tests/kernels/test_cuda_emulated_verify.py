"""The CUDA verify kernels of csrc/cuda/verify.cu on the CPU under the CUDA emulation (tests/cuda_emulation/).

greedy_ids_kernel (one thread per request) and verify_logits_kernel (one 512-thread block per request:
greedy with fp32 / fp16 / bf16 logits, and sampling with fp32 / fp16 / bf16 logits, with and without
fp32 / fp16 / bf16 draft probabilities) against the torch backend of verify_greedy / verify_sample, on
test_verify.py's case generators; the integers must be equal. verify_logits_kernel's sampling also passes
test_verify.py's statistical check of lossless sampling (fewer draws). See docs/testing.md, "CUDA kernels under
emulation".
"""

from __future__ import annotations

import pytest
import torch

import specdec_kernels as sk

import cuda_emulation as ce
from helpers import assert_equal
from test_verify import check_lossless, random_sample_case, random_tree, simulate_two_tokens

pytestmark = [
    pytest.mark.emulated,
    pytest.mark.skipif(ce.unavailable_reason() is not None, reason=str(ce.unavailable_reason())),
]

RESULT = ("accept_nodes", "accept_len", "out_tokens")
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _tree_inputs(tree, tokens):
    return {
        "first_child": tree.first_child,
        "next_sibling": tree.next_sibling,
        "valid": tree.valid.to(torch.uint8),
        "tokens": tokens,
    }


def _outputs(B, N):
    return {
        "accept_nodes": ce.poisoned((B, N), torch.int32),
        "accept_len": ce.poisoned((B,), torch.int32),
        "out_tokens": ce.poisoned((B, N), torch.int64),
    }


def check_greedy(tree, tokens, logits, variant="plain"):
    """greedy_ids_kernel (int64 ids) or verify_logits_kernel (float logits) against the torch backend."""
    B, N = tokens.shape
    inputs = _tree_inputs(tree, tokens)
    if logits.is_floating_point():
        scalars = {"B": B, "N": N, "V": logits.shape[-1], "dtype": DTYPE_CODE[logits.dtype], "sample": 0, "has_q": 0}
        entry, inputs["logits"] = "verify_logits_kernel", logits
    else:
        scalars, entry, inputs["amax"] = {"B": B, "N": N}, "greedy_ids_kernel", logits
    got = ce.run(entry, scalars, inputs, _outputs(B, N), variant=variant)
    want = sk.verify_greedy(tree, tokens, logits, backend="torch")
    for name, w in zip(RESULT, want):
        assert_equal(got[name], w, f"{entry} {name}")
    return want


def emulated_verify_sample(
    tree, tokens, logits, uniforms, *, temperature=1.0, top_k=0, top_p=1.0, draft_probs=None, variant="plain"
):
    """verify_logits_kernel sampling, called as sk.verify_sample (the sampling parameters as numbers or
    per-request tensors): (accept_nodes, accept_len, out_tokens)."""
    B, N, V = logits.shape
    inputs = _tree_inputs(tree, tokens)
    inputs.update(logits=logits, uniforms=uniforms)
    for name, value, dtype in (("temperature", temperature, torch.float32), ("top_k", top_k, torch.int32)):
        inputs[name] = torch.as_tensor(value, dtype=dtype).expand(B).contiguous()
    inputs["top_p"] = torch.as_tensor(top_p, dtype=torch.float32).expand(B).contiguous()
    if draft_probs is not None:
        inputs["draft_probs"] = draft_probs
    scalars = {"B": B, "N": N, "V": V, "dtype": DTYPE_CODE[logits.dtype], "sample": 1}
    scalars.update(
        has_q=int(draft_probs is not None), q_dtype=DTYPE_CODE[draft_probs.dtype] if draft_probs is not None else 0
    )
    got = ce.run("verify_logits_kernel", scalars, inputs, _outputs(B, N), variant=variant)
    return tuple(got[name] for name in RESULT)


def check_sample(tree, args, kw, variant="plain"):
    got = emulated_verify_sample(tree, *args, **kw, variant=variant)
    want = sk.verify_sample(tree, *args, backend="torch", **kw)
    for name, g, w in zip(RESULT, got, want):
        assert_equal(g, w, f"verify_logits_kernel (sampling) {name}")
    return want


def _random_greedy(B, N, V, seed, ragged=True):
    gen = torch.Generator().manual_seed(seed)
    parents, tokens = random_tree(gen, B, N, V)
    num_nodes = torch.randint(1, N + 1, (B,), generator=gen, dtype=torch.int32) if ragged else None
    tree = sk.build_tree(parents, num_nodes, backend="torch")
    return gen, tree, tokens


@pytest.mark.parametrize("B,N", [(1, 1), (5, 7), (130, 20), (3, 64)], ids=lambda v: str(v))
def test_greedy_ids_kernel_random(B, N):
    """Tiny vocabulary (long accepted paths); 130 requests: a second, partial block of 128 threads."""
    gen, tree, tokens = _random_greedy(B, N, 2, seed=B * 100 + N)
    amax = torch.randint(0, 2, (B, N), generator=gen)
    want = check_greedy(tree, tokens, amax)
    assert N < 20 or int(want.accept_len.max()) >= 4, "the case should exercise long paths"


def test_greedy_ids_kernel_ragged_and_invalid():
    parents = torch.tensor([[-1, 0, 1, 1, 0], [-1, 0, 3, 0, 0]], dtype=torch.int32)
    tree = sk.build_tree(parents, torch.tensor([4, 5], dtype=torch.int32), backend="torch")
    tokens = torch.tensor([[9, 4, 5, 6, 4], [9, 4, 5, 6, 4]])
    want = check_greedy(tree, tokens, torch.tensor([[4, 6, 1, 2, 3], [4, 5, 6, 7, 8]]))
    assert want.accept_len.tolist() == [3, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_verify_logits_kernel_greedy(dtype):
    """Argmax over the vocabulary with ties (to the lower id) and NaN (wins, as torch.argmax)."""
    gen, tree, tokens = _random_greedy(4, 12, 700, seed=3)
    logits = torch.randn(4, 12, 700, generator=gen)
    logits[:, :6, 604] = logits[:, :6, 2] = logits.amax(-1)[:, :6] + 1  # ties: id 2
    logits[1, 7, 650] = float("nan")
    tokens[:, 1:] = torch.where(torch.rand(4, 11, generator=gen) < 0.6, 2, tokens[:, 1:])
    check_greedy(tree, tokens, logits.to(dtype))


@pytest.mark.parametrize("with_q", [False, True], ids=["p", "p-q"])
def test_verify_logits_kernel_sampling(with_q):
    """test_verify.py's mixed batch, smaller (each 512-thread block costs seconds): temperatures, top-k,
    top-p, ragged trees (temperature 0 is the greedy path, tested above)."""
    tree, args, kw = random_sample_case(
        4 + with_q, 2, 10, 40, [0.7, 1.3], [5, 0], [1.0, 0.6], with_q, "cpu", ragged=True
    )
    check_sample(tree, args, kw)


LOW_PRECISION = [
    (torch.float16, None),
    (torch.bfloat16, torch.bfloat16),
    (torch.float32, torch.float16),
    (torch.float16, torch.bfloat16),
]


@pytest.mark.parametrize(
    "dtype,q_dtype",
    LOW_PRECISION,
    ids=[f"{str(d)[6:]}-q-{str(q)[6:] if q else 'none'}" for d, q in LOW_PRECISION],
)
def test_verify_logits_kernel_sampling_low_precision(dtype, q_dtype):
    """Sampling with fp16 / bf16 logits and fp16 / bf16 draft probabilities (each logits dtype and each draft
    dtype the launcher dispatches to): the torch backend's integers on the same low-precision inputs."""
    tree, (tokens, logits, uniforms), kw = random_sample_case(
        7, 2, 10, 40, [0.7, 1.3], [5, 0], [1.0, 0.6], q_dtype is not None, "cpu", ragged=True
    )
    if q_dtype is not None:
        kw["draft_probs"] = kw["draft_probs"].to(q_dtype)
    check_sample(tree, [tokens, logits.to(dtype), uniforms], kw)


def test_verify_logits_kernel_sampling_is_lossless():
    """test_verify.py's statistical check of lossless sampling on the emulated kernel, with fewer draws (each
    request is a 512-thread block: 0.1 to 0.2 s here). The decoding loop's setting: a draft tree of the
    draft's top-3 children with their top-2 children each, no draft probabilities (a rejected token leaves the
    target's renormalised residual); 150 verifications plus a second round for those that emitted only the
    bonus. The first emitted token must follow the target's p1 and the first two p1(a) p2(b | a) (Pearson
    chi-square above p = 1e-4), outcomes of probability 0 never occur, and at this size the same counts still
    reject a target with 12% of p1's mass moved between its two likeliest tokens (60000 draws on the other
    backends: 1.5%). Draft probabilities are checked against the torch backend's integers above."""
    result = simulate_two_tokens(None, "cpu", 150, 1.0, 0, 1.0, False, seed=11, verify=emulated_verify_sample)
    check_lossless(*result, shift=0.12)


@pytest.mark.parametrize("variant", ["tsan", "asan"])
def test_verify_kernels_sanitized(variant):
    gen, tree, tokens = _random_greedy(3, 9, 2, seed=9)
    check_greedy(tree, tokens, torch.randint(0, 2, (3, 9), generator=gen), variant=variant)
    tree, args, kw = random_sample_case(5, 1, 4, 40, [0.7], [5], [0.9], True, "cpu")
    check_sample(tree, args, kw, variant=variant)
