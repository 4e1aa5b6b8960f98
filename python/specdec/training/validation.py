"""Validation of a draft head on held-out sequences: loss and the per-step acceptance rates.

Notation (specdec.training.losses): a sequence holds tokens x_0..x_{T-1} and the target's features
f_0..f_{T-1} (f_t: last hidden state after reading x_0..x_t). Draft pair p = (feature, x_{p+1}) sits at RoPE
position p and predicts the token after x_{p+1}; g_p = argmax LMHead(f_{p+1}) is the target's greedy token
there (what greedy verification accepts).

Draft steps (greedy chain drafting, as the draft runs at decode time):
  step 1 at anchor t: pair t = (f_t, x_{t+1}) -> fed-back feature h_1(t) and top-1 token y_1(t);
  step k > 1:         pair t+k-1 = (h_{k-1}(t), x_{t+k}) -> h_k(t), y_k(t),
      i.e. the draft's own output feature of step k-1 (at the previous position) is fed back, while the
      attention sees the target's features for positions <= t and the draft's own step-2..k inputs for
      positions t+1..t+k-1 (the draft cache at decode time). All anchors of step k run in one forward
      pass (head.forward_train over the keys of steps 1..k, losses.multipass_mask: GRIFFIN's view).
  Step k is correct when y_k(t) == g_{t+k-1} (a reduced draft vocabulary is mapped back to target ids; a
  token outside it is never correct).

Conditioning. Anchor t counts for step k when x_{t+2}, ..., x_{t+k+1} exist and are response tokens
(loss_mask), and when the data follow the greedy path up to the step: x_{t+i+1} == g_{t+i-1} for i < k (the
draft is fed the data's tokens, which are what greedy decoding would feed it only there; with greedy
self-distilled responses this always holds). The acceptance rate of step k (EAGLE's "acc" and the papers'
per-step "k-alpha") is conditional on all earlier steps being correct:

    acc_k = #{t counted for k: steps 1..k correct} / #{t counted for k: steps 1..k-1 correct}

so acc_1 is the draft's top-1 agreement with the target at target features (the loss's "acc"), and acc_k
the probability that step k is accepted given that everything before it was. tau_chain = 1 + sum_k
prod_{i<=k} acc_i is the expected number of tokens per verification of one greedy chain of that depth
(bonus token included; a tree accepts more). The validation loss is the recipe's loss without input
noise, averaged over its loss positions (pass 1's count).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch


def _target_greedy(head, targets: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """argmax over the target's full vocabulary of lm_head(targets) [M, H] -> int64 [M] (chunked)."""
    lm = head.lm_head
    w = getattr(lm, "weight", None)
    out = []
    for i in range(0, targets.shape[0], chunk):
        x = targets[i : i + chunk]
        if isinstance(w, torch.Tensor):
            x = x.to(w.dtype)
        out.append(lm(x).float().argmax(-1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64, device=targets.device)


@torch.no_grad()
def acceptance_counts(head, batch: dict, steps: int = 5) -> torch.Tensor:
    """int64 [2, steps]: row 0 = the denominators of acc_k, row 1 = the numerators (module docstring)."""
    from .losses import align_batch, multipass_mask

    ab = align_batch(batch)
    B, T, H = ab.features.shape
    dev = ab.features.device
    out = torch.zeros(2, steps, dtype=torch.int64, device=dev)
    lm = ab.loss_mask  # pair p: x_{p+2} exists and is a response token
    sel = lm.reshape(-1).nonzero().squeeze(1)
    greedy = torch.full((B * T,), -1, dtype=torch.int64, device=dev)
    greedy[sel] = _target_greedy(head, ab.targets.reshape(B * T, H).index_select(0, sel))
    greedy = greedy.view(B, T)
    follows = (ab.next_tokens == greedy) & lm  # the data's next token is the greedy one
    feats0 = ab.features.to(head.dtype)
    feats, kv = feats0, None
    preds = []
    for k in range(1, steps + 1):
        mask = ab.pair_mask if k == 1 else multipass_mask(ab.pair_mask, k)
        o = head.forward_train(
            feats,
            ab.tokens,
            attention_mask=mask,
            position_ids=ab.position_ids,
            logits_index=sel,
            past_kv=kv,
            return_kv=k < steps,
        )
        pred = torch.full((B * T,), -2, dtype=torch.int64, device=dev)
        pred[sel] = head.to_target_ids(o.logits.argmax(-1))
        preds.append(pred.view(B, T))
        if k < steps:
            kv = o.kv
            feats = torch.cat((feats0[:, :1], o.hidden[:, :-1].to(feats0.dtype)), dim=1)
    # anchor t (column t): step k reads pair t + k - 1
    alive = torch.ones(B, T, dtype=torch.bool, device=dev)
    for k in range(1, steps + 1):
        s = k - 1
        if s >= T:
            break
        cols = T - s
        col_lm = torch.zeros(B, T, dtype=torch.bool, device=dev)
        col_ok = torch.zeros(B, T, dtype=torch.bool, device=dev)
        col_follow = torch.zeros(B, T, dtype=torch.bool, device=dev)
        col_lm[:, :cols] = lm[:, s:]
        col_ok[:, :cols] = preds[k - 1][:, s:] == greedy[:, s:]
        col_follow[:, :cols] = follows[:, s:]
        den = alive & col_lm
        num = den & col_ok
        out[0, k - 1] = den.sum()
        out[1, k - 1] = num.sum()
        alive = num & col_follow
    return out


def summarize(counts: torch.Tensor) -> dict:
    """{"acc_k", "n_k" for k = 1..steps, "tau_chain"} from acceptance_counts summed over the data."""
    counts = counts.to("cpu", torch.float64)
    res, prod, tau = {}, 1.0, 1.0
    for k in range(counts.shape[1]):
        den, num = counts[0, k].item(), counts[1, k].item()
        acc = num / den if den > 0 else float("nan")
        res[f"acc_{k + 1}"] = acc
        res[f"n_{k + 1}"] = int(den)
        if not math.isnan(acc):
            prod *= acc
            tau += prod
    res["tau_chain"] = tau
    return res


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def validate(
    head,
    batches,
    loss_fn: Callable,
    steps: int = 5,
    autocast=None,
    all_reduce: Optional[Callable] = None,
) -> dict:
    """Validation loss and acceptance rates over `batches` (an iterable of batches already on the head's
    device with features). loss_fn(batch) -> (loss, count) with count the positions the loss averages
    over. all_reduce(tensor) sums across processes (distributed runs). Returns summarize(...) plus
    "val_loss"."""
    was_training = head.training
    head.eval()
    dev = head.device
    acc = torch.zeros(2, steps, dtype=torch.int64, device=dev)
    sums = torch.zeros(2, dtype=torch.float64, device=dev)
    try:
        with torch.no_grad():
            for batch in batches:
                ctx = autocast if autocast is not None else _null()
                with ctx:
                    loss, count = loss_fn(batch)
                count = float(count)
                sums[0] += float(loss) * count
                sums[1] += count
                with ctx:
                    acc += acceptance_counts(head, batch, steps)
    finally:
        head.train(was_training)
    if all_reduce is not None:
        all_reduce(acc)
        all_reduce(sums)
    res = {"val_loss": (sums[0] / sums[1]).item() if sums[1] > 0 else float("nan")}
    res.update(summarize(acc))
    return res
