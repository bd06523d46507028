"""launch/download_coco.sh on fake archives served from a local folder: verify, extract, skip,
fail loudly on a bad checksum or a corrupt archive."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import zipfile

import ml_collections
import pytest

from mrcnn.data import catalog

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "launch", "download_coco.sh")


def _zip(path: str, files: dict[str, bytes]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def _md5(path: str) -> str:
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def _fake_mirror(tmp_path, year: str) -> dict[str, str]:
    """BASE/zips/{train,val}YEAR.zip and BASE/annotations/annotations_trainvalYEAR.zip."""
    base = tmp_path / "mirror"
    ann = json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]})
    paths = {
        f"train{year}.zip": _zip(
            str(base / "zips" / f"train{year}.zip"), {f"train{year}/a.jpg": b"train-image"}
        ),
        f"val{year}.zip": _zip(
            str(base / "zips" / f"val{year}.zip"), {f"val{year}/b.jpg": b"val-image"}
        ),
        f"annotations_trainval{year}.zip": _zip(
            str(base / "annotations" / f"annotations_trainval{year}.zip"),
            {
                f"annotations/instances_train{year}.json": ann.encode(),
                f"annotations/instances_val{year}.json": ann.encode(),
            },
        ),
    }
    return paths


def _run(dest, env_extra, *args):
    env = dict(os.environ, **env_extra)
    return subprocess.run(
        ["bash", SCRIPT, *args, str(dest)], env=env, capture_output=True, text=True, timeout=120
    )


def _table(tmp_path, paths, override=None) -> str:
    lines = []
    for name, p in paths.items():
        lines.append(f"{(override or {}).get(name, _md5(p))}  {name}")
    f = tmp_path / "md5.txt"
    f.write_text("\n".join(lines) + "\n")
    return str(f)


@pytest.mark.parametrize("url_style", ["file", "path"])
def test_download_extracts_into_catalog_layout_and_is_idempotent(tmp_path, url_style):
    paths = _fake_mirror(tmp_path, "2017")
    base = str(tmp_path / "mirror")
    env = {
        "MRCNN_COCO_URL": ("file://" + base) if url_style == "file" else base,
        "MRCNN_COCO_MD5": _table(tmp_path, paths),
    }
    dest = tmp_path / "data"
    r = _run(dest / "coco", env, "--only", "2017")
    assert r.returncode == 0, r.stderr
    coco = dest / "coco"
    assert (coco / "train2017" / "a.jpg").read_bytes() == b"train-image"
    assert (coco / "val2017" / "b.jpg").read_bytes() == b"val-image"
    assert (coco / "annotations" / "instances_val2017.json").is_file()
    assert not (coco / "train2014").exists()  # --only 2017

    # The catalog finds what the script wrote.
    config = ml_collections.ConfigDict({"data": {"root": str(dest)}})
    for name in ("coco_2017_train", "coco_2017_val", "coco_2014_minival"):
        img_dir, ann_file = catalog.require_dataset(config, {"name": name})
        assert os.path.isdir(img_dir) and os.path.isfile(ann_file)

    # Second run: nothing fetched (the mirror is gone), everything skipped.
    for p in paths.values():
        os.remove(p)
    r = _run(coco, env, "--only", "2017")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("already extracted") == 3


def test_bad_checksum_fails_loudly_and_removes_the_archive(tmp_path):
    paths = _fake_mirror(tmp_path, "2017")
    env = {
        "MRCNN_COCO_URL": str(tmp_path / "mirror"),
        "MRCNN_COCO_MD5": _table(tmp_path, paths, {"val2017.zip": "0" * 32}),
    }
    dest = tmp_path / "data"
    r = _run(dest, env, "--only", "2017")
    assert r.returncode != 0
    assert "CHECKSUM MISMATCH for val2017.zip" in r.stderr
    assert not (dest / "downloads" / "val2017.zip").exists()
    assert not (dest / "val2017").exists()


def test_corrupted_archive_fails_its_checksum(tmp_path):
    paths = _fake_mirror(tmp_path, "2014")
    env = {"MRCNN_COCO_URL": str(tmp_path / "mirror"), "MRCNN_COCO_MD5": _table(tmp_path, paths)}
    # Flip bytes in the middle after the table was made: what a broken transfer looks like.
    p = paths["train2014.zip"]
    data = bytearray(open(p, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(p, "wb").write(bytes(data))
    r = _run(tmp_path / "data", env, "--only", "2014")
    assert r.returncode != 0
    assert "CHECKSUM MISMATCH for train2014.zip" in r.stderr


def test_without_a_known_md5_the_zip_is_tested_with_unzip(tmp_path):
    paths = _fake_mirror(tmp_path, "2014")
    no_md5 = {name: "-" for name in paths}
    env = {
        "MRCNN_COCO_URL": str(tmp_path / "mirror"),
        "MRCNN_COCO_MD5": _table(tmp_path, paths, no_md5),
    }
    r = _run(tmp_path / "good", env, "--only", "2014")
    assert r.returncode == 0, r.stderr
    assert "unzip -t" in r.stdout
    assert (tmp_path / "good" / "train2014" / "a.jpg").is_file()

    p = paths["val2014.zip"]
    open(p, "wb").write(open(p, "rb").read()[:-30])  # truncated: the central directory is gone
    r = _run(tmp_path / "bad", env, "--only", "2014")
    assert r.returncode != 0
    assert "CORRUPT ARCHIVE val2014.zip" in r.stderr


def test_official_checksums_are_pinned():
    text = open(SCRIPT).read()
    for md5, name in [
        ("0da8c0bd3d6becc4dcb32757491aca88", "train2014.zip"),
        ("a3d79f5ed8d289b7a7554ce06a5782b3", "val2014.zip"),
        ("0a379cfc70b0e71301e0f377548639bd", "annotations_trainval2014.zip"),
        ("cced6f7f71b7629ddf16f17bbcfab6b2", "train2017.zip"),
        ("442b8da7639aecaf257c1dceb8ba8c80", "val2017.zip"),
        ("f4bbac642086de4f52a3fdda2de5fa2c", "annotations_trainval2017.zip"),
    ]:
        assert f"{md5}  {name}" in text


def test_rejects_unknown_options(tmp_path):
    r = _run(tmp_path, {}, "--only", "2019")
    assert r.returncode == 2
    assert "--only takes 2014 or 2017" in r.stderr


def test_default_destination_is_the_data_root_coco_folder(tmp_path):
    paths = _fake_mirror(tmp_path, "2017")
    env = dict(
        os.environ,
        MRCNN_COCO_URL=str(tmp_path / "mirror"),
        MRCNN_COCO_MD5=_table(tmp_path, paths),
        MRCNN_DATA=str(tmp_path / "root"),
    )
    r = subprocess.run(
        ["bash", SCRIPT, "--only=2017", "--delete-zips"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    coco = tmp_path / "root" / "coco"
    assert (coco / "val2017" / "b.jpg").is_file()
    assert not (coco / "downloads" / "val2017.zip").exists()  # --delete-zips
    assert f"MRCNN_DATA={tmp_path / 'root'}" in r.stdout
