"""Training losses (specdec.training.losses): alignment with the data's loss mask, each loss against a
hand-computed case, the recipes against an independent computation through forward_sequence, GRIFFIN's
multi-pass training against a brute-force decode-time view (one chain per query), its top-k mask chain on a
hand-built example, and the detached feeding of the draft's own features.

CPU, tiny heads. The comparisons of two computations of a head run in fp64 (tolerance(float64, ...)).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from specdec.models import DraftConfig, TrainOutput, build_draft_head
from specdec.training import recipe_lr
from specdec.training.losses import (
    RECIPES,
    align_batch,
    learning_rate,
    multipass_mask,
    recipe_loss,
    soft_cross_entropy,
    topk_chain,
    topk_cross_entropy,
)

from helpers import assert_equal, tolerance
from tiny_models import head_reduction, one_thread  # noqa: F401  (autouse fixture)

V, H, I = 61, 16, 24


# --------------------------------------------------------------------------------------------------
# Alignment


def test_alignment_hand_built():
    """Draft position t = (f_t, x_{t+1}) is a loss position iff x_{t+2} is a real response token."""
    ids = torch.tensor([[10, 11, 12, 13, 14, 15], [20, 21, 22, 23, 24, 25], [0, 0, 31, 32, 33, 34]])
    lm = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    am = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    hidden = torch.arange(3 * 6, dtype=torch.float32).view(3, 6, 1).expand(3, 6, 2)
    ab = align_batch(dict(input_ids=ids, loss_mask=lm, attention_mask=am, hidden=hidden))
    # row 0: 3-token prompt, 3-token answer; row 1: answer x_2, x_3 then right padding; row 2: left padding
    assert_equal(ab.loss_mask, torch.tensor([[0, 1, 1, 1, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0]], dtype=torch.bool))
    assert_equal(ab.pair_mask, torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.bool))
    assert_equal(ab.valid, torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0]], dtype=torch.bool))
    assert_equal(ab.tokens, ids[:, 1:])
    assert_equal(ab.next_tokens[0], torch.tensor([12, 13, 14, 15, 0]))
    assert_equal(ab.position_ids[2], torch.tensor([0, 0, 0, 1, 2]))  # counted over real tokens
    assert_equal(ab.position_ids[0], torch.arange(5))
    assert torch.equal(ab.features, hidden[:, :5]) and torch.equal(ab.targets, hidden[:, 1:])


# --------------------------------------------------------------------------------------------------
# The loss functions on hand-computed cases


def test_soft_and_topk_cross_entropy_hand_computed():
    lq = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])  # Q = [1/4, 3/4], [1/2, 1/2]
    p = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    want = torch.tensor([-(0.5 * math.log(0.25) + 0.5 * math.log(0.75)), math.log(2.0)])
    torch.testing.assert_close(soft_cross_entropy(lq, p), want, atol=tolerance(torch.float32, 2)[0], rtol=0)
    # top-k: P not renormalised over its top k
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3]]))
    p = torch.tensor([[0.2, 0.5, 0.3]])
    atol = tolerance(torch.float32, 3)[0]
    torch.testing.assert_close(
        topk_cross_entropy(logits, p, 1), torch.tensor([-0.5 * math.log(0.6)]), atol=atol, rtol=0
    )
    torch.testing.assert_close(
        topk_cross_entropy(logits, p, 2),
        torch.tensor([-(0.5 * math.log(0.6) + 0.3 * math.log(0.3))]),
        atol=atol,
        rtol=0,
    )
    torch.testing.assert_close(topk_cross_entropy(logits, p, 10), soft_cross_entropy(logits, p), atol=atol, rtol=0)


class StubHead(torch.nn.Module):
    """A 'head' whose forward is hand-computable: r = 2 f (EAGLE: o = r, logits of o); FSPAD: p = -f.
    Logits are x @ W.T with W = [[1, 0], [0, 1], [0, 0]] (V = 3, H = 2)."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.scale = torch.nn.Parameter(torch.tensor(2.0))
        self.W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
        self.draft_to_target = None

    @property
    def dtype(self):
        return torch.float32

    def compute_logits(self, x):
        return x.float() @ self.W.T

    def to_target_ids(self, i):
        return i

    def forward_train(
        self,
        features,
        input_ids,
        *,
        attention_mask=None,
        position_ids=None,
        logits_index=None,
        past_kv=None,
        return_kv=False,
    ):
        B, T, _ = features.shape
        r = self.scale * features
        p = r if self.kind == "eagle" else -features
        return TrainOutput(r, self.compute_logits(p.reshape(B * T, 2)[logits_index]), None, logits_index, None)


@pytest.mark.parametrize("kind", ["eagle", "fspad"])
def test_recipe_loss_hand_computed(kind):
    """T = 4, answer = x_2, x_3: loss positions t = 0 (pair (f_0, x_1) -> x_2) and t = 1 (-> x_3)."""
    f = torch.tensor([[[0.0, 0.25], [1.0, 0.0], [0.0, 2.0], [0.5, 0.5]]])
    batch = dict(
        input_ids=torch.tensor([[0, 1, 1, 0]]),
        loss_mask=torch.tensor([[0, 0, 1, 1]], dtype=torch.bool),
        attention_mask=torch.ones(1, 4, dtype=torch.bool),
        hidden=f,
    )
    head = StubHead(kind)
    loss, m = recipe_loss(kind, head, batch, noise=0.0)
    # SmoothL1 (beta 1): t=0: 2 f_0 = (0, .5) vs f_1 = (1, 0): (0.5 + 0.125) / 2; t=1: (2, 0) vs (0, 2): 1.5
    sl1 = ((0.5 + 0.125) / 2 + 1.5) / 2
    # target distributions softmax(W f_{t+1}): P_0 = softmax(1, 0, 0), P_1 = softmax(0, 2, 0)
    e, e2 = math.e, math.e**2
    P0 = [e / (e + 2), 1 / (e + 2), 1 / (e + 2)]
    P1 = [1 / (e2 + 2), e2 / (e2 + 2), 1 / (e2 + 2)]

    def ce(P, z):
        lse = math.log(sum(math.exp(v) for v in z))
        return -sum(p * (v - lse) for p, v in zip(P, z))

    if kind == "eagle":  # logits of o = 2 f: (0, .5, 0), (2, 0, 0)
        z0, z1 = [0.0, 0.5, 0.0], [2.0, 0.0, 0.0]
    else:  # logits of p = -f: (0, -.25, 0), (-1, 0, 0)
        z0, z1 = [0.0, -0.25, 0.0], [-1.0, 0.0, 0.0]
    soft = (ce(P0, z0) + ce(P1, z1)) / 2
    atol = tolerance(torch.float32, 8, 4.0)[0]
    assert abs(float(m["smooth_l1"]) - sl1) <= atol
    assert abs(float(m["soft_ce"]) - soft) <= atol
    assert abs(float(loss.detach()) - (sl1 + 0.1 * soft)) <= atol
    assert int(m["count"]) == 2
    # draft top-1 vs the target's top-1 (0 and 1) and vs the data's tokens x_2 = 1, x_3 = 0
    want_top1 = [max(range(3), key=lambda i: z0[i]), max(range(3), key=lambda i: z1[i])]
    assert float(m["acc"]) == sum(a == b for a, b in zip(want_top1, [0, 1])) / 2
    assert float(m["acc_token"]) == sum(a == b for a, b in zip(want_top1, [1, 0])) / 2
    loss.backward()
    assert head.scale.grad is not None


def test_recipe_constants():
    assert learning_rate("eagle") == 3e-5 and learning_rate("fspad") == 5e-5
    assert learning_rate("griffin", 1) == 5e-5 and learning_rate("griffin", 2) == 3e-5
    assert RECIPES["griffin"]["topk_mask"] == 3 and RECIPES["eagle"]["noise"] == 0.1
    assert recipe_lr is learning_rate  # specdec.training's public name is the one function, no wrapper


# --------------------------------------------------------------------------------------------------
# Real heads against an independent computation (fp64)


class Target(torch.nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.nn.Embedding(V, H)
        self.lm_head = torch.nn.Linear(H, V, bias=False)
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(V, H, generator=g))
            self.lm_head.weight.copy_(3 * torch.randn(V, H, generator=g) / math.sqrt(H))


def make_head(kind, draft_vocab=None, seed=1):
    cfg = DraftConfig(
        kind=kind,
        vocab_size=V,
        hidden_size=H,
        intermediate_size=I,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        draft_vocab_size=draft_vocab,
    )
    torch.manual_seed(seed)
    head = build_draft_head(cfg, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / math.sqrt(p.shape[1]))
    if kind != "eagle":
        head.fc.backend = "torch"
    target = Target().double()
    head.bind_target(target.embed, target.lm_head)
    if draft_vocab is not None:
        head.set_draft_vocab(torch.sort(torch.randperm(V, generator=g)[:draft_vocab]).values)
    return head.eval(), target


def make_batch(B=2, T=11, seed=3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    lm = torch.zeros(B, T, dtype=torch.bool)
    lm[0, 3:] = True
    lm[1, 2:9] = True
    am = torch.ones(B, T, dtype=torch.bool)
    am[1, 9:] = False  # right padding
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64)
    return dict(input_ids=ids, loss_mask=lm, attention_mask=am, hidden=hidden)


def target_probs(head, f):
    with torch.no_grad():
        return torch.softmax(head.compute_logits(f).double(), -1)


def ref_pass_outputs(head, batch, stage, detach=True):
    """Brute force: pass k's output at t = the last output of forward_sequence over the chain of pairs its
    decode-time query sees: key s <= t from pass j = max(1, k - (t - s)), whose input feature is the target's
    f_s (j = 1, or s = 0) or the pass-(j-1) output r at s-1. Returns [(logits [B, T', V_d], hidden)] per pass."""
    ids, f, am = batch["input_ids"], batch["hidden"], batch["attention_mask"]
    B, T = ids.shape
    Tp = T - 1
    pos_all = (am.long().cumsum(1) - 1).clamp(min=0)
    outs = []
    first = head.forward_sequence(f[:, :Tp], ids[:, 1:], pos_all[:, :Tp], attention_mask=am[:, :Tp] & am[:, 1:])
    outs.append((first.logits, first.hidden))
    for k in range(2, stage + 1):
        logits = torch.zeros_like(first.logits)
        hidden = torch.zeros_like(first.hidden)
        rows_l, rows_h = [], []
        for b in range(B):
            ll, hh = [], []
            for t in range(Tp):
                feats = []
                for s in range(t + 1):
                    j = max(1, k - (t - s))
                    if j == 1 or s == 0:
                        feats.append(f[b, s])
                    else:
                        r = outs[j - 2][1][b, s - 1]
                        feats.append(r.detach() if detach else r)
                fs = torch.stack(feats)[None]
                real = (am[b, : t + 1] & am[b, 1 : t + 2])[None]
                o = head.forward_sequence(
                    fs, ids[b : b + 1, 1 : t + 2], pos_all[b : b + 1, : t + 1], attention_mask=real
                )
                ll.append(o.logits[0, -1])
                hh.append(o.hidden[0, -1])
            rows_l.append(torch.stack(ll))
            rows_h.append(torch.stack(hh))
        logits, hidden = torch.stack(rows_l), torch.stack(rows_h)
        outs.append((logits, hidden))
    return outs


def ref_losses(head, batch, stage, topk, check, detach=True):
    """(total loss, [per pass dict]) from ref_pass_outputs and the mask chain written out."""
    ab = align_batch(batch)
    outs = ref_pass_outputs(head, batch, stage, detach)
    B, Tp = ab.loss_mask.shape
    P = target_probs(head, ab.targets)
    nxt = ab.next_tokens
    chain = None
    total = 0.0
    res = []
    for logits, hidden in outs:
        mask = ab.loss_mask if chain is None else ab.loss_mask & chain
        n = int(mask.sum())
        sl1 = (F.smooth_l1_loss(hidden, ab.targets.double(), reduction="none").mean(-1) * mask).sum() / max(n, 1)
        logq = torch.log_softmax(logits.double(), -1)
        ce = (-(P * logq).sum(-1) * mask).sum() / max(n, 1)
        vals, idx = P.topk(10, -1)
        t10 = (-(vals * logq.gather(-1, idx)).sum(-1) * mask).sum() / max(n, 1)
        part = sl1 + 0.1 * ce + (0.5 * t10 if stage > 1 else 0.0)
        total = total + part
        res.append(dict(smooth_l1=sl1, soft_ce=ce, top10_ce=t10, loss=part, count=n))
        # the check: x_{t+2} within the top-k at (b, t), mapped to target ids
        cand = head.to_target_ids(logits.topk(topk, -1).indices)
        in_topk = (cand == nxt[..., None]).any(-1) & ab.valid
        a = in_topk if check == "same" else torch.cat((torch.zeros(B, 1, dtype=torch.bool), in_topk[:, :-1]), 1)
        if chain is None:
            chain = a
        else:
            chain = a & torch.cat((torch.zeros(B, 1, dtype=torch.bool), chain[:, :-1]), 1)
    return total, res


def assert_close64(actual, expected, what, reduction=1000):
    expected = torch.as_tensor(expected, dtype=torch.float64).detach()
    scale = max(1.0, float(expected.abs().max()))
    atol, rtol = tolerance(torch.float64, reduction, scale)
    torch.testing.assert_close(
        torch.as_tensor(actual).double(), expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}"
    )


@pytest.mark.parametrize("kind,draft_vocab", [("eagle", None), ("fspad", None), ("griffin", None), ("eagle", 24)])
def test_stage1_matches_reference(kind, draft_vocab):
    head, _ = make_head(kind, draft_vocab)
    batch = make_batch()
    loss, m = recipe_loss(kind, head, batch, noise=0.1)  # eval mode: no noise
    want, parts = ref_losses(head, batch, 1, 3, "same")
    assert int(m["count"]) == parts[0]["count"] == int(align_batch(batch).loss_mask.sum())
    red = head_reduction(head.config, 16)
    for name in ("smooth_l1", "soft_ce"):
        assert_close64(m[name], parts[0][name], f"{kind} {name}", red)
    assert_close64(loss.detach(), want, f"{kind} loss", red)
    assert "top10_ce" not in m


@pytest.mark.parametrize("check", ["same", "previous"])
@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.parametrize("draft_vocab", [None, 40])
def test_griffin_multipass_matches_brute_force(stage, check, draft_vocab):
    """Every pass's loss parts, mask counts and the summed gradient equal the brute-force decode-time view
    (fed features detached; earlier passes' keys recomputed with their gradients)."""
    head, _ = make_head("griffin", draft_vocab)
    batch = make_batch(T=12)
    topk = 30  # a random head: a wide check keeps some positions alive for a few passes
    loss, m = recipe_loss("griffin", head, batch, stage=stage, topk_mask=topk, check_position=check)
    want, parts = ref_losses(head, batch, stage, topk, check)
    red = head_reduction(head.config, 16) * 4
    for k, p in enumerate(parts, start=1):
        assert int(m[f"pass{k}/count"]) == p["count"], (k, int(m[f"pass{k}/count"]), p["count"])
        for name in ("smooth_l1", "soft_ce", "top10_ce", "loss"):
            assert_close64(m[f"pass{k}/{name}"], p[name], f"stage {stage} {check} pass {k} {name}", red)
    counts = [p["count"] for p in parts]
    assert counts[-1] > 0 and counts[-1] < counts[0], f"the test needs masks that keep some positions: {counts}"
    assert_close64(loss.detach(), want, f"stage {stage} total", red)
    params = [p for p in head.parameters()]
    ga = torch.autograd.grad(loss, params)
    gb = torch.autograd.grad(want, params)
    for (name, _), a, b in zip(head.named_parameters(), ga, gb):
        assert_close64(a, b, f"stage {stage} {check} grad {name}", red * 64)


def test_griffin_fed_features_are_detached():
    """The gradient of the stage-2 loss is that of the brute force with DETACHED fed features, and differs
    from the one where pass 2's loss also flows back into pass 1's r."""
    head, _ = make_head("griffin")
    batch = make_batch(T=10)
    loss, _ = recipe_loss("griffin", head, batch, stage=2, topk_mask=20)
    w = head.layers[0].mlp.down_proj.weight  # produces r: the only path a fed feature would add
    g = torch.autograd.grad(loss, w)[0]
    g_det = torch.autograd.grad(ref_losses(head, batch, 2, 20, "same", detach=True)[0], w)[0]
    g_att = torch.autograd.grad(ref_losses(head, batch, 2, 20, "same", detach=False)[0], w)[0]
    red = head_reduction(head.config, 16) * 256
    assert_close64(g, g_det, "grad with detached features", red)
    assert float((g_att - g_det).abs().max()) > 1e3 * float((g - g_det).abs().max()) + 1e-9


def test_griffin_pass1_is_the_fspad_loss():
    """Stage 2's first pass: the stage-1 (FSPAD) parts on the same mask, plus 0.5 x top-10 distillation."""
    head, _ = make_head("griffin")
    batch = make_batch()
    l1, m1 = recipe_loss("griffin", head, batch, stage=1)
    _, m2 = recipe_loss("griffin", head, batch, stage=2)
    for name in ("smooth_l1", "soft_ce", "count"):
        assert torch.equal(m2[f"pass1/{name}"], m1[name]), name
    assert_close64(m2["pass1/loss"], l1.detach() + 0.5 * m2["pass1/top10_ce"], "pass-1 loss")


def test_noise_only_in_training():
    head, _ = make_head("eagle")
    batch = make_batch()
    clean, _ = recipe_loss("eagle", head, batch, noise=0.0)
    assert torch.equal(recipe_loss("eagle", head, batch, noise=0.1)[0], clean)  # eval: no noise
    head.train()
    noisy = [
        recipe_loss("eagle", head, batch, noise=0.1, generator=torch.Generator().manual_seed(5))[0] for _ in range(2)
    ]
    assert torch.equal(noisy[0], noisy[1]) and not torch.equal(noisy[0], clean)
    assert torch.equal(recipe_loss("eagle", head, batch, noise=0.0)[0], clean)


def test_recipe_loss_argument_checks():
    head, _ = make_head("fspad")
    batch = make_batch()
    with pytest.raises(ValueError, match="GRIFFIN"):
        recipe_loss("fspad", head, batch, stage=2)
    with pytest.raises(ValueError, match="head"):
        recipe_loss("eagle", head, batch)
    g, _ = make_head("griffin")
    with pytest.raises(ValueError, match="check_position"):
        recipe_loss("griffin", g, batch, stage=2, check_position="next")


# --------------------------------------------------------------------------------------------------
# GRIFFIN's masks on hand-built examples


def test_topk_chain_hand_built():
    """C_1 = A_1, C_k[t] = A_k[t] & C_{k-1}[t-1]; A_k[t] = in_topk_k[t] ("same") or in_topk_k[t-1]."""
    in1 = torch.tensor([[1, 1, 0, 1, 1, 1]], dtype=torch.bool)
    in2 = torch.tensor([[1, 0, 1, 1, 1, 1]], dtype=torch.bool)
    base = torch.tensor([[0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    c1 = topk_chain(None, in1, "same")
    c2 = topk_chain(c1, in2, "same")
    assert_equal(c1, in1)
    assert_equal(c2, torch.tensor([[0, 0, 1, 0, 1, 1]], dtype=torch.bool))
    assert_equal(base & c2, torch.tensor([[0, 0, 1, 0, 1, 1]], dtype=torch.bool))  # the mask of pass 3
    p1 = topk_chain(None, in1, "previous")
    p2 = topk_chain(p1, in2, "previous")
    assert_equal(p1, torch.tensor([[0, 1, 1, 0, 1, 1]], dtype=torch.bool))
    assert_equal(p2, torch.tensor([[0, 0, 0, 1, 0, 1]], dtype=torch.bool))
    assert_equal(base & p1, torch.tensor([[0, 1, 1, 0, 1, 1]], dtype=torch.bool))  # the mask of pass 2


def test_multipass_mask_hand_built():
    pm = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    assert_equal(multipass_mask(pm, 1)[0], torch.ones(4, 4, dtype=torch.bool).tril())
    rows2 = ["0000 1000", "1000 0100", "1100 0010", "1110 0001"]
    rows3 = ["0000 0000 1000", "0000 1000 0100", "1000 0100 0010", "1100 0010 0001"]
    for k, rows in ((2, rows2), (3, rows3)):
        want = torch.tensor([[c == "1" for c in r.replace(" ", "")] for r in rows])
        got = multipass_mask(pm, k)
        assert got.shape == (2, 4, 4 * k)
        assert_equal(got[0], want)
        padded = want.clone()
        padded[:, 3::4] = False  # key position 3 is padding in row 1 ...
        padded[3, (k - 1) * 4 + 3] = True  # ... but a query always sees its own key
        assert_equal(got[1], padded)
