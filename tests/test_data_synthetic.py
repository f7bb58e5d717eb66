"""The embedded synthetic benchmark: GOT-10k layout, official toolkit compatibility, determinism, cache, CLI."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tracker.data.synthetic as synthetic
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


def _generator(root: Path, *args: str) -> subprocess.Popen:
    """`python -m tracker.data.synthetic` building a tiny benchmark at `root`, in its own process."""
    settings = {**TINY, "root": str(root)}
    return subprocess.Popen([sys.executable, "-m", "tracker.data.synthetic",
                             *[f"{k}={v}" for k, v in settings.items()], *args],
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_two_processes_asking_for_one_benchmark_build_it_once(tmp_path):
    """A shared data cache (several sweep workers, or hosts on one file system): the second process waits on the
    lock for the first and reads what it built."""
    outputs = [p.communicate(timeout=300) for p in [_generator(tmp_path / "bench") for _ in range(2)]]
    assert len({json.loads(out)["root"] for out, _ in outputs}) == 1
    assert sum("synthetic benchmark written to" in err for _, err in outputs) == 1, outputs
    assert (tmp_path / "bench" / MARKER).is_file()


def test_a_builder_killed_midway_leaves_no_half_written_benchmark(tmp_path):
    import signal
    import time

    root = tmp_path / "bench"
    proc = _generator(root, "train_sequences=40", "frames=60")
    deadline = time.monotonic() + 120
    while not any(tmp_path.glob(".bench.partial-*/**/*.jpg")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not root.exists() and list(tmp_path.glob(".bench.partial-*"))  # half-written, never under its name
    cfg = SyntheticConfig(**{**TINY, "root": str(root)})
    assert ensure_synthetic(cfg, tmp_path, progress=False) == root and (root / MARKER).is_file()
    assert not list(tmp_path.glob(".bench.partial-*"))  # the dead builder's leftovers went with the next build


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


# ----------------------------------------------------------------------------------------------- held-out sources

HELD_OUT_TINY = dict(train_sequences=0, val_sequences=2, frames=4, width=64, height=64, workers=1, seed=7,
                     difficulty="hard", sources="held_out")


def test_default_key_is_unchanged():
    """Caches and trunks on disk are keyed by it: `sources` enters the content only when not "default"."""
    cfg = SyntheticConfig()
    old_fields = ("train_sequences", "val_sequences", "frames", "seed", "width", "height", "jpeg_quality")
    old_content = {"version": synthetic.GENERATOR_VERSION, **{f: getattr(cfg, f) for f in old_fields}, **cfg.knobs()}
    assert cfg.content() == old_content and "sources" not in cfg.content()
    assert cfg.key() == hashlib.sha1(json.dumps(old_content, sort_keys=True).encode()).hexdigest()[:12]
    assert cfg.key() == "3abfcc7361c2"  # read before the option existed
    held_out = SyntheticConfig(sources="held_out")
    assert held_out.content()["sources"] == "held_out" and held_out.key() != cfg.key()


def test_bad_sources_is_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"synthetic\.sources='x' is not allowed: one of \['default', 'held_out', 'varied'\]"):
        SyntheticConfig(sources="x")
    with pytest.raises(ValueError, match="sources"):
        parse_args(["sources=x"])
    assert parse_args(["sources=held_out"]).sources == "held_out"


def test_held_out_images_are_none_of_the_default_ones():
    default, held_out = synthetic.SOURCES["default"], synthetic.SOURCES["held_out"]
    assert default.colour == synthetic.COLOUR_IMAGES and default.gray == synthetic.GRAY_IMAGES
    default_names = set(default.colour + default.gray)
    held_out_names = set(held_out.colour + held_out.gray)
    assert held_out_names and held_out_names.isdisjoint(default_names)
    assert set(held_out.tinted_targets) <= set(held_out.gray)
    # by pixels too: a name can alias another (skimage.data.cat is chelsea)
    digest = lambda image: hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()  # noqa: E731
    default_pixels = {digest(i) for images in synthetic.textures("default") for i in images}
    colour, gray = synthetic.textures("held_out")
    assert all(i.dtype == np.uint8 and i.ndim == 3 and i.shape[2] == 3 for i in colour)
    assert all(i.dtype == np.uint8 and i.ndim == 2 for i in gray)
    assert all(min(i.shape[:2]) >= 100 and i.std() > 9 for i in colour + gray)  # textured, not tiny
    assert {digest(i) for i in colour + gray}.isdisjoint(default_pixels)


def test_held_out_rendering_draws_only_held_out_images(monkeypatch):
    loaded, asked, drawn = [], [], []
    load, textures, source_image = synthetic._load, synthetic.textures, synthetic._source_image
    monkeypatch.setattr(synthetic, "_load", lambda name: loaded.append(name) or load(name))
    monkeypatch.setattr(synthetic, "textures", lambda source="default": asked.append(source) or textures(source))
    monkeypatch.setattr(synthetic, "_source_image", lambda *a, **k: drawn.append(source_image(*a, **k)) or drawn[-1])
    textures.cache_clear()  # load the images again, through the recording _load
    cfg = SyntheticConfig(**{**HELD_OUT_TINY, "occlusion": 1.0})
    for index in range(2):
        synthetic.render_sequence(cfg, "val", index)
    held_out = synthetic.SOURCES["held_out"]
    assert set(asked) == {"held_out"}
    assert loaded and set(loaded) <= set(held_out.colour + held_out.gray)
    colour, gray = textures("held_out")
    assert len(drawn) >= 4  # a target, a background and an occluder per sequence
    for image in drawn:  # a held-out colour image itself, or a tinted held-out gray one
        assert any(image is c for c in colour) or any(image.shape == (*g.shape, 3) for g in gray)


def test_held_out_benchmark_for_evaluation_only(tmp_path):
    cfg = SyntheticConfig(**HELD_OUT_TINY)
    root = ensure_synthetic(cfg, tmp_path, progress=False)
    assert root.name == f"synthetic-{cfg.key()}"
    assert json.loads((root / MARKER).read_text())["sources"] == "held_out"
    assert len(GOT10k(root, "train")) == 0
    val = GOT10k(root, "val")
    assert len(val) == 2
    seq = val.sequence(1)
    assert len(seq) == 4 and seq.image(0).size == (64, 64) and seq.visible[0]
    # a different benchmark from the default sources' with the same knobs
    default = generate(SyntheticConfig(**{**HELD_OUT_TINY, "sources": "default"}), tmp_path / "default",
                       progress=False)
    first = "val/GOT-10k_Val_000001/00000001.jpg"
    assert (root / first).read_bytes() != (default / first).read_bytes()


def test_synthetic_test_preset_evaluates_and_refuses_training(tmp_path, monkeypatch):
    """conf/data/synthetic_test.yaml: the held-out benchmark, read for evaluation; it has nothing to train on."""
    from tracker.config import compose
    from tracker.data import build_pair_dataset, build_reader, check_data, to_data_conf

    monkeypatch.setenv("LIGHTTRACK_SYNTHETIC_ROOT", str(tmp_path / "default-benchmark"))  # not read by it
    preset = compose("train", ["data=synthetic_test"]).data
    data = to_data_conf(preset)
    assert data.root is None and data.split == "val"
    generate_conf = data.generate
    assert (generate_conf.train_sequences, generate_conf.val_sequences, generate_conf.seed) == (0, 25, 7)
    assert (generate_conf.difficulty, generate_conf.sources) == ("hard", "held_out")
    small = compose("train", ["data=synthetic_test", f"data.cache_dir={tmp_path}", "data.generate.val_sequences=2",
                              "data.generate.frames=4", "data.generate.width=64", "data.generate.height=64",
                              "data.generate.workers=1"]).data
    check_data(small, train=False)  # what evaluation runs first
    reader = build_reader(small)
    assert reader.split == "val" and len(reader) == 2
    assert reader.root.parent == tmp_path and reader.root.name == f"synthetic-{to_data_conf(small).generate.key()}"
    with pytest.raises(ValueError, match="no sequence"):
        build_pair_dataset(small, pairs_per_epoch=2)


def test_varied_sources_mix_procedural_and_recoloured_textures_and_keep_held_out_images_out():
    """sources=varied: the default images (never a held-out one), half the draws procedural textures (textured,
    deterministic per seed), half the rest recoloured; the default source draws exactly what it always did."""
    import numpy as np

    from tracker.data.synthetic import SOURCES, _source_image, procedural_texture, textures

    a, b = procedural_texture(np.random.default_rng(3)), procedural_texture(np.random.default_rng(3))
    assert a.shape == (256, 256, 3) and a.dtype == np.uint8 and np.array_equal(a, b) and a.std() > 10
    assert SOURCES["varied"].colour == SOURCES["default"].colour and SOURCES["varied"].gray == SOURCES["default"].gray
    default_colour = textures("default")[0]
    draws = [_source_image(np.random.default_rng(i), "varied", colour_only=True) for i in range(40)]
    as_is = sum(any(d.shape == c.shape and np.array_equal(d, c) for c in default_colour) for d in draws)
    assert 0 < as_is < 20  # some images unchanged, most procedural or recoloured
    rng_default = [_source_image(np.random.default_rng(i), "default", colour_only=True) for i in range(5)]
    assert all(any(d is c for c in default_colour) for d in rng_default)
    assert SyntheticConfig(sources="varied").key() != SyntheticConfig().key()
