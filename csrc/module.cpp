// The Python module `fuseops._C`.  It exports no functions: every kernel is a torch
// op registered with TORCH_LIBRARY_FRAGMENT(fuseops_ext, ...) in its own source file
// and called as torch.ops.fuseops_ext.<name>.  Importing the module runs those
// static registrations.  WITH_CUDA tells Python whether the CUDA sources were built.
#include <Python.h>

static struct PyModuleDef fuseops_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&fuseops_module);
  if (module == nullptr) return nullptr;
#ifdef FUSEOPS_WITH_CUDA
  PyModule_AddIntConstant(module, "WITH_CUDA", 1);
#else
  PyModule_AddIntConstant(module, "WITH_CUDA", 0);
#endif
  return module;
}
