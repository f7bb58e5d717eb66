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

A user error (a bad value, a missing file or checkpoint, broken data: `user_errors()`) in a single run prints one
line naming the field, file or study and exits with status 2, leaving no empty run directory; a traceback is for
bugs (and for everything with HYDRA_FULL_ERROR=1). In a sweep's jobs errors are left to the sweeper, which records
them on the trial.
"""
from __future__ import annotations

import functools
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import OmegaConf

from .config import CONF_DIR


def user_errors() -> tuple[type[BaseException], ...]:
    """What a user's input can cause, as opposed to a bug: bad config values, heads, data sets, checkpoints and
    result files, and files that are not there."""
    from omegaconf.errors import MissingMandatoryValue

    from heads.spec import HeadSpecError

    from .config import ConfigError
    from .data.base import DatasetError
    from .data.config import DataConfigError
    from .evaluation.protocol import ResultsError
    from .model.checkpoint import CheckpointError

    return (ConfigError, DataConfigError, HeadSpecError, DatasetError, CheckpointError, ResultsError,
            FileNotFoundError, MissingMandatoryValue)


def _leave_no_empty_run_dir() -> None:
    """A run that failed before writing anything of its own leaves no directory (only Hydra's .hydra/ and log)."""
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if run_dir.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)


class InRunsRoot:
    """A task run with LIGHTTRACK_RUNS set to its composed config's `paths.runs`, so the code's reader of the runs
    root (tracker.config.runs_root: the trunk and feature caches, the report's studies) is where the config writes,
    `paths.runs=DIR` on the command line included. A class (a launcher's workers unpickle it); Hydra names the job
    after the wrapped task (`__wrapped__`)."""

    def __init__(self, task: Callable[[Any], Any], extra_user_errors: Sequence[type[BaseException]] = ()):
        functools.update_wrapper(self, task)
        self.task, self.extra_user_errors = task, tuple(extra_user_errors)

    def __call__(self, cfg: Any) -> Any:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        runs = OmegaConf.select(cfg, "paths.runs", default=None)  # none in an app whose schema has no paths node
        if runs is not None:
            os.environ["LIGHTTRACK_RUNS"] = str(Path(runs).absolute())
        single_run = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.RUN
        if not single_run or os.environ.get("HYDRA_FULL_ERROR") == "1":
            return self.task(cfg)
        try:
            return self.task(cfg)
        except user_errors() + self.extra_user_errors as e:
            _leave_no_empty_run_dir()
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)


def hydra_app(task: Callable[[Any], Any], config_name: str,
              user_errors: Sequence[type[BaseException]] = ()) -> Callable[[], None]:
    """The `main()` of a Hydra app that runs `task(cfg)` on conf/<config_name>.yaml (plus the command line);
    `user_errors`: the app's own error types that are the user's (besides `tracker.app.user_errors()`)."""

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
        app = hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")
        app(InRunsRoot(task, user_errors))()

    main.__doc__ = f"Runs the Hydra app of conf/{config_name}.yaml (`--help` says what it does)."
    return main
