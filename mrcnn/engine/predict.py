"""`--mode=predict`: detections for an image file, a folder or a glob, as COCO results + PNGs.

Writes into the workdir:
- `predictions.json`: a list of COCO results records {"file_name", "image_id" (index of the file
  in the sorted input list), "category_id", "bbox" [x, y, w, h], "score", "segmentation" (RLE,
  counts as str)}, only detections scoring >= `predict.score_thresh`;
- `predictions/<stem>.png` per image when `predict.draw` (a second file with the same stem gets
  `<stem>_<image_id>.png`).
An unreadable file is reported by name and skipped; the others still complete.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import logging
import os
import time
from typing import Any

import ml_collections
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mrcnn import dist
from mrcnn.data import collate_images, load_preprocessed
from mrcnn.data.loaders import ignore_stop_signals
from mrcnn.build import build
from mrcnn.coco import detection_records
from mrcnn.engine.evaluate import label_names
from mrcnn.engine.inference import InferenceStats, run_inference
from mrcnn.fileio import atomic_write, write_json_atomic
from mrcnn.structures import Batch, Detections, ImageInfo
from mrcnn.visualize import draw_detections

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


@dataclasses.dataclass
class InputFiles:
    """What `predict.input` names. paths: images to run, sorted. ignored: entries without an image
    extension (folder / glob only). refused: entries that resolve outside the folder / glob root."""

    paths: list[str]
    ignored: list[str] = dataclasses.field(default_factory=list)
    refused: list[str] = dataclasses.field(default_factory=list)


def _glob_root(pattern: str) -> str:
    """The literal folder a glob starts from: its leading components without wildcards."""
    parts = pattern.split(os.sep)
    literal = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        literal.append(part)
    root = os.sep.join(literal)
    if not root:
        return os.sep if pattern.startswith(os.sep) else "."
    return root


def _inside(path: str, root_real: str) -> bool:
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def list_inputs(spec: str) -> InputFiles:
    """The image files named by `spec`: one file, a folder (its image files, not recursive) or a
    glob (`**` recursive), sorted.

    A folder or glob never leads outside itself: an entry whose real path (symlinks resolved) is
    not under the real path of the folder / the glob's literal root is refused with a warning.
    Raises FileNotFoundError when `spec` names nothing.
    """
    if os.path.isdir(spec):
        root, candidates = spec, [os.path.join(spec, n) for n in sorted(os.listdir(spec))]
    elif os.path.isfile(spec):
        return InputFiles([spec])  # named explicitly: read it whatever its extension
    elif glob.has_magic(spec):
        root, candidates = _glob_root(spec), sorted(glob.glob(spec, recursive=True))
    else:
        raise FileNotFoundError(f"predict.input={spec!r}: no such file or folder")
    root_real = os.path.realpath(root)
    out = InputFiles([])
    for path in candidates:
        if not _inside(path, root_real):
            log.warning(
                "predict: refusing %s: it resolves to %s, outside %s",
                path,
                os.path.realpath(path),
                root_real,
            )
            out.refused.append(path)
        elif os.path.isdir(path):
            continue  # folders are not followed
        elif os.path.splitext(path)[1].lower() not in IMAGE_EXTENSIONS:
            out.ignored.append(path)
        elif os.path.isfile(path):
            out.paths.append(path)
        else:  # a FIFO, socket or device named like an image: reading it could block forever
            log.warning("predict: refusing %s: not a regular file", path)
            out.refused.append(path)
    if not candidates:
        raise FileNotFoundError(f"predict.input={spec!r} matches no file")
    return out


def output_names(paths: list[str]) -> list[str]:
    """A distinct PNG file name per input: `<stem>.png`, `<stem>_<index>.png` on collision."""
    used: set[str] = set()
    names = []
    for i, path in enumerate(paths):
        stem = os.path.splitext(os.path.basename(path))[0]
        name = f"{stem}.png"
        k = i
        while name in used:
            name = f"{stem}_{k}.png"
            k += 1
        used.add(name)
        names.append(name)
    return names


class _ImageFiles(Dataset):
    """Decodes and preprocesses one file; an unreadable file becomes an error item, not a raise."""

    def __init__(self, paths: list[str], first_id: int, input_cfg: ml_collections.ConfigDict):
        self.paths, self.first_id, self.input_cfg = paths, first_id, input_cfg

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path, image_id = self.paths[i], self.first_id + i
        try:  # decode and resize: an image that fails either is named and skipped
            image, x, _ = load_preprocessed(path, self.input_cfg)
        except Exception as e:  # ImageError, or anything else a decoder raises: report, go on
            return image_id, path, None, f"{type(e).__name__}: {e}"
        return image_id, path, image, x


def _collate(items, size_divisibility: int):
    """(Batch of the readable images or None, {image_id: original uint8 [3, H, W]},
    [(path, why) of the unreadable ones])."""
    good = [it for it in items if it[2] is not None]
    bad = [(it[1], it[3]) for it in items if it[2] is None]
    if not good:
        return None, {}, bad
    images = collate_images([it[3] for it in good], size_divisibility)
    infos = [
        ImageInfo(
            image_id=it[0],
            file_name=it[1],
            orig_size=tuple(it[2].shape[-2:]),
            size=tuple(it[3].shape[-2:]),
        )
        for it in good
    ]
    return Batch(images, infos), {it[0]: it[2] for it in good}, bad


def prediction_records(
    info: ImageInfo, det: Detections, label_to_category_id, score_thresh: float
) -> list[dict[str, Any]]:
    """predictions.json records of one image's detections scoring >= score_thresh."""
    return detection_records(info, det, label_to_category_id, score_thresh, with_file_name=True)


def _save_png(image: torch.Tensor, path: str) -> None:
    atomic_write(path, lambda f: Image.fromarray(
        image.permute(1, 2, 0).contiguous().numpy()).save(f, format="PNG"))


class _Detector:
    """What predict runs: the model of `mrcnn.build.build` through the inference loop, or an
    exported artifact (`predict.artifact`) on the decoded originals, without building a model.
    Either way: per image (info, Detections in original pixels), labels mapped through the
    categories that travel with the weights (the checkpoint's table, or the artifact's sidecar).
    """

    def __init__(self, config: ml_collections.ConfigDict, device: torch.device, workdir: str):
        self.config, self.device = config, device
        self.stats = InferenceStats()
        self.artifact = None
        if config.predict.artifact:
            from mrcnn import export

            # Names a missing file, a folder, a missing sidecar or an unloadable file in one
            # line (FileNotFoundError / ArtifactError: user errors, exit 2).
            self.artifact = export.load_artifact(config.predict.artifact)
            table = {int(c["label"]): (int(c["id"]), str(c["name"]))
                     for c in self.artifact.categories}
            self.to_cat = lambda label: table[int(label)][0]
            self.names = {label: name for label, (_, name) in table.items()}
            log.info("predict: running the artifact %s", config.predict.artifact)
            return
        self.built = build(config, device, "predict", workdir)
        categories = self.built.categories  # from the checkpoint: no training json needed
        self.to_cat = categories.label_to_category_id
        self.names = label_names(categories, config.model.num_classes)

    def __call__(self, batches, originals: dict[int, torch.Tensor],
                 skipped: list[tuple[str, str]]):
        if self.artifact is None:
            yield from run_inference(self.built.model, batches, self.device, self.built.fast,
                                     stats=self.stats)
            return
        t0 = time.perf_counter()
        for batch in batches:
            infos = self._runnable(batch.infos, originals, skipped)
            outs = self.artifact([originals[i.image_id] for i in infos]) if infos else []
            for info, o in zip(infos, outs):
                yield info, Detections(o["boxes"], o["scores"], o["labels"], o["masks"])
            self.stats.images += len(infos)
            self.stats.timed_images = self.stats.images
            self.stats.seconds = time.perf_counter() - t0

    def _runnable(self, infos, originals, skipped) -> list[ImageInfo]:
        """The images whose size the artifact's program accepts (sidecar sizes: canvas >= 96
        px, sides <= 8192). The others are named and skipped like unreadable files: the eager
        model runs any size, and one odd image must not stop an artifact's whole run."""
        keep = []
        for info in infos:
            h, w = originals[info.image_id].shape[-2:]
            try:
                if self.artifact.check is not None:
                    self.artifact.check(int(h), int(w))
            except ValueError as e:
                log.warning("predict: skipping %s (%s)", info.file_name, e)
                skipped.append((info.file_name, f"ValueError: {e}"))
                originals.pop(info.image_id)
                continue
            keep.append(info)
        return keep


def _share(config: ml_collections.ConfigDict) -> tuple[InputFiles, int, int]:
    """The inputs, and this rank's contiguous share of them [lo, hi)."""
    rank, world_size = dist.rank(), dist.world_size()
    inputs = list_inputs(config.predict.input)
    if inputs.ignored:
        log.info("predict: ignoring %d files without an image extension: %s",
                 len(inputs.ignored), ", ".join(inputs.ignored[:20]))
    n = len(inputs.paths)
    lo, hi = rank * n // world_size, (rank + 1) * n // world_size
    log.info("predict: %d images from %s (%d on this rank), score >= %.2f", n,
             config.predict.input, hi - lo, config.predict.score_thresh)
    return inputs, lo, hi


def _loader(config: ml_collections.ConfigDict, paths: list[str], first_id: int,
            device: torch.device) -> DataLoader:
    return DataLoader(
        _ImageFiles(paths, first_id, config.input),
        batch_size=max(1, config.test.ims_per_batch // dist.world_size()),  # global batch
        shuffle=False,
        num_workers=config.data.num_workers,
        collate_fn=functools.partial(_collate, size_divisibility=config.input.size_divisibility),
        pin_memory=device.type == "cuda",
        worker_init_fn=ignore_stop_signals,
    )


def _write_results(workdir: str, config, gathered, png_dir: str, stats) -> tuple[list, list, str]:
    """Rank 0 writes predictions.json; every rank gets (records, skipped, path)."""
    records = sorted((r for g in gathered for r in g[0]),
                     key=lambda r: (r["image_id"], -r["score"]))
    skipped = [s for g in gathered for s in g[1]]
    out_path = os.path.join(workdir, "predictions.json")
    if dist.rank() == 0:
        write_json_atomic(out_path, records)
        log.info("predict: %d images, %d detections -> %s%s; %.2f images/s; %d skipped%s",
                 sum(g[2] for g in gathered), len(records), out_path,
                 f" and {png_dir}/" if config.predict.draw else "", stats.images_per_s,
                 len(skipped),
                 (": " + ", ".join(p for p, _ in skipped[:20])) if skipped else "")
    return records, skipped, out_path


def predict(
    config: ml_collections.ConfigDict, workdir: str, device: torch.device
) -> dict[str, Any]:
    """Runs the model (`predict.artifact`, else `init.weights`, else the workdir's last
    checkpoint) on `predict.input`.

    Each rank takes a contiguous share of the files; rank 0 writes predictions.json. Returns (on
    every rank) a summary: {"images": done, "detections": written, "skipped": [unreadable files],
    "num_skipped", "ignored": [non-image names], "refused": [outside the root], "predictions":
    path of predictions.json}.
    """
    inputs, lo, hi = _share(config)
    detect = _Detector(config, device, workdir)
    png_names = output_names(inputs.paths)
    png_dir = os.path.join(workdir, "predictions")
    if config.predict.draw:
        os.makedirs(png_dir, exist_ok=True)
    loader = _loader(config, inputs.paths[lo:hi], lo, device)
    originals: dict[int, torch.Tensor] = {}
    skipped: list[tuple[str, str]] = []

    def batches():
        # Keeps each batch's decoded originals (for drawing) and records the unreadable files.
        for batch, images, bad in loader:
            for path, why in bad:
                log.warning("predict: skipping unreadable %s (%s)", path, why)
            skipped.extend(bad)
            originals.update(images)
            if batch is not None:
                yield batch

    records: list[dict[str, Any]] = []
    done, log_every = 0, max(1, config.log_period) * config.test.ims_per_batch
    thresh = config.predict.score_thresh
    for info, det in detect(batches(), originals, skipped):
        records.extend(prediction_records(info, det, detect.to_cat, thresh))
        original = originals.pop(info.image_id)
        if config.predict.draw:
            drawn = draw_detections(original, det, detect.names, thresh)
            _save_png(drawn, os.path.join(png_dir, png_names[info.image_id]))
        done += 1
        if done % log_every == 0:
            speed = (f"{detect.stats.images_per_s:.2f} images/s" if detect.stats.seconds
                     else "warming up")
            log.info("predict: %d/%d images, %s", done, hi - lo, speed)
    gathered = dist.all_gather_object((records, skipped, done))
    all_records, all_skipped, out_path = _write_results(workdir, config, gathered, png_dir,
                                                        detect.stats)
    return {
        "images": sum(g[2] for g in gathered),
        "detections": len(all_records),
        "skipped": [p for p, _ in all_skipped],
        "num_skipped": len(all_skipped),
        "ignored": inputs.ignored,
        "refused": inputs.refused,
        "predictions": out_path,
    }
