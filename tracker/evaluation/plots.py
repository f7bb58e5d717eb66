"""Success and precision plots: one figure per curve kind, every tracker on it, best first, its score in the
legend (and in the PNG's Description field)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from ..io import atomic_path
from .protocol import NORM_THRESHOLDS, OVERLAP_THRESHOLDS, PIXEL_THRESHOLDS, PRECISION_INDEX, Scores


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
