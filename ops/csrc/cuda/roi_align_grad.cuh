// The RoIAlign backward step shared by the single- and multi-level CUDA kernels: one output
// bin's gradient spread over the bilinear taps of its sampling points, with atomics.
#pragma once

#include <ATen/native/cuda/KernelUtils.cuh>

#include "../common.h"

namespace mrcnn {

// grad_input: the feature map's gradient (numel elements); plane: offset of the RoI's
// (image, channel) plane in it; g: the RoI's geometry; (by, bx): the bin; go: its gradient.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void scatter_bin_gradient(scalar_t* grad_input, int64_t numel,
                                                     int64_t plane, const RoiGeometry<acc_t>& g,
                                                     int by, int bx, acc_t go, int64_t height,
                                                     int64_t width) {
  for (int iy = 0; iy < g.grid_h; ++iy) {
    const acc_t y = roi_sample(g.start_h, by, g.bin_h, iy, g.grid_h);
    for (int ix = 0; ix < g.grid_w; ++ix) {
      const acc_t x = roi_sample(g.start_w, bx, g.bin_w, ix, g.grid_w);
      if (!in_plane(y, x, height, width)) continue;
      const Bilinear<acc_t> b = bilinear(y, x, height, width);
      at::native::fastAtomicAdd(grad_input, plane + b.p1, numel,
                                static_cast<scalar_t>(go * b.w1 / g.count), true);
      at::native::fastAtomicAdd(grad_input, plane + b.p2, numel,
                                static_cast<scalar_t>(go * b.w2 / g.count), true);
      at::native::fastAtomicAdd(grad_input, plane + b.p3, numel,
                                static_cast<scalar_t>(go * b.w3 / g.count), true);
      at::native::fastAtomicAdd(grad_input, plane + b.p4, numel,
                                static_cast<scalar_t>(go * b.w4 / g.count), true);
    }
  }
}

}  // namespace mrcnn
