"""Training losses of the EAGLE, FSPAD and GRIFFIN recipes (docs/methods.md).

Alignment (the data of one sequence: x_0 .. x_{T-1} = input_ids, f_t = hidden[t] the target's last hidden
state at t, loss_mask[t] True iff x_t is an assistant (response) token, attention_mask[t] True iff x_t is
real, not padding):

    draft position t (t = 0 .. T-2) is the pair (f_t, x_{t+1}) at RoPE position t (counted over real tokens);
    it regresses f_{t+1} and predicts the target's distribution P_t = softmax(LMHead(f_{t+1})), i.e. the
    token x_{t+2}. It is a LOSS position iff x_{t+2} exists and is a response token:
        mask[t] = loss_mask[t + 2] & attention_mask[t] & attention_mask[t + 1] & attention_mask[t + 2]
    (so t <= T-3; with right padding this is loss_mask[t + 2] on the real part).

    e.g. T = 6, loss_mask = [0, 0, 0, 1, 1, 1] (a 3-token prompt, a 3-token answer): pairs t = 0..4 and
    mask = [0, 1, 1, 1, 0]: pair 1 = (f_1, x_2) predicts x_3, the first answer token; pair 4 has no x_6.

Losses, each averaged over the loss positions of its pass (sum / max(count, 1)); fp32 whatever the head's
dtype (fp64 for an fp64 head):
    SmoothL1 (beta 1) between the fed-back feature (o for EAGLE, r for FSPAD/GRIFFIN) and f_{t+1}, averaged
        over the H channels;
    soft CE  -sum_x P_t(x) log Q_t(x), Q_t = softmax of the draft logits (of o, or of p);
    top-10 CE (GRIFFIN stages >= 2)  -sum_{x in top10(P_t)} P_t(x) log Q_t(x): P_t NOT renormalised over
        the 10 tokens (docs/methods.md: "sum over the target's top-10 tokens of p_target * log q"; the
        reference code gathers softmax(LMHead(f)) * log q at the top-10 indices the same way).
With a reduced draft vocabulary (config.draft_vocab_size) P_t and Q_t live on the V_d draft tokens: P_t is
the target's distribution restricted to them and renormalised (the same restricted lm_head rows applied to
f_{t+1}, then softmax).

    EAGLE, FSPAD, GRIFFIN stage 1:  1.0 * SmoothL1 + 0.1 * soft CE
    GRIFFIN stage j >= 2:  j passes, loss = sum over passes of (1.0 * SmoothL1 + 0.1 * soft CE + 0.5 * top-10)

Input noise: U(-noise, noise) added to the target features fed to the draft (not to the regression or
soft-CE targets), only while head.training.

GRIFFIN's token-alignable training (stage j): pass 1 is the stage-1 forward. Pass k >= 2 feeds at position
t the DETACHED fed-back feature r of pass k-1 at position t-1 (position 0 keeps the target feature f_0),
the input tokens stay the ground truth, and attention sees the draft's decode-time view: query t of pass k
sees key position s <= t of pass max(1, k - (t - s)), i.e. the target's pairs up to t-k+1 and the draft's
own pairs of passes 2..k at positions t-k+2..t (multipass_mask). Keys/values of earlier passes are reused
(TrainKV) with their graphs: the gradient of pass k reaches the parameters through them, as the reference
code (which recomputes them with gradients) does; it never reaches an earlier pass's r through the fed
features. Gradients of all passes are summed (one backward of the returned loss).

Loss masks across passes (topk_mask = k_m, default 3): in_topk_k[t] = x_{t+2} is among the draft's top-k_m
tokens at position t in pass k (mapped to target ids). The chain
    A_k[t] = in_topk_k[t]      (check_position="same": the reference code's reading)
             in_topk_k[t - 1]  (check_position="previous": the token the pass-(k+1) input at t depends on)
    C_1 = A_1,   C_k[t] = A_k[t] & C_{k-1}[t - 1]
    mask of pass k+1 = mask & C_k
multiplies the checks along the path that feeds position t of pass k+1 (pass k at t-1 fed it, pass k-1 at
t-2 fed that, ...), as the reference code does (it shifts the previous chain by one position per pass).
With "previous" C_k[t] is exactly "every draft token on the decode-time path to this query was within the
top-k_m", with "same" it additionally requires the current pass's own prediction at t.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

__all__ = [
    "RECIPES",
    "AlignedBatch",
    "align_batch",
    "learning_rate",
    "multipass_mask",
    "recipe_loss",
    "soft_cross_entropy",
    "topk_chain",
    "topk_cross_entropy",
]

# Per-recipe constants (docs/methods.md; the reference trainers: AdamW betas (0.9, 0.95), 2000 linear warm-up
# steps, gradient clipping 0.5 -- by VALUE in the reference code, clip_grad_value_).
_COMMON = dict(smooth_l1=1.0, soft_ce=0.1, top10_ce=0.0, noise=0.1, betas=(0.9, 0.95), grad_clip=0.5, warmup_steps=2000)
RECIPES = {
    "eagle": dict(_COMMON, lr=3e-5, max_stage=1),
    "fspad": dict(_COMMON, lr=5e-5, max_stage=1),
    # stage 1 = FSPAD's loss at lr 5e-5; stages >= 2: lr 3e-5, top-10 distillation 0.5, top-3 masks
    "griffin": dict(
        _COMMON,
        lr=5e-5,
        lr_later_stages=3e-5,
        top10_ce_later_stages=0.5,
        topk_mask=3,
        check_position="same",
        stages=3,
        max_stage=None,
    ),
}

CHECK_POSITIONS = ("same", "previous")


def learning_rate(kind: str, stage: int = 1) -> float:
    """The recipe's peak learning rate: EAGLE 3e-5, FSPAD 5e-5, GRIFFIN 5e-5 (stage 1) / 3e-5 (later)."""
    r = RECIPES[kind]
    return r["lr"] if stage <= 1 else r.get("lr_later_stages", r["lr"])


class AlignedBatch(NamedTuple):
    """A batch laid out as draft positions t = 0 .. T-2 (T' = T - 1 columns; see the module docstring).

    features [B, T', H] f_t (the batch's dtype); tokens int64 [B, T'] x_{t+1}; targets [B, T', H] f_{t+1};
    next_tokens int64 [B, T'] x_{t+2} (0 where there is none); pair_mask bool [B, T'] (x_t and x_{t+1} real:
    the pair exists, visible as a key); valid bool [B, T'] (pair real and x_{t+2} real); loss_mask bool
    [B, T'] (valid and x_{t+2} a response token); position_ids int64 [B, T'].
    """

    features: torch.Tensor
    tokens: torch.Tensor
    targets: torch.Tensor
    next_tokens: torch.Tensor
    pair_mask: torch.Tensor
    valid: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor


def align_batch(batch: dict) -> AlignedBatch:
    """batch = dict(input_ids int64 [B, T], loss_mask bool [B, T] (True on assistant tokens),
    attention_mask bool [B, T] (optional, default all real), hidden float [B, T, H]) -> AlignedBatch."""
    ids, hidden = batch["input_ids"], batch["hidden"]
    if ids.dim() != 2 or ids.dtype != torch.int64:
        raise ValueError(f"batch['input_ids']: expected int64 [B, T], got {ids.dtype} {tuple(ids.shape)}")
    B, T = ids.shape
    if T < 2:
        raise ValueError(f"batch: sequences of length {T}; a draft position needs at least 2 tokens")
    if hidden.dim() != 3 or hidden.shape[:2] != (B, T) or not hidden.dtype.is_floating_point:
        raise ValueError(f"batch['hidden']: expected float [B={B}, T={T}, H], got {hidden.dtype} {tuple(hidden.shape)}")
    lm = batch["loss_mask"]
    if tuple(lm.shape) != (B, T):
        raise ValueError(f"batch['loss_mask']: expected [B={B}, T={T}], got {tuple(lm.shape)}")
    lm = lm.bool()
    am = batch.get("attention_mask")
    if am is None:
        am = torch.ones(B, T, dtype=torch.bool, device=ids.device)
    elif tuple(am.shape) != (B, T):
        raise ValueError(f"batch['attention_mask']: expected [B={B}, T={T}], got {tuple(am.shape)}")
    am = am.bool()
    Tp = T - 1
    pair = am[:, :Tp] & am[:, 1:]
    zero_col = torch.zeros(B, 1, dtype=torch.bool, device=ids.device)
    nxt_real = torch.cat((am[:, 2:], zero_col), dim=1)
    valid = pair & nxt_real
    loss = valid & torch.cat((lm[:, 2:], zero_col), dim=1)
    nxt = torch.cat((ids[:, 2:], torch.zeros(B, 1, dtype=ids.dtype, device=ids.device)), dim=1)
    pos = (am.to(torch.int64).cumsum(1) - 1).clamp(min=0)[:, :Tp]
    return AlignedBatch(hidden[:, :Tp], ids[:, 1:], hidden[:, 1:], nxt, pair, valid, loss, pos)


def multipass_mask(pair_mask: torch.Tensor, passes: int) -> torch.Tensor:
    """The attention mask of GRIFFIN's pass `passes` (= k >= 1): bool [B, T, k T] over the keys
    [pass 1 (T); pass 2 (T); ...; pass k (T)].

    Query t sees key position s <= t of pass max(1, k - (t - s)) (the draft's decode-time view: target
    pairs up to t-k+1, the draft's own pairs after), where the key's pair is real (pair_mask [B, T] bool),
    and always its own key (pass k, position t), so no row is empty. k = 1 is the causal padding mask.
    """
    B, T = pair_mask.shape
    dev = pair_mask.device
    d = torch.arange(T, device=dev)[:, None] - torch.arange(T, device=dev)[None, :]  # t - s
    blocks = [d >= passes - 1] + [d == passes - j for j in range(2, passes + 1)]
    m = torch.cat(blocks, dim=1)[None] & pair_mask.bool().repeat(1, passes)[:, None, :]
    own = torch.zeros(T, passes * T, dtype=torch.bool, device=dev)
    own[torch.arange(T, device=dev), (passes - 1) * T + torch.arange(T, device=dev)] = True
    return m | own[None]


def topk_chain(prev_chain: Optional[torch.Tensor], in_topk: torch.Tensor, check_position: str = "same") -> torch.Tensor:
    """One step of GRIFFIN's loss-mask chain (module docstring): C_k from C_{k-1} (None for k = 1) and
    in_topk_k bool [B, T] (x_{t+2} within the draft's top-k at position t in pass k). The next pass's loss
    mask is loss_mask & C_k."""
    if check_position not in CHECK_POSITIONS:
        raise ValueError(f"check_position: expected one of {CHECK_POSITIONS}, got {check_position!r}")
    a = in_topk.bool()
    if check_position == "previous":
        a = _shift_right(a)
    return a if prev_chain is None else a & _shift_right(prev_chain.bool())


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """-sum_x P(x) log softmax(logits)(x) per row, fp32: [M, V] x [M, V] -> [M]."""
    return -(_wide(target_probs) * torch.log_softmax(_wide(logits), dim=-1)).sum(-1)


def topk_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor, k: int = 10) -> torch.Tensor:
    """GRIFFIN's top-k distillation: -sum over the k most probable tokens x of P of P(x) log Q(x) (P not
    renormalised over them), fp32: [M, V] x [M, V] -> [M]; k is capped at V."""
    p = _wide(target_probs)
    vals, idx = torch.topk(p, min(k, p.shape[-1]), dim=-1)
    return -(vals * torch.log_softmax(_wide(logits), dim=-1).gather(-1, idx)).sum(-1)


def recipe_loss(
    kind: str,
    head,
    batch: dict,
    *,
    stage: int = 1,
    topk_mask: int = 3,
    check_position: str = "same",
    noise: float = 0.1,
    generator: Optional[torch.Generator] = None,
    weights: Optional[dict] = None,
) -> tuple:
    """The training loss of recipe `kind` ("eagle" | "fspad" | "griffin", = head.kind) on one batch.

    Args:
        head: a bound DraftHead (full or reduced draft vocabulary).
        batch: dict(input_ids int64 [B, T], loss_mask bool [B, T] (True on assistant tokens), attention_mask
            bool [B, T] (optional), hidden [B, T, H] the target's last hidden states, any float dtype).
        stage: GRIFFIN's stage j (j passes; j >= 2 only for "griffin").
        topk_mask: k of GRIFFIN's top-k loss masks; check_position: "same" | "previous" (module docstring).
        noise: amplitude of the uniform input noise, applied only while head.training (0 = none).
        generator: torch.Generator on the batch's device for the noise (reproducible runs).
        weights: overrides of the loss weights {"smooth_l1", "soft_ce", "top10_ce"} (defaults: RECIPES:
            1.0, 0.1, and top-10 0.5 for GRIFFIN stages >= 2, else 0).

    Returns:
        (loss, metrics): loss a 0-dim fp32 tensor with gradient (sum over passes); metrics a dict of
        detached 0-dim tensors (call float() / int() when logging): per pass k = 1..stage
        "pass{k}/smooth_l1", "pass{k}/soft_ce", "pass{k}/top10_ce" (stages >= 2), "pass{k}/loss",
        "pass{k}/acc" (draft top-1 == the target's top-1 within the draft vocabulary, on the pass's loss
        positions), "pass{k}/acc_token" (draft top-1 == the data's token x_{t+2}), "pass{k}/count" (int64
        loss positions); and the same names without the prefix for pass 1, plus "loss".
    """
    _check_recipe_args(kind, head, stage, topk_mask, check_position)
    w = {"smooth_l1": 1.0, "soft_ce": 0.1, "top10_ce": 0.5 if stage > 1 else 0.0}
    w.update(weights or {})
    ab = align_batch(batch)
    feats0 = _draft_inputs(ab.features, head, noise, generator)
    ref = _reference(head, ab)

    loss = None
    metrics: dict = {}
    chain = None  # C_{k-1}
    kv = None
    feats = feats0
    for k in range(1, stage + 1):
        last = k == stage
        loss_k = ab.loss_mask if chain is None else ab.loss_mask & chain
        need = torch.zeros_like(ab.loss_mask) if last else _checks_needed(ab, chain, k, stage, check_position)
        idx = (loss_k | need).reshape(-1).nonzero().squeeze(1)
        if k > 1 and idx.numel() == 0:  # no position survives: this and the later passes contribute 0
            _zero_passes(metrics, k, stage, ab.features.device)
            break
        out = head.forward_train(
            feats,
            ab.tokens,
            attention_mask=ab.pair_mask if k == 1 else multipass_mask(ab.pair_mask, k),
            position_ids=ab.position_ids,
            logits_index=idx,
            past_kv=None if k == 1 else kv,
            return_kv=not last,
        )
        total, parts = _pass_loss(head, out, idx, loss_k, ref, w, stage)
        loss = total if loss is None else loss + total
        metrics.update((f"pass{k}/{name}", v) for name, v in parts.items())
        if last:
            break
        chain = topk_chain(chain, _in_topk(head, out, idx, ref, ab.valid, need, topk_mask), check_position)
        kv = out.kv
        # pass k+1: position t is fed the detached r of pass k at t-1 (position 0 keeps the target feature)
        feats = torch.cat((feats0[:, :1], out.hidden[:, :-1].detach().to(feats0.dtype)), dim=1)
    for name in ("smooth_l1", "soft_ce", "top10_ce", "loss", "acc", "acc_token", "count"):
        if f"pass1/{name}" in metrics:
            metrics[name] = metrics[f"pass1/{name}"]
    metrics["loss"] = loss.detach()
    return loss, metrics


def _check_recipe_args(kind: str, head, stage, topk_mask, check_position) -> None:
    """Raise ValueError naming the first of recipe_loss's arguments that is not valid."""
    from specdec.models import KINDS

    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    if getattr(head, "kind", None) != kind:
        raise ValueError(f"recipe_loss: the {kind} recipe got a {getattr(head, 'kind', type(head).__name__)} head")
    if not isinstance(stage, int) or isinstance(stage, bool) or stage < 1:
        raise ValueError(f"stage: expected an int >= 1, got {stage!r}")
    if stage > 1 and kind != "griffin":
        raise ValueError(f"stage: {stage} > 1 is GRIFFIN's token-alignable training; the {kind} recipe has one stage")
    if not isinstance(topk_mask, int) or isinstance(topk_mask, bool) or topk_mask < 1:
        raise ValueError(f"topk_mask: expected an int >= 1, got {topk_mask!r}")
    if check_position not in CHECK_POSITIONS:
        raise ValueError(f"check_position: expected one of {CHECK_POSITIONS}, got {check_position!r}")


def _draft_inputs(features: torch.Tensor, head, noise: float, generator) -> torch.Tensor:
    """The target features fed to the draft in the head's dtype, plus U(-noise, noise) while training."""
    feats = features.to(head.dtype)
    if noise and head.training:
        u = torch.rand(feats.shape, generator=generator, device=features.device, dtype=torch.float32)
        feats = (features.float() + (2.0 * u - 1.0) * noise).to(head.dtype)
    return feats


class _Reference(NamedTuple):
    """What every pass is scored against, over the B*T draft positions: targets [B*T, H] f_{t+1};
    next_tokens int64 [B*T] x_{t+2}; row_of int64 [B*T] the row of probs / top1 of a loss position (-1
    elsewhere); probs [M, V_d] the target's (restricted, renormalised) distribution at the M loss
    positions; top1 int64 [M] its argmax (draft ids)."""

    targets: torch.Tensor
    next_tokens: torch.Tensor
    row_of: torch.Tensor
    probs: torch.Tensor
    top1: torch.Tensor


def _reference(head, ab: AlignedBatch) -> _Reference:
    B, T, H = ab.features.shape
    dev = ab.features.device
    targets = ab.targets.reshape(B * T, H)
    base_idx = ab.loss_mask.reshape(-1).nonzero().squeeze(1)
    row_of = torch.full((B * T,), -1, dtype=torch.int64, device=dev)
    row_of[base_idx] = torch.arange(base_idx.numel(), device=dev)
    with torch.no_grad():
        probs = torch.softmax(_wide(head.compute_logits(targets.index_select(0, base_idx))), dim=-1)
        top1 = probs.argmax(-1)
    return _Reference(targets, ab.next_tokens.reshape(-1), row_of, probs, top1)


def _checks_needed(ab: AlignedBatch, chain: Optional[torch.Tensor], k: int, stage: int, check_position: str):
    """bool [B, T]: the positions of pass k (< stage) whose top-k check a later pass reads (module
    docstring), in pass-k columns."""
    base = ab.loss_mask
    alive = torch.ones_like(base) if chain is None else _shift_right(chain)
    window = base.clone()
    for m in range(1, stage - k):
        window |= _shift_left(base, m)
    need = alive & window
    if check_position == "previous":
        need = _shift_left(need)
    return need & ab.valid


def _zero_passes(metrics: dict, first: int, stage: int, device) -> None:
    """Zero metrics for passes first..stage (no position survives their masks)."""
    zero = torch.zeros((), device=device)
    for k in range(first, stage + 1):
        for name in ("smooth_l1", "soft_ce", "top10_ce", "loss", "acc", "acc_token"):
            metrics[f"pass{k}/{name}"] = zero
        metrics[f"pass{k}/count"] = torch.tensor(0, dtype=torch.int64)


def _pass_loss(head, out, idx: torch.Tensor, loss_k: torch.Tensor, ref: _Reference, w: dict, stage: int) -> tuple:
    """(total, metrics) of one pass: the weighted loss over its loss positions `loss_k` (out's logits are
    those of the positions `idx`), and its detached parts, "loss", "acc", "acc_token", "count"."""
    is_loss = loss_k.reshape(-1).index_select(0, idx)
    lidx = idx[is_loss]
    count = lidx.numel()
    denom = max(count, 1)
    pred = _wide(out.hidden.reshape(ref.targets.shape).index_select(0, lidx))
    tgt = ref.targets.index_select(0, lidx).to(pred.dtype)
    sl1 = F.smooth_l1_loss(pred, tgt, reduction="none").mean(-1).sum() / denom
    logits = out.logits[is_loss]
    rows = ref.row_of.index_select(0, lidx)
    probs = ref.probs.index_select(0, rows)
    ce = soft_cross_entropy(logits, probs).sum() / denom
    parts = {"smooth_l1": sl1, "soft_ce": ce}
    total = w["smooth_l1"] * sl1 + w["soft_ce"] * ce
    if stage > 1 or w["top10_ce"]:
        t10 = topk_cross_entropy(logits, probs, 10).sum() / denom
        parts["top10_ce"] = t10
        total = total + w["top10_ce"] * t10
    with torch.no_grad():
        top1 = logits.argmax(-1)
        acc = (top1 == ref.top1.index_select(0, rows)).sum().float() / denom
        acc_tok = (head.to_target_ids(top1) == ref.next_tokens.index_select(0, lidx)).sum().float() / denom
    metrics = {name: v.detach() for name, v in parts.items()}
    metrics.update(loss=total.detach(), acc=acc, acc_token=acc_tok, count=torch.tensor(count, dtype=torch.int64))
    return total, metrics


@torch.no_grad()
def _in_topk(head, out, idx, ref: _Reference, valid, need, topk_mask: int) -> torch.Tensor:
    """in_topk_k bool [B, T] of one pass: x_{t+2} among the draft's top-k_m tokens at position t (only
    the checks a later pass reads, `need`, whichever other positions had logits)."""
    B, T = need.shape
    in_topk = torch.zeros(B * T, dtype=torch.bool, device=need.device)
    kk = min(topk_mask, out.logits.shape[-1])
    cand = head.to_target_ids(torch.topk(out.logits, kk, dim=-1).indices)  # [M, kk] target ids
    in_topk[idx] = (cand == ref.next_tokens.index_select(0, idx)[:, None]).any(-1) & valid.reshape(-1)[idx]
    return in_topk.view(B, T) & need


def _wide(x: torch.Tensor) -> torch.Tensor:
    """x in fp32, or fp64 when it is fp64 (the losses' accumulation dtype)."""
    return x if x.dtype == torch.float64 else x.float()


def _shift_right(x: torch.Tensor, n: int = 1) -> torch.Tensor:
    """y[:, t] = x[:, t - n], False / 0 for t < n."""
    y = torch.zeros_like(x)
    if n < x.shape[1]:
        y[:, n:] = x[:, : x.shape[1] - n]
    return y


def _shift_left(x: torch.Tensor, n: int = 1) -> torch.Tensor:
    """y[:, t] = x[:, t + n], False / 0 past the end."""
    y = torch.zeros_like(x)
    if n < x.shape[1]:
        y[:, : x.shape[1] - n] = x[:, n:]
    return y
