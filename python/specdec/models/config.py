"""DraftConfig: the shape of a one-layer draft head (EAGLE, FSPAD, GRIFFIN).

The field names are those of a Hugging Face Llama config, so the config.json of a published draft
(docs/checkpoints.md) reads directly; `specdec_kind` records which head a saved config belongs to.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from ..head_kinds import KINDS

# rope_scaling types the heads implement (the original EAGLE loaders know only linear and dynamic;
# llama3 is what Llama-3.1+ targets declare, so a head made with from_target matches its target).
ROPE_TYPES = ("default", "linear", "dynamic", "llama3")


@dataclass
class DraftConfig:
    """Hyper-parameters of a draft head; all heads have one Llama-style decoder layer.

    kind: "eagle" | "fspad" | "griffin". head_dim defaults to hidden_size // num_attention_heads and
    num_key_value_heads to num_attention_heads. rope_scaling: None or {"type"/"rope_type": "linear" |
    "dynamic" | "llama3", "factor": ..., ...}. bias: fc has a bias (the published default); qkv_bias:
    q/k/v projections have biases (Qwen2-style drafts). initializer_range: std of the random init.
    draft_vocab_size: None (the draft predicts the whole vocabulary) or V_d <= vocab_size: a reduced draft
    vocabulary (FR-Spec / EAGLE-3): the head's output layer covers V_d target tokens, listed by its
    `draft_to_target` map (int64 [V_d], saved with the head); their rows come from the target's frozen
    lm_head. vocab_size stays the TARGET's vocabulary (token ids in and out are target ids).
    """

    kind: str = "eagle"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_attention_heads: int = 32
    num_key_value_heads: Optional[int] = None
    head_dim: Optional[int] = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None
    max_position_embeddings: int = 2048
    bias: bool = True
    qkv_bias: bool = False
    initializer_range: float = 0.02
    draft_vocab_size: Optional[int] = None
    extra: dict = field(default_factory=dict, repr=False)  # unknown config.json fields, kept on save

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"DraftConfig.kind: expected one of {KINDS}, got {self.kind!r}")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"DraftConfig: hidden_size {self.hidden_size} is not a multiple of "
                    f"num_attention_heads {self.num_attention_heads}; give head_dim explicitly"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"DraftConfig.{name}: expected a positive int, got {v!r}")
        dv = self.draft_vocab_size
        if dv is not None and (not isinstance(dv, int) or isinstance(dv, bool) or not 0 < dv <= self.vocab_size):
            raise ValueError(
                f"DraftConfig.draft_vocab_size: expected None or an int in [1, vocab_size={self.vocab_size}], "
                f"got {dv!r}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"DraftConfig: num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads} (GQA groups heads evenly)"
            )
        if self.head_dim % 2:
            raise ValueError(f"DraftConfig.head_dim: rotary embeddings need an even head_dim, got {self.head_dim}")
        self.rope_scaling = normalize_rope_scaling(self.rope_scaling)

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def from_target(cls, hf_config, kind: str, **overrides) -> "DraftConfig":
        """A head config matching a target model's Hugging Face config (Llama, Mistral, Qwen2, ...).

        Takes vocabulary, widths, heads, norm eps and RoPE from the target (transformers 4.x fields
        rope_theta/rope_scaling or 5.x rope_parameters); q/k/v biases follow the target's
        (attention_bias, or Qwen2's built-in biases). `overrides` set any field (e.g. intermediate_size).
        """
        get = (
            (lambda k, d=None: hf_config.get(k, d))
            if isinstance(hf_config, dict)
            else (lambda k, d=None: getattr(hf_config, k, d))
        )
        theta, scaling = _rope_from_hf(get)
        model_type = str(get("model_type", "") or "")
        qkv_bias = bool(get("attention_bias", False)) or model_type in ("qwen2", "qwen2_moe", "qwen2_vl")
        nh = int(get("num_attention_heads"))
        kw = dict(
            kind=kind,
            vocab_size=int(get("vocab_size")),
            hidden_size=int(get("hidden_size")),
            intermediate_size=int(get("intermediate_size")),
            num_attention_heads=nh,
            num_key_value_heads=int(get("num_key_value_heads", None) or nh),
            head_dim=get("head_dim", None),
            rms_norm_eps=float(get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=int(get("max_position_embeddings", 2048)),
            bias=True,
            qkv_bias=qkv_bias,
        )
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def from_dict(cls, d: dict, kind: Optional[str] = None) -> "DraftConfig":
        """Read an HF-style config.json dict (ours, or a published draft's); `kind` overrides specdec_kind."""
        d = dict(d)
        kind = kind or d.pop("specdec_kind", None) or "eagle"
        d.pop("specdec_kind", None)
        layers = d.get("num_hidden_layers", 1)
        if layers not in (None, 1):
            raise ValueError(f"config.json: num_hidden_layers = {layers}; the draft heads have exactly one layer")
        act = d.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise ValueError(f"config.json: hidden_act = {act!r}; the draft heads implement SwiGLU (silu) only")
        get = d.get
        theta, scaling = _rope_from_hf(get)
        names = {f.name for f in dataclasses.fields(cls)} - {"kind", "extra", "rope_theta", "rope_scaling"}
        kw = {k: d[k] for k in names if k in d and d[k] is not None}
        for k in ("bias", "qkv_bias"):
            if k in kw:
                kw[k] = bool(kw[k])
        # fields save_pretrained rewrites itself are not carried as extras
        known = names | {
            "rope_theta",
            "rope_scaling",
            "rope_parameters",
            "num_hidden_layers",
            "hidden_act",
            "architectures",
            "torch_dtype",
            "dtype",
        }
        extra = {k: v for k, v in d.items() if k not in known}
        return cls(kind=kind, rope_theta=theta, rope_scaling=scaling, extra=extra, **kw)

    def to_dict(self) -> dict:
        """HF-style config.json content (what save_pretrained writes), with `specdec_kind`."""
        d: dict[str, Any] = dict(self.extra)
        d.update(
            {
                "specdec_kind": self.kind,
                "architectures": [
                    {"eagle": "EagleDraftHead", "fspad": "FSPADDraftHead", "griffin": "GriffinDraftHead"}[self.kind]
                ],
                "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size,
                "intermediate_size": self.intermediate_size,
                "num_hidden_layers": 1,
                "num_attention_heads": self.num_attention_heads,
                "num_key_value_heads": self.num_key_value_heads,
                "head_dim": self.head_dim,
                "hidden_act": "silu",
                "rms_norm_eps": self.rms_norm_eps,
                "rope_theta": self.rope_theta,
                "rope_scaling": self.rope_scaling,
                "max_position_embeddings": self.max_position_embeddings,
                "bias": self.bias,
                "qkv_bias": self.qkv_bias,
                "initializer_range": self.initializer_range,
                "draft_vocab_size": self.draft_vocab_size,
            }
        )
        return d


def normalize_rope_scaling(rs: Optional[dict]) -> Optional[dict]:
    """None for plain RoPE, else a dict with "rope_type" in ROPE_TYPES and its parameters checked."""
    if rs is None:
        return None
    if not isinstance(rs, dict):
        raise TypeError(f"rope_scaling: expected None or a dict, got {type(rs).__name__}")
    rs = {k: v for k, v in rs.items() if k != "rope_theta"}
    rtype = rs.pop("rope_type", None) or rs.pop("type", None) or "default"
    rs.pop("type", None)
    if rtype not in ROPE_TYPES:
        raise NotImplementedError(f"rope_scaling: type {rtype!r} is not implemented (supported: {ROPE_TYPES})")
    if rtype == "default":
        return None
    factor = rs.get("factor")
    if not isinstance(factor, (int, float)) or factor <= 0:
        raise ValueError(f"rope_scaling: {rtype} scaling needs a positive 'factor', got {factor!r}")
    if rtype == "llama3":
        for k in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
            if k not in rs:
                raise ValueError(f"rope_scaling: llama3 scaling needs {k!r}, got keys {sorted(rs)}")
    return {"rope_type": rtype, **rs}


def _rope_from_hf(get) -> tuple:
    """(rope_theta, rope_scaling) from an HF config: 4.x fields or 5.x `rope_parameters`."""
    rp = get("rope_parameters", None)
    theta = get("rope_theta", None)
    scaling = get("rope_scaling", None)
    if isinstance(rp, dict):
        theta = rp.get("rope_theta", theta)
        scaling = rp if rp.get("rope_type", rp.get("type", "default")) != "default" else None
    return float(theta if theta is not None else 10000.0), normalize_rope_scaling(scaling)
