"""The sweeper end to end on a fake trial: this file is also the fake Hydra app (run as a script), whose
task returns metrics computed from the head config (and the real pre-training cost profile) and can fail,
return NaN, return the wrong number of values or be pruned on demand (FAKE_* environment variables)."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def fake_task(cfg):
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from search.cost import head_cost
    from hydra_plugins.lighttrack_sweeper.jobs import epoch_reporter

    head = OmegaConf.to_container(cfg.head, resolve=True, enum_to_str=True)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    (run_dir / "ran").write_text("trained")
    import torch

    (run_dir / "threads").write_text(str(torch.get_num_threads()))
    if os.environ.get("FAKE_SLEEP"):  # a trial that takes a while: parallel workers each get some
        import time

        time.sleep(float(os.environ["FAKE_SLEEP"]))
    if os.environ.get("FAKE_FAIL") == "worker" and os.environ.get("LIGHTTRACK_SWEEP_WORKER"):
        raise RuntimeError("fake failure in a started sweep worker")
    if os.environ.get("FAKE_FAIL") in ("all", head["activation"]):
        raise RuntimeError(f"fake failure for activation {head['activation']}")
    if os.environ.get("FAKE_OOM") == head["activation"]:  # as CUDA raises it (a simulated one: no GPU here)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")
    if os.environ.get("FAKE_EXIT") == head["activation"]:
        sys.exit(3)
    if os.environ.get("FAKE_KILL") == head["activation"]:  # as the OS kills a process out of memory
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("FAKE_PREEMPT") == head["activation"] and not (run_dir / "preempted").exists():
        import signal  # as SLURM warns a job it preempts (tests/test_submitit.py): submitit requeues it, once here

        (run_dir / "preempted").write_text("once")
        os.kill(os.getpid(), signal.SIGUSR2)
    quality = 0.3 + 0.4 * head["channels"] / 128 + 0.05 * head["num_blocks"] / 6 + 0.001 * (cfg.trainer.seed % 7)
    reporter = epoch_reporter("val_iou")
    for epoch in (1, 2, 3):
        if reporter is not None:
            reporter(epoch, {"val_iou": quality})
    auc = math.nan if os.environ.get("FAKE_NAN") == head["activation"] else quality
    if os.environ.get("FAKE_RETURN") == "list":
        return [auc]
    int8 = {}
    if cfg.evaluation.quantize == "int8":  # a bounded activation loses less here, by construction
        drop = {"relu6": 0.01, "hardswish": 0.03}.get(head["activation"], 0.05)
        int8 = {"int8_auc": auc - drop, "int8_auc_drop": drop}
    return {"auc": auc, **int8, **head_cost(cfg), "run_dir": str(run_dir)}


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    import hydra

    hydra.main(config_path=str(CONF), config_name="sweep", version_base="1.3")(fake_task)()
    sys.exit(0)

import optuna  # noqa: E402
import pytest  # noqa: E402
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from search.objectives import ObjectiveError, objective_values, parse_objectives  # noqa: E402
from search.space import SpaceError, build_space, format_value  # noqa: E402
from search.study import open_storage  # noqa: E402

# tiny presets keep the composed configs cheap; the fake task never trains; one seed unless a test asks for more
BASE = ["trainer=tiny", "hydra.sweeper.confirm.seeds=1"]


def sweep(sweep_dir: Path, *args: str, env: dict | None = None, background: bool = False):
    cmd = [sys.executable, str(Path(__file__).resolve()), "-m", f"hydra.sweep.dir={sweep_dir}", *BASE, *args]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_")}
    environment.update(env or {})
    if background:
        return subprocess.Popen(cmd, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    return subprocess.run(cmd, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)


def load(sweep_dir: Path) -> optuna.Study:
    storage = open_storage(str(sweep_dir / "journal.log"))
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def ok(result) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


def trained(study: optuna.Study) -> list:
    return [t for t in study.trials if t.user_attrs.get("trained")]


# -- the space and the objectives (no processes) ------------------------------------------------------------
def test_default_space_is_conditional_and_matches_the_issue():
    from tracker.config import compose

    cfg = compose("sweep", return_hydra_config=True)
    space = build_space(cfg.hydra.sweeper.space)
    dims = {d.name: d for d in space.dimensions}
    assert dims["head"].distribution.choices == ("repvgg", "dsconv", "mbconv")
    assert (dims["head.num_blocks"].distribution.low, dims["head.num_blocks"].distribution.high) == (2, 6)
    assert dims["head.channels"].distribution.choices == (32, 48, 64, 96, 128)
    assert set(dims["head.activation"].distribution.choices) == {"relu", "relu6", "hardswish", "silu", "gelu"}
    assert dims["head.kernel_size"].distribution.choices == (3, 5, 7)
    assert dims["head.final_kernel_size"].distribution.choices == (1, 3)
    assert dims["head.expansion"].distribution.choices == (2, 4, 6)

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = Counter()
    for _ in range(60):
        trial = study.ask()
        values = space.suggest(trial)
        study.tell(trial, 0.0)
        seen[values["head"]] += 1
        # real conditionals: the parameter is never sampled, not sampled-and-ignored
        assert ("head.expansion" in trial.params) == (values["head"] == "mbconv")
        assert ("head.kernel_size" in trial.params) == (values["head"] != "repvgg")
    assert set(seen) == {"repvgg", "dsconv", "mbconv"}


def test_command_line_sweeps_replace_extend_and_fix_dimensions():
    entries = {"head": {"choices": ["repvgg", "dsconv"]},
               "head.expansion": {"choices": [2, 4], "when": {"head": "dsconv"}}}
    space = build_space(entries, ["head=choice(dsconv,mbconv)", "head.num_blocks=range(2,5)",
                                  "trainer.lr=tag(log,interval(1e-4,1e-2))", "head.channels=32,64",
                                  "trainer.epochs=3"])
    dims = {d.name: d.distribution for d in space.dimensions}
    assert list(dims) == ["head", "head.expansion", "head.num_blocks", "trainer.lr", "head.channels"]
    assert dims["head"] == CategoricalDistribution(["dsconv", "mbconv"])
    assert dims["head.num_blocks"] == IntDistribution(2, 4)  # Hydra's range excludes its end
    assert dims["trainer.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert dims["head.channels"] == CategoricalDistribution([32, 64])
    assert space.fixed == ["trainer.epochs=3"]
    assert space.dimensions[1].when == {"head": ("dsconv",)}  # the condition survives the replacement
    fixed = build_space(entries, ["head=mbconv"])
    assert [d.name for d in fixed.dimensions] == ["head.expansion"] and fixed.fixed == ["head=mbconv"]
    assert fixed.overrides({"head.expansion": 4}) == ["head=mbconv", "head.expansion=4"]


def test_bad_space_entries_name_the_key_and_the_rule():
    with pytest.raises(SpaceError, match=r"head.num_blocks: low=6, high=2"):
        build_space({"head.num_blocks": {"low": 6, "high": 2}})
    with pytest.raises(SpaceError, match=r"head.kernel_size: when refers to head, which comes later"):
        build_space({"head.kernel_size": {"choices": [3], "when": {"head": "dsconv"}}, "head": "choice(dsconv)"})
    with pytest.raises(SpaceError, match=r"when refers to heda"):
        build_space({"head.kernel_size": {"choices": [3], "when": {"heda": "dsconv"}}})
    with pytest.raises(SpaceError, match=r"head.channels: unknown fields \['hi'\]"):
        build_space({"head.channels": {"low": 1, "hi": 2}})
    with pytest.raises(SpaceError, match=r"is a single value, not a sweep"):
        build_space({"head.channels": "64"})
    with pytest.raises(SpaceError, match="continuous"):
        build_space({}, ["trainer.lr=interval(0.1,1)"]).grid()


def test_values_round_trip_through_the_override_grammar():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for value in ("relu6", "has space", "3", "true", "null", 7, 0.25, 1e-05, True, None):
        assert parser.parse_override(f"k={format_value(value)}").value() == value


def test_objectives_are_read_by_name_and_checked():
    objectives = parse_objectives([{"name": "auc", "direction": "maximize"},
                                   {"name": "head_macs", "direction": "minimize"}])
    assert objective_values({"auc": 0.5, "head_macs": 10, "other": "x"}, objectives) == [0.5, 10.0]
    with pytest.raises(ObjectiveError, match=r"returned no \['head_macs'\]"):
        objective_values({"auc": 0.5}, objectives)
    with pytest.raises(ObjectiveError, match=r"returned 1 value\(s\) for 2 objectives"):
        objective_values([0.5], objectives)
    with pytest.raises(ObjectiveError, match="auc=nan is not finite"):
        objective_values({"auc": math.nan, "head_macs": 1}, objectives)
    with pytest.raises(ValueError, match=r"objectives\[0\].direction='up' is not allowed"):
        parse_objectives([{"name": "auc", "direction": "up"}])


# -- whole sweeps (the fake app in a subprocess) --------------------------------------------------------------
def test_study_starts_with_the_references_and_records_every_trial(tmp_path):
    result = sweep(tmp_path / "s", "hydra.sweeper.max_trials=5")
    ok(result)
    study = load(tmp_path / "s")
    assert study.study_name == "synthetic_tiny"
    assert study.metric_names == ["auc", "head_macs", "head_params_deploy"]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 5
    baseline, user = study.trials[0], study.trials[1]
    assert (baseline.user_attrs["role"], user.user_attrs["role"]) == ("baseline", "user_head")
    assert baseline.user_attrs["head"]["block"] == "repvgg" and baseline.user_attrs["head"]["channels"] == 128
    assert user.user_attrs["head"]["block"] == "dsconv" and user.user_attrs["head"]["norm"] is False
    for t in study.trials:
        run_dir = tmp_path / "s" / "trials" / str(t.number)
        assert t.user_attrs["run_dir"] == str(run_dir) and (run_dir / "ran").is_file()
        assert t.values[1] == t.user_attrs["cost"]["head_macs"] > 0  # cost known before training = returned
        assert {"duration_s", "config_key", "overrides", "metrics"} <= set(t.user_attrs)
        assert f"trial {t.number:>3} COMPLETE" in result.stderr + result.stdout
    assert baseline.values[1] > 10 * user.values[1]  # the user's head is far cheaper than RepVGG


def test_rerunning_resumes_the_same_study(tmp_path):
    ok(sweep(tmp_path / "s", "hydra.sweeper.max_trials=3"))
    ok(sweep(tmp_path / "s", "hydra.sweeper.max_trials=5"))
    study = load(tmp_path / "s")
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    assert Counter(t.user_attrs.get("role") for t in study.trials) == {"baseline": 1, "user_head": 1, None: 3}
    assert study.user_attrs["sweep_processes"] == 2
    # already there: nothing more to do, and it says how to extend; settings that change no result are not part
    # of the recipe
    again = sweep(tmp_path / "s", "hydra.sweeper.max_trials=5", "evaluation.batch_sequences=3",
                  f"data.cache_dir={tmp_path / 'elsewhere'}")
    ok(again)
    assert "at its budget (5 trained, hydra.sweeper.max_trials=5): raise hydra.sweeper.max_trials" in again.stderr + again.stdout
    assert "watch it live: optuna-dashboard " in again.stderr + again.stdout
    assert len(load(tmp_path / "s").trials) == 5
    # another recipe under the same study name would mix incomparable trials: refused, naming what changed
    changed = sweep(tmp_path / "s", "hydra.sweeper.max_trials=7", "trainer.epochs=3")
    assert changed.returncode != 0
    assert "was run with another recipe: trainer.epochs: 2 then, 3 now" in changed.stderr
    assert len(load(tmp_path / "s").trials) == 5
    # a study made by an older tracker model (its recipe has no model_version) is refused too, saying why
    study = load(tmp_path / "s")
    study.set_user_attr("recipe", {k: v for k, v in study.user_attrs["recipe"].items() if k != "model_version"})
    old = sweep(tmp_path / "s", "hydra.sweeper.max_trials=7")
    assert old.returncode != 0
    assert "trained with tracker model version 1, this code builds version" in old.stderr
    assert len(load(tmp_path / "s").trials) == 5


def _seeds_by_arch(study: optuna.Study) -> dict:
    from search.record import arch_key

    seeds: dict = {}
    for t in study.trials:
        if t.state == TrialState.COMPLETE and not t.user_attrs.get("duplicate_of") is not None:
            seeds.setdefault(arch_key(t.user_attrs["head"]), set()).add(t.user_attrs["seed"])
    return seeds


def test_confirmation_stage_repeats_the_front_and_references_with_new_seeds_and_tops_up(tmp_path):
    args = ["hydra.sweeper.max_trials=5", "hydra.sweeper.confirm.front=2"]
    result = sweep(tmp_path / "s", *args, "hydra.sweeper.confirm.seeds=3")
    ok(result)
    study = load(tmp_path / "s")
    assert study.user_attrs["confirm"] == {"seeds": 3, "front": 2, "max_trials": 12, "every": False}
    search = [t for t in study.trials if t.user_attrs["stage"] == "search"]
    repeats = [t for t in study.trials if t.user_attrs["stage"] == "confirm"]
    assert len(search) == 5 and all(t.state == TrialState.COMPLETE for t in study.trials)
    first_seed = search[0].user_attrs["seed"]
    for t in repeats:  # the first trial's overrides with another seed; a reference's repeat keeps its role
        first = study.trials[t.user_attrs["repeat_of"]]
        assert t.user_attrs["head"] == first.user_attrs["head"] and t.params == first.params
        assert t.user_attrs["seed"] == t.user_attrs["confirm_seed"] != first.user_attrs["seed"]
        assert f"trainer.seed={t.user_attrs['seed']}" in t.user_attrs["overrides"]
        assert t.user_attrs.get("role") == first.user_attrs.get("role")
        assert "repeat of trial" in result.stderr + result.stdout
    assert "progress: search 5/5 · confirm 1/" in result.stderr + result.stdout  # a status line per trained trial
    assert "· best auc " in result.stderr + result.stdout and "· front " in result.stderr + result.stdout
    seeds = _seeds_by_arch(study)
    confirmed = {a for a, s in seeds.items() if len(s) == 3}
    roles = {t.user_attrs["role"] for t in repeats if t.user_attrs.get("role")}
    assert roles == {"baseline", "user_head"} and 3 <= len(confirmed) <= 4  # 2 front members + the references
    assert all(s == {first_seed, first_seed + 1, first_seed + 2} for a, s in seeds.items() if a in confirmed)
    assert all(len(s) == 1 for a, s in seeds.items() if a not in confirmed)
    assert not [t for t in study.trials if t.user_attrs.get("duplicate_of") is not None]  # each repeat asked once
    # rerunning tops up: one more seed each; the same settings again add nothing
    ok(sweep(tmp_path / "s", *args, "hydra.sweeper.confirm.seeds=4"))
    study = load(tmp_path / "s")
    assert {a for a, s in _seeds_by_arch(study).items() if len(s) == 4} >= confirmed
    count = len(study.trials)
    ok(sweep(tmp_path / "s", *args, "hydra.sweeper.confirm.seeds=4"))
    assert len(load(tmp_path / "s").trials) == count
    # a total budget for repeats
    ok(sweep(tmp_path / "b", *args, "hydra.sweeper.confirm.seeds=3", "hydra.sweeper.confirm.max_trials=2"))
    assert sum(t.user_attrs["stage"] == "confirm" for t in load(tmp_path / "b").trials) == 2


def test_bad_confirmation_settings_are_refused_before_any_trial(tmp_path):
    from hydra_plugins.lighttrack_sweeper._impl import SweepConfigError, SweeperImpl

    base = dict(sampler={}, pruner=None, study_name="s", storage=None, objectives=[{"name": "auc",
                "direction": "maximize"}], space={}, n_trials=None, max_trials=3, n_jobs=1, seed=0, cost=None,
                budget={}, enqueue={})
    for name, value in (("seeds", 0), ("front", -1), ("max_trials", -2), ("seeds", True), ("sedes", 3),
                        ("every", "yes")):
        with pytest.raises(SweepConfigError, match=rf"hydra\.sweeper\.confirm\.{name}"):
            SweeperImpl(**base, confirm={name: value})
    # and from the command line, before any trial
    result = sweep(tmp_path / "s", "hydra.sweeper.max_trials=3", "hydra.sweeper.confirm.seeds=0")
    assert result.returncode != 0 and "hydra.sweeper.confirm.seeds=0 is not allowed" in result.stderr + result.stdout
    assert not (tmp_path / "s" / "trials").exists()


def test_single_objective_prunes_on_intermediate_values(tmp_path):
    # narrow heads score below the references' median val IoU from the first epoch
    ok(sweep(tmp_path / "s", "hydra/sweeper=auc_budget", "hydra.sweeper.budget.head_macs=null",
             "hydra.sweeper.max_trials=5", "head.channels=choice(32,48)"))
    study = load(tmp_path / "s")
    assert study.study_name == "synthetic_tiny_auc" and len(study.directions) == 1
    references, searched = study.trials[:2], study.trials[2:]
    assert all(t.state == TrialState.COMPLETE and t.intermediate_values == {1: t.value, 2: t.value, 3: t.value}
               for t in references)
    assert len(searched) == 3 and all(t.state == TrialState.PRUNED for t in searched)
    assert all("pruned after epoch 1" in t.user_attrs["prune_reason"] for t in searched)
    assert all(list(t.intermediate_values) == [1] for t in searched)


def test_pruner_with_several_objectives_is_refused_before_any_trial(tmp_path):
    result = sweep(tmp_path / "s", "hydra/sweeper/pruner=median", "hydra.sweeper.max_trials=3")
    assert result.returncode != 0
    assert "hydra.sweeper.pruner=optuna.pruners.MedianPruner is not allowed with 3 objectives" in result.stderr
    assert not (tmp_path / "s" / "trials").exists()


def test_over_budget_candidates_are_pruned_without_training(tmp_path):
    # every RepVGG candidate costs more MACs than the user's head, and no frame runs in a nanosecond: measured
    # latency is a cost figure known before training, like MACs; the references are exempt
    ok(sweep(tmp_path / "s", "hydra/sweeper=latency", "latency=quick", "head=choice(repvgg)",
             "hydra.sweeper.budget.head_macs=3e5", "hydra.sweeper.budget.frame_latency_ms=1e-6",
             "hydra.sweeper.max_settled=3", "hydra.sweeper.max_trials=5"))
    study = load(tmp_path / "s")
    assert [t.state for t in study.trials[:2]] == [TrialState.COMPLETE] * 2
    baseline = study.trials[0]
    assert baseline.user_attrs["cost"]["head_macs"] > 3e5  # the baseline ran though over budget
    # the fake task returns no latency: the objective is the figure measured before training
    assert baseline.values[1] == baseline.user_attrs["cost"]["frame_latency_ms"] > 0
    settled = study.trials[2:]
    assert len(settled) == 3 and all(t.state == TrialState.PRUNED for t in settled)
    for t in settled:
        assert t.user_attrs["prune_reason"].startswith("over budget before training: head_macs=")
        assert "frame_latency_ms=" in t.user_attrs["prune_reason"]
        assert t.user_attrs["trained"] is False and not (tmp_path / "s" / "trials" / str(t.number)).exists()


def test_duplicates_take_the_earlier_result_without_training(tmp_path):
    # a space that only holds the user's head: every candidate is the enqueued dsconv preset again
    dsconv = ["head=choice(dsconv)", "head.num_blocks=choice(2)", "head.channels=choice(64)",
              "head.activation=choice(relu6)", "head.kernel_size=choice(3)", "head.final_kernel_size=choice(1)"]
    ok(sweep(tmp_path / "s", *dsconv, "hydra.sweeper.max_settled=2", "hydra.sweeper.max_trials=5"))
    study = load(tmp_path / "s")
    user, duplicates = study.trials[1], study.trials[2:]
    assert len(duplicates) == 2
    for t in duplicates:
        assert t.state == TrialState.COMPLETE and t.values == user.values
        assert t.user_attrs["duplicate_of"] == 1 and t.user_attrs["trained"] is False
        assert t.user_attrs["run_dir"] == user.user_attrs["run_dir"]
        assert not (tmp_path / "s" / "trials" / str(t.number)).exists()


def test_grid_sampler_covers_a_conditional_grid_once(tmp_path):
    ok(sweep(tmp_path / "s", "hydra/sweeper/sampler=grid", "hydra.sweeper.max_trials=null", "hydra.sweeper.n_trials=30",
             "head=choice(repvgg,dsconv)", "head.num_blocks=choice(2,3)", "head.channels=choice(32)",
             "head.activation=choice(relu)", "head.kernel_size=choice(3,5)", "head.final_kernel_size=choice(1)",
             "head.expansion=4"))
    study = load(tmp_path / "s")
    searched = [t for t in trained(study) if "role" not in t.user_attrs]
    configs = {tuple(sorted(t.params.items())) for t in searched}
    # repvgg has no kernel dimension: 2 repvgg + 4 dsconv architectures, each trained once
    assert len(searched) == len(configs) == 6
    assert {t.user_attrs["duplicate_of"] for t in study.trials if "duplicate_of" in t.user_attrs} and \
        all(t.state == TrialState.COMPLETE for t in study.trials)


def test_any_optuna_storage_url_and_objectives_fixed_per_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    ok(sweep(tmp_path / "s", f"hydra.sweeper.storage='{url}'", "hydra.sweeper.max_trials=3"))
    (name,) = optuna.get_all_study_names(url)
    assert len(optuna.load_study(study_name=name, storage=url).trials) == 3
    assert not (tmp_path / "s" / "journal.log").exists()
    changed = sweep(tmp_path / "s", f"hydra.sweeper.storage='{url}'", "hydra.sweeper.max_trials=4",
                    "hydra.sweeper.objectives=[{name:auc,direction:maximize}]")
    assert changed.returncode != 0 and "use another hydra.sweeper.study_name" in changed.stderr
    assert len(optuna.load_study(study_name=name, storage=url).trials) == 3


def test_real_trials_report_to_the_study_and_cost_matches_before_and_after_training(tmp_path):
    """search.sweep on tracker.train's real trial (tiny preset at head fidelity, a tiny generated data set):
    the references train, report their per-epoch val IoU to the single-objective study, and the MACs / parameters the
    sweeper measured before training are the ones the trained model's profile reports."""
    env = {**os.environ, "LIGHTTRACK_RUNS": str(tmp_path), "LIGHTTRACK_DATA_CACHE": str(tmp_path / "data")}
    cmd = [sys.executable, "-m", "search.sweep", "-m", "trainer=tiny", "trainer.fidelity=head",
           "hydra/sweeper=auc_budget", "hydra.sweeper.budget.head_macs=null", "hydra.sweeper.max_trials=2",
           "data.generate.train_sequences=4", "data.generate.val_sequences=2", "data.generate.frames=12",
           "evaluation.max_sequences=2", "hydra.sweeper.confirm.seeds=1"]
    ok(subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600))
    study = load(tmp_path / "sweeps" / "synthetic_tiny_auc")
    assert [t.user_attrs["role"] for t in study.trials] == ["baseline", "user_head"]
    for t in study.trials:
        assert t.state == TrialState.COMPLETE and 0 <= t.value <= 100
        assert sorted(t.intermediate_values) == [1, 2]  # 2 epochs on cached trunk features, val IoU after each
        assert all(0 <= v <= 1 for v in t.intermediate_values.values())
        metrics, cost = t.user_attrs["metrics"], t.user_attrs["cost"]
        assert {k: metrics[k] for k in cost} == cost
        assert metrics["model_macs"] > metrics["head_macs"] > 0 and metrics["head_latency_ms"] > 0
        assert Path(metrics["run_dir"]) == Path(t.user_attrs["run_dir"]) == tmp_path / "sweeps" / \
            "synthetic_tiny_auc" / "trials" / str(t.number)
        assert (Path(t.user_attrs["run_dir"]) / "metrics.json").is_file()


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "random"])
def test_samplers_are_chosen_by_config_and_seeded(tmp_path, sampler):
    runs = [tmp_path / "a", tmp_path / "b"]
    for sweep_dir in runs:
        ok(sweep(sweep_dir, f"hydra/sweeper/sampler={sampler}", "hydra.sweeper.max_trials=4"))
    first, second = (load(d) for d in runs)
    assert all(t.state == TrialState.COMPLETE for t in first.trials + second.trials)
    assert [t.params for t in first.trials] == [t.params for t in second.trials]
    assert len({tuple(sorted(t.params.items())) for t in first.trials}) == 4


def test_sampler_and_pruner_options_are_typed_and_keep_optunas_other_defaults():
    import inspect

    from hydra.core.config_store import ConfigStore
    from hydra.errors import ConfigCompositionException
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from hydra_plugins.lighttrack_sweeper.config import PRUNER_OPTIONS, SAMPLER_OPTIONS, register
    from tracker.config import compose

    ours = {"tpe": {"n_startup_trials": 8, "multivariate": True, "group": True, "constant_liar": True},
            "nsga2": {"population_size": 8}, "random": {}, "grid": {}, "none": {},
            "median": {"n_startup_trials": 2, "n_warmup_steps": 1},
            "hyperband": {"min_resource": 1, "max_resource": "auto", "reduction_factor": 3}}
    assert [name for name, _ in SAMPLER_OPTIONS + PRUNER_OPTIONS] == list(ours)
    for name, node in SAMPLER_OPTIONS + PRUNER_OPTIONS:
        fields = OmegaConf.to_container(OmegaConf.structured(node))
        arguments = inspect.signature(get_class(fields.pop("_target_"))).parameters
        assert set(fields) <= set(arguments), name  # every field is an argument of the constructor
        assert {k: fields[k] for k in ours[name]} == ours[name]  # LightTrack's choices
        assert {k: v for k, v in fields.items() if k not in ours[name]} == \
            {k: arguments[k].default for k in fields if k not in ours[name]}, name  # Optuna's defaults
    cfg = compose("sweep", ["trainer=tiny", "hydra/sweeper/pruner=hyperband"], return_hydra_config=True)
    assert OmegaConf.get_type(cfg.hydra.sweeper.sampler).__name__ == "TPESamplerConfig"
    assert OmegaConf.get_type(cfg.hydra.sweeper.pruner).__name__ == "HyperbandPrunerConfig"
    # a wrong type fails when the config composes, naming the key
    with pytest.raises(ConfigCompositionException, match=r"hydra\.sweeper\.sampler\.n_startup_trials=abc") as e:
        compose("sweep", ["trainer=tiny", "hydra.sweeper.sampler.n_startup_trials=abc"], return_hydra_config=True)
    assert "could not be converted to Integer" in str(e.value.__cause__)
    # registered once: the ConfigStore says so (no flag in the plugin)
    stored = ConfigStore.instance().repo["hydra"]["sweeper"]["sampler"]["tpe.yaml"]
    register()
    assert ConfigStore.instance().repo["hydra"]["sweeper"]["sampler"]["tpe.yaml"] is stored


def test_a_storage_is_opened_once_per_process_and_a_recreated_journal_anew(tmp_path):
    from hydra_plugins.lighttrack_sweeper.jobs import load as job_load

    path = str(tmp_path / "s" / "journal.log")
    storage = open_storage(path)
    assert open_storage(path) is storage
    optuna.create_study(study_name="a", storage=storage)
    assert job_load(path, "a")[1] is storage  # a job in the sweep process: the sweeper's storage, not a replay
    os.remove(path)
    fresh = open_storage(path)  # the new file may get the deleted one's inode: it is still another file
    assert fresh is not storage and optuna.get_all_study_names(fresh) == []
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert open_storage(url) is open_storage(url)


def test_invalid_candidates_fail_before_training_and_a_broken_space_stops(tmp_path):
    ok(sweep(tmp_path / "s", "head=choice(dsconv)", "head.kernel_size=choice(4)", "hydra.sweeper.max_trials=4",
             "hydra.sweeper.max_failures=2"))
    study = load(tmp_path / "s")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL] * 2
    for t in study.trials[2:]:
        assert "rejected before training: HeadSpecError: head.kernel_size=4 is not allowed: an odd integer" in \
            t.user_attrs["fail_reason"]
        assert t.user_attrs["trained"] is False and not (tmp_path / "s" / "trials" / str(t.number)).exists()


# -- settings refused (or warned about) when the sweeper starts, before any trial --------------------------------
def _impl(**conf):
    from hydra_plugins.lighttrack_sweeper._impl import SweeperImpl

    settings = dict(sampler={"_target_": "optuna.samplers.RandomSampler"}, pruner=None, study_name="s", storage=None,
                    objectives=[{"name": "auc", "direction": "maximize"}], space={}, n_trials=1, max_trials=None,
                    n_jobs=1, seed=0, cost=None, budget={}, enqueue={})
    return SweeperImpl(**{**settings, **conf})


def test_a_seed_in_the_sampler_config_is_refused_for_the_sweepers_seed():
    from hydra_plugins.lighttrack_sweeper._impl import SweepConfigError

    with pytest.raises(SweepConfigError, match=r"hydra\.sweeper\.sampler\.seed=3 is not used: .* set "
                                               r"hydra\.sweeper\.seed instead"):
        _impl(sampler={"_target_": "optuna.samplers.TPESampler", "seed": 3})
    assert _impl(sampler={"_target_": "optuna.samplers.TPESampler", "seed": None}).seed == 0


def test_the_progress_lines_eta_counts_every_trial_that_runs_at_once():
    """Two sweep processes (hydra.sweeper.workers=2) each running one trial at a time finish the trials left in half
    the time one would: the ETA says so (it once divided by n_jobs alone, twice too long under `make sweep`)."""
    from search.record import Stage, TrialAttr

    study = optuna.create_study(direction="maximize")
    for auc in (30.0, 20.0):  # two trained search trials of 60 s each; 6 to train in the search, so 4 are left
        study.add_trial(optuna.trial.create_trial(value=auc, user_attrs={
            TrialAttr.TRAINED: True, TrialAttr.STAGE: Stage.SEARCH, TrialAttr.DURATION_S: 60.0}))
    line = lambda **conf: _impl(n_trials=None, max_trials=6, **conf)._progress(study)  # noqa: E731
    assert line(workers=1) == "progress: search 2/6 · ETA 4 min · best auc 30"
    assert line(workers=2) == "progress: search 2/6 · ETA 2 min · best auc 30"
    assert line(workers=2, n_jobs=2) == "progress: search 2/6 · ETA 60 s · best auc 30"


def test_unknown_objective_name_is_refused_before_any_trial(tmp_path):
    result = sweep(tmp_path / "s", "hydra.sweeper.objectives=[{name:aucc,direction:maximize},"
                   "{name:head_macs,direction:minimize}]", "hydra.sweeper.max_trials=3")
    assert result.returncode != 0
    assert "hydra.sweeper.objectives[0].name='aucc' is not allowed: a figure the trial returns, one of auc, " \
        in result.stderr
    assert "(did you mean 'auc'?)" in result.stderr
    assert not (tmp_path / "s" / "trials").exists() and not (tmp_path / "s" / "journal.log").exists()


def test_objective_names_are_the_figures_a_trial_returns():
    from search.cost import head_cost
    from search.objectives import DEFAULT_OBJECTIVES, METRIC_NAMES
    from tracker.config import compose
    from tracker.evaluation import METRICS

    assert set(METRICS) | {o.name for o in DEFAULT_OBJECTIVES} <= set(METRIC_NAMES)
    assert set(head_cost(compose("train", ["trainer=tiny"]))) <= set(METRIC_NAMES)
    assert [o.name for o in parse_objectives([{"name": "sr50", "direction": "maximize"}])] == ["sr50"]


@pytest.mark.parametrize("limit", [-1, -0.5, math.nan, "many", True])
def test_negative_or_non_numeric_budget_is_refused(limit):
    from hydra_plugins.lighttrack_sweeper._impl import SweepConfigError

    with pytest.raises(SweepConfigError, match=r"hydra.sweeper.budget.head_macs=.* is not allowed: null \(no bound\) "
                                               r"or a number >= 0"):
        _impl(budget={"head_macs": limit, "head_params_deploy": None})
    assert _impl(budget={"head_macs": 0, "head_params_deploy": None}).budget == {"head_macs": 0}


def test_negative_budget_is_refused_before_any_trial(tmp_path):
    result = sweep(tmp_path / "s", "hydra.sweeper.budget.head_macs=-1", "hydra.sweeper.max_trials=3")
    assert result.returncode != 0
    assert "hydra.sweeper.budget.head_macs=-1.0 is not allowed" in result.stderr
    assert not (tmp_path / "s" / "trials").exists()


@pytest.mark.parametrize("storage", ["nosuchdb://user@host/db", "sqlite:///{tmp}/a_file/study.db",
                                     "{tmp}/a_file/journal.log"])
def test_storage_that_cannot_be_opened_is_one_clear_error(tmp_path, storage):
    (tmp_path / "a_file").write_text("a file, not a folder")
    storage = storage.format(tmp=tmp_path)
    result = sweep(tmp_path / "s", f"hydra.sweeper.storage='{storage}'", "hydra.sweeper.max_trials=3")
    assert result.returncode != 0
    # one line naming the field and the value (SweepConfigError is printed by Hydra without a traceback)
    assert result.stderr.startswith(f"hydra.sweeper.storage={storage!r} cannot be opened: "), result.stderr
    assert "Traceback" not in result.stderr and "Background on this error" not in result.stderr
    assert not (tmp_path / "s" / "trials").exists()


def test_pruner_that_nothing_reports_to_is_warned_about(tmp_path, caplog):
    # trainer=tiny trains at fidelity full, where tracker.train reports no per-epoch val_iou
    result = sweep(tmp_path / "s", "hydra/sweeper=auc_budget", "hydra.sweeper.budget.head_macs=null",
                   "hydra.sweeper.max_trials=1")
    ok(result)
    assert "hydra.sweeper.pruner=optuna.pruners.MedianPruner will not prune at trainer.fidelity=full: tracker.train " \
        "reports its per-epoch val_iou only at trainer.fidelity in ['head']" in result.stderr + result.stdout
    from omegaconf import OmegaConf

    median = {"_target_": "optuna.pruners.MedianPruner"}
    for pruner, fidelity, space, warned in [(median, "head", {}, False), (None, "full", {}, False),
                                            ({"_target_": "optuna.pruners.NopPruner"}, "full", {}, False),
                                            (median, "head", {"trainer.fidelity": "choice(head,finetune)"}, True)]:
        caplog.clear()
        fixed = OmegaConf.create({"trainer": {"fidelity": fidelity}})
        _impl(pruner=pruner)._warn_if_never_pruned(build_space(space), fixed)
        assert ("will not prune" in caplog.text) == warned, (pruner, fidelity, space)
    assert "trainer.fidelity=finetune:" in caplog.text


def test_dry_run_shows_the_space_its_size_costs_and_the_study_and_writes_nothing(tmp_path):
    result = sweep(tmp_path / "new", "hydra.sweeper.dry_run=true", "hydra.sweeper.max_trials=4")
    ok(result)
    out = result.stdout
    assert "dry run: nothing is trained or written" in out and "candidates: 3250" in out
    assert "head.expansion: CategoricalDistribution(choices=(2, 4, 6))  when {'head': ('mbconv',)}" in out
    assert "study 'synthetic_tiny'" in out and ": new;" in out
    assert out.count("head_macs=") == 5  # the first five candidates, costed before training
    assert not (tmp_path / "new").exists()
    ok(sweep(tmp_path / "s", "hydra.sweeper.max_trials=3"))
    out = sweep(tmp_path / "s", "hydra.sweeper.dry_run=true", "hydra.sweeper.max_trials=3").stdout
    assert "3 trial(s), 3 trained in the search, budget left: 0 (raise hydra.sweeper.max_trials above 3" in out
    assert len(load(tmp_path / "s").trials) == 3


def test_a_recipe_stored_before_the_optimiser_and_crop_factors_moved_compares_equal():
    """Studies on disk stay resumable: a recipe written when AdamW/StepLR were hard-coded and the evaluation had
    its own copy of the crop factors is the same recipe today; a real difference stays one."""
    import json

    from hydra_plugins.lighttrack_sweeper._recipe import comparable_recipe, study_recipe
    from tracker.config import config_differences
    from tracker.config import compose

    today = study_recipe(compose("sweep", []))
    assert "optimizer" not in today["trainer"]  # the default optimiser is implied by the flat fields
    old = json.loads(json.dumps(today))
    old["evaluation"].update(template_factor=2.0, search_factor=5.0)
    assert config_differences(comparable_recipe(old), today) == []
    old["evaluation"]["search_factor"] = 4.0
    assert config_differences(comparable_recipe(old), today) == [("evaluation.search_factor", 4.0, None)]
    old["trainer"]["weight_decay"] = 0.05
    assert ("trainer.weight_decay", 0.05, today["trainer"]["weight_decay"]) in \
        config_differences(comparable_recipe(old), today)
    sgd = study_recipe(compose("sweep", ["trainer.optimizer._target_=torch.optim.SGD"]))
    assert config_differences(sgd, today) == [("trainer.optimizer", sgd["trainer"]["optimizer"], None)]


def test_the_default_trunk_key_is_the_shipped_ones():
    """The recipe's optimiser node does not rename the shipped trunk: its key is what it was before the node."""
    from tracker.cache import SHIPPED_TRUNKS, baseline_trunk_config
    from tracker.config import compose

    key = baseline_trunk_config(compose("sweep", []))[1]
    assert (SHIPPED_TRUNKS / f"{key}.pt").is_file(), key


def test_the_activation_int8_preset_runs_every_head_with_every_activation_and_three_seeds(tmp_path):
    ok(sweep(tmp_path / "s", "hydra/sweeper=activation_int8", "search@hydra.sweeper.space=activation_int8",
             "hydra.sweeper.confirm.seeds=3"))
    study = load(tmp_path / "s")
    done = [t for t in trained(study) if t.state == TrialState.COMPLETE]
    seeds = _seeds_by_arch(study)
    heads = {(t.user_attrs["head"]["block"], t.user_attrs["head"]["activation"]) for t in done}
    assert heads == {(b, a) for b in ("repvgg", "dsconv") for a in ("relu", "relu6", "hardswish")}
    assert len(seeds) == 6 and all(len(s) == 3 for s in seeds.values())  # every architecture, not only the front
    assert all("evaluation.quantize=int8" in t.user_attrs["overrides"] for t in done)  # hydra.sweeper.int8
    assert {round(t.values[1], 2) for t in done} == {0.01, 0.03, 0.05}  # objectives: auc, int8_auc_drop


def test_the_same_study_name_in_another_storage_does_not_take_over_its_trial_folders(tmp_path):
    ok(sweep(tmp_path / "s", "hydra.sweeper.max_trials=2"))
    other = sweep(tmp_path / "s", "hydra.sweeper.max_trials=2", f"hydra.sweeper.storage=sqlite:///{tmp_path / 'x.db'}")
    assert other.returncode != 0
    assert f"{tmp_path / 's'} holds the trials of study 'synthetic_tiny' in {tmp_path / 's' / 'journal.log'}" in \
        other.stderr + other.stdout
    assert not (tmp_path / "x.db").exists() or len(load(tmp_path / "s").trials) == 2


