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
(bonus token included; a tree accepts more).

Top-k coverage (what a tree's k children per node catch): over the same anchors as acc_k's denominator,

    cov_k[r - 1] = #{t counted for k: steps 1..k-1 correct, the target's token among the draft's r best at
                   step k} / #{t counted for k: steps 1..k-1 correct}          (r = 1..topk; cov_k[0] = acc_k)

The tree budget (specdec.decoding.budget.expected_tokens) reads the rank-r child's acceptance at depth k
as cov_k[r - 1] - cov_k[r - 2]. That is greedy verification's. Sampling verification (temperature T > 0)
accepts one of a node's deterministic children x_1, x_2, ... with probability p_T(x_1) + p_T(x_2) + ... (the
target's probabilities at temperature T: each rejection removes the rejected child's mass and renormalises),
so its coverage is the target mass the draft's r best hold, over the same anchors:

    scov_k[r - 1] = sum over t counted for k with steps 1..k-1 correct of sum_{i <= r} p_T(draft's i-th best
                    at step k) / #{t counted for k: steps 1..k-1 correct}

(T = SAMPLED_TEMPERATURE; p_T looked up among the target's TARGET_TOP most likely tokens, 0 beyond them, so
scov is a lower bound short by at most the mass outside them). On a chatty small target it is well below
cov: at T = 1 the target spreads its mass, and a tree of few children catches less of it than of the
greedy token. The validation loss is the recipe's loss without input
noise, averaged over its loss positions (pass 1's count).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ..files import atomic_write_text

# Ranks of the top-k coverage validation counts: the widest top_k of the tree budget's default grid.
TOPK = 10
# The temperature of the sampled coverage scov_k, and how many of the target's most likely tokens it looks the
# draft's tokens up among (module docstring).
SAMPLED_TEMPERATURE = 1.0
TARGET_TOP = 64


def _target_tokens(head, targets: torch.Tensor, sampled: bool, chunk: int = 1024) -> tuple:
    """From lm_head(targets) [M, H] over the target's full vocabulary (chunked): the argmax int64 [M], and
    with `sampled` the TARGET_TOP most likely tokens int64 [M, TARGET_TOP] and their float64 probabilities at
    SAMPLED_TEMPERATURE (else None, None)."""
    lm = head.lm_head
    w = getattr(lm, "weight", None)
    greedy, ids, probs = [], [], []
    for i in range(0, targets.shape[0], chunk):
        x = targets[i : i + chunk]
        if isinstance(w, torch.Tensor):
            x = x.to(w.dtype)
        logits = lm(x).float()
        greedy.append(logits.argmax(-1))
        if sampled:
            p, t = torch.softmax(logits / SAMPLED_TEMPERATURE, dim=-1).topk(min(TARGET_TOP, logits.shape[-1]), dim=-1)
            ids.append(t)
            probs.append(p.double())
    dev = targets.device
    if not greedy:
        empty = torch.zeros(0, TARGET_TOP, device=dev)
        return torch.zeros(0, dtype=torch.int64, device=dev), empty.long(), empty.double()
    return torch.cat(greedy), torch.cat(ids) if sampled else None, torch.cat(probs) if sampled else None


@torch.no_grad()
def acceptance_counts(
    head,
    batch: dict,
    steps: int = 5,
    topk: int = 0,
    calibration: Optional[torch.Tensor] = None,
    sampled: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """int64 [2 + topk, steps]: row 0 = the denominators of acc_k, row 1 = the numerators, row 1 + r (r =
    1..topk) = the numerators of cov_k[r - 1] (module docstring).

    calibration: an optional float64 [steps, bins, 3] buffer on the head's device, accumulated in place:
    over the anchors of acc_k's denominator, binned by the draft's top-1 probability p (softmax over its
    vocabulary, bin floor(p * bins)), [..., 0] counts them, [..., 1] sums p and [..., 2] counts the correct
    ones (summarize_calibration reads it).

    sampled: an optional float64 [steps, topk] buffer on the head's device (topk >= 1), accumulated in
    place: the numerators of scov_k (module docstring; summarize_sampled reads it)."""
    if topk < 0:
        raise ValueError(f"topk: expected >= 0, got {topk}")
    dev = batch["input_ids"].device
    _check_calibration(calibration, steps, dev)
    if sampled is not None and (
        topk < 1 or sampled.shape != (steps, topk) or sampled.dtype != torch.float64 or sampled.device != dev
    ):
        raise ValueError(
            f"sampled: expected a float64 [{steps}, {topk}] tensor on {dev} (and topk >= 1), got "
            f"{sampled.dtype} {tuple(sampled.shape)} on {sampled.device}"
        )
    from .losses import align_batch

    ab = align_batch(batch)
    B, T, H = ab.features.shape
    lm = ab.loss_mask  # pair p: x_{p+2} exists and is a response token
    sel = lm.reshape(-1).nonzero().squeeze(1)
    greedy = torch.full((B * T,), -1, dtype=torch.int64, device=lm.device)
    greedy[sel], top_ids, top_probs = _target_tokens(
        head, ab.targets.reshape(B * T, H).index_select(0, sel), sampled is not None
    )
    greedy = greedy.view(B, T)
    follows = (ab.next_tokens == greedy) & lm  # the data's next token is the greedy one
    target_top = (top_ids, top_probs) if sampled is not None else None
    preds, ranks, top1p, masses = _draft_steps(head, ab, sel, greedy, steps, topk, calibration is not None, target_top)
    out = torch.zeros(2 + topk, steps, dtype=torch.int64, device=lm.device)
    # anchor t (column t): step k reads pair t + k - 1
    alive = torch.ones_like(lm)
    for k in range(1, min(steps, T) + 1):
        s = k - 1
        den = alive & _shifted(lm, s)
        ok = _shifted(preds[k - 1] == greedy, s)
        num = den & ok
        out[0, k - 1] = den.sum()
        out[1, k - 1] = num.sum()
        if topk:
            rank = _shifted(ranks[k - 1], s, fill=topk)
            for r in range(1, topk + 1):
                out[1 + r, k - 1] = (den & (rank < r)).sum()
        if calibration is not None:
            _add_calibration(calibration[k - 1], _shifted(top1p[k - 1], s)[den], ok[den])
        if sampled is not None:
            sampled[k - 1] += _shifted(masses[k - 1], s)[den].sum(0)
        alive = num & _shifted(follows, s)
    return out


def _check_calibration(calibration: Optional[torch.Tensor], steps: int, device: torch.device) -> None:
    """ValueError unless `calibration` is None or a float64 [steps, bins >= 1, 3] tensor on `device`."""
    if calibration is not None and (
        calibration.dim() != 3
        or calibration.shape[0] != steps
        or calibration.shape[2] != 3
        or calibration.shape[1] < 1
        or calibration.dtype != torch.float64
        or calibration.device != device
    ):
        raise ValueError(
            f"calibration: expected a float64 [{steps}, bins, 3] tensor on {device}, got "
            f"{calibration.dtype} {tuple(calibration.shape)} on {calibration.device}"
        )


def _draft_steps(
    head, ab, sel: torch.Tensor, greedy: torch.Tensor, steps: int, topk: int, calibrate: bool, target_top=None
):
    """The greedy chain drafting of steps 1..steps, all anchors at once: per step, over the pairs [B, T],
    the draft's top-1 (target ids; -2 off the loss positions `sel`), with topk the rank of the target's
    greedy token among the draft's topk best (topk = not among them), with calibrate the draft's top-1
    probability, with target_top = (ids, probs) of the target's most likely tokens at `sel` the target mass
    of the draft's r best, r = 1..topk ([B, T, topk] float64, 0 off `sel`). Returns (preds, ranks, top1p,
    masses), lists over the steps (empty when off)."""
    from .losses import multipass_mask

    B, T, _ = ab.features.shape
    dev = ab.features.device
    feats0 = ab.features.to(head.dtype)
    feats, kv = feats0, None
    preds, ranks, top1p, masses = [], [], [], []
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
        best = head.to_target_ids(o.logits.topk(min(topk, o.logits.shape[-1]), dim=-1).indices) if topk else None
        # with coverage counted, top-1 is topk's first (argmax may break a tie differently: cov_k[0] == acc_k)
        pred[sel] = best[:, 0] if topk else head.to_target_ids(o.logits.argmax(-1))
        preds.append(pred.view(B, T))
        if calibrate:
            p1 = torch.zeros(B * T, dtype=torch.float64, device=dev)
            p1[sel] = torch.softmax(o.logits.float(), dim=-1).amax(-1).double()
            top1p.append(p1.view(B, T))
        if topk:
            # rank of the target's token among the draft's topk best (topk = not among them)
            hit = best == greedy.view(-1)[sel][:, None]
            r = torch.where(hit.any(-1), hit.int().argmax(-1), torch.full_like(hit[:, 0], topk, dtype=torch.int64))
            rank = torch.full((B * T,), topk, dtype=torch.int64, device=dev)
            rank[sel] = r
            ranks.append(rank.view(B, T))
        if target_top is not None:
            ids, probs = target_top
            # p_T of each of the draft's best tokens (0 when outside the target's top), summed over ranks <= r
            p = ((best[:, :, None] == ids[:, None, :]) * probs[:, None, :]).sum(-1).cumsum(-1)
            mass = torch.zeros(B * T, best.shape[1], dtype=torch.float64, device=dev)
            mass[sel] = p
            masses.append(mass.view(B, T, -1))
        if k < steps:
            kv = o.kv
            feats = torch.cat((feats0[:, :1], o.hidden[:, :-1].to(feats0.dtype)), dim=1)
    return preds, ranks, top1p, masses


def _shifted(x: torch.Tensor, s: int, fill=0) -> torch.Tensor:
    """y[:, t] = x[:, t + s], `fill` past the end (s < x.shape[1]): anchor t's view of pair t + s."""
    y = torch.full_like(x, fill)
    y[:, : x.shape[1] - s] = x[:, s:]
    return y


def _add_calibration(cal: torch.Tensor, p: torch.Tensor, correct: torch.Tensor) -> None:
    """Add the anchors of one step (their top-1 probabilities p, whether they were correct) to its
    calibration bins cal [bins, 3] (acceptance_counts)."""
    bins = cal.shape[0]
    b = (p * bins).long().clamp_(0, bins - 1)
    cal[:, 0].index_add_(0, b, torch.ones_like(p))
    cal[:, 1].index_add_(0, b, p)
    cal[:, 2].index_add_(0, b, correct.double())


def summarize(counts: torch.Tensor) -> dict:
    """{"acc_k", "n_k" for k = 1..steps, "tau_chain"} from acceptance_counts summed over the data, plus
    "cov_k" (a list of topk fractions; None where no anchor reached step k) when it counted coverage."""
    counts = counts.to("cpu", torch.float64)
    res, prod, tau = {}, 1.0, 1.0
    for k in range(counts.shape[1]):
        den, num = counts[0, k].item(), counts[1, k].item()
        acc = num / den if den > 0 else float("nan")
        res[f"acc_{k + 1}"] = acc
        res[f"n_{k + 1}"] = int(den)
        if counts.shape[0] > 2:
            res[f"cov_{k + 1}"] = [c / den for c in counts[2:, k].tolist()] if den > 0 else None
        if not math.isnan(acc):
            prod *= acc
            tau += prod
    res["tau_chain"] = tau
    return res


def summarize_sampled(sampled: torch.Tensor, counts: torch.Tensor) -> dict:
    """{"scov_k": a list of topk fractions, None where no anchor reached step k} from acceptance_counts'
    sampled buffer and its counts (both summed over the data; module docstring), and "sampled_temperature"."""
    sampled, den = sampled.to("cpu", torch.float64), counts.to("cpu", torch.float64)[0]
    res = {"sampled_temperature": SAMPLED_TEMPERATURE}
    for k in range(sampled.shape[0]):
        d = den[k].item()
        res[f"scov_{k + 1}"] = [min(1.0, c / d) for c in sampled[k].tolist()] if d > 0 else None
    return res


def summarize_calibration(calibration: torch.Tensor) -> dict:
    """From acceptance_counts' calibration buffer (summed over the data): per step k, "calib_k", one [n,
    mean top-1 probability, acceptance rate] per bin (None where a bin is empty), and "ece_k", the expected
    calibration error sum_b n_b / n * |mean p_b - rate_b| (None where the step has no anchors). A draft whose
    confidence matches its acceptance (ece near 0) ranks tree nodes by what they are worth."""
    cal = calibration.to("cpu", torch.float64)
    res = {}
    for k in range(cal.shape[0]):
        rows, total, err = [], cal[k, :, 0].sum().item(), 0.0
        for n, ps, hits in cal[k].tolist():
            if n > 0:
                rows.append([int(n), ps / n, hits / n])
                err += abs(ps - hits) / total
            else:
                rows.append(None)
        res[f"calib_{k + 1}"] = rows
        res[f"ece_{k + 1}"] = err if total > 0 else None
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
    topk: int = TOPK,
) -> dict:
    """Validation loss and acceptance rates over `batches` (an iterable of batches already on the head's
    device with features). loss_fn(batch) -> (loss, count) with count the positions the loss averages
    over. all_reduce(tensor) sums across processes (distributed runs). topk: the ranks of the top-k
    coverage counted, greedy and sampled (0: none). Returns summarize(...), summarize_sampled(...) with
    topk, and "val_loss"."""
    was_training = head.training
    head.eval()
    dev = head.device
    acc = torch.zeros(2 + topk, steps, dtype=torch.int64, device=dev)
    smp = torch.zeros(steps, topk, dtype=torch.float64, device=dev) if topk else None
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
                    acc += acceptance_counts(head, batch, steps, topk, sampled=smp)
    finally:
        head.train(was_training)
    if all_reduce is not None:
        all_reduce(acc)
        all_reduce(sums)
        if smp is not None:
            all_reduce(smp)
    res = {"val_loss": (sums[0] / sums[1]).item() if sums[1] > 0 else float("nan")}
    res.update(summarize(acc))
    if smp is not None:
        res.update(summarize_sampled(smp, acc))
    return res


def measure_acceptance(
    head,
    dataset,
    *,
    sequences: Optional[int] = None,
    steps: int = 5,
    topk: int = TOPK,
    batch_size: int = 8,
    progress: Optional[Callable[[int], None]] = None,
    calibration_bins: int = 0,
) -> dict:
    """summarize(...) of a head's acceptance rates and top-k coverage on the first `sequences` items of
    `dataset` (all by default): a specdec.data.FeatureDataset or any sequence of its items ({"input_ids",
    "loss_mask", "hidden"}). The head must be bound to its target (bind_target: the target's output layer
    gives the greedy tokens). Features are cast to the head's dtype. progress(n) is called with the number
    of sequences done after each batch. Adds "sequences" (the count measured), the sampled coverage with topk
    (summarize_sampled: "scov_k"), and with calibration_bins > 0
    the draft's calibration per step (summarize_calibration: "calib_k", "ece_k")."""
    from specdec.data import collate

    if steps < 1 or topk < 0 or batch_size < 1 or calibration_bins < 0:
        raise ValueError(
            "need steps >= 1, topk >= 0, batch_size >= 1, calibration_bins >= 0, got "
            f"{(steps, topk, batch_size, calibration_bins)}"
        )
    n = len(dataset) if sequences is None else min(len(dataset), int(sequences))
    if n < 1:
        raise ValueError("measure_acceptance: no sequences to measure")
    was_training = head.training
    head.eval()
    dev = head.device
    counts = torch.zeros(2 + topk, steps, dtype=torch.int64, device=dev)
    smp = torch.zeros(steps, topk, dtype=torch.float64, device=dev) if topk else None
    cal = torch.zeros(steps, calibration_bins, 3, dtype=torch.float64, device=dev) if calibration_bins else None
    try:
        with torch.no_grad():
            for i in range(0, n, batch_size):
                batch = collate([dataset[j] for j in range(i, min(n, i + batch_size))])
                batch = {k: v.to(dev) for k, v in batch.items()}
                batch["hidden"] = batch["hidden"].to(head.dtype)
                counts += acceptance_counts(head, batch, steps, topk, calibration=cal, sampled=smp)
                if progress is not None:
                    progress(min(n, i + batch_size))
    finally:
        head.train(was_training)
    res = summarize(counts)
    if smp is not None:
        res.update(summarize_sampled(smp, counts))
    if cal is not None:
        res.update(summarize_calibration(cal))
    res["sequences"] = n
    return res


# The config.json key `specdec validate --write` records its measurement under (read by the tree budget,
# specdec.decoding.budget.head_acceptance, before the training's own validation).
RECORD_KEY = "specdec_validation"


def record_acceptance(folder: str, result: dict, data: Optional[dict] = None) -> dict:
    """Store `result` (measure_acceptance) in the head folder's config.json under RECORD_KEY, with `data`
    (what was measured on, e.g. the data folder's settings and val shard hashes); the file is replaced
    atomically and every other field is kept. Returns the record."""
    import json
    import os

    path = os.path.join(folder, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    record = {"result": result}
    if data is not None:
        record["data"] = data
    cfg[RECORD_KEY] = record
    atomic_write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", path)
    return record


def format_result(res: dict, steps: int) -> str:
    """The printed table: one line per step with its count, acc_k (= top-1 coverage) and the coverage at
    ranks 2, 4, 6, ..., R."""
    lines = [f"{res.get('sequences', '?')} sequences; tau_chain {res['tau_chain']:.3f}"]
    cov1 = res.get("cov_1") or []
    ranks = [r for r in (2, 4, 6, 8, 10, 16, 32, 64) if r <= len(cov1)]
    lines.append("step  anchors   acc   " + "  ".join(f"top{r:<3d}" for r in ranks))
    for k in range(1, steps + 1):
        acc, cov = res[f"acc_{k}"], res.get(f"cov_{k}")
        cells = "  ".join(f"{cov[r - 1]:.3f} " for r in ranks) if cov else ""
        lines.append(f"{k:>4d}  {res[f'n_{k}']:>7d}  {acc:.3f}  {cells}".rstrip())
    scov1 = res.get("scov_1") or []
    if scov1:
        ranks = [r for r in (1, 2, 4, 6, 8, 10, 16, 32, 64) if r <= len(scov1)]
        t = res.get("sampled_temperature", SAMPLED_TEMPERATURE)
        lines.append(f"sampled coverage at T = {t:g} (the target's mass the draft's r best hold):")
        lines.append("step  " + "  ".join(f"top{r:<3d}" for r in ranks))
        for k in range(1, steps + 1):
            scov = res.get(f"scov_{k}")
            if scov:
                lines.append(f"{k:>4d}  " + "  ".join(f"{scov[r - 1]:.3f} " for r in ranks).rstrip())
    return "\n".join(lines)


def format_calibration(res: dict, steps: int) -> str:
    """The --calibration lines: per step its ECE, then per non-empty bin "mean p -> acceptance (anchors)"."""
    lines = ["calibration: draft top-1 probability -> acceptance (anchors), per bin of 0.1"]
    for k in range(1, steps + 1):
        ece = res.get(f"ece_{k}")
        if ece is None:
            lines.append(f"step {k}: no anchors")
            continue
        bins = [f"{p:.2f}->{a:.2f} ({n})" for n, p, a in (b for b in res[f"calib_{k}"] if b)]
        lines.append(f"step {k}: ECE {ece:.3f} | " + "  ".join(bins))
    return "\n".join(lines)
