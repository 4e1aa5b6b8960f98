"""Draft heads (EAGLE, FSPAD, GRIFFIN) behind one interface, and their checkpoint loaders.

    config = DraftConfig.from_target(target.config, "griffin")
    head = build_draft_head(config)                # or load_draft_head(path, device, dtype)
    check_head_fits(head, target.config)          # HeadTargetMismatch for a target of another hidden size
    head.bind_target(target.get_input_embeddings(), target.lm_head)
    cache = head.new_cache(batch_size, max_len)    # page_size=16: a PagedDraftCache (NHD pages + block table)
    out = head(features, input_ids, position_ids, cache, cache_len, tree_mask)   # DraftOutput(logits, hidden)
    out = head.forward_train(features, input_ids, logits_index=mask)             # TrainOutput (training)
    head.save_pretrained(path)

A reduced draft vocabulary: DraftConfig(..., draft_vocab_size=V_d), then head.set_draft_vocab(ids) (target
ids, e.g. specdec.training.vocab.top_tokens); logits are then [.., V_d], head.to_target_ids maps back.

See base.DraftHead.forward for the decode-path contract and forward_sequence for training, and
checkpoint.py for the checkpoint formats (ours and the published EAGLE/FSPAD/GRIFFIN layouts).
"""

from .base import DraftHead, DraftOutput, TrainOutput
from .checkpoint import (
    CheckpointError,
    HeadTargetMismatch,
    build_draft_head,
    check_head_fits,
    infer_kind,
    load_draft_head,
)
from .config import KINDS, DraftConfig
from .draft_cache import DraftCache, PagedDraftCache
from .eagle import EagleHead
from .fspad import FSPADHead
from .griffin import GriffinHead
from .layers import TrainKV

__all__ = [
    "KINDS",
    "CheckpointError",
    "DraftCache",
    "PagedDraftCache",
    "DraftConfig",
    "DraftHead",
    "DraftOutput",
    "TrainKV",
    "TrainOutput",
    "EagleHead",
    "FSPADHead",
    "GriffinHead",
    "HeadTargetMismatch",
    "build_draft_head",
    "check_head_fits",
    "infer_kind",
    "load_draft_head",
]
