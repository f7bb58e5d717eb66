"""The sweep loop: Optuna's ask/tell around Hydra's launcher, in batches of n_jobs trials.

Each asked trial is composed and costed before it trains: a config that fails validation fails untrained,
one over the budget is pruned untrained, one whose resolved config matches an earlier trial is settled with
that trial's result. The rest are launched (launch.py: a submitit job that ended without a result fails its trial
alone); what each job returns is checked against the objectives.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.errors import CompactHydraException
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from search.objectives import (ObjectiveError, non_dominated, objective_entries, objective_values,
                               parse_objectives, returned_figures, scalar_metrics)
from search.record import Stage, StudyAttr, TrialAttr, reason_attr
from search.space import Space, build_space, format_value, merge_overrides
from search.study import (DB_RETRY_SECONDS, Beating, StorageError, fail_orphans, fail_stale_trials, heartbeat,
                          is_lockable, open_storage, owner_attrs, recently_disconnected, retried, retry_of,
                          storage_location, study_lock)
from tracker.config import config_differences, job_config
from tracker.io import atomic_write_text, stable_hash
from tracker.version import MODEL_VERSION

from ._confirmation import plan_confirmation
from ._outcome import Outcome, TimedTask, threads_per_job
from ._recipe import comparable_recipe, config_key, study_recipe
from .jobs import INTERMEDIATE_FIDELITIES, INTERMEDIATE_KEY
from .launch import batch_size, is_submitit, launch
from .workers import Workers

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# with heartbeats, study.ask warns that Optuna beats inside study.optimize only: the sweeper beats itself (Beating)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
optuna.logging.set_verbosity(optuna.logging.WARNING)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
INT8_OVERRIDE = "evaluation.quantize=int8"  # hydra.sweeper.int8=true adds it to every trial
STORAGE_RECORD = "storage.json"  # in a sweep directory: the study and storage its trial folders belong to


def _shown(location: str) -> str:
    """A storage location fit to print and store: a URL's password hidden."""
    if "://" not in location:
        return location
    try:
        from sqlalchemy.engine import make_url

        return make_url(location).render_as_string(hide_password=True)
    except Exception:
        return location.split("://", 1)[0] + "://..."


class SweepConfigError(ValueError, CompactHydraException):
    """A sweeper setting that cannot work; raised before any trial runs. Hydra prints its message alone, no
    traceback (CompactHydraException), also when it is raised after the sweeper was made."""


class SweepFailed(SystemExit):
    """Every trial this process ran failed: the process exits with status 1 (logged, no traceback)."""


class AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler calls study.stop() from after_trial, which only works inside optimize(); the
    sweep loop checks is_exhausted() itself."""

    def after_trial(self, study: Any, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        return None


@dataclass
class Job:
    trial: optuna.Trial
    overrides: list[str]
    params: dict[str, Any]
    run_dir: str
    key: str
    role: Optional[str] = None
    started: float = field(default_factory=time.perf_counter)


def _budget(budget: Any) -> dict[str, float]:
    """The configured upper bounds (null ones dropped); a bound below 0 would prune every candidate."""
    bounds = {}
    for name, limit in dict(budget or {}).items():
        if limit is None:
            continue
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or math.isnan(limit) or limit < 0:
            raise SweepConfigError(f"hydra.sweeper.budget.{name}={limit!r} is not allowed: null (no bound) or a "
                                   "number >= 0")
        bounds[str(name)] = limit
    return bounds


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:.3g}"
    return str(value)


class SweeperImpl:
    def __init__(self, sampler: Any, pruner: Any, study_name: str, storage: Optional[str], objectives: Any,
                 space: Any, n_trials: Optional[int], max_trials: Optional[int], n_jobs: Optional[int], seed: int,
                 cost: Any, budget: Any, enqueue: Any, max_settled: int = 200, trial: Optional[int] = None,
                 confirm: Any = None, dry_run: bool = False, int8: bool = False, count_failed: bool = False,
                 max_failures: int = 5, heartbeat_interval: Optional[int] = None, grace_period: Optional[int] = None,
                 retry_failed: int = 1, db_retry_seconds: float = DB_RETRY_SECONDS, workers: int = 1) -> None:
        self.dry_run, self.int8 = dry_run, int8
        self.workers = workers
        self.count_failed, self.max_failures = count_failed, max_failures
        self.failed_in_a_row = 0
        self.sampler_cfg, self.pruner_cfg = sampler, pruner
        self.study_name, self.storage = study_name, storage
        try:
            self.objectives = parse_objectives(OmegaConf.to_container(objectives, resolve=True)
                                               if OmegaConf.is_config(objectives) else objectives)
        except ValueError as e:  # a name no trial returns would train every trial, then fail each
            raise SweepConfigError(str(e)) from None
        self.space_cfg = space
        self.n_trials, self.max_trials, self.n_jobs, self.seed = n_trials, max_trials, n_jobs, seed
        self.max_settled = max_settled
        self.cost_cfg = cost
        self.budget = _budget(budget)
        self.enqueue = {str(k): list(v) for k, v in dict(enqueue or {}).items()}
        self.confirm = {"seeds": 1, "front": 4, "max_trials": None, "every": False, **dict(confirm or {})}
        for name, value in self.confirm.items():
            if name == "every":
                if not isinstance(value, bool):
                    raise SweepConfigError(f"hydra.sweeper.confirm.every={value!r} is not allowed: true or false")
                continue
            if name not in ("seeds", "front", "max_trials"):
                raise SweepConfigError(f"hydra.sweeper.confirm.{name} is not a setting: seeds, front, max_trials, "
                                       "every")
            if (value is not None or name != "max_trials") and (
                    isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "max_trials" else 1)):
                raise SweepConfigError(f"hydra.sweeper.confirm.{name}={value!r} is not allowed: "
                                       + ("null or an integer >= 0" if name == "max_trials" else "an integer >= 1"))
        for name in ("n_trials", "max_trials", "n_jobs", "max_settled", "max_failures", "workers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SweepConfigError(f"hydra.sweeper.{name}={value} is not allowed: null or an integer >= 1")
        for name, value in (("heartbeat_interval", heartbeat_interval), ("grace_period", grace_period)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise SweepConfigError(f"hydra.sweeper.{name}={value!r} is not allowed: null ("
                                       + ("no heartbeats" if name == "heartbeat_interval" else
                                          "2 x hydra.sweeper.heartbeat_interval") + ") or an integer >= 1 (seconds)")
        if isinstance(retry_failed, bool) or not isinstance(retry_failed, int) or retry_failed < 0:
            raise SweepConfigError(f"hydra.sweeper.retry_failed={retry_failed!r} is not allowed: an integer >= 0 (how "
                                   "many times a trial whose sweep process stopped beating is re-run; 0: never)")
        if grace_period is not None and heartbeat_interval is None:
            raise SweepConfigError(f"hydra.sweeper.grace_period={grace_period} is not used: heartbeats are off "
                                   "(hydra.sweeper.heartbeat_interval=null); set hydra.sweeper.heartbeat_interval too")
        if grace_period is not None and grace_period <= heartbeat_interval:
            raise SweepConfigError(f"hydra.sweeper.grace_period={grace_period} is not allowed with "
                                   f"hydra.sweeper.heartbeat_interval={heartbeat_interval}: null (2 x the interval) "
                                   "or an integer > the interval (a live trial beats once per interval, and would be "
                                   "failed between two beats)")
        if isinstance(db_retry_seconds, bool) or not isinstance(db_retry_seconds, (int, float)) or \
                not math.isfinite(db_retry_seconds) or db_retry_seconds < 0:
            raise SweepConfigError(f"hydra.sweeper.db_retry_seconds={db_retry_seconds!r} is not allowed: a number of "
                                   "seconds >= 0 (how long a storage call is retried while the database is "
                                   "unreachable; 0: no retry)")
        self.db_retry = float(db_retry_seconds)
        self.heartbeat = heartbeat(heartbeat_interval, grace_period, retry_failed)
        self.beating: Optional[Beating] = None
        if n_trials is None and max_trials is None:
            raise SweepConfigError("hydra.sweeper.n_trials and hydra.sweeper.max_trials are both null: set one "
                                   "(n_trials: trials this process adds; max_trials: the study's total)")
        if sampler is not None and sampler.get("seed") is not None:
            raise SweepConfigError(f"hydra.sweeper.sampler.seed={sampler.get('seed')} is not used: the sweeper seeds "
                                   "its sampler from hydra.sweeper.seed (one stream per sweep process sharing the "
                                   "study); set hydra.sweeper.seed instead")
        self.multi = len(self.objectives) > 1
        if self.multi and pruner is not None and pruner.get("_target_") != "optuna.pruners.NopPruner":
            raise SweepConfigError(f"hydra.sweeper.pruner={pruner.get('_target_')} is not allowed with "
                                   f"{len(self.objectives)} objectives: Optuna prunes single-objective studies "
                                   "only (use hydra/sweeper/pruner=none, or one objective)")

    # -- set-up --------------------------------------------------------------------------------------------
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.cost_fn: Optional[Callable[[DictConfig], dict]] = instantiate(self.cost_cfg) if self.cost_cfg else None
        if self.budget and self.cost_fn is None:
            raise SweepConfigError(f"hydra.sweeper.budget={self.budget} needs hydra.sweeper.cost (a callable that "
                                   "returns the cost figures the budget names)")
        self.location = storage_location(self.storage, config.hydra.sweep.dir)
        self.batch_from = "hydra.sweeper.n_jobs"
        if self.n_jobs is None:
            self.n_jobs, self.batch_from = batch_size(config.hydra.launcher)
        parallel = config.hydra.launcher.get("array_parallelism", None)
        if self.batch_from == "hydra.launcher.array_parallelism" and parallel == 256:
            log.warning("hydra.sweeper.n_jobs is null: batches of 256 trials (submitit's default "
                        "hydra.launcher.array_parallelism), all asked before any of them returns, so the sampler "
                        "learns nothing until the first batch ends; set hydra.sweeper.n_jobs=K (the trials to run at "
                        "once)")
        elif parallel is not None and self.n_jobs > parallel:
            log.warning("hydra.sweeper.n_jobs=%d > hydra.launcher.array_parallelism=%d: SLURM runs %d trials of each "
                        "batch at once and the rest wait in its queue", self.n_jobs, parallel, parallel)
        threads = threads_per_job(config.hydra.launcher, self.n_jobs, workers=self.workers)
        if threads:
            log.info("%d trial(s) at once in each of %d sweep process(es) on %d cores: %d torch thread(s) each",
                     self.n_jobs, self.workers, os.cpu_count() or 1, threads)
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=TimedTask(task_function, threads), config=config)
        self.job_idx = 0

    def _connect(self) -> Any:
        """The storage, opened before anything else: one that cannot be is a config error, not a traceback."""
        try:
            return open_storage(self.location, self.heartbeat, self.db_retry)
        except StorageError as e:
            value = "null" if self.storage is None else repr(self.storage)
            where = "" if self.location == self.storage else f" (the journal file {self.location})"
            raise SweepConfigError(
                f"hydra.sweeper.storage={value}{where} cannot be opened: {e}. Allowed: null (a journal "
                "file in hydra.sweep.dir), a writable file path, or an Optuna storage URL such as "
                "sqlite:////absolute/path.db") from None

    def _claim(self, sweep_dir: Path) -> None:
        """A sweep directory holds the trial folders of one study in one storage: the same study name in another
        storage would resume into (and overwrite) the first one's folders and report, so it is refused."""
        owner = sweep_dir / STORAGE_RECORD
        mine = {"study": self.study_name, "storage": stable_hash(self.location), "shown": _shown(self.location)}
        if owner.is_file():
            theirs = json.loads(owner.read_text())
            if theirs.get("storage") != mine["storage"]:
                raise SweepConfigError(
                    f"{sweep_dir} holds the trials of study {theirs.get('study')!r} in {theirs.get('shown')}; this "
                    f"sweep's study is in {mine['shown']}, and its trials would overwrite those. Set "
                    "hydra.sweep.dir=<another folder> (or hydra.sweeper.study_name=<another name>)")
            return
        atomic_write_text(owner, json.dumps(mine, indent=2))

    def _warn_if_never_pruned(self, space: Space, fixed: DictConfig) -> None:
        """A pruner acts on the values a trial reports each epoch; tracker.train reports them at some
        fidelities only, so at the others the pruner silently never prunes (the task may still report, so
        this warns rather than refuses)."""
        if self.pruner_cfg is None or self.pruner_cfg.get("_target_") == "optuna.pruners.NopPruner":
            return
        fidelities = {OmegaConf.select(fixed, "trainer.fidelity", default=None)}
        dim = next((d for d in space.dimensions if d.name == "trainer.fidelity"), None)
        if dim is not None:
            fidelities = set(getattr(dim.distribution, "choices", fidelities))
        silent = sorted(str(f) for f in fidelities - {None, *INTERMEDIATE_FIDELITIES})  # None: not tracker.train
        if silent:
            log.warning("hydra.sweeper.pruner=%s will not prune at trainer.fidelity=%s: tracker.train reports "
                        "its per-epoch %s only at trainer.fidelity in %s, so those trials run to the end "
                        "(use trainer.fidelity=head, or hydra/sweeper/pruner=none)",
                        self.pruner_cfg.get("_target_"), ",".join(silent), INTERMEDIATE_KEY,
                        list(INTERMEDIATE_FIDELITIES))

    def _open_study(self, space: Space, storage: Any, fixed: DictConfig) -> optuna.Study:
        directions = [o.direction for o in self.objectives]
        study = optuna.create_study(storage=storage, study_name=self.study_name, directions=directions,
                                    pruner=instantiate(self.pruner_cfg) if self.pruner_cfg else None,
                                    load_if_exists=True)
        have = [d.name.lower() for d in study.directions]
        names = [o.name for o in self.objectives]
        if have != directions or (study.metric_names and study.metric_names != names):
            raise SweepConfigError(
                f"study {self.study_name!r} in {self.location} optimises {study.metric_names} {have}, but "
                f"hydra.sweeper.objectives asks {names} {directions}: use another hydra.sweeper.study_name")
        recipe = study_recipe(fixed)
        if not study.metric_names:
            study.set_metric_names(names)
            study.set_user_attr(StudyAttr.OBJECTIVES, objective_entries(self.objectives))
            study.set_user_attr(StudyAttr.BUDGET, self.budget)
            study.set_user_attr(StudyAttr.SPACE, {d.name: repr(d.distribution) for d in space.dimensions})
            study.set_user_attr(StudyAttr.RECIPE, recipe)
        elif StudyAttr.RECIPE in study.user_attrs and \
                (changed := config_differences(comparable_recipe(study.user_attrs[StudyAttr.RECIPE]),
                                               recipe)):
            old_version = study.user_attrs[StudyAttr.RECIPE].get("model_version", 1)
            raise SweepConfigError(
                f"study {self.study_name!r} in {self.location} was run with another recipe: "
                + (f"its trials were trained with tracker model version {old_version}, this code builds version "
                   f"{MODEL_VERSION} (see tracker/version.py); " if old_version != MODEL_VERSION else "")
                + "; ".join(f"{k}: {a!r} then, {b!r} now" for k, a, b in changed[:5])
                + (f" (and {len(changed) - 5} more)" if len(changed) > 5 else "")
                + ". Its trials would not compare with new ones: set hydra.sweeper.study_name=<new name> "
                "(or delete the study's folder to start it again)")
        study.set_user_attr(StudyAttr.CONFIRM, dict(self.confirm))
        index = int(study.user_attrs.get(StudyAttr.SWEEP_PROCESSES, 0))
        study.set_user_attr(StudyAttr.SWEEP_PROCESSES, index + 1)
        # each process gets its own deterministic stream, so concurrent sweeps do not propose the same trials
        seed = self.seed + 1000 * index
        if self.sampler_cfg.get("_target_") == "optuna.samplers.GridSampler":
            study.sampler = AskTellGridSampler(space.grid(), seed=seed)
        else:
            study.sampler = instantiate(self.sampler_cfg, seed=seed)
        self._fail_stale(study, storage)  # under study_lock, as fail_orphans
        orphans = fail_orphans(study, storage, unowned=is_lockable(self.location))
        if orphans:
            log.warning("trials %s were RUNNING in a sweep process that died: marked FAIL%s", orphans,
                        self._retries(study, orphans))
        return study

    def _fail_stale(self, study: optuna.Study, storage: Any) -> None:
        """With heartbeats: fails the RUNNING trials that stopped beating (their sweep process died or hangs, on any
        host) and re-enqueues them (hydra.sweeper.retry_failed)."""
        if self.heartbeat is None:
            return
        if recently_disconnected(self.location, self.heartbeat.grace):
            # every process lost the database too, and their trials did not beat meanwhile: they beat again within an
            # interval of its return, so none is judged until a grace period after it
            log.debug("the database was out less than %d s ago: no trial is judged stale yet", self.heartbeat.grace)
            return
        stale = fail_stale_trials(study, storage, held=self.beating.held if self.beating is not None else ())
        if stale:
            log.warning("trials %s were RUNNING in a sweep process that stopped beating (no heartbeat for more than "
                        "%d s): marked FAIL%s", stale, self.heartbeat.grace, self._retries(study, stale))

    def _retries(self, study: optuna.Study, failed: list[int]) -> str:
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        copies = {retry_of(t.system_attrs): t.number for t in waiting}
        again = [f"{n} as trial {copies[n]}" for n in failed if n in copies]
        return f"; re-enqueued: {', '.join(again)}" if again else ""

    def _compose(self, overrides: Sequence[str], number: Optional[int] = None) -> DictConfig:
        extra = [] if number is None else [f"hydra.sweeper.trial={number}"]
        return self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides) + extra)

    def _enqueue_references(self, study: optuna.Study, space: Space) -> None:
        """Reference trials (the baseline, the user's head) go first, once per study; again if their sweep process
        died under them (a killed `make sweep` must not leave its study without a baseline)."""
        trials = study.get_trials(deepcopy=False)
        roles = {t.user_attrs.get(TrialAttr.ROLE) for t in trials
                 if not t.user_attrs.get(TrialAttr.ORPHANED) and t.state != TrialState.FAIL}
        for role, overrides in self.enqueue.items():
            if role in roles:
                continue
            failed = [t for t in trials if t.user_attrs.get(TrialAttr.ROLE) == role and t.state == TrialState.FAIL
                      and not t.user_attrs.get(TrialAttr.ORPHANED)]
            if len(failed) >= self.max_failures:
                raise SweepConfigError(
                    f"the {role} ({' '.join(overrides)}) failed {len(failed)} times (hydra.sweeper.max_failures="
                    f"{self.max_failures}), last: {failed[-1].user_attrs.get(TrialAttr.FAIL_REASON)}. Every "
                    f"candidate is compared with it: fix what fails, or drop it from hydra.sweeper.enqueue")
            if failed:  # a reference that failed (an interrupted run, a transient error) is asked again
                log.warning("the %s failed before (%s): asking it again", role,
                            failed[-1].user_attrs.get(TrialAttr.FAIL_REASON))
            cfg = self._compose(merge_overrides(space.fixed, overrides))
            choices = cfg.hydra.runtime.choices

            def lookup(name: str) -> Any:
                return choices[name] if name in choices else OmegaConf.select(cfg, name, default=None)

            params = space.reference_params(lookup)
            study.enqueue_trial(params, user_attrs={TrialAttr.ROLE: role, TrialAttr.REFERENCE_OVERRIDES: overrides,
                                                    TrialAttr.REFERENCE_PARAMS: sorted(params)})
            log.info("enqueued the %s: %s", role, " ".join(overrides))

    # -- the loop ------------------------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> list[tuple[int, str]]:
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        space = build_space(self.space_cfg, arguments, parser)
        if self.int8:  # every trial also scores its INT8 model: a fixed override, part of the study's recipe
            space.fixed = merge_overrides(space.fixed, [INT8_OVERRIDE])
        if self.dry_run:
            self._dry_run(space)
            return []
        sweep_dir = Path(self.config.hydra.sweep.dir)
        storage = self._connect()
        self._claim(sweep_dir)
        atomic_write_text(sweep_dir / "multirun.yaml", OmegaConf.to_yaml(self.config))
        fixed = self._compose(space.fixed)
        self._warn_if_never_pruned(space, fixed)
        with study_lock(self.location, self.db_retry):
            study = self._open_study(space, storage, fixed)
            self._enqueue_references(study, space)
        log.info("study %r in %s: %d trial(s) so far; objectives %s; dimensions %s", self.study_name, self.location,
                 len(study.trials), [f"{o.direction[:3]} {o.name}" for o in self.objectives],
                 [d.name for d in space.dimensions])
        log.info("watch it live: optuna-dashboard %s  (or: optuna trials --study-name %s --storage %s)",
                 self.location, self.study_name, self.location)
        log.info("trials launch in batches of %d (%s) through %s", self.n_jobs, self.batch_from,
                 type(self.launcher).__name__ + (" (a job array per batch)" if is_submitit(self.launcher) else ""))
        self.states: Counter = Counter()
        self.launched = 0
        self.storage_object = storage
        if self.heartbeat is not None:
            self.beating = Beating(storage, self.heartbeat.interval)
            log.info("heartbeats every %d s: a trial with none for %d s is failed and re-enqueued (at most %d "
                     "time(s))", self.heartbeat.interval, self.heartbeat.grace, self.heartbeat.retry)
        workers = Workers(self.workers, sweep_dir)  # the references are in the study: they start on it as it is
        try:
            self._loop(study, space, self._room)
            if self.confirm["seeds"] > 1:
                self._loop(study, space, self._confirmation_room)
            failed_workers = workers.join()
        except BaseException:
            workers.stop()
            raise
        finally:
            if self.beating is not None:
                self.beating.close()
                self.beating = None
        self._summary(study)
        if failed_workers:  # logged with their logs' tails by join: a script must be able to tell
            log.error("sweep worker(s) %s failed: this sweep exits with status 1", failed_workers)
            raise SweepFailed(1)
        return [(t.number, t.state.name) for t in study.trials]

    def _dry_run(self, space: Space, shown: int = 5) -> None:
        """What the sweep would do, checked as a real start checks it (the config composes, every candidate shown
        is costed and validated), with nothing trained or written."""
        self._compose(space.fixed)  # the config every trial starts from must compose, as at a real start
        lines = ["dry run: nothing is trained or written", "space (sampled in this order):"]
        for dim in space.dimensions:
            when = f"  when {dict(dim.when)}" if dim.when else ""
            lines.append(f"  {dim.name}: {dim.distribution}{when}")
        count = space.count()
        lines.append(f"candidates: {count if count is not None else 'unbounded (a continuous dimension)'}")
        lines.append(f"objectives: {', '.join(f'{o.direction} {o.name}' for o in self.objectives)}; budget: "
                     f"{self.budget or 'none'}; references: {', '.join(self.enqueue) or 'none'}")
        study = None
        if Path(self.location).is_file() or "://" in self.location:
            try:
                study = optuna.load_study(study_name=self.study_name, storage=self._connect())
            except KeyError:
                study = None
        if study is None:
            lines.append(f"study {self.study_name!r} ({self.location}): new; the first start trains the references and "
                         f"{self.max_trials or self.n_trials} trial(s) in all")
        else:
            trials = study.get_trials(deepcopy=False)
            trained = sum(bool(t.user_attrs.get(TrialAttr.TRAINED)) and t.user_attrs.get(TrialAttr.STAGE) !=
                          Stage.CONFIRM for t in trials)
            left = "no limit" if self.max_trials is None else max(self.max_trials - trained, 0)
            lines.append(f"study {self.study_name!r} ({self.location}): {len(trials)} trial(s), {trained} trained in "
                         f"the search, budget left: {left}"
                         + ("" if left else f" (raise hydra.sweeper.max_trials above {self.max_trials} to extend it)"))
        if self.confirm["seeds"] > 1:
            bound = "" if self.confirm["max_trials"] is None else f" (at most {self.confirm['max_trials']} repeats)"
            lines.append(f"then the confirmation stage: {self.confirm['seeds']} seeds for the {self.confirm['front']} "
                         f"most accurate front members and the references{bound}")
        probe = optuna.create_study(directions=[o.direction for o in self.objectives],
                                    sampler=optuna.samplers.RandomSampler(seed=self.seed))
        lines.append(f"the first {shown} random candidates, costed before training:")
        for _ in range(shown):
            trial = probe.ask()
            params = space.suggest(trial)
            try:
                cfg = self._compose(space.overrides(params))
                cost = self.cost_fn(cfg) if self.cost_fn else {}
                over = self._over_budget(cost)
                figures = " ".join(f"{k}={_short(v)}" for k, v in cost.items())
                lines.append(f"  {' '.join(f'{k}={format_value(v)}' for k, v in params.items())} | {figures}"
                             + (f" | over budget: {over}" if over else ""))
            except Exception as e:  # what a real sweep would record as a rejected candidate
                lines.append(f"  {' '.join(f'{k}={format_value(v)}' for k, v in params.items())} | rejected: "
                             f"{type(e).__name__}: {e}")
        print("\n".join(lines), flush=True)

    def _loop(self, study: optuna.Study, space: Space, room: Callable[[optuna.Study], bool]) -> None:
        """Asks, prepares and launches trials in batches of n_jobs while `room(study)` says so (it runs under the
        study's lock, just before each ask)."""
        settled_in_a_row = 0
        while True:
            batch: list[Job] = []
            deferred: list[tuple[optuna.Trial, Job]] = []
            while len(batch) < self.n_jobs and (self.n_trials is None or self.launched < self.n_trials):
                if settled_in_a_row >= self.max_settled:
                    log.warning("stopping: the last %d candidates were all settled without training (over "
                                "budget or duplicates); widen the space or the budget", settled_in_a_row)
                    break
                if self.failed_in_a_row >= self.max_failures:
                    log.error("stopping: the last %d trials failed (hydra.sweeper.max_failures=%d); their reasons are "
                              "in the study and each trial's error.txt", self.failed_in_a_row, self.max_failures)
                    break
                with study_lock(self.location, self.db_retry) as lock:
                    while True:  # the checks, then the ask, under the lock throughout
                        losses = lock.losses
                        self._fail_stale(study, self.storage_object)
                        has_room = room(study)
                        if lock.intact_since(losses):
                            break
                        log.warning("the study lock was lost while this process checked the study: checking again")
                    if not has_room:
                        break
                    trial = study.ask()
                    if self.beating is not None:  # it beats from its ask to its tell
                        self.beating.add(trial._trial_id)
                    job = self._prepare(study, trial, space, batch, deferred)
                    if job is not None:
                        trial.set_user_attr(TrialAttr.TRAINED, True)
                if job is not None:
                    batch.append(job)
                    self.launched, settled_in_a_row = self.launched + 1, 0
                elif trial.user_attrs.get(TrialAttr.FAIL_REASON):  # rejected configs count: a broken space ends
                    self.launched += 1
                else:
                    settled_in_a_row += 1
            if not batch and not deferred:
                return
            self._run(study, batch)
            for trial, original in deferred:
                self._settle_duplicate(study, trial, study.trials[original.trial.number], time.perf_counter())

    def _room(self, study: optuna.Study) -> bool:
        """The search stage: until the grid is exhausted or max_trials trained (confirmation trials not counted)."""
        if isinstance(study.sampler, optuna.samplers.GridSampler) and study.sampler.is_exhausted(study) and \
                not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            log.info("the grid is exhausted")
            return False
        if self.max_trials is None:
            return True
        trials = study.get_trials(deepcopy=False)
        again = retried(trials)  # a failed trial re-run by a retry: the retry counts (once it trains), not it
        counted = [t for t in trials if t.state in FINISHED + (TrialState.RUNNING,) and t.number not in again
                   and t.user_attrs.get(TrialAttr.STAGE) != Stage.CONFIRM
                   and (t.state == TrialState.FAIL and self.count_failed
                        or t.state != TrialState.FAIL and t.user_attrs.get(TrialAttr.TRAINED))]
        if len(counted) >= self.max_trials and not self.launched:
            log.info("the study's search is at its budget (%d trained, hydra.sweeper.max_trials=%d): raise "
                     "hydra.sweeper.max_trials to search more", len(counted), self.max_trials)
        return len(counted) < self.max_trials

    # -- the confirmation stage ----------------------------------------------------------------------------
    def _confirmation_room(self, study: optuna.Study) -> bool:
        """Enqueues the repeats still missing (the front may change as seeds arrive), then: is one waiting?"""
        plan_confirmation(study, self.objectives, self.confirm)
        return any(t.user_attrs.get(TrialAttr.STAGE) == Stage.CONFIRM
                   for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    def _prepare(self, study: optuna.Study, trial: optuna.Trial, space: Space, batch: list[Job],
                 deferred: list) -> Optional[Job]:
        """Suggest, compose and cost one trial; settle it here when that is enough (returns None)."""
        started = time.perf_counter()
        role = trial.user_attrs.get(TrialAttr.ROLE)
        stage = trial.user_attrs.get(TrialAttr.STAGE, Stage.SEARCH)
        if stage == Stage.CONFIRM:  # a repeat: the first trial's overrides with another seed
            first = study.trials[trial.user_attrs[TrialAttr.REPEAT_OF]]
            params = space.suggest(trial, only=list(first.params))
            overrides = merge_overrides(first.user_attrs[TrialAttr.OVERRIDES],
                                        [f"trainer.seed={trial.user_attrs[TrialAttr.CONFIRM_SEED]}"])
        elif role is not None:
            params = space.suggest(trial, only=trial.user_attrs.get(TrialAttr.REFERENCE_PARAMS, []))
            overrides = merge_overrides(space.fixed, trial.user_attrs[TrialAttr.REFERENCE_OVERRIDES])
        else:
            params = space.suggest(trial)
            overrides = space.overrides(params)
        for k, v in {TrialAttr.OVERRIDES: overrides, TrialAttr.STAGE: stage, **owner_attrs()}.items():
            trial.set_user_attr(k, v)
        try:
            cfg = self._compose(overrides, trial.number)
            task = job_config(cfg)
            key = config_key(cfg)
            trial.set_user_attr(TrialAttr.SEED, OmegaConf.select(task, "trainer.seed", default=None))
            if "head" in task:
                trial.set_user_attr(TrialAttr.HEAD, OmegaConf.to_container(task.head, resolve=True, enum_to_str=True))
            cost = self.cost_fn(cfg) if self.cost_fn else {}
        except Exception as e:  # a config that cannot compose or validate never trains
            self._tell(study, trial, params, role, TrialState.FAIL, started,
                       reason=f"rejected before training: {type(e).__name__}: {e}")
            return None
        run_dir = str((Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir)).resolve())
        trial.set_user_attr(TrialAttr.CONFIG_KEY, key)
        trial.set_user_attr(TrialAttr.COST, cost)
        trial.set_user_attr(TrialAttr.RUN_DIR, run_dir)
        if role is None and stage == Stage.SEARCH:  # references and repeats are exempt
            over = self._over_budget(cost)
            if over:
                self._tell(study, trial, params, role, TrialState.PRUNED, started,
                           reason=f"over budget before training: {over}")
                return None
        original = self._reference(study, role, trial.number) if role is not None and stage == Stage.SEARCH \
            else None
        original = original or self._earlier(study, key, trial.number)
        if original is not None:
            in_batch = next((j for j in batch if j.trial.number == original.number), None)
            if in_batch is not None:
                deferred.append((trial, in_batch))
                return None
            self._settle_duplicate(study, trial, original, started)
            return None
        return Job(trial, overrides, params, run_dir, key, role, started)

    def _over_budget(self, cost: dict) -> str:
        problems = []
        for name, limit in self.budget.items():
            if name not in cost:
                raise SweepConfigError(f"hydra.sweeper.budget.{name}: the cost function returns no {name} "
                                       f"(it returns {sorted(cost)})")
            if cost[name] > limit:
                problems.append(f"{name}={_short(cost[name])} > {_short(limit)}")
        return ", ".join(problems)

    @staticmethod
    def _earlier(study: optuna.Study, key: str, number: int) -> Optional[FrozenTrial]:
        """The trial with the same config whose result this one takes instead of training: the earliest COMPLETE
        one, else the earliest that was pruned or is RUNNING with a LOWER number. Asymmetric, so that two copies
        asked at once by two processes never settle as duplicates of each other (the lower one trains); failed
        trials may rerun, and a trial settled as a duplicate is nobody's original."""
        matches = [t for t in study.get_trials(deepcopy=False)
                   if t.number != number and t.user_attrs.get(TrialAttr.CONFIG_KEY) == key
                   and t.user_attrs.get(TrialAttr.DUPLICATE_OF) is None]
        complete = [t for t in matches if t.state == TrialState.COMPLETE]
        others = [t for t in matches if t.state == TrialState.PRUNED
                  or (t.state == TrialState.RUNNING and t.number < number)]
        return (complete or others or [None])[0]

    @staticmethod
    def _reference(study: optuna.Study, role: str, number: int) -> Optional[FrozenTrial]:
        """The role's reference when trial `number` is a copy of it: processes starting together may each
        enqueue the references, and the study decides which counts: the lowest-numbered trial of the role (its
        search stage, neither failed nor orphaned nor itself a copy). Later copies take its result (or defer to it)
        without training; a reference that failed is asked again and the new trial is the reference."""
        first = next((t for t in study.get_trials(deepcopy=False)
                      if t.user_attrs.get(TrialAttr.ROLE) == role and not t.user_attrs.get(TrialAttr.ORPHANED)
                      and t.state != TrialState.FAIL and t.user_attrs.get(TrialAttr.DUPLICATE_OF) is None
                      and t.user_attrs.get(TrialAttr.STAGE, Stage.SEARCH) == Stage.SEARCH), None)
        return first if first is not None and first.number < number else None

    def _settle_duplicate(self, study: optuna.Study, trial: optuna.Trial, original: FrozenTrial,
                          started: float) -> None:
        trial.set_user_attr(TrialAttr.DUPLICATE_OF, original.number)
        params, role = dict(trial.params), trial.user_attrs.get(TrialAttr.ROLE)
        if original.state == TrialState.COMPLETE:
            for k in (TrialAttr.METRICS, TrialAttr.RUN_DIR):
                if k in original.user_attrs:
                    trial.set_user_attr(k, original.user_attrs[k])
            self._tell(study, trial, params, role, TrialState.COMPLETE, started, values=original.values,
                       reason=f"duplicate of trial {original.number}: its result, not trained again")
        else:
            where = "running in another process" if original.state == TrialState.RUNNING else \
                original.state.name
            self._tell(study, trial, params, role, TrialState.PRUNED, started,
                       reason=f"duplicate of trial {original.number} ({where}): not trained again")

    def _run(self, study: optuna.Study, batch: list[Job]) -> None:
        if not batch:
            return
        overrides = [j.overrides + [f"hydra.sweeper.trial={j.trial.number}"] for j in batch]
        try:  # a submitit job that ended without a result fails its own trial (launch.py), not the batch
            returns = launch(self.launcher, overrides, self.job_idx,
                             failed=lambda reason, details: Outcome(error=reason, traceback=details))
        except KeyboardInterrupt:
            for j in batch:
                self._tell(study, j.trial, j.params, j.role, TrialState.FAIL, j.started, reason="interrupted")
            raise
        except Exception as e:  # the launcher itself broke (e.g. a worker was killed): the batch failed
            for j in batch:
                self._tell(study, j.trial, j.params, j.role, TrialState.FAIL, j.started,
                           reason=f"launcher error: {type(e).__name__}: {e}")
            return
        finally:
            self.job_idx += len(batch)
        for job, ret in zip(batch, returns):
            self._finish(study, job, ret)

    def _finish(self, study: optuna.Study, job: Job, ret: Any) -> None:
        try:
            outcome = ret if isinstance(ret, Outcome) else ret.return_value
        except Exception as e:
            outcome = Outcome(error=f"{type(e).__name__}: {e}")
        if not isinstance(outcome, Outcome):
            outcome = Outcome(value=outcome)
        trial = job.trial
        if self._failed_elsewhere(trial):
            return
        if outcome.seconds:
            trial.set_user_attr(TrialAttr.DURATION_S, round(outcome.seconds, 3))
        if outcome.traceback:
            atomic_write_text(Path(job.run_dir) / "error.txt", outcome.traceback)
        if outcome.error is not None:
            state = TrialState.PRUNED if outcome.pruned else TrialState.FAIL
            self._tell(study, trial, job.params, job.role, state, job.started, reason=outcome.error,
                       seconds=outcome.seconds or None)  # a job with no result: the time since its ask
            return
        figures = returned_figures(outcome.value)
        metrics = scalar_metrics(figures)
        if metrics:
            trial.set_user_attr(TrialAttr.METRICS, metrics)
        if isinstance(figures, Mapping):  # the cost settled before training owns its figures (measured latency)
            figures = {**figures, **trial.user_attrs.get(TrialAttr.COST, {})}
        try:
            values = objective_values(figures, self.objectives)
        except ObjectiveError as e:
            self._tell(study, trial, job.params, job.role, TrialState.FAIL, job.started, reason=str(e),
                       seconds=outcome.seconds)
            return
        self._tell(study, trial, job.params, job.role, TrialState.COMPLETE, job.started, values=values,
                   seconds=outcome.seconds)

    def _failed_elsewhere(self, trial: optuna.Trial) -> bool:
        """Whether another sweep process failed this trial while it ran, as stale (this process stopped beating
        for longer than the grace period: it hung, or was suspended); its result is dropped (the retry re-runs it)."""
        if self.heartbeat is None:
            return False
        stored = self.storage_object.get_trial(trial._trial_id)
        if not stored.state.is_finished():
            return False
        if self.beating is not None:
            self.beating.discard(trial._trial_id)
        log.warning("trial %3d was marked %s by another sweep process while it ran here (%s): its result is "
                    "dropped", trial.number, stored.state.name, stored.user_attrs.get(TrialAttr.FAIL_REASON, "?"))
        return True

    def _tell(self, study: optuna.Study, trial: optuna.Trial, params: dict, role: Optional[str], state: TrialState,
              started: float, values: Optional[Sequence[float]] = None, reason: Optional[str] = None,
              seconds: Optional[float] = None) -> None:
        if self.beating is not None:  # a finished trial beats no more
            self.beating.discard(trial._trial_id)
        trial.set_user_attr(TrialAttr.TRAINED, bool(trial.user_attrs.get(TrialAttr.TRAINED)))
        if reason is not None:
            trial.set_user_attr(reason_attr(state.name), reason)
        if seconds is None:
            seconds = time.perf_counter() - started
            trial.set_user_attr(TrialAttr.DURATION_S, round(seconds, 3))
        study.tell(trial, values=list(values) if state == TrialState.COMPLETE else None, state=state,
                   skip_if_finished=True)
        self.states[state.name] += 1
        if trial.user_attrs.get(TrialAttr.TRAINED) or state == TrialState.FAIL:
            self.failed_in_a_row = self.failed_in_a_row + 1 if state == TrialState.FAIL else 0
        shown = " ".join(f"{k}={format_value(v)}" for k, v in params.items()) or "(no parameters)"
        if role:
            shown = f"[{role}] " + " ".join(trial.user_attrs.get(TrialAttr.OVERRIDES, []))
        if trial.user_attrs.get(TrialAttr.STAGE) == Stage.CONFIRM:
            shown = (f"[repeat of trial {trial.user_attrs.get(TrialAttr.REPEAT_OF)}, seed "
                     f"{trial.user_attrs.get(TrialAttr.CONFIRM_SEED)}] " + shown)
        again = retry_of(self.storage_object.get_trial_system_attrs(trial._trial_id))
        if again is not None:
            shown = f"[retry of trial {again}] " + shown
        figures = dict(trial.user_attrs.get(TrialAttr.COST, {}))
        figures.update(trial.user_attrs.get(TrialAttr.METRICS, {}))
        if values is not None:
            figures.update({o.name: v for o, v in zip(self.objectives, values)})
        wanted = list(dict.fromkeys([o.name for o in self.objectives] + ["auc", "head_macs"]))
        numbers = " ".join(f"{k}={_short(figures[k])}" for k in wanted if k in figures)
        line = f"trial {trial.number:>3} {state.name:<8} {seconds:7.1f} s | {shown} | {numbers}"
        if reason:
            line += f" | {reason}"
        (log.warning if state == TrialState.FAIL else log.info)(line)
        if trial.user_attrs.get(TrialAttr.TRAINED):
            log.info(self._progress(study))

    def _progress(self, study: optuna.Study) -> str:
        """`search 7/14 · confirm 2/6 · ETA 6 min · best auc 30.6 · front 3`: where the sweep stands after a
        trained trial. ETA: the trials left at the study's mean trial time, over the trials that run at once (n_jobs
        in each of the `workers` sweep processes); the confirmation stage's size is what is queued now: the front
        may still change it."""
        trials = study.get_trials(deepcopy=False)
        trained = [t for t in trials if t.user_attrs.get(TrialAttr.TRAINED) and t.state in FINISHED]
        search = sum(t.user_attrs.get(TrialAttr.STAGE, Stage.SEARCH) == Stage.SEARCH for t in trained)
        confirm_done = len(trained) - search
        confirm_queued = sum(t.user_attrs.get(TrialAttr.STAGE) == Stage.CONFIRM and t.state == TrialState.WAITING
                             for t in trials)
        parts = [f"search {search}/{self.max_trials}" if self.max_trials else f"search {search}"]
        if self.confirm["seeds"] > 1:
            parts.append(f"confirm {confirm_done}/{confirm_done + confirm_queued}" if confirm_queued or confirm_done
                         else f"confirm: {self.confirm['seeds']} seeds after the search")
        durations = [t.user_attrs[TrialAttr.DURATION_S] for t in trained if TrialAttr.DURATION_S in t.user_attrs]
        left = (max(self.max_trials - search, 0) if self.max_trials else 0) + confirm_queued
        if durations and left:
            eta = left * sum(durations) / len(durations) / max((self.n_jobs or 1) * self.workers, 1)
            parts.append(f"ETA {eta / 60:.0f} min" if eta >= 90 else f"ETA {eta:.0f} s")
        complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
        if complete:
            first = self.objectives[0]
            values = [t.values[0] for t in complete]
            parts.append(f"best {first.name} {_short(max(values) if first.direction == 'maximize' else min(values))}")
            if self.multi:
                parts.append(f"front {int(non_dominated([t.values for t in complete], self.objectives).sum())}")
        return "progress: " + " · ".join(parts)

    def _summary(self, study: optuna.Study) -> None:
        counts = Counter(t.state.name for t in study.trials)
        log.info("study %r: %d trial(s) in the study (%s); this process finished %s. Storage: %s", self.study_name,
                 len(study.trials), dict(counts), dict(self.states), self.location)
        finished = sum(self.states.values())
        if finished and self.states.get("FAIL", 0) == finished:
            reasons = sorted({t.user_attrs.get(TrialAttr.FAIL_REASON, "?") for t in study.trials
                              if t.state == TrialState.FAIL})[:5]
            log.error("every trial this sweep ran failed (%d); reasons: %s", finished, reasons)
            raise SweepFailed(1)
