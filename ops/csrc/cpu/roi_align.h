// The CPU RoIAlign kernels of cpu/roi_align.cpp, for other CPU kernels that pool with them
// (cpu/multilevel.cpp pools each FPN level's RoIs through these, so its results are bit for bit
// those of roi_align on that level).
#pragma once

#include <ATen/ATen.h>

namespace mrcnn {

at::Tensor roi_align_cpu_forward(const at::Tensor& input, const at::Tensor& rois,
                                 double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                 int64_t sampling_ratio, bool aligned);

at::Tensor roi_align_cpu_backward(const at::Tensor& grad, const at::Tensor& rois,
                                  double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                  int64_t batch_size, int64_t channels, int64_t height,
                                  int64_t width, int64_t sampling_ratio, bool aligned);

}  // namespace mrcnn
