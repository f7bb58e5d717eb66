"""LaSOT reader."""
from __future__ import annotations

from pathlib import Path

from .base import (DatasetNotFoundError, FramePaths, Sequence, TrackingDataset, read_boxes, read_labels,
                   register_reader, select_sequences, valid_boxes)


@register_reader("lasot", root_variable="LASOT_ROOT")
class LaSOT(TrackingDataset):
    """All `<class>/<class>-<n>` sequences under the root, or those a `seq_list` file names (for example
    the 1,120-sequence training split or the 280-sequence test split of protocol II). Visible: a valid box,
    not fully occluded and not out of view."""

    name = "lasot"
    splits = ("all",)  # no split of its own: seq_list narrows it
    layout = ("ROOT/<class>/<class>-<n>/{img/00000001.jpg, ..., groundtruth.txt (x,y,w,h per line), "
              "full_occlusion.txt, out_of_view.txt (one comma-separated line of 0/1)}")

    def __init__(self, root: str | Path, split: str = "all", seq_list: str | Path | None = None):
        super().__init__(root)
        self.split = split
        # sequence names as LaSOT's own split files write them: "airplane-1" in ROOT/airplane/airplane-1
        names = sorted(s.name for c in self.root.iterdir() if c.is_dir()
                       for s in c.iterdir() if s.is_dir() and s.name.rsplit("-", 1)[0] == c.name)
        if not names:
            raise DatasetNotFoundError(f"{self.name}: no sequences under {self.root}; expected the layout "
                                       f"{self.layout}")
        self._set_names(select_sequences(names, seq_list, self.name))

    def _load(self, index: int) -> Sequence:
        name = self._names[index]
        seq_dir = self.root / name.rsplit("-", 1)[0] / name
        if not seq_dir.is_dir():
            raise DatasetNotFoundError(f"{self.name}: sequence directory {seq_dir} is missing")
        annotation = seq_dir / "groundtruth.txt"
        boxes = read_boxes(annotation)
        visible = valid_boxes(boxes)
        for flag_file in ("full_occlusion.txt", "out_of_view.txt"):
            path = seq_dir / flag_file
            if path.exists():
                visible &= read_labels(path, boxes, annotation, seq_dir / "img") == 0
        return Sequence(name, FramePaths(seq_dir / "img", "{:08d}.jpg", len(boxes)), boxes, visible, self.name,
                        annotation)
