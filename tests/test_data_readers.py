"""The dataset readers on tiny fixtures in the real layouts, and their errors on bad data."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from data_layouts import make_coco, make_got10k, make_lasot, make_trackingnet
from tracker.data import (COCO, GOT10k, AnnotationError, DatasetNotFoundError, FrameMissingError, LaSOT, PairDataset,
                          PairProcessing, TrackingNet)
from tracker.data.processing import CropConf


def test_got10k_train_reads_boxes_frames_and_visibility(tmp_path):
    make_got10k(tmp_path)
    ds = GOT10k(tmp_path, "train")
    assert ds.sequence_names() == ["GOT-10k_Train_000001", "GOT-10k_Train_000002"]
    seq = ds.sequence("GOT-10k_Train_000001")
    assert len(seq) == 4 and seq.boxes.shape == (4, 4)
    np.testing.assert_allclose(seq.boxes[0], [10, 10, 20, 10])
    # frame 2 absent, cover 0 there; frame 3 partly covered but visible
    assert seq.visible.tolist() == [True, False, True, True]
    assert seq.frames[0].name == "00000001.jpg" and seq.frames[-1].name == "00000004.jpg"
    assert seq.image(3).size == (64, 48)
    assert ds.sequence(1).visible.tolist() == [True, False, True]  # zero width is not visible


def test_got10k_vot_train_list_of_ids(tmp_path):
    make_got10k(tmp_path)
    (tmp_path / "vot_train.txt").write_text("1\n")
    ds = GOT10k(tmp_path, "vot-train", seq_list=tmp_path / "vot_train.txt")
    assert ds.sequence_names() == ["GOT-10k_Train_000002"]
    with pytest.raises(ValueError, match="seq_list"):
        GOT10k(tmp_path, "vot-train")
    (tmp_path / "bad.txt").write_text("7\n")
    with pytest.raises(AnnotationError, match="outside"):
        GOT10k(tmp_path, "train", seq_list=tmp_path / "bad.txt")


def test_got10k_test_split_has_only_the_first_box(tmp_path):
    make_got10k(tmp_path, "test", {"GOT-10k_Test_000001": dict(boxes=[[1, 2, 3, 4]] * 5)})
    seq = GOT10k(tmp_path, "test").sequence(0)
    assert len(seq) == 5 and seq.visible.tolist() == [True] + [False] * 4
    assert np.isnan(seq.boxes[1:]).all()


def test_lasot_visibility_from_occlusion_and_out_of_view(tmp_path):
    make_lasot(tmp_path)
    ds = LaSOT(tmp_path)
    assert ds.sequence_names() == ["airplane-1", "airplane-2", "cat-1"]
    seq = ds.sequence("airplane-1")
    assert seq.visible.tolist() == [True, False, False, True]
    assert seq.frames[1] == tmp_path / "airplane" / "airplane-1" / "img" / "00000002.jpg"
    (tmp_path / "test_set.txt").write_text("cat-1\nairplane-2\n")
    assert LaSOT(tmp_path, seq_list=tmp_path / "test_set.txt").sequence_names() == ["cat-1", "airplane-2"]


def test_trackingnet_chunks_and_zero_based_frames(tmp_path):
    make_trackingnet(tmp_path)
    ds = TrackingNet(tmp_path)
    assert ds.sequence_names() == ["TRAIN_0/seqA", "TRAIN_1/seqB"]
    assert TrackingNet(tmp_path, chunks=[1]).sequence_names() == ["TRAIN_1/seqB"]
    seq = ds.sequence("TRAIN_1/seqB")
    assert seq.frames[0].name == "0.jpg" and seq.visible.tolist() == [True, False]
    test = TrackingNet(tmp_path, "test").sequence(0)
    assert len(test) == 4 and test.visible.tolist() == [True, False, False, False]


def test_coco_instances_are_static_sequences(tmp_path):
    make_coco(tmp_path)
    ds = COCO(tmp_path)
    assert not ds.is_video
    assert ds.sequence_names() == ["11", "13", "14"]  # the crowd instance is left out
    seq = ds.sequence("14")
    assert len(seq) == 1 and seq.frames[0] == tmp_path / "train2017" / "000000000002.jpg"
    np.testing.assert_allclose(seq.boxes, [[10, 10, 12, 12]])
    assert ds.sequence("13").visible.tolist() == [False]


@pytest.mark.parametrize("reader", [GOT10k, LaSOT, TrackingNet, COCO])
def test_missing_root_names_path_and_layout(tmp_path, reader):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as error:
        reader(missing)
    assert str(missing) in str(error.value) and reader.layout in str(error.value)


def test_missing_list_file_names_the_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="list.txt.*expected the layout"):
        GOT10k(tmp_path, "val")


def test_malformed_groundtruth_line_names_file_and_line(tmp_path):
    make_got10k(tmp_path)
    gt = tmp_path / "train" / "GOT-10k_Train_000001" / "groundtruth.txt"
    lines = gt.read_text().splitlines()
    lines[2] = "10,10,abc,10"
    gt.write_text("\n".join(lines) + "\n")
    with pytest.raises(AnnotationError) as error:
        GOT10k(tmp_path, "train").sequence(0)
    assert str(gt) in str(error.value) and "line 3" in str(error.value)


def test_label_length_mismatch_names_the_file(tmp_path):
    make_got10k(tmp_path)
    label = tmp_path / "train" / "GOT-10k_Train_000002" / "absence.label"
    label.write_text("0\n0\n")
    with pytest.raises(AnnotationError, match="absence.label: 2 flags for 3 frames"):
        GOT10k(tmp_path, "train").sequence(1)


def test_missing_frame_names_the_file(tmp_path):
    make_got10k(tmp_path)
    frame = tmp_path / "train" / "GOT-10k_Train_000001" / "00000003.jpg"
    frame.unlink()
    with pytest.raises(FrameMissingError, match=str(frame)):
        GOT10k(tmp_path, "train").sequence(0).image(2)


def test_sequence_without_visible_frames_is_skipped_with_a_warning(tmp_path):
    make_got10k(tmp_path, sequences={
        "GOT-10k_Train_000001": dict(boxes=[[1, 1, 8, 8]] * 3, absence=[1, 1, 1], cover=[0, 0, 0]),
        "GOT-10k_Train_000002": dict(boxes=[[20, 20, 10, 10]] * 3, absence=[0, 0, 0], cover=[8, 8, 8]),
    })
    small = PairProcessing(CropConf(32, 2.0), CropConf(64, 5.0, 0.5, 4.5))
    pairs = PairDataset([(GOT10k(tmp_path, "train"), 1.0)], small, pairs_per_epoch=20, max_gap=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = [pairs[i] for i in range(20)]
    messages = [str(w.message) for w in caught]
    assert any("GOT-10k_Train_000001 skipped" in m for m in messages)
    assert len([m for m in messages if "skipped" in m]) == 1  # warned once, not per draw
    assert all(s["search"].shape == (3, 64, 64) for s in samples)
