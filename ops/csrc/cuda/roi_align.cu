// CUDA RoIAlign: one thread per output element (forward) and per gradient element (backward,
// scattering with atomics). Geometry and bilinear weights come from common.h, shared with the
// CPU kernels. Accumulation is in float for half/bfloat16 and in the input type otherwise, the
// backward's gradient map included (float32 atomics, one cast at the end), as on the CPU.
// A RoI whose batch index names no image is a device-side assert (and is not read).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/native/cuda/KernelUtils.cuh>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common.h"
#include "roi_align_grad.cuh"
#include "launch.cuh"

namespace mrcnn {
namespace {

template <typename scalar_t, typename acc_t>
__global__ void roi_align_forward_kernel(int64_t total, const scalar_t* __restrict__ input,
                                         const acc_t* __restrict__ rois, acc_t scale,
                                         int64_t batch, int64_t channels, int64_t height,
                                         int64_t width, int ph, int pw, int sr, bool aligned,
                                         scalar_t* __restrict__ out) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int bx = static_cast<int>(idx % pw);
    const int by = static_cast<int>((idx / pw) % ph);
    const int64_t c = (idx / pw / ph) % channels;
    const int64_t r = idx / pw / ph / channels;
    if (!valid_batch(rois[r * 5], batch)) {
      CUDA_KERNEL_ASSERT(false && "roi_align: a RoI's batch index names no image");
      continue;
    }
    const RoiGeometry<acc_t> g = roi_geometry<acc_t>(rois + r * 5, scale, ph, pw, sr, aligned);
    const scalar_t* plane = input + (g.batch * channels + c) * height * width;
    out[idx] = static_cast<scalar_t>(average_bin(plane, g, by, bx, height, width));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void roi_align_backward_kernel(int64_t total, const scalar_t* __restrict__ grad,
                                          int64_t s0, int64_t s1, int64_t s2, int64_t s3,
                                          const acc_t* __restrict__ rois, acc_t scale,
                                          int64_t batch, int64_t channels, int64_t height,
                                          int64_t width, int ph, int pw, int sr, bool aligned,
                                          acc_t* grad_input, int64_t grad_input_numel) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int bx = static_cast<int>(idx % pw);
    const int by = static_cast<int>((idx / pw) % ph);
    const int64_t c = (idx / pw / ph) % channels;
    const int64_t r = idx / pw / ph / channels;
    if (!valid_batch(rois[r * 5], batch)) {
      CUDA_KERNEL_ASSERT(false && "roi_align backward: a RoI's batch index names no image");
      continue;
    }
    const RoiGeometry<acc_t> g = roi_geometry<acc_t>(rois + r * 5, scale, ph, pw, sr, aligned);
    const acc_t go = acc_t(grad[r * s0 + c * s1 + by * s2 + bx * s3]);
    const int64_t plane = (g.batch * channels + c) * height * width;
    scatter_bin_gradient(grad_input, grad_input_numel, plane, g, by, bx, go, height, width);
  }
}

at::Tensor roi_align_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                  double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                  int64_t sampling_ratio, bool aligned) {
  TORCH_CHECK(input.dim() == 4, "input must be [N, C, H, W], got ", input.sizes());
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "rois must be [K, 5], got ", rois.sizes());
  TORCH_CHECK(pooled_h > 0 && pooled_w > 0, "output_size must be positive");
  TORCH_CHECK(input.device() == rois.device(), "input and rois must be on one device");
  const at::cuda::CUDAGuard guard(input.device());
  at::Tensor out = at::zeros({rois.size(0), input.size(1), pooled_h, pooled_w}, input.options());
  if (out.numel() == 0 || input.numel() == 0) return out;
  const at::Tensor in = input.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "mrcnn_roi_align_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor r = rois.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    roi_align_forward_kernel<scalar_t, acc_t>
        <<<blocks_for(out.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            out.numel(), in.data_ptr<scalar_t>(), r.data_ptr<acc_t>(),
            static_cast<acc_t>(spatial_scale), in.size(0), in.size(1), in.size(2), in.size(3),
            int(pooled_h),
            int(pooled_w), int(sampling_ratio), aligned, out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois,
                                   double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                   int64_t batch_size, int64_t channels, int64_t height,
                                   int64_t width, int64_t sampling_ratio, bool aligned) {
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                  grad.size(2) == pooled_h && grad.size(3) == pooled_w,
              "grad must be [K, C, pooled_h, pooled_w], got ", grad.sizes());
  TORCH_CHECK(grad.device() == rois.device(), "grad and rois must be on one device");
  const at::cuda::CUDAGuard guard(grad.device());
  // The sums run in the accumulation type (float32 for half/bfloat16 gradients).
  const at::ScalarType acc_type = at::toOpMathType(grad.scalar_type());
  at::Tensor gin = at::zeros({batch_size, channels, height, width}, grad.options().dtype(acc_type));
  if (grad.numel() == 0 || gin.numel() == 0) return gin.to(grad.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "mrcnn_roi_align_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor r = rois.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    roi_align_backward_kernel<scalar_t, acc_t>
        <<<blocks_for(grad.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            grad.numel(), grad.data_ptr<scalar_t>(), grad.stride(0), grad.stride(1),
            grad.stride(2), grad.stride(3), r.data_ptr<acc_t>(),
            static_cast<acc_t>(spatial_scale), batch_size, channels, height, width,
            int(pooled_h), int(pooled_w), int(sampling_ratio), aligned, gin.data_ptr<acc_t>(),
            gin.numel());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return gin.to(grad.scalar_type());  // no copy when grad is float32 / float64
}

}  // namespace

TORCH_LIBRARY_IMPL(mrcnn, CUDA, m) {
  m.impl("roi_align", &roi_align_forward_cuda);
  m.impl("roi_align_backward", &roi_align_backward_cuda);
}

}  // namespace mrcnn
