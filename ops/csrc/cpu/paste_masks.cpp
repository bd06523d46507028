// CPU mask pasting: torchvision's paste_masks_in_image followed by `> threshold`, in one pass.
// Each output pixel inside its (expanded, integer) box samples the zero-padded mask with the
// bilinear weights F.interpolate(align_corners=False) would use for a resize to the box size;
// nothing is allocated per box. Rows of all masks are processed in parallel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "../common.h"
#include "../paste_boxes.h"
#include "parallel.h"

namespace mrcnn {
namespace {

at::Tensor paste_masks_cpu(const at::Tensor& masks, const at::Tensor& boxes, int64_t image_h,
                           int64_t image_w, double threshold, int64_t padding) {
  TORCH_CHECK(masks.dim() == 3 && masks.size(1) == masks.size(2), "masks must be [K, M, M], got ",
              masks.sizes());
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4 && boxes.size(0) == masks.size(0),
              "boxes must be [K, 4] with K = masks.size(0), got ", boxes.sizes());
  TORCH_CHECK(image_h >= 0 && image_w >= 0 && padding >= 0, "negative size or padding");
  const int64_t k_masks = masks.size(0);
  at::Tensor out = at::empty({k_masks, image_h, image_w}, masks.options().dtype(at::kBool));
  if (out.numel() == 0) return out;
  const int64_t m = masks.size(1);
  TORCH_CHECK(m > 0, "masks must not be empty");
  const at::Tensor ebox = paste_boxes(boxes, m, padding);
  const int64_t* eb = ebox.data_ptr<int64_t>();
  const at::Tensor mk = masks.to(at::kFloat).contiguous();
  const float* mp = mk.data_ptr<float>();
  bool* op = out.data_ptr<bool>();
  const int64_t mp_size = m + 2 * padding;  // side of the padded mask
  // The comparison `pasted > threshold` happens between float32 values in torchvision.
  const float thr = static_cast<float>(threshold);

  dynamic_parallel_for(0, k_masks * image_h, 64, 4 * out.numel(), [&](int64_t row0, int64_t row1) {
    std::vector<Lerp> xs;  // x weights of the current mask, rebuilt when the mask changes
    int64_t cached = -1;
    for (int64_t row = row0; row < row1; ++row) {
      const int64_t k = row / image_h, y = row % image_h;
      bool* o = op + row * image_w;
      const int64_t x0 = eb[4 * k], y0 = eb[4 * k + 1], x1 = eb[4 * k + 2], y1 = eb[4 * k + 3];
      const int64_t w = std::max<int64_t>(x1 - x0 + 1, 1);
      const int64_t h = std::max<int64_t>(y1 - y0 + 1, 1);
      const int64_t xa = std::max<int64_t>(x0, 0), xb = std::min<int64_t>(x1 + 1, image_w);
      const int64_t ya = std::max<int64_t>(y0, 0), yb = std::min<int64_t>(y1 + 1, image_h);
      if (y < ya || y >= yb || xa >= xb) {
        std::memset(o, 0, image_w);
        continue;
      }
      std::memset(o, 0, xa);
      std::memset(o + xb, 0, image_w - xb);
      if (cached != k) {
        const float sx = static_cast<float>(mp_size) / static_cast<float>(w);
        xs.resize(xb - xa);
        for (int64_t x = xa; x < xb; ++x) xs[x - xa] = resize_lerp(sx, x - x0, mp_size, w);
        cached = k;
      }
      const float sy = static_cast<float>(mp_size) / static_cast<float>(h);
      const Lerp ly = resize_lerp(sy, y - y0, mp_size, h);
      const float* mask = mp + k * m * m;
      // Value of the padded mask at (py, px): the mask, or 0 in the padding ring.
      auto at_padded = [&](int64_t py, int64_t px) -> float {
        const int64_t iy = py - padding, ix = px - padding;
        return (iy >= 0 && iy < m && ix >= 0 && ix < m) ? mask[iy * m + ix] : 0.f;
      };
      for (int64_t x = xa; x < xb; ++x) {
        const Lerp& lx = xs[x - xa];
        const float t0 = at_padded(ly.i0, lx.i0) * lx.l0 + at_padded(ly.i0, lx.i1) * lx.l1;
        const float t1 = at_padded(ly.i1, lx.i0) * lx.l0 + at_padded(ly.i1, lx.i1) * lx.l1;
        o[x] = (t0 * ly.l0 + t1 * ly.l1) > thr;
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mrcnn, CPU, m) { m.impl("paste_masks", &paste_masks_cpu); }

}  // namespace mrcnn
