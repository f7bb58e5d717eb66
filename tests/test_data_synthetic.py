"""The embedded synthetic benchmark: GOT-10k layout, official toolkit compatibility, determinism, cache, CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tracker.data import GOT10k, SyntheticConfig, ensure_synthetic
from tracker.data.synthetic import MARKER, PRESETS, generate, parse_args

TINY = dict(train_sequences=3, val_sequences=2, frames=20, width=96, height=72, workers=1)
ANNOTATIONS = ("groundtruth.txt", "absence.label", "cover.label", "cut_by_image.label", "meta_info.ini")


def annotation_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.name in ANNOTATIONS or p.name == "list.txt"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return ensure_synthetic(SyntheticConfig(**TINY), tmp_path_factory.mktemp("cache"), progress=False)


def test_writes_got10k_layout(tiny):
    for split, count, prefix in (("train", 3, "GOT-10k_Train_"), ("val", 2, "GOT-10k_Val_")):
        names = (tiny / split / "list.txt").read_text().split()
        assert names == [f"{prefix}{i:06d}" for i in range(1, count + 1)]
        for name in names:
            d = tiny / split / name
            assert sorted(p.name for p in d.glob("*.jpg")) == [f"{i:08d}.jpg" for i in range(1, 21)]
            for f in ANNOTATIONS:
                assert (d / f).is_file()
            gt = np.loadtxt(d / "groundtruth.txt", delimiter=",")
            cover = np.loadtxt(d / "cover.label")
            absence = np.loadtxt(d / "absence.label")
            assert gt.shape == (20, 4) and cover.shape == absence.shape == (20,)
            assert set(np.unique(cover)) <= set(range(9)) and ((cover == 0) == (absence == 1)).all()
            present = absence == 0
            assert (gt[present, 2:] > 0).all() and (gt[~present, 2:] == 0).all()
            assert (gt[:, 0] >= 0).all() and (gt[:, 0] + gt[:, 2] <= 96 + 1e-6).all()  # clipped to the frame
    ds = GOT10k(tiny, "val")
    seq = ds.sequence(0)
    assert len(seq) == 20 and seq.image(0).size == (96, 72)


def test_official_toolkit_reads_it(tiny):
    got10k = pytest.importorskip("got10k.datasets", reason="the official GOT-10k toolkit (dev extra 'got10k')")
    for subset in ("train", "val"):
        ds = got10k.GOT10k(str(tiny), subset=subset, return_meta=True)
        img_files, anno, meta = ds[0]
        assert len(img_files) == len(anno) == 20
        assert meta["resolution"] == "(96, 72)" and meta["cover"].shape == (20,)


def test_toolkit_meta_parsing_without_the_toolkit(tiny):
    """The parse the official toolkit applies to meta_info.ini (header line, then `key: value` lines)."""
    text = (tiny / "val" / "GOT-10k_Val_000001" / "meta_info.ini").read_text()
    lines = text.strip().split("\n")
    assert lines[0] == "[METAINFO]"
    meta = dict(line.split(": ") for line in lines[1:])
    assert eval(meta["resolution"]) == (96, 72)  # the toolkit uses ast.literal_eval


def test_same_seed_same_annotations_whatever_the_workers(tiny, tmp_path):
    again = generate(SyntheticConfig(**{**TINY, "workers": 2}), tmp_path / "again", progress=False)
    assert annotation_bytes(again) == annotation_bytes(tiny)
    other = generate(SyntheticConfig(**{**TINY, "seed": 1, "train_sequences": 1, "val_sequences": 0}),
                     tmp_path / "other", progress=False)
    first = "train/GOT-10k_Train_000001/groundtruth.txt"
    assert annotation_bytes(other)[first] != annotation_bytes(tiny)[first]


def test_target_leaves_the_frame_and_is_marked_absent(tmp_path):
    cfg = SyntheticConfig(train_sequences=0, val_sequences=3, frames=50, width=128, height=96, workers=1,
                          out_of_view=1.0, occlusion=0.0)
    root = generate(cfg, tmp_path / "exit", progress=False)
    ds = GOT10k(root, "val")
    for i in range(len(ds)):
        seq = ds.sequence(i)
        absent = np.flatnonzero(~seq.visible)
        assert 1 <= len(absent) <= 25, f"sequence {i}: {len(absent)} absent frames"
        assert seq.visible[0] and seq.visible[absent[-1] + 1:].any(), "the target comes back"
        cut = np.loadtxt(root / "val" / seq.name / "cut_by_image.label")
        assert cut.any()  # on its way out it is cut by the image border


def test_cache_is_keyed_by_config_and_reused(tmp_path):
    cfg = SyntheticConfig(**{**TINY, "train_sequences": 1, "val_sequences": 1, "frames": 4})
    root = ensure_synthetic(cfg, tmp_path, progress=False)
    assert root == tmp_path / f"synthetic-{cfg.key()}" and (root / MARKER).is_file()
    stamp = (root / MARKER).stat().st_mtime_ns
    assert ensure_synthetic(cfg, tmp_path, progress=False) == root
    assert (root / MARKER).stat().st_mtime_ns == stamp  # reused, not regenerated
    # the preset's value given explicitly is the same content; another value is another benchmark
    same = SyntheticConfig(**{**TINY, "train_sequences": 1, "val_sequences": 1, "frames": 4,
                              "speed": PRESETS["medium"]["speed"], "workers": 2})
    assert same.key() == cfg.key()
    assert SyntheticConfig(**{**TINY, "difficulty": "hard"}).key() != SyntheticConfig(**TINY).key()


def test_refuses_to_overwrite_a_foreign_directory(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        ensure_synthetic(SyntheticConfig(**{**TINY, "root": str(tmp_path)}), progress=False)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_presets_and_explicit_knobs():
    assert SyntheticConfig(difficulty="easy").knobs()["distractors"] == 0
    assert SyntheticConfig(difficulty="easy", distractors=3).knobs()["distractors"] == 3
    assert parse_args(["frames=7", "occlusion=0.25", "object_size=[0.2,0.4]"]).knobs()["object_size"] == [0.2, 0.4]
    for bad, field in (("difficulty=extreme", "difficulty"), ("frames=1", "frames"), ("occlusion=1.5", "occlusion"),
                       ("object_size=[0.5,0.1]", "object_size")):
        with pytest.raises(ValueError, match=field):
            parse_args([bad])


def test_command_line(tmp_path):
    root = tmp_path / "cli"
    args = [sys.executable, "-m", "tracker.data.synthetic", f"root={root}", "train_sequences=1", "val_sequences=1",
            "frames=4", "width=64", "height=48", "seed=3", "difficulty=hard"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["root"] == str(root) and summary["seed"] == 3 and summary["distractors"] == 4
    assert (root / "train" / "GOT-10k_Train_000001" / "00000004.jpg").is_file()
    assert "RuntimeWarning" not in done.stderr
    bad = subprocess.run(args[:3] + ["colour=blue"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "colour" in bad.stderr
