// Who picks the backend of a call to torch.ops.fuseops.<op> on CPU tensors.
//
// The C++ kernels are registered at the CPU key of the public ops (fuse_conv/ops.cpp,
// block_conv/ops.cpp), so a call reaches them through the dispatcher alone.  Which backend
// runs is still chosen in Python (fuseops/backends.py: use_backend, $FUSEOPS_BACKEND,
// "auto"), because use_backend is scoped per thread and per asyncio task (a ContextVar)
// and may pick the triton or reference backends.  The C++ kernel therefore runs itself only
// when that choice cannot be anything but the C++ kernels: no use_backend block naming a
// backend other than "cpu" is open anywhere (a process-wide count, so it errs towards
// asking Python) and $FUSEOPS_BACKEND is unset, empty, "auto" or "cpu".  Otherwise it hands the call to
// fuseops::_<op>_by_selection, a Python kernel that resolves the choice
// (fuseops/_op_definition.py).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdint>

namespace fuseops::selection {

// A use_backend block naming a backend other than "cpu" opened / closed (called by
// fuseops/backends.py through fuseops._C).
void open_python_choice();
void close_python_choice();
// How many such blocks are open now (for the tests).
int64_t open_python_choices();

// True when the backend of this call is Python's to pick (see above).
bool python_chooses();

// The op `name` whose Python kernel resolves the choice, typed like the caller's kernel.
template <class Signature>
c10::TypedOperatorHandle<Signature> python_choice_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace fuseops::selection
