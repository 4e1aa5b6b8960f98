"""Shard files and the manifest of a `specdec data` output folder.

Layout of an output folder:

    manifest.json
    train-00000.safetensors, train-00001.safetensors, ...
    val-00000.safetensors, ...

A shard (safetensors) holds the sequences of `shard_size` consecutive conversations of one split,
concatenated along the token axis:

    input_ids     int32 [N]        all sequences' tokens, one after the other
    loss_mask     bool  [N]        True on response tokens (see specdec.data.chat)
    offsets       int64 [n + 1]    sequence s is tokens offsets[s]:offsets[s + 1]
    token_counts  int64 [V]        how often each token id occurs where loss_mask is True
    hidden        bf16  [N, H]     the target's last hidden states (absent with --no-features)

and in its metadata ("specdec", JSON) the format name and the keys of its conversations. A shard is
written to a temporary file beside it (specdec.files.atomic_path), renamed, and only then entered in the
manifest (with its size and sha256), so a killed build leaves complete shards behind and resumes after the
last one. Readers check the size and sha256 of every shard before use (`verify_shard`) and raise
ShardError naming the file.

The manifest (JSON) holds: format/version, the target's identity (path, sha256 of its config, hidden
size, vocabulary size), the tokenizer's (chat-template sha256, EOS ids, pad id), the build settings,
`complete` (every shard written), and per split: the conversation count, the shards (file, sha256, bytes,
sequences, tokens, masked_tokens, timing) and their totals. With several processes (specdec.data.build)
each records its shards in "manifest.rank-R.json" (same fields) and the one that completes the set writes
manifest.json.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

import torch

from ..files import atomic_path, atomic_write_text, sha256_file, temporary_of

FORMAT = "specdec-data"
VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val")


class ShardError(RuntimeError):
    """A shard or manifest that is missing, truncated or corrupt (the message names the file)."""


def shard_name(split: str, index: int) -> str:
    """The file name of shard `index` of `split`, e.g. train-00003.safetensors."""
    return f"{split}-{index:05d}.safetensors"


def write_manifest(folder: str, manifest: dict, name: str = MANIFEST) -> None:
    """Write `manifest` as JSON to folder/name, atomically (a reader never sees half a manifest)."""
    atomic_write_text(json.dumps(manifest, indent=1, sort_keys=False), os.path.join(folder, name))


def read_manifest(folder: str, name: str = MANIFEST) -> dict:
    """The manifest folder/name; ShardError when it is missing, unreadable, or of another format or version."""
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise ShardError(f"{path} does not exist: {folder!r} is not a `specdec data` output folder")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise ShardError(f"{path} is unreadable or corrupt ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ShardError(f"{path} is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise ShardError(f"{path} has format version {manifest.get('version')!r}; this code reads {VERSION}")
    return manifest


def write_shard(
    folder: str,
    name: str,
    sequences: List[dict],
    vocab_size: int,
    keys: List[str],
    features: bool,
    hidden_size: int,
) -> dict:
    """Write one shard atomically; returns its manifest entry (without timing).

    sequences: dicts with input_ids (list/int tensor [T]), loss_mask (bool [T]) and, when features,
    hidden (bf16 [T, H])."""
    from safetensors.torch import save_file

    ids = [torch.as_tensor(s["input_ids"], dtype=torch.int32).reshape(-1) for s in sequences]
    masks = [torch.as_tensor(s["loss_mask"], dtype=torch.bool).reshape(-1) for s in sequences]
    lengths = torch.tensor([0] + [len(t) for t in ids], dtype=torch.int64)
    flat_ids = torch.cat(ids) if ids else torch.zeros(0, dtype=torch.int32)
    flat_mask = torch.cat(masks) if masks else torch.zeros(0, dtype=torch.bool)
    if flat_ids.numel() and (int(flat_ids.min()) < 0 or int(flat_ids.max()) >= vocab_size):
        raise ValueError(f"token ids outside [0, {vocab_size}) in shard {name}")
    counts = torch.bincount(flat_ids[flat_mask].long(), minlength=vocab_size).to(torch.int64)
    tensors = {
        "input_ids": flat_ids.contiguous(),
        "loss_mask": flat_mask.contiguous(),
        "offsets": torch.cumsum(lengths, 0).contiguous(),
        "token_counts": counts.contiguous(),
    }
    if features:
        hs = [s["hidden"].to(torch.bfloat16).reshape(len(t), hidden_size) for s, t in zip(sequences, ids)]
        tensors["hidden"] = (torch.cat(hs) if hs else torch.zeros(0, hidden_size, dtype=torch.bfloat16)).contiguous()
    path = os.path.join(folder, name)
    # one metadata entry: safetensors writes several in hash order, and shards must be byte-reproducible
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"specdec": json.dumps({"format": FORMAT, "keys": list(keys)})})
    return {
        "file": name,
        "sha256": sha256_file(path),
        "bytes": os.path.getsize(path),
        "sequences": len(sequences),
        "tokens": int(flat_ids.numel()),
        "masked_tokens": int(flat_mask.sum()),
    }


def verify_shard(folder: str, entry: dict, check_hash: bool = True) -> str:
    """Path of the shard of a manifest entry after checking it exists, has its size and (check_hash)
    its sha256; ShardError naming the file otherwise."""
    path = os.path.join(folder, entry["file"])
    if not os.path.isfile(path):
        raise ShardError(f"shard {path} is missing (listed in {MANIFEST}); rebuild with `specdec data` (it resumes)")
    size = os.path.getsize(path)
    if size != entry.get("bytes"):
        raise ShardError(
            f"shard {path} is truncated or corrupt: {size} bytes, the manifest says {entry.get('bytes')}; "
            "delete it and rerun `specdec data` with the same arguments to rebuild it"
        )
    if check_hash and sha256_file(path) != entry.get("sha256"):
        raise ShardError(
            f"shard {path} is corrupt: its sha256 differs from the manifest's; delete it and rerun "
            "`specdec data` with the same arguments to rebuild it"
        )
    return path


class ShardReader:
    """Lazy, memory-mapped access to one verified shard's sequences."""

    def __init__(self, path: str, features: bool):
        from safetensors import safe_open

        self.path = path
        try:
            self._f = safe_open(path, framework="pt")
            names = set(self._f.keys())
            need = {"input_ids", "loss_mask", "offsets", "token_counts"} | ({"hidden"} if features else set())
            if not need <= names:
                raise ShardError(f"shard {path} lacks {sorted(need - names)}")
            self.offsets = self._f.get_tensor("offsets")
            self.has_hidden = "hidden" in names
        except ShardError:
            raise
        except Exception as exc:
            raise ShardError(f"shard {path} cannot be loaded ({type(exc).__name__}: {exc}); it is corrupt") from exc
        self._ids = None
        self._mask = None

    def __getstate__(self):  # DataLoader workers: reopen the file in the worker
        state = dict(self.__dict__)
        state["_f"] = state["_ids"] = state["_mask"] = None
        return state

    def __setstate__(self, state):
        from safetensors import safe_open

        self.__dict__.update(state)
        self._f = safe_open(self.path, framework="pt")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, s: int, hidden: bool) -> Dict[str, torch.Tensor]:
        """Sequence `s` of the shard: input_ids (int64), loss_mask and, with `hidden`, the features."""
        try:
            if self._ids is None:
                self._ids = self._f.get_tensor("input_ids")
                self._mask = self._f.get_tensor("loss_mask")
            a, b = int(self.offsets[s]), int(self.offsets[s + 1])
            item = {"input_ids": self._ids[a:b].to(torch.int64), "loss_mask": self._mask[a:b].clone()}
            if hidden:
                item["hidden"] = self._f.get_slice("hidden")[a:b]
        except Exception as exc:
            raise ShardError(f"shard {self.path} cannot be read ({type(exc).__name__}: {exc}); it is corrupt") from exc
        return item

    def token_counts(self) -> torch.Tensor:
        """The shard's stored counts of response token ids."""
        return self._f.get_tensor("token_counts")


def split_entries(manifest: dict, split: str) -> List[dict]:
    """The shard entries the manifest lists for `split` (missing shards left out)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [e for e in manifest.get("splits", {}).get(split, {}).get("shards", []) if e is not None]


def totals(entries: List[dict]) -> dict:
    """The sequences, tokens and masked (response) tokens summed over shard entries."""
    return {k: sum(e[k] for e in entries) for k in ("sequences", "tokens", "masked_tokens")}


def remove_stale_temps(folder: str, keep=None) -> List[str]:
    """Delete the temporary files a killed build left behind (specdec.files.atomic_path's, and "NAME.tmp"
    of older builds); with `keep`, only those whose final name `keep(name)` accepts (other processes' files
    are not touched). Returns the deleted names."""
    gone = []
    for name in os.listdir(folder):
        final = temporary_of(name) or (name[:-4] if name.endswith(".tmp") else None)
        if final is not None and (keep is None or keep(final)):
            os.remove(os.path.join(folder, name))
            gone.append(name)
    return gone


def optional_manifest(folder: str) -> Optional[dict]:
    """read_manifest of folder/manifest.json, or None when there is none."""
    return read_manifest(folder) if os.path.isfile(os.path.join(folder, MANIFEST)) else None
