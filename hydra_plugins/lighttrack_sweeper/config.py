"""The sweeper's config (`hydra.sweeper`) and its sampler / pruner groups, as Hydra structured configs.

Samplers: `hydra/sweeper/sampler=tpe` (default; multi-objective capable), `nsga2`, `random`, `grid`.
Pruners: `hydra/sweeper/pruner=none` (default), `median`, `hyperband` (single objective only)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.object_type import ObjectType
from omegaconf import MISSING

from search.objectives import DEFAULT_OBJECTIVES, objective_entries

# -- samplers (`hydra/sweeper/sampler=NAME`): each option's fields are its constructor's arguments ------------------
# A field left at Optuna's default is listed so that it can be set from the command line, typed
# (`hydra.sweeper.sampler.n_ei_candidates=48`); `seed` is the sweeper's to set (hydra.sweeper.seed, one stream per
# sweep process): it stays null here, and a value given is refused before any trial.
@dataclass
class SamplerConfig:
    _target_: str = MISSING
    seed: Optional[int] = None


@dataclass
class TPESamplerConfig(SamplerConfig):
    """multivariate + group: TPE models the conditional dimensions jointly; constant_liar spreads parallel asks."""

    _target_: str = "optuna.samplers.TPESampler"
    n_startup_trials: int = 8
    n_ei_candidates: int = 24
    multivariate: bool = True
    group: bool = True
    constant_liar: bool = True


@dataclass
class NSGAIISamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.NSGAIISampler"
    population_size: int = 8
    mutation_prob: Optional[float] = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5


@dataclass
class RandomSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.RandomSampler"


@dataclass
class GridSamplerConfig(SamplerConfig):
    """The sweeper builds it with the space's grid as its search_space."""

    _target_: str = "optuna.samplers.GridSampler"


# -- pruners (`hydra/sweeper/pruner=NAME`; single objective only) ---------------------------------------------------
@dataclass
class PrunerConfig:
    _target_: str = MISSING


@dataclass
class NopPrunerConfig(PrunerConfig):
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConfig(PrunerConfig):
    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 2
    n_warmup_steps: int = 1
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class HyperbandPrunerConfig(PrunerConfig):
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"  # "auto" or an int (OmegaConf has no Union of str and int)
    reduction_factor: int = 3
    bootstrap_count: int = 0


SAMPLER_OPTIONS = (("tpe", TPESamplerConfig), ("nsga2", NSGAIISamplerConfig), ("random", RandomSamplerConfig),
                   ("grid", GridSamplerConfig))
PRUNER_OPTIONS = (("none", NopPrunerConfig), ("median", MedianPrunerConfig), ("hyperband", HyperbandPrunerConfig))


def _default_objectives() -> List[Any]:
    return objective_entries(DEFAULT_OBJECTIVES)


@dataclass
class ConfirmConf:
    """The confirmation stage: after the search budget, the front's architectures and the references run again
    with other seeds (trainer.seed = the first trial's seed + 1, + 2, ...) until each has `seeds` of them."""

    seeds: int = 1  # seeds per confirmed architecture (1: no confirmation stage)
    front: int = 4  # confirm at most this many front members (the most accurate first), plus the references
    max_trials: Optional[int] = None  # confirmation trials in the study at which it stops (null: no limit)
    every: bool = False  # every architecture the study trained, not only the front (a grid whose table needs all)


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
    # trials count when they train (enqueued references included); those settled by their cost (over budget) or as
    # duplicates cost milliseconds and do not count; failed ones only with count_failed
    n_trials: Optional[int] = None  # trials this process trains
    max_trials: Optional[int] = None  # trained (or failed) trials in the study at which every process stops
    max_settled: int = 200  # stop after this many candidates in a row were settled without training
    # failed trials (an exception, a NaN, an interrupted or killed run) do not count against max_trials unless
    # count_failed; a sweep stops after max_failures failures in a row, and a reference that failed that often
    # (it is asked again at each start until it completes) stops the sweep with its reason
    count_failed: bool = False
    max_failures: int = 5
    # heartbeats: while a trial runs, its sweep process records a heartbeat every heartbeat_interval seconds (null:
    # off); a RUNNING trial with none for grace_period seconds (null: 2 x the interval) lost its sweep process (killed,
    # its machine down, on any host): the next sweep process to look marks it FAIL and re-enqueues it, at most
    # retry_failed times (0: never), as a WAITING trial with the same parameters. Every process sharing a study needs
    # the same settings (a shorter grace period fails the trials of a process that beats less often)
    heartbeat_interval: Optional[int] = None
    grace_period: Optional[int] = None
    retry_failed: int = 1
    # a database storage (hydra.sweeper.storage=postgresql+psycopg://...) whose connection drops (a server restart, a
    # network outage): each storage call is retried for up to db_retry_seconds before the sweep process gives up
    # (0: no retry, the process dies at the first lost connection); with heartbeats, keep grace_period above the
    # outages to survive (a trial beats again once the database is back)
    db_retry_seconds: float = 60.0
    # trials per launched batch (all asked before any of them returns); null: the launcher's n_jobs (joblib), else its
    # array_parallelism (submitit_slurm), else 1 (basic, submitit_local)
    n_jobs: Optional[int] = None
    # sweep processes on this machine sharing the study: this one starts workers - 1 more with its own command line
    # (logs: <sweep dir>/workers/<k>.log); each asks its next trial when its own ends, with cores / workers torch
    # threads. On 2 cores, 2 workers train 1.8x the trials per hour of one (hydra_plugins/.../workers.py)
    workers: int = 1
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
    # every trial also quantises its model to INT8 and scores it on the same sequences (int8_auc, int8_auc_drop)
    int8: bool = False
    # set by the sweeper on each job (the trial number); null outside a sweep job
    trial: Optional[int] = None


def register() -> None:
    """`hydra/sweeper=lighttrack` and its sampler and pruner options, in Hydra's ConfigStore; once (the store
    itself says whether it holds them: this module keeps no state, and Hydra's plugin scan may run it again)."""
    cs = ConfigStore.instance()
    last_name, _ = PRUNER_OPTIONS[-1]
    if cs.get_type(f"hydra/sweeper/pruner/{last_name}.yaml") == ObjectType.CONFIG:
        return
    cs.store(group="hydra/sweeper", name="lighttrack", node=LightTrackSweeperConf, provider="lighttrack")
    for name, node in SAMPLER_OPTIONS:
        cs.store(group="hydra/sweeper/sampler", name=name, node=node, provider="lighttrack")
    for name, node in PRUNER_OPTIONS:
        cs.store(group="hydra/sweeper/pruner", name=name, node=node, provider="lighttrack")
