// Shared by the CPU and CUDA kernels of multilevel_roi_align and rpn_decode_topk: argument
// checks, the FPN level rule, and the small per-level tables the CUDA kernels take by value.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>

#include "common.h"

namespace mrcnn {

// Levels a single launch can address (FPN uses 4 for pooling, 5 for the RPN).
constexpr int kMaxLevels = 8;

// ---------------------------------------------------------------------------------------------
// FPN level of a box (FPN paper eq. 1, torchvision's LevelMapper, mrcnn/modeling/poolers.py
// map_levels): floor(k0 + log2(sqrt(area) / s0) + 1e-6) clamped to [k_min, k_max], minus k_min.
// A NaN level (a box with negative area) gives -1: the RoI is pooled from no level and stays
// zero, as in torchvision's MultiScaleRoIAlign.
template <typename T>
MRCNN_HD int fpn_level_from_float(T lvl, int k_min, int k_max) {
  if (!(lvl == lvl)) return -1;
  lvl = lvl < T(k_min) ? T(k_min) : lvl;
  lvl = lvl > T(k_max) ? T(k_max) : lvl;
  return static_cast<int>(lvl) - k_min;
}

// map_levels as PyTorch evaluates it on a CUDA tensor, op for op in T: sqrt and log2 are
// CUDA's (what ATen's CUDA kernels call), and `s / s0` with s0 a Python number is
// s * (1 / s0), the reciprocal taken once in T on the host (ATen's div by a CPU scalar). The
// CPU kernel runs map_levels' ATen ops instead: PyTorch's vectorised CPU log2 can differ from
// libm's by an ulp, which could move a box sitting on a level boundary.
template <typename T>
MRCNN_HD int fpn_level(const T* box, T canonical_level, T inv_canonical_scale, int k_min,
                       int k_max) {
  using std::floor;
  using std::log2;
  using std::sqrt;
  const T area = (box[2] - box[0]) * (box[3] - box[1]);
  const T s = sqrt(area);
  const T lvl = floor(canonical_level + log2(s * inv_canonical_scale) + static_cast<T>(1e-6));
  return fpn_level_from_float(lvl, k_min, k_max);
}

inline void check_multilevel_args(at::TensorList features, const at::Tensor& rois,
                                  at::ArrayRef<double> scales, int64_t pooled_h,
                                  int64_t pooled_w) {
  const int64_t levels = static_cast<int64_t>(features.size());
  TORCH_CHECK(levels >= 1 && levels <= kMaxLevels, "multilevel_roi_align takes 1 to ", kMaxLevels,
              " feature maps, got ", levels);
  TORCH_CHECK(static_cast<int64_t>(scales.size()) == levels, "spatial_scales has ",
              scales.size(), " values for ", levels, " feature maps");
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "rois must be [K, 5], got ", rois.sizes());
  TORCH_CHECK(rois.scalar_type() == at::kFloat || rois.scalar_type() == at::kDouble,
              "rois must be float32 or float64 (the level rule is computed in their dtype), got ",
              rois.scalar_type());
  TORCH_CHECK(pooled_h > 0 && pooled_w > 0, "output_size must be positive");
  const at::Tensor& f0 = features[0];
  for (int64_t l = 0; l < levels; ++l) {
    const at::Tensor& f = features[l];
    TORCH_CHECK(f.dim() == 4, "feature map ", l, " must be [N, C, H, W], got ", f.sizes());
    TORCH_CHECK(f.size(0) == f0.size(0) && f.size(1) == f0.size(1),
                "feature maps must share batch size and channels: map ", l, " is ", f.sizes(),
                ", map 0 is ", f0.sizes());
    TORCH_CHECK(f.scalar_type() == f0.scalar_type(), "feature maps must share a dtype");
    TORCH_CHECK(f.device() == rois.device(), "feature map ", l,
                " and rois are on different devices");
    TORCH_CHECK(f.size(2) * f.size(3) < (int64_t(1) << 31), "feature map ", l, " too large");
  }
}

// Arguments of multilevel_roi_align_backward (the CPU and CUDA kernels check the same).
inline void check_multilevel_backward_args(const at::Tensor& grad, const at::Tensor& rois,
                                           at::ArrayRef<double> spatial_scales, int64_t pooled_h,
                                           int64_t pooled_w, int64_t channels,
                                           at::IntArrayRef heights, at::IntArrayRef widths) {
  const int64_t levels = static_cast<int64_t>(spatial_scales.size());
  TORCH_CHECK(levels >= 1 && levels <= kMaxLevels, "1 to ", kMaxLevels, " levels, got ", levels);
  TORCH_CHECK(static_cast<int64_t>(heights.size()) == levels &&
                  static_cast<int64_t>(widths.size()) == levels,
              "heights and widths need one value per level");
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "rois must be [K, 5], got ", rois.sizes());
  TORCH_CHECK(rois.scalar_type() == at::kFloat || rois.scalar_type() == at::kDouble,
              "rois must be float32 or float64");
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                  grad.size(2) == pooled_h && grad.size(3) == pooled_w,
              "grad must be [K, C, pooled_h, pooled_w], got ", grad.sizes());
}

// ---------------------------------------------------------------------------------------------
// RPN: level l holds anchors [offset[l], offset[l] + size[l]) of the concatenated N, and its
// top-k candidates are columns [k_start[l], k_start[l + 1]) of the K outputs.
struct LevelTable {
  int64_t offset[kMaxLevels];
  int64_t size[kMaxLevels];
  int64_t k_start[kMaxLevels + 1];
  int count;
};

inline LevelTable level_table(at::IntArrayRef level_sizes, int64_t pre_nms_top_n) {
  TORCH_CHECK(!level_sizes.empty() && level_sizes.size() <= kMaxLevels,
              "level_sizes must have 1 to ", kMaxLevels, " values, got ", level_sizes.size());
  TORCH_CHECK(pre_nms_top_n >= 0, "pre_nms_top_n must be >= 0, got ", pre_nms_top_n);
  LevelTable t{};
  t.count = static_cast<int>(level_sizes.size());
  int64_t off = 0;
  t.k_start[0] = 0;
  for (int l = 0; l < t.count; ++l) {
    TORCH_CHECK(level_sizes[l] >= 0, "level size ", l, " is negative");
    t.offset[l] = off;
    t.size[l] = level_sizes[l];
    t.k_start[l + 1] = t.k_start[l] + std::min(pre_nms_top_n, level_sizes[l]);
    off += level_sizes[l];
  }
  return t;
}

inline void check_rpn_args(const at::Tensor& objectness, const at::Tensor& deltas,
                           const at::Tensor& anchors, at::IntArrayRef level_sizes,
                           const at::Tensor& image_hw, at::ArrayRef<double> weights) {
  TORCH_CHECK(objectness.dim() == 2, "objectness must be [B, N], got ", objectness.sizes());
  const int64_t b = objectness.size(0), n = objectness.size(1);
  TORCH_CHECK(at::isFloatingType(objectness.scalar_type()), "objectness must be floating point");
  TORCH_CHECK(deltas.dim() == 3 && deltas.size(0) == b && deltas.size(1) == n &&
                  deltas.size(2) == 4,
              "deltas must be [B, N, 4] = [", b, ", ", n, ", 4], got ", deltas.sizes());
  TORCH_CHECK(deltas.scalar_type() == objectness.scalar_type(),
              "deltas and objectness must share a dtype");
  TORCH_CHECK(anchors.dim() == 2 && anchors.size(0) == n && anchors.size(1) == 4,
              "anchors must be [N, 4] = [", n, ", 4], got ", anchors.sizes());
  TORCH_CHECK(image_hw.dim() == 2 && image_hw.size(0) == b && image_hw.size(1) == 2,
              "image_hw must be [B, 2] = [", b, ", 2], got ", image_hw.sizes());
  int64_t total = 0;
  for (int64_t s : level_sizes) total += s;
  TORCH_CHECK(total == n, "level_sizes add up to ", total, " but objectness has ", n, " anchors");
  TORCH_CHECK(weights.size() == 4, "weights must have 4 values");
  TORCH_CHECK(deltas.device() == objectness.device() && anchors.device() == objectness.device() &&
                  image_hw.device() == objectness.device(),
              "objectness, deltas, anchors and image_hw must be on one device");
}

// Clip to the image and the validity test of select_proposals: x clamped to [0, w], y to
// [0, h] (clamp(min=0) then clamp(max=size), NaN kept), then both sides >= min_size and the
// probability >= score_thresh, all compared in T as PyTorch compares a tensor with a Python
// float.
template <typename T>
MRCNN_HD bool clip_and_validate(T* box, T img_h, T img_w, T min_size, T score, T score_thresh) {
  for (int j = 0; j < 4; ++j) {
    const T lim = (j % 2 == 0) ? img_w : img_h;
    T v = box[j];
    v = v < T(0) ? T(0) : v;
    v = v > lim ? lim : v;
    box[j] = v;
  }
  return (box[2] - box[0] >= min_size) && (box[3] - box[1] >= min_size) && (score >= score_thresh);
}

}  // namespace mrcnn
