// CPU RoIAlign over all FPN levels in one operator call.
//
// Each RoI's level comes from the rule of poolers.map_levels, evaluated with the same ATen ops
// on a tensor of the same layout (PyTorch's vectorised CPU log2 and libm's log2f disagree in
// the last bit for ~0.5% of inputs, which could move a box sitting on a level boundary). The
// RoIs of each level are then pooled by the roi_align CPU kernels (cpu/roi_align.cpp) in their
// original order, which is exactly what the per-level Python path did: outputs and gradients
// are bit for bit those of roi_align on each level, with no host round trip for the counts.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <vector>

#include "../multilevel.h"
#include "roi_align.h"

namespace mrcnn {
namespace {

// For each level, the indices (ascending) of the RoIs it pools; RoIs with a NaN level (negative
// area) belong to none.
std::vector<at::Tensor> rois_per_level(const at::Tensor& rois, int64_t levels,
                                       int64_t canonical_level, double canonical_scale,
                                       int64_t k_min) {
  // map_levels, op for op: sqrt(w * h), log2(s / s0), + k0, + tensor(1e-6), floor.
  const at::Tensor w = rois.select(1, 3) - rois.select(1, 1);
  const at::Tensor h = rois.select(1, 4) - rois.select(1, 2);
  const at::Tensor s = at::sqrt(w * h);
  const at::Tensor lvl =
      at::floor(at::log2(s / canonical_scale) + canonical_level +
                at::scalar_tensor(1e-6, s.options()))
          .contiguous();
  const int kmin = static_cast<int>(k_min), kmax = static_cast<int>(k_min + levels - 1);
  std::vector<std::vector<int64_t>> idx(levels);
  AT_DISPATCH_FLOATING_TYPES(lvl.scalar_type(), "mrcnn_fpn_levels", [&] {
    const scalar_t* p = lvl.data_ptr<scalar_t>();
    for (int64_t r = 0; r < lvl.numel(); ++r) {
      const int l = fpn_level_from_float<scalar_t>(p[r], kmin, kmax);
      if (l >= 0) idx[l].push_back(r);
    }
  });
  std::vector<at::Tensor> out;
  out.reserve(levels);
  for (auto& v : idx) out.push_back(at::tensor(v, rois.options().dtype(at::kLong)));
  return out;
}

at::Tensor multilevel_roi_align_cpu(at::TensorList features, const at::Tensor& rois,
                                    at::ArrayRef<double> spatial_scales, int64_t pooled_h,
                                    int64_t pooled_w, int64_t sampling_ratio, bool aligned,
                                    int64_t canonical_level, double canonical_scale,
                                    int64_t k_min) {
  check_multilevel_args(features, rois, spatial_scales, pooled_h, pooled_w);
  const int64_t levels = static_cast<int64_t>(features.size());
  const at::Tensor& f0 = features[0];
  const std::vector<at::Tensor> idx =
      rois_per_level(rois, levels, canonical_level, canonical_scale, k_min);
  int64_t assigned = 0;
  for (const at::Tensor& i : idx) assigned += i.numel();
  // Every row is written by its level's pooling; only RoIs of no level (NaN level) need the
  // zeros, so the output is zeroed only when there are some.
  const std::vector<int64_t> shape{rois.size(0), f0.size(1), pooled_h, pooled_w};
  at::Tensor out = assigned == rois.size(0) ? at::empty(shape, f0.options())
                                            : at::zeros(shape, f0.options());
  for (int64_t l = 0; l < levels; ++l) {
    if (idx[l].numel() == 0) continue;
    const at::Tensor pooled =
        roi_align_cpu_forward(features[l], rois.index_select(0, idx[l]), spatial_scales[l],
                              pooled_h, pooled_w, sampling_ratio, aligned);
    out.index_copy_(0, idx[l], pooled);
  }
  return out;
}

std::vector<at::Tensor> multilevel_roi_align_backward_cpu(
    const at::Tensor& grad, const at::Tensor& rois, at::ArrayRef<double> spatial_scales,
    int64_t pooled_h, int64_t pooled_w, int64_t batch_size, int64_t channels,
    at::IntArrayRef heights, at::IntArrayRef widths, int64_t sampling_ratio, bool aligned,
    int64_t canonical_level, double canonical_scale, int64_t k_min) {
  check_multilevel_backward_args(grad, rois, spatial_scales, pooled_h, pooled_w, channels, heights,
                                 widths);
  const int64_t levels = static_cast<int64_t>(spatial_scales.size());
  std::vector<at::Tensor> idx;
  if (rois.size(0) > 0) {
    idx = rois_per_level(rois, levels, canonical_level, canonical_scale, k_min);
  }
  std::vector<at::Tensor> grads;
  grads.reserve(levels);
  for (int64_t l = 0; l < levels; ++l) {
    if (idx.empty() || idx[l].numel() == 0) {
      grads.push_back(at::zeros({batch_size, channels, heights[l], widths[l]}, grad.options()));
      continue;
    }
    grads.push_back(roi_align_cpu_backward(
        grad.index_select(0, idx[l]), rois.index_select(0, idx[l]), spatial_scales[l], pooled_h,
        pooled_w, batch_size, channels, heights[l], widths[l], sampling_ratio, aligned));
  }
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(mrcnn, CPU, m) {
  m.impl("multilevel_roi_align", &multilevel_roi_align_cpu);
  m.impl("multilevel_roi_align_backward", &multilevel_roi_align_backward_cpu);
}

}  // namespace mrcnn
