"""The main job: `python -m search.sweep -m` runs an Optuna study whose trials are tracker.train trials.

conf/sweep.yaml selects LightTrack's sweeper (hydra_plugins/lighttrack_sweeper) and the search space
(conf/search/default.yaml). Examples:
  python -m search.sweep -m                                   # the CPU preset: the references + 12 trials
  python -m search.sweep -m trainer=gpu data=got10k hydra.sweeper.max_trials=200
  python -m search.sweep -m head=choice(dsconv,mbconv) head.num_blocks=range(2,5)   # reshape the space
  python -m search.sweep -m hydra/sweeper=auc_budget hydra.sweeper.budget.head_macs=4e6   # prune on val IoU
  python -m search.sweep -m hydra/launcher=joblib hydra.launcher.n_jobs=2             # parallel local trials
  python -m search.sweep -m hydra/launcher=submitit_slurm hydra.sweeper.n_jobs=8 hydra.launcher.gpus_per_node=1
                                            # each batch of 8 trials a SLURM job array (pip install -e '.[slurm]')
Each trial's run lives in runs/sweeps/<study>/trials/<number>/; the study in runs/sweeps/<study>/journal.log.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from hydra_plugins.lighttrack_sweeper.jobs import INTERMEDIATE_KEY, epoch_reporter

if TYPE_CHECKING:
    from tracker.task import TrialResult


def run(cfg: DictConfig) -> TrialResult:
    """One trial: train, evaluate, profile; the sweeper reads its objectives from the result's figures.
    Intermediate val IoU goes to the study's pruner when there is one."""
    from tracker.task import run_trial

    return run_trial(cfg, HydraConfig.get().runtime.output_dir, on_epoch_end=epoch_reporter(INTERMEDIATE_KEY),
                     progress=False)


def main() -> None:
    from tracker.app import hydra_app

    hydra_app(run, "sweep")()


if __name__ == "__main__":
    main()
