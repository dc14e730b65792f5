// Geometry of one fuse_conv2d call and the input checks every backend shares (the CPU
// kernels in this folder and csrc/cuda/fuse_conv_cuda.cu).
//
//   row part: output channels [0, c_row) read x channels [0, c_row) and convolve along W
//     with a 1xK filter, padding (0, p);
//   column part: output channels [c_row, c_row + c_col) read x channels
//     [col_start, col_start + c_col) and convolve along H with a Kx1 filter, padding (p, 0).
//     col_start is c_row for "half" and 0 for "full".
//   Stride s applies in both directions, dilation d along the conv axis.
// (fuseops/fuse_conv/geometry.py is the definition this mirrors.)
//
// Python validates every argument for users (fuseops/fuse_conv/api.py); the ops
// torch.ops.fuseops_ext.fuse_conv2d_* can still be called directly, so this checks what
// the kernels' indexing relies on: ranks and shapes, that the weights and bias have x's
// dtype and device (the kernels read them through x's scalar type), the channel split,
// stride/dilation >= 1 and padding >= 0, and an output that exists and is the same for
// both parts.  What only one backend needs (the device kind, the dtypes it is built
// for, contiguity on the CPU, 32-bit axis limits on CUDA) its entry point checks.
#pragma once

#include "common/conv_size.h"

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>

namespace fuseops::fuse_conv {

struct Geometry {
  int64_t batch, channels, height, width, kernel;
  int64_t c_row, c_col, col_start, stride, padding, dilation, out_height, out_width;
  bool full;
  int64_t out_channels() const { return c_row + c_col; }
};

// fn names the op in the messages.
inline Geometry check_geometry(const char* fn, const at::Tensor& x, const at::Tensor& weight_row,
                               const at::Tensor& weight_col, const std::optional<at::Tensor>& bias, bool full,
                               int64_t stride, int64_t padding, int64_t dilation) {
  TORCH_CHECK(x.dim() == 4, fn, ": x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK(weight_row.dim() == 4 && weight_row.size(1) == 1 && weight_row.size(2) == 1, fn,
              ": weight_row must have shape (C_r, 1, 1, K), got ", weight_row.sizes());
  const int64_t kernel = weight_row.size(3);
  TORCH_CHECK(kernel >= 1, fn, ": K must be >= 1, got ", kernel);
  TORCH_CHECK(weight_col.dim() == 4 && weight_col.size(1) == 1 && weight_col.size(2) == kernel &&
                  weight_col.size(3) == 1,
              fn, ": weight_col must have shape (C_c, 1, ", kernel, ", 1), got ", weight_col.sizes());
  for (const at::Tensor* t : {&weight_row, &weight_col}) {
    TORCH_CHECK(t->device() == x.device() && t->scalar_type() == x.scalar_type(), fn,
                ": weights must match x's dtype ", x.scalar_type(), " and device ", x.device(), ", got ",
                t->scalar_type(), " on ", t->device());
  }
  TORCH_CHECK(stride >= 1, fn, ": stride must be >= 1, got ", stride);
  TORCH_CHECK(dilation >= 1, fn, ": dilation must be >= 1, got ", dilation);
  TORCH_CHECK(padding >= 0, fn, ": padding must be >= 0, got ", padding);

  Geometry g;
  g.batch = x.size(0);
  g.channels = x.size(1);
  g.height = x.size(2);
  g.width = x.size(3);
  g.kernel = kernel;
  g.c_row = weight_row.size(0);
  g.c_col = weight_col.size(0);
  g.col_start = full ? 0 : g.c_row;
  g.full = full;
  g.stride = stride;
  g.padding = padding;
  g.dilation = dilation;
  if (full) {
    TORCH_CHECK(g.c_row == g.channels && g.c_col == g.channels, fn,
                ": full variant needs C filters in each weight, got ", g.c_row, " and ", g.c_col, " for C=",
                g.channels);
  } else {
    TORCH_CHECK(g.c_row + g.c_col == g.channels, fn, ": half variant needs C_r + C_c == C, got ", g.c_row,
                " + ", g.c_col, " for C=", g.channels);
  }
  const int64_t row_h = conv_out_size(g.height, 1, stride, 0, 1);
  const int64_t row_w = conv_out_size(g.width, kernel, stride, padding, dilation);
  const int64_t col_h = conv_out_size(g.height, kernel, stride, padding, dilation);
  const int64_t col_w = conv_out_size(g.width, 1, stride, 0, 1);
  if (g.c_row > 0 && g.c_col > 0) {
    TORCH_CHECK(row_h == col_h && row_w == col_w, fn, ": the row part's output (", row_h, ", ", row_w,
                ") and the column part's output (", col_h, ", ", col_w,
                ") differ in size; choose 2*padding == dilation*(K-1)");
  }
  g.out_height = g.c_row > 0 || g.c_col == 0 ? row_h : col_h;
  g.out_width = g.c_row > 0 || g.c_col == 0 ? row_w : col_w;
  TORCH_CHECK(g.out_height > 0 && g.out_width > 0, fn, ": input too small, output would be ", g.out_height,
              "x", g.out_width);
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK(b.dim() == 1 && b.size(0) == g.out_channels(), fn, ": bias must have shape (",
                g.out_channels(), ",), got ", b.sizes());
    TORCH_CHECK(b.device() == x.device() && b.scalar_type() == x.scalar_type(), fn,
                ": bias must match x's dtype and device");
  }
  return g;
}

// grad_out of the backward: the forward's output shape, x's dtype and device.
inline void check_grad_out(const char* fn, const at::Tensor& grad_out, const at::Tensor& x, const Geometry& g) {
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == g.batch && grad_out.size(1) == g.out_channels() &&
                  grad_out.size(2) == g.out_height && grad_out.size(3) == g.out_width,
              fn, ": grad_out must have shape (", g.batch, ", ", g.out_channels(), ", ", g.out_height, ", ",
              g.out_width, "), got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type() && grad_out.device() == x.device(), fn,
              ": grad_out must match x's dtype and device");
}

}  // namespace fuseops::fuse_conv
