"""The entry point every LightTrack Hydra app shares: `main = hydra_app(_main, "train")`.

The configs are found from this package's location, by the absolute path of the repository's top-level conf/
(`tracker.config.CONF_DIR`), never relative to the working directory or to the calling module: an app composes
the same config from any folder, run as a console script (`lighttrack-train`) or as a module
(`python -m tracker.train`). conf/ is not packaged, so the package must be installed editable (`pip install -e .`,
as `make venv` does); a non-editable install fails with a message saying so.

Each primary config selects its own `--help` page (`override hydra/help: <app>`, conf/hydra/help/<app>.yaml). The
typed schemas the presets extend and the sweeper's configs are made known to Hydra by
hydra_plugins/lighttrack_schemas as soon as conf/ is on the search path, which is what this helper puts there.

The runs root (`paths.runs`, conf/paths/default.yaml) reads LIGHTTRACK_RUNS, which this helper makes absolute
before composing; each job then runs with it set to its composed `paths.runs` (`InRunsRoot`).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf

from .config import CONF_DIR


class InRunsRoot:
    """A task run with LIGHTTRACK_RUNS set to its composed config's `paths.runs`, so the code's reader of the runs
    root (tracker.config.runs_root: the trunk and feature caches, the report's studies) is where the config writes,
    `paths.runs=DIR` on the command line included. A class (a launcher's workers unpickle it); Hydra names the job
    after the wrapped task (`__wrapped__`)."""

    def __init__(self, task: Callable[[Any], Any]):
        functools.update_wrapper(self, task)
        self.task = task

    def __call__(self, cfg: Any) -> Any:
        runs = OmegaConf.select(cfg, "paths.runs", default=None)  # none in an app whose schema has no paths node
        if runs is not None:
            os.environ["LIGHTTRACK_RUNS"] = str(Path(runs).absolute())
        return self.task(cfg)


def hydra_app(task: Callable[[Any], Any], config_name: str) -> Callable[[], None]:
    """The `main()` of a Hydra app that runs `task(cfg)` on conf/<config_name>.yaml (plus the command line)."""

    def main() -> None:
        import hydra

        from .config import runs_root

        # the runs root that conf/paths/default.yaml reads (paths.runs): absolute, so nothing lands in the working
        # directory, and inherited by every job and worker the app starts
        os.environ["LIGHTTRACK_RUNS"] = str(runs_root())

        if not (CONF_DIR / f"{config_name}.yaml").is_file():
            raise SystemExit(f"error: LightTrack's configs are not at {CONF_DIR} (no {config_name}.yaml): the "
                             f"console scripts need an editable install of the repository, "
                             f"`pip install -e <repository>`")
        hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")(InRunsRoot(task))()

    main.__doc__ = f"Runs the Hydra app of conf/{config_name}.yaml (`--help` says what it does)."
    return main
