"""Results on disk: a tracker's `<sequence>.txt` files (x,y,w,h per line), the folder of plots and
per-sequence scores an evaluation writes (`write_report`, `per_sequence.csv`), and the scoring of results
directories against a reader's ground truth (`score_directories`, the `metrics` app's work, with its keys
`MetricsConf`)."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd

from ..io import atomic_path
from .plots import plot_precision, plot_success
from .protocol import METRICS, ResultsError, Scores, check_predictions, evaluate_sequences, image_size

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- results files

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
    from ..data.base import DatasetError, read_boxes

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


# ------------------------------------------------------------------------------------ evaluation folders

def scores_dir(out_dir: str | Path) -> Path:
    """Where evaluate_model puts plots and per-sequence scores under its `out_dir` (a run directory)."""
    return Path(out_dir) / "plots"


PER_SEQUENCE_FILE = "per_sequence.csv"  # one row per (tracker, sequence): the report's bootstrap reads it


def read_per_sequence_table(directory: str | os.PathLike) -> Optional[pd.DataFrame]:
    """Every tracker's per-sequence AUCs from a folder `write_report` wrote, in one read: one column per tracker
    (in file order), index: sequence name (NaN where a tracker lacks a sequence); None when there are none."""
    path = Path(directory) / PER_SEQUENCE_FILE
    if not path.is_file():
        return None
    table = pd.read_csv(path)
    columns = {tracker: rows.set_index("sequence")["auc"].astype(float)
               for tracker, rows in table.groupby("tracker", sort=False)}
    return pd.concat(columns, axis=1) if columns else None  # concat, not DataFrame: keeps the file's order


def read_per_sequence(directory: str | os.PathLike, tracker: str = "model") -> Optional[pd.Series]:
    """One tracker's per-sequence AUCs (index: sequence name) from a folder `write_report` wrote; None when
    there is none."""
    table = read_per_sequence_table(directory)
    return None if table is None else tracker_column(table, tracker)


def tracker_column(table: pd.DataFrame, tracker: str) -> Optional[pd.Series]:
    """One tracker's AUCs from a `read_per_sequence_table` table, the sequences it was scored on; None when it
    has none."""
    if tracker not in table:
        return None
    return table[tracker].dropna().rename("auc")


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


# --------------------------------------------------------------------------- scoring results directories

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


def score_directories(cfg: Any, output_dir: str | os.PathLike) -> dict[str, Any]:
    """The metrics app's work: reads the ground truth (`cfg.data`), scores every results directory, writes plots,
    metrics.json and per_sequence.csv into `cfg.output_dir` or `output_dir`; returns the printed metrics."""
    from omegaconf import OmegaConf
    from tqdm.auto import tqdm

    from ..data.config import build_reader

    own = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in ("data", "paths")}
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
