"""Fingerprints recorded with a trained head: the target's weights and the data manifest."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Optional


def fingerprint_target(path: Optional[str]) -> Optional[str]:
    """sha256 over a target folder's config.json and, per weight file, its name, size and first and last
    MiB (cheap for an 8B target; changes whenever the weights are replaced)."""
    if path is None or not os.path.isdir(path):
        return None
    h = hashlib.sha256()
    cfg = os.path.join(path, "config.json")
    if os.path.isfile(cfg):
        with open(cfg, "rb") as f:
            h.update(f.read())
    for name in sorted(os.listdir(path)):
        if not (name.endswith(".safetensors") or name.endswith(".bin")):
            continue
        file = os.path.join(path, name)
        size = os.path.getsize(file)
        h.update(f"{name}:{size}".encode())
        with open(file, "rb") as f:
            h.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(size - (1 << 20))
                h.update(f.read(1 << 20))
    return "sha256:" + h.hexdigest()


def manifest_hash(manifest: Optional[dict]) -> Optional[str]:
    """sha256 of the data manifest's canonical JSON (None without a manifest)."""
    if not manifest:
        return None
    return "sha256:" + hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()
