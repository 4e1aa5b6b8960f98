"""The `specdec` command, run in-process on a tiny model and head saved into tmp_path (no hub access)."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from specdec.cli import main
from specdec.decoding import generate_baseline
from specdec.models import DraftConfig, build_draft_head

VOCAB = 64


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=128,
                      tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(root / "target")
    torch.manual_seed(1)
    head = build_draft_head(DraftConfig.from_target(cfg, "griffin"))
    head.save_pretrained(root / "draft")
    return root, model


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().out


def test_version_and_info(capsys):
    rc, out = run(["--version"], capsys)
    assert rc == 0 and out.startswith("specdec ")
    rc, out = run(["info"], capsys)
    assert rc == 0 and "specdec" in out and "tree_attention" in out


def test_generate_with_prompt_ids(saved, capsys):
    root, model = saved
    rc, out = run(["generate", "--target", root / "target", "--draft", root / "draft", "--prompt-ids", "1 2 3 4",
                   "--prompt-ids", "9 8", "--max-new-tokens", 7, "--tree-top-k", 3, "--depth", 3,
                   "--total-tokens", 10, "--baseline"], capsys)
    assert rc == 0, out
    want = generate_baseline(model, [[1, 2, 3, 4], [9, 8]], max_new_tokens=7).sequences
    lines = out.splitlines()
    assert f"[0] {' '.join(map(str, want[0]))}" in lines
    assert f"[1] {' '.join(map(str, want[1]))}" in lines
    assert any(l.startswith("speculative: ") and "tau" in l for l in lines)
    assert any(l.startswith("baseline: ") for l in lines)
    assert "greedy outputs identical to the baseline: yes" in lines
    assert "draft griffin" in out


def test_generate_sampling_runs(saved, capsys):
    root, _ = saved
    rc, out = run(["generate", "--target", root / "target", "--draft", root / "draft", "--prompt-ids", "5 6 7",
                   "--max-new-tokens", 5, "--temperature", 0.8, "--top-p", 0.9, "--seed", 3], capsys)
    assert rc == 0
    ids = next(l for l in out.splitlines() if l.startswith("[0] ")).split()[1:]
    assert len(ids) == 5 and all(0 <= int(t) < VOCAB for t in ids)


def test_generate_with_tokenizer(saved, tmp_path, capsys):
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    root, model = saved
    words = [f"w{i}" for i in range(VOCAB - 1)] + ["[UNK]"]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.decoder = tokenizers.decoders.WordPiece(prefix="##")       # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    target = tmp_path / "target_tok"
    model.save_pretrained(target)
    fast.save_pretrained(target)
    rc, out = run(["generate", "--target", target, "--draft", root / "draft", "--prompt", "w1 w2 w3",
                   "--max-new-tokens", 4, "--tree-top-k", 2, "--depth", 2, "--total-tokens", 5], capsys)
    assert rc == 0, out
    want = generate_baseline(model, [[1, 2, 3]], max_new_tokens=4).sequences[0]
    assert f"[0] {fast.decode(want)}" in out.splitlines()
    assert f"[0] ids: {' '.join(map(str, want))}" in out.splitlines()


def test_generate_errors(saved, capsys):
    root, _ = saved
    with pytest.raises(SystemExit, match="no tokenizer"):
        main(["generate", "--target", str(root / "target"), "--draft", str(root / "draft"), "--prompt", "hello"])
    with pytest.raises(SystemExit, match="at least one"):
        main(["generate", "--target", str(root / "target"), "--draft", str(root / "draft")])
    with pytest.raises(SystemExit, match="integers"):
        main(["generate", "--target", str(root / "target"), "--draft", str(root / "draft"), "--prompt-ids", "1 x"])
    with pytest.raises(SystemExit, match="outside"):
        main(["generate", "--target", str(root / "target"), "--draft", str(root / "draft"),
              "--prompt-ids", f"1 {VOCAB}"])
