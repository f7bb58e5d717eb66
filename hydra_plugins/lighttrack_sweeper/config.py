"""The sweeper's config (`hydra.sweeper`) and its sampler / pruner groups, as Hydra structured configs.

Samplers: `hydra/sweeper/sampler=tpe` (default; multi-objective capable), `nsga2`, `random`, `grid`.
Pruners: `hydra/sweeper/pruner=none` (default), `median`, `hyperband` (single objective only)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

from search.objectives import DEFAULT_OBJECTIVES, objective_entries

SAMPLERS: Dict[str, Dict[str, Any]] = {
    # multivariate + group: TPE models the conditional dimensions jointly; constant_liar spreads parallel asks
    "tpe": {"_target_": "optuna.samplers.TPESampler", "n_startup_trials": 8, "multivariate": True, "group": True,
            "constant_liar": True},
    "nsga2": {"_target_": "optuna.samplers.NSGAIISampler", "population_size": 8},
    "random": {"_target_": "optuna.samplers.RandomSampler"},
    # the sweeper fills search_space from the space
    "grid": {"_target_": "optuna.samplers.GridSampler"},
}
PRUNERS: Dict[str, Dict[str, Any]] = {
    "none": {"_target_": "optuna.pruners.NopPruner"},
    "median": {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 2, "n_warmup_steps": 1},
    "hyperband": {"_target_": "optuna.pruners.HyperbandPruner", "min_resource": 1, "max_resource": "auto",
                  "reduction_factor": 3},
}


def _default_objectives() -> List[Any]:
    return objective_entries(DEFAULT_OBJECTIVES)


@dataclass
class ConfirmConf:
    """The confirmation stage: after the search budget, the front's architectures and the references run again
    with other seeds (trainer.seed = the first trial's seed + 1, + 2, ...) until each has `seeds` of them."""

    seeds: int = 1  # seeds per confirmed architecture (1: no confirmation stage)
    front: int = 4  # confirm at most this many front members (the most accurate first), plus the references
    max_trials: Optional[int] = None  # confirmation trials in the study at which it stops (null: no limit)


@dataclass
class LightTrackSweeperConf:
    _target_: str = "hydra_plugins.lighttrack_sweeper.lighttrack_sweeper.LightTrackSweeper"
    _recursive_: bool = False  # the sweeper instantiates sampler, pruner and cost itself (with seed, grid)
    defaults: List[Any] = field(default_factory=lambda: ["_self_", {"sampler": "tpe"}, {"pruner": "none"}])
    sampler: Any = None
    pruner: Any = None
    study_name: str = "lighttrack"
    # null: a journal file <hydra.sweep.dir>/journal.log; a path: a journal file there; a URL: any Optuna storage
    storage: Optional[str] = None
    # what the task function returns, read by name; a trial lacking one (or NaN) fails
    objectives: List[Any] = field(default_factory=_default_objectives)
    # dimensions by override key (conf/search/*.yaml lands here); command-line sweeps replace or extend them
    space: Dict[str, Any] = field(default_factory=dict)
    # trials count when they train or fail (enqueued references included); those settled by their cost (over
    # budget) or as duplicates cost milliseconds and do not count
    n_trials: Optional[int] = None  # trials this process trains
    max_trials: Optional[int] = None  # trained (or failed) trials in the study at which every process stops
    max_settled: int = 200  # stop after this many candidates in a row were settled without training
    n_jobs: Optional[int] = None  # trials per launched batch; null: the launcher's n_jobs (1 for basic)
    seed: int = 0
    # a callable(job config) -> cost figures, run before training (rejects bad configs, feeds budget and dedup)
    cost: Any = None
    # upper bounds on cost figures; a candidate over one is pruned untrained (enqueued references are exempt)
    budget: Dict[str, Optional[float]] = field(default_factory=dict)
    # reference trials run first, once per study: role -> overrides
    enqueue: Dict[str, List[str]] = field(default_factory=dict)
    confirm: ConfirmConf = field(default_factory=ConfirmConf)
    # print the space, how many candidates it holds, the first few with their cost, the study's state; train nothing
    dry_run: bool = False
    # set by the sweeper on each job (the trial number); null outside a sweep job
    trial: Optional[int] = None


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(group="hydra/sweeper", name="lighttrack", node=LightTrackSweeperConf, provider="lighttrack")
    for name, node in SAMPLERS.items():
        cs.store(group="hydra/sweeper/sampler", name=name, node=node, provider="lighttrack")
    for name, node in PRUNERS.items():
        cs.store(group="hydra/sweeper/pruner", name=name, node=node, provider="lighttrack")
