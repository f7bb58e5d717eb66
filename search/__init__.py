"""Architecture search over the prediction head: Optuna studies driven from Hydra.

space: search spaces (YAML or Hydra's sweep syntax) as Optuna distributions; objectives: what a study
optimises and how a trial's return is checked; cost: a candidate's head cost before training; study: where
a study lives and how a job reports to its trial; sweep: the `python -m search.sweep -m` app. The Hydra
Sweeper itself is hydra_plugins/lighttrack_sweeper."""
