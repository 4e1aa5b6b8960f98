"""specdec.training.train and `specdec train`: recipes, schedule, checkpoints, resume, validation, DDP, CLI.

Everything runs on a tiny random Llama target (tests/tiny_models.py) and data built from it in the test:
random prompts answered greedily by the target itself (self-distillation), so the draft has something to
learn, written as a real `specdec data` folder (shards + manifest) for the CLI and torchrun tests.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from specdec.training import checkpointing as ckpt
from specdec.training.schedule import lr_factor, warmup_cosine
from specdec.training.trainer import SimulatedKill, TrainConfig, train

from helpers import tolerance
from tiny_models import make_target, one_thread  # noqa: F401

VOCAB, HIDDEN = 128, 64
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ListDataset(torch.utils.data.Dataset):
    """Items as FeatureDataset's (or TokenDataset's without hidden), in memory."""

    manifest = None

    def __init__(self, items, vocab=VOCAB, hidden=True):
        self.items = items
        self.vocab = vocab
        self.hidden = hidden

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        it = self.items[i]
        return it if self.hidden else {k: v for k, v in it.items() if k != "hidden"}

    def lengths(self):
        return [len(it["input_ids"]) for it in self.items]

    def token_counts(self):
        out = torch.zeros(self.vocab, dtype=torch.int64)
        for it in self.items:
            out += torch.bincount(it["input_ids"][it["loss_mask"]], minlength=self.vocab)
        return out


def make_items(model, n: int, seed: int, prompt_len: int = 6, new: int = 14) -> list:
    """n sequences: a random prompt, then the target's greedy answer (the loss mask), lengths varied."""
    from specdec.data import target_hidden

    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(3, VOCAB, (n, prompt_len), generator=g)
    with torch.no_grad():
        ids = model.generate(
            prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new, do_sample=False, min_new_tokens=new
        )
        hidden = target_hidden(model, ids)
    items = []
    for i in range(n):
        T = prompt_len + new - (i % 5)
        mask = torch.zeros(T, dtype=torch.bool)
        mask[prompt_len:] = True
        items.append({"input_ids": ids[i, :T].clone(), "loss_mask": mask, "hidden": hidden[i, :T].to(torch.bfloat16)})
    return items


@pytest.fixture(scope="module")
def setup():
    model = make_target(vocab=VOCAB, hidden=HIDDEN, sharpen=4.0, seed=1)
    model.generation_config.eos_token_id = None
    train_items = make_items(model, 32, seed=2)
    val_items = make_items(model, 8, seed=3)
    return model, train_items, val_items


def run(tmp, setup, name="run", **kw):
    model, tr, va = setup
    base = dict(kind="eagle", out=str(tmp / name), batch_size=4, epochs=1, lr=2e-3, progress=False, plot=False)
    base.update(kw)
    cfg = TrainConfig(**base)
    return train(cfg, target_model=model, datasets=(ListDataset(tr), ListDataset(va)))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_weights(folder):
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


# ---- schedule -------------------------------------------------------------------------------------


def test_warmup_cosine_values():
    warm, total = 4, 14
    assert [lr_factor(s, warm, total) for s in range(warm)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(warm, warm, total) == 1.0
    assert lr_factor(warm + 5, warm, total) == pytest.approx(0.5)  # halfway through the decay
    assert lr_factor(total, warm, total) == pytest.approx(0.0, abs=1e-15)
    assert lr_factor(total + 3, warm, total, 0.1) == pytest.approx(0.1)
    assert lr_factor(warm + 5, warm, total, 0.2) == pytest.approx(0.2 + 0.8 * 0.5)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sched = warmup_cosine(opt, warm, total)
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [1e-3 * lr_factor(s, warm, total) for s in range(total)]
    assert seen == pytest.approx(expected, rel=1e-12)
    assert seen[0] > 0 and max(seen) == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(seen[warm - 1 :], seen[warm:]))  # monotone decay after warmup


# ---- checkpoints ----------------------------------------------------------------------------------


def test_atomic_checkpoint_and_leftover_temporary(tmp_path, monkeypatch):
    d = str(tmp_path / "ck")
    ckpt.atomic_save({"a": torch.arange(3)}, os.path.join(d, ckpt.checkpoint_name(1, 5)))
    # a run killed while writing step 10 leaves only a temporary file behind
    with open(os.path.join(d, "." + ckpt.checkpoint_name(1, 10) + ".tmp-999"), "wb") as f:
        f.write(b"\x80truncated")
    assert ckpt.latest_checkpoint(d)[:2] == (1, 5)
    stage, step, _, state = ckpt.load_latest(d)
    assert (stage, step) == (1, 5) and state["a"].tolist() == [0, 1, 2]

    # a failure during the write leaves neither a final file nor a temporary one
    def boom(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        ckpt.atomic_save({"b": 1}, os.path.join(d, ckpt.checkpoint_name(1, 20)))
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(d)[:2] == (1, 5)
    assert not any(n.startswith(".stage1-step00000020") for n in os.listdir(d))
    assert ckpt.clean_temporaries(d) == ["." + ckpt.checkpoint_name(1, 10) + ".tmp-999"]
    ckpt.atomic_save({"c": 2}, os.path.join(d, ckpt.checkpoint_name(2, 1)))
    ckpt.atomic_save({"c": 3}, os.path.join(d, ckpt.checkpoint_name(2, 4)))
    ckpt.prune_checkpoints(d, 2)
    assert [c[:2] for c in ckpt.list_checkpoints(d)] == [(2, 1), (2, 4)]


# ---- the recipes learn ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind,stages", [("eagle", (1,)), ("fspad", (1,)), ("griffin", (1, 2))])
def test_recipe_lowers_validation_loss(tmp_path, setup, kind, stages):
    out = run(tmp_path, setup, kind=kind, stages=stages, epochs=4, val_steps=3, checkpoint_every=1000)
    val = read_csv(os.path.join(out, "val_log.csv"))
    for stage in stages:
        rows = [r for r in val if int(r["stage"]) == stage]
        assert len(rows) == 5  # step 0 and after each of the 4 epochs
        first, last = float(rows[0]["val_loss"]), float(rows[-1]["val_loss"])
        assert last < first, f"{kind} stage {stage}: validation loss {first} -> {last}"
    first = [r for r in val if int(r["stage"]) == stages[0]][0]
    assert float(val[-1]["acc_1"]) > float(first["acc_1"])
    assert float(val[-1]["tau_chain"]) > float(first["tau_chain"])
    # the head folder: loadable, with its provenance
    from specdec.models import load_draft_head

    head = load_draft_head(out)
    assert head.kind == kind
    with open(os.path.join(out, "config.json")) as f:
        meta = json.load(f)["specdec_training"]
    assert meta["kind"] == kind and meta["stage"] == stages[-1]
    assert meta["recipe"]["epochs"] == 4 and meta["recipe"]["betas"] == [0.9, 0.95]
    log = read_csv(os.path.join(out, "train_log.csv"))
    assert len(log) == 4 * 8 * len(stages)
    for key in ("stage", "global_step", "epoch", "lr", "loss", "smooth_l1", "soft_ce", "acc", "tokens_per_s"):
        assert key in log[0]
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert set(summary["stages"]) == {str(s) for s in stages}
    if len(stages) > 1:
        for s in stages:
            assert os.path.isfile(os.path.join(out, "stages", f"stage{s}", "model.safetensors"))
        last = load_weights(os.path.join(out, "stages", f"stage{stages[-1]}"))
        final = load_weights(out)
        assert all(torch.equal(last[k], final[k]) for k in last)
        assert "top10_ce" in log[-1] and log[-1]["top10_ce"] != ""


# ---- kill and resume ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,stages,second", [("eagle", (1,), 5), ("griffin", (1, 2), 13)])
def test_kill_and_resume_is_bitwise(tmp_path, setup, kind, stages, second):
    kw = dict(kind=kind, stages=stages, epochs=2, checkpoint_every=3, val_steps=2, keep_checkpoints=0)
    full = run(tmp_path, setup, "full", **kw)
    # 8 steps per epoch: killed after 7 steps (checkpoints at 3 and 6), resumed and killed again `second`
    # steps later (eagle: in epoch 2; griffin: in stage 2), then resumed to the end
    with pytest.raises(SimulatedKill):
        run(tmp_path, setup, "killed", stop_after=7, **kw)
    with pytest.raises(SimulatedKill):
        run(tmp_path, setup, "killed", stop_after=second, resume=True, **kw)
    # a temporary file from a kill during a checkpoint write is ignored
    with open(os.path.join(tmp_path, "killed", "checkpoints", ".stage9-step00000099.pt.tmp-1"), "wb") as f:
        f.write(b"junk")
    out = run(tmp_path, setup, "killed", resume=True, **kw)
    a, b = load_weights(full), load_weights(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la, lb = read_csv(os.path.join(full, "train_log.csv")), read_csv(os.path.join(out, "train_log.csv"))
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    assert [r["global_step"] for r in lb] == [r["global_step"] for r in la]
    va, vb = read_csv(os.path.join(full, "val_log.csv")), read_csv(os.path.join(out, "val_log.csv"))
    assert [r["val_loss"] for r in va] == [r["val_loss"] for r in vb]
    # a finished run resumed again changes nothing
    run(tmp_path, setup, "killed", resume=True, **kw)
    assert all(torch.equal(a[k], v) for k, v in load_weights(out).items())


def test_val_every_validates_inside_epochs_without_changing_the_run(tmp_path, setup):
    # 8 steps per epoch, 2 epochs: validation at step 0, every 3 steps and at the two epoch ends
    kw = dict(kind="fspad", epochs=2, checkpoint_every=100, val_steps=2, keep_checkpoints=0)
    plain = run(tmp_path, setup, "plain", **kw)
    every = run(tmp_path, setup, "every", val_every=3, **kw)
    val = read_csv(os.path.join(every, "val_log.csv"))
    assert [int(r["step"]) for r in val] == [0, 3, 6, 8, 9, 12, 15, 16]
    assert [float(r["epoch"]) for r in val] == [0, 0.375, 0.75, 1, 1.125, 1.5, 1.875, 2]
    a, b = load_weights(plain), load_weights(every)
    assert all(torch.equal(a[k], b[k]) for k in a), "validating in between changed the trained weights"
    ends = read_csv(os.path.join(plain, "val_log.csv"))
    assert [r["val_loss"] for r in ends] == [r["val_loss"] for r in val if r["step"] in ("0", "8", "16")]
    # killed after step 4 (the step-3 validation was checkpointed) and resumed: no validation twice
    with pytest.raises(SimulatedKill):
        run(tmp_path, setup, "killed", val_every=3, stop_after=4, **kw)
    out = run(tmp_path, setup, "killed", val_every=3, resume=True, **kw)
    assert [r["val_loss"] for r in read_csv(os.path.join(out, "val_log.csv"))] == [r["val_loss"] for r in val]
    with pytest.raises(ValueError, match="val_every"):
        TrainConfig(val_every=0)


def test_snapshot_holds_the_head_of_the_newest_validation(tmp_path, setup):
    """out/snapshot: after a validation inside the run, a loadable head equal to the checkpoint written right
    after it, its record saying where the stage stood; at the end, the final head. A two-stage run keeps one
    snapshot, of the stage it reached."""
    import json

    from specdec.models import load_draft_head

    kw = dict(kind="fspad", epochs=1, checkpoint_every=100, val_steps=2, keep_checkpoints=0, val_every=3)
    with pytest.raises(SimulatedKill):
        run(tmp_path, setup, "killed", stop_after=5, **kw)
    snap = tmp_path / "killed" / "snapshot"
    assert sorted(os.listdir(snap)) == ["config.json", "model.safetensors"]
    record = json.loads((snap / "config.json").read_text())["specdec_training"]
    assert record["result"]["snapshot"]["step"] == 3 and record["result"]["snapshot"]["epoch"] == 0.375
    assert record["result"]["snapshot"]["tokens"] > 0 and record["stage"] == 1
    assert [v["step"] for v in record["result"]["validation"]] == [0, 3]
    ckpt = torch.load(tmp_path / "killed" / "checkpoints" / "stage1-step00000003.pt", weights_only=False)
    head = load_draft_head(str(snap), dtype=torch.float32)
    assert all(torch.equal(v, ckpt["head"][k]) for k, v in head.state_dict().items())
    out = run(tmp_path, setup, "killed", resume=True, **kw)
    final, snapped = load_weights(out), load_weights(snap)
    assert final.keys() == snapped.keys() and all(torch.equal(final[k], snapped[k]) for k in final)
    assert json.loads((snap / "config.json").read_text())["specdec_training"]["result"]["snapshot"]["step"] == 8
    two = run(tmp_path, setup, "two", kind="griffin", stages=(1, 2), max_steps=4, val_steps=1, val_every=2)
    record = json.loads(open(os.path.join(two, "snapshot", "config.json")).read())["specdec_training"]
    assert record["stage"] == 2 and record["result"]["snapshot"]["step"] == 4
    final, snapped = load_weights(two), load_weights(os.path.join(two, "snapshot"))
    assert all(torch.equal(final[k], snapped[k]) for k in final)


def test_scaling_curve_follows_a_lineage(tmp_path, setup):
    # bench/scaling_curve.py over a 2-run lineage (the second starts from the first's weights): the points
    # of both runs in order, tokens and epochs adding up along it, expected taus from the coverage
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
    import scaling_curve

    kw = dict(kind="fspad", checkpoint_every=100, val_steps=2, val_every=4, progress=False)
    first = run(tmp_path, setup, "first", epochs=1, **kw)
    second = run(tmp_path, setup, "second", epochs=1, init=first, seed=1, **kw)
    out = tmp_path / "curve"
    scaling_curve.main(["--head", f"fspad={first},{second}", "--out-dir", str(out)])
    rows = read_csv(out / "scaling.csv")
    points = [("first", 0), ("first", 4), ("first", 8), ("second", 4), ("second", 8)]
    assert [(r["run"], int(r["step"])) for r in rows] == points
    tokens = [int(r["tokens"]) for r in rows]
    assert tokens[0] == 0 and all(a < b for a, b in zip(tokens, tokens[1:]))
    per_run = sum(int(r["tokens"]) for r in read_csv(os.path.join(first, "train_log.csv")))
    assert tokens[2] == per_run and tokens[4] == per_run + sum(
        int(r["tokens"]) for r in read_csv(os.path.join(second, "train_log.csv"))
    )
    assert [float(r["epochs"]) for r in rows] == [0, 0.5, 1, 1.5, 2]
    assert all(r["token_passes"] == r["tokens"] for r in rows)  # one-step training: one pass per token
    assert all(float(r["tau_8"]) >= 1 and float(r["tau_papers"]) >= float(r["tau_8"]) for r in rows)
    assert "## fspad" in (out / "scaling.md").read_text()


def test_scaling_curve_adds_up_the_stages_of_a_run(tmp_path, setup):
    # a GRIFFIN run of stages 1-2 cut short by max_steps (half an epoch each): the end of each stage is
    # recorded at the fraction of the epoch it reached, the curve's epochs, tokens and passes add up over
    # the stages, and stage 2's start (stage 1's last weights again) is not a point of its own
    import json

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
    import scaling_curve

    kw = dict(kind="griffin", stages=(1, 2), max_steps=4, val_every=2, val_steps=2, epochs=3)
    out = run(tmp_path, setup, "staged", **kw)  # 32 sequences in batches of 4: 8 steps an epoch
    summary = json.loads(open(os.path.join(out, "summary.json")).read())
    ends = [summary["stages"][s]["validation"][-1] for s in ("1", "2")]
    assert [(v["step"], v["epoch"]) for v in ends] == [(4, 0.5), (4, 0.5)]
    scaling_curve.main(["--head", f"griffin={out}", "--out-dir", str(tmp_path / "curve")])
    rows = read_csv(tmp_path / "curve" / "scaling.csv")
    assert [(int(r["stage"]), int(r["step"])) for r in rows] == [(1, 0), (1, 2), (1, 4), (2, 2), (2, 4)]
    assert [float(r["epochs"]) for r in rows] == [0, 0.25, 0.5, 0.75, 1.0]
    log = read_csv(os.path.join(out, "train_log.csv"))
    one = sum(int(r["tokens"]) for r in log if r["stage"] == "1")
    two = sum(int(r["tokens"]) for r in log if r["stage"] == "2")
    assert int(rows[2]["tokens"]) == int(rows[2]["token_passes"]) == one
    assert int(rows[4]["tokens"]) == one + two and int(rows[4]["token_passes"]) == one + 2 * two


def test_resume_with_other_settings_is_refused(tmp_path, setup):
    with pytest.raises(SimulatedKill):
        run(tmp_path, setup, "r", max_steps=6, checkpoint_every=2, stop_after=3)
    with pytest.raises(ValueError, match="other settings.*lr"):
        run(tmp_path, setup, "r", max_steps=6, checkpoint_every=2, resume=True, lr=1e-3)
    with pytest.raises(FileExistsError):
        run(tmp_path, setup, "r", max_steps=6, checkpoint_every=2)
    # another compute dtype (--dtype auto on the other kind of CPU) continues, with a warning
    with pytest.warns(UserWarning, match="trained in float32, now bfloat16"):
        run(tmp_path, setup, "r", max_steps=6, checkpoint_every=2, resume=True, dtype="bfloat16")


# ---- draft vocabulary, online features, bf16 ------------------------------------------------------


def test_batch_tokens_trains_on_length_grouped_batches(tmp_path, setup):
    # 32 sequences of 16..20 tokens, batches of at most 40 padded tokens: 2 sequences each, 16 steps an
    # epoch; every sequence once per epoch; the recipe records the setting; kill and resume is bitwise
    _, tr, _ = setup
    kw = dict(kind="fspad", epochs=2, batch_tokens=40, checkpoint_every=5, val_steps=2, keep_checkpoints=0)
    full = run(tmp_path, setup, "full", **kw)
    log = read_csv(os.path.join(full, "train_log.csv"))
    assert len(log) == 32
    per_epoch = sum(len(it["input_ids"]) for it in tr)
    assert sum(int(r["tokens"]) for r in log[:16]) == per_epoch == sum(int(r["tokens"]) for r in log[16:])
    assert all(int(r["tokens"]) <= 40 for r in log)
    recipe = json.load(open(os.path.join(full, "config.json")))["specdec_training"]["recipe"]
    assert recipe["batch_tokens"] == 40 and recipe["steps_per_epoch"] == 16
    with pytest.raises(SimulatedKill):
        run(tmp_path, setup, "killed", stop_after=21, **kw)
    out = run(tmp_path, setup, "killed", resume=True, **kw)
    a, b = load_weights(full), load_weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in read_csv(os.path.join(out, "train_log.csv"))] == [r["loss"] for r in log]
    with pytest.raises(ValueError, match="other settings.*batch_tokens"):
        run(tmp_path, setup, "killed", resume=True, **dict(kw, batch_tokens=60))
    with pytest.raises(ValueError, match="batch_tokens"):
        TrainConfig(batch_tokens=0)


def test_batch_tokens_needs_sequence_lengths(tmp_path, setup):
    model, tr, va = setup

    # ListDataset less its lengths(): a dataset that cannot say how long its sequences are
    NoLengths = type(
        "NoLengths", (torch.utils.data.Dataset,), {k: v for k, v in vars(ListDataset).items() if k != "lengths"}
    )
    cfg = TrainConfig(kind="eagle", out=str(tmp_path / "o"), batch_tokens=64, progress=False, plot=False)
    with pytest.raises(ValueError, match="lengths"):
        train(cfg, target_model=model, datasets=(NoLengths(tr), ListDataset(va)))


def test_draft_vocab_head(tmp_path, setup):
    from specdec.models import load_draft_head

    model = setup[0]
    model.generation_config.eos_token_id = 5
    try:
        out = run(tmp_path, setup, kind="griffin", stages=(1, 2), draft_vocab=24, max_steps=4, val_steps=2)
    finally:
        model.generation_config.eos_token_id = None
    head = load_draft_head(out)
    assert head.config.draft_vocab_size == 24
    d2t = head.draft_to_target.tolist()
    assert 5 in d2t and d2t == sorted(d2t)
    counts = ListDataset(setup[1]).token_counts()
    others = [t for t in d2t if t != 5]
    rest = sorted(set(range(VOCAB)) - set(d2t))
    assert min(counts[others]) >= max(counts[rest])  # the most frequent response tokens
    meta = json.load(open(os.path.join(out, "config.json")))["specdec_training"]
    assert meta["draft_vocab"]["size"] == 24 and meta["stage"] == 2
    stage1 = load_draft_head(os.path.join(out, "stages", "stage1"))
    assert stage1.draft_to_target.tolist() == d2t  # stage 2 started from stage 1's head and map
    # the loop drafts with it and stays lossless (greedy output == the target's greedy output)
    from specdec.decoding import generate
    from specdec.target import TargetModel

    target = TargetModel(model)
    head.bind_target(model.get_input_embeddings(), model.get_output_embeddings())
    prompt = setup[2][0]["input_ids"][:6].tolist()
    res = generate(target, head, [prompt], max_new_tokens=12, tree_top_k=4, depth=3, total_tokens=10, eos_token_id=[])
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, min_new_tokens=12)
    assert res.sequences[0] == ref[0, len(prompt) :].tolist()


def test_online_features_equal_stored(tmp_path, setup):
    model, tr, va = setup
    cfg = dict(kind="eagle", batch_size=4, max_steps=3, lr=1e-3, progress=False, plot=False, val_steps=2)
    # stored features in fp32 (the online run computes them in fp32)
    fp32 = [dict(it, hidden=None) for it in tr]
    from specdec.data import target_hidden

    for it, src in zip(fp32, tr):
        it["hidden"] = target_hidden(model, src["input_ids"][None])[0]
    vfp32 = [dict(it, hidden=target_hidden(model, it["input_ids"][None])[0]) for it in va]
    a = train(
        TrainConfig(out=str(tmp_path / "stored"), **cfg),
        target_model=model,
        datasets=(ListDataset(fp32), ListDataset(vfp32)),
    )
    b = train(
        TrainConfig(out=str(tmp_path / "online"), online=True, **cfg),
        target_model=model,
        datasets=(ListDataset(tr, hidden=False), ListDataset(va, hidden=False)),
    )
    wa, wb = load_weights(a), load_weights(b)
    atol, rtol = tolerance(torch.float32, 4 * HIDDEN)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=rtol)


def test_bf16_autocast_runs(tmp_path, setup):
    out = run(tmp_path, setup, kind="griffin", dtype="bf16", max_steps=3, val_steps=2)
    rows = read_csv(os.path.join(out, "train_log.csv"))
    assert len(rows) == 3 and all(math.isfinite(float(r["loss"])) for r in rows)
    from specdec.models import load_draft_head

    assert load_draft_head(out).dtype == torch.float32  # fp32 master weights


# ---- validation: the acceptance rates -------------------------------------------------------------


def test_acceptance_counts_match_step_by_step_drafting(tmp_path, setup):
    """acceptance_counts (all anchors in one pass per step) equals drafting anchor by anchor with
    forward_sequence, feeding back the draft's own features, and counting by the documented rule."""
    from specdec.data import collate
    from specdec.models import load_draft_head
    from specdec.training.validation import acceptance_counts

    model, _, va = setup
    # a briefly trained head, so that later steps have anchors to count
    folder = run(tmp_path, setup, kind="griffin", epochs=3, lr=3e-3, val_steps=1)
    head = load_draft_head(folder).eval()
    head.bind_target(model.get_input_embeddings(), model.get_output_embeddings())
    batch = collate(va[:4])
    batch["hidden"] = batch["hidden"].float()
    steps, topk, bins = 3, 4, 5
    cal = torch.zeros(steps, bins, 3, dtype=torch.float64)
    smp = torch.zeros(steps, topk, dtype=torch.float64)
    got = acceptance_counts(head, batch, steps, topk, calibration=cal, sampled=smp)
    from specdec.training.validation import SAMPLED_TEMPERATURE, TARGET_TOP

    assert TARGET_TOP < VOCAB  # the lookup among the target's top tokens is exercised

    ids, F, lm, am = batch["input_ids"], batch["hidden"], batch["loss_mask"], batch["attention_mask"]
    want = torch.zeros(2 + topk, steps, dtype=torch.int64)
    want_cal = torch.zeros(steps, bins, 3, dtype=torch.float64)
    want_smp = torch.zeros(steps, topk, dtype=torch.float64)
    with torch.no_grad():
        for b in range(ids.shape[0]):
            T = int(am[b].sum())
            greedy = model.lm_head(F[b, :T]).argmax(-1)  # greedy[i]: the target's token after x_i
            for t in range(T - 2):
                feats = [F[b, i] for i in range(t + 1)]
                alive = True
                for k in range(1, steps + 1):
                    nxt = t + k + 1  # the token step k predicts
                    if not alive or nxt >= T or not lm[b, nxt]:
                        break
                    n = len(feats)
                    out = head.forward_sequence(torch.stack(feats)[None], ids[b, 1 : n + 1][None])
                    pred = int(out.logits[0, -1].argmax())
                    ok = pred == int(greedy[nxt - 1])
                    want[0, k - 1] += 1
                    want[1, k - 1] += int(ok)
                    best = out.logits[0, -1].topk(topk).indices.tolist()  # top-k coverage: rank r of the token
                    for r in range(1, topk + 1):
                        want[1 + r, k - 1] += int(int(greedy[nxt - 1]) in best[:r])
                    p1 = float(torch.softmax(out.logits[0, -1].double(), -1).max())  # the draft's confidence
                    want_cal[k - 1, min(int(p1 * bins), bins - 1)] += torch.tensor([1.0, p1, float(ok)])
                    # sampled coverage: the target's probability (at T, among its TARGET_TOP best) of the r best
                    pt = torch.softmax(model.lm_head(F[b, nxt - 1]).double() / SAMPLED_TEMPERATURE, -1)
                    top = set(pt.topk(TARGET_TOP).indices.tolist())
                    mass = [float(pt[i]) if i in top else 0.0 for i in best]
                    want_smp[k - 1] += torch.tensor(mass, dtype=torch.float64).cumsum(0)
                    alive = ok and int(ids[b, nxt]) == int(greedy[nxt - 1])
                    feats = feats + [out.hidden[0, -1]]
    assert torch.equal(got.cpu(), want), (got, want)
    torch.testing.assert_close(cal, want_cal, atol=1e-5, rtol=0)
    torch.testing.assert_close(smp, want_smp, atol=1e-4, rtol=0)
    from specdec.training.validation import summarize_sampled

    ss = summarize_sampled(smp, got)
    assert ss["sampled_temperature"] == SAMPLED_TEMPERATURE
    for k in range(1, steps + 1):
        assert ss[f"scov_{k}"] == pytest.approx((want_smp[k - 1] / float(want[0, k - 1])).tolist(), abs=1e-5)
        assert all(a <= b + 1e-12 for a, b in zip(ss[f"scov_{k}"], ss[f"scov_{k}"][1:]))  # more ranks hold more
    with pytest.raises(ValueError, match=r"sampled: expected a float64 \[3, 4\]"):
        acceptance_counts(head, batch, steps, topk, sampled=torch.zeros(steps, topk + 1, dtype=torch.float64))
    assert cal[:, :, 0].sum(1).tolist() == want[0].tolist()  # every counted anchor in exactly one bin
    from specdec.training.validation import summarize_calibration

    sc = summarize_calibration(cal)
    for k in range(1, steps + 1):
        rows = [r for r in sc[f"calib_{k}"] if r]
        assert sum(r[0] for r in rows) == want[0, k - 1]
        assert sum(r[0] * r[2] for r in rows) == pytest.approx(float(want[1, k - 1]))  # acceptance recovered
        assert 0 <= sc[f"ece_{k}"] <= 1
    with pytest.raises(ValueError, match=r"calibration: expected a float64 \[3, bins, 3\]"):
        acceptance_counts(head, batch, steps, topk, calibration=torch.zeros(steps, bins, 3))
    assert want[0, 1] > 0  # step 2 was reached
    assert torch.equal(got[2], got[1]) and (want[-1] > want[2]).any()  # top-1 coverage is acc; top-4 catches more
    assert torch.equal(acceptance_counts(head, batch, steps), got[:2])  # topk=0: the rates alone
    from specdec.training.validation import summarize

    res = summarize(got)
    assert res["cov_1"] == pytest.approx([float(c) / float(got[0, 0]) for c in got[2:, 0]])
    assert res["cov_1"][0] == pytest.approx(res["acc_1"]) and "cov_1" not in summarize(got[:2])


# ---- data folders, the CLI and torchrun -----------------------------------------------------------


def write_data(folder: str, target_dir: str, train_items: list, val_items: list) -> str:
    """A `specdec data` folder (shards + manifest) holding the given items."""
    from specdec.data import shards

    os.makedirs(folder, exist_ok=True)
    manifest = {
        "format": shards.FORMAT,
        "version": shards.VERSION,
        "target": {"path": target_dir, "vocab_size": VOCAB, "hidden_size": HIDDEN},
        "tokenizer": {"eos_token_ids": [], "pad_token_id": 0},
        "settings": {"features": True},
        "complete": True,
        "splits": {},
    }
    for split, items in (("train", train_items), ("val", val_items)):
        e = shards.write_shard(
            folder, shards.shard_name(split, 0), items, VOCAB, [str(i) for i in range(len(items))], True, HIDDEN
        )
        manifest["splits"][split] = {"shards": [e], **shards.totals([e])}
    shards.write_manifest(folder, manifest)
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, setup):
    model, tr, va = setup
    root = tmp_path_factory.mktemp("trainer_data")
    target = str(root / "target")
    model.save_pretrained(target)
    return write_data(str(root / "data"), target, tr, va), target


def cli(*argv):
    from specdec.cli import main

    return main(["train", *map(str, argv)])


def test_cli_trains_from_a_data_folder(tmp_path, data_dir, capsys, monkeypatch):
    """--dtype auto (the default) asks for the faster dtype to train in, not to decode in: on an AVX2-only CPU
    the C++ kernel makes bf16 the faster for decoding, but autograd runs torch's linear (machine_dtype)."""
    from specdec import machine_dtype

    asked = []
    monkeypatch.setattr(machine_dtype, "fastest_cpu_dtype", lambda **kw: asked.append(kw) or "float32")
    data, target = data_dir
    out = tmp_path / "head"
    assert (
        cli(
            "--kind",
            "griffin",
            "--data",
            data,
            "--out",
            out,
            "--max-steps",
            3,
            "--batch-tokens",
            80,
            "--draft-vocab",
            40,
            "--no-progress",
            "--val-steps",
            2,
        )
        == 0
    )
    assert f"draft head: {out}" in capsys.readouterr().out
    assert asked and all(kw.get("training") is True for kw in asked)
    from specdec.models import load_draft_head

    head = load_draft_head(out)
    meta = head.config.extra["specdec_training"]
    assert meta["target"]["path"] == target and meta["data"]["manifest_sha256"].startswith("sha256:")
    assert head.config.draft_vocab_size == 40
    assert meta["recipe"]["batch_tokens"] == 80
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert os.path.isfile(out / "curves.png")


def test_cli_validate_measures_coverage_and_writes_it(tmp_path, data_dir, setup, capsys):
    """`specdec validate` gives the same numbers as measure_acceptance; --write puts them where the tree
    budget reads them first. The trainer's own validation records coverage too (in summary.json / the
    config, not as CSV columns)."""
    from specdec.cli import main
    from specdec.decoding.budget import head_acceptance
    from specdec.models import load_draft_head
    from specdec.training.validation import measure_acceptance

    data, target = data_dir
    model, _, va = setup
    folder = run(tmp_path, setup, kind="griffin", epochs=2, lr=3e-3, val_steps=2)
    trained = load_draft_head(folder).config.extra["specdec_training"]["result"]["validation"][-1]
    assert len(trained["cov_1"]) == 10 and trained["cov_1"][0] == pytest.approx(trained["acc_1"])
    assert not any(k.startswith("cov_") for k in read_csv(os.path.join(folder, "val_log.csv"))[0])

    argv = ["validate", "--draft", folder, "--data", data, "--target", target, "--steps", "2", "--top-k", "4"]
    assert main(argv + ["--no-progress", "--batch-size", "3", "--write"]) == 0
    out = capsys.readouterr().out
    assert "tau_chain" in out and "top4" in out and "written to" in out and "ECE" not in out
    assert main(argv + ["--no-progress", "--calibration"]) == 0
    out = capsys.readouterr().out
    assert "step 1: ECE " in out and "->" in out and "written to" not in out
    head = load_draft_head(folder).eval()
    rec = head.config.extra["specdec_validation"]
    head.bind_target(model.get_input_embeddings(), model.get_output_embeddings())
    want = measure_acceptance(head, va, steps=2, topk=4)
    for key in ("acc_1", "acc_2", "n_1", "n_2", "sequences"):
        assert rec["result"][key] == pytest.approx(want[key])
    assert rec["result"]["cov_1"] == pytest.approx(want["cov_1"]) and rec["data"]["split"] == "val"
    got = head_acceptance(head)
    assert len(got) == 2 and got[0] == pytest.approx(want["cov_1"]) and len(got[0]) == 4
    # a head trained from this one does not inherit its measurement (the budget would read it first)
    child = run(tmp_path, setup, name="child", kind="griffin", init=folder, max_steps=1, val_steps=2)
    assert "specdec_validation" not in load_draft_head(child).config.extra
    # bad input: one line, exit status 2, nothing written
    before = open(os.path.join(folder, "config.json")).read()
    for flag, value, match in (
        ("--data", str(tmp_path / "nope"), "argument --data: expected a `specdec data` folder"),
        ("--draft", str(tmp_path / "nope"), "argument --draft"),
        ("--top-k", "0", "argument --top-k"),
        ("--split", "train", "argument --write: expected held-out numbers (--split val)"),
    ):
        args = argv + ["--write"] + ([] if flag in argv else [flag, value])
        args[args.index(flag) + 1] = value
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2 and match in str(e.value)
    # features from one target, greedy tokens from another of the same sizes: refused by the config hash
    import json
    import shutil

    from specdec.data import shards
    from specdec.data.build import target_identity

    man = shards.read_manifest(data)
    man["target"]["config_sha256"] = target_identity(model, target)["config_sha256"]
    data2 = str(tmp_path / "data2")
    shutil.copytree(data, data2)
    shards.write_manifest(data2, man)
    other = str(tmp_path / "other-target")
    shutil.copytree(target, other)
    with open(os.path.join(other, "config.json")) as f:
        cfg = json.load(f)
    cfg["rms_norm_eps"] = cfg.get("rms_norm_eps", 1e-6) * 10
    with open(os.path.join(other, "config.json"), "w") as f:
        json.dump(cfg, f)
    argv2 = ["validate", "--draft", folder, "--data", data2, "--steps", "1", "--top-k", "2", "--no-progress"]
    assert main(argv2 + ["--target", target]) == 0  # the data's own target passes the check
    with pytest.raises(SystemExit) as e:
        main(argv2 + ["--target", other, "--write"])
    assert e.value.code == 2 and "has another config" in str(e.value)
    assert open(os.path.join(folder, "config.json")).read() == before


@pytest.mark.parametrize(
    "args,match",
    [
        (
            ["--kind", "eagle", "--data", "{missing}", "--out", "{out}"],
            "argument --data: expected a `specdec data` output folder",
        ),
        (
            ["--kind", "eagle", "--data", "{data}", "--out", "{out}", "--stages", "1,2"],
            "argument --stages: expected 1 for --kind eagle",
        ),
        (
            ["--kind", "griffin", "--data", "{data}", "--out", "{out}", "--stages", "2,3"],
            "argument --init: expected a stage-1 head",
        ),
        (
            ["--kind", "griffin", "--data", "{data}", "--out", "{out}", "--stages", "2,1"],
            "argument --stages: expected increasing",
        ),
        (
            ["--kind", "eagle", "--data", "{data}", "--out", "{out}", "--batch-size", "0"],
            "argument --batch-size: expected an integer >= 1",
        ),
        (
            ["--kind", "eagle", "--data", "{data}", "--out", "{out}", "--batch-tokens", "0"],
            "argument --batch-tokens: expected an integer >= 1",
        ),
        (
            ["--kind", "eagle", "--data", "{data}", "--out", "{out}", "--batch-size", "64"],
            "argument --batch-size: expected at most the 32",
        ),
        (
            ["--kind", "eagle", "--data", "{data}", "--out", "{out}", "--draft-vocab", "1000"],
            "argument --draft-vocab: expected at most 128",
        ),
        (
            ["--kind", "eagle", "--data", "{data}", "--out", "{out}", "--lr", "-1"],
            "argument --lr: expected a number > 0",
        ),
        (
            ["--kind", "eagle", "--data", "{data}", "--out", "{out}", "--target", "{missing}"],
            "argument --target: expected the word 'default'",
        ),
        (
            ["--kind", "eagle", "--data", "{data}", "--out", "{out}", "--init", "{missing}"],
            "argument --init: expected a eagle head folder",
        ),
        (["--kind", "eagle", "--data", "{data}", "--out", "{out}", "--device", "tpu"], "argument --device"),
        (["--kind", "lstm", "--data", "{data}", "--out", "{out}"], "argument --kind: invalid choice"),
    ],
)
def test_cli_argument_errors(tmp_path, data_dir, capsys, args, match):
    from specdec.cli import CliExit

    data, _ = data_dir
    fill = {"data": data, "out": str(tmp_path / "o"), "missing": str(tmp_path / "nope")}
    with pytest.raises(CliExit) as e:
        cli(*[a.format(**fill) for a in args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1, err
    assert not os.path.exists(tmp_path / "o")  # nothing was loaded or written


def test_train_help_shows_each_default_once(capsys):
    from test_cli import test_help_shows_each_default_once

    test_help_shows_each_default_once(capsys, ["train"])


def test_cli_refuses_an_incomplete_data_folder(tmp_path, data_dir, capsys):
    import shutil

    from specdec.cli import CliExit

    data = str(tmp_path / "partial")
    shutil.copytree(data_dir[0], data)
    manifest = json.load(open(os.path.join(data, "manifest.json")))
    manifest["complete"] = False
    json.dump(manifest, open(os.path.join(data, "manifest.json"), "w"))
    with pytest.raises(CliExit) as e:
        cli("--kind", "eagle", "--data", data, "--out", tmp_path / "o")
    assert e.value.code == 2 and "argument --data: expected a complete data folder" in capsys.readouterr().err
    # a folder built with --splits val: the message names the missing split and how to add it
    manifest["splits"]["train"].update(shards=[], num_shards=3)
    manifest["splits"]["val"]["num_shards"] = 1
    json.dump(manifest, open(os.path.join(data, "manifest.json"), "w"))
    with pytest.raises(CliExit) as e:
        cli("--kind", "eagle", "--data", data, "--out", tmp_path / "o")
    err = capsys.readouterr().err
    assert "(train 0 of 3 shards)" in err and "--splits all" in err and "val " not in err.split("(")[-1], err


def test_cli_refuses_an_earlier_run_without_resume(tmp_path, data_dir, capsys):
    from specdec.cli import CliExit

    data, _ = data_dir
    out = tmp_path / "h"
    args = [
        "--kind",
        "eagle",
        "--data",
        data,
        "--out",
        out,
        "--max-steps",
        2,
        "--batch-size",
        4,
        "--no-progress",
        "--no-plot",
    ]
    assert cli(*args) == 0
    with pytest.raises(CliExit) as e:
        cli(*args)
    assert e.value.code == 2 and "argument --out: expected a folder without an earlier run" in capsys.readouterr().err
    assert cli(*args, "--resume") == 0  # finished already: nothing to do


def _run_group(cmd, env, timeout):
    """subprocess.run in a process group of its own, all of which is killed on a timeout (torchrun's
    workers would otherwise outlive their launcher)."""
    import signal

    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_torchrun_two_processes_match_one(tmp_path, data_dir):
    """2 CPU processes (gloo) on halves of each global batch end where 1 process on the whole does (about
    15 s: two interpreter start-ups; no input noise, which is drawn per rank)."""
    data, _ = data_dir
    common = [
        "-m",
        "specdec.cli",
        "train",
        "--kind",
        "fspad",
        "--data",
        data,
        "--batch-size",
        "8",
        "--max-steps",
        "4",
        "--lr",
        "1e-3",
        "--noise",
        "0",
        "--no-progress",
        "--no-plot",
        "--val-steps",
        "2",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([os.path.join(REPO, "python"), REPO]))
    one = subprocess.run(
        [sys.executable, *common, "--out", str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=300
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run_group(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *common]
        + ["--out", str(tmp_path / "two")],
        env=env,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_weights(tmp_path / "one"), load_weights(tmp_path / "two")
    atol, rtol = tolerance(torch.float32, 8 * HIDDEN)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=atol, rtol=rtol, msg=k)
    init_meta = json.load(open(tmp_path / "two" / "config.json"))["specdec_training"]
    assert init_meta["recipe"]["world_size"] == 2
    la, lb = read_csv(tmp_path / "one" / "train_log.csv"), read_csv(tmp_path / "two" / "train_log.csv")
    for ra, rb in zip(la, lb):
        assert float(rb["loss"]) == pytest.approx(float(ra["loss"]), rel=1e-4)
        assert ra["tokens"] == rb["tokens"] and ra["masked"] == rb["masked"]
