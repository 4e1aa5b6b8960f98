"""Export a trained head for shipping: `python -m specdec.heads.export SRC DST [--data DIR] [--recipe FILE]`.

Writes DST/config.json + DST/model.safetensors with the float weights in bf16 (the draft-to-target id map,
if any, stays int64), and beside them what makes the head reproducible and judgeable: the training
summary, logs and curves of SRC, the data manifest (--data: the `specdec data` folder it was trained on)
and the recipe (--recipe: a markdown file with the exact commands). The head is written to a temporary
folder first and renamed, so DST is never half-written. The text files it writes name this machine's
folders portably ($SPECDEC_HOME for the specdec home, ~ for the user's home): a shipped head carries no
path of the machine that trained it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from typing import Optional

import torch

# Files of a `specdec train` output folder that travel with the head.
TRAIN_FILES = ("summary.json", "train_log.csv", "val_log.csv", "curves.png")
TEXT_SUFFIXES = (".json", ".md", ".csv", ".txt")


def portable_paths(text: str) -> str:
    """`text` with this machine's folders written portably: the specdec home ($SPECDEC_HOME, default
    ~/.cache/specdec) as "$SPECDEC_HOME", then the user's home as "~" (whole path components only).

    Example:
        >>> import os
        >>> from specdec.heads.export import portable_paths
        >>> portable_paths(os.path.expanduser("~/runs/griffin")) == "~/runs/griffin"
        True
    """
    from ..targets import specdec_home

    for folder, name in ((str(specdec_home()), "$SPECDEC_HOME"), (os.path.expanduser("~"), "~")):
        if folder and folder != os.sep and folder != "~":
            text = re.sub(re.escape(folder.rstrip(os.sep)) + r"(?![^/\\\s\"',;)\]])", lambda m, name=name: name, text)
    return text


def export_head(
    src: str, dst: str, *, data: Optional[str] = None, recipe: Optional[str] = None, dtype=torch.bfloat16
) -> str:
    """Write the head of folder `src` to `dst` in `dtype` with its training records; returns dst.

    Example:
        >>> import tempfile, os, torch
        >>> from specdec.models import DraftConfig, build_draft_head
        >>> from specdec.heads.export import export_head
        >>> d = tempfile.mkdtemp()
        >>> head = build_draft_head(DraftConfig(kind="eagle", hidden_size=16, intermediate_size=32,
        ...     num_attention_heads=2, num_key_value_heads=1, vocab_size=64))
        >>> head.save_pretrained(os.path.join(d, "src"))
        >>> _ = export_head(os.path.join(d, "src"), os.path.join(d, "dst"))
        >>> sorted(os.listdir(os.path.join(d, "dst")))
        ['config.json', 'model.safetensors']
    """
    from ..models import load_draft_head

    head = load_draft_head(src, dtype=dtype)
    parent = os.path.dirname(os.path.abspath(dst))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would follow the folder into place
        head.save_pretrained(tmp)
        for name in TRAIN_FILES:
            if os.path.isfile(os.path.join(src, name)):
                shutil.copy2(os.path.join(src, name), os.path.join(tmp, name))
        if data is not None:
            shutil.copy2(os.path.join(data, "manifest.json"), os.path.join(tmp, "data_manifest.json"))
        if recipe is not None:
            shutil.copy2(recipe, os.path.join(tmp, "RECIPE.md"))
        for name in os.listdir(tmp):
            if name.endswith(TEXT_SUFFIXES):
                path = os.path.join(tmp, name)
                with open(path, encoding="utf-8") as f:
                    text = f.read()
                with open(path, "w", encoding="utf-8") as f:
                    f.write(portable_paths(text))
        if os.path.isdir(dst):
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def main(argv=None) -> int:
    """Entry point of `python -m specdec.heads.export`."""
    p = argparse.ArgumentParser(prog="python -m specdec.heads.export", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="a head folder (e.g. a `specdec train` --out)")
    p.add_argument("dst", help="the folder to write (replaced if it exists)")
    p.add_argument("--data", help="the `specdec data` folder the head was trained on (its manifest is copied)")
    p.add_argument("--recipe", help="a markdown file with the commands that made the head")
    args = p.parse_args(argv)
    for name in ("src", "data"):
        path = getattr(args, name)
        if path is not None and not os.path.isdir(path):
            p.error(f"{name}: expected a folder, got {path!r}")
    if args.recipe is not None and not os.path.isfile(args.recipe):
        p.error(f"--recipe: expected a file, got {args.recipe!r}")
    print(export_head(args.src, args.dst, data=args.data, recipe=args.recipe))
    return 0


if __name__ == "__main__":
    sys.exit(main())
