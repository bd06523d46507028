// Box expansion for mask pasting, shared by the CPU and CUDA paste kernels. Done with ATen ops,
// exactly as torchvision's expand_boxes + .to(int64) (same dtype, same scalar rounding), so the
// integer boxes - which decide every pasted pixel - are torchvision's.
#pragma once

#include <ATen/ATen.h>

namespace mrcnn {

// boxes: float [K, 4] xyxy; mask_size: M; padding: p. Returns int64 [K, 4] (x0, y0, x1, y1) of
// the box grown by (M + 2p) / M around its centre, truncated toward zero.
inline at::Tensor paste_boxes(const at::Tensor& boxes, int64_t mask_size, int64_t padding) {
  const double scale = double(mask_size + 2 * padding) / double(mask_size);
  const at::Tensor x0 = boxes.select(1, 0), y0 = boxes.select(1, 1);
  const at::Tensor x1 = boxes.select(1, 2), y1 = boxes.select(1, 3);
  const at::Tensor w_half = (x1 - x0) * 0.5 * scale;
  const at::Tensor h_half = (y1 - y0) * 0.5 * scale;
  const at::Tensor xc = (x1 + x0) * 0.5;
  const at::Tensor yc = (y1 + y0) * 0.5;
  return at::stack({xc - w_half, yc - h_half, xc + w_half, yc + h_half}, 1)
      .to(at::kLong)
      .contiguous();
}

}  // namespace mrcnn
