// CPU RoIAlign forward and backward.
//
// Two strategies, chosen per call:
//  - planar (few samples, or few channels): torchvision's loops on the NCHW planes; the bilinear
//    corners and weights of a RoI are computed once and reused for every channel.
//  - sliced (many samples and channels, e.g. 1000 RoIs on a 256-channel FPN level): the channels
//    are cut into slices of 16-64; a task copies its slice of the map pixel-major (channels
//    last) into a private buffer, so each sample reads four short contiguous channel vectors and
//    the channel loop vectorises. The copy is one pass over the map, paid back many times over;
//    a channels-last input is read in place.
// Forward tasks are RoIs (planar) or channel slices (sliced); backward tasks are always channel
// slices, so each thread owns part of the gradient (no atomics) and adds contributions in the
// order torchvision's serial kernel does: float32 gradients are bit for bit torchvision's.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../common.h"
#include "parallel.h"
#include "roi_align.h"

namespace mrcnn {
namespace {

// Precomputed sample: four corner offsets in the H*W plane and their weights. p1 < 0 marks a
// sample outside the plane (backward skips it; forward reads offset 0 with weight 0, as
// torchvision does, so that even a non-finite value there propagates the same way).
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
    TORCH_CHECK(valid_batch(p[5 * i], batch), "roi ", i, " has batch index ", p[5 * i],
                " outside [0, ", batch, ")");
  }
  return r;
}

// The sliced strategy pays off when the samples touch the map several times over and the channel
// loop is long enough to vectorise.
bool prefer_sliced(int64_t channels, int64_t plane_elements, int64_t total_samples,
                   bool channels_last) {
  if (channels < 8) return false;
  if (channels_last) return true;
  return total_samples * 4 >= plane_elements;
}

// Channel slice width: about two slices per thread (a late thread then costs little), a multiple
// of 8 between 16 and 64 (long enough vector loops), and a private buffer of at most ~32 MiB.
int64_t slice_width(int64_t channels, int64_t pixels, int64_t elem_size) {
  const int64_t threads = at::get_num_threads();
  int64_t w = (channels + 2 * threads - 1) / (2 * threads);
  w = std::min<int64_t>(64, std::max<int64_t>(16, (w + 7) / 8 * 8));
  const int64_t cap = (int64_t(32) << 20) / std::max<int64_t>(1, pixels * elem_size);
  w = std::min(w, std::max<int64_t>(8, cap / 8 * 8));
  return std::min(w, channels);
}

template <typename acc_t>
struct Problem {
  const acc_t* rois;
  int64_t k_rois, n_batch, channels, height, width;
  acc_t scale;
  int ph, pw, sr;
  bool aligned;
  RoiGeometry<acc_t> geometry(int64_t r) const {
    return geometry_of(rois, r, scale, ph, pw, sr, aligned);
  }
  int64_t bins() const { return int64_t(ph) * pw; }
  int64_t total_samples() const {
    int64_t t = 0;
    for (int64_t r = 0; r < k_rois; ++r) t += samples_of(geometry(r), ph, pw);
    return t;
  }
};

template <typename acc_t>
int64_t per_bin_of(const RoiGeometry<acc_t>& g) {
  return int64_t(std::max(g.grid_h, 0)) * std::max(g.grid_w, 0);
}

// Copies channels [c0, c0 + cw) of an NCHW map into buf as [N, H*W, cw], in blocks of pixels
// so that both sides stay in cache.
template <typename scalar_t, typename acc_t>
void slice_to_buffer(const scalar_t* in, int64_t n_batch, int64_t channels, int64_t hw,
                     int64_t c0, int64_t cw, acc_t* buf) {
  constexpr int64_t kPix = 64;
  for (int64_t n = 0; n < n_batch; ++n) {
    for (int64_t p0 = 0; p0 < hw; p0 += kPix) {
      const int64_t p1 = std::min(hw, p0 + kPix);
      for (int64_t c = 0; c < cw; ++c) {
        const scalar_t* src = in + (n * channels + c0 + c) * hw;
        acc_t* dst = buf + n * hw * cw + c;
        for (int64_t p = p0; p < p1; ++p) dst[p * cw] = acc_t(src[p]);
      }
    }
  }
}

// The inverse: buf [N, H*W, cw] into channels [c0, c0 + cw) of an NCHW map.
template <typename scalar_t, typename acc_t>
void buffer_to_slice(const acc_t* buf, int64_t n_batch, int64_t channels, int64_t hw, int64_t c0,
                     int64_t cw, scalar_t* out) {
  constexpr int64_t kPix = 64;
  for (int64_t n = 0; n < n_batch; ++n) {
    for (int64_t p0 = 0; p0 < hw; p0 += kPix) {
      const int64_t p1 = std::min(hw, p0 + kPix);
      for (int64_t c = 0; c < cw; ++c) {
        const acc_t* src = buf + n * hw * cw + c;
        scalar_t* dst = out + (n * channels + c0 + c) * hw;
        for (int64_t p = p0; p < p1; ++p) dst[p] = static_cast<scalar_t>(src[p * cw]);
      }
    }
  }
}

// Forward of all RoIs for one channel slice whose values sit at base[(n*HW + p) * ps + c].
template <typename scalar_t, typename acc_t, typename V>
void forward_slice(const Problem<acc_t>& pb, const V* base, int64_t ps, int64_t c0, int64_t cw,
                   scalar_t* out) {
  const int64_t hw = pb.height * pb.width, bins = pb.bins();
  std::vector<Sample<acc_t>> pcs;
  std::vector<acc_t> acc(cw);
  for (int64_t r = 0; r < pb.k_rois; ++r) {
    const RoiGeometry<acc_t> g = pb.geometry(r);
    precalc(g, pb.ph, pb.pw, pb.height, pb.width, pcs);
    const int64_t per_bin = per_bin_of(g);
    const V* img = base + g.batch * hw * ps;
    const Sample<acc_t>* pc = pcs.data();
    for (int64_t bin = 0; bin < bins; ++bin) {
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t s = 0; s < per_bin; ++s, ++pc) {
        const V* v1 = img + int64_t(pc->p1 < 0 ? 0 : pc->p1) * ps;
        const V* v2 = img + int64_t(pc->p2) * ps;
        const V* v3 = img + int64_t(pc->p3) * ps;
        const V* v4 = img + int64_t(pc->p4) * ps;
        const acc_t w1 = pc->w1, w2 = pc->w2, w3 = pc->w3, w4 = pc->w4;
        for (int64_t c = 0; c < cw; ++c) {
          acc[c] += w1 * acc_t(v1[c]) + w2 * acc_t(v2[c]) + w3 * acc_t(v3[c]) +
                    w4 * acc_t(v4[c]);
        }
      }
      scalar_t* o = out + (r * pb.channels + c0) * bins + bin;
      for (int64_t c = 0; c < cw; ++c) o[c * bins] = static_cast<scalar_t>(acc[c] / g.count);
    }
  }
}

template <typename scalar_t>
void forward_impl(const at::Tensor& input, const at::Tensor& rois_in, at::Tensor& output,
                  double spatial_scale, int ph, int pw, int sr, bool aligned) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n_batch = input.size(0), channels = input.size(1);
  const int64_t height = input.size(2), width = input.size(3), hw = height * width;
  const at::Tensor rois = rois_as<acc_t>(rois_in, n_batch);
  const Problem<acc_t> pb{rois.data_ptr<acc_t>(), rois.size(0), n_batch, channels, height, width,
                          static_cast<acc_t>(spatial_scale), ph, pw, sr, aligned};
  scalar_t* out = output.data_ptr<scalar_t>();
  const int64_t bins = pb.bins();
  const bool channels_last =
      input.is_contiguous(at::MemoryFormat::ChannelsLast) && !input.is_contiguous();

  const int64_t total = pb.total_samples();
  const int64_t work = 8 * total * channels;  // four corners, multiply and add, per channel
  if (prefer_sliced(channels, n_batch * hw, total, channels_last)) {
    const int64_t cw = slice_width(channels, n_batch * hw, sizeof(acc_t));
    const int64_t slices = (channels + cw - 1) / cw;
    const at::Tensor in = channels_last ? input : input.contiguous();
    const scalar_t* ip = in.data_ptr<scalar_t>();
    dynamic_parallel_for(0, slices, 1, work, [&](int64_t q0, int64_t q1) {
      std::vector<acc_t> buf;
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t c0 = q * cw, w = std::min(cw, channels - c0);
        if (channels_last) {
          forward_slice<scalar_t, acc_t, scalar_t>(pb, ip + c0, channels, c0, w, out);
        } else {
          buf.resize(n_batch * hw * w);
          slice_to_buffer(ip, n_batch, channels, hw, c0, w, buf.data());
          forward_slice<scalar_t, acc_t, acc_t>(pb, buf.data(), w, c0, w, out);
        }
      }
    });
    return;
  }

  const at::Tensor in = input.contiguous();
  const scalar_t* ip = in.data_ptr<scalar_t>();
  dynamic_parallel_for(0, pb.k_rois, 4, work, [&](int64_t r0, int64_t r1) {
    std::vector<Sample<acc_t>> pcs;
    for (int64_t r = r0; r < r1; ++r) {
      const RoiGeometry<acc_t> g = pb.geometry(r);
      precalc(g, ph, pw, height, width, pcs);
      const int64_t per_bin = per_bin_of(g);
      for (int64_t c = 0; c < channels; ++c) {
        const scalar_t* plane = ip + (g.batch * channels + c) * hw;
        scalar_t* o = out + (r * channels + c) * bins;
        const Sample<acc_t>* pc = pcs.data();
        for (int64_t bin = 0; bin < bins; ++bin) {
          acc_t v = 0;
          for (int64_t s = 0; s < per_bin; ++s, ++pc) {
            const int64_t p1 = pc->p1 < 0 ? 0 : pc->p1;
            v += pc->w1 * acc_t(plane[p1]) + pc->w2 * acc_t(plane[pc->p2]) +
                 pc->w3 * acc_t(plane[pc->p3]) + pc->w4 * acc_t(plane[pc->p4]);
          }
          o[bin] = static_cast<scalar_t>(v / g.count);
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
  // Both kernels write every bin of every channel of every RoI, so the output is not zeroed
  // first (zeroing [2000, 256, 7, 7] cost 20 ms of a 1.8 s R-50 inference step on 2 cores).
  if (input.numel() == 0)
    return at::zeros({rois.size(0), input.size(1), pooled_h, pooled_w}, input.options());
  at::Tensor output =
      at::empty({rois.size(0), input.size(1), pooled_h, pooled_w}, input.options());
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "mrcnn_roi_align_forward", [&] {
    forward_impl<scalar_t>(input, rois, output, spatial_scale, int(pooled_h), int(pooled_w),
                           int(sampling_ratio), aligned);
  });
  return output;
}

// torchvision adds grad * w / count; dividing by a power of two is exactly multiplying by its
// reciprocal (same rounded result), which is much cheaper in the inner loop.
template <typename acc_t>
struct Scaler {
  acc_t count, inv;
  bool pow2;
  explicit Scaler(acc_t c) : count(c), inv(acc_t(1) / c) {
    int e = 0;
    pow2 = std::frexp(static_cast<double>(c), &e) == 0.5;
  }
};

// Backward of all RoIs for one channel slice, accumulated into buf [N, H*W, cw].
template <typename scalar_t, typename acc_t>
void backward_slice(const Problem<acc_t>& pb, const scalar_t* grad, const int64_t* gs, int64_t c0,
                    int64_t cw, acc_t* buf) {
  const int64_t hw = pb.height * pb.width;
  std::vector<Sample<acc_t>> pcs;
  std::vector<acc_t> go(cw);
  for (int64_t r = 0; r < pb.k_rois; ++r) {
    const RoiGeometry<acc_t> g = pb.geometry(r);
    precalc(g, pb.ph, pb.pw, pb.height, pb.width, pcs);
    const int64_t per_bin = per_bin_of(g);
    const Scaler<acc_t> sc(g.count);
    acc_t* img = buf + g.batch * hw * cw;
    const Sample<acc_t>* pc = pcs.data();
    for (int by = 0; by < pb.ph; ++by) {
      for (int bx = 0; bx < pb.pw; ++bx) {
        const scalar_t* gr = grad + r * gs[0] + c0 * gs[1] + by * gs[2] + bx * gs[3];
        for (int64_t c = 0; c < cw; ++c) go[c] = acc_t(gr[c * gs[1]]);
        for (int64_t s = 0; s < per_bin; ++s, ++pc) {
          if (pc->p1 < 0) continue;
          acc_t* d1 = img + int64_t(pc->p1) * cw;
          acc_t* d2 = img + int64_t(pc->p2) * cw;
          acc_t* d3 = img + int64_t(pc->p3) * cw;
          acc_t* d4 = img + int64_t(pc->p4) * cw;
          const acc_t w1 = pc->w1, w2 = pc->w2, w3 = pc->w3, w4 = pc->w4;
          // Corners can coincide at the map border; separate loops add in torchvision's order.
          if (sc.pow2) {
            const acc_t inv = sc.inv;
            for (int64_t c = 0; c < cw; ++c) d1[c] += go[c] * w1 * inv;
            for (int64_t c = 0; c < cw; ++c) d2[c] += go[c] * w2 * inv;
            for (int64_t c = 0; c < cw; ++c) d3[c] += go[c] * w3 * inv;
            for (int64_t c = 0; c < cw; ++c) d4[c] += go[c] * w4 * inv;
          } else {
            const acc_t cnt = sc.count;
            for (int64_t c = 0; c < cw; ++c) d1[c] += go[c] * w1 / cnt;
            for (int64_t c = 0; c < cw; ++c) d2[c] += go[c] * w2 / cnt;
            for (int64_t c = 0; c < cw; ++c) d3[c] += go[c] * w3 / cnt;
            for (int64_t c = 0; c < cw; ++c) d4[c] += go[c] * w4 / cnt;
          }
        }
      }
    }
  }
}

template <typename scalar_t>
at::Tensor backward_impl(const at::Tensor& grad, const at::Tensor& rois_in, double spatial_scale,
                         int ph, int pw, int64_t n_batch, int64_t channels, int64_t height,
                         int64_t width, int sr, bool aligned) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t hw = height * width;
  const at::Tensor rois = rois_as<acc_t>(rois_in, n_batch);
  const Problem<acc_t> pb{rois.data_ptr<acc_t>(), rois.size(0), n_batch, channels, height, width,
                          static_cast<acc_t>(spatial_scale), ph, pw, sr, aligned};
  const scalar_t* gp = grad.data_ptr<scalar_t>();
  const int64_t gs[4] = {grad.stride(0), grad.stride(1), grad.stride(2), grad.stride(3)};

  const int64_t total = pb.total_samples();
  const int64_t work = 8 * total * channels;
  if (prefer_sliced(channels, n_batch * hw, total, false)) {
    at::Tensor grad_input = at::empty({n_batch, channels, height, width}, grad.options());
    scalar_t* gi = grad_input.data_ptr<scalar_t>();
    const int64_t cw = slice_width(channels, n_batch * hw, sizeof(acc_t));
    const int64_t slices = (channels + cw - 1) / cw;
    dynamic_parallel_for(0, slices, 1, work, [&](int64_t q0, int64_t q1) {
      std::vector<acc_t> buf;
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t c0 = q * cw, w = std::min(cw, channels - c0);
        buf.assign(n_batch * hw * w, acc_t(0));
        backward_slice<scalar_t, acc_t>(pb, gp, gs, c0, w, buf.data());
        buffer_to_slice(buf.data(), n_batch, channels, hw, c0, w, gi);
      }
    });
    return grad_input;
  }

  // Planar: tasks are channel ranges; each computes a RoI's samples once for its channels.
  const auto acc_dtype = c10::CppTypeToScalarType<acc_t>::value;
  at::Tensor gin = at::zeros({n_batch, channels, height, width}, grad.options().dtype(acc_dtype));
  acc_t* gi = gin.data_ptr<acc_t>();
  const int64_t threads = at::get_num_threads();
  const int64_t per_task = std::max<int64_t>(1, (channels + 2 * threads - 1) / (2 * threads));
  dynamic_parallel_for(0, channels, per_task, work, [&](int64_t c0, int64_t c1) {
    std::vector<Sample<acc_t>> pcs;
    for (int64_t r = 0; r < pb.k_rois; ++r) {
      const RoiGeometry<acc_t> g = pb.geometry(r);
      precalc(g, ph, pw, height, width, pcs);
      const int64_t per_bin = per_bin_of(g);
      for (int64_t c = c0; c < c1; ++c) {
        acc_t* plane = gi + (g.batch * channels + c) * hw;
        const Sample<acc_t>* pc = pcs.data();
        for (int by = 0; by < ph; ++by) {
          for (int bx = 0; bx < pw; ++bx) {
            const acc_t go = acc_t(gp[r * gs[0] + c * gs[1] + by * gs[2] + bx * gs[3]]);
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
  return std::is_same<scalar_t, acc_t>::value ? gin : gin.to(grad.scalar_type());
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

// Entry points for cpu/multilevel.cpp (declared in roi_align.h).
at::Tensor roi_align_cpu_forward(const at::Tensor& input, const at::Tensor& rois,
                                 double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                 int64_t sampling_ratio, bool aligned) {
  return roi_align_forward_cpu(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio,
                               aligned);
}

at::Tensor roi_align_cpu_backward(const at::Tensor& grad, const at::Tensor& rois,
                                  double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                  int64_t batch_size, int64_t channels, int64_t height,
                                  int64_t width, int64_t sampling_ratio, bool aligned) {
  return roi_align_backward_cpu(grad, rois, spatial_scale, pooled_h, pooled_w, batch_size,
                                channels, height, width, sampling_ratio, aligned);
}

TORCH_LIBRARY_IMPL(mrcnn, CPU, m) {
  m.impl("roi_align", &roi_align_forward_cpu);
  m.impl("roi_align_backward", &roi_align_backward_cpu);
}

}  // namespace mrcnn
