// CPU replay of the fuse_conv2d CUDA kernels, for tests/test_cuda_kernel_logic.py.
//
// Every launch of csrc/cuda/fuse_conv_cuda.cu is replayed here with the same plan
// functions and the same per-thread code (csrc/cuda/fuse_conv_kernels.h): blocks one
// after another, threads one after another within each phase of a block.  Shared
// memory and workspaces start as NaN so a slot the kernels forget to fill shows up.
// What this cannot show: data races, misaligned vector loads on the device, the warp
// shuffle reduction (replaced by an in-order sum), and anything about speed.
#include "fuse_conv_kernels.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace fk = fuseops_kernels;

namespace {

int64_t out_size(int64_t size, int64_t kernel, int64_t stride, int64_t padding, int64_t dilation) {
  return (size + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1;
}

struct Shape {
  int64_t n, c, h, w, k, c_row, c_col, full, stride, padding, dilation, ho, wo;
};

Shape shape_of(int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t c_row, int64_t c_col, int64_t full,
               int64_t stride, int64_t padding, int64_t dilation) {
  Shape s{n, c, h, w, k, c_row, c_col, full, stride, padding, dilation, 0, 0};
  if (c_row > 0) {
    s.ho = out_size(h, 1, stride, 0, 1);
    s.wo = out_size(w, k, stride, padding, dilation);
  } else {
    s.ho = out_size(h, k, stride, padding, dilation);
    s.wo = out_size(w, 1, stride, 0, 1);
  }
  return s;
}

// The fields FwdArgs and BwdArgs share, as the launcher's set_geometry fills them.
template <typename Args>
void set_geometry(Args& a, const Shape& s) {
  a.channels = int(s.c);
  a.col_start = s.full ? 0 : int(s.c_row);
  a.c_row = int(s.c_row);
  a.out_channels = int(s.c_row + s.c_col);
  a.height = int(s.h);
  a.width = int(s.w);
  a.ho = int(s.ho);
  a.wo = int(s.wo);
  a.k = int(s.k);
  a.stride = int(s.stride);
  a.padding = int(s.padding);
  a.dilation = int(s.dilation);
}

template <typename T>
fk::FwdArgs<T> forward_args(const T* x, const T* bias, T* out, const Shape& s, fk::Act act) {
  fk::FwdArgs<T> a{};
  a.x = x;
  a.bias = bias;
  a.out = out;
  set_geometry(a, s);
  a.act = act;
  return a;
}

template <typename T, typename index_t, int VEC>
void run_row_tiled(const fk::FwdArgs<T>& a, int64_t blocks, int64_t smem_elems) {
  std::vector<T> smem(smem_elems);
  for (int64_t b = 0; b < blocks; ++b) {
    for (auto& v : smem) v = std::numeric_limits<T>::quiet_NaN();
    for (int t = 0; t < fk::kThreads; ++t) fk::row_stage<T, index_t, VEC>(a, b, t, fk::kThreads, smem.data());
    for (int t = 0; t < fk::kThreads; ++t) fk::row_compute<T, T, index_t, VEC>(a, b, t, fk::kThreads, smem.data());
  }
}

template <typename T, typename index_t>
void forward(const T* x, const T* wr, const T* wc, const T* bias, T* out, const Shape& s, fk::Act act, bool vec1,
             bool direct) {
  constexpr int kVec = int(16 / sizeof(T));
  if (s.c_row > 0) {
    auto a = forward_args<T>(x, bias, out, s, act);
    a.weight = wr;
    a.c_part = int(s.c_row);
    const bool aligned = reinterpret_cast<uintptr_t>(x) % 16 == 0 && s.w % kVec == 0;
    const int vec = (aligned && !vec1) ? kVec : 1;
    const auto plan = fk::plan_row(s.wo, s.stride, s.k, s.dilation, vec, sizeof(T));
    if (!plan.direct && !direct) {
      const int64_t tiles_per_row = fk::ceil_div(s.wo, plan.tile_w);
      a.total = s.n * s.c_row * s.ho * tiles_per_row;
      a.tile_w = int(plan.tile_w);
      a.tiles_per_row = int(tiles_per_row);
      a.tiles_per_block = int(plan.tiles_per_block);
      a.seg_stride = int(plan.seg_stride);
      const int64_t blocks = fk::ceil_div(a.total, plan.tiles_per_block);
      const int64_t smem_elems = plan.smem_bytes / int64_t(sizeof(T));
      if (vec == kVec) {
        run_row_tiled<T, index_t, kVec>(a, blocks, smem_elems);
      } else {
        run_row_tiled<T, index_t, 1>(a, blocks, smem_elems);
      }
    } else {
      a.total = s.n * s.c_row * s.ho * s.wo;
      for (int64_t flat = 0; flat < fk::ceil_div(a.total, fk::kThreads) * fk::kThreads; ++flat) {
        index_t i;
        if (fk::thread_element(fk::flat_thread_index(flat / fk::kThreads, fk::kThreads, flat % fk::kThreads),
                               a.total, i))
          fk::row_direct<T, T, index_t>(a, i);
      }
    }
  }
  if (s.c_col > 0) {
    auto a = forward_args<T>(x, bias, out, s, act);
    a.weight = wc;
    a.c_part = int(s.c_col);
    a.h_chunks = int(fk::ceil_div(s.ho, fk::kColRows));
    // The launcher's choice: 16-byte column groups for stride 1 and W a multiple of them
    // (tensor storage here is 16-byte aligned, as a fresh CUDA allocation is).
    constexpr int kCols = static_cast<int>(16 / sizeof(T));
    const bool wide = !vec1 && s.stride == 1 && s.w % kCols == 0;
    a.total = s.n * s.c_col * a.h_chunks * (wide ? s.wo / kCols : s.wo);
    for (int64_t flat = 0; flat < fk::ceil_div(a.total, fk::kThreads) * fk::kThreads; ++flat) {
      index_t i;
      if (!fk::thread_element(fk::flat_thread_index(flat / fk::kThreads, fk::kThreads, flat % fk::kThreads),
                              a.total, i))
        continue;
      if (wide) {
        s.dilation == 1 ? fk::col_forward<T, T, index_t, true, kCols>(a, i)
                        : fk::col_forward<T, T, index_t, false, kCols>(a, i);
      } else {
        s.dilation == 1 ? fk::col_forward<T, T, index_t, true, 1>(a, i)
                        : fk::col_forward<T, T, index_t, false, 1>(a, i);
      }
    }
  }
}

template <typename T, typename index_t>
void backward(const T* grad_out, const T* x, const T* wr, const T* wc, const T* bias, T* grad_x, T* grad_wr,
              T* grad_wc, T* grad_b, const Shape& s, fk::Act act, bool deterministic, int64_t sms) {
  const int64_t co = s.c_row + s.c_col;
  const int64_t out_total = s.n * co * s.ho * s.wo;
  std::vector<T> pre;
  if (act != fk::Act::None) {
    pre.assign(out_total, std::numeric_limits<T>::quiet_NaN());
    forward<T, index_t>(x, wr, wc, bias, pre.data(), s, fk::Act::None, false, false);
  }
  std::vector<T> grad_pre(out_total, std::numeric_limits<T>::quiet_NaN());
  for (int64_t i = 0; i < fk::ceil_div(out_total, fk::kThreads) * fk::kThreads; ++i) {
    fk::grad_pre_elem<T, T, index_t>(grad_out, pre.empty() ? nullptr : pre.data(), grad_pre.data(),
                                     index_t(out_total), act, index_t(i));
  }
  fk::BwdArgs<T> a{};
  a.x = x;
  a.weight_row = wr;
  a.weight_col = wc;
  set_geometry(a, s);
  a.c_col = int(s.c_col);
  const int64_t in_total = s.n * s.c * s.h * s.w;
  for (int64_t i = 0; i < fk::ceil_div(in_total, fk::kThreads) * fk::kThreads; ++i) {
    fk::grad_x_elem<T, T, index_t>(a, grad_pre.data(), grad_x, index_t(in_total), index_t(i));
  }
  const auto plan = fk::plan_weight(s.n, co, s.ho * s.wo, s.k, sms, deterministic);
  std::vector<T> partials(plan.rows * co * (s.k + 1),
                          deterministic ? std::numeric_limits<T>::quiet_NaN() : T(0));
  const int64_t blocks_x = s.n * co * plan.chunks;
  for (int64_t bx = 0; bx < blocks_x; ++bx) {
    for (int by = 0; by < int(plan.tap_groups); ++by) {
      T total[fk::kTapsPerBlock + 1] = {};
      for (int t = 0; t < fk::kThreads; ++t) {
        T vals[fk::kTapsPerBlock + 1];
        fk::grad_weight_accumulate<T, T, index_t>(a, grad_pre.data(), int(plan.chunks), int(plan.chunk_len), bx, by,
                                                  t, fk::kThreads, vals);
        for (int v = 0; v <= fk::kTapsPerBlock; ++v) total[v] += vals[v];
      }
      for (int v = 0; v <= fk::kTapsPerBlock; ++v) {
        const int64_t dst = fk::grad_weight_slot(v, bx, by, int(plan.chunks), int(co), int(s.k), !deterministic);
        if (dst < 0) continue;
        if (deterministic) {
          partials[dst] = total[v];
        } else {
          partials[dst] += total[v];
        }
      }
    }
  }
  for (int i = 0; i < int(co * (s.k + 1)); ++i) {
    fk::finish_weight_elem<T, T>(partials.data(), int(plan.rows), int(co), int(s.c_row), int(s.k), grad_wr, grad_wc,
                                 grad_b, i);
  }
}

}  // namespace

#define FUSEOPS_EMULATOR_EXPORTS(T, SUFFIX)                                                                        \
  extern "C" int fc_forward_##SUFFIX(const T* x, const T* wr, const T* wc, const T* bias, T* out, int64_t n,       \
                                     int64_t c, int64_t h, int64_t w, int64_t k, int64_t c_row, int64_t c_col,     \
                                     int64_t full, int64_t stride, int64_t padding, int64_t dilation, int64_t act, \
                                     int64_t vec1, int64_t direct, int64_t index64) {                              \
    const Shape s = shape_of(n, c, h, w, k, c_row, c_col, full, stride, padding, dilation);                       \
    if (index64) {                                                                                                 \
      forward<T, int64_t>(x, wr, wc, bias, out, s, fk::Act(act), vec1, direct);                                    \
    } else {                                                                                                       \
      forward<T, int32_t>(x, wr, wc, bias, out, s, fk::Act(act), vec1, direct);                                    \
    }                                                                                                              \
    return 0;                                                                                                      \
  }                                                                                                                \
  extern "C" int fc_backward_##SUFFIX(const T* grad_out, const T* x, const T* wr, const T* wc, const T* bias,      \
                                      T* grad_x, T* grad_wr, T* grad_wc, T* grad_b, int64_t n, int64_t c,          \
                                      int64_t h, int64_t w, int64_t k, int64_t c_row, int64_t c_col, int64_t full, \
                                      int64_t stride, int64_t padding, int64_t dilation, int64_t act,              \
                                      int64_t deterministic, int64_t sms, int64_t index64) {                       \
    const Shape s = shape_of(n, c, h, w, k, c_row, c_col, full, stride, padding, dilation);                       \
    if (index64) {                                                                                                 \
      backward<T, int64_t>(grad_out, x, wr, wc, bias, grad_x, grad_wr, grad_wc, grad_b, s, fk::Act(act),           \
                           deterministic, sms);                                                                    \
    } else {                                                                                                       \
      backward<T, int32_t>(grad_out, x, wr, wc, bias, grad_x, grad_wr, grad_wc, grad_b, s, fk::Act(act),           \
                           deterministic, sms);                                                                    \
    }                                                                                                              \
    return 0;                                                                                                      \
  }

FUSEOPS_EMULATOR_EXPORTS(double, f64)
FUSEOPS_EMULATOR_EXPORTS(float, f32)

// The kernels' thread-index step alone, for index math near 2^31: the flat index of
// (block, thread) in 64 bits and, when it has work, its narrowed int32 value.
extern "C" int fc_thread_index_i32(int64_t block, int64_t block_dim, int64_t thread, int64_t total,
                                   int64_t* flat_out, int32_t* index_out) {
  const int64_t flat = fk::flat_thread_index(block, block_dim, thread);
  *flat_out = flat;
  int32_t i = -1;
  const bool has_work = fk::thread_element(flat, total, i);
  *index_out = i;
  return has_work ? 1 : 0;
}
