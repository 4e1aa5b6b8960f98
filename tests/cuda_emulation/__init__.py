"""Run the project's CUDA kernels on the CPU: build the emulation executable, run kernel entries on buffers.

`executable(variant)` compiles csrc/cuda/<family>.cu of this checkout (rewritten by rewrite.py) with g++
against cudaemu.h and the kernel entries in drivers/, once per content hash, into
build/cuda_emulation/<variant>-<hash>/cudaemu. Variants: `plain` (`-O1 -g1`), `tsan` (ThreadSanitizer) and
`asan` (AddressSanitizer + UndefinedBehaviorSanitizer), both `-Og -g1`. The hash covers every file the build
reads (the csrc sources and headers, the runtime, the drivers, this file, the limits), the flags and the
versions of g++, torch and the CUDA headers; a file lock keeps parallel workers from building twice.

`run(entry, scalars, inputs, outputs, variant=...)` writes the tensors as raw little-endian buffers and the
scalars (ints, or floats for the entries that read reals) into a temporary request folder, runs
`cudaemu ENTRY FOLDER` and returns the outputs read back. A non-zero exit (a refused launch, a divergent
barrier, a sanitizer report) raises EmulationError with the program's output.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]  # the checkout the tests run in
BUILD = ROOT / "build" / "cuda_emulation"

# family -> the CUDA source it emulates (drivers/<family>.cpp includes it as <family>.cu.cpp).
FAMILIES = {
    "tree": "csrc/cuda/tree.cu",
    "compact": "csrc/cuda/compact.cu",
    "verify": "csrc/cuda/verify.cu",
    "attention": "csrc/cuda/attention.cu",
    "features": "csrc/cuda/features.cu",
    "paged": "csrc/cuda/paged.cu",
    "selftest": "tests/cuda_emulation/selftest.cu",  # the emulation's own tests
}

# The sanitizer builds run only small cases, so they take -Og, which compiles the kernels' many template
# instantiations in about 60% of -O1's time (the asan attention unit: 19 s instead of 32 s), and
# CUDAEMU_SANITIZER_BUILD leaves out the element types their cases do not run (bf16 attention, fp16 / bf16
# verify); the plain build runs the large cases and keeps -O1.
_SANITIZER_BUILD = ["-Og", "-DCUDAEMU_SANITIZER_BUILD=1"]
VARIANTS = {
    "plain": ["-O1"],
    "tsan": [*_SANITIZER_BUILD, "-fsanitize=thread"],
    "asan": [*_SANITIZER_BUILD, "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"],
}
# -g1: line tables (file:line in sanitizer reports) without the full debug info of torch's headers, which
# costs a fifth of the build time.
COMMON_FLAGS = ["-std=c++20", "-g1", "-pthread"]

# Sanitizer settings of every run: stop at the first report, with a status that names the sanitizer.
SANITIZER_ENV = {
    "TSAN_OPTIONS": "halt_on_error=1 exitcode=66 report_signal_unsafe=0",
    "ASAN_OPTIONS": "halt_on_error=1:exitcode=67:detect_leaks=0",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
}


class EmulationError(AssertionError):
    """The emulation executable failed: its exit status and output (sanitizer or cudaemu report)."""


def cuda_home() -> Path:
    return Path(os.environ.get("CUDA_HOME") or "/usr/local/cuda")


def unavailable_reason() -> Optional[str]:
    """Why the emulation cannot be built here (None when it can)."""
    if shutil.which("g++") is None:
        return "g++ not found"
    if not (cuda_home() / "include" / "cuda_runtime.h").exists():
        return f"no CUDA headers under {cuda_home()}/include (set CUDA_HOME)"
    return None


def _limit_flags() -> list:
    text = (ROOT / "specdec_kernels" / "_limits.py").read_text()
    return [f"-DSPECDEC_{name}={value}" for name, value in re.findall(r"^([A-Z_]+) = (\d+)\s*$", text, re.M)]


def _torch_flags() -> list:
    inc = Path(torch.__file__).parent / "include"
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [f"-I{inc}", f"-I{inc / 'torch' / 'csrc' / 'api' / 'include'}", f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]


def _flags(variant: str, src_dir: Path) -> list:
    return (
        COMMON_FLAGS
        + VARIANTS[variant]
        + [f"-I{HERE}", f"-I{HERE / 'drivers'}", f"-I{src_dir}", f"-I{ROOT / 'csrc' / 'cuda'}"]
        + [f"-I{ROOT / 'csrc' / 'include'}", f"-I{cuda_home() / 'include'}"]
        + _torch_flags()
        + _limit_flags()
        + ["-DSPECDEC_WITH_CUDA=1"]
    )


def _inputs(sources: Mapping[str, Path]) -> list:
    """Every file the build reads (the headers of csrc/ and of the emulation too)."""
    files = set(sources.values())
    for pattern in ("csrc/cuda/*.cuh", "csrc/cuda/*.h", "csrc/include/specdec/*.h", "specdec_kernels/_limits.py"):
        files.update(ROOT.glob(pattern))
    files.update(HERE.glob("*.h"))
    files.update(HERE.glob("*.py"))
    files.update((HERE / "drivers").glob("*"))
    return sorted(files)


@functools.lru_cache(maxsize=None)
def _compiler_version() -> str:
    return subprocess.run(["g++", "--version"], capture_output=True, text=True, check=True).stdout


def _hash(variant: str, sources: Mapping[str, Path]) -> str:
    h = hashlib.sha256()
    compiler = _compiler_version()
    cuda_version = cuda_home() / "include" / "cuda.h"
    versions = [compiler, torch.__version__, cuda_version.read_text(errors="replace") if cuda_version.exists() else ""]
    for part in [variant, " ".join(VARIANTS[variant] + COMMON_FLAGS), " ".join(_limit_flags()), *versions]:
        h.update(part.encode() + b"\0")
    for family in sorted(sources):
        h.update(f"source {family}\0".encode())
    for path in _inputs(sources):
        h.update(str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name).encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _compile(variant: str, sources: Mapping[str, Path], out_dir: Path) -> None:
    src_dir = out_dir / "src"
    src_dir.mkdir(parents=True)
    for family, path in sources.items():
        subprocess.run(
            [sys.executable, str(HERE / "rewrite.py"), str(path), str(src_dir / f"{family}.cu.cpp")], check=True
        )
    flags = _flags(variant, src_dir)
    units = [HERE / "drivers" / "main.cpp"] + [HERE / "drivers" / f"{family}.cpp" for family in sources]
    procs = []
    for unit in units:
        obj = out_dir / (unit.stem + ".o")
        cmd = ["g++", *flags, "-c", str(unit), "-o", str(obj)]
        procs.append((cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    errors = []
    for cmd, proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            errors.append(" ".join(cmd) + "\n" + out)
    if errors:
        raise RuntimeError("building the CUDA emulation failed:\n" + "\n".join(errors))
    link = ["g++", *COMMON_FLAGS, *VARIANTS[variant], *[str(out_dir / (u.stem + ".o")) for u in units]]
    subprocess.run(link + ["-o", str(out_dir / "cudaemu")], check=True, capture_output=True, text=True)


_BUILT: Dict[tuple, Path] = {}


def executable(
    variant: str = "plain", sources: Optional[Mapping[str, os.PathLike]] = None, families: Sequence[str] = ()
) -> Path:
    """The emulation executable of `variant`, built on first use.

    sources: family -> .cu file replacing csrc/cuda/<family>.cu (e.g. a deliberately broken copy);
    families: build only these families (default: every family, or those of `sources`).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}: one of {sorted(VARIANTS)}")
    chosen = dict(families and {f: ROOT / FAMILIES[f] for f in families} or {})
    if sources:
        chosen.update({f: Path(p).resolve() for f, p in sources.items()})
    if not chosen:
        chosen = {f: ROOT / p for f, p in FAMILIES.items()}
    key = (variant, tuple(sorted(chosen.items())))
    if key in _BUILT and _BUILT[key].exists():  # hashed once per process: sources do not change mid-run
        return _BUILT[key]
    digest = _hash(variant, chosen)
    final = BUILD / f"{variant}-{digest}"
    exe = final / "cudaemu"
    _BUILT[key] = exe
    if exe.exists():
        return exe
    BUILD.mkdir(parents=True, exist_ok=True)
    with open(BUILD / f"{variant}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if exe.exists():  # another worker built it while we waited
            return exe
        tmp = Path(tempfile.mkdtemp(prefix=f"{variant}-{digest}.tmp-", dir=BUILD))
        try:
            _compile(variant, chosen, tmp / "out")
            shutil.rmtree(final, ignore_errors=True)  # a leftover without its executable
            os.rename(tmp / "out", final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return exe


def _scalar_text(v) -> str:
    """A scalar as scalars.txt holds it: a float by repr (read back exactly by strtod), else an integer."""
    return repr(float(v)) if isinstance(v, float) else str(int(v))


def _write(t: torch.Tensor, path: Path) -> None:
    t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tofile(path)


def run(
    entry: str,
    scalars: Mapping[str, float],
    inputs: Mapping[str, torch.Tensor],
    outputs: Mapping[str, torch.Tensor],
    variant: str = "plain",
    exe: Optional[Path] = None,
    timeout: float = 600,
    env: Optional[Mapping[str, str]] = None,
) -> Dict[str, torch.Tensor]:
    """Run kernel entry `entry` on `inputs` and `outputs` (their initial content) and return the outputs.

    env: extra environment of the run (CUDAEMU_ARCH, CUDAEMU_TIMEOUT_S, CUDAEMU_POISON)."""
    exe = exe or executable(variant)
    with tempfile.TemporaryDirectory(prefix="cudaemu-") as d:
        folder = Path(d)
        (folder / "scalars.txt").write_text("".join(f"{k} {_scalar_text(v)}\n" for k, v in scalars.items()))
        for name, t in {**inputs, **outputs}.items():
            _write(t, folder / f"{name}.bin")
        full_env = {**os.environ, **SANITIZER_ENV, **(env or {})}
        proc = subprocess.run(
            [str(exe), entry, str(folder)], capture_output=True, text=True, env=full_env, timeout=timeout
        )
        if proc.returncode != 0:
            raise EmulationError(
                f"{entry} under the {variant} emulation exited with status {proc.returncode}:\n"
                f"{proc.stdout}{proc.stderr}"
            )
        result = {}
        for name, t in outputs.items():
            if t.numel() == 0:
                result[name] = t.clone()
                continue
            raw = torch.from_file(str(folder / f"{name}.bin"), size=t.numel() * t.element_size(), dtype=torch.uint8)
            result[name] = raw.clone().view(t.dtype).reshape(t.shape)
        return result


def poisoned(shape, dtype: torch.dtype, byte: int = 0xA5) -> torch.Tensor:
    """An output buffer filled with a poison byte, so an element the kernel never writes stands out."""
    n = 1
    for s in shape:
        n *= int(s)
    return (
        torch.full((n * torch.empty((), dtype=dtype).element_size(),), byte, dtype=torch.uint8)
        .view(dtype)
        .reshape(shape)
    )
