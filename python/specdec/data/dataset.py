"""The trainer's view of the data: stored features, token-only data plus online features, and collate.

    ds = FeatureDataset("data/smollm2", split="train")     # built by `specdec data`
    ds[i] -> {"input_ids": int64 [T], "loss_mask": bool [T], "hidden": bf16 [T, H]}
    ds.manifest, ds.token_counts() -> int64 [V]

    toks = TokenDataset("data/smollm2-tokens", split="train")   # `specdec data --no-features` (or any output)
    toks[i] -> {"input_ids": int64 [T], "loss_mask": bool [T]}
    feats = OnlineFeatures(target_model)                    # features computed in the training loop
    batch = collate([toks[i] for i in idx], pad_id=0)
    batch["hidden"] = feats(batch["input_ids"], batch["attention_mask"])   # or: batch = feats.add_to(batch)

Conventions shared by both: hidden[t] is the target's last hidden state at token t (its final norm's
output, what a Hugging Face model returns as hidden_states[-1]) after reading tokens 0..t;
loss_mask[t] is True when token t belongs to an assistant response (its end-of-turn token included,
the generation prompt header excluded). So a head predicting token t + 1 (and feature t + 1) from
position t is trained where loss_mask[t + 1] is True. Stored hidden states are bf16; online ones come
in the target's dtype. Padded positions (collate pads on the right) have input_ids = pad_id,
loss_mask = False, attention_mask = False and hidden = 0, online or stored.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Union

import torch

from .shards import ShardError, ShardReader, read_manifest, split_entries, totals, verify_shard


class _ShardDataset(torch.utils.data.Dataset):
    def __init__(self, path: str, split: str, hidden: bool, verify: bool, allow_incomplete: bool):
        self.path = os.path.expanduser(str(path))
        self.split = split
        self.manifest = read_manifest(self.path)
        info = self.manifest.get("splits", {}).get(split, {})
        have, need = len(split_entries(self.manifest, split)), info.get("num_shards", 0)
        # a split is usable once its own shards are all there (a --splits val build lacks the train split)
        if not (self.manifest.get("complete") or have >= need) and not allow_incomplete:
            raise ShardError(
                f"{self.path}: the {split} split is incomplete ({have} of {need} shards; the build was stopped "
                f"before its last shard or built without this split); rerun the `specdec data` command with "
                "--splits all to finish it, or pass allow_incomplete=True"
            )
        if hidden and not self.manifest["settings"].get("features"):
            raise ShardError(
                f"{self.path} was built with --no-features (tokens only): use TokenDataset with OnlineFeatures, "
                "or build it again without --no-features"
            )
        self._hidden = hidden
        self.entries = split_entries(self.manifest, split)
        self.readers: List[ShardReader] = []
        for e in self.entries:
            p = verify_shard(self.path, e, check_hash=verify)
            r = ShardReader(p, features=hidden)
            if len(r) != e["sequences"]:
                raise ShardError(f"shard {p} holds {len(r)} sequences, the manifest says {e['sequences']}: corrupt")
            self.readers.append(r)
        self.index = [(k, s) for k, r in enumerate(self.readers) for s in range(len(r))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        k, s = self.index[i]
        return self.readers[k].get(s, self._hidden)

    def lengths(self) -> List[int]:
        """Token count of each item (for length-grouped batching)."""
        return [int(r.offsets[s + 1] - r.offsets[s]) for r in self.readers for s in range(len(r))]

    def token_counts(self) -> torch.Tensor:
        """int64 [V]: how often each token id occurs among this split's response (masked) tokens."""
        v = int(self.manifest["target"]["vocab_size"])
        out = torch.zeros(v, dtype=torch.int64)
        for r in self.readers:
            out += r.token_counts()
        return out

    def stats(self) -> dict:
        """sequences, tokens and masked_tokens of this split."""
        return totals(self.entries)


class FeatureDataset(_ShardDataset):
    """Stored features of one split of a `specdec data` output folder.

    FeatureDataset(path, split="train"|"val", verify=True, allow_incomplete=False). Item i:
    {"input_ids": int64 [T], "loss_mask": bool [T], "hidden": bf16 [T, H]} (see the module docstring
    for the conventions). `.manifest` is the folder's manifest (dict); `.token_counts()` the int64 [V]
    counts of response tokens (for a reduced draft vocabulary); `.lengths()` the item lengths.

    Every shard's size and sha256 are checked on construction (verify=False: size only); a missing,
    truncated or corrupt shard raises ShardError naming it. A split missing shards (an unfinished build,
    or one made with --splits for the other split) raises ShardError unless allow_incomplete. Shards are
    memory-mapped; items are read lazily.
    """

    def __init__(self, path: str, split: str = "train", verify: bool = True, allow_incomplete: bool = False):
        super().__init__(path, split, hidden=True, verify=verify, allow_incomplete=allow_incomplete)


class TokenDataset(torch.utils.data.Dataset):
    """Token ids and loss masks only: for online features (OnlineFeatures computes `hidden` per batch).

    TokenDataset(path, split="train", verify=True, allow_incomplete=False): from a `specdec data` output
    folder (built with or without --no-features; stored features are not read).
    TokenDataset(conversations, split="train", tokenizer=tok, max_len=2048, val_fraction=0.02,
    eos_ids=None): from conversations in memory (message lists, or specdec.data.sharegpt.Conversation),
    answers as written, split by the same hash as `specdec data`. `eos_ids` default: the tokenizer's EOS.

    Item i: {"input_ids": int64 [T], "loss_mask": bool [T]}; `.manifest` (None in memory), `.token_counts()`.
    """

    def __init__(
        self,
        source: Union[str, os.PathLike, Sequence],
        split: str = "train",
        *,
        tokenizer=None,
        max_len: Optional[int] = 2048,
        val_fraction: float = 0.02,
        eos_ids: Optional[Sequence[int]] = None,
        verify: bool = True,
        allow_incomplete: bool = False,
    ):
        self.split = split
        if isinstance(source, (str, os.PathLike)):
            self._shards = _ShardDataset(source, split, hidden=False, verify=verify, allow_incomplete=allow_incomplete)
            self.manifest = self._shards.manifest
            self._items = None
            return
        from .. import eos as end_of_sequence
        from .chat import TemplateError, encode
        from .sharegpt import Conversation, normalize, split_of

        if tokenizer is None:
            raise ValueError("TokenDataset from conversations needs tokenizer=")
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        eos = end_of_sequence.eos_ids(None, tokenizer, given=eos_ids)
        self._shards, self.manifest, self._items = None, None, []
        self._vocab = len(tokenizer)
        for c in source:
            conv = c if isinstance(c, Conversation) else normalize({"messages": list(c)})
            if conv is None or split_of(conv.key, val_fraction) != split:
                continue
            msgs = list(conv.messages)
            while msgs and msgs[-1]["role"] != "assistant":
                msgs.pop()
            if not msgs:
                continue
            try:
                ids, mask = encode(tokenizer, msgs, eos, max_len=max_len)
            except TemplateError:
                continue
            if any(mask):
                self._items.append(
                    {
                        "input_ids": torch.tensor(ids, dtype=torch.int64),
                        "loss_mask": torch.tensor(mask, dtype=torch.bool),
                    }
                )

    def __len__(self) -> int:
        return len(self._shards) if self._shards is not None else len(self._items)

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        if self._shards is not None:
            return self._shards[i]
        item = self._items[i]
        return {"input_ids": item["input_ids"], "loss_mask": item["loss_mask"]}

    def lengths(self) -> List[int]:
        """The number of tokens of each sequence."""
        if self._shards is not None:
            return self._shards.lengths()
        return [len(it["input_ids"]) for it in self._items]

    def token_counts(self) -> torch.Tensor:
        """int64 [V]: counts of response (masked) token ids."""
        if self._shards is not None:
            return self._shards.token_counts()
        out = torch.zeros(self._vocab, dtype=torch.int64)
        for it in self._items:
            out += torch.bincount(it["input_ids"][it["loss_mask"]], minlength=self._vocab)
        return out


def collate(items: Sequence[dict], pad_id: int = 0) -> Dict[str, torch.Tensor]:
    """Right-pad a list of dataset items into a batch.

    Returns input_ids int64 [B, T] (pad_id after each sequence), loss_mask bool [B, T] (False on padding),
    attention_mask bool [B, T] (True on real tokens) and, when every item has one, hidden [B, T, H] (the
    items' dtype, zeros on padding).
    """
    if not items:
        raise ValueError("collate: no items")
    B, T = len(items), max(len(it["input_ids"]) for it in items)
    ids = torch.full((B, T), pad_id, dtype=torch.int64)
    mask = torch.zeros((B, T), dtype=torch.bool)
    att = torch.zeros((B, T), dtype=torch.bool)
    with_hidden = all("hidden" in it for it in items)
    if with_hidden:
        H = items[0]["hidden"].shape[-1]
        hidden = torch.zeros((B, T, H), dtype=items[0]["hidden"].dtype)
    for b, it in enumerate(items):
        n = len(it["input_ids"])
        ids[b, :n] = it["input_ids"]
        mask[b, :n] = it["loss_mask"]
        att[b, :n] = True
        if with_hidden:
            hidden[b, :n] = it["hidden"]
    out = {"input_ids": ids, "loss_mask": mask, "attention_mask": att}
    if with_hidden:
        out["hidden"] = hidden
    return out


def _hf_model(model):
    """The Hugging Face model behind `model` (a PreTrainedModel, or specdec.target.TargetModel)."""
    if not isinstance(model, torch.nn.Module) and isinstance(getattr(model, "model", None), torch.nn.Module):
        return model.model
    return model


def target_hidden(model, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The target's last hidden states [B, T, H] (final norm output) for right-padded input; no grad.

    Runs only the decoder (no [B, T, V] logits) when the model exposes it; otherwise the full forward's
    hidden_states[-1]. Padded positions (attention_mask False) are set to 0. Inside kernel_linear_scope():
    layers marked by specdec.target.kernel_linears (load_target(prepack=True)) run the linear this CPU computes
    fastest, as in decoding; on an AVX2-only CPU torch's bf16 linear goes row by row, several times slower."""
    from ..target.kernel_linears import kernel_linear_scope

    model = _hf_model(model)
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
    attention_mask = attention_mask.to(device)
    att = attention_mask.to(torch.long)
    with torch.no_grad(), kernel_linear_scope():
        base = model.get_decoder() if hasattr(model, "get_decoder") else None
        if isinstance(base, torch.nn.Module) and base is not model:
            hidden = base(input_ids=input_ids, attention_mask=att, use_cache=False).last_hidden_state
        else:
            hidden = model(
                input_ids=input_ids, attention_mask=att, output_hidden_states=True, use_cache=False
            ).hidden_states[-1]
        hidden = hidden.masked_fill(~attention_mask.bool().unsqueeze(-1), 0)
    return hidden


class OnlineFeatures:
    """Features computed by the target inside the training loop; nothing is stored.

    feats = OnlineFeatures(model)   # a Hugging Face causal LM (or specdec.target.TargetModel), eval, any device
    hidden = feats(input_ids, attention_mask)   # [B, T, H] in the target's dtype, on its device, no grad

    input_ids/attention_mask as `collate` returns them (right padding; attention_mask may be None).
    The values equal FeatureDataset's stored `hidden` (up to the bf16 rounding of storage): the last
    hidden state (final norm output), zeros on padding. `add_to(batch)` returns the batch with "hidden".
    """

    def __init__(self, model):
        self.model = _hf_model(model)
        self.model.eval()
        self.hidden_size = self.model.config.hidden_size
        self.dtype = next(self.model.parameters()).dtype
        self.device = next(self.model.parameters()).device

    def __call__(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return target_hidden(self.model, input_ids, attention_mask)

    def add_to(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """A copy of `batch` with the target's features ("hidden") of its input_ids added."""
        out = dict(batch)
        out["hidden"] = self(batch["input_ids"], batch.get("attention_mask"))
        return out
