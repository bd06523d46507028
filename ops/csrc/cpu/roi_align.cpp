// CPU RoIAlign forward and backward.
//
// Two memory layouts, chosen per call:
//  - NCHW (few samples, or few channels): torchvision's loop, parallel over RoIs; the bilinear
//    corners and weights of a RoI are computed once and reused for every channel.
//  - NHWC (many samples and channels, e.g. 1000 RoIs on a 256-channel FPN level): the map is
//    made channels-last once, so each sample reads four contiguous C-vectors and the channel loop
//    vectorises. Converting costs one pass over the map, paid back many times over.
// The backward pass parallelises over channels (each thread owns a slice of the gradient, so no
// atomics or locks) and adds contributions in the order torchvision's serial kernel does: for a
// given input element the float32 result is bit for bit torchvision's.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../common.h"
#include "parallel.h"

namespace mrcnn {
namespace {

// Precomputed sample: four corner offsets in the H*W plane and their weights. p1 < 0 marks a
// sample outside the plane (backward skips it; forward reads offset 0 with weight 0 as
// torchvision does).
template <typename acc_t>
struct Sample {
  int32_t p1, p2, p3, p4;
  acc_t w1, w2, w3, w4;
};

template <typename acc_t>
RoiGeometry<acc_t> geometry_of(const acc_t* rois, int64_t r, acc_t scale, int ph, int pw, int sr,
                               bool aligned) {
  return roi_geometry<acc_t>(rois + r * 5, scale, ph, pw, sr, aligned);
}

template <typename acc_t>
int64_t samples_of(const RoiGeometry<acc_t>& g, int ph, int pw) {
  return (g.grid_h > 0 && g.grid_w > 0) ? int64_t(ph) * pw * g.grid_h * g.grid_w : 0;
}

// Fills `out` with the samples of one RoI in (bin_y, bin_x, iy, ix) order.
template <typename acc_t>
void precalc(const RoiGeometry<acc_t>& g, int ph, int pw, int64_t height, int64_t width,
             std::vector<Sample<acc_t>>& out) {
  out.resize(samples_of(g, ph, pw));
  int64_t k = 0;
  for (int by = 0; by < ph; ++by) {
    for (int bx = 0; bx < pw; ++bx) {
      for (int iy = 0; iy < g.grid_h; ++iy) {
        const acc_t y = roi_sample(g.start_h, by, g.bin_h, iy, g.grid_h);
        for (int ix = 0; ix < g.grid_w; ++ix) {
          const acc_t x = roi_sample(g.start_w, bx, g.bin_w, ix, g.grid_w);
          const Bilinear<acc_t> b = bilinear(y, x, height, width);
          Sample<acc_t>& s = out[k++];
          s.p1 = static_cast<int32_t>(b.p1);
          s.p2 = static_cast<int32_t>(b.p2);
          s.p3 = static_cast<int32_t>(b.p3);
          s.p4 = static_cast<int32_t>(b.p4);
          s.w1 = b.w1;
          s.w2 = b.w2;
          s.w3 = b.w3;
          s.w4 = b.w4;
          if (!in_plane(y, x, height, width)) s.p1 = -1;
        }
      }
    }
  }
}

// Rois as a contiguous [K, 5] array in the accumulation type, with batch indices validated.
template <typename acc_t>
at::Tensor rois_as(const at::Tensor& rois, int64_t batch) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "rois must be [K, 5], got ", rois.sizes());
  const at::Tensor r = rois.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
  const acc_t* p = r.data_ptr<acc_t>();
  for (int64_t i = 0; i < r.size(0); ++i) {
    TORCH_CHECK(p[5 * i] >= 0 && p[5 * i] < batch, "roi ", i, " has batch index ", p[5 * i],
                " outside [0, ", batch, ")");
  }
  return r;
}

// NHWC pays off when the samples touch the map several times over, and the channel loop is
// long enough to vectorise.
bool prefer_channels_last(int64_t channels, int64_t plane_elements, int64_t total_samples,
                          bool already_channels_last) {
  if (channels < 8) return false;
  if (already_channels_last) return true;
  return total_samples * 4 >= plane_elements;
}

template <typename scalar_t>
void forward_impl(const at::Tensor& input, const at::Tensor& rois_in, at::Tensor& output,
                  double spatial_scale, int ph, int pw, int sr, bool aligned) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n_batch = input.size(0), channels = input.size(1);
  const int64_t height = input.size(2), width = input.size(3);
  const int64_t k_rois = rois_in.size(0);
  const at::Tensor rois = rois_as<acc_t>(rois_in, n_batch);
  const acc_t* rp = rois.data_ptr<acc_t>();
  const acc_t scale = static_cast<acc_t>(spatial_scale);
  int64_t total = 0;
  for (int64_t r = 0; r < k_rois; ++r) {
    total += samples_of(geometry_of(rp, r, scale, ph, pw, sr, aligned), ph, pw);
  }
  scalar_t* out = output.data_ptr<scalar_t>();
  const int64_t bins = int64_t(ph) * pw;

  const bool is_cl =
      input.is_contiguous(at::MemoryFormat::ChannelsLast) && !input.is_contiguous();
  if (prefer_channels_last(channels, n_batch * height * width, total, is_cl)) {
    const at::Tensor in = input.contiguous(at::MemoryFormat::ChannelsLast);
    const scalar_t* ip = in.data_ptr<scalar_t>();
    dynamic_parallel_for(0, k_rois, 4, [&](int64_t r0, int64_t r1) {
      std::vector<Sample<acc_t>> pcs;
      std::vector<acc_t> acc(channels);
      for (int64_t r = r0; r < r1; ++r) {
        const RoiGeometry<acc_t> g = geometry_of(rp, r, scale, ph, pw, sr, aligned);
        precalc(g, ph, pw, height, width, pcs);
        const int64_t per_bin = int64_t(std::max(g.grid_h, 0)) * std::max(g.grid_w, 0);
        const scalar_t* base = ip + g.batch * height * width * channels;
        scalar_t* o = out + r * channels * bins;
        for (int64_t bin = 0; bin < bins; ++bin) {
          std::fill(acc.begin(), acc.end(), acc_t(0));
          for (int64_t s = 0; s < per_bin; ++s) {
            const Sample<acc_t>& pc = pcs[bin * per_bin + s];
            const int64_t p1 = pc.p1 < 0 ? 0 : pc.p1;
            const scalar_t* v1 = base + p1 * channels;
            const scalar_t* v2 = base + int64_t(pc.p2) * channels;
            const scalar_t* v3 = base + int64_t(pc.p3) * channels;
            const scalar_t* v4 = base + int64_t(pc.p4) * channels;
            const acc_t w1 = pc.w1, w2 = pc.w2, w3 = pc.w3, w4 = pc.w4;
            for (int64_t c = 0; c < channels; ++c) {
              acc[c] += w1 * acc_t(v1[c]) + w2 * acc_t(v2[c]) + w3 * acc_t(v3[c]) +
                        w4 * acc_t(v4[c]);
            }
          }
          for (int64_t c = 0; c < channels; ++c) o[c * bins + bin] = acc[c] / g.count;
        }
      }
    });
    return;
  }

  const at::Tensor in = input.contiguous();
  const scalar_t* ip = in.data_ptr<scalar_t>();
  dynamic_parallel_for(0, k_rois, 4, [&](int64_t r0, int64_t r1) {
    std::vector<Sample<acc_t>> pcs;
    for (int64_t r = r0; r < r1; ++r) {
      const RoiGeometry<acc_t> g = geometry_of(rp, r, scale, ph, pw, sr, aligned);
      precalc(g, ph, pw, height, width, pcs);
      const int64_t per_bin = int64_t(std::max(g.grid_h, 0)) * std::max(g.grid_w, 0);
      for (int64_t c = 0; c < channels; ++c) {
        const scalar_t* plane = ip + (g.batch * channels + c) * height * width;
        scalar_t* o = out + (r * channels + c) * bins;
        const Sample<acc_t>* pc = pcs.data();
        for (int64_t bin = 0; bin < bins; ++bin) {
          acc_t v = 0;
          for (int64_t s = 0; s < per_bin; ++s, ++pc) {
            const int64_t p1 = pc->p1 < 0 ? 0 : pc->p1;
            v += pc->w1 * acc_t(plane[p1]) + pc->w2 * acc_t(plane[pc->p2]) +
                 pc->w3 * acc_t(plane[pc->p3]) + pc->w4 * acc_t(plane[pc->p4]);
          }
          o[bin] = v / g.count;
        }
      }
    }
  });
}

at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                 double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                 int64_t sampling_ratio, bool aligned) {
  TORCH_CHECK(input.dim() == 4, "input must be [N, C, H, W], got ", input.sizes());
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "rois must be [K, 5], got ", rois.sizes());
  TORCH_CHECK(pooled_h > 0 && pooled_w > 0, "output_size must be positive");
  TORCH_CHECK(input.size(2) * input.size(3) < (int64_t(1) << 31), "feature map too large");
  at::Tensor output =
      at::zeros({rois.size(0), input.size(1), pooled_h, pooled_w}, input.options());
  if (output.numel() == 0 || input.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "mrcnn_roi_align_forward", [&] {
    forward_impl<scalar_t>(input, rois, output, spatial_scale, int(pooled_h), int(pooled_w),
                           int(sampling_ratio), aligned);
  });
  return output;
}

// Splits [0, k) into consecutive RoI batches whose precomputed samples fit a memory budget, so
// that adaptive sampling of huge RoIs cannot allocate without bound.
template <typename acc_t>
std::vector<int64_t> roi_batches(const acc_t* rp, int64_t k, acc_t scale, int ph, int pw, int sr,
                                 bool aligned) {
  constexpr int64_t kBudget = int64_t(1) << 20;  // samples (~32 MiB in float)
  std::vector<int64_t> cuts{0};
  int64_t used = 0;
  for (int64_t r = 0; r < k; ++r) {
    const int64_t s = samples_of(geometry_of(rp, r, scale, ph, pw, sr, aligned), ph, pw);
    if (used > 0 && used + s > kBudget) {
      cuts.push_back(r);
      used = 0;
    }
    used += s;
  }
  cuts.push_back(k);
  return cuts;
}

template <typename scalar_t>
at::Tensor backward_impl(const at::Tensor& grad, const at::Tensor& rois_in, double spatial_scale,
                         int ph, int pw, int64_t n_batch, int64_t channels, int64_t height,
                         int64_t width, int sr, bool aligned) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kSameType = std::is_same<scalar_t, acc_t>::value;
  const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
  const int64_t k_rois = grad.size(0);
  const at::Tensor rois = rois_as<acc_t>(rois_in, n_batch);
  const acc_t* rp = rois.data_ptr<acc_t>();
  const acc_t scale = static_cast<acc_t>(spatial_scale);
  const int64_t bins = int64_t(ph) * pw;
  int64_t total = 0;
  for (int64_t r = 0; r < k_rois; ++r) {
    total += samples_of(geometry_of(rp, r, scale, ph, pw, sr, aligned), ph, pw);
  }
  const std::vector<int64_t> cuts = roi_batches(rp, k_rois, scale, ph, pw, sr, aligned);
  std::vector<std::vector<Sample<acc_t>>> pcs;
  std::vector<RoiGeometry<acc_t>> geos;
  auto prepare = [&](int64_t b0, int64_t b1) {
    pcs.resize(b1 - b0);
    geos.resize(b1 - b0);
    dynamic_parallel_for(b0, b1, 8, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        geos[r - b0] = geometry_of(rp, r, scale, ph, pw, sr, aligned);
        precalc(geos[r - b0], ph, pw, height, width, pcs[r - b0]);
      }
    });
  };
  const auto opts = grad.options().dtype(acc_dtype);

  if (prefer_channels_last(channels, n_batch * height * width, total, false)) {
    // grad as [K, bins, C] so one bin's gradient is a contiguous C-vector.
    const at::Tensor g_t = grad.permute({0, 2, 3, 1}).to(acc_dtype).contiguous();
    const acc_t* gp = g_t.data_ptr<acc_t>();
    at::Tensor gin = at::zeros({n_batch, height, width, channels}, opts);
    acc_t* gi = gin.data_ptr<acc_t>();
    // Channel slices pulled dynamically by the threads: about two per thread, so a late thread
    // costs little, and wide enough (a multiple of 16) that the per-sample bookkeeping is
    // amortised over a long vector loop.
    const int64_t want = (channels + 2 * at::get_num_threads() - 1) / (2 * at::get_num_threads());
    const int64_t chunk = std::max<int64_t>(16, (want + 15) / 16 * 16);
    const int64_t nchunks = (channels + chunk - 1) / chunk;
    for (size_t b = 0; b + 1 < cuts.size(); ++b) {
      prepare(cuts[b], cuts[b + 1]);
      dynamic_parallel_for(0, nchunks, 1, [&](int64_t q0, int64_t q1) {
        for (int64_t q = q0; q < q1; ++q) {
          const int64_t c0 = q * chunk, c1 = std::min(channels, c0 + chunk);
          for (int64_t r = cuts[b]; r < cuts[b + 1]; ++r) {
            const RoiGeometry<acc_t>& g = geos[r - cuts[b]];
            const Sample<acc_t>* pc = pcs[r - cuts[b]].data();
            const int64_t per_bin = int64_t(std::max(g.grid_h, 0)) * std::max(g.grid_w, 0);
            acc_t* base = gi + g.batch * height * width * channels;
            for (int64_t bin = 0; bin < bins; ++bin) {
              const acc_t* go = gp + (r * bins + bin) * channels;
              for (int64_t s = 0; s < per_bin; ++s, ++pc) {
                if (pc->p1 < 0) continue;
                acc_t* d1 = base + int64_t(pc->p1) * channels;
                acc_t* d2 = base + int64_t(pc->p2) * channels;
                acc_t* d3 = base + int64_t(pc->p3) * channels;
                acc_t* d4 = base + int64_t(pc->p4) * channels;
                const acc_t w1 = pc->w1, w2 = pc->w2, w3 = pc->w3, w4 = pc->w4;
                const acc_t cnt = g.count;
                // Four separate loops: corners may coincide at the map border, and the adds
                // must happen in torchvision's order (corner 1, 2, 3, 4).
                for (int64_t c = c0; c < c1; ++c) d1[c] += go[c] * w1 / cnt;
                for (int64_t c = c0; c < c1; ++c) d2[c] += go[c] * w2 / cnt;
                for (int64_t c = c0; c < c1; ++c) d3[c] += go[c] * w3 / cnt;
                for (int64_t c = c0; c < c1; ++c) d4[c] += go[c] * w4 / cnt;
              }
            }
          }
        }
      });
    }
    return gin.permute({0, 3, 1, 2}).to(grad.scalar_type()).contiguous();
  }

  at::Tensor gin = at::zeros({n_batch, channels, height, width}, opts);
  acc_t* gi = gin.data_ptr<acc_t>();
  const scalar_t* gp = grad.data_ptr<scalar_t>();
  const int64_t s0 = grad.stride(0), s1 = grad.stride(1), s2 = grad.stride(2), s3 = grad.stride(3);
  for (size_t b = 0; b + 1 < cuts.size(); ++b) {
    prepare(cuts[b], cuts[b + 1]);
    dynamic_parallel_for(0, channels, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        for (int64_t r = cuts[b]; r < cuts[b + 1]; ++r) {
          const RoiGeometry<acc_t>& g = geos[r - cuts[b]];
          const Sample<acc_t>* pc = pcs[r - cuts[b]].data();
          const int64_t per_bin = int64_t(std::max(g.grid_h, 0)) * std::max(g.grid_w, 0);
          acc_t* plane = gi + (g.batch * channels + c) * height * width;
          for (int by = 0; by < ph; ++by) {
            for (int bx = 0; bx < pw; ++bx) {
              const acc_t go = acc_t(gp[r * s0 + c * s1 + by * s2 + bx * s3]);
              for (int64_t s = 0; s < per_bin; ++s, ++pc) {
                if (pc->p1 < 0) continue;
                plane[pc->p1] += go * pc->w1 / g.count;
                plane[pc->p2] += go * pc->w2 / g.count;
                plane[pc->p3] += go * pc->w3 / g.count;
                plane[pc->p4] += go * pc->w4 / g.count;
              }
            }
          }
        }
      }
    });
  }
  if (kSameType) return gin;
  return gin.to(grad.scalar_type());
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                  double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                  int64_t batch_size, int64_t channels, int64_t height,
                                  int64_t width, int64_t sampling_ratio, bool aligned) {
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                  grad.size(2) == pooled_h && grad.size(3) == pooled_w,
              "grad must be [K, C, pooled_h, pooled_w], got ", grad.sizes());
  TORCH_CHECK(height * width < (int64_t(1) << 31), "feature map too large");
  if (grad.numel() == 0 || batch_size * channels * height * width == 0) {
    return at::zeros({batch_size, channels, height, width}, grad.options());
  }
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                  "mrcnn_roi_align_backward", [&] {
    out = backward_impl<scalar_t>(grad, rois, spatial_scale, int(pooled_h), int(pooled_w),
                                  batch_size, channels, height, width, int(sampling_ratio),
                                  aligned);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mrcnn, CPU, m) {
  m.impl("roi_align", &roi_align_forward_cpu);
  m.impl("roi_align_backward", &roi_align_backward_cpu);
}

}  // namespace mrcnn
