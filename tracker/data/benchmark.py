"""Loader throughput (not a test): processed pairs per second on the embedded synthetic benchmark.

    python -m tracker.data.benchmark [--sizes 128/320 64/128] [--workers 0 2] [--batches 30] [--batch-size 16]

Builds (or reuses) the default synthetic data from conf/data/synthetic.yaml, then for each crop size pair
and worker count times `--batches` batches after one warm-up batch (workers started), on the CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings

from .config import build_pair_loader, to_data_conf


def default_data():
    """conf/data/synthetic.yaml as composed by Hydra (environment variables and schema applied)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tracker.config import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=None, overrides=["+data=synthetic"]).data


def measure(data, template: int, search: int, workers: int, batches: int, batch_size: int) -> float:
    loader = build_pair_loader(data, "train", template_size=template, search_size=search,
                               pairs_per_epoch=batch_size * (batches + 1), batch_size=batch_size,
                               num_workers=workers, device="cpu")
    it = iter(loader)
    next(it)  # warm-up: workers started, first sequences parsed
    start = time.perf_counter()
    count = sum(len(batch["index"]) for batch in it)
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["128/320"], help="template/search crop sizes")
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 2])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    data = to_data_conf(default_data())  # validated before anything is generated
    warnings.simplefilter("ignore")
    rows = []
    print(f"{'template/search':>16} {'workers':>8} {'pairs/s':>9}")
    for sizes in args.sizes:
        template, search = (int(v) for v in sizes.split("/"))
        for workers in args.workers:
            rate = measure(data, template, search, workers, args.batches, args.batch_size)
            rows.append({"template_size": template, "search_size": search, "workers": workers,
                         "pairs_per_s": round(rate, 1)})
            print(f"{sizes:>16} {workers:>8} {rate:>9.1f}", flush=True)
    print(json.dumps({"cpu_count": os.cpu_count(), "batch_size": args.batch_size, "results": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
