// CUDA NMS, batched NMS and pairwise IoU.
//
// NMS follows torchvision's CUDA design: boxes sorted by score (stable, so ties keep input
// order as on the CPU), then a kernel fills, for every box, 64-bit words whose bits say which
// later boxes it suppresses (IoU > threshold; for batched NMS only within its category). A
// single-block kernel then walks the boxes in order, keeping a box unless an earlier kept box
// removed it - on the device, with no copy of the mask to the host.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common.h"

namespace mrcnn {
namespace {

constexpr int kWord = 64;  // boxes per mask word, and threads per mask block

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T>
__global__ void nms_mask_kernel(int64_t n, const T* __restrict__ boxes,
                                const int64_t* __restrict__ cls, T thr, int64_t col_blocks,
                                uint64_t* __restrict__ mask) {
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x;
  if (row_block > col_block) return;  // words left of the diagonal are never read
  const int64_t row_left = n - row_block * kWord, col_left = n - col_block * kWord;
  const int row_size = static_cast<int>(row_left < kWord ? row_left : kWord);
  const int col_size = static_cast<int>(col_left < kWord ? col_left : kWord);
  __shared__ T sb[kWord * 5];
  __shared__ int64_t sc[kWord];
  const int t = threadIdx.x;
  if (t < col_size) {
    const T* b = boxes + (col_block * kWord + t) * 4;
    sb[t * 5 + 0] = b[0];
    sb[t * 5 + 1] = b[1];
    sb[t * 5 + 2] = b[2];
    sb[t * 5 + 3] = b[3];
    sb[t * 5 + 4] = box_area(b);
    sc[t] = cls ? cls[col_block * kWord + t] : 0;
  }
  __syncthreads();
  if (t >= row_size) return;
  const int64_t i = row_block * kWord + t;
  const T* b = boxes + i * 4;
  const T area = box_area(b);
  const int64_t ci = cls ? cls[i] : 0;
  uint64_t bits = 0;
  for (int j = (row_block == col_block) ? t + 1 : 0; j < col_size; ++j) {
    if (sc[j] != ci) continue;
    const T* o = sb + j * 5;
    if (iou_with_areas(b[0], b[1], b[2], b[3], area, o[0], o[1], o[2], o[3], o[4]) > thr) {
      bits |= 1ULL << j;
    }
  }
  mask[i * col_blocks + col_block] = bits;
}

// One block walks the sorted boxes. `removed` (shared or global) holds the union of the rows of
// the boxes kept so far; the word being walked is kept in a register and updated there, so no
// thread ever reads a word another thread may be writing.
template <bool kShared>
__global__ void nms_scan_kernel(int64_t n, int64_t col_blocks, const uint64_t* __restrict__ mask,
                                uint64_t* global_removed, bool* __restrict__ keep) {
  extern __shared__ uint64_t shared_removed[];
  uint64_t* removed = kShared ? shared_removed : global_removed;
  for (int64_t w = threadIdx.x; w < col_blocks; w += blockDim.x) removed[w] = 0;
  __syncthreads();
  for (int64_t nb = 0; nb < col_blocks; ++nb) {
    uint64_t cur = removed[nb];
    const int64_t left = n - nb * kWord;
    const int bits = static_cast<int>(left < kWord ? left : kWord);
    for (int b = 0; b < bits; ++b) {
      if (cur & (1ULL << b)) continue;
      const int64_t i = nb * kWord + b;
      if (threadIdx.x == 0) keep[i] = true;
      const uint64_t* row = mask + i * col_blocks;
      cur |= row[nb];
      for (int64_t w = nb + 1 + threadIdx.x; w < col_blocks; w += blockDim.x) removed[w] |= row[w];
    }
    __syncthreads();
  }
}

// Runs the two kernels on boxes already in score order; returns the keep flags [n].
at::Tensor nms_sorted_flags(const at::Tensor& sorted_boxes, const at::Tensor& sorted_cls,
                            double iou_threshold) {
  const int64_t n = sorted_boxes.size(0);
  const int64_t col_blocks = ceil_div(n, kWord);
  TORCH_CHECK(col_blocks <= 65535, "too many boxes for CUDA nms: ", n);
  auto stream = at::cuda::getCurrentCUDAStream();
  at::Tensor mask = at::empty({n * col_blocks}, sorted_boxes.options().dtype(at::kLong));
  at::Tensor keep = at::zeros({n}, sorted_boxes.options().dtype(at::kBool));
  const int64_t* cls = sorted_cls.defined() ? sorted_cls.data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(sorted_boxes.scalar_type(), "mrcnn_nms_mask_cuda", [&] {
    const dim3 grid(col_blocks, col_blocks);
    nms_mask_kernel<scalar_t><<<grid, kWord, 0, stream>>>(
        n, sorted_boxes.data_ptr<scalar_t>(), cls, threshold_as<scalar_t>(iou_threshold),
        col_blocks, reinterpret_cast<uint64_t*>(mask.data_ptr<int64_t>()));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const auto* m = reinterpret_cast<const uint64_t*>(mask.data_ptr<int64_t>());
  const int64_t shared_bytes = col_blocks * int64_t(sizeof(uint64_t));
  if (shared_bytes <= 32 * 1024) {
    nms_scan_kernel<true><<<1, 256, shared_bytes, stream>>>(n, col_blocks, m, nullptr,
                                                           keep.data_ptr<bool>());
  } else {
    at::Tensor removed = at::empty({col_blocks}, mask.options());
    nms_scan_kernel<false><<<1, 256, 0, stream>>>(
        n, col_blocks, m, reinterpret_cast<uint64_t*>(removed.data_ptr<int64_t>()),
        keep.data_ptr<bool>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return keep;
}

at::Tensor nms_boxes(const at::Tensor& boxes) {
  const auto t = boxes.scalar_type();
  return (t == at::kHalf || t == at::kBFloat16) ? boxes.to(at::kFloat) : boxes;
}

at::Tensor nms_common(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                      double iou_threshold) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "boxes must be [N, 4], got ",
              boxes.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0), "scores must be [N]");
  TORCH_CHECK(!idxs.defined() || (idxs.dim() == 1 && idxs.size(0) == boxes.size(0)),
              "idxs must be [N]");
  const at::cuda::CUDAGuard guard(boxes.device());
  if (boxes.size(0) == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const at::Tensor order = std::get<1>(at::sort(scores, /*stable=*/true, 0, /*descending=*/true));
  const at::Tensor sorted = nms_boxes(boxes).index_select(0, order).contiguous();
  at::Tensor cls;
  if (idxs.defined()) cls = idxs.to(at::kLong).index_select(0, order).contiguous();
  return order.masked_select(nms_sorted_flags(sorted, cls, iou_threshold));
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return nms_common(boxes, scores, at::Tensor(), iou_threshold);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                            const at::Tensor& idxs, double iou_threshold) {
  return nms_common(boxes, scores, idxs, iou_threshold);
}

template <typename T>
__global__ void box_iou_kernel(int64_t n, int64_t m, const T* __restrict__ a,
                               const T* __restrict__ b, T* __restrict__ out) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n * m;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const T* p = a + (idx / m) * 4;
    const T* q = b + (idx % m) * 4;
    out[idx] = iou_with_areas(p[0], p[1], p[2], p[3], box_area(p), q[0], q[1], q[2], q[3],
                              box_area(q));
  }
}

at::Tensor box_iou_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  TORCH_CHECK(boxes1.dim() == 2 && boxes1.size(1) == 4, "boxes1 must be [N, 4]");
  TORCH_CHECK(boxes2.dim() == 2 && boxes2.size(1) == 4, "boxes2 must be [M, 4]");
  TORCH_CHECK(boxes1.scalar_type() == boxes2.scalar_type(), "boxes1 and boxes2 dtypes differ");
  const at::cuda::CUDAGuard guard(boxes1.device());
  const int64_t n = boxes1.size(0), m = boxes2.size(0);
  at::Tensor out = at::empty({n, m}, boxes1.options());
  if (out.numel() == 0) return out;
  const at::Tensor a = boxes1.contiguous(), b = boxes2.contiguous();
  const int64_t blocks = std::min<int64_t>(ceil_div(n * m, 256), 65535);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "mrcnn_iou_cuda", [&] {
    box_iou_kernel<scalar_t><<<blocks, 256, 0, at::cuda::getCurrentCUDAStream()>>>(
        n, m, a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mrcnn, CUDA, m) {
  m.impl("nms", &nms_cuda);
  m.impl("batched_nms", &batched_nms_cuda);
  m.impl("box_iou", &box_iou_cuda);
}

}  // namespace mrcnn
