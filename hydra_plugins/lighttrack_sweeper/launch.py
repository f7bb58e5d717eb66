"""How the sweeper launches a batch of trials through Hydra's launcher, and reads back one outcome per job.

Batch size (`hydra.sweeper.n_jobs`, or when it is null, batch_size): the launcher's `n_jobs` (joblib; -1: every
core), else its `array_parallelism` (submitit_slurm: the trials of one SLURM job array that run at once), else 1
(basic, submitit_local: they have neither setting).

A launcher returns one JobReturn per job, or raises for the whole batch. hydra-submitit-launcher
(`hydra/launcher=submitit_local`, `submitit_slurm`) raises from the first job that ended without a result (its
process killed: out of memory, a SLURM time limit, node failure or cancellation) and drops the results of the
others; so for submitit launchers the batch is submitted as that plugin submits it (one job array, its settings,
launch below) and each job is collected on its own: a job with no result gives an Outcome with the reason, and the
rest of the batch is recorded as usual. Hydra's plugin scan imports this module in every Hydra app: submitit and
the plugin are imported only when a submitit launcher launches.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

# the hydra-submitit-launcher versions whose BaseSubmititLauncher.launch this module's submission mirrors
SUBMITIT_PLUGIN = "hydra-submitit-launcher 1.2"


def batch_size(launcher_cfg: Any) -> tuple[int, str]:
    """(trials per batch, where that number comes from) when hydra.sweeper.n_jobs is null."""
    n_jobs = launcher_cfg.get("n_jobs", None)
    if n_jobs is not None:  # joblib
        return ((os.cpu_count() or 1) if n_jobs < 0 else max(int(n_jobs), 1)), "hydra.launcher.n_jobs"
    parallel = launcher_cfg.get("array_parallelism", None)
    if parallel is not None:  # submitit_slurm
        return max(int(parallel), 1), "hydra.launcher.array_parallelism"
    return 1, "the launcher has no n_jobs"


def is_submitit(launcher: Any) -> bool:
    """Whether `launcher` is one of hydra-submitit-launcher's (checked by class name: the plugin is optional)."""
    return any(c.__name__ == "BaseSubmititLauncher" and c.__module__.startswith("hydra_plugins.hydra_submitit_launcher")
               for c in type(launcher).__mro__)


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
           failed: Callable[[str, str], Any]) -> list[Any]:
    """One return per job, in order: a JobReturn, or (a submitit job that ended without a result) what
    `failed(reason, details)` makes of its reason and its full error text."""
    if not is_submitit(launcher):
        return list(launcher.launch(job_overrides, initial_job_idx=initial_job_idx))
    jobs = _submit(launcher, job_overrides, initial_job_idx)
    try:
        return [_collect(job, failed) for job in jobs]
    except BaseException:  # interrupted while waiting: the jobs still queued or running are cancelled, not left
        for job in jobs:
            try:
                if not job.done():
                    job.cancel(check=False)
            except Exception as e:  # the interruption is what is reported
                log.warning("could not cancel submitit job %s: %s", getattr(job, "job_id", "?"), e)
        raise


def _submit(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
    """The batch as one submitit job array, exactly as BaseSubmititLauncher.launch (SUBMITIT_PLUGIN) builds it:
    the executor from hydra.launcher's settings, one job per override list, the launcher itself as the callable
    (it composes the job's config and runs the task in the job's process)."""
    import submitit
    from hydra.core.singleton import Singleton
    from hydra.core.utils import filter_overrides
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    name, params = launcher._EXECUTOR, dict(launcher.params)
    init = {"folder": params.pop("submitit_folder")}
    if "max_num_timeout" in params:
        init[f"{name}_max_num_timeout"] = params.pop("max_num_timeout")
    executor = submitit.AutoExecutor(cluster=name, **init)
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in shared else f"{name}_{k}": v for k, v in params.items()})

    config = launcher.config
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if "mode" in config.hydra.sweep:
        os.chmod(sweep_dir, mode=int(str(config.hydra.sweep.mode), 8))
    log.info("submitit '%s' launcher: %d job(s), logs in %s", name, len(job_overrides),
             launcher.params["submitit_folder"])
    job_params = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
    return list(executor.map_array(launcher, *zip(*job_params)))


def _collect(job: Any, failed: Callable[[str, str], Any]) -> Any:
    """The job's JobReturn, or failed(reason, details) when it ended without one."""
    from submitit.core.utils import FailedJobError, UncompletedJobError
    from submitit.local.local import LocalJob

    if isinstance(job, LocalJob):  # its process wrote its result before it exited: no slow filesystem to wait for
        job._results_timeout_s = 0
    try:
        return job.results()[0]
    except FailedJobError as e:  # an error in the job outside the trial's task (the task's own are in its Outcome)
        last = next((line for line in reversed(str(e).splitlines()) if line.strip() and not line.startswith(
            ("-", " ", "You can check", "or at paths"))), type(e).__name__)
        return failed(f"submitit job {job.job_id} failed outside the trial: {last.strip()} (its logs: "
                      f"{job.paths.stderr})", str(e))
    except UncompletedJobError as e:  # no result at all: the job's process was killed, or never ran
        return failed(f"submitit job {job.job_id} ended without a result ({_how(job)}): its process was killed (out "
                      f"of memory?), went over its time limit, was cancelled or lost its node; its logs: "
                      f"{job.paths.stderr}", str(e))
    except Exception as e:  # its result could not be read back (e.g. it does not unpickle here)
        import traceback

        return failed(f"submitit job {job.job_id}: its result could not be read: {type(e).__name__}: {e}",
                      traceback.format_exc())


def _how(job: Any) -> str:
    """The state the scheduler gives a job (SLURM: OUT_OF_MEMORY, TIMEOUT, NODE_FAIL, CANCELLED, ...; a local job
    says FINISHED or INTERRUPTED only)."""
    try:
        return f"state {job.state}"
    except Exception:
        return "state unknown"
