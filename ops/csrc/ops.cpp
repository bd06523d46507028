// Operator schemas of the `mrcnn` namespace (torch.ops.mrcnn.*) and the Python module entry
// point of ops._C. Kernels live in cpu/ and cuda/; fake (shape) kernels and autograd formulas
// are registered from Python (ops/_library.py).
#include <Python.h>
#include <torch/library.h>

#ifndef MRCNN_WITH_CUDA
#define MRCNN_WITH_CUDA 0
#endif
#ifndef MRCNN_CUDA_ARCHS
#define MRCNN_CUDA_ARCHS ""
#endif
#ifndef MRCNN_TORCH_VERSION
#define MRCNN_TORCH_VERSION "unknown"
#endif

TORCH_LIBRARY(mrcnn, m) {
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  m.def("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, int pooled_height, "
      "int pooled_width, int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, int pooled_height, "
      "int pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, "
      "int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "paste_masks(Tensor masks, Tensor boxes, SymInt image_h, SymInt image_w, float threshold, "
      "int padding) -> Tensor");
  m.def(
      "polygons_to_masks(Tensor coords, Tensor poly_offsets, Tensor roi_poly_offsets, "
      "Tensor rois, int mask_size) -> Tensor");
  m.def(
      "grid_anchors(Tensor base_anchors, SymInt feat_h, SymInt feat_w, int stride_h, "
      "int stride_w) -> Tensor");
  m.def("decode_boxes(Tensor deltas, Tensor boxes, float[] weights, float clamp) -> Tensor");
  m.def(
      "multilevel_roi_align(Tensor[] features, Tensor rois, float[] spatial_scales, "
      "int pooled_height, int pooled_width, int sampling_ratio, bool aligned, "
      "int canonical_level, float canonical_scale, int k_min) -> Tensor");
  m.def(
      "multilevel_roi_align_backward(Tensor grad, Tensor rois, float[] spatial_scales, "
      "int pooled_height, int pooled_width, SymInt batch_size, SymInt channels, "
      "SymInt[] heights, SymInt[] widths, int sampling_ratio, bool aligned, "
      "int canonical_level, float canonical_scale, int k_min) -> Tensor[]");
  m.def(
      "rpn_decode_topk(Tensor objectness, Tensor deltas, Tensor anchors, SymInt[] level_sizes, "
      "int pre_nms_top_n, Tensor image_hw, float[] weights, float clamp, float min_size, "
      "float score_thresh) -> (Tensor boxes, Tensor scores, Tensor levels, Tensor valid)");
  m.def("encode_boxes(Tensor targets, Tensor reference, float[] weights) -> Tensor");
  m.def(
      "match_boxes(Tensor gt_boxes, Tensor gt_valid, Tensor boxes, float high_threshold, "
      "float low_threshold, bool allow_low_quality_matches) -> Tensor");
}

// `import ops._C` loads this library (running the registrations above) and exposes what the
// build contained; ops.info() reports it.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C",
                            "mrcnn detection operators (registered as torch.ops.mrcnn.*)", -1,
                            nullptr};
  PyObject* mod = PyModule_Create(&def);
  if (mod == nullptr) return nullptr;
  PyModule_AddObject(mod, "cuda", PyBool_FromLong(MRCNN_WITH_CUDA));
  PyModule_AddStringConstant(mod, "cuda_archs", MRCNN_CUDA_ARCHS);
  PyModule_AddStringConstant(mod, "torch_version", MRCNN_TORCH_VERSION);
  return mod;
}
