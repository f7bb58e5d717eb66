"""Evaluation: the scoring protocol (`protocol`), results on disk (`results`), the success and precision plots
(`plots`), the online trackers (`tracker`), and evaluating a trained model end to end (`run`). The apps are
`tracker.evaluate` (track and score a checkpoint) and `tracker.metrics` (score results directories).

The trackers and the model evaluation import torch and the model code: their names are imported on first use,
so that scoring results files needs neither."""
from __future__ import annotations

import importlib

from .plots import plot_precision, plot_success
from .protocol import (METRICS, NORM_THRESHOLDS, OVERLAP_THRESHOLDS, PIXEL_THRESHOLDS, PRECISION_INDEX,
                       ResultsError, Scores, SequenceCurves, centre_errors, centres_xywh, check_predictions,
                       evaluate_sequences, fill_predictions, got10k_ious, image_size, iou_xywh,
                       normalised_centre_errors, score_sequences, sequence_curves, visibility_invalidates)
from .results import (PER_SEQUENCE_FILE, MetricsConf, load_results_dir, read_per_sequence, read_results,
                      score_directories, scores_dir, write_report, write_results)

_ON_FIRST_USE = {
    **dict.fromkeys(("OnnxStarkTracker", "StarkTracker", "StaticBoxTracker", "Tracker", "clip_box", "run_tracker",
                     "track_sequence"), "tracker"),
    **dict.fromkeys(("baseline_model_config", "evaluate_model", "evaluate_on", "load_model"), "run"),
}

__all__ = [
    "METRICS", "NORM_THRESHOLDS", "OVERLAP_THRESHOLDS", "PIXEL_THRESHOLDS", "PRECISION_INDEX", "ResultsError",
    "Scores", "SequenceCurves", "centre_errors", "centres_xywh", "check_predictions", "evaluate_sequences",
    "fill_predictions", "got10k_ious", "image_size", "iou_xywh", "normalised_centre_errors", "score_sequences",
    "sequence_curves", "visibility_invalidates",
    "PER_SEQUENCE_FILE", "MetricsConf", "load_results_dir", "read_per_sequence", "read_results",
    "score_directories", "scores_dir", "write_report", "write_results",
    "plot_precision", "plot_success",
    *_ON_FIRST_USE,
]


def __getattr__(name: str):
    if name not in _ON_FIRST_USE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_ON_FIRST_USE[name]}", __name__), name)
