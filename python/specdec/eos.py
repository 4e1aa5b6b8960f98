"""The end-of-sequence ids of a target: the one rule every part of specdec stops generation, cuts the loss
mask and keeps the draft vocabulary by.

Example:
    >>> from types import SimpleNamespace as NS
    >>> model = NS(generation_config=NS(eos_token_id=[2, 7]), config=NS(eos_token_id=3))
    >>> eos_ids(model), eos_ids(model, NS(eos_token_id=9)), eos_ids(model, given=5), eos_ids(model, given=[])
    ([2, 7], [2, 7, 9], [5], [])
    >>> eos_ids(NS(config=NS(eos_token_id=3)), NS(eos_token_id=3))
    [3]
"""

from __future__ import annotations

from typing import List


def eos_ids(model, tokenizer=None, given=None) -> List[int]:
    """The token ids that end a sequence, each once, in order.

    given: the caller's explicit choice (an int, a sequence of ints, or a 1-D integer tensor); when it is not
        None it is the answer alone, so `[]` means "nothing ends a sequence" (only a length limit does).
    Otherwise, in this order:
    - the model's: `model.generation_config.eos_token_id`, exactly where Hugging Face's `model.generate`
      stops (so `specdec.decoding.generate`'s default output equals it); `model.config.eos_token_id` only
      when the model has no generation config (a stand-in, or a model that cannot generate: Hugging Face
      derives the generation config from the config when a checkpoint has no generation_config.json);
    - when `tokenizer` is given, the tokenizer's `eos_token_id`: a chat model's end-of-turn token (e.g.
      `<|im_end|>`), which an older generation config may not list.
    Each may be None, an int or a list of ints.

    model: a Hugging Face causal LM (or anything with `generation_config` / `config`), or None (only the
    tokenizer's id, then). TypeError for an id that is not an int.
    """
    if given is not None:
        return _ids(given, "eos_token_id")
    gen_config = getattr(model, "generation_config", None)
    if gen_config is not None:
        sources = [("generation_config.eos_token_id", getattr(gen_config, "eos_token_id", None))]
    else:
        sources = [("config.eos_token_id", getattr(getattr(model, "config", None), "eos_token_id", None))]
    if tokenizer is not None:
        sources.append(("tokenizer.eos_token_id", getattr(tokenizer, "eos_token_id", None)))
    ids: List[int] = []
    for what, value in sources:
        if value is not None:
            ids += [i for i in _ids(value, what) if i not in ids]
    return ids


def _ids(value, what: str) -> List[int]:
    """`value` (an int, a sequence of ints or an integer tensor) as a list of ints without repeats; TypeError
    naming `what` otherwise."""
    if hasattr(value, "reshape") and hasattr(value, "tolist"):  # a torch or numpy array
        value = value.reshape(-1).tolist()
    items = [value] if isinstance(value, int) else value
    try:
        items = list(items)
    except TypeError:
        items = None
    if items is None or any(isinstance(i, bool) or not isinstance(i, int) for i in items):
        raise TypeError(f"{what}: expected an int or a sequence of ints, got {value!r}")
    out: List[int] = []
    for i in items:
        if i not in out:
            out.append(i)
    return out
