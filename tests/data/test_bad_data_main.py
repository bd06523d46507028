"""Bad data end to end: the catalogue of damaged inputs through the train loader, a training run
through main.py on damaged data (skips counted in metrics.jsonl), and the one-line errors main.py
gives for data it cannot use.

Unit tests of the parser and the decoder are in test_annotations.py / test_image_io.py;
these go through the loader and the command line.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

from tests.reliability import catalogue as faults


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def test_bad_input_catalogue_is_handled(tmp_path):
    """Every case of tests/reliability/catalogue.py (image formats and orientation, unreadable
    files, each kind of malformed record, unusable files) loads correctly with the boxes on the
    objects, is skipped and counted, or fails with our error naming the file, image and
    annotation - with data.on_bad_* = fail and = skip."""
    results = faults.bad_input_catalogue(str(tmp_path))
    assert len(results) >= 50
    bad = [(name, mode, outcome) for name, rows in results for mode, outcome, ok in rows if not ok]
    assert not bad, "\n".join(map(str, bad))


def _main(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*args],
        cwd=faults.REPO,
        env=faults.child_env(torch.get_num_threads()),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _damaged_dataset(folder: str) -> tuple[str, str]:
    """6 images: 16-bit PNG, EXIF-rotated JPEG, RGBA PNG, a clean PNG, a missing file and a
    corrupt file; plus two malformed annotations (unknown category, NaN polygon)."""
    img_dir, ann_file, d = faults.write_coco(folder, n=6)
    faults._reformat(img_dir, d, 0, faults._to_16bit)
    faults._exif_rotated(img_dir, d, 1)
    faults._reformat(img_dir, d, 2, lambda im: (im.putalpha(90), im)[1])
    os.remove(os.path.join(img_dir, d["images"][4]["file_name"]))
    with open(os.path.join(img_dir, d["images"][5]["file_name"]), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n garbage")
    d["annotations"] += [
        {
            "id": 900,
            "image_id": 2,
            "category_id": 42,
            "iscrowd": 0,
            "bbox": [1, 1, 9, 9],
            "segmentation": [[1, 1, 10, 1, 10, 10]],
        },
        {
            "id": 901,
            "image_id": 3,
            "category_id": 1,
            "iscrowd": 0,
            "bbox": [1, 1, 9, 9],
            "segmentation": [[1, 1, float("nan"), 1, 10, 10]],
        },
    ]
    with open(ann_file, "w") as f:
        json.dump(d, f)
    return img_dir, ann_file


def _config(root: str, img_dir: str, ann_file: str, max_iter: int = 2, **data):
    c = faults.tiny_config(root, max_iter)
    c.data.train.img_dir, c.data.train.ann_file = img_dir, ann_file
    c.deterministic = False  # spares the import torch.use_deterministic_algorithms costs
    for k, v in data.items():
        c.data[k] = v
    return c


def test_training_on_damaged_data_finishes_and_logs_the_skips(root, tmp_path, caplog):
    img_dir, ann_file = _damaged_dataset(str(tmp_path / "ds"))
    w = str(tmp_path / "w")
    # 3 steps of 2 images = one epoch of the 6 images: both bad files are met.
    c = _config(root, img_dir, ann_file, 3, on_bad_image="skip", on_bad_annotation="skip")
    assert faults.run_in_process("train", c, w) is None
    lines = [json.loads(x) for x in open(os.path.join(w, "metrics.jsonl"))]
    counts = [x for x in lines if "data/bad_image" in x]
    assert counts, lines
    # Each of the two bad files is met once; a failed read is replaced by the next image of its
    # group, which can be the other bad one (read attempts are counted, hence >= 2).
    assert counts[-1]["data/bad_image"] >= 2
    assert counts[-1]["data/bad_annotation"] == 2
    assert lines[-1]["iter"] == 3
    log = open(os.path.join(w, "log.txt")).read()
    assert "skipping unusable training image" in log and "004.png" in log and "005.png" in log
    assert "annotation 900" in log and "annotation 901" in log  # the skipped records, named


def _write(ann_file, d):
    with open(ann_file, "w") as f:
        json.dump(d, f)


def _break_json(ann_file, d, img_dir):
    with open(ann_file, "w") as f:
        f.write(json.dumps(d)[:-40])


def _unknown_category(ann_file, d, img_dir):
    d["annotations"][1]["category_id"] = 99
    _write(ann_file, d)


def _missing_image(ann_file, d, img_dir):
    _write(ann_file, d)
    os.remove(os.path.join(img_dir, d["images"][1]["file_name"]))


def _clean(ann_file, d, img_dir):
    _write(ann_file, d)


@pytest.mark.parametrize(
    "damage,data,model,needles",
    [
        (_break_json, {}, {}, ["AnnotationError", "ann.json: not valid JSON"]),
        (_unknown_category, {}, {}, ["ann.json: image 2, annotation 101: category_id 99"]),
        (_missing_image, {"on_bad_image": "fail"}, {}, ["ImageError", "images/001.png"]),
        # The model's outputs do not fit the data's categories (fewer or more): a config error.
        (
            _clean,
            {},
            {"num_classes": 3},
            ["CategoryTableError", "config.model.num_classes=3", "num_classes=4"],
        ),
        (
            _clean,
            {},
            {"num_classes": 5},
            ["CategoryTableError", "config.model.num_classes=5", "num_classes=4"],
        ),
    ],
)
def test_unusable_data_is_a_user_error_naming_the_record(
    root, tmp_path, damage, data, model, needles
):
    img_dir, ann_file, d = faults.write_coco(str(tmp_path / "ds"), n=4)
    damage(ann_file, d, img_dir)
    c = _config(root, img_dir, ann_file, **data)
    for k, v in model.items():
        c.model[k] = v
    msg = faults.run_in_process("train", c, str(tmp_path / "w"))
    assert msg is not None
    for n in needles:
        assert n in msg, msg


def test_main_prints_a_data_error_in_one_line_and_exits_2(root, tmp_path):
    img_dir, ann_file, d = faults.write_coco(str(tmp_path / "ds"), n=4)
    _unknown_category(ann_file, d, img_dir)
    r = _main(
        *faults.main_argv(root, str(tmp_path / "w"), 2),
        f"--config.data.train.img_dir={img_dir}",
        f"--config.data.train.ann_file={ann_file}",
        "--config.deterministic=False",
    )
    out = r.stdout + r.stderr
    assert r.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [x for x in out.splitlines() if " ERROR mrcnn: " in x]
    assert len(errors) == 1, out[-3000:]
    assert "AnnotationError" in errors[0] and "image 2, annotation 101" in errors[0]
    assert str(tmp_path / "ds" / "ann.json") in errors[0]
