"""File helpers shared by the package: the specdec home folder, a file's sha256, writes that never leave a
half-written file, and this machine's folders written portably in recorded text.

A leaf module (standard library only), so that any module can use it without import cycles.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
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
