"""Export a trained head for shipping: `python -m specdec.training.export_head SRC DST [--readme FILE]`.

Writes to DST exactly the files the package ships of a head (python/specdec/heads/<target>/<kind>/):
config.json and model.safetensors with the float weights in bf16 (the draft-to-target id map, if any,
stays int64), and README.md: --readme's markdown file, or without it a short description written from the
config (kind, size, training data, last measured acceptance). The head is written through
specdec.files.atomic_folder, so DST is never half-written: readers see the old folder or the new one. The
text it writes names this machine's folders portably ($SPECDEC_HOME for the specdec home, ~ for the user's
home): a shipped head carries no path of the machine that trained it.

How a head was made (the recipe, the training logs and curves, the data manifest) is kept outside the
package, in the repository's bench/results/training/: scripts/train_heads.sh copies those records there
with `copy_portable`, which writes paths the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from typing import Optional

import torch

from ..files import atomic_folder, portable_paths

# The files of a shipped head: what export writes and what setup.py's package_data installs.
HEAD_FILES = ("config.json", "model.safetensors", "README.md")
TEXT_SUFFIXES = (".json", ".md", ".csv", ".txt")


def copy_portable(src: str, dst: str) -> str:
    """Copy file `src` to `dst`; a text file (.json, .md, .csv, .txt) with its paths made portable
    (`portable_paths`), any other file byte for byte. Returns dst."""
    if src.endswith(TEXT_SUFFIXES):
        with open(src, encoding="utf-8") as f:
            text = portable_paths(f.read())
        with open(dst, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        shutil.copy2(src, dst)
    return dst


def head_readme(config: dict) -> str:
    """A short README.md for a head from its config.json: what it is, how to load it, its training data
    and the last acceptance measured (`specdec validate`'s, else the training's last validation).

    Example:
        >>> from specdec.training.export_head import head_readme
        >>> print(head_readme({"specdec_kind": "eagle", "hidden_size": 16, "vocab_size": 64}).splitlines()[0])
        # EAGLE draft head
    """
    kind = config.get("specdec_kind", "draft")
    draft_vocab = config.get("draft_vocab_size")
    lines = [
        f"# {kind.upper()} draft head",
        "",
        f"A {kind} draft head of specdec (one decoder layer) for a target of hidden size "
        f"{config.get('hidden_size')} and vocabulary {config.get('vocab_size')}"
        + (f", drafting over the {draft_vocab} most frequent response tokens" if draft_vocab else "")
        + ". Load it with `specdec.models.load_draft_head(FOLDER)` or pass the folder as `--draft`.",
        "",
        "- `config.json`: the architecture, `specdec_training` (the training settings and validations) and "
        "`specdec_validation` (the held-out acceptance and top-k coverage `--total-tokens auto` reads)",
        "- `model.safetensors`: the weights in bf16 (the draft-to-target id map in int64)",
    ]
    training = config.get("specdec_training") or {}
    data = training.get("data") or {}
    if data:
        lines += [
            "",
            f"Trained on {data.get('train_sequences')} sequences, validated on {data.get('val_sequences')} "
            f"(data manifest {data.get('manifest_sha256')}).",
        ]
    measured = (config.get("specdec_validation") or {}).get("result")
    if measured is None and (training.get("result") or {}).get("validation"):
        measured = training["result"]["validation"][-1]
    if measured:
        steps = sorted(int(k[4:]) for k in measured if re.fullmatch(r"acc_\d+", k))
        acc = " / ".join(f"{measured[f'acc_{s}']:.3f}" for s in steps)
        tau = f"; tau_chain {measured['tau_chain']:.2f}" if "tau_chain" in measured else ""
        lines += ["", f"Held-out acceptance per draft step: {acc}{tau}."]
    return "\n".join(lines) + "\n"


def export_head(src: str, dst: str, *, readme: Optional[str] = None, dtype=torch.bfloat16) -> str:
    """Write the head of folder `src` to `dst` in `dtype`: exactly config.json, model.safetensors and README.md
    (`readme`'s file, else `head_readme`); returns dst.

    Example:
        >>> import tempfile, os, torch
        >>> from specdec.models import DraftConfig, build_draft_head
        >>> from specdec.training.export_head import export_head
        >>> d = tempfile.mkdtemp()
        >>> head = build_draft_head(DraftConfig(kind="eagle", hidden_size=16, intermediate_size=32,
        ...     num_attention_heads=2, num_key_value_heads=1, vocab_size=64))
        >>> head.save_pretrained(os.path.join(d, "src"))
        >>> _ = export_head(os.path.join(d, "src"), os.path.join(d, "dst"))
        >>> sorted(os.listdir(os.path.join(d, "dst")))
        ['README.md', 'config.json', 'model.safetensors']
    """
    from ..models import load_draft_head

    head = load_draft_head(src, dtype=dtype)
    with atomic_folder(dst) as tmp:
        head.save_pretrained(tmp)
        config_path = os.path.join(tmp, "config.json")
        copy_portable(config_path, config_path)
        if readme is not None:
            copy_portable(readme, os.path.join(tmp, "README.md"))
        else:
            with open(config_path, encoding="utf-8") as f:
                text = head_readme(json.load(f))
            with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
                f.write(portable_paths(text))
        extra = sorted(set(os.listdir(tmp)) - set(HEAD_FILES))
        if extra:
            raise RuntimeError(f"export wrote files a shipped head does not have: {extra}")
    return dst


def main(argv=None) -> int:
    """Entry point of `python -m specdec.training.export_head`."""
    p = argparse.ArgumentParser(prog="python -m specdec.training.export_head", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="a head folder (e.g. a `specdec train` --out)")
    p.add_argument("dst", help="the folder to write (replaced if it exists)")
    p.add_argument("--readme", help="a markdown file to ship as README.md (default: one written from the config)")
    args = p.parse_args(argv)
    if not os.path.isdir(args.src):
        p.error(f"src: expected a folder, got {args.src!r}")
    if args.readme is not None and not os.path.isfile(args.readme):
        p.error(f"--readme: expected a file, got {args.readme!r}")
    print(export_head(args.src, args.dst, readme=args.readme))
    return 0


if __name__ == "__main__":
    sys.exit(main())
