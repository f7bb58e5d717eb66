"""hydra-submitit-launcher under the sweeper (`hydra/launcher=submitit_local` here; `submitit_slurm` on a cluster is
the same code with another executor): each batch is one submitit job array whose jobs run the fake app's task in
their own processes and send their results back pickled; a job whose process is killed fails its trial alone."""
from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState

from test_sweep import load, ok, sweep

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[slurm]'")

# fast local jobs: no GPU, one core each, a short time limit
LOCAL = ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=3", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.gpus_per_node=0", "hydra.sweeper.n_jobs=2"]


def local(**settings) -> list[str]:
    """LOCAL with some of its settings replaced (key=value by the last part of the key)."""
    return [o for o in LOCAL if o.split("=")[0].rsplit(".", 1)[-1] not in settings] + \
        [f"hydra.{'sweeper' if k == 'n_jobs' else 'launcher'}.{k}={v}" for k, v in settings.items()]


def results(sweep_dir: Path) -> list[Path]:
    return sorted((sweep_dir / ".submitit").glob("*/*_result.pkl"))


def test_submitit_local_runs_the_references_and_trials_as_jobs_and_records_them(tmp_path):
    result = sweep(tmp_path / "s", *LOCAL, "hydra.sweeper.max_trials=3")  # the references, then one trial
    ok(result)
    log = result.stdout + result.stderr
    assert "trials launch in batches of 2 (hydra.sweeper.n_jobs) through LocalLauncher" in log
    study = load(tmp_path / "s")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert [t.user_attrs.get("role") for t in study.trials[:2]] == ["baseline", "user_head"]
    for t in study.trials:  # recorded as the basic launcher records them (tests/test_sweep.py)
        run_dir = tmp_path / "s" / "trials" / str(t.number)
        assert t.user_attrs["run_dir"] == str(run_dir) and (run_dir / "ran").is_file()
        assert t.values[1] == t.user_attrs["cost"]["head_macs"] > 0
        assert {"duration_s", "config_key", "overrides", "metrics"} <= set(t.user_attrs)
        assert t.user_attrs["metrics"]["auc"] == t.values[0]
        assert f"trial {t.number:>3} COMPLETE" in log
    assert len(results(tmp_path / "s")) == 3  # every trial came back from its own submitit job


def test_a_submitit_job_killed_by_the_os_fails_its_trial_alone_and_the_sweep_goes_on(tmp_path):
    # one batch of three jobs: the baseline's process is SIGKILLed (as out of memory), the user's head raises in its
    # task, a searched trial completes; then the search goes on
    result = sweep(tmp_path / "s", *local(n_jobs=3), "hydra.sweeper.max_trials=2", "head.activation=choice(silu,gelu)",
                   env={"FAKE_KILL": "relu", "FAKE_FAIL": "relu6"})
    ok(result)
    assert "trials launch in batches of 3 (hydra.sweeper.n_jobs)" in result.stdout + result.stderr
    study = load(tmp_path / "s")
    baseline, user, *rest = study.trials
    assert baseline.state == user.state == TrialState.FAIL
    reason = baseline.user_attrs["fail_reason"]
    assert reason.startswith("submitit job ") and "ended without a result" in reason and ".submitit" in reason
    assert "has not produced any output" in (tmp_path / "s" / "trials" / "0" / "error.txt").read_text()
    # the jobs next to it came back with their own outcome, not the batch's
    assert user.user_attrs["fail_reason"] == "RuntimeError: fake failure for activation relu6"
    assert "fake failure" in (tmp_path / "s" / "trials" / "1" / "error.txt").read_text()
    assert [t.state for t in rest] == [TrialState.COMPLETE] * 2  # one beside the killed job, one after it
    assert len(results(tmp_path / "s")) == 3  # the killed job wrote none


def test_a_preempted_submitit_job_is_requeued_and_its_trial_completes_once(tmp_path):
    # the baseline's job gets SIGUSR2 (SLURM's preemption warning; submitit_local handles it the same way): submitit
    # requeues it, and the sweeper waits for the requeued job's result instead of failing the trial
    # (submitit takes a signal within 10 min of a job's time limit for a timeout: a longer limit, so a preemption)
    result = sweep(tmp_path / "s", *local(timeout_min=20), "hydra.sweeper.max_trials=2", env={"FAKE_PREEMPT": "relu"})
    ok(result)
    study = load(tmp_path / "s")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert (tmp_path / "s" / "trials" / "0" / "preempted").is_file()
    logs = "".join(p.read_text() for p in (tmp_path / "s" / ".submitit").glob("*/*_0_log.*"))
    assert "this job is preempted" in logs and "Requeued job" in logs


def test_the_batch_size_comes_from_the_sweeper_or_the_launchers_parallelism():
    from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf
    from omegaconf import OmegaConf

    from hydra_plugins.lighttrack_sweeper.launch import batch_size

    assert batch_size(OmegaConf.structured(SlurmQueueConf(array_parallelism=8))) == \
        (8, "hydra.launcher.array_parallelism")
    assert batch_size(OmegaConf.structured(LocalQueueConf))[0] == 1  # submitit_local: hydra.sweeper.n_jobs
    assert batch_size(OmegaConf.create({"n_jobs": 3}))[0] == 3  # joblib
    assert batch_size(OmegaConf.create({"n_jobs": -1}))[0] >= 1
    assert batch_size(OmegaConf.create({}))[0] == 1  # basic


def test_each_submitit_job_is_collected_on_its_own(tmp_path):
    from submitit.core.utils import FailedJobError, JobPaths, UncompletedJobError

    from hydra_plugins.lighttrack_sweeper.launch import _collect

    class Job:
        job_id, state, paths = "7_1", "OUT_OF_MEMORY", JobPaths(tmp_path, "7_1")

        def __init__(self, error):
            self.error = error

        def results(self):
            if self.error:
                raise self.error
            return ["a JobReturn"]

    def failed(reason, details):
        return reason, details

    assert _collect(Job(None), failed) == "a JobReturn"
    reason, details = _collect(Job(UncompletedJobError("Job 7_1 has not produced any output")), failed)
    assert "submitit job 7_1 ended without a result (state OUT_OF_MEMORY)" in reason and str(tmp_path) in reason
    assert details == "Job 7_1 has not produced any output"
    trace = ("Job (task=0) failed during processing with trace:\n----------------------\nTraceback (most recent "
             "call last):\n  File \"x.py\", line 1\nKeyError: 'hydra'\n----------------------\nYou can check full "
             "logs with 'job.stderr(0)'\nor at paths:\n  - a\n  - b")
    reason, _ = _collect(Job(FailedJobError(trace)), failed)
    assert reason.startswith("submitit job 7_1 failed outside the trial: KeyError: 'hydra' (its logs: ")
    reason, _ = _collect(Job(EOFError("truncated")), failed)
    assert reason == "submitit job 7_1: its result could not be read: EOFError: truncated"


def test_a_submitit_slurm_batch_is_one_job_array_with_the_launchers_settings_and_its_jobs_fail_alone(tmp_path,
                                                                                                      monkeypatch):
    """The SLURM path without a cluster: submitit's own mocked sbatch / sacct (shipped in its wheel)."""
    test_slurm = pytest.importorskip("submitit.slurm.test_slurm")
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
    from omegaconf import OmegaConf
    from submitit.core import core, utils

    from hydra_plugins.lighttrack_sweeper.launch import _collect, _submit, is_submitit

    params = OmegaConf.to_container(OmegaConf.structured(SlurmQueueConf(
        submitit_folder=str(tmp_path / ".submitit" / "%j"), partition="gpu", gpus_per_node=1, timeout_min=90,
        array_parallelism=2, setup=["module load cuda"], name="sweep")))
    params.pop("_target_")
    launcher = SlurmLauncher(**params)
    launcher.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    assert is_submitit(launcher)
    monkeypatch.setattr(core.Job, "_results_timeout_s", 0)  # no shared filesystem to wait for
    with test_slurm.mocked_slurm() as mock:
        jobs = _submit(launcher, [["head=dsconv"], ["head=mbconv"], ["head=repvgg"]], initial_job_idx=5)
        assert [j.job_id for j in jobs] == ["12_0", "12_1", "12_2"]  # one array
        (script,) = (tmp_path / ".submitit").glob("*/*_submission.sh")
        text = script.read_text()
        for line in ("#SBATCH --array=0-2%2", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1",
                     "#SBATCH --time=90", "module load cuda"):
            assert line in text, text
        # the first job returns, the second is killed out of memory, the third raises outside its task
        utils.cloudpickle_dump(("success", "its JobReturn"), jobs[0].paths.result_pickle)
        utils.cloudpickle_dump(("error", "Traceback (most recent call last):\nMemoryError: x"),
                               jobs[2].paths.result_pickle)
        mock.job_sacct["12"] = "JobID|State\n12_0|COMPLETED\n12_1|OUT_OF_MEMORY\n12_2|FAILED"

        def failed(reason, details):
            return reason

        returned = [_collect(j, failed) for j in jobs]
    assert returned[0] == "its JobReturn"
    assert returned[1].startswith("submitit job 12_1 ended without a result (state OUT_OF_MEMORY): its process was "
                                  "killed (out of memory?)")
    assert returned[2].startswith("submitit job 12_2 failed outside the trial: MemoryError: x (its logs: ")
