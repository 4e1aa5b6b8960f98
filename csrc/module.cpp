// The Python module specdec_kernels._C. Importing it runs the static TORCH_LIBRARY_IMPL registrations
// of every kernel in this library; the module itself reports what was compiled in and holds the linear
// kernel's settings: its instruction-set path and the rows up to which other CPU kernels' products take it
// (specdec_kernels.ops.linear wraps these functions). The op schemas are defined in Python
// (specdec_kernels/_schemas.py) so that a pure-Python install has them too.
#include <Python.h>

#include <string_view>

#include "specdec/linear_isa.h"

#ifndef SPECDEC_WITH_CUDA
#define SPECDEC_WITH_CUDA 0
#endif

namespace {

// linear_isa() -> str: the path the linear CPU kernel runs now.
PyObject* linear_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(specdec::linear_isa_name(specdec::linear_isa_current()));
}

// linear_isas() -> tuple[str, ...]: the paths this CPU can run, from the most portable to the best.
PyObject* linear_isas(PyObject*, PyObject*) {
  PyObject* out = PyList_New(0);
  for (int i = 0; out != nullptr && specdec::linear_isa_name(i) != nullptr; ++i) {
    if (!specdec::linear_isa_supported(i)) continue;
    PyObject* name = PyUnicode_FromString(specdec::linear_isa_name(i));
    if (name == nullptr || PyList_Append(out, name) != 0) Py_CLEAR(out);
    Py_XDECREF(name);
  }
  if (out == nullptr) return nullptr;
  PyObject* tuple = PyList_AsTuple(out);
  Py_DECREF(out);
  return tuple;
}

// set_linear_isa(name) -> str: run path `name` from now on; returns the previous one.
PyObject* set_linear_isa(PyObject*, PyObject* arg) {
  const char* want = PyUnicode_AsUTF8(arg);
  if (want == nullptr) return nullptr;
  for (int i = 0; specdec::linear_isa_name(i) != nullptr; ++i) {
    if (std::string_view(want) != specdec::linear_isa_name(i)) continue;
    const int before = specdec::linear_isa_current();
    if (!specdec::linear_isa_set(i)) {
      PyErr_Format(PyExc_ValueError, "the linear kernel's %s path cannot run on this CPU", want);
      return nullptr;
    }
    return PyUnicode_FromString(specdec::linear_isa_name(before));
  }
  PyErr_Format(PyExc_ValueError, "unknown linear kernel path %R: expected portable, avx2, avx512 or avx512_bf16", arg);
  return nullptr;
}

// linear_small_product_rows(dtype: int) -> int: up to how many rows the other CPU kernels' products of `dtype`
// (0 fp32, 1 fp16, 2 bf16) take the linear kernel (see linear_isa.h).
PyObject* linear_small_product_rows(PyObject*, PyObject* arg) {
  const long dtype = PyLong_AsLong(arg);
  if (dtype == -1 && PyErr_Occurred()) return nullptr;
  const long long rows = specdec::linear_small_product_rows(static_cast<int>(dtype));
  if (rows < 0) {
    PyErr_Format(PyExc_ValueError, "unknown linear dtype code %ld: expected 0 (fp32), 1 (fp16) or 2 (bf16)", dtype);
    return nullptr;
  }
  return PyLong_FromLongLong(rows);
}

// set_linear_small_product_rows(dtype: int, rows: int) -> int: set it; returns the previous value.
PyObject* set_linear_small_product_rows(PyObject*, PyObject* args) {
  int dtype = 0;
  long long rows = 0;
  if (!PyArg_ParseTuple(args, "iL", &dtype, &rows)) return nullptr;
  if (rows < 0) {
    PyErr_Format(PyExc_ValueError, "rows must be >= 0, got %lld", rows);
    return nullptr;
  }
  const long long before = specdec::linear_set_small_product_rows(dtype, static_cast<int64_t>(rows));
  if (before < 0) {
    PyErr_Format(PyExc_ValueError, "unknown linear dtype code %d: expected 0 (fp32), 1 (fp16) or 2 (bf16)", dtype);
    return nullptr;
  }
  return PyLong_FromLongLong(before);
}

PyMethodDef methods[] = {
    {"linear_isa", linear_isa, METH_NOARGS, "The instruction-set path the linear CPU kernel runs now."},
    {"linear_isas", linear_isas, METH_NOARGS, "The linear CPU kernel's paths this CPU can run."},
    {"set_linear_isa", set_linear_isa, METH_O, "Run the linear CPU kernel's path `name`; returns the previous."},
    {"linear_small_product_rows", linear_small_product_rows, METH_O,
     "Up to how many rows the CPU kernels' products of dtype code `dtype` take the linear kernel."},
    {"set_linear_small_product_rows", set_linear_small_product_rows, METH_VARARGS,
     "Set linear_small_product_rows(dtype) to `rows`; returns the previous value."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef specdec_module = {PyModuleDef_HEAD_INIT, "_C",
                              "Compiled kernels of specdec_kernels (CPU, and CUDA when built).", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&specdec_module);
  if (m == nullptr) return nullptr;
  PyModule_AddIntConstant(m, "with_cpu", 1);
  PyModule_AddIntConstant(m, "with_cuda", SPECDEC_WITH_CUDA);
  return m;
}
