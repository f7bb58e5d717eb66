"""One-pass evaluation: pytracking's metrics (AUC, OP50, OP75, precision, normalised precision), GOT-10k's
(AO, SR0.5, SR0.75), results files, and the success and precision plots.

    python -m tracker.metrics results=DIR data=got10k data.root=ROOT data.split=val
    python -m tracker.metrics results=[A,B] names=[ours,static] output_dir=DIR

scores results directories (one `<sequence>.txt` of x,y,w,h per line) against a reader's ground truth,
writes the plots, `metrics.json` and `per_sequence.csv`, and prints the metrics as one JSON object on its
last stdout line. Every metric is a percentage.

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

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import pandas as pd

from .io import atomic_path

log = logging.getLogger(__name__)

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


# ---------------------------------------------------------------------------------------- results I/O

def write_results(directory: str | os.PathLike, name: str, boxes: np.ndarray) -> Path:
    """Writes `<directory>/<name>.txt`: x,y,w,h per line, comma-separated, 4 decimals (GOT-10k's own
    ground-truth format), atomically."""
    if not name or Path(name).name != name or name.startswith("."):
        raise ValueError(f"write_results: sequence name {name!r} is not allowed: a plain file name")
    boxes = check_predictions(boxes, len(np.asarray(boxes)), f"results for {name}")
    path = Path(directory) / f"{name}.txt"
    with atomic_path(path) as tmp:
        np.savetxt(tmp, boxes, fmt="%.4f", delimiter=",")
    return path


def read_results(path: str | os.PathLike, frames: Optional[int] = None) -> np.ndarray:
    """One results file (comma, tab or space separated x,y,w,h per line); errors name the file and line."""
    from .data.base import DatasetError, read_boxes

    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"results file {path} is missing")
    try:
        boxes = read_boxes(path)
    except DatasetError as error:
        raise ResultsError(str(error)) from None
    if frames is not None and len(boxes) != frames:
        raise ResultsError(f"{path}: {len(boxes)} boxes, but the sequence has {frames} frames")
    return check_predictions(boxes, len(boxes), str(path))


def load_results_dir(directory: str | os.PathLike,
                     expected: Optional[Mapping[str, int]] = None) -> dict[str, np.ndarray]:
    """Reads `<sequence>.txt` files into {sequence: (N, 4) boxes}. With `expected` (sequence -> frame count),
    exactly those sequences are read and a missing file or a wrong line count is an error naming the file;
    without it, every .txt file in the directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ResultsError(f"results directory {directory} does not exist")
    if expected is None:
        files = sorted(directory.glob("*.txt"))
        if not files:
            raise ResultsError(f"results directory {directory} has no <sequence>.txt files")
        return {f.stem: read_results(f) for f in files}
    missing = [name for name in expected if not (directory / f"{name}.txt").is_file()]
    if missing:
        raise ResultsError(f"results directory {directory} lacks {len(missing)} of {len(expected)} sequences: "
                           f"{', '.join(f'{n}.txt' for n in missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return {name: read_results(directory / f"{name}.txt", frames) for name, frames in expected.items()}


# ---------------------------------------------------------------------------------------------- plots

def _plot(curves: Mapping[str, tuple[np.ndarray, float]], x: np.ndarray, path: str | os.PathLike, title: str,
          xlabel: str, ylabel: str) -> Path:
    """Curves of several trackers on one figure, best first, each legend entry with its score: `name [58.2]`.
    The legend entries also go into the PNG's Description field, so tools can read what a plot shows."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 4.0), dpi=150)
    ax = fig.subplots()
    labels = []
    for rank, (name, (y, score)) in enumerate(sorted(curves.items(), key=lambda item: -item[1][1])):
        labels.append(f"{name} [{score:.1f}]")
        ax.plot(x, y, linewidth=2.0 if rank == 0 else 1.5, linestyle="-" if rank < 10 else "--", label=labels[-1])
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(x[0], x[-1]), ylim=(0, 100))
    ax.grid(True, linestyle=":")
    ax.legend(loc="lower left" if x[-1] <= 1 else "lower right", fontsize="small")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Title": title, "Description": "; ".join(labels)})
    return path


def plot_success(scores: Mapping[str, Scores], path: str | os.PathLike, title: str = "Success plot") -> Path:
    """Success (%) against the overlap threshold; the legend gives each tracker's AUC."""
    curves = {name: (s.mean_curves().success, s.mean_curves().success.mean()) for name, s in scores.items()}
    return _plot(curves, OVERLAP_THRESHOLDS, path, title, "Overlap threshold", "Overlap precision [%]")


def plot_precision(scores: Mapping[str, Scores], path: str | os.PathLike, title: str = "Precision plot",
                   normalized: bool = False) -> Path:
    """Precision (%) against the centre-error threshold (0..50 px, or 0..0.5 of the target size when
    `normalized`); the legend gives each tracker's precision at 20 px (0.20)."""
    kind, x = ("norm_precision", NORM_THRESHOLDS) if normalized else ("precision", PIXEL_THRESHOLDS)
    curves = {name: (getattr(s.mean_curves(), kind), getattr(s.mean_curves(), kind)[PRECISION_INDEX])
              for name, s in scores.items()}
    xlabel = "Normalised location error threshold" if normalized else "Location error threshold [pixels]"
    return _plot(curves, x, path, title, xlabel, "Distance precision [%]")


# ------------------------------------------------------------------------------------------------ CLI

@dataclass
class MetricsConf:
    """The metrics app's own keys (conf/metrics.yaml); `data` is the data group's."""

    results: Any = None  # a results directory, or a list of them
    names: Any = None  # one legend name per results directory (default: the directories' names)
    output_dir: Optional[str] = None  # plots, metrics.json, per_sequence.csv (default: the Hydra run dir)
    max_sequences: Optional[int] = None  # the first N sequences of the split (null: all)
    plots: bool = True
    progress: bool = True
    directories: list[Path] = field(init=False)

    def __post_init__(self) -> None:
        results = [self.results] if isinstance(self.results, (str, os.PathLike)) else list(self.results or [])
        if not results:
            raise ValueError("results is required: results=DIR, or results=[DIR_A,DIR_B] names=[a,b]")
        self.directories = [Path(str(r)).expanduser() for r in results]
        missing = [str(d) for d in self.directories if not d.is_dir()]
        if missing:
            raise ResultsError(f"results={missing[0]} is not a directory (expected one <sequence>.txt per "
                               f"sequence)")
        names = [self.names] if isinstance(self.names, str) else list(self.names or [])
        if not names:
            names = [d.name or str(d) for d in self.directories]
        names = [str(n) for n in names]
        if len(names) != len(self.directories):
            raise ValueError(f"names={names} is not allowed: one name per results directory "
                             f"({len(self.directories)})")
        if len(set(names)) != len(names):
            raise ValueError(f"names={names} is not allowed: names must differ (set names=[a,b,...])")
        self.names = names
        if self.max_sequences is not None and self.max_sequences < 1:
            raise ValueError(f"max_sequences={self.max_sequences} is not allowed: null or an integer >= 1")


def image_size(sequence: Any) -> Optional[tuple[int, int]]:
    """The first frame's (width, height) from its header, for GOT-10k's clipping; None when unreadable."""
    from PIL import Image

    try:
        with Image.open(sequence.frames[0]) as image:
            return image.size
    except (OSError, IndexError):
        return None


def score_directories(cfg: Any, output_dir: str | os.PathLike) -> dict[str, Any]:
    """The app's work: reads the ground truth (`cfg.data`), scores every results directory, writes plots,
    metrics.json and per_sequence.csv into `cfg.output_dir` or `output_dir`; returns the printed metrics."""
    from omegaconf import OmegaConf
    from tqdm.auto import tqdm

    from .data.config import build_reader

    own = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "data"}
    conf = MetricsConf(**own)
    reader = build_reader(cfg.data)
    names = reader.sequence_names()[:conf.max_sequences]
    sequences = [reader.sequence(n) for n in tqdm(names, desc="ground truth", disable=not conf.progress)]
    expected = {s.name: len(s.boxes) for s in sequences}
    image_sizes = {s.name: size for s in sequences if (size := image_size(s)) is not None}
    if len(image_sizes) < len(sequences):
        log.warning("%d of %d sequences have no readable first frame: GOT-10k boxes are not clipped to the image "
                    "there", len(sequences) - len(image_sizes), len(sequences))
    scores = {}
    for name, directory in zip(conf.names, conf.directories):
        results = load_results_dir(directory, expected)
        scores[name] = evaluate_sequences(results, sequences, image_sizes)

    out = Path(conf.output_dir or output_dir).expanduser()
    data_name = f"{cfg.data.name} {cfg.data.get('split', '')}".strip()
    summaries, plots = write_report(scores, out, data_name, conf.plots)
    first = conf.names[0]
    result = {"name": first, **summaries[first], "dataset": data_name, "trackers": summaries,
              "results": {n: str(d) for n, d in zip(conf.names, conf.directories)}, "plots": plots,
              "output_dir": str(out)}
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2, allow_nan=False))
    return result


PER_SEQUENCE_FILE = "per_sequence.csv"  # one row per (tracker, sequence): the report's bootstrap reads it


def read_per_sequence(directory: str | os.PathLike, tracker: str = "model") -> Optional[pd.Series]:
    """One tracker's per-sequence AUCs (index: sequence name) from a folder `write_report` wrote; None when
    there is none."""
    path = Path(directory) / PER_SEQUENCE_FILE
    if not path.is_file():
        return None
    table = pd.read_csv(path)
    rows = table[table["tracker"] == tracker]
    return None if rows.empty else rows.set_index("sequence")["auc"].astype(float)


def write_report(scores: Mapping[str, Scores], out: str | os.PathLike, data_name: str, plots: bool = True
                 ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Success / precision plots of every tracker and `per_sequence.csv` into `out`; returns the summaries
    by tracker name and the plot paths."""
    out = Path(out)
    summaries = {name: s.summary() for name, s in scores.items()}
    paths = {}
    if plots:
        paths = {"success": str(plot_success(scores, out / "success_plot.png", f"Success plot on {data_name}")),
                 "precision": str(plot_precision(scores, out / "precision_plot.png",
                                                 f"Precision plot on {data_name}")),
                 "norm_precision": str(plot_precision(scores, out / "norm_precision_plot.png",
                                                      f"Normalised precision plot on {data_name}", True))}
    table = pd.concat([s.per_sequence().assign(tracker=name) for name, s in scores.items()], ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / PER_SEQUENCE_FILE) as tmp:
        table[["tracker", "sequence", *METRICS]].to_csv(tmp, index=False, float_format="%.4f")
    return summaries, paths


def _main(cfg: Any) -> None:
    from hydra.core.hydra_config import HydraConfig

    result = score_directories(cfg, HydraConfig.get().runtime.output_dir)
    for name, summary in result["trackers"].items():
        log.info("%s: %s", name, ", ".join(f"{k} {summary[k]}" for k in METRICS))
    print(json.dumps(result, allow_nan=False))


def main() -> None:
    from .app import hydra_app

    hydra_app(_main, "metrics")()


if __name__ == "__main__":
    main()
