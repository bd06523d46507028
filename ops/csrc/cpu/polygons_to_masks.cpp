// CPU mask targets from polygons: crop each RoI's polygons to the RoI, scale them to an M x M
// grid and rasterise by pixel-centre sampling (even-odd rule per polygon, union over the
// instance's polygons). Scanline fill: per row, the edge crossings are sorted once and the row
// is filled between them. RoIs are processed in parallel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common.h"
#include "parallel.h"

namespace mrcnn {

// Shared argument checks (also used by the CUDA kernel, on metadata only).
void check_polygon_args(const at::Tensor& coords, const at::Tensor& poly_offsets,
                        const at::Tensor& roi_poly_offsets, const at::Tensor& rois,
                        int64_t mask_size) {
  TORCH_CHECK(coords.dim() == 1 && coords.scalar_type() == at::kFloat,
              "coords must be a float32 1-D tensor");
  TORCH_CHECK(poly_offsets.dim() == 1 && poly_offsets.size(0) >= 1 &&
                  poly_offsets.scalar_type() == at::kLong,
              "poly_offsets must be int64 [P + 1]");
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 4 && rois.scalar_type() == at::kFloat,
              "rois must be float32 [R, 4]");
  TORCH_CHECK(roi_poly_offsets.dim() == 1 && roi_poly_offsets.size(0) == rois.size(0) + 1 &&
                  roi_poly_offsets.scalar_type() == at::kLong,
              "roi_poly_offsets must be int64 [R + 1]");
  TORCH_CHECK(mask_size > 0, "mask_size must be positive");
  const auto dev = rois.device();
  TORCH_CHECK(coords.device() == dev && poly_offsets.device() == dev &&
                  roi_poly_offsets.device() == dev,
              "all polygons_to_masks inputs must be on one device");
}

namespace {

at::Tensor polygons_to_masks_cpu(const at::Tensor& coords, const at::Tensor& poly_offsets,
                                 const at::Tensor& roi_poly_offsets, const at::Tensor& rois,
                                 int64_t mask_size) {
  check_polygon_args(coords, poly_offsets, roi_poly_offsets, rois, mask_size);
  const int64_t r_count = rois.size(0), m = mask_size;
  at::Tensor out = at::zeros({r_count, m, m}, rois.options().dtype(at::kFloat));
  if (r_count == 0) return out;
  const at::Tensor cs = coords.contiguous(), po = poly_offsets.contiguous();
  const at::Tensor rpo = roi_poly_offsets.contiguous(), rb = rois.contiguous();
  const float* cp = cs.data_ptr<float>();
  const int64_t* pp = po.data_ptr<int64_t>();
  const int64_t* rp = rpo.data_ptr<int64_t>();
  const float* bp = rb.data_ptr<float>();
  const int64_t n_polys = po.size(0) - 1, n_coords = cs.size(0);
  for (int64_t r = 0; r <= r_count; ++r) {
    TORCH_CHECK(rp[r] >= 0 && rp[r] <= n_polys && (r == 0 || rp[r] >= rp[r - 1]),
                "roi_poly_offsets must be non-decreasing within [0, P]");
  }
  for (int64_t p = 0; p <= n_polys; ++p) {
    TORCH_CHECK(pp[p] >= 0 && pp[p] <= n_coords && (p == 0 || pp[p] >= pp[p - 1]),
                "poly_offsets must be non-decreasing within [0, coords.numel()]");
  }
  float* op = out.data_ptr<float>();

  const int64_t work = 16 * out.numel() + cs.numel();
  dynamic_parallel_for(0, r_count, 8, work, [&](int64_t r0, int64_t r1) {
    std::vector<double> xs, ys, cross;
    for (int64_t r = r0; r < r1; ++r) {
      const float* box = bp + 4 * r;
      // RoI size floored at one pixel, as maskrcnn-benchmark and NVIDIA's kernel do.
      const float sx = static_cast<float>(m) / std::max(box[2] - box[0], 1.0f);
      const float sy = static_cast<float>(m) / std::max(box[3] - box[1], 1.0f);
      float* mask = op + r * m * m;
      for (int64_t p = rp[r]; p < rp[r + 1]; ++p) {
        const int64_t n = (pp[p + 1] - pp[p]) / 2;
        if (n < 3) continue;  // fewer than 3 points enclose nothing
        const float* c = cp + pp[p];
        xs.resize(n);
        ys.resize(n);
        for (int64_t i = 0; i < n; ++i) {
          xs[i] = static_cast<double>((c[2 * i] - box[0]) * sx);
          ys[i] = static_cast<double>((c[2 * i + 1] - box[1]) * sy);
        }
        for (int64_t row = 0; row < m; ++row) {
          const double py = static_cast<double>(row) + 0.5;
          cross.clear();
          for (int64_t i = 0; i < n; ++i) {
            const int64_t j = i + 1 == n ? 0 : i + 1;
            if (!edge_crosses(ys[i], ys[j], py)) continue;
            const double x = edge_x_at(xs[i], ys[i], xs[j], ys[j], py);
            if (x == x) cross.push_back(x);  // a NaN crossing is never "to the right"; skip it
          }
          if (cross.empty()) continue;
          std::sort(cross.begin(), cross.end());
          // A centre is inside when an odd number of crossings lie strictly to its right.
          const int64_t nc = static_cast<int64_t>(cross.size());
          int64_t left = 0;  // crossings at or left of the current centre
          for (int64_t col = 0; col < m; ++col) {
            const double cx = static_cast<double>(col) + 0.5;
            while (left < nc && cross[left] <= cx) ++left;
            if ((nc - left) & 1) mask[row * m + col] = 1.f;
          }
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mrcnn, CPU, m) { m.impl("polygons_to_masks", &polygons_to_masks_cpu); }

}  // namespace mrcnn
