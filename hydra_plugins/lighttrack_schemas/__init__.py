"""Registers LightTrack's config schemas in Hydra's ConfigStore.

Hydra imports every module under `hydra_plugins` when it starts, so the schemas are there for every app
and for `compose()`; preset YAML files name them in their defaults list (`- head_schema`)."""
from hydra.core.config_store import ConfigStore

from heads.spec import HeadSpec
from tracker.config import EvaluationConf, ModelConf, TrainerConf

cs = ConfigStore.instance()
cs.store(group="head", name="head_schema", node=HeadSpec)
cs.store(group="model", name="model_schema", node=ModelConf)
cs.store(group="trainer", name="trainer_schema", node=TrainerConf)
cs.store(group="evaluation", name="evaluation_schema", node=EvaluationConf)
