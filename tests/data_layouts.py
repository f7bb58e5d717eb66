"""Tiny datasets in the real on-disk layouts of GOT-10k, LaSOT, TrackingNet and COCO, for the reader tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_jpg(path: Path, w: int = 64, h: int = 48, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def box_lines(boxes) -> str:
    return "".join(",".join(f"{v:.4f}" for v in box) + "\n" for box in boxes)


def make_got10k(root: Path, split: str = "train", sequences: dict | None = None) -> dict:
    """sequences: name -> dict(boxes=..., absence=..., cover=...). Writes ROOT/<split>/..."""
    sequences = sequences or {
        "GOT-10k_Train_000001": dict(boxes=[[10, 10, 20, 10]] * 4, absence=[0, 1, 0, 0], cover=[8, 0, 3, 8]),
        "GOT-10k_Train_000002": dict(boxes=[[5, 6, 7, 8], [5, 6, 0, 8], [5, 6, 7, 8]], absence=[0, 0, 0],
                                     cover=[8, 8, 8]),
    }
    split_dir = root / split
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / "list.txt").write_text("".join(f"{n}\n" for n in sequences))
    for name, seq in sequences.items():
        d = split_dir / name
        d.mkdir(exist_ok=True)
        (d / "groundtruth.txt").write_text(box_lines(seq["boxes"][:1] if split == "test" else seq["boxes"]))
        if split != "test":
            for label in ("absence", "cover"):
                (d / f"{label}.label").write_text("".join(f"{v}\n" for v in seq[label]))
            (d / "cut_by_image.label").write_text("0\n" * len(seq["boxes"]))
            (d / "meta_info.ini").write_text("[METAINFO]\nresolution: (64, 48)\n")
        for i in range(len(seq["boxes"])):
            write_jpg(d / f"{i + 1:08d}.jpg")
    return sequences


def make_lasot(root: Path) -> None:
    """airplane-1 (4 frames: frame 2 fully occluded, frame 3 out of view), airplane-2, cat-1."""
    seqs = {
        ("airplane", 1): ([[1, 2, 3, 4]] * 4, [0, 1, 0, 0], [0, 0, 1, 0]),
        ("airplane", 2): ([[5, 5, 10, 10]] * 3, [0, 0, 0], [0, 0, 0]),
        ("cat", 1): ([[2, 2, 8, 8]] * 2, [0, 0], [0, 0]),
    }
    for (cls, n), (boxes, occlusion, out_of_view) in seqs.items():
        d = root / cls / f"{cls}-{n}"
        d.mkdir(parents=True)
        (d / "groundtruth.txt").write_text(box_lines(boxes))
        (d / "full_occlusion.txt").write_text(",".join(map(str, occlusion)) + "\n")
        (d / "out_of_view.txt").write_text(",".join(map(str, out_of_view)) + "\n")
        for i in range(len(boxes)):
            write_jpg(d / "img" / f"{i + 1:08d}.jpg")


def make_trackingnet(root: Path) -> None:
    """TRAIN_0: seqA (3 frames), TRAIN_1: seqB (2 frames, the second with w=0); TEST: seqT (first box only)."""
    chunks = {"TRAIN_0": {"seqA": [[1, 1, 5, 5]] * 3}, "TRAIN_1": {"seqB": [[2, 2, 4, 4], [2, 2, 0, 4]]},
              "TEST": {"seqT": [[3, 3, 6, 6]] * 4}}
    for chunk, seqs in chunks.items():
        for name, boxes in seqs.items():
            (root / chunk / "anno").mkdir(parents=True, exist_ok=True)
            (root / chunk / "anno" / f"{name}.txt").write_text(box_lines(boxes[:1] if chunk == "TEST" else boxes))
            for i in range(len(boxes)):
                write_jpg(root / chunk / "frames" / name / f"{i}.jpg")


def make_coco(root: Path, split: str = "train2017") -> None:
    """Two images, three instances; instance 12 is a crowd (skipped), instance 13 has zero width."""
    images = [{"id": 1, "file_name": "000000000001.jpg"}, {"id": 2, "file_name": "000000000002.jpg"}]
    annotations = [
        {"id": 11, "image_id": 1, "bbox": [4, 5, 20, 10], "iscrowd": 0},
        {"id": 12, "image_id": 1, "bbox": [0, 0, 30, 30], "iscrowd": 1},
        {"id": 13, "image_id": 2, "bbox": [1, 1, 0, 5], "iscrowd": 0},
        {"id": 14, "image_id": 2, "bbox": [10, 10, 12, 12], "iscrowd": 0},
    ]
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / f"instances_{split}.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": []}))
    for image in images:
        write_jpg(root / split / image["file_name"])
