"""The `specdec` command, run in-process on a tiny model and head saved into tmp_path (no hub access)."""

from __future__ import annotations

import argparse

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
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
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
    rc, out = run(
        [
            "generate",
            "--target",
            root / "target",
            "--draft",
            root / "draft",
            "--prompt-ids",
            "1 2 3 4",
            "--prompt-ids",
            "9 8",
            "--max-new-tokens",
            7,
            "--tree-top-k",
            3,
            "--depth",
            3,
            "--total-tokens",
            10,
            "--baseline",
        ],
        capsys,
    )
    assert rc == 0, out
    want = generate_baseline(model, [[1, 2, 3, 4], [9, 8]], max_new_tokens=7).sequences
    lines = out.splitlines()
    assert f"[0] {' '.join(map(str, want[0]))}" in lines
    assert f"[1] {' '.join(map(str, want[1]))}" in lines
    assert any(l.startswith("speculative: ") and "tau" in l for l in lines)
    assert any(l.startswith("baseline: ") for l in lines)
    assert "greedy outputs identical to the baseline: yes" in lines
    assert "draft griffin" in out


def test_generate_baseline_tells_a_near_tie_from_a_failure(saved, capsys, monkeypatch):
    """--baseline at T=0 when the outputs differ (the baseline's tokens altered from the third on): not a
    near-tie of the target's logits -> a losslessness failure, exit 1; with a rounding tolerance wider than
    every logit gap -> a near-tie, exit 0. Each names the prompt and the first differing token."""
    import specdec.decoding as decoding
    from specdec.evaluation import harness

    root, _ = saved
    real = decoding.generate_baseline

    def altered(*a, **kw):
        res = real(*a, **kw)
        res.sequences[1] = res.sequences[1][:2] + [(t + 1) % 64 for t in res.sequences[1][2:]]
        return res

    monkeypatch.setattr(decoding, "generate_baseline", altered)
    argv = ["generate", "--target", root / "target", "--draft", root / "draft", "--prompt-ids", "1 2 3",
            "--prompt-ids", "9 8", "--max-new-tokens", 6, "--total-tokens", 8, "--depth", 2, "--baseline"]  # fmt: skip
    rc, out = run(argv, capsys)
    assert rc == 1, out
    assert "greedy outputs identical to the baseline: NO" in out
    assert "[1] differs from token 2: " in out and "a losslessness failure" in out and "[0] differs" not in out
    monkeypatch.setattr(harness, "tie_tolerance", lambda *a, **kw: 1e9)
    rc, out = run(argv, capsys)
    assert rc == 0, out
    assert "[1] differs from token 2: " in out and "a near-tie, not a failure" in out


def test_generate_auto_says_when_it_decodes_plainly(saved, capsys, monkeypatch):
    from specdec.decoding import budget

    root, model = saved
    monkeypatch.setattr(budget, "auto_tree", lambda *a, **kw: (*budget.PLAIN, 50.0))
    argv = ["generate", "--target", root / "target", "--draft", root / "draft", "--prompt-ids", "1 2 3"]
    rc, out = run(argv + ["--max-new-tokens", 5, "--total-tokens", "auto"], capsys)
    assert rc == 0, out
    assert "tree: none, plain decoding (auto: no tree is expected to be faster on this machine" in out
    want = generate_baseline(model, [[1, 2, 3]], max_new_tokens=5).sequences[0]
    assert f"[0] {' '.join(map(str, want))}" in out.splitlines()


def test_generate_sampling_runs(saved, capsys):
    root, _ = saved
    rc, out = run(
        [
            "generate",
            "--target",
            root / "target",
            "--draft",
            root / "draft",
            "--prompt-ids",
            "5 6 7",
            "--max-new-tokens",
            5,
            "--temperature",
            0.8,
            "--top-p",
            0.9,
            "--seed",
            3,
        ],
        capsys,
    )
    assert rc == 0
    ids = next(l for l in out.splitlines() if l.startswith("[0] ")).split()[1:]
    assert len(ids) == 5 and all(0 <= int(t) < VOCAB for t in ids)


def _word_tokenizer():
    """A word-level tokenizer over w0..w62 (no chat template)."""
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(VOCAB - 1)] + ["[UNK]"]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.decoder = tokenizers.decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def test_generate_with_tokenizer(saved, tmp_path, capsys):
    root, model = saved
    fast = _word_tokenizer()
    target = tmp_path / "target_tok"
    model.save_pretrained(target)
    fast.save_pretrained(target)
    rc, out = run(
        [
            "generate",
            "--target",
            target,
            "--draft",
            root / "draft",
            "--prompt",
            "w1 w2 w3",
            "--max-new-tokens",
            4,
            "--tree-top-k",
            2,
            "--depth",
            2,
            "--total-tokens",
            5,
        ],
        capsys,
    )
    assert rc == 0, out
    want = generate_baseline(model, [[1, 2, 3]], max_new_tokens=4).sequences[0]
    assert f"[0] {fast.decode(want)}" in out.splitlines()
    assert f"[0] ids: {' '.join(map(str, want))}" in out.splitlines()


def test_load_target_is_every_commands_loader(saved, tmp_path, capsys):
    """specdec.loading.load_target, through which every command and the demo load their target: the model in
    eval mode in the dtype asked for, the tokenizer when asked for, prepacking counted; a tokenizer without a
    chat template is refused where one is needed, by `specdec eval` and `specdec data` in the same line."""
    from specdec.default_target import TargetError
    from specdec.loading import load_target

    root, model = saved
    folder = tmp_path / "target_tok"
    model.save_pretrained(folder)
    _word_tokenizer().save_pretrained(folder)
    loaded = load_target(str(folder), dtype=torch.float64)
    assert loaded.path == str(folder) and loaded.tokenizer is not None and loaded.prepacked == 0
    assert not loaded.model.training and loaded.model.dtype == torch.float64
    assert load_target(folder, dtype=torch.float32, tokenizer=False).tokenizer is None
    with pytest.raises(TargetError, match=f"expected a tokenizer with a chat template, got {str(folder)!r}"):
        load_target(folder, dtype=torch.float32, chat_template=True)
    (tmp_path / "p.jsonl").write_text('{"prompt": "w1"}\n')
    said = (
        f"argument --target: expected a tokenizer with a chat template, got {str(folder)!r}, whose tokenizer has none"
    )
    common = ["--target", folder, "--out", tmp_path / "out", "--dtype", "float32", "--device", "cpu"]
    capsys.readouterr()  # the loading bars so far
    for argv in (
        ["eval", *common, "--draft", root / "draft", "--bench", tmp_path / "p.jsonl", "--no-warmup"],
        ["data", *common, "--no-progress"],
    ):
        assert _fail(argv, capsys) == f"specdec {argv[0]}: error: {said}"


def test_generate_errors(saved, capsys):
    root, _ = saved
    with pytest.raises(SystemExit, match="no tokenizer"):
        main(["generate", "--target", str(root / "target"), "--draft", str(root / "draft"), "--prompt", "hello"])
    with pytest.raises(SystemExit, match="at least one"):
        main(["generate", "--target", str(root / "target"), "--draft", str(root / "draft")])
    with pytest.raises(SystemExit, match="integers"):
        main(["generate", "--target", str(root / "target"), "--draft", str(root / "draft"), "--prompt-ids", "1 x"])
    with pytest.raises(SystemExit, match="outside"):
        main(
            ["generate", "--target", str(root / "target"), "--draft", str(root / "draft"), "--prompt-ids", f"1 {VOCAB}"]
        )


# ---- argument checking: one line on stderr, exit status 2, before anything is loaded ----


@pytest.fixture
def no_load(monkeypatch):
    """Fails the test if the command loads a tokenizer, a model or a draft head."""
    import transformers

    import specdec.models

    def forbidden(*args, **kwargs):
        pytest.fail("a model or tokenizer was loaded before the arguments were checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", forbidden)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", forbidden)
    monkeypatch.setattr(specdec.models, "load_draft_head", forbidden)


def _fail(argv, capsys, code=2):
    """Runs main(argv), which must exit with `code` after one (error) line on stderr; returns that line."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    assert info.value.code == code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    if code != 2:  # loading may have shown a progress bar before the failure
        lines = [line for line in lines if "error" in line]
    assert len(lines) == 1, captured.err
    return lines[0]


def _bad_folders(root):
    """Folders that are not what --target / --draft expect."""
    empty = root / "empty"
    empty.mkdir(exist_ok=True)
    no_weights = root / "no_weights"
    no_weights.mkdir(exist_ok=True)
    (no_weights / "config.json").write_text("{}")
    corrupt = root / "corrupt_config"
    corrupt.mkdir(exist_ok=True)
    (corrupt / "config.json").write_text("{not json")
    (corrupt / "model.safetensors").write_bytes(b"")
    a_file = root / "a_file.txt"
    a_file.write_text("x")
    return dict(empty=empty, no_weights=no_weights, corrupt=corrupt, a_file=a_file)


# (arguments replacing / added to a valid command line, the argument named, a fragment of what was expected)
BAD = [
    ({"--target": "DOES_NOT_EXIST"}, "--target", "does not exist"),
    ({"--target": "no-such-org/no-such-model-9f3a"}, "--target", "cache"),
    ({"--target": "@a_file"}, "--target", "not a folder"),
    ({"--target": "@empty"}, "--target", "config.json"),
    ({"--target": "@no_weights"}, "--target", "weights"),
    ({"--target": "@corrupt"}, "--target", "config.json"),
    ({"--draft": "DOES_NOT_EXIST"}, "--draft", "does not exist"),
    ({"--draft": "@empty"}, "--draft", "config.json"),
    ({"--draft": "@no_weights"}, "--draft", "weights"),
    ({"--max-new-tokens": "0"}, "--max-new-tokens", "integer >= 1"),
    ({"--max-new-tokens": "-3"}, "--max-new-tokens", "integer >= 1"),
    ({"--max-new-tokens": "ten"}, "--max-new-tokens", "integer >= 1"),
    ({"--temperature": "-0.5"}, "--temperature", "finite number >= 0"),
    ({"--temperature": "nan"}, "--temperature", "finite number >= 0"),
    ({"--temperature": "inf"}, "--temperature", "finite number >= 0"),
    ({"--top-k": "-1"}, "--top-k", "integer >= 0"),
    ({"--top-p": "0"}, "--top-p", "(0, 1]"),
    ({"--top-p": "1.5"}, "--top-p", "(0, 1]"),
    ({"--top-p": "nan"}, "--top-p", "(0, 1]"),
    ({"--tree-top-k": "0"}, "--tree-top-k", "integer >= 1"),
    ({"--tree-top-k": str(VOCAB + 1)}, "--tree-top-k", f"at most {VOCAB}"),
    ({"--depth": "0"}, "--depth", "integer >= 1"),
    ({"--total-tokens": "-2"}, "--total-tokens", "integer >= 1"),
    ({"--prompt-ids": "1 x"}, "--prompt-ids", "non-negative integers"),
    ({"--prompt-ids": "-1 2"}, "--prompt-ids", "non-negative integers"),
    ({"--prompt-ids": " "}, "--prompt-ids", "at least one token id"),
    ({"--prompt-ids": f"1 {VOCAB}"}, "--prompt-ids", f"[0, {VOCAB})"),
    ({"--prompt-ids": None}, "--prompt", "at least one prompt"),
    ({"--prompt": ""}, "--prompt", "non-empty text"),
    ({"--prompt": "hello"}, "--prompt", "tokenizer"),
    ({"--chat": True}, "--chat", "--prompt texts"),
    ({"--eos-token-id": "-1"}, "--eos-token-id", "integer >= 0"),
    ({"--eos-token-id": str(VOCAB)}, "--eos-token-id", f"[0, {VOCAB})"),
    ({"--eos-token-id": "2", "--no-eos": True}, "--no-eos", "not allowed with"),
    ({"--device": "tpu"}, "--device", "cpu, cuda or cuda:N"),
    ({"--device": "cuda:x"}, "--device", "cpu, cuda or cuda:N"),
    ({"--dtype": "int8"}, "--dtype", "choose from"),
    ({"--seed": "-1"}, "--seed", "integer in [0,"),
    ({"--backend": "fast"}, "--backend", "choose from"),
    ({"--backend": "cuda", "--device": "cpu"}, "--backend", "cpu device"),
    ({"--cuda-graph": True}, "--cuda-graph", "a CUDA --device"),
    ({"--target": None}, "--target", "required"),
    ({"--bogus": "1"}, "--bogus", "unrecognized"),
]


@pytest.mark.parametrize("change, arg, expected", BAD, ids=[f"{a}:{'/'.join(map(str, c.values()))}" for c, a, _ in BAD])
def test_bad_argument_is_one_line_before_loading(saved, tmp_path, capsys, no_load, change, arg, expected):
    root, _ = saved
    folders = _bad_folders(tmp_path)
    opts = {"--target": root / "target", "--draft": root / "draft", "--prompt-ids": "1 2 3", "--device": "cpu"}
    opts.update(change)
    argv = ["generate"]
    for k, v in opts.items():
        if v is None or v is False:
            continue
        argv += [k] if v is True else [k, folders[v[1:]] if isinstance(v, str) and v.startswith("@") else v]
    line = _fail(argv, capsys)
    assert line.startswith("specdec generate: error: ") and arg in line and expected in line, line


def test_device_cuda_without_gpu(saved, capsys, no_load, monkeypatch):
    root, _ = saved
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = _fail(
        ["generate", "--target", root / "target", "--draft", root / "draft", "--prompt-ids", "1", "--device", "cuda"],
        capsys,
    )
    assert "argument --device: expected an available device" in line and "'cuda'" in line
    assert "torch.cuda.is_available() is False" in line


def test_device_index_beyond_the_gpus(saved, capsys, no_load, monkeypatch):
    root, _ = saved
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    line = _fail(
        ["generate", "--target", root / "target", "--draft", root / "draft", "--prompt-ids", "1", "--device", "cuda:3"],
        capsys,
    )
    assert "argument --device: expected cuda or cuda:N with N < 1" in line and "'cuda:3'" in line


def test_every_command_checks_target_alike(saved, tmp_path, capsys, no_load):
    """generate, data and the demo check --target with specdec.loading.check_target (train too): a folder
    without weights is refused by each in the same words, before anything loads."""
    from specdec import demo

    root, _ = saved
    folder = tmp_path / "no_weights"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer.json").write_text("{}")
    said = "argument --target: expected a Hugging Face model folder with weights (model.safetensors or "
    runs = {
        "generate": ["generate", "--target", folder, "--draft", root / "draft", "--prompt-ids", "1"],
        "data": ["data", "--target", folder, "--out", tmp_path / "out"],
    }
    for command, argv in runs.items():
        line = _fail(argv, capsys)
        assert line.startswith(f"specdec {command}: error: {said}"), line
        assert line.endswith(f"got {str(folder)!r}, which has config.json but no weights"), line
    with pytest.raises(SystemExit) as e:
        demo.main(["--target", str(folder), "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"python -m specdec.demo: error: {said}"), err
    assert not (tmp_path / "out").exists()


def test_resolve_dtype_says_what_auto_picked(capsys):
    """specdec.dtypes.resolve_dtype, the --dtype of every command and the demo: a named dtype as named,
    silently; auto (or none) picked for the device with one line saying so, on stderr (a command) or to
    `say` (the demo prints it among its phases)."""
    from specdec.dtypes import resolve_dtype

    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    said = []
    assert resolve_dtype("fp32", cuda, say=said.append) == "float32" and said == []
    assert resolve_dtype("auto", cuda, say=said.append) == "bfloat16"
    assert said == ["--dtype auto: bfloat16 (CUDA)"]
    assert resolve_dtype(None, cuda) == "bfloat16"
    captured = capsys.readouterr()
    assert captured.err == "--dtype auto: bfloat16 (CUDA)\n" and captured.out == ""


def test_debug_reraises_argument_errors(saved, capsys, no_load):
    root, _ = saved
    from specdec.cli import CliError

    for debug in (["--debug"], []):
        argv = [
            "generate",
            "--target",
            str(root / "target"),
            "--draft",
            str(root / "draft"),
            "--prompt-ids",
            "1",
            "--max-new-tokens",
            "0",
        ]
        if debug:
            with pytest.raises(CliError, match="--max-new-tokens"):
                main(argv + debug)
        else:
            _fail(argv, capsys)
    with pytest.raises(CliError, match="--target"):
        main(["--debug", "generate", "--target", "DOES_NOT_EXIST", "--draft", str(root / "draft"), "--prompt-ids", "1"])


def test_command_line_one_line_error_and_debug_traceback(tmp_path):
    """The reported case, through a real process: one line and status 2; --debug shows the traceback."""
    import subprocess
    import sys

    argv = [
        sys.executable,
        "-m",
        "specdec.cli",
        "generate",
        "--target",
        "DOES_NOT_EXIST",
        "--draft",
        str(tmp_path),
        "--prompt",
        "hello",
    ]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [
        "specdec generate: error: argument --target: expected a Hugging Face model folder (a folder with "
        "config.json), got 'DOES_NOT_EXIST', which does not exist"
    ]
    assert p.stdout == ""
    p = subprocess.run(argv + ["--debug"], capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "Traceback" in p.stderr and "DOES_NOT_EXIST" in p.stderr


def test_corrupt_draft_is_one_line_runtime_error(saved, tmp_path, capsys):
    from safetensors.torch import save_file

    root, _ = saved
    draft = tmp_path / "corrupt_draft"
    draft.mkdir()
    (draft / "config.json").write_text((root / "draft" / "config.json").read_text())
    save_file({"fc.weight": torch.zeros(3, 3)}, str(draft / "model.safetensors"))
    argv = ["generate", "--target", root / "target", "--draft", draft, "--prompt-ids", "1 2", "--device", "cpu"]
    line = _fail(argv, capsys, code=1)
    assert line.startswith("specdec generate: error: loading the draft head from --draft") and "failed:" in line
    assert "--debug" in line
    with pytest.raises(ValueError):  # the library's CheckpointError, with its traceback
        main([str(a) for a in argv] + ["--debug"])


def _help_entries(text):
    """Option name -> its help text (wrapped lines joined) from argparse's --help output."""
    entries, current = {}, None
    for line in text.splitlines():
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            if current == "-h":
                current = "--help"
            entries[current] = line
        elif current is not None and line.startswith("    ") and line.strip():
            entries[current] += " " + line
        else:
            current = None
    return {k: " ".join(v.split()) for k, v in entries.items()}


@pytest.mark.parametrize("command", [["generate"], ["info"], []])
def test_help_shows_each_default_once(capsys, command):
    with pytest.raises(SystemExit) as info:
        main(command + ["--help"])
    assert info.value.code == 0
    entries = _help_entries(capsys.readouterr().out)
    from specdec.cli.app import _parser

    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    which = sub.choices[command[0]] if command else parser
    options = [a for a in which._actions if a.option_strings and a.dest != "help"]
    assert options and set(entries) == {a.option_strings[0] for a in options} | {"--help"}
    for a in options:
        entry = entries[a.option_strings[0]]
        # "default" as a word of the text (e.g. `--target default`) is not a stated default
        stated = entry.lower().count("default") - entry.count("the word default")
        assert stated + entry.count("(required)") == 1, entry
        assert entry.count("(default: ") + entry.count("(required)") == 1, entry
    if command == ["generate"]:
        assert "(default: 64)" in entries["--max-new-tokens"] and "tokens to generate" in entries["--max-new-tokens"]
        assert entries["--device"].endswith("(default: cuda when available, else cpu)")
        assert entries["--temperature"].endswith("(default: 0.0)")
        assert entries["--top-p"].endswith("(default: 1.0)")
        assert entries["--no-eos"].endswith("(default: off)")
        assert "(required)" in entries["--target"] and "(required)" in entries["--draft"]


def test_every_dtype_option_takes_the_names_of_specdec_dtypes():
    """--dtype of each command lists specdec.dtypes' names (sorted) and then "auto": all of DTYPE_NAMES,
    the training ones for `train`; no command keeps a list of its own. specdec data's --engine choices are
    specdec.data.responses.ENGINES (written out there because that module imports torch)."""
    from specdec.cli import data as cli_data
    from specdec.cli.app import _parser
    from specdec.data.responses import ENGINES
    from specdec.dtypes import AUTO, DTYPE_NAMES, TRAIN_DTYPE_NAMES

    choices = {
        name: next((a.choices for a in p._actions if "--dtype" in a.option_strings), None)
        for name, p in _parser().subcommands.items()
    }
    every = sorted(DTYPE_NAMES) + [AUTO]
    assert choices == {
        "info": None,
        "generate": every,
        "target": None,
        "data": every,
        "train": sorted(TRAIN_DTYPE_NAMES) + [AUTO],
        "validate": None,
        "eval": every,
    }
    assert cli_data.ENGINES == ENGINES
