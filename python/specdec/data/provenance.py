"""Which target a data folder was built from: the manifest's "target" record (specdec.data.build.target_identity),
checked against a loaded model before that model is used with the folder's features."""

from __future__ import annotations

from typing import Optional

from .build import target_identity


class DataTargetMismatch(ValueError):
    """A target other than the one a data folder was built from."""


def check_built_from(manifest: dict, model, path: Optional[str], name: str) -> None:
    """Raise DataTargetMismatch unless `model` (a Hugging Face causal LM loaded from `path`; `name` is how
    the message calls it) is the target the data of `manifest` was built from: the same hidden size and
    vocabulary, and the same config (sha256 of its config.json). A manifest without a target record passes.

    The features are the data's target's; the greedy tokens come from this model's output layer: another
    model of the same sizes (another checkpoint, a fine-tune) would measure nonsense.
    """
    want = manifest.get("target", {})
    got = (model.config.hidden_size, model.config.vocab_size)
    if want and (want.get("hidden_size"), want.get("vocab_size")) != got:
        raise DataTargetMismatch(
            f"the data was built from a target of hidden size {want.get('hidden_size')} and vocabulary "
            f"{want.get('vocab_size')}; {name!r} has {got[0]} and {got[1]}"
        )
    have = target_identity(model, path).get("config_sha256")
    if want.get("config_sha256") and have != want["config_sha256"]:
        raise DataTargetMismatch(
            f"the data was built from {want.get('path') or 'another target'} (config sha256 "
            f"{want['config_sha256'][:12]}...); {name!r} has another config (sha256 {have[:12]}...)"
        )
