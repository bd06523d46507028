// CUDA matching of predictions to padded ground truth (see match.h for the semantics). Three
// kernels on the current stream, no host synchronisation:
//   pass 1a (low-quality matches only): block (gt, chunk) max-reduces the IoUs of one gt with a
//           chunk of the predictions into partial[gt, chunk];
//   pass 1b: one thread per gt folds its chunks into highest[gt];
//   pass 2:  one thread per (image, prediction) walks the image's gts, staged through shared
//            memory a tile at a time, for the best gt, the thresholds and the low-quality rule.
// max is exact, so the chunking never changes a result: they equal the CPU kernel's.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "../common.h"
#include "../match.h"
#include "launch.cuh"

namespace mrcnn {
namespace {

constexpr int64_t kMaxChunks = 64;  // pass 1a chunks per gt

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// NaN-propagating max of (value, nan flag) pairs: the value is meaningful only without NaN.
template <typename T>
__device__ __forceinline__ void max_update(T& best, bool& nan, T q) {
  nan |= is_nan(q);
  best = q > best ? q : best;
}

template <typename T>
__global__ void gt_highest_partial_kernel(const T* __restrict__ gt, const bool* __restrict__ valid,
                                          const T* __restrict__ boxes, bool shared, int64_t m,
                                          int64_t n, int64_t chunk, T* __restrict__ partial) {
  using acc_t = at::opmath_type<T>;  // exact for T's values; half cannot live in shared memory
  __shared__ acc_t s_best[kThreads];
  __shared__ bool s_nan[kThreads];
  const int64_t bg = blockIdx.x;  // b * m + g
  if (!valid[bg]) return;  // the whole block: padded gts are never read back
  const T* gb = gt + 4 * bg;
  const T ga = box_area(gb);
  const T* p = shared ? boxes : boxes + 4 * n * (bg / m);
  const int64_t n0 = blockIdx.y * chunk;
  const int64_t n1 = n0 + chunk < n ? n0 + chunk : n;
  T best = -std::numeric_limits<T>::infinity();
  bool nan = false;
  for (int64_t k = n0 + threadIdx.x; k < n1; k += blockDim.x) {
    const T* pb = p + 4 * k;
    max_update(best, nan,
               iou_with_areas(gb[0], gb[1], gb[2], gb[3], ga, pb[0], pb[1], pb[2], pb[3],
                              box_area(pb)));
  }
  s_best[threadIdx.x] = static_cast<acc_t>(best);
  s_nan[threadIdx.x] = nan;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      const acc_t o = s_best[threadIdx.x + s];
      s_nan[threadIdx.x] |= s_nan[threadIdx.x + s];
      s_best[threadIdx.x] = o > s_best[threadIdx.x] ? o : s_best[threadIdx.x];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    partial[bg * gridDim.y + blockIdx.y] =
        s_nan[0] ? std::numeric_limits<T>::quiet_NaN() : static_cast<T>(s_best[0]);
  }
}

template <typename T>
__global__ void gt_highest_kernel(int64_t count, int64_t chunks, const bool* __restrict__ valid,
                                  const T* __restrict__ partial, T* __restrict__ highest) {
  const int64_t bg = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (bg >= count) return;
  T h = -std::numeric_limits<T>::infinity();
  if (valid[bg]) {
    for (int64_t c = 0; c < chunks; ++c) {
      const T v = partial[bg * chunks + c];
      if (beats(v, h)) h = v;
    }
  }
  highest[bg] = h;
}

template <typename T>
__global__ void match_kernel(const T* __restrict__ gt, const bool* __restrict__ valid,
                             const T* __restrict__ highest, const T* __restrict__ boxes,
                             bool shared, int64_t m, int64_t n, T high, T low,
                             int64_t* __restrict__ out) {
  __shared__ T s_box[kThreads * 5];  // x1, y1, x2, y2, area
  __shared__ T s_high[kThreads];
  __shared__ bool s_valid[kThreads];
  const int64_t b = blockIdx.y;
  const int64_t k = blockIdx.x * int64_t(kThreads) + threadIdx.x;
  const bool active = k < n;  // inactive threads still help stage the gts
  T px1 = T(0), py1 = T(0), px2 = T(0), py2 = T(0);
  if (active) {
    const T* pb = (shared ? boxes : boxes + 4 * n * b) + 4 * k;
    px1 = pb[0];
    py1 = pb[1];
    px2 = pb[2];
    py2 = pb[3];
  }
  const T pa = (px2 - px1) * (py2 - py1);
  const T pad = static_cast<T>(-1);
  T best_v = pad;
  int64_t best_i = 0;
  bool hit = false;
  for (int64_t g0 = 0; g0 < m; g0 += kThreads) {
    const int count = static_cast<int>(m - g0 < kThreads ? m - g0 : kThreads);
    __syncthreads();  // the previous tile has been read
    if (threadIdx.x < count) {
      const int64_t bg = b * m + g0 + threadIdx.x;
      const T* gb = gt + 4 * bg;
      T* s = s_box + 5 * threadIdx.x;
      s[0] = gb[0];
      s[1] = gb[1];
      s[2] = gb[2];
      s[3] = gb[3];
      s[4] = box_area(gb);
      s_valid[threadIdx.x] = valid[bg];
      s_high[threadIdx.x] = highest != nullptr ? highest[bg] : T(0);
    }
    __syncthreads();
    if (!active) continue;
    for (int j = 0; j < count; ++j) {
      const T* s = s_box + 5 * j;
      const T q = s_valid[j] ? iou_with_areas(s[0], s[1], s[2], s[3], s[4], px1, py1, px2, py2, pa)
                             : pad;
      if (g0 + j == 0 || beats(q, best_v)) {
        best_v = q;
        best_i = g0 + j;
      }
      hit |= highest != nullptr && s_valid[j] && q == s_high[j];
    }
  }
  if (active) out[b * n + k] = match_decision(best_v, best_i, high, low, hit);
}

at::Tensor match_boxes_cuda(const at::Tensor& gt_boxes, const at::Tensor& gt_valid,
                            const at::Tensor& boxes, double high_threshold, double low_threshold,
                            bool allow_low_quality_matches) {
  check_match_args(gt_boxes, gt_valid, boxes, high_threshold, low_threshold);
  const at::cuda::CUDAGuard guard(gt_boxes.device());
  const int64_t b_count = gt_boxes.size(0), m = gt_boxes.size(1), n = boxes.size(-2);
  TORCH_CHECK(b_count <= 65535, "match_boxes: at most 65535 images, got ", b_count);
  at::Tensor out = at::full({b_count, n}, kBelowLowThreshold, gt_boxes.options().dtype(at::kLong));
  if (m == 0 || n == 0 || b_count == 0) return out;
  const at::Tensor gt = gt_boxes.contiguous();
  const at::Tensor valid = gt_valid.contiguous();
  const at::Tensor bx = boxes.contiguous();
  const bool shared = boxes.dim() == 2;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gt.scalar_type(),
                                  "mrcnn_match_cuda", [&] {
    const scalar_t* gp = gt.data_ptr<scalar_t>();
    const bool* vp = valid.data_ptr<bool>();
    const scalar_t* bp = bx.data_ptr<scalar_t>();
    at::Tensor highest;
    if (allow_low_quality_matches) {
      const int64_t chunks = std::min(kMaxChunks, ceil_div(n, 8 * kThreads));
      const int64_t chunk = ceil_div(n, chunks);
      at::Tensor partial = at::empty({b_count * m, chunks}, gt.options());
      highest = at::empty({b_count * m}, gt.options());
      gt_highest_partial_kernel<scalar_t>
          <<<dim3(b_count * m, chunks), kThreads, 0, stream>>>(
              gp, vp, bp, shared, m, n, chunk, partial.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      gt_highest_kernel<scalar_t><<<ceil_div(b_count * m, kThreads), kThreads, 0, stream>>>(
          b_count * m, chunks, vp, partial.data_ptr<scalar_t>(), highest.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    // A tensor compared with a Python float compares in the tensor's dtype.
    match_kernel<scalar_t><<<dim3(ceil_div(n, kThreads), b_count), kThreads, 0, stream>>>(
        gp, vp, allow_low_quality_matches ? highest.data_ptr<scalar_t>() : nullptr, bp, shared, m,
        n, static_cast<scalar_t>(high_threshold), static_cast<scalar_t>(low_threshold),
        out.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mrcnn, CUDA, m) { m.impl("match_boxes", &match_boxes_cuda); }

}  // namespace mrcnn
