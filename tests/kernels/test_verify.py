"""verify_greedy and verify_sample: hand-built goldens, random trees against a loop oracle, losslessness,
the VerifyResult tuple and its buffers, the sampling parameters as numbers or per-request tensors."""

import functools

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels import BackendError

from helpers import assert_close_as_torch, assert_equal, backend_params

GREEDY = backend_params("verify_greedy")
SAMPLE = backend_params("verify_sample")


def call(fn, backend, *args, **kw):
    """fn(..., backend=backend), skipping (with the reason) when that backend has no kernel here."""
    try:
        return fn(*args, backend=backend, **kw)
    except BackendError as exc:
        if "no Triton kernel is registered" in str(exc):
            pytest.skip(str(exc))
        raise


def tree_of(parents, device="cpu", num_nodes=None):
    p = torch.as_tensor(parents, dtype=torch.int32)
    if p.dim() == 1:
        p = p[None]
    if num_nodes is not None:
        num_nodes = torch.tensor(num_nodes, dtype=torch.int32)
    t = sk.build_tree(p, num_nodes, backend="torch")
    return sk.Tree(*(x.to(device) for x in t))


def i64(x, device="cpu"):
    t = torch.tensor(x, dtype=torch.int64, device=device)
    return t[None] if t.dim() == 1 else t


def check(result, nodes, length, out_tokens, what=""):
    an, al, ot = result
    nodes, out_tokens = i64(nodes), i64(out_tokens)
    assert_equal(an.cpu(), nodes.to(torch.int32), f"{what} accept_nodes")
    assert_equal(
        al.cpu(), torch.tensor([length] if isinstance(length, int) else length, dtype=torch.int32), f"{what} accept_len"
    )
    assert_equal(ot.cpu(), out_tokens, f"{what} out_tokens")


def one_hot_logits(ids, V, device="cpu"):
    """Logits whose argmax at node i is ids[b, i]."""
    ids = i64(ids)
    return (torch.nn.functional.one_hot(ids, V).float() * 5 - 1).to(device)


def greedy_oracle(parents, num_nodes, tokens, amax):
    """The definition, one request at a time in Python."""
    B, N = tokens.shape
    nodes = torch.full((B, N), -1, dtype=torch.int32)
    length = torch.zeros(B, dtype=torch.int32)
    outs = torch.full((B, N), -1, dtype=torch.int64)
    for b in range(B):
        n = int(num_nodes[b])
        kids = {i: [c for c in range(1, n) if int(parents[b, c]) == i] for i in range(n)}
        path, u = [0], 0
        while True:
            nxt = [c for c in kids[u] if int(tokens[b, c]) == int(amax[b, u])]
            if not nxt:
                break
            u = nxt[0]
            path.append(u)
        nodes[b, : len(path)] = torch.tensor(path, dtype=torch.int32)
        length[b] = len(path)
        emitted = [int(tokens[b, c]) for c in path[1:]] + [int(amax[b, u])]
        outs[b, : len(emitted)] = torch.tensor(emitted)
    return nodes, length, outs


def random_tree(gen, B, N, V, fanout=3):
    """Random parents (each node picks a parent among the earlier ones, biased to recent) and tokens."""
    parents = torch.full((B, N), -1, dtype=torch.int32)
    for i in range(1, N):
        lo = max(0, i - fanout)
        parents[:, i] = torch.randint(lo, i, (B,), generator=gen, dtype=torch.int32)
    tokens = torch.randint(0, V, (B, N), generator=gen)
    return parents, tokens


# ----------------------------------------------------------------------------------------------------------
# verify_greedy


@pytest.mark.parametrize("backend,device", GREEDY)
def test_greedy_chain(backend, device):
    tree, toks = tree_of([-1, 0, 1, 2], device), i64([5, 6, 7, 8], device)
    r = call(sk.verify_greedy, backend, tree, toks, i64([6, 7, 9, 3], device))
    check(r, [0, 1, 2, -1], 3, [6, 7, 9, -1], "partial chain")
    r = call(sk.verify_greedy, backend, tree, toks, i64([6, 7, 8, 4], device))
    check(r, [0, 1, 2, 3], 4, [6, 7, 8, 4], "whole chain, bonus at the leaf")
    r = call(sk.verify_greedy, backend, tree, toks, i64([1, 7, 8, 4], device))
    check(r, [0, -1, -1, -1], 1, [1, -1, -1, -1], "nothing accepted")


@pytest.mark.parametrize("backend,device", GREEDY)
def test_greedy_star(backend, device):
    tree, toks = tree_of([-1, 0, 0, 0], device), i64([1, 5, 6, 7], device)
    check(
        call(sk.verify_greedy, backend, tree, toks, i64([7, 0, 0, 42], device)),
        [0, 3, -1, -1],
        2,
        [7, 42, -1, -1],
        "last sibling",
    )
    check(
        call(sk.verify_greedy, backend, tree, toks, i64([5, 11, 0, 42], device)),
        [0, 1, -1, -1],
        2,
        [5, 11, -1, -1],
        "first sibling",
    )
    check(
        call(sk.verify_greedy, backend, tree, toks, i64([9, 0, 0, 0], device)),
        [0, -1, -1, -1],
        1,
        [9, -1, -1, -1],
        "no sibling",
    )


@pytest.mark.parametrize("backend,device", GREEDY)
def test_greedy_duplicate_siblings_first_decides(backend, device):
    # Nodes 1 and 2 both carry token 5; node 1 (first in sibling order) is taken even though node 2's
    # subtree would have matched further.
    tree, toks = tree_of([-1, 0, 0, 1, 2], device), i64([0, 5, 5, 6, 7], device)
    check(
        call(sk.verify_greedy, backend, tree, toks, i64([5, 8, 7, 0, 0], device)),
        [0, 1, -1, -1, -1],
        2,
        [5, 8, -1, -1, -1],
    )


@pytest.mark.parametrize("backend,device", GREEDY)
def test_greedy_batch_ragged_and_invalid(backend, device):
    # Request 0: a valid 5-node tree of which 4 nodes are live; request 1: invalid (parent 3 of node 2).
    parents = [[-1, 0, 1, 1, 0], [-1, 0, 3, 0, 0]]
    tree = tree_of(parents, device, num_nodes=[4, 5])
    assert tree.valid.tolist() == [True, False]
    toks = i64([[9, 4, 5, 6, 4], [9, 4, 5, 6, 4]], device)
    amax = i64([[4, 6, 1, 2, 3], [4, 5, 6, 7, 8]], device)
    check(
        call(sk.verify_greedy, backend, tree, toks, amax),
        [[0, 1, 3, -1, -1], [0, -1, -1, -1, -1]],
        [3, 1],
        [[4, 6, 2, -1, -1], [4, -1, -1, -1, -1]],
    )


@pytest.mark.parametrize("backend,device", GREEDY)
def test_greedy_logits_equal_ids_and_ties_go_to_lower_id(backend, device):
    gen = torch.Generator().manual_seed(0)
    B, N, V = 5, 12, 6
    parents, tokens = random_tree(gen, B, N, V)
    tree = tree_of(parents, device)
    logits = torch.randn(B, N, V, generator=gen)
    logits[:, :, 4] = logits[:, :, 2] = logits.amax(-1) + 1  # tie: ids 2 and 4 -> 2
    ids = logits.argmax(-1)
    assert (ids == 2).all()
    tokens[:, 1:] = torch.where(torch.rand(B, N - 1, generator=gen) < 0.6, 2, tokens[:, 1:])
    for dtype in (torch.float32, torch.float16) + ((torch.bfloat16,) if device == "cuda" else ()):
        from_logits = call(sk.verify_greedy, backend, tree, tokens.to(device), logits.to(dtype).to(device))
        from_ids = call(sk.verify_greedy, backend, tree, tokens.to(device), ids.to(device))
        for a, b_, name in zip(from_logits, from_ids, ("accept_nodes", "accept_len", "out_tokens")):
            assert_equal(a.cpu(), b_.cpu(), f"{dtype} {name}")


@pytest.mark.parametrize("backend,device", GREEDY)
def test_greedy_random_trees_against_oracle(backend, device):
    gen = torch.Generator().manual_seed(1)
    B, N, V = 16, 20, 2  # tiny V: long accepted paths
    parents, tokens = random_tree(gen, B, N, V)
    num_nodes = torch.randint(1, N + 1, (B,), generator=gen, dtype=torch.int32)
    tree = sk.build_tree(parents.to(device), num_nodes.to(device), backend="torch")
    amax = torch.randint(0, V, (B, N), generator=gen)
    want = greedy_oracle(parents, num_nodes, tokens, amax)
    out = sk.VerifyResult.empty(B, N, device)
    got = call(sk.verify_greedy, backend, tree, tokens.to(device), amax.to(device), out=out)
    assert got is out and all(g.data_ptr() == o.data_ptr() for g, o in zip(got, out))
    for g, w, name in zip(got, want, ("accept_nodes", "accept_len", "out_tokens")):
        assert_equal(g.cpu(), w, name)
    assert int(got[1].max()) >= 4, "the test should exercise long paths"


def test_greedy_errors():
    tree, toks = tree_of([-1, 0, 0]), i64([1, 2, 3])
    with pytest.raises(TypeError, match="Tree"):
        sk.verify_greedy(tuple(tree)[:3], toks, toks)
    with pytest.raises(TypeError, match="tokens"):
        sk.verify_greedy(tree, toks.int(), toks)
    with pytest.raises(ValueError, match="logits"):
        sk.verify_greedy(tree, toks, toks[:, :2])
    with pytest.raises(TypeError, match="logits"):
        sk.verify_greedy(tree, toks, toks.int())
    with pytest.raises(TypeError, match="logits"):
        sk.verify_greedy(tree, toks, torch.zeros(1, 3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="tree.first_child"):
        sk.verify_greedy(tree, i64([1, 2, 3, 4]), i64([1, 2, 3, 4]))
    with pytest.raises(ValueError, match="out"):
        sk.verify_greedy(tree, toks, toks, out=sk.VerifyResult.empty(1, 4))


# ----------------------------------------------------------------------------------------------------------
# verify_sample: goldens


def logits_of(probs, device="cpu"):
    """Logits [1, N, V] whose softmax (temperature 1) is `probs` (rows of a list, zeros -> -inf)."""
    p = torch.tensor(probs, dtype=torch.float64)
    return torch.log(p).float()[None].to(device)


def sample(backend, tree, tokens, logits, uniforms, temperature=1.0, top_k=0, top_p=1.0, **kw):
    u = torch.tensor(uniforms, dtype=torch.float32, device=tokens.device)
    return call(
        sk.verify_sample,
        backend,
        tree,
        tokens,
        logits,
        u[None] if u.dim() == 1 else u,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        **kw,
    )


FLAT = [0.25, 0.25, 0.25, 0.25]


@pytest.mark.parametrize("backend,device", SAMPLE)
def test_sample_golden_reject_then_accept(backend, device):
    # Root p = [.1, .2, .3, .4]. Child 1 (token 1): p = .2, u = .5 -> rejected; p -> [.125, 0, .375, .5].
    # Child 2 (token 2): p = .375, u = .3 -> accepted. Leaf: bonus from node 2's p (flat) with u = .6 -> id 2.
    tree, toks = tree_of([-1, 0, 0], device), i64([3, 1, 2], device)
    logits = logits_of([[0.1, 0.2, 0.3, 0.4], FLAT, FLAT], device)
    check(sample(backend, tree, toks, logits, [0.9, 0.5, 0.3, 0.6]), [0, 2, -1], 2, [2, 2, -1])
    # u = .4 >= .375 -> rejected too; residual [.2, 0, 0, .8]: u = .6 -> id 3, u = .1 -> id 0.
    check(sample(backend, tree, toks, logits, [0.9, 0.5, 0.4, 0.6]), [0, -1, -1], 1, [3, -1, -1])
    check(sample(backend, tree, toks, logits, [0.9, 0.5, 0.4, 0.1]), [0, -1, -1], 1, [0, -1, -1])
    # Child 1 accepted (u = .19 < .2) and the walk descends; node 1 is a leaf: flat bonus with u = 0 -> id 0.
    check(sample(backend, tree, toks, logits, [0.9, 0.19, 0.0, 0.0]), [0, 1, -1], 2, [1, 0, -1])


@pytest.mark.parametrize("backend,device", SAMPLE)
def test_sample_golden_deep_path_and_duplicates(backend, device):
    # Root children: node 1 (token 2), node 2 (token 2: a duplicate), node 3 (token 0). Node 1 rejected ->
    # token 2 has p = 0, so node 2 is rejected even with u = 0; node 3 accepted; its child node 4 (token 1)
    # accepted; node 4 is a leaf: bonus from [0, 0, 0, 1] -> 3.
    tree = tree_of([-1, 0, 0, 0, 3], device)
    toks = i64([3, 2, 2, 0, 1], device)
    logits = logits_of([[0.5, 0.0, 0.5, 0.0], FLAT, FLAT, [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]], device)
    check(
        sample(backend, tree, toks, logits, [0.0, 0.7, 0.0, 0.99, 0.999, 0.5]), [0, 3, 4, -1, -1], 3, [0, 1, 3, -1, -1]
    )


@pytest.mark.parametrize("backend,device", SAMPLE)
def test_sample_zero_probability_never_accepted(backend, device):
    # Top-k 2 keeps tokens 2 and 3 only: children with tokens 0 and 1 are rejected even with u = 0, and the
    # bonus never draws them.
    tree, toks = tree_of([-1, 0, 0], device), i64([3, 0, 1], device)
    logits = logits_of([[0.1, 0.2, 0.3, 0.4], FLAT, FLAT], device)
    for ub in (0.0, 0.3, 0.5, 0.999999):
        an, al, ot = sample(backend, tree, toks, logits, [0.0, 0.0, 0.0, ub], top_k=2)
        assert int(al[0]) == 1 and int(ot[0, 0]) in (2, 3), (ub, ot)
    # A p = 1 child is accepted for every u < 1, and p = 0 children (top-p keeps only the .4 token) never.
    toks = i64([3, 2, 3], device)
    # At the flat leaf every token ties with the most probable one, so top-p keeps all four: u = .5 -> 2.
    an, al, ot = sample(backend, tree, toks, logits, [0.0, 0.0, 0.999999, 0.5], top_p=0.3)
    check((an, al, ot), [0, 2, -1], 2, [3, 2, -1])


@pytest.mark.parametrize("backend,device", SAMPLE)
def test_sample_single_node_tree(backend, device):
    tree, toks = tree_of([-1], device), i64([7], device)
    logits = logits_of([[0.1, 0.2, 0.3, 0.4]], device)
    for ub, want in ((0.05, 0), (0.1, 1), (0.29, 1), (0.31, 2), (0.61, 3), (0.999, 3)):
        check(sample(backend, tree, toks, logits, [0.0, ub]), [0], 1, [want], f"u = {ub}")


@pytest.mark.parametrize("backend,device", SAMPLE)
def test_sample_invalid_tree_draws_bonus_at_root(backend, device):
    tree = tree_of([[-1, 0, 5]], device)
    assert not bool(tree.valid[0])
    logits = logits_of([[0.0, 0.0, 1.0, 0.0], FLAT, FLAT], device)
    check(sample(backend, tree, i64([3, 2, 2], device), logits, [0.0, 0.0, 0.0, 0.5]), [0, -1, -1], 1, [2, -1, -1])


@pytest.mark.parametrize("backend,device", SAMPLE)
def test_sample_with_draft_probs_golden(backend, device):
    # p = [.1, .2, .3, .4], q = [.1, .6, .2, .1]; child 1 (token 1): p/q = 1/3, u = .5 -> rejected;
    # p -> max(p - q, 0) = [0, 0, .1, .3] / .4 = [0, 0, .25, .75]; q -> [.25, 0, .5, .25].
    # child 2 (token 2): p/q = .5, u = .49 -> accepted (u * q = .245 < .25). Leaf: flat bonus, u = .8 -> 3.
    tree, toks = tree_of([-1, 0, 0], device), i64([3, 1, 2], device)
    logits = logits_of([[0.1, 0.2, 0.3, 0.4], FLAT, FLAT], device)
    q = torch.tensor([[[0.1, 0.6, 0.2, 0.1], FLAT, FLAT]], device=device)
    check(sample(backend, tree, toks, logits, [0.0, 0.5, 0.49, 0.8], draft_probs=q), [0, 2, -1], 2, [2, 3, -1])
    # u = .51 rejects child 2 too; p -> max([0, 0, .25, .75] - [.25, 0, .5, .25], 0) = [0, 0, 0, 1] -> 3.
    check(sample(backend, tree, toks, logits, [0.0, 0.5, 0.51, 0.1], draft_probs=q), [0, -1, -1], 1, [3, -1, -1])
    # p(x) >= q(x) accepts whatever u is: child 1 with q = [.1, .1, .4, .4] has p/q = 2.
    q2 = torch.tensor([[[0.1, 0.1, 0.4, 0.4], FLAT, FLAT]], device=device)
    check(sample(backend, tree, toks, logits, [0.0, 0.999, 0.0, 0.0], draft_probs=q2), [0, 1, -1], 2, [1, 0, -1])


@pytest.mark.parametrize("backend,device", SAMPLE)
def test_sample_temperature_zero_is_greedy(backend, device):
    gen = torch.Generator().manual_seed(3)
    B, N, V = 12, 16, 3
    parents, tokens = random_tree(gen, B, N, V)
    tree = tree_of(parents, device)
    logits = torch.randn(B, N, V, generator=gen)
    uniforms = torch.rand(B, N + 1, generator=gen)
    temp = torch.where(torch.arange(B) % 2 == 0, 0.0, 1.0)  # even rows greedy
    got = call(
        sk.verify_sample,
        backend,
        tree,
        tokens.to(device),
        logits.to(device),
        uniforms.to(device),
        temperature=temp.to(device),
        top_k=0,
        top_p=1.0,
    )
    want = sk.verify_greedy(tree, tokens.to(device), logits.to(device), backend="torch")
    for g, w, name in zip(got, want, ("accept_nodes", "accept_len", "out_tokens")):
        assert_equal(g.cpu()[::2], w.cpu()[::2], name)
    assert int(want[1][::2].max()) >= 3, "the test should exercise long greedy paths"


def random_sample_case(seed, B, N, V, temp, top_k, top_p, with_q, device, *, ragged=False, scale=2.0, boost_from=None):
    """A random batch for verify_sample: (tree, positional args after the tree, keyword args).

    Half of the drafted tokens are the target's argmax at their parent, so accepted paths get long;
    `boost_from` raises the logits of tokens >= boost_from so much of the mass sits in the last tile.
    """
    gen = torch.Generator().manual_seed(seed)
    parents, tokens = random_tree(gen, B, N, V)
    num_nodes = torch.randint(1, N + 1, (B,), generator=gen, dtype=torch.int32) if ragged else None
    tree = sk.build_tree(parents, num_nodes, backend="torch")
    logits = torch.randn(B, N, V, generator=gen) * scale
    if boost_from is not None:
        logits[:, :, boost_from:] += 4.0
    tokens[:, 1:] = torch.where(
        torch.rand(B, N - 1, generator=gen) < 0.5, logits[:, :-1].argmax(-1)[:, : N - 1], tokens[:, 1:]
    )
    uniforms = torch.rand(B, N + 1, generator=gen)
    q = torch.softmax(torch.randn(B, N, V, generator=gen), -1) if with_q else None
    temp, top_k, top_p = torch.tensor(temp), torch.tensor(top_k, dtype=torch.int32), torch.tensor(top_p)
    args = [t.to(device) for t in (tokens, logits, uniforms)]
    tree = sk.Tree(*(t.to(device) for t in tree))
    return (
        tree,
        args,
        dict(
            temperature=temp.to(device),
            top_k=top_k.to(device),
            top_p=top_p.to(device),
            draft_probs=None if q is None else q.to(device),
        ),
    )


def assert_sample_same_as_torch(backend, tree, args, kw, what=""):
    got = call(sk.verify_sample, backend, tree, *args, **kw)
    want = sk.verify_sample(tree, *args, backend="torch", **kw)
    for g, w, name in zip(got, want, ("accept_nodes", "accept_len", "out_tokens")):
        assert_equal(g.cpu(), w.cpu(), f"{what}{name}")


@pytest.mark.parametrize("backend,device", SAMPLE)
@pytest.mark.parametrize("with_q", [False, True])
def test_sample_random_against_reference(backend, device, with_q):
    """Every backend gives the torch backend's integers on a mixed batch (temperatures, top-k, top-p)."""
    tree, args, kw = random_sample_case(
        4 + with_q,
        8,
        12,
        40,
        [1.0, 0.7, 0.0, 1.3, 1.0, 0.5, 1.0, 2.0],
        [0, 5, 0, 1, 40, 0, 3, 0],
        [1.0, 1.0, 1.0, 0.9, 0.5, 0.8, 1.0, 0.95],
        with_q,
        device,
        ragged=True,
    )
    assert_sample_same_as_torch(backend, tree, args, kw)
    if device == "cuda":  # low-precision logits: the same integers as the torch backend on the same inputs
        for dtype in (torch.float16, torch.bfloat16):
            assert_sample_same_as_torch(backend, tree, [args[0], args[1].to(dtype)] + args[2:], kw, f"{dtype} ")


@pytest.mark.parametrize("backend,device", SAMPLE)
@pytest.mark.parametrize("with_q", [False, True])
def test_sample_vocab_spanning_several_tiles(backend, device, with_q):
    """V = 4500 > the kernels' vocabulary tile (2048 in Triton, 512 per CUDA pass): the threshold searches,
    the residual normalisers and the inverse-CDF lookup must combine tiles exactly like the reference."""
    tree, args, kw = random_sample_case(
        40 + with_q,
        4,
        6,
        4500,
        [1.0, 0.7, 1.0, 1.3],
        [0, 3000, 2500, 0],
        [1.0, 0.9, 1.0, 0.6],
        with_q,
        device,
        scale=3.0,
        boost_from=4100,
    )
    assert_sample_same_as_torch(backend, tree, args, kw)


def test_filtered_probs_match_transformers_warpers():
    tf = pytest.importorskip("transformers.generation.logits_process")
    from specdec_kernels.reference.verify import filtered_probs

    gen = torch.Generator().manual_seed(5)
    R, V = 64, 50
    logits = torch.randn(R, V, generator=gen) * 3

    def warped(x, t, k, p):
        scores = tf.TemperatureLogitsWarper(t)(None, x.clone())
        if k:
            scores = tf.TopKLogitsWarper(k)(None, scores)
        if p < 1:
            scores = tf.TopPLogitsWarper(p)(None, scores)
        return torch.softmax(scores, -1)

    for t, k, p in ((1.0, 0, 1.0), (0.7, 10, 1.0), (1.3, 0, 0.9), (0.8, 7, 0.6), (1.0, 1, 1.0), (1.0, 0, 0.3)):
        want = warped(logits, t, k, p)
        got = filtered_probs(logits, torch.full((R,), t), torch.full((R,), k, dtype=torch.int32), torch.full((R,), p))
        assert_equal(got > 0, want > 0, f"kept set T={t} k={k} p={p}")
        # flash-attention's rule: against the warpers in fp64, at most ~2x the error of the warpers in fp32.
        truth = warped(logits.double(), t, k, p)
        assert_close_as_torch(got, truth, want, f"probabilities T={t} k={k} p={p}")


def test_filtered_probs_keep_ties():
    from specdec_kernels.reference.verify import filtered_probs

    logits = torch.log(torch.tensor([[0.3, 0.2, 0.2, 0.2, 0.1]]))
    one = torch.ones(1)
    kept = lambda k, p: (filtered_probs(logits, one, torch.tensor([k], dtype=torch.int32), torch.tensor([p])) > 0)[0]
    assert kept(2, 1.0).tolist() == [True, True, True, True, False]  # ties with the 2nd all kept
    assert kept(0, 0.4).tolist() == [True, True, True, True, False]  # .3 < .4: the .2 tier is kept
    assert kept(0, 0.3).tolist() == [True, False, False, False, False]  # mass .3 reaches .3
    assert kept(0, 0.0).tolist() == [True, False, False, False, False]  # always the most probable


def test_sample_errors():
    tree, toks = tree_of([-1, 0, 0]), i64([1, 2, 3])
    logits, u = torch.zeros(1, 3, 5), torch.zeros(1, 4)
    with pytest.raises(ValueError, match="uniforms"):
        sk.verify_sample(tree, toks, logits, torch.zeros(1, 3), temperature=1.0, top_k=0, top_p=1.0)
    with pytest.raises(TypeError, match="uniforms"):
        sk.verify_sample(tree, toks, logits, u.double(), temperature=1.0, top_k=0, top_p=1.0)
    with pytest.raises(ValueError, match="logits"):
        sk.verify_sample(tree, toks, logits[:, :2], u, temperature=1.0, top_k=0, top_p=1.0)
    with pytest.raises(TypeError, match="logits"):
        sk.verify_sample(tree, toks, logits.long(), u, temperature=1.0, top_k=0, top_p=1.0)
    with pytest.raises(TypeError, match="top_k"):
        sk.verify_sample(tree, toks, logits, u, temperature=1.0, top_k=torch.zeros(1), top_p=1.0)
    with pytest.raises(ValueError, match="temperature"):
        sk.verify_sample(tree, toks, logits, u, temperature=torch.ones(2), top_k=0, top_p=1.0)
    with pytest.raises(ValueError, match="draft_probs"):
        sk.verify_sample(tree, toks, logits, u, temperature=1.0, top_k=0, top_p=1.0, draft_probs=torch.zeros(1, 3, 4))


def test_sample_parameters_are_keywords_and_refuse_bools():
    tree, toks = tree_of([-1, 0, 0]), i64([1, 2, 3])
    logits, u = torch.zeros(1, 3, 5), torch.zeros(1, 4)
    with pytest.raises(TypeError, match="positional"):
        sk.verify_sample(tree, toks, logits, u, 1.0, 0, 1.0)
    with pytest.raises(TypeError, match=r"temperature: expected a float or a float32 tensor \[B\], got bool"):
        sk.verify_sample(tree, toks, logits, u, temperature=True)
    with pytest.raises(TypeError, match=r"top_k: expected an int or an int32 tensor \[B\], got bool"):
        sk.verify_sample(tree, toks, logits, u, top_k=False)
    with pytest.raises(TypeError, match=r"top_k: expected an int .*got float"):
        sk.verify_sample(tree, toks, logits, u, top_k=5.0)
    with pytest.raises(TypeError, match=r"top_p: expected a float .*got bool"):
        sk.verify_sample(tree, toks, logits, u, top_p=True)
    with pytest.raises(TypeError, match=r"top_p: expected a float .*got str"):
        sk.verify_sample(tree, toks, logits, u, top_p="0.9")
    with pytest.raises(TypeError, match=r"temperature: expected dtype torch.float32, got torch.float64"):
        sk.verify_sample(tree, toks, logits, u, temperature=torch.ones(1, dtype=torch.float64))


@pytest.mark.parametrize("backend,device", SAMPLE)
def test_sample_defaults_are_plain_sampling(backend, device):
    """No temperature / top_k / top_p is temperature 1.0, top_k 0 and top_p 1.0."""
    tree, args, kw = random_sample_case(31, 4, 10, 30, [1.0] * 4, [0] * 4, [1.0] * 4, False, device)
    got = call(sk.verify_sample, backend, tree, *args)
    for g, w, name in zip(
        got, call(sk.verify_sample, backend, tree, *args, temperature=1.0, top_k=0, top_p=1.0), sk.VerifyResult._fields
    ):
        assert_equal(g.cpu(), w.cpu(), f"defaults vs explicit {name}")
    want = sk.verify_sample(tree, *args, **kw, backend="torch")
    for g, w, name in zip(got, want, sk.VerifyResult._fields):
        assert_equal(g.cpu(), w.cpu(), f"defaults vs per-request ones {name}")


@pytest.mark.parametrize("backend,device", SAMPLE)
@pytest.mark.parametrize("t,k,p", [(0.7, 5, 0.9), (0.0, 0, 1.0), (1.3, 1, 0.5), (2, 3, 1)])
def test_sample_numbers_equal_per_request_tensors(backend, device, t, k, p):
    """A Python number for every request gives exactly what the same value as a [B] tensor gives."""
    B = 6
    tree, args, kw = random_sample_case(50, B, 9, 25, [float(t)] * B, [k] * B, [float(p)] * B, True, device)
    from_numbers = call(
        sk.verify_sample, backend, tree, *args, temperature=t, top_k=k, top_p=p, draft_probs=kw["draft_probs"]
    )
    from_tensors = call(sk.verify_sample, backend, tree, *args, **kw)
    for a, b_, name in zip(from_numbers, from_tensors, sk.VerifyResult._fields):
        assert_equal(a.cpu(), b_.cpu(), f"T={t} k={k} p={p} {name}")


def test_verify_result_named_fields_and_out_type():
    assert sk.VerifyResult._fields == ("accept_nodes", "accept_len", "out_tokens")
    tree, toks = tree_of([-1, 0, 0, 1]), i64([1, 2, 3, 4])
    res = sk.verify_greedy(tree, toks, i64([2, 9, 0, 0]), backend="torch")
    assert type(res) is sk.VerifyResult
    assert res.accept_nodes.tolist() == [[0, 1, -1, -1]] and res.accept_len.tolist() == [2]
    assert res.out_tokens.tolist() == [[2, 9, -1, -1]]
    nodes, length, out_tokens = res  # still unpacks as a tuple
    assert nodes is res.accept_nodes and length is res.accept_len and out_tokens is res.out_tokens
    empty = sk.VerifyResult.empty(3, 7)
    assert type(empty) is sk.VerifyResult
    assert [(tuple(t.shape), t.dtype) for t in empty] == [
        ((3, 7), torch.int32),
        ((3,), torch.int32),
        ((3, 7), torch.int64),
    ]
    with pytest.raises(TypeError, match=r"num_nodes: expected an int, got bool"):
        sk.VerifyResult.empty(3, False)
    bufs = sk.VerifyResult.empty(1, 4)
    with pytest.raises(
        TypeError,
        match=r"out: expected a VerifyResult \(from VerifyResult.empty\(batch, num_nodes, "
        r"device\)\), got tuple",
    ):
        sk.verify_greedy(tree, toks, i64([2, 9, 0, 0]), out=tuple(bufs))
    with pytest.raises(TypeError, match=r"out: expected a VerifyResult .*got Tree"):
        sk.verify_greedy(tree, toks, i64([2, 9, 0, 0]), out=tree)
    with pytest.raises(TypeError, match=r"out: expected a VerifyResult .*got list"):
        sk.verify_sample(tree, toks, torch.zeros(1, 4, 3), torch.zeros(1, 5), out=list(bufs))
    ids = i64([2, 9, 0, 0])
    with pytest.raises(ValueError, match=r"out.accept_len: expected shape \[1\], got \(2,\)"):
        sk.verify_greedy(tree, toks, ids, out=bufs._replace(accept_len=torch.empty(2, dtype=torch.int32)))
    with pytest.raises(TypeError, match=r"out.out_tokens: expected dtype torch.int64, got torch.int32"):
        sk.verify_greedy(tree, toks, ids, out=bufs._replace(out_tokens=torch.empty(1, 4, dtype=torch.int32)))


@pytest.mark.parametrize("backend,device", SAMPLE)
def test_sample_into_empty_buffers_is_reused(backend, device):
    """VerifyResult.empty + out= round trip: every entry is rewritten, the buffers are returned."""
    tree, args, kw = random_sample_case(
        60, 5, 8, 20, [1.0, 0.7, 0.0, 1.0, 2.0], [0, 3, 0, 1, 0], [1.0, 0.9, 1.0, 1.0, 0.5], False, device, ragged=True
    )
    out = sk.VerifyResult.empty(5, 8, device)
    for t in out:
        t.fill_(12345)
    got = call(sk.verify_sample, backend, tree, *args, **kw, out=out)
    assert got is out
    want = sk.verify_sample(tree, *args, **kw, backend="torch")
    for g, w, name in zip(got, want, sk.VerifyResult._fields):
        assert_equal(g.cpu(), w.cpu(), name)


# ----------------------------------------------------------------------------------------------------------
# verify_sample: statistical losslessness

V_STAT = 8
NOISE = 1.0  # draft = target logits + NOISE * N(0, 1): close enough to accept two levels often, far enough
# that a wrong residual rule (e.g. not removing rejected children from q) fails (p ~ 1e-47)
STAT_PARENTS = [-1, 0, 0, 0, 1, 1, 2, 2, 3, 3]  # root, 3 children, 2 grandchildren each


def processed_probs(logits, t, k, p):
    """Target distribution after temperature / top-k / top-p, written from the definition in fp64."""
    z = logits.double() / t
    V = z.shape[-1]
    if 0 < k < V:
        kth = torch.sort(z, descending=True).values[k - 1]
        z = z.masked_fill(z < kth, float("-inf"))
    pr = torch.softmax(z, -1)
    if p < 1:
        keep = torch.tensor([bool(pr[x] == pr.max()) or float(pr[pr > pr[x]].sum()) < p for x in range(V)])
        pr = torch.where(keep, pr, torch.zeros_like(pr))
    return pr / pr.sum()


def chi2_pvalue(observed, expected, min_expected=20.0):
    """Pearson chi-square p-value; cells with a small expectation are pooled into one."""
    observed, expected = observed.double().flatten(), expected.double().flatten()
    small = expected < min_expected
    obs = torch.cat([observed[~small], observed[small].sum()[None]])
    exp = torch.cat([expected[~small], expected[small].sum()[None]])
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    stat = ((obs - exp) ** 2 / exp).sum()
    dof = obs.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), stat / 2))


def draft_children(gen, q, count, stochastic):
    """count children per row of q [B, V]: its top-count tokens, or a sample without replacement
    (Gumbel top-k gives the sequential without-replacement order)."""
    if not stochastic:
        return torch.topk(q, count, dim=-1).indices
    g = -torch.log(-torch.log(torch.rand(q.shape, generator=gen, dtype=torch.float64).clamp(1e-300, 1)))
    return torch.topk(torch.log(q.double()) + g, count, dim=-1).indices


def simulate_two_tokens(backend, device, draws, t, k, p, stochastic, seed, verify=None):
    """First two emitted tokens over `draws` independent verifications of a fixed 2-level target model.

    The target: p1 at the root (logits L1), p2(. | x) = rows of L2 after token x. The draft tree: the root's
    3 children are the draft's top-3 (or a without-replacement sample) of q1, each child x has 2 children
    from q2(. | x). When only the bonus is emitted, a second verification round (root x, 3 children from
    q2(. | x)) supplies the second token, as the generate loop would.

    verify: the verification to test, called as sk.verify_sample without `backend` (default: verify_sample on
    `backend`); it returns (accept_nodes, accept_len, out_tokens).
    """
    if verify is None:
        verify = functools.partial(call, sk.verify_sample, backend)
    gen = torch.Generator().manual_seed(seed)
    V, B = V_STAT, draws
    L1, L2 = torch.randn(V, generator=gen) * 1.5, torch.randn(V, V, generator=gen) * 1.5
    # A draft that roughly agrees with the target, so two drafted levels are often accepted.
    q1 = torch.softmax(L1 + NOISE * torch.randn(V, generator=gen), -1)
    Q2 = torch.softmax(L2 + NOISE * torch.randn(V, V, generator=gen), -1)
    flat = torch.full((V,), 1.0 / V)
    kids = draft_children(gen, q1.expand(B, V), 3, stochastic)  # [B, 3]
    grand = torch.stack([draft_children(gen, Q2[kids[:, i]], 2, stochastic) for i in range(3)], 1)  # [B, 3, 2]
    tokens = torch.cat([torch.zeros(B, 1, dtype=torch.int64), kids, grand.reshape(B, 6)], 1)
    logits = torch.cat([L1.expand(B, 1, V), L2[kids], torch.zeros(B, 6, V)], 1)
    q = torch.cat([q1.expand(B, 1, V), Q2[kids], flat.expand(B, 6, V)], 1) if stochastic else None
    tree = sk.Tree(*(x.expand(B, *x.shape[1:]) for x in tree_of(STAT_PARENTS, device)))
    uniforms = torch.rand(B, len(STAT_PARENTS) + 1, generator=gen)
    _, al, ot = verify(
        tree,
        tokens.to(device),
        logits.to(device),
        uniforms.to(device),
        temperature=t,
        top_k=k,
        top_p=p,
        draft_probs=None if q is None else q.to(device),
    )
    al, ot = al.cpu(), ot.cpu()
    t1, t2 = ot[:, 0].clone(), ot[:, 1].clone()
    again = al == 1
    n2 = int(again.sum())
    if n2:
        x = t1[again]
        kids2 = draft_children(gen, Q2[x], 3, stochastic)
        tokens2 = torch.cat([x[:, None], kids2], 1)
        logits2 = torch.cat([L2[x][:, None], torch.zeros(n2, 3, V)], 1)
        q2 = torch.cat([Q2[x][:, None], flat.expand(n2, 3, V)], 1) if stochastic else None
        tree2 = sk.Tree(*(x.expand(n2, *x.shape[1:]) for x in tree_of([-1, 0, 0, 0], device)))
        out2 = verify(
            tree2,
            tokens2.to(device),
            logits2.to(device),
            torch.rand(n2, 5, generator=gen).to(device),
            temperature=t,
            top_k=k,
            top_p=p,
            draft_probs=None if q2 is None else q2.to(device),
        )
        t2[again] = out2[2][:, 0].cpu()
    p1 = processed_probs(L1, t, k, p)
    P2 = torch.stack([processed_probs(L2[x], t, k, p) for x in range(V)])
    return t1, t2, p1, P2, al


STAT_CASES = [  # (temperature, top_k, top_p, stochastic draft)
    (1.0, 0, 1.0, False),
    (0.7, 0, 1.0, False),
    (1.0, 3, 1.0, False),
    (1.0, 0, 0.8, False),
    (1.0, 0, 1.0, True),
    (0.8, 5, 0.9, True),
]


def check_lossless(t1, t2, p1, P2, al, shift=0.015):
    """simulate_two_tokens' result against lossless speculative sampling: the first emitted token ~ p1 and the
    first two ~ p1(a) p2(b | a) (chi-square p-values above 1e-4, no outcome of probability 0), two drafted
    levels accepted often, and enough draws that the same counts reject a target with `shift` of p1's mass
    moved between its two likeliest tokens."""
    draws = t1.numel()
    assert float((al >= 3).double().mean()) > 0.05, "the test should accept two drafted levels often"
    c1 = torch.bincount(t1, minlength=V_STAT)
    c12 = torch.bincount(t1 * V_STAT + t2, minlength=V_STAT * V_STAT)
    e1, e12 = draws * p1, draws * (p1[:, None] * P2).flatten()
    assert_equal(c1[e1 == 0], torch.zeros_like(c1[e1 == 0]), "tokens of zero target probability emitted first")
    assert_equal(c12[e12 == 0], torch.zeros_like(c12[e12 == 0]), "pairs of zero target probability emitted")
    pv1, pv12 = chi2_pvalue(c1, e1), chi2_pvalue(c12, e12)
    assert pv1 > 1e-4, f"first token: p-value {pv1:.2e}\nobserved {(c1 / draws).tolist()}\nexpected {p1.tolist()}"
    assert pv12 > 1e-4, f"first two tokens: p-value {pv12:.2e}"
    # Power: the same counts must reject a target moved by `shift` of mass between its two likeliest tokens.
    top2 = torch.topk(p1, 2).indices
    biased = p1.clone()
    biased[top2[0]] -= shift
    biased[top2[1]] += shift
    assert chi2_pvalue(c1, draws * biased) < 1e-4, f"the chi-square test is too weak to see a {shift:.1%} bias"


@pytest.mark.parametrize("backend,device", SAMPLE)
@pytest.mark.parametrize("t,k,p,stochastic", STAT_CASES)
def test_sample_is_lossless(backend, device, t, k, p, stochastic):
    """The first emitted token ~ p1, the first two ~ p1(a) p2(b | a): chi-square p-value above 1e-4."""
    if backend == "triton" and device == "cpu":
        pytest.skip("too many draws for the Triton interpreter (covered by test_sample_random_against_reference)")
    draws = 60_000
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # [60000, 8] tensors: on a loaded CPU, intra-op threads cost more than they give
    try:
        check_lossless(*simulate_two_tokens(backend, device, draws, t, k, p, stochastic, seed=11))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("backend,device", [p for p in GREEDY if p.values[0] != "torch"])
def test_opcheck_greedy(backend, device):
    tree, toks = tree_of([-1, 0, 0, 1], device), i64([1, 2, 3, 4], device)
    logits = torch.randn(1, 4, 6, device=device)
    for target in (logits, logits.argmax(-1)):  # the kernel argument `logits` of verify_greedy
        args = (tree.first_child, tree.next_sibling, tree.valid, toks, target, *sk.VerifyResult.empty(1, 4, device))
        reason = sk.get_op("verify_greedy").reason(backend, *args)
        if reason:
            pytest.skip(reason)
        op = getattr(torch.ops.specdec, "verify_greedy" + ("_triton" if backend == "triton" else ""))
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend,device", [p for p in SAMPLE if p.values[0] != "torch"])
def test_opcheck_sample(backend, device):
    tree, toks = tree_of([-1, 0, 0, 1], device), i64([1, 2, 3, 4], device)
    logits = torch.randn(1, 4, 6, device=device)
    f32 = dict(dtype=torch.float32, device=device)
    for q in (None, torch.softmax(torch.randn(1, 4, 6, device=device), -1)):
        args = (
            tree.first_child,
            tree.next_sibling,
            tree.valid,
            toks,
            logits,
            torch.rand(1, 5, **f32),
            torch.ones(1, **f32),
            torch.zeros(1, dtype=torch.int32, device=device),
            torch.ones(1, **f32),
            q,
            *sk.VerifyResult.empty(1, 4, device),
        )
        reason = sk.get_op("verify_sample").reason(backend, *args)
        if reason:
            pytest.skip(reason)
        op = getattr(torch.ops.specdec, "verify_sample" + ("_triton" if backend == "triton" else ""))
        torch.library.opcheck(op, args)
