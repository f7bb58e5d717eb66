"""GOT-10k reader (also reads the embedded synthetic benchmark, which is written in the same layout)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import (DatasetNotFoundError, FramePaths, Sequence, TrackingDataset, read_boxes, read_labels, read_lines,
                   register_reader, select_sequences, valid_boxes)

SPLITS = {"train": "train", "val": "val", "test": "test", "vot-train": "train", "vot-val": "train"}


@register_reader("got10k", root_variable="GOT10K_ROOT")
@register_reader("synthetic", root_variable="LIGHTTRACK_SYNTHETIC_ROOT")  # the generated benchmark: GOT-10k's layout
class GOT10k(TrackingDataset):
    """`split`: train, val, test, or STARK's vot-train / vot-val, which are lists of train sequences
    (`seq_list`: a file of 0-based ids into train/list.txt, or of names). `seq_list` also narrows any split.

    Visibility follows pytracking: a valid box, not in absence.label, and cover.label > 0 (label files
    are optional). On the test split only the first frame is annotated."""

    name = "got10k"
    splits = tuple(SPLITS)
    layout = ("ROOT/{train,val,test}/list.txt and ROOT/<split>/<seq>/{00000001.jpg, ..., groundtruth.txt "
              "(x,y,w,h per line), absence.label, cover.label, cut_by_image.label, meta_info.ini}")

    def __init__(self, root: str | Path, split: str = "train", seq_list: str | Path | None = None):
        super().__init__(root)
        if split not in self.splits:
            raise ValueError(f"{self.name}: split={split!r} is not allowed: one of {list(self.splits)}")
        if split.startswith("vot-") and seq_list is None:
            raise ValueError(f"{self.name}: split={split} needs seq_list=FILE, STARK's got10k_{split.replace('-', '_')}"
                             f"_split.txt (sequence ids into train/list.txt)")
        self.split = split
        self.split_dir = self.root / SPLITS[split]
        names = read_lines(self._require(self.split_dir / "list.txt", "sequence list"))
        self._set_names(select_sequences(names, seq_list, self.name))

    def _load(self, index: int) -> Sequence:
        name = self._names[index]
        seq_dir = self.split_dir / name
        if not seq_dir.is_dir():
            raise DatasetNotFoundError(f"{self.name}: sequence directory {seq_dir} is missing (listed in "
                                       f"{self.split_dir / 'list.txt'})")
        annotation = seq_dir / "groundtruth.txt"
        boxes = read_boxes(annotation)
        if self.split == "test":  # only the first frame is annotated: count the images
            count = len(list(seq_dir.glob("*.jpg")))
            first = boxes[:1]
            boxes = np.full((max(count, 1), 4), np.nan)
            boxes[0] = first
            visible = np.zeros(len(boxes), dtype=bool)
            visible[0] = valid_boxes(first)[0]
        else:
            visible = valid_boxes(boxes)
            absence, cover = seq_dir / "absence.label", seq_dir / "cover.label"
            if absence.exists():
                visible &= read_labels(absence, boxes, annotation, seq_dir) == 0
            if cover.exists():
                visible &= read_labels(cover, boxes, annotation, seq_dir) > 0
        return Sequence(name, FramePaths(seq_dir, "{:08d}.jpg", len(boxes)), boxes, visible, self.name, annotation)
