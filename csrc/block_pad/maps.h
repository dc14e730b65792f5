// Index maps for the block-pad gather (torch.ops.fuseops_ext.block_pad_gather) and its
// backward (block_pad_scatter), shared by the CPU and CUDA implementations.
//
// Block padding is separable: which source row a canvas row reads depends only on the
// row blocking, and likewise for columns.  So each axis is described by one map,
// canvas position -> source position (or -1 for a zero), and the 2-D gather is
// out[n, c, q, r] = x[n, c, row_map[q], col_map[r]] (zero if either is -1).
//
// Canvas layout along one axis: the blocks' padded copies side by side in grid order;
// block i occupies round_up(size_i + pad_lo + pad_hi, align) positions (the tail
// beyond the padded block, present only when align > 1, reads zeros).  A convolution
// with padding 0 and stride `align` over the canvas then computes each block's output
// at an offset that is a multiple of the stride.
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>
#include <string>
#include <vector>

namespace fuseops_blockpad {

enum class PadMode { Constant, Replicate, Reflect };

inline PadMode parse_mode(const std::string& mode) {
  if (mode == "constant") return PadMode::Constant;
  if (mode == "replicate") return PadMode::Replicate;
  if (mode == "reflect") return PadMode::Reflect;
  TORCH_CHECK(false, "mode must be one of constant, replicate, reflect; got '", mode, "'");
  return PadMode::Constant;
}

// bounds: block boundaries along one axis, [b0, b1, ..., bn] strictly increasing inside
// [0, extent] (block i is [b_i, b_{i+1}); the form of fuseops.block_conv.grid.spans_to_bounds).
// Returns the canvas -> source map.
inline std::vector<int64_t> axis_map(const std::vector<int64_t>& bounds, int64_t extent, int64_t pad_lo,
                                     int64_t pad_hi, PadMode mode, int64_t align, const char* axis) {
  TORCH_CHECK(bounds.size() >= 2, axis, "_bounds must hold at least two block boundaries, got ", bounds.size());
  TORCH_CHECK(bounds.front() >= 0 && bounds.back() <= extent, axis, "_bounds must lie inside [0, ", extent,
              "], got ", bounds.front(), " .. ", bounds.back());
  TORCH_CHECK(pad_lo >= 0 && pad_hi >= 0, "padding must be >= 0, got ", pad_lo, " and ", pad_hi, " along ", axis);
  TORCH_CHECK(align >= 1, "align must be >= 1, got ", align);
  std::vector<int64_t> map;
  for (size_t b = 0; b + 1 < bounds.size(); ++b) {
    const int64_t start = bounds[b], size = bounds[b + 1] - bounds[b];
    TORCH_CHECK(size >= 1, axis, "_bounds must be strictly increasing; block ", b, " is [", start, ", ",
                bounds[b + 1], ")");
    if (mode == PadMode::Reflect) {
      TORCH_CHECK(pad_lo < size && pad_hi < size, "reflect padding needs padding < block size along ", axis,
                  "; block ", b, " has size ", size, " and padding (", pad_lo, ", ", pad_hi, ")");
    }
    const int64_t padded = size + pad_lo + pad_hi;
    const int64_t length = (padded + align - 1) / align * align;
    for (int64_t q = 0; q < length; ++q) {
      if (q >= padded) {
        map.push_back(-1);
        continue;
      }
      int64_t u = q - pad_lo;  // position relative to the block's first element
      if (u < 0 || u >= size) {
        if (mode == PadMode::Constant) {
          map.push_back(-1);
          continue;
        }
        if (mode == PadMode::Replicate) {
          u = u < 0 ? 0 : size - 1;
        } else {
          u = u < 0 ? -u : 2 * (size - 1) - u;
        }
      }
      map.push_back(start + u);
    }
  }
  return map;
}

// Inverse of a map in CSR form: for each source position s, the canvas positions
// indices[offsets[s] .. offsets[s+1]) that read it, in increasing order (so sums over
// them have a fixed order: the backward is deterministic).
inline void invert_map(const std::vector<int64_t>& map, int64_t extent, std::vector<int64_t>& offsets,
                       std::vector<int64_t>& indices) {
  offsets.assign(extent + 1, 0);
  for (int64_t s : map) {
    if (s >= 0) ++offsets[s + 1];
  }
  for (int64_t s = 0; s < extent; ++s) offsets[s + 1] += offsets[s];
  indices.assign(offsets[extent], 0);
  std::vector<int64_t> fill(offsets.begin(), offsets.end() - 1);
  for (int64_t q = 0; q < static_cast<int64_t>(map.size()); ++q) {
    if (map[q] >= 0) indices[fill[map[q]]++] = q;
  }
}

struct Padding {
  int64_t top, bottom, left, right;
};

inline Padding parse_padding(const std::vector<int64_t>& padding) {
  TORCH_CHECK(padding.size() == 4, "padding must be [top, bottom, left, right], got ", padding.size(), " values");
  return Padding{padding[0], padding[1], padding[2], padding[3]};
}

}  // namespace fuseops_blockpad
