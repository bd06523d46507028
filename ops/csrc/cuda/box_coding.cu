// CUDA anchor grids and box decoding: element-wise kernels over the formulas of box_coding.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../box_coding.h"
#include "launch.cuh"

namespace mrcnn {
namespace {

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

template <typename T>
__global__ void encode_kernel(int64_t n, const T* __restrict__ targets,
                              const T* __restrict__ reference, T* __restrict__ out,
                              T* __restrict__ ratio, EncodeParams<at::opmath_type<T>> p) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(blockDim.x) * gridDim.x) {
    encode_one<T>(targets, reference, out, ratio, i, p);
  }
}

template <typename T>
__global__ void encode_scale_kernel(int64_t n, const T* __restrict__ log_ratio,
                                    T* __restrict__ out, EncodeParams<at::opmath_type<T>> p) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(blockDim.x) * gridDim.x) {
    encode_scale_one<T>(log_ratio, out, i, p);
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

// Three steps on the current stream (see box_coding.h): dx, dy and size ratios; ATen's log of
// the ratios, which rounds as torch.log does on this device; the weights.
at::Tensor encode_boxes_cuda(const at::Tensor& targets, const at::Tensor& reference,
                             at::ArrayRef<double> weights) {
  check_encode_args(targets, reference, weights);
  const at::cuda::CUDAGuard guard(targets.device());
  const int64_t n = targets.size(0);
  at::Tensor out = at::empty({n, 4}, targets.options());
  if (n == 0) return out;
  const at::Tensor t = targets.contiguous();
  const at::Tensor r = reference.contiguous();
  at::Tensor ratio = at::empty({n, 2}, targets.options());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(),
                                  "mrcnn_encode_cuda", [&] {
    const auto prm = encode_params<scalar_t>(weights);
    encode_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        n, t.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
        ratio.data_ptr<scalar_t>(), prm);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    ratio.log_();
    encode_scale_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
        n, ratio.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), prm);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mrcnn, CUDA, m) {
  m.impl("grid_anchors", &grid_anchors_cuda);
  m.impl("decode_boxes", &decode_boxes_cuda);
  m.impl("encode_boxes", &encode_boxes_cuda);
}

}  // namespace mrcnn
