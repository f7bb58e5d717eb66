"""Search spaces: YAML (conf/search/*.yaml) or Hydra's sweep syntax, turned into Optuna distributions.

A space maps an override key to a dimension. A dimension is either a string in Hydra's override grammar
(`choice(a,b)`, `range(2,7)`, `interval(1e-4,1e-2)`, `tag(log,interval(...))`, `a,b,c`) or a mapping:
`{choices: [...]}` or `{low: .., high: .., step: .., log: ..}` (both ends included), plus an optional
`when: {earlier_key: value or [values]}` that makes the dimension exist only under those values (a real
conditional: it is never sampled otherwise). Command-line sweeps replace or extend the space; plain
command-line values fix a key for every trial.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)


class SpaceError(ValueError):
    """A search-space entry that cannot be used; the message names the key, the value and the rule."""


@dataclass(frozen=True)
class Dimension:
    name: str  # the override key: `head` (a config group) or `head.num_blocks` (a value)
    distribution: BaseDistribution
    when: Mapping[str, tuple] = field(default_factory=dict)

    def active(self, context: Mapping[str, Any]) -> bool:
        return all(key in context and context[key] in allowed for key, allowed in self.when.items())


_PLAIN = re.compile(r"[A-Za-z_][\w\-./]*")
_RESERVED = {"true", "false", "null", "nan", "inf", "none", "yes", "no", "on", "off"}


def format_value(value: Any) -> str:
    """A value as Hydra's override grammar reads it back unchanged."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and value.lower() not in _RESERVED:
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    raise SpaceError(f"value {value!r} cannot be written as an override: use null, bool, int, float or str")


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(base: Sequence[str], extra: Sequence[str]) -> list[str]:
    """`base` with every key that `extra` sets replaced by `extra`'s value."""
    keys = {override_key(o) for o in extra}
    return [o for o in base if override_key(o) not in keys] + list(extra)


def _categorical(name: str, choices: Sequence[Any]) -> CategoricalDistribution:
    choices = list(choices)
    if not choices:
        raise SpaceError(f"search space {name}: choices=[] is not allowed: at least one choice")
    for c in choices:
        if c is not None and not isinstance(c, (bool, int, float, str)):
            raise SpaceError(f"search space {name}: choice {c!r} is not allowed: null, bool, int, float or str")
    return CategoricalDistribution(choices)


def _numeric(name: str, low: Any, high: Any, step: Any = None, log: bool = False,
             integer: bool | None = None) -> BaseDistribution:
    for label, v in (("low", low), ("high", high), ("step", step)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise SpaceError(f"search space {name}: {label}={v!r} is not allowed: a number")
    if low is None or high is None or low > high:
        raise SpaceError(f"search space {name}: low={low!r}, high={high!r} is not allowed: numbers with low <= high")
    if log and (low <= 0 or step is not None):
        raise SpaceError(f"search space {name}: log=true needs low > 0 and no step (low={low!r}, step={step!r})")
    if integer is None:
        integer = all(isinstance(v, int) for v in (low, high, step) if v is not None)
    if integer:
        return IntDistribution(int(low), int(high), log=bool(log), step=int(step or 1))
    return FloatDistribution(float(low), float(high), log=bool(log), step=None if step is None else float(step))


def _from_override(override: Any) -> BaseDistribution | None:
    """A parsed Hydra override as a distribution; None for a plain value."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    name, value = override.get_key_element(), override.value()
    if not override.is_sweep_override():
        return None
    tags = set(getattr(value, "tags", ()) or ())
    if isinstance(value, ChoiceSweep):
        return _categorical(name, list(override.sweep_iterator()))
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise SpaceError(f"search space {name}: {override.input_line!r} is empty (range's end is excluded)")
        if all(isinstance(v, int) for v in values):
            step = int(value.step) if value.step is not None else 1
            return IntDistribution(min(values), max(values), log="log" in tags, step=abs(step))
        return _categorical(name, values)
    if isinstance(value, IntervalSweep):
        return _numeric(name, value.start, value.end, log="log" in tags, integer=True if "int" in tags else False)
    raise SpaceError(f"search space {name}: {override.input_line!r} is not a sweep this sweeper understands: "
                     "choice(...), range(...), interval(...), tag(log, interval(...)) or a,b,c")


def _parse_string(name: str, text: str, parser: Any) -> BaseDistribution:
    override = parser.parse_override(f"{name}={text}")
    distribution = _from_override(override)
    if distribution is None:
        raise SpaceError(f"search space {name}: {text!r} is a single value, not a sweep: write choice({text}) "
                         "or fix it on the command line")
    return distribution


def _parse_entry(name: str, spec: Any, parser: Any) -> Dimension:
    if isinstance(spec, str):
        return Dimension(name, _parse_string(name, spec, parser))
    if not isinstance(spec, Mapping):
        raise SpaceError(f"search space {name}: {spec!r} is not allowed: a sweep string like choice(a,b) or a "
                         "mapping with choices: [...] or low:/high: (optional step:, log:, when:)")
    spec = dict(spec)
    when_spec = spec.pop("when", None) or {}
    if "choices" in spec:
        extra = set(spec) - {"choices"}
        if extra:
            raise SpaceError(f"search space {name}: {sorted(extra)} do not go with choices")
        distribution = _categorical(name, spec["choices"])
    elif "sweep" in spec:
        distribution = _parse_string(name, str(spec.pop("sweep")), parser)
        if spec:
            raise SpaceError(f"search space {name}: {sorted(spec)} do not go with sweep")
    else:
        unknown = set(spec) - {"low", "high", "step", "log"}
        if unknown:
            raise SpaceError(f"search space {name}: unknown fields {sorted(unknown)}; allowed: choices, sweep, low, "
                             "high, step, log, when")
        distribution = _numeric(name, spec.get("low"), spec.get("high"), spec.get("step"), bool(spec.get("log")))
    if not isinstance(when_spec, Mapping):
        raise SpaceError(f"search space {name}: when={when_spec!r} is not allowed: a mapping key -> value(s)")
    when = {str(k): tuple(v) if isinstance(v, (list, tuple)) else (v,) for k, v in when_spec.items()}
    return Dimension(name, distribution, when)


def _contains(d: BaseDistribution, value: Any) -> bool:
    if isinstance(d, CategoricalDistribution):
        return value in d.choices
    return isinstance(value, (int, float)) and not isinstance(value, bool) and d.low <= value <= d.high


@dataclass
class Space:
    dimensions: list[Dimension]
    fixed: list[str] = field(default_factory=list)  # plain overrides every trial gets
    fixed_values: dict[str, Any] = field(default_factory=dict)

    def context(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """What `when` clauses see: fixed command-line values, then the trial's values."""
        return {**self.fixed_values, **values}

    def suggest(self, trial: Any, only: Iterable[str] | None = None) -> dict[str, Any]:
        """Samples the active dimensions in order (define-by-run, so conditionals are real); `only`
        restricts it to those names (an enqueued trial's fixed parameters)."""
        only = None if only is None else set(only)
        values: dict[str, Any] = {}
        for dim in self.dimensions:
            if (only is not None and dim.name not in only) or not dim.active(self.context(values)):
                continue
            d = dim.distribution
            if isinstance(d, CategoricalDistribution):
                values[dim.name] = trial.suggest_categorical(dim.name, d.choices)
            elif isinstance(d, IntDistribution):
                values[dim.name] = trial.suggest_int(dim.name, d.low, d.high, step=d.step, log=d.log)
            else:
                values[dim.name] = trial.suggest_float(dim.name, d.low, d.high, step=d.step, log=d.log)
        return values

    def overrides(self, values: Mapping[str, Any]) -> list[str]:
        return merge_overrides(self.fixed, [f"{k}={format_value(v)}" for k, v in values.items()])

    def reference_params(self, lookup: Any) -> dict[str, Any]:
        """The parameters of a fixed config (a reference head), for enqueueing it: `lookup(name)` reads a
        key's value from the composed config; values outside the space are left out."""
        values: dict[str, Any] = {}
        for dim in self.dimensions:
            if not dim.active(self.context(values)):
                continue
            value = lookup(dim.name)
            if value is not None and _contains(dim.distribution, value):
                values[dim.name] = value
        return values

    def grid(self) -> dict[str, list[Any]]:
        """Every dimension's values, for Optuna's GridSampler (inactive combinations come back as duplicates
        of an earlier trial and are settled without training)."""
        grid: dict[str, list[Any]] = {}
        for dim in self.dimensions:
            values = _values(dim.distribution)
            if values is None:
                raise SpaceError(f"search space {dim.name}: {dim.distribution} is continuous; the grid sampler needs "
                                 "choices, a range or a stepped interval")
            grid[dim.name] = values
        return grid

    def count(self) -> Optional[int]:
        """How many distinct candidates the space holds, a conditional dimension counted only where it exists
        (None when an active dimension is continuous)."""
        values = {dim.name: _values(dim.distribution) for dim in self.dimensions}

        def walk(i: int, context: dict[str, Any]) -> Optional[int]:
            if i == len(self.dimensions):
                return 1
            dim = self.dimensions[i]
            if not dim.active(self.context(context)):
                return walk(i + 1, context)
            if values[dim.name] is None:
                return None
            counts = [walk(i + 1, {**context, dim.name: v}) for v in values[dim.name]]
            return None if None in counts else sum(counts)

        return walk(0, {})


def _values(d: BaseDistribution) -> Optional[list[Any]]:
    """A distribution's values when it has finitely many (None: continuous)."""
    if isinstance(d, CategoricalDistribution):
        return list(d.choices)
    if isinstance(d, IntDistribution) and not d.log:
        return list(range(d.low, d.high + 1, d.step))
    if isinstance(d, FloatDistribution) and d.step is not None and not d.log:
        n = int(round((d.high - d.low) / d.step))
        return [d.low + i * d.step for i in range(n + 1)]
    return None


def build_space(entries: Mapping[str, Any] | None, arguments: Sequence[str] = (), parser: Any = None) -> Space:
    """The space from config entries (in order) and command-line arguments (sweeps replace or add
    dimensions; plain values fix keys and drop their dimension)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    if OmegaConf.is_config(entries):
        entries = OmegaConf.to_container(entries, resolve=True)
    parser = parser or OverridesParser.create()
    dims = {str(name): _parse_entry(str(name), spec, parser) for name, spec in (entries or {}).items()}
    fixed: list[str] = []
    fixed_values: dict[str, Any] = {}
    for override in parser.parse_overrides(list(arguments)):
        name = override.get_key_element()
        distribution = _from_override(override)
        if distribution is None:
            dims.pop(name, None)
            fixed.append(f"{name}={override.get_value_element_as_str()}")
            fixed_values[name] = override.value()
        elif name in dims:
            dims[name] = Dimension(name, distribution, dims[name].when)
        else:
            dims[name] = Dimension(name, distribution)
    order = list(dims)
    for i, dim in enumerate(dims.values()):
        for key in dim.when:
            if key not in dims and key not in fixed_values:
                raise SpaceError(f"search space {dim.name}: when refers to {key}, which is neither a dimension "
                                 f"nor fixed on the command line (dimensions: {order})")
            if key in dims and order.index(key) > i:
                raise SpaceError(f"search space {dim.name}: when refers to {key}, which comes later; list {key} "
                                 "first")
    return Space(list(dims.values()), fixed, fixed_values)
