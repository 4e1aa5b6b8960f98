"""Tiny random models shared by the model-level tests (CPU, fp32, no downloads).

One factory of Hugging Face targets for test_target.py, test_decoding.py and test_lossless.py, so every
test drives the same kind of model: 2 layers, 4 attention heads over 2 KV heads, untied lm_head, no
special tokens. And the reduction length of a draft head (`head_reduction`), from which the tests that
compare two fp32 computations of a head derive their tolerance (helpers.tolerance).
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

# family -> (config class, model class, config fields the family needs beyond the common ones)
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {}),  # default sliding window 4096 > any cache here
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),  # q/k/v biases
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 16}),  # q/k norms
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one intra-op thread is faster than two and immune to a busy machine.

    Import it into a test module (`from tiny_models import one_thread  # noqa: F401`) to apply it there."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_target(
    family: str = "llama",
    vocab: int = 128,
    hidden: int = 64,
    max_positions: int = 256,
    sharpen: float = 1.0,
    seed: int = 0,
    **config,
):
    """A tiny random target (2 layers, 4 heads, 2 KV heads, intermediate 2 * hidden, fp32, eval).

    Weights are drawn from `torch.manual_seed(seed)`. `sharpen` scales the lm_head so the next-token
    distributions are peaked (EAGLE-2 then grows deep trees, as with real models). `config` adds or overrides
    config fields (e.g. `sliding_window`). There are no special tokens: `model.generate` never stops early
    and pads with 0."""
    cfg_cls, model_cls, extra = FAMILIES[family]
    cfg = cfg_cls(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        **dict(extra, **config),
    )
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def head_reduction(cfg, keys: int) -> int:
    """Terms summed, one reduction after the other, on the longest path from a draft head's inputs to its
    logits (cfg: a specdec.models.DraftConfig; keys: the most key slots its attention runs over).

    fc over [e; f] (2H), the input block's norm (H) and MLP (H in, I out; GRIFFIN's up_proj 2H), q/k (H),
    the scores (head_dim), softmax and P.V (keys, twice), o_proj (heads x head_dim), the layer's norm (H)
    and MLP (H, I), the lm_head (H). The rounding of such a chain grows like the square root of the total
    (helpers.tolerance).
    """
    H, I = cfg.hidden_size, cfg.intermediate_size
    return 2 * H + H + 2 * H + I + H + cfg.head_dim + 2 * keys + cfg.num_attention_heads * cfg.head_dim + H + H + I + H
