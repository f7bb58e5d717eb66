"""LightTrack's Optuna sweeper for Hydra (`override hydra/sweeper: lighttrack`), on Optuna >= 4.

Registers the sweeper's typed config and its sampler / pruner choices in Hydra's ConfigStore; the sweeper
itself (lighttrack_sweeper.py) imports Optuna only when a sweep starts."""
from .config import register

register()
