// CPU pre-NMS proposal selection of the RPN for all FPN levels and images in one operator call:
// per-level top-k of the objectness logits, then gather + sigmoid + box decoding + clipping +
// validity (mrcnn/modeling/rpn.py select_proposals, up to the NMS).
//
// Bit-identity with the Python path needs three of its steps done by the very same ATen calls:
//  - the top-k of each level is at::topk on that level's slice (its tie order depends on the
//    slice length, so padding the levels to one length could reorder equal logits);
//  - sigmoid and exp are PyTorch's vectorised CPU functions (SLEEF), which differ from libm's in
//    the last bit for ~1% of float32 inputs, and which elements take the vector path depends on
//    their position in the tensor: they are applied to [B, K] tensors laid out like the Python
//    path's.
// Everything else (gathers, the decode arithmetic of box_coding.h, clipping, the tests) runs in
// two fused passes.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../box_coding.h"
#include "../multilevel.h"
#include "parallel.h"

namespace mrcnn {
namespace {

// Candidates per task. The work estimates below (in kMinParallelWork's units) keep a training
// batch (2 images x ~9k candidates, well under a millisecond) on the calling thread: waking a
// second thread costs more than it saves there, and far more on a busy machine.
constexpr int64_t kChunk = int64_t(1) << 14;

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rpn_decode_topk_cpu(
    const at::Tensor& objectness, const at::Tensor& deltas_in, const at::Tensor& anchors_in,
    at::IntArrayRef level_sizes, int64_t pre_nms_top_n, const at::Tensor& image_hw_in,
    at::ArrayRef<double> weights, double clamp, double min_size, double score_thresh) {
  check_rpn_args(objectness, deltas_in, anchors_in, level_sizes, image_hw_in, weights);
  const LevelTable t = level_table(level_sizes, pre_nms_top_n);
  const int64_t b = objectness.size(0), n = objectness.size(1), k = t.k_start[t.count];

  // Per-level top-k, exactly select_proposals' loop; indices shifted to the concatenated N.
  std::vector<at::Tensor> idx_parts, val_parts;
  for (int l = 0; l < t.count; ++l) {
    const int64_t kl = t.k_start[l + 1] - t.k_start[l];
    auto top = at::topk(objectness.narrow(1, t.offset[l], t.size[l]), kl, 1);
    val_parts.push_back(std::get<0>(top));
    idx_parts.push_back(std::get<1>(top) + t.offset[l]);
  }
  const at::Tensor idx = at::cat(idx_parts, 1).contiguous();  // [B, K]
  const at::Tensor scores = at::sigmoid(at::cat(val_parts, 1)).contiguous();
  std::vector<at::Tensor> lvl_parts;
  for (int l = 0; l < t.count; ++l) {
    lvl_parts.push_back(at::full({t.k_start[l + 1] - t.k_start[l]}, l,
                                 objectness.options().dtype(at::kLong)));
  }
  const at::Tensor levels = at::cat(lvl_parts);

  at::Tensor boxes = at::empty({b, k, 4}, objectness.options());
  at::Tensor valid = at::empty({b, k}, objectness.options().dtype(at::kBool));
  if (b * k == 0) return {boxes, scores, levels, valid};

  const at::Tensor deltas = deltas_in.contiguous();
  const at::Tensor anchors = anchors_in.to(objectness.scalar_type()).contiguous();
  const at::Tensor image_hw = image_hw_in.to(objectness.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, objectness.scalar_type(),
                                  "mrcnn_rpn_decode_topk", [&] {
    using T = scalar_t;
    const DecodeParams<T> prm = decode_params<T>(weights, clamp);
    const T* dp = deltas.data_ptr<T>();
    const T* ap = anchors.data_ptr<T>();
    const T* hwp = image_hw.data_ptr<T>();
    const int64_t* ip = idx.data_ptr<int64_t>();
    const int64_t total = b * k;

    // Pass 1: the clamped log-sizes, then their exp through ATen (see the top of the file).
    at::Tensor dw = at::empty({b, k}, objectness.options());
    at::Tensor dh = at::empty({b, k}, objectness.options());
    T* dwp = dw.data_ptr<T>();
    T* dhp = dh.data_ptr<T>();
    dynamic_parallel_for(0, total, kChunk, 2 * total, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const T* d = dp + ((i / k) * n + ip[i]) * 4;
        decode_log_sizes<T>(d, prm, dwp[i], dhp[i]);
      }
    });
    const at::Tensor ew = at::exp(dw), eh = at::exp(dh);

    // Pass 2: decode, clip to the image, validity.
    const T* ewp = ew.data_ptr<T>();
    const T* ehp = eh.data_ptr<T>();
    const T* sp = scores.data_ptr<T>();
    T* bp = boxes.data_ptr<T>();
    bool* vp = valid.data_ptr<bool>();
    const T min_sz = static_cast<T>(min_size), thresh = static_cast<T>(score_thresh);
    dynamic_parallel_for(0, total, kChunk, 8 * total, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t img = i / k, src = ip[i];
        T* box = bp + 4 * i;
        decode_with_exp<T>(dp + (img * n + src) * 4, ap + 4 * src, ewp[i], ehp[i], box, prm);
        vp[i] = clip_and_validate<T>(box, hwp[2 * img], hwp[2 * img + 1], min_sz, sp[i], thresh);
      }
    });
  });
  return {boxes, scores, levels, valid};
}

}  // namespace

TORCH_LIBRARY_IMPL(mrcnn, CPU, m) { m.impl("rpn_decode_topk", &rpn_decode_topk_cpu); }

}  // namespace mrcnn
