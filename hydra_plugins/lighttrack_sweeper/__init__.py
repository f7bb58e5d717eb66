"""LightTrack's Optuna sweeper for Hydra (`override hydra/sweeper: lighttrack`), on Optuna >= 4.

Its typed config and its sampler / pruner choices (config.py) are registered in Hydra's ConfigStore only where
LightTrack's configs are composed (hydra_plugins/lighttrack_schemas), so that no other Hydra app sees them; the
sweeper itself (lighttrack_sweeper.py) imports Optuna only when a sweep starts."""
# Imported (not registered) here, before Hydra's plugin scan reaches it: the scan executes a module it has not
# seen before it puts it in sys.modules, and a dataclass of a module with `from __future__ import annotations`
# cannot be built there (dataclasses looks the module up in sys.modules).
from . import config

__all__ = ["config"]
