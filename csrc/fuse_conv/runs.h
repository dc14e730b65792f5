// FuSe convolution, float32, AVX-512, stride 1 and "same" padding: the "run" path.
//
// With stride 1 and "same" padding every output plane has its input plane's shape, and
// in NCHW the planes of one part (the row part's channels, or the column part's) of one
// sample lie back to back in memory: a *run* of channels * H * W floats.  A tap is then a
// fixed offset in that run (k*d - p for the row part, (k*d - p)*W for the column part),
// and the whole run is one vector loop over 16-lane chunks, with no per-plane set-up and
// no remainder per plane: a 7x7 plane is 49 floats, so a per-plane loop spends a quarter
// of its vectors on a 1-lane remainder, and its set-up costs as much as the plane's work.
//
// Across planes a chunk's lanes belong to different channels (at most 16), so each lane
// needs its own weight: the taps' weights of 32 consecutive channels sit in registers and
// a two-source permute hands every lane its own.  Which channel a lane has, and which
// taps read inside its plane, depend only on where the chunk starts inside a plane, so
// they repeat with a short period and are tabulated once per call: one 16-bit lane mask
// per tap and chunk phase, set where the tap reads inside the lane's own plane.
// Masked-off lanes of x are never loaded (AVX-512 masked loads do not fault and give 0),
// so values of x outside the plane, in the next plane or past the tensor, never reach the
// sum, not even an inf or a NaN (the padding zeros still meet the weights, as in F.conv2d).
//
//
// forward.cpp and backward.cpp call the run path when run_path_applies() says so; the
// other cases keep their per-plane kernels.  The kernels are in runs_forward.cpp and
// runs_backward.cpp, what both share in runs_common.h.
#pragma once

#include "common/activation.h"

#include <cstdint>
#include <numeric>

namespace fuseops::runs {

struct RunGeometry {
  int64_t batch, channels, height, width, kernel;
  int64_t c_row, c_col;  // half: c_row + c_col == channels; full: both == channels
  int64_t padding, dilation;
  bool full;
};

constexpr int64_t kLanes = 16;
// Planes up to these sizes take the run path (measured: docs/fuse_conv_cpu.md, "Why the
// run path looks as it does"): both directions gain or tie up to 56x56.  (The backward
// was held to 16x16 while it kept its per-position sums in memory, one load and store per
// tap, chunk and sample; since it keeps them in registers over a block of samples it wins
// at 28x28 and 56x56 too.)
constexpr int64_t kMaxPlaneForward = 4096;
constexpr int64_t kMaxPlaneBackward = 4096;
// The per-call tables have one entry per chunk phase: `period` = plane / gcd(plane, 16)
// phases (49 for 7x7, 14x14 and 28x28; 196 for 56x56).  Odd planes such as 17x17 have one
// phase per position, and for them the per-plane kernels are cheaper than the tables.
constexpr int64_t kMaxPeriod = 256;
// Filters longer than this take the per-plane kernels.
constexpr int64_t kMaxTaps = 16;

// Whether this build has the run path (compiled with AVX-512) and it applies to the
// forward (backward == false) or the backward of a stride-1 "same"-shaped float32 call
// of this geometry (the caller checks stride, shape and dtype).
inline bool run_path_applies(const RunGeometry& g, bool backward) {
#if defined(__AVX512F__)
  const int64_t plane = g.height * g.width;
  return plane <= (backward ? kMaxPlaneBackward : kMaxPlaneForward) && g.kernel <= kMaxTaps &&
         plane / std::gcd(plane, kLanes) <= kMaxPeriod;
#else
  (void)g, (void)backward;
  return false;
#endif
}

// out: (N, C_out, H, W) contiguous; x: (N, C, H, W) contiguous; w_row (c_row, K),
// w_col (c_col, K), bias (C_out) or nullptr.
void forward_runs(const float* x, const float* w_row, const float* w_col, const float* bias, float* out,
                  const RunGeometry& g, Activation act);

// grad_x: (N, C, H, W); grad_w_row (c_row, K); grad_w_col (c_col, K); grad_bias (C_out).
void backward_runs(const float* grad_out, const float* x, const float* w_row, const float* w_col,
                   const float* bias, float* grad_x, float* grad_w_row, float* grad_w_col, float* grad_bias,
                   const RunGeometry& g, Activation act);

}  // namespace fuseops::runs
