"""specdec.eos.eos_ids, the one rule for the ids that end a sequence: the caller's ids win, else the model's
generation config (an int or a list; the config only without one), plus the tokenizer's end-of-turn token,
each id once in order; and the callers (the eval harness, the training target) take it as it is."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest
import torch

from specdec.eos import eos_ids

from tiny_models import make_target, one_thread  # noqa: F401  (autouse fixture)

SPECIALS = ["<unk>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
VOCAB = 64
IM_END = 2


def make_tokenizer():
    """A word-level tokenizer whose EOS is ChatML's end of turn, <|im_end|> (id 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + [f"w{i}" for i in range(VOCAB - len(SPECIALS))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>")


@pytest.fixture(scope="module")
def model():
    m = make_target(vocab=VOCAB)
    yield m
    m.generation_config.eos_token_id = None
    m.config.eos_token_id = None


def test_generation_config_ids_int_or_list(model):
    """The generation config's ids, an int or a list, repeats dropped; model.config's ids are not added
    (model.generate does not stop at them, and decoding.generate's default must equal model.generate)."""
    model.config.eos_token_id = 9
    model.generation_config.eos_token_id = None
    assert eos_ids(model) == []
    model.generation_config.eos_token_id = 3
    assert eos_ids(model) == [3]
    model.generation_config.eos_token_id = [5, 3, 5]
    assert eos_ids(model) == [5, 3]


def test_config_ids_when_there_is_no_generation_config():
    assert eos_ids(NS(config=NS(eos_token_id=4))) == [4]
    assert eos_ids(NS(config=NS(eos_token_id=[4, 1, 4]), generation_config=None)) == [4, 1]
    assert eos_ids(NS(config=NS())) == [] and eos_ids(None) == []


def test_tokenizer_end_of_turn_is_added_after_the_models_ids(model):
    tok = make_tokenizer()
    assert tok.eos_token_id == IM_END
    model.generation_config.eos_token_id = [3, 7]  # e.g. <|endoftext|> only: an older generation config
    assert eos_ids(model, tok) == [3, 7, IM_END]
    assert eos_ids(model) == [3, 7]  # no tokenizer, no end of turn
    model.generation_config.eos_token_id = [IM_END, 3]
    assert eos_ids(model, tok) == [IM_END, 3]  # each id once, first place kept
    model.generation_config.eos_token_id = None
    assert eos_ids(model, tok) == [IM_END] and eos_ids(None, tok) == [IM_END]
    assert eos_ids(None, NS(eos_token_id=None)) == []


def test_given_ids_win(model):
    model.generation_config.eos_token_id = [3, 7]
    tok = make_tokenizer()
    assert eos_ids(model, tok, given=5) == [5]
    assert eos_ids(model, tok, given=(6, 5, 6)) == [6, 5]
    assert eos_ids(model, tok, given=torch.tensor([8, 1])) == [8, 1]
    assert eos_ids(model, tok, given=[]) == []  # nothing stops: only a length limit


@pytest.mark.parametrize(
    "kw, what",
    [
        (dict(given="</s>"), "eos_token_id"),
        (dict(given=[1, 2.0]), "eos_token_id"),
        (dict(given=True), "eos_token_id"),
        (dict(model=NS(generation_config=NS(eos_token_id="2"))), "generation_config.eos_token_id"),
        (dict(model=NS(config=NS(eos_token_id=[None]))), "config.eos_token_id"),
        (dict(model=None, tokenizer=NS(eos_token_id=2.5)), "tokenizer.eos_token_id"),
    ],
)
def test_ids_that_are_not_ints_are_refused(kw, what):
    kw.setdefault("model", None)
    with pytest.raises(TypeError, match=rf"^{what}: expected an int or a sequence of ints"):
        eos_ids(**kw)


def test_the_callers_take_the_rule_as_it_is(model):
    """The eval harness stops at the model's and the tokenizer's ids (it used the tokenizer's only when the
    generation config named none); the training target keeps the model's (RunInputs adds the data's)."""
    from specdec.evaluation import EvalSettings, Harness
    from specdec.training.frozen_target import load_target

    tok = make_tokenizer()
    model.generation_config.eos_token_id = 3
    assert Harness(model, tok, EvalSettings()).eos == [3, IM_END]
    assert Harness(model, tok, EvalSettings(eos_token_id=[])).eos == []
    model.config.eos_token_id = 9
    eos = load_target(model, None, torch.float32, torch.device("cpu"), full=False)[4]
    assert eos == [3]
