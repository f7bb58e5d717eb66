"""A candidate's cost before it trains: the sweeper calls `head_cost(cfg)` on each composed trial config to
reject bad configs, apply MAC / parameter budgets and spot duplicates without training anything."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from heads.cost import profile_head
from tracker.config import job_config, validate
from tracker.model import StarkLightning


def head_cost(cfg: DictConfig, latency: bool = False) -> dict[str, Any]:
    """Validates the trial config (every schema check) and profiles its head alone at the trial's search
    feature size: head_params, head_params_deploy, head_macs (milliseconds, no training). With `latency`, also
    the candidate's measured latency on the trial's `latency` settings (tracker.latency: seconds on first ask,
    cached after; the trial reads the same cache), so a latency budget prunes before training."""
    from hydra.utils import instantiate

    task = job_config(cfg)
    validate(task)
    geometry = StarkLightning.head_geometry(int(task.model.hidden_dim), int(task.model.search_size))
    head = instantiate(task.head)(**geometry)
    profile = profile_head(head, geometry["in_channels"], geometry["feat_size"])
    figures = {k: v for k, v in profile.items() if k != "head_unsupported_ops"}
    if latency:
        from tracker.latency import candidate_latency

        figures.update(candidate_latency(task).figures())
    return figures
