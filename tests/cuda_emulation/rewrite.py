"""Rewrite a CUDA source file so that g++ compiles it against cudaemu.h (line numbers are kept).

* `kernel<<<grid, block[, smem[, stream]]>>>(args)` -> `cudaemu::config(grid, block, smem, stream).run(kernel, args)`;
* `extern __shared__ [__align__(n)] T name[];` -> `T* name = cudaemu::dynamic_shared<T>();`;
* `__shared__ T name[...];` (a static one) -> the same declaration (cudaemu.h makes `__shared__` `static`)
  followed, on the same line, by `cudaemu::static_shared(&name, sizeof(name));`, which poisons it once per
  block.

Anything the script does not recognise is an error, never silently left as CUDA syntax.

Usage: python rewrite.py IN.cu OUT.cpp
"""

from __future__ import annotations

import re
import sys

_EXTERN_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?((?:[\w:]+\s+)*?[\w:]+(?:\s*\*)?)\s+(\w+)\s*\[\s*\]\s*;"
)
_STATIC_SHARED = re.compile(r"(?<![\w])__shared__\s+(?!.*\bextern\b)([^;=(){}]+?)\b(\w+)((?:\s*\[[^\]]*\])*)\s*;")


def _match_back(s: str, k: int, open_ch: str, close_ch: str) -> int:
    """Index of the `open_ch` that balances the `close_ch` at s[k]."""
    depth = 0
    while k >= 0:
        if s[k] == close_ch:
            depth += 1
        elif s[k] == open_ch:
            depth -= 1
            if depth == 0:
                return k
        k -= 1
    raise ValueError("unbalanced " + open_ch + close_ch)


def _match_forward(s: str, k: int, open_ch: str, close_ch: str) -> int:
    depth = 0
    while k < len(s):
        if s[k] == open_ch:
            depth += 1
        elif s[k] == close_ch:
            depth -= 1
            if depth == 0:
                return k
        k += 1
    raise ValueError("unbalanced " + open_ch + close_ch)


def rewrite_launches(s: str) -> str:
    out, i = [], 0
    while True:
        j = s.find("<<<", i)
        if j < 0:
            out.append(s[i:])
            return "".join(out)
        k = j
        while k > 0 and s[k - 1].isspace():
            k -= 1
        if s[k - 1] == ">":  # template arguments of the kernel
            k = _match_back(s, k - 1, "<", ">")
        while k > 0 and (s[k - 1].isalnum() or s[k - 1] in "_:"):
            k -= 1
        kernel = s[k:j].strip()
        if not kernel:
            raise ValueError(f"no kernel name before <<< at offset {j}")
        e = s.index(">>>", j)
        cfg = s[j + 3 : e]
        p = e + 3
        while s[p].isspace():
            p += 1
        if s[p] != "(":
            raise ValueError(f"no argument list after >>> of {kernel}")
        q = _match_forward(s, p, "(", ")")
        args = s[p + 1 : q].strip()
        call = f"cudaemu::config({cfg}).run({kernel}{', ' + args if args else ''})"
        out.append(s[i:k])
        out.append(call.replace("\n", " ") + "\n" * s[k : q + 1].count("\n"))
        i = q + 1


def _static_shared(m: re.Match) -> str:
    decl, name = m.group(0), m.group(2)
    if "," in m.group(1):
        raise ValueError(f"one variable per __shared__ declaration, please: {decl!r}")
    return f"{decl} cudaemu::static_shared(&{name}, sizeof({name}));"


def rewrite(src: str) -> str:
    src = _EXTERN_SHARED.sub(r"\1* \2 = cudaemu::dynamic_shared<\1>();", src)
    src = _STATIC_SHARED.sub(_static_shared, src)
    src = rewrite_launches(src)
    for line_no, line in enumerate(src.splitlines(), 1):
        code = line.split("//", 1)[0]
        if "extern __shared__" in code or "<<<" in code:
            raise ValueError(f"line {line_no}: CUDA syntax left after the rewrite: {line.strip()!r}")
    return src


def main(argv: list) -> int:
    src_path, out_path = argv[1], argv[2]
    with open(src_path, encoding="utf-8") as f:
        src = f.read()
    out = f'#line 1 "{src_path}"\n' + rewrite(src)
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
