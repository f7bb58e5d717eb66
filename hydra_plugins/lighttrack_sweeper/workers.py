"""`hydra.sweeper.workers=N`: N sweep processes on this machine sharing one study, each asking its next trial when
its own ends (asynchronous: no batch waits for its slowest trial, unlike a joblib batch). The process the user
started starts the N - 1 others with its own command line, each logging to `<sweep dir>/workers/<k>.log`; it waits
for them before its summary, and stops them if it is stopped. They coordinate through the study alone (its lock,
the duplicate check, orphan detection), as separate sweep processes always do.

On 2 cores, two 1-thread trials side by side took 49 s each against 44 s for one 2-thread trial alone (the CPU
preset's baseline head): 1.8x the trials per hour."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Optional, Sequence

log = logging.getLogger(__name__)

WORKER_ENV = "LIGHTTRACK_SWEEP_WORKER"  # set in a started worker: its index (1 .. N-1); it starts none itself


def worker_index() -> int:
    """0 in the process the user started, k in the k-th worker it started."""
    return int(os.environ.get(WORKER_ENV, "0") or 0)


def command_line() -> list[str]:
    """This process's command, to start it again: `python -m <module> <args>` when it was started with -m (as
    `python -m search.sweep`), else `python <script> <args>`."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return [sys.executable, "-m", spec.name.removesuffix(".__main__"), *sys.argv[1:]]
    if sys.argv and sys.argv[0] and Path(sys.argv[0]).is_file():
        return [sys.executable, *sys.argv]
    raise RuntimeError("hydra.sweeper.workers > 1 starts this sweep's command again, but this process was not "
                       "started from a command line (a notebook, or Hydra's compose API): start the sweep with "
                       "`python -m search.sweep -m ...`, or run hydra.sweeper.workers=1")


class Worker:
    """A started worker: its index, process and log (a plain class: Hydra's plugin scan runs this module outside
    sys.modules, where dataclasses cannot resolve annotations)."""

    def __init__(self, index: int, process: subprocess.Popen, log_path: Path, log_file: IO):
        self.index, self.process, self.log_path, self.log_file = index, process, log_path, log_file


class Workers:
    """The workers this process started (none in a worker, or with workers=1)."""

    def __init__(self, count: int, sweep_dir: Path, command: Optional[Sequence[str]] = None):
        self.started: list[Worker] = []
        if count <= 1 or worker_index():
            return
        command = list(command or command_line())
        folder = sweep_dir / "workers"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            for k in range(1, count):
                path = folder / f"{k}.log"
                out = open(path, "a")
                try:
                    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                               stderr=subprocess.STDOUT, env={**os.environ, WORKER_ENV: str(k)})
                except BaseException:
                    out.close()
                    raise
                self.started.append(Worker(k, process, path, out))
        except BaseException:  # none is left running on its own: the user sees one error and no stray process
            self.stop()
            raise
        log.info("started %d more sweep worker(s) on this study (pids %s; logs in %s)", count - 1,
                 [w.process.pid for w in self.started], folder)

    def join(self) -> list[int]:
        """Waits for every worker; returns the indices of those that failed (each logged with its log's tail)."""
        if any(w.process.poll() is None for w in self.started):
            log.info("waiting for %d sweep worker(s) to finish their trials",
                     sum(w.process.poll() is None for w in self.started))
        failed = []
        for worker in self.started:
            code = worker.process.wait()
            worker.log_file.close()
            if code != 0:
                failed.append(worker.index)
                tail = worker.log_path.read_text(errors="replace").strip().splitlines()[-5:]
                log.error("sweep worker %d exited with code %s; the last lines of %s:\n%s", worker.index, code,
                          worker.log_path, "\n".join(tail))
        self.started = []
        return failed

    def stop(self, timeout: float = 30.0) -> None:
        """Stops the workers (this process was interrupted or failed): their trials left running are failed by the
        next sweep that opens the study (their processes are gone), and re-run if they are references."""
        for worker in self.started:
            if worker.process.poll() is None:
                worker.process.terminate()
        for worker in self.started:
            try:
                worker.process.wait(timeout)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
            worker.log_file.close()
        self.started = []
