"""Mask R-CNN: model, targets, losses, data, training, evaluation and prediction."""
