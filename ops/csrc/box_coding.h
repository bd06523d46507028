// Element-wise anchor and box-decoding formulas shared by the CPU and CUDA kernels. Each step is
// one torchvision tensor op, rounded to the tensor dtype, in torchvision's order.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <cmath>
#include <type_traits>

#include "common.h"

namespace mrcnn {

// Anchor i of the grid (cell-major, A anchors per cell): base[a] + (x*sw, y*sh, x*sw, y*sh).
template <typename T>
MRCNN_HD void grid_anchor(const T* base, T* out, int64_t i, int64_t feat_w, int64_t a_count,
                          int64_t stride_h, int64_t stride_w) {
  const int64_t a = i % a_count, cell = i / a_count;
  const T sx = static_cast<T>((cell % feat_w) * stride_w);
  const T sy = static_cast<T>((cell / feat_w) * stride_h);
  out[4 * i + 0] = sx + base[4 * a + 0];
  out[4 * i + 1] = sy + base[4 * a + 1];
  out[4 * i + 2] = sx + base[4 * a + 2];
  out[4 * i + 3] = sy + base[4 * a + 3];
}

template <typename T>
struct DecodeParams {
  T wx, wy, ww, wh, clamp;
};

// Python floats meet tensors as values of the tensor dtype: cast the weights and clamp once.
template <typename T>
inline DecodeParams<T> decode_params(at::ArrayRef<double> w, double clamp) {
  return {static_cast<T>(w[0]), static_cast<T>(w[1]), static_cast<T>(w[2]), static_cast<T>(w[3]),
          static_cast<T>(clamp)};
}

inline void check_decode_args(const at::Tensor& deltas, const at::Tensor& boxes,
                              at::ArrayRef<double> weights) {
  TORCH_CHECK(deltas.dim() == 2 && deltas.size(1) % 4 == 0, "deltas must be [N, 4k]");
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4 && boxes.size(0) == deltas.size(0),
              "boxes must be [N, 4] with N = deltas.size(0)");
  TORCH_CHECK(weights.size() == 4, "weights must have 4 values");
  TORCH_CHECK(at::isFloatingType(deltas.scalar_type()), "deltas must be floating point");
}

// exp in the accumulation type: expf for float/half/bfloat16 (not the double exp that a bare
// exp(float) resolves to on the host), exp for double.
template <typename T>
MRCNN_HD T exp_of(T v) {
  using acc_t = at::opmath_type<T>;
  if constexpr (std::is_same<acc_t, float>::value) {
    return static_cast<T>(expf(static_cast<float>(v)));
  } else {
    return static_cast<T>(exp(static_cast<double>(v)));
  }
}

// The log-size deltas (dw, dh) of one box: divided by their weights and clamped.
template <typename T>
MRCNN_HD void decode_log_sizes(const T* d, const DecodeParams<T>& p, T& dw, T& dh) {
  dw = d[2] / p.ww;
  dh = d[3] / p.wh;
  // Without the clamp, exp() of a large predicted log-size overflows to inf.
  dw = dw > p.clamp ? p.clamp : dw;
  dh = dh > p.clamp ? p.clamp : dh;
}

// The decoded box d on reference box b, given exp(dw) and exp(dh) of decode_log_sizes (the CPU
// RPN kernel takes them from ATen's exp, which is what torch.exp computes on the CPU).
template <typename T>
MRCNN_HD void decode_with_exp(const T* d, const T* b, T exp_dw, T exp_dh, T* out,
                              const DecodeParams<T>& p) {
  const T half = static_cast<T>(0.5);
  const T widths = b[2] - b[0];
  const T heights = b[3] - b[1];
  const T ctr_x = b[0] + half * widths;
  const T ctr_y = b[1] + half * heights;
  const T dx = d[0] / p.wx;
  const T dy = d[1] / p.wy;
  const T pcx = dx * widths + ctr_x;
  const T pcy = dy * heights + ctr_y;
  const T pw = exp_dw * widths;
  const T ph = exp_dh * heights;
  const T cw = half * pw;
  const T ch = half * ph;
  out[0] = pcx - cw;
  out[1] = pcy - ch;
  out[2] = pcx + cw;
  out[3] = pcy + ch;
}

// Decodes column group j of row r (i = r * per_row + j): deltas[r, 4j:4j+4] on boxes[r].
template <typename T>
MRCNN_HD void decode_one(const T* deltas, const T* boxes, T* out, int64_t i, int64_t per_row,
                         const DecodeParams<T>& p) {
  T dw, dh;
  decode_log_sizes(deltas + 4 * i, p, dw, dh);
  decode_with_exp(deltas + 4 * i, boxes + 4 * (i / per_row), exp_of(dw), exp_of(dh), out + 4 * i,
                  p);
}

// ---------------------------------------------------------------------------------------------
// Box encoding, torchvision's BoxCoder.encode_single (mrcnn/modeling/box_coder.py `encode`).
inline void check_encode_args(const at::Tensor& targets, const at::Tensor& reference,
                              at::ArrayRef<double> weights) {
  TORCH_CHECK(targets.dim() == 2 && targets.size(1) == 4, "encode_boxes: targets must be [N, 4], "
              "got ", targets.sizes());
  TORCH_CHECK(reference.sizes() == targets.sizes(), "encode_boxes: reference must be [N, 4] like "
              "targets ", targets.sizes(), ", got ", reference.sizes());
  TORCH_CHECK(at::isFloatingType(targets.scalar_type()), "encode_boxes: targets must be floating "
              "point, got ", targets.scalar_type());
  TORCH_CHECK(reference.scalar_type() == targets.scalar_type(), "encode_boxes: targets and "
              "reference dtypes differ (", targets.scalar_type(), " vs ", reference.scalar_type(),
              ")");
  TORCH_CHECK(reference.device() == targets.device(), "encode_boxes: targets and reference must "
              "be on one device");
  TORCH_CHECK(weights.size() == 4, "encode_boxes: weights must have 4 values");
}

// A Python float times a tensor is computed in the tensor's op-math type (float for half).
template <typename acc_t>
struct EncodeParams {
  acc_t wx, wy, ww, wh;
};

template <typename T>
inline EncodeParams<at::opmath_type<T>> encode_params(at::ArrayRef<double> w) {
  using acc_t = at::opmath_type<T>;
  return {static_cast<acc_t>(w[0]), static_cast<acc_t>(w[1]), static_cast<acc_t>(w[2]),
          static_cast<acc_t>(w[3])};
}

// Encoding runs in three steps because the log must be ATen's own: a kernel's logf differs from
// torch.log on the CPU (ATen's vectorised SLEEF log) in about 3% of float32 inputs, by one ulp,
// and encode must equal torchvision's BoxCoder exactly.
// Step 1, row i: out[i, 0:2] = (wx * (gx - rx) / rw, wy * (gy - ry) / rh) and the size ratios
// ratio[i] = (gw / rw, gh / rh). Step 2 (the caller): ratio.log_(). Step 3: encode_scale_one.
template <typename T>
MRCNN_HD void encode_one(const T* targets, const T* reference, T* out, T* ratio, int64_t i,
                         const EncodeParams<at::opmath_type<T>>& p) {
  using acc_t = at::opmath_type<T>;
  const T* r = reference + 4 * i;
  const T* g = targets + 4 * i;
  const T half = static_cast<T>(0.5);
  const T ex_w = r[2] - r[0];
  const T ex_h = r[3] - r[1];
  const T ex_x = r[0] + half * ex_w;
  const T ex_y = r[1] + half * ex_h;
  const T gt_w = g[2] - g[0];
  const T gt_h = g[3] - g[1];
  const T gt_x = g[0] + half * gt_w;
  const T gt_y = g[1] + half * gt_h;
  const T sx = static_cast<T>(p.wx * static_cast<acc_t>(gt_x - ex_x));
  const T sy = static_cast<T>(p.wy * static_cast<acc_t>(gt_y - ex_y));
  out[4 * i + 0] = sx / ex_w;
  out[4 * i + 1] = sy / ex_h;
  ratio[2 * i + 0] = gt_w / ex_w;
  ratio[2 * i + 1] = gt_h / ex_h;
}

// Step 3, row i: out[i, 2:4] = (ww * log_ratio[i, 0], wh * log_ratio[i, 1]).
template <typename T>
MRCNN_HD void encode_scale_one(const T* log_ratio, T* out, int64_t i,
                               const EncodeParams<at::opmath_type<T>>& p) {
  using acc_t = at::opmath_type<T>;
  out[4 * i + 2] = static_cast<T>(p.ww * static_cast<acc_t>(log_ratio[2 * i + 0]));
  out[4 * i + 3] = static_cast<T>(p.wh * static_cast<acc_t>(log_ratio[2 * i + 1]));
}

}  // namespace mrcnn
