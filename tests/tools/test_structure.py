"""The repository's structure checks (scripts/check_structure.py) and a fresh-interpreter import of every module.

Three parts: each check passes on the repository; every module of specdec_kernels and specdec imports in one
fresh interpreter; and the checks themselves on small synthetic trees, so a check that can never fail fails here.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_SCRIPT = ROOT / "scripts" / "check_structure.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("check_structure", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


cs = _load_script()


def write(root: Path, rel: str, text: str = "") -> Path:
    """Write `text` (dedented) to root/rel, creating folders."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# ---------------------------------------------------------------------------------------------------------
# (a) the repository passes every check
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(cs.CHECKS))
def test_repository_passes(name):
    violations = cs.CHECKS[name](ROOT)
    assert not violations, "\n" + cs.format_report({name: violations})


# ---------------------------------------------------------------------------------------------------------
# (b) every module imports in one fresh interpreter
# ---------------------------------------------------------------------------------------------------------

_IMPORT_ALL = """
import importlib, json, sys
failures = []
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except BaseException as e:  # SystemExit too: importing a module must not end the interpreter
        missing = e.name if isinstance(e, ModuleNotFoundError) else None
        failures.append({"module": name, "error": f"{type(e).__name__}: {e}", "missing": missing})
print(json.dumps(failures))
"""


def test_every_module_imports_in_one_fresh_interpreter():
    # __main__ modules run their program when imported; none exists today, the guard keeps it that way.
    names = sorted(n for n in cs.first_party_modules(ROOT) if not n.endswith(".__main__"))
    assert "specdec_kernels" in names and "specdec" in names
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "python"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL, json.dumps(names)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    failures = json.loads(proc.stdout.strip().splitlines()[-1])
    # A module may be left out only when the genuine reason is a third-party package that is not installed.
    optional, broken = [], []
    for f in failures:
        top = (f["missing"] or "").split(".")[0]
        genuine = top and top not in cs.PACKAGES and importlib.util.find_spec(top) is None
        (optional if genuine else broken).append(f)
    if optional:
        warnings.warn(
            "modules not imported for a missing optional dependency: "
            + "; ".join(f"{f['module']} ({f['missing']})" for f in optional),
            stacklevel=1,
        )
    assert not broken, "\n".join(f"{f['module']}: {f['error']}" for f in broken)


# ---------------------------------------------------------------------------------------------------------
# (c) the checks on synthetic trees
# ---------------------------------------------------------------------------------------------------------

# imports


def test_cycle_through_a_lazy_import_is_found(tmp_path):
    write(tmp_path, "specdec_kernels/__init__.py")
    write(tmp_path, "specdec_kernels/a.py", "from . import b\n")
    write(tmp_path, "specdec_kernels/b.py", "def f():\n    from specdec_kernels import a\n    return a\n")
    violations = cs.check_imports(tmp_path)
    assert len(violations) == 1
    assert "import cycle among specdec_kernels.a, specdec_kernels.b" in violations[0]
    assert "specdec_kernels/a.py:1 specdec_kernels.a -> specdec_kernels.b" in violations[0]
    assert "specdec_kernels/b.py:2 specdec_kernels.b -> specdec_kernels.a (lazy)" in violations[0]


def test_package_init_reexporting_its_submodules_is_no_cycle(tmp_path):
    write(tmp_path, "python/specdec/__init__.py", "from .models import Head\n")
    write(tmp_path, "python/specdec/models/__init__.py", "from .eagle import Head\nfrom . import layers\n")
    # `from specdec.models import layers` names a module: an edge to it, not to the package's __init__.
    write(tmp_path, "python/specdec/models/eagle.py", "from specdec.models import layers\nHead = layers\n")
    write(tmp_path, "python/specdec/models/layers.py", "import specdec_kernels.ops.tree\n")
    write(tmp_path, "specdec_kernels/__init__.py", "from .ops.tree import build\n")
    write(tmp_path, "specdec_kernels/ops/__init__.py", "from . import tree\n")
    write(tmp_path, "specdec_kernels/ops/tree.py", "from .._C import x  # the extension: no edge\nbuild = x\n")
    assert cs.check_imports(tmp_path) == []


def test_name_from_a_package_init_that_imports_the_module_back_is_a_cycle(tmp_path):
    write(tmp_path, "python/specdec/__init__.py")
    write(tmp_path, "python/specdec/models/__init__.py", "from .base import Base\nfrom .eagle import Eagle\n")
    write(tmp_path, "python/specdec/models/base.py", "class Base: ...\n")
    write(tmp_path, "python/specdec/models/eagle.py", "from ..models import Base\nclass Eagle(Base): ...\n")
    (violation,) = cs.check_imports(tmp_path)
    assert "import cycle among specdec.models, specdec.models.eagle;" in violation
    assert "python/specdec/models/eagle.py:1 specdec.models.eagle -> specdec.models" in violation


def test_library_module_importing_the_cli_is_flagged(tmp_path):
    write(tmp_path, "python/specdec/__init__.py")
    write(tmp_path, "python/specdec/lib.py", "def f():\n    from specdec.cli.run import main\n")
    write(tmp_path, "python/specdec/other.py", "from .training import validate_cli\n")
    write(tmp_path, "python/specdec/cli/__init__.py")
    write(tmp_path, "python/specdec/util.py", "def g(): ...\n")
    write(
        tmp_path, "python/specdec/cli/run.py", "from specdec import util\nfrom specdec.training import validate_cli\n"
    )
    write(tmp_path, "python/specdec/training/__init__.py")
    write(tmp_path, "python/specdec/training/validate_cli.py", "from specdec.util import g\n")
    violations = cs.check_imports(tmp_path)
    assert len(violations) == 2, violations
    assert violations[0].startswith("python/specdec/lib.py:2 library module specdec.lib imports the CLI module")
    assert "specdec.cli.run (lazily)" in violations[0]
    assert violations[1].startswith("python/specdec/other.py:1 library module specdec.other imports the CLI")


@pytest.mark.parametrize(
    "name, cli",
    [
        ("specdec.cli", True),
        ("specdec.cli.train", True),
        ("specdec.data.cli", True),
        ("specdec.training.validate_cli", True),
        ("specdec.__main__", True),
        ("specdec.cli_errors", False),
        ("specdec.client", False),
        ("specdec_kernels.ops.tree", False),
    ],
)
def test_cli_modules(name, cli):
    assert cs.is_cli_module(name) is cli


# sizes


def _function(name: str, code_lines: int, doc_lines: int = 0) -> str:
    """A function with `code_lines` lines from `def` to its end besides a docstring of `doc_lines` lines."""
    doc = ['    """Doc.'] + ["    more"] * (doc_lines - 2) + ['    """'] if doc_lines else []
    body = [f"    x{i} = {i}" for i in range(code_lines - 1)]
    return "\n".join([f"def {name}():", *doc, *body]) + "\n"


def test_long_function_is_flagged_without_counting_its_docstring(tmp_path):
    limit = cs.MAX_FUNCTION_LINES
    write(tmp_path, "python/specdec/m.py", _function("short", limit, doc_lines=30) + _function("long", limit + 1))
    assert cs.check_sizes(tmp_path, allowed={}) == [
        f"python/specdec/m.py::long: {limit + 1} lines without its docstring (at most {limit})"
    ]


def test_methods_and_nested_functions_are_named_by_qualname(tmp_path):
    method = textwrap.indent(_function("step", cs.MAX_FUNCTION_LINES + 2), "    ")
    write(tmp_path, "specdec_kernels/k.py", "class Run:\n" + method)
    (violation,) = cs.check_sizes(tmp_path, allowed={})
    assert violation.startswith("specdec_kernels/k.py::Run.step: ")
    # Outside python/ and specdec_kernels/ nothing is measured.
    write(tmp_path, "tests/test_k.py", _function("test_long", cs.MAX_FUNCTION_LINES + 50))
    assert len(cs.check_sizes(tmp_path, allowed={})) == 1


def test_allowlist_entries_pass_and_stale_ones_are_flagged(tmp_path):
    limit = cs.MAX_FUNCTION_LINES
    write(tmp_path, "specdec_kernels/k.py", _function("kernel", limit + 5) + _function("small", 3))
    allowed = {
        "specdec_kernels/k.py::kernel": "one Triton kernel",
        "specdec_kernels/k.py::small": "was long once",
        "specdec_kernels/k.py::gone": "was removed",
    }
    assert cs.check_sizes(tmp_path, allowed=allowed) == [
        "ALLOWED_LONG entry specdec_kernels/k.py::gone: no such function any more (remove the entry)",
        "ALLOWED_LONG entry specdec_kernels/k.py::small: now 3 lines, not long (remove the entry)",
    ]


def test_long_file_is_flagged(tmp_path):
    write(tmp_path, "python/specdec/big.py", "x = 1\n" * (cs.MAX_FILE_LINES + 1))
    write(tmp_path, "python/specdec/ok.py", "x = 1\n" * cs.MAX_FILE_LINES)
    assert cs.check_sizes(tmp_path, allowed={}) == [
        f"python/specdec/big.py: {cs.MAX_FILE_LINES + 1} lines (at most {cs.MAX_FILE_LINES})"
    ]


# machine-paths

# Written in two pieces so that this file passes the check itself.
_HOME = "/home/" + "alice"


def test_machine_paths_are_flagged(tmp_path):
    write(tmp_path, "docs/a.md", f"run {_HOME}/specdec/x.py\nsee /work/" + "main/README.md\n")
    write(tmp_path, "bench/r.json", '{"head": "/tmp/' + 'evalwt/heads/griffin", "home": "/Users/' + 'bob/x"}\n')
    write(tmp_path, "scripts/s.sh", "cd /ro" + "ot/specdec\n")
    violations = cs.check_machine_paths(tmp_path)
    assert [v.split(": ")[0] for v in violations] == [
        "bench/r.json:1",
        "bench/r.json:1",
        "docs/a.md:1",
        "docs/a.md:2",
        "scripts/s.sh:1",
    ]
    assert f"{_HOME} (a home folder" in violations[2]


def test_portable_and_system_paths_pass(tmp_path):
    text = """\
        CUDA_HOME=/usr/local/cuda; cat /proc/cpuinfo > /dev/null
        ~/.cache/specdec and $HOME/.cache/specdec and $SPECDEC_HOME/targets
        flock /tmp/specdec_build.lock; --out /tmp/out
        python/specdec/home/user.py is relative; https://example.com/home/page
        re.compile(r"(/root|/home/[^/]+)")
    """
    write(tmp_path, "docs/a.md", text)
    write(tmp_path, "img.png", _HOME)  # binary: skipped
    assert cs.check_machine_paths(tmp_path) == []


# doc-paths


def test_missing_doc_path_is_flagged(tmp_path):
    write(tmp_path, "scripts/ok.sh", "#!/usr/bin/env bash\n# see docs/a.md\n")
    for rel in ("setup.py", "tests/conftest.py", "bench/common.py", "python/specdec/__init__.py"):
        write(tmp_path, rel)
    text = """\
        Run `bash scripts/ok.sh`, see scripts/ok.sh:3 and tests/ and setup.py.
        Gone: python/specdec/gone.py, and [link](scripts/missing.sh#part).
        Skipped: bench/out/x.csv, tests/test_*.py, python/specdec/heads/<target>/, `$SPECDEC_HOME/x`.
        Written: --out bench/results/new and --out=bench/results/new2
        The scratch folder itself: bench/out and bench/out/, but not bench/outside.md.
    """
    write(tmp_path, "docs/a.md", text)
    assert cs.check_doc_paths(tmp_path) == [
        "docs/a.md:2: link target scripts/missing.sh#part does not exist (from docs/)",
        "docs/a.md:2: python/specdec/gone.py does not exist",
        "docs/a.md:5: bench/outside.md does not exist",
    ]


def test_relative_markdown_links_resolve_against_the_files_folder(tmp_path):
    write(tmp_path, "bench/results/foo.md", "# foo\n")
    write(tmp_path, "docs/x.md", "[foo](../bench/results/foo.md), [x](x.md#top), [web](https://a.b/c.md)\n")
    write(tmp_path, "README.md", "[foo](bench/results/foo.md) [docs](docs/) [x](docs/x.md)\n")
    assert cs.check_doc_paths(tmp_path) == []
    # From docs/, a root-relative target is a broken link even though the root has that path.
    write(tmp_path, "docs/y.md", "[foo](bench/results/foo.md)\n")
    assert cs.check_doc_paths(tmp_path) == ["docs/y.md:1: link target bench/results/foo.md does not exist (from docs/)"]


def test_brace_lists_expand():
    assert cs.expand_braces("heads/{eagle,griffin}/x") == ["heads/eagle/x", "heads/griffin/x"]
    assert cs.expand_braces("t{1,2}_{a,b}") == ["t1_a", "t1_b", "t2_a", "t2_b"]
    assert cs.expand_braces("x/{name}") == ["x/{name}"]


def test_paths_in_code_comments_and_docstrings(tmp_path):
    write(tmp_path, "tests/helpers.py")
    code = '''\
        """Module doc: tests/helpers.py and tests/gone_doc.py."""
        X = "tests/gone_string.py"  # comment: tests/gone_comment.py


        def f():
            """Doc of f.

            tests/gone_f.py
            """
    '''
    write(tmp_path, "python/specdec/m.py", code)
    write(
        tmp_path,
        "csrc/k.cu",
        'const char* s = "tests/gone_literal.py";  // tests/gone_cu.py\n/* a\n tests/gone_block.py */\n',
    )
    write(tmp_path, "scripts/s.sh", "#!/usr/bin/env bash\necho tests/gone_echo.py  # tests/gone_sh.py\n")
    assert sorted(cs.check_doc_paths(tmp_path)) == [
        "csrc/k.cu:1: tests/gone_cu.py does not exist",
        "csrc/k.cu:3: tests/gone_block.py does not exist",
        "python/specdec/m.py:1: tests/gone_doc.py does not exist",
        "python/specdec/m.py:2: tests/gone_comment.py does not exist",
        "python/specdec/m.py:8: tests/gone_f.py does not exist",
        "scripts/s.sh:2: tests/gone_sh.py does not exist",
    ]


def test_dotted_module_names_resolve(tmp_path):
    write(tmp_path, "python/specdec/__init__.py", "from .tools import helper\n")
    write(tmp_path, "python/specdec/tools.py", "def helper(): ...\nclass Thing:\n    def run(self): ...\n")
    text = """\
        `specdec.tools`, `specdec.tools.Thing.run`, `specdec.helper`, `python -m specdec.tools`, `specdec_kernels._C`
        `specdec.gone.x` and `specdec.tools.Missing`; not in backticks: specdec.other
    """
    write(tmp_path, "README.md", text)
    assert cs.check_doc_paths(tmp_path) == [
        "README.md:2: `specdec.gone.x` is no module or attribute of one",
        "README.md:2: `specdec.tools.Missing` is no module or attribute of one",
    ]


# testing-doc


def test_testing_doc_names_every_test_file(tmp_path):
    write(tmp_path, "tests/kernels/test_tree.py")
    write(tmp_path, "tests/test_cli.py")
    write(tmp_path, "tests/system/test_lossless.py")
    write(tmp_path, "tests/helpers.py")
    text = """\
        | `kernels/test_tree.py` | trees |
        | `tests/test_cli.py`, `test_gone.py` | the command |
    """
    write(tmp_path, "docs/testing.md", text)
    assert cs.check_testing_doc(tmp_path) == [
        "tests/system/test_lossless.py: not in docs/testing.md (name it as `system/test_lossless.py` in the "
        "layout table)",
        "docs/testing.md:2: tests/test_gone.py does not exist",
    ]


# command line


def test_command_line(tmp_path, capsys):
    write(tmp_path, "python/specdec/__init__.py")
    write(tmp_path, "README.md", "see python/specdec/gone.py\n")
    assert cs.main(["--root", str(tmp_path), "--only", "imports,testing-doc"]) == 0
    assert cs.main(["--root", str(tmp_path), "--only", "imports,doc-paths"]) == 1
    out = capsys.readouterr().out
    assert "[structure] imports: ok\n" in out
    assert "[structure] doc-paths: 1 violation(s)\n  - README.md:1: python/specdec/gone.py does not exist" in out
    assert cs.main(["--list"]) == 0
    assert set(cs.CHECKS) <= {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    with pytest.raises(SystemExit) as e:
        cs.main(["--only", "nope"])
    assert e.value.code == 2
