"""Objectives: what a study optimises, read by name from what a trial returns, and checked before the study
is told anything (a trial that returns the wrong number of values, or a NaN, is a failed trial)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import TYPE_CHECKING, Any, Collection, Mapping, Optional, Sequence

if TYPE_CHECKING:  # numpy is imported where it is used: the sweeper's config imports this module at Hydra's start
    import numpy as np

DIRECTIONS = ("maximize", "minimize")

# The figures a trial returns (tracker.task.TrialResult.figures(), via search.sweep.run) that can be objectives:
# tracking scores (tracker.evaluation.METRICS and the static-box tracker's), speed, the profile (heads.cost and
# tracker.profile) and training time. A name outside this list would train every trial and then fail each.
METRIC_NAMES = (
    "auc", "op50", "op75", "precision", "norm_precision", "ao", "sr50", "sr75",
    "static_auc", "static_precision", "static_ao",
    "fps", "model_fps",
    "head_params", "head_params_deploy", "head_macs",
    "model_params_deploy", "model_macs", "backbone_macs", "template_macs",
    # measured latency (tracker.latency), known before training
    "head_latency_ms", "head_latency_p90_ms", "frame_latency_ms", "frame_latency_p90_ms", "head_latency_ratio",
    "frame_latency_ratio",
    # INT8 (evaluation.quantize=int8, hydra.sweeper.int8=true)
    "int8_auc", "int8_auc_drop", "int8_frame_latency_ms", "onnx_frame_latency_ms",
    "train_seconds", "evaluate_seconds", "final_train_loss", "seconds",
)
LATENCY_NAMES = ("head_latency_ms", "head_latency_p90_ms", "frame_latency_ms", "frame_latency_p90_ms",
                 "head_latency_ratio", "frame_latency_ratio")


class ObjectiveError(ValueError):
    """A trial's return that cannot be told to the study; the message is the trial's fail reason."""


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str


# what a study optimises unless configured otherwise (hydra.sweeper.objectives), and what a plain grid is read with
DEFAULT_OBJECTIVES = (Objective("auc", "maximize"), Objective("head_macs", "minimize"),
                      Objective("head_params_deploy", "minimize"))


def parse_objectives(entries: Sequence[Any], field: str = "hydra.sweeper.objectives",
                     known: Optional[Collection[str]] = METRIC_NAMES) -> list[Objective]:
    """`[{name: auc, direction: maximize}, ...]` -> objectives; a bad entry names the field, value and rule.
    `known`: the names allowed (None: any, for reading back what a study stored)."""
    if not entries:
        raise ValueError(f"{field}=[] is not allowed: at least one {{name, direction}}")
    objectives = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or set(entry) != {"name", "direction"}:
            raise ValueError(f"{field}[{i}]={entry!r} is not allowed: a mapping with exactly name and direction")
        name, direction = str(entry["name"]), str(entry["direction"]).lower()
        if direction not in DIRECTIONS:
            raise ValueError(f"{field}[{i}].direction={entry['direction']!r} is not allowed: one of {DIRECTIONS}")
        if known is not None and name not in known:
            import difflib

            close = difflib.get_close_matches(name, known, n=1)
            raise ValueError(f"{field}[{i}].name={name!r} is not allowed: a figure the trial returns, one of "
                             f"{', '.join(known)}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        objectives.append(Objective(name, direction))
    names = [o.name for o in objectives]
    if len(set(names)) != len(names):
        raise ValueError(f"{field} names {names} are not allowed: each objective once")
    return objectives


def objective_entries(objectives: Sequence[Objective]) -> list[dict[str, str]]:
    """The inverse of parse_objectives: what the config holds and the study stores."""
    return [{"name": o.name, "direction": o.direction} for o in objectives]


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ObjectiveError(f"objective {name}={value!r} is not a number")
    value = float(value)
    if not math.isfinite(value):
        raise ObjectiveError(f"objective {name}={value} is not finite")
    return value


def returned_figures(returned: Any) -> Any:
    """A task's return as figures by name: a `tracker.task.TrialResult` gives its `figures()`; a mapping, a number
    or a sequence (a plain task function) is taken as it is."""
    figures = getattr(returned, "figures", None)
    return figures() if callable(figures) else returned


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


def as_minimised(values: Any, objectives: Sequence[Objective]) -> np.ndarray:
    """(n, objectives) values as an array in which lower is better in every column."""
    import numpy as np

    signs = np.array([-1.0 if o.direction == "maximize" else 1.0 for o in objectives])
    return np.asarray(values, dtype=float).reshape(-1, len(objectives)) * signs


def dominates(a: Any, b: Any) -> np.ndarray:
    """For minimised points: a[i] dominates b[j] (no worse in every objective, better in one); (len a, len b)."""
    import numpy as np

    a, b = np.asarray(a, float), np.asarray(b, float)
    return (a[:, None, :] <= b[None, :, :]).all(-1) & (a[:, None, :] < b[None, :, :]).any(-1)


def non_dominated(values: Any, objectives: Sequence[Objective]) -> np.ndarray:
    """True for the points (rows of values, in the objectives' own directions) no other point dominates."""
    points = as_minimised(values, objectives)
    return ~dominates(points, points).any(0)
