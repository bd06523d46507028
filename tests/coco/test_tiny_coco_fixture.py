"""The evaluation tests' fixtures (tests/eval_fixtures.py) are what they claim: the tiny dataset is
what pycocotools reads, the oracle returns the ground truth of the ids the fake loader gives."""

import os

import numpy as np
import torch
from eval_fixtures import (
    CATEGORY_IDS,
    OracleModel,
    background_level,
    fake_loader,
    make_tiny_coco,
    shard,
)
from PIL import Image



def test_tiny_coco_is_what_pycocotools_reads(tmp_path):
    ds = make_tiny_coco(str(tmp_path), seed=0)
    assert ds.coco.getCatIds() == list(CATEGORY_IDS)
    for i in ds.image_ids:
        img = np.asarray(Image.open(os.path.join(ds.img_dir, ds.file_names[i])))
        assert img.shape[:2] == ds.sizes[i]
        assert img[0, 0, 0] == background_level(i)  # the corner is background
        gt = ds.gt[i]
        assert gt.masks.shape[1:] == ds.sizes[i]
        for box, mask in zip(gt.boxes, gt.masks):
            # A polygon square [x, x + side] rasterizes to exactly side x side pixels.
            x1, y1, x2, y2 = box.int().tolist()
            assert int(mask.sum()) == (x2 - x1) * (y2 - y1)
            assert mask[y1:y2, x1:x2].all()
            assert (img[y1:y2, x1:x2] != background_level(i)).all()


def test_oracle_reads_ids_from_the_fake_loader(tmp_path):
    ds = make_tiny_coco(str(tmp_path), seed=1)
    model = OracleModel(ds.gt).eval()
    seen = []
    with torch.no_grad():
        for batch in fake_loader(ds, ds.image_ids, 2):
            for info, det in zip(batch.infos, model(batch.images)):
                assert torch.equal(det.boxes, ds.gt[info.image_id].boxes)
                seen.append(info.image_id)
    assert seen == ds.image_ids
    assert shard(list(range(5)), 0, 2) + shard(list(range(5)), 1, 2) == list(range(5))
