"""The scoring protocol: pytracking's metrics (AUC, OP50, OP75, precision, normalised precision) and GOT-10k's
(AO, SR0.5, SR0.75) of one tracker's boxes against a reader's ground truth. Every metric is a percentage.

Protocol, as pytracking's (and STARK's) `extract_results` computes it, checked against that code:
- thresholds are `arange(0, 1.05, 0.05)`: 21 values, the last exactly 1.0, and success is IoU > t. IoU never
  exceeds 1, so success at t = 1 is 0 for any tracker: a perfect tracker scores AUC 100 * 20/21 = 95.24 (and
  OP50 = OP75 = precision = normalised precision = 100) when every frame is valid. One deliberate deviation:
  IoU is capped at 1 (see `iou_xywh`); uncapped, float rounding lifts identical fractional boxes above 1 and
  a perfect tracker's AUC drifts above 95.24 by chance (93.83 instead of 93.14 on the synthetic val split).
- a predicted box with zero w or h takes the previous prediction (only where the frame is annotated), and
  only then is frame 0's prediction replaced by the ground truth; NaN or negative sizes are an error.
- invalid frames (ground-truth w or h <= 0 or NaN; for LaSOT also target not visible) get IoU -1 and infinite
  centre errors and stay in the denominator. pytracking sets the normalised error of such frames to -1 (a hit)
  outside LaSOT; SPEC.md says infinite for both centre errors, and that is what is done here.
- curves are averaged over sequences (each sequence weighs the same).
GOT-10k protocol, as its toolkit computes it: frames after the first whose target is visible (the toolkit's
cover > 0), boxes clipped to the image when its size is known, non-inclusive geometry, IoU clipped to
[0, 1], frames pooled over all sequences (each frame weighs the same); no zero-size fill.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import pandas as pd

OVERLAP_THRESHOLDS = np.arange(0.0, 1.0 + 0.05, 0.05)  # pytracking's own expression: 21 values, 0.0 .. 1.0
PIXEL_THRESHOLDS = np.arange(0, 51, dtype=np.float64)  # precision plot: 0..50 px
NORM_THRESHOLDS = PIXEL_THRESHOLDS / 100.0  # normalised precision: 0..0.5
PRECISION_INDEX = 20  # 20 px, and 0.20 of the target size
OP50_INDEX, OP75_INDEX = 10, 15
METRICS = ("auc", "op50", "op75", "precision", "norm_precision", "ao", "sr50", "sr75")


class ResultsError(ValueError):
    """A results directory or file is missing or malformed; the message names it."""


def _as_boxes(boxes: Any, what: str) -> np.ndarray:
    array = np.asarray(boxes, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{what}: expected an (N, 4) array of x, y, w, h; got shape {array.shape}")
    return array


# ---------------------------------------------------------------------------------------------- box maths

def iou_xywh(pred: np.ndarray, gt: np.ndarray, inclusive: bool = True) -> np.ndarray:
    """Row-wise IoU of two (N, 4) arrays of x, y, w, h.

    inclusive: pytracking's pixel geometry (br = xy + wh - 1, side = br - tl + 1), capped at 1: with fractional
    coordinates that arithmetic puts identical boxes a rounding error above 1 (15% of the synthetic benchmark's
    frames), which pytracking would count as a success at t = 1.0; mathematically IoU <= 1.
    False: GOT-10k's continuous geometry (br = xy + wh), with its eps in the union, clipped to [0, 1]."""
    pred, gt = _as_boxes(pred, "pred"), _as_boxes(gt, "gt")
    if len(pred) != len(gt):
        raise ValueError(f"iou_xywh: {len(pred)} predicted boxes for {len(gt)} ground-truth boxes")
    one = 1.0 if inclusive else 0.0
    tl = np.maximum(pred[:, :2], gt[:, :2])
    br = np.minimum(pred[:, :2] + pred[:, 2:] - one, gt[:, :2] + gt[:, 2:] - one)
    intersection = np.clip(br - tl + one, 0.0, None).prod(axis=1)
    union = pred[:, 2:].prod(axis=1) + gt[:, 2:].prod(axis=1) - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        if inclusive:
            return np.minimum(intersection / union, 1.0)
        return np.clip(intersection / (union + np.finfo(np.float64).eps), 0.0, 1.0)


def centres_xywh(boxes: np.ndarray) -> np.ndarray:
    """Pixel-inclusive centres: xy + 0.5 * (wh - 1)."""
    boxes = _as_boxes(boxes, "boxes")
    return boxes[:, :2] + 0.5 * (boxes[:, 2:] - 1.0)


def centre_errors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Euclidean distance between the centres, in pixels."""
    return np.linalg.norm(centres_xywh(pred) - centres_xywh(gt), axis=1)


def normalised_centre_errors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Centre distance with both centres divided by the ground-truth w and h (TrackingNet's normalisation)."""
    gt = _as_boxes(gt, "gt")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.linalg.norm((centres_xywh(pred) - centres_xywh(gt)) / gt[:, 2:], axis=1)


# --------------------------------------------------------------------------------------- one sequence

def check_predictions(pred: np.ndarray, frames: int, name: str = "predictions") -> np.ndarray:
    """(N, 4) finite boxes with non-negative sizes, one per frame; anything else is an error naming the row."""
    pred = _as_boxes(pred, name)
    if len(pred) != frames:
        raise ResultsError(f"{name}: {len(pred)} boxes for a sequence of {frames} frames")
    bad = ~np.isfinite(pred).all(axis=1) | (pred[:, 2:] < 0).any(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        raise ResultsError(f"{name}, line {row + 1}: box {pred[row].tolist()} is not allowed: finite x, y and "
                           f"w, h >= 0")
    return pred


def fill_predictions(pred: np.ndarray, gt: np.ndarray, name: str = "predictions") -> np.ndarray:
    """pytracking's clean-up of a tracker's output: a box with zero w or h takes the previous box (on annotated
    frames), then frame 0 becomes the ground truth. Returns a new array."""
    gt = _as_boxes(gt, "gt")
    pred = check_predictions(pred, len(gt), name)
    refill = (pred[:, 2:] == 0).any(axis=1) & ~np.isnan(gt).any(axis=1)
    refill[0] = False
    source = np.maximum.accumulate(np.where(refill, 0, np.arange(len(pred))))  # last frame not refilled
    pred = pred[source]
    pred[0] = gt[0]
    return pred


@dataclass(frozen=True)
class SequenceCurves:
    """Per-sequence curves, shares in [0, 1]."""

    success: np.ndarray  # (21,): IoU > OVERLAP_THRESHOLDS
    precision: np.ndarray  # (51,): centre error <= PIXEL_THRESHOLDS
    norm_precision: np.ndarray  # (51,): normalised centre error <= NORM_THRESHOLDS


def sequence_curves(pred_xywh: np.ndarray, gt_xywh: np.ndarray, valid: Optional[np.ndarray] = None,
                    name: str = "predictions") -> SequenceCurves:
    """The pytracking curves of one sequence. `valid` (N,) marks frames that may count (pass the visibility
    flags for LaSOT); frames with ground-truth w or h <= 0 or NaN are invalid regardless. Invalid frames
    are misses at every threshold and stay in the denominator."""
    gt = _as_boxes(gt_xywh, "gt")
    pred = fill_predictions(pred_xywh, gt, name)
    with np.errstate(invalid="ignore"):
        ok = (gt[:, 2:] > 0).all(axis=1)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != ok.shape:
            raise ValueError(f"{name}: valid has shape {valid.shape}; expected ({len(gt)},)")
        ok &= valid
    iou = np.where(ok, iou_xywh(pred, gt), -1.0)
    error = np.where(ok, centre_errors(pred, gt), np.inf)
    norm_error = np.where(ok, normalised_centre_errors(pred, gt), np.inf)
    n = len(gt)
    return SequenceCurves((iou[:, None] > OVERLAP_THRESHOLDS).sum(axis=0) / n,
                          (error[:, None] <= PIXEL_THRESHOLDS).sum(axis=0) / n,
                          (norm_error[:, None] <= NORM_THRESHOLDS).sum(axis=0) / n)


def _clip_to_image(boxes: np.ndarray, size: tuple[float, float]) -> np.ndarray:
    width, height = size
    x, y = np.clip(boxes[:, 0], 0, width), np.clip(boxes[:, 1], 0, height)
    return np.stack([x, y, np.clip(boxes[:, 2], 0, width - x), np.clip(boxes[:, 3], 0, height - y)], axis=1)


def got10k_ious(pred_xywh: np.ndarray, gt_xywh: np.ndarray, visible: Optional[np.ndarray] = None,
                image_size: Optional[tuple[float, float]] = None, name: str = "predictions") -> np.ndarray:
    """GOT-10k toolkit IoUs of the frames after the first whose target is visible (`visible`, else a valid
    ground-truth box); both boxes clipped to the image (width, height) when given."""
    gt = _as_boxes(gt_xywh, "gt")
    pred = check_predictions(pred_xywh, len(gt), name)
    with np.errstate(invalid="ignore"):
        keep = np.isfinite(gt).all(axis=1) & (gt[:, 2:] > 0).all(axis=1)
    if visible is not None:
        keep &= np.asarray(visible, dtype=bool)
    keep[0] = False
    pred, gt = pred[keep], gt[keep]
    if image_size is not None:
        pred, gt = _clip_to_image(pred, image_size), _clip_to_image(gt, image_size)
    return iou_xywh(pred, gt, inclusive=False)


# ------------------------------------------------------------------------------------ many sequences

def visibility_invalidates(sequence: Any) -> bool:
    """Whether a sequence's visibility flags invalidate frames (pytracking: LaSOT only). Readers may say so
    with a `visibility_invalidates` attribute; otherwise the dataset name decides."""
    flag = getattr(sequence, "visibility_invalidates", None)
    return bool(flag) if flag is not None else getattr(sequence, "dataset", "") == "lasot"


def _percent(value: float) -> Optional[float]:
    return None if not math.isfinite(value) else round(100.0 * float(value), 4)


@dataclass(frozen=True)
class Scores:
    """One tracker on a set of sequences: per-sequence curves (rows follow `sequences`) and GOT-10k IoUs."""

    sequences: tuple[str, ...]
    success: np.ndarray  # (S, 21)
    precision: np.ndarray  # (S, 51)
    norm_precision: np.ndarray  # (S, 51)
    ious: tuple[np.ndarray, ...]  # GOT-10k IoUs per sequence
    frames: int = 0

    def mean_curves(self) -> SequenceCurves:
        """Curves averaged over sequences, as percentages."""
        return SequenceCurves(*(100.0 * getattr(self, k).mean(axis=0) for k in ("success", "precision",
                                                                                 "norm_precision")))

    def summary(self) -> dict[str, Any]:
        """The metrics (percentages; `ao`/`sr*` are None when no frame after the first is annotated)."""
        curves = self.mean_curves()
        pooled = np.concatenate(self.ious) if self.ious else np.empty(0)
        got = [pooled.mean(), (pooled > 0.5).mean(), (pooled > 0.75).mean()] if len(pooled) else [math.nan] * 3
        values = [curves.success.mean() / 100, curves.success[OP50_INDEX] / 100, curves.success[OP75_INDEX] / 100,
                  curves.precision[PRECISION_INDEX] / 100, curves.norm_precision[PRECISION_INDEX] / 100, *got]
        return {**dict(zip(METRICS, map(_percent, values))), "sequences": len(self.sequences),
                "frames": self.frames}

    def per_sequence(self) -> pd.DataFrame:
        """One row per sequence with the same metrics, AO/SR over that sequence's frames."""
        with np.errstate(invalid="ignore"):
            got = np.array([[i.mean(), (i > 0.5).mean(), (i > 0.75).mean()] if len(i) else [np.nan] * 3
                            for i in self.ious]).reshape(-1, 3)
        table = pd.DataFrame({
            "sequence": self.sequences,
            "auc": self.success.mean(axis=1), "op50": self.success[:, OP50_INDEX],
            "op75": self.success[:, OP75_INDEX], "precision": self.precision[:, PRECISION_INDEX],
            "norm_precision": self.norm_precision[:, PRECISION_INDEX],
            "ao": got[:, 0], "sr50": got[:, 1], "sr75": got[:, 2]})
        table[list(METRICS)] *= 100.0
        return table


def evaluate_sequences(predictions: Mapping[str, np.ndarray], sequences: Iterable[Any],
                       image_sizes: Optional[Mapping[str, tuple[float, float]]] = None) -> Scores:
    """Scores predictions (sequence name -> (N, 4) x, y, w, h) against sequences (objects with `name`,
    `boxes`, `visible`, and `dataset` or `visibility_invalidates`, such as tracker.data's `Sequence`).
    `image_sizes` (name -> (width, height)) lets the GOT-10k protocol clip boxes to the image."""
    names, curves, ious, frames = [], [], [], 0
    for sequence in sequences:
        if sequence.name not in predictions:
            raise ResultsError(f"no predictions for sequence {sequence.name!r}")
        pred, gt = predictions[sequence.name], _as_boxes(sequence.boxes, f"{sequence.name} ground truth")
        visible = np.asarray(sequence.visible, dtype=bool)
        label = f"sequence {sequence.name}"
        curves.append(sequence_curves(pred, gt, visible if visibility_invalidates(sequence) else None, label))
        size = (image_sizes or {}).get(sequence.name)
        ious.append(got10k_ious(pred, gt, visible, size, label))
        names.append(sequence.name)
        frames += len(gt)
    if not names:
        raise ValueError("evaluate_sequences: no sequences to score")
    return Scores(tuple(names), *(np.stack([getattr(c, k) for c in curves])
                                  for k in ("success", "precision", "norm_precision")), tuple(ious), frames)


def score_sequences(predictions: Mapping[str, np.ndarray], sequences: Iterable[Any],
                    image_sizes: Optional[Mapping[str, tuple[float, float]]] = None) -> dict[str, Any]:
    """The metrics of one tracker: auc, op50, op75, precision, norm_precision, ao, sr50, sr75 (percentages),
    sequences and frames. See `evaluate_sequences`."""
    return evaluate_sequences(predictions, sequences, image_sizes).summary()


def image_size(sequence: Any) -> Optional[tuple[int, int]]:
    """The first frame's (width, height) from its header, for GOT-10k's clipping; None when unreadable."""
    from PIL import Image

    try:
        with Image.open(sequence.frames[0]) as image:
            return image.size
    except (OSError, IndexError):
        return None
