"""What runs in a trial's job: `TimedTask` wraps the task function so that every job sends back an `Outcome` (its
value or its error as text, its wall time), and runs with its share of the cores (`threads_per_job`)."""
from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, Optional

import optuna
from hydra.types import TaskFunction
from omegaconf import DictConfig


@dataclass
class Outcome:
    """What a job sends back: the task's return or its error as text (exceptions need not unpickle)."""

    value: Any = None
    error: Optional[str] = None
    pruned: bool = False
    traceback: Optional[str] = None
    seconds: float = 0.0


class TimedTask:
    """Wraps the task function so every job reports its own wall time and its error as text, and runs with
    `threads` torch threads when set (parallel local jobs share the cores instead of oversubscribing them)."""

    def __init__(self, task_function: TaskFunction, threads: Optional[int] = None):
        self.task_function = task_function
        self.threads = threads

    def __call__(self, cfg: DictConfig) -> Outcome:
        start = time.perf_counter()
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        try:
            value = self.task_function(cfg)
        except optuna.TrialPruned as e:
            return Outcome(error=str(e) or "pruned", pruned=True, seconds=time.perf_counter() - start)
        except SystemExit as e:  # a trial that exits ends itself, not the sweep (KeyboardInterrupt still stops it)
            if _requeued_by_submitit(e):  # preempted (or timed out with requeues left): the job runs again
                raise
            return Outcome(error=f"SystemExit: the trial called sys.exit({e.code!r})", traceback=traceback.format_exc(),
                           seconds=time.perf_counter() - start)
        except Exception as e:  # a failed trial, recorded; the sweep goes on
            failed = Outcome(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(),
                             seconds=time.perf_counter() - start)
            out_of_memory = "OutOfMemoryError" in type(e).__name__
        else:
            return Outcome(value=value, seconds=time.perf_counter() - start)
        if out_of_memory:  # out of the except clause: the exception and the frames it held are gone
            _release_memory()  # what the failed trial held must not starve the next one in this process
        return failed


def _release_memory() -> None:
    """After a trial ran out of memory: its tensors collected (reference cycles included) and CUDA's cached blocks
    returned to the driver."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def threads_per_job(launcher: Any, n_jobs: int, cores: Optional[int] = None, workers: int = 1) -> Optional[int]:
    """Torch threads for each trial when several run at once on this machine's cores: `workers` sweep processes
    (hydra.sweeper.workers), each running `n_jobs` trials at once through a local parallel launcher (joblib) or one
    at a time: trials x threads <= cores (at least 1). None (torch's default) when one trial runs at a time, or for
    launchers that send trials to other machines (submitit: SLURM gives each job its own CPUs)."""
    target = str(launcher.get("_target_", "")).lower()
    if "submitit" in target:
        return None
    at_once = workers * (n_jobs if "joblib" in target else 1)
    return max(1, (cores or os.cpu_count() or 1) // at_once) if at_once > 1 else None


def _requeued_by_submitit(e: SystemExit) -> bool:
    """Whether submitit's signal handler raised it: SLURM warned the job (SIGUSR2) that it is preempted, or at its
    time limit with requeues left (hydra.launcher.max_num_timeout), and submitit requeued it; the job's process must
    exit without a result so that the requeued job runs the trial again (resuming from its checkpoint) and its
    result is the one the sweeper reads. A trial's own sys.exit never passes through submitit's code."""
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").startswith("submitit."):
            return True
        tb = tb.tb_next
    return False
