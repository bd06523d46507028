// Matching of predictions (anchors, proposals) to padded ground truth, shared by the CPU and CUDA
// kernels of mrcnn::match_boxes. The semantics are those of mrcnn/modeling/matcher.py `match` on
// the IoU matrix of mrcnn/modeling/targets.py `_quality` (padded gt rows hold -1), which the
// kernels reproduce bit for bit without ever building that [B, M, N] matrix:
//   pass 1 (only with low-quality matches): each valid gt's highest IoU over the predictions;
//   pass 2: per prediction, one loop over the gts for its best gt, the thresholds and the
//           low-quality rule.
// The IoU is iou_with_areas (common.h): the same operations in the same order as
// boxes.pairwise_iou, hence the same values, NaN for 0/0 included.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "common.h"

namespace mrcnn {

constexpr int64_t kBelowLowThreshold = -1;
constexpr int64_t kBetweenThresholds = -2;

// gt_boxes [B, M, 4], gt_valid bool [B, M], boxes [N, 4] (shared by the batch) or [B, N, 4].
inline void check_match_args(const at::Tensor& gt_boxes, const at::Tensor& gt_valid,
                             const at::Tensor& boxes, double high, double low) {
  TORCH_CHECK(gt_boxes.dim() == 3 && gt_boxes.size(2) == 4,
              "match_boxes: gt_boxes must be [B, M, 4], got ", gt_boxes.sizes());
  TORCH_CHECK(gt_valid.dim() == 2 && gt_valid.size(0) == gt_boxes.size(0) &&
                  gt_valid.size(1) == gt_boxes.size(1),
              "match_boxes: gt_valid must be [B, M] = ", gt_boxes.sizes().slice(0, 2), ", got ",
              gt_valid.sizes());
  TORCH_CHECK(gt_valid.scalar_type() == at::kBool, "match_boxes: gt_valid must be bool, got ",
              gt_valid.scalar_type());
  TORCH_CHECK((boxes.dim() == 2 || boxes.dim() == 3) && boxes.size(-1) == 4,
              "match_boxes: boxes must be [N, 4] or [B, N, 4], got ", boxes.sizes());
  TORCH_CHECK(boxes.dim() == 2 || boxes.size(0) == gt_boxes.size(0),
              "match_boxes: boxes [B, N, 4] must have B = ", gt_boxes.size(0), ", got ",
              boxes.sizes());
  TORCH_CHECK(at::isFloatingType(gt_boxes.scalar_type()),
              "match_boxes: gt_boxes must be floating point, got ", gt_boxes.scalar_type());
  TORCH_CHECK(boxes.scalar_type() == gt_boxes.scalar_type(),
              "match_boxes: boxes and gt_boxes dtypes differ (", boxes.scalar_type(), " vs ",
              gt_boxes.scalar_type(), ")");
  TORCH_CHECK(gt_valid.device() == gt_boxes.device() && boxes.device() == gt_boxes.device(),
              "match_boxes: all tensors must be on one device");
  TORCH_CHECK(low <= high, "match_boxes: low_threshold ", low, " > high_threshold ", high);
}

template <typename T>
MRCNN_HD bool is_nan(T v) {
  return v != v;
}

// torch.max's order: NaN beats everything (the first NaN stays), otherwise strictly greater
// wins, so among equal values the first (lowest gt index) is kept.
template <typename T>
MRCNN_HD bool beats(T candidate, T current) {
  return !is_nan(current) && (is_nan(candidate) || candidate > current);
}

// The matcher's decision for a prediction whose best gt `best` has quality `v` (thresholds
// already in the quality dtype, as torch compares a tensor with a Python float). NaN compares
// false against both thresholds, so a NaN best (0/0 IoU) counts as matched, as in Python.
template <typename T>
MRCNN_HD int64_t match_decision(T v, int64_t best, T high, T low, bool low_quality_hit) {
  if (low_quality_hit) return best;
  if (v < low) return kBelowLowThreshold;
  if (v < high) return kBetweenThresholds;
  return best;
}

}  // namespace mrcnn
