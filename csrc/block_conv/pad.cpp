// block_pad_forward / block_pad_backward on the CPU: the gather of equal-size padded
// blocks into a batch, and its adjoint, as ops of their own.
#include "block_conv/buffers.h"
#include "block_conv/geometry.h"
#include "block_conv/ops.h"
#include "block_conv/tiles.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/zeros.h>

namespace fuseops::block_conv {

// block_pad: every block the same size (the caller checks); x (N, C, H, W) ->
// (N*nh*nw, C, bh+2ph, bw+2pw) ordered (n, block row, block column).
at::Tensor block_pad_forward(const at::Tensor& x_in, c10::IntArrayRef row_bounds, c10::IntArrayRef col_bounds,
                            c10::IntArrayRef padding, c10::string_view padding_mode) {
  TORCH_CHECK(x_in.device().is_cpu(), "block_pad_forward (cpu): x must be a CPU tensor");
  TORCH_CHECK(x_in.dim() == 4, "block_pad_forward: x must be 4-D, got ", x_in.dim(), "-D");
  check_list(padding, "padding", 0);
  const PadMode mode = parse_mode(std::string(padding_mode));
  // Kernel 1, stride 1, dilation 1: every block yields its own padded size.
  auto rows = size_classes(row_bounds.vec(), x_in.size(2), 1, 1, padding[0], 1, mode, "H");
  auto cols = size_classes(col_bounds.vec(), x_in.size(3), 1, 1, padding[1], 1, mode, "W");
  TORCH_CHECK(rows.size() == 1 && cols.size() == 1, "block_pad_forward needs blocks of one size");
  // NCHW and not from the scratch workspace: the result is returned to the caller.
  return gather_class(x_in, rows[0], cols[0], padding[1], at::MemoryFormat::Contiguous, /*scratch=*/false);
}

at::Tensor block_pad_backward(const at::Tensor& grad_in, c10::IntArrayRef x_sizes, c10::IntArrayRef row_bounds,
                             c10::IntArrayRef col_bounds, c10::IntArrayRef padding, c10::string_view padding_mode) {
  TORCH_CHECK(grad_in.device().is_cpu(), "block_pad_backward (cpu): grad must be a CPU tensor");
  TORCH_CHECK(x_sizes.size() == 4, "block_pad_backward: x_sizes must have 4 entries");
  check_list(padding, "padding", 0);
  const PadMode mode = parse_mode(std::string(padding_mode));
  auto rows = size_classes(row_bounds.vec(), x_sizes[2], 1, 1, padding[0], 1, mode, "H");
  auto cols = size_classes(col_bounds.vec(), x_sizes[3], 1, 1, padding[1], 1, mode, "W");
  TORCH_CHECK(rows.size() == 1 && cols.size() == 1, "block_pad_backward needs blocks of one size");
  const int64_t nb = static_cast<int64_t>(rows[0].in_starts.size() * cols[0].in_starts.size());
  TORCH_CHECK(grad_in.dim() == 4 && grad_in.size(0) == x_sizes[0] * nb && grad_in.size(1) == x_sizes[1] &&
                  grad_in.size(2) == static_cast<int64_t>(rows[0].table.size()) &&
                  grad_in.size(3) == static_cast<int64_t>(cols[0].table.size()),
              "block_pad_backward: grad has shape ", grad_in.sizes(), " which does not match the padded blocks");
  const at::Tensor& grad = grad_in;
  at::Tensor grad_x = at::zeros(x_sizes, grad.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, grad.scalar_type(), "block_pad_backward",
                                 [&] { scatter_padded<scalar_t>(grad, grad_x, rows[0], cols[0], padding[1]); });
  return grad_x;
}

}  // namespace fuseops::block_conv
