"""conf/data presets compose against the typed schema and build readers and loaders; roots come from the
config or the environment."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from data_layouts import make_got10k
from tracker.data import (DataConfigError, build_pair_loader, build_reader, build_sources, build_train_loader,
                          to_data_conf)

CONF = Path(__file__).resolve().parents[1] / "conf"
PRESETS = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))


def data_config(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=None, overrides=list(overrides)).data


def test_presets_exist():
    assert set(PRESETS) >= {"synthetic", "got10k", "lasot", "trackingnet", "coco", "mix"}


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_validates(preset):
    data = to_data_conf(data_config(f"+data={preset}"))
    assert data.sampling.max_gap == 200 and data.processing.search.factor == 5.0
    assert (data.processing.template.size, data.processing.search.size) == (128, 320)
    assert data.processing.search.scale_jitter == 0.5 and data.processing.search.center_jitter == 4.5
    assert data.processing.template.scale_jitter == 0 and data.processing.template.center_jitter == 0


def test_mix_is_starks_four_datasets_one_to_one():
    data = to_data_conf(data_config("+data=mix"))
    assert {k: (s.name, s.ratio) for k, s in data.sources.items()} == {
        "lasot": ("lasot", 1.0), "got10k": ("got10k", 1.0), "coco": ("coco", 1.0), "trackingnet": ("trackingnet", 1.0)}
    assert data.sources["got10k"].split == "vot-train"
    dropped = to_data_conf(data_config("+data=mix", "~data.sources.coco", "data.sources.lasot.ratio=2"))
    assert set(dropped.sources) == {"lasot", "got10k", "trackingnet"} and dropped.sources["lasot"].ratio == 2


def test_crop_sizes_follow_the_model():
    data = to_data_conf(data_config("+data=got10k", "+model=stark_lightning", "+head=repvgg",
                                    "model.template_size=64", "model.search_size=128"))
    assert (data.processing.template.size, data.processing.search.size) == (64, 128)


def test_bad_values_name_the_field():
    for override, field in (("data.name=imagenet", "data.name"), ("data.processing.flip=1.5", "processing.flip"),
                            ("data.sampling.max_gap=0", "sampling.max_gap"),
                            ("data.generate.difficulty=extreme", "difficulty")):
        with pytest.raises((DataConfigError, ValueError), match=field):
            to_data_conf(data_config("+data=synthetic", override))


def test_root_from_the_environment(tmp_path, monkeypatch):
    make_got10k(tmp_path, "val", {"GOT-10k_Val_000001": dict(boxes=[[1, 1, 9, 9]] * 3, absence=[0] * 3,
                                                              cover=[8] * 3)})
    monkeypatch.setenv("GOT10K_ROOT", str(tmp_path))
    reader = build_reader(data_config("+data=got10k"))
    assert reader.root == tmp_path and reader.sequence_names() == ["GOT-10k_Val_000001"]
    monkeypatch.delenv("GOT10K_ROOT")
    with pytest.raises(DataConfigError, match="GOT10K_ROOT.*list.txt"):
        build_reader(data_config("+data=got10k"))
    explicit = build_reader(data_config("+data=got10k", f"data.root={tmp_path}"))
    assert explicit.root == tmp_path


def test_a_reader_registered_in_another_module_is_a_dataset(tmp_path, monkeypatch):
    """A new dataset is one decorated reader class (and its preset): names are checked against the live registry,
    so a reader registered after tracker.data was imported counts."""
    from tracker.data import READERS, ROOT_VARIABLES, GOT10k, register_reader

    assert {"synthetic", "got10k", "lasot", "trackingnet", "coco"} <= set(READERS)
    assert READERS["synthetic"] is GOT10k and ROOT_VARIABLES["synthetic"] == "LIGHTTRACK_SYNTHETIC_ROOT"
    make_got10k(tmp_path, "val", {"GOT-10k_Val_000001": dict(boxes=[[1, 1, 9, 9]] * 3, absence=[0] * 3,
                                                              cover=[8] * 3)})
    with pytest.raises(DataConfigError, match="data.name=mini is not allowed: one of"):
        to_data_conf({"name": "mini", "split": "val"})

    @register_reader("mini", root_variable="MINI_ROOT")
    class Mini(GOT10k):
        name = "mini"

    try:
        reader = build_reader(to_data_conf({"name": "mini", "root": str(tmp_path), "split": "val"}))
        assert type(reader) is Mini and reader.sequence_names() == ["GOT-10k_Val_000001"]
        with pytest.raises(DataConfigError, match="MINI_ROOT"):
            build_reader(to_data_conf({"name": "mini", "split": "val"}))
        with pytest.raises(DataConfigError, match="sources.extra.split=nope"):
            to_data_conf({"sources": {"extra": {"name": "mini", "split": "nope"}}})
        with pytest.raises(ValueError, match="already registered as Mini"):
            register_reader("mini", root_variable="MINI_ROOT")(GOT10k)
    finally:
        READERS.pop("mini")
        ROOT_VARIABLES.pop("mini")


def test_synthetic_preset_generates_into_the_cache_and_loads(tmp_path, monkeypatch):
    monkeypatch.delenv("LIGHTTRACK_SYNTHETIC_ROOT", raising=False)
    monkeypatch.setenv("LIGHTTRACK_DATA_CACHE", str(tmp_path))
    cfg = data_config("+data=synthetic", "data.generate.train_sequences=2", "data.generate.val_sequences=1",
                      "data.generate.frames=10", "data.generate.width=96", "data.generate.height=72",
                      "data.generate.workers=1", "data.processing.template.size=32",
                      "data.processing.search.size=64")
    assert OmegaConf.select(cfg, "cache_dir") == str(tmp_path)
    (reader, ratio), = build_sources(cfg)
    assert reader.name == "synthetic" and reader.split == "train" and len(reader) == 2
    assert reader.root.parent == tmp_path and reader.root.name.startswith("synthetic-")
    assert build_reader(cfg).split == "val"
    batch = next(iter(build_train_loader(cfg, device="cpu", batch_size=2, pairs_per_epoch=4)))
    assert batch["template"].shape == (2, 3, 32, 32) and batch["search"].shape == (2, 3, 64, 64)
    # the trainer's call: sizes, counts and seeds from its own config; val pairs keep the last batch
    val = build_pair_loader(cfg, split="val", template_size=16, search_size=48, pairs_per_epoch=3,
                            batch_size=2, num_workers=0, seed=9, device="cpu")
    shapes = [b["search"].shape for b in val]
    assert shapes == [torch.Size([2, 3, 48, 48]), torch.Size([1, 3, 48, 48])]
    assert len(os.listdir(tmp_path)) >= 1
    # the trainer's jitter override: none puts every search box's centre at the crop centre
    still = build_pair_loader(cfg, search_size=64, pairs_per_epoch=4, batch_size=4, num_workers=0, seed=1,
                              device="cpu", center_jitter=0.0, scale_jitter=0.0)
    centres = next(iter(still))["search_box"]
    assert torch.allclose(centres[:, :2] + centres[:, 2:] / 2, torch.full((4, 2), 0.5), atol=0.02)
    jittered = next(iter(build_pair_loader(cfg, search_size=64, pairs_per_epoch=4, batch_size=4, num_workers=0,
                                           seed=1, device="cpu")))["search_box"]
    assert not torch.allclose(jittered[:, :2] + jittered[:, 2:] / 2, torch.full((4, 2), 0.5), atol=0.02)
