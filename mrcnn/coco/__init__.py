"""COCO results: detections -> COCO results records, and their pycocotools evaluation.

    records   detections of one image -> records; masks -> compressed RLE
    cocoeval  pycocotools bbox / segm AP of records against a ground truth
"""

from mrcnn.coco.cocoeval import METRIC_NAMES, coco_evaluate, load_gt
from mrcnn.coco.records import bbox_and_segm, detection_records, encode_masks

__all__ = ["METRIC_NAMES", "bbox_and_segm", "coco_evaluate", "detection_records",
           "encode_masks", "load_gt"]
