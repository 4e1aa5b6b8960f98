"""`build`: conversations -> (self-distilled) responses -> token ids + loss masks -> target features -> shards.

Resumable: the output folder's manifest records the settings and target identity; a rerun with the same
ones skips every shard already listed (and intact) and builds the rest; different ones raise
BuildMismatch. Shard k of a split always holds that split's conversations [k * shard_size,
(k + 1) * shard_size), so a resumed build writes exactly what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from typing import Callable, List, Optional, Sequence

import torch

from ..eos import eos_ids
from .chat import TemplateError, encode, end_of_turn_tail, template_hash
from .dataset import target_hidden
from .responses import ENGINES, GenStats, respond
from .shards import (
    FORMAT,
    MANIFEST,
    SPLITS,
    VERSION,
    ShardError,
    optional_manifest,
    read_manifest,
    remove_stale_temps,
    shard_name,
    totals,
    verify_shard,
    write_manifest,
    write_shard,
)
from .sharegpt import Conversation, ReadStats, load_conversations, source_identity, split_conversations

RESPONSES = ("target", "dataset")


class BuildMismatch(ValueError):
    """An existing output folder built with other settings or another target."""


def target_identity(model, path: Optional[str]) -> dict:
    """Path, sha256 of the config (its config.json file when `path` has one), sizes."""
    cfg_file = os.path.join(path, "config.json") if path and os.path.isdir(path) else None
    if cfg_file and os.path.isfile(cfg_file):
        with open(cfg_file) as f:
            cfg = json.load(f)
    else:
        cfg = {k: v for k, v in model.config.to_dict().items() if k not in ("_name_or_path", "dtype", "torch_dtype")}
    cfg_hash = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()
    emb = model.get_output_embeddings()
    vocab = int(emb.weight.shape[0]) if emb is not None else int(model.config.vocab_size)
    return {
        "path": os.path.abspath(path) if path and os.path.exists(path) else path,
        "config_sha256": cfg_hash,
        "model_type": getattr(model.config, "model_type", None),
        "hidden_size": int(model.config.hidden_size),
        "vocab_size": vocab,
    }


def _dtype_name(model) -> str:
    """The torch name of the model's dtype (e.g. "bfloat16")."""
    return str(next(model.parameters()).dtype).replace("torch.", "")


def _trim(messages: List[dict], max_len: int) -> List[dict]:
    """The leading messages that can matter within max_len tokens (a token rarely spans 32 characters),
    ending with an assistant message (dataset mode); the token truncation happens after encoding."""
    out, chars = [], 0
    for m in messages:
        if chars > 32 * max_len:
            break
        out.append(m)
        chars += len(m["content"]) + 16
    while out and out[-1]["role"] != "assistant":
        out.pop()
    return out


def _part_name(rank: int) -> str:
    return f"manifest.rank-{rank}.json"


def _recorded(out: str) -> list:
    """(file name, manifest) of manifest.json and of every process's part (from a build with several)."""
    found = []
    m = optional_manifest(out)
    if m is not None:
        found.append((MANIFEST, m))
    for name in sorted(os.listdir(out)):
        if name.startswith("manifest.rank-") and name.endswith(".json"):
            found.append((name, read_manifest(out, name)))
    return found


def settings(source: Optional[str], *, source_name: Optional[str] = None, **kw) -> dict:
    """The manifest's "settings": what decides the contents (source identity, selection, responses,
    lengths, sampling, sharding, features, dtype). `source` None: conversations given in memory."""
    out = {"source": source_identity(source) if source is not None else {"name": str(source_name)}}
    out.update(kw)
    if out.get("max_turns") is None:
        out.pop("max_turns", None)  # manifests written before --max-turns existed compare equal
    if out.get("responses") != "target":
        out["max_new_tokens"] = out["temperature"] = None
    return out


def first_turns(messages: Sequence[dict], n: int) -> List[dict]:
    """The messages up to (not including) the (n+1)-th user turn: n exchanges, the system prompt kept."""
    out, users = [], 0
    for m in messages:
        if m["role"] == "user":
            users += 1
            if users > n:
                break
        out.append(m)
    return out


def compare(old: dict, new: dict, sections=("target", "tokenizer", "settings")) -> List[str]:
    """The differences between two manifests' identities, one "section.key: old there, new now" each."""
    diffs = []
    for section in sections:
        a, b = old.get(section, {}), new.get(section, {})
        for k in sorted(set(a) | set(b)):
            if section == "target" and k == "path":
                continue  # a moved folder with the same config is the same target
            if a.get(k) != b.get(k):
                diffs.append(f"{section}.{k}: {a.get(k)!r} there, {b.get(k)!r} now")
    return diffs


def build(
    out: str,
    model,
    tokenizer,
    *,
    target_path: Optional[str] = None,
    source: str = "sharegpt",
    conversations: Optional[Sequence[Conversation]] = None,
    num_prompts: Optional[int] = None,
    val_fraction: float = 0.02,
    responses: str = "target",
    max_len: int = 2048,
    max_new_tokens: int = 256,
    max_turns: Optional[int] = None,
    temperature: float = 0.0,
    batch_size: int = 8,
    engine: str = "auto",
    dtype_choice: Optional[str] = None,
    shard_size: int = 1000,
    features: bool = True,
    seed: int = 0,
    resume: bool = True,
    progress: bool = True,
    stop_after_shards: Optional[int] = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
    phase: Optional[Callable[[str], None]] = None,
    rank: int = 0,
    world_size: int = 1,
    splits: Sequence[str] = SPLITS,
) -> dict:
    """Build (or finish) a data folder; returns its manifest. See specdec.data for the layout.

    model/tokenizer: the target (a Hugging Face causal LM, eval, on its device and dtype) and its
    tokenizer with a chat template. `conversations` replaces reading `source` (tests; the manifest then
    names the source as given). `stop_after_shards` stops after writing that many new shards (tests of
    resuming). `phase`: called with a short description of each phase (the CLI's error line names it).
    `engine`: how the target answers (specdec.data.responses: "auto", "static" continuous batching on our
    KV cache, "hf" transformers' generate); batch_size is its slots or batch. Like batch_size it is not part
    of the identity: in bf16 either may change an answer after a near-tie; each shard's timing names it.
    `dtype_choice` "auto": the caller loaded the model in this machine's faster dtype
    (specdec.machine_dtype), and the manifest records "auto" instead of the model's dtype, so that the
    build resumes on a machine of the other kind (each shard records the dtype it was computed in).

    rank/world_size (e.g. torchrun's RANK and WORLD_SIZE): process `rank` builds the shards whose position
    in the list of all shards (train, then val) is rank modulo world_size, and records them in its own
    "manifest.rank-R.json"; the process that writes the last missing shard writes manifest.json. The
    shards are those a single process writes. --no-resume needs world_size 1.

    splits: the splits to build now (default both). ("val",) builds only the held-out shards, e.g. to
    measure a shipped head (`specdec validate`) without the train split's cost; the manifest lists the
    train split's shards as missing until a later build with both finishes it (same settings, resumed).
    """
    _check_arguments(responses, rank, world_size, splits, resume, engine, dtype_choice)

    phase = phase or (lambda what: None)
    eos = eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    ident = _identity(
        model,
        tokenizer,
        target_path,
        eos,
        pad_id,
        source if conversations is None else None,
        dict(
            num_prompts=num_prompts,
            val_fraction=val_fraction,
            responses=responses,
            max_len=max_len,
            max_new_tokens=max_new_tokens,
            max_turns=max_turns,
            temperature=temperature,
            seed=seed,
            shard_size=shard_size,
            features=features,
            dtype=dtype_choice or _dtype_name(model),
            source_name=source,
        ),
    )
    os.makedirs(out, exist_ok=True)
    phase(f"reading the conversations of --source {source!r}")
    convs = _read_conversations(source, conversations, num_prompts, max_turns, log)
    parts = split_conversations(convs, val_fraction)
    book = _Manifest(out, ident, {s: len(parts[s]) for s in SPLITS}, shard_size, splits, rank, world_size)
    phase(f"reading the manifest of --out {out!r}")
    book.take_previous(ident, resume, log)
    book.remove_stale_temps(log)
    book.publish()
    maker = _ShardMaker(model, tokenizer, ident, batch_size=batch_size, engine=engine, progress=progress, phase=phase)
    written = 0
    for s, k in book.to_build():
        if stop_after_shards is not None and written >= stop_after_shards:
            return book.manifest
        chunk = parts[s][k * shard_size : (k + 1) * shard_size]
        tag = f"{s} shard {k + 1}/{book.num_shards(s)}" + (f" (rank {rank})" if world_size > 1 else "")
        entry = maker.write(out, s, k, chunk, tag)
        book.add(s, k, entry)
        written += 1
        log(f"{tag}: {_shard_summary(entry)}")
    book.publish(final=True)
    return book.manifest


def _shard_summary(entry: dict) -> str:
    """The log line's account of a written shard."""
    return (
        f"{entry['sequences']} sequences, {entry['tokens']} tokens "
        f"({entry['masked_tokens']} response tokens), {entry['skipped']} skipped"
    )


def _check_arguments(
    responses: str, rank: int, world_size: int, splits: Sequence[str], resume: bool, engine: str, dtype_choice
) -> None:
    """ValueError naming the first of build's arguments that is not valid."""
    if responses not in RESPONSES:
        raise ValueError(f"responses must be one of {RESPONSES}, got {responses!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if dtype_choice not in (None, "auto"):
        raise ValueError(f"dtype_choice must be None or 'auto', got {dtype_choice!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank {rank}, world_size {world_size}")
    bad = [x for x in splits if x not in SPLITS]
    if bad or not splits:
        raise ValueError(f"splits must be a non-empty subset of {SPLITS}, got {tuple(splits)!r}")
    if not resume and set(splits) != set(SPLITS):
        raise ValueError("resume=False (--no-resume) rebuilds the whole folder: build every split (--splits all)")
    if world_size > 1 and not resume:
        raise ValueError("resume=False (--no-resume) needs a single process: delete the output folder instead")


def _identity(
    model, tokenizer, target_path: Optional[str], eos: list, pad_id: int, source: Optional[str], settings_kw: dict
) -> dict:
    """The manifest's identity: format, version, target, tokenizer, settings(source, **settings_kw) (what
    compare() checks)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "target": target_identity(model, target_path),
        "tokenizer": {"chat_template_sha256": template_hash(tokenizer), "eos_token_ids": eos, "pad_token_id": pad_id},
        "settings": settings(source, **settings_kw),
    }


def _read_conversations(
    source: str,
    conversations: Optional[Sequence[Conversation]],
    num_prompts: Optional[int],
    max_turns: Optional[int],
    log: Callable[[str], None],
) -> List[Conversation]:
    """The conversations given, or read from `source`: the first num_prompts, each cut to max_turns."""
    read = ReadStats()
    convs = list(conversations) if conversations is not None else load_conversations(source, num_prompts, read)
    if conversations is not None and num_prompts is not None:
        convs = convs[:num_prompts]
    if max_turns is not None:
        convs = [Conversation(c.key, first_turns(c.messages, max_turns)) for c in convs]
    if read.cut_at is not None:
        log(f"{source}: {read.records} complete records; the file is cut off in the next one (stopped there)")
    return convs


def _shard_entries(manifest: dict):
    """(split, entry) of every shard a manifest lists."""
    for s in SPLITS:
        for e in manifest.get("splits", {}).get(s, {}).get("shards", []):
            yield s, e


class _Manifest:
    """The manifest of a build as its shards are written.

    every: (split, index) of all the folder's shards; wanted: those of the splits built now; mine: the
    wanted ones this process builds (position modulo world_size). entries[split][index]: the shards
    written so far (this process's, and with several processes the others' as last read).
    """

    def __init__(self, out, ident, conversations: dict, shard_size, splits, rank, world_size):
        self.out, self.rank, self.world_size = out, rank, world_size
        self.manifest = dict(ident)
        self.manifest["complete"] = False
        self.manifest["splits"] = {}
        for s in SPLITS:
            n = conversations[s]
            self.manifest["splits"][s] = {"conversations": n, "num_shards": -(-n // shard_size), "shards": []}
        self.every = [(s, k) for s in SPLITS for k in range(self.num_shards(s))]
        self.wanted = [sk for sk in self.every if sk[0] in splits]
        self.mine = {sk for j, sk in enumerate(self.wanted) if j % world_size == rank}
        self.entries = {s: {} for s in SPLITS}

    def num_shards(self, split: str) -> int:
        """The number of shards of `split`."""
        return self.manifest["splits"][split]["num_shards"]

    def take_previous(self, ident: dict, resume: bool, log: Callable[[str], None]) -> None:
        """Resume: keep the shards the folder's manifests list (this process's checked; BuildMismatch when
        they were built with other settings). Not resuming: delete them and manifest.json."""
        out = self.out
        found = _recorded(out)
        if not resume:
            for _, old in found:
                for _, e in _shard_entries(old):
                    p = os.path.join(out, e["file"])
                    if os.path.exists(p):
                        os.remove(p)
            if os.path.exists(os.path.join(out, MANIFEST)):
                os.remove(os.path.join(out, MANIFEST))
            return
        for where, old in found:
            diffs = compare(old, ident)
            if diffs:
                raise BuildMismatch(
                    f"{out} holds data built with other settings ({'; '.join(diffs)}, in {where}); use another "
                    "--out, the same settings, or --no-resume to rebuild it"
                )
        for _, old in found:
            for s, e in _shard_entries(old):
                if (s, e["index"]) not in self.mine:
                    self.entries[s][e["index"]] = e  # another process's: checked when the manifest is merged
                    continue
                try:
                    verify_shard(out, e)
                    self.entries[s][e["index"]] = e
                except ShardError as exc:
                    log(f"rebuilding: {exc}")

    def remove_stale_temps(self, log: Callable[[str], None]) -> None:
        """Remove the unfinished files of a stopped build (with several processes, only this one's)."""
        own_files = {shard_name(s, k) for s, k in self.mine} | {_part_name(self.rank)}
        keep = None if self.world_size == 1 else lambda name: name in own_files
        gone = remove_stale_temps(self.out, keep=keep)
        if gone:
            log(f"removed {len(gone)} unfinished file(s) of a stopped build: {', '.join(gone)}")

    def to_build(self):
        """(split, index) of this process's shards still missing, in order."""
        for s in SPLITS:
            for k in range(self.num_shards(s)):
                if k not in self.entries[s] and (s, k) in self.mine:
                    yield s, k

    def add(self, split: str, index: int, entry: dict) -> None:
        """Record a written shard and publish the manifest."""
        self.entries[split][index] = entry
        self.publish()

    def publish(self, final: bool = False) -> None:
        """Write manifest.json (one process) or this process's part; with final=True, merge every
        process's part and, when that completes the wanted shards, write manifest.json."""
        self._list_entries()
        self.manifest["complete"] = all(k in self.entries[s] for s, k in self.every)
        if self.world_size == 1:
            write_manifest(self.out, self.manifest)
            return
        self._write_part()
        if final:  # merge every process's shards; the one that completes the set writes manifest.json
            for _, other in _recorded(self.out):
                for s, e in _shard_entries(other):
                    self.entries[s].setdefault(e["index"], e)
            if all(k in self.entries[s] for s, k in self.wanted):
                self._list_entries()
                self.manifest["complete"] = all(k in self.entries[s] for s, k in self.every)
                write_manifest(self.out, self.manifest)

    def _list_entries(self) -> None:
        for s in SPLITS:
            lst = [self.entries[s][k] for k in sorted(self.entries[s])]
            self.manifest["splits"][s]["shards"] = lst
            self.manifest["splits"][s].update(totals(lst))

    def _write_part(self) -> None:
        part = dict(self.manifest)
        part["splits"] = {s: dict(self.manifest["splits"][s]) for s in SPLITS}
        for s in SPLITS:  # a part lists this process's shards only
            shards = self.entries[s]
            part["splits"][s]["shards"] = [shards[k] for k in sorted(shards) if (s, k) in self.mine]
        part["complete"] = False
        write_manifest(self.out, part, name=_part_name(self.rank))


def _take_captured(seqs: list, captured: list) -> int:
    """Give each sequence the features captured while the target answered (bf16 on the CPU) where the ids
    it read begin with the sequence's ids -- the same tokens at the same positions, so the features are the
    ones a pass over the sequence computes (up to rounding); returns how many got them."""
    taken = 0
    for seq, cap in zip(seqs, captured):
        if cap is None:
            continue
        ids, hidden = cap
        n = len(seq["input_ids"])
        if n <= len(ids) and ids[:n] == seq["input_ids"]:
            seq["hidden"] = hidden if n == len(hidden) else hidden[:n].clone()
            taken += 1
    return taken


class _ShardMaker:
    """Turns a chunk of conversations into a shard as the manifest's identity `ident` says: responses
    (the target's or the data's), token ids and loss masks, features."""

    def __init__(self, model, tokenizer, ident: dict, *, batch_size: int, engine: str, progress: bool, phase: Callable):
        st = ident["settings"]
        self.model, self.tokenizer = model, tokenizer
        self.eos, self.pad_id = ident["tokenizer"]["eos_token_ids"], ident["tokenizer"]["pad_token_id"]
        self.vocab, self.hidden = ident["target"]["vocab_size"], ident["target"]["hidden_size"]
        self.responses, self.max_len, self.seed, self.features = (
            st["responses"],
            st["max_len"],
            st["seed"],
            st["features"],
        )
        self.max_new_tokens, self.temperature = st["max_new_tokens"], st["temperature"]  # None without responses
        self.batch_size, self.engine, self.progress, self.phase = batch_size, engine, progress, phase
        # Self-distilled answers bring their features: the target computed them while answering (the chat
        # template's text after the end of turn is fed too); only sequences whose stored ids differ from the
        # ids it read (a re-tokenised answer) go through the feature pass.
        self.capture = self.features and self.responses == "target"
        self.tail = end_of_turn_tail(tokenizer, self.eos) if self.capture else []

    def write(self, out: str, split: str, index: int, chunk: list, tag: str) -> dict:
        """Build shard `index` of `split` from `chunk` and write it to `out`; returns its manifest entry."""
        timing = {}
        todo = self._answers(chunk, (split, index), tag, timing)
        self.phase(f"encoding the conversations ({tag})")
        seqs, keys, skipped, captured = self._encode(chunk, todo)
        if self.capture:
            timing["features_captured"] = _take_captured(seqs, captured)
        if self.features and seqs:
            self.phase(f"computing the target's features ({tag})")
            self._add_features(seqs, tag, timing)
        self.phase(f"writing {shard_name(split, index)} in --out {out!r}")
        entry = write_shard(out, shard_name(split, index), seqs, self.vocab, keys, self.features, self.hidden)
        entry.update(
            index=index, conversations=len(chunk), skipped=skipped, timing=timing, dtype=_dtype_name(self.model)
        )
        return entry

    def _answers(self, chunk: list, key: tuple, tag: str, timing: dict) -> list:
        """(messages, open_last, captured) per conversation: the target's own answers, or the data's
        (trimmed); captured: (ids, features) the target read and computed in its last round, or None."""
        if self.responses != "target":
            return [(_trim(c.messages, self.max_len), False, None) for c in chunk]
        from tqdm.auto import tqdm

        self.phase(f"generating the target's responses ({tag})")
        turns = sum(c.user_turns() for c in chunk)
        gst = GenStats()
        with tqdm(total=turns, desc=f"{tag}: responses", unit="turn", disable=not self.progress, leave=False) as bar:
            answered = respond(
                self.model,
                self.tokenizer,
                [c.messages for c in chunk],
                eos_ids=self.eos,
                max_new_tokens=self.max_new_tokens,
                max_len=self.max_len,
                temperature=self.temperature,
                seed=self.seed,
                batch_size=self.batch_size,
                engine=self.engine,
                key=key,
                pad_id=self.pad_id,
                stats=gst,
                progress=bar,
                features=self.capture,
                tail=self.tail,
            )
        timing.update(
            responses_seconds=round(gst.seconds, 3),
            responses_turns=gst.prompts,
            responses_tokens=gst.new_tokens,
            responses_engine=gst.engine,
        )
        return [(a.messages, a.open_last, None if a.hidden is None else (a.ids, a.hidden)) for a in answered]

    def _encode(self, chunk: list, todo: list) -> tuple:
        """(sequences {"input_ids", "loss_mask"}, their conversation keys, the number skipped: empty, not
        rendered by the template, or without a response token; each sequence's captured (ids, features) or
        None)."""
        seqs, keys, skipped, captured = [], [], 0, []
        for c, (msgs, open_last, cap) in zip(chunk, todo):
            if not msgs:
                skipped += 1
                continue
            try:
                ids, mask = encode(self.tokenizer, msgs, self.eos, max_len=self.max_len, open_last=open_last)
            except TemplateError:
                skipped += 1
                continue
            if not any(mask):
                skipped += 1
                continue
            seqs.append({"input_ids": ids, "loss_mask": mask})
            keys.append(c.key)
            captured.append(cap)
        return seqs, keys, skipped, captured

    def _add_features(self, seqs: list, tag: str, timing: dict) -> None:
        """Add the target features ("hidden", bf16 on the CPU) of each sequence that has none, batched by
        length."""
        from tqdm.auto import tqdm

        todo = [i for i, x in enumerate(seqs) if "hidden" not in x]
        order = sorted(todo, key=lambda i: len(seqs[i]["input_ids"]))
        t0, ntok = time.perf_counter(), 0
        total_tokens = sum(len(seqs[i]["input_ids"]) for i in todo)
        with tqdm(
            total=total_tokens, desc=f"{tag}: features", unit="tok", disable=not self.progress, leave=False
        ) as bar:
            for b0 in range(0, len(order), self.batch_size):
                idx = order[b0 : b0 + self.batch_size]
                T = len(seqs[idx[-1]]["input_ids"])
                inp = torch.full((len(idx), T), self.pad_id, dtype=torch.long)
                att = torch.zeros((len(idx), T), dtype=torch.bool)
                for r, i in enumerate(idx):
                    n = len(seqs[i]["input_ids"])
                    inp[r, :n] = torch.tensor(seqs[i]["input_ids"])
                    att[r, :n] = True
                hid = target_hidden(self.model, inp, att).to("cpu", torch.bfloat16)
                for r, i in enumerate(idx):
                    n = len(seqs[i]["input_ids"])
                    seqs[i]["hidden"] = hid[r, :n].clone()
                    ntok += n
                bar.update(int(att.sum()))
        timing.update(prefill_seconds=round(time.perf_counter() - t0, 3), prefill_tokens=ntok)
