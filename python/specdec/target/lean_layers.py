"""The target's decoder layers without transformers' per-layer machinery: same modules, same math, same order.

A transformers decoder layer call goes through several wrappers before its arithmetic (the gradient-
checkpointing layer's __call__, keyword-argument deprecation and output-recording decorators, the attention
registry's lookup, kwargs threaded through every level): on a CPU, about 2 ms of a 20 ms SmolLM2-135M
decode step (bench/results/verify_cost_lean-vs-transformers_cpu.md). For the Llama-family layers that
TargetModel serves, `LeanDecoder` runs the model's own submodules (embedding, rotary embedding, norms,
projections -- so prepacked or kernel linears keep working) and the specdec_tree attention function in
exactly the order and with exactly the operations of the transformers code: the result is bitwise the same.
Where the projections run specdec's C++ linear kernel, a layer's q/k/v and its gate/up are each one kernel
call over their weights stacked in place (kernel_linears.KernelLinearGroup; the kernel's output bits do not
depend on where a weight row sits), and RoPE is applied to q and k together: elementwise, so still bitwise.

Which layers: the decoder-layer classes of SUPPORTED (Llama, Mistral, Qwen2, Qwen3), with every submodule
the code below reads, and no forward hook (nor accelerate's device-map hook) anywhere in the decoder: the lean
path calls neither the layer, attention, MLP or norm modules nor, where it groups them, the linears (it
reads their weights), so hooks registered on those after the TargetModel was built do not run (build it after
registering them, or pass lean=False). Anything else
(another architecture, a patched or quantized layer class, a missing attribute) runs transformers' own
forward. The layers' submodules are looked up on every forward, so prepacking or unpacking the linears after
the TargetModel was built is seen; replaced layers are planned again. Since a later transformers release may
change a layer's arithmetic, TargetModel checks the lean path against transformers' on a model's first
forward and keeps it only when both agree bitwise (else it warns and stays on transformers' path; the verdict
is kept on the decoder module); tests/system check every supported family on the installed version.
"""

from __future__ import annotations

from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch

from . import attention
from .cache import TreeKVCache
from .kernel_linears import KernelLinearGroup, group_kernel_linears, kernel_calls_allowed

# Whether the lean path computes a layer's kernel linears that share an input in one call (KernelLinearGroup);
# read on every forward. False only to measure what the grouping saves (bench/verify_cost.py --ungrouped).
GROUP_KERNEL_LINEARS = True

# Decoder-layer class name -> the sliding window its attention passes to the attention function.
SUPPORTED: dict = {
    "LlamaDecoderLayer": lambda attn: None,
    "MistralDecoderLayer": lambda attn: getattr(attn.config, "sliding_window", None),
    "Qwen2DecoderLayer": lambda attn: attn.sliding_window,
    "Qwen3DecoderLayer": lambda attn: attn.sliding_window,
}
_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling", "layer_idx")
_MLP = ("gate_proj", "up_proj", "down_proj", "act_fn")


class _Layer(NamedTuple):
    """One decoder layer and the constants of its attention. Its submodules are looked up on every forward:
    prepacking or unpacking the linears (specdec.target.prepack, kernel_linears) replaces them in place."""

    index: int
    layer: torch.nn.Module
    head_dim: int
    scaling: float
    sliding_window: Optional[Callable]
    q_norm: bool
    k_norm: bool


def _rms_norm(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    """transformers' Llama-family RMSNorm, op for op (fp32 statistics, rounded before the weight)."""
    dtype = x.dtype
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + norm.variance_epsilon)
    return norm.weight * h.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _is_rms_norm(m) -> bool:
    # the classes' own forward is the one _rms_norm repeats (LlamaRMSNorm, MistralRMSNorm, Qwen2RMSNorm, ...)
    return type(m).__name__.endswith("RMSNorm") and hasattr(m, "weight") and hasattr(m, "variance_epsilon")


def _hooked(module: torch.nn.Module) -> bool:
    """Whether a forward hook, pre-hook or accelerate's hook (device_map) is on `module` or below: the lean
    path calls no module's __call__ for the layers' arithmetic, so those would not run."""
    return any(
        m._forward_hooks or m._forward_pre_hooks or hasattr(m, "_hf_hook") for m in module.modules()
    )  # fmt: skip


def _plan_layer(i: int, layer: torch.nn.Module) -> Optional[_Layer]:
    sliding = SUPPORTED.get(type(layer).__name__)
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    norms = (getattr(layer, "input_layernorm", None), getattr(layer, "post_attention_layernorm", None))
    if sliding is None or attn is None or mlp is None or not all(_is_rms_norm(n) for n in norms):
        return None
    if not all(hasattr(attn, a) for a in _ATTN) or not all(hasattr(mlp, a) for a in _MLP) or attn.layer_idx != i:
        return None
    qk_norms = (getattr(attn, "q_norm", None), getattr(attn, "k_norm", None))
    if any(n is not None and not _is_rms_norm(n) for n in qk_norms):
        return None
    return _Layer(i, layer, attn.head_dim, attn.scaling, sliding, qk_norms[0] is not None, qk_norms[1] is not None)


class LeanDecoder:
    """The decoder `base` (a transformers Llama-family model body) run layer by layer as described in the
    module docstring. Build it with LeanDecoder.plan(base), which returns None where a layer is not
    supported."""

    def __init__(self, base: torch.nn.Module, layers: List[_Layer]):
        self.base = base
        self.layers = layers
        # (layer index, projection name) -> ((the modules last seen, their classes), KernelLinearGroup or None)
        self._groups: Dict[tuple, Tuple[tuple, Optional[KernelLinearGroup]]] = {}

    def _project(self, key: tuple, modules: tuple, h: torch.Tensor, kernel: bool) -> tuple:
        """(whole, parts): each module's output for h (parts), from one kernel call for the group where all of
        them run the C++ kernel for h (kernel: kernel_calls_allowed(h), checked once per forward;
        specdec.target.kernel_linears.KernelLinearGroup: bitwise the separate calls), then with `whole` that
        call's output (the parts side by side), else from each module's own call, `whole` None. The first time
        a group of kernel layers is seen, their weights are stacked (in place, nothing stored twice); a
        projection replaced since (prepacking, unpacking) is seen and the group made again."""
        seen, group = self._groups.get(key, ((), None))
        if group is not None:
            if not group.intact(modules):  # replaced, converted or unmarked since: group again
                group = group_kernel_linears(modules)
                self._groups[key] = ((modules, tuple(map(type, modules))), group)
        elif seen != (modules, tuple(map(type, modules))):  # modules compare by identity (no __eq__)
            group = group_kernel_linears(modules)
            self._groups[key] = ((modules, tuple(map(type, modules))), group)
        if kernel and group is not None and group.usable(h):
            whole = group(h)
            return whole, group.parts(whole)
        return None, tuple(mod(h) for mod in modules)

    @classmethod
    def plan(cls, base: torch.nn.Module, num_layers: int) -> Optional["LeanDecoder"]:
        """A LeanDecoder for `base` (num_layers: the config's, as many as the cache has), or None when one of
        its parts is not what the lean path repeats or carries hooks the lean path would not call."""
        if not all(hasattr(base, a) for a in ("embed_tokens", "rotary_emb", "norm", "layers")):
            return None
        if not _is_rms_norm(base.norm) or len(base.layers) != num_layers or num_layers == 0 or _hooked(base):
            return None
        layers = [_plan_layer(i, layer) for i, layer in enumerate(base.layers)]
        return None if any(p is None for p in layers) else cls(base, layers)

    def current(self) -> bool:
        """Whether `base` still holds the planned layers (not replaced since): else plan again."""
        return len(self.base.layers) == len(self.layers) and all(
            a is p.layer for a, p in zip(self.base.layers, self.layers)
        )  # fmt: skip

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache, state) -> torch.Tensor:
        """The last hidden states (after the final norm) of input_ids [B, T] at position_ids [B, T], writing
        their K/V into `cache` as transformers' path does; `state` is the forward's TreeAttentionState."""
        B, T = input_ids.shape
        x = self.base.embed_tokens(input_ids)
        cos, sin = self.base.rotary_emb(x, position_ids)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # apply_rotary_pos_emb's unsqueeze_dim = 1
        run_attention = attention.tree_attention_forward
        # our contiguous cache: the slots computed once for all layers (a paged cache writes through update)
        write = cache.writer(T) if type(cache) is TreeKVCache else None
        kernel = GROUP_KERNEL_LINEARS and kernel_calls_allowed(x)
        project = self._project
        for p in self.layers:
            layer = p.layer
            a, m = layer.self_attn, layer.mlp
            h = _rms_norm(x, layer.input_layernorm)
            shape = (B, T, -1, p.head_dim)
            qkv, (q, k, v) = project((p.index, "qkv"), (a.q_proj, a.k_proj, a.v_proj), h, kernel)
            v = v.view(shape).transpose(1, 2)
            if qkv is not None and not (p.q_norm or p.k_norm):
                # q and k side by side in one call's output: RoPE once over their heads (elementwise, so
                # bitwise the two applications below; 7 small ops fewer a layer)
                heads = q.shape[-1] // p.head_dim
                qk = qkv[..., : q.shape[-1] + k.shape[-1]].view(shape).transpose(1, 2)
                qk = (qk * cos) + (_rotate_half(qk) * sin)
                q, k = qk[:, :heads], qk[:, heads:]
            else:
                q, k = q.view(shape), k.view(shape)
                if p.q_norm:
                    q = a.q_norm(q)
                if p.k_norm:
                    k = a.k_norm(k)
                q, k = q.transpose(1, 2), k.transpose(1, 2)
                q = (q * cos) + (_rotate_half(q) * sin)
                k = (k * cos) + (_rotate_half(k) * sin)
            k, v = write(p.index, k, v) if write is not None else cache.update(k, v, p.index)
            o, _ = run_attention(
                a, q, k, v, None, dropout=0.0, scaling=p.scaling, sliding_window=p.sliding_window(a),
                specdec_state=state,
            )  # fmt: skip
            _, (o,) = project((p.index, "o"), (a.o_proj,), o.reshape(B, T, -1).contiguous(), kernel)
            x = x + o
            h = _rms_norm(x, layer.post_attention_layernorm)
            _, (gate, up) = project((p.index, "gate_up"), (m.gate_proj, m.up_proj), h, kernel)
            _, (down,) = project((p.index, "down"), (m.down_proj,), m.act_fn(gate) * up, kernel)
            x = x + down
        return _rms_norm(x, self.base.norm)
