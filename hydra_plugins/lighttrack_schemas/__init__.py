"""LightTrack's typed config schemas and its sweeper, made known to Hydra only where LightTrack's configs are composed.

Hydra imports every module under `hydra_plugins` when ANY Hydra app in the environment starts. So this module
imports nothing of LightTrack (no torch, optuna, tracker or heads) and registers nothing when it is imported:

- `LightTrackSearchPath`, a SearchPathPlugin, is called whenever Hydra builds a config search path (an app
  starting, `initialize_config_dir`, `tracker.config.compose`). When that search path composes LightTrack's
  configs (the conf/ folder beside this package is on it, or LightTrack's `tracker.config` is imported, as for
  `compose(config_dir=...)`), it appends the `lighttrack://` config source below and registers the sweeper's
  configs (`hydra/sweeper=lighttrack`, its samplers and pruners). Any other app sees nothing of ours.
- `SchemaSource`, the `lighttrack://` config source, serves the schemas that the presets name in their defaults
  lists (`- head_schema` in conf/head/*.yaml, `- data_schema` in conf/data/*.yaml, ...). It imports a schema's
  dataclass only when a config naming it is loaded (`lighttrack-data` never imports torch), and it lists none of
  them: a schema is the base every preset of its group extends, not a choice, so it shows neither in `--help`
  nor in shell completion (`head=` completes to dsconv, mbconv, repvgg).
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import List, Optional

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin

# the repository's top-level conf/ (tracker.config.CONF_DIR, computed here without importing tracker)
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
SCHEME = "lighttrack"

# config path -> "module:dataclass"; a preset names the schema in its defaults list (`- head_schema`)
SCHEMAS = {
    "head/head_schema": "heads.spec:HeadSpec",
    "model/model_schema": "tracker.config:ModelConf",
    "trainer/trainer_schema": "tracker.config:TrainerConf",
    "evaluation/evaluation_schema": "tracker.config:EvaluationConf",
    "latency/latency_schema": "tracker.config:LatencyConf",
    "data/data_schema": "tracker.data.config:DataConf",
    "data_generate_schema": "tracker.data.generate:GenerateConf",  # conf/data_generate.yaml (lighttrack-data)
}


def _name(config_path: str) -> str:
    name = config_path.strip("/")
    return name[: -len(".yaml")] if name.endswith(".yaml") else name


def schema_class(config_path: str) -> type:
    """The dataclass behind a schema's config path (imported now)."""
    module, _, attr = SCHEMAS[_name(config_path)].partition(":")
    return getattr(importlib.import_module(module), attr)


class SchemaSource(ConfigSource):
    """`lighttrack://`: LightTrack's schemas, loaded on demand and listed nowhere."""

    @staticmethod
    def scheme() -> str:
        return SCHEME

    _built: dict = {}  # schema name -> its DictConfig, built once per process

    def load_config(self, config_path: str) -> ConfigResult:
        import copy

        from omegaconf import OmegaConf

        if not self.is_config(config_path):
            raise ConfigLoadError(f"LightTrack has no schema {config_path!r}")
        name = _name(config_path)
        if name not in self._built:
            self._built[name] = OmegaConf.structured(schema_class(config_path))
        # a copy, as Hydra's ConfigStore hands out (compose mutates it): 10-20x cheaper than building the schema
        # again, which every compose did (a sweep composes 2-3 times per trial)
        return ConfigResult(config=copy.deepcopy(self._built[name]), path=self.full_path(), provider=self.provider,
                            header={"package": None})

    def available(self) -> bool:
        return True

    def is_group(self, config_path: str) -> bool:
        return False  # the groups are conf/'s; this source only completes them

    def is_config(self, config_path: str) -> bool:
        return _name(config_path) in SCHEMAS

    def list(self, config_path: str, results_filter: Optional[ObjectType]) -> List[str]:
        return []  # a schema is no choice: never offered by --help or completion


def composes_lighttrack(search_path: ConfigSearchPath) -> bool:
    """Whether a search path is one that LightTrack's configs are composed on."""
    for element in search_path.get_path():
        path = str(element.path)
        path = path[len("file://"):] if path.startswith("file://") else path
        if "://" not in path and Path(path).resolve() == CONF_DIR:
            return True
    config = sys.modules.get("tracker.config")  # LightTrack's own compose(), whatever folder it starts from
    return config is not None and getattr(config, "CONF_DIR", None) == CONF_DIR


def register_sweeper() -> None:
    """`hydra/sweeper=lighttrack` with its sampler and pruner groups, in Hydra's ConfigStore (`register` stores
    them once; no flag here: Hydra's plugin scan re-runs this module and would reset one)."""
    from hydra_plugins.lighttrack_sweeper.config import register

    register()


class LightTrackSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if not composes_lighttrack(search_path):
            return
        if not any(str(e.path).startswith(f"{SCHEME}://") for e in search_path.get_path()):
            search_path.append(provider="lighttrack", path=f"{SCHEME}://schemas")
        register_sweeper()
