"""File helpers shared by the package: a file's sha256 and writes that never leave a half-written file.

A leaf module (standard library only), so that any module can use it without import cycles.
"""

from __future__ import annotations

import hashlib
import os


def sha256_file(path) -> str:
    """Hex sha256 of the file at `path`, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(text: str, path: str) -> None:
    """Write a text file through a temporary file beside it and os.replace: readers see the old file or
    the new one, never a part."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
