"""Objectives: what a study optimises, read by name from what a trial returns, and checked before the study
is told anything (a trial that returns the wrong number of values, or a NaN, is a failed trial)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any, Mapping, Sequence

DIRECTIONS = ("maximize", "minimize")


class ObjectiveError(ValueError):
    """A trial's return that cannot be told to the study; the message is the trial's fail reason."""


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str


def parse_objectives(entries: Sequence[Any], field: str = "hydra.sweeper.objectives") -> list[Objective]:
    """`[{name: auc, direction: maximize}, ...]` -> objectives; a bad entry names the field, value and rule."""
    if not entries:
        raise ValueError(f"{field}=[] is not allowed: at least one {{name, direction}}")
    objectives = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or set(entry) != {"name", "direction"}:
            raise ValueError(f"{field}[{i}]={entry!r} is not allowed: a mapping with exactly name and direction")
        name, direction = str(entry["name"]), str(entry["direction"]).lower()
        if direction not in DIRECTIONS:
            raise ValueError(f"{field}[{i}].direction={entry['direction']!r} is not allowed: one of {DIRECTIONS}")
        objectives.append(Objective(name, direction))
    names = [o.name for o in objectives]
    if len(set(names)) != len(names):
        raise ValueError(f"{field} names {names} are not allowed: each objective once")
    return objectives


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ObjectiveError(f"objective {name}={value!r} is not a number")
    value = float(value)
    if not math.isfinite(value):
        raise ObjectiveError(f"objective {name}={value} is not finite")
    return value


def objective_values(returned: Any, objectives: Sequence[Objective]) -> list[float]:
    """The values to tell the study: from a mapping by name, or from a number / sequence of the right length."""
    names = [o.name for o in objectives]
    if isinstance(returned, Mapping):
        missing = [n for n in names if n not in returned]
        if missing:
            raise ObjectiveError(f"the trial returned no {missing} (it returned {sorted(map(str, returned))}); "
                                 f"objectives are {names}")
        return [_number(n, returned[n]) for n in names]
    values = list(returned) if isinstance(returned, (list, tuple)) else [returned]
    if len(values) != len(names):
        raise ObjectiveError(f"the trial returned {len(values)} value(s) for {len(names)} objectives {names}")
    return [_number(n, v) for n, v in zip(names, values)]


def scalar_metrics(returned: Any) -> dict[str, Any]:
    """The flat scalar part of a returned mapping (what the study records beside the objectives)."""
    if not isinstance(returned, Mapping):
        return {}
    out: dict[str, Any] = {}
    for key, value in returned.items():
        if isinstance(value, (str, bool, int)) or value is None:
            out[str(key)] = value
        elif isinstance(value, Real):
            out[str(key)] = float(value) if math.isfinite(float(value)) else str(value)
    return out
