// The scratch workspace and the class gather of the block conv ops (see buffers.h).
#include "block_conv/buffers.h"

#include "block_conv/tiles.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>

#include <vector>

namespace fuseops::block_conv {

namespace {

// Scratch for the buffers that never leave one op call: the gathered padded blocks and the
// gathered output-gradient blocks.  A fresh multi-megabyte allocation is fresh pages from
// the kernel, and on the development VM first-touch page faults cost ~1 us per 4 KiB page:
// for a 64x56x56 F14 forward the 8.4 MB gather buffer alone was ~2000 faults, about 15% of
// the call (perf: exc_page_fault, memcg charging, clear_page).  So each calling thread keeps
// its largest buffer per slot (up to kWorkspaceMaxBytes) and hands out views of it.  A
// buffer still referenced when the next call comes (its storage's use count above one) is
// never reused: that call allocates its own.  block_conv2d_release_workspace() frees the
// calling thread's buffers.
constexpr int64_t kWorkspaceMaxBytes = int64_t{256} << 20;

thread_local at::Tensor workspace_cache[kWorkspaceSlots];

}  // namespace

at::Tensor workspace(WorkspaceSlot slot, at::IntArrayRef sizes, const at::TensorOptions& options,
                     at::MemoryFormat format) {
  const int64_t numel = c10::multiply_integers(sizes);
  const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(c10::typeMetaToScalarType(options.dtype())));
  if (bytes > kWorkspaceMaxBytes || !options.device().is_cpu()) return at::empty(sizes, options.memory_format(format));
  at::Tensor& cached = workspace_cache[slot];
  const bool reusable = cached.defined() && cached.dtype() == options.dtype() && cached.numel() >= numel &&
                        cached.storage().use_count() == 1;
  if (!reusable) cached = at::empty({numel}, options);
  std::vector<int64_t> strides(sizes.size());
  if (format == at::MemoryFormat::ChannelsLast) {  // (N, C, H, W) stored as N, H, W, C
    strides = {sizes[1] * sizes[2] * sizes[3], 1, sizes[3] * sizes[1], sizes[1]};
  } else {
    int64_t stride = 1;
    for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
      strides[d] = stride;
      stride *= sizes[d];
    }
  }
  return cached.as_strided(sizes, strides, 0);
}

void release_workspace() {
  for (auto& cached : workspace_cache) cached.reset();
}

at::Tensor gather_class(const at::Tensor& x, const SizeClass& rows, const SizeClass& cols, int64_t pad_w,
                        at::MemoryFormat format, bool scratch) {
  const int64_t nr = rows.in_starts.size(), nc = cols.in_starts.size();
  const std::vector<int64_t> sizes = {x.size(0) * nr * nc, x.size(1), static_cast<int64_t>(rows.table.size()),
                                      static_cast<int64_t>(cols.table.size())};
  at::Tensor buf = scratch ? workspace(kGatherX, sizes, x.options(), format)
                           : at::empty(sizes, x.options().memory_format(format));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "block_gather_padded",
                                 [&] { gather_padded<scalar_t>(x, buf, rows, cols, pad_w); });
  return buf;
}

}  // namespace fuseops::block_conv
