"""The sweeper's job side: how a trial's job (in the sweep process, or in a launcher's worker) finds its Optuna
trial again, to report intermediate values and be pruned.

The sweeper puts the trial number in `hydra.sweeper.trial`; the job rebuilds the trial from the storage
(search.study.open_storage, memoised per process: a job in the sweep process gets the sweeper's own storage
object, a journal is not replayed for each trial), the study name and that number. Hydra's plugin scan imports
this module in every Hydra app, so it imports Optuna and search.study only when called.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    import optuna

# what a job reports to its trial each epoch (tracker.train's on_epoch_end stats), and the trainer.fidelity
# values at which those stats hold it: at full and finetune fidelity an epoch has no validation pass
INTERMEDIATE_KEY = "val_iou"
INTERMEDIATE_FIDELITIES = ("head",)


def load(location: str, study_name: str, pruner: Any = None, heartbeat: Any = None,
         db_retry_seconds: float = 0) -> tuple[optuna.Study, Any]:
    """(study, storage) for a job; a random sampler, since a job only reports and asks the pruner (it never
    samples). `heartbeat` and `db_retry_seconds`: the sweeper's settings (search.study.Heartbeat,
    hydra.sweeper.db_retry_seconds), so that a job in the sweep process gets the sweeper's storage object (a job
    never beats: its sweep process beats for it), and a job elsewhere retries as the sweeper does."""
    import optuna

    from search.study import open_storage

    storage = open_storage(location, heartbeat, db_retry_seconds)
    study = optuna.load_study(study_name=study_name, storage=storage, pruner=pruner,
                              sampler=optuna.samplers.RandomSampler())
    return study, storage


def current_trial() -> Optional[optuna.Trial]:
    """The Optuna trial of the running Hydra job, or None outside a sweep job (a plain run or grid) or when
    the study has several objectives (Optuna prunes single-objective studies only)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    sweeper = hydra_cfg.sweeper
    number = sweeper.get("trial") if "study_name" in sweeper else None
    if number is None:
        return None
    if len(sweeper.objectives) != 1:
        return None
    import optuna
    from hydra.utils import instantiate

    from search.study import heartbeat, storage_location, trial_id

    location = storage_location(sweeper.storage, hydra_cfg.sweep.dir)
    beats = heartbeat(sweeper.get("heartbeat_interval"), sweeper.get("grace_period"), sweeper.get("retry_failed", 1))
    study, storage = load(location, sweeper.study_name, pruner=instantiate(sweeper.pruner), heartbeat=beats,
                          db_retry_seconds=sweeper.get("db_retry_seconds", 0) or 0)
    return optuna.Trial(study, trial_id(storage, study.study_name, int(number)))


def epoch_reporter(key: str = INTERMEDIATE_KEY) -> Optional[Callable[[int, dict], None]]:
    """An `on_epoch_end(epoch, stats)` callback that reports `stats[key]` to the job's trial and raises
    optuna.TrialPruned when the study's pruner says so; None when there is nothing to report to."""
    trial = current_trial()
    if trial is None:
        return None
    import optuna

    def report(epoch: int, stats: dict) -> None:
        if key not in stats:
            return
        value = float(stats[key])
        trial.report(value, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: {key}={value:.4f} (intermediate values "
                                     "below the pruner's cut)")

    return report
