// CUDA pre-NMS proposal selection of the RPN, all FPN levels and images at once: one kernel
// pads the levels' logits into [B, L, max N_l] (-inf beyond each level), ONE at::topk selects
// every level's candidates, and ONE fused kernel gathers, takes the sigmoid, decodes
// (box_coding.h decode_one), clips and tests validity. No host synchronisation.
//
// Equal to the Python path on CUDA (select_proposals' per-level torch.topk, sigmoid,
// box_coder.decode, clip_boxes, nonempty) when the RPN weights are powers of two (they are 1):
// PyTorch's CUDA sigmoid is 1 / (1 + exp(-x)) in the op-math type, its exp is CUDA's expf, and
// the padding only appends -inf after each level's logits, so the candidates of a level are
// the same and in the same order (equal logits by index, as CUDA topk takes them).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "../box_coding.h"
#include "../multilevel.h"
#include "launch.cuh"

namespace mrcnn {
namespace {

// padded[b, l, j] = objectness[b, offset[l] + j] for j < size[l], else -inf.
template <typename T>
__global__ void pad_levels_kernel(int64_t total, const T* __restrict__ obj, int64_t n,
                                  LevelTable t, int64_t max_n, T* __restrict__ padded) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t j = i % max_n;
    const int l = static_cast<int>((i / max_n) % t.count);
    const int64_t b = i / max_n / t.count;
    padded[i] = j < t.size[l] ? obj[b * n + t.offset[l] + j] : static_cast<T>(-INFINITY);
  }
}

// Candidate k of image b (i = b * K + k); with no images, threads still write the levels.
template <typename T>
__global__ void rpn_decode_kernel(int64_t total, int64_t batch, int64_t k_total,
                                  const T* __restrict__ obj, const T* __restrict__ deltas,
                                  const T* __restrict__ anchors, const T* __restrict__ image_hw,
                                  const int64_t* __restrict__ top, int64_t top_k, int64_t n,
                                  LevelTable t, DecodeParams<T> p, T min_size, T score_thresh,
                                  T* __restrict__ boxes, T* __restrict__ scores,
                                  int64_t* __restrict__ levels, bool* __restrict__ valid) {
  using acc_t = at::opmath_type<T>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t b = i / k_total, k = i % k_total;
    int l = 0;
    while (l + 1 < t.count && k >= t.k_start[l + 1]) ++l;
    if (b == 0) levels[k] = l;
    if (b >= batch) continue;
    const int64_t src = t.offset[l] + top[(b * t.count + l) * top_k + (k - t.k_start[l])];
    const acc_t x = static_cast<acc_t>(obj[b * n + src]);
    const T score = static_cast<T>(acc_t(1) / (acc_t(1) + exp_of<acc_t>(-x)));
    scores[i] = score;
    T* box = boxes + 4 * i;
    decode_one<T>(deltas + (b * n + src) * 4, anchors + 4 * src, box, 0, 1, p);
    valid[i] = clip_and_validate<T>(box, image_hw[2 * b], image_hw[2 * b + 1], min_size, score,
                                    score_thresh);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rpn_decode_topk_cuda(
    const at::Tensor& objectness, const at::Tensor& deltas_in, const at::Tensor& anchors_in,
    at::IntArrayRef level_sizes, int64_t pre_nms_top_n, const at::Tensor& image_hw_in,
    at::ArrayRef<double> weights, double clamp, double min_size, double score_thresh) {
  check_rpn_args(objectness, deltas_in, anchors_in, level_sizes, image_hw_in, weights);
  const at::cuda::CUDAGuard guard(objectness.device());
  const LevelTable t = level_table(level_sizes, pre_nms_top_n);
  const int64_t b = objectness.size(0), n = objectness.size(1), k = t.k_start[t.count];
  const auto opts = objectness.options();
  at::Tensor boxes = at::empty({b, k, 4}, opts);
  at::Tensor scores = at::empty({b, k}, opts);
  at::Tensor levels = at::empty({k}, opts.dtype(at::kLong));
  at::Tensor valid = at::empty({b, k}, opts.dtype(at::kBool));
  if (k == 0) return {boxes, scores, levels, valid};

  int64_t max_n = 0;
  for (int l = 0; l < t.count; ++l) max_n = std::max(max_n, t.size[l]);
  const int64_t top_k = std::min(pre_nms_top_n, max_n);
  const at::Tensor obj = objectness.contiguous();
  const at::Tensor deltas = deltas_in.contiguous();
  const at::Tensor anchors = anchors_in.to(objectness.scalar_type()).contiguous();
  const at::Tensor image_hw = image_hw_in.to(objectness.scalar_type()).contiguous();
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, objectness.scalar_type(),
                                  "mrcnn_rpn_decode_topk_cuda", [&] {
    at::Tensor top = at::empty({b, t.count, top_k}, opts.dtype(at::kLong));
    if (b > 0) {
      at::Tensor padded = at::empty({b, t.count, max_n}, opts);
      pad_levels_kernel<scalar_t><<<blocks_for(padded.numel()), kThreads, 0, stream>>>(
          padded.numel(), obj.data_ptr<scalar_t>(), n, t, max_n, padded.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      top = std::get<1>(at::topk(padded, top_k, /*dim=*/2, /*largest=*/true, /*sorted=*/true))
                .contiguous();
    }
    const int64_t total = std::max<int64_t>(b, 1) * k;
    rpn_decode_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        total, b, k, obj.data_ptr<scalar_t>(), deltas.data_ptr<scalar_t>(),
        anchors.data_ptr<scalar_t>(), image_hw.data_ptr<scalar_t>(), top.data_ptr<int64_t>(),
        top_k, n, t, decode_params<scalar_t>(weights, clamp), static_cast<scalar_t>(min_size),
        static_cast<scalar_t>(score_thresh), boxes.data_ptr<scalar_t>(),
        scores.data_ptr<scalar_t>(), levels.data_ptr<int64_t>(), valid.data_ptr<bool>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {boxes, scores, levels, valid};
}

}  // namespace

TORCH_LIBRARY_IMPL(mrcnn, CUDA, m) { m.impl("rpn_decode_topk", &rpn_decode_topk_cuda); }

}  // namespace mrcnn
