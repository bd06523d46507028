// CPU pairwise IoU [N, M]: rows in parallel, columns as structure-of-arrays so the inner loop
// vectorises. Same operations and order as torchvision.ops.box_iou, hence identical values.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../common.h"
#include "parallel.h"

namespace mrcnn {
namespace {

at::Tensor box_iou_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  TORCH_CHECK(boxes1.dim() == 2 && boxes1.size(1) == 4, "boxes1 must be [N, 4]");
  TORCH_CHECK(boxes2.dim() == 2 && boxes2.size(1) == 4, "boxes2 must be [M, 4]");
  TORCH_CHECK(boxes1.scalar_type() == boxes2.scalar_type(), "boxes1 and boxes2 dtypes differ");
  const int64_t n = boxes1.size(0);
  const int64_t m = boxes2.size(0);
  at::Tensor out = at::empty({n, m}, boxes1.options());
  if (n == 0 || m == 0) return out;
  const at::Tensor a = boxes1.contiguous();
  const at::Tensor b = boxes2.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "mrcnn_box_iou", [&] {
    using T = scalar_t;
    std::vector<T> bx1(m), by1(m), bx2(m), by2(m), bar(m);
    const T* bp = b.data_ptr<T>();
    for (int64_t j = 0; j < m; ++j) {
      bx1[j] = bp[4 * j];
      by1[j] = bp[4 * j + 1];
      bx2[j] = bp[4 * j + 2];
      by2[j] = bp[4 * j + 3];
      bar[j] = box_area(bp + 4 * j);
    }
    const T* ap = a.data_ptr<T>();
    T* o = out.data_ptr<T>();
    const int64_t rows = std::max<int64_t>(1, (int64_t(1) << 18) / m);  // ~0.3 ms per task
    dynamic_parallel_for(0, n, rows, 8 * n * m, [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        const T x1 = ap[4 * i], y1 = ap[4 * i + 1], x2 = ap[4 * i + 2], y2 = ap[4 * i + 3];
        const T area = box_area(ap + 4 * i);
        T* row = o + i * m;
        for (int64_t j = 0; j < m; ++j) {
          row[j] = iou_with_areas(x1, y1, x2, y2, area, bx1[j], by1[j], bx2[j], by2[j], bar[j]);
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mrcnn, CPU, m) { m.impl("box_iou", &box_iou_cpu); }

}  // namespace mrcnn
