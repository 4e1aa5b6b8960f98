"""Build of specdec_kernels._C.

* The C++ CPU kernels (csrc/cpu) are always built.
* The CUDA kernels (csrc/cuda) are built whenever torch was built with CUDA and nvcc is found
  (CUDA_HOME or /usr/local/cuda); whether a GPU is present is never asked. Architectures come from
  TORCH_CUDA_ARCH_LIST (default "8.0;9.0+PTX").
* SPECDEC_NO_EXTENSION=1 skips C++/CUDA entirely: a pure-Python install served by the Triton and
  torch backends.
* SPECDEC_NO_CUDA=1 builds the CPU kernels only.
* MAX_JOBS defaults to the number of cores.
* The kernel size limits are defined once, in specdec_kernels/_limits.py: each `NAME = <int>` there is
  passed to the C++ and CUDA compilers as -DSPECDEC_<NAME>=<int> (csrc/include/specdec/limits.h turns the
  macros into constants) and recorded in specdec_kernels/_build_info.py as BUILD_INFO["limits"].
"""

import ast
import glob
import hashlib
import os
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _log(msg):
    print(f"[specdec-kernels build] {msg}", file=sys.stderr)


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _find_nvcc():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home is None and os.path.exists("/usr/local/cuda/bin/nvcc"):
        home = "/usr/local/cuda"
    if home is None:
        nvcc = shutil.which("nvcc")
        if nvcc:
            home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return home
    return None


def _read_limits():
    """{NAME: int} of specdec_kernels/_limits.py, read as text: the package is not importable while it builds
    (and importing it would need torch and the extension being built)."""
    path = os.path.join(ROOT, "specdec_kernels", "_limits.py")
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)
    limits = {}
    for node in tree.body:
        if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if len(targets) != 1 or not isinstance(targets[0], ast.Name) or not targets[0].id.isupper():
            continue
        name = targets[0].id
        try:
            value = ast.literal_eval(node.value)
        except (ValueError, TypeError, SyntaxError) as exc:
            raise SystemExit(f"{path}: {name} must be a literal int, got {ast.unparse(node.value)!r}") from exc
        if type(value) is not int or value < 1:
            raise SystemExit(f"{path}: {name} must be a positive int, got {value!r}")
        limits[name] = value
    if not limits:
        raise SystemExit(f"{path}: no limits (NAME = <int>) found")
    return limits


def _write_build_info(info):
    path = os.path.join(ROOT, "specdec_kernels", "_build_info.py")
    with open(path, "w") as f:
        f.write("# Written by setup.py: what the build of specdec_kernels._C contained.\n")
        f.write(f"BUILD_INFO = {info!r}\n")


def _compiler_id():
    """The C++ compiler's first --version line (what builds the CPU kernels), or "" when it cannot be asked."""
    cxx = os.environ.get("CXX", "c++")
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return (out.splitlines() or [""])[0]


def _cpu_sources_id(sources, flags):
    """A short hash of the CPU kernels' sources, headers, compiler flags and compiler: the machine measurements
    that specdec caches (which linear is faster, the compute dtype, the tree budget's costs) are keyed on it, so
    a changed kernel build is measured again instead of read from a stale cache."""
    h = hashlib.sha1(repr((flags, _compiler_id())).encode())
    for path in sorted(sources) + sorted(glob.glob(os.path.join("csrc", "include", "specdec", "*.h"))):
        h.update(path.encode())
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


def _extensions():
    # limits: the kernel limits the extension was compiled with ({} when nothing is compiled).
    info = {"extension": False, "cpu": False, "cuda": False, "cuda_archs": "", "reason": "", "limits": {}}
    if _flag("SPECDEC_NO_EXTENSION"):
        info["reason"] = "SPECDEC_NO_EXTENSION=1: pure-Python install"
        _log(info["reason"])
        _write_build_info(info)
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cuda_sources = sorted(
        glob.glob(os.path.join("csrc", "cuda", "*.cu")) + glob.glob(os.path.join("csrc", "cuda", "*.cpp"))
    )
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    limits = _read_limits()
    limit_flags = [f"-DSPECDEC_{name}={value}" for name, value in limits.items()]
    cxx = ["-O3", "-std=c++20", "-fopenmp"] + limit_flags
    # Stable-ish ABI of torch's C++ API is not guaranteed across versions: build against the torch present.
    with_cuda = False
    cuda_home = None
    if _flag("SPECDEC_NO_CUDA"):
        info["reason"] = "SPECDEC_NO_CUDA=1: CUDA kernels skipped"
    elif torch.version.cuda is None:
        info["reason"] = "torch was built without CUDA: CUDA kernels skipped"
    else:
        cuda_home = _find_nvcc()
        if cuda_home is None:
            info["reason"] = "nvcc not found (set CUDA_HOME): CUDA kernels skipped"
        else:
            with_cuda = True
    if info["reason"]:
        _log(info["reason"])
    cpu_flags = cxx + ["-DSPECDEC_WITH_CUDA=1"] * with_cuda  # what the CPU sources are compiled with
    info.update(extension=True, cpu=True, limits=limits, cpu_sources=_cpu_sources_id(sources, cpu_flags))
    ldflags = ["-fopenmp"]
    if with_cuda:
        os.environ["CUDA_HOME"] = cuda_home
        import torch.utils.cpp_extension as cpp_ext

        cpp_ext.CUDA_HOME = cuda_home  # torch may have guessed another home from a linked nvcc
        archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        info.update(cuda=True, cuda_archs=archs)
        _log(f"building CUDA kernels with {cuda_home} for TORCH_CUDA_ARCH_LIST={archs}")
        ext = CUDAExtension(
            "specdec_kernels._C",
            sources + cuda_sources,
            include_dirs=include_dirs,
            define_macros=[("SPECDEC_WITH_CUDA", "1")],
            extra_compile_args={
                "cxx": cxx + ["-DSPECDEC_WITH_CUDA=1"],
                "nvcc": [
                    "-O3",
                    "-std=c++20",
                    "--use_fast_math",
                    "-lineinfo",
                    "-DSPECDEC_WITH_CUDA=1",
                    "--expt-relaxed-constexpr",
                ]
                + limit_flags,
            },
            extra_link_args=ldflags,
        )
    else:
        ext = CppExtension(
            "specdec_kernels._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx},
            extra_link_args=ldflags,
        )
    _write_build_info(info)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["specdec_kernels", "specdec_kernels.*"])
    + ["specdec." + p for p in find_packages("python/specdec")]
    + ["specdec"],
    package_dir={"specdec_kernels": "specdec_kernels", "specdec": "python/specdec"},
    # The shipped draft heads travel with the package: exactly these three files per head (<target>/<kind>/);
    # their training records stay in the repository (bench/results/training/).
    package_data={"specdec.heads": ["*/*/config.json", "*/*/model.safetensors", "*/*/README.md"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
