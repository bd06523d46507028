// CUDA RoIAlign over all FPN levels in one launch (forward) and one launch (backward).
//
// One thread per output (forward) or per incoming-gradient element (backward), exactly as
// cuda/roi_align.cu, except that the thread first picks its RoI's level with the rule of
// poolers.map_levels (fpn_level in multilevel.h, in the rois' dtype) and then reads that
// level's map, size and scale from a small table passed by value. The sampling code is the
// same (common.h, roi_align_grad.cuh), so each output equals roi_align on the RoI's level bit
// for bit; the backward sums into float32 maps for half/bfloat16 gradients, as roi_align's.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/native/cuda/KernelUtils.cuh>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "../multilevel.h"
#include "roi_align_grad.cuh"
#include "launch.cuh"

namespace mrcnn {
namespace {

// The feature maps (or their gradients) of every level, NCHW contiguous.
template <typename T, typename acc_t>
struct Maps {
  T* data[kMaxLevels];
  int64_t height[kMaxLevels], width[kMaxLevels], numel[kMaxLevels];
  acc_t scale[kMaxLevels];
};

template <typename roi_t>
struct Rule {
  roi_t canonical_level, inv_canonical_scale;
  int k_min, k_max;
};

template <typename scalar_t, typename acc_t, typename roi_t>
__global__ void multilevel_forward_kernel(int64_t total, Maps<const scalar_t, acc_t> maps,
                                          const roi_t* __restrict__ rois_raw,
                                          const acc_t* __restrict__ rois, Rule<roi_t> rule,
                                          int64_t batch, int64_t channels, int ph, int pw,
                                          int sr, bool aligned, scalar_t* __restrict__ out) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int bx = static_cast<int>(idx % pw);
    const int by = static_cast<int>((idx / pw) % ph);
    const int64_t c = (idx / pw / ph) % channels;
    const int64_t r = idx / pw / ph / channels;
    const int l = fpn_level<roi_t>(rois_raw + r * 5 + 1, rule.canonical_level,
                                   rule.inv_canonical_scale, rule.k_min, rule.k_max);
    if (!valid_batch(rois[r * 5], batch)) {
      CUDA_KERNEL_ASSERT(false && "multilevel_roi_align: a RoI's batch index names no image");
      out[idx] = scalar_t(0);
      continue;
    }
    if (l < 0 || maps.numel[l] == 0) {
      out[idx] = scalar_t(0);
      continue;
    }
    const int64_t height = maps.height[l], width = maps.width[l];
    const RoiGeometry<acc_t> g =
        roi_geometry<acc_t>(rois + r * 5, maps.scale[l], ph, pw, sr, aligned);
    const scalar_t* plane = maps.data[l] + (g.batch * channels + c) * height * width;
    out[idx] = static_cast<scalar_t>(average_bin(plane, g, by, bx, height, width));
  }
}

template <typename scalar_t, typename acc_t, typename roi_t>
__global__ void multilevel_backward_kernel(int64_t total, const scalar_t* __restrict__ grad,
                                           int64_t s0, int64_t s1, int64_t s2, int64_t s3,
                                           Maps<acc_t, acc_t> maps,
                                           const roi_t* __restrict__ rois_raw,
                                           const acc_t* __restrict__ rois, Rule<roi_t> rule,
                                           int64_t batch, int64_t channels, int ph, int pw,
                                           int sr, bool aligned) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int bx = static_cast<int>(idx % pw);
    const int by = static_cast<int>((idx / pw) % ph);
    const int64_t c = (idx / pw / ph) % channels;
    const int64_t r = idx / pw / ph / channels;
    const int l = fpn_level<roi_t>(rois_raw + r * 5 + 1, rule.canonical_level,
                                   rule.inv_canonical_scale, rule.k_min, rule.k_max);
    if (!valid_batch(rois[r * 5], batch)) {
      CUDA_KERNEL_ASSERT(false && "multilevel_roi_align: a RoI's batch index names no image");
      continue;
    }
    if (l < 0 || maps.numel[l] == 0) continue;
    const int64_t height = maps.height[l], width = maps.width[l];
    const RoiGeometry<acc_t> g =
        roi_geometry<acc_t>(rois + r * 5, maps.scale[l], ph, pw, sr, aligned);
    const acc_t go = acc_t(grad[r * s0 + c * s1 + by * s2 + bx * s3]);
    const int64_t plane = (g.batch * channels + c) * height * width;
    acc_t* gi = maps.data[l];
    const int64_t gi_numel = maps.numel[l];
    scatter_bin_gradient(gi, gi_numel, plane, g, by, bx, go, height, width);
  }
}

template <typename T, typename acc_t>
Maps<T, acc_t> maps_of(const std::vector<at::Tensor>& tensors, at::ArrayRef<double> scales) {
  Maps<T, acc_t> m{};
  for (size_t l = 0; l < tensors.size(); ++l) {
    m.data[l] = tensors[l].data_ptr<std::remove_const_t<T>>();
    m.height[l] = tensors[l].size(2);
    m.width[l] = tensors[l].size(3);
    m.numel[l] = tensors[l].numel();
    m.scale[l] = static_cast<acc_t>(scales[l]);
  }
  return m;
}

template <typename roi_t>
Rule<roi_t> rule_of(int64_t canonical_level, double canonical_scale, int64_t k_min,
                    int64_t levels) {
  return {static_cast<roi_t>(canonical_level), roi_t(1) / static_cast<roi_t>(canonical_scale),
          static_cast<int>(k_min), static_cast<int>(k_min + levels - 1)};
}

template <typename scalar_t, typename roi_t>
void launch_forward(const std::vector<at::Tensor>& maps, const at::Tensor& rois,
                    at::ArrayRef<double> scales, int64_t ph, int64_t pw, int64_t sr,
                    bool aligned, int64_t canonical_level, double canonical_scale, int64_t k_min,
                    at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const at::Tensor raw = rois.contiguous();
  const at::Tensor r = rois.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
  multilevel_forward_kernel<scalar_t, acc_t, roi_t>
      <<<blocks_for(out.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          out.numel(), maps_of<const scalar_t, acc_t>(maps, scales), raw.data_ptr<roi_t>(),
          r.data_ptr<acc_t>(),
          rule_of<roi_t>(canonical_level, canonical_scale, k_min, int64_t(maps.size())),
          maps[0].size(0), out.size(1), int(ph), int(pw), int(sr), aligned,
          out.data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename roi_t>
void launch_backward(const at::Tensor& grad, const at::Tensor& rois,
                     const std::vector<at::Tensor>& grads, at::ArrayRef<double> scales,
                     int64_t ph, int64_t pw, int64_t sr, bool aligned, int64_t canonical_level,
                     double canonical_scale, int64_t k_min) {
  using acc_t = at::opmath_type<scalar_t>;
  const at::Tensor raw = rois.contiguous();
  const at::Tensor r = rois.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
  multilevel_backward_kernel<scalar_t, acc_t, roi_t>
      <<<blocks_for(grad.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          grad.numel(), grad.data_ptr<scalar_t>(), grad.stride(0), grad.stride(1),
          grad.stride(2), grad.stride(3), maps_of<acc_t, acc_t>(grads, scales),
          raw.data_ptr<roi_t>(), r.data_ptr<acc_t>(),
          rule_of<roi_t>(canonical_level, canonical_scale, k_min, int64_t(grads.size())),
          grads[0].size(0), grad.size(1), int(ph), int(pw), int(sr), aligned);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor multilevel_roi_align_cuda(at::TensorList features, const at::Tensor& rois,
                                     at::ArrayRef<double> spatial_scales, int64_t pooled_h,
                                     int64_t pooled_w, int64_t sampling_ratio, bool aligned,
                                     int64_t canonical_level, double canonical_scale,
                                     int64_t k_min) {
  check_multilevel_args(features, rois, spatial_scales, pooled_h, pooled_w);
  const at::cuda::CUDAGuard guard(rois.device());
  const at::Tensor& f0 = features[0];
  at::Tensor out = at::zeros({rois.size(0), f0.size(1), pooled_h, pooled_w}, f0.options());
  if (out.numel() == 0) return out;
  std::vector<at::Tensor> maps;
  for (const at::Tensor& f : features) maps.push_back(f.contiguous());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f0.scalar_type(),
                                  "mrcnn_multilevel_roi_align_cuda", [&] {
    if (rois.scalar_type() == at::kFloat) {
      launch_forward<scalar_t, float>(maps, rois, spatial_scales, pooled_h, pooled_w,
                                      sampling_ratio, aligned, canonical_level, canonical_scale,
                                      k_min, out);
    } else {
      launch_forward<scalar_t, double>(maps, rois, spatial_scales, pooled_h, pooled_w,
                                       sampling_ratio, aligned, canonical_level, canonical_scale,
                                       k_min, out);
    }
  });
  return out;
}

std::vector<at::Tensor> multilevel_roi_align_backward_cuda(
    const at::Tensor& grad, const at::Tensor& rois, at::ArrayRef<double> spatial_scales,
    int64_t pooled_h, int64_t pooled_w, int64_t batch_size, int64_t channels,
    at::IntArrayRef heights, at::IntArrayRef widths, int64_t sampling_ratio, bool aligned,
    int64_t canonical_level, double canonical_scale, int64_t k_min) {
  check_multilevel_backward_args(grad, rois, spatial_scales, pooled_h, pooled_w, channels, heights,
                                 widths);
  const int64_t levels = static_cast<int64_t>(spatial_scales.size());
  TORCH_CHECK(grad.device() == rois.device(), "grad and rois are on different devices");
  const at::cuda::CUDAGuard guard(grad.device());
  // The per-level sums run in the accumulation type (float32 for half/bfloat16 gradients) and
  // are cast to the gradient's dtype once at the end.
  const at::TensorOptions acc = grad.options().dtype(at::toOpMathType(grad.scalar_type()));
  std::vector<at::Tensor> grads;
  for (int64_t l = 0; l < levels; ++l) {
    grads.push_back(at::zeros({batch_size, channels, heights[l], widths[l]}, acc));
  }
  auto cast_back = [&]() {
    for (at::Tensor& g : grads) g = g.to(grad.scalar_type());  // no copy for float32 / float64
    return grads;
  };
  if (grad.numel() == 0) return cast_back();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "mrcnn_multilevel_roi_align_backward_cuda", [&] {
    if (rois.scalar_type() == at::kFloat) {
      launch_backward<scalar_t, float>(grad, rois, grads, spatial_scales, pooled_h, pooled_w,
                                       sampling_ratio, aligned, canonical_level, canonical_scale,
                                       k_min);
    } else {
      launch_backward<scalar_t, double>(grad, rois, grads, spatial_scales, pooled_h, pooled_w,
                                        sampling_ratio, aligned, canonical_level,
                                        canonical_scale, k_min);
    }
  });
  return cast_back();
}

}  // namespace

TORCH_LIBRARY_IMPL(mrcnn, CUDA, m) {
  m.impl("multilevel_roi_align", &multilevel_roi_align_cuda);
  m.impl("multilevel_roi_align_backward", &multilevel_roi_align_backward_cuda);
}

}  // namespace mrcnn
