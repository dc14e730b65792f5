// FuSe convolution on channels_last (NHWC) tensors, CPU: what fuse_conv2d_forward and
// fuse_conv2d_backward run for x stored channels_last (ops.cpp picks by layout).  They
// return the output and grad_x in channels_last.  The geometry and its checks are
// geometry.h's.
//
// In NHWC a pixel's channels are adjacent, and a depthwise tap multiplies them by one
// weight per channel, so every inner loop here runs over channels: unit-stride in x, in
// the output and in the weights, which are transposed to (K, C) once per call.  A network
// kept in channels_last (as Inductor keeps its convolutions) then needs no layout copy
// around the op.
//
// Forward: float and double with 3, 5 or 7 taps run forward_rows_blocked, which keeps a
// block of channels' taps in registers along an output row; other dtypes and tap counts
// run RowTaps, one pixel at a time.
//
// Backward: the activation's derivative is applied once into a float buffer of output
// size (without an activation, float and double read grad_out in place); grad_x gathers,
// per input pixel, the outputs that read it (no write races, so it runs parallel over
// input rows); the weight and bias gradients are summed per chunk of
// output rows and the chunks are added in a fixed order, so the result does not depend on
// the thread count.  All offsets are int64_t.
#include "fuse_conv/cpu_shared.h"

#include <ATen/Parallel.h>
#include <torch/types.h>

#include <algorithm>
#include <cstring>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

namespace fuseops::fuse_conv {
namespace {

template <typename scalar_t>
using acc_t = acc_type<scalar_t>;

// (C, 1, ., .) weights with K taps -> (K, C) in the accumulation type: one row per tap,
// channels adjacent, as the inner loops read them.
template <typename scalar_t>
std::vector<acc_t<scalar_t>> taps_by_channel(const at::Tensor& weight, int64_t k) {
  const int64_t c = weight.size(0);
  const auto flat = weight.reshape({c, k}).contiguous();
  const scalar_t* src = flat.data_ptr<scalar_t>();
  std::vector<acc_t<scalar_t>> out(static_cast<size_t>(k * c));
  for (int64_t ch = 0; ch < c; ++ch) {
    for (int64_t t = 0; t < k; ++t) out[t * c + ch] = static_cast<acc_t<scalar_t>>(src[ch * k + t]);
  }
  return out;
}

template <typename scalar_t>
std::vector<acc_t<scalar_t>> bias_values(const std::optional<at::Tensor>& bias, int64_t c_out) {
  std::vector<acc_t<scalar_t>> out(static_cast<size_t>(c_out), acc_t<scalar_t>(0));
  if (bias) {
    const auto b = bias->contiguous();
    const scalar_t* src = b.data_ptr<scalar_t>();
    for (int64_t c = 0; c < c_out; ++c) out[c] = static_cast<acc_t<scalar_t>>(src[c]);
  }
  return out;
}

// dst[c] += src[c] * w[c] for c in [0, count): the one inner loop of these kernels, over
// adjacent channels (unit stride everywhere, so the compiler vectorises it).
template <typename in_t, typename acc>
inline void channel_fma(acc* __restrict__ dst, const in_t* __restrict__ src, const acc* __restrict__ w,
                        int64_t count) {
  for (int64_t c = 0; c < count; ++c) dst[c] += static_cast<acc>(src[c]) * w[c];
}

// 32-byte vectors of float and double (GCC/Clang vector extensions): AVX2 registers, or
// the low halves of AVX-512 ones.  Written out because the compiler's own vectorisation of
// the same loops was unstable: the same source ran 2-14x slower in some instantiations,
// with the block's sums spilled to the stack.
typedef float f32x8 __attribute__((vector_size(32)));
typedef double f64x4 __attribute__((vector_size(32)));
template <typename T>
struct Simd;
template <>
struct Simd<float> {
  using type = f32x8;
};
template <>
struct Simd<double> {
  using type = f64x4;
};

template <typename V, typename T>
inline V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));  // an unaligned vector load
  return v;
}

template <typename V, typename T>
inline void store(T* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

// out[c] = init[c] + sum over taps t of src[t][c] * w[t * w_step + c] for c in
// [0, count).  KT > 0 is the tap count at compile time (the tap loop unrolls); KT == 0
// takes it at run time.  Float and double run two vectors of channels at a time, whose
// sums stay in registers across the taps; 16-bit inputs take the plain loop.
template <int KT, typename out_t, typename in_t, typename acc>
inline void pixel_taps(out_t* __restrict__ out, const in_t* const* __restrict__ src, const acc* __restrict__ w,
                       int64_t w_step, const acc* __restrict__ init, int64_t count, int64_t runtime_taps) {
  const int64_t taps = KT > 0 ? KT : runtime_taps;
  int64_t c = 0;
  if constexpr (std::is_same_v<in_t, acc> && std::is_same_v<out_t, acc>) {
    using V = typename Simd<acc>::type;
    constexpr int64_t lanes = sizeof(V) / sizeof(acc);
    for (; c + 2 * lanes <= count; c += 2 * lanes) {
      V a0 = load<V>(init + c), a1 = load<V>(init + c + lanes);
      for (int64_t t = 0; t < taps; ++t) {
        const acc* p = src[t] + c;
        const acc* wt = w + t * w_step + c;
        a0 += load<V>(p) * load<V>(wt);
        a1 += load<V>(p + lanes) * load<V>(wt + lanes);
      }
      store(out + c, a0);
      store(out + c + lanes, a1);
    }
    for (; c + lanes <= count; c += lanes) {
      V a0 = load<V>(init + c);
      for (int64_t t = 0; t < taps; ++t) a0 += load<V>(src[t] + c) * load<V>(w + t * w_step + c);
      store(out + c, a0);
    }
  }
  for (; c < count; ++c) {  // the rest (and every channel of 16-bit inputs)
    acc a = init[c];
    for (int64_t t = 0; t < taps; ++t) a += static_cast<acc>(src[t][c]) * w[t * w_step + c];
    out[c] = static_cast<out_t>(a);
  }
}

// The taps of the output pixels of one row, with every tap in bounds, so the inner loops
// have no branches: the row part reads a copy of its input row (channels [0, c_row), in
// the accumulation type) with `padding` zero pixels on each side; the column part reads
// the input rows in place, or a row of zeros where a tap falls on padding.  One per thread.
template <typename scalar_t>
class RowTaps {
 public:
  using acc = acc_t<scalar_t>;

  RowTaps(const scalar_t* x, const acc* w_row, const acc* w_col, const acc* bias, const Geometry& g)
      : x_(x), w_row_(w_row), w_col_(w_col), bias_(bias), g_(g),
        padded_(static_cast<size_t>(g.c_row > 0 ? (g.width + 2 * g.padding) * g.c_row : 0), acc(0)),
        zero_row_(static_cast<size_t>(g.c_col > 0 ? g.width * g.channels : 0), scalar_t(0)),
        col_rows_(static_cast<size_t>(g.kernel)), row_src_(static_cast<size_t>(g.kernel)),
        col_src_(static_cast<size_t>(g.kernel)) {}

  // Point the taps at output row (n, oh).
  void prepare(int64_t n, int64_t oh) {
    const Geometry& g = g_;
    if (g.c_row > 0) {  // the row part's input row oh * s, padded
      const scalar_t* src = x_ + ((n * g.height + oh * g.stride) * g.width) * g.channels;
      acc* dst = padded_.data() + g.padding * g.c_row;
      for (int64_t iw = 0; iw < g.width; ++iw) {
        for (int64_t c = 0; c < g.c_row; ++c) dst[iw * g.c_row + c] = static_cast<acc>(src[iw * g.channels + c]);
      }
    }
    for (int64_t t = 0; g.c_col > 0 && t < g.kernel; ++t) {
      const int64_t ih = oh * g.stride - g.padding + t * g.dilation;
      col_rows_[t] = (ih < 0 || ih >= g.height) ? zero_row_.data()
                                               : x_ + ((n * g.height + ih) * g.width) * g.channels;
    }
  }

  // out (C_out values) = bias + taps of output pixel ow of the prepared row.
  template <int KT, typename out_t>
  void pixel(out_t* out, int64_t ow) {
    const Geometry& g = g_;
    if (g.c_row > 0) {
      const acc* base = padded_.data() + ow * g.stride * g.c_row;
      for (int64_t t = 0; t < (KT > 0 ? KT : g.kernel); ++t) row_src_[t] = base + t * g.dilation * g.c_row;
      pixel_taps<KT>(out, row_src_.data(), w_row_, g.c_row, bias_, g.c_row, g.kernel);
    }
    if (g.c_col > 0) {
      const int64_t at = ow * g.stride * g.channels + g.col_start;
      for (int64_t t = 0; t < (KT > 0 ? KT : g.kernel); ++t) col_src_[t] = col_rows_[t] + at;
      pixel_taps<KT>(out + g.c_row, col_src_.data(), w_col_, g.c_col, bias_ + g.c_row, g.c_col, g.kernel);
    }
  }

  // The prepared row's sources: the row part's padded input row (index 0 is column -p)
  // and the column part's input row for tap t (a zero row where the tap is on padding).
  const acc* padded_row() const { return padded_.data(); }
  const scalar_t* column_row(int64_t t) const { return col_rows_[t]; }

 private:
  const scalar_t* x_;
  const acc *w_row_, *w_col_, *bias_;
  const Geometry& g_;
  std::vector<acc> padded_;
  std::vector<scalar_t> zero_row_;
  std::vector<const scalar_t*> col_rows_;
  std::vector<const acc*> row_src_;
  std::vector<const scalar_t*> col_src_;
};

// ---------------------------------------------------------------------------------------
// The float and double forward for 3, 5 and 7 taps: one output row at a time, and in it
// one block of NV vectors of channels at a time, whose K taps stay in registers while the
// loop walks the row's pixels.  Per pixel and vector that is K loads, K multiply-adds and
// one store, with no per-pixel set-up.  RowTaps (above, the path for 16-bit inputs and
// other tap counts) reloads the weights and rebuilds its source pointers at every pixel
// and copies the row part's input row first: over MobileNetV2's 17 FuSe-half layers it
// took about 1.3x this path's time (CHANGELOG.md, "whole networks at their targets").
//
// A channel count that is not a multiple of the vector width ends with one more block
// that overlaps the one before it: the overlapping channels are computed again and
// written with the same values.  Fewer channels than one vector take the scalar loop.

// The activation on a vector, with activate<A>'s NaN behaviour (a NaN stays NaN).
template <Act A, typename V>
inline V activate_vector(V v) {
  using T = std::remove_reference_t<decltype(v[0])>;
  const V zero = V{} + T(0), six = V{} + T(6);
  if constexpr (A == Act::Relu) {
    return v < zero ? zero : v;
  } else if constexpr (A == Act::Relu6) {
    v = v < zero ? zero : v;
    return six < v ? six : v;
  } else if constexpr (A == Act::Hardswish) {
    V t = v + T(3);
    t = t < zero ? zero : t;
    t = six < t ? six : t;
    return v * t / six;
  } else {
    return v;
  }
}

// Which taps of output pixel ow read the input (the others sit on padding).
struct EveryTap {  // the interior of a row
  bool operator()(int, int64_t) const { return true; }
};
struct RowPartTaps {  // the row part near the row's ends: tap t reads column ow*s - p + t*d
  int64_t stride, padding, dilation, width;
  bool operator()(int t, int64_t ow) const {
    const int64_t iw = ow * stride - padding + t * dilation;
    return iw >= 0 && iw < width;
  }
};
struct ColumnPartTaps {  // the column part near the top and bottom: tap t reads a whole input row
  const bool* inside;
  bool operator()(int t, int64_t) const { return inside[t]; }
};

// Pixels [lo, hi) of one output row, channels [0, NV * lanes) of the pointers given:
//   out[ow * out_step + c] = act(bias[c] + sum over taps t with taps(t, ow) of
//                                src[offset[t] + ow * pixel_step + c] * w[t * w_step + c]).
template <int KT, int NV, Act A, typename T, typename Taps>
inline void channel_block(T* __restrict__ out, int64_t out_step, const T* __restrict__ src, const int64_t* offset,
                          int64_t pixel_step, const T* __restrict__ w, int64_t w_step, const T* __restrict__ bias,
                          int64_t lo, int64_t hi, Taps taps) {
  using V = typename Simd<T>::type;
  constexpr int64_t lanes = sizeof(V) / sizeof(T);
  V wv[KT][NV];
  for (int t = 0; t < KT; ++t) {
    for (int v = 0; v < NV; ++v) wv[t][v] = load<V>(w + t * w_step + v * lanes);
  }
  for (int64_t ow = lo; ow < hi; ++ow) {
    V a[NV];
    for (int v = 0; v < NV; ++v) a[v] = load<V>(bias + v * lanes);
    for (int t = 0; t < KT; ++t) {
      if (!taps(t, ow)) continue;
      const T* p = src + (offset[t] + ow * pixel_step);  // offset[t] < 0 at the left edge
      for (int v = 0; v < NV; ++v) a[v] += load<V>(p + v * lanes) * wv[t][v];
    }
    for (int v = 0; v < NV; ++v) store(out + ow * out_step + v * lanes, activate_vector<A>(a[v]));
  }
}

// channel_block over `count` channels: blocks of two vectors (one for 7 taps, whose 14
// weight vectors would not fit in 16 registers), then single vectors, the last one
// overlapping; fewer channels than one vector run the same sums one channel at a time.
template <int KT, Act A, typename T, typename Taps>
void part_pixels(T* out, int64_t out_step, const T* src, const int64_t* offset, int64_t pixel_step, const T* w,
                 const T* bias, int64_t count, int64_t lo, int64_t hi, Taps taps) {
  using V = typename Simd<T>::type;
  constexpr int64_t lanes = sizeof(V) / sizeof(T);
  constexpr int NV = KT <= 5 ? 2 : 1;
  if (lo >= hi) return;
  int64_t c = 0;
  for (; c + NV * lanes <= count; c += NV * lanes) {
    channel_block<KT, NV, A>(out + c, out_step, src + c, offset, pixel_step, w + c, count, bias + c, lo, hi, taps);
  }
  if (c < count && count >= lanes) {
    for (; c < count; c += lanes) {
      const int64_t c1 = std::min(c, count - lanes);
      channel_block<KT, 1, A>(out + c1, out_step, src + c1, offset, pixel_step, w + c1, count, bias + c1, lo, hi,
                              taps);
    }
  }
  for (; c < count; ++c) {
    for (int64_t ow = lo; ow < hi; ++ow) {
      T a = bias[c];
      for (int t = 0; t < KT; ++t) {
        if (taps(t, ow)) a += src[(offset[t] + ow * pixel_step) + c] * w[t * count + c];
      }
      out[ow * out_step + c] = activate<A>(a);
    }
  }
}

// Output rows [begin, end) of the float/double forward with KT taps.
template <int KT, Act A, typename T>
void forward_rows_blocked(const T* x, const T* w_row, const T* w_col, const T* bias, T* out, const Geometry& g,
                          int64_t begin, int64_t end) {
  const int64_t c_out = g.out_channels(), pixel_step = g.stride * g.channels;
  int64_t row_offset[KT], col_offset[KT];
  bool col_inside[KT];
  // The row part's pixels whose taps all lie inside the row: ow*s - p >= 0 and
  // ow*s - p + (K-1)d < W.
  int64_t lo, hi;
  valid_range(-g.padding, g.width - (KT - 1) * g.dilation, g.stride, g.out_width, lo, hi);
  for (int t = 0; t < KT; ++t) row_offset[t] = (t * g.dilation - g.padding) * g.channels;
  const RowPartTaps row_edge{g.stride, g.padding, g.dilation, g.width};
  for (int64_t r = begin; r < end; ++r) {
    const int64_t n = r / g.out_height, oh = r % g.out_height;
    T* o = out + r * g.out_width * c_out;
    const T* row_src = x + ((n * g.height + oh * g.stride) * g.width) * g.channels;
    bool all_inside = true;
    for (int t = 0; t < KT; ++t) {
      const int64_t ih = oh * g.stride - g.padding + t * g.dilation;
      col_inside[t] = ih >= 0 && ih < g.height;
      all_inside = all_inside && col_inside[t];
      col_offset[t] = col_inside[t] ? ((n * g.height + ih) * g.width) * g.channels : 0;
    }
    if (g.c_row > 0) {  // the row part reads input row oh * s, with its ends on padding
      part_pixels<KT, A>(o, c_out, row_src, row_offset, pixel_step, w_row, bias, g.c_row, 0, lo, row_edge);
      part_pixels<KT, A>(o, c_out, row_src, row_offset, pixel_step, w_row, bias, g.c_row, lo, hi, EveryTap{});
      part_pixels<KT, A>(o, c_out, row_src, row_offset, pixel_step, w_row, bias, g.c_row, hi, g.out_width,
                         row_edge);
    }
    if (g.c_col > 0) {  // the column part reads K input rows, some of them padding near the top and bottom
      const T* src = x + g.col_start;
      if (all_inside) {
        part_pixels<KT, A>(o + g.c_row, c_out, src, col_offset, pixel_step, w_col, bias + g.c_row, g.c_col, 0,
                           g.out_width, EveryTap{});
      } else {
        part_pixels<KT, A>(o + g.c_row, c_out, src, col_offset, pixel_step, w_col, bias + g.c_row, g.c_col, 0,
                           g.out_width, ColumnPartTaps{col_inside});
      }
    }
  }
}

// Output rows (n, oh) per parallel task: about 16K multiply-adds or more.
int64_t row_grain(const Geometry& g) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, g.out_width * g.out_channels() * g.kernel));
}

template <typename scalar_t, Act A>
void forward_kernel(const at::Tensor& x, const at::Tensor& wr, const at::Tensor& wc,
                    const std::optional<at::Tensor>& bias, at::Tensor& out, const Geometry& g) {
  const auto w_row = taps_by_channel<scalar_t>(wr, g.kernel), w_col = taps_by_channel<scalar_t>(wc, g.kernel);
  const auto b = bias_values<scalar_t>(bias, g.out_channels());
  const scalar_t* xp = x.data_ptr<scalar_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  using acc = acc_t<scalar_t>;
  const int64_t per_row = g.out_width * g.out_channels();
  dispatch_tap_count<3, 5, 7>(g.kernel, [&](auto kt) {
    constexpr int KT = decltype(kt)::value;
    if constexpr (KT > 0 && std::is_same_v<acc, scalar_t>) {
      at::parallel_for(0, g.batch * g.out_height, row_grain(g), [&](int64_t begin, int64_t end) {
        forward_rows_blocked<KT, A>(xp, w_row.data(), w_col.data(), b.data(), op, g, begin, end);
      });
      return;
    }
    at::parallel_for(0, g.batch * g.out_height, row_grain(g), [&](int64_t begin, int64_t end) {
      RowTaps<scalar_t> taps(xp, w_row.data(), w_col.data(), b.data(), g);
      // The activation runs in its own pass over the row: inside the tap loop it kept the
      // block's sums from staying in registers (relu6 made the kernel 14x slower).  Float
      // and double sums go straight into the output row; 16-bit ones into a float row first,
      // so they are rounded once, after the activation.
      std::vector<acc> sums(static_cast<size_t>(std::is_same_v<acc, scalar_t> ? 0 : per_row));
      for (int64_t r = begin; r < end; ++r) {
        taps.prepare(r / g.out_height, r % g.out_height);
        scalar_t* o = op + r * per_row;
        if constexpr (std::is_same_v<acc, scalar_t>) {
          for (int64_t ow = 0; ow < g.out_width; ++ow) {
            taps.template pixel<KT>(o + ow * g.out_channels(), ow);
          }
          if constexpr (A != Act::None) {
            for (int64_t i = 0; i < per_row; ++i) o[i] = activate<A>(o[i]);
          }
        } else {
          for (int64_t ow = 0; ow < g.out_width; ++ow) {
            taps.template pixel<KT>(sums.data() + ow * g.out_channels(), ow);
          }
          for (int64_t i = 0; i < per_row; ++i) o[i] = static_cast<scalar_t>(activate<A>(sums[i]));
        }
      }
    });
  });
}

// grad_pre = d act / d pre * grad_out, dense NHWC over the whole output in the
// accumulation type.  Without an activation on float or double that is grad_out itself,
// which is then read in place: a copy would be two more passes over an output-sized buffer
// (in training the op runs without an activation, BatchNorm follows it).
template <typename acc>
struct GradPre {
  std::unique_ptr<acc[]> owned;  // the buffer, when grad_out could not be read as it is
  const acc* data;
};

template <typename scalar_t, Act A>
GradPre<acc_t<scalar_t>> grad_pre_activation(const at::Tensor& grad_out, const at::Tensor& x,
                                             const std::vector<acc_t<scalar_t>>& w_row,
                                             const std::vector<acc_t<scalar_t>>& w_col,
                                             const std::vector<acc_t<scalar_t>>& b, const Geometry& g) {
  using acc = acc_t<scalar_t>;
  const scalar_t* gp = grad_out.data_ptr<scalar_t>();
  if constexpr (A == Act::None && std::is_same_v<acc, scalar_t>) {
    return {nullptr, gp};
  } else {
    const int64_t per_row = g.out_width * g.out_channels();
    // Not zero-filled: every element is written below, once.
    std::unique_ptr<acc[]> grad(new acc[static_cast<size_t>(g.batch * g.out_height * per_row)]);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    dispatch_tap_count<3, 5, 7>(g.kernel, [&](auto kt) {
      constexpr int KT = decltype(kt)::value;
      at::parallel_for(0, g.batch * g.out_height, row_grain(g), [&](int64_t begin, int64_t end) {
        std::vector<acc> pre(static_cast<size_t>(A == Act::None ? 0 : per_row));
        RowTaps<scalar_t> taps(xp, w_row.data(), w_col.data(), b.data(), g);
        for (int64_t r = begin; r < end; ++r) {
          acc* __restrict__ dst = grad.get() + r * per_row;
          const scalar_t* __restrict__ src = gp + r * per_row;
          if constexpr (A == Act::None) {
            for (int64_t i = 0; i < per_row; ++i) dst[i] = static_cast<acc>(src[i]);
          } else {  // the pre-activation, recomputed
            taps.prepare(r / g.out_height, r % g.out_height);
            for (int64_t ow = 0; ow < g.out_width; ++ow) {
              taps.template pixel<KT>(pre.data() + ow * g.out_channels(), ow);
            }
            for (int64_t i = 0; i < per_row; ++i) dst[i] = activate_grad<A>(static_cast<acc>(src[i]), pre[i]);
          }
        }
      });
    });
    const acc* data = grad.get();
    return {std::move(grad), data};
  }
}

// grad_x at stride 1, where each input pixel's gradient is a correlation of the output
// gradient with the taps reversed: the forward's pixel_taps over sources that are all in
// bounds, one input row at a time.  The row part reads a copy of output row ih (its
// channels, zero-padded at both ends); the column part reads output rows ih + p - t * d in
// place, or a zero row.  The full variant's two parts add into the same channels.
template <int KT, typename scalar_t>
void grad_input_stride1(const acc_t<scalar_t>* gp, const std::vector<acc_t<scalar_t>>& w_row,
                        const std::vector<acc_t<scalar_t>>& w_col, at::Tensor& grad_x, const Geometry& g) {
  using acc = acc_t<scalar_t>;
  scalar_t* gx = grad_x.data_ptr<scalar_t>();
  const int64_t c_out = g.out_channels(), span = (g.kernel - 1) * g.dilation;
  // Output column iw + p - t * d of the row part, shifted by lead, is always in the copy.
  const int64_t lead = std::max<int64_t>(0, span - g.padding);
  const int64_t padded_width = lead + std::max(g.out_width, g.width + g.padding);
  at::parallel_for(0, g.batch * g.height,
                   std::max<int64_t>(1, 16384 / std::max<int64_t>(1, g.width * g.channels * g.kernel)),
                   [&](int64_t begin, int64_t end) {
    std::vector<acc> padded(static_cast<size_t>(g.c_row > 0 ? padded_width * g.c_row : 0), acc(0));
    const std::vector<acc> zeros(static_cast<size_t>(std::max(g.out_width * c_out, g.channels)), acc(0));
    std::vector<acc> both(static_cast<size_t>(g.channels));  // the full variant's row part, per pixel
    std::vector<acc> pixel(static_cast<size_t>(g.channels));  // 16-bit outputs, before rounding
    std::vector<const acc*> row_src(static_cast<size_t>(g.kernel)), col_rows(static_cast<size_t>(g.kernel)),
        col_src(static_cast<size_t>(g.kernel));
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / g.height, ih = r % g.height;
      if (g.c_row > 0) {  // output row ih (stride 1: the only one whose row part reads input row ih)
        const acc* src = gp + ((n * g.out_height + ih) * g.out_width) * c_out;
        acc* dst = padded.data() + lead * g.c_row;
        for (int64_t ow = 0; ow < g.out_width; ++ow) std::copy(src + ow * c_out, src + ow * c_out + g.c_row,
                                                               dst + ow * g.c_row);
      }
      for (int64_t t = 0; g.c_col > 0 && t < g.kernel; ++t) {
        const int64_t oh = ih + g.padding - t * g.dilation;
        col_rows[t] = (oh < 0 || oh >= g.out_height) ? zeros.data()
                                                     : gp + ((n * g.out_height + oh) * g.out_width) * c_out + g.c_row;
      }
      for (int64_t iw = 0; iw < g.width; ++iw) {
        acc* out = pixel.data();
        scalar_t* dst = gx + (r * g.width + iw) * g.channels;
        if constexpr (std::is_same_v<acc, scalar_t>) out = dst;
        const acc* col_init = zeros.data();
        if (g.c_row > 0) {
          for (int64_t t = 0; t < g.kernel; ++t) {
            row_src[t] = padded.data() + (iw + g.padding - t * g.dilation + lead) * g.c_row;
          }
          acc* row_out = g.full ? both.data() : out;
          pixel_taps<KT>(row_out, row_src.data(), w_row.data(), g.c_row, zeros.data(), g.c_row, g.kernel);
          if (g.full) col_init = both.data();
        }
        if (g.c_col > 0) {
          for (int64_t t = 0; t < g.kernel; ++t) col_src[t] = col_rows[t] + iw * c_out;
          pixel_taps<KT>(out + g.col_start, col_src.data(), w_col.data(), g.c_col, col_init, g.c_col, g.kernel);
        }
        if constexpr (!std::is_same_v<acc, scalar_t>) {
          for (int64_t c = 0; c < g.channels; ++c) dst[c] = static_cast<scalar_t>(pixel[c]);
        }
      }
    }
  });
}

// grad_x, one input row (n, ih) at a time: each output pixel that reads the row adds its
// gradient times the tap's weight into a row buffer, which is then written once (no write
// races between tasks, which own whole input rows).
template <typename scalar_t>
void grad_input(const acc_t<scalar_t>* gp, const std::vector<acc_t<scalar_t>>& w_row,
                const std::vector<acc_t<scalar_t>>& w_col, at::Tensor& grad_x, const Geometry& g) {
  using acc = acc_t<scalar_t>;
  scalar_t* gx = grad_x.data_ptr<scalar_t>();
  const int64_t s = g.stride, c_out = g.out_channels(), pixel = g.channels, per_row = g.width * pixel;
  at::parallel_for(0, g.batch * g.height,
                   std::max<int64_t>(1, 16384 / std::max<int64_t>(1, g.width * g.channels * g.kernel)),
                   [&](int64_t begin, int64_t end) {
    std::vector<acc> row(static_cast<size_t>(per_row));
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / g.height, ih = r % g.height;
      std::fill(row.begin(), row.end(), acc(0));
      // Row part: input row ih is read only by output row ih / s, when s divides ih.
      if (g.c_row > 0 && ih % s == 0 && ih / s < g.out_height) {
        const acc* grad_row = gp + ((n * g.out_height + ih / s) * g.out_width) * c_out;
        for (int64_t t = 0; t < g.kernel; ++t) {
          const int64_t offset = t * g.dilation - g.padding;
          int64_t lo, hi;
          valid_range(offset, g.width, s, g.out_width, lo, hi);
          for (int64_t ow = lo; ow < hi; ++ow) {
            channel_fma(row.data() + (ow * s + offset) * pixel, grad_row + ow * c_out, w_row.data() + t * g.c_row,
                        g.c_row);
          }
        }
      }
      // Column part: output row oh reads input row oh * s - p + t * d with tap t.
      if (g.c_col > 0) {
        for (int64_t t = 0; t < g.kernel; ++t) {
          const int64_t q = ih + g.padding - t * g.dilation;  // = oh * s
          if (q < 0 || q % s != 0 || q / s >= g.out_height) continue;
          const acc* grad_row = gp + ((n * g.out_height + q / s) * g.out_width) * c_out + g.c_row;
          for (int64_t ow = 0; ow < g.out_width; ++ow) {
            channel_fma(row.data() + ow * s * pixel + g.col_start, grad_row + ow * c_out, w_col.data() + t * g.c_col,
                        g.c_col);
          }
        }
      }
      scalar_t* __restrict__ out = gx + r * per_row;
      for (int64_t i = 0; i < per_row; ++i) out[i] = static_cast<scalar_t>(row[i]);
    }
  });
}

// Over the output pixels of one row: dst[t * count + c] += sum over ow of grad(ow)[c] *
// src_t(ow)[c], and bias_dst[c] += sum over ow of grad(ow)[c], where grad(ow) = grad_row +
// ow * grad_step and src_t(ow) = bases[t] + ow * src_step.  With KT > 0 and float or
// double inputs, one vector of channels at a time keeps its K tap sums in registers for the
// whole row.
template <int KT, typename in_t, typename acc>
inline void row_tap_products(acc* __restrict__ dst, acc* __restrict__ bias_dst, const acc* __restrict__ grad_row,
                             int64_t grad_step, const in_t* const* bases, int64_t src_step, int64_t count,
                             int64_t width, int64_t runtime_taps) {
  const int64_t taps = KT > 0 ? KT : runtime_taps;
  int64_t c = 0;
  if constexpr (KT > 0 && std::is_same_v<in_t, acc>) {
    using V = typename Simd<acc>::type;
    constexpr int64_t lanes = sizeof(V) / sizeof(acc);
    for (; c + lanes <= count; c += lanes) {
      V sums[KT];
      V bias_sum = V{};
      for (int64_t t = 0; t < KT; ++t) sums[t] = bias_sum;
      for (int64_t ow = 0; ow < width; ++ow) {
        const V gv = load<V>(grad_row + ow * grad_step + c);
        bias_sum += gv;
        for (int64_t t = 0; t < KT; ++t) sums[t] += gv * load<V>(bases[t] + ow * src_step + c);
      }
      for (int64_t t = 0; t < KT; ++t) store(dst + t * count + c, load<V>(dst + t * count + c) + sums[t]);
      store(bias_dst + c, load<V>(bias_dst + c) + bias_sum);
    }
  }
  for (; c < count; ++c) {  // the rest (all of it for 16-bit inputs or a run-time K)
    for (int64_t ow = 0; ow < width; ++ow) {
      const acc gv = grad_row[ow * grad_step + c];
      bias_dst[c] += gv;
      for (int64_t t = 0; t < taps; ++t) dst[t * count + c] += gv * static_cast<acc>(bases[t][ow * src_step + c]);
    }
  }
}

// Weight and bias gradients: partial sums per chunk of output rows, the chunks fixed by
// the shape alone and added in order (the same bits on any thread count).
template <typename scalar_t>
void grad_params(const acc_t<scalar_t>* gp, const at::Tensor& x, const std::vector<acc_t<scalar_t>>& w_row,
                 const std::vector<acc_t<scalar_t>>& w_col, const std::vector<acc_t<scalar_t>>& b,
                 at::Tensor& grad_wr, at::Tensor& grad_wc, at::Tensor& grad_b, const Geometry& g) {
  using acc = acc_t<scalar_t>;
  const int64_t rows = g.batch * g.out_height, c_out = g.out_channels();
  const int64_t chunk_rows = std::max<int64_t>(1, (rows + 63) / 64);
  const int64_t chunks = (rows + chunk_rows - 1) / chunk_rows;
  const int64_t row_part = g.kernel * g.c_row, col_part = g.kernel * g.c_col, width = row_part + col_part + c_out;
  std::vector<acc> partial(static_cast<size_t>(chunks * width), acc(0));
  const scalar_t* xp = x.data_ptr<scalar_t>();
  dispatch_tap_count<3, 5, 7>(g.kernel, [&](auto kt) {
    constexpr int KT = decltype(kt)::value;
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      RowTaps<scalar_t> taps(xp, w_row.data(), w_col.data(), b.data(), g);
      std::vector<const acc*> row_bases(static_cast<size_t>(g.kernel));
      std::vector<const scalar_t*> col_bases(static_cast<size_t>(g.kernel));
      for (int64_t chunk = begin; chunk < end; ++chunk) {
        acc* p_row = partial.data() + chunk * width;
        acc* p_col = p_row + row_part;
        acc* p_bias = p_col + col_part;
        for (int64_t r = chunk * chunk_rows; r < std::min(rows, (chunk + 1) * chunk_rows); ++r) {
          taps.prepare(r / g.out_height, r % g.out_height);
          const acc* grad_row = gp + r * g.out_width * c_out;
          if (g.c_row > 0) {
            for (int64_t t = 0; t < g.kernel; ++t) row_bases[t] = taps.padded_row() + t * g.dilation * g.c_row;
            row_tap_products<KT>(p_row, p_bias, grad_row, c_out, row_bases.data(), g.stride * g.c_row, g.c_row,
                                 g.out_width, g.kernel);
          }
          if (g.c_col > 0) {
            for (int64_t t = 0; t < g.kernel; ++t) col_bases[t] = taps.column_row(t) + g.col_start;
            row_tap_products<KT>(p_col, p_bias + g.c_row, grad_row + g.c_row, c_out, col_bases.data(),
                                 g.stride * g.channels, g.c_col, g.out_width, g.kernel);
          }
        }
      }
    });
  });
  std::vector<acc> total(static_cast<size_t>(width), acc(0));
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const acc* p = partial.data() + chunk * width;
    for (int64_t i = 0; i < width; ++i) total[i] += p[i];
  }
  // (K, C) sums -> the weights' (C, 1, ., .) layout, which is (C, K) in memory.
  scalar_t* wr = grad_wr.data_ptr<scalar_t>();
  scalar_t* wc = grad_wc.data_ptr<scalar_t>();
  scalar_t* bias_grad = grad_b.data_ptr<scalar_t>();
  for (int64_t t = 0; t < g.kernel; ++t) {
    for (int64_t c = 0; c < g.c_row; ++c) wr[c * g.kernel + t] = static_cast<scalar_t>(total[t * g.c_row + c]);
    for (int64_t c = 0; c < g.c_col; ++c) wc[c * g.kernel + t] = static_cast<scalar_t>(total[row_part + t * g.c_col + c]);
  }
  for (int64_t c = 0; c < c_out; ++c) bias_grad[c] = static_cast<scalar_t>(total[row_part + col_part + c]);
}

}  // namespace

at::Tensor fuse_conv2d_forward_nhwc(const at::Tensor& x_in, const at::Tensor& weight_row,
                                    const at::Tensor& weight_col, const std::optional<at::Tensor>& bias, bool full,
                                    int64_t stride, int64_t padding, int64_t dilation,
                                    c10::string_view activation) {
  constexpr const char* fn = "fuse_conv2d_forward";
  const Geometry g = check_cpu_geometry(fn, x_in, weight_row, weight_col, bias, full, stride, padding, dilation);
  const Act act = parse_activation(std::string(activation));
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor out = at::empty({g.batch, g.out_channels(), g.out_height, g.out_width},
                             x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), fn, [&] {
    dispatch_activation(act, [&](auto a) {
      forward_kernel<scalar_t, decltype(a)::value>(x, weight_row, weight_col, bias, out, g);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fuse_conv2d_backward_nhwc(
    const at::Tensor& grad_out_in, const at::Tensor& x_in, const at::Tensor& weight_row,
    const at::Tensor& weight_col, const std::optional<at::Tensor>& bias, bool full, int64_t stride, int64_t padding,
    int64_t dilation, c10::string_view activation) {
  constexpr const char* fn = "fuse_conv2d_backward";
  const Geometry g = check_cpu_geometry(fn, x_in, weight_row, weight_col, bias, full, stride, padding, dilation);
  check_grad_out(fn, grad_out_in, x_in, g);
  const Act act = parse_activation(std::string(activation));
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor grad_out = grad_out_in.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor grad_x = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::ChannelsLast));
  at::Tensor grad_wr = at::empty(weight_row.sizes(), weight_row.options());
  at::Tensor grad_wc = at::empty(weight_col.sizes(), weight_col.options());
  at::Tensor grad_b = at::empty({g.out_channels()}, x.options());
  if (g.batch == 0) {  // no outputs: every gradient is an empty or zero sum
    grad_x.zero_(), grad_wr.zero_(), grad_wc.zero_(), grad_b.zero_();
    return {grad_x, grad_wr, grad_wc, grad_b};
  }
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), fn, [&] {
    const auto w_row = taps_by_channel<scalar_t>(weight_row, g.kernel);
    const auto w_col = taps_by_channel<scalar_t>(weight_col, g.kernel);
    const auto b = bias_values<scalar_t>(bias, g.out_channels());
    dispatch_activation(act, [&](auto a) {
      const auto grad = grad_pre_activation<scalar_t, decltype(a)::value>(grad_out, x, w_row, w_col, b, g);
      if (g.stride == 1) {
        dispatch_tap_count<3, 5, 7>(g.kernel, [&](auto kt) {
          grad_input_stride1<decltype(kt)::value, scalar_t>(grad.data, w_row, w_col, grad_x, g);
        });
      } else {
        grad_input<scalar_t>(grad.data, w_row, w_col, grad_x, g);
      }
      grad_params<scalar_t>(grad.data, x, w_row, w_col, b, grad_wr, grad_wc, grad_b, g);
    });
  });
  return {grad_x, grad_wr, grad_wc, grad_b};
}

}  // namespace fuseops::fuse_conv
