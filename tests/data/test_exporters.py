"""Datasets as real tools write them, each loading correctly or failing in one line that names
the file, image id and annotation id: labelme's labelme2coco, CVAT's COCO 1.0 export,
Roboflow's COCO export, and hand edits (trailing commas, duplicated ids, wrong sizes).

The layouts follow what those tools emit: labelme2coco numbers images and annotations from 0,
writes category 0 `_background_` (from its labels.txt), `supercategory: null`, `file_name`
under JPEGImages/ and `"type": "instances"`; CVAT adds empty license/url fields, `attributes`
per annotation and writes rectangles as `"segmentation": []` with area w x h; Roboflow puts a
group category id 0 (`supercategory: "none"`) above the classes, numbers from 0 and adds keys.
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from configs import shapes as shapes_config
from mrcnn import data
from mrcnn.data import annotations as A
from mrcnn.data.coco import CocoTestDataset, CocoTrainDataset

H, W = 48, 64


def _input_cfg() -> ml_collections.ConfigDict:
    c = shapes_config.get_config().input
    c.min_size_train, c.max_size_train = (48,), 100
    c.min_size_test, c.max_size_test = 48, 100
    return c


def _save_images(root, d: dict) -> None:
    rng = np.random.default_rng(0)
    for img in d["images"]:
        path = os.path.join(root, img["file_name"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pixels = rng.integers(0, 256, (img["height"], img["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)


def _write(root, d: dict, name: str = "annotations.json", text: str | None = None) -> str:
    path = os.path.join(root, name)
    with open(path, "w") as f:
        f.write(text if text is not None else json.dumps(d, indent=2))
    return path


def _labelme() -> dict:
    return {
        "info": {"description": None, "url": None, "version": None, "year": 2024,
                 "contributor": None, "date_created": "2024-01-02 10:00:00.000000"},
        "licenses": [{"url": None, "id": 0, "name": None}],
        "images": [
            {"license": 0, "url": None, "file_name": f"JPEGImages/img{i}.jpg", "height": H,
             "width": W, "date_captured": None, "id": i}
            for i in range(2)
        ],
        "type": "instances",
        "annotations": [
            {"id": 0, "image_id": 0, "category_id": 1, "iscrowd": 0, "area": 200.0,
             "bbox": [4.0, 5.0, 20.0, 10.0],
             "segmentation": [[4.0, 5.0, 24.0, 5.0, 24.0, 15.0, 4.0, 15.0]]},
            {"id": 1, "image_id": 1, "category_id": 2, "iscrowd": 0, "area": 150.0,
             "bbox": [30.0, 20.0, 15.0, 20.0],
             "segmentation": [[30.0, 20.0, 45.0, 20.0, 45.0, 40.0],
                              [30.0, 20.0, 45.0, 40.0, 30.0, 40.0]]},
        ],
        "categories": [
            {"supercategory": None, "id": 0, "name": "_background_"},
            {"supercategory": None, "id": 1, "name": "cat"},
            {"supercategory": None, "id": 2, "name": "dog"},
        ],
    }


def test_labelme2coco_loads_with_sub_folders_and_without_its_background_class(tmp_path):
    d = _labelme()
    _save_images(tmp_path, d)
    path = _write(tmp_path, d)
    ds = CocoTrainDataset(str(tmp_path), path, _input_cfg())
    assert ds.meta.category_ids == (1, 2) and ds.meta.names == ("cat", "dog")
    assert len(ds) == 2 and ds.num_instances == 2
    sample = ds[(0, 0)]  # image id 0, read from JPEGImages/
    assert sample["info"].file_name == "JPEGImages/img0.jpg"
    assert sample["target"].labels.tolist() == [1]
    gt = data.coco_gt(CocoTestDataset(str(tmp_path), path, _input_cfg()))
    assert [a["id"] for a in gt["annotations"]] == [0, 1]
    assert [c["id"] for c in gt["categories"]] == [1, 2]


def _cvat() -> dict:
    return {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": {"contributor": "", "date_created": "", "description": "", "url": "",
                 "version": "", "year": ""},
        "categories": [{"id": 1, "name": "car", "supercategory": ""},
                       {"id": 2, "name": "person", "supercategory": ""}],
        "images": [
            {"id": i, "width": W, "height": H, "file_name": f"frame_{i:06d}.png", "license": 0,
             "flickr_url": "", "coco_url": "", "date_captured": 0}
            for i in (1, 2)
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1,
             "segmentation": [[2.5, 3.5, 30.0, 3.5, 30.0, 20.0, 2.5, 20.0]], "area": 453.75,
             "bbox": [2.5, 3.5, 27.5, 16.5], "iscrowd": 0,
             "attributes": {"occluded": False}},
            {"id": 2, "image_id": 1, "category_id": 2, "segmentation": [], "area": 200.0,
             "bbox": [35.0, 10.0, 10.0, 20.0], "iscrowd": 0,
             "attributes": {"occluded": True, "rotation": 0.0}},
            {"id": 3, "image_id": 2, "category_id": 2, "segmentation": [], "area": 120.0,
             "bbox": [5.0, 5.0, 12.0, 10.0], "iscrowd": 0, "attributes": {"occluded": False}},
        ],
    }


def test_cvat_coco_export_with_box_only_objects(tmp_path):
    d = _cvat()
    _save_images(tmp_path, d)
    path = _write(tmp_path, d, "instances_default.json")
    ds = CocoTrainDataset(str(tmp_path), path, _input_cfg())
    # Mask training: the rectangles have no mask; they are dropped and counted, and image 2
    # (only a rectangle) has nothing left.
    assert ds.bad_counts["box_only"] == 2 and ds.bad_counts["empty_image"] == 1
    assert len(ds) == 1 and ds.num_instances == 1
    boxes_only = CocoTrainDataset(str(tmp_path), path, _input_cfg(), with_masks=False)
    assert boxes_only.num_instances == 3  # detection training keeps them all
    test = CocoTestDataset(str(tmp_path), path, _input_cfg())
    bbox_gt = data.coco_gt(test, "bbox")
    assert {a["id"]: a["iscrowd"] for a in bbox_gt["annotations"]} == {1: 0, 2: 0, 3: 0}
    segm_gt = data.coco_gt(test, "segm")
    assert {a["id"]: a["iscrowd"] for a in segm_gt["annotations"]} == {1: 0, 2: 1, 3: 1}
    coco = data.coco_api(segm_gt)
    assert len(coco.getAnnIds()) == 3
    assert all("attributes" not in a for a in coco.dataset["annotations"])


def _roboflow() -> dict:
    return {
        "info": {"year": "2024", "version": "3", "description": "Exported from roboflow.com",
                 "contributor": "", "url": "https://public.roboflow.com", "date_created": "x"},
        "licenses": [{"id": 1, "url": "https://creativecommons.org/licenses/by/4.0/",
                      "name": "CC BY 4.0"}],
        "categories": [
            {"id": 0, "name": "cells", "supercategory": "none"},
            {"id": 1, "name": "platelets", "supercategory": "cells"},
            {"id": 2, "name": "rbc", "supercategory": "cells"},
        ],
        "images": [
            {"id": 0, "license": 1, "file_name": "a_jpg.rf.0f3c.jpg", "height": H, "width": W,
             "date_captured": "2024-01-01T00:00:00+00:00", "extra": {"name": "a.jpg"}},
        ],
        "annotations": [
            {"id": 0, "image_id": 0, "category_id": 2, "bbox": [3, 4, 20, 15],
             "segmentation": [[3, 4, 23, 4, 23, 19, 3, 19]]},
            {"id": 1, "image_id": 0, "category_id": 1, "bbox": [30, 10, 8, 8],
             "segmentation": [[30, 10, 38, 10, 38, 18]], "extra": {}},
        ],
    }


def test_roboflow_export_without_iscrowd_or_area_and_a_group_category(tmp_path):
    d = _roboflow()
    _save_images(tmp_path, d)
    path = _write(tmp_path, d, "_annotations.coco.json")
    ds = CocoTrainDataset(str(tmp_path), path, _input_cfg())
    assert ds.meta.category_ids == (1, 2) and ds.meta.num_classes == 3
    assert sorted(ds[(0, 0)]["target"].labels.tolist()) == [1, 2]
    gt = data.coco_gt(CocoTestDataset(str(tmp_path), path, _input_cfg()))
    by_id = {a["id"]: a for a in gt["annotations"]}
    # The masks' pixel counts as pycocotools rasterizes them (COCO's definition of area).
    for a in d["annotations"]:
        pixels = mask_util.area(mask_util.frPyObjects(a["segmentation"], H, W)).sum()
        assert by_id[a["id"]]["area"] == float(pixels)
    assert by_id[0]["area"] == 300.0
    assert by_id[0]["iscrowd"] == 0 and by_id[1]["iscrowd"] == 0
    data.coco_api(gt)  # pycocotools indexes it


def test_a_trailing_comma_is_one_line_naming_file_line_and_column(tmp_path):
    text = json.dumps(_cvat(), indent=2)
    key = '"iscrowd": 0,\n      "attributes"'
    text = text.replace(key, key.replace(",", ",,", 1), 1)
    text = text.replace("\n  ]\n}", ",\n  ]\n}")  # and one after the last category
    path = _write(tmp_path, None, "edited.json", text)
    with pytest.raises(A.AnnotationError) as e:
        A.parse_coco_json(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: not valid JSON:") and "\n" not in msg
    line = text[: text.index(",,")].count("\n") + 1
    assert f"line {line} column" in msg


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda d: d["images"].append(dict(d["images"][0])), "image 1: image id 1 appears twice"),
        (
            lambda d: d["annotations"].append(dict(d["annotations"][0], image_id=2)),
            "image 2, annotation 1: annotation id 1 appears twice",
        ),
    ],
)
def test_duplicate_ids_are_named(tmp_path, edit, needle):
    d = _cvat()
    edit(d)
    path = _write(tmp_path, d)
    with pytest.raises(A.AnnotationError, match=needle):
        A.parse_coco_json(path)
    skipped = A.parse_coco_json(path, on_bad="skip")
    assert sum(skipped.counts.values()) >= 1


def test_width_and_height_that_disagree_with_the_file_are_a_bad_image(tmp_path):
    """Chosen behaviour: the image is reported (file and image id named) and skipped and
    counted, or an error under on_bad_image=fail; it is never silently resized, since the boxes
    were drawn on pixels of another size. An EXIF rotation that explains it is accepted."""
    d = _labelme()
    _save_images(tmp_path, d)
    d["images"][1]["height"], d["images"][1]["width"] = H + 10, W
    path = _write(tmp_path, d)
    ds = CocoTrainDataset(str(tmp_path), path, _input_cfg(), on_bad_image="fail")
    with pytest.raises(data.ImageError) as e:
        ds[(1, 0)]
    msg = str(e.value)
    assert "img1.jpg" in msg and "(image id 1)" in msg and "does not match" in msg
    assert "\n" not in msg
    ds = CocoTrainDataset(str(tmp_path), path, _input_cfg(), on_bad_image="skip")
    sample = ds[(1, 0)]
    assert sample["info"].image_id == 0 and len(sample["skipped"]) == 1


def test_windows_sub_folders_are_read_and_escapes_refused(tmp_path):
    d = _labelme()
    _save_images(tmp_path, d)
    d["images"][0]["file_name"] = "JPEGImages\\img0.jpg"  # labelme2coco run on Windows
    ds = CocoTrainDataset(str(tmp_path), _write(tmp_path, d), _input_cfg())
    assert ds[(0, 0)]["info"].file_name == "JPEGImages/img0.jpg"
    for bad in ("..\\secret.jpg", "\\etc\\x.jpg", "C:\\data\\x.jpg", "/etc/x.jpg", "a/../../x.jpg"):
        d["images"][0]["file_name"] = bad
        with pytest.raises(A.AnnotationError, match="leaves the image folder"):
            A.parse_coco_json(_write(tmp_path, d))
