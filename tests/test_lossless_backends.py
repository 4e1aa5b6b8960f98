"""The drafting system is lossless with every kernel backend selected.

Greedy speculative decoding with SPECDEC_BACKEND=b (and `generate(..., backend=b)`) runs every kernel of the decode step
(build_tree, select_tree, tree_attention, compact_kv, verify_greedy, and the fused input blocks of the
FSPAD/GRIFFIN heads) on backend b, and must reproduce the target's own greedy decoding token for token.
The oracle head drafts with the target itself, so long paths are accepted and compaction really moves
cache slots; the random heads exercise rejection at every level. Triton runs under its interpreter on
CPU, so the shapes are kept tiny.
"""
from __future__ import annotations

import pytest

from helpers import backend_params
from specdec.decoding import TargetOracleHead, generate
from specdec_kernels.ops.attention import _TREE_ATTENTION
from test_lossless import PROMPTS, head, hf_greedy, target
from tiny_models import one_thread  # noqa: F401  (autouse fixture)

TREE = dict(tree_top_k=3, depth=3, total_tokens=10)
NEW_TOKENS = 8


@pytest.mark.parametrize("backend,device", backend_params(_TREE_ATTENTION))
@pytest.mark.parametrize("draft", ["oracle", "eagle", "griffin"])
def test_greedy_lossless_per_backend(backend, device, draft, monkeypatch):
    monkeypatch.setenv("SPECDEC_BACKEND", backend)  # the draft head's kernels too, not only generate's own
    model = target("llama", 4.0)
    drafter = TargetOracleHead(model) if draft == "oracle" else head("llama", draft, 4.0)
    res = generate(model, drafter, PROMPTS, max_new_tokens=NEW_TOKENS, backend=backend, **TREE)
    want = [hf_greedy("llama", 4.0, tuple(p), NEW_TOKENS) for p in PROMPTS]
    assert res.sequences == want
    if draft == "oracle":  # the oracle must really have accepted multi-token paths (compaction exercised)
        assert res.tau > 1.5, res.summary()
