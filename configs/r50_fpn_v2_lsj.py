"""torchvision's recipe for `maskrcnn_resnet50_fpn_v2` (its COCO_V1 weights: 47.4 box AP / 41.8
mask AP): the v2 architecture with SyncBN everywhere, trained from scratch for 400 epochs with
large-scale jitter (torchvision PR #5773):

    torchrun ... train.py --model maskrcnn_resnet50_fpn_v2 --epochs 400 --lr-steps 352 384 \
        --lr 0.1 --batch-size 2 --weight-decay 0.00004 --sync-bn --data-augmentation lsj
    (4 nodes x 8 GPUs x 2 images = 64 images per step; SGD, momentum 0.9)

Here, on 32 GPUs (4 nodes of 8):

    sbatch --nodes=4 --gpus-per-node=8 launch/slurm.sbatch configs/r50_fpn_v2_lsj.py \
        --workdir=/shared/runs/r50_fpn_v2_lsj

Expected: 47.4 box AP / 41.8 mask AP on COCO 2017 val after 400 epochs. Epochs as steps: COCO
2017 train keeps 117,266 images with annotations, 1,833 steps of 64 per epoch, so 733,200 steps
with decays at epochs 352 and 384 (645,216 and 703,872). torchvision decays every parameter by
4e-5 (no separate norm or bias decay, no 2x bias lr) and warms up linearly from 1/1000 over its
first 1,000 steps.

LSJ: torchvision jitters to a 1024 square (scale 0.1..2.0, random crop / pad, flip), then its
model resizes every image to min_size 800, i.e. 1024 -> 800: the same geometry as jittering to
an 800 square directly, which is what `input.lsj_size=800` does (the model here does not
resize). Test images are resized as usual (800 / 1333). SyncBN runs in the body, FPN and heads
(`norm=SyncBN`: plain BatchNorm in a single process); `freeze_at=0`: nothing frozen, from
scratch (no init.weights). Smoke test: `--config=configs/r50_fpn_v2_lsj.py:runlocal`.
"""

from __future__ import annotations

import ml_collections

from configs import common, r50_fpn_1x
from configs.coco_torchvision_v2 import set_v2_architecture

EPOCH_STEPS = 1833  # ceil(117266 / 64)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    opts = common.parse_arg(arg, runlocal=False)
    c = r50_fpn_1x.get_config()
    c.name = "r50_fpn_v2_lsj"
    c.data.train.name = "coco_2017_train"
    c.data.val.name = "coco_2017_val"
    set_v2_architecture(c, norm="SyncBN")
    c.model.backbone.norm = "SyncBN"
    c.model.backbone.freeze_at = 0
    c.input.lsj_size = 800
    c.input.lsj_scale_range = (0.1, 2.0)
    s = c.solver
    s.optimizer = "sgd"
    s.ims_per_batch = 64
    s.base_lr = 0.1
    s.momentum = 0.9
    s.weight_decay = 4e-5
    s.weight_decay_norm = 4e-5
    s.weight_decay_bias = 4e-5
    s.bias_lr_factor = 1.0
    s.max_iter = 400 * EPOCH_STEPS
    s.steps = (352 * EPOCH_STEPS, 384 * EPOCH_STEPS)
    s.gamma = 0.1
    s.warmup_iters = 1000
    s.warmup_factor = 0.001
    s.warmup_method = "linear"
    s.checkpoint_period = 10 * EPOCH_STEPS
    c.eval.period = 25 * EPOCH_STEPS
    if opts.runlocal:
        common.shrink_for_local_run(c)
        c.input.lsj_size = 128  # the shapes images
        for key in ("norm", "fpn_norm"):
            c.model.backbone[key] = "BN"  # one CPU process
        c.model.box_head.norm = c.model.mask_head.norm = "BN"
    return c
