"""One check of a data set before anything trains or tracks on it.

A broken file otherwise surfaces mid-epoch or mid-evaluation (a truncated JPEG, a short groundtruth, a NaN
first box), often with an error that names no file. `check_dataset` reads every sequence's annotations,
compares the frame files on disk with the boxes, decodes the first and last frames and, for the data a
tracker is started on, checks the first box; it raises one DatasetError naming the file or the sequence.
It stops after a time budget (the rest is read unchecked, with a warning) and remembers a data set that
passed, keyed by its path, split, sequences and directory times, so it runs once per data set.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from ..io import stable_hash
from .base import (AnnotationError, FrameMissingError, FramePaths, Sequence, TrackingDataset, box_count_error,
                   load_image)

log = logging.getLogger(__name__)

CHECK_SECONDS = 30.0


def check_dataset(reader: TrackingDataset, first_boxes: bool = False, budget: float = CHECK_SECONDS,
                  cache_dir: str | Path | None = None) -> int:
    """Checks `reader`'s sequences in order until done or `budget` seconds are spent; returns how many were
    checked (0 when `cache_dir` remembers that this data set passed). `first_boxes`: also require each
    first box to be finite, of positive size and overlapping its image (the online tracker starts there)."""
    marker = Path(cache_dir) / f"{_key(reader, first_boxes)}.json" if cache_dir is not None else None
    if marker is not None and marker.is_file():
        return 0
    started, listings, checked = time.perf_counter(), {}, 0
    for index in range(len(reader)):
        if time.perf_counter() - started > budget:
            log.warning("%s: checked %d of %d sequences in %.0f s; the rest are read unchecked",
                        reader, checked, len(reader), budget)
            break
        sequence = reader.sequence(index)  # parses the annotations: a bad line raises naming file and line
        _check_frame_files(reader, sequence, listings)
        first = load_image(sequence.frames[0])  # a frame that does not decode raises naming the file
        if len(sequence.frames) > 1:
            load_image(sequence.frames[-1])
        if first_boxes:
            _check_first_box(reader, sequence, *first.size)
        checked += 1
    if marker is not None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"reader": repr(reader), "checked": checked, "sequences": len(reader)}) + "\n")
    return checked


def _names(directory: Path, listings: dict[Path, set[str]]) -> set[str]:
    """A directory's file names, listed once per check (big datasets: one listing, not a stat per frame)."""
    if directory not in listings:
        try:
            listings[directory] = set(os.listdir(directory))
        except FileNotFoundError:
            listings[directory] = set()
    return listings[directory]


def _check_frame_files(reader: TrackingDataset, sequence: Sequence, listings: dict[Path, set[str]]) -> None:
    frames = sequence.frames
    if isinstance(frames, FramePaths):  # a numbered directory: as many frames on disk as boxes, each present
        names = _names(frames.directory, listings)
        suffix = Path(frames.pattern).suffix
        on_disk = sum(1 for n in names if n.endswith(suffix))
        if on_disk != len(frames):
            raise box_count_error(sequence.annotation or Path(sequence.name), len(frames), on_disk, frames.directory)
        missing = next((i for i in range(len(frames)) if frames.pattern.format(i + frames.start) not in names), None)
    else:
        missing = next((i for i, p in enumerate(frames) if p.name not in _names(p.parent, listings)), None)
    if missing is not None:
        raise FrameMissingError(f"frame {frames[missing]} of {reader.name} sequence {sequence.name} is missing")


def _check_first_box(reader: TrackingDataset, sequence: Sequence, width: int, height: int) -> None:
    x, y, w, h = box = sequence.boxes[0]
    where = f"{reader.name} sequence {sequence.name} ({sequence.annotation or reader.root})"
    if not (np.isfinite(box).all() and w > 0 and h > 0):
        raise AnnotationError(f"{where}: the first box {box.tolist()} is not finite with positive width and "
                              f"height; the tracker starts from it")
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise AnnotationError(f"{where}: the first box {box.tolist()} lies outside its {width}x{height} image "
                              f"{sequence.frames[0]}")


def _key(reader: TrackingDataset, first_boxes: bool) -> str:
    """The data set's identity: reader, root, split, sequences, and the modification times of the root and
    the split directory (adding or removing sequences changes them)."""
    directories = [reader.root, getattr(reader, "split_dir", reader.root)]
    identity = [type(reader).__name__, reader.name, str(reader.root.resolve()), getattr(reader, "split", None),
                reader.sequence_names(), [d.stat().st_mtime_ns for d in directories], first_boxes]
    return stable_hash(identity)
