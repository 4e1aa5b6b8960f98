"""Training data for the draft heads, from the target model (`specdec data`).

    from specdec.data import FeatureDataset, TokenDataset, OnlineFeatures, collate

    ds = FeatureDataset("data/smollm2", split="train")    # item: input_ids int64 [T], loss_mask bool [T],
                                                          #       hidden bf16 [T, H]
    ds.manifest, ds.token_counts()                        # dict; int64 [V] counts of response tokens
    batch = collate([ds[i] for i in range(8)], pad_id=0)  # right-padded; + attention_mask bool [B, T]

    toks = TokenDataset("data/smollm2-tokens", split="train")   # the same without hidden (online mode)
    batch = OnlineFeatures(model).add_to(collate([toks[i] for i in range(8)]))

Modules: sharegpt (sources: the ShareGPT dump, JSONL files; the train/val split), chat (token ids and
the loss mask from the tokenizer's chat template), responses (the target's own answers), shards
(files and manifest), dataset (the classes above), build (the pipeline), report (a build's summary),
provenance (is a model the target the data was built from); the command is specdec.cli.data.
Conventions (hidden[t], loss_mask[t], padding): see specdec.data.dataset.
"""

from .build import BuildMismatch, build
from .chat import TemplateError, encode
from .dataset import FeatureDataset, OnlineFeatures, TokenDataset, collate, target_hidden
from .shards import ShardError, read_manifest
from .sharegpt import Conversation, SourceError, load_conversations, normalize, split_of

__all__ = [
    "BuildMismatch",
    "Conversation",
    "FeatureDataset",
    "OnlineFeatures",
    "ShardError",
    "SourceError",
    "TemplateError",
    "TokenDataset",
    "build",
    "collate",
    "encode",
    "load_conversations",
    "normalize",
    "read_manifest",
    "split_of",
    "target_hidden",
]
