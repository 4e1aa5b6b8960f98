// The Python module specdec_kernels._C. Importing it runs the static TORCH_LIBRARY_IMPL registrations
// of every kernel in this library; the module itself reports what was compiled in and holds the choice of the
// linear kernel's instruction-set path (specdec_kernels.ops.linear wraps these functions). The op schemas
// are defined in Python (specdec_kernels/_schemas.py) so that a pure-Python install has them too.
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

PyMethodDef methods[] = {
    {"linear_isa", linear_isa, METH_NOARGS, "The instruction-set path the linear CPU kernel runs now."},
    {"linear_isas", linear_isas, METH_NOARGS, "The linear CPU kernel's paths this CPU can run."},
    {"set_linear_isa", set_linear_isa, METH_O, "Run the linear CPU kernel's path `name`; returns the previous."},
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
