"""Mask R-CNN, ResNet-50-FPN, 1x schedule on COCO 2014 (the seed's e2e_mask_rcnn_R_50_FPN_1x).

    python main.py --config=configs/r50_fpn_1x.py --mode=train --workdir=runs/r50_fpn_1x
    torchrun --nproc_per_node=8 main.py --config=configs/r50_fpn_1x.py --mode=train

Expected: 37.7 box AP / 34.2 mask AP on val2014-minival after 90k iterations at 16 images per
batch (the seed's published figure). Smoke test on a CPU with `--config=configs/r50_fpn_1x.py:runlocal`.

The model defaults compute exactly what torchvision's `maskrcnn_resnet50_fpn` computes, so
torchvision COCO weights load (`init.format=torchvision`) and give the same detections.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = common.parse_arg(arg, runlocal=False)
    c = ml_collections.ConfigDict()
    c.name = "r50_fpn_1x"
    c.seed = 0
    c.device = "auto"  # auto | cpu | cuda
    c.dtype = "float32"  # float32 | bfloat16 | float16 (torch.autocast; GradScaler for float16)
    c.deterministic = False  # torch.use_deterministic_algorithms + no cudnn benchmark
    c.log_period = 20  # iterations between console / TensorBoard lines (the seed prints every 20)

    # ---------------------------------------------------------------- data
    c.data = ml_collections.ConfigDict()
    # A dataset is a COCO-format json plus an image folder. `name` picks a known layout
    # (see mrcnn/data/catalog.py and WORKSPACE.md); explicit img_dir / ann_file override it.
    c.data.root = "datasets"  # overridden by $MRCNN_DATA when set
    # The seed's COCO 2014 train + valminusminival is exactly COCO 2017 train (118k images), and
    # its minival is COCO 2017 val.
    c.data.train = ml_collections.ConfigDict(
        {"name": "coco_2017_train", "img_dir": "", "ann_file": ""}
    )
    c.data.val = ml_collections.ConfigDict(
        {"name": "coco_2014_minival", "img_dir": "", "ann_file": ""}
    )
    c.data.num_workers = 4
    c.data.filter_empty = True  # drop training images without usable annotations (the seed does)
    c.data.aspect_ratio_grouping = True
    c.data.on_bad_image = "skip"  # skip | fail: a missing/corrupt image in training
    c.data.on_bad_annotation = "fail"  # fail | skip: a malformed annotation record
    # False: labels are 1..K over the dataset's sorted category ids (num_classes = K + 1).
    # True: label = COCO category id (torchvision's 91-output COCO head; num_classes = 91).
    c.data.category_ids_as_labels = False
    # The synthetic shapes dataset the project generates itself (configs/shapes.py uses it).
    c.data.shapes = ml_collections.ConfigDict()
    c.data.shapes.seed = 0
    c.data.shapes.num_train = 2000
    c.data.shapes.num_val = 200
    c.data.shapes.image_size = 128
    c.data.shapes.num_classes = 3
    c.data.shapes.max_objects = 4

    # --------------------------------------------------------------- input
    c.input = ml_collections.ConfigDict()
    c.input.min_size_train = (800,)  # one is picked at random per image: multi-scale training
    c.input.max_size_train = 1333
    c.input.min_size_test = 800
    c.input.max_size_test = 1333
    c.input.size_divisibility = 32
    c.input.flip_prob = 0.5
    # RGB in [0, 1], ImageNet statistics: torchvision's convention.
    c.input.pixel_mean = (0.485, 0.456, 0.406)
    c.input.pixel_std = (0.229, 0.224, 0.225)
    c.input.to_bgr255 = False  # MSRA/caffe2 weights: BGR in [0, 255], mean only
    # Large-scale jitter (mrcnn/data/lsj.py) when > 0: each training image is resized to fit a
    # lsj_size x lsj_size square times a factor drawn from lsj_scale_range, flipped, then
    # randomly cropped / padded to exactly lsj_size x lsj_size (min/max_size_train unused).
    c.input.lsj_size = 0
    c.input.lsj_scale_range = (0.1, 2.0)

    # --------------------------------------------------------------- model
    c.model = ml_collections.ConfigDict()
    c.model.num_classes = 81  # including background; COCO's 80 categories mapped contiguously
    c.model.mask_on = True
    c.model.backbone = ml_collections.ConfigDict()
    c.model.backbone.depth = 50  # 18 | 34 | 50 | 101 | 152
    c.model.backbone.width = 64  # stem width; stage widths scale with it
    c.model.backbone.norm = "FrozenBN"  # FrozenBN | BN | SyncBN | GN
    c.model.backbone.gn_groups = 32
    c.model.backbone.freeze_at = 2  # 0: nothing frozen, 1: stem, 2: stem + res2, ...
    c.model.backbone.stride_in_1x1 = False  # True for MSRA/caffe2 weights
    c.model.backbone.fpn = True  # False: C4 (res5 runs as the RoI head)
    c.model.backbone.fpn_channels = 256
    # "" | GN | BN | SyncBN | FrozenBN (torchvision's maskrcnn_resnet50_fpn_v2: BN)
    c.model.backbone.fpn_norm = ""
    c.model.anchor = ml_collections.ConfigDict()
    c.model.anchor.sizes = (32, 64, 128, 256, 512)  # one size per FPN level P2..P6
    c.model.anchor.aspect_ratios = (0.5, 1.0, 2.0)
    c.model.anchor.c4_stride = 16  # the C4 variant's single level
    c.model.rpn = ml_collections.ConfigDict()
    c.model.rpn.fg_iou_thresh = 0.7
    c.model.rpn.bg_iou_thresh = 0.3
    c.model.rpn.batch_size_per_image = 256
    c.model.rpn.positive_fraction = 0.5
    c.model.rpn.pre_nms_top_n_train = 2000  # per level
    c.model.rpn.pre_nms_top_n_test = 1000  # per level
    c.model.rpn.post_nms_top_n_train = 2000  # per image
    c.model.rpn.post_nms_top_n_test = 1000  # per image
    c.model.rpn.nms_thresh = 0.7
    c.model.rpn.score_thresh = 0.0
    c.model.rpn.min_size = 1e-3
    c.model.rpn.bbox_reg_weights = (1.0, 1.0, 1.0, 1.0)
    c.model.rpn.smooth_l1_beta = 1.0 / 9.0
    # Training: the dense RPN head runs without autograd (proposals) and the loss re-evaluates it
    # with gradient at the sampled anchors only. Same loss and gradients up to float rounding;
    # the head's backward (~1/4 of a step's arithmetic) becomes negligible. False: the dense
    # head's own graph, bit-identical to torchvision.
    c.model.rpn.sparse_grad = True
    # 3x3 conv + ReLU layers before the 1x1 predictors (torchvision's v2 head: 2; needs
    # sparse_grad=False: the sampled-anchor gradient re-evaluates a single conv).
    c.model.rpn.conv_depth = 1
    c.model.roi_heads = ml_collections.ConfigDict()
    c.model.roi_heads.fg_iou_thresh = 0.5
    c.model.roi_heads.bg_iou_thresh = 0.5
    c.model.roi_heads.batch_size_per_image = 512
    c.model.roi_heads.positive_fraction = 0.25
    c.model.roi_heads.bbox_reg_weights = (10.0, 10.0, 5.0, 5.0)
    c.model.roi_heads.smooth_l1_beta = 1.0 / 9.0
    c.model.roi_heads.score_thresh = 0.05
    c.model.roi_heads.nms_thresh = 0.5
    c.model.roi_heads.detections_per_img = 100
    c.model.roi_heads.aligned = False  # RoIAlign half-pixel offset (detectron2's ROIAlignV2)
    c.model.box_head = ml_collections.ConfigDict()
    c.model.box_head.pooler_resolution = 7
    c.model.box_head.sampling_ratio = 2
    c.model.box_head.num_fc = 2
    c.model.box_head.fc_dim = 1024
    # 3x3 conv (+ norm) + ReLU layers before the fcs (FPN only). 0: torchvision's v1 TwoMLPHead;
    # 4 with num_fc=1 and norm=BN: its maskrcnn_resnet50_fpn_v2 FastRCNNConvFCHead.
    c.model.box_head.num_conv = 0
    c.model.box_head.conv_dim = 256
    c.model.box_head.norm = ""  # "" | GN | BN | SyncBN | FrozenBN, in the convs
    c.model.mask_head = ml_collections.ConfigDict()
    c.model.mask_head.pooler_resolution = 14
    c.model.mask_head.sampling_ratio = 2
    c.model.mask_head.num_conv = 4
    c.model.mask_head.conv_dim = 256
    c.model.mask_head.resolution = 28  # mask target size: 2x the pooler via the deconv
    c.model.mask_head.norm = ""  # "" | GN | BN | SyncBN | FrozenBN (torchvision's v2: BN)

    # --------------------------------------------------------------- weights
    c.init = ml_collections.ConfigDict()
    c.init.weights = config_dict.placeholder(str)  # a path; empty: random init
    c.init.format = "native"  # native | torchvision | torchvision_backbone

    # --------------------------------------------------------------- solver
    c.solver = ml_collections.ConfigDict()
    c.solver.optimizer = "sgd"  # sgd | adamw
    c.solver.base_lr = 0.02
    c.solver.momentum = 0.9
    c.solver.weight_decay = 1e-4
    c.solver.weight_decay_norm = 0.0
    c.solver.bias_lr_factor = 2.0
    c.solver.weight_decay_bias = 0.0
    c.solver.ims_per_batch = 16  # global batch, split across ranks
    c.solver.accumulate_steps = 1  # micro-batches per optimizer step
    c.solver.max_iter = 90000  # optimizer steps
    c.solver.steps = (60000, 80000)
    c.solver.gamma = 0.1
    c.solver.warmup_iters = 500
    c.solver.warmup_factor = 1.0 / 3
    c.solver.warmup_method = "linear"  # linear | constant
    c.solver.clip_grad_norm = 0.0  # 0: off
    c.solver.checkpoint_period = 2500
    c.solver.keep_checkpoints = 3
    c.solver.max_bad_steps = 0  # non-finite losses tolerated (skipped) before the run stops

    # --------------------------------------------------------------- test / eval
    c.test = ml_collections.ConfigDict()
    c.test.ims_per_batch = 8  # global, split across ranks (as the seed)
    c.eval = ml_collections.ConfigDict()
    c.eval.period = 0  # iterations between evaluations during training; 0: off
    c.eval.per_epoch = False  # also evaluate after every epoch (the seed's PER_EPOCH_EVAL)
    c.eval.min_bbox_map = 0.0  # early stop once both are reached (0: never stop early)
    c.eval.min_mask_map = 0.0
    c.eval.final = True  # evaluate when training ends (the seed's --skip-test turns it off)
    c.eval.num_images = 0  # evaluate on the first N val images only; 0: all
    c.eval.vis_images = 4  # validation predictions drawn into TensorBoard

    # --------------------------------------------------------------- predict
    c.predict = ml_collections.ConfigDict()
    c.predict.input = config_dict.placeholder(str)  # image file, folder or glob
    c.predict.score_thresh = 0.5  # drawn and written above this score
    c.predict.draw = True
    c.predict.artifact = config_dict.placeholder(str)  # an exported model (mrcnn/export) to run

    # --------------------------------------------------------------- browse / analyze
    # --mode=browse draws the ground truth (mrcnn/analysis/browse.py); --mode=analyze breaks an
    # evaluation down and writes report/index.html (mrcnn/analysis/analyze.py).
    c.browse = ml_collections.ConfigDict()
    c.browse.split = "val"  # train | val
    c.browse.num_images = 16  # drawn at random (browse.seed) unless browse.images names some
    c.browse.images = ()  # image ids or file names, e.g. "(3, 17)" or "('a.jpg',)"
    c.browse.augmented = False  # True: as the training loader feeds them (resized, flipped)
    c.browse.seed = 0
    c.browse.columns = 4  # of the contact sheet
    c.browse.tile = 320  # contact-sheet cell, pixels
    c.analyze = ml_collections.ConfigDict()
    c.analyze.eval_dir = ""  # "": the newest evaluation in the workdir; else eval/iter_0005000
    c.analyze.score_thresh = 0.5  # detections counted by the confusion matrix and worst images
    c.analyze.iou_thresh = 0.5  # matching of the confusion matrix
    c.analyze.num_worst = 8  # images drawn with the most false positives + misses
    c.analyze.workdirs = ()  # other runs overlaid on the training curves (a sweep's)

    # --------------------------------------------------------------- bench
    c.bench = ml_collections.ConfigDict()
    c.bench.mode = "both"  # train | infer | both | artifacts (eager vs exported ones only)
    c.bench.iters = 20
    c.bench.warmup = 5
    c.bench.batch_size = 2
    c.bench.image_size = (800, 1333)  # (h, w) of the synthetic benchmark images
    c.bench.reference = True  # also time torchvision's Mask R-CNN in the same run
    c.bench.dtypes = ("float32", "bfloat16")

    # --------------------------------------------------------------- export (deployment)
    # --mode=export (mrcnn/export): artifacts under <workdir>/<export.dir>, each with a sidecar
    # json; an artifact failing parity against eager is not written under its final name.
    c.export = ml_collections.ConfigDict()
    c.export.dir = "export"
    c.export.formats = ("pt2", "aoti", "onnx")  # torch.export program, AOTInductor package, ONNX
    # bfloat16: the network (backbone, FPN, heads) under autocast inside the program, box maths,
    # NMS and pasting in float32; pt2 and aoti only (onnxruntime's CPU provider has no bfloat16
    # convolution). Parity is against the eager model in the same dtype.
    c.export.dtype = "float32"
    # The AOTInductor package (float32) is compiled from a second trace of the model with its
    # weights and input channels_last, with Inductor's freezing (weights folded as constants,
    # convolutions on oneDNN with fused post-ops): R-50 800x1333 batch 1 went from 1.46 to
    # ~0.8 of eager's time (README, Deploy). False: the .pt2 program as it is.
    c.export.aoti_fast = True
    c.export.mask_threshold = 0.5  # pasted masks are probabilities > this (as eval/predict)
    c.export.max_batch = 8  # images per call of an artifact's predictor (the program allows 64)
    c.export.parity_val_images = 4  # data.val images added to the synthetic parity set (0: none)
    c.export.box_tol = 1e-3  # px, largest box coordinate difference against eager
    c.export.score_tol = 1e-4
    c.export.mask_iou_tol = 0.99  # smallest mask IoU against eager
    c.export.onnx_min_mask_iou = 0.9  # ONNX: smallest mask IoU (its mean: mask_iou_tol) of
    # the masks more than onnx_mask_shift_px from eager's: a sub-pixel box difference moves a
    # pasted mask by a pixel, which costs a 4 px tall mask IoU 0.6-0.8 (mrcnn/export/parity.py)
    c.export.onnx_mask_shift_px = 1
    # ONNX: px. Its kernels sum in another order than eager's; a float32 box
    # coordinate near 1000 px has a 6.1e-5 px ulp, and a randomly initialised R-50 at 1150x700
    # gave 7 of 500 boxes 1.04e-3 to 1.34e-3 px off (scores within 2.8e-5).
    c.export.onnx_box_tol = 2e-3
    c.export.bench_batches = (1, 8)  # batch sizes timed by bench_artifacts
    c.export.bench_iters = 5  # timed rounds (each runs eager and every artifact once, interleaved)

    # --------------------------------------------------------------- performance switches
    c.perf = ml_collections.ConfigDict()
    # True: no switch that changes float rounding (channels_last, oneDNN): outputs bit-identical
    # to torchvision's model on the same weights. False (default): the fast paths below apply.
    c.perf.exact = False
    c.perf.channels_last = True  # NHWC weights and images (off with perf.exact)
    c.perf.compile = False  # torch.compile of backbone + FPN + heads
    c.perf.compile_fullgraph = True  # each compiled part one graph: a graph break is an error
    # (H, W) with H <= W, e.g. (800, 1344): every batch padded to exactly (H, W) when its images
    # are landscape or square, (W, H) when portrait: two shapes for the fixed-shape part. Needs
    # orientation-grouped training batches (data.aspect_ratio_grouping); test batches are split
    # by orientation. () = off: pad to the batch's largest image (input.size_divisibility).
    c.perf.pad_to = ()
    # CUDA graphs over backbone + FPN + RPN head (training and inference), one per pad_to shape
    # (and batch size); needs CUDA and perf.pad_to, excludes perf.compile.
    c.perf.cuda_graphs = False
    c.perf.prefetch = True  # copy the next batch to the GPU on a side stream (CPU: no effect)
    # CPU float32 (mrcnn/build/onednn.py): convolutions without autograd (inference, frozen stages,
    # the RPN's dense head) on weights reordered once for oneDNN, and the box head's fc6 as a
    # 7x7 convolution where that is faster (perf.fc6). Equal to eager up to rounding; ignored on
    # GPUs and under autocast; off with perf.compile (Inductor packs its own) and perf.exact.
    c.perf.onednn = True
    # With perf.onednn, the box head's fc6: "conv" (a 7x7 convolution, oneDNN), "linear" (the
    # BLAS) or "auto": both timed once at start-up on the configured shape, the convolution
    # taken when it is 10% faster (on CPUs measured here either one was up to 10x the other;
    # mrcnn/build/onednn.py).
    c.perf.fc6 = "auto"
    c.perf.cudnn_benchmark = True
    c.perf.tf32 = True

    if opts.runlocal:
        common.shrink_for_local_run(c)
    return c
