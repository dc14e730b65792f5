// The CPU entry points of the block conv ops (forward.cpp, backward.cpp, pad.cpp),
// registered in ops.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/string_view.h>

#include <optional>
#include <tuple>

namespace fuseops::block_conv {

at::Tensor block_conv2d_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                int64_t groups, c10::IntArrayRef row_bounds, c10::IntArrayRef col_bounds,
                                c10::string_view padding_mode);

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_conv2d_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
    c10::IntArrayRef row_bounds, c10::IntArrayRef col_bounds, c10::string_view padding_mode);

at::Tensor block_pad_forward(const at::Tensor& x, c10::IntArrayRef row_bounds, c10::IntArrayRef col_bounds,
                             c10::IntArrayRef padding, c10::string_view padding_mode);

at::Tensor block_pad_backward(const at::Tensor& grad, c10::IntArrayRef x_sizes, c10::IntArrayRef row_bounds,
                              c10::IntArrayRef col_bounds, c10::IntArrayRef padding, c10::string_view padding_mode);


}  // namespace fuseops::block_conv
