"""The data check a trial and an evaluation run first: a broken data set fails before any work, with one error
naming the file or the sequence, instead of mid-epoch or mid-evaluation."""
from __future__ import annotations

import logging
import os

import pytest

from data_layouts import box_lines, make_got10k
from tracker.config import compose
from tracker.data import (AnnotationError, FrameMissingError, FrameUnreadableError, GOT10k, check_dataset,
                          load_image)

SEQ = "GOT-10k_Val_000001"


def _val(tmp_path, boxes=None, frames: int = 4):
    """A GOT-10k val split of one sequence of `frames` 64x48 frames (box inside the image unless given)."""
    boxes = boxes or [[10, 10, 20, 10]] * frames
    make_got10k(tmp_path, "val", {SEQ: dict(boxes=boxes, absence=[0] * len(boxes), cover=[8] * len(boxes))})
    return tmp_path / "val" / SEQ


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_frame_is_named_by_the_check_and_by_the_loader(tmp_path):
    seq = _val(tmp_path)
    _truncate(seq / "00000004.jpg")  # the last frame: the check decodes it
    with pytest.raises(FrameUnreadableError, match=str(seq / "00000004.jpg")):
        check_dataset(GOT10k(tmp_path, "val"))
    _truncate(seq / "00000002.jpg")  # a middle frame the check does not decode: the loader names it
    with pytest.raises(FrameUnreadableError, match=str(seq / "00000002.jpg")):
        load_image(seq / "00000002.jpg")


@pytest.mark.parametrize("first,fault", [([float("nan")] * 4, "not finite"), ([10, 10, 0, 10], "positive"),
                                         ([500, 400, 20, 10], "outside its 64x48 image")])
def test_a_bad_first_box_names_the_sequence_and_file(tmp_path, first, fault):
    seq = _val(tmp_path, [first] + [[10, 10, 20, 10]] * 3)
    reader = GOT10k(tmp_path, "val")
    with pytest.raises(AnnotationError, match=fault) as error:
        check_dataset(reader, first_boxes=True)
    assert SEQ in str(error.value) and str(seq / "groundtruth.txt") in str(error.value)
    assert check_dataset(reader) == 1  # training data: the sampler only draws visible frames


def test_a_short_groundtruth_is_blamed_on_itself_not_on_a_label_file(tmp_path):
    seq = _val(tmp_path)
    (seq / "groundtruth.txt").write_text(box_lines([[10, 10, 20, 10]] * 3))  # 3 boxes, 4 frames and labels
    message = f"{seq / 'groundtruth.txt'}: 3 boxes for 4 frames"
    with pytest.raises(AnnotationError, match=message):
        GOT10k(tmp_path, "val").sequence(0)
    for label in ("absence", "cover"):  # without label files only the check sees it
        (seq / f"{label}.label").unlink()
    with pytest.raises(AnnotationError, match=message):
        check_dataset(GOT10k(tmp_path, "val"))


def test_a_missing_or_extra_frame_is_named(tmp_path):
    seq = _val(tmp_path)
    (seq / "00000002.jpg").rename(seq / "00000009.jpg")  # as many files as boxes, one misnumbered
    with pytest.raises(FrameMissingError, match=str(seq / "00000002.jpg")):
        check_dataset(GOT10k(tmp_path, "val"))
    (seq / "00000009.jpg").rename(seq / "00000002.jpg")
    (seq / "00000005.jpg").write_bytes((seq / "00000001.jpg").read_bytes())
    with pytest.raises(AnnotationError, match="4 boxes for 5 frames"):
        check_dataset(GOT10k(tmp_path, "val"))


def test_a_passed_check_runs_once_until_the_data_set_changes(tmp_path):
    _val(tmp_path / "data")
    reader, cache = GOT10k(tmp_path / "data", "val"), tmp_path / "checks"
    assert check_dataset(reader, cache_dir=cache) == 1
    assert check_dataset(reader, cache_dir=cache) == 0  # remembered
    split_dir = tmp_path / "data" / "val"
    stat = split_dir.stat()
    os.utime(split_dir, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert check_dataset(GOT10k(tmp_path / "data", "val"), cache_dir=cache) == 1


def test_the_check_stops_at_its_time_budget(tmp_path, caplog):
    _val(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert check_dataset(GOT10k(tmp_path, "val"), budget=0.0) == 0
    assert "checked 0 of 1 sequences" in caplog.text


def test_evaluation_and_trial_check_the_data_before_any_work(tmp_path, monkeypatch):
    from tracker.evaluation import evaluate_model
    from tracker.task import run_trial

    monkeypatch.setenv("LIGHTTRACK_RUNS", str(tmp_path / "runs"))
    _val(tmp_path / "got", [[float("nan")] * 4] + [[10, 10, 20, 10]] * 3)
    make_got10k(tmp_path / "got", "train")
    data = ["data=got10k", f"data.root={tmp_path / 'got'}", f"data.cache_dir={tmp_path / 'cache'}"]
    with pytest.raises(AnnotationError, match=SEQ):
        evaluate_model(None, compose("evaluate", data), tmp_path / "eval", device=None, progress=False)
    assert not (tmp_path / "eval").exists()
    _truncate(tmp_path / "got" / "train" / "GOT-10k_Train_000002" / "00000003.jpg")
    with pytest.raises(FrameUnreadableError, match="GOT-10k_Train_000002/00000003.jpg"):
        run_trial(compose("train", ["trainer=tiny", *data]), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
