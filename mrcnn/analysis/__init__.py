"""Looking at a run instead of reading it: the ground truth drawn, the errors of an evaluation
broken down, the training curves, and one static HTML page per run.

    python main.py --config=configs/shapes.py --mode=browse  --workdir=runs/shapes
    python main.py --config=configs/shapes.py --mode=analyze --workdir=runs/shapes

Files, one subject each:
    sources      where an evaluation is in a workdir; the ground truth and results as pycocotools
                 objects; COCOeval runs with chosen parameters
    plots        matplotlib (Agg backend) set-up and saving
    tables       the per-class AP table (markdown, CSV) from COCOeval's precision array
    pr_curves    precision-recall curves per class and overall
    errors       the COCO error breakdown (C75, C50, Loc, Sim, Oth, BG, FN)
    confusion    the confusion matrix, matched by mask IoU (segm) or box IoU (bbox)
    worst        the images with the most false positives and misses, ground truth | predictions
    curves       training curves from metrics.jsonl, several workdirs overlaid
    browse       --mode=browse: the ground truth (and what the model is fed) drawn
    analyze      --mode=analyze: all of the above for a workdir's evaluation
    report       report/index.html
"""
