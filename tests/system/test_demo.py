"""`python -m specdec.demo`'s arguments: a bad value is one line on stderr and status 2, before anything loads;
good values reach the demo as parsed, and the device defaults to specdec.devices.default_device."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from specdec import arguments, demo

PROG = "python -m specdec.demo"


@pytest.fixture
def calls(monkeypatch):
    """The demo's parts replaced by recorders: what main() would run, and with which arguments (no model
    is built or loaded)."""
    seen = []
    for name in ("tree_demo", "speculative_demo", "real_demo"):
        monkeypatch.setattr(demo, name, lambda *a, _name=name, **k: seen.append((_name, a, k)) or True)
    return seen


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8' (choose from 'bf16', 'bfloat16', "),
        (["--dtype", ""], "argument --dtype: invalid choice: ''"),
        (["--total-tokens", "many"], "argument --total-tokens: expected auto or an integer >= 1, got 'many'"),
        (["--total-tokens", "0"], "argument --total-tokens: expected auto or an integer >= 1, got '0'"),
        (["--total-tokens", "1.5"], "argument --total-tokens: expected auto or an integer >= 1, got '1.5'"),
        (["--offline", "--total-tokens", "-3"], "argument --total-tokens: expected auto or an integer >= 1"),
        (["--max-new-tokens", "0"], "argument --max-new-tokens: expected an integer >= 1, got '0'"),
        (["--offline", "--batch", "x"], "argument --batch: expected an integer >= 1, got 'x'"),
        (["--device", "gpu0"], "argument --device: expected cpu, cuda or cuda:N, got 'gpu0'"),
        (["--device", "meta"], "argument --device: expected cpu, cuda or cuda:N, got 'meta'"),
        (["--cuda-graph", "--device", "cpu"], "argument --cuda-graph: expected a CUDA --device, got 'cpu'"),
        (
            ["--target", "no/such/folder"],
            "argument --target: expected the word 'default' or a Hugging Face model folder (with config.json), got "
            "'no/such/folder', which does not exist",
        ),
        (["--draft", "no/such/head"], "argument --draft: expected eagle, fspad or griffin (a shipped head of the"),
    ],
)
def test_bad_value_is_one_line(argv, message, calls, capsys):
    with pytest.raises(SystemExit) as e:
        demo.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and err.startswith(f"{PROG}: error: {message}"), err
    assert calls == []  # refused before any part of the demo ran


def test_device_check_is_the_commands(calls, monkeypatch, capsys):
    """--device goes through specdec.arguments.check_device, as `specdec generate --device` does: a CUDA
    device torch cannot use is refused before anything loads, with the command's words."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        demo.main(["--device", "cuda"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"{PROG}: error: argument --device: expected an available device (cuda needs a GPU"), err
    assert "torch.cuda.is_available() is False; use --device cpu" in err and calls == []


@pytest.mark.parametrize("argv", [["--dtype", "fp8"], ["--total-tokens", "many"]])
def test_bad_value_through_a_real_process(argv):
    """Through `python -m specdec.demo` itself: status 2, one line, no traceback, nothing on stdout."""
    p = subprocess.run([sys.executable, "-m", "specdec.demo", *argv], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith(f"{PROG}: error: argument {argv[0]}: ")
    assert p.stdout == ""


def test_good_values_reach_the_demo(calls, monkeypatch):
    monkeypatch.setattr(arguments, "default_device", lambda: torch.device("cpu"))
    assert demo.main([]) == 0
    (name, _, kw) = calls.pop()
    assert name == "real_demo"
    assert (kw["dtype"], kw["total_tokens"], kw["device"], kw["max_new_tokens"]) == (
        "auto",
        "auto",
        torch.device("cpu"),
        128,
    )
    assert demo.main(["--dtype", "fp32", "--total-tokens", "40", "--max-new-tokens", "7", "--device", "cpu"]) == 0
    (_, _, kw) = calls.pop()
    assert (kw["dtype"], kw["total_tokens"], kw["max_new_tokens"]) == ("fp32", 40, 7)
    assert demo.main(["--total-tokens", " AUTO "]) == 0
    assert calls.pop()[2]["total_tokens"] == "auto"
    assert demo.main(["--offline", "--batch", "2"]) == 0
    assert [c[0] for c in calls] == ["tree_demo", "speculative_demo"]
    assert calls[1][1] == (32, 2) and calls[1][2] == {"device": torch.device("cpu")}


def test_device_defaults_to_default_device(calls, monkeypatch):
    """Without --device the demo runs on specdec.devices.default_device (a GPU when torch sees one), not on
    the CPU always: with a CUDA default, --cuda-graph needs no --device."""
    monkeypatch.setattr(arguments, "default_device", lambda: torch.device("cuda"))
    assert demo.main(["--cuda-graph"]) == 0
    (name, _, kw) = calls.pop()
    assert name == "real_demo" and kw["device"] == torch.device("cuda") and kw["cuda_graph"] is True
    assert demo.main(["--offline"]) == 0
    assert calls[-1][0] == "speculative_demo" and calls[-1][2]["device"] == torch.device("cuda")
