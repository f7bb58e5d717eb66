"""One-pass evaluation: box maths, the pytracking and GOT-10k protocols and their corner cases, results files,
plots, and the `python -m tracker.metrics` app on a tiny GOT-10k-layout dataset."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tracker.config import compose
from tracker.evaluation import (OVERLAP_THRESHOLDS, ResultsError, centre_errors, centres_xywh, evaluate_sequences,
                                fill_predictions, got10k_ious, iou_xywh, load_results_dir, normalised_centre_errors,
                                plot_precision, plot_success, read_per_sequence, score_directories, score_sequences,
                                sequence_curves, write_results)
from tracker.evaluation.results import read_per_sequence_table

ROOT = Path(__file__).resolve().parents[1]
PERFECT_AUC = 100.0 * 20 / 21  # success at t = 1.0 needs IoU > 1: never


@dataclass
class Seq:
    """The fields scoring reads from a reader's Sequence."""

    name: str
    boxes: np.ndarray
    visible: np.ndarray
    dataset: str = "got10k"


def walk(n: int = 6, start=(20.0, 30.0), size=(40.0, 24.0)) -> np.ndarray:
    """Integer-valued boxes moving 3 px right and 2 px down per frame."""
    t = np.arange(n, dtype=np.float64)[:, None]
    return np.hstack([np.array(start) + t * [3.0, 2.0], np.tile(size, (n, 1))])


def seq(name: str, boxes: np.ndarray, visible=None, dataset: str = "got10k") -> Seq:
    return Seq(name, boxes, np.ones(len(boxes), bool) if visible is None else np.asarray(visible, bool), dataset)


# ------------------------------------------------------------------------------------------- box maths

def test_thresholds_are_pytrackings_21_with_last_exactly_one():
    assert len(OVERLAP_THRESHOLDS) == 21
    assert OVERLAP_THRESHOLDS[0] == 0.0 and OVERLAP_THRESHOLDS[-1] == 1.0 and OVERLAP_THRESHOLDS[10] == 0.5


def test_iou_hand_computed():
    gt = np.array([[0, 0, 10, 10]] * 4, float)
    pred = np.array([[0, 0, 10, 10], [5, 5, 10, 10], [0, 0, 10, 5], [10, 0, 10, 10]], float)
    # pixel-inclusive: [5, 5, 10, 10] covers pixels 5..14, overlapping 5..9 of 0..9: 5 x 5 = 25 of 175
    np.testing.assert_allclose(iou_xywh(pred, gt), [1.0, 25 / 175, 0.5, 0.0])
    np.testing.assert_allclose(iou_xywh(pred, gt, inclusive=False), [1.0, 25 / 175, 0.5, 0.0])
    with pytest.raises(ValueError, match="shape"):
        iou_xywh(np.zeros((3, 5)), np.zeros((3, 5)))


def test_centres_are_pixel_inclusive_and_errors_normalised_by_gt_size():
    np.testing.assert_allclose(centres_xywh(np.array([[0.0, 0, 10, 20]])), [[4.5, 9.5]])
    gt = np.array([[0.0, 0, 10, 20], [0, 0, 10, 20]])
    pred = np.array([[10.0, 0, 10, 20], [3, 4, 10, 20]])
    np.testing.assert_allclose(centre_errors(pred, gt), [10.0, 5.0])
    np.testing.assert_allclose(normalised_centre_errors(pred, gt), [1.0, np.hypot(0.3, 0.2)])


# ------------------------------------------------------------------------------------ pytracking protocol

def test_perfect_results_give_auc_20_of_21_and_every_other_metric_100():
    gts = {"a": walk(6), "b": walk(9, start=(5, 7), size=(13, 31))}
    scores = score_sequences(gts, [seq(n, b) for n, b in gts.items()])
    assert scores["auc"] == pytest.approx(PERFECT_AUC)  # 95.238: pytracking's thresholds end at 1.0, test ">"
    for key in ("op50", "op75", "precision", "norm_precision", "ao", "sr50", "sr75"):
        assert scores[key] == pytest.approx(100.0), key
    assert scores["sequences"] == 2 and scores["frames"] == 15


def test_perfect_fractional_boxes_still_give_20_of_21():
    """Uncapped, float rounding puts the IoU of identical fractional boxes above 1 in about 40% of frames."""
    rng = np.random.default_rng(0)
    gt = np.hstack([rng.uniform(0, 300, (400, 2)), rng.uniform(1, 90, (400, 2))])
    assert np.all(iou_xywh(gt, gt) <= 1.0)
    assert sequence_curves(gt, gt).success.mean() * 100 == pytest.approx(PERFECT_AUC)


def test_first_frame_is_replaced_by_ground_truth():
    gt = walk(5)
    pred = gt.copy()
    pred[0] = [500, 500, 3, 3]
    curves = sequence_curves(pred, gt)
    assert curves.success.mean() == pytest.approx(20 / 21) and curves.precision[20] == 1.0
    np.testing.assert_array_equal(fill_predictions(pred, gt)[0], gt[0])


def test_zero_size_predictions_take_the_previous_box():
    gt = walk(6)
    pred = gt.copy()
    pred[2] = [1, 1, 0, 0]
    pred[3] = [9, 9, 5, 0]  # a run of zero-size boxes all take the last real one
    filled = fill_predictions(pred, gt)
    np.testing.assert_array_equal(filled[2], gt[1])
    np.testing.assert_array_equal(filled[3], gt[1])
    np.testing.assert_array_equal(filled[[0, 1, 4, 5]], gt[[0, 1, 4, 5]])
    # pytracking refills before it sets frame 0, so a zero-size first prediction propagates as itself
    pred = gt.copy()
    pred[0] = pred[1] = [7, 7, 0, 4]
    np.testing.assert_array_equal(fill_predictions(pred, gt)[1], [7, 7, 0, 4])
    # frames without an annotation (NaN) are not refilled
    gt_nan = gt.copy()
    gt_nan[2] = np.nan
    pred = gt.copy()
    pred[2] = [1, 1, 0, 0]
    np.testing.assert_array_equal(fill_predictions(pred, gt_nan)[2], [1, 1, 0, 0])


def test_the_refill_changes_the_score():
    gt = walk(6)
    pred = gt.copy()
    pred[3] = [0, 0, 0, 0]
    assert sequence_curves(pred, gt).success[10] == 1.0  # frame 3 took frame 2's box, which still overlaps
    pred[3] = [0, 0, 1, 1]
    assert sequence_curves(pred, gt).success[10] == pytest.approx(5 / 6)


def test_invalid_ground_truth_frames_stay_in_the_denominator():
    gt = walk(4)
    gt[2, 2] = 0.0  # w = 0: not annotated
    scores = score_sequences({"a": gt}, [seq("a", gt)])
    assert scores["auc"] == pytest.approx(0.75 * PERFECT_AUC)
    assert scores["op50"] == pytest.approx(75.0)
    assert scores["precision"] == pytest.approx(75.0)
    assert scores["norm_precision"] == pytest.approx(75.0)  # SPEC: infinite error on invalid frames
    gt[1] = np.nan
    assert score_sequences({"a": walk(4)}, [seq("a", gt)])["precision"] == pytest.approx(50.0)


def test_lasot_visibility_invalidates_frames_only_when_set():
    gt = walk(4)
    visible = np.array([1, 1, 0, 1], bool)
    assert score_sequences({"a": gt}, [seq("a", gt, visible, "lasot")])["precision"] == pytest.approx(75.0)
    assert score_sequences({"a": gt}, [seq("a", gt, visible, "got10k")])["precision"] == pytest.approx(100.0)

    @dataclass
    class Flagged(Seq):
        visibility_invalidates: bool = True

    assert score_sequences({"a": gt}, [Flagged("a", gt, visible, "got10k")])["precision"] == pytest.approx(75.0)


def test_curves_are_averaged_over_sequences_not_frames():
    long, short = walk(9), walk(3)
    pred = {"long": long, "short": short.copy()}
    pred["short"][1:] += [200, 200, 0, 0]  # 1 of 3 frames right (the first)
    scores = score_sequences(pred, [seq("long", long), seq("short", short)])
    assert scores["precision"] == pytest.approx(100 * (1 + 1 / 3) / 2)


def test_bad_predictions_are_errors_naming_the_line():
    gt = walk(4)
    for bad in ([1, 2, np.nan, 4], [1, 2, -3, 4], [np.inf, 2, 3, 4]):
        pred = gt.copy()
        pred[2] = bad
        with pytest.raises(ResultsError, match="line 3"):
            sequence_curves(pred, gt)
    with pytest.raises(ResultsError, match="3 boxes for a sequence of 4 frames"):
        sequence_curves(gt[:3], gt)
    with pytest.raises(ResultsError, match="'b'"):
        score_sequences({"a": gt}, [seq("b", gt)])


# --------------------------------------------------------------------------------------- GOT-10k protocol

def test_got10k_ao_and_sr_hand_computed():
    gt_a = np.array([[0, 0, 10, 10]] * 3, float)
    pred_a = np.array([[50, 50, 1, 1],  # frame 0: never counted
                       [0, 0, 10, 10],  # IoU 1
                       [0, 0, 10, 5]], float)  # IoU 0.5: not above 0.5
    gt_b = np.array([[0, 0, 10, 10]] * 5, float)
    pred_b = np.array([[0, 0, 10, 10],
                       [0, 0, 10, 8],  # 0.8
                       [20, 20, 10, 10],  # 0
                       [0, 0, 10, 10],  # invisible: excluded
                       [0, 0, 8, 10]], float)  # 0.8
    visible_b = np.array([1, 1, 1, 0, 1], bool)
    np.testing.assert_allclose(got10k_ious(pred_a, gt_a), [1.0, 0.5])
    np.testing.assert_allclose(got10k_ious(pred_b, gt_b, visible_b), [0.8, 0.0, 0.8])
    scores = score_sequences({"a": pred_a, "b": pred_b}, [seq("a", gt_a), seq("b", gt_b, visible_b)])
    # pooled over the 5 counted frames (the per-sequence mean would be (0.75 + 0.533) / 2 = 64.2)
    assert scores["ao"] == pytest.approx(100 * (1 + 0.5 + 0.8 + 0 + 0.8) / 5)  # 62.0
    assert scores["sr50"] == pytest.approx(60.0)  # 1.0, 0.8, 0.8
    assert scores["sr75"] == pytest.approx(60.0)


def test_got10k_clips_boxes_to_the_image():
    gt = np.array([[0, 0, 10, 10]] * 2, float)
    pred = np.array([[0, 0, 10, 10], [-10, 0, 20, 10]], float)
    np.testing.assert_allclose(got10k_ious(pred, gt), [0.5])
    np.testing.assert_allclose(got10k_ious(pred, gt, image_size=(10, 10)), [1.0])
    scores = score_sequences({"a": pred}, [seq("a", gt)], image_sizes={"a": (10, 10)})
    assert scores["ao"] == pytest.approx(100.0)


def test_no_annotated_frame_after_the_first_gives_no_ao():
    gt = np.array([[0, 0, 10, 10], [np.nan] * 4], float)
    scores = score_sequences({"a": gt[[0, 0]]}, [seq("a", gt, [1, 0])])
    assert scores["ao"] is None and scores["sr50"] is None
    json.dumps(scores, allow_nan=False)


# -------------------------------------------------------------------------------------------- results I/O

@pytest.mark.parametrize("separator", [",", "\t", " ", ", "])
def test_results_files_with_any_separator(tmp_path, separator):
    boxes = walk(4) + 0.25
    (tmp_path / "a.txt").write_text("\n".join(separator.join(f"{v:g}" for v in row) for row in boxes) + "\n")
    loaded = load_results_dir(tmp_path, {"a": 4})
    np.testing.assert_allclose(loaded["a"], boxes)


def test_write_results_round_trips(tmp_path):
    boxes = walk(5) + 0.0625
    path = write_results(tmp_path / "ours", "seq-1", boxes)
    assert path == tmp_path / "ours" / "seq-1.txt"
    assert path.read_text().splitlines()[0] == "20.0625,30.0625,40.0625,24.0625"
    np.testing.assert_array_equal(load_results_dir(tmp_path / "ours")["seq-1"], boxes)
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["seq-1.txt"]
    for name in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(ValueError, match="sequence name"):
            write_results(tmp_path, name, boxes)


def test_write_results_is_atomic(tmp_path, monkeypatch):
    path = write_results(tmp_path, "a", walk(3))
    before = path.read_text()

    def crash(fname, *args, **kwargs):
        Path(fname).write_text("1,2,3,4\n")  # half written
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savetxt", crash)
    with pytest.raises(KeyboardInterrupt):
        write_results(tmp_path, "a", walk(5))
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_malformed_results_are_clear_errors(tmp_path):
    (tmp_path / "a.txt").write_text("1,2,3,4\n5,6,7\n")
    with pytest.raises(ResultsError, match=r"a\.txt, line 2"):
        load_results_dir(tmp_path, {"a": 2})
    (tmp_path / "a.txt").write_text("1,2,3,4\n5,6,7,x\n")
    with pytest.raises(ResultsError, match=r"a\.txt, line 2"):
        load_results_dir(tmp_path)
    (tmp_path / "a.txt").write_text("1,2,3,4\n5,6,-7,8\n")
    with pytest.raises(ResultsError, match=r"a\.txt, line 2"):
        load_results_dir(tmp_path)
    (tmp_path / "a.txt").write_text("1,2,3,4\n5,6,7,8\n")
    with pytest.raises(ResultsError, match=r"a\.txt: 2 boxes, but the sequence has 3 frames"):
        load_results_dir(tmp_path, {"a": 3})
    with pytest.raises(ResultsError, match=r"lacks 1 of 2 sequences: b\.txt"):
        load_results_dir(tmp_path, {"a": 2, "b": 2})
    with pytest.raises(ResultsError, match="does not exist"):
        load_results_dir(tmp_path / "nowhere")


# -------------------------------------------------------------------------------------------------- plots

def test_plots_show_every_tracker_with_its_score_best_first(tmp_path):
    gts = {"a": walk(12), "b": walk(12, start=(50, 40))}
    sequences = [seq(n, b) for n, b in gts.items()]
    static = {n: np.repeat(b[:1], len(b), axis=0) for n, b in gts.items()}
    scores = {"static": evaluate_sequences(static, sequences), "ours": evaluate_sequences(gts, sequences)}
    success = plot_success(scores, tmp_path / "success.png")
    precision = plot_precision(scores, tmp_path / "precision.png")
    with Image.open(success) as image:
        assert image.format == "PNG" and min(image.size) > 300
        ours, other = image.text["Description"].split("; ")
    assert ours == f"ours [{PERFECT_AUC:.1f}]" and other.startswith("static [")
    assert float(other[8:-1]) < PERFECT_AUC
    with Image.open(precision) as image:
        assert image.text["Description"].startswith("ours [100.0]; static [")


# ------------------------------------------------------------------------------------------ the CLI app

def _got10k_fixture(root: Path) -> dict[str, np.ndarray]:
    """A GOT-10k val split of two tiny sequences; in the second the target is absent in frame 3."""
    split = root / "val"
    split.mkdir(parents=True)
    boxes = {"GOT-10k_Val_000001": walk(5), "GOT-10k_Val_000002": walk(5, start=(4, 6), size=(16, 20))}
    boxes["GOT-10k_Val_000002"][3] = [0, 0, 0, 0]
    (split / "list.txt").write_text("\n".join(boxes) + "\n")
    for name, gt in boxes.items():
        seq_dir = split / name
        seq_dir.mkdir()
        for i in range(len(gt)):
            Image.new("RGB", (96, 80), (i * 40, 90, 160)).save(seq_dir / f"{i + 1:08d}.jpg")
        np.savetxt(seq_dir / "groundtruth.txt", gt, fmt="%.4f", delimiter=",")
        absent = (gt[:, 2] == 0).astype(int)
        (seq_dir / "absence.label").write_text("\n".join(map(str, absent)) + "\n")
        (seq_dir / "cover.label").write_text("\n".join(str(0 if a else 8) for a in absent) + "\n")
        (seq_dir / "cut_by_image.label").write_text("0\n" * len(gt))
        (seq_dir / "meta_info.ini").write_text("[METAINFO]\nobject_class: thing\nresolution: (96, 80)\n")
    return boxes


@pytest.fixture
def got10k(tmp_path):
    gts = _got10k_fixture(tmp_path / "got10k")
    for name, gt in gts.items():
        write_results(tmp_path / "ours", name, gt)
        write_results(tmp_path / "static", name, np.repeat(gt[:1], len(gt), axis=0))
    return tmp_path


def test_cli_scores_and_compares_trackers(got10k):
    out = got10k / "report"
    command = [sys.executable, "-m", "tracker.metrics", f"results=[{got10k / 'ours'},{got10k / 'static'}]",
               "names=[ours,static]", "data=got10k", f"data.root={got10k / 'got10k'}", "data.split=val",
               f"output_dir={out}", "progress=false", f"hydra.run.dir={got10k / 'hydra'}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # sequence 1: 5 valid frames of 5; sequence 2: 4 of 5 (absent frame: invalid, still counted)
    assert result["name"] == "ours"
    assert result["auc"] == pytest.approx((1 + 0.8) / 2 * PERFECT_AUC, abs=1e-3)
    assert result["precision"] == pytest.approx(90.0) and result["norm_precision"] == pytest.approx(90.0)
    assert result["ao"] == pytest.approx(100.0) and result["sr75"] == pytest.approx(100.0)  # absent frame excluded
    static = result["trackers"]["static"]
    assert static["auc"] < result["auc"] and static["ao"] < 100.0
    assert result["trackers"]["ours"]["auc"] == result["auc"]
    assert json.loads((out / "metrics.json").read_text()) == result
    for kind in ("success", "precision", "norm_precision"):
        assert Path(result["plots"][kind]).is_file()
    with Image.open(result["plots"]["success"]) as image:
        assert image.text["Description"].startswith(f"ours [{result['auc']:.1f}]; static [")
    table = (out / "per_sequence.csv").read_text().splitlines()
    assert table[0].startswith("tracker,sequence,auc") and len(table) == 1 + 2 * 2
    both = read_per_sequence_table(out)  # every tracker in one read, one column each
    assert both.columns.tolist() == ["ours", "static"] and len(both) == 2
    for tracker in ("ours", "static"):
        assert both[tracker].equals(read_per_sequence(out, tracker).rename(tracker))
    assert read_per_sequence(out, "nobody") is None and read_per_sequence_table(out / "missing") is None


def test_cli_errors_name_the_file_before_scoring(got10k):
    def run(*overrides):
        cfg = compose("metrics", ["data=got10k", f"data.root={got10k / 'got10k'}", "progress=false",
                                  "plots=false", *overrides])
        return score_directories(cfg, got10k / "out")

    with pytest.raises(ValueError, match="results is required"):
        run()
    with pytest.raises(ResultsError, match="nowhere is not a directory"):
        run(f"results={got10k / 'nowhere'}")
    with pytest.raises(ValueError, match="one name per results directory"):
        run(f"results=[{got10k / 'ours'},{got10k / 'static'}]", "names=[ours]")
    with pytest.raises(ValueError, match="max_sequences=0"):
        run(f"results={got10k / 'ours'}", "max_sequences=0")
    (got10k / "ours" / "GOT-10k_Val_000002.txt").write_text("1,2,3,4\n")
    with pytest.raises(ResultsError, match="GOT-10k_Val_000002.txt: 1 boxes, but the sequence has 5 frames"):
        run(f"results={got10k / 'ours'}")
    first_only = run(f"results={got10k / 'ours'}", "max_sequences=1")  # the broken second file is not read
    assert first_only["auc"] == pytest.approx(PERFECT_AUC) and first_only["sequences"] == 1
    assert first_only["plots"] == {} and (got10k / "out" / "metrics.json").is_file()
