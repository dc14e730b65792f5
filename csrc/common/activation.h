// The activations the FuSe kernels fuse into their epilogue, for every backend's host
// code: the enum, the parser of the op's `activation` string, the dispatch that turns
// the runtime value into a template argument, and the scalar forms used by the CPU
// kernels.  The CUDA kernels keep their own enum (csrc/cuda/fuse_conv_kernels.h must
// compile without torch for the emulator test); fuse_conv_cuda.cu converts, and
// static_asserts that the values agree.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <string>
#include <type_traits>

namespace fuseops {

enum class Activation { None = 0, Relu = 1, Relu6 = 2, Hardswish = 3 };

inline Activation parse_activation(const std::string& name) {
  if (name == "none") return Activation::None;
  if (name == "relu") return Activation::Relu;
  if (name == "relu6") return Activation::Relu6;
  if (name == "hardswish") return Activation::Hardswish;
  TORCH_CHECK(false, "fuse_conv2d: activation must be one of 'none', 'relu', 'relu6', 'hardswish', got '", name,
              "'");
  return Activation::None;
}

// Calls f(std::integral_constant<Activation, act>{}): the activation as a template argument.
template <typename F>
void dispatch_activation(Activation act, F&& f) {
  switch (act) {
    case Activation::None: f(std::integral_constant<Activation, Activation::None>{}); break;
    case Activation::Relu: f(std::integral_constant<Activation, Activation::Relu>{}); break;
    case Activation::Relu6: f(std::integral_constant<Activation, Activation::Relu6>{}); break;
    case Activation::Hardswish: f(std::integral_constant<Activation, Activation::Hardswish>{}); break;
  }
}

template <Activation A, typename T>
inline T activate(T v) {
  if constexpr (A == Activation::Relu) {
    return v < T(0) ? T(0) : v;  // a NaN stays NaN, as in torch.relu
  } else if constexpr (A == Activation::Relu6) {
    return std::min(std::max(v, T(0)), T(6));
  } else if constexpr (A == Activation::Hardswish) {
    return v * std::min(std::max(v + T(3), T(0)), T(6)) / T(6);
  } else {
    return v;
  }
}

// d act(pre) / d pre * g, with PyTorch's choices at the kinks (relu'(0) = 0,
// relu6'(0) = relu6'(6) = 0, aten::hardswish_backward's branches).
template <Activation A, typename T>
inline T activate_grad(T g, T pre) {
  if constexpr (A == Activation::Relu) {
    return pre > T(0) ? g : T(0);
  } else if constexpr (A == Activation::Relu6) {
    return (pre > T(0) && pre < T(6)) ? g : T(0);
  } else if constexpr (A == Activation::Hardswish) {
    return pre < T(-3) ? T(0) : (pre <= T(3) ? g * (pre / T(3) + T(0.5)) : g);
  } else {
    return g;
  }
}

}  // namespace fuseops
