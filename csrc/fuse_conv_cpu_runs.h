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
// Used by fuse_conv_cpu.cpp when run_path_applies() says so; the other cases keep that
// file's per-plane kernels.
#pragma once

#include <cstdint>
#include <type_traits>

namespace fuseops::runs {

struct RunGeometry {
  int64_t batch, channels, height, width, kernel;
  int64_t c_row, c_col;  // half: c_row + c_col == channels; full: both == channels
  int64_t padding, dilation;
  bool full;
};

// The fused activations (also the enum of fuse_conv_cpu.cpp's kernels).
enum class RunAct { None, Relu, Relu6, Hardswish };

// Calls f(std::integral_constant<RunAct, act>{}): the activation as a template argument.
template <typename F>
void dispatch_activation(RunAct act, F&& f) {
  switch (act) {
    case RunAct::None: f(std::integral_constant<RunAct, RunAct::None>{}); break;
    case RunAct::Relu: f(std::integral_constant<RunAct, RunAct::Relu>{}); break;
    case RunAct::Relu6: f(std::integral_constant<RunAct, RunAct::Relu6>{}); break;
    case RunAct::Hardswish: f(std::integral_constant<RunAct, RunAct::Hardswish>{}); break;
  }
}

// Whether this build has the run path (compiled with AVX-512) and it applies to the
// forward (backward == false) or the backward of a stride-1 "same"-shaped float32 call
// of this geometry.
bool run_path_applies(const RunGeometry& g, bool backward);

// out: (N, C_out, H, W) contiguous; x: (N, C, H, W) contiguous; w_row (c_row, K),
// w_col (c_col, K), bias (C_out) or nullptr.
void forward_runs(const float* x, const float* w_row, const float* w_col, const float* bias, float* out,
                  const RunGeometry& g, RunAct act);

// grad_x: (N, C, H, W); grad_w_row (c_row, K); grad_w_col (c_col, K); grad_bias (C_out).
void backward_runs(const float* grad_out, const float* x, const float* w_row, const float* w_col,
                   const float* bias, float* grad_x, float* grad_w_row, float* grad_w_col, float* grad_bias,
                   const RunGeometry& g, RunAct act);

}  // namespace fuseops::runs
