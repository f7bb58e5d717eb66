"""TrackingNet reader."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from .base import (DatasetNotFoundError, FramePaths, Sequence, TrackingDataset, read_boxes, register_reader,
                   select_sequences, valid_boxes)


@register_reader("trackingnet", root_variable="TRACKINGNET_ROOT")
class TrackingNet(TrackingDataset):
    """`split=train`: the chunks TRAIN_<k> given by `chunks` (default: every chunk under the root);
    `split=test`: TEST, where only the first frame is annotated. Frames are numbered from 0.
    Sequence names are `TRAIN_<k>/<seq>`."""

    name = "trackingnet"
    splits = ("train", "test")
    layout = "ROOT/TRAIN_<k>/{frames/<seq>/0.jpg, 1.jpg, ..., anno/<seq>.txt (x,y,w,h per line)}, ROOT/TEST/..."

    def __init__(self, root: str | Path, split: str = "train", chunks: Iterable[int] | None = None,
                 seq_list: str | Path | None = None):
        super().__init__(root)
        if split not in self.splits:
            raise ValueError(f"{self.name}: split={split!r} is not allowed: one of {list(self.splits)}")
        self.split = split
        if split == "test":
            chunk_dirs = [self._require(self.root / "TEST", "chunk")]
        elif chunks is None:
            chunk_dirs = sorted((d for d in self.root.glob("TRAIN_*") if d.is_dir()),
                                key=lambda d: int(d.name.split("_")[1]) if d.name.split("_")[1].isdigit() else 0)
            if not chunk_dirs:
                raise DatasetNotFoundError(f"{self.name}: no TRAIN_<k> chunk under {self.root}; expected the "
                                           f"layout {self.layout}")
        else:
            chunk_dirs = [self._require(self.root / f"TRAIN_{k}", "chunk") for k in chunks]
        names = []
        for chunk in chunk_dirs:
            anno = self._require(chunk / "anno", "annotation directory")
            names += [f"{chunk.name}/{p.stem}" for p in sorted(anno.glob("*.txt"))]
        self._set_names(select_sequences(names, seq_list, self.name))

    def _load(self, index: int) -> Sequence:
        name = self._names[index]
        chunk, seq = name.split("/", 1)
        annotation = self.root / chunk / "anno" / f"{seq}.txt"
        boxes = read_boxes(annotation)
        frame_dir = self.root / chunk / "frames" / seq
        if not frame_dir.is_dir():
            raise DatasetNotFoundError(f"{self.name}: frame directory {frame_dir} is missing")
        if self.split == "test":
            count = max(len(list(frame_dir.glob("*.jpg"))), 1)
            first, boxes = boxes[:1], np.full((count, 4), np.nan)
            boxes[0] = first
        visible = valid_boxes(boxes)
        return Sequence(name, FramePaths(frame_dir, "{}.jpg", len(boxes), start=0), boxes, visible, self.name,
                        annotation)
