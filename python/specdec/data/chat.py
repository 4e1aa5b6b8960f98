"""Token ids and the loss mask of a conversation, derived from the tokenizer's own chat template.

Nothing here knows a role string or a special token. For each assistant message i the template is
rendered twice as text:

    A = render(messages[:i], add_generation_prompt=True)    everything the model is given before answering
    B = render(messages[:i + 1])                             ... plus the answer and its end of turn

and, when the renderings are prefixes of each other (true for ChatML, Llama-2/3, Zephyr, Mistral, Gemma
and most others), the assistant span is the text B[len(A):]: exactly what the model itself produces
after the generation prompt: the answer text, any whitespace the template puts before it that the
generation prompt does not (Zephyr's "\\n"), and the end-of-turn token. The whole conversation is
rendered once more and tokenized with offsets; a token is in the mask when it starts inside a span. The
span is then cut after its last end-of-turn token (an id of `eos_ids`, from specdec.eos.eos_ids: the
model's and the tokenizer's EOS ids), so the template's whitespace after the end of turn (ChatML's
"\\n"), which the model never generates, is not trained. The generation prompt header
("<|im_start|>assistant\\n", "[/INST]") is never in the mask: the draft is not asked to predict the prompt.

When a template is not prefix-consistent (e.g. one that renders past turns differently from the last),
the span falls back to the answer text found in the full rendering, extended to the end-of-turn token
that follows it within a few tokens.

`open_last=True` renders the final assistant message as unfinished (A + its text, no end of turn): a
self-distilled answer cut at --max-new-tokens, after which the target would not have stopped.

loss_mask[t] is True when token t is part of a response (so a trainer predicting token t + 1 from
position t uses loss_mask[t + 1]).
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterable, List, Optional, Sequence, Tuple

Span = Tuple[int, int]


class TemplateError(ValueError):
    """A conversation the chat template cannot render, or whose assistant turns cannot be located."""


def render(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """The chat template's text for `messages` (TemplateError when the template rejects them)."""
    try:
        text = tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as exc:  # jinja2 raise_exception, missing template, ...
        raise TemplateError(f"the chat template cannot render this conversation: {type(exc).__name__}: {exc}") from exc
    if not isinstance(text, str):
        raise TemplateError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, not text")
    return text


def template_hash(tokenizer) -> str:
    """sha256 of the tokenizer's chat template (a dict of named templates is hashed as sorted JSON)."""
    t = getattr(tokenizer, "chat_template", None)
    if t is None:
        raise TemplateError("the tokenizer has no chat template")
    data = t if isinstance(t, str) else json.dumps(t, sort_keys=True)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def assistant_spans(tokenizer, messages: Sequence[dict], open_last: bool = False) -> Tuple[str, List[Span], List[bool]]:
    """(full text, one character span per assistant message, whether each came from the prefix diff).

    With open_last the conversation must end with an assistant message, rendered unfinished."""
    messages = list(messages)
    if open_last:
        if not messages or messages[-1]["role"] != "assistant":
            raise TemplateError("open_last needs a conversation that ends with an assistant message")
        head = render(tokenizer, messages[:-1], add_generation_prompt=True)
        full = head + messages[-1]["content"]
    else:
        full = render(tokenizer, messages)
    spans: List[Span] = []
    exact: List[bool] = []
    cursor = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        a = render(tokenizer, messages[:i], add_generation_prompt=True)
        if open_last and i == len(messages) - 1:
            b = full
        else:
            b = render(tokenizer, messages[: i + 1])
        if b.startswith(a) and full.startswith(b) and len(a) >= cursor and len(b) > len(a):
            spans.append((len(a), len(b)))
            exact.append(True)
        else:  # fallback: the answer text itself, searched after the previous span
            content = m["content"].strip()
            at = full.find(content, cursor) if content else -1
            if at < 0:
                raise TemplateError(f"cannot locate assistant message {i} in the rendered conversation")
            spans.append((at, at + len(content)))
            exact.append(False)
        cursor = spans[-1][1]
    return full, spans, exact


def _tokenize_with_offsets(tokenizer, text: str, spans: Sequence[Span]):
    """(ids, [(start, end)] per token). Fast tokenizers give offsets; slow ones are tokenized piecewise
    at the span boundaries (the pieces' offsets are then exact by construction)."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    cuts = sorted({0, len(text), *[c for s in spans for c in s]})
    ids, offs = [], []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        piece = tokenizer(text[lo:hi], add_special_tokens=False)["input_ids"]
        ids += piece
        offs += [(lo, lo)] * len(piece)  # every token of the piece starts (for our purpose) at lo
    return ids, offs


def encode(
    tokenizer,
    messages: Sequence[dict],
    eos_ids: Iterable[int] = (),
    max_len: Optional[int] = None,
    open_last: bool = False,
) -> Tuple[List[int], List[bool]]:
    """(token ids, loss mask) of a conversation, truncated to max_len tokens (see the module docstring)."""
    eos = set(eos_ids)
    full, spans, exact = assistant_spans(tokenizer, messages, open_last=open_last)
    ids, offs = _tokenize_with_offsets(tokenizer, full, spans)
    mask = [False] * len(ids)
    for (s, e), is_exact in zip(spans, exact):
        inside = [
            t for t, (a, b) in enumerate(offs) if s <= a < e and (b > a or not getattr(tokenizer, "is_fast", False))
        ]
        if not inside:
            continue
        last = inside[-1]
        ends = [t for t in inside if ids[t] in eos]
        if ends:
            last = ends[-1]  # through the end-of-turn token; the template's whitespace after it is not generated
        elif not is_exact:  # fallback span is the bare text: take the end-of-turn token that follows it
            for t in range(last + 1, min(last + 4, len(ids))):
                if ids[t] in eos:
                    last = t
                    break
        for t in range(inside[0], last + 1):
            mask[t] = True
    if max_len is not None:
        ids, mask = ids[:max_len], mask[:max_len]
    return ids, mask


def end_of_turn_tail(tokenizer, eos_ids: Iterable[int]) -> List[int]:
    """The token ids the chat template puts after an assistant message's end-of-turn token (ChatML's "\\n"),
    read off a probe conversation; [] when it puts none or the probe cannot tell (a template that rejects
    it, no end-of-turn token at the end of the answer's span, e.g. a mask that runs past it). What the data
    builder feeds after an answer that ended, so that every stored token has its feature; the builder checks
    the ids it fed against the stored ones, so a wrong or empty tail only sends sequences through the
    feature pass."""
    probe = [{"role": "user", "content": "Hello."}, {"role": "assistant", "content": "Hi."}]
    try:
        ids, mask = encode(tokenizer, probe, eos_ids)
    except TemplateError:
        return []
    eos = set(eos_ids)
    masked = [t for t, m in enumerate(mask) if m]
    if not masked or ids[masked[-1]] not in eos:
        return []
    return ids[masked[-1] + 1 :]
