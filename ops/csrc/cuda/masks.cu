// CUDA mask kernels: pasting mask probabilities into the image (one thread per output pixel)
// and rasterising polygons into mask targets (one thread per target pixel). Same formulas as
// the CPU kernels (common.h, paste_boxes.h).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common.h"
#include "../paste_boxes.h"
#include "launch.cuh"

namespace mrcnn {

void check_polygon_args(const at::Tensor& coords, const at::Tensor& poly_offsets,
                        const at::Tensor& roi_poly_offsets, const at::Tensor& rois,
                        int64_t mask_size);  // cpu/polygons_to_masks.cpp

namespace {

__global__ void paste_masks_kernel(int64_t total, const float* __restrict__ masks,
                                   const int64_t* __restrict__ eboxes, int64_t m, int64_t padding,
                                   int64_t image_h, int64_t image_w, float thr,
                                   bool* __restrict__ out) {
  const int64_t mp = m + 2 * padding;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t x = idx % image_w;
    const int64_t y = (idx / image_w) % image_h;
    const int64_t k = idx / image_w / image_h;
    const int64_t* eb = eboxes + 4 * k;
    const int64_t x0 = eb[0], y0 = eb[1], x1 = eb[2], y1 = eb[3];
    // Inside the pasted region iff max(x0, 0) <= x < min(x1 + 1, W), likewise for y.
    if (x < x0 || x > x1 || y < y0 || y > y1) {
      out[idx] = false;
      continue;
    }
    const int64_t w = x1 - x0 + 1 > 1 ? x1 - x0 + 1 : 1;
    const int64_t h = y1 - y0 + 1 > 1 ? y1 - y0 + 1 : 1;
    const Lerp lx = resize_lerp(static_cast<float>(mp) / static_cast<float>(w), x - x0, mp, w);
    const Lerp ly = resize_lerp(static_cast<float>(mp) / static_cast<float>(h), y - y0, mp, h);
    const float* mask = masks + k * m * m;
    auto at_padded = [&](int64_t py, int64_t px) -> float {
      const int64_t iy = py - padding, ix = px - padding;
      return (iy >= 0 && iy < m && ix >= 0 && ix < m) ? mask[iy * m + ix] : 0.f;
    };
    const float t0 = at_padded(ly.i0, lx.i0) * lx.l0 + at_padded(ly.i0, lx.i1) * lx.l1;
    const float t1 = at_padded(ly.i1, lx.i0) * lx.l0 + at_padded(ly.i1, lx.i1) * lx.l1;
    out[idx] = (t0 * ly.l0 + t1 * ly.l1) > thr;
  }
}

at::Tensor paste_masks_cuda(const at::Tensor& masks, const at::Tensor& boxes, int64_t image_h,
                            int64_t image_w, double threshold, int64_t padding) {
  TORCH_CHECK(masks.dim() == 3 && masks.size(1) == masks.size(2), "masks must be [K, M, M], got ",
              masks.sizes());
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4 && boxes.size(0) == masks.size(0),
              "boxes must be [K, 4] with K = masks.size(0), got ", boxes.sizes());
  TORCH_CHECK(image_h >= 0 && image_w >= 0 && padding >= 0, "negative size or padding");
  const at::cuda::CUDAGuard guard(masks.device());
  at::Tensor out = at::empty({masks.size(0), image_h, image_w}, masks.options().dtype(at::kBool));
  if (out.numel() == 0) return out;
  TORCH_CHECK(masks.size(1) > 0, "masks must not be empty");
  const at::Tensor ebox = paste_boxes(boxes, masks.size(1), padding);
  const at::Tensor mk = masks.to(at::kFloat).contiguous();
  paste_masks_kernel<<<blocks_for(out.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      out.numel(), mk.data_ptr<float>(), ebox.data_ptr<int64_t>(), masks.size(1), padding, image_h,
      image_w, static_cast<float>(threshold), out.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

__global__ void polygons_kernel(int64_t total, int64_t m, const float* __restrict__ coords,
                                const int64_t* __restrict__ poly_offsets,
                                const int64_t* __restrict__ roi_poly_offsets,
                                const float* __restrict__ rois, float* __restrict__ out) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t col = idx % m;
    const int64_t row = (idx / m) % m;
    const int64_t r = idx / m / m;
    const float* box = rois + 4 * r;
    const float rw = box[2] - box[0], rh = box[3] - box[1];
    const float sx = static_cast<float>(m) / (rw < 1.f ? 1.f : rw);
    const float sy = static_cast<float>(m) / (rh < 1.f ? 1.f : rh);
    const double py = static_cast<double>(row) + 0.5;
    const double cx = static_cast<double>(col) + 0.5;
    bool inside = false;
    for (int64_t p = roi_poly_offsets[r]; p < roi_poly_offsets[r + 1] && !inside; ++p) {
      const int64_t n = (poly_offsets[p + 1] - poly_offsets[p]) / 2;
      if (n < 3) continue;
      const float* c = coords + poly_offsets[p];
      bool odd = false;
      double xa = static_cast<double>((c[2 * (n - 1)] - box[0]) * sx);
      double ya = static_cast<double>((c[2 * (n - 1) + 1] - box[1]) * sy);
      for (int64_t i = 0; i < n; ++i) {  // edge (i - 1) -> i, starting with the closing edge
        const double xb = static_cast<double>((c[2 * i] - box[0]) * sx);
        const double yb = static_cast<double>((c[2 * i + 1] - box[1]) * sy);
        if (edge_crosses(ya, yb, py) && edge_x_at(xa, ya, xb, yb, py) > cx) odd = !odd;
        xa = xb;
        ya = yb;
      }
      inside = odd;
    }
    out[idx] = inside ? 1.f : 0.f;
  }
}

at::Tensor polygons_to_masks_cuda(const at::Tensor& coords, const at::Tensor& poly_offsets,
                                  const at::Tensor& roi_poly_offsets, const at::Tensor& rois,
                                  int64_t mask_size) {
  check_polygon_args(coords, poly_offsets, roi_poly_offsets, rois, mask_size);
  const at::cuda::CUDAGuard guard(rois.device());
  at::Tensor out = at::empty({rois.size(0), mask_size, mask_size}, rois.options());
  if (out.numel() == 0) return out;
  const at::Tensor cs = coords.contiguous(), po = poly_offsets.contiguous();
  const at::Tensor rpo = roi_poly_offsets.contiguous(), rb = rois.contiguous();
  polygons_kernel<<<blocks_for(out.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      out.numel(), mask_size, cs.data_ptr<float>(), po.data_ptr<int64_t>(),
      rpo.data_ptr<int64_t>(), rb.data_ptr<float>(), out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mrcnn, CUDA, m) {
  m.impl("paste_masks", &paste_masks_cuda);
  m.impl("polygons_to_masks", &polygons_to_masks_cuda);
}

}  // namespace mrcnn
