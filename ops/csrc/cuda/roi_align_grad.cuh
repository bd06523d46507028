// The per-bin RoIAlign steps shared by the single- and multi-level CUDA kernels: the forward
// average of one output bin, and the backward scatter of one bin's gradient with atomics.
// Sampling positions and bilinear weights come from common.h, the lines the CPU kernels run.
#pragma once

#include <ATen/native/cuda/KernelUtils.cuh>

#include "../common.h"

namespace mrcnn {

// Average of the bilinear samples of bin (by, bx) of a RoI with geometry g on one (image,
// channel) plane of height x width, accumulated in acc_t (float for half/bfloat16).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t average_bin(const scalar_t* plane, const RoiGeometry<acc_t>& g,
                                             int by, int bx, int64_t height, int64_t width) {
  acc_t v = 0;
  for (int iy = 0; iy < g.grid_h; ++iy) {
    const acc_t y = roi_sample(g.start_h, by, g.bin_h, iy, g.grid_h);
    for (int ix = 0; ix < g.grid_w; ++ix) {
      const acc_t x = roi_sample(g.start_w, bx, g.bin_w, ix, g.grid_w);
      const Bilinear<acc_t> b = bilinear(y, x, height, width);
      v += b.w1 * acc_t(plane[b.p1]) + b.w2 * acc_t(plane[b.p2]) + b.w3 * acc_t(plane[b.p3]) +
           b.w4 * acc_t(plane[b.p4]);
    }
  }
  return v / g.count;
}

// grad_input: the feature map's gradient in acc_t (numel elements): float32 for half/bfloat16
// features, so that thousands of RoIs adding into one pixel sum in float32 as on the CPU (half
// atomics lose the small terms and overflow past 65504); callers cast once at the end.
// plane: offset of the RoI's (image, channel) plane; g: the RoI's geometry; (by, bx): the bin;
// go: its gradient.
template <typename acc_t>
__device__ __forceinline__ void scatter_bin_gradient(acc_t* grad_input, int64_t numel,
                                                     int64_t plane, const RoiGeometry<acc_t>& g,
                                                     int by, int bx, acc_t go, int64_t height,
                                                     int64_t width) {
  for (int iy = 0; iy < g.grid_h; ++iy) {
    const acc_t y = roi_sample(g.start_h, by, g.bin_h, iy, g.grid_h);
    for (int ix = 0; ix < g.grid_w; ++ix) {
      const acc_t x = roi_sample(g.start_w, bx, g.bin_w, ix, g.grid_w);
      if (!in_plane(y, x, height, width)) continue;
      const Bilinear<acc_t> b = bilinear(y, x, height, width);
      at::native::fastAtomicAdd(grad_input, plane + b.p1, numel, go * b.w1 / g.count, true);
      at::native::fastAtomicAdd(grad_input, plane + b.p2, numel, go * b.w2 / g.count, true);
      at::native::fastAtomicAdd(grad_input, plane + b.p3, numel, go * b.w3 / g.count, true);
      at::native::fastAtomicAdd(grad_input, plane + b.p4, numel, go * b.w4 / g.count, true);
    }
  }
}

}  // namespace mrcnn
