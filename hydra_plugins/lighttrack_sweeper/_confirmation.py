"""The confirmation stage's plan: which architectures get more seeds, and which seeds (`plan_confirmation`)."""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.objectives import Objective, non_dominated
from search.record import Stage, TrialAttr, arch_key
from search.study import retried

log = logging.getLogger(__name__)


def plan_confirmation(study: optuna.Study, objectives: Sequence[Objective], confirm: Mapping[str, Any]) -> list[int]:
    """Enqueues, for the `confirm.front` most accurate non-dominated architectures (on their means over
    seeds; every architecture with `confirm.every`) and the references, the seeds they lack to reach
    `confirm.seeds`, within `confirm.max_trials`.
    A seed counts once it is complete, running, waiting or failed (a failed repeat is not retried, unless its
    sweep process died under it)."""
    trials = study.get_trials(deepcopy=False)
    again = retried(trials)  # a repeat re-run by a retry: one repeat
    confirm_trials = [t for t in trials if t.user_attrs.get(TrialAttr.STAGE) == Stage.CONFIRM
                      and t.number not in again]
    left = None if confirm["max_trials"] is None else confirm["max_trials"] - len(confirm_trials)
    groups: dict[str, list[FrozenTrial]] = {}
    for t in trials:
        head = t.user_attrs.get(TrialAttr.HEAD)
        if head is None or t.user_attrs.get(TrialAttr.DUPLICATE_OF) is not None \
                or t.user_attrs.get(TrialAttr.ORPHANED):  # its sweep process died: that seed is asked again
            continue
        if t.state == TrialState.COMPLETE or t.user_attrs.get(TrialAttr.STAGE) == Stage.CONFIRM:
            groups.setdefault(arch_key(head), []).append(t)
    done = {a: [t for t in ts if t.state == TrialState.COMPLETE and t.values] for a, ts in groups.items()}
    done = {a: ts for a, ts in done.items() if ts}
    if not done:
        return []
    means = {a: [sum(t.values[i] for t in ts) / len(ts) for i in range(len(objectives))]
             for a, ts in done.items()}
    mask = non_dominated(list(means.values()), objectives)
    sign = -1.0 if objectives[0].direction == "maximize" else 1.0
    front = sorted((a for a, m in zip(means, mask) if m), key=lambda a: sign * means[a][0])
    chosen = sorted(means, key=lambda a: sign * means[a][0]) if confirm["every"] else \
        front[: confirm["front"]]
    chosen += [a for a in done if a not in chosen and any(t.user_attrs.get(TrialAttr.ROLE) for t in done[a])]
    enqueued = []
    for arch in chosen:
        first = min(done[arch], key=lambda t: t.number)
        seeds = {t.user_attrs.get(TrialAttr.SEED) for t in groups[arch]}
        base = first.user_attrs.get(TrialAttr.SEED) or 0
        missing = [base + i for i in range(1, 100 * confirm["seeds"]) if base + i not in seeds]
        for seed in missing[: max(confirm["seeds"] - len(seeds), 0)]:
            if left is not None and left <= 0:
                return enqueued
            # the head and seed are known now: a waiting repeat counts, and is not enqueued twice
            study.enqueue_trial(dict(first.params), user_attrs={
                TrialAttr.STAGE: Stage.CONFIRM, TrialAttr.CONFIRM_SEED: seed, TrialAttr.REPEAT_OF: first.number,
                TrialAttr.HEAD: first.user_attrs[TrialAttr.HEAD], TrialAttr.SEED: seed,
                **({TrialAttr.ROLE: first.user_attrs[TrialAttr.ROLE]} if first.user_attrs.get(TrialAttr.ROLE)
                   else {})})
            seeds.add(seed)
            enqueued.append(seed)
            left = None if left is None else left - 1
    if enqueued:
        log.info("confirmation stage: %d repeat(s) enqueued (%d seeds per architecture, %d front member(s) "
                 "and the references)", len(enqueued), confirm["seeds"], len(chosen))
    return enqueued
