#!/usr/bin/env python3
"""Structure checks of the repository (issue 20), run by scripts/lint.sh. Standard library only, seconds.

    python scripts/check_structure.py                    # every check; exit 1 listing each violation
    python scripts/check_structure.py --only imports,sizes
    python scripts/check_structure.py --list

Checks (each a function of the repository root, so the tests can run them on small synthetic trees):

- imports: the static import graph of `specdec_kernels` (specdec_kernels/) and `specdec` (python/specdec/),
  lazy imports inside functions included, has no cycle; no library module imports a CLI module.
- sizes: no .py file under python/ or specdec_kernels/ over MAX_FILE_LINES lines, no function over
  MAX_FUNCTION_LINES lines (docstring excluded) unless listed in ALLOWED_LONG with its reason.
- machine-paths: no absolute path of somebody's machine (home folders, checkouts, temporary clones) in a
  committed text file.
- doc-paths: every repository path and `specdec...` module name in the markdown files and in comments and
  docstrings of code exists; relative markdown links resolve.
- testing-doc: docs/testing.md names every test file, and every test file it names exists.
"""

from __future__ import annotations

import argparse
import ast
import functools
import io
import os
import re
import subprocess
import sys
import time
import tokenize
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------------------------------------------------
# Repository files
# ---------------------------------------------------------------------------------------------------------

# Folders never part of the repository when walking a tree that is not a git checkout (the unit tests' trees).
_WALK_SKIP = {".git", "__pycache__", ".venv", "venv", "build", "dist", ".pytest_cache", ".ruff_cache"}


@functools.lru_cache(maxsize=None)
def repo_files(root: Path) -> tuple[str, ...]:
    """The repository's files as sorted posix paths relative to `root`.

    In a git checkout whose top is `root`: tracked files plus untracked files git does not ignore (a new
    module counts before it is added; build outputs, .venv and caches do not), without files deleted from
    the working tree. Elsewhere (the unit tests' synthetic trees): every file under `root`.
    """
    root = Path(root)
    try:
        top = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True
        ).stdout.strip()
        is_top = Path(top).resolve() == root.resolve()
    except (OSError, subprocess.CalledProcessError):
        is_top = False
    if is_top:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
        ).stdout.decode("utf-8", "surrogateescape")
        names = {n for n in out.split("\0") if n and (root / n).is_file()}
    else:
        names = set()
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in _WALK_SKIP and not d.endswith(".egg-info")]
            rel = Path(folder).relative_to(root)
            names.update((rel / f).as_posix() for f in files)
    return tuple(sorted(names))


@functools.lru_cache(maxsize=None)
def repo_dirs(root: Path) -> frozenset[str]:
    """Every folder (posix, relative to `root`, no trailing slash) that holds a repository file."""
    dirs = set()
    for name in repo_files(root):
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return frozenset(dirs)


def fresh(check: Callable[..., list[str]]) -> Callable[..., list[str]]:
    """Decorator: the check lists the files anew (the caches only serve one run of one check)."""

    @functools.wraps(check)
    def wrapper(*args, **kwargs):
        for cached in (repo_files, repo_dirs, _module_names):
            cached.cache_clear()
        return check(*args, **kwargs)

    return wrapper


def read_text(root: Path, rel: str) -> str:
    """The file's text (undecodable bytes replaced: the checks only look for ASCII patterns)."""
    return (Path(root) / rel).read_text(encoding="utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------------------
# Check 1: imports
# ---------------------------------------------------------------------------------------------------------

# First-party packages: top-level package name -> its folder relative to the repository root.
PACKAGES = {"specdec_kernels": "specdec_kernels", "specdec": "python/specdec"}


def first_party_modules(root: Path) -> dict[str, str]:
    """Module name -> file (relative to `root`) for every .py module of the first-party packages."""
    modules = {}
    for pkg, folder in PACKAGES.items():
        prefix = folder + "/"
        for rel in repo_files(root):
            if not (rel.startswith(prefix) and rel.endswith(".py")):
                continue
            parts = rel[len(prefix) : -3].split("/")
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if all(p.isidentifier() for p in parts):
                modules[".".join([pkg, *parts])] = rel
    return modules


def is_cli_module(name: str) -> bool:
    """Whether `name` is a CLI module: specdec.cli and below, any `*.cli` / `*_cli` module, `__main__`.

    `__main__` modules are entry points (`python -m`), so they may import the CLI like the CLI itself.
    """
    last = name.rsplit(".", 1)[-1]
    return (
        name == "specdec.cli"
        or name.startswith("specdec.cli.")
        or last == "cli"
        or last.endswith("_cli")
        or last == "__main__"
    )


@dataclass(frozen=True)
class ImportEdge:
    """One import statement's dependency of module `src` on module `dst`."""

    src: str
    dst: str
    file: str
    line: int
    lazy: bool  # inside a function: runs on call, not on import

    def describe(self) -> str:
        """`file:line src -> dst` with `(lazy)` for an import inside a function."""
        return f"{self.file}:{self.line} {self.src} -> {self.dst}{' (lazy)' if self.lazy else ''}"


def _resolve(name: str, modules: dict[str, str]) -> str | None:
    """The longest first-party module prefix of dotted `name` (None when no prefix is a first-party module)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in modules:
            return candidate
    return None


def _import_targets(node: ast.AST, module: str, is_package: bool, modules: dict[str, str]) -> Iterator[str]:
    """The first-party modules one import node (or `importlib.import_module("literal")` call) depends on.

    `import a.b.c` depends on a.b.c only: the parent packages' __init__ files also run, but counting them
    would make every package whose __init__ re-exports its submodules a cycle. `from p import n` depends on
    p.n when that is a module, else on p (whose __init__ must then provide n). Names that are no .py module
    of the repository (the compiled extension, generated files, third-party packages) give no edge.
    """
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name in modules:
                yield alias.name
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            # Relative: level 1 is the current package (the module itself for an __init__).
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            if alias.name != "*" and sub in modules:
                yield sub
            elif source in modules:
                yield source
    elif isinstance(node, ast.Call):
        func = node.func
        called = (
            func.attr
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "importlib"
            else func.id
            if isinstance(func, ast.Name)
            else None
        )
        if called in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            value = node.args[0].value
            if isinstance(value, str) and value in modules:
                yield value


def import_graph(root: Path) -> tuple[dict[str, str], list[ImportEdge], list[str]]:
    """(modules, edges, errors): every first-party import edge, lazy ones included, and files that do not parse."""
    root = Path(root)
    modules = first_party_modules(root)
    edges: list[ImportEdge] = []
    errors: list[str] = []
    for module, rel in sorted(modules.items()):
        try:
            tree = ast.parse(read_text(root, rel), filename=rel)
        except SyntaxError as e:
            errors.append(f"{rel}:{e.lineno} does not parse: {e.msg}")
            continue
        is_package = rel.endswith("/__init__.py")
        # Walk with a flag for "inside a function" so lazy imports are marked (they still count).
        stack: list[tuple[ast.AST, bool]] = [(tree, False)]
        seen: set[ImportEdge] = set()
        while stack:
            node, lazy = stack.pop()
            for target in _import_targets(node, module, is_package, modules):
                edge = ImportEdge(module, target, rel, node.lineno, lazy)
                if target != module and edge not in seen:  # `from p import a, b`: one edge, not two
                    seen.add(edge)
                    edges.append(edge)
            inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            stack.extend((child, inner) for child in ast.iter_child_nodes(node))
    edges.sort(key=lambda e: (e.file, e.line, e.dst))
    return modules, edges, errors


def strongly_connected(nodes: list[str], succ: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted, in order of their first member."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(succ.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(succ.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return sorted(components, key=lambda c: c[0])


@fresh
def check_imports(root: Path) -> list[str]:
    """Import cycles (each strongly connected component with its edges) and library modules importing the CLI."""
    modules, edges, errors = import_graph(root)
    violations = list(errors)
    succ: dict[str, set[str]] = {}
    for e in edges:
        succ.setdefault(e.src, set()).add(e.dst)
    for component in strongly_connected(sorted(modules), succ):
        if len(component) < 2:
            continue
        members = set(component)
        inside = [e for e in edges if e.src in members and e.dst in members]
        lines = "\n".join(f"      {e.describe()}" for e in inside)
        violations.append(f"import cycle among {', '.join(component)}; its edges:\n{lines}")
    for e in edges:
        if is_cli_module(e.dst) and not is_cli_module(e.src):
            violations.append(
                f"{e.file}:{e.line} library module {e.src} imports the CLI module {e.dst}"
                f"{' (lazily)' if e.lazy else ''}: the CLI may import library code, never the reverse"
            )
    return violations


# ---------------------------------------------------------------------------------------------------------
# Check 2: sizes
# ---------------------------------------------------------------------------------------------------------

MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80
SIZE_FOLDERS = ("python/", "specdec_kernels/")

# "path::qualname" -> why that function may be longer than MAX_FUNCTION_LINES. An entry whose function is gone
# or no longer long is itself a violation, so the list only ever names functions that need it.
ALLOWED_LONG: dict[str, str] = {
    "specdec_kernels/triton_kernels/attention.py::_tree_attention_kernel": (
        "Triton kernel: 28 of its lines are the launch signature (one argument per line); the prefix, tail and "
        "tree phases update one loop-carried online-softmax state (acc, m_i, l_i), already factored into "
        "the @triton.jit helper _online_update"
    ),
    "specdec_kernels/triton_kernels/tree.py::_build_tree_kernel": (
        "Triton kernel: 16 signature lines; the pointer-jumping rounds share a scratch row through "
        "debug_barrier()s that order the stores and loads of all threads of one program, so they stay inline"
    ),
    "specdec_kernels/triton_kernels/verify.py::_sample_kernel": (
        "Triton kernel: the accept/reject walk carries about 15 values of state (path, emitted, cur, length, "
        "cand, the node's distribution parameters, rejection records) from iteration to iteration, and "
        "@triton.jit helpers cannot assign their caller's variables; the per-token math is already in helpers"
    ),
}


def _functions(tree: ast.AST) -> Iterator[tuple[str, ast.AST]]:
    """(qualname, node) of every function and method, nested ones included (`outer.inner`, `Class.method`)."""
    stack: list[tuple[str, ast.AST]] = [("", tree)]
    while stack:
        prefix, node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    yield name, child
                stack.append((f"{name}.", child))
            else:
                stack.append((prefix, child))


def function_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the `def` line (decorators not counted) to the function's end, less its docstring's lines."""
    total = node.end_lineno - node.lineno + 1
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        if isinstance(body[0].value.value, str):
            total -= body[0].end_lineno - body[0].lineno + 1
    return total


def long_functions(root: Path) -> tuple[dict[str, int], list[str], dict[str, int]]:
    """(long, errors, all): functions over the limit as "path::qualname" -> lines, parse errors, every function."""
    root = Path(root)
    long: dict[str, int] = {}
    every: dict[str, int] = {}
    errors: list[str] = []
    for rel in repo_files(root):
        if not (rel.endswith(".py") and rel.startswith(SIZE_FOLDERS)):
            continue
        try:
            tree = ast.parse(read_text(root, rel), filename=rel)
        except SyntaxError as e:
            errors.append(f"{rel}:{e.lineno} does not parse: {e.msg}")
            continue
        for qualname, node in _functions(tree):
            key = f"{rel}::{qualname}"
            n = function_lines(node)
            every[key] = max(n, every.get(key, 0))  # same name twice (e.g. property setter): the longer
            if n > MAX_FUNCTION_LINES:
                long[key] = max(n, long.get(key, 0))
    return long, errors, every


@fresh
def check_sizes(root: Path, allowed: dict[str, str] | None = None) -> list[str]:
    """Files over MAX_FILE_LINES, functions over MAX_FUNCTION_LINES not in `allowed`, stale `allowed` entries."""
    root = Path(root)
    allowed = ALLOWED_LONG if allowed is None else allowed
    violations = []
    for rel in repo_files(root):
        if rel.endswith(".py") and rel.startswith(SIZE_FOLDERS):
            n = len(read_text(root, rel).splitlines())
            if n > MAX_FILE_LINES:
                violations.append(f"{rel}: {n} lines (at most {MAX_FILE_LINES})")
    long, errors, every = long_functions(root)
    violations += errors
    for key, n in sorted(long.items()):
        if key not in allowed:
            violations.append(f"{key}: {n} lines without its docstring (at most {MAX_FUNCTION_LINES})")
    for key in sorted(allowed):
        if key not in every:
            violations.append(f"ALLOWED_LONG entry {key}: no such function any more (remove the entry)")
        elif key not in long:
            violations.append(f"ALLOWED_LONG entry {key}: now {every[key]} lines, not long (remove the entry)")
    return violations


# ---------------------------------------------------------------------------------------------------------
# Check 3: machine-paths
# ---------------------------------------------------------------------------------------------------------

BINARY_SUFFIXES = (".safetensors", ".png", ".jpg", ".jpeg", ".gif", ".pdf", ".so", ".pyd", ".dll", ".o", ".a")
BINARY_SUFFIXES += (".pt", ".pth", ".bin", ".npy", ".npz", ".gz", ".zip", ".tar", ".whl", ".pyc", ".gguf")
MAX_TEXT_BYTES = 2 * 1024 * 1024

# Not preceded by a path or variable character: `a/home/b` is relative, `$HOME/...` and `~/...` are portable.
_NOT_INSIDE = r"(?<![\w.~$/-])"
MACHINE_PATH_PATTERNS: dict[str, re.Pattern[str]] = {
    "a home folder": re.compile(_NOT_INSIDE + r"/home/[A-Za-z0-9_.-]+"),
    "root's home folder": re.compile(_NOT_INSIDE + r"/root(?:/|(?=[\s\"'`),;:\]]|$))"),
    "a macOS home folder": re.compile(_NOT_INSIDE + r"/Users/[A-Za-z0-9_.-]+"),
    "a Windows home folder": re.compile(r"\b[A-Za-z]:\\+Users\\+[A-Za-z0-9_.-]+"),
    "a work checkout": re.compile(_NOT_INSIDE + r"/work(?:space)?/[A-Za-z0-9_.-]+"),
    "a temporary folder (checkout, clone or cache)": re.compile(_NOT_INSIDE + r"/tmp/[A-Za-z0-9_.-]+"),
}

# Exact matches that are not somebody's machine, with the reason. Kept explicit instead of loosening the
# patterns, so a new /tmp path has to be looked at once.
ALLOWED_MACHINE_PATHS: dict[str, str] = {
    "/tmp/specdec_build.lock": "machine-wide flock that serializes builds of all checkouts (scripts/build.sh)",
    "/tmp/out": "example output folder in usage text",
}


def _is_binary(root: Path, rel: str) -> bool:
    """Binary by suffix, size or a NUL byte in the first 8 KiB."""
    path = Path(root) / rel
    if rel.lower().endswith(BINARY_SUFFIXES) or path.stat().st_size > MAX_TEXT_BYTES:
        return True
    with open(path, "rb") as f:
        return b"\0" in f.read(8192)


@fresh
def check_machine_paths(root: Path) -> list[str]:
    """Absolute paths of a particular machine (home folders, checkouts, temporary clones) in text files."""
    root = Path(root)
    violations = []
    for rel in repo_files(root):
        if _is_binary(root, rel):
            continue
        for lineno, line in enumerate(read_text(root, rel).splitlines(), 1):
            for what, pattern in MACHINE_PATH_PATTERNS.items():
                for m in pattern.finditer(line):
                    if m.group(0) not in ALLOWED_MACHINE_PATHS:
                        violations.append(f"{rel}:{lineno}: {m.group(0)} ({what}; write it relative or portable)")
    return violations


# ---------------------------------------------------------------------------------------------------------
# Check 4: doc-paths
# ---------------------------------------------------------------------------------------------------------

CODE_SUFFIXES = (".py", ".sh", ".cu", ".cpp", ".h", ".cuh")
# Named paths never checked: build outputs and scratch output folders.
SKIPPED_PATH_PREFIXES = ("build/", "dist/", "bench/out/")
# Paths that may be named although they are not in the repository, with the reason.
ALLOWED_MISSING_PATHS: dict[str, str] = {
    "specdec_kernels/_build_info.py": "written by setup.py at build time (ignored by git)",
    "bench/results/x": "example output folder of write_report in docs/eval.md",
}
# A path right after an output option names what the command will write, which need not exist.
_OUTPUT_OPTION = re.compile(r"(?:--out|--output|--out-dir|-o)(?:=|\s+)$")
# A path token ends at whitespace, quotes, brackets, punctuation that never occurs in our paths, `:line` and
# `#anchor`; placeholders (`<name>`, `{x}`, `$VAR`) and globs stay in the token so it can be skipped, and a
# brace list (`heads/{eagle,griffin}`) stays whole so it can be expanded.
_TOKEN_BODY = r"""(?:[^\s`'"()\[\],;|:#!?{]|\{[^{}\s`'"]*\})*"""
_PLACEHOLDER = re.compile(r"[*<>{}$%]|\.\.\.")
_BRACE_LIST = re.compile(r"\{([^{}]*,[^{}]*)\}")
_MD_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_MD_REF_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_BACKTICKS = re.compile(r"`([^`\n]+)`")
# Generated modules: they exist after the build (setup.py), not in the repository.
GENERATED_MODULES = {
    "specdec_kernels._C": "the compiled extension (setup.py build_ext)",
    "specdec_kernels._build_info": "written by setup.py at build time",
}


def doc_files(root: Path) -> list[str]:
    """The markdown files whose paths are checked: every one (README.md, docs/, bench/ incl. the generated
    results, the shipped heads' RECIPE.md); none of them is noisy today."""
    return [rel for rel in repo_files(root) if rel.endswith(".md")]


def _path_token_pattern(root: Path) -> re.Pattern[str]:
    """A token that starts with a top-level entry of the repository (a folder with `/`, or a root file)."""
    top_dirs = sorted({rel.split("/", 1)[0] for rel in repo_files(root) if "/" in rel}, key=len, reverse=True)
    top_files = sorted({rel for rel in repo_files(root) if "/" not in rel}, key=len, reverse=True)
    dirs = "|".join(re.escape(d) + "/" + _TOKEN_BODY for d in top_dirs)
    files = "|".join(re.escape(f) + r"(?![\w-]|\.\w)" for f in top_files)
    alternatives = "|".join(a for a in (dirs, files) if a) or r"(?!)"
    return re.compile(r"(?<![\w./~$-])(?:" + alternatives + ")")


def _comment_lines_py(text: str) -> Iterator[tuple[int, str]]:
    """(line, text) of a Python file's comments and docstrings."""
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                yield tok.start[0], tok.string
    except (tokenize.TokenError, SyntaxError):
        pass
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                if isinstance(first.value.value, str):
                    for i, line in enumerate(first.value.value.splitlines()):
                        yield first.lineno + i, line


def _comment_lines_sh(text: str) -> Iterator[tuple[int, str]]:
    """(line, text) of a shell script's comments: `#` at a line's start or after whitespace (not the shebang)."""
    for lineno, line in enumerate(text.splitlines(), 1):
        if lineno == 1 and line.startswith("#!"):
            continue
        m = re.search(r"(?:^|\s)#(.*)$", line)
        if m:
            yield lineno, m.group(1)


def _comment_lines_c(text: str) -> Iterator[tuple[int, str]]:
    """(line, text) of a C / C++ / CUDA file's `//` and `/* */` comments (string and char literals skipped)."""
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            i = j + 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            yield line, text[i + 2 : j]
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j
            for k, part in enumerate(text[i + 2 : j].split("\n")):
                yield line + k, part
            line += text.count("\n", i, j)
            i = j + 2
        else:
            i += 1


def _text_lines(root: Path, rel: str) -> Iterator[tuple[int, str]]:
    """(line, text) of what doc-paths reads in a file: all of a markdown file, comments and docstrings of code."""
    text = read_text(root, rel)
    if rel.endswith(".md"):
        yield from enumerate(text.splitlines(), 1)
    elif rel.endswith(".py"):
        yield from _comment_lines_py(text)
    elif rel.endswith(".sh"):
        yield from _comment_lines_sh(text)
    else:
        yield from _comment_lines_c(text)


def _top_level_names(tree: ast.Module) -> set[str] | None:
    """Names a module binds at top level (None: it may have any, via `import *` or a module `__getattr__`)."""
    names: set[str] = set()
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == "__getattr__":
                return None
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
            stack.extend(ast.iter_child_nodes(node))
        elif hasattr(ast, "TryStar") and isinstance(node, ast.TryStar):
            stack.extend(ast.iter_child_nodes(node))
        elif isinstance(node, ast.ExceptHandler):
            stack.extend(node.body)
    return names


@functools.lru_cache(maxsize=None)
def _module_names(root: Path, rel: str) -> frozenset[str] | None:
    try:
        names = _top_level_names(ast.parse(read_text(root, rel)))
    except SyntaxError:
        return None
    return None if names is None else frozenset(names)


def resolve_dotted(root: Path, name: str, modules: dict[str, str]) -> bool:
    """Whether dotted `name` is a first-party module or an attribute path of one.

    The first attribute after the longest module prefix must be bound at top level in that module's file
    (so a moved submodule is caught even though the package's __init__.py exists); later ones are not checked.
    """
    if name in modules or name in GENERATED_MODULES:
        return True
    module = _resolve(name, modules)
    if module is None:
        return False
    attribute = name[len(module) + 1 :].split(".")[0]
    names = _module_names(Path(root), modules[module])
    return names is None or attribute in names


def expand_braces(path: str) -> list[str]:
    """`a/{b,c}/d` -> [`a/b/d`, `a/c/d`] (shell brace lists, nested in sequence; others left alone)."""
    m = _BRACE_LIST.search(path)
    if not m:
        return [path]
    return [x for alt in m.group(1).split(",") for x in expand_braces(path[: m.start()] + alt + path[m.end() :])]


def _path_exists(root: Path, path: str) -> bool:
    path = os.path.normpath(path).replace(os.sep, "/").rstrip("/")
    return path in repo_dirs(root) or path in repo_files(root) or path == "."


def doc_path_violations(root: Path, rel: str, lines: Iterator[tuple[int, str]]) -> list[str]:
    """Missing repository paths, broken relative markdown links and unknown `specdec...` modules in `lines`."""
    root = Path(root)
    token = _path_token_pattern(root)
    modules = first_party_modules(root)
    folder = os.path.dirname(rel)
    is_md = rel.endswith(".md")
    violations = []
    for lineno, line in lines:
        if is_md:
            # Link targets resolve against the file's folder (as GitHub renders them), not the root.
            targets = [(m.span(1), m.group(1)) for m in _MD_LINK.finditer(line)]
            targets += [(m.span(1), m.group(1)) for m in _MD_REF_LINK.finditer(line)]
            for (start, end), target in targets:
                line = line[:start] + " " * (end - start) + line[end:]
                if _URL_SCHEME.match(target) or target.startswith(("#", "/")) or _PLACEHOLDER.search(target):
                    continue
                path = target.split("#", 1)[0].split("?", 1)[0]
                if path and not _path_exists(root, os.path.join(folder, path)):
                    violations.append(f"{rel}:{lineno}: link target {target} does not exist (from {folder or '.'}/)")
        for m in token.finditer(line):
            if _OUTPUT_OPTION.search(line[: m.start()]):
                continue
            for path in expand_braces(m.group(0).rstrip(".")):
                if _PLACEHOLDER.search(path) or (path.rstrip("/") + "/").startswith(SKIPPED_PATH_PREFIXES):
                    continue
                if path not in ALLOWED_MISSING_PATHS and not _path_exists(root, path):
                    violations.append(f"{rel}:{lineno}: {path} does not exist")
        for span in _BACKTICKS.finditer(line):
            for m in re.finditer(r"(?<![\w.])(?:" + "|".join(PACKAGES) + r")(?:\.\w+)+", span.group(1)):
                if not resolve_dotted(root, m.group(0), modules):
                    violations.append(f"{rel}:{lineno}: `{m.group(0)}` is no module or attribute of one")
    return violations


@fresh
def check_doc_paths(root: Path) -> list[str]:
    """Repository paths and module names in the docs and in code comments and docstrings that do not exist."""
    root = Path(root)
    violations = []
    for rel in doc_files(root):
        violations += doc_path_violations(root, rel, _text_lines(root, rel))
    for rel in repo_files(root):
        if rel.endswith(CODE_SUFFIXES):
            violations += doc_path_violations(root, rel, _text_lines(root, rel))
    return violations


# ---------------------------------------------------------------------------------------------------------
# Check 5: testing-doc
# ---------------------------------------------------------------------------------------------------------

TESTING_DOC = "docs/testing.md"
_TEST_FILE_TOKEN = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*test_\w*\.py)\b")


@fresh
def check_testing_doc(root: Path) -> list[str]:
    """Test files docs/testing.md does not name (by their path under tests/), and names of missing ones."""
    root = Path(root)
    tests = [rel[len("tests/") :] for rel in repo_files(root) if re.fullmatch(r"tests/(.+/)?test_[^/]*\.py", rel)]
    if not (root / TESTING_DOC).is_file():
        return [f"{TESTING_DOC} is missing"] if tests else []
    named: dict[str, int] = {}
    for lineno, line in enumerate(read_text(root, TESTING_DOC).splitlines(), 1):
        for m in _TEST_FILE_TOKEN.finditer(line):
            name = m.group(1).removeprefix("tests/")
            named.setdefault(name, lineno)
    violations = [
        f"tests/{t}: not in {TESTING_DOC} (name it as `{t}` in the layout table)" for t in tests if t not in named
    ]
    present = set(tests)
    for name, lineno in sorted(named.items(), key=lambda kv: kv[1]):
        if name not in present:
            violations.append(f"{TESTING_DOC}:{lineno}: tests/{name} does not exist")
    return violations


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------

CHECKS: dict[str, Callable[[Path], list[str]]] = {
    "imports": check_imports,
    "sizes": check_sizes,
    "machine-paths": check_machine_paths,
    "doc-paths": check_doc_paths,
    "testing-doc": check_testing_doc,
}


def run_checks(root: Path, names: list[str]) -> dict[str, list[str]]:
    """Each named check's violations on the repository at `root`."""
    return {name: CHECKS[name](Path(root)) for name in names}


def format_report(results: dict[str, list[str]]) -> str:
    """One line per clean check, a header and one indented line per violation otherwise."""
    out = []
    for name, violations in results.items():
        if not violations:
            out.append(f"[structure] {name}: ok")
            continue
        out.append(f"[structure] {name}: {len(violations)} violation(s)")
        out += [f"  - {v}" for v in violations]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Run the checks on the repository this script lives in; 1 when any check has a violation."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", help="comma-separated checks to run (default: all; see --list)")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    parser.add_argument("--root", default=str(Path(__file__).resolve().parent.parent), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.list:
        for name, check in CHECKS.items():
            print(f"{name:15s} {check.__doc__.splitlines()[0]}")
        return 0
    names = list(CHECKS) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        parser.error(f"unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")
    start = time.perf_counter()
    results = run_checks(Path(args.root), names)
    print(format_report(results))
    failed = [n for n, v in results.items() if v]
    print(f"[structure] {'failed: ' + ', '.join(failed) if failed else 'clean'} ({time.perf_counter() - start:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
