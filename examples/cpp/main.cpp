// Runs an AOTInductor package of the exported Mask R-CNN on one image and prints its detections.
//
//   mrcnn_aoti PACKAGE OPS_LIBRARY [IMAGE.ppm]
//
// PACKAGE: model_aoti_cpu.pt2 from --mode=export. OPS_LIBRARY: the mrcnn_ops.so shipped next to
// it; the package calls those operators (NMS, RoIAlign, ...) through torch's dispatcher, so it
// is loaded first (its static initialisers register them). IMAGE: a binary PPM (P6, 8 bit);
// without one a synthetic 480x640 image is used. Output: one line per detection
// "label score x1 y1 x2 y2 mask_pixels", boxes in original pixels.
#include <dlfcn.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

namespace {

// uint8 [3, H, W] from a binary PPM, or an undefined tensor when the file is not one.
at::Tensor read_ppm(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::string magic;
  int w = 0, h = 0, maxval = 0;
  f >> magic >> w >> h >> maxval;
  if (!f || magic != "P6" || w <= 0 || h <= 0 || maxval != 255) return {};
  f.get();  // the single whitespace after the header
  std::vector<uint8_t> data(static_cast<size_t>(w) * h * 3);
  f.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(data.size()));
  if (!f) return {};
  auto hwc = torch::from_blob(data.data(), {h, w, 3}, torch::kUInt8);
  return hwc.permute({2, 0, 1}).contiguous();  // copies out of `data`
}

// A smooth colour gradient: something to run on without an image file.
at::Tensor synthetic_image(int64_t h, int64_t w) {
  auto y = torch::linspace(0, 1, h).view({1, h, 1}).expand({1, h, w});
  auto x = torch::linspace(0, 1, w).view({1, 1, w}).expand({1, h, w});
  auto img = torch::cat({x, y, (x * y)}, 0) * 255;
  return img.to(torch::kUInt8).contiguous();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: " << argv[0] << " PACKAGE OPS_LIBRARY [IMAGE.ppm]\n";
    return 2;
  }
  // RTLD_LAZY: the library is also a Python extension module; its Python entry point (the only
  // code using libpython) is never called here, so those symbols are never resolved.
  if (dlopen(argv[2], RTLD_LAZY | RTLD_GLOBAL) == nullptr) {
    std::cerr << argv[2] << ": " << dlerror() << "\n";
    return 2;
  }
  at::Tensor image = argc > 3 ? read_ppm(argv[3]) : synthetic_image(480, 640);
  if (!image.defined()) {
    std::cerr << argv[3] << ": not a binary 8-bit PPM (P6) file\n";
    return 2;
  }
  torch::NoGradGuard no_grad;
  torch::inductor::AOTIModelPackageLoader loader(argv[1]);
  // A batch of one; images of one size can be stacked into a larger batch.
  std::vector<at::Tensor> out = loader.run({image.unsqueeze(0)});
  // boxes [D, 4], scores [D], labels [D], batch_idx [D], masks uint8 [D, H, W]
  const auto& boxes = out[0];
  const auto& scores = out[1];
  const auto& labels = out[2];
  const auto& masks = out[4];
  std::cout << "detections " << scores.size(0) << " image " << image.size(1) << "x"
            << image.size(2) << "\n";
  for (int64_t i = 0; i < scores.size(0); ++i) {
    auto b = boxes[i];
    std::printf("%ld %.4f %.2f %.2f %.2f %.2f %ld\n", static_cast<long>(labels[i].item<int64_t>()),
                scores[i].item<float>(), b[0].item<float>(), b[1].item<float>(),
                b[2].item<float>(), b[3].item<float>(),
                static_cast<long>(masks[i].sum().item<int64_t>()));
  }
  return 0;
}
