"""Security: no code runs from a file the user did not write as code.

- every torch.load in the repository passes weights_only=True; nothing unpickles or evals
  outside the one in-memory buffer that is pickled by us (mrcnn/data/serialize.py);
- an annotation json is data: strings that look like code stay strings;
- a checkpoint or weights file holding pickled code is refused by checkpoint.load,
  checkpoint.load_latest (resume), weights.load_weights (init.weights) and main.py, and the
  code never runs.
- predict refusing symlinks that leave the input folder or glob is tested in
  tests/test_predict.py::test_predict_refuses_symlinks_out_of_the_glob_or_folder.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import subprocess

import pytest
import torch

from tests.reliability import catalogue as faults
from mrcnn import weights
from mrcnn.engine import checkpoint
from mrcnn.data import annotations as A

SKIP_DIRS = {".venv", "build", ".git", "__pycache__", "runs", "datasets", "node_modules"}
# The only places that may unpickle: the data buffer of records it pickled itself, and tests
# that check our error classes survive the round trip a DataLoader worker's error takes.
PICKLE_ALLOWED = {
    os.path.join("mrcnn", "data", "serialize.py"),
    os.path.join("tests", "data", "test_categories.py"),
    os.path.join("tests", "data", "test_worker_errors.py"),
}


def _python_files() -> list[str]:
    out = []
    for d, dirs, files in os.walk(faults.REPO):
        dirs[:] = [x for x in dirs if x not in SKIP_DIRS and not x.startswith(".")]
        out += [os.path.join(d, f) for f in files if f.endswith(".py")]
    return sorted(out)


def _call_name(node: ast.Call) -> str:
    parts, f = [], node.func
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    parts.append(f.id if isinstance(f, ast.Name) else "<expr>")  # x().eval() is not eval()
    return ".".join(reversed(parts))


def _unsafe_calls(path: str) -> list[str]:
    rel = os.path.relpath(path, faults.REPO)
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node)
        where = f"{rel}:{node.lineno}: {name}("
        if name in ("torch.load", "torch.serialization.load") or name.endswith(".torch.load"):
            kw = {k.arg: k.value for k in node.keywords}
            ok = (
                isinstance(kw.get("weights_only"), ast.Constant)
                and kw["weights_only"].value is True
            )
            if not ok:
                found.append(where + " without weights_only=True")
        elif name in (
            "pickle.load",
            "pickle.loads",
            "pickle.Unpickler",
            "dill.load",
            "dill.loads",
            "cloudpickle.load",
            "cloudpickle.loads",
        ):
            if rel not in PICKLE_ALLOWED:
                found.append(where + " unpickles")
        elif name in ("eval", "exec", "yaml.load", "yaml.unsafe_load", "marshal.loads"):
            found.append(where + " evaluates")
        elif name in ("np.load", "numpy.load"):
            kw = {k.arg: k.value for k in node.keywords}
            if isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value:
                found.append(where + " allow_pickle=True")
    return found


def test_the_scanner_finds_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import torch, pickle, numpy as np\n"
        # Spelt in two pieces so that this file itself holds no unsafe load for other scanners.
        "torch.lo" "ad(p)\n"
        "torch.lo" "ad(p, map_location='cpu',\n    weights_only=False)\n"
        "torch.lo" "ad(p, weights_only=True)\n"
        "pickle.loads(b)\n"
        "eval('1')\n"
        "np.load(p, allow_pickle=True)\n"
        "model.eval()\n"
        "build(cfg).eval()\n"
    )
    found = _unsafe_calls(str(bad))
    assert [f.split(": ", 1)[1] for f in found] == [
        "torch.load( without weights_only=True",
        "torch.load( without weights_only=True",
        "pickle.loads( unpickles",
        "eval( evaluates",
        "np.load( allow_pickle=True",
    ]


def test_no_torch_load_without_weights_only_and_no_unpickling_or_eval():
    files = _python_files()
    assert any(f.endswith(os.path.join("mrcnn", "engine", "checkpoint.py")) for f in files)
    found = [x for f in files for x in _unsafe_calls(f)]
    assert not found, "\n".join(found)


SENTINEL = "pwned_marker"


def test_annotation_strings_that_look_like_code_stay_strings(tmp_path):
    marker = tmp_path / SENTINEL
    payloads = [
        f"__import__('os').system('touch {marker}')",
        f"$(touch {marker})",
        f"`touch {marker}`",
        "{{ config.__class__.__init__.__globals__ }}",
        "${jndi:ldap://example.com/a}",
        f"!!python/object/apply:os.system ['touch {marker}']",
        "%(asctime)s %s %d {0}",
    ]
    d = {
        "info": {"description": payloads[0]},
        "images": [{"id": 1, "file_name": payloads[1] + ".png", "height": 20, "width": 20}],
        "categories": [{"id": i + 1, "name": p} for i, p in enumerate(payloads)],
        "annotations": [
            {
                "id": 5,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "bbox": [1, 1, 5, 5],
                "segmentation": [[1, 1, 6, 1, 6, 6]],
                "__class__": payloads[0],
                "__reduce__": [payloads[2]],
                "attributes": {"$eval": "1"},
            }
        ],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(d))
    parsed = A.parse_coco_json(str(path))
    assert [n for _, n in parsed.categories] == payloads
    assert parsed.records[0].file_name == payloads[1] + ".png"
    assert len(parsed.records[0]) == 1
    # A record whose category is the code string is reported with the string quoted, unrun.
    d["annotations"][0]["category_id"] = payloads[0]
    path.write_text(json.dumps(d))
    with pytest.raises(A.AnnotationError, match="is not in 'categories'"):
        A.parse_coco_json(str(path))
    assert not marker.exists()


class _Payload:
    """Unpickling runs `touch <path>`."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _evil_file(path, marker) -> None:
    torch.save({"model": {"w": _Payload(marker)}, "iteration": 2}, str(path))
    with open(path, "rb") as f:  # it is a real payload: plain pickle would run it
        assert b"system" in f.read()


def test_pickled_code_is_refused_everywhere_and_never_runs(tmp_path):
    marker = tmp_path / SENTINEL
    evil = tmp_path / "evil.pth"
    _evil_file(evil, marker)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        checkpoint.load(str(evil))
    with pytest.raises(weights.WeightsError, match="Weights only load failed"):
        weights.load_weights(torch.nn.Linear(2, 2), str(evil))

    # Resume: an evil newest checkpoint is skipped for the good one before it ...
    w = tmp_path / "w"
    checkpoint.save(str(w), {"model": {"w": torch.ones(2)}, "iteration": 1}, 1)
    checkpoint.save(str(w), {"model": {"w": torch.ones(2)}, "iteration": 2}, 2)
    _evil_file(w / checkpoint.checkpoint_name(2), marker)
    state, path = checkpoint.load_latest(str(w))
    assert state["iteration"] == 1
    # ... and when it is the only one, the run stops instead of starting over.
    os.remove(w / checkpoint.checkpoint_name(1))
    with pytest.raises(checkpoint.CheckpointError, match="UnpicklingError"):
        checkpoint.load_latest(str(w))
    assert not marker.exists()


def test_main_refuses_pickled_init_weights_in_one_line(tmp_path):
    marker = tmp_path / SENTINEL
    evil = tmp_path / "evil.pth"
    _evil_file(evil, marker)
    root = str(tmp_path / "data")
    r = subprocess.run(
        [
            *faults.main_argv(root, str(tmp_path / "w"), 2),
            f"--config.init.weights={evil}",
            "--config.deterministic=False",
        ],
        cwd=faults.REPO,
        env=faults.child_env(torch.get_num_threads()),
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 2 and "Traceback" not in out, out[-3000:]
    assert "WeightsError" in out and str(evil) in out and "Weights only load failed" in out
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../secret.jpg", "/etc/passwd", "a/../../b.jpg", "..\\x.jpg"])
def test_annotation_file_name_cannot_leave_the_image_folder(name):
    from mrcnn.data import annotations

    with pytest.raises(Exception, match="leaves the image folder"):
        annotations._check_image({"id": 7, "file_name": name, "height": 4, "width": 4})
    assert annotations._check_image({"id": 7, "file_name": "sub/ok.jpg", "height": 4, "width": 4})
