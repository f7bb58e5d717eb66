"""Sweep throughput with several local workers, and what the PostgreSQL storage costs per trial (a benchmark).

    python benchmarks/bench_workers.py                       # 1, 2, 4 workers; journal vs PostgreSQL
    python benchmarks/bench_workers.py --workers 1 2 --trials 8 --storage-trials 0

Workers: one sweep with `hydra.sweeper.workers=k` (k sweep processes on one journal study, each with cores / k torch
threads, as `make sweep` runs them; the tiny preset at head fidelity: real training, checkpoints and evaluation on a
small generated data set, shared by every run) until the study holds `--trials` trained trials; printed: wall time,
trials per hour and the ratio to one worker. Storage: one sweep process of `--storage-trials` trials of the sweeper tests' fake task (no
training: the sweeper's own bookkeeping dominates) on a journal file and on a throwaway PostgreSQL server
(tests/postgres_server.py; skipped with a note when PostgreSQL is not installed); printed: seconds per trial of each
and the difference.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from search.study import open_storage  # noqa: E402

TINY = ["trainer=tiny", "trainer.fidelity=head", "hydra.sweeper.confirm.seeds=1", "data.generate.train_sequences=4",
        "data.generate.val_sequences=2", "data.generate.frames=12", "evaluation.max_sequences=2", "latency=quick"]


def _trained(storage: str, study: str) -> int:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    trials = optuna.load_study(study_name=study, storage=open_storage(storage)).trials
    return sum(t.state.name == "COMPLETE" and bool(t.user_attrs.get("trained")) for t in trials)


def threads(k: int) -> int:
    """Torch threads each of k local workers trains with: the sweeper's own rule (one worker: torch's default)."""
    from hydra_plugins.lighttrack_sweeper._impl import threads_per_job

    return threads_per_job({}, 1, workers=k) or os.cpu_count() or 1


def workers(k: int, trials: int, data: Path) -> tuple[float, int]:
    """Wall seconds and trained trials of one sweep with `hydra.sweeper.workers=k` (k sweep processes, the cores
    split between them, as `make sweep` runs) on a new journal study."""
    runs = Path(tempfile.mkdtemp(prefix=f"lighttrack-w{k}-"))
    env = {**os.environ, "LIGHTTRACK_RUNS": str(runs), "LIGHTTRACK_DATA_CACHE": str(data), "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "search.sweep", "-m", *TINY, f"hydra.sweeper.max_trials={trials}",
               f"hydra.sweeper.workers={k}"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    done = _trained(str(runs / "sweeps" / "synthetic_tiny" / "journal.log"), "synthetic_tiny")
    if result.returncode or done < trials:
        raise SystemExit(f"the sweep failed ({result.returncode}, {done} of {trials} trials trained; worker logs in "
                         f"{runs / 'sweeps' / 'synthetic_tiny' / 'workers'}):\n{result.stderr[-3000:]}")
    return seconds, done


def storage_seconds(storage: str | None, trials: int) -> float:
    """Seconds per trial of one fake-task sweep of `trials` trials on `storage` (None: the journal file)."""
    runs = Path(tempfile.mkdtemp(prefix="lighttrack-storage-"))
    extra = [f"hydra.sweeper.storage='{storage}'", "hydra.sweeper.study_name=bench"] if storage else []
    command = [sys.executable, str(ROOT / "tests" / "test_sweep.py"), "-m", f"hydra.sweep.dir={runs / 'sweep'}",
               "trainer=tiny", "hydra.sweeper.confirm.seeds=1", f"hydra.sweeper.max_trials={trials}", *extra]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "LIGHTTRACK_RUNS": str(runs), "PYTHONWARNINGS": "ignore"})
    seconds = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"the storage sweep failed:\n{result.stderr[-3000:]}")
    return seconds / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--trials", type=int, default=12, help="trained trials per worker count")
    parser.add_argument("--storage-trials", type=int, default=30, help="fake trials per storage (0: skip)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; tiny preset at head fidelity, {args.trials} trained trials per run")
    data = Path(tempfile.mkdtemp(prefix="lighttrack-bench-data-"))
    workers(1, 1, data)  # the data set and the baseline trunk once, outside the timings
    base = None
    print("workers  threads each  wall s  trials  trials/h  vs 1 worker")
    for k in args.workers:
        seconds, done = workers(k, args.trials, data)
        rate = done / seconds * 3600
        base = base or rate
        print(f"{k:7d}  {threads(k):12d}  {seconds:6.1f}  {done:6d}  {rate:8.0f}  "
              f"{rate / base:10.2f}x")
    if args.storage_trials:
        journal = storage_seconds(None, args.storage_trials)
        from postgres_server import PostgresServer, bin_dir

        if bin_dir() is None:
            print(f"journal: {journal:.2f} s per trial; PostgreSQL not installed, not measured")
            return
        server = PostgresServer()
        server.start()
        try:
            postgres = storage_seconds(server.create_database(), args.storage_trials)
        finally:
            server.stop()
        print(f"storage (fake task, {args.storage_trials} trials, one worker): journal {journal:.2f} s per trial, "
              f"PostgreSQL {postgres:.2f} s per trial, overhead {postgres - journal:+.2f} s per trial")


if __name__ == "__main__":
    main()
