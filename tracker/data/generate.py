"""`lighttrack-data`: the embedded synthetic benchmark as a Hydra app (conf/data_generate.yaml).

    lighttrack-data root=DIR train_sequences=N val_sequences=M frames=F seed=S [knob=value ...]

The same keys as `python -m tracker.data.synthetic` (every field of SyntheticConfig), typed by that dataclass,
with `--help`, `--cfg job`, shell completion and multirun (`-m seed=0,1,2`). Without `root`, the benchmark goes to
the cache the `data=synthetic` presets read (`cache_dir`: $LIGHTTRACK_DATA_CACHE, else runs/data), so this
prepares exactly what training will use. Generates once (`ensure_synthetic`), then prints the same JSON line as
`tracker.data.synthetic`: root, key and everything that decides what is written. Imports no torch.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from typing import Any

from .synthetic import SyntheticConfig, ensure_synthetic


@dataclass
class GenerateConf(SyntheticConfig):
    """conf/data_generate.yaml: what to generate (every SyntheticConfig field), and where the cache is."""

    cache_dir: str = "runs/data"  # without `root`: generated into <cache_dir>/synthetic-<key>, reused afterwards
    progress: bool = True  # a progress bar on stderr while generating


def synthetic_config(conf: GenerateConf) -> SyntheticConfig:
    """The SyntheticConfig part of the app's config (what decides the benchmark)."""
    return SyntheticConfig(**{f.name: getattr(conf, f.name) for f in dataclasses.fields(SyntheticConfig)})


def _main(cfg: Any) -> None:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        conf: GenerateConf = OmegaConf.to_object(cfg)
    except (ValueError, OmegaConfBaseException) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2)
    synthetic = synthetic_config(conf)
    root = ensure_synthetic(synthetic, conf.cache_dir, conf.progress)
    print(json.dumps({"root": str(root), "key": synthetic.key(), **synthetic.content()}))


def main() -> None:
    from ..app import hydra_app

    hydra_app(_main, "data_generate")()


if __name__ == "__main__":
    main()
