"""Checks of the arguments about prompt ids, backends and CUDA graphs, shared by the subcommands; none loads a
model. (The checks of --target, --draft and --device, shared with the demo, are in specdec.loading and
specdec.arguments; the dtype of --dtype is specdec.dtypes.resolve_dtype.)

Each raises CliError (see specdec.cli.errors) with the one line the user sees.
"""

from __future__ import annotations

from typing import Optional

from ..arguments import Verbatim
from .errors import arg_error


def vocab_size(cfg: Optional[dict]) -> Optional[int]:
    """vocab_size of a model's config.json (or of its text_config), None when absent or not a positive int."""
    if not cfg:
        return None
    v = cfg.get("vocab_size")
    if v is None and isinstance(cfg.get("text_config"), dict):
        v = cfg["text_config"].get("vocab_size")
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def check_ids_in_vocab(prompts: list, vocab: int, source: str) -> None:
    """CliError for --prompt-ids outside [0, vocab); `source` says where vocab comes from."""
    for b, p in enumerate(prompts):
        bad = [t for t in p if not 0 <= t < vocab]
        if bad:
            raise arg_error(
                "--prompt-ids",
                f"token ids in [0, {vocab}) ({source})",
                Verbatim(f"prompt {b} with ids outside it: {bad[:5]}"),
            )


def check_backend(backend: Optional[str], device) -> None:
    """The named backend must be able to run some kernel on `device` (not built, no Triton, wrong device)."""
    if backend is None:
        return
    import specdec_kernels as sk

    reasons = []
    for name in sk.list_ops():
        op = sk.get_op(name)
        if backend not in op.backends:
            continue
        reason = op.static_reason(backend, device)
        if reason is None:
            return
        reasons.append(reason)
    why = reasons[0] if reasons else "no kernel implements it"
    raise arg_error(
        "--backend",
        f"a backend that can run on the {device.type} device of --device",
        Verbatim(f"{backend!r}, which cannot: {' '.join(why.split())}"),
    )


def check_cuda_graph_device(args, device) -> None:
    """--cuda-graph needs a CUDA --device (a usage error before anything loads)."""
    if getattr(args, "cuda_graph", False) and device.type != "cuda":
        raise arg_error("--cuda-graph", "a CUDA --device (graphs replay CUDA kernels)", Verbatim(f"device {device}"))
