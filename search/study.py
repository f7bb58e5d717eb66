"""Where a study lives and how a trial's job finds it again.

By default a study is an Optuna journal file, `<sweep dir>/journal.log`, which several local processes
append to safely (Optuna's file lock); any Optuna storage URL (sqlite:///..., postgresql://...) works too.
A job launched by the sweeper (in process or in a joblib worker) rebuilds its trial from the storage, the
study name and the trial number the sweeper put in `hydra.sweeper.trial`, so it can report intermediate
values and be pruned.
"""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import optuna
from optuna.trial import TrialState

from .record import TrialAttr

_LIVE: dict[str, Any] = {}

# what a job reports to its trial each epoch (tracker.train's on_epoch_end stats), and the trainer.fidelity
# values at which those stats hold it: at full and finetune fidelity an epoch has no validation pass
INTERMEDIATE_KEY = "val_iou"
INTERMEDIATE_FIDELITIES = ("head",)


def is_url(storage: str) -> bool:
    return "://" in storage


def storage_location(storage: Optional[str], sweep_dir: str | os.PathLike) -> str:
    """The storage as configured: a URL, or the journal file's absolute path (default: in the sweep dir)."""
    if storage in (None, ""):
        return str((Path(sweep_dir) / "journal.log").resolve())
    return storage if is_url(storage) else str(Path(storage).expanduser().resolve())


class StorageError(ValueError):
    """A storage that cannot be opened (a bad URL, an unreachable database, an unwritable file); one line
    that says why, in place of the database driver's traceback."""


def open_storage(location: str) -> Any:
    """The storage at a URL or the journal file at a path (created with its folder); StorageError if it
    cannot be opened or written."""
    try:
        if is_url(location):
            return optuna.storages.get_storage(location)
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        Path(location).parent.mkdir(parents=True, exist_ok=True)
        if Path(location).exists() and not os.access(location, os.W_OK):
            raise PermissionError(f"{location} is not writable")
        return JournalStorage(JournalFileBackend(location))
    except Exception as e:  # SQLAlchemy, a database driver or the file system: many kinds, one meaning
        text = str(e).strip().splitlines()
        raise StorageError(f"{type(e).__name__}: {text[0] if text else 'no message'}") from None


@contextlib.contextmanager
def local_lock(location: str) -> Iterator[None]:
    """Serialises check-then-write steps (enqueueing, asking) between processes on one local journal;
    a URL storage gets no lock (duplicates are then settled after the fact)."""
    if is_url(location):
        yield
        return
    from filelock import FileLock

    with FileLock(location + ".sweeper.lock"):
        yield


def remember(location: str, storage: Any) -> None:
    """Lets in-process jobs reuse the sweeper's storage object instead of replaying the journal again."""
    _LIVE[location] = storage


def forget(location: str) -> None:
    _LIVE.pop(location, None)


def load(location: str, study_name: str, pruner: Any = None) -> tuple[optuna.Study, Any]:
    """(study, storage) for a job: the sweeper's storage when in process; a random sampler, since a job
    only reports and asks the pruner (it never samples)."""
    storage = _LIVE[location] if location in _LIVE else open_storage(location)
    study = optuna.load_study(study_name=study_name, storage=storage, pruner=pruner,
                              sampler=optuna.samplers.RandomSampler())
    return study, storage


def trial_id(storage: Any, study_name: str, number: int) -> int:
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)


def owner_attrs() -> dict[str, Any]:
    return {TrialAttr.HOST: socket.gethostname(), TrialAttr.PID: os.getpid()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_orphans(study: optuna.Study, storage: Any) -> list[int]:
    """RUNNING trials whose sweep process (on this host) is gone are failed with that reason."""
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, host = t.user_attrs.get(TrialAttr.PID), t.user_attrs.get(TrialAttr.HOST)
        if host == socket.gethostname() and isinstance(pid, int) and pid != os.getpid() and not _alive(pid):
            number = trial_id(storage, study.study_name, t.number)
            storage.set_trial_user_attr(number, TrialAttr.FAIL_REASON,
                                        f"its sweep process (pid {pid}) died while it ran")
            storage.set_trial_user_attr(number, TrialAttr.ORPHANED, True)
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            failed.append(t.number)
    return failed


def current_trial() -> Optional[optuna.Trial]:
    """The Optuna trial of the running Hydra job, or None outside a sweep job (a plain run or grid) or when
    the study has several objectives (Optuna prunes single-objective studies only)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    sweeper = hydra_cfg.sweeper
    number = sweeper.get("trial") if "study_name" in sweeper else None
    if number is None:
        return None
    if len(sweeper.objectives) != 1:
        return None
    location = storage_location(sweeper.storage, hydra_cfg.sweep.dir)
    study, storage = load(location, sweeper.study_name, pruner=instantiate(sweeper.pruner))
    return optuna.Trial(study, trial_id(storage, study.study_name, int(number)))


def epoch_reporter(key: str = INTERMEDIATE_KEY) -> Optional[Callable[[int, dict], None]]:
    """An `on_epoch_end(epoch, stats)` callback that reports `stats[key]` to the job's trial and raises
    optuna.TrialPruned when the study's pruner says so; None when there is nothing to report to."""
    trial = current_trial()
    if trial is None:
        return None

    def report(epoch: int, stats: dict) -> None:
        if key not in stats:
            return
        value = float(stats[key])
        trial.report(value, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: {key}={value:.4f} (intermediate values "
                                     "below the pruner's cut)")

    return report
