"""The `metrics` app: scores results directories.

    python -m tracker.metrics results=DIR data=got10k data.root=ROOT data.split=val
    python -m tracker.metrics results=[A,B] names=[ours,static] output_dir=DIR

scores results directories (one `<sequence>.txt` of x,y,w,h per line) against a reader's ground truth,
writes the plots, `metrics.json` and `per_sequence.csv`, and prints the metrics as one JSON object on its
last stdout line. Every metric is a percentage. The work is `tracker.evaluation.score_directories` (its keys:
`MetricsConf`); the protocol is documented in tracker/evaluation/protocol.py.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from .evaluation import METRICS, score_directories

log = logging.getLogger(__name__)


def _main(cfg: Any) -> None:
    from hydra.core.hydra_config import HydraConfig

    result = score_directories(cfg, HydraConfig.get().runtime.output_dir)
    for name, summary in result["trackers"].items():
        log.info("%s: %s", name, ", ".join(f"{k} {summary[k]}" for k in METRICS))
    print(json.dumps(result, allow_nan=False))


def main() -> None:
    from .app import hydra_app

    hydra_app(_main, "metrics")()


if __name__ == "__main__":
    main()
