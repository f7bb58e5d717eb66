"""Registers the `data` group's schema in Hydra's ConfigStore (Hydra imports every module under
`hydra_plugins` at start-up); the presets in conf/data/ name it in their defaults list (`- data_schema`)."""
from hydra.core.config_store import ConfigStore

from tracker.data.config import DataConf

ConfigStore.instance().store(group="data", name="data_schema", node=DataConf)
