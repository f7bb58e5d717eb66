"""The Sweeper class Hydra finds by scanning hydra_plugins; the work is in _impl (imported lazily so that
every Hydra app's start-up scan stays cheap)."""
from __future__ import annotations

from typing import Any, List

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class LightTrackSweeper(Sweeper):
    def __init__(self, **conf: Any) -> None:
        from ._impl import SweeperImpl

        self._impl = SweeperImpl(**conf)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self._impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        return self._impl.sweep(arguments)
