"""Draft heads (EAGLE, FSPAD, GRIFFIN) behind one interface, and their checkpoint loaders.

    config = DraftConfig.from_target(target.config, "griffin")
    head = build_draft_head(config)                # or load_draft_head(path, device, dtype)
    head.bind_target(target.get_input_embeddings(), target.lm_head)
    cache = head.new_cache(batch_size, max_len)
    out = head(features, input_ids, position_ids, cache, cache_len, tree_mask)   # DraftOutput(logits, hidden)
    head.save_pretrained(path)

See base.DraftHead.forward for the decode-path contract and forward_sequence for training, and
checkpoint.py for the checkpoint formats (ours and the published EAGLE/FSPAD/GRIFFIN layouts).
"""
from .base import DraftCache, DraftHead, DraftOutput
from .checkpoint import CheckpointError, build_draft_head, infer_kind, load_draft_head
from .config import KINDS, DraftConfig
from .eagle import EagleHead
from .fspad import FSPADHead
from .griffin import GriffinHead

__all__ = [
    "KINDS", "CheckpointError", "DraftCache", "DraftConfig", "DraftHead", "DraftOutput", "EagleHead", "FSPADHead",
    "GriffinHead", "build_draft_head", "infer_kind", "load_draft_head",
]
