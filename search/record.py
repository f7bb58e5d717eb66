"""The trial record: what the sweeper stores on a study and its trials (Optuna user attributes) and how it is
read back. The sweeper (hydra_plugins/lighttrack_sweeper), search.study and the report use these names only.

The stored names are the ones studies on disk already carry: change a value here and old studies stop reading.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Optional

from .objectives import DEFAULT_OBJECTIVES, Objective, parse_objectives


class Role:
    """Reference trials, enqueued first (hydra.sweeper.enqueue's keys); searched trials have no role."""

    BASELINE = "baseline"  # STARK-Lightning's RepVGG head: what every candidate is compared with
    USER_HEAD = "user_head"  # the user's depthwise-separable head


# the head preset (conf/head/<name>.yaml) each reference role runs: the sweeper enqueues `head=<preset>`, the
# report finds a grid's references by what the preset composes to
REFERENCE_HEADS = {Role.BASELINE: "repvgg", Role.USER_HEAD: "dsconv"}


class Stage:
    """Why a trial was asked: by the search, or to repeat an architecture with another seed."""

    SEARCH = "search"
    CONFIRM = "confirm"


class TrialAttr:
    """Trial user attributes."""

    ROLE = "role"  # a Role, on reference trials only
    REFERENCE_OVERRIDES = "reference_overrides"  # a reference's overrides (hydra.sweeper.enqueue)
    REFERENCE_PARAMS = "reference_params"  # the space's parameters a reference fixes
    OVERRIDES = "overrides"  # the trial's overrides, as launched
    HOST = "host"  # the sweep process that asked the trial (orphans are failed on resume)
    PID = "pid"
    TRAINED = "trained"  # launched (True) or settled without training (False)
    HEAD = "head"  # the resolved head spec, every field
    CONFIG_KEY = "config_key"  # identity of the resolved job config (duplicates share it)
    SEED = "seed"  # the trial's trainer.seed: a repeat of an architecture differs from it in this alone
    STAGE = "stage"  # a Stage (absent on trials of studies made before the confirmation stage: search)
    CONFIRM_SEED = "confirm_seed"  # on a confirmation trial: the trainer.seed it runs the architecture with
    REPEAT_OF = "repeat_of"  # on a confirmation trial: the trial whose overrides it repeats
    COST = "cost"  # cost figures before training (hydra.sweeper.cost)
    RUN_DIR = "run_dir"
    DUPLICATE_OF = "duplicate_of"  # the earlier trial whose result a duplicate took
    DURATION_S = "duration_s"
    METRICS = "metrics"  # the flat scalar part of what the trial returned
    FAIL_REASON = "fail_reason"
    ORPHANED = "orphaned"  # True: failed because its sweep process died or stopped beating (asked again: a reference,
    # a repeat; with heartbeats, a retry)
    PRUNE_REASON = "prune_reason"
    NOTE = "note"  # why a COMPLETE trial was settled as it was


# what a run of a trial writes (its owner, how it ended, what it measured): a retry of a stale trial (one whose sweep
# process stopped beating) is a WAITING copy without these, and keeps the rest (role, stage, repeat, seed, head)
OF_A_RUN = (TrialAttr.HOST, TrialAttr.PID, TrialAttr.TRAINED, TrialAttr.CONFIG_KEY, TrialAttr.COST, TrialAttr.RUN_DIR,
            TrialAttr.DUPLICATE_OF, TrialAttr.DURATION_S, TrialAttr.METRICS, TrialAttr.FAIL_REASON,
            TrialAttr.ORPHANED, TrialAttr.PRUNE_REASON, TrialAttr.NOTE)


class StudyAttr:
    """Study user attributes, set when the study is created (SWEEP_PROCESSES: on every start)."""

    OBJECTIVES = "objectives"  # [{name, direction}, ...]
    BUDGET = "budget"
    SPACE = "space"
    RECIPE = "recipe"
    SWEEP_PROCESSES = "sweep_processes"
    CONFIRM = "confirm"  # the confirmation stage's settings ({seeds, front, max_trials}): the report reads seeds


_REASONS = {"FAIL": TrialAttr.FAIL_REASON, "PRUNED": TrialAttr.PRUNE_REASON}


def reason_attr(state_name: str) -> str:
    """Where a trial ending in this state (a TrialState's name) keeps its reason."""
    return _REASONS.get(state_name, TrialAttr.NOTE)


def reason(attrs: Mapping[str, Any]) -> Optional[str]:
    return attrs.get(TrialAttr.FAIL_REASON) or attrs.get(TrialAttr.PRUNE_REASON) or attrs.get(TrialAttr.NOTE)


def head_key(head: Mapping[str, Any]) -> str:
    """One architecture's identity: the head spec with every field as stored, as sorted JSON (two heads
    differing in any field, `norm` included, are different architectures)."""
    return json.dumps(dict(head), sort_keys=True, default=str)


def arch_key(head: Mapping[str, Any]) -> str:
    """A short stable name for an architecture (the digest of head_key): the `arch` column of every table."""
    from tracker.io import stable_hash

    return stable_hash(head_key(head), 10, "sha1")


def study_objectives(study: Any) -> list[Objective]:
    """The objectives a study was run with: as the sweeper stored them, else its metric names and
    directions, else the default ones (a study made by other means with the default's directions)."""
    stored = study.user_attrs.get(StudyAttr.OBJECTIVES)
    if stored:
        return parse_objectives(stored, field=f"study {study.study_name!r} objectives", known=None)
    directions = [d.name.lower() for d in study.directions]
    if study.metric_names:
        return [Objective(n, d) for n, d in zip(study.metric_names, directions)]
    if directions == [o.direction for o in DEFAULT_OBJECTIVES]:
        return list(DEFAULT_OBJECTIVES)
    raise ValueError(f"study {study.study_name!r} records no objective names (directions {directions}): "
                     "name them with study.set_metric_names")


def trial_row(trial: Any) -> dict[str, Any]:
    """A frozen trial's record as one flat row: number, state, role, stage, seed, duration, run dir, duplicate,
    reason, parameters (`param_*`), cost and metrics; the head spec under `head` (a dict) when recorded."""
    attrs = trial.user_attrs
    row: dict[str, Any] = {"trial": trial.number, "state": trial.state.name, "role": attrs.get(TrialAttr.ROLE),
                           "stage": attrs.get(TrialAttr.STAGE, Stage.SEARCH), "seed": attrs.get(TrialAttr.SEED),
                           "duration_s": attrs.get(TrialAttr.DURATION_S), "run_dir": attrs.get(TrialAttr.RUN_DIR),
                           "duplicate_of": attrs.get(TrialAttr.DUPLICATE_OF), "reason": reason(attrs)}
    row.update({f"param_{k}": v for k, v in trial.params.items()})
    row.update(attrs.get(TrialAttr.METRICS) or {})
    row.update(attrs.get(TrialAttr.COST) or {})  # the cost settled before training owns its figures
    if attrs.get(TrialAttr.HEAD):
        row["head"] = attrs[TrialAttr.HEAD]
    return row
