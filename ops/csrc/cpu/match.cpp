// CPU matching of predictions to padded ground truth (see match.h for the semantics).
//
// Work is split into tiles of kTile predictions of one image; a tile's boxes are copied into
// structure-of-arrays buffers so that the loops over the tile, run once per gt, vectorise.
// Pass 1 writes each tile's per-gt maxima into a [B, tiles, M] buffer that is then reduced per
// gt; max is exact, so neither the tiling nor the thread count can change a result.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "../common.h"
#include "../match.h"
#include "parallel.h"

namespace mrcnn {
namespace {

constexpr int64_t kTile = 512;  // predictions per task: ~10 KB of buffers, M * 512 IoUs of work

template <typename T>
struct Tile {
  T x1[kTile], y1[kTile], x2[kTile], y2[kTile], area[kTile];
  int64_t size;

  void load(const T* boxes, int64_t n0, int64_t n1) {
    size = n1 - n0;
    for (int64_t k = 0; k < size; ++k) {
      const T* b = boxes + 4 * (n0 + k);
      x1[k] = b[0];
      y1[k] = b[1];
      x2[k] = b[2];
      y2[k] = b[3];
      area[k] = box_area(b);
    }
  }
};

// Pass 1's step: the highest IoU of gt (gb, area ga) over a tile, NaN if any IoU is NaN.
// The IoUs go through a buffer (that loop vectorises), then into kLanes independent maxima and
// NaN flags folded at the end, which breaks the dependency chain of one running max (the
// compiler may not reassociate it itself). max is exact: the folding order changes nothing.
template <typename T>
T tile_max(const Tile<T>& t, const T* gb, T ga, T* __restrict__ q) {
  constexpr int kLanes = 16;
  const T gx1 = gb[0], gy1 = gb[1], gx2 = gb[2], gy2 = gb[3];
  for (int64_t k = 0; k < t.size; ++k) {
    q[k] = iou_with_areas(gx1, gy1, gx2, gy2, ga, t.x1[k], t.y1[k], t.x2[k], t.y2[k], t.area[k]);
  }
  T lane_max[kLanes];
  int32_t lane_nan[kLanes];
  for (int j = 0; j < kLanes; ++j) {
    lane_max[j] = -std::numeric_limits<T>::infinity();
    lane_nan[j] = 0;
  }
  int64_t k0 = 0;
  for (; k0 + kLanes <= t.size; k0 += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const T v = q[k0 + j];
      lane_nan[j] |= static_cast<int32_t>(is_nan(v));
      lane_max[j] = v > lane_max[j] ? v : lane_max[j];
    }
  }
  for (int64_t k = k0; k < t.size; ++k) {
    lane_nan[0] |= static_cast<int32_t>(is_nan(q[k]));
    lane_max[0] = q[k] > lane_max[0] ? q[k] : lane_max[0];
  }
  T best = lane_max[0];
  int32_t nan = lane_nan[0];
  for (int j = 1; j < kLanes; ++j) {
    nan |= lane_nan[j];
    best = lane_max[j] > best ? lane_max[j] : best;
  }
  return nan ? std::numeric_limits<T>::quiet_NaN() : best;
}

// Pass 2's step for one valid gt over a tile: the running best (value, index) per prediction
// and, with low-quality matches, whether the prediction attains the gt's highest IoU `h`.
// Branch-free (bitwise &, |) so that it vectorises.
template <typename T, bool kLowQuality>
void update_tile(const Tile<T>& t, const T* gb, T ga, T h, int32_t gi, T* __restrict__ best_v,
                 int32_t* __restrict__ best_i, int32_t* __restrict__ hit) {
  const T gx1 = gb[0], gy1 = gb[1], gx2 = gb[2], gy2 = gb[3];
  for (int64_t k = 0; k < t.size; ++k) {
    const T q = iou_with_areas(gx1, gy1, gx2, gy2, ga, t.x1[k], t.y1[k], t.x2[k], t.y2[k],
                               t.area[k]);
    const T cur = best_v[k];
    const bool up = (!is_nan(cur)) & (is_nan(q) | (q > cur));  // beats(q, cur)
    best_v[k] = up ? q : cur;
    best_i[k] = up ? gi : best_i[k];
    if constexpr (kLowQuality) hit[k] |= static_cast<int32_t>(q == h);
  }
}

// A padded gt has quality -1 everywhere: it wins only where everything so far is below -1.
template <typename T>
void update_padded(int64_t size, int32_t gi, T* __restrict__ best_v,
                   int32_t* __restrict__ best_i) {
  const T pad = static_cast<T>(-1);
  for (int64_t k = 0; k < size; ++k) {
    const T cur = best_v[k];
    const bool up = !is_nan(cur) & (pad > cur);
    best_v[k] = up ? pad : cur;
    best_i[k] = up ? gi : best_i[k];
  }
}

template <typename T>
void match_kernel(const T* gt, const bool* valid, const T* boxes, bool shared, int64_t b_count,
                  int64_t m, int64_t n, T high, T low, bool allow_low_quality, int64_t* out) {
  const int64_t tiles = (n + kTile - 1) / kTile;
  const int64_t tasks = b_count * tiles;
  const int64_t work = 16 * b_count * m * n * (allow_low_quality ? 2 : 1);
  std::vector<T> gt_area(b_count * m);
  for (int64_t i = 0; i < b_count * m; ++i) {
    const T* g = gt + 4 * i;
    gt_area[i] = box_area(g);
  }
  auto image_boxes = [&](int64_t b) { return shared ? boxes : boxes + 4 * n * b; };

  // Pass 1: highest[b, g] = max over predictions of IoU(g, .), NaN if any IoU is NaN (torch.max).
  std::vector<T> highest;
  if (allow_low_quality) {
    std::vector<T> partial(tasks * m);
    dynamic_parallel_for(0, tasks, 1, work / 2, [&](int64_t t0, int64_t t1) {
      Tile<T> tile;
      T iou[kTile];
      for (int64_t task = t0; task < t1; ++task) {
        const int64_t b = task / tiles, n0 = (task % tiles) * kTile;
        tile.load(image_boxes(b), n0, std::min(n, n0 + kTile));
        for (int64_t g = 0; g < m; ++g) {
          if (!valid[b * m + g]) continue;  // padding: its highest IoU is never read
          partial[task * m + g] = tile_max(tile, gt + 4 * (b * m + g), gt_area[b * m + g], iou);
        }
      }
    });
    highest.assign(b_count * m, -std::numeric_limits<T>::infinity());
    for (int64_t b = 0; b < b_count; ++b) {
      for (int64_t c = 0; c < tiles; ++c) {
        for (int64_t g = 0; g < m; ++g) {
          T& h = highest[b * m + g];
          const T p = partial[(b * tiles + c) * m + g];
          if (beats(p, h)) h = p;
        }
      }
    }
  }

  // Pass 2: per prediction, its best gt (first NaN, else the first maximum, as torch.max over
  // the gt dimension; padded gts have quality -1), the thresholds and the low-quality rule.
  // Starting from -inf with index 0 makes gt 0 win as torch.max's first element does.
  dynamic_parallel_for(0, tasks, 1, work, [&](int64_t t0, int64_t t1) {
    Tile<T> tile;
    T best_v[kTile];
    int32_t best_i[kTile];
    int32_t hit[kTile];  // attains some valid gt's highest IoU
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t b = task / tiles, n0 = (task % tiles) * kTile;
      tile.load(image_boxes(b), n0, std::min(n, n0 + kTile));
      std::fill_n(best_v, tile.size, -std::numeric_limits<T>::infinity());
      std::fill_n(best_i, tile.size, 0);
      std::fill_n(hit, tile.size, 0);
      for (int64_t g = 0; g < m; ++g) {
        const int64_t bg = b * m + g;
        const int32_t gi = static_cast<int32_t>(g);
        if (!valid[bg]) {
          update_padded(tile.size, gi, best_v, best_i);
        } else if (allow_low_quality) {
          update_tile<T, true>(tile, gt + 4 * bg, gt_area[bg], highest[bg], gi, best_v, best_i,
                               hit);
        } else {
          update_tile<T, false>(tile, gt + 4 * bg, gt_area[bg], T(0), gi, best_v, best_i, hit);
        }
      }
      int64_t* o = out + b * n + n0;
      for (int64_t k = 0; k < tile.size; ++k) {
        o[k] = match_decision(best_v[k], static_cast<int64_t>(best_i[k]), high, low, hit[k] != 0);
      }
    }
  });
}

at::Tensor match_boxes_cpu(const at::Tensor& gt_boxes, const at::Tensor& gt_valid,
                           const at::Tensor& boxes, double high_threshold, double low_threshold,
                           bool allow_low_quality_matches) {
  check_match_args(gt_boxes, gt_valid, boxes, high_threshold, low_threshold);
  const int64_t b_count = gt_boxes.size(0), m = gt_boxes.size(1), n = boxes.size(-2);
  TORCH_CHECK(m < std::numeric_limits<int32_t>::max(), "match_boxes: too many gt boxes");
  at::Tensor out = at::full({b_count, n}, kBelowLowThreshold, gt_boxes.options().dtype(at::kLong));
  if (m == 0 || n == 0 || b_count == 0) return out;
  const at::Tensor gt = gt_boxes.contiguous();
  const at::Tensor valid = gt_valid.contiguous();
  const at::Tensor bx = boxes.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gt.scalar_type(), "mrcnn_match", [&] {
    // A tensor compared with a Python float compares in the tensor's dtype.
    match_kernel<scalar_t>(gt.data_ptr<scalar_t>(), valid.data_ptr<bool>(),
                           bx.data_ptr<scalar_t>(), boxes.dim() == 2, b_count, m, n,
                           static_cast<scalar_t>(high_threshold),
                           static_cast<scalar_t>(low_threshold), allow_low_quality_matches,
                           out.data_ptr<int64_t>());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mrcnn, CPU, m) { m.impl("match_boxes", &match_boxes_cpu); }

}  // namespace mrcnn
