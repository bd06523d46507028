"""mrcnn/fileio.py: atomic writes leave the old file or the new one, never half of one, and no
temporary file; the result gets the permissions open() would give it."""

from __future__ import annotations

import json
import os
import stat

import pytest

from mrcnn.fileio import atomic_write, write_json_atomic, write_text_atomic


def test_atomic_write_replaces_whole_files_and_cleans_up(tmp_path):
    path = str(tmp_path / "sub" / "x.json")
    write_json_atomic(path, {"a": 1})
    write_text_atomic(str(tmp_path / "t.txt"), "hello")
    with open(path) as f:
        assert json.load(f) == {"a": 1}

    def broken(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    with open(path) as f:
        assert json.load(f) == {"a": 1}  # the old file, whole
    assert sorted(os.listdir(tmp_path / "sub")) == ["x.json"]  # no temporary left


def test_atomic_write_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = str(tmp_path / "r.json")
        write_json_atomic(path, [])
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    finally:
        os.umask(old)
