"""File helpers shared by the package: the specdec home folder, a file's sha256, writes that never leave a
half-written file or folder, and this machine's folders written portably in recorded text.

A leaf module (standard library only), so that any module can use it without import cycles.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterator, Union


def sha256_file(path) -> str:
    """Hex sha256 of the file at `path`, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path, suffix: str = "") -> Iterator[str]:
    """A temporary path beside `path` to write a file at (by any writer: torch.save, safetensors, savefig):
    when the block ends it is flushed to disk and renamed onto `path` with os.replace, so readers see the
    old file or the new one, never a part; when the block raises it is removed. `suffix` ends the temporary
    name (writers that pick the format from the extension need it, e.g. ".png").

    Example:
        >>> import os, tempfile
        >>> from specdec.files import atomic_path
        >>> target = os.path.join(tempfile.mkdtemp(), "x.bin")
        >>> with atomic_path(target) as tmp:
        ...     with open(tmp, "wb") as f:
        ...         _ = f.write(b"ok")
        >>> open(target, "rb").read(), sorted(os.listdir(os.path.dirname(target)))
        (b'ok', ['x.bin'])
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}{suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_folder(path, *, merge: bool = False) -> Iterator[str]:
    """A new empty folder beside `path` (".NAME.tmp-PID") to write a whole folder in (e.g. save_pretrained).

    When the block raises, the temporary folder is removed and `path` is left exactly as it was. When the
    block ends, the files written are flushed to disk and put in place:

    - merge=False (default): the temporary folder replaces `path`. Without an old folder it is one rename, so
      readers see no folder or the whole new one. With one, the old folder is first renamed aside
      (".NAME.old-PID"), the new one renamed to `path`, and then the old one is deleted: readers see the old
      folder or the new one, never a mix, but `path` is missing between the two renames (POSIX cannot swap
      two folders in one step); a process killed there leaves the old folder whole under ".NAME.old-PID".
      A rename that fails puts the old folder back. What the old folder held besides is gone.
    - merge=True: each file of the temporary folder is renamed into `path` (created if missing) over the
      file of the same name, and the other entries of `path` are kept: for a folder that also holds what
      this block does not write (a training run's out/, whose head sits beside its logs and checkpoints).
      Each file is replaced atomically, but a reader may see some files new and others still old.

    NotADirectoryError, before the block runs, when `path` exists and is not a folder. A temporary folder
    left by a killed process of the same id is removed first.

    Example:
        >>> import os, tempfile
        >>> from specdec.files import atomic_folder
        >>> target = os.path.join(tempfile.mkdtemp(), "head")
        >>> with atomic_folder(target) as tmp:
        ...     with open(os.path.join(tmp, "config.json"), "w") as f:
        ...         _ = f.write("{}")
        >>> os.listdir(target), sorted(os.listdir(os.path.dirname(target)))
        (['config.json'], ['head'])
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{path}: expected a folder (or nothing) to write a folder at")
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    _remove(tmp)
    os.mkdir(tmp)  # os.mkdir, not tempfile.mkdtemp: the folder gets the umask's mode, not 0700
    try:
        yield tmp
        _fsync_files(tmp)
        if merge:
            os.makedirs(path, exist_ok=True)
            for entry in os.listdir(tmp):
                os.replace(os.path.join(tmp, entry), os.path.join(path, entry))
            os.rmdir(tmp)
        else:
            _replace_folder(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _replace_folder(new: str, path: str) -> None:
    """Rename folder `new` to `path`, the folder there (if any) renamed aside first and deleted after."""
    if not os.path.lexists(path):
        os.replace(new, path)
        return
    old = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.old-{os.getpid()}")
    _remove(old)
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)
        raise
    _remove(old)


def _remove(path: str) -> None:
    """Delete `path`, a folder tree, a file or a link, if it exists."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _fsync_files(folder: str) -> None:
    """fsync every file under `folder`, so that a crash after the rename cannot leave empty files."""
    for root, _dirs, files in os.walk(folder):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def temporary_of(name: str):
    """The file name that `name`, a temporary left in a folder by atomic_path (".NAME.tmp-PID[suffix]"),
    would have become; None for any other name. Lets cleanup code find what a killed writer left behind.

    Example:
        >>> from specdec.files import temporary_of
        >>> temporary_of(".train-00002.safetensors.tmp-4242"), temporary_of("train-00002.safetensors")
        ('train-00002.safetensors', None)
    """
    m = re.fullmatch(r"\.(.+)\.tmp-\d+(\.[A-Za-z0-9]+)?", name)
    return m.group(1) if m else None


def atomic_write_text(text: str, path: str) -> None:
    """Write a text file through atomic_path: readers see the old file or the new one, never a part."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def read_json_store(path) -> dict:
    """A machine-measurement cache (a JSON object of key -> result): {} when missing, damaged or not an object,
    so a damaged cache is measured again and rewritten."""
    path = Path(path)
    try:
        store = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        return {}
    return store if isinstance(store, dict) else {}


def store_json_entry(path, key: str, entry) -> None:
    """Set `key` to `entry` in the read_json_store cache at `path`: the file is read again and rewritten
    atomically under an exclusive lock (a `.<name>.lock` file beside it), so processes measuring different
    keys at the same time (two training runs, a data build beside an evaluation) keep each other's results.
    A read-only or unlockable home is no error: the result is measured again next time."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path.parent / f".{path.name}.lock"):
            store = read_json_store(path)
            store[key] = entry
            atomic_write_text(json.dumps(store, indent=1, sort_keys=True), str(path))
    except OSError:
        pass


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `lock_path` (created if missing) for the with-block; none where the
    platform has no fcntl (the write stays atomic, only a concurrent update may be lost)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(lock_path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def specdec_home(home: Union[str, os.PathLike, None] = None) -> Path:
    """The cache folder: `home`, else $SPECDEC_HOME, else ~/.cache/specdec."""
    if home is None:
        home = os.environ.get("SPECDEC_HOME") or os.path.join("~", ".cache", "specdec")
    return Path(os.path.expanduser(str(home))).absolute()


def downloads_dir(home: Union[str, os.PathLike, None] = None) -> Path:
    """Where a by-hand download goes: <home>/downloads (the wheel, or the GGUF taken out of it)."""
    return specdec_home(home) / "downloads"


def portable_paths(text: str) -> str:
    """`text` with this machine's folders written portably: the specdec home ($SPECDEC_HOME, default
    ~/.cache/specdec) as "$SPECDEC_HOME", then the user's home as "~" (whole path components only).

    Example:
        >>> import os
        >>> from specdec.files import portable_paths
        >>> portable_paths(os.path.expanduser("~/runs/griffin")) == "~/runs/griffin"
        True
    """
    for folder, name in ((str(specdec_home()), "$SPECDEC_HOME"), (os.path.expanduser("~"), "~")):
        if folder and folder != os.sep and folder != "~":
            text = re.sub(re.escape(folder.rstrip(os.sep)) + r"(?![^/\\\s\"',;)\]])", lambda m, name=name: name, text)
    return text
