"""Every primary config in conf/ composes, with its defaults and with every option of each of its groups."""
from __future__ import annotations


import pytest
import yaml

from tracker.config import CONF_DIR, compose

PRIMARY = sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
GROUPS = {d.name: sorted(p.stem for p in d.glob("*.yaml")) for d in CONF_DIR.iterdir() if d.is_dir()}


def _groups_of(config_name: str) -> list[str]:
    defaults = yaml.safe_load((CONF_DIR / f"{config_name}.yaml").read_text()).get("defaults", [])
    return [next(iter(d)) for d in defaults if isinstance(d, dict) and next(iter(d)) in GROUPS]


# options that need a value of the user's to compose (validation says so when it is missing)
REQUIRED = {("trainer", "gpu_head"): ["trainer.trunk=/path/to/trunk.pt"]}

CASES = [(name, None, None) for name in PRIMARY] + [
    (name, group, option) for name in PRIMARY for group in _groups_of(name) for option in GROUPS[group]]


def test_there_are_configs_to_compose():
    assert "profile" in PRIMARY and {"repvgg", "dsconv", "mbconv"} <= set(GROUPS["head"])


@pytest.mark.parametrize("config_name,group,option", CASES,
                         ids=[f"{c}:{g}={o}" if g else c for c, g, o in CASES])
def test_config_composes(config_name, group, option):
    overrides = [f"{group}={option}", *REQUIRED.get((group, option), [])] if group else []
    cfg = compose(config_name, overrides)
    assert cfg is not None
    if group:
        assert group in cfg


def test_a_head_preset_on_a_frozen_bn_trainer_without_a_trunk_is_refused():
    """trainer=gpu_head (and trainer=gpu at head fidelity) would train the baseline trunk from scratch with frozen,
    random BN: refused at compose time, naming trainer.trunk."""
    from tracker.config import ConfigError

    for overrides in (["trainer=gpu_head"], ["trainer=gpu", "trainer.fidelity=head"]):
        with pytest.raises(ConfigError, match=r"trainer.trunk=None is not allowed: a trunk checkpoint"):
            compose("train", overrides)
    cfg = compose("train", ["trainer=gpu_head", "trainer.trunk=/trunk.pt"])
    assert (cfg.trainer.fidelity, cfg.model.search_size, cfg.trainer.amp) == ("head", 320, "auto")


SWEEPER_PRESETS = sorted(p.stem for p in (CONF_DIR / "hydra" / "sweeper").glob("*.yaml"))
SPACES = sorted(p.stem for p in (CONF_DIR / "search").glob("*.yaml"))


@pytest.mark.parametrize("override", [f"hydra/sweeper={name}" for name in SWEEPER_PRESETS]
                         + [f"search@hydra.sweeper.space={name}" for name in SPACES])
def test_every_sweeper_preset_and_space_composes_with_its_objectives_known(override):
    from search.objectives import parse_objectives
    from search.space import build_space

    cfg = compose("sweep", [override], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert parse_objectives(list(sweeper.objectives))  # every name a figure a trial returns
    assert build_space(sweeper.space).dimensions
