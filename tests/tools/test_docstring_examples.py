"""The `>>>` examples in the docstrings of specdec_kernels' public API run and print what they show.

Every name of specdec_kernels.__all__ (functions, the result tuples and their methods, get_op, ...) is
collected with doctest's finder and run as its own test case; the ops below must have an example.
"""

from __future__ import annotations

import doctest
import inspect

import pytest

import specdec_kernels as sk

# Public functions and result tuples whose docstrings must end with an example.
MUST_HAVE_EXAMPLE = (
    "Tree",
    "SelectedTree",
    "TreePaths",
    "VerifyResult",
    "build_tree",
    "select_tree",
    "tree_paths",
    "tree_attention",
    "compact_kv",
    "paged_tree_attention",
    "block_table_from_csr",
    "compact_paged_kv",
    "accept_slots",
    "sglang_tree",
    "flashinfer_custom_mask",
    "verify_greedy",
    "verify_sample",
    "mask_words",
    "pack_bits",
    "chain_mask",
    "unpack_mask",
    "tree_visibility",
    "tree_attention_bias",
    "fspad_feature_sampling",
    "griffin_token_fusion",
    "get_op",
    "list_ops",
)


def _doctests():
    finder = doctest.DocTestFinder(exclude_empty=True)
    seen, tests = set(), []
    for name in sk.__all__:
        obj = getattr(sk, name)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        for test in finder.find(obj, f"specdec_kernels.{name}", module=inspect.getmodule(obj), globs={}):
            if test.examples and test.name not in seen:
                seen.add(test.name)
                tests.append(pytest.param(test, id=test.name))
    return tests


@pytest.mark.parametrize("test", _doctests())
def test_docstring_example(test):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out = []
    result = runner.run(test, out=out.append, clear_globs=True)
    assert result.failed == 0, "".join(out)


@pytest.mark.parametrize("name", MUST_HAVE_EXAMPLE)
def test_public_docstring_ends_with_an_example(name):
    obj = getattr(sk, name)
    doc = inspect.getdoc(obj) or ""
    assert "Example:" in doc and ">>>" in doc.split("Example:")[-1], f"{name}'s docstring has no Example: section"
    for method in ("empty",):
        if hasattr(obj, method) and isinstance(inspect.getattr_static(obj, method), classmethod):
            assert ">>>" in (inspect.getdoc(getattr(obj, method)) or ""), f"{name}.{method} has no example"
