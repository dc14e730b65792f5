#include "common/selection.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace fuseops::selection {
namespace {
std::atomic<int64_t> open_choices{0};
}  // namespace

void open_python_choice() { open_choices.fetch_add(1, std::memory_order_relaxed); }

void close_python_choice() { open_choices.fetch_sub(1, std::memory_order_relaxed); }

int64_t open_python_choices() { return open_choices.load(std::memory_order_relaxed); }

bool python_chooses() {
  if (open_choices.load(std::memory_order_relaxed) > 0) return true;
  // Read per call, as fuseops.backends.current_backend does: users and tests set it at run
  // time.  Python validates the value, so anything but "auto" and "cpu" goes to Python.
  const char* env = std::getenv("FUSEOPS_BACKEND");
  return env != nullptr && env[0] != '\0' && std::strcmp(env, "auto") != 0 && std::strcmp(env, "cpu") != 0;
}

}  // namespace fuseops::selection
