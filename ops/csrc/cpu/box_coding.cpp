// CPU anchor grids and box decoding, element-wise kernels equal to torchvision's
// AnchorGenerator.grid_anchors and BoxCoder.decode_single (same operations, same order).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "../box_coding.h"
#include "parallel.h"

namespace mrcnn {
namespace {

// Elements per task, about half a millisecond of work: smaller tasks would make threads (and,
// on a busy machine, waiting for a descheduled one) cost more than they save.
constexpr int64_t kAnchorChunk = int64_t(1) << 18;
constexpr int64_t kDecodeChunk = int64_t(1) << 16;  // exp() makes decoding ~4x dearer per element

at::Tensor grid_anchors_cpu(const at::Tensor& base_anchors, int64_t feat_h, int64_t feat_w,
                            int64_t stride_h, int64_t stride_w) {
  TORCH_CHECK(base_anchors.dim() == 2 && base_anchors.size(1) == 4, "base_anchors must be [A, 4]");
  TORCH_CHECK(feat_h >= 0 && feat_w >= 0, "negative feature size");
  const int64_t a = base_anchors.size(0);
  at::Tensor out = at::empty({feat_h * feat_w * a, 4}, base_anchors.options());
  if (out.numel() == 0) return out;
  const at::Tensor base = base_anchors.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, base.scalar_type(),
                                  "mrcnn_grid_anchors", [&] {
    const scalar_t* bp = base.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t total = feat_h * feat_w * a;
    dynamic_parallel_for(0, total, kAnchorChunk, 4 * total, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        grid_anchor<scalar_t>(bp, op, i, feat_w, a, stride_h, stride_w);
      }
    });
  });
  return out;
}

at::Tensor decode_boxes_cpu(const at::Tensor& deltas, const at::Tensor& boxes,
                            at::ArrayRef<double> weights, double clamp) {
  check_decode_args(deltas, boxes, weights);
  at::Tensor out = at::empty_like(deltas, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  const at::Tensor d = deltas.contiguous();
  const at::Tensor b = boxes.to(deltas.scalar_type()).contiguous();
  const int64_t n = d.size(0), per_row = d.size(1) / 4;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "mrcnn_decode", [&] {
    const DecodeParams<scalar_t> prm = decode_params<scalar_t>(weights, clamp);
    const scalar_t* dp = d.data_ptr<scalar_t>();
    const scalar_t* bp = b.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t total = n * per_row;
    dynamic_parallel_for(0, total, kDecodeChunk, 64 * total, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) decode_one<scalar_t>(dp, bp, op, i, per_row, prm);
    });
  });
  return out;
}

at::Tensor encode_boxes_cpu(const at::Tensor& targets, const at::Tensor& reference,
                            at::ArrayRef<double> weights) {
  check_encode_args(targets, reference, weights);
  at::Tensor out = at::empty({targets.size(0), 4}, targets.options());
  if (out.numel() == 0) return out;
  const at::Tensor t = targets.contiguous();
  const at::Tensor r = reference.contiguous();
  at::Tensor ratio = at::empty({targets.size(0), 2}, targets.options());
  const int64_t n = t.size(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "mrcnn_encode", [&] {
    const auto prm = encode_params<scalar_t>(weights);
    const scalar_t* tp = t.data_ptr<scalar_t>();
    const scalar_t* rp = r.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    scalar_t* qp = ratio.data_ptr<scalar_t>();
    dynamic_parallel_for(0, n, kDecodeChunk, 16 * n, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) encode_one<scalar_t>(tp, rp, op, qp, i, prm);
    });
    ratio.log_();  // ATen's log: see box_coding.h
    dynamic_parallel_for(0, n, kAnchorChunk, 2 * n, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) encode_scale_one<scalar_t>(qp, op, i, prm);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mrcnn, CPU, m) {
  m.impl("grid_anchors", &grid_anchors_cpu);
  m.impl("decode_boxes", &decode_boxes_cpu);
  m.impl("encode_boxes", &encode_boxes_cpu);
}

}  // namespace mrcnn
