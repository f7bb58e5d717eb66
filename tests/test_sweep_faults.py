"""The sweeper under faults and in parallel, on test_sweep.py's fake app: failed, NaN, out-of-memory and killed
trials; several sweep processes on one study (started by hand, by joblib or by hydra.sweeper.workers) and what
happens when one dies. A file of its own so that pytest's workers split the sweep tests between them."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.study import open_storage
from test_sweep import load, ok, sweep, trained


def test_failed_trials_are_recorded_and_the_sweep_goes_on(tmp_path):
    # the baseline (relu) raises; the user's head (relu6) returns NaN
    result = sweep(tmp_path / "s", "hydra.sweeper.max_trials=4", "head.activation=choice(silu,gelu)",
                   env={"FAKE_FAIL": "relu", "FAKE_NAN": "relu6"})
    ok(result)
    study = load(tmp_path / "s")
    baseline, user, *rest = study.trials
    assert baseline.state == user.state == TrialState.FAIL
    assert "RuntimeError: fake failure for activation relu" in baseline.user_attrs["fail_reason"]
    assert "not finite" in user.user_attrs["fail_reason"]
    assert "fake failure" in (tmp_path / "s" / "trials" / "0" / "error.txt").read_text()
    assert len(rest) == 4 and all(t.state == TrialState.COMPLETE for t in rest)  # failures do not use the budget
    # a failed reference is asked again at the next start; a trial that calls sys.exit fails alone
    ok(sweep(tmp_path / "s", "hydra.sweeper.max_trials=5", "head.activation=choice(silu,gelu)",
             env={"FAKE_EXIT": "relu"}))
    study = load(tmp_path / "s")
    baselines = [t for t in study.trials if t.user_attrs.get("role") == "baseline"]
    users = [t for t in study.trials if t.user_attrs.get("role") == "user_head"]
    assert [t.state for t in baselines] == [TrialState.FAIL] * 2 and users[-1].state == TrialState.COMPLETE
    assert baselines[-1].user_attrs["fail_reason"] == "SystemExit: the trial called sys.exit(3)"
    # a reference that keeps failing stops the sweep, saying why, before anything runs
    stopped = sweep(tmp_path / "s", "hydra.sweeper.max_trials=6", "head.activation=choice(silu,gelu)",
                    "hydra.sweeper.max_failures=2")
    assert stopped.returncode != 0 and "the baseline (head=repvgg) failed 2 times" in stopped.stderr + stopped.stdout
    assert len(load(tmp_path / "s").trials) == len(study.trials)


def test_a_trial_out_of_memory_fails_alone_with_its_reason(tmp_path):
    ok(sweep(tmp_path / "s", "hydra.sweeper.max_trials=4", "head.activation=choice(silu,gelu)", env={"FAKE_OOM": "silu"}))
    study = load(tmp_path / "s")
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed and all(t.params["head.activation"] == "silu" for t in failed)
    assert all(t.user_attrs["fail_reason"].startswith("OutOfMemoryError: CUDA out of memory") for t in failed)
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 4  # the worker went on


def test_wrong_number_of_values_is_a_failure_and_all_failed_exits_nonzero(tmp_path):
    result = sweep(tmp_path / "s", "hydra.sweeper.max_trials=3", "hydra.sweeper.max_failures=3",
                   env={"FAKE_RETURN": "list"})
    assert result.returncode != 0
    assert "stopping: the last 3 trials failed (hydra.sweeper.max_failures=3)" in result.stdout + result.stderr
    assert "every trial this sweep ran failed" in result.stdout + result.stderr
    study = load(tmp_path / "s")
    assert len(study.trials) == 3 and all(t.state == TrialState.FAIL for t in study.trials)
    assert all("returned 1 value(s) for 3 objectives" in t.user_attrs["fail_reason"] for t in study.trials)


def test_two_processes_share_one_study(tmp_path):
    args = ("hydra.sweeper.max_trials=null", "hydra.sweeper.n_trials=4")
    procs = [sweep(tmp_path / "s", *args, background=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    study = load(tmp_path / "s")
    assert [t.number for t in study.trials] == list(range(8))
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert Counter(t.user_attrs.get("role") for t in study.trials) == {"baseline": 1, "user_head": 1, None: 6}
    assert sorted(Counter(t.user_attrs["pid"] for t in study.trials).values()) == [4, 4]
    assert len({t.user_attrs["run_dir"] for t in study.trials}) == 8


def test_joblib_launcher_runs_trials_in_parallel_workers(tmp_path):
    ok(sweep(tmp_path / "s", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.max_trials=4"))
    study = load(tmp_path / "s")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert all((Path(t.user_attrs["run_dir"]) / "ran").is_file() for t in study.trials)
    # two trials at once share the cores: n_jobs x threads <= cores
    threads = {int((Path(t.user_attrs["run_dir"]) / "threads").read_text()) for t in study.trials}
    assert threads == {max(1, (os.cpu_count() or 1) // 2)}


def test_workers_share_the_study_asynchronously_and_split_the_cores(tmp_path):
    ok(sweep(tmp_path / "s", "hydra.sweeper.workers=2", "hydra.sweeper.max_trials=6", "hydra.sweeper.confirm.seeds=2",
             "hydra.sweeper.confirm.front=1", env={"FAKE_SLEEP": "1.5"}))
    study = load(tmp_path / "s")
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    search = [t for t in trained(study) if t.user_attrs.get("stage") != "confirm"]
    assert len(search) == 6  # the budget exactly, though two processes asked
    seeds = Counter((repr(sorted(t.user_attrs["head"].items())), t.user_attrs["seed"]) for t in trained(study))
    assert max(seeds.values()) == 1  # no architecture trained twice with one seed
    roles = Counter(t.user_attrs.get("role") for t in trained(study) if t.user_attrs.get("stage") != "confirm")
    assert roles["baseline"] == 1 and roles["user_head"] == 1
    assert len({t.user_attrs["pid"] for t in trained(study)}) == 2  # the worker it started trained some
    threads = {int((Path(t.user_attrs["run_dir"]) / "threads").read_text()) for t in trained(study)}
    assert threads == {max(1, (os.cpu_count() or 1) // 2)}
    assert (tmp_path / "s" / "workers" / "1.log").is_file()


def test_an_interrupted_sweep_stops_the_workers_it_started(tmp_path):
    import re
    import signal
    import time

    proc = sweep(tmp_path / "s", "hydra.sweeper.workers=2", "hydra.sweeper.max_trials=20", env={"FAKE_SLEEP": "5"},
                 background=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "more sweep worker" in line:
            break
    pid = int(re.search(r"pids \[(\d+)\]", lines[-1]).group(1))
    time.sleep(8)  # both are inside a trial
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_failed_worker_makes_the_sweep_exit_nonzero(tmp_path):
    result = sweep(tmp_path / "s", "hydra.sweeper.workers=2", "hydra.sweeper.max_trials=6",
                   env={"FAKE_FAIL": "worker", "FAKE_SLEEP": "3"})  # long enough that the worker gets trials
    assert result.returncode == 1, result.stdout + result.stderr
    assert "sweep worker(s) [1] failed" in result.stdout + result.stderr
    study = load(tmp_path / "s")
    pids = Counter(t.user_attrs.get("pid") for t in study.trials if t.state == TrialState.COMPLETE)
    assert len(pids) == 1  # the first process's trials completed; every one the worker ran failed


def test_workers_report_the_failed_ones_and_none_outlives_a_failed_start(tmp_path, monkeypatch):
    from hydra_plugins.lighttrack_sweeper import workers as w

    monkeypatch.delenv(w.WORKER_ENV, raising=False)
    code = "import os, sys; print('worker', os.environ['%s']); sys.exit(int(os.environ['%s']) - 1)" % (
        w.WORKER_ENV, w.WORKER_ENV)
    started = w.Workers(3, tmp_path, [sys.executable, "-c", code])
    assert started.join() == [2]  # worker 1 exits 0, worker 2 exits 1
    assert (tmp_path / "workers" / "2.log").read_text().strip() == "worker 2"

    real_popen, processes = w.subprocess.Popen, []

    def second_start_fails(*args, **kwargs):
        if processes:
            raise OSError("fake: no more processes")
        processes.append(real_popen(*args, **kwargs))
        return processes[-1]

    monkeypatch.setattr(w.subprocess, "Popen", second_start_fails)
    with pytest.raises(OSError, match="no more processes"):
        w.Workers(3, tmp_path, [sys.executable, "-c", "import time; time.sleep(60)"])
    assert processes[0].poll() is not None  # the one that did start was stopped


def test_threads_per_job_keep_parallel_local_trials_within_the_cores():
    from hydra_plugins.lighttrack_sweeper._outcome import threads_per_job

    joblib = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"}
    assert threads_per_job(joblib, 2, cores=16) == 8 and threads_per_job(joblib, 4, cores=2) == 1
    assert threads_per_job(joblib, 1, cores=16) is None  # one trial at a time: torch's default
    slurm = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"}
    assert threads_per_job(slurm, 8, cores=2) is None  # its jobs run on other machines' CPUs
    basic = {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}
    assert threads_per_job(basic, 1, cores=2) is None and threads_per_job(basic, 1, cores=2, workers=2) == 1
    assert threads_per_job(joblib, 2, cores=16, workers=2) == 4


def _orphan_of_a_dead_sweep(sweep_dir: Path, **attrs) -> int:
    """A study whose first trial was left RUNNING by a sweep process that has exited; returns that pid."""
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    study = optuna.create_study(study_name="synthetic_tiny", storage=open_storage(str(sweep_dir / "journal.log")),
                                directions=["maximize", "minimize", "minimize"])
    orphan = study.ask()
    for key, value in {"host": socket.gethostname(), "pid": dead.pid, "trained": True, **attrs}.items():
        orphan.set_user_attr(key, value)
    return dead.pid


def test_trials_left_running_by_a_dead_sweep_are_failed_on_resume(tmp_path):
    pid = _orphan_of_a_dead_sweep(tmp_path / "s")
    ok(sweep(tmp_path / "s", "hydra.sweeper.max_trials=3"))  # the orphan failed: it uses none of the budget
    study = load(tmp_path / "s")
    assert study.trials[0].state == TrialState.FAIL
    assert study.trials[0].user_attrs["fail_reason"] == f"its sweep process (pid {pid}) died while it ran"
    assert [t.state for t in study.trials[1:]] == [TrialState.COMPLETE] * 3
    # the old rule, on request: failed trials count
    ok(sweep(tmp_path / "c", "hydra.sweeper.max_trials=3", "hydra.sweeper.count_failed=true",
             "hydra.sweeper.study_name=counted", env={"FAKE_FAIL": "relu"}))
    assert [t.state for t in load(tmp_path / "c").trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 2


def test_a_reference_whose_sweep_died_is_asked_again(tmp_path):
    _orphan_of_a_dead_sweep(tmp_path / "s", role="baseline")
    ok(sweep(tmp_path / "s", "hydra.sweeper.max_trials=4"))
    study = load(tmp_path / "s")
    baselines = [t for t in study.trials if t.user_attrs.get("role") == "baseline"]
    assert [t.state for t in baselines] == [TrialState.FAIL, TrialState.COMPLETE]
    assert baselines[0].user_attrs["orphaned"] is True


def test_a_repeat_whose_sweep_died_is_asked_again(tmp_path):
    import socket

    ok(sweep(tmp_path / "s", "hydra.sweeper.max_trials=3"))
    study = load(tmp_path / "s")
    baseline = study.trials[0]
    seed = baseline.user_attrs["seed"] + 1
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = study.ask()  # a repeat of the baseline left RUNNING by a sweep process that died
    for key, value in {"host": socket.gethostname(), "pid": dead.pid, "trained": True, "stage": "confirm",
                       "role": "baseline", "repeat_of": 0, "confirm_seed": seed, "seed": seed,
                       "head": baseline.user_attrs["head"]}.items():
        orphan.set_user_attr(key, value)
    ok(sweep(tmp_path / "s", "hydra.sweeper.max_trials=3", "hydra.sweeper.confirm.seeds=2",
             "hydra.sweeper.confirm.front=1"))
    repeats = [t for t in load(tmp_path / "s").trials if t.user_attrs.get("repeat_of") == 0]
    assert [(t.state, t.user_attrs["seed"]) for t in repeats] == [(TrialState.FAIL, seed), (TrialState.COMPLETE, seed)]
    assert repeats[0].user_attrs["orphaned"] is True


def test_a_trial_killed_by_the_os_fails_its_batch_not_the_sweep_under_joblib(tmp_path):
    result = sweep(tmp_path / "s", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.max_trials=3",
                   "head.activation=choice(silu,gelu)", env={"FAKE_KILL": "relu"})
    ok(result)
    study = load(tmp_path / "s")
    baseline = study.trials[0]
    assert baseline.state == TrialState.FAIL and "TerminatedWorkerError" in baseline.user_attrs["fail_reason"]
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 3  # the search went on


def test_a_trial_asked_by_a_process_that_died_before_owning_it_is_failed_under_the_lock(tmp_path):
    from search.study import fail_orphans, is_lockable

    location = str(tmp_path / "journal.log")
    storage = open_storage(location)
    study = optuna.create_study(study_name="s", storage=storage)
    study.ask()  # killed right after: no host, no pid recorded
    assert fail_orphans(study, storage) == [] and study.trials[0].state == TrialState.RUNNING
    assert is_lockable(location) and is_lockable("postgresql+psycopg://u@h/db") and not is_lockable("sqlite:///x.db")
    assert fail_orphans(study, storage, unowned=True) == [0]  # under study_lock nobody else is between the two
    trial = optuna.load_study(study_name="s", storage=storage).trials[0]
    assert trial.state == TrialState.FAIL and trial.user_attrs["orphaned"] is True
    assert "died between asking it and recording itself as its owner" in trial.user_attrs["fail_reason"]
