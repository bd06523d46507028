// Geometry shared by the CPU and CUDA kernels. Keeping one copy of each formula is what makes the
// two backends (and the Python reference, which mirrors it) agree bit for bit.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MRCNN_HD __host__ __device__ __forceinline__
#else
#define MRCNN_HD inline
#endif

namespace mrcnn {

// ---------------------------------------------------------------------------------------------
// Area of an xyxy box as torchvision computes it: (x2 - x1) * (y2 - y1), no +1.
template <typename T>
MRCNN_HD T box_area(const T* b) {
  return (b[2] - b[0]) * (b[3] - b[1]);
}

// Box IoU, in the operation order of torchvision's CPU nms kernel: areas precomputed as
// (x2 - x1) * (y2 - y1), union as (area_a + area_b) - inter. 0/0 (two degenerate boxes) is NaN,
// which compares false against any threshold, so degenerate boxes never suppress each other.
template <typename T>
MRCNN_HD T iou_with_areas(T ax1, T ay1, T ax2, T ay2, T area_a, T bx1, T by1, T bx2, T by2,
                          T area_b) {
  const T xx1 = ax1 < bx1 ? bx1 : ax1;  // std::max order: ties and NaN as torchvision
  const T yy1 = ay1 < by1 ? by1 : ay1;
  const T xx2 = bx2 < ax2 ? bx2 : ax2;  // std::min
  const T yy2 = by2 < ay2 ? by2 : ay2;
  const T dw = xx2 - xx1;
  const T dh = yy2 - yy1;
  const T w = T(0) < dw ? dw : T(0);
  const T h = T(0) < dh ? dh : T(0);
  const T inter = w * h;
  return inter / (area_a + area_b - inter);
}

// `ovr > threshold` where ovr has type T and the threshold is a double (as in torchvision) is
// the same predicate as `ovr > t` for t = the largest T not above the threshold. Precomputing t
// keeps the hot loops in T (vectorisable) without changing a single decision.
template <typename T>
inline T threshold_as(double thr) {
  T t = static_cast<T>(thr);
  if (static_cast<double>(t) > thr) t = std::nextafter(t, static_cast<T>(-INFINITY));
  return t;
}

// ---------------------------------------------------------------------------------------------
// RoIAlign geometry (Detectron / torchvision convention). acc_t is float for half, bfloat16 and
// float inputs and double for double inputs.
template <typename acc_t>
struct RoiGeometry {
  int64_t batch;
  acc_t start_h, start_w, bin_h, bin_w;
  int grid_h, grid_w;
  acc_t count;  // number of samples averaged per bin, at least 1
};

template <typename acc_t>
MRCNN_HD RoiGeometry<acc_t> roi_geometry(const acc_t* roi, acc_t spatial_scale, int pooled_h,
                                         int pooled_w, int sampling_ratio, bool aligned) {
  RoiGeometry<acc_t> g;
  g.batch = static_cast<int64_t>(roi[0]);
  // No rounding of the box: this detail is what makes RoIAlign differ from RoIPool.
  const acc_t offset = aligned ? acc_t(0.5) : acc_t(0);
  const acc_t start_w = roi[1] * spatial_scale - offset;
  const acc_t start_h = roi[2] * spatial_scale - offset;
  const acc_t end_w = roi[3] * spatial_scale - offset;
  const acc_t end_h = roi[4] * spatial_scale - offset;
  acc_t roi_w = end_w - start_w;
  acc_t roi_h = end_h - start_h;
  if (!aligned) {
    // Legacy behaviour: malformed RoIs are forced to 1x1 so every bin has a size.
    roi_w = roi_w < acc_t(1) ? acc_t(1) : roi_w;
    roi_h = roi_h < acc_t(1) ? acc_t(1) : roi_h;
  }
  g.start_h = start_h;
  g.start_w = start_w;
  g.bin_h = roi_h / static_cast<acc_t>(pooled_h);
  g.bin_w = roi_w / static_cast<acc_t>(pooled_w);
  g.grid_h = sampling_ratio > 0 ? sampling_ratio : static_cast<int>(ceil(roi_h / pooled_h));
  g.grid_w = sampling_ratio > 0 ? sampling_ratio : static_cast<int>(ceil(roi_w / pooled_w));
  const int n = g.grid_h * g.grid_w;
  g.count = static_cast<acc_t>(n > 1 ? n : 1);
  return g;
}

// Whether a RoI's batch index (row element 0, a float) names one of the `batch` images; written
// as a positive range test so that NaN is refused. Checked by the CPU kernels before any work and
// by every CUDA thread before it reads its image (a device-side assert there, as ATen's indexing
// kernels, and no out-of-bounds read when asserts are compiled out).
template <typename acc_t>
MRCNN_HD bool valid_batch(acc_t b, int64_t batch) {
  return b >= acc_t(0) && b < static_cast<acc_t>(batch);
}

// Sample position of sub-sample i (of `grid`) in bin p: start + p * bin + (i + .5) * bin / grid.
template <typename acc_t>
MRCNN_HD acc_t roi_sample(acc_t start, int p, acc_t bin, int i, int grid) {
  return start + p * bin + static_cast<acc_t>(i + .5f) * bin / static_cast<acc_t>(grid);
}

// Bilinear corners and weights of point (y, x) on an height x width plane. Points outside
// [-1, size] get zero weights (and index 0) so callers need not branch.
template <typename acc_t>
struct Bilinear {
  int64_t p1, p2, p3, p4;  // y_low*w + x_low, y_low*w + x_high, y_high*w + x_low, y_high*w + x_high
  acc_t w1, w2, w3, w4;
};

// Whether sample (y, x) touches the plane at all; written as a positive range test so that NaN
// coordinates count as outside.
template <typename acc_t>
MRCNN_HD bool in_plane(acc_t y, acc_t x, int64_t height, int64_t width) {
  return y >= acc_t(-1) && y <= height && x >= acc_t(-1) && x <= width;
}

template <typename acc_t>
MRCNN_HD Bilinear<acc_t> bilinear(acc_t y, acc_t x, int64_t height, int64_t width) {
  Bilinear<acc_t> b;
  if (!in_plane(y, x, height, width)) {
    b.p1 = b.p2 = b.p3 = b.p4 = 0;
    b.w1 = b.w2 = b.w3 = b.w4 = acc_t(0);
    return b;
  }
  if (y <= 0) y = 0;
  if (x <= 0) x = 0;
  int64_t y_low = static_cast<int64_t>(y);
  int64_t x_low = static_cast<int64_t>(x);
  int64_t y_high, x_high;
  if (y_low >= height - 1) {
    y_high = y_low = height - 1;
    y = static_cast<acc_t>(y_low);
  } else {
    y_high = y_low + 1;
  }
  if (x_low >= width - 1) {
    x_high = x_low = width - 1;
    x = static_cast<acc_t>(x_low);
  } else {
    x_high = x_low + 1;
  }
  const acc_t ly = y - y_low;
  const acc_t lx = x - x_low;
  const acc_t hy = acc_t(1) - ly;
  const acc_t hx = acc_t(1) - lx;
  b.p1 = y_low * width + x_low;
  b.p2 = y_low * width + x_high;
  b.p3 = y_high * width + x_low;
  b.p4 = y_high * width + x_high;
  b.w1 = hy * hx;
  b.w2 = hy * lx;
  b.w3 = ly * hx;
  b.w4 = ly * lx;
  return b;
}

// ---------------------------------------------------------------------------------------------
// Mask pasting: PyTorch's bilinear resize (align_corners=False) of the padded mask, evaluated at
// one output index along one axis. Mirrors ATen's compute_source_index_and_lambda.
struct Lerp {
  int64_t i0, i1;
  float l0, l1;
};

MRCNN_HD Lerp resize_lerp(float scale, int64_t dst, int64_t in_size, int64_t out_size) {
  Lerp r;
  if (in_size == out_size) {
    r.i0 = r.i1 = dst;
    r.l0 = 1.f;
    r.l1 = 0.f;
    return r;
  }
  float src = scale * (static_cast<float>(dst) + 0.5f) - 0.5f;
  if (src < 0.f) src = 0.f;
  int64_t i0 = static_cast<int64_t>(floorf(src));
  if (i0 > in_size - 1) i0 = in_size - 1;
  float l1 = src - static_cast<float>(i0);
  l1 = l1 < 0.f ? 0.f : (l1 > 1.f ? 1.f : l1);
  r.i0 = i0;
  r.i1 = i0 + (i0 < in_size - 1 ? 1 : 0);
  r.l1 = l1;
  r.l0 = 1.f - l1;
  return r;
}

// ---------------------------------------------------------------------------------------------
// Polygon rasterisation: abscissa where edge (xa, ya)-(xb, yb) crosses the row y = py, valid
// when exactly one endpoint is strictly above the row (half-open rule: no double counting at
// vertices).
MRCNN_HD bool edge_crosses(double ya, double yb, double py) { return (ya > py) != (yb > py); }

MRCNN_HD double edge_x_at(double xa, double ya, double xb, double yb, double py) {
  return xa + (py - ya) * (xb - xa) / (yb - ya);
}

}  // namespace mrcnn
