"""One trial end to end on CPU at tiny sizes: artefacts, resume, NaN, fidelities, the evaluate CLI; the trainer's
report_every and deterministic, cache keys free of fields without effect, validation before anything is written."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from tracker.model.checkpoint import load_checkpoint
from tracker.config import CONF_DIR, compose
from tracker.data import DataConfigError, pairs_key
from tracker.evaluation import StaticBoxTracker, clip_box, load_model, track_sequence
from tracker.engine import NonFiniteLossError
from tracker.task import TrialResult, run_trial
from tracker.train import Trial, trial_data

ROOT = CONF_DIR.parent
TINY_DATA = ["data.generate.train_sequences=4", "data.generate.val_sequences=2", "data.generate.frames=12",
             "data.generate.width=128", "data.generate.height=96"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Data cache and runs root shared by the module's tests (the synthetic set is generated once)."""
    root = tmp_path_factory.mktemp("lighttrack")
    return root


@pytest.fixture(autouse=True)
def _runs_root(workspace, monkeypatch):
    monkeypatch.setenv("LIGHTTRACK_RUNS", str(workspace / "runs"))


def _cfg(workspace, *overrides):
    return compose("train", ["trainer=tiny", "latency=quick", f"data.cache_dir={workspace / 'data'}", *TINY_DATA, *overrides])


def test_tiny_trial_writes_every_artefact(workspace, tmp_path):
    trial = run_trial(_cfg(workspace, "head=dsconv"), tmp_path / "run", progress=False)
    assert isinstance(trial, TrialResult) and trial.head["block"] == "dsconv" and trial.fidelity == "full"
    assert trial.timings["seconds"] >= trial.timings["train_seconds"] > 0
    result = trial.figures()
    run = tmp_path / "run"
    for name in ["config.yaml", "metrics.json", "metrics.csv", "checkpoints/last.pt", "plots/training.png",
                 "plots/success_plot.png", "plots/precision_plot.png", "plots/per_sequence.csv"]:
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "results" / "model").iterdir()) == sorted(
        p.name for p in (run / "results" / "static").iterdir())
    assert len(list((run / "results" / "model").glob("*.txt"))) == 2
    assert json.loads((run / "metrics.json").read_text()) == json.loads(json.dumps(result, default=str))
    for key in ["auc", "op50", "precision", "ao", "static_auc", "head_macs", "head_params", "model_macs",
                "head_latency_ms", "fps", "run_dir"]:
        assert key in result, key
    assert result["head_params"] == 14_466
    assert len(pd.read_csv(run / "metrics.csv")) == 2  # one row per epoch
    assert not (run / "tensorboard").exists()  # no experiment logger unless asked for


def test_same_config_and_seed_give_the_same_metrics(workspace, tmp_path):
    a = run_trial(_cfg(workspace), tmp_path / "a", progress=False)
    b = run_trial(_cfg(workspace), tmp_path / "b", progress=False)
    assert a.history["final_train_loss"] == b.history["final_train_loss"] and a.metrics["auc"] == b.metrics["auc"]


def test_resume_after_interruption_matches_an_uninterrupted_run(workspace, tmp_path):
    full = Trial(_cfg(workspace, "trainer.epochs=3"), tmp_path / "full", progress=False).train()

    def interrupt(epoch, stats):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trial(_cfg(workspace, "trainer.epochs=3"), tmp_path / "cut", on_epoch_end=interrupt, progress=False).train()
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["epoch"] == 1
    resumed = Trial(_cfg(workspace, "trainer.epochs=3"), tmp_path / "cut", progress=False).train()
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert len(pd.read_csv(tmp_path / "cut" / "metrics.csv")) == 3


def test_nan_loss_stops_with_the_step(workspace, tmp_path):
    # a divergent learning rate: the first step blows the weights up, the second loss is not finite
    with pytest.raises(NonFiniteLossError, match=r"loss became (nan|inf) at epoch 1, step 1"):
        Trial(_cfg(workspace, "trainer.lr=1e30", "trainer.epochs=1"), tmp_path / "nan", progress=False).train()
    assert not (tmp_path / "nan" / "checkpoints" / "last.pt").exists()
    trial = Trial(_cfg(workspace, "trainer.epochs=1"), tmp_path / "nan2", progress=False)
    build = trial.build_model

    def poisoned():
        model = build()
        with torch.no_grad():
            model.head.predictor.bias.fill_(float("nan"))
        return model

    trial.build_model = poisoned
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at epoch 1, step 0"):
        trial.train()


def test_head_fidelity_trains_only_the_head_on_the_cached_trunk(workspace, tmp_path):
    stats = []
    cfg = _cfg(workspace, "head=mbconv", "head.channels=16", "trainer.fidelity=head")
    trial = Trial(cfg, tmp_path / "head", on_epoch_end=lambda e, s: stats.append(s), progress=False)
    model = trial.train()
    trunk = load_checkpoint(next((workspace / "runs" / "trunks").glob("*/trunk.pt")))["model"]
    assert torch.equal(model.state_dict()["encoder.linear1.weight"].cpu(), trunk["encoder.linear1.weight"])
    assert all(0.0 <= s["val_iou"] <= 1.0 for s in stats) and len(stats) == 2
    assert len(list((workspace / "runs" / "features").glob("train-*.pt"))) == 1
    # another head trial, with its own lr and schedule, reuses the trunk and its features
    other = _cfg(workspace, "head=mbconv", "head.channels=16", "trainer.fidelity=head", "trainer.lr=3e-3",
                 "trainer.epochs=1", "trainer.grad_clip=1.0")
    Trial(other, tmp_path / "head2", progress=False).train()
    assert len(list((workspace / "runs" / "trunks").glob("*/trunk.pt"))) == 1
    assert len(list((workspace / "runs" / "features").glob("train-*.pt"))) == 1
    # the trunk's own recipe is its cache key
    Trial(_cfg(workspace, "trainer.fidelity=head", "trainer.baseline_trunk.lr=2e-3"), tmp_path / "head3",
          progress=False).train()
    assert len(list((workspace / "runs" / "trunks").glob("*/trunk.pt"))) == 2



def test_head_trials_train_channels_last_on_cpu_and_match_the_default_layout(workspace, tmp_path, monkeypatch):
    """The head trains channels-last on the CPU (its depthwise convolutions' backward is faster there): the same
    training up to float rounding, and the head leaves in the default layout."""
    cfg = _cfg(workspace, "head=mbconv", "head.channels=16", "head.kernel_size=5", "trainer.fidelity=head")
    fast = Trial(cfg, tmp_path / "fast", progress=False)
    seen = []
    head_forward = fast.head_forward
    monkeypatch.setattr(fast, "head_forward", lambda model, layout=None: seen.append(layout) or head_forward(model, layout))
    model = fast.train()
    assert seen and set(seen) == {torch.channels_last}  # every epoch's batches
    convs = [m.weight for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous() for w in convs)  # back in the default layout
    plain = Trial(cfg, tmp_path / "plain", progress=False)
    monkeypatch.setattr(plain, "head_layout", lambda model, head_only: contextlib.nullcontext())
    reference = plain.train()
    for (name, a), b in zip(model.head.state_dict().items(), reference.head.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)


def test_a_fixed_feature_seed_gives_every_seed_the_same_pairs(workspace, tmp_path):
    """trainer.feature_seed fixes the cached pairs: seed repeats share them (one features file), while without it
    each trainer.seed draws its own; the head's initialisation still follows trainer.seed."""
    count = lambda: len(list((workspace / "runs" / "features").glob("train-*.pt")))  # noqa: E731
    base = ("head=dsconv", "head.channels=8", "trainer.fidelity=head", "trainer.epochs=1")
    Trial(_cfg(workspace, *base, "trainer.feature_seed=5"), tmp_path / "f1", progress=False).train()
    before = count()
    heads = [Trial(_cfg(workspace, *base, "trainer.feature_seed=5", f"trainer.seed={s}"), tmp_path / f"f{s}",
                   progress=False).build_model().head.state_dict() for s in (11, 12)]
    for s in (11, 12):
        Trial(_cfg(workspace, *base, "trainer.feature_seed=5", f"trainer.seed={s}"), tmp_path / f"g{s}",
              progress=False).train()
    assert count() == before
    assert any(not torch.equal(a, heads[1][k]) for k, a in heads[0].items() if a.is_floating_point())
    Trial(_cfg(workspace, *base, "trainer.seed=13"), tmp_path / "h13", progress=False).train()
    assert count() == before + 1


def test_a_new_model_version_rebuilds_the_trunk_and_its_features(workspace, tmp_path, monkeypatch):
    import tracker.cache

    cfg = _cfg(workspace, "head=dsconv", "head.channels=16", "trainer.fidelity=head", "trainer.epochs=1")
    Trial(cfg, tmp_path / "v1", progress=False).train()
    count = lambda pattern: len(list((workspace / "runs").glob(pattern)))  # noqa: E731
    trunks, features = count("trunks/*/trunk.pt"), count("features/train-*.pt")
    monkeypatch.setattr(tracker.cache, "MODEL_VERSION", tracker.cache.MODEL_VERSION + 1)
    Trial(cfg, tmp_path / "v2", progress=False).train()
    assert (count("trunks/*/trunk.pt"), count("features/train-*.pt")) == (trunks + 1, features + 1)


def test_finetune_from_an_explicit_trunk(workspace, tmp_path):
    base = run_trial(_cfg(workspace), tmp_path / "base", progress=False)
    trunk = tmp_path / "base" / "checkpoints" / "last.pt"
    cfg = _cfg(workspace, "head=dsconv", "trainer.fidelity=finetune", f"trainer.trunk={trunk}", "trainer.epochs=1")
    model = Trial(cfg, tmp_path / "ft", progress=False).build_model()
    assert torch.equal(model.bottleneck.weight, load_checkpoint(trunk)["model"]["bottleneck.weight"])
    assert base.fidelity == "full"


def test_bad_trainer_values_fail_before_work(workspace):
    with pytest.raises(ValueError, match=r"trainer.fidelity='partial' is not allowed"):
        _cfg(workspace, "trainer.fidelity=partial")
    with pytest.raises(ValueError, match=r"trainer.amp='fp8' is not allowed"):
        _cfg(workspace, "trainer.amp=fp8")
    with pytest.raises(ValueError, match=r"trainer.batch_size=0 is not allowed: an integer >= 1"):
        _cfg(workspace, "trainer.batch_size=0")
    with pytest.raises(ValueError, match=r"trainer.baseline_trunk.lr=-0.1 is not allowed: a number > 0"):
        _cfg(workspace, "trainer.baseline_trunk.lr=-0.1")
    with pytest.raises(ValueError, match=r"trainer.search_center_jitter=-1.0 is not allowed"):
        _cfg(workspace, "trainer.search_center_jitter=-1.0")
    with pytest.raises(FileNotFoundError, match="trainer.trunk"):
        Trial(_cfg(workspace, "trainer.fidelity=head", "trainer.trunk=/nonexistent.pt"), "/tmp/x").build_model()


def test_static_tracker_and_clipping(workspace):
    from tracker.data.config import build_reader

    sequence = build_reader(_cfg(workspace).data).sequence(build_reader(_cfg(workspace).data).sequence_names()[0])
    boxes = track_sequence(StaticBoxTracker(), sequence)
    assert (boxes == sequence.boxes[0]).all()
    frameless = dataclasses.replace(sequence, frames=[Path("/nonexistent.jpg")] * len(sequence))
    assert (track_sequence(StaticBoxTracker(), frameless) == boxes).all()  # no frame decoded: it never looks at one
    assert clip_box([-50.0, 5.0, 30.0, 20.0], height=100, width=200).tolist() == [0.0, 5.0, 10.0, 20.0]
    assert clip_box([195.0, 95.0, 30.0, 30.0], height=100, width=200).tolist() == [190.0, 90.0, 10.0, 10.0]


def test_evaluate_cli_rebuilds_the_model_from_its_checkpoint(workspace, tmp_path):
    run_trial(_cfg(workspace), tmp_path / "run", progress=False)
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    model, cfg = load_model(ckpt)
    assert cfg.head.block == "repvgg" and model.search_size == 64
    out = subprocess.run(
        [sys.executable, "-m", "tracker.evaluate", f"checkpoint={ckpt}", f"data.cache_dir={workspace / 'data'}",
         *TINY_DATA, f"output_dir={tmp_path / 'eval'}", "progress=false", "device=cpu",
         f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads(out.stdout.strip().splitlines()[-1])
    expected = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["auc"] == pytest.approx(expected["auc"]) and metrics["sequences"] == 2
    assert (tmp_path / "eval" / "results" / "model").is_dir()


def test_evaluate_normalises_as_the_checkpoint_was_trained(workspace, tmp_path, monkeypatch):
    import tracker.evaluate
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tracker.model.checkpoint import save_checkpoint

    trained = _cfg(workspace, "data.processing.mean=[0.5,0.5,0.5]", "data.processing.std=[0.25,0.25,0.25]")
    ckpt = save_checkpoint(tmp_path / "last.pt", model=instantiate(trained.model).state_dict(),
                           config=OmegaConf.to_container(trained, resolve=True, enum_to_str=True))
    seen = {}
    monkeypatch.setattr(tracker.evaluate, "evaluate_model",
                        lambda model, cfg, *args, **kwargs: seen.update(cfg=cfg) or {"auc": 0.0})
    cfg = compose("evaluate", [f"checkpoint={ckpt}", f"data.cache_dir={workspace / 'data'}", *TINY_DATA,
                               f"output_dir={tmp_path / 'eval'}", "device=cpu"])
    tracker.evaluate._main(cfg)
    assert list(seen["cfg"].data.processing.mean) == [0.5] * 3
    assert list(seen["cfg"].data.processing.std) == [0.25] * 3


def test_train_cli_prints_json_last(workspace, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "tracker.train", "trainer=tiny", "latency=quick", "head=dsconv", "trainer.epochs=1",
         f"data.cache_dir={workspace / 'data'}", *TINY_DATA, f"hydra.run.dir={tmp_path / 'cli'}"],
        cwd=ROOT, capture_output=True, text=True, env={**__import__("os").environ})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["run_dir"] == str((tmp_path / "cli").resolve()) and "auc" in result
    log = (tmp_path / "cli" / "epochs.log").read_text()  # one line per epoch in the run's own log file
    assert re.search(r"epoch 1/1: loss \d+\.\d+, IoU \d\.\d+, lr [\d.e-]+, \d+\.\d s", log), log[-2000:]


def test_online_tracker_maps_a_perfect_prediction_back_to_the_ground_truth(workspace):
    """An oracle network that outputs the true box in crop coordinates must give back the ground truth:
    this pins the crop, the normalisation and the mapping back to the image."""
    from tracker.data.config import build_reader
    from tracker.data.processing import crop_region
    from tracker.evaluation import StarkTracker
    from tracker.model import StarkLightning
    from functools import partial
    from heads import CornerHead

    reader = build_reader(_cfg(workspace).data)
    sequence = reader.sequence(reader.sequence_names()[0])
    tracker = StarkTracker(StarkLightning(partial(CornerHead), template_size=32, search_size=64), torch.device("cpu"))
    frame = {"i": 0}

    def oracle(image, mask, template):
        frame["i"] += 1
        x, y, w, h = sequence.boxes[frame["i"]]
        cx, cy, side = crop_region(tracker.box, tracker.search_factor)
        x0, y0 = cx - side / 2, cy - side / 2
        box = torch.tensor([[(x + w / 2 - x0) / side, (y + h / 2 - y0) / side, w / side, h / side]])
        return {"boxes": box}

    tracker.model.track = oracle
    boxes = track_sequence(tracker, sequence)
    visible = sequence.visible & (sequence.boxes[:, 2] > 10) & (sequence.boxes[:, 3] > 10)
    inside = visible & (sequence.boxes[:, 0] >= 0) & (sequence.boxes[:, 1] >= 0)
    assert inside.sum() >= len(sequence.boxes) // 2
    assert np.abs(boxes[inside] - sequence.boxes[inside]).max() < 1e-3


def test_report_every_calls_the_epoch_callback_every_n_epochs(workspace, tmp_path):
    for every, expected in ((2, [2, 4]), (0, [])):
        epochs = []
        Trial(_cfg(workspace, "trainer.epochs=4", f"trainer.report_every={every}"), tmp_path / str(every),
              on_epoch_end=lambda epoch, stats: epochs.append(epoch), progress=False).train()
        assert epochs == expected


def test_deterministic_trains_with_deterministic_algorithms_only(workspace, tmp_path):
    seen = []
    record = lambda epoch, stats: seen.append(torch.are_deterministic_algorithms_enabled())  # noqa: E731
    Trial(_cfg(workspace, "trainer.epochs=1", "trainer.deterministic=true"), tmp_path / "det", on_epoch_end=record,
          progress=False).train()
    Trial(_cfg(workspace, "trainer.epochs=1"), tmp_path / "free", on_epoch_end=record, progress=False).train()
    assert seen == [True, False] and not torch.are_deterministic_algorithms_enabled()  # restored afterwards


def test_fields_without_effect_stay_out_of_the_pairs_cache_key(workspace):
    key = lambda *o: pairs_key(trial_data(_cfg(workspace, *o)), "train")  # noqa: E731
    plain = key()
    for neutral in ("data.generate.workers=1", "data.cache_dir=/elsewhere", "data.split=train"):
        assert key(neutral) == plain, neutral
    for effective in ("data.sampling.max_gap=5", "data.processing.flip=0.0", "trainer.search_center_jitter=1.0",
                      "trainer.search_size=128"):
        assert key(effective) != plain, effective


def test_a_field_without_effect_reuses_the_cached_trunk_and_features(workspace, tmp_path):
    head = ["head=dsconv", "head.channels=16", "trainer.fidelity=head", "trainer.epochs=1"]
    count = lambda pattern: len(list((workspace / "runs").glob(pattern)))  # noqa: E731
    Trial(_cfg(workspace, *head), tmp_path / "a", progress=False).train()
    trunks, features = count("trunks/*/trunk.pt"), count("features/train-*.pt")
    Trial(_cfg(workspace, *head, "data.generate.workers=1"), tmp_path / "b", progress=False).train()
    assert (count("trunks/*/trunk.pt"), count("features/train-*.pt")) == (trunks, features)


def test_run_trial_validates_before_it_writes_the_run_directory(workspace, tmp_path):
    cfg = _cfg(workspace)
    cfg.data.split = "vall"  # changed after composition
    with pytest.raises(DataConfigError, match=r"data.split=vall is not allowed"):
        run_trial(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_the_baseline_trunk_config_keeps_struct_mode(workspace, tmp_path, monkeypatch):
    """ensure_baseline_trunk edits a copy of the trial's config; struct mode must survive so that a misspelt key
    fails instead of being added."""
    import tracker.cache
    import tracker.train

    seen = {}

    class Stop(Exception):
        pass

    def capture(cfg, run_dir, **kwargs):
        seen["struct"] = OmegaConf.is_struct(cfg)
        raise Stop

    monkeypatch.setattr(tracker.train, "Trial", capture)
    with pytest.raises(Stop):
        tracker.cache.ensure_baseline_trunk(_cfg(workspace, "trainer.baseline_trunk.epochs=7"), progress=False)
    assert seen["struct"] is True


def test_batched_evaluation_gives_the_same_boxes_as_one_sequence_at_a_time(workspace, tmp_path):
    """Sequences of different lengths tracked in lockstep (the batch shrinks as they end) by a random model:
    every box equals the online tracker's, one sequence at a time."""
    import dataclasses
    from functools import partial

    from heads import CornerHead
    from tracker.data.config import build_reader
    from tracker.evaluation import StarkTracker, run_tracker
    from tracker.model import StarkLightning

    reader = build_reader(_cfg(workspace).data)
    sequences = [reader.sequence(n) for n in reader.sequence_names()]
    first = sequences[0]  # a shorter one leaves the batch early
    sequences[0] = dataclasses.replace(first, frames=list(first.frames)[:5], boxes=first.boxes[:5],
                                       visible=first.visible[:5])
    torch.manual_seed(0)
    tracker = StarkTracker(StarkLightning(partial(CornerHead), template_size=32, search_size=64).eval(),
                           torch.device("cpu"))
    one = run_tracker(tracker, sequences, tmp_path / "one", progress=False)
    batched = run_tracker(tracker, sequences, tmp_path / "batched", progress=False, batch=8)
    assert len(sequences) >= 2 and len(batched["predictions"]) == len(sequences)
    for name, boxes in one["predictions"].items():
        assert boxes.shape == batched["predictions"][name].shape
        np.testing.assert_allclose(batched["predictions"][name], boxes, atol=1e-3)
    assert sorted(p.name for p in (tmp_path / "batched").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_make_trunk_ships_a_small_trunk_that_head_trials_then_start_from(workspace, tmp_path, monkeypatch):
    import tracker.cache as cache_module
    import tracker.train as train_module
    from tracker.trunk import ship_trunk

    cfg = _cfg(workspace, "trainer.fidelity=head")
    provenance = ship_trunk(cfg, cfg.data, out_dir=tmp_path / "assets")
    shipped = tmp_path / "assets" / f"{provenance['key']}.pt"
    record = json.loads(shipped.with_suffix(".json").read_text())
    assert record["key"] == provenance["key"] and record["config"]["head"]["block"] == "repvgg"
    assert set(record["scores"]) == {"val", "test"} and record["scores"]["val"]["static_auc"] is not None
    weights = load_checkpoint(shipped)["model"]
    assert all(v.dtype == torch.float16 for v in weights.values() if v.is_floating_point())
    # a fresh runs root: the shipped trunk is used, nothing is trained
    monkeypatch.setenv("LIGHTTRACK_RUNS", str(tmp_path / "fresh"))
    monkeypatch.setattr(cache_module, "SHIPPED_TRUNKS", tmp_path / "assets")

    def no_training(self):
        raise AssertionError("the trunk was trained although one is shipped")

    monkeypatch.setattr(train_module.Trial, "train", no_training)
    path = cache_module.ensure_baseline_trunk(cfg)
    assert path.parent.parent == tmp_path / "fresh" / "trunks"
    restored = load_checkpoint(path)["model"]
    assert all(torch.equal(restored[k], v.float()) for k, v in weights.items() if v.is_floating_point())


def test_a_run_directory_resumes_only_with_its_own_config(workspace, tmp_path):
    """Rerunning a run directory with another config is refused before anything is written, naming the fields that
    differ; where data is cached does not count."""
    from tracker.config import ConfigError

    run = tmp_path / "run"
    run_trial(_cfg(workspace, "trainer.epochs=1"), run, progress=False)
    saved = (run / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"holds a run of another config.*trainer\.lr: 0\.001 -> 0\.002"):
        run_trial(_cfg(workspace, "trainer.epochs=1", "trainer.lr=0.002"), run, progress=False)
    assert (run / "config.yaml").read_text() == saved
    run_trial(_cfg(workspace, "trainer.epochs=1", f"data.cache_dir={workspace / 'data'}"), run, progress=False)


def test_logger_tensorboard_writes_each_epochs_scalars_and_stays_out_of_keys(workspace, tmp_path):
    """logger=tensorboard (off by default) writes per-epoch scalars under the run directory; it changes no result,
    so it is no part of a study's recipe or a resumed run's identity."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tracker.config import without_settings_of_no_effect

    cfg = _cfg(workspace, "logger=tensorboard")
    Trial(cfg, tmp_path / "run", progress=False).train()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert {"train/loss", "train/iou", "train/lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    plain = OmegaConf.to_container(_cfg(workspace), resolve=True)
    logged = OmegaConf.to_container(cfg, resolve=True)
    assert without_settings_of_no_effect(plain) == without_settings_of_no_effect(logged)


def test_transfer_runs_scored_in_parallel_processes_give_the_runs_own_boxes(workspace, tmp_path):
    """The report's transfer scoring (search.report.transfer.score_runs): the runs in two spawned processes with
    one torch thread each; on the run's own split every run reproduces its trial's boxes (up
    to float rounding: a fresh process, or another thread count, rounds differently from the process that trained)."""
    import shutil

    from search.report.transfer import score_runs

    cfg = _cfg(workspace)
    run_trial(cfg, tmp_path / "run0", progress=False)
    runs = [tmp_path / "run0"] + [shutil.copytree(tmp_path / "run0", tmp_path / f"run{k}") for k in (1, 2)]
    score_runs(runs, cfg.data, "transfer/own", workers=2, progress=False)
    for run in runs:
        for own in sorted((run / "results" / "model").glob("*.txt")):
            again = run / "transfer" / "own" / "results" / "model" / own.name
            np.testing.assert_allclose(np.loadtxt(again, delimiter=","), np.loadtxt(own, delimiter=","), atol=1e-3)
        assert (run / "transfer" / "own" / "plots" / "per_sequence.csv").is_file()
