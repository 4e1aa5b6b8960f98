"""Every Triton kernel of specdec_kernels, compiled for sm_80 and sm_90 - on a machine without a GPU.

The CPU tests run the Triton kernels under the interpreter, which never lowers a kernel to PTX: type and
layout errors of the GPU lowering, unsupported dots, shared-memory overruns and ptxas failures are invisible
to it. Here each kernel goes through `triton.compile` and ptxas for real targets, with exactly the arguments,
constexprs, warps, stages and autotune configs its own launcher produces for representative shapes
(tests/triton_compile_util.py: the cases, and how launches are recorded on meta tensors).

Asserted:
  * every launch of every case compiles on each target (every config of an autotuned kernel);
  * it can load there: a plain kernel fits the target's shared memory; an autotuned kernel has at least one
    config that fits (the autotuner skips configs that fail to load);
  * decode shapes on sm_90 do not spill beyond SPILL_LIMIT bytes (an autotuned kernel: at least one config
    that fits does not);
  * every kernel the package launches is reached by some case.
Registers, spills and shared memory of each compile are printed (pytest -rP) and, when the environment
variable SPECDEC_TRITON_COMPILE_REPORT names a file, written there as JSON (a CI artifact).

The default run compiles a subset (about a minute on two cores); cases marked `slow` complete the sweep.
"""

from __future__ import annotations

import ast
import collections
import json
import os

import pytest

import triton_compile_util as tcu

triton = pytest.importorskip("triton")

SPILL_LIMIT = 64  # bytes of spill stores tolerated on decode paths (ptxas versions move a few bytes around)


def _nvidia_backend_reason():
    try:
        from triton.backends import backends
    except Exception as exc:  # pragma: no cover - depends on the installation
        return f"triton.backends failed to import: {exc}"
    return None if "nvidia" in backends else "this Triton has no NVIDIA backend"


pytestmark = pytest.mark.skipif(_nvidia_backend_reason() is not None, reason=str(_nvidia_backend_reason()))


def _compile_params():
    for case in tcu.CASES:
        for arch in case.archs:
            marks = [] if arch in case.fast else [pytest.mark.slow]
            yield pytest.param(case.id, arch, id=f"{case.id}-sm{arch}", marks=marks)


def _spill_params():
    for case in tcu.CASES:
        if case.decode and 90 in case.archs:
            marks = [] if 90 in case.fast else [pytest.mark.slow]
            yield pytest.param(case.id, 90, id=f"{case.id}-sm90", marks=marks)


@pytest.fixture(scope="module")
def report(request):
    """The child's report, compiling exactly the (case, arch) pairs of this module's selected tests."""
    pairs = set()
    for item in request.session.items:
        spec = getattr(item, "callspec", None)
        if getattr(item, "module", None) is request.module and spec is not None and "case_id" in spec.params:
            pairs.add((spec.params["case_id"], spec.params["arch"]))
    rep = tcu.run_child(sorted(pairs))
    path = os.environ.get("SPECDEC_TRITON_COMPILE_REPORT")
    if path:
        with open(path, "w") as fh:
            json.dump(_flat_report(rep), fh, indent=1)
    return rep


def _flat_report(rep) -> list:
    rows = []
    for case_id, per_arch in rep["cases"].items():
        for arch, entry in per_arch.items():
            for launch in entry["launches"]:
                if launch["job"] is not None:
                    rows.append(
                        {
                            "case": case_id,
                            "arch": int(arch),
                            **{k: v for k, v in launch.items() if k != "job"},
                            **rep["jobs"][launch["job"]],
                        }
                    )
    return rows


def _compiled(rep, case_id: str, arch: int) -> list:
    """[(launch, job result)] of one case on one target; fails the test when the launcher itself failed."""
    entry = rep["cases"][case_id][str(arch)]
    assert entry["error"] is None, f"{case_id} (sm_{arch}): {entry['error']}"
    assert entry["launches"], f"{case_id} (sm_{arch}): the launcher launched no Triton kernel"
    case = tcu.CASE_BY_ID[case_id]
    out = []
    for launch in entry["launches"]:
        if launch.get("error"):
            out.append((launch, {"ok": False, "error": launch["error"]}))
        elif case.kernels is None or launch["kernel"] in case.kernels:
            assert launch["job"] is not None, f"{case_id} (sm_{arch}) was not compiled (not selected?)"
            out.append((launch, rep["jobs"][launch["job"]]))
    assert out, f"{case_id} (sm_{arch}): none of the kernels {case.kernels} was launched"
    return out


def _describe(launch) -> str:
    consts = ", ".join(f"{k}={v}" for k, v in launch.get("constexprs", {}).items())
    cfg = f" [{launch['label']}]" if launch["label"] else ""
    return f"{launch['kernel']}{cfg} warps={launch.get('num_warps')} stages={launch.get('num_stages')} {{{consts}}}"


def _table(items) -> str:
    lines = [
        f"{'kernel':<26}{'config':<22}{'warps':>6}{'stages':>7}{'regs':>6}{'spill':>7}{'stack':>7}"
        f"{'shared':>8}{'sec':>7}"
    ]
    for launch, job in items:
        lines.append(
            f"{launch['kernel']:<26}{launch['label'] or '-':<22}{launch.get('num_warps', '?'):>6}"
            f"{launch.get('num_stages', '?'):>7}{job.get('regs') if job.get('regs') is not None else '-':>6}"
            f"{job.get('spill_stores') if job.get('spill_stores') is not None else '-':>7}"
            f"{job.get('stack') if job.get('stack') is not None else '-':>7}"
            f"{job.get('shared') if job.get('shared') is not None else '-':>8}"
            f"{job.get('seconds', 0):>7}"
        )
    return "\n".join(lines)


def _groups(items):
    """Plain launches one by one, autotuned launches grouped by their autotuned call."""
    groups = collections.OrderedDict()
    for i, (launch, job) in enumerate(items):
        key = ("autotune", launch["autotune_group"]) if launch.get("autotune_group") is not None else ("plain", i)
        groups.setdefault(key, []).append((launch, job))
    return list(groups.items())


@pytest.mark.parametrize("case_id, arch", list(_compile_params()))
def test_compiles_for_gpu(report, case_id, arch):
    """Every launch compiles for sm_{arch} down to a cubin and can load there (shared memory)."""
    items = _compiled(report, case_id, arch)
    print(f"{case_id} on sm_{arch}:\n{_table(items)}")
    failures = [f"{_describe(launch)}:\n{job['error']}" for launch, job in items if not job["ok"]]
    assert not failures, (
        f"{len(failures)} of {len(items)} launches of {case_id} do not compile for sm_{arch}:\n\n"
        + "\n\n".join(failures)
    )
    limit = tcu.SHARED_LIMIT[arch]
    for (kind, _), group in _groups(items):
        if not all(job["shared"] > limit for _, job in group):
            continue
        if kind == "autotune" and len(group) < group[0][0]["autotune_configs"]:
            print(
                f"note: the compiled configs of {group[0][0]['kernel']} exceed the shared memory of sm_{arch}; "
                "the configs not compiled here may still fit"
            )
            continue
        what = "every autotune config of " if kind == "autotune" else ""
        raise AssertionError(
            f"{case_id}: {what}{_describe(group[0][0])} needs more shared memory than sm_{arch} offers "
            f"({', '.join(str(job['shared']) for _, job in group)} > {limit} bytes): it cannot launch there"
        )


@pytest.mark.parametrize("case_id, arch", list(_spill_params()))
def test_decode_kernels_do_not_spill(report, case_id, arch):
    """Decode shapes on sm_90: at most SPILL_LIMIT bytes of spill stores (autotuned: in some config that loads)."""
    items = _compiled(report, case_id, arch)
    assert all(job["ok"] for _, job in items), "does not compile: see test_compiles_for_gpu"
    unread = [_describe(launch) for launch, job in items if job.get("spill_stores") is None]
    assert not unread, (
        f"no ptxas -v report was captured (does this Triton still print it under TRITON_DUMP_PTXAS_LOG?): {unread}"
    )
    limit = tcu.SHARED_LIMIT[arch]
    bad = []
    for (kind, _), group in _groups(items):
        usable = [(launch, job) for launch, job in group if job["shared"] <= limit] or group
        if min(job["spill_stores"] for _, job in usable) > SPILL_LIMIT:
            bad.append(
                f"{_describe(group[0][0])}: spill stores "
                f"{', '.join(str(job['spill_stores']) for _, job in group)} bytes"
            )
        elif kind == "autotune":
            spilling = [launch["label"] for launch, job in usable if job["spill_stores"] > SPILL_LIMIT]
            if spilling:  # informative: the autotuner can still pick a config that does not spill
                print(f"note: {group[0][0]['kernel']} spills beyond {SPILL_LIMIT} bytes in {', '.join(spilling)}")
    print(_table(items))
    assert not bad, f"{case_id} spills on sm_{arch} (limit {SPILL_LIMIT} bytes):\n" + "\n".join(bad)


def _launched_kernels() -> set:
    """(module, name) of every kernel the sources of specdec_kernels/triton_kernels launch (`name[grid](...)`)."""
    import specdec_kernels.triton_kernels as pkg

    root = os.path.dirname(pkg.__file__)
    found = set()
    for fname in sorted(os.listdir(root)):
        if not fname.endswith(".py") or fname == "__init__.py":
            continue
        module = f"{pkg.__name__}.{fname[:-3]}"
        with open(os.path.join(root, fname)) as fh:
            tree = ast.parse(fh.read(), filename=fname)
        defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.decorator_list}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Subscript)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in defined
            ):
                found.add((module, node.func.value.id))
    return found


def test_every_launched_kernel_has_a_case(report):
    """A kernel added to specdec_kernels/triton_kernels without a case here would escape the GPU compile."""
    launched = _launched_kernels()
    assert launched, "found no kernel launches in specdec_kernels/triton_kernels (did the layout change?)"
    reached = {
        (launch["module"], launch["kernel"])
        for per_arch in report["cases"].values()
        for entry in per_arch.values()
        for launch in entry["launches"]
    }
    missing = sorted(f"{m}.{k}" for m, k in launched - reached)
    assert not missing, (
        "kernels launched by specdec_kernels but reached by no case of "
        f"tests/triton_compile_util.py (add one): {missing}"
    )
