// CPU implementation of the block-pad gather and scatter (schemas in
// csrc/block_pad/schema.cpp).  Plain loops over the shared index maps: it exists so the
// op's semantics (maps, modes, ragged blocks, alignment) are tested on CPU, and as the
// CPU counterpart of the CUDA kernels.
#include "block_pad/maps.h"

#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

namespace fuseops_blockpad {
namespace {

at::Tensor block_pad_gather_cpu(const at::Tensor& x_in, at::IntArrayRef row_bounds, at::IntArrayRef col_bounds,
                                at::IntArrayRef padding, c10::string_view mode_name, int64_t align) {
  TORCH_CHECK(x_in.dim() == 4, "x must be 4-D (N, C, H, W), got ", x_in.dim(), "-D");
  const PadMode mode = parse_mode(std::string(mode_name));
  const Padding pad = parse_padding(padding.vec());
  const auto row_map = axis_map(row_bounds.vec(), x_in.size(2), pad.top, pad.bottom, mode, align, "row");
  const auto col_map = axis_map(col_bounds.vec(), x_in.size(3), pad.left, pad.right, mode, align, "col");
  const at::Tensor x = x_in.contiguous();
  const int64_t planes = x.size(0) * x.size(1), h = x.size(2), w = x.size(3);
  const int64_t hc = static_cast<int64_t>(row_map.size()), wc = static_cast<int64_t>(col_map.size());
  at::Tensor out = at::empty({x.size(0), x.size(1), hc, wc}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "block_pad_gather_cpu", [&] {
    const scalar_t* src = x.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        for (int64_t q = 0; q < hc; ++q) {
          scalar_t* out_row = dst + (p * hc + q) * wc;
          if (row_map[q] < 0) {
            for (int64_t r = 0; r < wc; ++r) out_row[r] = scalar_t(0);
            continue;
          }
          const scalar_t* in_row = src + (p * h + row_map[q]) * w;
          for (int64_t r = 0; r < wc; ++r) out_row[r] = col_map[r] < 0 ? scalar_t(0) : in_row[col_map[r]];
        }
      }
    });
  });
  return out;
}

at::Tensor block_pad_scatter_cpu(const at::Tensor& grad_in, at::IntArrayRef row_bounds, at::IntArrayRef col_bounds,
                                 at::IntArrayRef padding, c10::string_view mode_name, int64_t align, int64_t height,
                                 int64_t width) {
  TORCH_CHECK(grad_in.dim() == 4, "grad must be 4-D, got ", grad_in.dim(), "-D");
  const PadMode mode = parse_mode(std::string(mode_name));
  const Padding pad = parse_padding(padding.vec());
  const auto row_map = axis_map(row_bounds.vec(), height, pad.top, pad.bottom, mode, align, "row");
  const auto col_map = axis_map(col_bounds.vec(), width, pad.left, pad.right, mode, align, "col");
  const int64_t hc = static_cast<int64_t>(row_map.size()), wc = static_cast<int64_t>(col_map.size());
  TORCH_CHECK(grad_in.size(2) == hc && grad_in.size(3) == wc, "grad must have the canvas size ", hc, "x", wc,
              ", got ", grad_in.sizes());
  std::vector<int64_t> row_off, row_idx, col_off, col_idx;
  invert_map(row_map, height, row_off, row_idx);
  invert_map(col_map, width, col_off, col_idx);
  const at::Tensor grad = grad_in.contiguous();
  const int64_t planes = grad.size(0) * grad.size(1);
  at::Tensor out = at::empty({grad.size(0), grad.size(1), height, width}, grad.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "block_pad_scatter_cpu", [&] {
    using acc_t = at::acc_type<scalar_t, false>;
    const scalar_t* src = grad.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        for (int64_t y = 0; y < height; ++y) {
          for (int64_t x = 0; x < width; ++x) {
            acc_t sum = acc_t(0);
            for (int64_t a = row_off[y]; a < row_off[y + 1]; ++a) {
              const scalar_t* g_row = src + (p * hc + row_idx[a]) * wc;
              for (int64_t b = col_off[x]; b < col_off[x + 1]; ++b) sum += static_cast<acc_t>(g_row[col_idx[b]]);
            }
            dst[(p * height + y) * width + x] = static_cast<scalar_t>(sum);
          }
        }
      }
    });
  });
  return out;
}

}  // namespace
}  // namespace fuseops_blockpad

TORCH_LIBRARY_IMPL(fuseops_ext, CPU, m) {
  m.impl("block_pad_gather", &fuseops_blockpad::block_pad_gather_cpu);
  m.impl("block_pad_scatter", &fuseops_blockpad::block_pad_scatter_cpu);
}
