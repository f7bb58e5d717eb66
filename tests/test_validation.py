"""Config values mean what they say, and a bad one fails when the config is validated: the online tracker
normalises as training does; the data group's dead loader and sampling fields are gone; splits, generator
overrides, lr_gamma and unknown keys are refused up front. (Trial-level checks: tests/test_trial.py.)"""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from PIL import Image

from data_layouts import make_got10k
from tracker.config import ConfigError, compose
from tracker.data import GOT10k, DataConfigError, build_processing, crop_image, crop_region, to_data_conf


# ---- finding 1: the online tracker normalises with the training config's mean and std -------------------------
def test_the_tracker_feeds_the_model_what_training_processing_gives(tmp_path, monkeypatch):
    import tracker.evaluation.tracker
    from tracker.evaluation import evaluate_model

    make_got10k(tmp_path, "val", {"GOT-10k_Val_000001": dict(boxes=[[10, 10, 20, 12]] * 3, absence=[0] * 3,
                                                              cover=[8] * 3)})
    texture = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)  # every channel differs
    Image.fromarray(texture).save(tmp_path / "val" / "GOT-10k_Val_000001" / "00000001.jpg")
    fed = {}

    class Recorder:  # stands in for the deployed network: records the template it is given
        def __init__(self, model, device):
            self.template_size, self.search_size = model.template_size, model.search_size

        def encode_template(self, pixels, mask):
            fed.setdefault("template", pixels)

        def track(self, pixels, mask, template):
            return {"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}

    monkeypatch.setattr(tracker.evaluation.tracker, "DeployedTracker", Recorder)
    model = types.SimpleNamespace(template_size=32, search_size=64)
    base = ["trainer=tiny", "data=got10k", f"data.root={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}",
            "evaluation.static_baseline=false"]
    templates = {}
    for name, norm in (("imagenet", []), ("custom", ["data.processing.mean=[0.1,0.2,0.3]",
                                                     "data.processing.std=[0.5,0.4,0.3]"])):
        cfg = compose("train", [*base, *norm])
        fed.clear()
        evaluate_model(model, cfg, tmp_path / name, torch.device("cpu"), progress=False)
        templates[name] = fed["template"]
    # what training's processing makes of the same crop
    sequence = GOT10k(tmp_path, "val").sequence(0)
    crop, _, _ = crop_image(sequence.image(0), *crop_region(sequence.boxes[0], 2.0), 32)
    expected = build_processing(cfg.data).to_tensor(np.asarray(crop))[None]
    assert to_data_conf(cfg.data).processing.mean == [0.1, 0.2, 0.3]
    assert torch.equal(templates["custom"], expected)
    assert not torch.allclose(templates["custom"], templates["imagenet"])



# ---- finding 2: fields without effect are gone ------------------------------------------------------------
@pytest.mark.parametrize("override", ["data.loader.batch_size=2", "data.loader.num_workers=1",
                                      "data.sampling.pairs_per_epoch=4", "data.sampling.seed=3"])
def test_the_data_groups_dead_loader_and_sampling_fields_are_refused(override):
    """The trainer's recipe owns pair counts, seed, batch size and workers (trainer.*): the data group's copies
    were overridden by every trial, so they are gone rather than silently ignored."""
    with pytest.raises(Exception, match=override.split("=")[0].rsplit(".", 1)[-1]):
        compose("train", [override])


# ---- finding 3: bad values fail when the config is validated, before anything is written ----------------------
def test_a_split_the_reader_does_not_offer_fails_when_the_config_is_validated():
    with pytest.raises(DataConfigError, match=r"data.split=vall is not allowed: one of \['train', 'val'\]"):
        compose("train", ["data.split=vall"])
    with pytest.raises(DataConfigError, match=r"data.split=vall is not allowed: one of \['train', 'val', 'test'"):
        compose("train", ["data=got10k", "data.split=vall"])
    with pytest.raises(DataConfigError, match=r"data.sources.trackingnet.split=val is not allowed"):
        compose("train", ["data=mix", "data.sources.trackingnet.split=val"])


def test_a_generator_override_on_data_without_a_generator_names_the_key():
    with pytest.raises(DataConfigError, match=r"data.generate.frames=12 is not allowed.*data.name=got10k"):
        compose("train", ["data=got10k", "data.generate.frames=12"])
    assert to_data_conf(compose("train", ["data=synthetic", "data.generate.frames=12"]).data).generate.frames == 12


@pytest.mark.parametrize("override", ["trainer.lr_gamma=-0.5", "trainer.lr_gamma=0", "trainer.lr_gamma=1.5",
                                      "trainer.baseline_trunk.lr_gamma=-0.5"])
def test_lr_gamma_must_be_a_factor_in_0_1(override):
    with pytest.raises(ConfigError, match=rf"{override.split('=')[0]}=.* is not allowed: a factor in \(0, 1\]"):
        compose("train", [override])
    compose("train", ["trainer.lr_gamma=1"])


@pytest.mark.parametrize("override,key", [("+trainer.optimiser=sgd", "trainer.optimiser"),
                                          ("+trainer.baseline_trunk.momentum=0.9", "trainer.baseline_trunk.momentum"),
                                          ("+evaluation.window=true", "evaluation.window")])
def test_unknown_keys_added_with_plus_are_refused(override, key):
    with pytest.raises(ConfigError, match=rf"{key} is not a key of"):
        compose("train", [override])


@pytest.mark.parametrize("override,message", [
    ("trainer.optimizer._target_=torch.nn.Linear", r"trainer.optimizer._target_='torch.nn.Linear' is not allowed: "
                                                   r"a subclass of torch.optim.Optimizer"),
    ("trainer.optimizer._target_=torch.optim.Nope", r"trainer.optimizer._target_='torch.optim.Nope' is not allowed: "
                                                    r"an importable class"),
    ("trainer.scheduler._partial_=false", r"trainer.scheduler._partial_=False is not allowed: true"),
    ("trainer.baseline_trunk.scheduler._target_=torch.optim.AdamW",
     r"trainer.baseline_trunk.scheduler._target_='torch.optim.AdamW' is not allowed: a subclass of "
     r"torch.optim.lr_scheduler.LRScheduler")])
def test_a_bad_optimiser_or_schedule_fails_at_compose_time_named(override, message):
    with pytest.raises(ConfigError, match=message):
        compose("train", [override])


def test_the_optimiser_and_schedule_are_partial_targets_the_trainer_calls():
    """trainer.optimizer / trainer.scheduler are what the trainer builds (AdamW and StepLR by default, reading the
    recipe's weight decay and steps), and another optimiser is an override away."""
    from torch import nn

    from tracker.train import build_optimizer

    cfg = compose("train", ["trainer=tiny", "trainer.weight_decay=0.03", "trainer.lr_step_epochs=7"])
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(model, cfg.trainer)
    assert type(optimizer).__name__ == "AdamW" and optimizer.param_groups[0]["weight_decay"] == 0.03
    assert optimizer.param_groups[0]["lr"] == cfg.trainer.lr
    from hydra.utils import instantiate

    scheduler = instantiate(cfg.trainer.scheduler)(optimizer)
    assert type(scheduler).__name__ == "StepLR" and scheduler.step_size == 7
    sgd = compose("train", ["trainer=tiny", "trainer.optimizer._target_=torch.optim.SGD",
                            "+trainer.optimizer.momentum=0.9"])
    optimizer = build_optimizer(model, sgd.trainer)
    assert type(optimizer).__name__ == "SGD" and optimizer.param_groups[0]["momentum"] == 0.9


def test_crop_sizes_are_the_models_and_a_mismatch_is_named():
    cfg = compose("train", ["trainer=tiny"])
    assert (cfg.data.processing.template.size, cfg.data.processing.search.size) == (32, 64) == \
        (cfg.model.template_size, cfg.model.search_size)
    with pytest.raises(ConfigError, match=r"data.processing.search.size=96 is not allowed: the model's "
                                          r"model.search_size=64 \(set trainer.search_size to change both\)"):
        compose("train", ["trainer=tiny", "data.processing.search.size=96"])


def test_the_online_tracker_crops_with_trainings_factors(monkeypatch, tmp_path):
    """One owner for the crop factors: data.processing's, read by training and by the online tracker."""
    import tracker.evaluation.run as run

    seen = {}

    class Capture(Exception):
        pass

    def capture(model, device, template_factor, search_factor, *args, **kwargs):
        seen.update(template=template_factor, search=search_factor)
        raise Capture

    monkeypatch.setattr(run, "StarkTracker", capture)
    monkeypatch.setattr(run, "check_data", lambda *a, **k: None, raising=False)
    cfg = compose("evaluate", ["data.processing.search.factor=4.0", f"data.cache_dir={tmp_path}",
                               "data.generate.train_sequences=0", "data.generate.val_sequences=1",
                               "data.generate.frames=3", "data.generate.width=64", "data.generate.height=64"])
    with pytest.raises(Capture):
        run.evaluate_model(None, cfg, tmp_path / "out", device=None, progress=False)
    assert seen == {"template": 2.0, "search": 4.0}


def test_the_trunks_own_generator_settings_are_checked_by_name():
    with pytest.raises(ConfigError, match=r"trainer.baseline_trunk.generate.sorces='varied' is not allowed: a "
                                          r"setting of the synthetic generator: .*sources"):
        compose("train", ["++trainer.baseline_trunk.generate.sorces=varied"])


def test_the_trunk_trains_on_its_own_data_and_is_scored_on_the_trials_split():
    """`trainer.baseline_trunk.generate` changes what the trunk trains on (and so its key), not the split trials
    are evaluated on, nor the trials' own training data."""
    from tracker.cache import baseline_trunk_config
    from tracker.data.config import pairs_key

    plain = compose("train", ["trainer.baseline_trunk.generate={}"])
    richer = compose("train", ["++trainer.baseline_trunk.generate.sources=varied",
                               "++trainer.baseline_trunk.generate.train_sequences=7"])
    (plain_trunk, plain_key), (trunk, key) = baseline_trunk_config(plain), baseline_trunk_config(richer)
    assert key != plain_key
    assert (trunk.data.generate.sources, trunk.data.generate.train_sequences) == ("varied", 7)
    assert (trunk.data.generate.val_sequences, trunk.data.split) == (plain_trunk.data.generate.val_sequences, "val")
    assert pairs_key(richer.data) == pairs_key(plain.data)  # the trials' pairs are untouched
    assert "generate" not in trunk.trainer  # a trunk setting, not copied into the trunk run's trainer
