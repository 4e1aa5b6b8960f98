"""specdec.heads: the shipped heads of the default target, `--draft eagle|fspad|griffin`, and the export
(specdec.training.export_head).

The shipped heads are checked for what a user relies on (exactly the files the package installs, bf16
weights, a config the loader accepts, validation acceptance for the automatic tree budget) and their
training records in bench/results/training/; the name resolution and the export run on a tiny random head.
"""

from __future__ import annotations

import ast
import fnmatch
import glob
import json
import os
import re
import sys

import pytest
import torch
from safetensors import safe_open

from specdec.heads import HEADS_DIR, KINDS, resolve_draft, shipped_heads
from specdec.models import DraftConfig, build_draft_head, load_draft_head
from specdec.training.export_head import HEAD_FILES, copy_portable, export_head

SHIPPED = shipped_heads()
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # the repository
TRAINING_RECORDS = os.path.join(ROOT, "bench", "results", "training")


def tiny_head(kind="griffin", draft_vocab=None):
    cfg = DraftConfig(
        kind=kind,
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        draft_vocab_size=draft_vocab,
    )
    torch.manual_seed(0)
    head = build_draft_head(cfg)
    if draft_vocab:
        head.set_draft_vocab(torch.arange(0, 2 * draft_vocab, 2))
    return head


def test_resolve_draft_names_and_paths(tmp_path, monkeypatch):
    assert resolve_draft("~/x") == os.path.expanduser("~/x")
    assert resolve_draft(str(tmp_path)) == str(tmp_path)
    for kind in KINDS:
        if kind in SHIPPED:
            assert resolve_draft(kind) == os.path.join(HEADS_DIR, kind)
        else:
            with pytest.raises(FileNotFoundError, match=f"shipped {kind} head is missing"):
                resolve_draft(kind)
    # a folder of that name in the working directory wins over the shipped head
    monkeypatch.chdir(tmp_path)
    (tmp_path / "griffin").mkdir()
    assert resolve_draft("griffin") == "griffin"


@pytest.mark.parametrize("draft_vocab", [None, 24])
def test_export_writes_bf16_and_exactly_the_shipped_files(tmp_path, draft_vocab):
    head = tiny_head(draft_vocab=draft_vocab)
    src = tmp_path / "run"
    head.save_pretrained(src)
    (src / "summary.json").write_text('{"tokens": 1}\n')  # training records: not part of a shipped head
    (src / "train_log.csv").write_text("step,loss\n1,2.0\n")
    (src / "checkpoints").mkdir()
    dst = tmp_path / "heads" / "griffin"
    dst.mkdir(parents=True)
    (dst / "stale.txt").write_text("replaced")
    export_head(str(src), str(dst))
    assert sorted(os.listdir(dst)) == sorted(HEAD_FILES) == ["README.md", "config.json", "model.safetensors"]
    assert (dst / "README.md").read_text().startswith("# GRIFFIN draft head\n")
    assert not [n for n in os.listdir(dst.parent) if n.startswith(".export-")]
    with safe_open(str(dst / "model.safetensors"), "pt") as f:
        for k in f.keys():
            t = f.get_tensor(k)
            assert t.dtype == (torch.int64 if k == "draft_to_target" else torch.bfloat16), k
    back = load_draft_head(str(dst), dtype=torch.float32)
    for k, v in head.state_dict().items():
        w = back.state_dict()[k]
        if v.dtype.is_floating_point:
            torch.testing.assert_close(w, v.to(torch.bfloat16).float(), rtol=0, atol=0)
        else:
            assert torch.equal(w, v)


def test_export_writes_no_path_of_this_machine(tmp_path):
    """Paths under $SPECDEC_HOME and the user's home in the exported text files become "$SPECDEC_HOME/..."
    and "~/..."; other paths and the weights are untouched."""
    src = tmp_path / "src"
    tiny_head().save_pretrained(src)
    home = os.environ["SPECDEC_HOME"]  # the tests' private specdec home (conftest.py)
    user = os.path.expanduser("~")
    config = json.loads((src / "config.json").read_text())
    recipe = {"out": f"{user}/runs/y", "o": "/opt/z"}
    config["specdec_training"] = {"data": {"path": f"{home}/data/x"}, "recipe": recipe}
    (src / "config.json").write_text(json.dumps(config))
    readme = tmp_path / "readme.md"
    readme.write_text(f"specdec train --data {home}/data/x --out {user}/runs/y\n")
    dst = tmp_path / "dst"
    export_head(str(src), str(dst), readme=str(readme))
    assert json.loads((dst / "config.json").read_text())["specdec_training"] == {
        "data": {"path": "$SPECDEC_HOME/data/x"},
        "recipe": {"out": "~/runs/y", "o": "/opt/z"},
    }
    assert (dst / "README.md").read_text() == "specdec train --data $SPECDEC_HOME/data/x --out ~/runs/y\n"
    # the training records scripts/train_heads.sh keeps in bench/results/training/ are written the same way
    (src / "summary.json").write_text(json.dumps({"out": f"{user}/runs/y"}))
    copy_portable(str(src / "summary.json"), str(tmp_path / "kept.json"))
    assert json.loads((tmp_path / "kept.json").read_text()) == {"out": "~/runs/y"}


@pytest.mark.skipif(not SHIPPED, reason="no shipped heads in this checkout")
@pytest.mark.parametrize("kind", sorted(SHIPPED))
def test_shipped_head_names_no_machine_path(kind):
    """The shipped folders' text files, and their training records in bench/results/training/, carry no home
    folder of the machine that trained them."""
    bad = re.compile(r"(/root|/home/[^/\s\"']+|/Users/[^/\s\"']+)(?=[/\s\"']|$)")
    for folder in (SHIPPED[kind], os.path.join(TRAINING_RECORDS, kind), TRAINING_RECORDS):
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if name.endswith((".json", ".md", ".csv", ".txt")):
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    found = bad.findall(f.read())
                assert not found, f"{folder}/{name} names machine paths: {sorted(set(found))}"


@pytest.mark.parametrize("missing", ["src", "readme"])  # before the head is written / while it is
def test_export_failure_leaves_the_destination(tmp_path, missing):
    src = tmp_path / "run"
    tiny_head().save_pretrained(src)
    dst = tmp_path / "griffin"
    dst.mkdir()
    (dst / "keep.txt").write_text("old head")
    with pytest.raises((OSError, ValueError)):
        if missing == "src":
            export_head(str(tmp_path / "missing"), str(dst))
        else:
            export_head(str(src), str(dst), readme=str(tmp_path / "missing.md"))
    assert os.listdir(dst) == ["keep.txt"] and (dst / "keep.txt").read_text() == "old head"
    assert sorted(os.listdir(tmp_path)) == ["griffin", "run"]  # no temporary folder left


def split_sizes(manifest: dict) -> tuple:
    """(train, val) sequences of a data manifest (what a head's specdec_training.data records)."""
    splits = manifest["splits"]
    return tuple(sum(e["sequences"] for e in splits[s]["shards"]) for s in ("train", "val"))


@pytest.mark.skipif(not SHIPPED, reason="no shipped heads in this checkout")
@pytest.mark.parametrize("kind", sorted(SHIPPED))
def test_shipped_head_is_complete(kind):
    folder = SHIPPED[kind]
    cfg = json.load(open(os.path.join(folder, "config.json")))
    assert cfg["specdec_kind"] == kind
    assert cfg["hidden_size"] == 576 and cfg["vocab_size"] == 49152  # SmolLM2-135M-Instruct's
    assert sorted(os.listdir(folder)) == sorted(HEAD_FILES)  # only what runs (and its README) is shipped
    with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    assert {d for k, d in dtypes.items() if k != "draft_to_target"} == {"BF16"}
    head = load_draft_head(folder, dtype=torch.float32)
    from specdec.decoding.budget import head_acceptance

    acc = head_acceptance(head)  # the automatic tree budget reads the head's measured top-k coverage
    assert acc and all(isinstance(c, list) and len(c) == 10 for c in acc), acc
    assert all(0.0 < c[0] <= c[-1] <= 1.0 for c in acc)
    rec = cfg["specdec_validation"]  # measured on the held-out split of the data the head was trained on
    assert rec["data"]["split"] == "val"
    if os.path.isfile(os.path.join(ROOT, "setup.py")):  # a repository checkout (an installed package has no bench/)
        # the records keep the manifest of each head's training data (data_manifest*.json; the one with the
        # split sizes its config.json records: the copies' paths are made portable, so their hash differs)
        data = cfg["specdec_training"]["data"]
        sizes = (data["train_sequences"], data["val_sequences"])
        manifests = [json.load(open(p)) for p in glob.glob(os.path.join(TRAINING_RECORDS, "data_manifest*.json"))]
        (manifest,) = [m for m in manifests if split_sizes(m) == sizes]
        # the same data settings as the training data's, but possibly more prompts (and another compute
        # dtype): the held-out conversations are chosen by a hash of each, so the held-out split of all of
        # ShareGPT's first turns is held out from heads trained on the first 5,000 too
        loose = ("num_prompts", "dtype")
        got, want = rec["data"]["settings"], manifest["settings"]
        assert {k: v for k, v in got.items() if k not in loose} == {k: v for k, v in want.items() if k not in loose}
        assert got["num_prompts"] is None or got["num_prompts"] >= want["num_prompts"]
        for name in ("RECIPE.md", "summary.json", "train_log.csv", "val_log.csv", "curves.png"):
            assert os.path.isfile(os.path.join(TRAINING_RECORDS, kind, name)), f"training/{kind}/{name}"


def test_package_data_ships_exactly_the_head_files():
    """setup.py's package_data of specdec.heads installs config.json, model.safetensors and README.md of each
    head, nothing else (the training records stay in bench/results/training/)."""
    with open(os.path.join(ROOT, "setup.py")) as f:
        tree = ast.parse(f.read())
    kws = [n for n in ast.walk(tree) if isinstance(n, ast.keyword) and n.arg == "package_data"]
    (data,) = [ast.literal_eval(kw.value) for kw in kws]
    patterns = data["specdec.heads"]
    assert sorted(p.rsplit("/", 1)[-1] for p in patterns) == sorted(HEAD_FILES)
    heads_pkg = os.path.dirname(HEADS_DIR)
    tracked = []
    for dirpath, _, files in os.walk(heads_pkg):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), heads_pkg).replace(os.sep, "/")
            if not rel.endswith((".py", ".pyc")):
                tracked.append(rel)
    shipped = sorted(r for r in tracked if any(fnmatch.fnmatch(r, p) for p in patterns))
    assert shipped == sorted(tracked), f"not installed from specdec/heads/: {sorted(set(tracked) - set(shipped))}"
    assert shipped == sorted(f"{os.path.basename(HEADS_DIR)}/{k}/{n}" for k in SHIPPED for n in HEAD_FILES)


def _recipe_dry_run(tmp_path, step, train_shards, num_shards=2):
    """scripts/train_heads.sh with DRY_RUN=1 over a fake data manifest in $WORK (nothing runs)."""
    import subprocess

    data = tmp_path / "data" / "sharegpt-5k"
    data.mkdir(parents=True, exist_ok=True)
    train = {"num_shards": num_shards, "shards": [{}] * train_shards, "sequences": 400 * train_shards}
    (data / "manifest.json").write_text(json.dumps({"splits": {"train": train, "val": {"num_shards": 1}}}))
    script = os.path.join(ROOT, "scripts", "train_heads.sh")
    env = dict(os.environ, WORK=str(tmp_path), STEP=step, DRY_RUN="1")
    return subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=60)


def test_recipe_script_sizes_griffin_stages_from_the_train_split(tmp_path):
    """GRIFFIN's stage lengths come from the train split's size (800 sequences / 8 per step: an epoch of
    100 steps, a half 50, a quarter 25); a train split not built yet (a --splits val folder) stops the
    script with a message instead of running stages of --max-steps 0."""
    done = _recipe_dry_run(tmp_path, "griffin", train_shards=2)
    assert done.returncode == 0, done.stderr
    cmds = [line for line in done.stderr.splitlines() if line.startswith("+ specdec train")]
    assert len(cmds) == 6 and "--max-steps 50 " in cmds[0] and "--max-steps 25 " in cmds[1], cmds
    assert "--max-steps 150 " in cmds[4]  # round 3: 1.5 epochs of stage 1
    for step in ("griffin", "fullvocab"):
        short = _recipe_dry_run(tmp_path, step, train_shards=0)
        assert short.returncode != 0 and "is not built (0 of 2 shards): run STEP=data first" in short.stderr
        assert "specdec train" not in short.stderr, step


def test_describe_draft_names_no_machine_path(monkeypatch, tmp_path):
    """What eval reports record for a head: a shipped head by its kind, a folder under the specdec home or
    the user's home written portably, a relative folder as given."""
    import os

    from specdec.heads import describe_draft, shipped_heads

    monkeypatch.setenv("SPECDEC_HOME", str(tmp_path / "home"))
    assert describe_draft(str(tmp_path / "home" / "runs" / "griffin-r3")) == "$SPECDEC_HOME/runs/griffin-r3"
    assert describe_draft(os.path.expanduser(os.path.join("~", "heads", "mine"))) == "~/heads/mine"
    assert describe_draft(os.path.join("runs", "mine")) == os.path.join("runs", "mine")
    for kind, folder in shipped_heads().items():
        assert describe_draft(folder) == f"{kind} (shipped)"
        assert describe_draft(folder + os.sep) == f"{kind} (shipped)"


def test_check_head_fits():
    """specdec.models.check_head_fits (what `specdec validate` checks --draft with): a head reads its target's
    hidden states, so a target of another hidden size is refused before bind_target, in words."""
    from types import SimpleNamespace

    from specdec.models import HeadTargetMismatch, check_head_fits

    head = tiny_head()
    check_head_fits(head, SimpleNamespace(hidden_size=16, vocab_size=64))
    with pytest.raises(
        HeadTargetMismatch, match=r"a head of hidden size 16 cannot read this target's features \(hidden size 32\)"
    ):
        check_head_fits(head, SimpleNamespace(hidden_size=32, vocab_size=64))


def test_scale_heads_export_ships_a_lineage_with_its_records(tmp_path):
    """scripts/scale_heads.sh STEP=export (HEADS and RECORDS pointed at temporary folders): the last run of a
    lineage becomes the shipped head (bf16 weights), the records of every run land beside it with the earlier
    run's under its name, a stale record of another lineage is gone, and RECIPE.md names each run's command
    (the stages run sized from the data's length-grouped batches) with no path of this machine."""
    import subprocess

    from specdec.data import shards
    from specdec.training.batches import batch_sizes_by_length

    work, heads, records = tmp_path / "work", tmp_path / "heads", tmp_path / "records"
    data = work / "data" / "sharegpt-all"
    data.mkdir(parents=True)
    # two token-only shards of 400 sequences of 40..500 tokens: the stages' steps come from their lengths
    lengths = [40 + (i * 37) % 461 for i in range(800)]
    entries = []
    for k in range(2):
        seqs = [{"input_ids": [1] * n, "loss_mask": [True] * n} for n in lengths[400 * k : 400 * (k + 1)]]
        name = shards.shard_name("train", k)
        entries.append(dict(shards.write_shard(str(data), name, seqs, 8, [], False, 4), index=k))
    train = {"num_shards": 2, "shards": entries, "sequences": 800}
    manifest = {
        "format": shards.FORMAT,
        "version": shards.VERSION,
        "splits": {"train": train, "val": {"num_shards": 1}},
    }
    shards.write_manifest(str(data), manifest)
    quarter = len(batch_sizes_by_length(sorted(lengths), 1920)) // 4
    for run in ("scale-griffin-s1", "scale-griffin-s23"):
        tiny_head().save_pretrained(work / "runs" / run)
        for f in ("summary.json", "train_log.csv", "val_log.csv"):
            (work / "runs" / run / f).write_text(f"{run} {f} {work}\n")
    (work / "runs" / "scale-griffin-s23" / "curves.png").write_bytes(b"png")
    # a run still going: only its snapshot (the head of its newest validation) and its logs so far
    tiny_head().save_pretrained(work / "runs" / "scale-fspad" / "snapshot")
    for f in ("summary.json", "train_log.csv", "val_log.csv", "curves.png"):
        (work / "runs" / "scale-fspad" / f).write_text("so far\n")
    (records / "griffin").mkdir(parents=True)
    (records / "griffin" / "round1_summary.json").write_text("{}")
    ship = "griffin=scale-griffin-s1,scale-griffin-s23 fspad=scale-fspad eagle=scale-eagle"
    env = dict(os.environ, WORK=str(work), STEP="export", SHIP=ship,
               HEADS=str(heads), RECORDS=str(records), PY=sys.executable, SPECDEC_HOME=str(work))  # fmt: skip
    done = subprocess.run(["bash", os.path.join(ROOT, "scripts", "scale_heads.sh")], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(heads / "griffin")) == ["README.md", "config.json", "model.safetensors"]
    with safe_open(str(heads / "griffin" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    kept = sorted(os.listdir(records / "griffin"))
    assert kept == sorted(
        ["RECIPE.md", "curves.png", "summary.json", "train_log.csv", "val_log.csv"]
        + [f"scale-griffin-s1_{f}" for f in ("summary.json", "train_log.csv", "val_log.csv")]
    )
    assert (records / "griffin" / "scale-griffin-s1_val_log.csv").read_text() == (
        "scale-griffin-s1 val_log.csv $SPECDEC_HOME\n"
    )
    recipe = (records / "griffin" / "RECIPE.md").read_text()
    assert str(work) not in recipe and "specdec data --target default --out $SPECDEC_HOME/data/sharegpt-all" in recipe
    assert "specdec train --kind griffin --out $SPECDEC_HOME/runs/scale-griffin-s1 --epochs 4" in recipe
    assert "--batch-tokens 1920 " in recipe and quarter != 800 // 8 // 4
    assert f"--init $SPECDEC_HOME/runs/scale-griffin-s1 --stages 2,3 --epochs 1 --max-steps {quarter} " in recipe
    assert (records / "data_manifest.json").is_file()
    assert sorted(os.listdir(heads / "fspad")) == ["README.md", "config.json", "model.safetensors"]
    assert (records / "fspad" / "val_log.csv").read_text() == "so far\n"
    assert "fspad from the snapshot of an unfinished run" in done.stderr
    recipe = (records / "fspad" / "RECIPE.md").read_text()
    assert "export_head $SPECDEC_HOME/runs/scale-fspad/snapshot python/specdec/heads/" in recipe
    assert "specdec_training.result.snapshot" in recipe
    assert not (heads / "eagle").exists() and "eagle is not trained yet" in done.stderr


def test_scale_heads_eval_runs_the_readme_setting_and_names_old_heads_relative_to_the_checkout(tmp_path):
    """scripts/scale_heads.sh STEP=eval: `specdec eval` of the three shipped heads in the README's setting
    (TREE=auto adds --total-tokens auto, TREE=8 the issue's 8-node tree; PY stands in for the venv's Python
    and prints its arguments); with OLD=REV the heads of that revision join under their own names from the
    ignored bench/out, so meta.json records no path of this machine; an unknown TREE is refused."""
    import subprocess

    script = os.path.join(ROOT, "scripts", "scale_heads.sh")

    def run(**extra):
        env = dict(os.environ, WORK=str(tmp_path), STEP="eval", THREADS="2", PY="echo", **extra)
        return subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=60)

    auto = run(TREE="auto")
    assert auto.returncode == 0, auto.stderr
    args = auto.stdout.split()
    assert args[:4] == ["-m", "specdec.cli", "eval", "--target"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--draft"] == ["eagle", "fspad", "griffin"]
    assert " --limit 5 --spread --max-new-tokens 128 --threads 2 --total-tokens auto " in auto.stdout
    assert args[-1] == "bench/results/eval/smollm2-135m_threads2_auto-tree_scale"
    paper = run(TREE="paper", DRY_RUN="1", OLD="abc123")
    assert paper.returncode == 0 and paper.stdout == "", paper.stderr
    assert "--total-tokens" not in paper.stderr and str(tmp_path) not in paper.stderr
    drafts = [w for w in paper.stderr.split() if w.startswith("griffin")]
    old_griffin = "bench/out/heads-abc123/python/specdec/heads/SmolLM2-135M-Instruct/griffin"
    assert drafts == ["griffin", f"griffin-abc123={old_griffin}"]
    assert paper.stderr.split()[-1] == "bench/results/eval/smollm2-135m_threads2_paper-tree_scale_vs-abc123"
    eight = run(TREE="8", DRY_RUN="1")
    assert eight.returncode == 0, eight.stderr
    assert " --total-tokens 8 --depth 2 --tree-top-k 4 " in eight.stderr
    assert eight.stderr.split()[-1] == "bench/results/eval/smollm2-135m_threads2_8-tree_scale"
    bad = run(TREE="papers")
    assert bad.returncode != 0 and "TREE=paper, auto or 8, not papers" in bad.stderr
