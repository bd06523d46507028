// CPU non-maximum suppression: nms and batched_nms (per-category NMS without the coordinate
// offset trick, so IoUs are computed on the real coordinates).
//
// Greedy NMS is sequential in the kept boxes, but the work is in the IoU rows. Boxes are sorted
// once (stable, descending score) and laid out as structure-of-arrays; they are processed in
// blocks of 512: the block is resolved sequentially, then the boxes it kept suppress every later
// box in one branch-free, vectorisable sweep (multi-threaded only for very large inputs).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "../common.h"
#include "parallel.h"

namespace mrcnn {
namespace {

constexpr int64_t kBlock = 512;  // boxes resolved sequentially before each sweep
constexpr int64_t kTile = 1024;  // later boxes swept per kept box while they stay in L1

// IoUs in a sweep (~15 ms) below which it stays on one thread. Each sweep is a fork-join; on a
// shared machine a join can wait a whole scheduler slice for a descheduled thread, which for
// the usual sizes (a few thousand boxes, ~25 sweeps) costs more than a second thread saves.
// MRCNN_NMS_MIN_PARALLEL_WORK overrides it (tests use it to exercise the threaded sweep).
int64_t min_parallel_work() {
  const char* env = std::getenv("MRCNN_NMS_MIN_PARALLEL_WORK");
  return env ? std::atoll(env) : int64_t(1) << 25;
}

template <typename T>
struct SoA {
  std::vector<T> x1, y1, x2, y2, area;
  explicit SoA(int64_t n) : x1(n), y1(n), x2(n), y2(n), area(n) {}
};

// Gathers boxes (contiguous [N, 4]) in the order `perm`, with areas as torchvision computes them.
template <typename T>
SoA<T> gather_boxes(const T* boxes, const int64_t* perm, int64_t n) {
  SoA<T> s(n);
  for (int64_t p = 0; p < n; ++p) {
    const T* b = boxes + perm[p] * 4;
    s.x1[p] = b[0];
    s.y1[p] = b[1];
    s.x2[p] = b[2];
    s.y2[p] = b[3];
    s.area[p] = box_area(b);
  }
  return s;
}

// Greedy NMS of boxes [begin, end) of `s`, already in decreasing score order. Sets removed[p]
// (int32 so that the sweep vectorises cleanly) for every suppressed position.
template <typename T>
void greedy_nms(const SoA<T>& s, int64_t begin, int64_t end, T thr, int32_t* removed,
                bool parallel) {
  const T* x1 = s.x1.data();
  const T* y1 = s.y1.data();
  const T* x2 = s.x2.data();
  const T* y2 = s.y2.data();
  const T* ar = s.area.data();
  std::vector<int64_t> kept;
  kept.reserve(kBlock);
  const int64_t min_work = parallel ? min_parallel_work() : 0;
  for (int64_t bs = begin; bs < end; bs += kBlock) {
    const int64_t be = std::min(end, bs + kBlock);
    kept.clear();
    for (int64_t i = bs; i < be; ++i) {
      if (removed[i]) continue;
      kept.push_back(i);
      const T ix1 = x1[i], iy1 = y1[i], ix2 = x2[i], iy2 = y2[i], ia = ar[i];
      for (int64_t j = i + 1; j < be; ++j) {
        const T o = iou_with_areas(ix1, iy1, ix2, iy2, ia, x1[j], y1[j], x2[j], y2[j], ar[j]);
        removed[j] |= static_cast<int32_t>(o > thr);
      }
    }
    if (be == end || kept.empty()) continue;
    auto sweep = [&](int64_t a, int64_t b) {
      for (int64_t t0 = a; t0 < b; t0 += kTile) {
        const int64_t t1 = std::min(b, t0 + kTile);
        for (const int64_t i : kept) {
          const T ix1 = x1[i], iy1 = y1[i], ix2 = x2[i], iy2 = y2[i], ia = ar[i];
          // No early `continue` on already-removed boxes: a branch-free loop vectorises.
          for (int64_t j = t0; j < t1; ++j) {
            const T o = iou_with_areas(ix1, iy1, ix2, iy2, ia, x1[j], y1[j], x2[j], y2[j], ar[j]);
            removed[j] |= static_cast<int32_t>(o > thr);
          }
        }
      }
    };
    if (parallel && int64_t(kept.size()) * (end - be) >= min_work) {
      dynamic_parallel_for(be, end, kTile, int64_t(kept.size()) * (end - be), sweep);
    } else {
      sweep(be, end);
    }
  }
}

void check_boxes_scores(const at::Tensor& boxes, const at::Tensor& scores) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "boxes must be [N, 4], got ",
              boxes.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0),
              "scores must be [N] with N = boxes.size(0), got ", scores.sizes());
  TORCH_CHECK(at::isFloatingType(boxes.scalar_type()), "boxes must be floating point");
}

// Half and bfloat16 boxes are compared in float32 (torchvision has no reduced-precision CPU NMS).
at::Tensor compute_boxes(const at::Tensor& boxes) {
  const auto t = boxes.scalar_type();
  return (t == at::kHalf || t == at::kBFloat16) ? boxes.to(at::kFloat).contiguous()
                                                : boxes.contiguous();
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_boxes_scores(boxes, scores);
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const at::Tensor order = std::get<1>(at::sort(scores, /*stable=*/true, 0, /*descending=*/true));
  const int64_t* ord = order.data_ptr<int64_t>();
  const at::Tensor b = compute_boxes(boxes);
  std::vector<int32_t> removed(n, 0);
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "mrcnn_nms", [&] {
    const SoA<scalar_t> s = gather_boxes(b.data_ptr<scalar_t>(), ord, n);
    greedy_nms(s, 0, n, threshold_as<scalar_t>(iou_threshold), removed.data(), true);
  });
  const int64_t kept = n - std::count(removed.begin(), removed.end(), 1);
  at::Tensor keep = at::empty({kept}, boxes.options().dtype(at::kLong));
  int64_t* k = keep.data_ptr<int64_t>();
  for (int64_t p = 0, q = 0; p < n; ++p) {
    if (!removed[p]) k[q++] = ord[p];
  }
  return keep;
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                           const at::Tensor& idxs, double iou_threshold) {
  check_boxes_scores(boxes, scores);
  TORCH_CHECK(idxs.dim() == 1 && idxs.size(0) == boxes.size(0), "idxs must be [N]");
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  // Score order first, then a stable sort by category: each category becomes a contiguous
  // segment that is itself in decreasing score order.
  const at::Tensor order = std::get<1>(at::sort(scores, /*stable=*/true, 0, /*descending=*/true));
  const at::Tensor cls = idxs.to(at::kLong).index_select(0, order);
  const auto cls_sorted = at::sort(cls, /*stable=*/true, 0, /*descending=*/false);
  const at::Tensor perm = order.index_select(0, std::get<1>(cls_sorted)).contiguous();
  const at::Tensor cls_values = std::get<0>(cls_sorted).contiguous();
  const int64_t* pm = perm.data_ptr<int64_t>();
  const int64_t* cv = cls_values.data_ptr<int64_t>();
  std::vector<int64_t> seg{0};
  int64_t largest = 0, work = 0;  // work: IoUs of a per-category NMS without suppression
  for (int64_t p = 1; p <= n; ++p) {
    if (p == n || cv[p] != cv[p - 1]) {
      const int64_t len = p - seg.back();
      largest = std::max(largest, len);
      work += len * (len - 1) / 2;
      seg.push_back(p);
    }
  }
  const int64_t nseg = static_cast<int64_t>(seg.size()) - 1;
  const at::Tensor b = compute_boxes(boxes);
  std::vector<int32_t> removed(n, 0);
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "mrcnn_batched_nms", [&] {
    const SoA<scalar_t> s = gather_boxes(b.data_ptr<scalar_t>(), pm, n);
    const scalar_t thr = threshold_as<scalar_t>(iou_threshold);
    // Many balanced categories: categories in parallel (one fork-join, and only when there is
    // a few milliseconds of work). One dominant category: its sweeps may thread instead.
    if (nseg > 1 && largest * 2 <= n && work >= (int64_t(1) << 22)) {
      dynamic_parallel_for(0, nseg, 1, work, [&](int64_t a, int64_t e) {
        for (int64_t c = a; c < e; ++c) {
          greedy_nms(s, seg[c], seg[c + 1], thr, removed.data(), false);
        }
      });
    } else {
      const bool dominant = largest * 2 > n;
      for (int64_t c = 0; c < nseg; ++c) {
        greedy_nms(s, seg[c], seg[c + 1], thr, removed.data(), dominant);
      }
    }
  });
  std::vector<uint8_t> keep_orig(n, 0);
  for (int64_t p = 0; p < n; ++p) keep_orig[pm[p]] = !removed[p];
  const int64_t kept = std::count(keep_orig.begin(), keep_orig.end(), 1);
  at::Tensor keep = at::empty({kept}, boxes.options().dtype(at::kLong));
  int64_t* k = keep.data_ptr<int64_t>();
  const int64_t* ord = order.data_ptr<int64_t>();
  for (int64_t p = 0, q = 0; p < n; ++p) {
    if (keep_orig[ord[p]]) k[q++] = ord[p];
  }
  return keep;
}

}  // namespace

TORCH_LIBRARY_IMPL(mrcnn, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("batched_nms", &batched_nms_cpu);
}

}  // namespace mrcnn
