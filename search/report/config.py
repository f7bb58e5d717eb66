"""The report's settings (conf/report.yaml is typed by this schema)."""
from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from typing import List, Optional

RULES = ("budget", "knee")


class ReportError(ValueError):
    """Something the report cannot do; the message says what to change."""


@dataclass
class ReportConf:
    study: Optional[str] = None
    storage: Optional[str] = None  # default: <runs>/sweeps/<study>/journal.log
    multirun: Optional[str] = None  # a Hydra multirun directory of tracker.train jobs, instead of a study
    out_dir: Optional[str] = None  # default: <runs>/sweeps/<study>/report (or <multirun>/report)
    rule: str = "budget"  # budget: the highest mean AUC within the budget | knee: the front's knee
    max_head_macs: Optional[float] = None
    max_head_params: Optional[float] = None
    # best.yaml picks among architectures with at least this many seeds; null: the study's confirm.seeds (1 for
    # a study without a confirmation stage or a grid)
    min_seeds: Optional[int] = None
    # AUC points: "no worse than the baseline" when the lower end of the difference's interval is above -margin
    margin: float = 1.0
    resamples: int = 4000  # bootstrap resamples
    confidence: float = 0.95
    # a data preset (conf/data/<name>.yaml) on which the references and the front are scored again, never used
    # for selection; auto: synthetic_test for a study on the synthetic data, else none; null: none
    transfer: Optional[str] = "auto"
    # overrides of that preset, as on the command line: ["data.root=/data/test", "data.generate.val_sequences=5"]
    transfer_overrides: List[str] = field(default_factory=list)
    # processes scoring the transfer runs at once (null: one per core, each with one torch thread on 2 cores)
    workers: Optional[int] = None

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ReportError(f"rule={self.rule!r} is not allowed: one of {', '.join(RULES)}")
        if self.min_seeds is not None and self.min_seeds < 1:
            raise ReportError(f"min_seeds={self.min_seeds} is not allowed: null or an integer >= 1")
        if self.workers is not None and self.workers < 1:
            raise ReportError(f"workers={self.workers} is not allowed: null (one per core) or an integer >= 1")
        if not self.margin >= 0:
            raise ReportError(f"margin={self.margin} is not allowed: AUC points >= 0")
        for name in ("max_head_macs", "max_head_params"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ReportError(f"{name}={value} is not allowed: null (no bound) or a number >= 0")
