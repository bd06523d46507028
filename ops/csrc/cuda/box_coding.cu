// CUDA anchor grids and box decoding: element-wise kernels over the formulas of box_coding.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../box_coding.h"

namespace mrcnn {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t n) {
  return std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 65535 * 8));
}

template <typename T>
__global__ void grid_anchors_kernel(int64_t total, const T* __restrict__ base, T* __restrict__ out,
                                    int64_t feat_w, int64_t a, int64_t stride_h,
                                    int64_t stride_w) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(blockDim.x) * gridDim.x) {
    grid_anchor<T>(base, out, i, feat_w, a, stride_h, stride_w);
  }
}

template <typename T>
__global__ void decode_kernel(int64_t total, const T* __restrict__ deltas,
                              const T* __restrict__ boxes, T* __restrict__ out, int64_t per_row,
                              DecodeParams<T> p) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(blockDim.x) * gridDim.x) {
    decode_one<T>(deltas, boxes, out, i, per_row, p);
  }
}

at::Tensor grid_anchors_cuda(const at::Tensor& base_anchors, int64_t feat_h, int64_t feat_w,
                             int64_t stride_h, int64_t stride_w) {
  TORCH_CHECK(base_anchors.dim() == 2 && base_anchors.size(1) == 4, "base_anchors must be [A, 4]");
  TORCH_CHECK(feat_h >= 0 && feat_w >= 0, "negative feature size");
  const at::cuda::CUDAGuard guard(base_anchors.device());
  const int64_t a = base_anchors.size(0), total = feat_h * feat_w * a;
  at::Tensor out = at::empty({total, 4}, base_anchors.options());
  if (total == 0) return out;
  const at::Tensor base = base_anchors.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, base.scalar_type(),
                                  "mrcnn_grid_anchors_cuda", [&] {
    grid_anchors_kernel<scalar_t><<<blocks_for(total), kThreads, 0,
                                    at::cuda::getCurrentCUDAStream()>>>(
        total, base.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), feat_w, a, stride_h,
        stride_w);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor decode_boxes_cuda(const at::Tensor& deltas, const at::Tensor& boxes,
                             at::ArrayRef<double> weights, double clamp) {
  check_decode_args(deltas, boxes, weights);
  const at::cuda::CUDAGuard guard(deltas.device());
  at::Tensor out = at::empty_like(deltas, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  const at::Tensor d = deltas.contiguous();
  const at::Tensor b = boxes.to(deltas.scalar_type()).contiguous();
  const int64_t per_row = d.size(1) / 4, total = d.size(0) * per_row;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(),
                                  "mrcnn_decode_cuda", [&] {
    decode_kernel<scalar_t><<<blocks_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        total, d.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), per_row,
        decode_params<scalar_t>(weights, clamp));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mrcnn, CUDA, m) {
  m.impl("grid_anchors", &grid_anchors_cuda);
  m.impl("decode_boxes", &decode_boxes_cuda);
}

}  // namespace mrcnn
