// Size classes and input checks of the block conv ops (see geometry.h).
#include "block_conv/geometry.h"

#include <algorithm>
#include <utility>

namespace fuseops::block_conv {

PadMode parse_mode(const std::string& mode) {
  if (mode == "constant") return PadMode::kConstant;
  if (mode == "replicate") return PadMode::kReplicate;
  if (mode == "reflect") return PadMode::kReflect;
  TORCH_CHECK(false, "padding_mode must be constant, replicate or reflect, got ", mode);
}

namespace {

// Where padded coordinate t (0 <= t < size + 2*pad) of a block of `size` pixels reads
// from, relative to the block's start; -1 means a zero (constant padding).
int64_t source_index(int64_t t, int64_t size, int64_t pad, PadMode mode) {
  int64_t u = t - pad;
  if (u >= 0 && u < size) return u;
  switch (mode) {
    case PadMode::kConstant:
      return -1;
    case PadMode::kReplicate:
      return u < 0 ? 0 : size - 1;
    case PadMode::kReflect:
      return u < 0 ? -u : 2 * (size - 1) - u;
  }
  return -1;
}

// Sum of the blocks' output sizes along one dimension: the stitched map's size.
int64_t total_out(const std::vector<int64_t>& bounds, int64_t kernel, int64_t stride, int64_t pad,
                  int64_t dilation) {
  int64_t total = 0;
  for (size_t i = 0; i + 1 < bounds.size(); ++i) {
    total += conv_out_size(bounds[i + 1] - bounds[i], kernel, stride, pad, dilation);
  }
  return total;
}

}  // namespace

std::vector<SizeClass> size_classes(const std::vector<int64_t>& bounds, int64_t extent, int64_t kernel,
                                    int64_t stride, int64_t pad, int64_t dilation, PadMode mode,
                                    const char* dim) {
  TORCH_CHECK(bounds.size() >= 2, "block bounds along ", dim, " need at least two entries");
  TORCH_CHECK(bounds.front() == 0 && bounds.back() == extent, "block bounds along ", dim,
              " must run from 0 to the map size ", extent);
  std::vector<SizeClass> classes;
  int64_t out_start = 0;
  for (size_t i = 0; i + 1 < bounds.size(); ++i) {
    const int64_t size = bounds[i + 1] - bounds[i];
    TORCH_CHECK(size > 0, "block bounds along ", dim, " must increase strictly");
    TORCH_CHECK(mode != PadMode::kReflect || pad < size, "reflect padding needs padding < every block's size; "
                "padding along ", dim, " is ", pad, " and a block has ", size, " pixels");
    const int64_t outs = conv_out_size(size, kernel, stride, pad, dilation);
    TORCH_CHECK(outs >= 1, "a block of ", size, " pixels along ", dim, " is too small for the kernel");
    auto it = std::find_if(classes.begin(), classes.end(), [&](const SizeClass& c) { return c.size == size; });
    if (it == classes.end()) {
      SizeClass cls;
      cls.size = size;
      for (int64_t t = 0; t < size + 2 * pad; ++t) cls.table.push_back(source_index(t, size, pad, mode));
      classes.push_back(std::move(cls));
      it = classes.end() - 1;
    }
    it->in_starts.push_back(bounds[i]);
    it->out_starts.push_back(out_start);
    out_start += outs;
  }
  return classes;
}

void check_list(c10::IntArrayRef values, const char* name, int64_t minimum) {
  TORCH_CHECK(values.size() == 2, name, " must have two entries (h, w), got ", values.size());
  TORCH_CHECK(values[0] >= minimum && values[1] >= minimum, name, " entries must be >= ", minimum);
}

Geometry make_geometry(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                       c10::IntArrayRef row_bounds, c10::IntArrayRef col_bounds, const std::string& padding_mode) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "block_conv2d (cpu): x and weight must be CPU tensors");
  TORCH_CHECK(x.dim() == 4, "block_conv2d: x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK(weight.dim() == 4, "block_conv2d: weight must be 4-D, got ", weight.dim(), "-D");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "block_conv2d: x and weight dtypes differ");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble || x.scalar_type() == at::kBFloat16,
              "block_conv2d (cpu): dtype must be float32, float64 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(groups >= 1 && x.size(1) % groups == 0 && weight.size(0) % groups == 0 &&
                  weight.size(1) * groups == x.size(1),
              "block_conv2d: channels do not match groups");
  TORCH_CHECK(weight.size(2) >= 1 && weight.size(3) >= 1, "block_conv2d: kernel sizes must be >= 1, got ",
              weight.sizes());
  if (bias.has_value() && bias->defined()) {
    // The direct depthwise kernels read bias[c] for every output channel themselves.
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "block_conv2d: bias must have shape (",
                weight.size(0), ",), got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type() && bias->device() == x.device(),
                "block_conv2d: bias must match x's dtype and device");
  }
  check_list(stride, "stride", 1);
  check_list(padding, "padding", 0);
  check_list(dilation, "dilation", 1);
  Geometry g;
  g.mode = parse_mode(padding_mode);
  g.rows = size_classes(row_bounds.vec(), x.size(2), weight.size(2), stride[0], padding[0], dilation[0], g.mode, "H");
  g.cols = size_classes(col_bounds.vec(), x.size(3), weight.size(3), stride[1], padding[1], dilation[1], g.mode, "W");
  g.out_h = total_out(row_bounds.vec(), weight.size(2), stride[0], padding[0], dilation[0]);
  g.out_w = total_out(col_bounds.vec(), weight.size(3), stride[1], padding[1], dilation[1]);
  return g;
}

}  // namespace fuseops::block_conv
