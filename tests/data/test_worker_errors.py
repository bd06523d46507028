"""Bad-input errors raised inside DataLoader worker processes reach the caller as themselves:
the project's own class, one line, the file named (the R-50 configs load with 4 workers)."""

from __future__ import annotations

import os
import pickle
import shutil

import ml_collections
import pytest

from mrcnn import data
from mrcnn.data.meta import CategoryTableError


@pytest.mark.parametrize(
    "error",
    [
        data.ImageError("/d/a.jpg", "truncated (image id 3)"),
        data.AnnotationError("/d/a.json: image 1, annotation 2: bad"),
        data.DatasetMissingError("dataset x: annotation file not found: /d/a.json"),
        CategoryTableError("model_1.pth: not a category table"),
    ],
)
def test_the_errors_pickle_to_the_same_class_and_message(error):
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error) and str(back) == str(error)
    if isinstance(error, data.ImageError):
        assert back.path == error.path and back.why == error.why


def _copy(small_config, shapes_root, dest) -> ml_collections.ConfigDict:
    c = small_config(shapes_root)
    train, val = data.ensure_shapes_dataset(c)
    src = os.path.dirname(os.path.dirname(train.ann_file))
    shutil.copytree(src, dest)
    c = small_config(shapes_root, **{"data.num_workers": 2})
    for split, cfg in (("train", train), ("val", val)):
        rel = lambda p: os.path.join(dest, os.path.relpath(p, src))  # noqa: E731
        c.data[split] = ml_collections.ConfigDict(
            {"name": "", "img_dir": rel(cfg.img_dir), "ann_file": rel(cfg.ann_file)}
        )
    return c


def test_twenty_unreadable_images_in_a_row_reach_the_caller_from_workers(
    small_config, shapes_root, tmp_path
):
    c = _copy(small_config, shapes_root, tmp_path / "d")
    for name in os.listdir(c.data.train.img_dir):
        os.remove(os.path.join(c.data.train.img_dir, name))
    loader = data.build_train_loader(c)
    with pytest.raises(data.ImageError) as e:
        next(loader)
    msg = str(e.value)
    assert type(e.value) is data.ImageError and "\n" not in msg
    assert "20 training images in a row could not be read" in msg
    assert c.data.train.img_dir in msg and ".jpg" in msg
    loader.close()


def test_on_bad_image_fail_reaches_the_caller_from_workers(small_config, shapes_root, tmp_path):
    c = _copy(small_config, shapes_root, tmp_path / "d")
    c.data.on_bad_image = "fail"
    victim = os.path.join(c.data.train.img_dir, "000003.jpg")
    with open(victim, "wb") as f:
        f.write(b"not a jpeg")
    loader = data.build_train_loader(c)
    with pytest.raises(data.ImageError) as e:
        for _ in range(12):  # 3 epochs of 16 images: 000003.jpg comes up
            next(loader)
    assert type(e.value) is data.ImageError and "\n" not in str(e.value)
    assert e.value.path == victim and "(image id 4)" in str(e.value)
    loader.close()

    os.remove(os.path.join(c.data.val.img_dir, "000001.jpg"))
    ld, _ = data.build_test_loader(c)
    with pytest.raises(data.ImageError, match=r"000001\.jpg.*\(image id 2\)$"):
        list(ld)
