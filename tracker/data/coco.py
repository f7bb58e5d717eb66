"""COCO 2017 reader: every object instance becomes a static one-frame "sequence", as STARK uses COCO
(template and search are both cut from the same image, the search crop jittered)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .base import AnnotationError, Sequence, TrackingDataset, register_reader, select_sequences, valid_boxes


@register_reader("coco", root_variable="COCO_ROOT")
class COCO(TrackingDataset):
    """Instances of `annotations/instances_<split>.json` that are not crowds; sequence names are the
    annotation ids. `seq_list` narrows them (a file of annotation ids)."""

    name = "coco"
    is_video = False
    layout = "ROOT/annotations/instances_<split>.json and ROOT/<split>/<file_name>.jpg (split: train2017, val2017)"

    def __init__(self, root: str | Path, split: str = "train2017", seq_list: str | Path | None = None):
        super().__init__(root)
        self.split = split
        path = self._require(self.root / "annotations" / f"instances_{split}.json", "annotation file")
        try:
            data = json.loads(path.read_text())
            files = {image["id"]: image["file_name"] for image in data["images"]}
            annotations = [a for a in data["annotations"] if not a.get("iscrowd", 0)]
            self._files = [files[a["image_id"]] for a in annotations]
            self._boxes = np.asarray([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4)
        except (ValueError, KeyError, TypeError) as error:
            raise AnnotationError(f"{path}: not a COCO instances file ({type(error).__name__}: {error})") from None
        self._image_dir, self._annotation = self.root / split, path
        self._set_names(select_sequences([str(a["id"]) for a in annotations], seq_list, self.name))
        self._rows = {str(a["id"]): i for i, a in enumerate(annotations)}

    def _load(self, index: int) -> Sequence:
        name = self._names[index]
        row = self._rows[name]
        boxes = self._boxes[row:row + 1]
        return Sequence(name, [self._image_dir / self._files[row]], boxes, valid_boxes(boxes), self.name,
                        self._annotation)
