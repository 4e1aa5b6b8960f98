// The Python module specdec_kernels._C. Importing it runs the static TORCH_LIBRARY_IMPL registrations
// of every kernel in this library; the module itself only reports what was compiled in. The op schemas
// are defined in Python (specdec_kernels/_schemas.py) so that a pure-Python install has them too.
#include <Python.h>

#ifndef SPECDEC_WITH_CUDA
#define SPECDEC_WITH_CUDA 0
#endif

static struct PyModuleDef specdec_module = {
    PyModuleDef_HEAD_INIT, "_C", "Compiled kernels of specdec_kernels (CPU, and CUDA when built).", -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&specdec_module);
  if (m == nullptr) return nullptr;
  PyModule_AddIntConstant(m, "with_cpu", 1);
  PyModule_AddIntConstant(m, "with_cuda", SPECDEC_WITH_CUDA);
  return m;
}
