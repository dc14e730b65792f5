// Block convolution on the CPU: gather the padded blocks, one ATen conv per block size,
// scatter the output blocks into place.
//
// Every block is padded with its own values only, so a blocked conv is an ordinary conv
// (padding 0) over a batch of padded blocks.  Blocks of equal size (all of them when the
// map divides; up to four size classes with ragged last blocks or hierarchical spans that
// differ by one pixel) are gathered in one pass into an (N*blocks, C, bh+2ph, bw+2pw)
// buffer and handed to at::convolution as one batch, so the conv itself runs at the speed
// of the plain conv and the cost over it is the gather and the output scatter.
//
// The backward re-gathers x, gathers grad_out per block, runs at::convolution_backward
// per size class and scatters the padded-block gradient back onto grad_x: each block's
// padding maps only onto that block's own pixels, so blocks never write to the same
// element of grad_x and the scatter is race-free and deterministic (fixed order within
// a block, no atomics).
//
// Ops (schemas in TORCH_LIBRARY_FRAGMENT(fuseops_ext)):
//   block_conv2d_forward, block_conv2d_backward, block_pad_gather, block_pad_scatter.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace {

enum class PadMode { kConstant, kReplicate, kReflect };

PadMode parse_mode(const std::string& mode) {
  if (mode == "constant") return PadMode::kConstant;
  if (mode == "replicate") return PadMode::kReplicate;
  if (mode == "reflect") return PadMode::kReflect;
  TORCH_CHECK(false, "padding_mode must be constant, replicate or reflect, got ", mode);
}

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

// One dimension's blocks of one size: their starts in the input and in the output.
struct SizeClass {
  int64_t size = 0;                 // block pixels
  std::vector<int64_t> in_starts;   // block starts in x
  std::vector<int64_t> out_starts;  // block starts in the output
  std::vector<int64_t> table;       // padded coordinate -> source offset in the block (-1: zero)
};

int64_t out_size(int64_t size, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  return (size + 2 * pad - dilation * (kernel - 1) - 1) / stride + 1;
}

// Splits one dimension's block bounds into size classes, in order of first appearance.
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
    const int64_t outs = out_size(size, kernel, stride, pad, dilation);
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

int64_t total_out(const std::vector<int64_t>& bounds, int64_t kernel, int64_t stride, int64_t pad,
                  int64_t dilation) {
  int64_t total = 0;
  for (size_t i = 0; i + 1 < bounds.size(); ++i) total += out_size(bounds[i + 1] - bounds[i], kernel, stride, pad, dilation);
  return total;
}

// Padded blocks of one (row class, col class) pair:
//   x (N, C, H, W) contiguous -> buf (N, nr, nc, C, bh+2ph, bw+2pw) contiguous.
template <typename scalar_t>
void gather_padded(const at::Tensor& x, at::Tensor& buf, const SizeClass& rows, const SizeClass& cols,
                   int64_t pad_w) {
  const int64_t n_batch = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
  const int64_t nr = rows.in_starts.size(), nc = cols.in_starts.size();
  const int64_t ph_total = rows.table.size(), pw_total = cols.table.size();
  const int64_t bw = cols.size;
  const scalar_t* src = x.const_data_ptr<scalar_t>();
  scalar_t* dst = buf.mutable_data_ptr<scalar_t>();
  const int64_t planes = n_batch * nr * nc * channels;
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t c = p % channels;
      const int64_t j = (p / channels) % nc;
      const int64_t i = (p / (channels * nc)) % nr;
      const int64_t n = p / (channels * nc * nr);
      const scalar_t* plane = src + (n * channels + c) * height * width;
      const int64_t r0 = rows.in_starts[i], c0 = cols.in_starts[j];
      scalar_t* out = dst + p * ph_total * pw_total;
      for (int64_t t = 0; t < ph_total; ++t, out += pw_total) {
        const int64_t sr = rows.table[t];
        if (sr < 0) {
          std::fill(out, out + pw_total, scalar_t(0));
          continue;
        }
        const scalar_t* line = plane + (r0 + sr) * width + c0;
        // Interior: one contiguous copy; the padding columns go through the table.
        std::memcpy(out + pad_w, line, sizeof(scalar_t) * bw);
        for (int64_t u = 0; u < pad_w; ++u) {
          const int64_t left = cols.table[u], right = cols.table[pad_w + bw + u];
          out[u] = left < 0 ? scalar_t(0) : line[left];
          out[pad_w + bw + u] = right < 0 ? scalar_t(0) : line[right];
        }
      }
    }
  });
}

// The adjoint of gather_padded: grad_x[block] += every padded-block gradient that read it.
// grad_x must hold zeros on the blocks' pixels.  Blocks are disjoint, so planes run in
// parallel without races; within a plane the order is fixed (deterministic).
template <typename scalar_t>
void scatter_padded(const at::Tensor& grad_buf, at::Tensor& grad_x, const SizeClass& rows, const SizeClass& cols,
                    int64_t pad_w) {
  const int64_t n_batch = grad_x.size(0), channels = grad_x.size(1), height = grad_x.size(2),
                width = grad_x.size(3);
  const int64_t nr = rows.in_starts.size(), nc = cols.in_starts.size();
  const int64_t ph_total = rows.table.size(), pw_total = cols.table.size();
  const int64_t bw = cols.size;
  const scalar_t* src = grad_buf.const_data_ptr<scalar_t>();
  scalar_t* dst = grad_x.mutable_data_ptr<scalar_t>();
  const int64_t planes = n_batch * nr * nc * channels;
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t c = p % channels;
      const int64_t j = (p / channels) % nc;
      const int64_t i = (p / (channels * nc)) % nr;
      const int64_t n = p / (channels * nc * nr);
      scalar_t* plane = dst + (n * channels + c) * height * width;
      const int64_t r0 = rows.in_starts[i], c0 = cols.in_starts[j];
      const scalar_t* in = src + p * ph_total * pw_total;
      for (int64_t t = 0; t < ph_total; ++t, in += pw_total) {
        const int64_t sr = rows.table[t];
        if (sr < 0) continue;
        scalar_t* line = plane + (r0 + sr) * width + c0;
        for (int64_t u = 0; u < bw; ++u) line[u] = static_cast<acc_t>(line[u]) + static_cast<acc_t>(in[pad_w + u]);
        for (int64_t u = 0; u < pad_w; ++u) {
          const int64_t left = cols.table[u], right = cols.table[pad_w + bw + u];
          if (left >= 0) line[left] = static_cast<acc_t>(line[left]) + static_cast<acc_t>(in[u]);
          if (right >= 0) line[right] = static_cast<acc_t>(line[right]) + static_cast<acc_t>(in[pad_w + bw + u]);
        }
      }
    }
  });
}

// Output blocks <-> stitched map.  blocks: (N, nr, nc, C, oh, ow); full: (N, C, OH, OW).
// to_full=true writes the blocks into the map (forward); false reads them out (backward).
template <typename scalar_t>
void move_blocks(at::Tensor& blocks, at::Tensor& full, const SizeClass& rows, const SizeClass& cols, int64_t oh,
                 int64_t ow, bool to_full) {
  const int64_t n_batch = full.size(0), channels = full.size(1), height = full.size(2), width = full.size(3);
  const int64_t nr = rows.in_starts.size(), nc = cols.in_starts.size();
  scalar_t* blk = blocks.mutable_data_ptr<scalar_t>();
  scalar_t* map = full.mutable_data_ptr<scalar_t>();
  const int64_t planes = n_batch * nr * nc * channels;
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t c = p % channels;
      const int64_t j = (p / channels) % nc;
      const int64_t i = (p / (channels * nc)) % nr;
      const int64_t n = p / (channels * nc * nr);
      scalar_t* plane = map + ((n * channels + c) * height + rows.out_starts[i]) * width + cols.out_starts[j];
      scalar_t* block = blk + p * oh * ow;
      for (int64_t r = 0; r < oh; ++r) {
        if (to_full) {
          std::memcpy(plane + r * width, block + r * ow, sizeof(scalar_t) * ow);
        } else {
          std::memcpy(block + r * ow, plane + r * width, sizeof(scalar_t) * ow);
        }
      }
    }
  });
}

struct Geometry {
  std::vector<SizeClass> rows, cols;
  int64_t out_h = 0, out_w = 0;
  PadMode mode = PadMode::kConstant;
};

void check_list(c10::IntArrayRef values, const char* name, int64_t minimum) {
  TORCH_CHECK(values.size() == 2, name, " must have two entries (h, w), got ", values.size());
  TORCH_CHECK(values[0] >= minimum && values[1] >= minimum, name, " entries must be >= ", minimum);
}

Geometry make_geometry(const at::Tensor& x, const at::Tensor& weight, c10::IntArrayRef stride,
                       c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
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

at::Tensor gather_class(const at::Tensor& x, const SizeClass& rows, const SizeClass& cols, int64_t pad_w) {
  const int64_t nr = rows.in_starts.size(), nc = cols.in_starts.size();
  at::Tensor buf = at::empty({x.size(0) * nr * nc, x.size(1), static_cast<int64_t>(rows.table.size()),
                              static_cast<int64_t>(cols.table.size())},
                             x.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "block_gather_padded",
                                 [&] { gather_padded<scalar_t>(x, buf, rows, cols, pad_w); });
  return buf;
}

at::Tensor block_conv2d_forward(const at::Tensor& x_in, const at::Tensor& weight_in, const c10::optional<at::Tensor>& bias,
                                c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                int64_t groups, c10::IntArrayRef row_bounds, c10::IntArrayRef col_bounds,
                                c10::string_view padding_mode) {
  const Geometry g = make_geometry(x_in, weight_in, stride, padding, dilation, groups, row_bounds, col_bounds,
                                   std::string(padding_mode));
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  at::Tensor out = at::empty({x.size(0), weight.size(0), g.out_h, g.out_w}, x.options());
  const bool single_class = g.rows.size() == 1 && g.cols.size() == 1;
  for (const auto& rows : g.rows) {
    for (const auto& cols : g.cols) {
      at::Tensor buf = gather_class(x, rows, cols, padding[1]);
      at::Tensor y = at::convolution(buf, weight, bias, stride, {0, 0}, dilation, false, {0, 0}, groups).contiguous();
      const int64_t oh = y.size(2), ow = y.size(3);
      if (single_class && rows.in_starts.size() == 1 && cols.in_starts.size() == 1) return y;  // one block
      AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "block_scatter_out",
                                     [&] { move_blocks<scalar_t>(y, out, rows, cols, oh, ow, true); });
    }
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_conv2d_backward(
    const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& weight_in,
    const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride, c10::IntArrayRef padding,
    c10::IntArrayRef dilation, int64_t groups, c10::IntArrayRef row_bounds, c10::IntArrayRef col_bounds,
    c10::string_view padding_mode) {
  (void)bias;  // grad_bias does not depend on it
  const Geometry g = make_geometry(x_in, weight_in, stride, padding, dilation, groups, row_bounds, col_bounds,
                                   std::string(padding_mode));
  TORCH_CHECK(grad_out_in.dim() == 4 && grad_out_in.size(0) == x_in.size(0) &&
                  grad_out_in.size(1) == weight_in.size(0) && grad_out_in.size(2) == g.out_h &&
                  grad_out_in.size(3) == g.out_w,
              "block_conv2d_backward: grad_out has shape ", grad_out_in.sizes(), ", expected (", x_in.size(0), ", ",
              weight_in.size(0), ", ", g.out_h, ", ", g.out_w, ")");
  TORCH_CHECK(grad_out_in.scalar_type() == x_in.scalar_type(), "block_conv2d_backward: grad_out dtype differs from x");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  at::Tensor grad_out = grad_out_in.contiguous();
  at::Tensor grad_x = at::zeros_like(x, at::MemoryFormat::Contiguous);
  at::Tensor grad_weight;
  const bool one_block = row_bounds.size() == 2 && col_bounds.size() == 2;
  for (const auto& rows : g.rows) {
    for (const auto& cols : g.cols) {
      at::Tensor buf = gather_class(x, rows, cols, padding[1]);
      const int64_t kh = weight.size(2), kw = weight.size(3);
      const int64_t oh = out_size(rows.size, kh, stride[0], padding[0], dilation[0]);
      const int64_t ow = out_size(cols.size, kw, stride[1], padding[1], dilation[1]);
      at::Tensor grad_blocks;
      if (one_block) {
        grad_blocks = grad_out;
      } else {
        grad_blocks = at::empty({buf.size(0), weight.size(0), oh, ow}, grad_out.options());
        AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "block_gather_out",
                                       [&] { move_blocks<scalar_t>(grad_blocks, grad_out, rows, cols, oh, ow, false); });
      }
      auto grads = at::convolution_backward(grad_blocks, buf, weight, c10::nullopt, stride, {0, 0}, dilation, false,
                                            {0, 0}, groups, {true, true, false});
      at::Tensor grad_buf = std::get<0>(grads).contiguous();
      at::Tensor gw = std::get<1>(grads);
      grad_weight = grad_weight.defined() ? grad_weight.add_(gw) : gw.contiguous();
      AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "block_scatter_padded",
                                     [&] { scatter_padded<scalar_t>(grad_buf, grad_x, rows, cols, padding[1]); });
    }
  }
  at::Tensor grad_bias = grad_out.sum({0, 2, 3});
  return {grad_x, grad_weight.contiguous(), grad_bias};
}

// block_pad: every block the same size (the caller checks); x (N, C, H, W) ->
// (N*nh*nw, C, bh+2ph, bw+2pw) ordered (n, block row, block column).
at::Tensor block_pad_gather(const at::Tensor& x_in, c10::IntArrayRef row_bounds, c10::IntArrayRef col_bounds,
                            c10::IntArrayRef padding, c10::string_view padding_mode) {
  TORCH_CHECK(x_in.device().is_cpu(), "block_pad_gather (cpu): x must be a CPU tensor");
  TORCH_CHECK(x_in.dim() == 4, "block_pad_gather: x must be 4-D, got ", x_in.dim(), "-D");
  check_list(padding, "padding", 0);
  const PadMode mode = parse_mode(std::string(padding_mode));
  // Kernel 1, stride 1, dilation 1: every block yields its own padded size.
  auto rows = size_classes(row_bounds.vec(), x_in.size(2), 1, 1, padding[0], 1, mode, "H");
  auto cols = size_classes(col_bounds.vec(), x_in.size(3), 1, 1, padding[1], 1, mode, "W");
  TORCH_CHECK(rows.size() == 1 && cols.size() == 1, "block_pad_gather needs blocks of one size");
  return gather_class(x_in.contiguous(), rows[0], cols[0], padding[1]);
}

at::Tensor block_pad_scatter(const at::Tensor& grad_in, c10::IntArrayRef x_sizes, c10::IntArrayRef row_bounds,
                             c10::IntArrayRef col_bounds, c10::IntArrayRef padding, c10::string_view padding_mode) {
  TORCH_CHECK(grad_in.device().is_cpu(), "block_pad_scatter (cpu): grad must be a CPU tensor");
  TORCH_CHECK(x_sizes.size() == 4, "block_pad_scatter: x_sizes must have 4 entries");
  check_list(padding, "padding", 0);
  const PadMode mode = parse_mode(std::string(padding_mode));
  auto rows = size_classes(row_bounds.vec(), x_sizes[2], 1, 1, padding[0], 1, mode, "H");
  auto cols = size_classes(col_bounds.vec(), x_sizes[3], 1, 1, padding[1], 1, mode, "W");
  TORCH_CHECK(rows.size() == 1 && cols.size() == 1, "block_pad_scatter needs blocks of one size");
  const int64_t nb = static_cast<int64_t>(rows[0].in_starts.size() * cols[0].in_starts.size());
  TORCH_CHECK(grad_in.dim() == 4 && grad_in.size(0) == x_sizes[0] * nb && grad_in.size(1) == x_sizes[1] &&
                  grad_in.size(2) == static_cast<int64_t>(rows[0].table.size()) &&
                  grad_in.size(3) == static_cast<int64_t>(cols[0].table.size()),
              "block_pad_scatter: grad has shape ", grad_in.sizes(), " which does not match the padded blocks");
  at::Tensor grad = grad_in.contiguous();
  at::Tensor grad_x = at::zeros(x_sizes, grad.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, grad.scalar_type(), "block_pad_scatter",
                                 [&] { scatter_padded<scalar_t>(grad, grad_x, rows[0], cols[0], padding[1]); });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fuseops_ext, m) {
  m.def(
      "block_conv2d_forward(Tensor x, Tensor weight, Tensor? bias, int[] stride, int[] padding, int[] dilation, "
      "int groups, int[] row_bounds, int[] col_bounds, str padding_mode) -> Tensor");
  m.def(
      "block_conv2d_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor? bias, int[] stride, int[] padding, "
      "int[] dilation, int groups, int[] row_bounds, int[] col_bounds, str padding_mode) -> (Tensor, Tensor, Tensor)");
  m.def("block_pad_gather(Tensor x, int[] row_bounds, int[] col_bounds, int[] padding, str padding_mode) -> Tensor");
  m.def(
      "block_pad_scatter(Tensor grad, int[] x_sizes, int[] row_bounds, int[] col_bounds, int[] padding, "
      "str padding_mode) -> Tensor");
}

TORCH_LIBRARY_IMPL(fuseops_ext, CPU, m) {
  m.impl("block_conv2d_forward", &block_conv2d_forward);
  m.impl("block_conv2d_backward", &block_conv2d_backward);
  m.impl("block_pad_gather", &block_pad_gather);
  m.impl("block_pad_scatter", &block_pad_scatter);
}
