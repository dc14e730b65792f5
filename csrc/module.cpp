// The Python module `fuseops._C`.  Every kernel is a torch op registered with
// TORCH_LIBRARY_FRAGMENT(fuseops_ext, ...) in its own source file and called as
// torch.ops.fuseops_ext.<name>, or registered at the CPU key of a public op
// torch.ops.fuseops.<name>; importing the module runs those static registrations.
//
// The module's own functions tell the C++ kernels of the public ops when a use_backend
// block naming a backend other than "cpu" is open (common/selection.h); fuseops/backends.py calls them.
// WITH_CUDA tells Python whether the CUDA sources were built.
#include <Python.h>

#include "common/selection.h"

namespace {

PyObject* open_python_choice(PyObject*, PyObject*) {
  fuseops::selection::open_python_choice();
  Py_RETURN_NONE;
}

PyObject* close_python_choice(PyObject*, PyObject*) {
  fuseops::selection::close_python_choice();
  Py_RETURN_NONE;
}

PyObject* open_python_choices(PyObject*, PyObject*) {
  return PyLong_FromLongLong(fuseops::selection::open_python_choices());
}

PyMethodDef methods[] = {
    {"open_python_choice", open_python_choice, METH_NOARGS,
     "A use_backend block naming reference, triton or cuda opened: the C++ kernels let Python pick."},
    {"close_python_choice", close_python_choice, METH_NOARGS, "Such a block closed."},
    {"open_python_choices", open_python_choices, METH_NOARGS, "How many such blocks are open."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef fuseops_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

}  // namespace

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
